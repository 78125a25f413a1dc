//! Certificate signing requests (PKCS#10): parsed, their signature verified, the key and the
//! requested identity extracted. The authority builds the certificate itself from policy; it
//! takes nothing else from the request.

use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer,
};

use crate::keys::{KeyAlgorithm, KeyError, classify};

/// Largest CSR accepted, checked before parsing.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// What the authority takes from a verified CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    /// The subject's public key, DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// The URI SANs requested, in order (the identity is one of them).
    pub uris: Vec<String>,
}

/// A CSR the authority refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Longer than [`MAX_CSR_LEN`].
    #[error("CSR of {0} bytes exceeds {MAX_CSR_LEN}")]
    TooLarge(usize),
    /// Not a DER PKCS#10 request, or bytes after it.
    #[error("not a DER PKCS#10 certificate signing request")]
    Malformed,
    /// The request's signature does not verify with its own key.
    #[error("the CSR's signature does not verify")]
    BadSignature,
    /// The key is not one the authority certifies.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Parses `der`, verifies its self-signature and extracts key and URI SANs.
pub fn verify_csr(der: &[u8]) -> Result<VerifiedCsr, CsrError> {
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge(der.len()));
    }
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let algorithm = classify(&info.subject_pki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push((*uri).to_owned());
                }
            }
        }
    }
    Ok(VerifiedCsr {
        spki_der: info.subject_pki.raw.to_vec(),
        algorithm,
        uris,
    })
}
