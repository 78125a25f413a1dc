//! The `agw` daemon: a [`Node`] from a TOML file and flags, run until SIGINT or SIGTERM (or
//! `agwctl drain`), which drain it: peers are left, no new connection is taken, what was
//! accepted is delivered or, past the drain deadline, NACKed. SIGHUP (or `agwctl reload`)
//! reads the file again and applies what can change live: peers and limits.
//!
//! Precedence: a flag, then the file, then the default. Unknown keys in the file are refused,
//! with the line; every problem found after parsing is reported at once.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use agw_dataplane::{
    LiveLimits,
    authorization::{Action, Authorization, Pattern, Rule},
};
use agw_proto::{
    identity::{Domain, GatewayId},
    pb::{self, ErrorCode, admin_reply::Result as Reply, admin_request::Command as AdminCommand},
};
use clap::Parser;
use crossbeam_channel::select;
use serde::Deserialize;

use crate::{
    admin,
    control::ControlError,
    node::{Node, NodeConfig, PeerEntry},
    peering::session::{DEFAULT_MAX_SUMMARIES, LimitAction, MIN_HOLD_TIME},
};

/// The Agent Gateway daemon: agents connect to it, prove their certificate and exchange
/// messages through it; it peers with other domains' gateways. With no options it runs a
/// single-node gateway for the domain `local.agw`, keeping its state under `./agw-data`.
#[derive(Debug, Parser)]
#[command(name = "agw", version)]
pub struct DaemonArgs {
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
    /// The CRL's public URL, written into every certificate [default:
    /// http://<crl-listen>/crl/<domain>.crl; needed when --crl-listen is a wildcard address].
    #[arg(long)]
    pub crl_url: Option<String>,
    /// The address agents use to reach the relay (host:port), which discovery gives for other
    /// domains' agents [default: the --listen address; set it when that is a wildcard].
    #[arg(long)]
    pub agent_address: Option<String>,
    /// Where agents register and discover, mutual TLS [default: 127.0.0.1:7403].
    #[arg(long)]
    pub registry_listen: Option<SocketAddr>,
    /// A port of its own for MQTT clients (TLS with their ACA certificate, no protocol
    /// detection), besides --listen, which serves them too [default: none].
    #[arg(long)]
    pub mqtt_listen: Option<SocketAddr>,
    /// A port of its own for A2A clients (HTTPS with their ACA certificate), besides --listen,
    /// which serves them too [default: none].
    #[arg(long)]
    pub a2a_listen: Option<SocketAddr>,
    /// Where peer gateways' peering sessions dial in, mutual TLS [default: 127.0.0.1:7404].
    #[arg(long)]
    pub peering_listen: Option<SocketAddr>,
    /// Where peer gateways' relays link in, mutual TLS [default: 127.0.0.1:7405].
    #[arg(long)]
    pub relay_links_listen: Option<SocketAddr>,
    /// Where Prometheus metrics (/metrics) and health (/health) are served
    /// [default: 127.0.0.1:7406].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the authority serves EST (RFC 7030) over HTTPS: enrollment and renewal with
    /// openssl and curl [default: 127.0.0.1:7407].
    #[arg(long)]
    pub est_listen: Option<SocketAddr>,
    /// A DNS name or IP address written into the gateway's certificate, for HTTPS clients
    /// that check the host they dial (curl on the EST endpoint). Repeat for several
    /// [default: the EST address's IP, and localhost when it is loopback].
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Seconds a drain (SIGTERM, SIGINT) may take to deliver what was accepted before the
    /// rest is NACKed DRAINING [default: 30].
    #[arg(long)]
    pub drain_deadline_s: Option<u64>,
    /// Seconds an A2A server agent (one registered with its URL) has to answer a request
    /// before it is NACKed REQUEST_TIMEOUT [default: 60].
    #[arg(long)]
    pub a2a_answer_within_s: Option<u64>,
    /// Organisations allowed certificates: ORG=SCOPE,SCOPE [default: Example]. Each
    /// enrolls with its token, which the gateway makes and keeps in
    /// DATA_DIR/aca/enrollment-tokens (0600): hand each organisation its own.
    #[arg(long = "allow", value_name = "ORG=SCOPE,...")]
    pub allow: Vec<String>,
    /// An organisation anyone may enroll in without a token (tests, closed networks; warned
    /// about at start). Repeat for several.
    #[arg(long = "open-enrollment", value_name = "ORG")]
    pub open_enrollment: Vec<String>,
    /// An organisation whose applications wait for the operator's approval (`agwctl cert
    /// pending|approve|deny`). Repeat for several.
    #[arg(long = "enrollment-approval", value_name = "ORG")]
    pub enrollment_approval: Vec<String>,
    /// Agents speak plain TCP on the agent port instead of mutual TLS: every message crosses
    /// the network readable (loopback and tests; warned about on any other address).
    #[arg(long)]
    pub agent_plaintext: bool,
    /// Relay shards (threads, one per core) [default: one per CPU].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Translate messages into the languages their destination agents understand with
    /// Apertium's APy service at this URL (e.g. http://127.0.0.1:2737); the [translation]
    /// section of --config names other engines and the policy (docs/translation.md)
    /// [default: no translation].
    #[arg(long, value_name = "URL")]
    pub translate_apertium: Option<String>,
    /// A client URL of the domain's etcd cluster (repeat for each member): the authority and
    /// the registry keep their state there, shared with the domain's other gateways
    /// (docs/operations.md, "A domain of several gateways"); needs a build with `--features
    /// etcd` [default: embedded stores in the data directory].
    #[arg(long = "etcd", value_name = "URL")]
    pub etcd: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    domain: Option<String>,
    name: Option<String>,
    data_dir: Option<PathBuf>,
    crl_url: Option<String>,
    agent_address: Option<String>,
    server_names: Option<Vec<String>>,
    allow: Option<Vec<String>>,
    open_enrollment: Option<Vec<String>>,
    enrollment_approval: Option<Vec<String>>,
    applications_per_minute: Option<u32>,
    applications_per_minute_per_source: Option<u32>,
    agent_plaintext: Option<bool>,
    aca_plaintext: Option<bool>,
    authorization: Option<AuthorizationFile>,
    shards: Option<usize>,
    drain_deadline_s: Option<u64>,
    a2a_answer_within_s: Option<u64>,
    listen: Option<ListenFile>,
    limits: Option<LimitsFile>,
    federation: Option<FederationFile>,
    #[serde(default, rename = "peer")]
    peers: Vec<PeerFile>,
    translation: Option<crate::translation::TranslationConfig>,
    etcd: Option<EtcdFile>,
}

