//! `agw-agent`: an agent from a shell. Enrolls with the domain's authority (the gateway's ACA
//! port) using the organisation's enrollment token, renews before expiry, shows what is held,
//! registers the agent's profile with the registry (an A2A server agent with its URL, which
//! its gateway then calls), discovers, sends and listens, talks in sessions (`chat`), runs
//! tasks and shows their status ([`conversation`]). The key and the chain live in a directory:
//! `key.pem` (0600) and `chain.pem` (the certificate first, then the authority's chain); the
//! sessions and tasks in `sessions.redb` beside them. It speaks TLS to the
//! authority, checking the gateway against the domain's trust anchor (`--ca` to enroll; to
//! renew, the last certificate of the held chain).

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agw_proto::{Message, identity::AgentId, pb};
use agw_sdk::{
    agent::{AgentConnection, AgentError, Credentials, Incoming},
    certificates::{AgentKey, CertificateRequests, HeldCertificate},
    connection::{Connection, TlsConnection},
};
use bytes::Bytes;
use clap::{Parser, Subcommand};

mod conversation;

/// An agent from a shell: enroll with the domain's authority, renew, show; register its
/// profile (an A2A server agent with its URL), discover, deregister; send, listen, chat in a
/// session; run a task and show its status. Files live in a directory (--dir): key.pem (the
/// private key, 0600, never sent), chain.pem (the certificate, then its authority's chain) and
/// sessions.redb (its sessions and tasks).
#[derive(Debug, Parser)]
#[command(name = "agw-agent", version)]
struct Args {
    /// Where the agent's key and certificate are kept.
    #[arg(long, default_value = "agent")]
    dir: PathBuf,
    /// Print one JSON document instead of lines for people.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Generates a key and applies for a certificate (draft 3.1.1) with the organisation's
    /// enrollment token; writes key.pem and chain.pem. Refuses to replace a key already there.
    Enroll {
        /// The authority's ACA port (the gateway's --aca-listen).
        #[arg(long, default_value = "127.0.0.1:7401")]
        aca: String,
        /// The identity applied for: spiffe://<domain>/agent/<name>.
        #[arg(long)]
        agent: String,
        /// The domain's trust anchor (PEM, as its operator publishes it): the authority's port
        /// is reached over TLS and must prove a gateway of the domain. Without it, plain TCP
        /// (the token readable on the way), where the authority allows it.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The organisation applying (on the authority's allow-list).
        #[arg(long)]
        organization: String,
        /// A file holding the organisation's enrollment token (as its operator handed it out).
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// The enrollment token itself (visible to other users in the process list: prefer
        /// --token-file).
        #[arg(long)]
        token: Option<String>,
        /// A permission scope asked for (granted only if the organisation may have it).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A skill of the agent.
        #[arg(long = "skill")]
        skills: Vec<String>,
        /// Who develops the agent.
        #[arg(long, default_value = "")]
        developer: String,
        /// What kind of function it performs (e.g. booking).
        #[arg(long, default_value = "")]
        function_type: String,
    },
    /// Renews the held certificate (draft 3.1.2), proving its key; with --new-key, for a new
    /// key. The files are replaced only once the new certificate is in hand.
    Renew {
        /// The authority's ACA port.
        #[arg(long, default_value = "127.0.0.1:7401")]
        aca: String,
        /// Certify a new key instead of the held one.
        #[arg(long)]
        new_key: bool,
    },
    /// Shows the held certificate: identity, serial, validity, when to renew.
    Show,
    /// Registers the agent's profile with its domain's registry (draft 3.2.1), over mutual
    /// TLS with the held certificate; prints the profile stored, with its resource ID. An
    /// agent that is an A2A server (any a2a-sdk server) gives its URL: its gateway calls it
    /// there as an A2A client, and the agent never connects to the gateway itself.
    Register {
        /// The registry's port (the gateway's --registry-listen).
        #[arg(long, default_value = "127.0.0.1:7403")]
        registry: String,
        /// A capability it offers, e.g. "hotel booking" (at least one; repeat for more).
        #[arg(long = "capability", required = true)]
        capabilities: Vec<String>,
        /// What it does, in a sentence.
        #[arg(long, default_value = "")]
        description: String,
        /// A language it speaks (BCP 47, e.g. en); repeat for more.
        #[arg(long = "language")]
        languages: Vec<String>,
        /// A natural-language string field of the JSON it receives, as a JSON pointer (e.g.
        /// /note), which its gateway translates into its language; repeat for more.
        #[arg(long = "text-field")]
        text_fields: Vec<String>,
        /// A media type of structured payloads it accepts (application/json,
        /// application/x-protobuf), in order of preference; its gateway converts JSON and
        /// protobuf into it; repeat for more.
        #[arg(long = "accept")]
        accepts: Vec<String>,
        /// Its protobuf schema: a descriptor set file (`protoc --descriptor_set_out`).
        #[arg(long)]
        descriptor_set: Option<PathBuf>,
        /// The message it takes as a protobuf payload, in the descriptor set (e.g.
        /// travel.v1.Booking).
        #[arg(long)]
        message_type: Option<String>,
        /// Its A2A endpoint, http[s]://host[:port][/path] (the JSON-RPC binding); over https
        /// the server presents this agent's certificate.
        #[arg(long)]
        a2a_url: Option<String>,
        /// Where it is reached, as discovery shows it (e.g. its gateway's agent port)
        /// [default: the A2A URL; one of the two is needed].
        #[arg(long)]
        address: Option<String>,
    },
    /// Finds agents by capability through the registry (draft 3.2.3), in this domain and
    /// those the gateway peers with; prints one line (or JSON document) per agent.
    Discover {
        /// The registry's port.
        #[arg(long, default_value = "127.0.0.1:7403")]
        registry: String,
        /// A capability they must all have (repeat for more; "book*" matches by prefix).
        #[arg(long = "capability", required = true)]
        capabilities: Vec<String>,
        /// A language any of them speaks (repeat for more).
        #[arg(long = "language")]
        languages: Vec<String>,
        /// Only agents running now.
        #[arg(long)]
        online: bool,
        /// At most this many.
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// Sends one message to an agent through the gateway (mutual TLS, the signed challenge)
    /// and waits for its acknowledgement, or the NACK and its reason; with --wait-reply, for
    /// its reply too.
    Send {
        /// The gateway's agent port.
        #[arg(long, default_value = "127.0.0.1:7400")]
        gateway: String,
        /// The destination, spiffe://<domain>/agent/<name>.
        #[arg(long)]
        to: String,
        /// What to say.
        #[arg(long)]
        text: String,
        /// Its media type.
        #[arg(long, default_value = "text/plain")]
        content_type: String,
        /// The conversation it belongs to.
        #[arg(long, default_value_t = 0)]
        session: u64,
        /// Seconds to wait for a reply after the ACK (0: none).
        #[arg(long, default_value_t = 0)]
        wait_reply_s: u64,
    },
    /// Connects to the gateway and prints each message that comes for the agent (one JSON
    /// line each with --json), acknowledging it, until --count messages came or it is
    /// interrupted.
    Listen {
        /// The gateway's agent port.
        #[arg(long, default_value = "127.0.0.1:7400")]
        gateway: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Talks with an agent in a session (docs/agents.md): each line typed is sent, each
    /// message that comes is printed with its sequence; a line answers the peer's last
    /// message if it is unanswered. Kept in <dir>/sessions.redb: what is not delivered when
    /// the input ends is sent again the next time. Ends when the input ends (Ctrl-D).
    Chat {
        #[command(flatten)]
        ports: conversation::Ports,
        /// Start a session with this agent, spiffe://<domain>/agent/<name>.
        #[arg(long, conflicts_with = "session")]
        to: Option<String>,
        /// Go on with this session (its ID as `session list` prints it).
        #[arg(long)]
        session: Option<String>,
    },
    /// The sessions in the agent's store (<dir>/sessions.redb), and their histories.
    Session {
        #[command(subcommand)]
        action: SessionAction,
    },
    /// Tasks (draft 2.4): run a plan with this agent as the requester, or show their status.
    Task {
        #[command(subcommand)]
        action: TaskAction,
    },
    /// Removes the agent's profile from the registry (draft 3.2.2); its certificate is
    /// revoked with it, as the draft says.
    Deregister {
        /// The registry's port.
        #[arg(long, default_value = "127.0.0.1:7403")]
        registry: String,
        /// The resource ID registration gave.
        #[arg(long)]
        resource_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum SessionAction {
    /// Every session: ID, peer, messages.
    List,
    /// One session's messages in order, each with its sequence, what it answers and whether
    /// it was delivered; and the peer's context.
    Show {
        /// The session's ID.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TaskAction {
    /// Runs a plan (a JSON file: {"task_id", "context", "subtasks": [{"id", "capability",
    /// "input", "after": [...]}]}): agents found by capability, progress printed as it
    /// happens, an agent's question answered by the next line typed. Fails unless the task
    /// completes.
    Run {
        #[command(flatten)]
        ports: conversation::Ports,
        /// The plan.
        #[arg(long)]
        plan: PathBuf,
        /// Seconds of silence from an agent before its subtask moves to another.
        #[arg(long, default_value_t = 30)]
        silence_s: u64,
    },
    /// The status of the tasks this agent requested, as its store kept it (one, or all).
    Status {
        /// The task's ID.
        id: Option<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Command::Enroll {
            aca,
            agent,
            ca,
            organization,
            token_file,
            token,
            scopes,
            skills,
            developer,
            function_type,
        } => token_of(token_file.as_deref(), token.as_deref()).and_then(|token| {
            let materials = pb::IdentityMaterials {
                organization: organization.clone(),
                developer: developer.clone(),
                function_type: function_type.clone(),
                permission_scope: scopes.clone(),
                skills: skills.clone(),
                ..Default::default()
            };
            enroll(&args.dir, aca, ca.as_deref(), agent, materials, &token)
        }),
        Command::Renew { aca, new_key } => renew(&args.dir, aca, *new_key),
        Command::Show => held(&args.dir).map(|(held, _)| held),
        Command::Register {
            registry,
            capabilities,
            description,
            languages,
            text_fields,
            accepts,
            descriptor_set,
            message_type,
            a2a_url,
            address,
        } => {
            let descriptor_set = match descriptor_set {
                Some(path) => match std::fs::read(path) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        return finish(Err(format!("{}: {e}", path.display())), args.json);
                    }
                },
                None => Vec::new(),
            };
            let a2a_url = a2a_url.clone().unwrap_or_default();
            let protocols = if a2a_url.is_empty() {
                pb::Protocol::Native
            } else {
                pb::Protocol::A2a
            };
            let Some(address) = address
                .clone()
                .or_else(|| (!a2a_url.is_empty()).then(|| a2a_url.clone()))
            else {
                return finish(
                    Err(
                        "give --address (where the agent is reached, e.g. its gateway's agent \
                         port) or --a2a-url"
                            .into(),
                    ),
                    args.json,
                );
            };
            let profile = pb::AgentProfile {
                description: description.clone(),
                capabilities: capabilities.clone(),
                protocols: vec![protocols as i32],
                languages: languages.clone(),
                text_fields: text_fields.clone(),
                accepts: accepts.clone(),
                descriptor_set: descriptor_set.into(),
                message_type: message_type.clone().unwrap_or_default(),
                address,
                a2a_url,
                ..Default::default()
            };
            return finish(register(&args.dir, registry, profile), args.json);
        }
        Command::Deregister {
            registry,
            resource_id,
        } => return finish(deregister(&args.dir, registry, resource_id), args.json),
        Command::Discover {
            registry,
            capabilities,
            languages,
            online,
            limit,
        } => {
            let request = pb::DiscoverRequest {
                request_id: 1,
                capabilities: capabilities.clone(),
                languages: languages.clone(),
                online_only: *online,
                limit: *limit,
                ..Default::default()
            };
            return finish(discover(&args.dir, registry, request), args.json);
        }
        Command::Send {
            gateway,
            to,
            text,
            content_type,
            session,
            wait_reply_s,
        } => {
            let message = pb::AgentMessage {
                destination: to.clone(),
                session_id: *session,
                content_type: content_type.clone(),
                payload: Bytes::from(text.clone().into_bytes()),
                ..Default::default()
            };
            let wait = Duration::from_secs(*wait_reply_s);
            return finish(send(&args.dir, gateway, message, wait), args.json);
        }
        Command::Chat { ports, to, session } => {
            let done = conversation::chat(
                &args.dir,
                ports,
                to.as_deref(),
                session.as_deref(),
                args.json,
            );
            return done_or_fail(done);
        }
        Command::Session { action } => {
            let done = match action {
                SessionAction::List => conversation::list(&args.dir, args.json),
                SessionAction::Show { id } => conversation::show(&args.dir, id, args.json),
            };
            return done_or_fail(done);
        }
        Command::Task { action } => {
            let done = match action {
                TaskAction::Run {
                    ports,
                    plan,
                    silence_s,
                } => conversation::run_task(
                    &args.dir,
                    ports,
                    plan,
                    Duration::from_secs(*silence_s),
                    args.json,
                ),
                TaskAction::Status { id } => {
                    conversation::task_status(&args.dir, id.as_deref(), args.json)
                }
            };
            return done_or_fail(done);
        }
        Command::Listen { gateway, count } => {
            return done_or_fail(listen(&args.dir, gateway, *count, args.json));
        }
    };
    match result {
        Ok(held) => {
            print(&held, args.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agw-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn done_or_fail(done: Result<(), String>) -> ExitCode {
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agw-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token_of(file: Option<&Path>, token: Option<&str>) -> Result<String, String> {
    match (file, token) {
        (Some(path), _) => fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| format!("{}: {e}", path.display())),
        (None, Some(t)) => Ok(t.to_owned()),
        (None, None) => Err("the organisation's enrollment token is needed: --token-file".into()),
    }
}

fn enroll(
    dir: &Path,
    aca: &str,
    ca: Option<&Path>,
    agent: &str,
    materials: pb::IdentityMaterials,
    token: &str,
) -> Result<HeldCertificate, String> {
    let agent = AgentId::parse(agent).map_err(|e| format!("--agent {agent}: {e}"))?;
    if dir.join("key.pem").exists() {
        return Err(format!(
            "{} holds a key already: renew it, or enroll into another --dir",
            dir.join("key.pem").display()
        ));
    }
    let credentials = match ca {
        Some(ca) => {
            let pem = fs::read_to_string(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let anchor = pem::parse(pem)
                .map_err(|e| format!("{}: {e}", ca.display()))?
                .into_contents();
            let mut conn = connect_tls(aca, &anchor, agent.domain())?;
            Credentials::enroll_with(agent, materials, token, |app| conn.request(app))
        }
        None => {
            let mut conn = Connection::connect(aca, Duration::from_secs(10))
                .map_err(|e| format!("{aca}: {e}"))?;
            Credentials::enroll_with(agent, materials, token, |app| conn.request(app))
        }
    }
    .map_err(|e| format!("enrollment: {e}"))?;
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_private(&dir.join("key.pem"), &credentials.key.to_pem())?;
    write_chain(dir, &credentials.certificate)?;
    Ok(credentials.certificate)
}

fn renew(dir: &Path, aca: &str, new_key: bool) -> Result<HeldCertificate, String> {
    let (held, key) = held(dir)?;
    let identity = identity_of(&held)?;
    let fresh = if new_key {
        Some(AgentKey::generate().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let request = CertificateRequests::default()
        .renewal(&held, &key, fresh.as_ref().unwrap_or(&key), &identity, None)
        .map_err(|e| e.to_string())?;
    let anchor = held.chain.last().ok_or("an empty chain")?;
    let renewed = match connect_tls(aca, anchor, identity.domain())?
        .request(request)
        .map_err(|e| format!("{aca}: {e}"))?
    {
        Message::CertificateReply(reply) => {
            HeldCertificate::from_reply(reply).map_err(|e| format!("renewal: {e}"))?
        }
        other => return Err(format!("{aca} answered {}", other.kind().name())),
    };
    // The new key first: a chain without its key would be useless, a key without its new
    // chain is renewed again.
    if let Some(fresh) = fresh {
        write_private(&dir.join("key.pem"), &fresh.to_pem())?;
    }
    write_chain(dir, &renewed)?;
    Ok(renewed)
}

/// Prints what the registry answered (a JSON document with --json), or the error.
fn finish(result: Result<serde_json::Value, String>, json: bool) -> ExitCode {
    match result {
        Ok(doc) => {
            let mut out = std::io::stdout();
            if json {
                let _ = writeln!(out, "{doc}");
            } else if let Some(fields) = doc.as_object() {
                for (k, v) in fields {
                    let _ = writeln!(
                        out,
                        "{k:<12} {}",
                        v.as_str().map_or(v.to_string(), str::to_owned)
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agw-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The registry's port over mutual TLS with the held certificate; the server must be a
/// gateway of the agent's domain.
fn connect_registry(
    dir: &Path,
    registry: &str,
) -> Result<(TlsConnection, HeldCertificate), String> {
    let creds = credentials(dir)?;
    let mut config = (*creds.tls_config().map_err(|e| format!("TLS: {e}"))?).clone();
    config.alpn_protocols.clear();
    let conn = Connection::connect_tls(registry, Duration::from_secs(10), Arc::new(config))
        .map_err(|e| format!("{registry}: {e}"))?;
    Ok((conn, creds.certificate.clone()))
}

fn register(
    dir: &Path,
    registry: &str,
    mut profile: pb::AgentProfile,
) -> Result<serde_json::Value, String> {
    let (mut conn, held) = connect_registry(dir, registry)?;
    profile.agent = identity_of(&held)?.to_string();
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(profile),
        certificate_chain: held.chain.clone(),
    };
    match conn
        .request(request)
        .map_err(|e| format!("{registry}: {e}"))?
    {
        Message::RegisterReply(reply) => match (reply.error, reply.profile) {
            (Some(e), _) => Err(format!(
                "refused {}: {}",
                e.error_code().as_str_name(),
                e.detail
            )),
            (None, Some(p)) => Ok(serde_json::json!({
                "resource_id": p.resource_id,
                "agent": p.agent,
                "capabilities": p.capabilities,
                "languages": p.languages,
                "text_fields": p.text_fields,
                "accepts": p.accepts,
                "message_type": p.message_type,
                "a2a_url": p.a2a_url,
                "version": p.version,
            })),
            (None, None) => Err(format!("{registry} answered without the profile")),
        },
        other => Err(format!("{registry} answered {}", other.kind().name())),
    }
}

fn deregister(dir: &Path, registry: &str, resource_id: &str) -> Result<serde_json::Value, String> {
    let (mut conn, held) = connect_registry(dir, registry)?;
    let request = pb::DeregisterAgentRequest {
        request_id: 1,
        resource_id: resource_id.to_owned(),
    };
    match conn
        .request(request)
        .map_err(|e| format!("{registry}: {e}"))?
    {
        Message::DeregisterAgentReply(reply) => match reply.error {
            Some(e) => Err(format!(
                "refused {}: {}",
                e.error_code().as_str_name(),
                e.detail
            )),
            None => Ok(serde_json::json!({
                "deregistered": resource_id,
                "agent": identity_of(&held)?.to_string(),
            })),
        },
        other => Err(format!("{registry} answered {}", other.kind().name())),
    }
}

fn discover(
    dir: &Path,
    registry: &str,
    request: pb::DiscoverRequest,
) -> Result<serde_json::Value, String> {
    let (mut conn, _) = connect_registry(dir, registry)?;
    match conn
        .request(request)
        .map_err(|e| format!("{registry}: {e}"))?
    {
        Message::DiscoverReply(reply) => match reply.error {
            Some(e) => Err(format!(
                "refused {}: {}",
                e.error_code().as_str_name(),
                e.detail
            )),
            None => {
                let agents: Vec<serde_json::Value> = reply
                    .agents
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "agent": p.agent,
                            "capabilities": p.capabilities,
                            "languages": p.languages,
                            "status": p.status().as_str_name(),
                            "gateway": p.gateway,
                        })
                    })
                    .collect();
                Ok(serde_json::json!({ "found": agents.len(), "agents": agents }))
            }
        },
        other => Err(format!("{registry} answered {}", other.kind().name())),
    }
}

/// The held certificate and key as the SDK's credentials.
fn credentials(dir: &Path) -> Result<Arc<Credentials>, String> {
    let (held, key) = held(dir)?;
    let agent = identity_of(&held)?;
    Ok(Arc::new(Credentials {
        agent,
        certificate: held,
        key,
    }))
}

fn send(
    dir: &Path,
    gateway: &str,
    mut message: pb::AgentMessage,
    wait_reply: Duration,
) -> Result<serde_json::Value, String> {
    let creds = credentials(dir)?;
    let conn = AgentConnection::connect(gateway, creds.clone(), Duration::from_secs(10))
        .map_err(|e| format!("{gateway}: {e}"))?;
    let id = 1;
    message.source = creds.agent.to_string();
    message.message_id = id;
    let (mut writer, mut reader) = conn.split();
    writer
        .queue_raw(&message, agw_proto::DEFAULT_HOP_LIMIT)
        .and_then(|()| writer.flush())
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10) + wait_reply;
    let mut acked = false;
    loop {
        if std::time::Instant::now() > deadline {
            return Err(if acked {
                "acknowledged, but no reply came in time".into()
            } else {
                "no acknowledgement in time".into()
            });
        }
        match reader.recv() {
            Ok(Incoming::Ack(a)) if a.message_id == id => {
                acked = true;
                if wait_reply.is_zero() {
                    return Ok(serde_json::json!({ "acknowledged": message.destination }));
                }
            }
            Ok(Incoming::Nack(n)) if n.message_id == id => {
                return Err(format!(
                    "refused {}: {} (reported by {})",
                    n.reason().as_str_name(),
                    n.detail,
                    n.reporter
                ));
            }
            Ok(Incoming::Message(m, _)) if acked && m.source == message.destination => {
                let _ = writer.ack(&m).and_then(|()| writer.flush());
                return Ok(serde_json::json!({
                    "acknowledged": message.destination,
                    "reply": String::from_utf8_lossy(&m.payload),
                    "content_type": m.content_type,
                    "session": m.session_id,
                }));
            }
            Ok(_) | Err(AgentError::Io(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn listen(dir: &Path, gateway: &str, count: Option<usize>, json: bool) -> Result<(), String> {
    let creds = credentials(dir)?;
    let conn = AgentConnection::connect(gateway, creds, Duration::from_secs(10))
        .map_err(|e| format!("{gateway}: {e}"))?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening at {gateway}");
    let _ = out.flush();
    let (mut writer, mut reader) = conn.split();
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        match reader.recv() {
            Ok(Incoming::Message(m, _)) => {
                writer
                    .ack(&m)
                    .and_then(|()| writer.flush())
                    .map_err(|e| e.to_string())?;
                seen += 1;
                let text = String::from_utf8_lossy(&m.payload);
                if json {
                    let doc = serde_json::json!({
                        "from": m.source,
                        "text": text,
                        "content_type": m.content_type,
                        "session": m.session_id,
                    });
                    let _ = writeln!(out, "{doc}");
                } else {
                    let _ = writeln!(out, "{}: {text}", m.source);
                }
                let _ = out.flush();
            }
            Ok(_) | Err(AgentError::Io(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// The authority's port over TLS: the server must be a gateway of `domain` under `anchor`.
fn connect_tls(aca: &str, anchor: &[u8], domain: &str) -> Result<TlsConnection, String> {
    let config =
        agw_tls::applicant_client_config(anchor, domain).map_err(|e| format!("TLS: {e}"))?;
    Connection::connect_tls(aca, Duration::from_secs(10), Arc::new(config))
        .map_err(|e| format!("{aca}: {e}"))
}

/// The certificate and key kept in `dir`.
fn held(dir: &Path) -> Result<(HeldCertificate, AgentKey), String> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let chain = pem::parse_many(read("chain.pem")?)
        .map_err(|e| format!("chain.pem: {e}"))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| Bytes::from(p.into_contents()))
        .collect();
    let held = HeldCertificate::from_chain(chain).map_err(|e| format!("chain.pem: {e}"))?;
    let key = AgentKey::from_pem(&read("key.pem")?).map_err(|e| format!("key.pem: {e}"))?;
    Ok((held, key))
}

fn identity_of(held: &HeldCertificate) -> Result<AgentId, String> {
    let certs = [rustls::pki_types::CertificateDer::from(held.der())];
    let uri = agw_tls::peer_identity(&certs).ok_or("the certificate names no identity")?;
    AgentId::parse(&uri).map_err(|e| format!("{uri}: {e}"))
}

/// Writes `text` to `path` readable by its owner only, replacing it whole.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let partial = path.with_extension("new");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| format!("{}: {e}", partial.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&partial, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_chain(dir: &Path, held: &HeldCertificate) -> Result<(), String> {
    let text: String = held
        .chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    write_private(&dir.join("chain.pem"), &text)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn print(held: &HeldCertificate, json: bool) {
    let identity = identity_of(held).map(|a| a.to_string()).unwrap_or_default();
    let serial: String = held.serial.iter().map(|b| format!("{b:02x}")).collect();
    let left = held
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    // What the authority checked and wrote into the certificate (absent from older ones).
    let materials = held
        .chain
        .first()
        .and_then(|leaf| agw_tls::materials::materials_of(leaf).ok().flatten());
    let mut out = std::io::stdout();
    if json {
        let doc = serde_json::json!({
            "identity": identity,
            "serial": serial,
            "not_before_unix_s": unix(held.not_before),
            "not_after_unix_s": unix(held.not_after),
            "renew_at_unix_s": unix(held.renew_at()),
            "chain_length": held.chain.len(),
            "materials": materials.as_ref().map(|m| serde_json::json!({
                "organization": m.organization,
                "developer": m.developer,
                "function_type": m.function_type,
                "qualification_ref": m.qualification_ref,
                "skills": m.skills,
                "permission_scopes": m.permission_scope,
            })),
        });
        let _ = writeln!(out, "{doc}");
        return;
    }
    let _ = writeln!(out, "identity   {identity}");
    let _ = writeln!(out, "serial     {serial}");
    let _ = writeln!(
        out,
        "valid      {} to {} (unix s), {:.1} days left",
        unix(held.not_before),
        unix(held.not_after),
        left.as_secs_f64() / 86_400.0
    );
    let _ = writeln!(out, "renew at   {} (unix s)", unix(held.renew_at()));
    if let Some(m) = materials {
        let _ = writeln!(out, "organisation {}", m.organization);
        let _ = writeln!(out, "developer  {}", m.developer);
        let _ = writeln!(out, "function   {}", m.function_type);
        let _ = writeln!(out, "skills     {}", m.skills.join(", "));
        let _ = writeln!(out, "scopes     {}", m.permission_scope.join(", "));
    }
}
