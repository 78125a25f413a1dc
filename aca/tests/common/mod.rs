//! A certificate authority in a temporary directory, agents that apply to it through the SDK,
//! and openssl run on what it issues.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agw_aca::{AuthorityConfig, CertificateAuthority, policy::AllowListPolicy};
use agw_proto::{
    Message,
    identity::{AgentId, Domain},
    pb,
};
use agw_sdk::certificates::{AgentKey, CertificateRequests, HeldCertificate};

pub const DOMAIN: &str = "travel.example";

/// A fixed start time, so tests run on simulated time.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

pub fn policy() -> AllowListPolicy {
    AllowListPolicy::default().allow("Acme Travel", ["booking", "payments"])
}

pub fn config(dir: &Path) -> AuthorityConfig {
    AuthorityConfig::new(
        Domain::new(DOMAIN).unwrap(),
        dir,
        "http://127.0.0.1:7810/crl/travel.example.crl",
    )
}

pub fn authority(dir: &Path, now: SystemTime) -> CertificateAuthority {
    CertificateAuthority::bootstrap(config(dir), Box::new(policy()), now).expect("bootstrap")
}

pub fn materials() -> pb::IdentityMaterials {
    pb::IdentityMaterials {
        organization: "Acme Travel".into(),
        qualification_ref: "REG-2026-001".into(),
        developer: "dev@acme.example".into(),
        function_type: "booking".into(),
        permission_scope: vec!["booking".into()],
        skills: vec!["hotel booking".into()],
    }
}

pub fn agent(name: &str) -> AgentId {
    AgentId::parse(&format!("spiffe://{DOMAIN}/agent/{name}")).unwrap()
}

/// An agent's side: its key and the requests it builds.
pub struct Agent {
    pub id: AgentId,
    pub key: AgentKey,
    pub requests: CertificateRequests,
}

impl Agent {
    pub fn new(name: &str) -> Agent {
        Agent {
            id: agent(name),
            key: AgentKey::generate().unwrap(),
            requests: CertificateRequests::default(),
        }
    }

    /// Applies through the protocol service and returns the reply.
    pub fn apply(
        &mut self,
        ca: &CertificateAuthority,
        materials: pb::IdentityMaterials,
        now: SystemTime,
    ) -> pb::CertificateReply {
        let request = self
            .requests
            .application(&self.key, &self.id, materials)
            .unwrap();
        let id = request.request_id;
        match ca.handle(&request.into(), now) {
            Some(Message::CertificateReply(reply)) => {
                assert_eq!(reply.request_id, id);
                reply
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub fn certify(&mut self, ca: &CertificateAuthority, now: SystemTime) -> HeldCertificate {
        HeldCertificate::from_reply(self.apply(ca, materials(), now)).expect("certified")
    }
}

pub fn refusal(reply: &pb::CertificateReply) -> pb::ErrorCode {
    reply.error.as_ref().expect("a refusal").error_code()
}

pub fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Runs openssl; returns (success, stdout + stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An operator's root certificate and key (PEM files), made with openssl: what a federation's
/// domain authorities are intermediates under.
pub fn operator_root(dir: &std::path::Path, name: &str, days: u32) -> (PathBuf, PathBuf) {
    let root_key = dir.join(format!("{name}.key"));
    let root_cert = dir.join(format!("{name}.pem"));
    let days = days.to_string();
    let (ok, out) = openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-subj",
        "/CN=Operator Root",
        "-days",
        &days,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        root_key.to_str().unwrap(),
        "-out",
        root_cert.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    (root_cert, root_key)
}
