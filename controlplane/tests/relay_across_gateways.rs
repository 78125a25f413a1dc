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

/// A relay link to `node` as gateway `gateway` (whose key and chain are given), made by hand.
fn link_as(
    node: &agw_controlplane::node::Node,
    chain: Vec<Vec<u8>>,
    key: &agw_sdk::certificates::AgentKey,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let identity = agw_aca::tls::TlsIdentity {
        chain,
        key_pkcs8: key.to_pkcs8_der(),
        trust_anchor: node.authority.trust_anchor().to_vec(),
        crls: Default::default(),
        allow_unknown_revocation: true,
        renewable: None,
    };
    let config = identity.client_config(node.gateway.as_str()).unwrap();
    let name = rustls::pki_types::ServerName::try_from("peer.invalid").unwrap();
    let tcp = std::net::TcpStream::connect(node.addresses().relay_links).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(tls, tcp)
}

/// Writes an agent message from `source` to `destination` on a hand-made link.
fn relay_on(link: &mut impl std::io::Write, source: &str, destination: &str, id: u64) {
    let message = pb::AgentMessage {
        source: source.into(),
        destination: destination.into(),
        message_id: id,
        payload: Bytes::from_static(b"from the link"),
        ..Default::default()
    };
    let mut encoder = agw_proto::FrameEncoder::new(agw_proto::FrameLimits::default());
    encoder
        .push_message(&message.into(), DEFAULT_HOP_LIMIT)
        .unwrap();
    link.write_all(&encoder.take()).unwrap();
    link.flush().unwrap();
}

/// The next NACK read from a hand-made link.
fn nack_on(link: &mut impl std::io::Read) -> pb::Nack {
    let mut decoder = agw_proto::FrameDecoder::new(agw_proto::FrameLimits::default());
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.decode().unwrap() {
            match frame.message().unwrap() {
                agw_proto::Message::Nack(n) => return n,
                other => panic!("{other:?}"),
            }
        }
        let n = link.read(&mut buf).unwrap();
        assert!(n > 0, "the link closed");
        decoder.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_link_carries_only_frames_of_domains_reachable_through_its_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = demo::chain(dir.path(), &["a", "b"], 1).unwrap().into_iter();
    let (ga, gb) = (nodes.next().unwrap(), nodes.next().unwrap());
    let x = demo::certify(&ga, "x").unwrap();
    let mut cx =
        AgentConnection::connect(ga.dataplane.local_addr(), x.clone(), Duration::from_secs(5))
            .unwrap();
    // b's gateway, as itself: its key on disk, its certificate as its authority reissues it.
    let pem = std::fs::read_to_string(dir.path().join("b/gateway.key.pem")).unwrap();
    let key = agw_sdk::certificates::AgentKey::from_pem(&pem).unwrap();
    let chain = gb
        .authority
        .issue_gateway_named(
            &gb.gateway,
            &key.csr(gb.gateway.as_str()).unwrap(),
            &["localhost".into(), "127.0.0.1".into()],
            SystemTime::now(),
        )
        .unwrap()
        .chain;
    let mut link = link_as(&ga, chain, &key);
    // An agent of b's own domain: delivered.
    relay_on(
        &mut link,
        "spiffe://b.example/agent/bob",
        x.agent.as_str(),
        1,
    );
    match recv(&mut cx) {
        Incoming::Message(m, _) => assert_eq!(m.source, "spiffe://b.example/agent/bob"),
        other => panic!("{other:?}"),
    }
    // An agent of a domain b never advertised: NACKed UNAUTHORIZED back on the link.
    relay_on(
        &mut link,
        "spiffe://z.example/agent/zed",
        x.agent.as_str(),
        2,
    );
    let nack = nack_on(&mut link);
    assert_eq!(
        (nack.message_id, nack.reason()),
        (2, ErrorCode::Unauthorized)
    );
    // Nor of a's own domain.
    relay_on(&mut link, "spiffe://a.example/agent/y", x.agent.as_str(), 3);
    assert_eq!(nack_on(&mut link).reason(), ErrorCode::Unauthorized);

    // Another gateway of b's domain, certified by b's authority but not a peer: nothing,
    // not even b's agents.
    let rogue_key = agw_sdk::certificates::AgentKey::generate().unwrap();
    let rogue = agw_proto::identity::GatewayId::parse("spiffe://b.example/agw/rogue").unwrap();
    let rogue_chain = gb
        .authority
        .issue_gateway(
            &rogue,
            &rogue_key.csr(rogue.as_str()).unwrap(),
            SystemTime::now(),
        )
        .unwrap()
        .chain;
    let mut rogue_link = link_as(&ga, rogue_chain, &rogue_key);
    relay_on(
        &mut rogue_link,
        "spiffe://b.example/agent/bob",
        x.agent.as_str(),
        4,
    );
    assert_eq!(nack_on(&mut rogue_link).reason(), ErrorCode::Unauthorized);
    assert_eq!(ga.dataplane.totals().nacked_for(ErrorCode::Unauthorized), 3);
    drop(cx);
    for n in [gb, ga] {
        n.stop();
    }
}
