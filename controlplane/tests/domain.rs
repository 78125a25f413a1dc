//! Two whole gateways of one domain on a real 3-member etcd cluster (issue 19): one
//! authority (the second gateway holds the first's files), one registry, so that an agent
//! certified and registered at gateway 1 is accepted and discovered at gateway 2, its name
//! cannot be taken at gateway 2, and its certificate revoked at gateway 1 is refused at
//! gateway 2 within a second, its live session there closed.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

mod common;

use agw_controlplane::{
    node::{Node, NodeConfig, PeerEntry},
    peering::session::SessionState,
};
use agw_dataplane::routing::Route;
use agw_demo as demo;
use agw_etcd::cluster::Cluster;
use agw_proto::identity::AgentId;
use agw_proto::{
    Message,
    identity::{Domain, GatewayId},
    pb,
};
use agw_sdk::{
    agent::{AccessOptions, AgentConnection, Credentials, Incoming},
    lifecycle::{self, Agent},
    session::{Event, Outgoing, Sessions},
};
use bytes::Bytes;
use common::{register, route};

const WAIT: Duration = Duration::from_secs(10);

fn gateway(data: &Path, name: &str, cluster: &Cluster) -> Result<Node, String> {
    gateway_with(data, name, cluster, |_| {})
}

fn gateway_with(
    data: &Path,
    name: &str,
    cluster: &Cluster,
    configure: impl Fn(&mut NodeConfig),
) -> Result<Node, String> {
    let mut config = NodeConfig::on_loopback(
        Domain::new("travel.example").unwrap(),
        name,
        data.to_path_buf(),
    );
    config.etcd = cluster.endpoints();
    configure(&mut config);
    Node::start(config)
}

