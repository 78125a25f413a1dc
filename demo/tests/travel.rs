//! The draft's travel scenario end to end across three real gateways (a - b - c peered), with
//! the SDK's example agents: visa first, then flight and hotel in parallel; the flight agent
//! first given the booking goes offline holding it and the traveller's orchestrator moves it
//! to the other; the hotel asks a follow-up question in its session and books with the answer
//! and the trip's context; every output is recorded, in both agents' stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agw_proto::pb::TaskState;
use agw_sdk::store::Store;

#[test]
fn the_trip_is_planned_across_three_domains_with_one_agent_lost_mid_task() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = agw_demo::chain(dir.path(), &["a", "b", "c"], 1).unwrap();
    let status = agw_demo::travel::run(
        &nodes[0],
        &nodes[1],
        &nodes[2],
        dir.path(),
        Duration::from_millis(1500),
    )
    .unwrap();

    assert_eq!(status.state(), TaskState::Completed, "{status:?}");
    let by_id = |id: &str| status.subtasks.iter().find(|s| s.id == id).unwrap();
    let (visa, flight, hotel) = (by_id("visa"), by_id("flight"), by_id("hotel"));
    assert_eq!(visa.agent, "spiffe://a.example/agent/visa");
    assert_eq!(&visa.output[..], br#"{"visa":"VISA-PT-0001"}"#);
    // Moved once: the first flight agent went offline with it.
    assert_eq!(flight.tried.len(), 2, "{flight:?}");
    assert_eq!(flight.agent, flight.tried[1]);
    let airline = flight.agent.rsplit('/').next().unwrap();
    let booked: serde_json::Value = serde_json::from_slice(&flight.output).unwrap();
    assert_eq!(booked["airline"], airline);
    // The hotel booked with the traveller's answer to its question.
    assert_eq!(hotel.agent, "spiffe://b.example/agent/hotel");
    let room: serde_json::Value = serde_json::from_slice(&hotel.output).unwrap();
    assert_eq!(
        (room["room"].as_u64(), room["beds"].as_str()),
        (Some(412), Some("twin, please"))
    );

    // The traveller's store keeps the task; the hotel's session history has the question and
    // its answer, correlated, and the trip's context as the traveller attached it.
    let planner = Store::open(&dir.path().join("trip-planner.redb")).unwrap();
    assert_eq!(planner.task(&status.task_id).unwrap().unwrap(), status);
    let hotel_store = Store::open(&dir.path().join("hotel.redb")).unwrap();
    let session = hotel_store.sessions().unwrap().pop().unwrap();
    assert_eq!(session.peer, "spiffe://c.example/agent/trip-planner");
    let trip: serde_json::Value = serde_json::from_slice(&session.peer_context).unwrap();
    assert_eq!(trip["city"], "Lisbon");
    let history = hotel_store.history(session.id).unwrap();
    let question = history
        .iter()
        .find(|e| e.outgoing && &e.payload[..] == b"Double or twin beds?")
        .unwrap();
    assert!(history.iter().any(|e| !e.outgoing
        && e.in_reply_to == question.sequence
        && &e.payload[..] == b"twin, please"));
    for n in nodes.into_iter().rev() {
        n.stop();
    }
}
