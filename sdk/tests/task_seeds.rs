//! The task message check (`agw_sdk::task::fuzzing`): the fuzz target's seed corpus
//! (`fuzz/seeds/task_message/`: an assignment, updates in each kind of state, a cancel, a
//! query, a status, a session header with a deadline at the end of time, garbage) replayed on
//! stable, and what the seeds decode to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_proto::pb::{TaskState, task_message::Kind};
use agw_sdk::task::{TASK_CONTENT_TYPE, decode, fuzzing::check};

fn seeds() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/task_message")
}

#[test]
fn every_seed_passes_the_task_message_check() {
    let mut count = 0;
    for entry in std::fs::read_dir(seeds()).unwrap() {
        check(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count >= 10, "{count} seeds");
}

#[test]
fn the_seeds_decode_to_what_they_were_written_as() {
    let read = |name: &str| std::fs::read(seeds().join(name)).unwrap();
    let Some(Kind::Assign(a)) = decode(TASK_CONTENT_TYPE, &read("assign")[1..])
        .unwrap()
        .kind
    else {
        panic!("not an assignment")
    };
    assert_eq!(
        (a.task_id.as_str(), a.subtask_id.as_str()),
        ("trip-1", "visa")
    );
    assert_eq!(&a.inputs[0].output[..], b"ok");
    let Some(Kind::Update(u)) = decode(TASK_CONTENT_TYPE, &read("update-completed")[1..])
        .unwrap()
        .kind
    else {
        panic!("not an update")
    };
    assert_eq!(
        (u.state(), &u.output[..]),
        (TaskState::Completed, &br#"{"visa":"V"}"#[..])
    );
    assert!(decode(TASK_CONTENT_TYPE, &read("garbage")[1..]).is_none());
}
