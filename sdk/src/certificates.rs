//! An agent's key and certificates: what it sends the Agent Certificate Authority, and what it
//! keeps from the answers. The private key never leaves [`AgentKey`], whose `Debug` shows
//! only the public key's fingerprint.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agw_proto::{
    identity::AgentId,
    pb::{self, Error as WireError},
    signing,
};
use bytes::Bytes;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Renewal starts at this fraction of a certificate's lifetime.
pub const RENEW_AT_FRACTION: f64 = 0.7;

/// What went wrong on the agent's side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Key generation, loading or signing failed.
    #[error("key: {0}")]
    Key(String),
    /// The authority refused, with its code.
    #[error("refused: {0}")]
    Refused(WireError),
    /// The authority's answer is not a usable certificate.
    #[error("bad certificate in reply: {0}")]
    BadReply(String),
}

/// An agent's private key (ECDSA P-256). Keep it; only its public half ever travels.
pub struct AgentKey {
    key: KeyPair,
}

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The last bytes of the SubjectPublicKeyInfo are the public point itself.
        let spki = self.public_key_der();
        let tail = &spki[spki.len().saturating_sub(8)..];
        let short: String = tail.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "AgentKey {{ public: {short}..., private: ... }}")
    }
}

impl AgentKey {
    /// A fresh ECDSA P-256 key.
    pub fn generate() -> Result<AgentKey, CertificateError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(|key| AgentKey { key })
            .map_err(|e| CertificateError::Key(e.to_string()))
    }

    /// Loads a PKCS#8 PEM key.
    pub fn from_pem(pem: &str) -> Result<AgentKey, CertificateError> {
        KeyPair::from_pem(pem)
            .map(|key| AgentKey { key })
            .map_err(|e| CertificateError::Key(e.to_string()))
    }

    /// The key as PKCS#8 PEM, to store with owner-only permissions.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The key as PKCS#8 DER, for TLS stacks.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// The public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// A PKCS#10 request for `identity` (as its URI SAN), signed by this key, DER.
    pub fn csr(&self, identity: &str) -> Result<Vec<u8>, CertificateError> {
        let mut params = CertificateParams::default();
        let uri = identity
            .try_into()
            .map_err(|e: rcgen::Error| CertificateError::Key(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params
            .serialize_request(&self.key)
            .map(|csr| csr.der().to_vec())
            .map_err(|e| CertificateError::Key(e.to_string()))
    }

    /// Signs `message` (ECDSA P-256 with SHA-256, ASN.1 DER signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CertificateError> {
        use rcgen::SigningKey as _;
        self.key
            .sign(message)
            .map_err(|e| CertificateError::Key(e.to_string()))
    }
}

/// A certificate the agent holds, from a `CertificateReply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCertificate {
    /// The certificate first, then the authority's chain, DER.
    pub chain: Vec<Bytes>,
    /// Serial number, big-endian bytes.
    pub serial: Bytes,
    /// Validity.
    pub not_before: SystemTime,
    /// Validity.
    pub not_after: SystemTime,
}

impl HeldCertificate {
    /// The certificate from a reply, or the authority's refusal.
    pub fn from_reply(reply: pb::CertificateReply) -> Result<HeldCertificate, CertificateError> {
        if let Some(e) = reply.error {
            return Err(CertificateError::Refused(e));
        }
        HeldCertificate::from_chain(reply.certificate_chain)
    }

    /// The certificate of `chain` (leaf first, DER), as kept on disk.
    pub fn from_chain(chain: Vec<Bytes>) -> Result<HeldCertificate, CertificateError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CertificateError::BadReply("empty chain".into()))?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| CertificateError::BadReply(e.to_string()))?;
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        Ok(HeldCertificate {
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
            serial: Bytes::copy_from_slice(cert.raw_serial()),
            chain,
        })
    }

    /// The certificate itself, DER.
    pub fn der(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    /// When to renew: at [`RENEW_AT_FRACTION`] of the lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime.mul_f64(RENEW_AT_FRACTION)
    }
}

/// Builds the agent's requests to the authority, numbering them.
#[derive(Debug, Default)]
pub struct CertificateRequests {
    next_id: u64,
}

impl CertificateRequests {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Certificate application (draft 3.1.1) for `identity` with `key`.
    pub fn application(
        &mut self,
        key: &AgentKey,
        identity: &AgentId,
        materials: pb::IdentityMaterials,
    ) -> Result<pb::CertificateApplication, CertificateError> {
        Ok(pb::CertificateApplication {
            request_id: self.id(),
            csr: key.csr(identity.as_str())?.into(),
            materials: Some(materials),
            enrollment_token: String::new(),
        })
    }

    /// Renewal of `held` (signed by its key `old_key`) for `new_key`, which may be the same
    /// key. `materials` is `None` when nothing changed.
    pub fn renewal(
        &mut self,
        held: &HeldCertificate,
        old_key: &AgentKey,
        new_key: &AgentKey,
        identity: &AgentId,
        materials: Option<pb::IdentityMaterials>,
    ) -> Result<pb::RenewalRequest, CertificateError> {
        let csr = new_key.csr(identity.as_str())?;
        let proof = old_key.sign(&signing::renewal_input(&csr))?;
        Ok(pb::RenewalRequest {
            request_id: self.id(),
            certificate: Bytes::copy_from_slice(held.der()),
            csr: csr.into(),
            proof: proof.into(),
            materials,
        })
    }

    /// Revocation of `held` by its holder, proved with its key at `now`.
    pub fn revocation(
        &mut self,
        held: &HeldCertificate,
        key: &AgentKey,
        reason: pb::RevocationReason,
        now: SystemTime,
    ) -> Result<pb::RevocationRequest, CertificateError> {
        let signed_at = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let proof = key.sign(&signing::revocation_input(&held.serial, signed_at))?;
        Ok(pb::RevocationRequest {
            request_id: self.id(),
            serial: held.serial.clone(),
            reason: reason as i32,
            proof: proof.into(),
            signed_at_unix_s: signed_at,
        })
    }

    /// Status query for `serial`.
    pub fn status(&mut self, serial: Bytes) -> pb::StatusQuery {
        pb::StatusQuery {
            request_id: self.id(),
            serial,
        }
    }

    /// Request for the current CRL.
    pub fn crl(&mut self) -> pb::CrlRequest {
        pb::CrlRequest {
            request_id: self.id(),
        }
    }
}
