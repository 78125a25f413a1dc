//! The `agw` daemon: a [`Node`] from a TOML file and flags, run until SIGINT or SIGTERM.
//!
//! Precedence: a flag, then the file, then the default. Unknown keys in the file are refused,
//! with the line; every problem found after parsing is reported at once.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use agw_aca::tls::CertificateChecker;
use agw_proto::identity::{Domain, GatewayId};
use clap::{Parser, Subcommand};
use serde::Deserialize;

use crate::{
    node::{Node, NodeConfig, PeerEntry},
    peering::session::{DEFAULT_MAX_SUMMARIES, LimitAction, MIN_HOLD_TIME},
};

/// The Agent Gateway daemon: agents connect to it, prove their certificate and exchange
/// messages through it; it peers with other domains' gateways. With no options it runs a
/// single-node gateway for the domain `local.agw`, keeping its state under `./agw-data`.
#[derive(Debug, Parser)]
#[command(name = "agw", version)]
pub struct DaemonArgs {
    /// What to run instead of the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A TOML configuration file (see docs/operations.md); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The domain this gateway serves [default: local.agw].
    #[arg(long)]
    pub domain: Option<String>,
    /// This gateway's name within the domain [default: agw-1].
    #[arg(long)]
    pub name: Option<String>,
    /// Where state lives [default: agw-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where agents connect [default: 127.0.0.1:7400].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where agents apply for certificates [default: 127.0.0.1:7401].
    #[arg(long)]
    pub aca_listen: Option<SocketAddr>,
    /// Where the CRL is served over HTTP [default: 127.0.0.1:7402].
    #[arg(long)]
    pub crl_listen: Option<SocketAddr>,
    /// Where agents register and discover, mutual TLS [default: 127.0.0.1:7403].
    #[arg(long)]
    pub registry_listen: Option<SocketAddr>,
    /// Where Prometheus metrics (/metrics) and health (/health) are served
    /// [default: 127.0.0.1:7406].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Organisations allowed certificates: ORG=SCOPE,SCOPE [default: Example].
    #[arg(long = "allow", value_name = "ORG=SCOPE,...")]
    pub allow: Vec<String>,
    /// Relay shards (threads, one per core) [default: one per CPU].
    #[arg(long)]
    pub shards: Option<usize>,
}

/// Other things `agw` runs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Three domains on this machine, peered in a chain, and a conversation across them:
    /// what a new user runs to see the system work.
    Demo,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    domain: Option<String>,
    name: Option<String>,
    data_dir: Option<PathBuf>,
    allow: Option<Vec<String>>,
    shards: Option<usize>,
    listen: Option<ListenFile>,
    federation: Option<FederationFile>,
    #[serde(default, rename = "peer")]
    peers: Vec<PeerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    agents: Option<SocketAddr>,
    aca: Option<SocketAddr>,
    crl: Option<SocketAddr>,
    registry: Option<SocketAddr>,
    peering: Option<SocketAddr>,
    relay_links: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FederationFile {
    root_cert: PathBuf,
    root_key: PathBuf,
    #[serde(default)]
    peer_crls: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    gateway: String,
    address: Option<SocketAddr>,
    export: Option<Vec<String>>,
    max_summaries: Option<usize>,
    on_limit: Option<String>,
    hold_time_s: Option<u64>,
}

fn parse_file(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
}

