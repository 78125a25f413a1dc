//! `agw-agent` in a session and a task as a person at a shell takes part, against a whole
//! gateway on loopback and an agent written with the SDK: a chat whose lines are delivered in
//! one session and whose typed answer answers the agent's question, the history shown after,
//! the same session taken up again later; a task run from a plan file whose agent asks a
//! question answered from the keyboard, and its status read back from the store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use agw_proto::pb;
use agw_sdk::{
    session::{Event, Outgoing, Received, Sessions},
    task::worker::{self, Served},
};
use common::{Gateway, WAIT, agent, json};

/// `agw-agent` running with piped standard input and output; its lines arrive on a channel.
struct Shell {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    fn start(dir: &Path, args: &[&str]) -> Shell {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agw-agent"))
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Shell {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The first printed line containing `text`.
    fn wait_for(&self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT * 2)
                .unwrap_or_else(|_| panic!("{text:?} never printed"));
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Ends the input; the exit status.
    fn finish(mut self) -> bool {
        drop(self.stdin.take());
        self.child.wait().unwrap().success()
    }
}

fn message(sessions: &mut Sessions) -> Received {
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT * 2 {
        if let Some(Event::Message(m)) = sessions.next(Duration::from_millis(100)).unwrap() {
            return m;
        }
    }
    panic!("nothing arrived");
}

#[test]
fn a_person_chats_in_a_session_and_runs_a_task_from_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let (gateway, registry) = (
        gw.domain.gateway.to_string(),
        gw.domain.registry.to_string(),
    );
    let person = dir.path().join("person");
    let anchor = gw.node.trust_anchor_path().to_str().unwrap().to_owned();
    let (ok, _, err) = agent(
        &person,
        &[
            "enroll",
            "--aca",
            &gw.domain.aca.to_string(),
            "--ca",
            &anchor,
            "--agent",
            "spiffe://travel.example/agent/person",
            "--organization",
            "Example",
            "--token",
            &gw.token,
        ],
    );
    assert!(ok, "{err}");
    let mut hotel = Sessions::open(gw.enroll("hotel"), &dir.path().join("hotel.redb")).unwrap();
    let hotel_id = hotel.agent().id().to_string();
    let at = [
        "--gateway",
        gateway.as_str(),
        "--registry",
        registry.as_str(),
    ];

    // A chat: the person's line arrives in a session; the hotel's question is printed; the
    // person's next line answers it.
    let mut shell = Shell::start(
        &person,
        &[&["chat"][..], &at, &["--to", &hotel_id]].concat(),
    );
    let opened = shell.wait_for("session ");
    shell.type_line("a room for two");
    let first = message(&mut hotel);
    assert_eq!(&first.payload()[..], b"a room for two");
    let session = first.session.unwrap();
    assert!(opened.contains(&format!("{session:016x}")), "{opened}");
    let question = hotel.reply(&first, Outgoing::text("which night?")).unwrap();
    shell.wait_for(&format!("<- {hotel_id} #{question}: which night?"));
    shell.type_line("friday");
    let answer = message(&mut hotel);
    assert_eq!(
        (answer.in_reply_to(), &answer.payload()[..]),
        (question, &b"friday"[..])
    );
    assert!(shell.finish(), "the chat did not end cleanly");

    // The history, as the person's store kept it.
    let (ok, out, err) = agent(&person, &["session", "list"]);
    assert!(
        ok && out.contains(&format!("{session:016x}  {hotel_id}  3 messages")),
        "{out}{err}"
    );
    let (ok, out, err) = agent(&person, &["session", "show", &format!("{session:016x}")]);
    assert!(ok, "{err}");
    for line in [
        "-> #1 [delivered] a room for two",
        "<- #1 (re #1) [received] which night?",
        "-> #2 (re #1) [delivered] friday",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    // Taken up again: the same session, the next sequence.
    let mut shell = Shell::start(
        &person,
        &[
            &["chat"][..],
            &at,
            &["--session", &format!("{session:016x}")],
        ]
        .concat(),
    );
    shell.wait_for("session ");
    shell.type_line("see you friday");
    let again = message(&mut hotel);
    assert_eq!((again.session, again.sequence()), (Some(session), 3));
    assert!(shell.finish());

    // A task from a plan file; the hotel asks which floor, the person types it.
    hotel
        .agent()
        .register(pb::AgentProfile {
            capabilities: vec!["book-hotel".into()],
            address: gateway.clone(),
            ..Default::default()
        })
        .unwrap();
    let worker = std::thread::spawn(move || {
        loop {
            let served = worker::serve(&mut hotel, Duration::from_millis(100), |job| {
                let floor = job
                    .ask(Outgoing::text("which floor?"), WAIT)
                    .map_err(|e| e.to_string())?;
                let output = format!(
                    r#"{{"room":12,"floor":"{}"}}"#,
                    String::from_utf8_lossy(floor.payload())
                );
                Ok(("application/json".into(), output.into()))
            })
            .unwrap();
            if matches!(served, Served::Job(..)) {
                return;
            }
        }
    });
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        r#"{"task_id": "stay-1", "context": {"city": "Lisbon"},
            "subtasks": [{"id": "room", "capability": "book-hotel", "input": {"nights": 2}}]}"#,
    )
    .unwrap();
    let mut shell = Shell::start(
        &person,
        &[
            &["task", "run"][..],
            &at,
            &["--plan", plan.to_str().unwrap()],
        ]
        .concat(),
    );
    shell.wait_for(&format!("? {hotel_id} asks: which floor?"));
    shell.type_line("top");
    shell.wait_for("task stay-1: completed");
    assert!(shell.finish());
    worker.join().unwrap();
    let (ok, out, err) = agent(&person, &["--json", "task", "status", "stay-1"]);
    assert!(ok, "{err}");
    let status = json(&out);
    assert_eq!(status["state"], "completed");
    assert_eq!(
        status["subtasks"][0]["output"],
        r#"{"room":12,"floor":"top"}"#
    );
    assert_eq!(status["subtasks"][0]["agent"], hotel_id.as_str());
    // A plan that is not one is refused before anything is sent.
    std::fs::write(&plan, r#"{"task_id": "x", "subtasks": [{"id": "a"}]}"#).unwrap();
    let (ok, _, err) = agent(
        &person,
        &[
            &["task", "run"][..],
            &at,
            &["--plan", plan.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("\"capability\" must be a string"),
        "{err}"
    );
    gw.node.stop();
}
