//! MQTT agents on the agent port, with clients we did not write: `mosquitto_pub` and
//! `mosquitto_sub` (MQTT 3.1.1 and 5) and Eclipse paho-mqtt (MQTT 5), over TLS with the agent's
//! ACA certificate, talking with a native SDK agent through one gateway: the inbox, QoS 1
//! mapped to the destination's ACK and the gateway's NACK (a reason code and the error topic),
//! request and response by MQTT 5 correlation data, and the refusals (no certificate,
//! plaintext, a revoked certificate).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

mod common;

use agw_controlplane::node::{Node, NodeConfig};
use agw_proto::{DEFAULT_HOP_LIMIT, identity::Domain, pb};
use agw_sdk::agent::{AgentConnection, Credentials, Incoming};
use bytes::Bytes;
use common::{PemFiles as Files, certify, mosquitto, pem_files as files};

const WAIT: Duration = Duration::from_secs(10);

fn finish(child: Child, within: Duration) -> Output {
    let start = Instant::now();
    let mut child = child;
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {within:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A message `bob` receives within [`WAIT`] (heartbeat replies skipped).
fn receive(bob: &mut AgentConnection) -> pb::AgentMessage {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        match bob.recv(Duration::from_millis(200)).unwrap() {
            Some(Incoming::Message(m, _)) => return m,
            Some(Incoming::HeartbeatAck(_)) | None => {}
            other => panic!("{other:?}"),
        }
    }
    panic!("nothing arrived");
}

/// A gateway, alice (an MQTT client, her files written) and bob (a native agent, connected).
struct World {
    dir: tempfile::TempDir,
    node: Node,
    port: u16,
    alice: Arc<Credentials>,
    bob: Arc<Credentials>,
    f: Files,
    native: AgentConnection,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(NodeConfig::on_loopback(
        Domain::new("iot.example").unwrap(),
        "agw-1",
        data.clone(),
    ))
    .unwrap();
    let alice = certify(&node, "alice", &[]);
    let bob = certify(&node, "bob", &[]);
    let f = files(dir.path(), &data, &alice, "alice");
    let native = AgentConnection::connect(node.addresses().agents, bob.clone(), WAIT).unwrap();
    World {
        port: node.addresses().agents.port(),
        dir,
        node,
        alice,
        bob,
        f,
        native,
    }
}

#[test]
fn mosquitto_clients_talk_with_a_native_agent_through_the_gateway() {
    let World {
        dir,
        node,
        port,
        alice,
        bob,
        f,
        mut native,
    } = world();
    let data = dir.path().join("data");

    // MQTT 3.1.1, QoS 1, to bob: bob gets it from alice, marked as MQTT; mosquitto_pub's
    // PUBACK waits for bob's ACK, so it exits only once bob acknowledged.
    let topic = format!("agw/to/{}", bob.agent);
    let publish = mosquitto("mosquitto_pub", port, &f, "mqttv311")
        .args(["-q", "1", "-t", &topic, "-m", "hello bob"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let m = receive(&mut native);
    assert_eq!(
        (m.source.as_str(), &m.payload[..]),
        (alice.agent.as_str(), &b"hello bob"[..])
    );
    assert_eq!(m.source_protocol, pb::Protocol::Mqtt as i32);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        publish.try_wait_pending(),
        "mosquitto_pub finished before bob's ACK"
    );
    native.ack(&m).unwrap();
    let out = finish(publish, WAIT);
    assert!(out.status.success(), "{out:?}");

    // MQTT 5, subscribed to the inbox at QoS 1: bob's message arrives on
    // agw/inbox/<bob>, and mosquitto_sub's PUBACK comes back to bob as an ACK.
    let subscribe = mosquitto("mosquitto_sub", port, &f, "mqttv5")
        .args(["-q", "1", "-t", "agw/inbox/#", "-C", "1", "-v", "-W", "20"])
        .args(["-F", "%t %p %R"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until alice is attached, bob's messages are NACKed: send until one is ACKed.
    let start = Instant::now();
    let acked = loop {
        assert!(
            start.elapsed() < WAIT,
            "mosquitto_sub never got bob's message"
        );
        let id = native
            .send(alice.agent.as_str(), Bytes::from_static(b"hello alice"))
            .unwrap();
        match native.recv(Duration::from_millis(500)).unwrap() {
            Some(Incoming::Ack(a)) if a.message_id == id => break a,
            Some(Incoming::Nack(_)) => std::thread::sleep(Duration::from_millis(100)),
            _ => {}
        }
    };
    assert_eq!(acked.source, alice.agent.as_str());
    let out = finish(subscribe, WAIT);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.trim(),
        format!("agw/inbox/{} hello alice agw/to/{}", bob.agent, bob.agent),
        "{out:?}"
    );

    // Without a client certificate: the TLS handshake fails and nothing is relayed.
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--cafile"])
        .arg(&f.ca)
        .args(["-t", &topic, "-m", "anonymous", "-q", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");

    // A revoked certificate: its MQTT connection is refused (CONNACK "not authorized").
    let carol = certify(&node, "carol", &[]);
    let fc = files(dir.path(), &data, &carol, "carol");
    node.authority
        .revoke_identity(
            carol.agent.as_str(),
            pb::RevocationReason::KeyCompromise as i32,
            SystemTime::now(),
        )
        .unwrap();
    node.apply_revocations();
    let out = mosquitto("mosquitto_pub", port, &fc, "mqttv5")
        .args(["-t", &topic, "-m", "revoked", "-q", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.to_lowercase().contains("not authorized") || said.contains("handshake"),
        "{said}"
    );
    match native.recv(Duration::from_millis(300)).unwrap() {
        None | Some(Incoming::HeartbeatAck(_)) => {}
        other => panic!("a revoked agent's message got through: {other:?}"),
    }
}

#[test]
fn paho_mqtt_5_hears_nacks_and_gets_replies_on_its_response_topic() {
    // The directory and the gateway live to the end of the test.
    let World {
        dir: _dir,
        node: _node,
        port,
        alice,
        bob,
        f,
        native,
    } = world();
    let (mut writer, mut reader) = native.split();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mqtt/paho_v5.py");
    let paho = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string()])
        .args([&f.ca, &f.cert, &f.key])
        .arg(bob.agent.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Bob answers the question: ACK, then a reply carrying the request's correlation data.
    let start = Instant::now();
    let question = loop {
        assert!(start.elapsed() < WAIT * 2, "no question came");
        match reader.recv() {
            Ok(Incoming::Message(m, _)) => break m,
            Ok(_) => {}
            Err(agw_sdk::agent::AgentError::Io(_)) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(&question.payload[..], b"what time is it?");
    assert_eq!(question.content_type, "text/plain");
    assert_eq!(&question.correlation[..], b"question-1");
    writer.ack(&question).unwrap();
    let reply = pb::AgentMessage {
        destination: question.source.clone(),
        source: bob.agent.to_string(),
        message_id: 1,
        correlation: question.correlation.clone(),
        payload: Bytes::from_static(b"teatime"),
        ..Default::default()
    };
    writer.queue_raw(&reply, DEFAULT_HOP_LIMIT).unwrap();
    writer.flush().unwrap();

    let out = finish(paho, WAIT * 3);
    assert!(out.status.success(), "{out:?}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["connack"], "Success", "{seen}");
    assert_eq!(seen["suback"][0], "Granted QoS 1", "{seen}");
    // QoS 1 to an agent that does not exist: a failure code, the gateway's reason...
    assert!(
        seen["nack_puback"]["code"].as_u64().unwrap() >= 0x80,
        "{seen}"
    );
    let reason = seen["nack_puback"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("DESTINATION_OFFLINE") || reason.starts_with("NO_ROUTE"),
        "{seen}"
    );
    // ...and the error topic.
    assert_eq!(seen["error_topic"]["topic"], "agw/errors");
    assert_eq!(
        seen["error_topic"]["body"]["destination"],
        format!("{}", alice.agent).replace("/alice", "/nobody")
    );
    // The reply on the request's response topic, with its correlation data.
    assert_eq!(seen["reply"]["topic"], "paho/replies", "{seen}");
    assert_eq!(seen["reply"]["payload"], "teatime");
    assert_eq!(seen["reply"]["correlation"], "question-1");
    assert_eq!(
        seen["request_puback"], 0,
        "bob's ACK is a successful PUBACK"
    );
}

/// A child still running.
trait Pending {
    fn try_wait_pending(&self) -> bool;
}

impl Pending for Child {
    fn try_wait_pending(&self) -> bool {
        // `try_wait` needs `&mut`; the process table answers without reaping.
        Path::new(&format!("/proc/{}", self.id())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.id()))
                .unwrap_or_default()
                .contains(") Z ")
    }
}
