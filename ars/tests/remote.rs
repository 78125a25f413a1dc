//! Cross-domain (draft 3.5): summaries from peers are discoverable with the peer gateway's
//! address, hidden while the peer is inapplicable, gone when it disconnects; bad summaries are
//! refused one by one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agw_proto::{identity::GatewayId, pb, pb::ErrorCode};
use common::*;

fn summary(agent: &str, caps: &[&str], path: &[&str], version: u64) -> pb::AgentSummary {
    pb::AgentSummary {
        agent: agent.into(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        protocols: vec![pb::Protocol::Native as i32],
        languages: vec!["zh".into()],
        status: pb::Status::Running as i32,
        origin: path.last().map(|s| s.to_string()).unwrap_or_default(),
        path: path.iter().map(|s| s.to_string()).collect(),
        version,
    }
}

#[test]
fn remote_agents_are_found_through_their_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut reg = registry(&dir.path().join("ars"), &ca);
    let (alice, cert) = certified(&ca, "alice");
    reg.register(
        &register_request(&cert, profile(&alice, &["hotel booking"])),
        None,
        t0(),
    )
    .unwrap();

    let me = GatewayId::parse("spiffe://travel.example/agw/gw1").unwrap();
    let peer = GatewayId::parse("spiffe://hotels.example/agw/gw2").unwrap();
    let far = "spiffe://far.example/agw/gw3";
    let update = pb::ResourceUpdate {
        advertise: vec![
            summary(
                "spiffe://hotels.example/agent/h1",
                &["hotel booking"],
                &[peer.as_str()],
                1,
            ),
            summary(
                "spiffe://far.example/agent/f1",
                &["hotel booking"],
                &[peer.as_str(), far],
                4,
            ),
            // Invalid: not an agent ID; claims our own domain; loops through us.
            summary("not-an-id", &["hotel booking"], &[peer.as_str()], 1),
            summary(
                "spiffe://travel.example/agent/fake",
                &["hotel booking"],
                &[peer.as_str()],
                1,
            ),
            summary(
                "spiffe://loop.example/agent/l",
                &["hotel booking"],
                &[peer.as_str(), me.as_str()],
                1,
            ),
        ],
        withdraw: vec![],
    };
    let refused = reg.apply_remote(&peer, "agw.hotels.example:7000", &me, &update);
    assert_eq!(
        refused,
        vec![
            ("not-an-id".to_owned(), ErrorCode::BadSummary),
            (
                "spiffe://travel.example/agent/fake".to_owned(),
                ErrorCode::BadSummary
            ),
            (
                "spiffe://loop.example/agent/l".to_owned(),
                ErrorCode::PathLoop
            ),
        ]
    );

    let asker = "spiffe://travel.example/agent/bob";
    let found = reg
        .discover(&discover(&["hotel booking"]), asker, t0())
        .unwrap();
    let found: Vec<(&str, &str)> = found
        .iter()
        .map(|p| (p.agent.as_str(), p.address.as_str()))
        .collect();
    // Local first, then by hops; remote agents carry their gateway's address, never their own.
    assert_eq!(
        found,
        [
            ("spiffe://travel.example/agent/alice", "10.0.0.1:7000/alice"),
            (
                "spiffe://hotels.example/agent/h1",
                "agw.hotels.example:7000"
            ),
            ("spiffe://far.example/agent/f1", "agw.hotels.example:7000"),
        ]
    );
    let mut q = discover(&["hotel booking"]);
    q.domain = "hotels.example".into();
    assert_eq!(reg.discover(&q, asker, t0()).unwrap().len(), 1);

    // A silent peer: its agents are not discoverable until it returns.
    reg.set_peer_applicable(&peer, false);
    assert_eq!(
        reg.discover(&discover(&["hotel booking"]), asker, t0())
            .unwrap()
            .len(),
        1
    );
    reg.set_peer_applicable(&peer, true);
    assert_eq!(
        reg.discover(&discover(&["hotel booking"]), asker, t0())
            .unwrap()
            .len(),
        3
    );

    // An older version is ignored, not applied; a withdrawal removes.
    let stale = pb::ResourceUpdate {
        advertise: vec![summary(
            "spiffe://far.example/agent/f1",
            &["other"],
            &[peer.as_str(), far],
            3,
        )],
        withdraw: vec!["spiffe://hotels.example/agent/h1".into()],
    };
    let refused = reg.apply_remote(&peer, "agw.hotels.example:7000", &me, &stale);
    assert!(refused.is_empty(), "{refused:?}");
    let found = reg
        .discover(&discover(&["hotel booking"]), asker, t0())
        .unwrap();
    let agents: Vec<&str> = found.iter().map(|p| p.agent.as_str()).collect();
    assert_eq!(
        agents,
        [
            "spiffe://travel.example/agent/alice",
            "spiffe://far.example/agent/f1"
        ]
    );

    // Disconnect removes everything the peer brought.
    reg.apply_remote(&peer, "agw.hotels.example:7000", &me, &update);
    reg.remove_peer(&peer);
    assert_eq!(
        reg.discover(&discover(&["hotel booking"]), asker, t0())
            .unwrap()
            .len(),
        1
    );

    // Our own agents, for a full sync to a new peer.
    let ours = reg.local_summaries();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].agent, "spiffe://travel.example/agent/alice");
}
