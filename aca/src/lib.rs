//! The Agent Certificate Authority (ACA, draft sections 2.2 and 3.1): X.509 certificates for
//! agents and gateways, with SPIFFE URI SANs, issued from PKCS#10 requests under a pluggable
//! policy, renewed, revoked, and published in RFC 5280 CRLs.
//!
//! What it is: [`CertificateAuthority`] (sans-IO: it takes requests and the current time and
//! returns answers; state lives in an embedded crash-safe store), the protocol service that
//! answers the ACA's wire messages ([`CertificateAuthority::handle`]), and the HTTP endpoint
//! that serves the CRL ([`http`]). What it is not: it does not accept connections for the
//! protocol; the gateway daemon (or a standalone server) carries frames to it.

mod authority;
pub mod csr;
pub mod enrollment;
pub mod est;
pub mod http;
pub mod policy;
pub mod private;
pub mod service;
pub mod store;

/// TLS with the authority's certificates, and keys: the `agw-tls` crate.
pub use agw_tls as tls;
pub use agw_tls::keys;

use agw_proto::pb::{self, ErrorCode};
pub use authority::{
    AuthorityConfig, CertificateAuthority, CertificateStatus, Crl, Issued, RootMode,
};

/// A refusal or failure, with the code the requester sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {detail}")]
pub struct AcaError {
    /// The wire code.
    pub code: ErrorCode,
    /// For humans: which check failed.
    pub detail: String,
}

impl AcaError {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        AcaError {
            code,
            detail: detail.into(),
        }
    }

    /// The wire form of the refusal.
    pub fn to_wire(&self) -> pb::Error {
        pb::Error::new(self.code, self.detail.clone())
    }
}

/// The serial numbers (big-endian bytes, as [`tls::CheckedCertificate::serial`]) a DER CRL
/// revokes: what a gateway needs to close the live sessions of newly revoked certificates.
pub fn revoked_serials(crl_der: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der)
        .map_err(|e| format!("CRL: {e}"))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

/// A DER certificate's validity: notBefore and notAfter.
pub fn certificate_validity(
    der: &[u8],
) -> Result<(std::time::SystemTime, std::time::SystemTime), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
            .map_err(|_| "a certificate dated before 1970".to_string())
    };
    Ok((
        at(cert.validity().not_before)?,
        at(cert.validity().not_after)?,
    ))
}
