//! Public keys as certificates and CSRs carry them (SubjectPublicKeyInfo, DER): which
//! algorithm, whether the authority accepts it, and signature verification with ring.

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::{
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    },
    prelude::FromDer,
    x509::SubjectPublicKeyInfo,
};

/// The algorithms the authority certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256, signatures with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384, signatures with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with this many modulus bits; PKCS#1 v1.5 signatures with SHA-256.
    Rsa(usize),
}

/// A key the authority does not certify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The bytes are not a SubjectPublicKeyInfo.
    #[error("not a DER SubjectPublicKeyInfo")]
    Malformed,
    /// The algorithm or curve is not ECDSA P-256/P-384, Ed25519 or RSA.
    #[error("key algorithm {0} is not accepted")]
    Unsupported(String),
    /// An RSA modulus shorter than 2048 bits.
    #[error("RSA key of {0} bits; at least 2048 are required")]
    RsaTooShort(usize),
}

/// Classifies a DER SubjectPublicKeyInfo.
pub fn key_algorithm(spki_der: &[u8]) -> Result<KeyAlgorithm, KeyError> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).map_err(|_| KeyError::Malformed)?;
    classify(&spki)
}

/// Classifies a parsed SubjectPublicKeyInfo (see [`key_algorithm`]).
pub fn classify(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyAlgorithm, KeyError> {
    let alg = &spki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or(KeyError::Malformed)?;
        if curve == OID_EC_P256 {
            Ok(KeyAlgorithm::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyAlgorithm::EcdsaP384)
        } else {
            Err(KeyError::Unsupported(format!("EC curve {curve}")))
        }
    } else if alg.algorithm == OID_SIG_ED25519 {
        Ok(KeyAlgorithm::Ed25519)
    } else if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = spki.parsed().map_err(|_| KeyError::Malformed)?.key_size();
        if bits < 2048 {
            Err(KeyError::RsaTooShort(bits))
        } else {
            Ok(KeyAlgorithm::Rsa(bits))
        }
    } else {
        Err(KeyError::Unsupported(alg.algorithm.to_id_string()))
    }
}

/// Verifies `signature` over `message` with the key in `spki_der`: ECDSA signatures are
/// ASN.1 DER (as every X.509 and TLS stack makes them).
pub fn verify(spki_der: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok((_, spki)) = SubjectPublicKeyInfo::from_der(spki_der) else {
        return false;
    };
    let Ok(alg) = classify(&spki) else {
        return false;
    };
    let algorithm: &dyn VerificationAlgorithm = match alg {
        KeyAlgorithm::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyAlgorithm::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyAlgorithm::Ed25519 => &signature::ED25519,
        KeyAlgorithm::Rsa(_) => &signature::RSA_PKCS1_2048_8192_SHA256,
    };
    UnparsedPublicKey::new(algorithm, &spki.subject_public_key.data)
        .verify(message, signature)
        .is_ok()
}

/// SHA-256 of a DER SubjectPublicKeyInfo: how the authority remembers compromised keys.
pub fn key_fingerprint(spki_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}