/// Flags over the file over the defaults; every problem at once.
fn node_config(args: &DaemonArgs) -> Result<NodeConfig, String> {
    let file = match &args.config {
        Some(path) => parse_file(path)?,
        None => FileConfig::default(),
    };
    let mut problems = Vec::new();
    let domain_text = args
        .domain
        .clone()
        .or(file.domain)
        .unwrap_or_else(|| "local.agw".into());
    let domain = Domain::new(&domain_text)
        .map_err(|e| problems.push(format!("domain {domain_text}: {e}")))
        .ok();
    let name = args
        .name
        .clone()
        .or(file.name)
        .unwrap_or_else(|| "agw-1".into());
    if let Some(d) = &domain
        && let Err(e) = GatewayId::new(d, &name)
    {
        problems.push(format!("name {name}: {e}"));
    }
    let listen = file.listen.unwrap_or_default();
    let addr = |flag: Option<SocketAddr>, file: Option<SocketAddr>, default: &str| {
        flag.or(file).unwrap_or_else(|| {
            default
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
        })
    };
    let mut peer_crls = Vec::new();
    let root = file.federation.map(|f| {
        for path in &f.peer_crls {
            match std::fs::read(path) {
                Ok(der) => peer_crls.push(der),
                Err(e) => problems.push(format!("federation.peer_crls {}: {e}", path.display())),
            }
        }
        (f.root_cert, f.root_key)
    });
    let mut peers = Vec::new();
    for (i, p) in file.peers.iter().enumerate() {
        let gateway = match GatewayId::parse(&p.gateway) {
            Ok(g) => g,
            Err(e) => {
                problems.push(format!("peer[{i}].gateway {}: {e}", p.gateway));
                continue;
            }
        };
        let action = match p.on_limit.as_deref() {
            None | Some("refuse") => LimitAction::Refuse,
            Some("warn") => LimitAction::Warn,
            Some("reset") => LimitAction::Reset,
            Some(other) => {
                problems.push(format!(
                    "peer[{i}].on_limit {other}: one of warn, refuse, reset"
                ));
                LimitAction::Refuse
            }
        };
        let hold_time = Duration::from_secs(p.hold_time_s.unwrap_or(90));
        if hold_time < MIN_HOLD_TIME {
            problems.push(format!(
                "peer[{i}].hold_time_s {}: at least {}",
                hold_time.as_secs(),
                MIN_HOLD_TIME.as_secs()
            ));
        }
        peers.push(PeerEntry {
            gateway,
            address: p.address,
            export: p.export.clone(),
            max_summaries: Some((p.max_summaries.unwrap_or(DEFAULT_MAX_SUMMARIES), action)),
            hold_time,
        });
    }
    if args.shards == Some(0) || file.shards == Some(0) {
        problems.push("shards: at least 1".into());
    }
    let allow = if !args.allow.is_empty() {
        args.allow.clone()
    } else {
        file.allow.unwrap_or_else(|| vec!["Example".into()])
    };
    match (domain, problems.is_empty()) {
        (Some(domain), true) => Ok(NodeConfig {
            domain,
            name,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| "agw-data".into()),
            allow,
            shards: args.shards.or(file.shards),
            agents: addr(args.listen, listen.agents, "127.0.0.1:7400"),
            aca: addr(args.aca_listen, listen.aca, "127.0.0.1:7401"),
            crl: addr(args.crl_listen, listen.crl, "127.0.0.1:7402"),
            registry: addr(args.registry_listen, listen.registry, "127.0.0.1:7403"),
            peering: addr(None, listen.peering, "127.0.0.1:7404"),
            relay_links: addr(None, listen.relay_links, "127.0.0.1:7405"),
            metrics: Some(addr(args.metrics_listen, listen.metrics, "127.0.0.1:7406")),
            root,
            peer_crls,
            peers,
        }),
        _ => Err(format!("configuration:\n  {}", problems.join("\n  "))),
    }
}

