//! Memory per idle agent connection: an `agw` daemon in its own process, N agents connected
//! and accessed, then left idle; the daemon's resident memory before and after, divided by N.
//! Clients are spread over child processes of at most 5,000 connections each (each holds two
//! descriptors per connection, under the per-process limit of these machines).

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use agw_proto::identity::AgentId;
use agw_sdk::{
    agent::{AgentConnection, Credentials},
    connection::Connection,
};

use crate::transport::Error;

/// Connections one client process holds.
pub const PER_CLIENT: usize = 5_000;

/// What the idle measurement found.
#[derive(Debug, serde::Serialize)]
pub struct IdleReport {
    /// Connections held.
    pub connections: usize,
    /// The daemon's resident memory before any connection, bytes.
    pub rss_before: u64,
    /// With every connection idle, bytes.
    pub rss_after: u64,
    /// (after - before) / connections.
    pub bytes_per_connection: f64,
}

struct Daemon {
    child: Child,
    agents: String,
    aca: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or("no VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

fn start_daemon(agw: &Path, data: &Path, plaintext: bool) -> Result<Daemon, Error> {
    let any = "127.0.0.1:0";
    let mut command = Command::new(agw);
    if plaintext {
        command.arg("--agent-plaintext");
    }
    let mut child = command
        .args(["--shards", "1", "--data-dir"])
        .arg(data)
        .args(["--listen", any, "--aca-listen", any, "--crl-listen", any])
        .args(["--registry-listen", any, "--peering-listen", any])
        .args(["--relay-links-listen", any, "--metrics-listen", any])
        // The harness's own daemon on loopback: its clients enroll without a token.
        .args(["--open-enrollment", "Example"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", agw.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (mut agents, mut aca) = (String::new(), String::new());
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("agw: agents connect to ") {
            agents = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        if let Some(rest) = line.strip_prefix("agw: certificates from the ACA at ") {
            aca = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        if line.starts_with("agw: Ctrl-C") {
            break;
        }
    }
    if agents.is_empty() || aca.is_empty() {
        return Err("the daemon did not say where it listens".into());
    }
    Ok(Daemon { child, agents, aca })
}

/// Runs the measurement with the `agw` binary at `agw`.
/// `plaintext`: the agents speak plain TCP (the daemon started with `--agent-plaintext`)
/// instead of mutual TLS.
pub fn measure(
    agw: &Path,
    connections: usize,
    plaintext: bool,
    progress: impl Fn(&str),
) -> Result<IdleReport, Error> {
    let dir = tempfile::tempdir()?;
    let daemon = start_daemon(agw, &dir.path().join("data"), plaintext)?;
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.child.id();
    let rss_before = rss(pid)?;
    let me = std::env::current_exe()?;
    let mut clients = Vec::new();
    let mut left = connections;
    let mut k = 0;
    while left > 0 {
        let count = left.min(PER_CLIENT);
        left -= count;
        let mut child = Command::new(&me);
        if plaintext {
            child.arg("--agent-plaintext");
        }
        let mut child = child
            .args([
                "--idle-client",
                &count.to_string(),
                "--idle-agents",
                &daemon.agents,
            ])
            .args([
                "--idle-aca",
                &daemon.aca,
                "--idle-name",
                &format!("idle-{k}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        clients.push((child, BufReader::new(stdout)));
        k += 1;
    }
    for (i, (_, out)) in clients.iter_mut().enumerate() {
        let mut line = String::new();
        out.read_line(&mut line)?;
        if !line.starts_with("ready") {
            return Err(format!("client {i} did not connect: {line}").into());
        }
        progress(&format!("client {i} holds its connections"));
    }
    // Housekeeping releases idle connections' read buffers at its next tick.
    std::thread::sleep(Duration::from_secs(2));
    let rss_after = rss(pid)?;
    for (mut child, _) in clients {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    Ok(IdleReport {
        connections,
        rss_before,
        rss_after,
        bytes_per_connection: rss_after.saturating_sub(rss_before) as f64 / connections as f64,
    })
}

/// A client process: one agent from the daemon's authority, `count` accessed connections,
/// held until stdin closes.
pub fn client(
    count: usize,
    agents: &str,
    aca: &str,
    name: &str,
    plaintext: bool,
) -> Result<(), Error> {
    let agent = AgentId::parse(&format!("spiffe://local.agw/agent/{name}"))?;
    let mut conn = Connection::connect(aca, Duration::from_secs(10))?;
    let creds = Arc::new(Credentials::enroll(agent, "Example", "", |app| {
        conn.request(app)
    })?);
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let timeout = Duration::from_secs(10);
        held.push(if plaintext {
            AgentConnection::connect_plaintext(agents, creds.clone(), timeout)?
        } else {
            AgentConnection::connect(agents, creds.clone(), timeout)?
        });
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "ready {} in {:.1} s",
        held.len(),
        started.elapsed().as_secs_f64()
    )?;
    out.flush()?;
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}
