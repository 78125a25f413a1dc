//! Tasks against a whole gateway on loopback, with agents written with the SDK alone: a
//! subtask moved when its agent is killed mid-task, outputs passed to the subtasks that depend
//! on them and recorded, the task's status asked by an agent working on it and kept in the
//! requester's store, a failed subtask cancelling its dependants before they are assigned, and
//! a requester's cancellation reaching the agent at work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agw_proto::pb::{self, TaskState};
use agw_sdk::{
    session::Sessions,
    store::Store,
    task::{
        Plan, Policy, Subtask,
        orchestrator::{self, Flow, Happening},
        worker::{self, Served},
    },
};
use bytes::Bytes;

mod common;
use common::{Gateway, WAIT};

fn agent(gw: &Gateway, name: &str, capability: Option<&str>, dir: &Path) -> Sessions {
    let sessions = Sessions::open(gw.enroll(name), &dir.join(format!("{name}.redb"))).unwrap();
    if let Some(capability) = capability {
        sessions
            .agent()
            .register(pb::AgentProfile {
                capabilities: vec![capability.into()],
                protocols: vec![pb::Protocol::Native as i32],
                address: gw.domain.gateway.to_string(),
                ..Default::default()
            })
            .unwrap();
    }
    sessions
}

fn policy() -> Policy {
    Policy {
        silence: Duration::from_millis(1500),
        max_attempts: 3,
    }
}

/// What a worker thread saw, for the test to check after.
type Seen = Arc<Mutex<Vec<Served>>>;

/// Serves with `work` until `stop`; every call's result goes to `seen`.
fn serve(
    mut sessions: Sessions,
    stop: Arc<AtomicBool>,
    seen: Seen,
    work: impl Fn(&mut worker::Job<'_>) -> worker::Outcome + Send + 'static,
) -> std::thread::JoinHandle<Sessions> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let served = worker::serve(&mut sessions, Duration::from_millis(100), &work).unwrap();
            if served != Served::Idle {
                seen.lock().unwrap().push(served);
            }
        }
        sessions
    })
}

fn json(output: &str) -> worker::Outcome {
    Ok((
        "application/json".into(),
        Bytes::copy_from_slice(output.as_bytes()),
    ))
}

