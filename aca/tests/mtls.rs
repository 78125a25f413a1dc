//! rustls (ring provider) accepts the authority's certificates for mutual TLS in both
//! directions, identifies peers by their SPIFFE URI, and refuses a revoked client, a foreign
//! authority and a server that is not the one meant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    sync::Arc,
    time::SystemTime,
};

use agw_aca::{
    CertificateAuthority,
    tls::{TlsIdentity, peer_identity},
};
use agw_proto::{identity::GatewayId, pb};
use agw_sdk::certificates::{AgentKey, HeldCertificate};
use common::*;
use rustls::{ClientConnection, ServerConnection, pki_types::ServerName};

const GATEWAY: &str = "spiffe://travel.example/agw/edge-1";

/// Runs a handshake between the two in memory, then sends "ping" from client to server.
fn connect(
    client: ClientConfig,
    server: ServerConfig,
) -> Result<(ServerConnection, String), rustls::Error> {
    let name = ServerName::try_from("gateway.invalid").unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name)?;
    let mut s = ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets()?;
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            c.writer().write_all(b"ping").unwrap();
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut got = String::new();
            let _ = s.reader().read_to_string(&mut got);
            return Ok((s, got));
        }
    }
    panic!("handshake did not finish");
}

type ClientConfig = rustls::ClientConfig;
type ServerConfig = rustls::ServerConfig;

fn identity(ca: &CertificateAuthority, held: &HeldCertificate, key: &AgentKey) -> TlsIdentity {
    TlsIdentity {
        chain: held.chain.iter().map(|c| c.to_vec()).collect(),
        key_pkcs8: key.to_pkcs8_der(),
        trust_anchor: ca.trust_anchor().to_vec(),
        crls: vec![ca.crl(SystemTime::now()).unwrap().der].into(),
        allow_unknown_revocation: false,
        renewable: None,
    }
}

fn gateway(ca: &CertificateAuthority, now: SystemTime) -> (HeldCertificate, AgentKey) {
    let key = AgentKey::generate().unwrap();
    let id = GatewayId::parse(GATEWAY).unwrap();
    let issued = ca
        .issue_gateway(&id, &key.csr(GATEWAY).unwrap(), now)
        .unwrap();
    let reply = pb::CertificateReply {
        certificate_chain: issued.chain.into_iter().map(Into::into).collect(),
        serial: issued.serial.into(),
        ..Default::default()
    };
    (HeldCertificate::from_reply(reply).unwrap(), key)
}

#[test]
fn mutual_tls_works_both_ways_and_names_each_peer() {
    // rustls checks validity against the real clock, so these certificates start now.
    let now = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), now);
    let (gw_cert, gw_key) = gateway(&ca, now);
    let mut alice = Agent::new("alice");
    let alice_cert = alice.certify(&ca, now);

    let server = identity(&ca, &gw_cert, &gw_key).server_config().unwrap();
    let client = identity(&ca, &alice_cert, &alice.key)
        .client_config(GATEWAY)
        .unwrap();
    let (server_side, got) = connect(client, server).unwrap();
    assert_eq!(got, "ping");
    let peer = peer_identity(server_side.peer_certificates().unwrap());
    assert_eq!(peer.as_deref(), Some("spiffe://travel.example/agent/alice"));

    // Roles reversed: the agent's certificate serves, the gateway's is the client's.
    let server = identity(&ca, &alice_cert, &alice.key)
        .server_config()
        .unwrap();
    let client = identity(&ca, &gw_cert, &gw_key)
        .client_config("spiffe://travel.example/agent/alice")
        .unwrap();
    let (server_side, _) = connect(client, server).unwrap();
    assert_eq!(
        peer_identity(server_side.peer_certificates().unwrap()).as_deref(),
        Some(GATEWAY)
    );
}

#[test]
fn a_revoked_client_a_foreign_authority_and_the_wrong_server_are_refused() {
    let now = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), now);
    let (gw_cert, gw_key) = gateway(&ca, now);
    let mut alice = Agent::new("alice");
    let alice_cert = alice.certify(&ca, now);

    // The client expects another gateway.
    let server = identity(&ca, &gw_cert, &gw_key).server_config().unwrap();
    let client = identity(&ca, &alice_cert, &alice.key)
        .client_config("spiffe://travel.example/agw/edge-2")
        .unwrap();
    assert!(connect(client, server).is_err());

    // A certificate from another authority.
    let other_dir = tempfile::tempdir().unwrap();
    let other = authority(other_dir.path(), now);
    let mut mallory = Agent::new("mallory");
    let mallory_cert = mallory.certify(&other, now);
    let mut foreign = identity(&other, &mallory_cert, &mallory.key);
    foreign.trust_anchor = ca.trust_anchor().to_vec();
    foreign.crls = vec![ca.crl(now).unwrap().der].into();
    let server = identity(&ca, &gw_cert, &gw_key).server_config().unwrap();
    // Same subject name as ours, other key: webpki finds the signature bad.
    let err = connect(foreign.client_config(GATEWAY).unwrap(), server).unwrap_err();
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");

    // Alice's certificate revoked: refused at the next handshake, once the CRL has it.
    ca.revoke_by_operator(
        &alice_cert.serial,
        pb::RevocationReason::KeyCompromise as i32,
        now,
    )
    .unwrap();
    let server = identity(&ca, &gw_cert, &gw_key).server_config().unwrap();
    let client = identity(&ca, &alice_cert, &alice.key)
        .client_config(GATEWAY)
        .unwrap();
    let err = connect(client, server).unwrap_err();
    assert!(format!("{err}").contains("Revoked"), "{err}");
}

