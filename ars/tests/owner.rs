//! The registry on its owner thread: commands in order, answers after the snapshot that holds
//! them, changes pushed to the control plane, and discovery that never waits for the owner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agw_ars::{Change, RegistryConfig, owner};
use agw_proto::{Message, identity::Domain, pb, pb::ErrorCode};
use common::*;

const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn a_registration_is_discoverable_when_its_reply_comes_and_peers_hear_of_it_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let (changes_tx, changes) = crossbeam_channel::unbounded();
    let handle = owner::spawn(registry(&dir.path().join("ars"), &ca), move |c| {
        changes_tx.send(c).unwrap();
    })
    .unwrap();
    let (alice, alice_cert) = certified(&ca, "alice");
    let before = handle.view();

    let request = register_request(&alice_cert, profile(&alice, &["hotel booking"]));
    let reply = handle.serve(&request.into(), alice.as_str(), t0());
    let Some(Message::RegisterReply(reply)) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(reply.error, None);

    // Read-your-writes: the snapshot published before the reply holds the profile.
    let Some(Message::DiscoverReply(found)) =
        handle.serve(&discover(&["hotel booking"]).into(), alice.as_str(), t0())
    else {
        panic!("no discovery reply")
    };
    assert_eq!(found.error, None);
    assert_eq!(found.agents.len(), 1);
    assert_eq!(found.agents[0].agent, alice.to_string());
    // An older snapshot is what it was.
    assert!(before.is_empty());
    assert!(handle.view().is_local(alice.as_str()));

    // The change reaches whoever tells the peers, without being asked for.
    let batch = changes.recv_timeout(PATIENCE).unwrap();
    let [Change::Advertise(summary)] = batch.as_slice() else {
        panic!("{batch:?}")
    };
    assert_eq!(summary.agent, alice.to_string());

    // A status set by command comes back as a change, in order.
    let agent = alice.to_string();
    assert!(handle.change(move |r| r.set_status(&agent, pb::Status::Offline)));
    let batch = changes.recv_timeout(PATIENCE).unwrap();
    let [Change::Advertise(summary)] = batch.as_slice() else {
        panic!("{batch:?}")
    };
    assert_eq!(summary.status(), pb::Status::Offline);
    assert_eq!(
        handle.view().status_of(alice.as_str()),
        Some(pb::Status::Offline)
    );
}

#[test]
fn discovery_is_answered_while_the_owner_is_held_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let handle = owner::spawn(registry(&dir.path().join("ars"), &ca), |_| {}).unwrap();
    let (alice, alice_cert) = certified(&ca, "alice");
    let request = register_request(&alice_cert, profile(&alice, &["hotel booking"]));
    let who = alice.to_string();
    handle
        .ask(move |r| r.register(&request, Some(&who), t0()))
        .unwrap()
        .unwrap();

    // The owner is stuck (a slow disk, say) until the gate opens.
    let (open, gate) = crossbeam_channel::bounded::<()>(0);
    assert!(handle.change(move |_| {
        let _ = gate.recv();
    }));
    let (answered, answer) = crossbeam_channel::bounded(1);
    let reader = handle.clone();
    let asker = alice.to_string();
    std::thread::spawn(move || {
        let found = reader.discover(&discover(&["hotel"]), &asker, t0());
        answered.send(found).unwrap();
    });
    let found = answer
        .recv_timeout(PATIENCE)
        .expect("discovery waited for the owner");
    assert_eq!(found.unwrap().len(), 1);

    // A write waits its turn, and is done once the owner moves on.
    let (bob, bob_cert) = certified(&ca, "bob");
    let request = register_request(&bob_cert, profile(&bob, &["hotel booking"]));
    let who = bob.to_string();
    let writer = handle.clone();
    let registered =
        std::thread::spawn(move || writer.ask(move |r| r.register(&request, Some(&who), t0())));
    open.send(()).unwrap();
    registered.join().unwrap().unwrap().unwrap();
    assert_eq!(
        handle
            .discover(&discover(&["hotel"]), alice.as_str(), t0())
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn discovery_from_the_snapshot_is_rate_limited_per_requester() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut config = RegistryConfig::new(Domain::new(DOMAIN).unwrap(), dir.path().join("ars"));
    config.discovery_per_minute = 3;
    let registry = agw_ars::Registry::open(config, checker(&ca, t0())).unwrap();
    let handle = owner::spawn(registry, |_| {}).unwrap();
    let (a, b) = (
        "spiffe://travel.example/agent/a",
        "spiffe://travel.example/agent/b",
    );
    for _ in 0..3 {
        handle.discover(&discover(&["x"]), a, t0()).unwrap();
    }
    let Some(Message::DiscoverReply(refused)) = handle.serve(&discover(&["x"]).into(), a, t0())
    else {
        panic!("no discovery reply")
    };
    let error = refused.error.unwrap();
    assert_eq!(error.code, ErrorCode::RateLimited as i32);
    assert!(error.retry_after_ms > 0);
    // Another requester has its own allowance; the first gets one back after 20 s.
    handle.discover(&discover(&["x"]), b, t0()).unwrap();
    handle
        .discover(&discover(&["x"]), a, t0() + Duration::from_secs(20))
        .unwrap();
}

#[test]
fn commands_after_the_owner_stops_are_refused_not_lost_silently() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let handle = owner::spawn(registry(&dir.path().join("ars"), &ca), |_| {}).unwrap();
    assert!(handle.is_running());
    // A command that panics ends the owner: later ones are refused INTERNAL, not hung.
    let _ = handle.ask(|_| -> () { panic!("simulated fault") });
    let refused = handle.ask(|r| r.view().len()).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Internal);
    assert!(!handle.is_running(), "health must hear of it");
    let Some(Message::Notification(n)) = handle.serve(
        &register_request(&certified(&ca, "c").1, pb::AgentProfile::default()).into(),
        "x",
        t0(),
    ) else {
        panic!("no refusal")
    };
    assert_eq!(n.code, ErrorCode::Internal as i32);
    // Discovery still answers from the last snapshot.
    assert!(handle.discover(&discover(&["x"]), "x", t0()).is_ok());
}

#[test]
fn a_stopped_owner_closes_its_store_though_handles_remain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let handle = owner::spawn(registry(&dir.path().join("ars"), &ca), |_| {}).unwrap();
    // Someone still holds a handle (a server's task, a directory on the shards).
    let held = handle.clone();
    handle.stop();
    assert!(!held.is_running());
    assert_eq!(
        held.ask(|r| r.view().len()).unwrap_err().code,
        ErrorCode::Internal
    );
    // The store is free: a gateway that stopped starts again on its data directory.
    let again = owner::spawn(registry(&dir.path().join("ars"), &ca), |_| {}).unwrap();
    assert!(again.is_running());
    again.stop();
}
