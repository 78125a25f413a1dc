//! Two real gateways (a - b, each a whole node: authority, registry, relay, control plane)
//! and what an agent of one domain sees of the other's agents over time: an agent that
//! connects before it registers is discovered with its capabilities; discovery names the
//! agent's gateway and how to reach it; deregistering, from the registry or from the relay,
//! withdraws it at the peer (no OFFLINE ghost); a gateway in maintenance is routed around.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

mod common;

use agw_controlplane::node::Node;
use agw_dataplane::routing::Route;
use agw_demo as demo;
use agw_proto::{
    Message,
    pb::{self, ErrorCode},
};
use agw_sdk::agent::{AgentConnection, Credentials, Incoming};
use bytes::Bytes;
use common::{register, route};

const WAIT: Duration = Duration::from_secs(10);

/// Polls `done` every 200 ms (discovery is rate-limited to 60 a minute per agent).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What `who` (an agent of `node`'s domain) discovers for `capability`.
fn discover(node: &Node, who: &Credentials, capability: &str) -> Vec<pb::AgentProfile> {
    let mut conn = demo::registry(node, who).unwrap();
    let query = pb::DiscoverRequest {
        request_id: 1,
        capabilities: vec![capability.into()],
        ..Default::default()
    };
    match conn.request(query).unwrap() {
        Message::DiscoverReply(r) => {
            assert_eq!(r.error, None);
            r.agents
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn discovery_across_domains_follows_registration_and_deregistration() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = demo::chain(dir.path(), &["a", "b"], 1).unwrap().into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let traveller = demo::certify(&b, "traveller").unwrap();

    // Agents connect to a before they register (each access is a summary version from the
    // control plane); then the hotel registers: b must see its capabilities.
    let others: Vec<AgentConnection> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| {
            AgentConnection::connect(a.addresses().agents, demo::certify(&a, n).unwrap(), WAIT)
                .unwrap()
        })
        .collect();
    let hotel = demo::certify(&a, "hotel").unwrap();
    let hotel_conn = AgentConnection::connect(a.addresses().agents, hotel.clone(), WAIT).unwrap();
    wait_until("b routes to the hotel", || {
        route(&b, hotel.agent.as_str()) == Some(Route::Peer { peer: 0 })
    });
    let resource = register(&a, &hotel, "book-hotel");
    let mut found = Vec::new();
    wait_until("b discovers the hotel by capability", || {
        found = discover(&b, &traveller, "book-hotel");
        !found.is_empty()
    });
    // Discovery says what an agent of b can act on: the hotel's domain and gateway, reached
    // through b's own relay.
    assert_eq!(found[0].agent, hotel.agent.as_str());
    assert_eq!(found[0].domain, "a.example");
    assert_eq!(found[0].gateway, a.gateway.as_str());
    assert_eq!(found[0].address, b.addresses().agents.to_string());
    assert_eq!(found[0].status(), pb::Status::Running);

    // The hotel deregisters from a's registry, then disconnects: b forgets it, rather than
    // keeping an OFFLINE ghost.
    let mut conn = demo::registry(&a, &hotel).unwrap();
    let dereg = pb::DeregisterAgentRequest {
        request_id: 2,
        resource_id: resource,
    };
    assert!(
        matches!(conn.request(dereg).unwrap(), Message::DeregisterAgentReply(r) if r.error.is_none())
    );
    wait_until("b forgets the deregistered hotel", || {
        discover(&b, &traveller, "book-hotel").is_empty()
            && route(&b, hotel.agent.as_str()).is_none()
    });
    drop(hotel_conn);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        route(&b, hotel.agent.as_str()),
        None,
        "no OFFLINE summary brings it back"
    );
    let (agents, _) = b.control().unwrap().agents(false, 100).unwrap();
    assert!(
        !agents.iter().any(|v| v.agent == hotel.agent.as_str()),
        "{agents:?}"
    );

    // A registered guide leaves a's relay (Deregister on its connection): withdrawn at b too,
    // while its profile stays at a, offline.
    let guide = demo::certify(&a, "guide").unwrap();
    let guide_conn = AgentConnection::connect(a.addresses().agents, guide.clone(), WAIT).unwrap();
    register(&a, &guide, "city-tours");
    wait_until("b discovers the guide", || {
        !discover(&b, &traveller, "city-tours").is_empty()
    });
    guide_conn.deregister("closing").unwrap();
    wait_until("b forgets the guide", || {
        discover(&b, &traveller, "city-tours").is_empty()
            && route(&b, guide.agent.as_str()).is_none()
    });
    let (local, _) = a.control().unwrap().agents(true, 100).unwrap();
    let guide_here = local
        .iter()
        .find(|v| v.agent == guide.agent.as_str())
        .unwrap();
    assert_eq!(guide_here.status, pb::Status::Offline);
    drop(others);
    for n in [b, a] {
        n.stop();
    }
}

