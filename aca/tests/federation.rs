//! Domains under one operator root: each domain's authority vouches for its own domain's
//! names only. A certificate for `spiffe://travel.example/...` signed by the authority of
//! `hotels.example` chains to the shared root, and is refused all the same: by the checker
//! that access and registration use, and by TLS in both directions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, RootMode,
    policy::AllowListPolicy,
    tls::{CertificateChecker, ChainError, TlsIdentity},
};
use agw_proto::identity::{AgentId, Domain, GatewayId};
use agw_sdk::certificates::{AgentKey, CertificateRequests};
use common::*;
use rustls::{ClientConnection, ServerConnection, pki_types::ServerName};

const OTHER: &str = "hotels.example";

fn domain_authority(
    dir: &Path,
    root: &(std::path::PathBuf, std::path::PathBuf),
    domain: &str,
) -> CertificateAuthority {
    let config = AuthorityConfig {
        root: RootMode::Intermediate {
            root_cert: root.0.clone(),
            root_key: root.1.clone(),
        },
        ..AuthorityConfig::new(Domain::new(domain).unwrap(), dir, "http://127.0.0.1:1/crl")
    };
    let policy = AllowListPolicy::default().allow("Acme Travel", ["booking"]);
    CertificateAuthority::bootstrap(config, Box::new(policy), SystemTime::now()).unwrap()
}

/// A chain for `identity` that `ca` (in `dir`) signs with its own key, bypassing its checks:
/// what a rogue or compromised authority of another domain could make.
fn forged(dir: &Path, ca: &CertificateAuthority, identity: &str) -> (Vec<Vec<u8>>, Vec<u8>) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key.pem")).unwrap())
            .unwrap();
    let ca_der = ca.ca_chain()[0].clone();
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der.clone().into(), ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(86_400)).into();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = params.signed_by(&key, &issuer).unwrap();
    (vec![leaf.der().to_vec(), ca_der], key.serialize_der())
}

/// A TLS handshake in memory; the error of whichever side refused.
fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from("agw.invalid").unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name)?;
    let mut s = ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut bytes = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut bytes).unwrap();
        }
        s.read_tls(&mut &bytes[..]).unwrap();
        s.process_new_packets()?;
        let mut bytes = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut bytes).unwrap();
        }
        c.read_tls(&mut &bytes[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    Err(rustls::Error::General(
        "the handshake made no progress".into(),
    ))
}

#[test]
fn an_authority_vouches_for_its_own_domain_only() {
    let work = tempfile::tempdir().unwrap();
    let root = operator_root(work.path(), "root", 3650);
    let (dir_a, dir_b) = (work.path().join("a"), work.path().join("b"));
    let a = domain_authority(&dir_a, &root, DOMAIN);
    let b = domain_authority(&dir_b, &root, OTHER);
    let now = SystemTime::now();
    let crls = vec![a.crl(now).unwrap().der, b.crl(now).unwrap().der];
    let anchor = a.trust_anchor().to_vec();
    assert_eq!(anchor, b.trust_anchor(), "one root");

    // Each domain's own agents pass; b's forgery of a travel.example name does not.
    let alice = Agent::new("alice").certify(&a, now);
    let bob_id = AgentId::parse(&format!("spiffe://{OTHER}/agent/bob")).unwrap();
    let bob_key = AgentKey::generate().unwrap();
    let app = CertificateRequests::default()
        .application(&bob_key, &bob_id, materials())
        .unwrap();
    let bob = b
        .apply(&app.csr, app.materials.as_ref().unwrap(), now)
        .unwrap();
    let checker = CertificateChecker::new(&anchor, &crls).unwrap();
    assert_eq!(
        checker.check(&alice.chain, now).unwrap().identity,
        alice_id()
    );
    assert_eq!(
        checker.check(&bob.chain, now).unwrap().identity,
        bob_id.as_str()
    );
    let (fake_alice, fake_key) = forged(&dir_b, &b, &alice_id());
    match checker.check(&fake_alice, now) {
        Err(ChainError::Untrusted(why)) => assert!(why.contains("another domain"), "{why}"),
        other => panic!("a forged name accepted: {other:?}"),
    }

    // TLS: a's gateway refuses b's forgery of a travel.example client...
    let gateway = GatewayId::parse(&format!("spiffe://{DOMAIN}/agw/edge-1")).unwrap();
    let gw_key = AgentKey::generate().unwrap();
    let gw = a
        .issue_gateway(&gateway, &gw_key.csr(gateway.as_str()).unwrap(), now)
        .unwrap();
    let identity = |chain: Vec<Vec<u8>>, key_pkcs8: Vec<u8>| TlsIdentity {
        chain,
        key_pkcs8,
        trust_anchor: anchor.clone(),
        crls: crls.clone().into(),
        allow_unknown_revocation: false,
        renewable: None,
    };
    let server = identity(gw.chain.clone(), gw_key.to_pkcs8_der());
    let fake_client = identity(fake_alice, fake_key);
    let refused = handshake(
        fake_client.client_config(gateway.as_str()).unwrap(),
        server.server_config().unwrap(),
    );
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:?}").contains("ForeignIssuer")),
        "{refused:?}"
    );
    // ...and a travel.example client refuses b's forgery of a travel.example gateway.
    let (fake_gw, fake_gw_key) = forged(&dir_b, &b, gateway.as_str());
    let client = identity(gw.chain.clone(), gw_key.to_pkcs8_der());
    let refused = handshake(
        client.client_config(gateway.as_str()).unwrap(),
        identity(fake_gw, fake_gw_key).server_config().unwrap(),
    );
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:?}").contains("ForeignIssuer")),
        "{refused:?}"
    );
    // The genuine pair shakes hands.
    handshake(
        client.client_config(gateway.as_str()).unwrap(),
        server.server_config().unwrap(),
    )
    .unwrap();
}

