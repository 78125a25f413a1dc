//! The operators' administrative API; `agwctl` is its client.
//!
//! [`pb::AdminRequest`]s, framed like every other message, over a Unix socket in the data
//! directory (`admin.sock`, mode 0600). Each request carries the token kept beside it
//! (`admin.token`, mode 0600, made at the first start): whoever can read the data directory
//! administers the gateway, nobody else. A wrong token is answered `ADMIN_UNAUTHENTICATED`.
//!
//! The socket's threads only authenticate and carry requests: the daemon's main thread, which
//! owns the [`Node`], answers them ([`answer`]), so nothing here shares the node's state.

use std::{
    io,
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agw_dataplane::{CounterSnapshot, NACK_REASONS, routing::Route};
use agw_proto::{
    Message,
    identity::GatewayId,
    pb::{self, ErrorCode, admin_reply::Result as Reply, admin_request::Command},
};
use agw_rpc::{Endpoint, Handler, ServerLimits};
use crossbeam_channel::{Receiver, Sender};
use ring::{
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};

use crate::node::Node;

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// The token's file name in the data directory.
pub const TOKEN_FILE: &str = "admin.token";
/// Routes or agents listed when the request names no limit.
pub const DEFAULT_LIMIT: usize = 1_000;
/// Most routes or agents one reply lists (it stays well under the reply's size cap).
pub const MAX_LIMIT: usize = 10_000;
/// How long a request waits for the main thread (busy only while draining).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// An authenticated request, for the main thread to answer on `reply`.
#[derive(Debug)]
pub struct Asked {
    /// The request.
    pub request: pb::AdminRequest,
    /// Where the answer goes.
    pub reply: Sender<pb::AdminReply>,
}

/// The listening socket; removed when dropped.
pub struct AdminSocket {
    path: PathBuf,
    /// Bound, and answering once [`AdminSocket::serve`] runs it.
    pending: Option<(UnixListener, Arc<Handler>)>,
    endpoint: Option<Endpoint>,
}

impl std::fmt::Debug for AdminSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSocket")
            .field("path", &self.path)
            .field("serving", &self.endpoint.is_some())
            .finish()
    }
}

/// What the admin socket takes: operators' requests, each within 64 KiB.
const REQUESTS: agw_proto::Admission =
    agw_proto::Admission::only(&[agw_proto::Kind::AdminRequest], 64 * 1024);