fn discover(node: &Node, who: &Credentials, capability: &str) -> Vec<String> {
    let mut conn = demo::registry(node, who).unwrap();
    let query = pb::DiscoverRequest {
        request_id: 1,
        capabilities: vec![capability.into()],
        ..Default::default()
    };
    match conn.request(query).unwrap() {
        Message::DiscoverReply(r) => r.agents.into_iter().map(|a| a.agent).collect(),
        other => panic!("{other:?}"),
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gateway 1, then gateway 2 holding its authority's files.
fn two_gateways(dir: &Path, cluster: &Cluster) -> (Node, Node) {
    two_gateways_with(dir, cluster, |_| {})
}

fn two_gateways_with(
    dir: &Path,
    cluster: &Cluster,
    configure: impl Fn(&mut NodeConfig),
) -> (Node, Node) {
    let (data_1, data_2) = (dir.join("gw-1"), dir.join("gw-2"));
    let one = gateway_with(&data_1, "gw-1", cluster, &configure).expect("gateway 1");
    std::fs::create_dir_all(data_2.join("aca")).unwrap();
    for f in ["ca.key.pem", "ca.chain.pem", "trust-anchor.pem"] {
        std::fs::copy(data_1.join("aca").join(f), data_2.join("aca").join(f)).unwrap();
    }
    let two = gateway_with(&data_2, "gw-2", cluster, &configure).expect("gateway 2");
    (one, two)
}

/// [`two_gateways`], once they found each other in etcd and linked.
fn linked_pair(dir: &Path, cluster: &Cluster) -> (Node, Node) {
    let (one, two) = two_gateways(dir, cluster);
    wait_until("the two gateways linked", Duration::from_secs(5), || {
        linked(&one, &two) && linked(&two, &one)
    });
    (one, two)
}

fn linked(node: &Node, other: &Node) -> bool {
    let peering = node.control().unwrap().peering().unwrap();
    peering
        .neighbours()
        .iter()
        .any(|n| n.gateway == other.gateway.as_str() && n.state == SessionState::Established)
}

/// Sends `payload` from `from` to `to`'s agent and returns it as `to` receives it. A link that
/// is still coming up NACKs `UNREACHABLE`, a route still on its way `NO_ROUTE`, an agent
/// between its failed gateway and the next `DESTINATION_OFFLINE` (the reasons the SDK's
/// sessions send again for): sent again then.
fn deliver(
    from: &mut AgentConnection,
    to: &mut AgentConnection,
    payload: &'static [u8],
) -> pb::AgentMessage {
    let deadline = Instant::now() + WAIT;
    let destination = to.agent().to_string();
    from.send(&destination, Bytes::from_static(payload))
        .unwrap();
    loop {
        assert!(Instant::now() < deadline, "no message");
        if let Some(Incoming::Message(m, _)) = to.recv(Duration::from_millis(50)).unwrap() {
            return m;
        }
        match from.recv(Duration::from_millis(50)).unwrap() {
            Some(Incoming::Nack(n))
                if matches!(
                    n.reason(),
                    pb::ErrorCode::Unreachable
                        | pb::ErrorCode::NoRoute
                        | pb::ErrorCode::DestinationOffline
                ) =>
            {
                std::thread::sleep(Duration::from_millis(50));
                from.send(&destination, Bytes::from_static(payload))
                    .unwrap();
            }
            Some(Incoming::Nack(n)) => panic!("NACK {n:?}"),
            _ => {}
        }
    }
}

#[test]
fn gateways_of_one_domain_find_each_other_and_relay_between_them() {
    let cluster = Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    // Nothing configured: they find each other in etcd and link.
    let (one, two) = linked_pair(dir.path(), &cluster);

    // Alice registered and attached at gateway 1, bob at gateway 2.
    let alice = demo::certify(&one, "alice").unwrap();
    let bob = demo::certify(&two, "bob").unwrap();
    register(&one, &alice, "book-hotel");
    // Alice knows both gateways of her domain, gateway 1 first.
    let gateways = [one.addresses().agents, two.addresses().agents];
    let mut at_one = AgentConnection::connect(&gateways[..], alice.clone(), WAIT).unwrap();
    assert_eq!(at_one.gateway(), &one.gateway);
    let mut at_two = AgentConnection::connect(two.addresses().agents, bob.clone(), WAIT).unwrap();
    wait_until("routes across the link", Duration::from_secs(2), || {
        matches!(route(&two, alice.agent.as_str()), Some(Route::Peer { .. }))
            && matches!(route(&one, bob.agent.as_str()), Some(Route::Peer { .. }))
    });

    // The domain's etcd says where each is attached.
    let attached = |agent: &Credentials| {
        let key = format!("/agw/travel.example/attached/{}", agent.agent);
        cluster.etcdctl_get(&key).unwrap()
    };
    wait_until(
        "etcd: alice at gateway 1, bob at 2",
        Duration::from_secs(1),
        || {
            attached(&alice).as_deref() == Some(one.gateway.as_str())
                && attached(&bob).as_deref() == Some(two.gateway.as_str())
        },
    );

    // A message entering at gateway 2 for alice at gateway 1 crosses the link, and back.
    let got = deliver(&mut at_two, &mut at_one, b"a room for two");
    assert_eq!(got.source, bob.agent.as_str());
    assert_eq!(&got.payload[..], b"a room for two");
    assert_eq!(
        &deliver(&mut at_one, &mut at_two, b"booked").payload[..],
        b"booked"
    );

    // Gateway 1 goes: alice's reconnection finds gateway 2 (gateway 1 no longer answers),
    // and bob's next message reaches her there, within 2 s of the failure.
    let failed_at = Instant::now();
    one.stop();
    at_one.reconnect().expect("alice fails over");
    assert_eq!(at_one.gateway(), &two.gateway);
    wait_until(
        "alice routed locally at gateway 2",
        Duration::from_secs(2),
        || matches!(route(&two, alice.agent.as_str()), Some(Route::Local { .. })),
    );
    let got = deliver(&mut at_two, &mut at_one, b"still there?");
    assert_eq!(&got.payload[..], b"still there?");
    let converged = failed_at.elapsed();
    eprintln!("gateway 1 failed: alice reached at gateway 2 after {converged:?}");
    assert!(converged < Duration::from_secs(2), "{converged:?}");
    // etcd follows her; bob leaving is gone from it.
    wait_until("etcd: alice at gateway 2", Duration::from_secs(1), || {
        attached(&alice).as_deref() == Some(two.gateway.as_str())
    });
    drop(at_two);
    wait_until("etcd: bob attached nowhere", Duration::from_secs(1), || {
        attached(&bob).is_none()
    });
    two.stop();
}

/// A peer entry for `gateway`: dialled at `address`, or waited for.
fn peer_entry(gateway: GatewayId, address: Option<std::net::SocketAddr>) -> PeerEntry {
    PeerEntry {
        gateway,
        address,
        export: None,
        max_summaries: None,
        hold_time: Duration::from_secs(9),
    }
}

/// The gateway of hotels.example (`h1`), another domain under `root`, dialling `peers`.
fn hotels(dir: &Path, root: &(PathBuf, PathBuf), peers: &[&Node]) -> Node {
    Node::start(NodeConfig {
        root: Some(root.clone()),
        peers: peers
            .iter()
            .map(|n| peer_entry(n.gateway.clone(), Some(n.addresses().peering)))
            .collect(),
        ..NodeConfig::on_loopback(Domain::new("hotels.example").unwrap(), "h1", dir.join("h1"))
    })
    .expect("hotels.example")
}

fn hotels_id() -> GatewayId {
    GatewayId::parse("spiffe://hotels.example/agw/h1").unwrap()
}

#[test]
fn another_domain_reaches_each_agent_through_the_gateway_it_is_attached_to() {
    let cluster = Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let root = common::federation_root(dir.path());
    // hotels.example peers with both gateways of travel.example (they wait, it dials).
    let (one, two) = two_gateways_with(dir.path(), &cluster, |c| {
        c.root = Some(root.clone());
        c.peers = vec![peer_entry(hotels_id(), None)];
    });
    let h = hotels(dir.path(), &root, &[&one, &two]);
    wait_until("every session up", Duration::from_secs(5), || {
        linked(&h, &one) && linked(&h, &two) && linked(&one, &two) && linked(&two, &one)
    });

    // Alice, registered and attached at gateway 1: hotels.example routes to her through it
    // (its peer 0), not through gateway 2, which would relay over the sibling link.
    let alice = demo::certify(&one, "alice").unwrap();
    register(&one, &alice, "travel-agent");
    let at_one = AgentConnection::connect(one.addresses().agents, alice.clone(), WAIT).unwrap();
    wait_until(
        "hotels.example routes through gateway 1",
        Duration::from_secs(2),
        || route(&h, alice.agent.as_str()) == Some(Route::Peer { peer: 0 }),
    );

    // She moves to gateway 2: hotels.example routes through gateway 2 (its peer 1) within
    // 2 s, and its agent reaches her there.
    let moved = Instant::now();
    drop(at_one);
    let mut at_two = AgentConnection::connect(two.addresses().agents, alice.clone(), WAIT).unwrap();
    wait_until(
        "hotels.example routes through gateway 2",
        Duration::from_secs(2),
        || route(&h, alice.agent.as_str()) == Some(Route::Peer { peer: 1 }),
    );
    eprintln!(
        "alice moved: hotels.example routed to her new gateway after {:?}",
        moved.elapsed()
    );
    let guest = demo::certify(&h, "guest").unwrap();
    let mut at_h = AgentConnection::connect(h.addresses().agents, guest.clone(), WAIT).unwrap();
    let got = deliver(&mut at_h, &mut at_two, b"a room with a view");
    assert_eq!(got.source, guest.agent.as_str());
    for n in [h, one, two] {
        n.stop();
    }
}

/// Certifies a new agent at `node` within 10 s. A refused application may still be applied
/// later (etcd had it proposed), so each try is for a new name (`<name>1`, `<name>2`, ...).
fn certified_within(node: &Node, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 1.. {
        match demo::certify(node, &format!("{name}{attempt}")) {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no certificate: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_domain_keeps_relaying_when_etcd_loses_a_member_and_then_quorum() {
    let mut cluster = Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = linked_pair(dir.path(), &cluster);
    let alice = demo::certify(&one, "alice").unwrap();
    let bob = demo::certify(&two, "bob").unwrap();
    register(&one, &alice, "book-hotel");
    let mut at_one = AgentConnection::connect(one.addresses().agents, alice.clone(), WAIT).unwrap();
    let mut at_two = AgentConnection::connect(two.addresses().agents, bob.clone(), WAIT).unwrap();
    deliver(&mut at_two, &mut at_one, b"before");

    // One member of three lost: nothing stops (a request the client had sent to the killed
    // member fails once; the next goes to another).
    cluster.kill(0);
    deliver(&mut at_two, &mut at_one, b"one member down");
    certified_within(&one, "carol");

    // Quorum lost: the relay goes on with what it knows, across the gateways' link too;
    // discovery answers; a certificate application is refused, saying why, within seconds.
    cluster.kill(1);
    deliver(&mut at_two, &mut at_one, b"no quorum");
    deliver(&mut at_one, &mut at_two, b"still relaying");
    assert_eq!(
        discover(&two, &bob, "book-hotel"),
        vec![alice.agent.to_string()]
    );
    let asked = Instant::now();
    let refused = demo::certify(&one, "dave").expect_err("no certificate without quorum");
    assert!(refused.contains("STORE_UNAVAILABLE"), "{refused}");
    let took = asked.elapsed();
    eprintln!("without quorum: an application refused after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Quorum back: the authority issues again.
    cluster.start_member(0).unwrap();
    cluster.start_member(1).unwrap();
    cluster.wait_writable(Duration::from_secs(20)).unwrap();
    certified_within(&two, "erin");
    deliver(&mut at_two, &mut at_one, b"after");
    for n in [one, two] {
        n.stop();
    }
}

#[test]
fn three_gateways_carry_another_domain_to_an_agent_wherever_it_is_attached() {
    let cluster = Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let root = common::federation_root(dir.path());
    // hotels.example peers with gateway 2 only.
    let configure = |c: &mut NodeConfig| c.root = Some(root.clone());
    let (one, two) = two_gateways_with(dir.path(), &cluster, |c| {
        configure(c);
        if c.name == "gw-2" {
            c.peers = vec![peer_entry(hotels_id(), None)];
        }
    });
    let data_3 = dir.path().join("gw-3");
    std::fs::create_dir_all(data_3.join("aca")).unwrap();
    for f in ["ca.key.pem", "ca.chain.pem", "trust-anchor.pem"] {
        let from = dir.path().join("gw-1").join("aca").join(f);
        std::fs::copy(from, data_3.join("aca").join(f)).unwrap();
    }
    let three = gateway_with(&data_3, "gw-3", &cluster, configure).expect("gateway 3");
    let h = hotels(dir.path(), &root, &[&two]);
    wait_until(
        "the domain's three gateways meshed, hotels at 2",
        WAIT,
        || {
            linked(&one, &two)
                && linked(&one, &three)
                && linked(&two, &three)
                && linked(&three, &one)
                && linked(&h, &two)
        },
    );

    // Alice at gateway 1: a guest of hotels.example reaches her through gateway 2.
    let alice = demo::certify(&one, "alice").unwrap();
    register(&one, &alice, "travel-agent");
    let guest = demo::certify(&h, "guest").unwrap();
    let mut at_h = AgentConnection::connect(h.addresses().agents, guest.clone(), WAIT).unwrap();
    let gateways = [one.addresses().agents, three.addresses().agents];
    let mut at_one = AgentConnection::connect(&gateways[..], alice.clone(), WAIT).unwrap();
    let got = deliver(&mut at_h, &mut at_one, b"through gateway 2");
    assert_eq!(got.source, guest.agent.as_str());

    // Gateway 1 fails: alice's reconnection lands at gateway 3, where the guest's next
    // message reaches her, still through gateway 2.
    one.stop();
    at_one.reconnect().expect("alice fails over");
    assert_eq!(at_one.gateway(), &three.gateway);
    let got = deliver(&mut at_h, &mut at_one, b"and now through gateway 3");
    assert_eq!(&got.payload[..], b"and now through gateway 3");
    for n in [h, two, three] {
        n.stop();
    }
}

/// The SDK's lifecycle agent `name` of the domain, enrolled at `home` and knowing `other`.
fn lifecycle_agent(home: &Node, other: &Node, name: &str) -> Agent {
    let domain = lifecycle::Domain {
        gateway: home.addresses().agents,
        registry: home.addresses().registry,
        aca: home.addresses().aca,
        other_gateways: vec![other.addresses().agents],
    };
    let id = AgentId::new(home.authority.domain(), name).unwrap();
    let token = home.enrollment_token("Example").unwrap().to_owned();
    Agent::enroll(
        id,
        "Example",
        &token,
        domain,
        AccessOptions::default(),
        WAIT,
    )
    .unwrap()
}

#[test]
fn a_session_goes_on_when_an_agent_s_gateway_fails() {
    let cluster = Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = linked_pair(dir.path(), &cluster);
    // The hotel at gateway 1, the traveller at gateway 2, each with its sessions' store.
    let mut hotel = Sessions::open(
        lifecycle_agent(&one, &two, "hotel"),
        &dir.path().join("h.redb"),
    )
    .unwrap();
    let mut traveller = Sessions::open(
        lifecycle_agent(&two, &one, "traveller"),
        &dir.path().join("t.redb"),
    )
    .unwrap();
    let session = traveller.start(hotel.agent().id(), "booking").unwrap();

    // Both drive their sessions until `done` says what they heard is enough.
    let mut heard: Vec<String> = Vec::new();
    let mut delivered = 0;
    let mut drive = |hotel: &mut Sessions,
                     traveller: &mut Sessions,
                     done: &dyn Fn(&[String], usize) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&heard, delivered) {
            assert!(
                Instant::now() < deadline,
                "heard {heard:?}, {delivered} delivered"
            );
            // The hotel's session mends a broken connection on its own (its next call).
            if let Ok(Some(Event::Message(m))) = hotel.next(Duration::from_millis(20)) {
                heard.push(String::from_utf8_lossy(m.payload()).into_owned());
            }
            if let Ok(Some(Event::Delivered { .. })) = traveller.next(Duration::from_millis(20)) {
                delivered += 1;
            }
        }
    };
    traveller
        .send(session, Outgoing::text("two nights"))
        .unwrap();
    drive(&mut hotel, &mut traveller, &|h, d| h.len() == 1 && d == 1);

    // Gateway 1 fails with the hotel on it; the traveller writes meanwhile (NACKed while
    // the hotel is away, kept, sent again). The hotel comes back at gateway 2 on its own and
    // gets the message exactly once; the traveller hears it delivered.
    one.stop();
    traveller
        .send(session, Outgoing::text("from friday"))
        .unwrap();
    drive(&mut hotel, &mut traveller, &|h, d| h.len() == 2 && d == 2);
    // Nothing more comes: no message twice.
    std::thread::sleep(Duration::from_millis(500));
    while let Ok(Some(event)) = hotel.next(Duration::from_millis(100)) {
        assert!(
            !matches!(event, Event::Message(_)),
            "a message twice: {event:?}"
        );
    }
    assert_eq!(heard, vec!["two nights", "from friday"]);
    two.stop();
}

#[test]
fn two_gateways_of_one_domain_share_authority_and_registry() {
    let cluster = Cluster::start(3).expect("etcd cluster");
    let dir = tempfile::tempdir().unwrap();
    let (data_1, data_2) = (dir.path().join("gw-1"), dir.path().join("gw-2"));
    let one = gateway(&data_1, "gw-1", &cluster).expect("gateway 1");

    // Gateway 2 without the domain's authority files would be a second authority.
    let refused = gateway(&data_2, "gw-2", &cluster).expect_err("a second authority");
    assert!(refused.contains("copy ca.key.pem"), "{refused}");
    std::fs::create_dir_all(data_2.join("aca")).unwrap();
    for f in ["ca.key.pem", "ca.chain.pem", "trust-anchor.pem"] {
        std::fs::copy(data_1.join("aca").join(f), data_2.join("aca").join(f)).unwrap();
    }
    let two = gateway(&data_2, "gw-2", &cluster).expect("gateway 2");

    // Certified and registered at gateway 1: discovered at gateway 2.
    let alice = demo::certify(&one, "alice").unwrap();
    let bob = demo::certify(&two, "bob").unwrap();
    register(&one, &alice, "book-hotel");
    let deadline = Instant::now() + Duration::from_secs(1);
    while discover(&two, &bob, "book-hotel") != vec![alice.agent.to_string()] {
        assert!(Instant::now() < deadline, "gateway 2 never found alice");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Her name is hers at gateway 2 too: another key applying for it is refused.
    let squatter = demo::certify(&two, "alice");
    assert!(squatter.is_err(), "alice's name taken at gateway 2");

    // Her certificate from gateway 1 opens an access session at gateway 2.
    let mut session = AgentConnection::connect(two.addresses().agents, alice.clone(), WAIT)
        .expect("alice at gateway 2");

    // Revoked at gateway 1: gateway 2 hears it (as the daemon does, on its revocation
    // channel), closes her session and refuses her next access, within a second.
    let revoked_at = Instant::now();
    one.authority
        .revoke_identity(
            alice.agent.as_str(),
            pb::RevocationReason::KeyCompromise as i32,
            SystemTime::now(),
        )
        .unwrap()
        .expect("alice had a live certificate");
    two.revocations()
        .recv_timeout(Duration::from_secs(1))
        .expect("gateway 2 hears the revocation");
    two.apply_revocations();
    let mut closed = false;
    while revoked_at.elapsed() < Duration::from_secs(1) {
        match session.recv(Duration::from_millis(50)) {
            Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => continue,
        }
    }
    assert!(closed, "alice's session at gateway 2 still open after 1 s");
    assert!(
        AgentConnection::connect(two.addresses().agents, alice.clone(), WAIT).is_err(),
        "a revoked certificate accepted at gateway 2"
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(2));

    // Bob, untouched, still gets through at gateway 2.
    AgentConnection::connect(two.addresses().agents, bob.clone(), WAIT).expect("bob");

    // Gateway 1 starts again on its own data: the same authority (etcd's record matches its
    // files), linked with gateway 2 again; alice's revocation holds there, and bob, certified
    // at gateway 2, gets through at gateway 1.
    one.stop();
    let one = gateway(&data_1, "gw-1", &cluster).expect("gateway 1 again on its data");
    assert!(
        AgentConnection::connect(one.addresses().agents, alice, WAIT).is_err(),
        "a revoked certificate accepted at gateway 1 after its restart"
    );
    AgentConnection::connect(one.addresses().agents, bob, WAIT).expect("bob at gateway 1");
    wait_until("linked again", Duration::from_secs(5), || {
        linked(&one, &two) && linked(&two, &one)
    });
    one.stop();
    two.stop();
}