/// `[etcd]`: the domain's shared store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdFile {
    endpoints: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenFile {
    agents: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    a2a: Option<SocketAddr>,
    aca: Option<SocketAddr>,
    crl: Option<SocketAddr>,
    registry: Option<SocketAddr>,
    peering: Option<SocketAddr>,
    relay_links: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    est: Option<SocketAddr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    queue_soft_limit_bytes: Option<usize>,
    queue_hard_limit_bytes: Option<usize>,
    shard_memory_budget_bytes: Option<usize>,
    max_connections_per_shard: Option<usize>,
    agent_rate: Option<u32>,
    agent_burst: Option<u32>,
    connection_rate_per_source: Option<u32>,
}

/// `[authorization]`: who may message whom (live on reload).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizationFile {
    /// "allow" (default) or "deny": messages between this domain's agents.
    local: Option<String>,
    /// "allow" (default) or "deny": messages across domains.
    remote: Option<String>,
    /// `[[authorization.rule]]`, first match wins.
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    from: String,
    to: String,
    action: String,
}

fn action(key: &str, text: &str, problems: &mut Vec<String>) -> Action {
    match text {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        other => {
            problems.push(format!("{key} {other:?}: allow or deny"));
            Action::Allow
        }
    }
}

/// The policy of `[authorization]`, every problem named.
fn authorization(
    domain: &str,
    file: AuthorizationFile,
    problems: &mut Vec<String>,
) -> Authorization {
    let mut rules = Vec::new();
    for (i, r) in file.rule.iter().enumerate() {
        let key = format!("authorization.rule[{}]", i + 1);
        let from = Pattern::parse(&r.from).map_err(|e| problems.push(format!("{key}.from {e}")));
        let to = Pattern::parse(&r.to).map_err(|e| problems.push(format!("{key}.to {e}")));
        let action = action(&format!("{key}.action"), &r.action, problems);
        if let (Ok(from), Ok(to)) = (from, to) {
            rules.push(Rule { from, to, action });
        }
    }
    let local = action(
        "authorization.local",
        file.local.as_deref().unwrap_or("allow"),
        problems,
    );
    let remote = action(
        "authorization.remote",
        file.remote.as_deref().unwrap_or("allow"),
        problems,
    );
    Authorization::new(domain, rules, local, remote)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FederationFile {
    root_cert: PathBuf,
    root_key: PathBuf,
    #[serde(default)]
    peer_crls: Vec<PathBuf>,
    peer_crl_refresh_s: Option<u64>,
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

/// A configuration that cannot run: every problem found, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration:\n  {}", problems.join("\n  "))]
pub struct ConfigError {
    /// One line per problem.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: String) -> ConfigError {
        ConfigError {
            problems: vec![problem],
        }
    }

    /// Whether any problem mentions `needle`.
    pub fn mentions(&self, needle: &str) -> bool {
        self.problems.iter().any(|p| p.contains(needle))
    }
}

/// Why a reload changed nothing or stopped part way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ReloadError {
    /// The file does not make a configuration: nothing changed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The relay refused the new limits.
    #[error("limits: {0}")]
    Limits(String),
    /// The control plane could not change the peers.
    #[error("peers: {0}")]
    Peers(#[from] ControlError),
}

impl ReloadError {
    fn code(&self) -> ErrorCode {
        match self {
            ReloadError::Config(_) | ReloadError::Limits(_) => ErrorCode::BadConfig,
            ReloadError::Peers(e) => e.code(),
        }
    }
}

fn parse_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(format!("config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError::one(format!("config {}: {e}", path.display())))
}

/// What the daemon runs with: the node's configuration and its own.
#[derive(Debug, Clone)]
struct DaemonConfig {
    node: NodeConfig,
    drain_deadline: Duration,
}

/// Flags over the file over the defaults; every problem at once.
fn daemon_config(args: &DaemonArgs) -> Result<DaemonConfig, ConfigError> {
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
    let mut peer_crl_refresh = Duration::from_secs(60);
    let root = file.federation.map(|f| {
        match f.peer_crl_refresh_s {
            Some(0) => problems.push("federation.peer_crl_refresh_s: at least 1".into()),
            Some(s) => peer_crl_refresh = Duration::from_secs(s),
            None => {}
        }
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
    let limits_file = file.limits.unwrap_or_default();
    let defaults = LiveLimits::default();
    let limits = LiveLimits {
        queue_soft_limit: limits_file
            .queue_soft_limit_bytes
            .unwrap_or(defaults.queue_soft_limit),
        queue_hard_limit: limits_file
            .queue_hard_limit_bytes
            .unwrap_or(defaults.queue_hard_limit),
        shard_memory_budget: limits_file
            .shard_memory_budget_bytes
            .unwrap_or(defaults.shard_memory_budget),
        max_connections_per_shard: limits_file
            .max_connections_per_shard
            .unwrap_or(defaults.max_connections_per_shard),
        agent_rate: limits_file.agent_rate.unwrap_or(defaults.agent_rate),
        agent_burst: limits_file.agent_burst.unwrap_or(defaults.agent_burst),
        connection_rate_per_source: limits_file
            .connection_rate_per_source
            .unwrap_or(defaults.connection_rate_per_source),
    };
    if let Err(e) = limits.validate() {
        problems.push(format!("limits: {e}"));
    }
    let drain_deadline = Duration::from_secs(
        args.drain_deadline_s
            .or(file.drain_deadline_s)
            .unwrap_or(30),
    );
    let a2a_answer_within = Duration::from_secs(
        args.a2a_answer_within_s
            .or(file.a2a_answer_within_s)
            .unwrap_or(60),
    );
    if a2a_answer_within.is_zero() {
        problems.push("a2a_answer_within_s must be above 0".into());
    }
    let allow = if !args.allow.is_empty() {
        args.allow.clone()
    } else {
        file.allow.unwrap_or_else(|| vec!["Example".into()])
    };
    let open_enrollment = if !args.open_enrollment.is_empty() {
        args.open_enrollment.clone()
    } else {
        file.open_enrollment.unwrap_or_default()
    };
    let enrollment_approval = if !args.enrollment_approval.is_empty() {
        args.enrollment_approval.clone()
    } else {
        file.enrollment_approval.unwrap_or_default()
    };
    for (key, orgs) in [
        ("open_enrollment", &open_enrollment),
        ("enrollment_approval", &enrollment_approval),
    ] {
        for org in orgs {
            if !allow
                .iter()
                .any(|a| a.split_once('=').map_or(a.as_str(), |(o, _)| o) == org)
            {
                problems.push(format!("{key} {org:?}: not an organisation of allow"));
            }
        }
    }
    let crl_listen = addr(args.crl_listen, listen.crl, "127.0.0.1:7402");
    let crl_url = args.crl_url.clone().or(file.crl_url);
    let agent_address = args.agent_address.clone().or(file.agent_address);
    if let Some(a) = &agent_address
        && (a.is_empty() || a.len() > 256 || a.chars().any(char::is_whitespace) || !a.contains(':'))
    {
        problems.push(format!("agent_address {a:?}: host:port, as agents dial it"));
    }
    if let Err(e) = agw_aca::http::crl_url(crl_url.as_deref(), crl_listen, &domain_text) {
        problems.push(e);
    }
    let est = addr(args.est_listen, listen.est, "127.0.0.1:7407");
    let aca_listen = addr(args.aca_listen, listen.aca, "127.0.0.1:7401");
    let server_names = if args.server_names.is_empty() {
        file.server_names
            .unwrap_or_else(|| default_server_names(est))
    } else {
        args.server_names.clone()
    };
    let policy = authorization(
        &domain_text,
        file.authorization.unwrap_or_default(),
        &mut problems,
    );
    let translation = match (&args.translate_apertium, file.translation) {
        (Some(url), _) => Some(crate::translation::TranslationConfig::apertium(url)),
        (None, t) => t,
    };
    if let Some(Err(e)) = translation.as_ref().map(|t| t.validate()) {
        problems.push(e);
    }
    match (domain, problems.is_empty()) {
        (Some(domain), true) => Ok(DaemonConfig {
            drain_deadline,
            node: NodeConfig {
                domain,
                name,
                data_dir: args
                    .data_dir
                    .clone()
                    .or(file.data_dir)
                    .unwrap_or_else(|| "agw-data".into()),
                allow,
                open_enrollment,
                enrollment_approval,
                applications_per_minute: file.applications_per_minute.unwrap_or(6_000),
                applications_per_minute_per_source: file
                    .applications_per_minute_per_source
                    .unwrap_or(600),
                authorization: policy,
                agent_plaintext: args.agent_plaintext || file.agent_plaintext.unwrap_or(false),
                shards: args.shards.or(file.shards),
                pin_cores: true,
                agents: addr(args.listen, listen.agents, "127.0.0.1:7400"),
                mqtt: args.mqtt_listen.or(listen.mqtt),
                a2a: args.a2a_listen.or(listen.a2a),
                a2a_answer_within,
                aca: aca_listen,
                aca_plaintext: file
                    .aca_plaintext
                    .unwrap_or_else(|| aca_listen.ip().is_loopback()),
                crl: crl_listen,
                crl_url,
                registry: addr(args.registry_listen, listen.registry, "127.0.0.1:7403"),
                peering: addr(args.peering_listen, listen.peering, "127.0.0.1:7404"),
                relay_links: addr(
                    args.relay_links_listen,
                    listen.relay_links,
                    "127.0.0.1:7405",
                ),
                metrics: Some(addr(args.metrics_listen, listen.metrics, "127.0.0.1:7406")),
                est: Some(est),
                server_names,
                root,
                peer_crls,
                peer_crl_refresh,
                peers,
                limits,
                gateway_validity: Duration::from_secs(90 * 86_400),
                agent_address,
                translation,
                access: agw_dataplane::access::AccessConfig::default(),
                etcd: match (&args.etcd, file.etcd) {
                    (flags, _) if !flags.is_empty() => flags.clone(),
                    (_, Some(f)) => f.endpoints,
                    _ => Vec::new(),
                },
            },
        }),
        _ => Err(ConfigError { problems }),
    }
}

/// The names HTTPS clients dial the EST endpoint by, when the operator names none: its IP
/// (none for a wildcard address), and `localhost` on loopback.
fn default_server_names(est: SocketAddr) -> Vec<String> {
    let ip = est.ip();
    match ip {
        _ if ip.is_unspecified() => Vec::new(),
        _ if ip.is_loopback() => vec!["localhost".into(), ip.to_string()],
        _ => vec![ip.to_string()],
    }
}

/// Runs the gateway until SIGINT, SIGTERM or `agwctl drain`, then drains it.
pub fn run(args: DaemonArgs) -> Result<(), String> {
    let mut running = daemon_config(&args).map_err(|e| e.to_string())?;
    let config = running.node.clone();
    let data_dir = config.data_dir.clone();
    agw_aca::private::private_dir(&data_dir)
        .map_err(|e| format!("data dir {}: {e}", data_dir.display()))?;
    // First, so that a second daemon on the same data directory stops here.
    let (mut admin_socket, asked) = admin::listen(&data_dir)?;
    let allow = config.allow.join(", ");
    let peers = config.peers.len();
    let unchecked_peers = peers > 0 && config.peer_crls.is_empty();
    let mut node = Node::start(config)?;
    admin_socket.serve(node.runtime().ok_or("the node has no runtime")?)?;
    let started = Instant::now();
    // Signals arrive as messages: the loop below sleeps until something happens.
    let signals = signal_channel()?;

    let a = node.addresses().clone();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "agw: gateway {}, {} shard(s)",
        node.gateway,
        node.dataplane.shards()
    );
    let _ = writeln!(
        out,
        "agw: agents connect to {} ({})",
        a.agents,
        if running.node.agent_plaintext {
            "plain TCP"
        } else {
            "mutual TLS, ALPN agw/1"
        }
    );
    let _ = writeln!(
        out,
        "agw: certificates from the ACA at {} ({}; organisations: {allow}); trust anchor in {}",
        a.aca,
        if running.node.aca_plaintext {
            "TLS or plain TCP"
        } else {
            "TLS"
        },
        node.trust_anchor_path().display()
    );
    let _ = writeln!(
        out,
        "agw: enrollment tokens (hand each organisation its own) in {}",
        node.enrollment_tokens_path().display()
    );
    if let Some(mqtt) = a.mqtt {
        let _ = writeln!(out, "agw: MQTT clients also on {mqtt} (TLS, MQTT only)");
    }
    if let Some(a2a) = a.a2a {
        let _ = writeln!(
            out,
            "agw: A2A clients also at https://{a2a}/a2a/ (HTTPS, A2A only)"
        );
    }
    let _ = writeln!(out, "agw: registry (mutual TLS) at {}", a.registry);
    let _ = writeln!(out, "agw: CRL at {}", a.crl_url);
    if let Some(est) = a.est {
        let names = &running.node.server_names;
        let _ = writeln!(
            out,
            "agw: EST (RFC 7030) at https://{est}/.well-known/est/ (certificate names: {})",
            if names.is_empty() {
                "none: set server_names for clients that check the host".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    if let Some(m) = a.metrics {
        let _ = writeln!(
            out,
            "agw: metrics at http://{m}/metrics, health at http://{m}/health"
        );
    }
    let _ = writeln!(
        out,
        "agw: peering on {} ({peers} peer(s)), relay links on {}",
        a.peering, a.relay_links
    );
    if unchecked_peers {
        let _ = writeln!(
            out,
            "agw: warning: no CRLs of peer domains configured (federation.peer_crls): \
             a peer's certificate is accepted until its domain's CRL is fetched from its \
             distribution point"
        );
    }
    let _ = writeln!(
        out,
        "agw: admin socket {}: `agwctl --data-dir {}` shows and changes it",
        admin_socket.path().display(),
        data_dir.display()
    );
    let _ = writeln!(
        out,
        "agw: Ctrl-C or SIGTERM drains and stops it, SIGHUP reloads the configuration"
    );
    let _ = out.flush();

    let mut deadline = running.drain_deadline;
    loop {
        // The next deadline: the gateway certificate's renewal (at most a day ahead, so a
        // changed clock is noticed).
        let renewal = node
            .renewal_due()
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default()
            .min(Duration::from_secs(86_400));
        select! {
            recv(signals) -> signal => match signal {
                Ok(Signal::Hangup) => {
                    match reload(&args, &mut running, &mut node) {
                        Ok(r) => {
                            for line in &r.applied {
                                let _ = writeln!(out, "agw: reload: applied: {line}");
                            }
                            for line in &r.needs_restart {
                                let _ = writeln!(out, "agw: reload: needs a restart: {line}");
                            }
                            if r.applied.is_empty() && r.needs_restart.is_empty() {
                                let _ = writeln!(out, "agw: reload: nothing changed");
                            }
                        }
                        Err(e @ ReloadError::Config(_)) => {
                            let _ = writeln!(out, "agw: reload refused, nothing changed: {e}");
                        }
                        Err(e) => {
                            let _ = writeln!(out, "agw: reload stopped part way: {e}");
                        }
                    }
                    let _ = out.flush();
            }
                Ok(Signal::Stop) | Err(_) => break,
            },
            recv(asked) -> asked => {
                let Ok(asked) = asked else { break };
                let id = asked.request.request_id;
                let reply = match &asked.request.command {
                    Some(AdminCommand::Drain(d)) => {
                        if d.deadline_ms > 0 {
                            deadline = Duration::from_millis(u64::from(d.deadline_ms));
                        }
                        let _ = asked.reply.send(pb::AdminReply {
                            request_id: id,
                            error: None,
                            result: Some(Reply::DrainStarted(pb::DrainStarted {
                                deadline_ms: deadline.as_millis() as u32,
                            })),
                        });
                        let _ = writeln!(out, "agw: drain asked by an operator");
                        break;
                    }
                    Some(AdminCommand::Reload(_)) => match reload(&args, &mut running, &mut node) {
                        Ok(r) => pb::AdminReply {
                            request_id: id,
                            error: None,
                            result: Some(Reply::Reloaded(r)),
                        },
                        Err(e) => admin::refusal(id, e.code(), &e.to_string()),
                    },
                    _ => admin::answer(&node, &asked.request, started),
                };
                let _ = asked.reply.send(reply);
        },
            recv(node.revocations()) -> _ => node.apply_revocations(),
            default(renewal) => {
                match node.renew_certificate_if_due(SystemTime::now()) {
                    Ok(Some(renewed)) => {
                        let until = renewed
                            .not_after
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        let _ = writeln!(
                            out,
                            "agw: gateway certificate renewed: serial {}, valid until {until} (Unix s)",
                            hex::encode(&renewed.serial)
                        );
                        let _ = out.flush();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let _ = writeln!(out, "agw: {e}; trying again in a minute");
                        let _ = out.flush();
                    }
                }
            },
        }
    }

    let _ = writeln!(
        out,
        "agw: draining (deadline {} s): peers left, no new connections, delivering what was accepted",
        deadline.as_secs()
    );
    let _ = out.flush();
    let mut last_line = Instant::now();
    let report = node.drain(deadline, |frames, bytes| {
        if last_line.elapsed() >= Duration::from_secs(1) {
            last_line = Instant::now();
            let _ = writeln!(
                std::io::stdout(),
                "agw: draining: {frames} frame(s), {bytes} byte(s) still queued"
            );
        }
    });
    let t = report.totals;
    node.stop();
    drop(admin_socket);
    let _ = writeln!(
        out,
        "agw: stopped after a {:.1} s drain; {} frames accepted, {} delivered, {} NACKed \
         ({} at the drain deadline), {} in flight",
        report.elapsed.as_secs_f64(),
        t.accepted,
        t.delivered,
        t.nacked_total(),
        t.nacked_for(ErrorCode::Draining),
        t.in_flight()
    );
    Ok(())
}

/// Reads the configuration again; applies peers and limits, lists what needs a restart.
fn reload(
    args: &DaemonArgs,
    running: &mut DaemonConfig,
    node: &mut Node,
) -> Result<pb::ReloadReply, ReloadError> {
    let new = daemon_config(args)?;
    let (old, next) = (&running.node, &new.node);
    let mut needs_restart = Vec::new();
    let mut differs = |key: &str, was: String, now: String| {
        if was != now {
            needs_restart.push(format!("{key} (running {was}, file {now})"));
        }
    };
    differs("domain", old.domain.to_string(), next.domain.to_string());
    differs(
        "translation",
        crate::translation::describe(old.translation.as_ref()),
        crate::translation::describe(next.translation.as_ref()),
    );
    differs("name", old.name.clone(), next.name.clone());
    differs(
        "data_dir",
        old.data_dir.display().to_string(),
        next.data_dir.display().to_string(),
    );
    for (key, was, now) in [
        ("allow", &old.allow, &next.allow),
        (
            "open_enrollment",
            &old.open_enrollment,
            &next.open_enrollment,
        ),
        (
            "enrollment_approval",
            &old.enrollment_approval,
            &next.enrollment_approval,
        ),
        ("server_names", &old.server_names, &next.server_names),
        ("etcd", &old.etcd, &next.etcd),
    ] {
        differs(key, was.join(","), now.join(","));
    }
    for (key, was, now) in [
        ("agent_plaintext", old.agent_plaintext, next.agent_plaintext),
        ("aca_plaintext", old.aca_plaintext, next.aca_plaintext),
    ] {
        differs(key, was.to_string(), now.to_string());
    }
    for (key, was, now) in [
        (
            "applications_per_minute",
            old.applications_per_minute,
            next.applications_per_minute,
        ),
        (
            "applications_per_minute_per_source",
            old.applications_per_minute_per_source,
            next.applications_per_minute_per_source,
        ),
        (
            "a2a_answer_within_s",
            old.a2a_answer_within.as_secs() as u32,
            next.a2a_answer_within.as_secs() as u32,
        ),
    ] {
        differs(key, was.to_string(), now.to_string());
    }
    for (key, was, now) in [
        ("crl_url", &old.crl_url, &next.crl_url),
        ("agent_address", &old.agent_address, &next.agent_address),
    ] {
        differs(key, format!("{was:?}"), format!("{now:?}"));
    }
    differs(
        "shards",
        format!("{:?}", old.shards),
        format!("{:?}", next.shards),
    );
    for (key, was, now) in [
        ("listen.agents", old.agents, next.agents),
        ("listen.aca", old.aca, next.aca),
        ("listen.crl", old.crl, next.crl),
        ("listen.registry", old.registry, next.registry),
        ("listen.peering", old.peering, next.peering),
        ("listen.relay_links", old.relay_links, next.relay_links),
    ] {
        differs(key, was.to_string(), now.to_string());
    }
    for (key, was, now) in [
        ("listen.mqtt", old.mqtt, next.mqtt),
        ("listen.a2a", old.a2a, next.a2a),
        ("listen.metrics", old.metrics, next.metrics),
        ("listen.est", old.est, next.est),
    ] {
        differs(key, format!("{was:?}"), format!("{now:?}"));
    }
    differs(
        "federation",
        format!(
            "{:?} {} {:?}",
            old.root,
            old.peer_crls.len(),
            old.peer_crl_refresh
        ),
        format!(
            "{:?} {} {:?}",
            next.root,
            next.peer_crls.len(),
            next.peer_crl_refresh
        ),
    );
    // A reload is also the operator's way to have the peers' CRLs fetched now.
    node.refresh_crls();
    let mut applied = Vec::new();
    let (old, next) = (running.node.clone(), new.node.clone());
    if next.limits != old.limits {
        node.set_limits(next.limits).map_err(ReloadError::Limits)?;
        let l = next.limits;
        applied.push(format!(
            "limits: queue soft {} B, hard {} B, shard budget {} B, {} connections per shard, {} messages/s per agent (burst {}), {} connections/s per source",
            l.queue_soft_limit,
            l.queue_hard_limit,
            l.shard_memory_budget,
            l.max_connections_per_shard,
            l.agent_rate,
            l.agent_burst,
            l.connection_rate_per_source
        ));
        running.node.limits = l;
    }
    if next.authorization != old.authorization {
        node.set_authorization(next.authorization.clone());
        applied.push(format!(
            "authorization: {} rule(s)",
            next.authorization.rules().len()
        ));
        running.node.authorization = next.authorization.clone();
    }
    if next.peers != old.peers {
        applied.extend(node.set_peers(next.peers.clone())?);
        running.node.peers = next.peers.clone();
    }
    if new.drain_deadline != running.drain_deadline {
        applied.push(format!(
            "drain_deadline_s: {}",
            new.drain_deadline.as_secs()
        ));
        running.drain_deadline = new.drain_deadline;
    }
    Ok(pb::ReloadReply {
        applied,
        needs_restart,
    })
}

/// What a signal asks of the daemon.
enum Signal {
    /// SIGINT, SIGTERM: drain and stop.
    Stop,
    /// SIGHUP: reload the configuration.
    Hangup,
}

/// SIGINT, SIGTERM and SIGHUP as messages (a thread of signal-hook's waits for them).
fn signal_channel() -> Result<crossbeam_channel::Receiver<Signal>, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("signals: {e}"))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("agw-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let what = if signal == SIGHUP {
                    Signal::Hangup
                } else {
                    Signal::Stop
                };
                if tx.send(what).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| format!("signals: {e}"))?;
    Ok(rx)
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
        let e = daemon_config(&args).unwrap_err();
        assert!(e.mentions("agentz") && e.mentions("line 4"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let (_f, args) = args_with(
            "domain = \"a.example\"\n[[peer]]\ngateway = \"not-a-gateway\"\n\
             [[peer]]\ngateway = \"spiffe://b.example/agw/b1\"\non_limit = \"explode\"\nhold_time_s = 1\n",
        );
        let e = daemon_config(&args).unwrap_err();
        for needle in ["peer[0].gateway", "peer[1].on_limit", "peer[1].hold_time_s"] {
            assert!(e.mentions(needle), "{needle} missing from: {e}");
        }
    }

    #[test]
    fn the_authorization_table_makes_the_policy_or_names_its_problems() {
        let (_f, args) = args_with(
            "domain = \"a.example\"\n\
             [authorization]\nremote = \"deny\"\n\
             [[authorization.rule]]\nfrom = \"spiffe://a.example/agent/intern\"\n\
             to = \"domain:a.example\"\naction = \"deny\"\n\
             [[authorization.rule]]\nfrom = \"domain:b.example\"\nto = \"*\"\naction = \"allow\"\n",
        );
        let policy = daemon_config(&args).unwrap().node.authorization;
        assert_eq!(policy.rules().len(), 2);
        let a = |n: &str| format!("spiffe://a.example/agent/{n}");
        assert!(policy.check(&a("intern"), &a("desk")).is_err());
        assert!(policy.check(&a("desk"), &a("intern")).is_ok());
        assert!(
            policy
                .check("spiffe://b.example/agent/x", &a("desk"))
                .is_ok()
        );
        assert!(
            policy
                .check(&a("desk"), "spiffe://c.example/agent/y")
                .is_err()
        );

        let (_f, args) = args_with(
            "[authorization]\nlocal = \"maybe\"\n\
             [[authorization.rule]]\nfrom = \"alice\"\nto = \"*\"\naction = \"deny\"\n",
        );
        let e = daemon_config(&args).unwrap_err();
        assert!(e.mentions("authorization.local \"maybe\""), "{e}");
        assert!(e.mentions("authorization.rule[1].from"), "{e}");
    }

    #[test]
    fn the_agent_address_is_a_host_and_port() {
        let (_f, args) = args_with("agent_address = \"gw.a.example:7400\"\n");
        let c = daemon_config(&args).unwrap().node;
        assert_eq!(c.agent_address.as_deref(), Some("gw.a.example:7400"));
        let (_f, args) = args_with("agent_address = \"gw a example\"\n");
        let e = daemon_config(&args).unwrap_err();
        assert!(e.mentions("agent_address"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let (_f, mut args) = args_with(
            "domain = \"a.example\"\nname = \"edge\"\nshards = 3\n\
             [[peer]]\ngateway = \"spiffe://b.example/agw/b1\"\naddress = \"127.0.0.1:9\"\n",
        );
        args.shards = Some(2);
        let c = daemon_config(&args).unwrap().node;
        assert_eq!(
            (c.domain.as_str(), c.name.as_str(), c.shards),
            ("a.example", "edge", Some(2))
        );
        assert_eq!(c.agents, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.peers[0].hold_time, Duration::from_secs(90));
        assert_eq!(c.allow, ["Example"]);
    }

    #[test]
    fn the_translation_section_names_engines_and_policy_or_its_problems() {
        let (_f, args) = args_with(
            "[translation]\non_failure = \"deliver\"\ndeadline_ms = 500\noff = [\"b.example\"]\n\
             [[translation.engine]]\nkind = \"apertium\"\nurl = \"http://127.0.0.1:2737\"\n\
             [[translation.engine]]\nkind = \"openai\"\nurl = \"http://127.0.0.1:8000/v1\"\n\
             model = \"m\"\npairs = [\"en-zh\"]\n",
        );
        let t = daemon_config(&args).unwrap().node.translation.unwrap();
        assert_eq!(t.on_failure, crate::translation::OnFailure::Deliver);
        assert_eq!(
            (t.deadline_ms, t.lanes, t.off.as_slice()),
            (500, 16, &["b.example".to_owned()][..])
        );
        assert_eq!(t.engines.len(), 2);
        // The flag alone: Apertium at its URL.
        let (_f, mut args) = args_with("");
        args.translate_apertium = Some("http://127.0.0.1:2737".into());
        let t = daemon_config(&args).unwrap().node.translation.unwrap();
        assert_eq!(t.engines[0].kind, crate::translation::EngineKind::Apertium);
        // An engine over https, a bad pair, no engine: refused before anything starts.
        for (file, problem) in [
            (
                "[[translation.engine]]\nkind = \"apertium\"\nurl = \"https://x\"\n",
                "only http://",
            ),
            (
                "[[translation.engine]]\nkind = \"openai\"\nurl = \"http://x\"\npairs = [\"en\"]\n",
                "from-to",
            ),
            ("[translation]\n", "at least one"),
        ] {
            let (_f, args) = args_with(file);
            let e = daemon_config(&args).unwrap_err();
            assert!(
                e.problems.iter().any(|p| p.contains(problem)),
                "{file}: {:?}",
                e.problems
            );
        }
    }
}
