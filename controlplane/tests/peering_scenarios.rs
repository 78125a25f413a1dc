//! The peering session state machine replayed on simulated time. Each folder under
//! `tests/scenarios/` is one scenario: `config` (the session's settings and aliases),
//! `input` (timed events) and `expected` (the timed outputs, timers included). The harness
//! fires every timer that falls before an event at the time it falls, renders each output as
//! one line and compares the whole transcript. `AGW_WRITE_SCENARIOS=1` prints (to stderr) the transcript
//! instead of failing, to write a new `expected`.
//!
//! Event lines: `<ms> <event>`, where event is one of `start`, `stop`, `tick`, `down`,
//! `up dialled|accepted <gateway>`, `backlog <ms>|none`, `recv <message>`,
//! `full-sync <summary>...`, `advertise <summary>...`, `withdraw-local <agent>...`,
//! `set-status running|temporarily_offline`, `malformed <CODE>` (bytes that do not decode).
//! Messages: `Open|OpenReply gateway=G domain=D hold=S [protocols=native,mcp] [status=S]`,
//! `Keepalive [status=S]` (a status other than RUNNING is rendered too),
//! `ResourceUpdate [advertise=<summary>,...] [withdraw=<agent>,...]`, `EndOfSync <n>`,
//! `Notification <CODE>`, `Disconnect`. A summary is `<agent>|<gateway>><gateway>...` (the
//! path, nearest first; the last is the origin), optionally `#<version>`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::Path,
    time::{Duration, Instant},
};

use agw_controlplane::peering::session::{Input, LimitAction, Output, PeerConfig, PeerSession};
use agw_proto::{
    Message,
    identity::GatewayId,
    pb::{self, ErrorCode},
};

fn code(name: &str) -> ErrorCode {
    ErrorCode::from_str_name(name).unwrap_or_else(|| panic!("no error code {name}"))
}

fn protocol(name: &str) -> i32 {
    pb::Protocol::from_str_name(&name.to_uppercase())
        .unwrap_or_else(|| panic!("no protocol {name}")) as i32
}

/// A summary; an empty path is a local agent of `local` (what the driver hands the session).
fn summary(text: &str, local: &str) -> pb::AgentSummary {
    let (body, version) = match text.split_once('#') {
        Some((b, v)) => (b, v.parse().unwrap()),
        None => (text, 1),
    };
    let (agent, path) = body.split_once('|').unwrap_or((body, ""));
    let path: Vec<String> = path
        .split('>')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    pb::AgentSummary {
        agent: agent.to_owned(),
        origin: path.last().cloned().unwrap_or_else(|| local.to_owned()),
        path,
        version,
        status: pb::Status::Running as i32,
        ..Default::default()
    }
}

fn render_summary(s: &pb::AgentSummary) -> String {
    format!("{}|{}", s.agent, s.path.join(">"))
}

