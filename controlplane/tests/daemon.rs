//! The `agw` and `agwctl` binaries end to end: the daemon starts on its defaults with nothing
//! prepared, agents get certificates from its embedded authority and talk through it, the
//! operator's CLI shows and changes it (peers, routes, agents, stats, certificates, reload,
//! drain), a revocation closes a live session, and SIGTERM drains it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

mod common;

use agw_aca::tls::TlsIdentity;
use agw_proto::{Message, identity::AgentId, pb, pb::ErrorCode};
use agw_sdk::{
    agent::{AgentConnection, AgentError, Credentials, Incoming},
    certificates::{AgentKey, CertificateRequests, HeldCertificate},
    connection::{Connection, TlsConnection},
};
use bytes::Bytes;
use serde_json::Value;

struct Daemon {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    agents: String,
    aca: String,
    registry: String,
    metrics: String,
    est: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Waits for a line of the daemon's output containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

fn agw(data_dir: &Path, config: Option<&Path>) -> Command {
    agw_serving_crl_on(data_dir, config, "127.0.0.1:0")
}

fn agw_serving_crl_on(data_dir: &Path, config: Option<&Path>, crl: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agw"));
    command
        .args([
            "--domain",
            "travel.example",
            "--allow",
            "Acme",
            "--shards",
            "2",
        ])
        .args(["--listen", "127.0.0.1:0", "--aca-listen", "127.0.0.1:0"])
        .args(["--crl-listen", crl, "--registry-listen", "127.0.0.1:0"])
        .args([
            "--peering-listen",
            "127.0.0.1:0",
            "--relay-links-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--est-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir);
    if let Some(c) = config {
        command.arg("--config").arg(c);
    }
    command
}

fn start(data_dir: &Path, config: Option<&Path>) -> Daemon {
    start_command(agw(data_dir, config))
}

fn start_command(mut command: Command) -> Daemon {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
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
    let (mut registry, mut est) = (String::new(), String::new());
    loop {
        let line = lines.recv_timeout(Duration::from_secs(20)).unwrap();
        if let Some(rest) = line.strip_prefix("agw: agents connect to ") {
            agents = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        if let Some(rest) = line.strip_prefix("agw: certificates from the ACA at ") {
            aca = rest.split_whitespace().next().unwrap().to_owned();
        }
        if let Some(rest) = line.strip_prefix("agw: registry (mutual TLS) at ") {
            registry = rest.to_owned();
        }
        if let Some(rest) = line.strip_prefix("agw: EST (RFC 7030) at https://") {
            est = rest.split('/').next().unwrap().to_owned();
        }
        if let Some(rest) = line.strip_prefix("agw: metrics at ") {
            metrics = rest.split([' ', ',']).next().unwrap().to_owned();
        }
        // The last line of the banner.
        if line.starts_with("agw: Ctrl-C") {
            break;
        }
    }
    assert!(!agents.is_empty() && !aca.is_empty() && !metrics.is_empty() && !registry.is_empty());
    assert!(!est.is_empty());
    Daemon {
        child,
        lines,
        agents,
        aca,
        registry,
        metrics,
        est,
    }
}

/// Applies for a certificate over the ACA protocol, as an agent would.
fn certify(aca: &str, data_dir: &Path, name: &str) -> Arc<Credentials> {
    let agent = AgentId::parse(&format!("spiffe://travel.example/agent/{name}")).unwrap();
    let mut conn = Connection::connect(aca, Duration::from_secs(5)).unwrap();
    let token = enrollment_token(data_dir, "Acme");
    Arc::new(Credentials::enroll(agent, "Acme", &token, |app| conn.request(app)).unwrap())
}

/// `organization`'s token, from the file the daemon keeps for its operator.
fn enrollment_token(data_dir: &Path, organization: &str) -> String {
    let tokens = std::fs::read_to_string(data_dir.join("aca/enrollment-tokens")).unwrap();
    tokens
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (token, org) = l.split_once(' ')?;
            (org == organization).then(|| token.to_owned())
        })
        .unwrap_or_else(|| panic!("no token for {organization}"))
}

/// `who`'s mutual-TLS connection to the daemon's registry (gateway `agw-1`).
fn registry(daemon: &Daemon, data: &Path, who: &Credentials) -> TlsConnection {
    let anchor = std::fs::read_to_string(data.join("aca").join("trust-anchor.pem")).unwrap();
    let identity = TlsIdentity {
        chain: who.certificate.chain.iter().map(|c| c.to_vec()).collect(),
        key_pkcs8: who.key.to_pkcs8_der(),
        trust_anchor: pem::parse(anchor).unwrap().into_contents(),
        crls: Default::default(),
        allow_unknown_revocation: true,
        renewable: None,
    };
    let config = identity
        .client_config("spiffe://travel.example/agw/agw-1")
        .unwrap();
    Connection::connect_tls(&daemon.registry, Duration::from_secs(5), Arc::new(config)).unwrap()
}

/// `from` sends `to` a message through the daemon's relay, which must arrive.
fn relays(daemon: &Daemon, from: &Arc<Credentials>, to: &Arc<Credentials>) {
    let mut cf =
        AgentConnection::connect(&daemon.agents, from.clone(), Duration::from_secs(5)).unwrap();
    let mut ct =
        AgentConnection::connect(&daemon.agents, to.clone(), Duration::from_secs(5)).unwrap();
    let id = cf
        .send(to.agent.as_str(), Bytes::from_static(b"still here"))
        .unwrap();
    match ct.recv(Duration::from_secs(5)).unwrap() {
        Some(Incoming::Message(m, _)) => assert_eq!(m.message_id, id),
        other => panic!("{other:?}"),
    }
}

/// Runs agwctl; returns whether it succeeded, its stdout and its stderr.
fn agwctl(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agwctl"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs agwctl with `--output json`, which must succeed.
fn agwctl_json(data_dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let (ok, out, err) = agwctl(data_dir, &all);
    assert!(ok, "agwctl {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("agwctl {args:?}: {e}: {out}"))
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_daemon_relays_and_its_operator_sees_and_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("agw.toml");
    // Translation on, with an engine nobody asks here (no agent names a language).
    std::fs::write(
        &config,
        "name = \"edge-1\"\n[[translation.engine]]\nkind = \"libretranslate\"\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let daemon = start(&data, Some(&config));
    // A squatter without the organisation's token gets nothing, not even alice's name.
    let squat = CertificateRequests::default()
        .application(
            &AgentKey::generate().unwrap(),
            &AgentId::parse("spiffe://travel.example/agent/alice").unwrap(),
            pb::IdentityMaterials {
                organization: "Acme".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let mut conn = Connection::connect(&daemon.aca, Duration::from_secs(5)).unwrap();
    let Message::CertificateReply(refused) = conn.request(squat).unwrap() else {
        panic!("no certificate reply")
    };
    assert_eq!(
        refused.error.unwrap().error_code(),
        ErrorCode::EnrollmentUnauthenticated
    );
    let alice = certify(&daemon.aca, &data, "alice");
    let bob = certify(&daemon.aca, &data, "bob");
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

    // Prometheus sees the relayed frame and its time in the gateway, per shard; health
    // answers.
    let scrape = |url: &str| {
        let out = Command::new("curl").args(["-sf", url]).output().unwrap();
        assert!(out.status.success(), "curl {url}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = scrape(&daemon.metrics);
    let sum = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(sum("agw_frames_delivered_total{"), 1, "{text}");
    assert_eq!(sum("agw_relay_residence_seconds_count{"), 1, "{text}");
    assert!(
        text.contains("agw_relay_residence_seconds_bucket{le=\"+Inf\",shard=\"0\"}")
            || text.contains("agw_relay_residence_seconds_bucket{shard=\"0\",le=\"+Inf\"}"),
        "{text}"
    );
    assert!(
        text.contains("agw_frames_nacked_total{shard=\"0\",reason=\"NO_ROUTE\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("agw_translation_failures_total 0")
            && text.contains("agw_translation_added_seconds_count 0"),
        "{text}"
    );
    assert_eq!(
        scrape(&daemon.metrics.replace("/metrics", "/health")),
        "ok\n"
    );

    // agwctl: stats, agents, routes.
    let stats = agwctl_json(&data, &["stats", "--interval", "0.2"]);
    assert_eq!(stats["gateway"], "spiffe://travel.example/agw/edge-1");
    let shards = stats["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let total = |key: &str| -> u64 { shards.iter().map(|s| s[key].as_u64().unwrap()).sum() };
    assert_eq!((total("accepted"), total("delivered")), (1, 1), "{stats}");
    let resided: u64 = shards
        .iter()
        .flat_map(|s| s["residence"].as_array().unwrap().clone())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(resided, 1);
    assert_eq!(stats["translation"]["failed"], 0, "{stats}");
    let (ok, table, _) = agwctl(&data, &["stats", "--interval", "0"]);
    assert!(
        ok && table.contains("DELIVERED") && table.contains("edge-1"),
        "{table}"
    );
    assert!(
        table.contains("Translation: 0 translated (none), 0 unchanged, 0 failed"),
        "{table}"
    );

    let agents = agwctl_json(&data, &["agents"]);
    assert_eq!(agents["total"], 2, "{agents}");
    for a in agents["agents"].as_array().unwrap() {
        assert_eq!(
            (&a["local"], &a["status"]),
            (&Value::Bool(true), &Value::from("running"))
        );
    }
    let routes = agwctl_json(&data, &["routes"]);
    assert_eq!(routes["total"], 2, "{routes}");
    let route = agwctl_json(&data, &["routes", "--agent", bob.agent.as_str()]);
    assert_eq!(route["routes"][0]["route"], "local", "{route}");
    let (ok, _, err) = agwctl(
        &data,
        &["routes", "--agent", "spiffe://travel.example/agent/nobody"],
    );
    assert!(!ok && err.contains("no route"), "{err}");

    // Maintenance mode: peers are told the gateway is temporarily offline, then running.
    let on = agwctl_json(&data, &["maintenance", "on"]);
    assert_eq!(on["status"], "TEMPORARILY_OFFLINE", "{on}");
    assert_eq!(
        agwctl_json(&data, &["maintenance", "status"])["maintenance"],
        true
    );
    let (ok, text, _) = agwctl(&data, &["maintenance", "off"]);
    assert!(ok && text.contains("RUNNING"), "{text}");

    // A wrong token is refused, with the reason.
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token").unwrap();
    let (ok, _, err) = agwctl(&data, &["--token-file", path(&wrong), "peers"]);
    assert!(!ok && err.contains("ADMIN_UNAUTHENTICATED"), "{err}");

    // Certificates: one for a new gateway of the domain, which openssl verifies.
    let key = AgentKey::generate().unwrap();
    let csr = key.csr("spiffe://travel.example/agw/edge-2").unwrap();
    let csr_path = dir.path().join("edge-2.csr");
    std::fs::write(
        &csr_path,
        pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr)),
    )
    .unwrap();
    let chain = dir.path().join("edge-2.pem");
    // The CSR names edge-2: it is not certified as another gateway.
    let (ok, _, err) = agwctl(
        &data,
        &[
            "cert",
            "issue",
            "--gateway",
            "spiffe://travel.example/agw/edge-3",
            "--csr",
            path(&csr_path),
        ],
    );
    assert!(
        !ok && err.contains("IDENTITY_MISMATCH") && err.contains("edge-2"),
        "{err}"
    );
    let issued = agwctl_json(
        &data,
        &[
            "cert",
            "issue",
            "--gateway",
            "spiffe://travel.example/agw/edge-2",
            "--csr",
            path(&csr_path),
            "--out",
            path(&chain),
        ],
    );
    assert!(!issued["serial"].as_str().unwrap().is_empty(), "{issued}");
    let anchor = data.join("aca").join("trust-anchor.pem");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        path(&anchor),
        "-untrusted",
        path(&chain),
        path(&chain),
    ]);
    assert!(verified.contains(": OK"), "{verified}");

    // The operator revokes bob's certificate: his live session closes, the CRL lists him.
    let serial = hex::encode(&bob.certificate.serial);
    let (ok, _, err) = agwctl(
        &data,
        &[
            "cert",
            "revoke",
            "--serial",
            &serial,
            "--reason",
            "key-compromise",
        ],
    );
    assert!(ok, "{err}");
    match cb.recv(Duration::from_secs(5)) {
        Err(AgentError::Closed(Some(n))) => assert_eq!(n.code(), ErrorCode::CertRevoked),
        other => panic!("{other:?}"),
    }
    match AgentConnection::connect(&daemon.agents, bob, Duration::from_secs(5)) {
        Err(AgentError::Refused { code, .. }) => assert_eq!(code, ErrorCode::CertRevoked),
        other => panic!("{other:?}"),
    }
    let crl_path = dir.path().join("crl.pem");
    let crl = agwctl_json(&data, &["cert", "crl", "--out", path(&crl_path)]);
    assert_eq!(crl["revoked"], serde_json::json!([serial]), "{crl}");
    let crl_text = openssl(&["crl", "-in", path(&crl_path), "-noout", "-text"]);
    assert!(crl_text.to_lowercase().contains(&serial), "{crl_text}");

    // Reload: limits and a new peer apply live; a new name needs a restart.
    std::fs::write(
        &config,
        "name = \"edge-9\"\n[limits]\nmax_connections_per_shard = 5000\n\
         [[peer]]\ngateway = \"spiffe://hotels.example/agw/h1\"\naddress = \"127.0.0.1:9\"\n",
    )
    .unwrap();
    let reloaded = agwctl_json(&data, &["reload"]);
    let applied = reloaded["applied"].to_string();
    assert!(applied.contains("5000 connections per shard"), "{reloaded}");
    assert!(
        applied.contains("peer spiffe://hotels.example/agw/h1 added"),
        "{reloaded}"
    );
    assert!(
        reloaded["needs_restart"]
            .to_string()
            .contains("name (running edge-1, file edge-9)"),
        "{reloaded}"
    );
    let peers = agwctl_json(&data, &["peers"]);
    assert_eq!(
        peers["peers"][0]["gateway"], "spiffe://hotels.example/agw/h1",
        "{peers}"
    );
    assert_eq!(peers["peers"][0]["domain"], "hotels.example");
    assert_eq!(peers["peers"][0]["address"], "127.0.0.1:9");
    assert_ne!(peers["peers"][0]["state"], "Established");
    // SIGHUP does the same: the peer goes.
    std::fs::write(
        &config,
        "name = \"edge-9\"\n[limits]\nmax_connections_per_shard = 5000\n",
    )
    .unwrap();
    daemon.signal("-HUP");
    daemon.wait_line("agw: reload: applied: peer spiffe://hotels.example/agw/h1 removed");
    assert_eq!(
        agwctl_json(&data, &["peers"])["peers"],
        serde_json::json!([])
    );
    // A broken file is refused whole, saying why.
    std::fs::write(
        &config,
        "name = \"edge-9\"\n[limits]\nqueue_soft_limit_bytes = 0\n",
    )
    .unwrap();
    let (ok, _, err) = agwctl(&data, &["reload"]);
    assert!(
        !ok && err.contains("BAD_CONFIG") && err.contains("queue_soft_limit"),
        "{err}"
    );

    // A second daemon on the same data directory is refused.
    let second = agw(&data, None).output().unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another agw is running"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // Drain: the gateway delivers what it accepted, then exits; agwctl waits for it.
    let mut daemon = daemon;
    let (ok, out, err) = agwctl(&data, &["drain", "--deadline", "5"]);
    assert!(
        ok && out.contains("drained; the gateway exited"),
        "{out}{err}"
    );
    assert!(daemon.child.wait().unwrap().success());
    let line = daemon.wait_line("agw: stopped after a");
    assert!(
        line.contains("1 frames accepted, 1 delivered, 0 NACKed"),
        "{line}"
    );
    assert!(line.contains(", 0 in flight"), "{line}");
    drop(ca);
}

#[test]
fn the_gateway_starts_again_on_its_own_data_after_sigterm_and_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut daemon = start(&data, None);
    let alice = certify(&daemon.aca, &data, "alice");
    let bob = certify(&daemon.aca, &data, "bob");
    let carol = certify(&daemon.aca, &data, "carol");
    let register = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: alice.agent.to_string(),
            capabilities: vec!["hotel booking".into()],
            address: daemon.agents.clone(),
            ..Default::default()
        }),
        certificate_chain: alice.certificate.chain.clone(),
    };
    let Message::RegisterReply(r) = registry(&daemon, &data, &alice).request(register).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.error, None);
    let carol_serial = hex::encode(&carol.certificate.serial);
    let (ok, _, err) = agwctl(
        &data,
        &[
            "cert",
            "revoke",
            "--serial",
            &carol_serial,
            "--reason",
            "superseded",
        ],
    );
    assert!(ok, "{err}");

    for stop in ["-TERM", "-KILL"] {
        daemon.signal(stop);
        daemon.child.wait().unwrap();
        drop(daemon);
        // The same data directory: the gateway keeps its key and certificate.
        daemon = start(&data, None);
        relays(&daemon, &alice, &bob);
        // The registry kept alice's profile.
        let discover = pb::DiscoverRequest {
            request_id: 2,
            capabilities: vec!["hotel booking".into()],
            ..Default::default()
        };
        let Message::DiscoverReply(found) =
            registry(&daemon, &data, &bob).request(discover).unwrap()
        else {
            panic!()
        };
        let found: Vec<&str> = found.agents.iter().map(|p| p.agent.as_str()).collect();
        assert_eq!(found, [alice.agent.as_str()], "after {stop}");
        // The CRL still revokes carol, and she is still refused.
        let crl = agwctl_json(&data, &["cert", "crl"]);
        assert_eq!(crl["revoked"], serde_json::json!([carol_serial]), "{crl}");
        match AgentConnection::connect(&daemon.agents, carol.clone(), Duration::from_secs(5)) {
            Err(AgentError::Refused { code, .. }) => assert_eq!(code, ErrorCode::CertRevoked),
            other => panic!("{other:?}"),
        }
        // Bob, applying again with his key (a restarted agent), gets his certificate back.
        let mut conn = Connection::connect(&daemon.aca, Duration::from_secs(5)).unwrap();
        let mut app = CertificateRequests::default()
            .application(
                &bob.key,
                &bob.agent,
                pb::IdentityMaterials {
                    organization: "Acme".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        // The token survives the restart too.
        app.enrollment_token = enrollment_token(&data, "Acme");
        let Message::CertificateReply(r) = conn.request(app).unwrap() else {
            panic!()
        };
        assert_eq!(
            HeldCertificate::from_reply(r).unwrap().serial,
            bob.certificate.serial
        );
    }

    // The state is the gateway user's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for d in [data.clone(), data.join("aca"), data.join("ars")] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    for f in [
        "aca/aca.redb",
        "ars/ars.redb",
        "aca/ca.key.pem",
        "gateway.key.pem",
    ] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
}

#[test]
fn a_wildcard_crl_address_needs_a_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = agw_serving_crl_on(&data, None, "0.0.0.0:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wildcard address") && stderr.contains("--crl-url"),
        "{stderr}"
    );
    assert!(!data.exists(), "refused before anything was written");

    // With the URL, certificates carry it.
    let daemon = {
        let mut child = agw_serving_crl_on(&data, None, "0.0.0.0:0")
            .args(["--crl-url", "http://crl.travel.example/travel.crl"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut aca = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("agw: certificates from the ACA at ") {
                aca = rest.split_whitespace().next().unwrap().to_owned();
            }
            if line.starts_with("agw: Ctrl-C") {
                break;
            }
        }
        (child, aca)
    };
    let (mut child, aca) = daemon;
    let alice = certify(&aca, &data, "alice");
    let leaf = dir.path().join("alice.pem");
    std::fs::write(
        &leaf,
        pem::encode(&pem::Pem::new(
            "CERTIFICATE",
            alice.certificate.der().to_vec(),
        )),
    )
    .unwrap();
    let text = openssl(&[
        "x509",
        "-in",
        path(&leaf),
        "-noout",
        "-ext",
        "crlDistributionPoints",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("URI:http://crl.travel.example/travel.crl"),
        "{text}"
    );
}

#[test]
fn sigterm_drains_and_agwctl_explains_a_missing_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, _, err) = agwctl(&data, &["stats"]);
    assert!(!ok && err.contains("cannot read the admin token"), "{err}");

    let mut daemon = start(&data, None);
    // It re-executed itself with its heap (the routing table) on huge pages.
    let environ = std::fs::read(format!("/proc/{}/environ", daemon.child.id())).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    let (ok, out, err) = agwctl(&data, &["peers"]);
    assert!(ok && out.contains("no peers configured"), "{out}{err}");
    daemon.signal("-TERM");
    assert!(daemon.child.wait().unwrap().success());
    daemon.wait_line("agw: draining (deadline 30 s)");
    let line = daemon.wait_line("agw: stopped after a");
    assert!(line.contains("0 frames accepted"), "{line}");
    let (ok, _, err) = agwctl(&data, &["stats"]);
    assert!(!ok && err.contains("cannot reach the gateway"), "{err}");
}

#[test]
fn deregistering_from_the_registry_revokes_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = start(&data, None);
    let dave = certify(&daemon.aca, &data, "dave");
    let register = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: dave.agent.to_string(),
            capabilities: vec!["car hire".into()],
            address: daemon.agents.clone(),
            ..Default::default()
        }),
        certificate_chain: dave.certificate.chain.clone(),
    };
    let mut conn = registry(&daemon, &data, &dave);
    let Message::RegisterReply(r) = conn.request(register).unwrap() else {
        panic!()
    };
    let resource = r.profile.unwrap().resource_id;
    let mut relay =
        AgentConnection::connect(&daemon.agents, dave.clone(), Duration::from_secs(5)).unwrap();

    // Dave leaves the registry: his certificate is revoked (cessationOfOperation), his live
    // relay session closes, and he cannot come back on it.
    let Message::DeregisterAgentReply(r) = conn
        .request(pb::DeregisterAgentRequest {
            request_id: 2,
            resource_id: resource,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.error, None);
    match relay.recv(Duration::from_secs(5)) {
        Err(AgentError::Closed(Some(n))) => assert_eq!(n.code(), ErrorCode::CertRevoked),
        other => panic!("{other:?}"),
    }
    let crl = agwctl_json(&data, &["cert", "crl"]);
    assert_eq!(
        crl["revoked"],
        serde_json::json!([hex::encode(&dave.certificate.serial)]),
        "{crl}"
    );
    match AgentConnection::connect(&daemon.agents, dave, Duration::from_secs(5)) {
        Err(AgentError::Refused { code, .. }) => assert_eq!(code, ErrorCode::CertRevoked),
        other => panic!("{other:?}"),
    }
}