/// Runs the gateway (or the demo) until SIGINT or SIGTERM.
pub fn run(args: DaemonArgs) -> Result<(), String> {
    if let Some(Command::Demo) = args.command {
        return crate::demo::run();
    }
    let config = node_config(&args)?;
    let allow = config.allow.join(", ");
    let peers = config.peers.len();
    let unchecked_peers = peers > 0 && config.peer_crls.is_empty();
    let node = Node::start(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }

    let a = node.addresses().clone();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "agw: gateway {}, {} shard(s)",
        node.gateway,
        node.dataplane.shards()
    );
    let _ = writeln!(out, "agw: agents connect to {}", a.agents);
    let _ = writeln!(
        out,
        "agw: certificates from the ACA at {} (organisations: {allow}); trust anchor in {}",
        a.aca,
        node.trust_anchor_path().display()
    );
    let _ = writeln!(out, "agw: registry (mutual TLS) at {}", a.registry);
    let _ = writeln!(out, "agw: CRL at {}", a.crl_url);
    if let Some(m) = a.metrics {
        let _ = writeln!(
            out,
            "agw: metrics at http://{m}/metrics, health at http://{m}/health"
        );
    }
    if let (Some(p), Some(l)) = (a.peering, a.relay_links) {
        let _ = writeln!(
            out,
            "agw: peering on {p} ({peers} peer(s)), relay links on {l}"
        );
    }
    if unchecked_peers {
        let _ = writeln!(
            out,
            "agw: warning: no CRLs of peer domains configured (federation.peer_crls): \
             peer gateways' revocations are not checked"
        );
    }
    let _ = writeln!(out, "agw: Ctrl-C or SIGTERM stops it");
    let _ = out.flush();

    // Revocations reach the relay and the registry: a new CRL replaces the checkers and closes
    // the sessions of the certificates it revokes.
    let authority = Arc::clone(&node.authority);
    let mut crl_number = authority
        .crl(SystemTime::now())
        .map(|c| c.number)
        .unwrap_or(0);
    let mut revoked: Vec<Vec<u8>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(crl) = authority.crl(SystemTime::now()) else {
            continue;
        };
        if crl.number == crl_number {
            continue;
        }
        crl_number = crl.number;
        let serials = agw_aca::revoked_serials(&crl.der).unwrap_or_default();
        let new: Vec<Vec<u8>> = serials
            .iter()
            .filter(|s| !revoked.contains(s))
            .cloned()
            .collect();
        revoked = serials;
        let anchor = authority.trust_anchor();
        if let Ok(checker) = CertificateChecker::new(anchor, std::slice::from_ref(&crl.der)) {
            node.dataplane.set_checker(checker, new);
        }
        if let (Ok(checker), Ok(mut registry)) = (
            CertificateChecker::new(anchor, std::slice::from_ref(&crl.der)),
            node.registry.lock(),
        ) {
            registry.set_certificate_checker(checker);
        }
    }
    let totals = node.dataplane.totals();
    node.stop();
    let _ = writeln!(
        out,
        "agw: stopped; {} frames accepted, {} delivered, {} NACKed",
        totals.accepted,
        totals.delivered,
        totals.nacked_total()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn args_with(file: &str) -> (tempfile::NamedTempFile, DaemonArgs) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(file.as_bytes()).unwrap();
        let args = DaemonArgs::parse_from(["agw", "--config", f.path().to_str().unwrap()]);
        (f, args)
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line() {
        let (_f, args) =
            args_with("domain = \"a.example\"\n\n[listen]\nagentz = \"127.0.0.1:1\"\n");
        let e = node_config(&args).unwrap_err();
        assert!(e.contains("agentz") && e.contains("line 4"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let (_f, args) = args_with(
            "domain = \"a.example\"\n[[peer]]\ngateway = \"not-a-gateway\"\n\
             [[peer]]\ngateway = \"spiffe://b.example/agw/b1\"\non_limit = \"explode\"\nhold_time_s = 1\n",
        );
        let e = node_config(&args).unwrap_err();
        for needle in ["peer[0].gateway", "peer[1].on_limit", "peer[1].hold_time_s"] {
            assert!(e.contains(needle), "{needle} missing from: {e}");
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let (_f, mut args) = args_with(
            "domain = \"a.example\"\nname = \"edge\"\nshards = 3\n\
             [[peer]]\ngateway = \"spiffe://b.example/agw/b1\"\naddress = \"127.0.0.1:9\"\n",
        );
        args.shards = Some(2);
        let c = node_config(&args).unwrap();
        assert_eq!(
            (c.domain.as_str(), c.name.as_str(), c.shards),
            ("a.example", "edge", Some(2))
        );
        assert_eq!(c.agents, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].hold_time, Duration::from_secs(90));
        assert_eq!(c.allow, ["Example"]);
    }
}