fn fields(words: &[&str]) -> BTreeMap<String, String> {
    words
        .iter()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn message(words: &[&str], local: &str) -> Message {
    let f = fields(words.get(1..).unwrap_or_default());
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let protocols = || -> Vec<i32> {
        f.get("protocols")
            .map_or("native", String::as_str)
            .split(',')
            .map(protocol)
            .collect()
    };
    let status = || f.get("status").map_or(0, |s| status(s) as i32);
    match words.first().copied() {
        Some("Open") => pb::Open {
            gateway: get("gateway"),
            domain: get("domain"),
            hold_time_s: get("hold").parse().unwrap(),
            protocols: protocols(),
            status: status(),
            ..Default::default()
        }
        .into(),
        Some("OpenReply") => pb::OpenReply {
            gateway: get("gateway"),
            domain: get("domain"),
            hold_time_s: get("hold").parse().unwrap(),
            protocols: protocols(),
            status: status(),
            ..Default::default()
        }
        .into(),
        Some("Keepalive") => pb::Keepalive { status: status() }.into(),
        Some("ResourceUpdate") => pb::ResourceUpdate {
            advertise: f
                .get("advertise")
                .map(|a| a.split(',').map(|t| summary(t, local)).collect())
                .unwrap_or_default(),
            withdraw: f
                .get("withdraw")
                .map(|w| w.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
        }
        .into(),
        Some("EndOfSync") => pb::EndOfSync {
            summaries: words[1].parse().unwrap(),
        }
        .into(),
        Some("Notification") => pb::Notification {
            code: code(words[1]) as i32,
            ..Default::default()
        }
        .into(),
        Some("Disconnect") => pb::Disconnect::default().into(),
        other => panic!("unknown message {other:?}"),
    }
}

fn status(name: &str) -> pb::Status {
    pb::Status::from_str_name(&name.to_uppercase()).unwrap_or_else(|| panic!("no status {name}"))
}

/// ` status=S` for a status other than RUNNING (or unset), else nothing.
fn render_status(status: i32) -> String {
    match pb::Status::try_from(status) {
        Ok(pb::Status::Running | pb::Status::Unspecified) => String::new(),
        Ok(s) => format!(" status={}", s.as_str_name()),
        Err(_) => format!(" status={status}"),
    }
}

fn render(output: &Output) -> String {
    match output {
        Output::Connect => "connect".into(),
        Output::Close => "close".into(),
        Output::Send(m) => format!("send {}", render_message(m)),
        Output::PeerUp {
            hold_time, domain, ..
        } => format!("peer-up hold={}s domain={domain}", hold_time.as_secs()),
        Output::PeerDown { code, disconnected } => format!(
            "peer-down {}{}",
            code.as_str_name(),
            if *disconnected { " disconnected" } else { "" }
        ),
        Output::Learned(v) => format!(
            "learned {}",
            v.iter().map(render_summary).collect::<Vec<_>>().join(" ")
        ),
        Output::Withdrawn(v) => format!("withdrawn {}", v.join(" ")),
        Output::Refused { agent, code } => format!("refused {agent} {}", code.as_str_name()),
        Output::SyncComplete => "sync-complete".into(),
        Output::PeerStatus(s) => format!("peer-status {}", s.as_str_name()),
        Output::Warning(w) => format!("warning {w}"),
    }
}

fn render_message(m: &Message) -> String {
    match m {
        Message::Open(o) => format!(
            "Open gateway={} hold={}{}",
            o.gateway,
            o.hold_time_s,
            render_status(o.status)
        ),
        Message::OpenReply(o) => format!(
            "OpenReply gateway={} hold={}{}",
            o.gateway,
            o.hold_time_s,
            render_status(o.status)
        ),
        Message::Keepalive(k) => format!("Keepalive{}", render_status(k.status)),
        Message::ResourceUpdate(u) => {
            let mut s = "ResourceUpdate".to_owned();
            if !u.advertise.is_empty() {
                let a: Vec<String> = u.advertise.iter().map(render_summary).collect();
                s += &format!(" advertise={}", a.join(","));
            }
            if !u.withdraw.is_empty() {
                s += &format!(" withdraw={}", u.withdraw.join(","));
            }
            s
        }
        Message::EndOfSync(e) => format!("EndOfSync {}", e.summaries),
        Message::Notification(n) => format!("Notification {}", n.code().as_str_name()),
        Message::Disconnect(_) => "Disconnect".into(),
        other => other.kind().name().to_owned(),
    }
}

struct Scenario {
    aliases: Vec<(String, String)>,
    config: PeerConfig,
}

fn substitute(text: &str, aliases: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    // Longest alias first, so `$a1x` is not cut by `$a1`.
    let mut sorted: Vec<&(String, String)> = aliases.iter().collect();
    sorted.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    for (k, v) in sorted {
        out = out.replace(&format!("${k}"), v);
    }
    out
}

fn load_config(text: &str) -> Scenario {
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        entries.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let local = GatewayId::parse(&get("local").expect("local")).unwrap();
    let peer = GatewayId::parse(&get("peer").expect("peer")).unwrap();
    let mut config = PeerConfig::new(local, peer);
    // Updates at once: the recorded transcripts predate the advertisement interval, which
    // the session's own tests cover.
    config.advertisement_interval = Duration::ZERO;
    let secs = |v: String| Duration::from_secs(v.parse().unwrap());
    let millis = |v: String| Duration::from_millis(v.parse().unwrap());
    if let Some(v) = get("dial") {
        config.dial = v == "true";
    }
    if let Some(v) = get("hold_time_s") {
        config.hold_time = secs(v);
    }
    if let Some(v) = get("send_hold_time_s") {
        config.send_hold_time = secs(v);
    }
    if let Some(v) = get("retry_min_ms") {
        config.retry_min = millis(v);
    }
    if let Some(v) = get("retry_max_ms") {
        config.retry_max = millis(v);
    }
    if let Some(v) = get("protocols") {
        config.protocols = v
            .split(',')
            .map(|p| pb::Protocol::try_from(protocol(p)).unwrap())
            .collect();
    }
    if let Some(v) = get("max_summaries") {
        let (n, action) = v.split_once(':').expect("N:warn|refuse|reset");
        let action = match action {
            "warn" => LimitAction::Warn,
            "refuse" => LimitAction::Refuse,
            "reset" => LimitAction::Reset,
            other => panic!("limit action {other}"),
        };
        config.max_summaries = Some((n.parse().unwrap(), action));
    }
    if let Some(v) = get("export") {
        config.export_domains = Some(v.split(',').map(str::to_owned).collect::<HashSet<_>>());
    }
    Scenario {
        aliases: entries,
        config,
    }
}

/// Runs one scenario; returns its transcript.
fn run(dir: &Path) -> (String, String) {
    let config_text = fs::read_to_string(dir.join("config")).unwrap();
    let scenario = load_config(&config_text);
    let input = substitute(
        &fs::read_to_string(dir.join("input")).unwrap(),
        &scenario.aliases,
    );
    let expected = fs::read_to_string(dir.join("expected")).unwrap_or_default();
    let expected = substitute(&expected, &scenario.aliases);
    let t0 = Instant::now();
    let local = scenario.config.local.to_string();
    let mut session = PeerSession::new(scenario.config);
    let mut transcript = String::new();
    let drain = |session: &mut PeerSession, at: u128, transcript: &mut String| {
        while let Some(out) = session.poll_output() {
            transcript.push_str(&format!("{at} {}\n", render(&out)));
        }
    };
    for line in input.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let at: u64 = words[0].parse().expect("time in ms");
        let now = t0 + Duration::from_millis(at);
        // Timers that fall before this event fire first, at their own time.
        while let Some(due) = session.next_timeout()
            && due <= now
        {
            session.handle(Input::Tick, due);
            drain(
                &mut session,
                due.duration_since(t0).as_millis(),
                &mut transcript,
            );
        }
        let rest = &words[1..];
        match rest.first().copied() {
            Some("start") => session.handle(Input::Start, now),
            Some("stop") => session.handle(Input::Stop("maintenance".into()), now),
            Some("tick") => session.handle(Input::Tick, now),
            Some("down") => session.handle(Input::TransportDown, now),
            Some("up") => session.handle(
                Input::TransportUp {
                    dialled: rest[1] == "dialled",
                    identity: rest[2].to_owned(),
                },
                now,
            ),
            Some("backlog") => {
                let since = match rest[1] {
                    "none" => None,
                    ms => Some(t0 + Duration::from_millis(ms.parse().unwrap())),
                };
                session.handle(Input::Backlog(since), now)
            }
            Some("recv") => {
                session.handle(Input::Received(Box::new(message(&rest[1..], &local))), now)
            }
            Some("full-sync") => {
                let table: Vec<_> = rest[1..].iter().map(|s| summary(s, &local)).collect();
                session.full_sync(&table);
            }
            Some("advertise") => {
                let table: Vec<_> = rest[1..].iter().map(|s| summary(s, &local)).collect();
                session.advertise(&table, &[], now);
            }
            Some("set-status") => session.set_local_status(status(rest[1]), now),
            Some("malformed") => session.handle(
                Input::Malformed {
                    code: code(rest[1]),
                    text: "bad bytes".into(),
                },
                now,
            ),
            Some("withdraw-local") => {
                let agents: Vec<String> = rest[1..].iter().map(|s| (*s).to_owned()).collect();
                session.advertise(&[], &agents, now);
            }
            other => panic!("unknown event {other:?} in {}", dir.display()),
        }
        drain(&mut session, u128::from(at), &mut transcript);
    }
    (transcript, expected)
}

#[test]
fn recorded_scenarios_replay_exactly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "scenarios missing in {}", root.display());
    let write = std::env::var_os("AGW_WRITE_SCENARIOS").is_some();
    let mut failures = Vec::new();
    for dir in &dirs {
        let (got, expected) = run(dir);
        if write {
            eprintln!("== {}\n{got}", dir.display());
        } else if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                dir.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
