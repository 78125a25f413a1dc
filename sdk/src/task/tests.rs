//! The task state machine on simulated time: order by dependencies, parallel where free,
//! moves on NACK, rejection and silence, failures cancelling dependants, plans refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agw_proto::pb::{self, TaskState};

use super::*;

const SILENCE: Duration = Duration::from_secs(10);

fn trip() -> TaskRun {
    TaskRun::new(
        Plan {
            task_id: "trip-1".into(),
            subtasks: vec![
                Subtask::new("visa", "visa", "{}"),
                Subtask::new("flight", "book-flight", "{}").after(&["visa"]),
                Subtask::new("hotel", "book-hotel", "{}").after(&["visa"]),
            ],
            context: None,
        },
        Policy {
            silence: SILENCE,
            max_attempts: 3,
        },
    )
    .unwrap()
}

fn discovers(steps: &[Step]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Discover { subtask, .. } => Some(subtask.as_str()),
            _ => None,
        })
        .collect()
}

fn assigned(steps: &[Step]) -> Vec<(&str, &str)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Assign { agent, assignment } => {
                Some((assignment.subtask_id.as_str(), agent.as_str()))
            }
            _ => None,
        })
        .collect()
}

fn cancels(steps: &[Step]) -> Vec<(&str, &str)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Cancel { agent, cancel } => Some((cancel.subtask_id.as_str(), agent.as_str())),
            _ => None,
        })
        .collect()
}

fn update(subtask: &str, state: TaskState, output: &str) -> pb::TaskUpdate {
    pb::TaskUpdate {
        task_id: "trip-1".into(),
        subtask_id: subtask.into(),
        state: state as i32,
        content_type: "text/plain".into(),
        output: output.to_owned().into(),
        error: if state == TaskState::Failed {
            "refused".into()
        } else {
            String::new()
        },
    }
}

fn state_of(run: &TaskRun, id: &str) -> TaskState {
    run.status()
        .subtasks
        .iter()
        .find(|s| s.id == id)
        .unwrap()
        .state()
}

#[test]
fn dependants_wait_then_run_in_parallel_with_the_outputs_they_depend_on() {
    let t0 = Instant::now();
    let mut run = trip();
    let steps = run.start(t0);
    assert_eq!(discovers(&steps), ["visa"]);
    let steps = run.found("visa", vec!["visa-a".into()], t0);
    assert_eq!(assigned(&steps), [("visa", "visa-a")]);
    assert_eq!(run.state(), TaskState::InProgress);
    let steps = run.update("visa-a", &update("visa", TaskState::InProgress, ""), t0);
    assert!(matches!(&steps[..], [Step::Changed(s)] if s.state() == TaskState::InProgress));
    let steps = run.update("visa-a", &update("visa", TaskState::Completed, "V-123"), t0);
    assert_eq!(discovers(&steps), ["flight", "hotel"]);
    let steps = run.found("flight", vec!["flight-a".into(), "flight-b".into()], t0);
    let Some(Step::Assign { assignment, .. }) =
        steps.iter().find(|s| matches!(s, Step::Assign { .. }))
    else {
        panic!("{steps:?}")
    };
    assert_eq!(assignment.inputs.len(), 1);
    assert_eq!(
        (
            assignment.inputs[0].subtask_id.as_str(),
            &assignment.inputs[0].output[..]
        ),
        ("visa", &b"V-123"[..])
    );
    run.found("hotel", vec!["hotel-a".into()], t0);
    // Both out at once; neither waits for the other.
    assert_eq!(run.agent_of("flight"), Some("flight-a"));
    assert_eq!(run.agent_of("hotel"), Some("hotel-a"));
    run.update(
        "hotel-a",
        &update("hotel", TaskState::Completed, "room 12"),
        t0,
    );
    assert!(!run.is_finished());
    let steps = run.update(
        "flight-a",
        &update("flight", TaskState::Completed, "F-9"),
        t0,
    );
    assert!(steps.contains(&Step::Finished(TaskState::Completed)));
    let status = run.status();
    assert_eq!(status.state(), TaskState::Completed);
    let outputs: Vec<_> = status.subtasks.iter().map(|s| &s.output[..]).collect();
    assert_eq!(outputs, [&b"V-123"[..], b"F-9", b"room 12"]);
}

#[test]
fn a_subtask_moves_on_a_nack_a_rejection_and_silence_and_fails_when_no_one_is_left() {
    let t0 = Instant::now();
    let mut run = trip();
    run.start(t0);
    run.found(
        "visa",
        vec!["a".into(), "b".into(), "c".into(), "d".into()],
        t0,
    );
    // Offline: the NACK moves it.
    let steps = run.undeliverable("visa", "a", "DestinationOffline", t0);
    assert_eq!(assigned(&steps), [("visa", "b")]);
    // A late report from the agent it left is ignored.
    assert!(
        run.update("a", &update("visa", TaskState::Completed, "x"), t0)
            .is_empty()
    );
    // Accepted, then silent: moved after the silence, and b is told to stop.
    run.update("b", &update("visa", TaskState::InProgress, ""), t0);
    assert!(run.tick(t0 + SILENCE - Duration::from_millis(1)).is_empty());
    assert_eq!(run.next_deadline(), Some(t0 + SILENCE));
    let steps = run.tick(t0 + SILENCE);
    assert_eq!(cancels(&steps), [("visa", "b")]);
    assert_eq!(assigned(&steps), [("visa", "c")]);
    // Rejected by c: three attempts made, d is never tried.
    let t1 = t0 + SILENCE;
    let steps = run.update("c", &update("visa", TaskState::Rejected, ""), t1);
    assert!(assigned(&steps).is_empty());
    assert_eq!(state_of(&run, "visa"), TaskState::Failed);
    let status = run.status();
    assert_eq!(status.subtasks[0].tried, ["a", "b", "c"]);
    assert!(status.subtasks[0].error.contains("no capable agent left"));
    // What depended on it is cancelled, and the task failed.
    assert_eq!(state_of(&run, "flight"), TaskState::Canceled);
    assert_eq!(state_of(&run, "hotel"), TaskState::Canceled);
    assert!(steps.contains(&Step::Finished(TaskState::Failed)));
}

