//! Cross-domain (draft 3.5): summaries from peers are discoverable with the agent's gateway
//! and this domain's relay as the address, hidden while the peer is inapplicable, shown as
//! temporarily offline while its gateway is in maintenance, gone when it disconnects or when
//! its full sync after a drop does not name them; bad summaries are refused one by one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agw_ars::{Registry, RegistryConfig};
use agw_proto::{
    identity::{Domain, GatewayId},
    pb,
    pb::ErrorCode,
};
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
    let mut config = RegistryConfig::new(Domain::new(DOMAIN).unwrap(), dir.path().join("ars"));
    config.agent_access = "agw.travel.example:7400".into();
    let mut reg = Registry::open(config, checker(&ca, t0())).unwrap();
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
    let refused = reg.apply_remote(&peer, &me, &update);
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
    let found: Vec<(&str, &str, &str)> = found
        .iter()
        .map(|p| (p.agent.as_str(), p.address.as_str(), p.gateway.as_str()))
        .collect();
    // Local first, then by hops. A remote agent names the gateway it is attached to, and is
    // reached through this domain's relay (by its ID), never at an address of its own.
    assert_eq!(
        found,
        [
            (
                "spiffe://travel.example/agent/alice",
                "10.0.0.1:7000/alice",
                ""
            ),
            (
                "spiffe://hotels.example/agent/h1",
                "agw.travel.example:7400",
                peer.as_str()
            ),
            (
                "spiffe://far.example/agent/f1",
                "agw.travel.example:7400",
                far
            ),
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

    // The peer's gateway goes into maintenance: its agents are found as temporarily offline,
    // and not by a query for online agents only.
    reg.set_peer_status(&peer, pb::Status::TemporarilyOffline);
    let found = reg
        .discover(&discover(&["hotel booking"]), asker, t0())
        .unwrap();
    let statuses: Vec<pb::Status> = found.iter().map(|p| p.status()).collect();
    assert_eq!(
        statuses,
        [
            pb::Status::Running,
            pb::Status::TemporarilyOffline,
            pb::Status::TemporarilyOffline
        ]
    );
    let mut online = discover(&["hotel booking"]);
    online.online_only = true;
    assert_eq!(reg.discover(&online, asker, t0()).unwrap().len(), 1);
    reg.set_peer_status(&peer, pb::Status::Running);
    assert_eq!(reg.discover(&online, asker, t0()).unwrap().len(), 3);

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
    let refused = reg.apply_remote(&peer, &me, &stale);
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
    reg.apply_remote(&peer, &me, &update);
    reg.remove_peer(&peer);
    assert_eq!(
        reg.discover(&discover(&["hotel booking"]), asker, t0())
            .unwrap()
            .len(),
        1
    );

    // Our own agents, for a full sync to a new peer.
    let ours = reg.view().local_summaries();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].agent, "spiffe://travel.example/agent/alice");
}

#[test]
fn a_full_sync_after_a_drop_forgets_what_the_peer_no_longer_has() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(&dir.path().join("aca"));
    let mut reg = registry(&dir.path().join("ars"), &ca);
    let me = GatewayId::parse("spiffe://travel.example/agw/gw1").unwrap();
    let peer = GatewayId::parse("spiffe://hotels.example/agw/gw2").unwrap();
    let [h1, h2, h3] = ["h1", "h2", "h3"].map(|n| format!("spiffe://hotels.example/agent/{n}"));
    let advertise = |agents: &[&String]| pb::ResourceUpdate {
        advertise: agents
            .iter()
            .map(|a| summary(a, &["hotel booking"], &[peer.as_str()], 1))
            .collect(),
        withdraw: vec![],
    };
    let asker = "spiffe://travel.example/agent/bob";
    let found = |reg: &mut agw_ars::Registry| -> Vec<String> {
        let mut agents: Vec<String> = reg
            .discover(&discover(&["hotel booking"]), asker, t0())
            .unwrap()
            .into_iter()
            .map(|p| p.agent)
            .collect();
        agents.sort();
        agents
    };
    reg.apply_remote(&peer, &me, &advertise(&[&h1, &h2]));
    // The peer drops (its agents kept, hidden) and comes back: its full sync names h2 and a
    // new h3, not h1, which went away while the session was down.
    reg.set_peer_applicable(&peer, false);
    reg.set_peer_applicable(&peer, true);
    reg.begin_sync(&peer);
    reg.apply_remote(&peer, &me, &advertise(&[&h2]));
    reg.apply_remote(&peer, &me, &advertise(&[&h3]));
    assert_eq!(
        found(&mut reg),
        [h1.clone(), h2.clone(), h3.clone()],
        "until END-OF-SYNC"
    );
    assert_eq!(reg.end_of_sync(&peer), 1);
    assert_eq!(found(&mut reg), [h2.clone(), h3.clone()]);
    // An END-OF-SYNC without a sync begun changes nothing.
    assert_eq!(reg.end_of_sync(&peer), 0);
    assert_eq!(found(&mut reg).len(), 2);
}
