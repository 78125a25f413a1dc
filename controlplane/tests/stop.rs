//! A gateway embedded in a process (the demo, the load tool, tests) stops whole: after
//! `Node::stop` its ports refuse connections, its agents' connections are closed, none of its
//! threads is left, and it starts again at once on the same data directory and ports, where
//! its agents come back with their certificates.
//!
//! One test in this binary: it counts the process's threads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::TcpStream, sync::Arc, time::Duration};

use agw_controlplane::node::{Node, NodeConfig};
use agw_proto::identity::{AgentId, Domain};
use agw_sdk::{
    agent::{AgentConnection, AgentError, Credentials},
    connection::Connection,
};

const WAIT: Duration = Duration::from_secs(5);

fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig::on_loopback(
        Domain::new("travel.example").unwrap(),
        "agw-1",
        dir.join("data"),
    )
}

#[test]
fn a_stopped_gateway_lets_everything_go_and_starts_again_on_its_data_and_ports() {
    let before = threads();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).unwrap();
    let addresses = node.addresses().clone();
    let id = AgentId::parse("spiffe://travel.example/agent/hotel").unwrap();
    let mut aca = Connection::connect(addresses.aca, WAIT).unwrap();
    let token = node.enrollment_token("Example").unwrap().to_owned();
    let credentials =
        Arc::new(Credentials::enroll(id, "Example", &token, |app| aca.request(app)).unwrap());
    drop(aca);
    let mut agent = AgentConnection::connect(addresses.agents, credentials.clone(), WAIT).unwrap();

    node.stop();
    // The agent hears the connection end; the ports refuse at once.
    assert!(matches!(
        agent.recv(WAIT),
        Err(AgentError::Closed(_) | AgentError::Io(_))
    ));
    for (what, port) in [
        ("agents", addresses.agents),
        ("registry", addresses.registry),
        ("aca", addresses.aca),
    ] {
        assert!(
            TcpStream::connect(port).is_err(),
            "the {what} port still accepts"
        );
    }
    // No thread of the gateway's is left (shards, their I/O helpers, the registry, the
    // translation pool, the control plane).
    let start = std::time::Instant::now();
    while threads().len() > before.len() {
        assert!(
            start.elapsed() < WAIT,
            "left running: {:?} (before: {before:?})",
            threads()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Again, on the same data and ports: the agent's certificate is still good there.
    let node = Node::start(NodeConfig {
        agents: addresses.agents,
        registry: addresses.registry,
        aca: addresses.aca,
        ..config(dir.path())
    })
    .unwrap();
    AgentConnection::connect(addresses.agents, credentials, WAIT).unwrap();
    node.stop();
}