#[test]
fn a_gateway_in_maintenance_is_routed_around_and_its_agents_shown_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = demo::chain(dir.path(), &["a", "b"], 1).unwrap().into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let hotel = demo::certify(&a, "hotel").unwrap();
    let traveller = demo::certify(&b, "traveller").unwrap();
    let mut hotel_conn =
        AgentConnection::connect(a.addresses().agents, hotel.clone(), WAIT).unwrap();
    register(&a, &hotel, "book-hotel");
    let mut traveller_conn =
        AgentConnection::connect(b.addresses().agents, traveller.clone(), WAIT).unwrap();
    wait_until("b routes to the hotel", || {
        route(&b, hotel.agent.as_str()) == Some(Route::Peer { peer: 0 })
    });

    // a's operator puts it into maintenance: b stops routing to a's agents (a message is
    // NACKed DESTINATION_OFFLINE, not lost) and discovery shows them temporarily offline.
    a.control()
        .unwrap()
        .set_status(pb::Status::TemporarilyOffline)
        .unwrap();
    wait_until("b holds the hotel", || {
        route(&b, hotel.agent.as_str()) == Some(Route::Offline)
    });
    // The hotel's registration reaches b within the peers' advertisement interval.
    wait_until("b discovers the hotel, temporarily offline", || {
        discover(&b, &traveller, "book-hotel")
            .first()
            .is_some_and(|p| p.status() == pb::Status::TemporarilyOffline)
    });
    let (views, _) = b
        .control()
        .unwrap()
        .routes(Some(hotel.agent.as_str()), 1)
        .unwrap();
    assert_eq!(views[0].status, pb::Status::TemporarilyOffline);
    let id = traveller_conn
        .send(hotel.agent.as_str(), Bytes::from_static(b"a room?"))
        .unwrap();
    match traveller_conn.recv(WAIT).unwrap() {
        Some(Incoming::Nack(n)) => {
            assert_eq!(
                (n.message_id, n.reason()),
                (id, ErrorCode::DestinationOffline)
            )
        }
        other => panic!("{other:?}"),
    }

    // Maintenance ends: routed again, delivered.
    a.control()
        .unwrap()
        .set_status(pb::Status::Running)
        .unwrap();
    wait_until("b routes to the hotel again", || {
        route(&b, hotel.agent.as_str()) == Some(Route::Peer { peer: 0 })
    });
    let deadline = Instant::now() + WAIT;
    loop {
        let id = traveller_conn
            .send(hotel.agent.as_str(), Bytes::from_static(b"a room?"))
            .unwrap();
        match hotel_conn.recv(Duration::from_millis(500)).unwrap() {
            Some(Incoming::Message(m, _)) if m.message_id == id => break,
            _ => assert!(
                Instant::now() < deadline,
                "never delivered after maintenance"
            ),
        }
    }
    drop((hotel_conn, traveller_conn));
    for n in [b, a] {
        n.stop();
    }
}

/// The certificate `node`'s registry presents to a TLS client now: its serial.
fn presented_serial(node: &Node, who: &Credentials) -> Vec<u8> {
    use agw_aca::tls::CertificateChecker;
    let config = demo::client_config(node, who).unwrap();
    let name = rustls::pki_types::ServerName::try_from("gateway.invalid").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = std::net::TcpStream::connect(node.addresses().registry).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let chain: Vec<Vec<u8>> = conn
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect();
    let checker = CertificateChecker::new(node.authority.trust_anchor(), &[]).unwrap();
    checker
        .check(&chain, std::time::SystemTime::now())
        .unwrap()
        .serial
}

