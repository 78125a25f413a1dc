//! A real certificate authority for the registry to check against, and agents certified by it.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, Issued, policy::AllowListPolicy, tls::CertificateChecker,
};
use agw_ars::{Registry, RegistryConfig};
use agw_proto::{
    identity::{AgentId, Domain},
    pb,
};
use agw_sdk::certificates::{AgentKey, CertificateRequests, HeldCertificate};

pub const DOMAIN: &str = "travel.example";

pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn authority(dir: &Path) -> CertificateAuthority {
    let config = AuthorityConfig::new(Domain::new(DOMAIN).unwrap(), dir, "http://127.0.0.1:1/crl");
    let policy = AllowListPolicy::default().allow("Acme", ["booking"]);
    CertificateAuthority::bootstrap(config, Box::new(policy), t0()).unwrap()
}

pub fn checker(ca: &CertificateAuthority, now: SystemTime) -> CertificateChecker {
    CertificateChecker::new(ca.trust_anchor(), &[ca.crl(now).unwrap().der]).unwrap()
}

pub fn registry(dir: &Path, ca: &CertificateAuthority) -> Registry {
    Registry::open(
        RegistryConfig::new(Domain::new(DOMAIN).unwrap(), dir),
        checker(ca, t0()),
    )
    .unwrap()
}

/// Certifies `name` at `now`: its ID, key and what the authority issued.
pub fn certify_at(
    ca: &CertificateAuthority,
    name: &str,
    now: SystemTime,
) -> (AgentId, AgentKey, Issued) {
    let id = AgentId::parse(&format!("spiffe://{DOMAIN}/agent/{name}")).unwrap();
    let key = AgentKey::generate().unwrap();
    let materials = pb::IdentityMaterials {
        organization: "Acme".into(),
        ..Default::default()
    };
    let app = CertificateRequests::default()
        .application(&key, &id, materials)
        .unwrap();
    let issued = ca
        .apply(&app.csr, app.materials.as_ref().unwrap(), now)
        .unwrap();
    (id, key, issued)
}

/// Certifies `name` on the simulated clock and returns the certificate it holds.
pub fn certified(ca: &CertificateAuthority, name: &str) -> (AgentId, HeldCertificate) {
    let (id, _, issued) = certify_at(ca, name, t0());
    let reply = pb::CertificateReply {
        certificate_chain: issued.chain.into_iter().map(Into::into).collect(),
        serial: issued.serial.into(),
        ..Default::default()
    };
    (id, HeldCertificate::from_reply(reply).unwrap())
}

pub fn profile(id: &AgentId, capabilities: &[&str]) -> pb::AgentProfile {
    pb::AgentProfile {
        agent: id.to_string(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        protocols: vec![pb::Protocol::Native as i32],
        languages: vec!["en".into()],
        address: format!("10.0.0.1:7000/{}", id.name()),
        ..Default::default()
    }
}

pub fn register_request(held: &HeldCertificate, profile: pb::AgentProfile) -> pb::RegisterRequest {
    pb::RegisterRequest {
        request_id: 1,
        profile: Some(profile),
        certificate_chain: held.chain.clone(),
    }
}

pub fn discover(capabilities: &[&str]) -> pb::DiscoverRequest {
    pb::DiscoverRequest {
        request_id: 7,
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}
