//! The standalone `agw-ars` over mutual TLS, driven by the SDK's TLS connection: agents
//! register as themselves, discover each other, and nothing acknowledged is lost when the
//! server is killed with SIGKILL and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_aca::{AuthorityConfig, CertificateAuthority, policy::AllowListPolicy, tls::TlsIdentity};
use agw_proto::{
    Message,
    identity::{AgentId, Domain, GatewayId},
    pb,
    pb::ErrorCode,
};
use agw_sdk::{
    certificates::AgentKey,
    connection::{Connection, TlsConnection},
};
use common::DOMAIN;

const ARS: &str = "spiffe://travel.example/agw/ars";

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

struct Setup {
    ca: CertificateAuthority,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = AuthorityConfig::new(
        Domain::new(DOMAIN).unwrap(),
        dir.path().join("aca"),
        "http://127.0.0.1:1/crl",
    );
    let ca = CertificateAuthority::bootstrap(
        config,
        Box::new(AllowListPolicy::default().allow("Acme", [])),
        SystemTime::now(),
    )
    .unwrap();
    let key = AgentKey::generate().unwrap();
    let issued = ca
        .issue_gateway(
            &GatewayId::parse(ARS).unwrap(),
            &key.csr(ARS).unwrap(),
            SystemTime::now(),
        )
        .unwrap();
    let files = dir.path();
    std::fs::write(
        files.join("ars.pem"),
        issued
            .chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect::<String>(),
    )
    .unwrap();
    std::fs::write(files.join("ars.key"), key.to_pem()).unwrap();
    std::fs::write(
        files.join("anchor.pem"),
        pem("CERTIFICATE", ca.trust_anchor()),
    )
    .unwrap();
    std::fs::write(
        files.join("crl.der"),
        ca.crl(SystemTime::now()).unwrap().der,
    )
    .unwrap();
    Setup { ca, dir }
}

/// The server process; killed (SIGKILL) when dropped, also when a test fails.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> (Server, String) {
    let arg = |name: &str| dir.join(name);
    let mut child = Command::new(env!("CARGO_BIN_EXE_agw-ars"))
        .args(["--domain", DOMAIN, "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(arg("ars-data"))
        .arg("--cert")
        .arg(arg("ars.pem"))
        .arg("--key")
        .arg(arg("ars.key"))
        .arg("--trust-anchor")
        .arg(arg("anchor.pem"))
        .arg("--crl")
        .arg(arg("crl.der"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("listening on"), "{first}");
    let addr = first.split_whitespace().nth(5).unwrap().to_owned();
    std::thread::spawn(move || lines.for_each(drop));
    (Server(child), addr)
}

/// Certifies `name` with the ACA (real time: TLS checks validity against the real clock);
/// returns its ID, chain and a TLS client config that expects the ARS.
fn certified(
    ca: &CertificateAuthority,
    name: &str,
) -> (AgentId, Vec<Vec<u8>>, Arc<rustls::ClientConfig>) {
    let (id, key, issued) = common::certify_at(ca, name, SystemTime::now());
    let identity = TlsIdentity {
        chain: issued.chain.clone(),
        key_pkcs8: key.to_pkcs8_der(),
        trust_anchor: ca.trust_anchor().to_vec(),
        crls: vec![ca.crl(SystemTime::now()).unwrap().der].into(),
        allow_unknown_revocation: false,
        renewable: None,
    };
    (
        id,
        issued.chain,
        Arc::new(identity.client_config(ARS).unwrap()),
    )
}

/// An agent certified by the ACA, connected to the ARS as itself, with its registration.
fn agent(
    ca: &CertificateAuthority,
    name: &str,
    addr: &str,
) -> (AgentId, pb::RegisterRequest, TlsConnection) {
    let (id, chain, config) = certified(ca, name);
    let conn = Connection::connect_tls(addr, Duration::from_secs(10), config).unwrap();
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: id.to_string(),
            capabilities: vec!["hotel booking".into()],
            address: format!("127.0.0.1:9000/{name}"),
            ..Default::default()
        }),
        certificate_chain: chain.into_iter().map(Into::into).collect(),
    };
    (id, request, conn)
}

