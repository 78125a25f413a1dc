//! The `agw` binary end to end: it starts on its defaults with nothing prepared, agents get
//! certificates from its embedded authority and talk through it, a revocation closes a live
//! session, and SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_proto::{
    Message,
    identity::AgentId,
    pb::{self, ErrorCode},
};
use agw_sdk::{
    agent::{AgentConnection, AgentError, Credentials, Incoming},
    certificates::CertificateRequests,
    connection::Connection,
};
use bytes::Bytes;

struct Daemon {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    agents: String,
    aca: String,
    metrics: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &std::path::Path) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agw"))
        .args([
            "--domain",
            "travel.example",
            "--allow",
            "Acme",
            "--shards",
            "2",
        ])
        .args(["--listen", "127.0.0.1:0", "--aca-listen", "127.0.0.1:0"])
        .args([
            "--crl-listen",
            "127.0.0.1:0",
            "--registry-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let (mut agents, mut aca, mut metrics) = (String::new(), String::new(), String::new());
    while agents.is_empty() || aca.is_empty() || metrics.is_empty() {
        let line = lines.recv_timeout(Duration::from_secs(20)).unwrap();
        if let Some(rest) = line.strip_prefix("agw: agents connect to ") {
            agents = rest.to_owned();
        }
        if let Some(rest) = line.strip_prefix("agw: certificates from the ACA at ") {
            aca = rest.split_whitespace().next().unwrap().to_owned();
        }
        if let Some(rest) = line.strip_prefix("agw: metrics at ") {
            metrics = rest.split([' ', ',']).next().unwrap().to_owned();
        }
    }
    Daemon {
        child,
        lines,
        agents,
        aca,
        metrics,
    }
}

/// Applies for a certificate over the ACA protocol, as an agent would.
fn certify(aca: &str, name: &str) -> Arc<Credentials> {
    let agent = AgentId::parse(&format!("spiffe://travel.example/agent/{name}")).unwrap();
    let mut conn = Connection::connect(aca, Duration::from_secs(5)).unwrap();
    Arc::new(Credentials::enroll(agent, "Acme", |app| conn.request(app)).unwrap())
}

#[test]
fn the_daemon_certifies_relays_revokes_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = start(dir.path());
    let alice = certify(&daemon.aca, "alice");
    let bob = certify(&daemon.aca, "bob");
    let mut ca =
        AgentConnection::connect(&daemon.agents, alice.clone(), Duration::from_secs(5)).unwrap();
    let mut cb =
        AgentConnection::connect(&daemon.agents, bob.clone(), Duration::from_secs(5)).unwrap();
    let id = ca
        .send(bob.agent.as_str(), Bytes::from_static(b"hello bob"))
        .unwrap();
    match cb.recv(Duration::from_secs(5)).unwrap() {
        Some(Incoming::Message(m, _)) => {
            assert_eq!((m.message_id, &m.payload[..]), (id, &b"hello bob"[..]))
        }
        other => panic!("{other:?}"),
    }

    // Prometheus sees the relayed frame, per shard, and health answers.
    let scrape = |url: &str| {
        let out = Command::new("curl").args(["-sf", url]).output().unwrap();
        assert!(out.status.success(), "curl {url}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = scrape(&daemon.metrics);
    let delivered: u64 = text
        .lines()
        .filter(|l| l.starts_with("agw_frames_delivered_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(delivered, 1, "{text}");
    assert!(
        text.contains("agw_frames_nacked_total{shard=\"0\",reason=\"NO_ROUTE\"} 0"),
        "{text}"
    );
    assert_eq!(
        scrape(&daemon.metrics.replace("/metrics", "/health")),
        "ok\n"
    );

    // Bob revokes his own certificate at the authority: the gateway closes his session.
    let request = CertificateRequests::default()
        .revocation(
            &bob.certificate,
            &bob.key,
            pb::RevocationReason::KeyCompromise,
            SystemTime::now(),
        )
        .unwrap();
    let mut conn = Connection::connect(&daemon.aca, Duration::from_secs(5)).unwrap();
    let reply = conn.request(request).unwrap();
    assert!(
        matches!(reply, Message::RevocationReply(ref r) if r.error.is_none()),
        "{reply:?}"
    );
    match cb.recv(Duration::from_secs(5)) {
        Err(AgentError::Closed(Some(n))) => assert_eq!(n.code(), ErrorCode::CertRevoked),
        other => panic!("{other:?}"),
    }
    match AgentConnection::connect(&daemon.agents, bob, Duration::from_secs(5)) {
        Err(AgentError::Refused { code, .. }) => assert_eq!(code, ErrorCode::CertRevoked),
        other => panic!("{other:?}"),
    }

    // SIGTERM: a clean exit that reports what it relayed.
    let pid = daemon.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = daemon.lines.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("stopped; 1 frames accepted, 1 delivered")),
        "{rest:?}"
    );
}

#[test]
fn the_demo_books_a_room_across_three_domains() {
    let out = Command::new(env!("CARGO_BIN_EXE_agw"))
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "registered as ars:a.example:",
        "found spiffe://a.example/agent/hotel",
        "3 gateways crossed",
        "traveller received",
        "== done",
    ] {
        assert!(text.contains(step), "{step:?} missing from:\n{text}");
    }
}
