//! Gateways of several domains under one federation root, for peering tests: each domain has
//! its own authority (an intermediate under the root) and its gateway a certificate from it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, RootMode, policy::AllowListPolicy, tls::TlsIdentity,
};
use agw_controlplane::node::Node;
use agw_dataplane::routing::Route;
use agw_proto::Message;
use agw_proto::{
    identity::{AgentId, Domain, GatewayId},
    pb,
};
use agw_sdk::{agent::Credentials, certificates::AgentKey};

pub struct Authority {
    pub ca: CertificateAuthority,
    pub gateway: GatewayId,
}

/// A root for the federation, written as PEM files the authorities are bootstrapped under.
pub fn federation_root(dir: &Path) -> (PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "Federation Root");
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("root.pem"), dir.join("root.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

pub fn authority(dir: &Path, root: &(PathBuf, PathBuf), name: &str) -> Authority {
    let domain = Domain::new(&format!("{name}.example")).unwrap();
    let config = AuthorityConfig {
        root: RootMode::Intermediate {
            root_cert: root.0.clone(),
            root_key: root.1.clone(),
        },
        ..AuthorityConfig::new(domain.clone(), dir.join(name), "http://127.0.0.1:1/crl")
    };
    let ca = CertificateAuthority::bootstrap(
        config,
        Box::new(AllowListPolicy::default().allow("Acme", [])),
        SystemTime::now() - Duration::from_secs(60),
    )
    .unwrap();
    let gateway = GatewayId::new(&domain, &format!("{name}1")).unwrap();
    Authority { ca, gateway }
}

pub fn identity(a: &Authority, all: &[&Authority]) -> TlsIdentity {
    let key = AgentKey::generate().unwrap();
    let csr = key.csr(a.gateway.as_str()).unwrap();
    let issued =
        a.ca.issue_gateway(&a.gateway, &csr, SystemTime::now())
            .unwrap();
    TlsIdentity {
        chain: issued.chain,
        key_pkcs8: key.to_pkcs8_der(),
        trust_anchor: a.ca.trust_anchor().to_vec(),
        allow_unknown_revocation: false,
        renewable: None,
        crls: all
            .iter()
            .map(|o| o.ca.crl(SystemTime::now()).unwrap().der)
            .collect::<Vec<_>>()
            .into(),
    }
}

impl Authority {
    /// Certifies an agent of this domain, as the agent would through the ACA protocol.
    pub fn certify(&self, name: &str) -> Arc<Credentials> {
        let agent = AgentId::new(self.ca.domain(), name).unwrap();
        let ca = &self.ca;
        let ask = |app: pb::CertificateApplication| {
            ca.handle(&app.into(), SystemTime::now()).ok_or("no answer")
        };
        Arc::new(Credentials::enroll(agent, "Acme", "", ask).unwrap())
    }
}

/// An agent of `node`'s domain, enrolled with the node's own authority (organisation
/// `Example`, with its enrollment token) and these permission scopes.
pub fn certify(
    node: &agw_controlplane::node::Node,
    name: &str,
    scopes: &[&str],
) -> Arc<Credentials> {
    let agent = AgentId::new(node.authority.domain(), name).unwrap();
    let materials = pb::IdentityMaterials {
        organization: "Example".into(),
        permission_scope: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let token = node.enrollment_token("Example").unwrap().to_owned();
    let ask = |app: pb::CertificateApplication| {
        node.authority
            .handle(&app.into(), SystemTime::now())
            .ok_or("no answer")
    };
    Arc::new(Credentials::enroll_with(agent, materials, &token, ask).unwrap())
}

/// The files a client we did not write is given: the domain's trust anchor (in the gateway's
/// data directory `data`), the agent's chain and its key, as PEM.
pub struct PemFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `who`'s chain and key into `dir` as `<name>.pem` and `<name>.key`.
pub fn pem_files(dir: &Path, data: &Path, who: &Credentials, name: &str) -> PemFiles {
    let chain: String = who
        .certificate
        .chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    let cert = dir.join(format!("{name}.pem"));
    std::fs::write(&cert, chain).unwrap();
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&key, who.key.to_pem()).unwrap();
    PemFiles {
        ca: data.join("aca/trust-anchor.pem"),
        cert,
        key,
    }
}

/// An a2a-sdk server on loopback (tests/a2a/a2a_server.py), closing idle connections after
/// `keep_alive` seconds; killed when dropped.
pub struct A2aServer(std::process::Child);

impl A2aServer {
    pub fn start(port: u16, keep_alive: u32) -> A2aServer {
        A2aServer::start_tls(port, keep_alive, None)
    }

    /// Over HTTPS with `tls`'s certificate chain and key, client certificates required under
    /// its CA.
    pub fn start_tls(port: u16, keep_alive: u32, tls: Option<&PemFiles>) -> A2aServer {
        use std::io::BufRead as _;
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/a2a/a2a_server.py");
        let mut command = std::process::Command::new("python3");
        command
            .arg(script)
            .args([port.to_string(), keep_alive.to_string()]);
        if let Some(f) = tls {
            command.args([&f.cert, &f.key, &f.ca]);
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the A2A server did not start");
        A2aServer(child)
    }
}

impl Drop for A2aServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on loopback now, and never handed out before in this process: a test that
/// stops its server and starts it again on the same port does not find another test's server
/// there (the tests of a binary run in parallel in one process).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Apertium's APy translation service (Debian's `apertium-apy`, with the pairs Debian's
/// `apertium-*` packages installed, English <-> Spanish among them) on a free loopback port;
/// killed when dropped.
pub struct Apy {
    child: std::process::Child,
    pub url: String,
}

impl Apy {
    pub fn start() -> Apy {
        let port = free_port();
        let child = std::process::Command::new("apertium-apy")
            .args(["-p", &port.to_string(), "/usr/share/apertium/modes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("apertium-apy is not installed: scripts/test.sh installs it");
        let apy = Apy {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Ready when it lists its pairs.
        let start = std::time::Instant::now();
        loop {
            let listed = std::process::Command::new("curl")
                .args(["-sf", &format!("{}/listPairs", apy.url)])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.windows(3).any(|w| w == b"spa"));
            if listed {
                return apy;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "APy did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// What APy itself answers for `text` from `pair` ("eng|spa"), asked with curl.
    pub fn translate(&self, pair: &str, text: &str) -> String {
        let out = std::process::Command::new("curl")
            .args([
                "-sf",
                "--data-urlencode",
                &format!("langpair={pair}"),
                "--data-urlencode",
                &format!("q={text}"),
                "--data-urlencode",
                "markUnknown=no",
                &format!("{}/translate", self.url),
            ])
            .output()
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        answer["responseData"]["translatedText"]
            .as_str()
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for Apy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `conn` receives next within 10 s, heartbeat answers skipped.
pub fn next(conn: &mut agw_sdk::agent::AgentConnection) -> agw_sdk::agent::Incoming {
    use agw_sdk::agent::Incoming;
    loop {
        match conn.recv(std::time::Duration::from_secs(10)).unwrap() {
            Some(Incoming::HeartbeatAck(_)) => continue,
            Some(other) => return other,
            None => panic!("nothing arrived"),
        }
    }
}

/// The next message `conn` receives (anything else first is a failure).
pub fn message(conn: &mut agw_sdk::agent::AgentConnection) -> pb::AgentMessage {
    match next(conn) {
        agw_sdk::agent::Incoming::Message(m, _) => m,
        other => panic!("{other:?} instead of a message"),
    }
}

/// mosquitto_pub/_sub's arguments for the gateway at `port` with `files`, MQTT `version`.
pub fn mosquitto(program: &str, port: u16, f: &PemFiles, version: &str) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .arg("--cafile")
        .arg(&f.ca)
        .arg("--cert")
        .arg(&f.cert)
        .arg("--key")
        .arg(&f.key);
    c
}

/// Registers `who` at `node`'s registry with one capability; its resource ID.
pub fn register(node: &Node, who: &Credentials, capability: &str) -> String {
    let mut conn = agw_demo::registry(node, who).unwrap();
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: who.agent.to_string(),
            capabilities: vec![capability.into()],
            address: node.addresses().agents.to_string(),
            ..Default::default()
        }),
        certificate_chain: who.certificate.chain.clone(),
    };
    match conn.request(request).unwrap() {
        Message::RegisterReply(r) => {
            assert_eq!(r.error, None);
            r.profile.unwrap().resource_id
        }
        other => panic!("{other:?}"),
    }
}

/// `node`'s route to `agent`, if any.
pub fn route(node: &Node, agent: &str) -> Option<Route> {
    let (routes, _) = node.control().unwrap().routes(Some(agent), 1).unwrap();
    routes.first().map(|r| r.route)
}
