//! What an agent does with a task message or a session header it receives, shared by the
//! cargo-fuzz target `task_message` (`fuzz/`) and the test that replays its seed corpus on
//! stable.
//!
//! [`check`] panics only when the SDK contradicts itself: a task message that does not
//! survive re-encoding, or a run that breaks its own rules after an update (a subtask that
//! moves past its attempts, a finished task that is not over). Hostile bytes must give `None`
//! or be ignored, never a panic.

#![allow(clippy::expect_used, clippy::panic)] // a contradiction is a finding

use std::time::{Duration, Instant};

use agw_proto::pb::{self, task_message::Kind};
use prost::Message as _;

use super::{Plan, Policy, Subtask, TASK_CONTENT_TYPE, TaskRun, decode, encode, terminal};
use crate::session::Received;

/// The first byte chooses: even, the rest is a task message payload; odd, an agent message
/// whose session header is read as a receiver reads it.
pub fn check(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        task_message(rest);
    } else {
        session_header(rest);
    }
}

fn task_message(payload: &[u8]) {
    let Some(message) = decode(TASK_CONTENT_TYPE, payload) else {
        return;
    };
    let Some(kind) = message.kind else {
        return;
    };
    let again = decode(TASK_CONTENT_TYPE, &encode(kind.clone())).and_then(|m| m.kind);
    assert_eq!(
        again.as_ref(),
        Some(&kind),
        "a task message that does not re-encode"
    );
    let Kind::Update(update) = kind else {
        return;
    };
    // The update, from the agent holding the subtask and from another, to a run in progress.
    let t0 = Instant::now();
    let policy = Policy {
        silence: Duration::from_secs(1),
        max_attempts: 2,
    };
    let mut run = TaskRun::new(
        Plan {
            task_id: update.task_id.clone(),
            subtasks: vec![
                Subtask::new(&update.subtask_id, "x", "{}"),
                Subtask::new("then", "y", "{}").after(&[&update.subtask_id]),
            ],
            context: None,
        },
        policy,
    )
    .or_else(|_| {
        TaskRun::new(
            Plan {
                task_id: "t".into(),
                subtasks: vec![Subtask::new("s", "x", "{}")],
                context: None,
            },
            policy,
        )
    })
    .expect("a plan of one subtask");
    run.start(t0);
    let first = run.status().subtasks[0].id.clone();
    run.found(&first, vec!["a".into(), "b".into(), "c".into()], t0);
    for agent in ["a", "b", "nobody"] {
        run.update(agent, &update, t0);
        run.tick(t0 + Duration::from_secs(2));
    }
    let status = run.status();
    for s in &status.subtasks {
        assert!(s.tried.len() <= 2, "more attempts than the policy: {s:?}");
    }
    if run.is_finished() {
        assert!(
            status.subtasks.iter().all(|s| terminal(s.state())),
            "{status:?}"
        );
    }
}

fn session_header(bytes: &[u8]) {
    let Ok(message) = pb::AgentMessage::decode(bytes) else {
        return;
    };
    let received = Received {
        session: (message.session_id != 0).then_some(message.session_id),
        message,
    };
    let _ = (
        received.sequence(),
        received.in_reply_to(),
        received.deadline(),
        received.peer(),
        decode(received.content_type(), received.payload()),
    );
}
