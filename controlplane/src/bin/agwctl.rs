//! `agwctl`: the operator's CLI for a running `agw`. It speaks the daemon's admin API over the
//! Unix socket in the gateway's data directory, authenticated by the token beside it.

use std::{
    io::Write as _,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use agw_controlplane::admin::{SOCKET_FILE, TOKEN_FILE};
use agw_dataplane::counters::{RESIDENCE_BUCKETS, residence_bound};
use agw_proto::{
    Message,
    pb::{self, admin_reply::Result as Reply, admin_request::Command},
};
use agw_sdk::connection::Connection;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// Shows and changes a running Agent Gateway: its peers, routes, agents, certificates and
/// counters; drains it. Talks to the daemon's admin socket (`<data-dir>/admin.sock`) with the
/// token in `<data-dir>/admin.token`: run it as the user that runs `agw`.
#[derive(Debug, Parser)]
#[command(name = "agwctl", version)]
struct Args {
    /// The gateway's data directory (where its admin socket and token are).
    #[arg(long, default_value = "agw-data", global = true)]
    data_dir: PathBuf,
    /// The admin socket [default: <data-dir>/admin.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// The file holding the admin token [default: <data-dir>/admin.token].
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// How answers are printed.
    #[arg(long, short, value_enum, default_value = "text", global = true)]
    output: Output,
    /// Seconds to wait for the gateway's answer.
    #[arg(long, default_value_t = 15, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Tables for people.
    Text,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Peers: session state, uptime, summaries in and out.
    Peers,
    /// Routes: destination, what the relay does, next hop, path.
    Routes {
        /// Only the route to this agent ID.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many (by agent ID; the gateway caps it at 10,000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Agents, local and remote, with their status.
    Agents {
        /// Only agents of this gateway.
        #[arg(long)]
        local: bool,
        /// At most this many (by agent ID; the gateway caps it at 10,000).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// The relay's counters per shard, and rates over an interval.
    Stats {
        /// Seconds between the two samples the rates come from; 0 for counters only.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Certificates from the gateway's authority.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Drains the gateway, then it exits: peers are left, no new connection is taken, what
    /// was accepted is delivered; at the deadline what is left is NACKed DRAINING.
    Drain {
        /// Seconds to finish delivering.
        #[arg(long, default_value_t = 30)]
        deadline: u32,
        /// Return once the drain has started, without waiting for the gateway to exit.
        #[arg(long)]
        no_wait: bool,
    },
    /// Reads the gateway's configuration file again and applies what can change live
    /// (peers, limits); says what needs a restart. The same as SIGHUP.
    Reload,
    /// Maintenance mode: `on` tells every peer this gateway is temporarily offline (they
    /// route around it and show its agents so), `off` ends it, `status` shows it. The relay
    /// keeps serving what still reaches it.
    Maintenance {
        #[arg(value_enum)]
        mode: MaintenanceMode,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum MaintenanceMode {
    On,
    Off,
    Status,
}

#[derive(Debug, Subcommand)]
enum CertCmd {
    /// Issues a certificate for a gateway of this domain from its CSR (PEM or DER).
    Issue {
        /// The gateway ID to certify: spiffe://<domain>/agw/<name>.
        #[arg(long)]
        gateway: String,
        /// The gateway's PKCS#10 certificate signing request.
        #[arg(long)]
        csr: PathBuf,
        /// Write the chain (PEM) here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revokes a certificate by its serial number; the next CRL lists it and live sessions
    /// using it are closed.
    Revoke {
        /// The serial number, hex (colons allowed).
        #[arg(long)]
        serial: String,
        /// The reason (RFC 5280).
        #[arg(long, value_enum, default_value = "unspecified")]
        reason: Reason,
    },
    /// Shows the current CRL: its number and the serials it revokes.
    Crl {
        /// Write the CRL (PEM) here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Lists the certificate applications waiting for approval (organisations configured
    /// with enrollment_approval).
    Pending {
        /// Decided ones too.
        #[arg(long)]
        all: bool,
    },
    /// Approves application ID: the agent gets its certificate when it applies again with
    /// the same key.
    Approve {
        /// The application's number, as `cert pending` shows it.
        id: u64,
    },
    /// Denies application ID: the agent is told APPLICATION_DENIED when it applies again.
    Deny {
        /// The application's number, as `cert pending` shows it.
        id: u64,
    },
}

/// One application as a line and as JSON.
fn application_view(a: &pb::Application) -> (String, serde_json::Value) {
    let materials = a.materials.clone().unwrap_or_default();
    let state = match a.state() {
        pb::ApplicationState::ApplicationPending => "pending",
        pb::ApplicationState::ApplicationApproved => "approved",
        pb::ApplicationState::ApplicationDeniedByOperator => "denied",
        pb::ApplicationState::Unspecified => "unknown",
    };
    let line = format!(
        "{:>5}  {:<8}  {}  organisation {:?}, developer {:?}, scopes [{}]\n",
        a.id,
        state,
        a.identity,
        materials.organization,
        materials.developer,
        materials.permission_scope.join(", ")
    );
    let json = json!({
        "id": a.id,
        "state": state,
        "identity": a.identity,
        "organization": materials.organization,
        "developer": materials.developer,
        "function_type": materials.function_type,
        "permission_scope": materials.permission_scope,
        "key_fingerprint": hex::encode(&a.key_fingerprint),
        "received_unix_s": a.received_unix_s,
    });
    (line, json)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Reason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    fn wire(self) -> pb::RevocationReason {
        match self {
            Reason::Unspecified => pb::RevocationReason::Unspecified,
            Reason::KeyCompromise => pb::RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => pb::RevocationReason::AffiliationChanged,
            Reason::Superseded => pb::RevocationReason::Superseded,
            Reason::CessationOfOperation => pb::RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => pb::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// The daemon's admin socket, one request per connection.
struct Client {
    socket: PathBuf,
    token: String,
    timeout: Duration,
    next_id: u64,
}

impl Client {
    fn new(args: &Args) -> Result<Client, String> {
        let socket = args
            .socket
            .clone()
            .unwrap_or_else(|| args.data_dir.join(SOCKET_FILE));
        let token_file = args
            .token_file
            .clone()
            .unwrap_or_else(|| args.data_dir.join(TOKEN_FILE));
        let token = std::fs::read_to_string(&token_file).map_err(|e| {
            format!(
                "cannot read the admin token {}: {e} (is agw running with --data-dir {}, \
                 and are you the user it runs as?)",
                token_file.display(),
                args.data_dir.display()
            )
        })?;
        Ok(Client {
            socket,
            token: token.trim().to_owned(),
            timeout: Duration::from_secs(args.timeout),
            next_id: 1,
        })
    }

    fn connect(&self) -> Result<UnixStream, String> {
        let stream = UnixStream::connect(&self.socket).map_err(|e| {
            format!(
                "cannot reach the gateway at {}: {e} (is agw running?)",
                self.socket.display()
            )
        })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| e.to_string())?;
        Ok(stream)
    }

    /// Sends `command`; returns the result, or the gateway's refusal as an error.
    fn ask(&mut self, command: Command) -> Result<Reply, String> {
        let request_id = self.next_id;
        self.next_id += 1;
        let request = pb::AdminRequest {
            request_id,
            token: self.token.clone(),
            command: Some(command),
        };
        let mut connection = Connection::over(self.connect()?);
        let answer = connection
            .request(request)
            .map_err(|e| format!("the gateway at {}: {e}", self.socket.display()))?;
        let reply = match answer {
            Message::AdminReply(r) => r,
            Message::Notification(n) => {
                return Err(format!(
                    "the gateway refused the request: {}: {}",
                    n.code().as_str_name(),
                    n.text
                ));
            }
            other => return Err(format!("unexpected answer {}", other.kind().name())),
        };
        if let Some(e) = reply.error {
            return Err(format!("refused: {}: {}", e.code().as_str_name(), e.detail));
        }
        reply
            .result
            .ok_or_else(|| "the gateway answered nothing".to_string())
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agwctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a command prints: text lines, or a JSON document.
struct Printed {
    text: String,
    json: Value,
}

fn run(args: &Args) -> Result<(), String> {
    let mut client = Client::new(args)?;
    let printed = match &args.command {
        Cmd::Peers => peers(&mut client)?,
        Cmd::Routes { agent, limit } => routes(&mut client, agent.clone(), *limit)?,
        Cmd::Agents { local, limit } => agents(&mut client, *local, *limit)?,
        Cmd::Stats { interval } => stats(&mut client, *interval)?,
        Cmd::Cert(c) => cert(&mut client, c)?,
        Cmd::Drain { deadline, no_wait } => drain(&mut client, *deadline, *no_wait, args.output)?,
        Cmd::Reload => reload(&mut client)?,
        Cmd::Maintenance { mode } => maintenance(&mut client, *mode)?,
    };
    let mut out = std::io::stdout().lock();
    let written = match args.output {
        Output::Text => out.write_all(printed.text.as_bytes()),
        Output::Json => writeln!(out, "{:#}", printed.json),
    };
    written.map_err(|e| e.to_string())
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(&mut headers.iter().copied());
    for row in rows {
        text.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    text
}

fn status_name(status: pb::Status) -> &'static str {
    match status {
        pb::Status::Unspecified => "-",
        pb::Status::Running => "running",
        pb::Status::TemporarilyOffline => "temporarily-offline",
        pb::Status::Offline => "offline",
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// A session state as operators read it.
fn state_name(state: pb::SessionState) -> &'static str {
    use pb::SessionState as S;
    match state {
        S::SessionIdle => "Idle",
        S::SessionConnecting => "Connecting",
        S::SessionOpenSent => "OpenSent",
        S::SessionOpenWait => "OpenWait",
        S::SessionEstablished => "Established",
        S::SessionStopped => "Stopped",
        S::Unspecified => "unknown",
    }
}

fn peers(client: &mut Client) -> Result<Printed, String> {
    let Reply::Peers(list) = client.ask(Command::ListPeers(pb::ListPeers {}))? else {
        return Err("unexpected answer".into());
    };
    let rows: Vec<Vec<String>> = list
        .peers
        .iter()
        .map(|p| {
            vec![
                p.gateway.clone(),
                state_name(p.session()).into(),
                if p.uptime_s > 0 || p.session() == pb::SessionState::SessionEstablished {
                    duration(p.uptime_s)
                } else {
                    "-".into()
                },
                p.summaries_in.to_string(),
                p.summaries_out.to_string(),
                if p.address.is_empty() {
                    "(dials in)".into()
                } else {
                    p.address.clone()
                },
            ]
        })
        .collect();
    let text = if rows.is_empty() {
        "no peers configured\n".into()
    } else {
        table(
            &[
                "PEER",
                "STATE",
                "UPTIME",
                "SUMMARIES-IN",
                "SUMMARIES-OUT",
                "ADDRESS",
            ],
            &rows,
        )
    };
    let json = json!({ "peers": list.peers.iter().map(|p| json!({
        "gateway": p.gateway, "domain": p.domain, "state": state_name(p.session()), "uptime_s": p.uptime_s,
        "summaries_in": p.summaries_in, "summaries_out": p.summaries_out, "address": p.address,
    })).collect::<Vec<_>>() });
    Ok(Printed { text, json })
}

fn cut_note(shown: usize, total: u64) -> String {
    if (shown as u64) < total {
        format!("({shown} of {total} shown; --limit for more)\n")
    } else {
        String::new()
    }
}

fn routes(client: &mut Client, agent: Option<String>, limit: u32) -> Result<Printed, String> {
    let Reply::Routes(list) = client.ask(Command::ListRoutes(pb::ListRoutes {
        agent: agent.clone().unwrap_or_default(),
        limit,
    }))?
    else {
        return Err("unexpected answer".into());
    };
    if let Some(a) = &agent
        && list.routes.is_empty()
    {
        return Err(format!("no route to {a}"));
    }
    let rows: Vec<Vec<String>> = list
        .routes
        .iter()
        .map(|r| {
            vec![
                r.agent.clone(),
                r.route.clone(),
                if r.next_hop.is_empty() {
                    "-".into()
                } else {
                    r.next_hop.clone()
                },
                if r.path.is_empty() {
                    "-".into()
                } else {
                    r.path.join(" > ")
                },
                status_name(r.status()).into(),
            ]
        })
        .collect();
    let mut text = if rows.is_empty() {
        "no routes\n".to_string()
    } else {
        table(&["AGENT", "ROUTE", "NEXT-HOP", "PATH", "STATUS"], &rows)
    };
    text.push_str(&cut_note(rows.len(), list.total));
    let json = json!({ "total": list.total, "routes": list.routes.iter().map(|r| json!({
        "agent": r.agent, "route": r.route, "next_hop": r.next_hop, "path": r.path,
        "status": status_name(r.status()),
    })).collect::<Vec<_>>() });
    Ok(Printed { text, json })
}

fn agents(client: &mut Client, local_only: bool, limit: u32) -> Result<Printed, String> {
    let Reply::Agents(list) =
        client.ask(Command::ListAgents(pb::ListAgents { local_only, limit }))?
    else {
        return Err("unexpected answer".into());
    };
    let rows: Vec<Vec<String>> = list
        .agents
        .iter()
        .map(|a| {
            vec![
                a.agent.clone(),
                if a.local { "local" } else { "remote" }.into(),
                status_name(a.status()).into(),
                a.gateway.clone(),
            ]
        })
        .collect();
    let mut text = if rows.is_empty() {
        "no agents\n".to_string()
    } else {
        table(&["AGENT", "WHERE", "STATUS", "GATEWAY"], &rows)
    };
    text.push_str(&cut_note(rows.len(), list.total));
    let json = json!({ "total": list.total, "agents": list.agents.iter().map(|a| json!({
        "agent": a.agent, "local": a.local, "status": status_name(a.status()), "gateway": a.gateway,
    })).collect::<Vec<_>>() });
    Ok(Printed { text, json })
}

fn get_stats(client: &mut Client) -> Result<pb::Stats, String> {
    match client.ask(Command::GetStats(pb::GetStats {}))? {
        Reply::Stats(s) => Ok(s),
        _ => Err("unexpected answer".into()),
    }
}

/// The upper bound (seconds) of the bucket holding quantile `q` of a residence histogram.
fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = (q * count as f64).ceil() as u64;
    let mut seen = 0;
    for (k, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(if k < RESIDENCE_BUCKETS {
                residence_bound(k)
            } else {
                f64::INFINITY
            });
        }
    }
    None
}

fn micros(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s.is_infinite() => {
            format!(">{:.0}ms", residence_bound(RESIDENCE_BUCKETS - 1) * 1e3)
        }
        Some(s) if s < 1e-3 => format!("<={:.0}us", s * 1e6),
        Some(s) => format!("<={:.0}ms", s * 1e3),
    }
}

fn nacked(s: &pb::ShardStats) -> u64 {
    s.nacked.iter().map(|n| n.count).sum()
}

fn stats(client: &mut Client, interval: f64) -> Result<Printed, String> {
    let first = get_stats(client)?;
    let (last, seconds) = if interval > 0.0 {
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(interval));
        (get_stats(client)?, started.elapsed().as_secs_f64())
    } else {
        (first.clone(), 0.0)
    };
    let rate = |now: u64, before: u64| {
        if seconds > 0.0 {
            now.saturating_sub(before) as f64 / seconds
        } else {
            0.0
        }
    };
    let mut rows = Vec::new();
    let mut shards_json = Vec::new();
    for s in &last.shards {
        let before = first
            .shards
            .iter()
            .find(|b| b.shard == s.shard)
            .cloned()
            .unwrap_or_default();
        let (p50, p99) = (quantile(&s.residence, 0.5), quantile(&s.residence, 0.99));
        rows.push(vec![
            s.shard.to_string(),
            s.connections.to_string(),
            s.accepted.to_string(),
            s.delivered.to_string(),
            nacked(s).to_string(),
            s.discarded.to_string(),
            s.queued_bytes.to_string(),
            format!("{:.0}", rate(s.accepted, before.accepted)),
            format!("{:.0}", rate(s.delivered, before.delivered)),
            format!("{:.1}", rate(s.bytes_in, before.bytes_in) / 1e6),
            micros(p50),
            micros(p99),
        ]);
        shards_json.push(json!({
            "shard": s.shard, "connections": s.connections,
            "connections_accepted": s.connections_accepted, "agents_accessed": s.agents_accessed,
            "accepted": s.accepted, "delivered": s.delivered, "discarded": s.discarded,
            "nacked": s.nacked.iter().map(|n| (n.reason().as_str_name().to_owned(), json!(n.count)))
                .collect::<serde_json::Map<_, _>>(),
            "bytes_in": s.bytes_in, "bytes_out": s.bytes_out, "queued_bytes": s.queued_bytes,
            "residence_buckets_upper_s": (0..RESIDENCE_BUCKETS).map(residence_bound).collect::<Vec<_>>(),
            "residence": s.residence, "residence_ns": s.residence_ns,
            "residence_p50_upper_s": p50.filter(|v| v.is_finite()),
            "residence_p99_upper_s": p99.filter(|v| v.is_finite()),
            "rates": { "interval_s": seconds,
                "accepted_per_s": rate(s.accepted, before.accepted),
                "delivered_per_s": rate(s.delivered, before.delivered),
                "nacked_per_s": rate(nacked(s), nacked(&before)),
                "bytes_in_per_s": rate(s.bytes_in, before.bytes_in),
                "bytes_out_per_s": rate(s.bytes_out, before.bytes_out) },
        }));
    }
    let mut text = format!("{}, up {}\n", last.gateway, duration(last.uptime_ms / 1000));
    text.push_str(&table(
        &[
            "SHARD",
            "CONNS",
            "ACCEPTED",
            "DELIVERED",
            "NACKED",
            "DISCARDED",
            "QUEUED-B",
            "ACCEPTED/S",
            "DELIVERED/S",
            "IN-MB/S",
            "P50",
            "P99",
        ],
        &rows,
    ));
    let mut reasons: Vec<(String, u64)> = Vec::new();
    for n in last.shards.iter().flat_map(|s| &s.nacked) {
        let name = n.reason().as_str_name().to_owned();
        match reasons.iter_mut().find(|(r, _)| *r == name) {
            Some((_, c)) => *c += n.count,
            None => reasons.push((name, n.count)),
        }
    }
    if !reasons.is_empty() {
        let list: Vec<String> = reasons.iter().map(|(r, c)| format!("{r} {c}")).collect();
        text.push_str(&format!("NACKs by reason: {}\n", list.join(", ")));
    }
    if let Some(t) = &last.translation {
        let pairs: Vec<String> = t
            .translated
            .iter()
            .map(|c| format!("{}->{} by {} {}", c.from, c.to, c.engine, c.count))
            .collect();
        text.push_str(&format!(
            "Translation: {} translated ({}), {} unchanged, {} failed; cache hits {}, engine calls {}; engine p50 {} us p99 {} us; added p50 {} us p99 {} us p99.9 {} us; formats converted {}, refused {}\n",
            t.translated.iter().map(|c| c.count).sum::<u64>(),
            if pairs.is_empty() { "none".to_owned() } else { pairs.join(", ") },
            t.unchanged,
            t.failed,
            t.cache_hits,
            t.engine_calls,
            t.engine_p50_us,
            t.engine_p99_us,
            t.added_p50_us,
            t.added_p99_us,
            t.added_p999_us,
            t.converted,
            t.conversion_failed,
        ));
    }
    if seconds == 0.0 {
        text.push_str("(rates need --interval above 0)\n");
    }
    let translation = last.translation.as_ref().map(|t| {
        json!({
            "translated": t.translated.iter().map(|c| json!({
                "from": c.from, "to": c.to, "engine": c.engine, "count": c.count,
            })).collect::<Vec<_>>(),
            "unchanged": t.unchanged, "failed": t.failed, "cache_hits": t.cache_hits,
            "engine_calls": t.engine_calls, "engine_p50_us": t.engine_p50_us,
            "engine_p99_us": t.engine_p99_us, "added_p50_us": t.added_p50_us,
            "added_p99_us": t.added_p99_us, "added_p999_us": t.added_p999_us,
            "converted": t.converted, "conversion_failed": t.conversion_failed,
        })
    });
    let json = json!({
        "gateway": last.gateway, "uptime_ms": last.uptime_ms, "shards": shards_json,
        "translation": translation,
    });
    Ok(Printed { text, json })
}

fn hex_serial(serial: &[u8]) -> String {
    hex::encode(serial)
}

fn cert(client: &mut Client, command: &CertCmd) -> Result<Printed, String> {
    match command {
        CertCmd::Pending { all } => {
            let Reply::Applications(list) =
                client.ask(Command::ListApplications(pb::ListApplications {
                    all: *all,
                }))?
            else {
                return Err("unexpected answer".into());
            };
            let (lines, json): (Vec<String>, Vec<serde_json::Value>) =
                list.applications.iter().map(application_view).unzip();
            let text = if lines.is_empty() {
                "no applications waiting\n".to_owned()
            } else {
                lines.concat()
            };
            Ok(Printed {
                text,
                json: json!({ "applications": json }),
            })
        }
        CertCmd::Approve { id } | CertCmd::Deny { id } => {
            let approve = matches!(command, CertCmd::Approve { .. });
            let Reply::Applications(list) =
                client.ask(Command::DecideApplication(pb::DecideApplication {
                    id: *id,
                    approve,
                }))?
            else {
                return Err("unexpected answer".into());
            };
            let decided = list
                .applications
                .first()
                .ok_or("no application in the answer")?;
            let (line, json) = application_view(decided);
            Ok(Printed {
                text: format!("{line}the agent hears it when it applies again with the same key\n"),
                json,
            })
        }
        CertCmd::Issue { gateway, csr, out } => {
            let bytes = std::fs::read(csr).map_err(|e| format!("{}: {e}", csr.display()))?;
            let der = match pem::parse(&bytes) {
                Ok(p) if p.tag() == "CERTIFICATE REQUEST" => p.into_contents(),
                Ok(p) => {
                    return Err(format!(
                        "{}: a {} block, not a CERTIFICATE REQUEST",
                        csr.display(),
                        p.tag()
                    ));
                }
                Err(_) => bytes,
            };
            let Reply::Certificate(c) = client.ask(Command::IssueGatewayCertificate(
                pb::IssueGatewayCertificate {
                    gateway: gateway.clone(),
                    csr: der.into(),
                },
            ))?
            else {
                return Err("unexpected answer".into());
            };
            let chain_pem: String = c
                .certificate_chain
                .iter()
                .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
                .collect();
            let serial = hex_serial(&c.serial);
            let text = match out {
                Some(path) => {
                    write_file(path, chain_pem.as_bytes())?;
                    format!(
                        "issued {gateway}, serial {serial}; chain written to {}\n",
                        path.display()
                    )
                }
                None => format!("# issued {gateway}, serial {serial}\n{chain_pem}"),
            };
            let json = json!({ "gateway": gateway, "serial": serial, "chain_pem": chain_pem });
            Ok(Printed { text, json })
        }
        CertCmd::Revoke { serial, reason } => {
            let cleaned: String = serial.chars().filter(|c| *c != ':').collect();
            let bytes =
                hex::decode(&cleaned).map_err(|e| format!("serial {serial}: not hex ({e})"))?;
            let Reply::Revoked(reply) =
                client.ask(Command::RevokeCertificate(pb::RevokeCertificate {
                    serial: bytes.clone().into(),
                    reason: reason.wire() as i32,
                }))?
            else {
                return Err("unexpected answer".into());
            };
            let serial = hex_serial(&bytes);
            let also: Vec<String> = reply.also_revoked.iter().map(|s| hex_serial(s)).collect();
            let mut text = format!(
                "revoked {serial}; the next CRL lists it and its live sessions are closed\n"
            );
            if !also.is_empty() {
                text.push_str(&format!(
                    "also revoked, as certificates of the same compromised key: {}\n",
                    also.join(", ")
                ));
            }
            Ok(Printed {
                text,
                json: json!({
                    "revoked": serial,
                    "reason": reason.wire().as_str_name(),
                    "also_revoked": also,
                }),
            })
        }
        CertCmd::Crl { out } => {
            let Reply::Crl(crl) = client.ask(Command::GetCrl(pb::GetCrl {}))? else {
                return Err("unexpected answer".into());
            };
            let serials: Vec<String> = agw_aca::revoked_serials(&crl.crl)
                .map_err(|e| format!("the CRL does not parse: {e}"))?
                .iter()
                .map(|s| hex_serial(s))
                .collect();
            let pem_text = pem::encode(&pem::Pem::new("X509 CRL", crl.crl.clone()));
            let mut text = format!("CRL number {}, {} revoked\n", crl.crl_number, serials.len());
            for s in &serials {
                text.push_str(&format!("  {s}\n"));
            }
            if let Some(path) = out {
                write_file(path, pem_text.as_bytes())?;
                text.push_str(&format!("written to {}\n", path.display()));
            }
            let json = json!({ "crl_number": crl.crl_number, "revoked": serials, "pem": pem_text });
            Ok(Printed { text, json })
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn drain(
    client: &mut Client,
    deadline: u32,
    no_wait: bool,
    output: Output,
) -> Result<Printed, String> {
    let deadline_ms = deadline.saturating_mul(1000);
    let Reply::DrainStarted(started) = client.ask(Command::Drain(pb::Drain { deadline_ms }))?
    else {
        return Err("unexpected answer".into());
    };
    let began = Instant::now();
    let mut stopped = false;
    if !no_wait {
        // The gateway exits when the drain is done; its socket goes with it.
        if output == Output::Text {
            eprintln!(
                "agwctl: draining (deadline {} s); waiting for the gateway to exit",
                started.deadline_ms / 1000
            );
        }
        let give_up =
            Duration::from_millis(u64::from(started.deadline_ms)) + Duration::from_secs(30);
        while began.elapsed() < give_up {
            if UnixStream::connect(&client.socket).is_err() {
                stopped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if !stopped {
            return Err(format!(
                "the gateway still runs {} s after the drain began",
                began.elapsed().as_secs()
            ));
        }
    }
    let text = if stopped {
        format!(
            "drained; the gateway exited after {:.1} s\n",
            began.elapsed().as_secs_f64()
        )
    } else {
        format!(
            "drain started (deadline {} s)\n",
            started.deadline_ms / 1000
        )
    };
    let json = json!({
        "deadline_ms": started.deadline_ms,
        "stopped": stopped,
        "waited_ms": began.elapsed().as_millis() as u64,
    });
    Ok(Printed { text, json })
}

fn maintenance(client: &mut Client, mode: MaintenanceMode) -> Result<Printed, String> {
    let status = match mode {
        MaintenanceMode::On => pb::Status::TemporarilyOffline,
        MaintenanceMode::Off => pb::Status::Running,
        MaintenanceMode::Status => pb::Status::Unspecified,
    };
    let Reply::GatewayStatus(s) = client.ask(Command::Maintenance(pb::Maintenance {
        status: status as i32,
    }))?
    else {
        return Err("unexpected answer".into());
    };
    let now = s.status();
    let text = match now {
        pb::Status::TemporarilyOffline => {
            "gateway status TEMPORARILY_OFFLINE: in maintenance; peers route around it\n"
        }
        _ => "gateway status RUNNING\n",
    };
    Ok(Printed {
        text: text.into(),
        json: json!({ "status": now.as_str_name(), "maintenance": now == pb::Status::TemporarilyOffline }),
    })
}

fn reload(client: &mut Client) -> Result<Printed, String> {
    let Reply::Reloaded(r) = client.ask(Command::Reload(pb::Reload {}))? else {
        return Err("unexpected answer".into());
    };
    let mut text = String::new();
    if r.applied.is_empty() && r.needs_restart.is_empty() {
        text.push_str("reloaded: nothing changed\n");
    }
    for a in &r.applied {
        text.push_str(&format!("applied: {a}\n"));
    }
    for n in &r.needs_restart {
        text.push_str(&format!("needs a restart: {n}\n"));
    }
    let json = json!({ "applied": r.applied, "needs_restart": r.needs_restart });
    Ok(Printed { text, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_name_the_bucket_bound() {
        let mut buckets = vec![0u64; RESIDENCE_BUCKETS + 1];
        buckets[3] = 90; // under 8 us
        buckets[10] = 9; // under 1,024 us
        buckets[RESIDENCE_BUCKETS] = 1;
        assert_eq!(quantile(&buckets, 0.5), Some(residence_bound(3)));
        assert_eq!(quantile(&buckets, 0.99), Some(residence_bound(10)));
        assert_eq!(quantile(&buckets, 1.0), Some(f64::INFINITY));
        assert_eq!(quantile(&[0; 4], 0.5), None);
    }

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