fn alice_id() -> String {
    agent("alice").to_string()
}

#[test]
fn a_peer_s_crl_is_checked_against_the_authority_that_issued_its_certificate() {
    let work = tempfile::tempdir().unwrap();
    let root = operator_root(work.path(), "root", 3650);
    let a = domain_authority(&work.path().join("a"), &root, DOMAIN);
    let b = domain_authority(&work.path().join("b"), &root, OTHER);
    let now = SystemTime::now();
    let gateway = GatewayId::parse(&format!("spiffe://{OTHER}/agw/b1")).unwrap();
    let key = AgentKey::generate().unwrap();
    let chain = b
        .issue_gateway(&gateway, &key.csr(gateway.as_str()).unwrap(), now)
        .unwrap()
        .chain;
    let b_ca = b.ca_chain()[0].clone();
    let a_ca = a.ca_chain()[0].clone();
    // The issuer is found wherever the peer puts it, and never a certificate that plays no
    // part (another domain's authority slipped in first).
    let reordered = vec![chain[0].clone(), a_ca.clone(), b_ca.clone()];
    assert_eq!(agw_aca::tls::leaf_issuer(&reordered), Some(b_ca.clone()));
    assert_eq!(
        agw_aca::tls::leaf_issuer(&[chain[0].clone(), a_ca.clone()]),
        None
    );
    // b's CRL verifies with b's authority, not a's; it lists what b revoked, by number.
    let serial = agw_aca::tls::leaf_serial(&[chain[0].clone().into()]).unwrap();
    b.revoke_by_operator(
        &serial,
        agw_proto::pb::RevocationReason::KeyCompromise as i32,
        now,
    )
    .unwrap();
    let crl = b.crl(now).unwrap().der;
    let verified = agw_aca::tls::verify_crl(&crl, &b_ca).unwrap();
    assert_eq!(verified.revoked, vec![serial]);
    assert!(!verified.number.is_empty());
    assert!(agw_aca::tls::verify_crl(&crl, &a_ca).is_err());
    assert!(agw_aca::tls::verify_crl(b"not a crl", &b_ca).is_err());
    assert_eq!(
        agw_aca::tls::crl_distribution_points(&chain[0]),
        vec!["http://127.0.0.1:1/crl".to_owned()]
    );
}