#[test]
fn a_renewed_certificate_is_presented_from_the_next_handshake_on() {
    let now = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), now);
    let (first, gw_key) = gateway(&ca, now);
    let mut alice = Agent::new("alice");
    let alice_cert = alice.certify(&ca, now);
    let renewable = agw_aca::tls::RenewableCertificate::new(
        first.chain.iter().map(|c| c.to_vec()).collect(),
        &gw_key.to_pkcs8_der(),
    )
    .unwrap();
    let mut gw = identity(&ca, &first, &gw_key);
    gw.renewable = Some(renewable.clone());
    // One configuration, made once, as a long-running server keeps it.
    let server = gw.server_config().unwrap();
    let client = || {
        identity(&ca, &alice_cert, &alice.key)
            .client_config(GATEWAY)
            .unwrap()
    };
    let presented = |server: &ServerConfig| {
        let name = ServerName::try_from("gateway.invalid").unwrap();
        let mut c = ClientConnection::new(Arc::new(client()), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server.clone())).unwrap();
        while c.is_handshaking() || s.is_handshaking() {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
        c.peer_certificates().unwrap()[0].as_ref().to_vec()
    };
    assert_eq!(presented(&server), first.der());

    // The same key's renewal (past 70% of the lifetime the authority issues a new one): the
    // same server configuration presents it.
    let later = now + std::time::Duration::from_secs(64 * 86_400);
    let id = GatewayId::parse(GATEWAY).unwrap();
    let renewed = ca
        .issue_gateway(&id, &gw_key.csr(GATEWAY).unwrap(), later)
        .unwrap();
    assert_ne!(renewed.serial, first.serial);
    // (Valid from `later`: checked here against the chain it presents, not the clock.)
    renewable.renew(renewed.chain.clone()).unwrap();
    assert_eq!(renewable.chain(), renewed.chain);
    let name = ServerName::try_from("gateway.invalid").unwrap();
    let mut s = ServerConnection::new(Arc::new(server.clone())).unwrap();
    let mut c = ClientConnection::new(Arc::new(client()), name).unwrap();
    let mut buf = Vec::new();
    c.write_tls(&mut buf).unwrap();
    s.read_tls(&mut buf.as_slice()).unwrap();
    s.process_new_packets().unwrap();
    let mut out = Vec::new();
    while s.wants_write() {
        s.write_tls(&mut out).unwrap();
    }
    c.read_tls(&mut out.as_slice()).unwrap();
    // The client refuses a certificate not valid yet by its clock: the server presented the
    // renewed one.
    assert!(matches!(
        c.process_new_packets(),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. }
        ))
    ));

    // A chain of another key is refused; the current one stays.
    let (stranger, _) = gateway(&authority(&dir.path().join("other"), now), now);
    assert!(
        renewable
            .renew(stranger.chain.iter().map(|c| c.to_vec()).collect())
            .is_err()
    );
    assert_eq!(renewable.chain(), renewed.chain);
}

#[test]
fn crls_replaced_while_configurations_run_count_from_the_next_handshake() {
    let now = SystemTime::now();
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path(), now);
    let (gw_cert, gw_key) = gateway(&ca, now);
    let mut alice = Agent::new("alice");
    let alice_cert = alice.certify(&ca, now);
    let mut bob = Agent::new("bob");
    let bob_cert = bob.certify(&ca, now);

    // Configurations made once, before anything is revoked.
    let gateway = identity(&ca, &gw_cert, &gw_key);
    let server = gateway.server_config().unwrap();
    let alice_id = identity(&ca, &alice_cert, &alice.key);
    let to_gateway = alice_id.client_config(GATEWAY).unwrap();
    let bob_server = identity(&ca, &bob_cert, &bob.key).server_config().unwrap();
    let to_bob = gateway
        .client_config("spiffe://travel.example/agent/bob")
        .unwrap();
    assert!(connect(to_gateway.clone(), server.clone()).is_ok());
    assert!(connect(to_bob.clone(), bob_server.clone()).is_ok());

    for serial in [&alice_cert.serial, &bob_cert.serial] {
        ca.revoke_by_operator(serial, pb::RevocationReason::KeyCompromise as i32, now)
            .unwrap();
    }
    // The same configurations: the old CRLs still pass both.
    assert!(connect(to_gateway.clone(), server.clone()).is_ok());
    // The gateway's CRLs replaced: its server refuses alice, its client refuses bob.
    gateway.crls.set(vec![ca.crl(now).unwrap().der]);
    let err = connect(to_gateway.clone(), server.clone()).unwrap_err();
    assert!(format!("{err}").contains("Revoked"), "{err}");
    let err = connect(to_bob.clone(), bob_server.clone()).unwrap_err();
    assert!(format!("{err}").contains("Revoked"), "{err}");
}
