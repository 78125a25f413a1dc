//! Messages across domains through real gateways on loopback: a chain a - b - c of relays
//! whose control planes peer over mutual TLS and whose shards keep mutual-TLS links to their
//! peers. An agent registered in domain a is discovered from domain c; an agent of c reaches
//! it through b, the answer comes back, and a refusal at a comes back to c as a NACK.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use agw_aca::tls::CertificateChecker;
use agw_ars::{Registry, RegistryConfig};
use agw_controlplane::{
    control::{ControlPlane, Wiring},
    peering::{
        driver::{PeerSpec, PeeringConfig},
        session::PeerConfig,
    },
};
use agw_dataplane::{
    Dataplane, DataplaneConfig,
    routing::{Route, RoutingTable},
};
use agw_proto::{
    DEFAULT_HOP_LIMIT,
    pb::{self, ErrorCode},
};
use agw_sdk::agent::{AgentConnection, Incoming};
use bytes::Bytes;
use common::{Authority, authority, federation_root, identity};

struct Gateway {
    dp: Dataplane,
    control: ControlPlane,
    registry: Arc<Mutex<Registry>>,
    /// Last: the sessions run on it.
    _runtime: tokio::runtime::Runtime,
}

fn start(
    dir: &std::path::Path,
    me: &Authority,
    all: &[&Authority],
    peers: &[(&Authority, Option<SocketAddr>)],
) -> Gateway {
    let tls = identity(me, all);
    let table = RoutingTable::new();
    let reader = table.reader();
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let mut config = DataplaneConfig::new(me.gateway.clone(), "127.0.0.1:0".parse().unwrap());
    config.shards = 2;
    config.pin_cores = false;
    config.peer_listen = Some("127.0.0.1:0".parse().unwrap());
    config.peer_tls = Some(tls.clone());
    let crls: Vec<Vec<u8>> = vec![me.ca.crl(std::time::SystemTime::now()).unwrap().der];
    let checker = CertificateChecker::new(me.ca.trust_anchor(), &crls).unwrap();
    let registry = Registry::open(
        RegistryConfig::new(
            me.ca.domain().clone(),
            dir.join(format!("ars-{}", me.ca.domain())),
        ),
        CertificateChecker::new(me.ca.trust_anchor(), &crls).unwrap(),
    )
    .unwrap();
    let registry = Arc::new(Mutex::new(registry));
    let dp = Dataplane::start(config, reader, checker, events_tx).unwrap();
    let relay = dp.peer_addr().unwrap().to_string();
    let peers = peers
        .iter()
        .map(|(p, address)| {
            let mut config = PeerConfig::new(me.gateway.clone(), p.gateway.clone());
            config.dial = address.is_some();
            config.agent_access_address = relay.clone();
            config.retry_min = Duration::from_millis(100);
            PeerSpec {
                config,
                address: *address,
            }
        })
        .collect();
    let runtime = agw_rpc::runtime("relay-test").unwrap();
    let peering = PeeringConfig {
        runtime: runtime.handle().clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        peers,
    };
    let control = ControlPlane::start(
        me.gateway.clone(),
        table,
        events_rx,
        Wiring {
            peering: Some(peering),
            links: Some(dp.peer_links()),
            registry: Some(registry.clone()),
        },
    )
    .unwrap();
    Gateway {
        dp,
        control,
        registry,
        _runtime: runtime,
    }
}

fn peering_addr(g: &Gateway) -> Option<SocketAddr> {
    g.control.peering().map(|p| p.local_addr())
}

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
    let root = federation_root(dir.path());
    let [a, b, c] = ["a", "b", "c"].map(|n| authority(dir.path(), &root, n));
    let all = [&a, &b, &c];
    let ga = start(dir.path(), &a, &all, &[(&b, None)]);
    let gb = start(dir.path(), &b, &all, &[(&a, peering_addr(&ga)), (&c, None)]);
    let gc = start(dir.path(), &c, &all, &[(&b, peering_addr(&gb))]);

    let x = a.certify("x");
    let z = c.certify("z");
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
    ga.registry
        .lock()
        .unwrap()
        .register(&request, Some(x.agent.as_str()), SystemTime::now())
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
            .lock()
            .unwrap()
            .discover(&query, z.agent.as_str(), SystemTime::now())
            .unwrap_or_default();
        !found.is_empty()
    });
    assert_eq!(found[0].agent, x.agent.to_string());
    assert_eq!(found[0].capabilities, ["book-hotel"]);
    let mut cx =
        AgentConnection::connect(ga.dp.local_addr(), x.clone(), Duration::from_secs(5)).unwrap();
    let mut cz =
        AgentConnection::connect(gc.dp.local_addr(), z.clone(), Duration::from_secs(5)).unwrap();
    // x's route reaches c through b (c's peer 0); z's reaches a through b (a's peer 0).
    wait_until("c's route to x", || {
        gc.dp.route_of(x.agent.as_str()) == Some(Route::Peer { peer: 0 })
    });
    wait_until("a's route to z", || {
        ga.dp.route_of(z.agent.as_str()) == Some(Route::Peer { peer: 0 })
    });
    // What an operator of c sees: x behind b, two gateways away, and z at home.
    let (routes, total) = gc.control.routes(Some(x.agent.as_str()), 10).unwrap();
    assert_eq!(total, 1);
    assert_eq!(routes[0].next_hop.as_deref(), Some(b.gateway.as_str()));
    assert_eq!(
        routes[0].path,
        [b.gateway.to_string(), a.gateway.to_string()]
    );
    assert_eq!(routes[0].status, pb::Status::Running);
    let (agents, _) = gc.control.agents(false, 100).unwrap();
    let seen: Vec<(&str, bool, &str)> = agents
        .iter()
        .map(|v| (v.agent.as_str(), v.local, v.gateway.as_str()))
        .collect();
    assert!(
        seen.contains(&(x.agent.as_str(), false, a.gateway.as_str())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(z.agent.as_str(), true, c.gateway.as_str())),
        "{seen:?}"
    );
    let (local, _) = gc.control.agents(true, 100).unwrap();
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
        ga.dp.route_of(x.agent.as_str()) == Some(Route::Offline)
    });
    let id = cz.send(x.agent.as_str(), payload.clone()).unwrap();
    match recv_skipping_early_nacks(&mut cz, id) {
        Incoming::Nack(n) => {
            assert_eq!(
                (n.message_id, n.reason()),
                (id, ErrorCode::DestinationOffline)
            );
            assert_eq!(n.reporter, a.gateway.to_string());
        }
        other => panic!("{other:?}"),
    }
    // Every frame ended delivered or NACKed on every gateway.
    for g in [&ga, &gb, &gc] {
        wait_until("nothing in flight", || g.dp.totals().in_flight() == 0);
    }
    let forwarded = gb.dp.totals();
    assert!(
        forwarded.delivered >= 3,
        "b relayed the message, the ACK and the NACK: {forwarded:?}"
    );
}
