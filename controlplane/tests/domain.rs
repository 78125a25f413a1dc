//! Two whole gateways of one domain on a real 3-member etcd cluster (issue 19): one
//! authority (the second gateway holds the first's files), one registry, so that an agent
//! certified and registered at gateway 1 is accepted and discovered at gateway 2, its name
//! cannot be taken at gateway 2, and its certificate revoked at gateway 1 is refused at
//! gateway 2 within a second, its live session there closed.

#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use agw_controlplane::node::{Node, NodeConfig};
use agw_demo as demo;
use agw_etcd::cluster::Cluster;
use agw_proto::{Message, identity::Domain, pb};
use agw_sdk::agent::{AgentConnection, Credentials};

const WAIT: Duration = Duration::from_secs(10);

fn gateway(data: &Path, name: &str, cluster: &Cluster) -> Result<Node, String> {
    let mut config = NodeConfig::on_loopback(
        Domain::new("travel.example").unwrap(),
        name,
        data.to_path_buf(),
    );
    config.etcd = cluster.endpoints();
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
    let mut registry = demo::registry(&one, &alice).unwrap();
    let register = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: alice.agent.to_string(),
            capabilities: vec!["book-hotel".into()],
            address: one.addresses().agents.to_string(),
            ..Default::default()
        }),
        certificate_chain: alice.certificate.chain.clone(),
    };
    match registry.request(register).unwrap() {
        Message::RegisterReply(r) => assert_eq!(r.error, None),
        other => panic!("{other:?}"),
    }
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
    AgentConnection::connect(two.addresses().agents, bob, WAIT).expect("bob");
    one.stop();
    two.stop();
}
