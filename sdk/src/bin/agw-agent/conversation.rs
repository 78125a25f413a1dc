//! The agent's side of sessions and tasks from a shell: `chat` (a person takes part in a
//! session: each line typed is a message, each message that comes is printed), `session list`
//! and `session show` (the history kept in the agent's store), `task run` (a plan run with the
//! agent as the requester, progress printed as it happens, agents' questions answered from the
//! keyboard) and `task status` (as the store kept it).
//!
//! The store is `<dir>/sessions.redb`; one command holds it at a time.

use std::{
    io::{BufRead as _, Write as _},
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use agw_proto::{
    identity::AgentId,
    pb::{self, TaskState},
};
use agw_sdk::{
    agent::AccessOptions,
    lifecycle::{self, Agent},
    session::{Event, Outgoing, Sessions, temporary},
    store::{Delivery, Entry, SessionRecord, Store},
    task::{
        Plan, Policy, Subtask, a2a_state,
        orchestrator::{self, Flow, Happening},
    },
};
use bytes::Bytes;

/// How long a chat waits, after its input ends, for what it sent to be delivered.
const LINGER: Duration = Duration::from_secs(5);

/// The agent's session store.
pub(crate) fn store_path(dir: &Path) -> PathBuf {
    dir.join("sessions.redb")
}

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

fn addr(what: &str, text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("{what} {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("{what} {text}: no address"))
}

/// Where the agent's domain serves it, as given on the command line.
#[derive(Debug, clap::Args)]
pub(crate) struct Ports {
    /// The gateway's agent port.
    #[arg(long, default_value = "127.0.0.1:7400")]
    gateway: String,
    /// The registry's port (agents are discovered there).
    #[arg(long, default_value = "127.0.0.1:7403")]
    registry: String,
    /// The authority's port: the certificate is renewed there on its own when due (and
    /// chain.pem replaced).
    #[arg(long, default_value = "127.0.0.1:7401")]
    aca: String,
}

/// The held agent connected to its gateway, with its session store.
fn open(dir: &Path, ports: &Ports) -> Result<Sessions, String> {
    let credentials = super::credentials(dir)?;
    let gateway = addr("--gateway", &ports.gateway)?;
    let domain = lifecycle::Domain {
        gateway,
        registry: addr("--registry", &ports.registry)?,
        aca: addr("--aca", &ports.aca)?,
        other_gateways: Vec::new(),
    };
    let agent = Agent::connect(
        credentials,
        domain,
        AccessOptions::default(),
        Duration::from_secs(10),
    )
    .map_err(|e| format!("{gateway}: {e}"))?;
    Sessions::open(agent, &store_path(dir)).map_err(|e| e.to_string())
}

/// A certificate the agent renewed on its own while the command ran replaces the held one.
fn keep_renewal(dir: &Path, sessions: &Sessions, held_serial: &[u8]) -> Result<(), String> {
    let certificate = &sessions.agent().credentials().certificate;
    if certificate.serial[..] == *held_serial {
        return Ok(());
    }
    super::write_chain(dir, certificate)
}

/// A session ID as printed (16 hex digits).
fn session_id(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|_| format!("--session {text}: not a session ID (16 hex digits)"))
}

fn text_of(content_type: &str, payload: &Bytes) -> String {
    if content_type == agw_sdk::task::TASK_CONTENT_TYPE {
        return match agw_sdk::task::decode(content_type, payload).and_then(|t| t.kind) {
            Some(kind) => format!("(task) {kind:?}"),
            None => "(task message)".into(),
        };
    }
    String::from_utf8_lossy(payload).into_owned()
}

/// Talks with `to` in a new session, or in `session` again: every line of standard input is
/// sent (answering the peer's last message if it is unanswered), every message that comes is
/// printed. Ends when the input ends and what was sent is delivered (or [`LINGER`] passed).
pub(crate) fn chat(
    dir: &Path,
    ports: &Ports,
    to: Option<&str>,
    session: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let mut sessions = open(dir, ports)?;
    let held = sessions.agent().credentials().certificate.serial.clone();
    let talked = talk(&mut sessions, to, session, json);
    keep_renewal(dir, &sessions, &held)?;
    talked
}

fn talk(
    sessions: &mut Sessions,
    to: Option<&str>,
    session: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let id = match (session, to) {
        (Some(s), _) => {
            let id = session_id(s)?;
            sessions.session(id).map_err(|e| e.to_string())?.id
        }
        (None, Some(to)) => {
            let peer = AgentId::parse(to).map_err(|e| format!("--to {to}: {e}"))?;
            sessions.start(&peer, "chat").map_err(|e| e.to_string())?
        }
        (None, None) => return Err("give --to an agent, or --session to go on with one".into()),
    };
    let peer = sessions.session(id).map_err(|e| e.to_string())?.peer;
    if !json {
        say(format!(
            "session {id:016x} with {peer}: each line is sent; end with Ctrl-D"
        ));
    }
    let (lines, typed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut unanswered = 0;
    let mut waiting = 0usize;
    let mut input_ended: Option<Instant> = None;
    loop {
        loop {
            match typed.try_recv() {
                Ok(Ok(line)) => {
                    let message = Outgoing {
                        in_reply_to: std::mem::take(&mut unanswered),
                        ..Outgoing::text(&line)
                    };
                    let sequence = sessions.send(id, message).map_err(|e| e.to_string())?;
                    waiting += 1;
                    if json {
                        say(serde_json::json!({ "sent": sequence, "session": format!("{id:016x}") }).to_string());
                    }
                }
                Ok(Err(e)) => return Err(format!("standard input: {e}")),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    input_ended.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        if input_ended.is_some_and(|t| waiting == 0 || t.elapsed() > LINGER) {
            if waiting > 0 {
                return Err(format!(
                    "{waiting} message(s) not delivered yet: they are sent again the next time"
                ));
            }
            return Ok(());
        }
        match sessions
            .next(Duration::from_millis(100))
            .map_err(|e| e.to_string())?
        {
            Some(Event::Message(m)) => {
                if m.session == Some(id) {
                    unanswered = m.sequence();
                }
                let text = text_of(m.content_type(), m.payload());
                if json {
                    say(serde_json::json!({
                        "from": m.peer(),
                        "session": m.session.map(|s| format!("{s:016x}")),
                        "sequence": m.sequence(),
                        "in_reply_to": m.in_reply_to(),
                        "text": text,
                    })
                    .to_string());
                } else {
                    say(format!("<- {} #{}: {text}", m.peer(), m.sequence()));
                }
            }
            Some(Event::Delivered { session, sequence }) if session == id => {
                waiting = waiting.saturating_sub(1);
                if json {
                    say(serde_json::json!({ "delivered": sequence }).to_string());
                }
            }
            Some(Event::Refused {
                session,
                sequence,
                nack,
            }) if session == id => {
                let again = temporary(nack.reason());
                if !again {
                    waiting = waiting.saturating_sub(1);
                }
                say(format!(
                    "!! #{sequence} refused: {} {}{}",
                    nack.reason().as_str_name(),
                    nack.detail,
                    if again { " (sent again later)" } else { "" }
                ));
            }
            _ => {}
        }
    }
}

fn entry_json(e: &Entry) -> serde_json::Value {
    serde_json::json!({
        "direction": if e.outgoing { "sent" } else { "received" },
        "sequence": e.sequence,
        "in_reply_to": e.in_reply_to,
        "content_type": e.content_type,
        "text": text_of(&e.content_type, &e.payload),
        "at_unix_ms": e.at_unix_ms,
        "delivery": Delivery::try_from(e.delivery).map_or("unknown", Delivery::name),
        "detail": e.detail,
    })
}

fn session_json(s: &SessionRecord) -> serde_json::Value {
    serde_json::json!({
        "session": format!("{:016x}", s.id),
        "peer": s.peer,
        "label": s.label,
        "messages": s.entries,
        "started_unix_ms": s.started_unix_ms,
        "closed": s.closed,
        "peer_context": String::from_utf8_lossy(&s.peer_context),
    })
}

fn read_store(dir: &Path) -> Result<Store, String> {
    let path = store_path(dir);
    if !path.exists() {
        return Err(format!("{}: no sessions yet", path.display()));
    }
    Store::open(&path).map_err(|e| format!("{e} (is the agent running? one command holds it)"))
}

/// The sessions in the store, oldest first.
pub(crate) fn list(dir: &Path, json: bool) -> Result<(), String> {
    let store = read_store(dir)?;
    for s in store.sessions().map_err(|e| e.to_string())? {
        if json {
            say(session_json(&s).to_string());
        } else {
            say(format!(
                "{:016x}  {}  {} messages{}{}",
                s.id,
                s.peer,
                s.entries,
                if s.label.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", s.label)
                },
                if s.closed { "  closed" } else { "" }
            ));
        }
    }
    Ok(())
}

/// One session's history.
pub(crate) fn show(dir: &Path, id: &str, json: bool) -> Result<(), String> {
    let store = read_store(dir)?;
    let id = session_id(id)?;
    let session = store
        .session(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no session {id:016x} in the store"))?;
    let history = store.history(id).map_err(|e| e.to_string())?;
    if json {
        let mut doc = session_json(&session);
        doc["history"] = history.iter().map(entry_json).collect();
        say(doc.to_string());
        return Ok(());
    }
    say(format!("session {id:016x} with {}", session.peer));
    if !session.peer_context.is_empty() {
        say(format!(
            "context    {}",
            String::from_utf8_lossy(&session.peer_context)
        ));
    }
    for e in &history {
        let delivery = Delivery::try_from(e.delivery).map_or("?", Delivery::name);
        let answer = if e.in_reply_to == 0 {
            String::new()
        } else {
            format!(" (re #{})", e.in_reply_to)
        };
        say(format!(
            "{} #{}{answer} [{}] {}",
            if e.outgoing { "->" } else { "<-" },
            e.sequence,
            delivery,
            text_of(&e.content_type, &e.payload)
        ));
    }
    Ok(())
}

fn status_lines(status: &pb::TaskStatus) -> Vec<String> {
    let mut lines = vec![format!(
        "task {}: {}",
        status.task_id,
        a2a_state(status.state())
    )];
    for s in &status.subtasks {
        let what = if s.output.is_empty() {
            s.error.clone()
        } else {
            String::from_utf8_lossy(&s.output).into_owned()
        };
        lines.push(format!(
            "  {:<10} {:<14} {:<40} {what}",
            s.id,
            a2a_state(s.state()),
            s.agent
        ));
    }
    lines
}

fn status_json(status: &pb::TaskStatus) -> serde_json::Value {
    serde_json::json!({
        "task": status.task_id,
        "state": a2a_state(status.state()),
        "subtasks": status.subtasks.iter().map(|s| serde_json::json!({
            "id": s.id,
            "capability": s.capability,
            "depends_on": s.depends_on,
            "state": a2a_state(s.state()),
            "agent": s.agent,
            "tried": s.tried,
            "output": String::from_utf8_lossy(&s.output),
            "error": s.error,
        })).collect::<Vec<_>>(),
    })
}

/// The tasks this agent requested, as the store kept them (one, or all).
pub(crate) fn task_status(dir: &Path, id: Option<&str>, json: bool) -> Result<(), String> {
    let store = read_store(dir)?;
    let tasks = match id {
        Some(id) => vec![
            store
                .task(id)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no task {id} in the store"))?,
        ],
        None => store.tasks().map_err(|e| e.to_string())?,
    };
    for t in &tasks {
        if json {
            say(status_json(t).to_string());
        } else {
            status_lines(t).iter().for_each(say);
        }
    }
    Ok(())
}

/// A plan from its JSON file: `{"task_id": "...", "context": {...}, "subtasks": [{"id":
/// "...", "capability": "...", "input": {...}, "after": ["..."]}]}`.
pub(crate) fn read_plan(path: &Path) -> Result<Plan, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |v: &serde_json::Value, name: &str| -> Result<String, String> {
        v[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{}: \"{name}\" must be a string", path.display()))
    };
    let subtasks = doc["subtasks"]
        .as_array()
        .ok_or_else(|| format!("{}: \"subtasks\" must be a list", path.display()))?
        .iter()
        .map(|s| {
            let after: Vec<String> = s["after"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Subtask {
                depends_on: after,
                ..Subtask::new(
                    &field(s, "id")?,
                    &field(s, "capability")?,
                    &s["input"].to_string(),
                )
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let context = (!doc["context"].is_null()).then(|| {
        (
            "application/json".to_owned(),
            Bytes::from(doc["context"].to_string()),
        )
    });
    Ok(Plan {
        task_id: field(&doc, "task_id")?,
        subtasks,
        context,
    })
}

/// Runs the plan in `path` as this agent: progress as it happens; an agent's question is
/// printed and the next line of standard input is its answer.
pub(crate) fn run_task(
    dir: &Path,
    ports: &Ports,
    path: &Path,
    silence: Duration,
    json: bool,
) -> Result<(), String> {
    let plan = read_plan(path)?;
    let mut sessions = open(dir, ports)?;
    let held = sessions.agent().credentials().certificate.serial.clone();
    let policy = Policy {
        silence,
        ..Policy::default()
    };
    let mut answers = std::io::stdin().lock().lines();
    let status = orchestrator::run(&mut sessions, plan, policy, |sessions, happening| {
        match happening {
            Happening::Changed(s, _) if json => say(serde_json::json!({
                "subtask": s.id, "state": a2a_state(s.state()), "agent": s.agent, "error": s.error,
            })
            .to_string()),
            Happening::Changed(s, _) => say(format!(
                "  {:<10} {:<14} {} {}",
                s.id,
                a2a_state(s.state()),
                s.agent,
                s.error
            )),
            Happening::Message(m) => {
                say(format!(
                    "? {} asks: {}",
                    m.peer(),
                    text_of(m.content_type(), m.payload())
                ));
                if m.session.is_some() {
                    let answer = answers
                        .next()
                        .transpose()
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    sessions.reply(&m, Outgoing::text(&answer))?;
                }
            }
        }
        Ok(Flow::Continue)
    })
    .map_err(|e| e.to_string())?;
    keep_renewal(dir, &sessions, &held)?;
    if json {
        say(status_json(&status).to_string());
    } else {
        status_lines(&status).iter().for_each(say);
    }
    if status.state() == TaskState::Completed {
        Ok(())
    } else {
        Err(format!(
            "task {} ended {}",
            status.task_id,
            a2a_state(status.state())
        ))
    }
}