impl AdminSocket {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts answering on `runtime` (the node's).
    pub fn serve(&mut self, runtime: &tokio::runtime::Handle) -> Result<(), String> {
        let Some((listener, handler)) = self.pending.take() else {
            return Ok(());
        };
        let limits = ServerLimits {
            max_connections: 16,
            admission: REQUESTS,
            // An operator's request can wait for a drain to start.
            request_timeout: ANSWER_TIMEOUT,
            ..ServerLimits::default()
        };
        let endpoint = Endpoint::unix(runtime, listener, handler, limits)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.endpoint = Some(endpoint);
        Ok(())
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads the token in `data_dir`, making one (32 random bytes, hex) if there is none.
pub fn token(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join(TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(text.trim().to_owned());
    }
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness for the admin token".to_string())?;
    let token = hex::encode(bytes);
    write_private(&path, token.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(token)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Listens on `data_dir/admin.sock`; authenticated requests come out of the receiver.
/// Refuses to start beside another daemon using the same data directory.
pub fn listen(data_dir: &Path) -> Result<(AdminSocket, Receiver<Asked>), String> {
    let token = token(data_dir)?;
    let path = data_dir.join(SOCKET_FILE);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "{}: another agw is running with this data directory",
            path.display()
        ));
    }
    // A socket file left by a daemon that died.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let expected = digest(&SHA256, token.as_bytes());
    let handler: Arc<Handler> = Arc::new(
        move |message: &Message, _: &agw_rpc::Caller, _: SystemTime| {
            let Message::AdminRequest(request) = message else {
                return None;
            };
            let request_id = request.request_id;
            // Digests compared, so the comparison's timing tells nothing about the token.
            if digest(&SHA256, request.token.as_bytes()).as_ref() != expected.as_ref() {
                return Some(
                    refusal(
                        request_id,
                        ErrorCode::AdminUnauthenticated,
                        "wrong admin token",
                    )
                    .into(),
                );
            }
            let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
            let asked = Asked {
                request: request.clone(),
                reply: reply_tx,
            };
            if tx.send(asked).is_err() {
                return Some(
                    refusal(request_id, ErrorCode::Draining, "the gateway is stopping").into(),
                );
            }
            Some(
                reply_rx
                    .recv_timeout(ANSWER_TIMEOUT)
                    .unwrap_or_else(|_| {
                        refusal(request_id, ErrorCode::Draining, "the gateway is draining")
                    })
                    .into(),
            )
        },
    );
    Ok((
        AdminSocket {
            path,
            pending: Some((listener, handler)),
            endpoint: None,
        },
        rx,
    ))
}

/// A reply refusing request `request_id`.
pub fn refusal(request_id: u64, code: ErrorCode, detail: &str) -> pb::AdminReply {
    pb::AdminReply {
        request_id,
        error: Some(pb::Error {
            code: code as i32,
            detail: detail.to_owned(),
            retry_after_ms: 0,
        }),
        result: None,
    }
}

fn limit(asked: u32) -> usize {
    match asked {
        0 => DEFAULT_LIMIT,
        n => (n as usize).min(MAX_LIMIT),
    }
}

/// Answers the read and certificate commands (the daemon handles drain and reload itself,
/// as they change its course). `started`: when the node started.
pub fn answer(node: &Node, request: &pb::AdminRequest, started: Instant) -> pb::AdminReply {
    let id = request.request_id;
    let result = match &request.command {
        Some(Command::ListPeers(_)) => Ok(Reply::Peers(peers(node))),
        Some(Command::ListRoutes(q)) => routes(node, q),
        Some(Command::ListAgents(q)) => agents(node, q),
        Some(Command::GetStats(_)) => Ok(Reply::Stats(stats(node, started))),
        Some(Command::IssueGatewayCertificate(q)) => issue(node, q),
        Some(Command::RevokeCertificate(q)) => node
            .authority
            .revoke_by_operator(&q.serial, q.reason, SystemTime::now())
            .map(|also| {
                Reply::Revoked(pb::RevocationReply {
                    also_revoked: also.into_iter().map(Into::into).collect(),
                    ..Default::default()
                })
            })
            .map_err(|e| e.to_wire()),
        Some(Command::GetCrl(_)) => node
            .authority
            .crl(SystemTime::now())
            .map(|crl| {
                Reply::Crl(pb::CrlReply {
                    crl: crl.der.into(),
                    crl_number: crl.number,
                    ..Default::default()
                })
            })
            .map_err(|e| e.to_wire()),
        Some(Command::Maintenance(q)) => maintenance(node, q.status()),
        Some(Command::ListApplications(q)) => node
            .authority
            .applications(q.all)
            .map(|mut applications| {
                // Oldest first, as many as one reply carries.
                applications.truncate(DEFAULT_LIMIT);
                Reply::Applications(pb::ApplicationList { applications })
            })
            .map_err(|e| e.to_wire()),
        Some(Command::DecideApplication(q)) => node
            .authority
            .decide(q.id, q.approve)
            .map(|decided| {
                Reply::Applications(pb::ApplicationList {
                    applications: vec![decided],
                })
            })
            .map_err(|e| e.to_wire()),
        Some(Command::Drain(_) | Command::Reload(_)) | None => Err(pb::Error {
            code: ErrorCode::InvalidField as i32,
            detail: "no command the daemon answers here".into(),
            retry_after_ms: 0,
        }),
    };
    match result {
        Ok(result) => pb::AdminReply {
            request_id: id,
            error: None,
            result: Some(result),
        },
        Err(error) => pb::AdminReply {
            request_id: id,
            error: Some(error),
            result: None,
        },
    }
}

/// A control-plane refusal as operators get it: its own code, and a retry hint when asking
/// again may help.
fn control_error(e: &crate::control::ControlError) -> pb::Error {
    pb::Error {
        code: e.code() as i32,
        detail: e.to_string(),
        retry_after_ms: if e.retryable() { 1000 } else { 0 },
    }
}

fn wire(code: ErrorCode, detail: impl Into<String>) -> pb::Error {
    pb::Error {
        code: code as i32,
        detail: detail.into(),
        retry_after_ms: 0,
    }
}

fn peers(node: &Node) -> pb::PeerList {
    let configured = node.peers();
    let list = node
        .control()
        .and_then(|c| c.peering())
        .map(|p| p.neighbours())
        .unwrap_or_default();
    pb::PeerList {
        peers: list
            .into_iter()
            .map(|n| {
                let entry = configured.iter().find(|p| p.gateway.as_str() == n.gateway);
                pb::PeerInfo {
                    domain: GatewayId::parse(&n.gateway)
                        .map(|g| g.domain().to_owned())
                        .unwrap_or_default(),
                    session: n.state.wire() as i32,
                    uptime_s: n.uptime.map_or(0, |u| u.as_secs()),
                    summaries_in: n.summaries_in as u64,
                    summaries_out: n.summaries_out as u64,
                    address: entry
                        .and_then(|p| p.address)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    gateway: n.gateway,
                }
            })
            .collect(),
    }
}

fn routes(node: &Node, q: &pb::ListRoutes) -> Result<Reply, pb::Error> {
    let control = node
        .control()
        .ok_or_else(|| wire(ErrorCode::Draining, "the control plane has stopped"))?;
    let agent = (!q.agent.is_empty()).then_some(q.agent.as_str());
    let (views, total) = control
        .routes(agent, limit(q.limit))
        .map_err(|e| control_error(&e))?;
    Ok(Reply::Routes(pb::RouteList {
        routes: views
            .into_iter()
            .map(|v| pb::RouteInfo {
                agent: v.agent,
                next_hop: v.next_hop.unwrap_or_default(),
                path: v.path,
                status: v.status as i32,
                route: match v.route {
                    Route::Local { .. } => "local",
                    Route::Peer { .. } => "peer",
                    Route::Offline => "offline",
                    Route::Unreachable => "unreachable",
                }
                .into(),
            })
            .collect(),
        total: total as u64,
    }))
}

fn agents(node: &Node, q: &pb::ListAgents) -> Result<Reply, pb::Error> {
    let control = node
        .control()
        .ok_or_else(|| wire(ErrorCode::Draining, "the control plane has stopped"))?;
    let (views, total) = control
        .agents(q.local_only, limit(q.limit))
        .map_err(|e| control_error(&e))?;
    Ok(Reply::Agents(pb::AgentList {
        agents: views
            .into_iter()
            .map(|v| pb::AgentInfo {
                agent: v.agent,
                local: v.local,
                status: v.status as i32,
                gateway: v.gateway,
            })
            .collect(),
        total: total as u64,
    }))
}

/// The relay's counters by shard.
pub fn stats(node: &Node, started: Instant) -> pb::Stats {
    pb::Stats {
        shards: node
            .dataplane
            .counters()
            .iter()
            .enumerate()
            .map(|(i, c)| shard_stats(i, c))
            .collect(),
        gateway: node.gateway.to_string(),
        uptime_ms: started.elapsed().as_millis() as u64,
        translation: Some(node.translation().stats.to_wire()),
    }
}

fn shard_stats(shard: usize, c: &CounterSnapshot) -> pb::ShardStats {
    pb::ShardStats {
        shard: shard as u32,
        accepted: c.accepted,
        delivered: c.delivered,
        nacked: NACK_REASONS
            .iter()
            .zip(c.nacked)
            .filter(|(_, n)| *n > 0)
            .map(|(reason, count)| pb::NackCount {
                reason: *reason as i32,
                count,
            })
            .collect(),
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        connections: c.connections_open,
        discarded: c.discarded,
        queued_bytes: c.queued_bytes,
        connections_accepted: c.connections_accepted,
        agents_accessed: c.agents_accessed,
        residence: c.residence.to_vec(),
        residence_ns: c.residence_ns,
    }
}

fn maintenance(node: &Node, status: pb::Status) -> Result<Reply, pb::Error> {
    let control = node
        .control()
        .ok_or_else(|| wire(ErrorCode::Draining, "the control plane has stopped"))?;
    if status != pb::Status::Unspecified {
        control.set_status(status).map_err(|e| control_error(&e))?;
    }
    Ok(Reply::GatewayStatus(pb::GatewayStatus {
        status: control.status() as i32,
    }))
}

fn issue(node: &Node, q: &pb::IssueGatewayCertificate) -> Result<Reply, pb::Error> {
    let gateway = GatewayId::parse(&q.gateway).map_err(|e| {
        wire(
            ErrorCode::InvalidField,
            format!("gateway {}: {e}", q.gateway),
        )
    })?;
    let issued = node
        .authority
        .issue_gateway(&gateway, &q.csr, SystemTime::now())
        .map_err(|e| e.to_wire())?;
    Ok(Reply::Certificate(pb::CertificateReply {
        certificate_chain: issued.chain.into_iter().map(Into::into).collect(),
        serial: issued.serial.into(),
        ..Default::default()
    }))
}