#[test]
fn a_running_gateway_renews_its_certificate_and_presents_the_new_one() {
    use agw_controlplane::node::NodeConfig;
    let dir = tempfile::tempdir().unwrap();
    // Gateway certificates of 60 s: with their 5 minutes of backdating, 70% of the lifetime
    // has passed as soon as one is issued, so a renewal is due at once (on the real clock,
    // which TLS checks).
    let node = Node::start(NodeConfig {
        gateway_validity: Duration::from_secs(60),
        ..NodeConfig::on_loopback(
            agw_proto::identity::Domain::new("a.example").unwrap(),
            "a1",
            dir.path().join("a"),
        )
    })
    .unwrap();
    let alice = demo::certify(&node, "alice").unwrap();
    let (first, _) = node.certificate().unwrap();
    assert_eq!(presented_serial(&node, &alice), first);

    let renewed = node
        .renew_certificate_if_due(std::time::SystemTime::now())
        .unwrap()
        .expect("due");
    assert_ne!(renewed.serial, first);
    assert_eq!(node.certificate().unwrap().0, renewed.serial);
    // The registry's TLS server, made at start, presents the new certificate.
    assert_eq!(presented_serial(&node, &alice), renewed.serial);
    // The key is the same: the authority kept the identity on it.
    let status = node
        .authority
        .status(&renewed.serial, std::time::SystemTime::now())
        .unwrap();
    assert!(
        matches!(status, agw_aca::CertificateStatus::Valid { .. }),
        "{status:?}"
    );
    node.stop();
}

#[test]
fn a_revoked_peer_is_cut_off_within_a_second_of_its_crl() {
    use agw_controlplane::peering::session::SessionState;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = demo::chain(dir.path(), &["a", "b"], 1).unwrap().into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let alice = demo::certify(&a, "alice").unwrap();
    let bob = demo::certify(&b, "bob").unwrap();
    let mut from = AgentConnection::connect(a.addresses().agents, alice.clone(), WAIT).unwrap();
    let mut to = AgentConnection::connect(b.addresses().agents, bob.clone(), WAIT).unwrap();
    // Relay links (both directions) and alice: what a has open.
    let open = || a.dataplane.totals().connections_open;
    wait_until("a routes to bob over its links", || {
        route(&a, bob.agent.as_str()) == Some(Route::Peer { peer: 0 }) && open() == 3
    });
    let id = from
        .send(bob.agent.as_str(), Bytes::from_static(b"hello"))
        .unwrap();
    match to.recv(WAIT).unwrap() {
        Some(Incoming::Message(m, _)) => assert_eq!(m.message_id, id),
        other => panic!("{other:?}"),
    }
    // a learned b's CRL from the distribution point b's certificate names, on its own.
    wait_until("a fetched b.example's CRL", || {
        a.peer_crls()
            .get("b.example")
            .is_some_and(|c| c.fetched.is_some() && c.revoked == 0)
    });
    let b_up = || {
        a.control().unwrap().peering().unwrap().neighbours()[0].state == SessionState::Established
    };
    assert!(b_up());

    // b's own authority revokes b's gateway certificate; a hears of it at its next fetch (an
    // operator's reload asks for one now).
    let (serial, _) = b.certificate().unwrap();
    b.authority
        .revoke_by_operator(
            &serial,
            pb::RevocationReason::KeyCompromise as i32,
            std::time::SystemTime::now(),
        )
        .unwrap();
    let start = Instant::now();
    a.refresh_crls();
    while b_up() || open() > 1 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "b still connected after a second: session up {}, {} open",
            b_up(),
            open()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let cut_after = start.elapsed();
    assert_eq!(a.peer_crls()["b.example"].revoked, 1);
    // Operators see it in the metrics.
    let metrics = agw_controlplane::metrics::render(&agw_controlplane::metrics::MetricsSources {
        counters: a.dataplane.counters_handle(),
        neighbours: None,
        endpoints: Vec::new(),
        registry: None,
        peer_crls: a.peer_crl_view(),
        translation: None,
    });
    assert!(
        metrics.contains("agw_peer_crl_revoked{domain=\"b.example\"} 1")
            && metrics.contains("agw_peer_crl_fetch_failing{domain=\"b.example\"} 0"),
        "{metrics}"
    );
    // b keeps dialling with its revoked certificate: every handshake is refused.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!b_up());
    assert_eq!(open(), 1);
    assert_ne!(route(&a, bob.agent.as_str()), Some(Route::Peer { peer: 0 }));
    eprintln!("revoked peer cut off {cut_after:?} after the refresh");
    drop((from, to));
    for n in [b, a] {
        n.stop();
    }
}
