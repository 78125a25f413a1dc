//! Running `agw-agent` as a person at a shell does, for the CLI's tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::{
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use agw_controlplane::node::{Node, NodeConfig};
use agw_proto::identity::{AgentId, Domain};
use agw_sdk::{
    agent::{AccessOptions, Credentials},
    lifecycle::{self, Agent},
};

pub const WAIT: Duration = Duration::from_secs(5);

/// A whole gateway of travel.example on loopback (authority, registry, relay), as the daemon
/// runs it, and what its agents need to reach it.
pub struct Gateway {
    pub node: Node,
    pub domain: lifecycle::Domain,
    pub token: String,
}

impl Gateway {
    pub fn start(dir: &Path) -> Gateway {
        let node = Node::start(NodeConfig::on_loopback(
            Domain::new("travel.example").unwrap(),
            "agw-1",
            dir.join("data"),
        ))
        .unwrap();
        let domain = lifecycle::Domain {
            gateway: node.dataplane.local_addr(),
            registry: node.addresses().registry,
            aca: node.addresses().aca,
            other_gateways: Vec::new(),
        };
        let token = node.enrollment_token("Example").unwrap().to_owned();
        Gateway {
            node,
            domain,
            token,
        }
    }

    pub fn enroll(&self, name: &str) -> Agent {
        let id = AgentId::parse(&format!("spiffe://travel.example/agent/{name}")).unwrap();
        Agent::enroll(
            id,
            "Example",
            &self.token,
            self.domain.clone(),
            AccessOptions::default(),
            WAIT,
        )
        .unwrap()
    }

    pub fn connect(&self, credentials: &Arc<Credentials>) -> Agent {
        Agent::connect(
            credentials.clone(),
            self.domain.clone(),
            AccessOptions::default(),
            WAIT,
        )
        .unwrap()
    }

    /// Waits until the gateway routes `agent` locally (or no longer does).
    pub fn wait_online(&self, agent: &AgentId, online: bool) {
        let start = Instant::now();
        while matches!(
            self.node.dataplane.route_of(agent.as_str()),
            Some(agw_dataplane::routing::Route::Local { .. })
        ) != online
        {
            assert!(start.elapsed() < WAIT, "{agent} online: {online}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs agw-agent with the agent directory `dir`; its success, stdout and stderr.
pub fn agent(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agw-agent"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `text` as one JSON document (what `--json` prints).
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}