/// A TLS stream as agent "raw", for writing bytes no SDK would send.
fn raw_tls(
    ca: &CertificateAuthority,
    addr: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let (_, _, config) = certified(ca, "raw");
    let name = rustls::pki_types::ServerName::try_from("agw.invalid").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn discover(conn: &mut TlsConnection) -> Vec<pb::AgentProfile> {
    let req = pb::DiscoverRequest {
        request_id: 2,
        capabilities: vec!["booking".into()],
        limit: 100,
        ..Default::default()
    };
    let Message::DiscoverReply(r) = conn.request(req).unwrap() else {
        panic!()
    };
    assert_eq!(r.error, None);
    r.agents
}

#[test]
fn agents_register_over_mtls_and_sigkill_loses_nothing_acknowledged() {
    let s = setup();
    let (server, addr) = start(s.dir.path());
    let mut acknowledged = Vec::new();
    let mut first_conn = None;
    for i in 0..10 {
        let (_, request, mut conn) = agent(&s.ca, &format!("a{i}"), &addr);
        let Message::RegisterReply(r) = conn.request(request).unwrap() else {
            panic!()
        };
        assert_eq!(r.error, None);
        acknowledged.push(r.profile.unwrap().resource_id);
        first_conn.get_or_insert(conn);
    }
    let mut conn = first_conn.unwrap();
    assert_eq!(discover(&mut conn).len(), 10);

    // Another agent's registration on a0's connection: the certificate is not the peer's.
    let (_, bob_request, _) = agent(&s.ca, "bob", &addr);
    let Message::RegisterReply(r) = conn.request(bob_request).unwrap() else {
        panic!()
    };
    assert_eq!(r.error.unwrap().error_code(), ErrorCode::IdentityMismatch);
    // Deregistering someone else's profile.
    let dereg = pb::DeregisterAgentRequest {
        request_id: 3,
        resource_id: acknowledged[5].clone(),
    };
    let Message::DeregisterAgentReply(r) = conn.request(dereg).unwrap() else {
        panic!()
    };
    assert_eq!(r.error.unwrap().error_code(), ErrorCode::NotOwner);

    drop(server);
    let (server, addr) = start(s.dir.path());
    let (_, _, mut conn) = agent(&s.ca, "carol", &addr);
    let mut found: Vec<String> = discover(&mut conn)
        .into_iter()
        .map(|p| p.resource_id)
        .collect();
    found.sort();
    acknowledged.sort();
    assert_eq!(found, acknowledged);

    // A registration whose agent ID is not UTF-8: refused by the decoder, that connection
    // closed, the registry unchanged.
    let mut raw = raw_tls(&s.ca, &addr);
    let body = [0x08, 0x01, 0x12, 0x04, 0x12, 0x02, 0xc3, 0x28];
    let mut frame = vec![1, 0x30, 0, 0, 0, 0, 0, body.len() as u8];
    frame.extend_from_slice(&body);
    std::io::Write::write_all(&mut raw, &frame).unwrap();
    std::io::Write::flush(&mut raw).unwrap();
    let mut reply = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut reply);
    let mut decoder = agw_proto::FrameDecoder::new(agw_proto::FrameLimits::default());
    decoder.extend_from_slice(&reply);
    let Message::Notification(n) = decoder.decode().unwrap().unwrap().message().unwrap() else {
        panic!()
    };
    assert_eq!(n.code, ErrorCode::Malformed as i32);
    assert_eq!(discover(&mut conn).len(), 10);

    // Without a client certificate there is no session at all.
    let mut plain = Connection::connect(&addr, Duration::from_secs(5)).unwrap();
    assert!(plain.request(pb::CrlRequest { request_id: 1 }).is_err());

    // Stopped with SIGTERM and started again on the same data: the profiles are all there,
    // and the database is its owner's alone.
    let mut server = server;
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = server.0.wait();
    let (server, addr) = start(s.dir.path());
    let (_, _, mut conn) = agent(&s.ca, "dave", &addr);
    assert_eq!(discover(&mut conn).len(), 10);
    use std::os::unix::fs::PermissionsExt as _;
    let data = s.dir.path().join("ars-data");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("ars.redb")), 0o600);
    drop(server);
}