/// `openssl s_client` to `addr` with `args`, its input held open for a second so that it
/// reads what the gateway sends (and any alert): everything it printed.
fn s_client(addr: &str, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-alpn", "agw/1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    std::thread::sleep(Duration::from_secs(1));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_agent_port_speaks_mutual_tls_and_plaintext_only_when_the_operator_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = start(&data, None);
    let alice = certify(&daemon.aca, &data, "alice");
    let anchor = data.join("aca/trust-anchor.pem");
    let cert = dir.path().join("alice.pem");
    let chain: String = alice
        .certificate
        .chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    std::fs::write(&cert, chain).unwrap();
    let key = dir.path().join("alice.key");
    std::fs::write(&key, alice.key.to_pem()).unwrap();

    // openssl with alice's certificate: the gateway's certificate verifies against the
    // authority's anchor, ALPN agw/1 is selected, and the access challenge follows.
    let tls = [
        "-cert",
        path(&cert),
        "-key",
        path(&key),
        "-CAfile",
        path(&anchor),
    ];
    let out = s_client(&daemon.agents, &tls);
    assert!(out.contains("ALPN protocol: agw/1"), "{out}");
    // The gateway chooses AES-128-GCM over openssl's first choice (AES-256).
    assert!(out.contains("TLS_AES_128_GCM_SHA256"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(!out.contains("alert"), "{out}");
    let mut quiet = tls.to_vec();
    quiet.push("-quiet");
    let challenge = s_client(&daemon.agents, &quiet);
    assert!(
        challenge.contains("spiffe://travel.example/agw/agw-1"),
        "no challenge: {challenge}"
    );

    // Without a client certificate, or with one of another authority (naming alice too):
    // refused by TLS.
    let out = s_client(&daemon.agents, &["-CAfile", path(&anchor)]);
    assert!(out.contains("alert certificate required"), "{out}");
    let mallory_cert = dir.path().join("mallory.pem");
    let mallory_key = dir.path().join("mallory.key");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=alice",
        "-addext",
        "subjectAltName=URI:spiffe://travel.example/agent/alice",
        "-keyout",
        path(&mallory_key),
        "-out",
        path(&mallory_cert),
    ]);
    let out = s_client(
        &daemon.agents,
        &[
            "-cert",
            path(&mallory_cert),
            "-key",
            path(&mallory_key),
            "-CAfile",
            path(&anchor),
        ],
    );
    assert!(
        out.contains("alert"),
        "another authority's certificate: {out}"
    );
    assert!(!out.contains("agw-1\u{0}"), "{out}");

    // 600 handshakes begun (one byte) and stalled from another address, more than the two
    // shards' 2 x 256 slots, take at most their address's share: alice, from her own, is
    // served at once.
    let target: std::net::SocketAddr = daemon.agents.parse().unwrap();
    let stalled: Vec<std::net::TcpStream> = (0..600)
        .map(|_| {
            use nix::sys::socket::{
                AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket,
            };
            use std::os::fd::AsRawFd as _;
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::empty(),
                None,
            )
            .unwrap();
            bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 2, 0)).unwrap();
            let std::net::SocketAddr::V4(v4) = target else {
                panic!("{target}")
            };
            connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
            let mut sock = std::net::TcpStream::from(fd);
            std::io::Write::write_all(&mut sock, &[0x16]).unwrap();
            sock
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    AgentConnection::connect(&daemon.agents, alice.clone(), Duration::from_secs(1))
        .expect("alice waited behind stalled handshakes");
    drop(stalled);

    // A native client speaking plain TCP is told, in a frame it can read, to use TLS.
    match AgentConnection::connect_plaintext(&daemon.agents, alice.clone(), Duration::from_secs(5))
    {
        Err(AgentError::Closed(Some(n))) => {
            assert_eq!(n.code, ErrorCode::TlsRequired as i32, "{n:?}")
        }
        other => panic!("{other:?}"),
    }
    // The SDK's default is TLS; and the operator sees the failed handshakes.
    AgentConnection::connect(&daemon.agents, alice.clone(), Duration::from_secs(5)).unwrap();
    let metrics = Command::new("curl")
        .args(["-sf", &daemon.metrics])
        .output()
        .unwrap();
    let failed: u64 = String::from_utf8_lossy(&metrics.stdout)
        .lines()
        .filter(|l| l.starts_with("agw_tls_handshakes_failed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(failed >= 3, "tls_handshakes_failed {failed}");
    let refused: u64 = String::from_utf8_lossy(&metrics.stdout)
        .lines()
        .filter(|l| l.starts_with("agw_connections_refused_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    // Two shards, 32 handshakes each from one address: the rest of the 600 refused.
    assert!(refused >= 536, "connections_refused {refused}");
    drop(daemon);

    // Plain TCP where the operator enables it, and only then.
    let plain_data = dir.path().join("plain");
    let config = dir.path().join("plain.toml");
    std::fs::write(&config, "agent_plaintext = true\n").unwrap();
    let daemon = start(&plain_data, Some(&config));
    let bob = certify(&daemon.aca, &plain_data, "bob");
    let mut conn =
        AgentConnection::connect_plaintext(&daemon.agents, bob.clone(), Duration::from_secs(5))
            .unwrap();
    conn.heartbeat(pb::Status::Running).unwrap();
    assert!(
        AgentConnection::connect(&daemon.agents, bob, Duration::from_secs(2)).is_err(),
        "TLS to a plaintext port"
    );
}

#[test]
fn an_organisation_under_approval_waits_for_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("agw.toml");
    std::fs::write(&config, "enrollment_approval = [\"Acme\"]\n").unwrap();
    let daemon = start(&data, Some(&config));
    let token = enrollment_token(&data, "Acme");
    let apply = |aca: &str, name: &str, key: &AgentKey| {
        let mut app = CertificateRequests::default()
            .application(
                key,
                &AgentId::parse(&format!("spiffe://travel.example/agent/{name}")).unwrap(),
                pb::IdentityMaterials {
                    organization: "Acme".into(),
                    developer: "dev@acme.example".into(),
                    ..Default::default()
                },
            )
            .unwrap();
        app.enrollment_token.clone_from(&token);
        let mut conn = Connection::connect(aca, Duration::from_secs(5)).unwrap();
        let Message::CertificateReply(reply) = conn.request(app).unwrap() else {
            panic!("no certificate reply")
        };
        reply
    };
    let (alice_key, mallory_key) = (AgentKey::generate().unwrap(), AgentKey::generate().unwrap());

    // With the token, alice still waits: pending, once, however often she asks.
    for _ in 0..2 {
        let reply = apply(&daemon.aca, "alice", &alice_key);
        assert_eq!(
            reply.error.unwrap().error_code(),
            ErrorCode::ApprovalPending
        );
    }
    let reply = apply(&daemon.aca, "mallory", &mallory_key);
    assert_eq!(
        reply.error.unwrap().error_code(),
        ErrorCode::ApprovalPending
    );
    let pending = agwctl_json(&data, &["cert", "pending"]);
    let listed = pending["applications"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{pending}");
    assert_eq!(listed[0]["identity"], "spiffe://travel.example/agent/alice");
    assert_eq!(listed[0]["developer"], "dev@acme.example");
    let (alice_id, mallory_id) = (listed[0]["id"].to_string(), listed[1]["id"].to_string());

    // The operator approves alice and denies mallory; each hears it on applying again.
    agwctl_json(&data, &["cert", "approve", &alice_id]);
    agwctl_json(&data, &["cert", "deny", &mallory_id]);
    // The decisions survive a restart on the same data (the token too).
    drop(daemon);
    let daemon = start(&data, Some(&config));
    assert_eq!(enrollment_token(&data, "Acme"), token);
    let reply = apply(&daemon.aca, "alice", &alice_key);
    assert_eq!(reply.error, None, "{reply:?}");
    assert!(!reply.certificate_chain.is_empty());
    let reply = apply(&daemon.aca, "mallory", &mallory_key);
    assert_eq!(
        reply.error.unwrap().error_code(),
        ErrorCode::ApplicationDenied
    );
    // A decision holds for that key only: another key for alice's name is pending anew (and
    // would then meet IDENTITY_TAKEN once approved).
    let reply = apply(&daemon.aca, "alice", &AgentKey::generate().unwrap());
    assert_eq!(
        reply.error.unwrap().error_code(),
        ErrorCode::ApprovalPending
    );
    let (ok, _, err) = agwctl(&data, &["cert", "approve", &alice_id]);
    assert!(!ok && err.contains("already"), "{err}");
    assert_eq!(
        agwctl_json(&data, &["cert", "pending", "--all"])["applications"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// curl, which must run; returns the HTTP status and the headers it wrote (`-D`).
fn curl(args: &[&str]) -> (u16, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-D", "-", "-w", "\n%{http_code}"]);
    if !args.contains(&"-o") {
        command.args(["-o", "/dev/null"]);
    }
    let out = command.args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (headers, status) = text.trim_end().rsplit_once('\n').unwrap();
    (status.parse().unwrap(), headers.to_ascii_lowercase())
}

/// The certificates (PEM) in a base64 certs-only PKCS#7, as EST answers them.
fn pkcs7_certificates(dir: &Path, b64: &Path) -> String {
    let der = dir.join("answer.p7");
    openssl(&["base64", "-d", "-in", path(b64), "-out", path(&der)]);
    openssl(&["pkcs7", "-inform", "DER", "-in", path(&der), "-print_certs"])
}

#[test]
fn an_agent_enrolls_and_renews_over_est_with_curl_and_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = start(&data, None);
    let anchor = data.join("aca/trust-anchor.pem");
    let base = format!("https://{}/.well-known/est", daemon.est);
    let work = dir.path();
    let file = |name: &str| work.join(name);

    // cacerts: the trust anchor, over a TLS server curl accepts by its address.
    let (status, _) = curl(&[
        "--cacert",
        path(&anchor),
        "-o",
        path(&file("ca.b64")),
        &format!("{base}/cacerts"),
    ]);
    assert_eq!(status, 200);
    let ca = pkcs7_certificates(work, &file("ca.b64"));
    let anchor_pem = std::fs::read_to_string(&anchor).unwrap();
    let body = |pem: &str| -> String {
        pem.lines()
            .filter(|l| {
                !l.starts_with("-----")
                    && !l.starts_with("subject")
                    && !l.starts_with("issuer")
                    && !l.is_empty()
            })
            .collect()
    };
    assert!(body(&ca).contains(&body(&anchor_pem)), "{ca}");

    // A key and a CSR for alice, made by openssl.
    let csr = |name: &str, key: &str, out: &str| {
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path(&file(key)),
        ]);
        openssl(&[
            "req",
            "-new",
            "-key",
            path(&file(key)),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=URI:spiffe://travel.example/agent/{name}"),
            "-outform",
            "DER",
            "-out",
            path(&file("csr.der")),
        ]);
        openssl(&[
            "base64",
            "-in",
            path(&file("csr.der")),
            "-out",
            path(&file(out)),
        ]);
    };
    csr("alice", "alice.key", "alice.csr.b64");
    let post = |extra: &[&str], operation: &str, csr: &str, out: &str| {
        let mut args = vec![
            "--cacert",
            path(&anchor),
            "-H",
            "Content-Type: application/pkcs10",
        ];
        args.extend_from_slice(extra);
        let data = format!("@{}", path(&file(csr)));
        let out = path(&file(out)).to_owned();
        let url = format!("{base}/{operation}");
        args.extend_from_slice(&["--data-binary", &data, "-o", &out, &url]);
        curl(&args)
    };

    // A squatter without the organisation's token, or with a wrong one: 401, nothing issued.
    let (status, headers) = post(&[], "simpleenroll", "alice.csr.b64", "refused.txt");
    assert_eq!(status, 401);
    assert!(headers.contains("www-authenticate: basic"), "{headers}");
    let wrong = "Acme:0000000000000000000000000000000000000000000000000000000000000000";
    let (status, _) = post(
        &["--user", wrong],
        "simpleenroll",
        "alice.csr.b64",
        "refused.txt",
    );
    assert_eq!(status, 401);
    let refusal = std::fs::read_to_string(file("refused.txt")).unwrap();
    assert!(
        refusal.starts_with("ENROLLMENT_UNAUTHENTICATED"),
        "{refusal}"
    );

    // With the token: alice's certificate, which openssl verifies against the anchor.
    let user = format!("Acme:{}", enrollment_token(&data, "Acme"));
    let (status, headers) = post(
        &["--user", &user],
        "simpleenroll",
        "alice.csr.b64",
        "alice.p7.b64",
    );
    assert_eq!(
        status,
        200,
        "{}",
        std::fs::read_to_string(file("alice.p7.b64")).unwrap_or_default()
    );
    assert!(
        headers.contains("content-type: application/pkcs7-mime; smime-type=certs-only"),
        "{headers}"
    );
    // A certificate answer: the certificate openssl verifies against the anchor, naming alice;
    // its serial.
    let certified = |answer: &str, pem: &str| -> String {
        std::fs::write(file(pem), pkcs7_certificates(work, &file(answer))).unwrap();
        let verified = openssl(&["verify", "-CAfile", path(&anchor), path(&file(pem))]);
        assert!(verified.contains(": OK"), "{verified}");
        let text = openssl(&[
            "x509",
            "-in",
            path(&file(pem)),
            "-noout",
            "-serial",
            "-ext",
            "subjectAltName",
        ]);
        assert!(
            text.contains("URI:spiffe://travel.example/agent/alice"),
            "{text}"
        );
        text.lines()
            .find_map(|l| l.strip_prefix("serial="))
            .unwrap()
            .to_owned()
    };
    let first_serial = certified("alice.p7.b64", "alice.pem");

    // The certificate opens a mutual-TLS session on the agent port.
    let hello = s_client(
        &daemon.agents,
        &[
            "-cert",
            path(&file("alice.pem")),
            "-key",
            path(&file("alice.key")),
            "-CAfile",
            path(&anchor),
        ],
    );
    assert!(
        hello.contains("ALPN protocol: agw/1") && hello.contains("Verify return code: 0"),
        "{hello}"
    );

    // Alice's certificate vouches for a new agent of her organisation: no token needed.
    csr("bob", "bob.key", "bob.csr.b64");
    let (cert, key) = (file("alice.pem"), file("alice.key"));
    let alice_tls = ["--cert", path(&cert), "--key", path(&key)];
    let (status, _) = post(&alice_tls, "simpleenroll", "bob.csr.b64", "bob.p7.b64");
    assert_eq!(
        status,
        200,
        "{}",
        std::fs::read_to_string(file("bob.p7.b64")).unwrap()
    );
    std::fs::write(
        file("bob.pem"),
        pkcs7_certificates(work, &file("bob.p7.b64")),
    )
    .unwrap();
    let bob = openssl(&[
        "x509",
        "-in",
        path(&file("bob.pem")),
        "-noout",
        "-subject",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        bob.contains("O = Acme") && bob.contains("agent/bob"),
        "{bob}"
    );

    // Renewal: a new key, the current certificate as the TLS client certificate.
    csr("alice", "alice2.key", "alice2.csr.b64");
    let (status, _) = post(&[], "simplereenroll", "alice2.csr.b64", "refused.txt");
    assert_eq!(
        status,
        403,
        "{}",
        std::fs::read_to_string(file("refused.txt")).unwrap()
    );
    let current = alice_tls;
    let (status, _) = post(
        &current,
        "simplereenroll",
        "alice2.csr.b64",
        "alice2.p7.b64",
    );
    assert_eq!(
        status,
        200,
        "{}",
        std::fs::read_to_string(file("alice2.p7.b64")).unwrap()
    );
    assert_ne!(certified("alice2.p7.b64", "alice2.pem"), first_serial);
    // One renewal per certificate: the old one cannot fork the identity.
    let (status, _) = post(&current, "simplereenroll", "alice2.csr.b64", "refused.txt");
    assert_eq!(status, 403);
    let refusal = std::fs::read_to_string(file("refused.txt")).unwrap();
    assert!(refusal.starts_with("IDENTITY_TAKEN"), "{refusal}");

    // Not EST, or the wrong method: told so.
    let (status, _) = curl(&["--cacert", path(&anchor), &format!("{base}/csrattrs")]);
    assert_eq!(status, 404);
    let (status, _) = curl(&["--cacert", path(&anchor), &format!("{base}/simpleenroll")]);
    assert_eq!(status, 405);
}

#[test]
fn the_authority_port_speaks_tls_and_plain_only_where_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("agw.toml");
    std::fs::write(&config, "aca_plaintext = false\n").unwrap();
    let daemon = start(&data, Some(&config));
    let agent = AgentId::parse("spiffe://travel.example/agent/alice").unwrap();
    let token = enrollment_token(&data, "Acme");
    // Plain TCP: told TLS_REQUIRED, nothing issued.
    let mut plain = Connection::connect(&daemon.aca, Duration::from_secs(5)).unwrap();
    let refused = Credentials::enroll(agent.clone(), "Acme", &token, |app| plain.request(app));
    match refused {
        Err(agw_sdk::certificates::CertificateError::Refused(e)) => {
            assert_eq!(e.code(), ErrorCode::TlsRequired, "{e:?}")
        }
        other => panic!("{other:?}"),
    }
    // Over TLS, checking the gateway against the domain's anchor: certified.
    let anchor = std::fs::read_to_string(data.join("aca/trust-anchor.pem")).unwrap();
    let anchor = pem::parse(anchor).unwrap().into_contents();
    let tls = agw_aca::tls::applicant_client_config(&anchor, "travel.example").unwrap();
    let mut conn =
        Connection::connect_tls(&daemon.aca, Duration::from_secs(5), Arc::new(tls)).unwrap();
    let alice = Credentials::enroll(agent, "Acme", &token, |app| conn.request(app)).unwrap();
    assert_eq!(alice.agent.as_str(), "spiffe://travel.example/agent/alice");
}

/// An A2A server agent (an a2a-sdk server) registered with its URL is called again by a
/// daemon restarted on the same data, with no one registering anew.
#[test]
fn a_restarted_daemon_calls_its_a2a_server_agents_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut daemon = start(&data, None);
    let hotel = certify(&daemon.aca, &data, "hotel");
    let alice = certify(&daemon.aca, &data, "alice");
    let port = common::free_port();
    let _server = common::A2aServer::start(port, 5);
    let url = format!("http://127.0.0.1:{port}/");
    let register = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: hotel.agent.to_string(),
            capabilities: vec!["hotel booking".into()],
            address: url.clone(),
            a2a_url: url,
            ..Default::default()
        }),
        certificate_chain: hotel.certificate.chain.clone(),
    };
    let Message::RegisterReply(r) = registry(&daemon, &data, &hotel).request(register).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.error, None);
    daemon.signal("-TERM");
    daemon.child.wait().unwrap();
    drop(daemon);

    let daemon = start(&data, None);
    let (mut writer, mut reader) =
        AgentConnection::connect(&daemon.agents, alice.clone(), Duration::from_secs(5))
            .unwrap()
            .split();
    // Until the restarted gateway has dialled the server, the hotel is offline (or unknown).
    let start = std::time::Instant::now();
    let mut id = 0;
    let answer = 'ask: loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never called again"
        );
        id += 1;
        let m = pb::AgentMessage {
            destination: hotel.agent.to_string(),
            source: alice.agent.to_string(),
            message_id: id,
            content_type: "text/plain".into(),
            payload: Bytes::from_static(b"still there?"),
            ..Default::default()
        };
        writer.queue_raw(&m, agw_proto::DEFAULT_HOP_LIMIT).unwrap();
        writer.flush().unwrap();
        loop {
            match reader.recv() {
                Ok(Incoming::Message(m, _)) => break 'ask m,
                Ok(Incoming::Nack(n)) if n.message_id == id => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue 'ask;
                }
                Ok(_) | Err(AgentError::Io(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(&answer.payload[..], b"echo: still there?");
}

/// Issue 19, part 3, with the daemons themselves: two `agw` processes of one domain on a
/// real 3-member etcd cluster, an agent at the first reached from the second, the first
/// killed (SIGKILL), the agent reconnecting to the second and reached there.
#[cfg(feature = "etcd")]
#[test]
fn a_killed_gateway_s_agents_reconnect_to_another_of_the_domain() {
    let cluster = agw_etcd::cluster::Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let (data_1, data_2) = (dir.path().join("gw-1"), dir.path().join("gw-2"));
    let daemon = |data: &Path, name: &str| {
        let mut command = agw(data, None);
        command.args(["--name", name]);
        for endpoint in cluster.endpoints() {
            command.args(["--etcd", &endpoint]);
        }
        start_command(command)
    };
    let mut one = daemon(&data_1, "gw-1");
    std::fs::create_dir_all(data_2.join("aca")).unwrap();
    for f in ["ca.key.pem", "ca.chain.pem", "trust-anchor.pem"] {
        std::fs::copy(data_1.join("aca").join(f), data_2.join("aca").join(f)).unwrap();
    }
    let two = daemon(&data_2, "gw-2");
    let alice = certify(&one.aca, &data_1, "alice");
    let bob = certify(&two.aca, &data_2, "bob");
    let wait = Duration::from_secs(5);
    let gateways: Vec<std::net::SocketAddr> = [&one.agents, &two.agents]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let mut at_one = AgentConnection::connect(&gateways[..], alice.clone(), wait).unwrap();
    let mut at_two = AgentConnection::connect(&two.agents, bob.clone(), wait).unwrap();
    // Bob at gateway 2 reaches alice at gateway 1 once they linked (NACKed until then).
    let reach = |from: &mut AgentConnection, to: &mut AgentConnection| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(std::time::Instant::now() < deadline, "never reached");
            from.send(to.agent().as_str(), Bytes::from_static(b"hello"))
                .unwrap();
            if let Ok(Some(Incoming::Message(m, _))) = to.recv(Duration::from_millis(200)) {
                assert_eq!(m.source, from.agent().as_str());
                return;
            }
            while let Ok(Some(_)) = from.recv(Duration::from_millis(1)) {}
        }
    };
    reach(&mut at_two, &mut at_one);
    assert_eq!(
        at_one.gateway().as_str(),
        "spiffe://travel.example/agw/gw-1"
    );

    // SIGKILL: nothing said to anyone; alice's reconnection finds gateway 2.
    let killed = std::time::Instant::now();
    one.child.kill().unwrap();
    one.child.wait().unwrap();
    at_one.reconnect().expect("alice fails over");
    assert_eq!(
        at_one.gateway().as_str(),
        "spiffe://travel.example/agw/gw-2"
    );
    reach(&mut at_two, &mut at_one);
    let took = killed.elapsed();
    eprintln!("gateway 1 killed: alice reached at gateway 2 after {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
