//! Messages across domains through real gateways on loopback: a chain a - b - c of whole
//! gateways (`Node`, as the daemon runs them, built by `demo::chain`) whose control planes peer
//! over mutual TLS and whose shards keep mutual-TLS links to their peers. An agent registered in
//! domain a is discovered from domain c; an agent of c reaches it through b, the answer comes
//! back, and a refusal at a comes back to c as a NACK.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use agw_dataplane::routing::Route;
use agw_demo as demo;
use agw_proto::{
    DEFAULT_HOP_LIMIT,
    pb::{self, ErrorCode},
};
use agw_sdk::agent::{AgentConnection, Incoming};
use bytes::Bytes;

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn recv(conn: &mut AgentConnection) -> Incoming {
    loop {
        match conn.recv(Duration::from_secs(5)).unwrap() {
            Some(Incoming::HeartbeatAck(_)) => continue,
            Some(other) => return other,
            None => panic!("nothing arrived"),
        }
    }
}

/// The next frame other than a late UNREACHABLE NACK of a try before `id`.
fn recv_skipping_early_nacks(conn: &mut AgentConnection, id: u64) -> Incoming {
    loop {
        match recv(conn) {
            Incoming::Nack(n) if n.reason() == ErrorCode::Unreachable && n.message_id < id => {}
            other => return other,
        }
    }
}

#[test]
fn an_agent_in_c_reaches_an_agent_in_a_through_b_and_hears_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = demo::chain(dir.path(), &["a", "b", "c"], 2)
        .unwrap()
        .into_iter();
    let (ga, gb, gc) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let x = demo::certify(&ga, "x").unwrap();
    let z = demo::certify(&gc, "z").unwrap();
    // x registers in a's registry; c's registry learns it through b and finds it by
    // capability, with the gateway to reach it through.
    let profile = pb::AgentProfile {
        agent: x.agent.to_string(),
        capabilities: vec!["book-hotel".into()],
        protocols: vec![pb::Protocol::Native as i32],
        languages: vec!["en".into()],
        address: "unused".into(),
        ..Default::default()
    };
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(profile),
        certificate_chain: x.certificate.chain.clone(),
    };
    let registrant = x.agent.to_string();
    ga.registry
        .ask(move |r| r.register(&request, Some(&registrant), SystemTime::now()))
        .unwrap()
        .unwrap();
    let query = pb::DiscoverRequest {
        request_id: 2,
        capabilities: vec!["book-hotel".into()],
        ..Default::default()
    };
    let mut found = Vec::new();
    wait_until("c discovers x", || {
        found = gc
            .registry
            .discover(&query, z.agent.as_str(), SystemTime::now())
            .unwrap_or_default();
        !found.is_empty()
    });
    assert_eq!(found[0].agent, x.agent.to_string());
    assert_eq!(found[0].capabilities, ["book-hotel"]);
    let mut cx =
        AgentConnection::connect(ga.dataplane.local_addr(), x.clone(), Duration::from_secs(5))
            .unwrap();
    let mut cz =
        AgentConnection::connect(gc.dataplane.local_addr(), z.clone(), Duration::from_secs(5))
            .unwrap();
    // x's route reaches c through b (c's peer 0); z's reaches a through b (a's peer 0).
    wait_until("c's route to x", || {
        gc.dataplane.route_of(x.agent.as_str()) == Some(Route::Peer { peer: 0 })
    });
    wait_until("a's route to z", || {
        ga.dataplane.route_of(z.agent.as_str()) == Some(Route::Peer { peer: 0 })
    });
    // What an operator of c sees: x behind b, two gateways away, and z at home.
    let (routes, total) = gc
        .control()
        .unwrap()
        .routes(Some(x.agent.as_str()), 10)
        .unwrap();
    assert_eq!(total, 1);
    assert_eq!(routes[0].next_hop.as_deref(), Some(gb.gateway.as_str()));
    assert_eq!(
        routes[0].path,
        [gb.gateway.to_string(), ga.gateway.to_string()]
    );
    assert_eq!(routes[0].status, pb::Status::Running);
    let (agents, _) = gc.control().unwrap().agents(false, 100).unwrap();
    let seen: Vec<(&str, bool, &str)> = agents
        .iter()
        .map(|v| (v.agent.as_str(), v.local, v.gateway.as_str()))
        .collect();
    assert!(
        seen.contains(&(x.agent.as_str(), false, ga.gateway.as_str())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(z.agent.as_str(), true, gc.gateway.as_str())),
        "{seen:?}"
    );
    let (local, _) = gc.control().unwrap().agents(true, 100).unwrap();
    assert!(local.iter().all(|v| v.local), "{local:?}");

    // Shards dial their links when the sessions come up; until one is up, a frame through it
    // is NACKed UNREACHABLE, which the sender may retry.
    let payload = Bytes::from_static(b"a room for two, please");
    let (id, message) = loop {
        let id = cz.send(x.agent.as_str(), payload.clone()).unwrap();
        match cx.recv(Duration::from_millis(200)).unwrap() {
            Some(Incoming::Message(m, hop)) => break (id, (m, hop)),
            _ => match cz.recv(Duration::from_millis(200)).unwrap() {
                Some(Incoming::Nack(n)) => assert_eq!(n.reason(), ErrorCode::Unreachable),
                other => assert!(other.is_none(), "{other:?}"),
            },
        }
    };
    let (m, hop) = message;
    assert_eq!(
        (m.message_id, &m.payload, m.source.as_str()),
        (id, &payload, z.agent.as_str())
    );
    // Three gateways crossed: c, b, a each took one from the hop limit.
    assert_eq!(hop, DEFAULT_HOP_LIMIT - 3);
    cx.ack(&m).unwrap();
    // (NACKs of the tries made while the links came up may still be on their way: skip them.)
    let Incoming::Ack(ack) = recv_skipping_early_nacks(&mut cz, id) else {
        panic!("no ACK")
    };
    assert_eq!((ack.message_id, ack.source), (id, x.agent.to_string()));

    // x leaves its connection: a NACKs z's next message DESTINATION_OFFLINE, back through b.
    drop(cx);
    wait_until("x offline at a", || {
        ga.dataplane.route_of(x.agent.as_str()) == Some(Route::Offline)
    });
    let id = cz.send(x.agent.as_str(), payload.clone()).unwrap();
    match recv_skipping_early_nacks(&mut cz, id) {
        Incoming::Nack(n) => {
            assert_eq!(
                (n.message_id, n.reason()),
                (id, ErrorCode::DestinationOffline)
            );
            assert_eq!(n.reporter, ga.gateway.to_string());
        }
        other => panic!("{other:?}"),
    }
    // Every frame ended delivered or NACKed on every gateway.
    for g in [&ga, &gb, &gc] {
        wait_until("nothing in flight", || {
            g.dataplane.totals().in_flight() == 0
        });
    }
    let forwarded = gb.dataplane.totals();
    assert!(
        forwarded.delivered >= 3,
        "b relayed the message, the ACK and the NACK: {forwarded:?}"
    );
}