#[test]
fn a_failed_or_cancelled_subtask_cancels_its_dependants_and_tells_their_agents() {
    let t0 = Instant::now();
    let mut run = TaskRun::new(
        Plan {
            task_id: "trip-1".into(),
            subtasks: vec![
                Subtask::new("visa", "visa", "{}"),
                Subtask::new("insurance", "insure", "{}"),
                Subtask::new("flight", "book-flight", "{}").after(&["visa"]),
                Subtask::new("seat", "pick-seat", "{}").after(&["flight"]),
            ],
            context: None,
        },
        Policy::default(),
    )
    .unwrap();
    assert_eq!(discovers(&run.start(t0)), ["visa", "insurance"]);
    run.found("visa", vec!["v".into()], t0);
    run.found("insurance", vec!["i".into()], t0);
    // The visa is refused: flight and seat are cancelled; the insurance goes on.
    let steps = run.update("v", &update("visa", TaskState::Failed, ""), t0);
    assert_eq!(state_of(&run, "flight"), TaskState::Canceled);
    assert_eq!(state_of(&run, "seat"), TaskState::Canceled);
    assert_eq!(state_of(&run, "insurance"), TaskState::Pending);
    assert!(!steps.iter().any(|s| matches!(s, Step::Finished(_))));
    let steps = run.update("i", &update("insurance", TaskState::Completed, "ok"), t0);
    assert!(steps.contains(&Step::Finished(TaskState::Failed)));

    // Cancelling a running subtask tells its agent and cancels what depends on it.
    let mut run = trip();
    run.start(t0);
    run.found("visa", vec!["v".into()], t0);
    let steps = run.cancel(Some("visa"), "the traveller changed plans", t0);
    assert_eq!(cancels(&steps), [("visa", "v")]);
    assert_eq!(state_of(&run, "hotel"), TaskState::Canceled);
    assert!(steps.contains(&Step::Finished(TaskState::Canceled)));
    // The whole task.
    let mut run = trip();
    run.start(t0);
    let steps = run.cancel(None, "no trip", t0);
    assert!(steps.contains(&Step::Finished(TaskState::Canceled)));
    assert!(
        run.status()
            .subtasks
            .iter()
            .all(|s| s.state() == TaskState::Canceled)
    );
}

#[test]
fn no_agent_for_a_capability_fails_the_subtask_saying_so() {
    let t0 = Instant::now();
    let mut run = trip();
    run.start(t0);
    run.found("visa", vec![], t0);
    assert_eq!(state_of(&run, "visa"), TaskState::Failed);
    assert_eq!(run.status().subtasks[0].error, "no agent offers visa");
    assert_eq!(run.state(), TaskState::Failed);
}

#[test]
fn bad_plans_are_refused_before_anything_runs() {
    let plan = |subtasks: Vec<Subtask>| Plan {
        task_id: "t".into(),
        subtasks,
        context: None,
    };
    let new = |p| TaskRun::new(p, Policy::default()).map(|_| ()).unwrap_err();
    assert_eq!(new(plan(vec![])), PlanError::Empty);
    assert_eq!(
        new(plan(vec![
            Subtask::new("a", "x", ""),
            Subtask::new("a", "y", "")
        ])),
        PlanError::Duplicate("a".into())
    );
    assert_eq!(
        new(plan(vec![Subtask::new("a", "x", "").after(&["b"])])),
        PlanError::UnknownDependency {
            subtask: "a".into(),
            missing: "b".into()
        }
    );
    assert!(matches!(
        new(plan(vec![
            Subtask::new("a", "x", "").after(&["b"]),
            Subtask::new("b", "x", "").after(&["a"]),
        ])),
        PlanError::Cycle(_)
    ));
    assert_eq!(new(plan(vec![Subtask::new("", "x", "")])), PlanError::NoId);
}

#[test]
fn task_messages_decode_only_as_their_media_type_and_within_bounds() {
    let bytes = encode(pb::task_message::Kind::Query(pb::TaskQuery {
        task_id: "t".into(),
    }));
    assert!(decode(TASK_CONTENT_TYPE, &bytes).is_some());
    assert!(decode("application/json", &bytes).is_none());
    assert!(decode(TASK_CONTENT_TYPE, &[0xff, 0xff, 0xff]).is_none());
    assert!(decode(TASK_CONTENT_TYPE, &vec![0u8; MAX_TASK_MESSAGE + 1]).is_none());
    assert_eq!(a2a_state(TaskState::InputRequired), "input-required");
    assert_eq!(a2a_state(TaskState::Pending), "submitted");
}
