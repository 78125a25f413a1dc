//! Enrollment tokens: what proves that an applicant may apply in an organisation's name.
//!
//! Each organisation on the allow-list has a token (256 random bits, 64 hex digits) that its
//! operator hands to the organisation's developers; an application carries it
//! (`CertificateApplication.enrollment_token`) and the policy compares its SHA-256 with the
//! organisation's. The authority keeps the tokens in one file, readable by the gateway's user
//! only (0600), a line per organisation: `TOKEN ORGANISATION` (the organisation is the rest of
//! the line, spaces and all). [`TokenFile::load_or_create`] gives every organisation that has
//! none a fresh token and [`TokenFile::save`] writes them (once the authority has started, so
//! a refused start writes nothing); an operator rotates a token by replacing its line and
//! restarting.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};

use crate::policy::AllowListPolicy;

/// The policy an operator configures: `allow` entries `ORG=SCOPE,SCOPE`, each organisation
/// enrolling with its token from the file at `tokens` (made or completed here) unless it is
/// one of `open`, and waiting for the operator's approval if it is one of `approval`. New
/// tokens are in memory until [`TokenFile::save`].
pub fn operator_policy(
    allow: &[String],
    open: &[String],
    approval: &[String],
    tokens: &Path,
) -> io::Result<(AllowListPolicy, TokenFile)> {
    let mut policy = AllowListPolicy::default();
    let mut closed = Vec::new();
    for entry in allow {
        let (org, scopes) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        policy = policy.allow(org, scopes.split(',').filter(|s| !s.is_empty()));
        if !open.iter().any(|o| o == org) {
            closed.push(org);
        }
    }
    let file = TokenFile::load_or_create(tokens, closed)?;
    for (org, digest) in file.digests() {
        policy = policy.require_token(org, digest);
    }
    for org in approval {
        policy = policy.require_approval(org);
    }
    Ok((policy, file))
}

/// The SHA-256 of a token: what the policy keeps and compares.
pub type TokenDigest = [u8; 32];

/// The digest of `token`.
pub fn digest_of(token: &str) -> TokenDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// A fresh token: 256 random bits as 64 lowercase hex digits.
pub fn fresh_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io::Error::other("no randomness"))?;
    Ok(bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// The tokens file: organisation -> token.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    tokens: HashMap<String, String>,
    /// Tokens made here and not written yet.
    unsaved: bool,
}

impl TokenFile {
    /// Reads the file at `path` (none yet is an empty file) and adds a fresh token for every
    /// organisation of `organizations` without one (see [`TokenFile::save`]). A line that is
    /// not `TOKEN ORGANISATION` is an error naming it.
    pub fn load_or_create<'a>(
        path: &Path,
        organizations: impl IntoIterator<Item = &'a str>,
    ) -> io::Result<TokenFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} line {}: expected TOKEN ORGANISATION (a token of at least 32 characters)",
                        path.display(),
                        n + 1
                    ),
                )
            };
            let (token, organization) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let organization = organization.trim();
            if token.len() < 32 || organization.is_empty() {
                return Err(bad());
            }
            tokens.insert(organization.to_owned(), token.to_owned());
        }
        let mut unsaved = false;
        for organization in organizations {
            if !tokens.contains_key(organization) {
                tokens.insert(organization.to_owned(), fresh_token()?);
                unsaved = true;
            }
        }
        Ok(TokenFile {
            path: path.to_owned(),
            tokens,
            unsaved,
        })
    }

    /// Writes the file (0600, atomically) if tokens were made since it was read.
    pub fn save(&mut self) -> io::Result<()> {
        if !self.unsaved {
            return Ok(());
        }
        let mut lines: Vec<String> = self
            .tokens
            .iter()
            .map(|(org, token)| format!("{token} {org}\n"))
            .collect();
        lines.sort();
        let partial = self.path.with_extension("partial");
        {
            let mut f = std::fs::File::create(&partial)?;
            crate::private::restrict_file(&partial)?;
            f.write_all(
                b"# Enrollment tokens: TOKEN ORGANISATION, a line each. Hand each organisation its own.\n",
            )?;
            for line in lines {
                f.write_all(line.as_bytes())?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&partial, &self.path)?;
        self.unsaved = false;
        Ok(())
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `organization`'s token.
    pub fn token(&self, organization: &str) -> Option<&str> {
        self.tokens.get(organization).map(String::as_str)
    }

    /// Every organisation and the digest of its token.
    pub fn digests(&self) -> impl Iterator<Item = (&str, TokenDigest)> {
        self.tokens
            .iter()
            .map(|(org, token)| (org.as_str(), digest_of(token)))
    }
}
