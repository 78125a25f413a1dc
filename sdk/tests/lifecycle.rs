//! One `Agent` through its whole life against a whole gateway on loopback (authority, registry,
//! relay, as the daemon runs them): enroll, register, update, discover, message and ACK,
//! heartbeats that keep an idle agent online while a silent one goes offline, renewal while
//! connected (the connection stays, the next one presents the new certificate), refusals with
//! their codes, and deregistration revoking the certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use agw_controlplane::node::{Node, NodeConfig};
use agw_dataplane::{access::AccessConfig, routing::Route};
use agw_proto::{
    identity::{AgentId, Domain},
    pb::{self, ErrorCode},
};
use agw_sdk::{
    agent::{AccessOptions, AgentConnection, AgentError, Incoming},
    lifecycle::{self, Agent},
};
use bytes::Bytes;

const WAIT: Duration = Duration::from_secs(5);

fn next(agent: &mut Agent) -> Incoming {
    let start = Instant::now();
    while start.elapsed() < WAIT * 2 {
        if let Some(got) = agent.recv().unwrap() {
            return got;
        }
    }
    panic!("nothing arrived");
}

#[test]
fn an_agent_lives_its_whole_life_through_one_type() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig {
        // Short timers: heartbeats every 200 ms, offline after 600 ms of silence.
        access: AccessConfig {
            heartbeat_interval: Duration::from_millis(200),
            hold_time: Duration::from_millis(600),
            ..AccessConfig::default()
        },
        ..NodeConfig::on_loopback(
            Domain::new("travel.example").unwrap(),
            "agw-1",
            dir.path().join("data"),
        )
    })
    .unwrap();
    let domain = lifecycle::Domain {
        gateway: node.dataplane.local_addr(),
        registry: node.addresses().registry,
        aca: node.addresses().aca,
        other_gateways: Vec::new(),
    };
    let token = node.enrollment_token("Example").unwrap().to_owned();
    let enroll = |name: &str, options: AccessOptions| {
        let id = AgentId::parse(&format!("spiffe://travel.example/agent/{name}")).unwrap();
        Agent::enroll(id, "Example", &token, domain.clone(), options, WAIT).unwrap()
    };
    let mut hotel = enroll("hotel", AccessOptions::default());
    let mut traveller = enroll("traveller", AccessOptions::default());
    // A wrong token: refused with the authority's code, nothing connected.
    let squatter = Agent::enroll(
        AgentId::parse("spiffe://travel.example/agent/squatter").unwrap(),
        "Example",
        "not-the-token",
        domain.clone(),
        AccessOptions::default(),
        WAIT,
    );
    assert!(
        matches!(&squatter, Err(AgentError::Certificate(e)) if e.to_string().contains("ENROLLMENT")),
        "{squatter:?}"
    );

    // Register, update, discover.
    let profile = pb::AgentProfile {
        description: "Rooms in Lisbon".into(),
        capabilities: vec!["book-hotel".into()],
        protocols: vec![pb::Protocol::Native as i32],
        address: domain.gateway.to_string(),
        ..Default::default()
    };
    let stored = hotel.register(profile.clone()).unwrap();
    assert_eq!(stored.agent, hotel.id().as_str());
    assert!(!stored.resource_id.is_empty());
    let updated = hotel
        .update(
            &stored.resource_id,
            pb::AgentProfile {
                description: "Rooms in Lisbon and Porto".into(),
                ..profile
            },
        )
        .unwrap();
    assert_eq!(updated.version, stored.version + 1);
    let found = traveller
        .discover(pb::DiscoverRequest {
            request_id: 1,
            capabilities: vec!["book-hotel".into()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].agent.as_str(), found[0].description.as_str()),
        (hotel.id().as_str(), "Rooms in Lisbon and Porto")
    );
    // Refused with the registry's code: registering a second profile as the same agent.
    match hotel.register(pb::AgentProfile {
        capabilities: vec!["x".into()],
        address: "x".into(),
        ..Default::default()
    }) {
        Err(AgentError::Refused { code, .. }) => assert_ne!(code, ErrorCode::Unspecified),
        other => panic!("{other:?}"),
    }

    // A message and its ACK.
    let id = traveller
        .send(pb::AgentMessage {
            destination: hotel.id().to_string(),
            payload: Bytes::from_static(b"a room for two"),
            ..Default::default()
        })
        .unwrap();
    let Incoming::Message(m, _) = next(&mut hotel) else {
        panic!("no message")
    };
    assert_eq!((m.message_id, &m.payload[..]), (id, &b"a room for two"[..]));
    hotel.ack(&m).unwrap();
    assert!(matches!(next(&mut traveller), Incoming::Ack(a) if a.message_id == id));

    // Idle for 2 s (more than three hold times): the agents' own heartbeats keep them
    // online; a bare connection that sends none goes offline.
    let bare_id = AgentId::parse("spiffe://travel.example/agent/bare").unwrap();
    let bare = Agent::enroll(
        bare_id.clone(),
        "Example",
        &token,
        domain.clone(),
        AccessOptions::default(),
        WAIT,
    )
    .unwrap();
    let bare_credentials = bare.credentials().clone();
    drop(bare);
    let _silent = AgentConnection::connect(domain.gateway, bare_credentials, WAIT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(matches!(
        node.dataplane.route_of(hotel.id().as_str()),
        Some(Route::Local { .. })
    ));
    assert!(!matches!(
        node.dataplane.route_of(bare_id.as_str()),
        Some(Route::Local { .. })
    ));

    // Renewal while connected: the connection carries on, the next one presents the new
    // certificate.
    let before = hotel.credentials().certificate.serial.clone();
    assert!(!hotel.renewal_due(SystemTime::now()));
    hotel.renew().unwrap();
    assert_ne!(hotel.credentials().certificate.serial, before);
    let id = traveller
        .send(pb::AgentMessage {
            destination: hotel.id().to_string(),
            payload: Bytes::from_static(b"still there?"),
            ..Default::default()
        })
        .unwrap();
    assert!(matches!(next(&mut hotel), Incoming::Message(m, _) if m.message_id == id));
    hotel.reconnect().unwrap();
    let id = traveller
        .send(pb::AgentMessage {
            destination: hotel.id().to_string(),
            payload: Bytes::from_static(b"and now?"),
            ..Default::default()
        })
        .unwrap();
    assert!(matches!(next(&mut hotel), Incoming::Message(m, _) if m.message_id == id));

    // Deregistration revokes the certificate: it cannot come back with it.
    let credentials = hotel.credentials().clone();
    hotel.deregister(&stored.resource_id).unwrap();
    node.apply_revocations();
    let back = AgentConnection::connect(domain.gateway, credentials, WAIT);
    assert!(
        back.is_err(),
        "a deregistered agent's certificate still opens access"
    );
    drop(traveller);
    node.stop();
}