#[test]
fn a_subtask_moves_when_its_agent_is_killed_and_every_output_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let mut planner = agent(&gw, "planner", None, dir.path());

    // The visa agent asks how the task stands while it works.
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let asked = statuses.clone();
    let visa = serve(
        agent(&gw, "visa", Some("visa"), dir.path()),
        stop.clone(),
        seen.clone(),
        move |job| {
            let status = job.task_status(WAIT).map_err(|e| e.to_string())?;
            asked.lock().unwrap().push(status);
            json(r#"{"visa":"V-1"}"#)
        },
    );
    // Two flight agents; whichever is given the booking first dies holding it.
    let crash = Arc::new(AtomicBool::new(true));
    let mut flights = Vec::new();
    for name in ["flight-1", "flight-2"] {
        let mut sessions = agent(&gw, name, Some("book-flight"), dir.path());
        let (stop, crash, seen) = (stop.clone(), crash.clone(), seen.clone());
        flights.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(event) = sessions.next(Duration::from_millis(100)).unwrap() else {
                    continue;
                };
                if worker::assignment(&event).is_some() && crash.swap(false, Ordering::Relaxed) {
                    return None;
                }
                let served = worker::handle(&mut sessions, event, |job| {
                    let visa = job.input_of("visa").cloned().unwrap_or_default();
                    let visa = String::from_utf8_lossy(&visa).into_owned();
                    json(&format!(r#"{{"flight":"F-9","visa":{visa}}}"#))
                })
                .unwrap();
                seen.lock().unwrap().push(served);
            }
            Some(sessions)
        }));
    }

    let plan = Plan {
        task_id: "trip-1".into(),
        subtasks: vec![
            Subtask::new("visa", "visa", "{}"),
            Subtask::new("flight", "book-flight", "{}").after(&["visa"]),
        ],
        context: None,
    };
    let mut changes = Vec::new();
    let status = orchestrator::run(&mut planner, plan, policy(), |_, happening| {
        if let Happening::Changed(s, _) = happening {
            changes.push((s.id.clone(), s.state(), s.agent.clone()));
        }
        Ok(Flow::Continue)
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);

    assert_eq!(status.state(), TaskState::Completed, "{status:?}");
    let flight = &status.subtasks[1];
    assert_eq!(flight.tried.len(), 2, "{flight:?}");
    assert_eq!(flight.agent, flight.tried[1]);
    assert_eq!(
        String::from_utf8_lossy(&flight.output),
        r#"{"flight":"F-9","visa":{"visa":"V-1"}}"#
    );
    assert_eq!(&status.subtasks[0].output[..], br#"{"visa":"V-1"}"#);
    // The moved subtask went back to pending with its second agent, then on.
    let flight_agents: Vec<&str> = changes
        .iter()
        .filter(|(id, state, _)| id == "flight" && *state == TaskState::Pending)
        .map(|(_, _, agent)| agent.as_str())
        .collect();
    assert_eq!(flight_agents, [&flight.tried[0], &flight.tried[1]]);
    // The visa agent saw its own subtask in progress and the flight waiting.
    let asked = statuses.lock().unwrap();
    assert_eq!(asked.len(), 1);
    let states: Vec<TaskState> = asked[0].subtasks.iter().map(|s| s.state()).collect();
    assert_eq!(states, [TaskState::InProgress, TaskState::Pending]);
    // The killed agent finished nothing; the other did.
    let alive: Vec<_> = flights.into_iter().map(|f| f.join().unwrap()).collect();
    assert_eq!(alive.iter().filter(|s| s.is_none()).count(), 1);
    visa.join().unwrap();
    assert!(seen.lock().unwrap().iter().any(|s| matches!(
        s,
        Served::Job(a, TaskState::Completed) if a.subtask_id == "flight"
    )));
    // The requester's store has the end, for `agw-agent task status`.
    drop(planner);
    let store = Store::open(&dir.path().join("planner.redb")).unwrap();
    assert_eq!(store.task("trip-1").unwrap().unwrap(), status);
    gw.node.stop();
}

#[test]
fn a_failed_or_cancelled_subtask_cancels_what_depends_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let mut planner = agent(&gw, "planner", None, dir.path());
    // The visa agent refuses a trip without a country, and takes its time otherwise.
    let visa = serve(
        agent(&gw, "visa", Some("visa"), dir.path()),
        stop.clone(),
        seen.clone(),
        |job| {
            let trip = String::from_utf8_lossy(&job.assignment.input).into_owned();
            if !trip.contains("country") {
                return Err("no country: no visa".into());
            }
            std::thread::sleep(Duration::from_millis(300));
            json(r#"{"visa":"V-2"}"#)
        },
    );
    let hotel = serve(
        agent(&gw, "hotel", Some("book-hotel"), dir.path()),
        stop.clone(),
        seen.clone(),
        |_| json(r#"{"room":1}"#),
    );
    let plan = |task: &str, trip: &str| Plan {
        task_id: task.into(),
        subtasks: vec![
            Subtask::new("visa", "visa", trip),
            Subtask::new("hotel", "book-hotel", trip).after(&["visa"]),
        ],
        context: None,
    };

    // The visa fails: the hotel is cancelled without ever being assigned.
    let status = orchestrator::run(&mut planner, plan("trip-2", "{}"), policy(), |_, _| {
        Ok(Flow::Continue)
    })
    .unwrap();
    assert_eq!(status.state(), TaskState::Failed);
    let (visa_s, hotel_s) = (&status.subtasks[0], &status.subtasks[1]);
    assert_eq!(visa_s.state(), TaskState::Failed);
    assert!(visa_s.error.contains("no country: no visa"), "{visa_s:?}");
    assert_eq!(hotel_s.state(), TaskState::Canceled);
    assert!(hotel_s.tried.is_empty());
    assert!(hotel_s.error.contains("depends on visa"));

    // The requester cancels the visa while it is in progress: its agent is told, the hotel is
    // cancelled, and the visa agent's late completion changes nothing.
    let status = orchestrator::run(
        &mut planner,
        plan("trip-3", r#"{"country":"PT"}"#),
        policy(),
        |_, happening| match happening {
            Happening::Changed(s, _) if s.id == "visa" && s.state() == TaskState::InProgress => {
                Ok(Flow::Cancel(Some("visa".into()), "the trip is off".into()))
            }
            _ => Ok(Flow::Continue),
        },
    )
    .unwrap();
    assert_eq!(status.state(), TaskState::Canceled);
    assert_eq!(status.subtasks[0].error, "the trip is off");
    assert_eq!(status.subtasks[1].state(), TaskState::Canceled);
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    visa.join().unwrap();
    hotel.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|s| matches!(
            s,
            Served::Cancelled(c) if c.task_id == "trip-3" && c.reason == "the trip is off"
        )),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, Served::Job(a, _) if a.capability == "book-hotel"))
    );
    gw.node.stop();
}
