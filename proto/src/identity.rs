//! Identities: agents, gateways, domains and registry resource IDs.
//!
//! Agents and gateways are named by SPIFFE-form URIs, carried as the URI SAN of their X.509
//! certificate: `spiffe://<domain>/agent/<name>` and `spiffe://<domain>/agw/<id>`. The domain
//! follows SPIFFE's trust-domain rules (lowercase letters, digits, `.`, `-`, `_`); a name is one
//! path segment of letters, digits, `.`, `-`, `_`. Parsing is strict: what parses, formats back
//! to the same string.

use std::{fmt, str::FromStr};

use crate::pb::ErrorCode;

/// Longest domain, as for DNS names.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest agent name or gateway ID segment.
pub const MAX_NAME_LEN: usize = 128;

const SCHEME: &str = "spiffe://";

/// A string that is not a valid identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The URI does not start with `spiffe://`.
    #[error("identity must start with spiffe://")]
    Scheme,
    /// The domain is empty, too long, or has a character or label SPIFFE forbids.
    #[error("invalid domain: {0}")]
    Domain(&'static str),
    /// The path is not `/<kind>/<name>` for the expected kind.
    #[error("path must be /{0}/<name>")]
    Path(&'static str),
    /// The name is empty, too long, `.`/`..`, or has a forbidden character.
    #[error("invalid name: {0}")]
    Name(&'static str),
    /// A resource ID is not `ars:<domain>:<32 hex digits>`.
    #[error("resource ID must be ars:<domain>:<32 hex digits>")]
    Resource,
}

impl IdError {
    /// The code to report for a field holding this identity.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidField
    }
}

fn check_domain(d: &str) -> Result<(), IdError> {
    if d.is_empty() {
        return Err(IdError::Domain("empty"));
    }
    if d.len() > MAX_DOMAIN_LEN {
        return Err(IdError::Domain("longer than 253 bytes"));
    }
    if !d
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(IdError::Domain(
            "only lowercase letters, digits, '.', '-', '_' are allowed",
        ));
    }
    if d.split('.').any(str::is_empty) {
        return Err(IdError::Domain("empty label"));
    }
    Ok(())
}

fn check_name(n: &str) -> Result<(), IdError> {
    if n.is_empty() {
        return Err(IdError::Name("empty"));
    }
    if n.len() > MAX_NAME_LEN {
        return Err(IdError::Name("longer than 128 bytes"));
    }
    if n == "." || n == ".." {
        return Err(IdError::Name("'.' and '..' are not names"));
    }
    if !n
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(IdError::Name(
            "only letters, digits, '.', '-', '_' are allowed",
        ));
    }
    Ok(())
}

/// A domain: the trust domain of a SPIFFE ID, e.g. `travel.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Parses and checks a domain.
    pub fn new(domain: &str) -> Result<Domain, IdError> {
        check_domain(domain)?;
        Ok(Domain(domain.to_owned()))
    }

    /// The domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Defines a SPIFFE identity type whose path is `/<segment>/<name>`.
macro_rules! spiffe_id {
    ($(#[$doc:meta])* $name:ident, $segment:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name {
            uri: String,
            /// Byte offset of the path's first `/`.
            domain_end: usize,
        }

        impl $name {
            /// The path segment before the name.
            pub const SEGMENT: &'static str = $segment;

            /// The identity of `name` in `domain`.
            pub fn new(domain: &Domain, name: &str) -> Result<Self, IdError> {
                check_name(name)?;
                Ok($name {
                    uri: format!("{SCHEME}{}/{}/{name}", domain.as_str(), $segment),
                    domain_end: SCHEME.len() + domain.as_str().len(),
                })
            }

            /// Parses a `spiffe://<domain>/<segment>/<name>` URI.
            pub fn parse(uri: &str) -> Result<Self, IdError> {
                let domain = Self::check(uri)?;
                Ok($name {
                    uri: uri.to_owned(),
                    domain_end: SCHEME.len() + domain.len(),
                })
            }

            /// Checks a URI as [`parse`](Self::parse) does, without allocating: its domain.
            pub fn check(uri: &str) -> Result<&str, IdError> {
                let rest = uri.strip_prefix(SCHEME).ok_or(IdError::Scheme)?;
                let slash = rest.find('/').ok_or(IdError::Path($segment))?;
                let (domain, path) = rest.split_at(slash);
                check_domain(domain)?;
                let name = path
                    .strip_prefix(concat!("/", $segment, "/"))
                    .ok_or(IdError::Path($segment))?;
                check_name(name)?;
                Ok(domain)
            }

            /// The whole URI.
            pub fn as_str(&self) -> &str {
                &self.uri
            }

            /// The domain part.
            pub fn domain(&self) -> &str {
                &self.uri[SCHEME.len()..self.domain_end]
            }

            /// The name after `/<segment>/`.
            pub fn name(&self) -> &str {
                &self.uri[self.domain_end + $segment.len() + 2..]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.uri)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $name::parse(s)
            }
        }
    };
}

spiffe_id!(
    /// An agent's identity: `spiffe://<domain>/agent/<name>`.
    AgentId,
    "agent"
);
spiffe_id!(
    /// A gateway's identity: `spiffe://<domain>/agw/<id>`.
    GatewayId,
    "agw"
);

/// The ID an ARS assigns to a registered profile: `ars:<domain>:<32 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId {
    domain: Domain,
    value: u128,
}

impl ResourceId {
    /// The resource ID `value` in `domain`; the registry draws `value` at random.
    pub fn new(domain: Domain, value: u128) -> ResourceId {
        ResourceId { domain, value }
    }

    /// Parses `ars:<domain>:<32 hex digits>`.
    pub fn parse(s: &str) -> Result<ResourceId, IdError> {
        let rest = s.strip_prefix("ars:").ok_or(IdError::Resource)?;
        let (domain, hex) = rest.rsplit_once(':').ok_or(IdError::Resource)?;
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(IdError::Resource);
        }
        let value = u128::from_str_radix(hex, 16).map_err(|_| IdError::Resource)?;
        Ok(ResourceId {
            domain: Domain::new(domain)?,
            value,
        })
    }

    /// The registry's domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The random part.
    pub fn value(&self) -> u128 {
        self.value
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ars:{}:{:032x}", self.domain.as_str(), self.value)
    }
}

impl FromStr for ResourceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        ResourceId::parse(s)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Domain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Domain::new(s)
    }
}
