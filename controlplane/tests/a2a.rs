//! A2A clients on the agent port, with a client we did not write: a2a-sdk 1.3.0 (its
//! JSON-RPC binding over HTTPS, the agent's ACA certificate as client certificate) talking
//! with a native SDK agent through one gateway: the agent card from the registry's profile,
//! a blocking and a streaming (SSE) message answered by the native agent's reply, the task
//! states, GetTask and CancelTask, and a message the gateway NACKs as a failed task with its
//! reason. Also the raw bytes of the refusals, with curl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

mod common;

use agw_controlplane::node::{Node, NodeConfig};
use agw_proto::{DEFAULT_HOP_LIMIT, identity::Domain, pb};
use agw_sdk::agent::{AgentConnection, AgentError, Credentials, Incoming};
use bytes::Bytes;
use common::{A2aServer, certify, free_port, pem_files};

const WAIT: Duration = Duration::from_secs(10);

/// A gateway of `hotel.example` on loopback, its data directory inside the returned one.
fn gateway() -> (tempfile::TempDir, PathBuf, Node) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Node::start(NodeConfig::on_loopback(
        Domain::new("hotel.example").unwrap(),
        "agw-1",
        data.clone(),
    ))
    .unwrap();
    (dir, data, node)
}

fn register(node: &Node, who: &Credentials, capabilities: &[&str]) {
    let profile = pb::AgentProfile {
        agent: who.agent.to_string(),
        description: "books rooms".into(),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        protocols: vec![pb::Protocol::Native as i32],
        languages: vec!["en".into(), "es".into()],
        address: "unused".into(),
        ..Default::default()
    };
    register_profile(node, who, profile);
}

/// Registers `profile` for `who` with the registry of `node`; returns its resource ID.
fn register_profile(node: &Node, who: &Credentials, profile: pb::AgentProfile) -> String {
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(profile),
        certificate_chain: who.certificate.chain.clone(),
    };
    let registrant = who.agent.to_string();
    node.registry
        .ask(move |r| r.register(&request, Some(&registrant), SystemTime::now()))
        .unwrap()
        .unwrap()
        .resource_id
}

#[test]
fn a2a_sdk_client_talks_with_a_native_agent_through_the_gateway() {
    a2a_sdk_client_talks_with_a_native_agent("JSONRPC");
}

#[test]
fn a2a_sdk_client_talks_over_the_http_json_binding_too() {
    a2a_sdk_client_talks_with_a_native_agent("HTTP+JSON");
}

#[test]
fn a2a_sdk_client_talks_over_the_grpc_binding_too() {
    a2a_sdk_client_talks_with_a_native_agent("GRPC");
}

/// a2a-sdk's client, let use only `binding`, against a native agent through the gateway.
fn a2a_sdk_client_talks_with_a_native_agent(binding: &str) {
    let (dir, data, node) = gateway();
    let alice = certify(&node, "alice", &[]);
    let bob = certify(&node, "bob", &[]);
    register(&node, &bob, &["book-hotel"]);
    let common::PemFiles { ca, cert, key } = pem_files(dir.path(), &data, &alice, "alice");
    let native = AgentConnection::connect(node.addresses().agents, bob.clone(), WAIT).unwrap();
    let (mut writer, mut reader) = native.split();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/a2a/a2a_client.py");
    let client = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &node.addresses().agents.port().to_string()])
        .args([&ca, &cert, &key])
        .args(["hotel.example/bob", "hotel.example/nobody", binding])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Bob answers two messages: ACK, then a reply whose correlation is the gateway's task ID.
    let mut asked = Vec::new();
    // The gateway ACKs each reply for the A2A client.
    let mut acked = 0;
    let start = Instant::now();
    while asked.len() < 2 {
        assert!(start.elapsed() < WAIT * 3, "bob was asked {asked:?}");
        let m = match reader.recv() {
            Ok(Incoming::Message(m, _)) => m,
            Ok(Incoming::Ack(ack)) => {
                assert!(ack.message_id >= 100);
                acked += 1;
                continue;
            }
            Ok(_) | Err(AgentError::Io(_)) => continue,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(m.source, alice.agent.to_string());
        assert_eq!(m.source_protocol, pb::Protocol::A2a as i32);
        assert!(!m.correlation.is_empty(), "a task ID as correlation");
        assert_ne!(m.session_id, 0, "the context is a session");
        writer.ack(&m).unwrap();
        let answer: &[u8] = if asked.is_empty() {
            b"Booked: room 12"
        } else {
            b"Breakfast included"
        };
        let reply = pb::AgentMessage {
            destination: m.source.clone(),
            source: bob.agent.to_string(),
            message_id: 100 + asked.len() as u64,
            session_id: m.session_id,
            correlation: m.correlation.clone(),
            content_type: "text/plain".into(),
            payload: Bytes::from_static(answer),
            ..Default::default()
        };
        writer.queue_raw(&reply, DEFAULT_HOP_LIMIT).unwrap();
        writer.flush().unwrap();
        asked.push(m);
    }
    // What the A2A client sent: a text part as text, a data part as JSON.
    assert_eq!(&asked[0].payload[..], b"Book a twin room");
    assert_eq!(asked[0].content_type, "text/plain");
    assert_eq!(asked[1].content_type, "application/json");
    let data_part: serde_json::Value = serde_json::from_slice(&asked[1].payload).unwrap();
    assert_eq!(data_part, serde_json::json!({ "breakfast": true }));
    assert_eq!(
        asked[0].session_id, asked[1].session_id,
        "one context, one session"
    );

    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The card: generated from bob's registry profile, served at bob's URL.
    let card = &seen["card"];
    assert_eq!(card["name"], "bob", "{card}");
    assert_eq!(card["description"], "books rooms");
    assert_eq!(card["skills"][0]["id"], "book-hotel");
    assert_eq!(card["capabilities"]["streaming"], true);
    let interface = &card["supportedInterfaces"][0];
    assert_eq!(interface["protocolBinding"], "JSONRPC");
    assert_eq!(
        card["supportedInterfaces"][1]["protocolBinding"],
        "HTTP+JSON"
    );
    // gRPC: the gateway's address, the agent as the tenant of every request.
    let grpc = &card["supportedInterfaces"][2];
    assert_eq!(grpc["protocolBinding"], "GRPC");
    assert_eq!(grpc["tenant"], "hotel.example/bob");
    assert!(
        interface["url"]
            .as_str()
            .unwrap()
            .ends_with("/a2a/hotel.example/bob"),
        "{interface}"
    );
    assert!(card["securitySchemes"]["mtls"]["mtlsSecurityScheme"].is_object());

    // Blocking: the task completed with bob's reply, as its status message and artifact.
    let blocking = &seen["blocking"];
    assert_eq!(blocking["state"], "TASK_STATE_COMPLETED", "{seen}");
    assert_eq!(blocking["context"], "trip-1");
    assert_eq!(blocking["reply"][0], "Booked: room 12");
    assert_eq!(blocking["artifact"][0], "Booked: room 12");

    // Streaming: every state as an SSE event, the last with the reply.
    assert_eq!(
        seen["streaming"]["states"],
        serde_json::json!([
            "TASK_STATE_SUBMITTED",
            "TASK_STATE_WORKING",
            "TASK_STATE_COMPLETED"
        ]),
        "{seen}"
    );
    assert_eq!(seen["streaming"]["reply"][0], "Breakfast included");

    // The task table: the question and the reply in its history; errors a2a-sdk maps.
    assert_eq!(seen["get_task"]["state"], "TASK_STATE_COMPLETED");
    assert_eq!(seen["get_task"]["history"], 2);
    assert_eq!(seen["cancel_finished"], "TaskNotCancelableError");
    assert_eq!(seen["get_unknown"], "TaskNotFoundError");

    // An agent nobody can reach: the gateway's NACK as a failed task, with its reason.
    let nacked = &seen["nacked"];
    assert_eq!(nacked["state"], "TASK_STATE_FAILED", "{seen}");
    let reason = nacked["reason"].as_str().unwrap();
    assert!(
        reason == "NO_ROUTE" || reason == "DESTINATION_OFFLINE",
        "{seen}"
    );
    assert!(nacked["text"][0].as_str().unwrap().starts_with(reason));

    // Bob's replies were acknowledged by the gateway for the A2A client.
    let start = Instant::now();
    while acked < 2 && start.elapsed() < WAIT {
        if let Ok(Incoming::Ack(ack)) = reader.recv() {
            assert!(ack.message_id >= 100);
            acked += 1;
        }
    }
    assert_eq!(acked, 2, "bob's replies were ACKed");
    assert!(node.dataplane.totals().a2a_connections >= 1);
}

#[test]
fn curl_sees_http_answers_and_refusals_on_the_agent_port() {
    let (dir, data, node) = gateway();
    let alice = certify(&node, "alice", &[]);
    let common::PemFiles { ca, cert, key } = pem_files(dir.path(), &data, &alice, "alice");
    let port = node.addresses().agents.port();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-i", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("https://127.0.0.1:{port}");
    // The gateway's own card, and an agent's (no profile: the route is all it knows).
    let answer = curl(&[&format!("{base}/.well-known/agent-card.json")]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"protocolBinding\":\"JSONRPC\""),
        "{answer}"
    );
    let answer = curl(&[&format!(
        "{base}/a2a/hotel.example/carol/.well-known/agent-card.json"
    )]);
    assert!(answer.contains("\"name\":\"carol\""), "{answer}");
    // Not JSON, not JSON-RPC, no such method: JSON-RPC errors.
    let post = |body: &str| {
        curl(&[
            "-H",
            "content-type: application/json",
            "--data",
            body,
            &format!("{base}/a2a/hotel.example/carol"),
        ])
    };
    assert!(post("{not json").contains("\"code\":-32700"));
    assert!(post("{\"id\":1}").contains("\"code\":-32600"));
    assert!(post("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Fly\"}").contains("\"code\":-32601"));
    assert!(
        post("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"SendMessage\",\"params\":{}}")
            .contains("\"code\":-32602")
    );
    // The HTTP+JSON binding: the same operations below the agent's URL, errors as HTTP
    // statuses with a google.rpc ErrorInfo carrying A2A's reason and the gateway's.
    let rest = |method: &str, operation: &str, body: &str| {
        let mut args = vec!["-X", method, "-H", "content-type: application/json"];
        if !body.is_empty() {
            args.extend(["--data", body]);
        }
        let url = format!("{base}/a2a/hotel.example/carol/{operation}");
        args.push(&url);
        curl(&args)
    };
    let answer = rest("POST", "message:send", "{}");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("\"reason\":\"INVALID_PARAMS\""), "{answer}");
    assert!(
        answer.contains("\"agw.reason\":\"MISSING_FIELD\""),
        "{answer}"
    );
    // An answer like any other: the connection (and its tasks) stays.
    assert!(!answer.contains("connection: close"), "{answer}");
    let answer = rest("GET", "tasks/no-such-task", "");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("\"reason\":\"TASK_NOT_FOUND\""), "{answer}");
    let answer = rest("GET", "tasks", "");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("UNSUPPORTED_OPERATION"), "{answer}");
    // Not an agent's path.
    let answer = curl(&[&format!("{base}/elsewhere")]);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // Without a client certificate the TLS handshake itself is refused.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg(format!("{base}/.well-known/agent-card.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Registers `who` as an A2A server agent at `url`, with the registry of `node`.
fn register_a2a_server(node: &Node, who: &Credentials, url: &str) -> String {
    let profile = pb::AgentProfile {
        agent: who.agent.to_string(),
        capabilities: vec!["book-hotel".into()],
        protocols: vec![pb::Protocol::A2a as i32],
        address: "unused".into(),
        a2a_url: url.to_owned(),
        ..Default::default()
    };
    register_profile(node, who, profile)
}

/// Waits until `node` routes to `who` on one of its own connections (its A2A server's).
fn await_local_route(node: &Node, who: &Credentials) {
    let start = Instant::now();
    while !matches!(
        node.dataplane.route_of(who.agent.as_str()),
        Some(agw_dataplane::routing::Route::Local { .. })
    ) {
        assert!(
            start.elapsed() < WAIT,
            "the gateway did not connect to the A2A server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `to` got for the message it sent with `id`: the ACK and reply, or the NACK.
fn outcome(reader: &mut agw_sdk::agent::Reader, id: u64) -> Result<pb::AgentMessage, pb::Nack> {
    let start = Instant::now();
    let mut acked = false;
    loop {
        assert!(start.elapsed() < WAIT * 2, "no answer to message {id}");
        match reader.recv() {
            Ok(Incoming::Ack(ack)) if ack.message_id == id => acked = true,
            Ok(Incoming::Message(m, _)) => {
                assert!(acked, "the reply came before the ACK");
                return Ok(m);
            }
            Ok(Incoming::Nack(n)) if n.message_id == id => return Err(n),
            Ok(_) | Err(AgentError::Io(_)) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_native_agent_and_an_a2a_client_reach_an_a2a_sdk_server_through_the_gateway() {
    let (dir, data, node) = gateway();
    let port = free_port();
    let mut server = Some(A2aServer::start(port, 1));
    // The hotel agent is an A2A server: it enrolls and registers its URL, and never connects.
    let hotel = certify(&node, "hotel", &[]);
    let resource = register_a2a_server(&node, &hotel, &format!("http://127.0.0.1:{port}/"));
    await_local_route(&node, &hotel);

    let alice = certify(&node, "alice", &[]);
    let native = AgentConnection::connect(node.addresses().agents, alice.clone(), WAIT).unwrap();
    let (mut writer, mut reader) = native.split();
    let mut send = |id: u64, content_type: &str, payload: &'static [u8]| {
        let m = pb::AgentMessage {
            destination: hotel.agent.to_string(),
            source: alice.agent.to_string(),
            message_id: id,
            session_id: 42,
            correlation: Bytes::from(format!("ask-{id}")),
            content_type: content_type.into(),
            payload: Bytes::from_static(payload),
            ..Default::default()
        };
        writer.queue_raw(&m, DEFAULT_HOP_LIMIT).unwrap();
        writer.flush().unwrap();
    };

    // A message answered by a message, a task's artifact, JSON as a data part.
    send(1, "text/plain", b"hello");
    let reply = outcome(&mut reader, 1).unwrap();
    assert_eq!(&reply.payload[..], b"echo: hello");
    assert_eq!(reply.source, hotel.agent.to_string());
    assert_eq!(&reply.correlation[..], b"ask-1");
    assert_eq!(reply.session_id, 42);
    assert_eq!(reply.source_protocol, pb::Protocol::A2a as i32);
    send(2, "text/plain", b"task one");
    assert_eq!(
        &outcome(&mut reader, 2).unwrap().payload[..],
        b"booked: task one"
    );
    send(3, "application/json", br#"{"nights":2}"#);
    let reply = outcome(&mut reader, 3).unwrap();
    assert_eq!(reply.content_type, "application/json");
    let nights: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    // a2a-sdk holds data parts as protobuf Structs: numbers come back as doubles.
    assert_eq!(nights["nights"].as_f64(), Some(2.0), "{nights}");
    // A failed task is a NACK with the server's words.
    send(4, "text/plain", b"fail now");
    let nack = outcome(&mut reader, 4).unwrap_err();
    assert_eq!(nack.reason(), pb::ErrorCode::Internal);
    assert!(nack.detail.contains("no rooms left"), "{}", nack.detail);

    // The server closes idle connections after 1 s: the route stays, the next message is
    // carried on a new connection.
    std::thread::sleep(Duration::from_millis(2500));
    send(5, "text/plain", b"still there?");
    assert_eq!(
        &outcome(&mut reader, 5).unwrap().payload[..],
        b"echo: still there?"
    );
    assert!(node.dataplane.totals().a2a_server_connections >= 2);

    // An A2A client of the gateway reaches the A2A server too (A2A to A2A, through the relay).
    let common::PemFiles { ca, cert, key } = pem_files(dir.path(), &data, &alice, "alice2");
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-H", "content-type: application/json", "--data"])
        .arg(r#"{"jsonrpc":"2.0","id":7,"method":"SendMessage","params":{"message":{"messageId":"c-1","role":"ROLE_USER","parts":[{"text":"from curl"}]}}}"#)
        .arg(format!(
            "https://127.0.0.1:{}/a2a/hotel.example/hotel",
            node.addresses().agents.port()
        ))
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["result"]["task"]["status"]["state"], "TASK_STATE_COMPLETED",
        "{answer}"
    );
    assert_eq!(
        answer["result"]["task"]["status"]["message"]["parts"][0]["text"],
        "echo: from curl"
    );

    // The server stops: the route turns offline, messages are NACKed; it comes back, and so
    // does the route.
    server.take();
    let start = Instant::now();
    let mut id = 10;
    let refused = loop {
        assert!(
            start.elapsed() < WAIT,
            "no refusal while the A2A server is down"
        );
        send(id, "text/plain", b"anyone?");
        match outcome(&mut reader, id) {
            Err(n) => break n,
            Ok(_) => {
                id += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(
        refused.reason(),
        pb::ErrorCode::DestinationOffline,
        "{}",
        refused.detail
    );
    let _server = A2aServer::start(port, 1);
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < WAIT * 2,
            "the A2A server's route did not come back"
        );
        id += 1;
        send(id, "text/plain", b"back");
        if let Ok(reply) = outcome(&mut reader, id) {
            assert_eq!(&reply.payload[..], b"echo: back");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Deregistered: the gateway stops calling it, and its route goes (not left offline).
    let owner = hotel.agent.to_string();
    node.registry
        .ask(move |r| r.deregister(&resource, &owner))
        .unwrap()
        .unwrap();
    let start = Instant::now();
    while node.dataplane.route_of(hotel.agent.as_str()).is_some() {
        assert!(
            start.elapsed() < WAIT,
            "the deregistered A2A server kept its route"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The issue's scenario with clients we did not write: an MQTT agent of domain a (paho-mqtt)
/// asks an A2A agent of domain c (an a2a-sdk server the c gateway calls) through gateway b;
/// the A2A agent asks back (input required), and a native agent of b, in the same session,
/// answers it and completes the very task.
#[test]
fn an_mqtt_agent_asks_an_a2a_agent_two_domains_away_and_a_native_agent_joins_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = agw_demo::chain(dir.path(), &["a", "b", "c"], 1)
        .unwrap()
        .into_iter();
    let (a, b, c) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    let port = free_port();
    let _server = A2aServer::start(port, 5);
    let concierge = agw_demo::certify(&c, "concierge").unwrap();
    let register = pb::RegisterRequest {
        request_id: 1,
        profile: Some(pb::AgentProfile {
            agent: concierge.agent.to_string(),
            capabilities: vec!["book-hotel".into()],
            protocols: vec![pb::Protocol::A2a as i32],
            address: format!("http://127.0.0.1:{port}/"),
            a2a_url: format!("http://127.0.0.1:{port}/"),
            ..Default::default()
        }),
        certificate_chain: concierge.certificate.chain.clone(),
    };
    let mut registry = agw_demo::registry(&c, &concierge).unwrap();
    let agw_proto::Message::RegisterReply(r) = registry.request(register).unwrap() else {
        panic!("no registration reply")
    };
    assert_eq!(r.error, None);
    // a and b route to the concierge through their peers once c advertised it.
    let start = Instant::now();
    for node in [&a, &b] {
        while !matches!(
            node.dataplane.route_of(concierge.agent.as_str()),
            Some(agw_dataplane::routing::Route::Peer { .. })
        ) {
            assert!(start.elapsed() < WAIT * 2, "no route to the concierge");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // The MQTT guest of a asks, in session 77.
    let guest = agw_demo::certify(&a, "guest").unwrap();
    let anchor = dir.path().join("a-anchor.pem");
    std::fs::write(
        &anchor,
        pem::encode(&pem::Pem::new(
            "CERTIFICATE",
            a.authority.trust_anchor().to_vec(),
        )),
    )
    .unwrap();
    let files = pem_files(dir.path(), dir.path(), &guest, "guest");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/a2a/mqtt_asks.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &a.addresses().agents.port().to_string()])
        .args([&anchor, &files.cert, &files.key])
        .args([concierge.agent.as_str(), "77", "book a room for two"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["connack"], "Success", "{seen}");
    // QoS 1 end to end: the concierge's gateway ACKed once the A2A server answered.
    assert_eq!(seen["puback"]["code"], 0, "{seen}");
    assert_eq!(seen["reply"]["topic"], "guest/replies", "{seen}");
    assert_eq!(seen["reply"]["payload"], "which night?", "{seen}");
    assert_eq!(seen["reply"]["correlation"], "ask-1", "{seen}");
    assert_eq!(seen["reply"]["session"], "77", "{seen}");

    // A native agent of b answers in the same session: the same A2A task completes.
    let host = agw_demo::certify(&b, "host").unwrap();
    let native = AgentConnection::connect(b.addresses().agents, host.clone(), WAIT).unwrap();
    let (mut writer, mut reader) = native.split();
    // The concierge's answer goes back to the host: c must route to it first (b advertises
    // it within the peers' advertisement interval).
    let start = Instant::now();
    while !matches!(
        c.dataplane.route_of(host.agent.as_str()),
        Some(agw_dataplane::routing::Route::Peer { .. })
    ) {
        assert!(start.elapsed() < WAIT * 2, "no route to the host at c");
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    let reply = loop {
        assert!(
            start.elapsed() < WAIT * 2,
            "the concierge never answered the host"
        );
        let id = start.elapsed().as_micros() as u64 + 1;
        let m = pb::AgentMessage {
            destination: concierge.agent.to_string(),
            source: host.agent.to_string(),
            message_id: id,
            session_id: 77,
            content_type: "text/plain".into(),
            payload: Bytes::from_static(b"friday"),
            ..Default::default()
        };
        writer.queue_raw(&m, DEFAULT_HOP_LIMIT).unwrap();
        writer.flush().unwrap();
        match outcome(&mut reader, id) {
            Ok(reply) => break reply,
            // The host's own route may not have reached c yet.
            Err(n) if n.reason() == pb::ErrorCode::NoRoute => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(n) => panic!("{n:?}"),
        }
    };
    assert_eq!(&reply.payload[..], b"booked: room 42 for friday");
    assert_eq!(reply.session_id, 77);
    assert_eq!(reply.source, concierge.agent.to_string());
    for node in [c, b, a] {
        node.stop();
    }
}

/// A2A's gRPC binding refuses in gRPC's terms what it cannot serve (grpcio as the client):
/// an unknown method UNIMPLEMENTED, a request that does not decode or names no agent in its
/// tenant INVALID_ARGUMENT, an unknown task NOT_FOUND, an operation the gateway does not
/// support FAILED_PRECONDITION; a client without a certificate gets no session (UNAVAILABLE).
#[test]
fn the_grpc_binding_refuses_in_grpc_terms() {
    let (dir, data, node) = gateway();
    let alice = certify(&node, "alice", &[]);
    let common::PemFiles { ca, cert, key } = pem_files(dir.path(), &data, &alice, "alice");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/a2a/a2a_grpc_refusals.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(format!("127.0.0.1:{}", node.addresses().agents.port()))
        .args([&ca, &cert, &key])
        .arg("hotel.example/bob")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "unknown_method": "UNIMPLEMENTED",
            "garbage": "INVALID_ARGUMENT",
            "no_tenant": "INVALID_ARGUMENT",
            "unknown_task": "NOT_FOUND",
            "unsupported": "FAILED_PRECONDITION",
            "anonymous": "UNAVAILABLE",
        })
    );
}

/// An A2A server agent registered with an `https://` URL: the gateway calls it over mutual
/// TLS (uvicorn requires the gateway's certificate), and the server must prove with its ACA
/// certificate that it is the agent registered: one presenting another agent's is never
/// called.
#[test]
fn an_https_a2a_server_is_called_over_mutual_tls_and_must_be_the_agent_registered() {
    let (dir, data, node) = gateway();
    let hotel = certify(&node, "hotel", &[]);
    let impostor = certify(&node, "impostor", &[]);
    let (port, wrong_port) = (free_port(), free_port());
    let hotel_files = pem_files(dir.path(), &data, &hotel, "hotel");
    let _server = A2aServer::start_tls(port, 5, Some(&hotel_files));
    // A server for "impostor" that presents hotel's certificate.
    let _wrong = A2aServer::start_tls(wrong_port, 5, Some(&hotel_files));
    for (who, port) in [(&hotel, port), (&impostor, wrong_port)] {
        register_a2a_server(&node, who, &format!("https://127.0.0.1:{port}/"));
    }
    await_local_route(&node, &hotel);
    let alice = certify(&node, "alice", &[]);
    let native = AgentConnection::connect(node.addresses().agents, alice.clone(), WAIT).unwrap();
    let (mut writer, mut reader) = native.split();
    let mut send = |id: u64, to: &Credentials| {
        let m = pb::AgentMessage {
            destination: to.agent.to_string(),
            source: alice.agent.to_string(),
            message_id: id,
            content_type: "text/plain".into(),
            payload: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        writer.queue_raw(&m, DEFAULT_HOP_LIMIT).unwrap();
        writer.flush().unwrap();
    };
    send(1, &hotel);
    assert_eq!(
        &outcome(&mut reader, 1).unwrap().payload[..],
        b"echo: hello"
    );
    send(2, &impostor);
    // The impostor's server failed the handshake: it never became a route.
    let refused = outcome(&mut reader, 2).unwrap_err();
    assert!(
        matches!(
            refused.reason(),
            pb::ErrorCode::NoRoute | pb::ErrorCode::DestinationOffline
        ),
        "{refused:?}"
    );
    assert_eq!(node.dataplane.route_of(impostor.agent.as_str()), None);
}

/// Ports of their own for MQTT and A2A (`listen.mqtt`, `listen.a2a`): each speaks its
/// protocol without detection, with clients we did not write (mosquitto_pub, curl); a native
/// agent dialling the A2A port is not taken for one.
#[test]
fn mqtt_and_a2a_can_have_ports_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let node = Node::start(NodeConfig {
        mqtt: Some(any),
        a2a: Some(any),
        ..NodeConfig::on_loopback(Domain::new("hotel.example").unwrap(), "agw-1", data.clone())
    })
    .unwrap();
    let (mqtt, a2a) = (
        node.addresses().mqtt.unwrap(),
        node.addresses().a2a.unwrap(),
    );
    assert!(mqtt.port() != 0 && a2a.port() != 0 && mqtt != a2a);
    let alice = certify(&node, "alice", &[]);
    let bob = certify(&node, "bob", &[]);
    let f = pem_files(dir.path(), &data, &alice, "alice");
    let native = AgentConnection::connect(node.addresses().agents, bob.clone(), WAIT).unwrap();
    let (mut writer, mut reader) = native.split();

    // MQTT on its port: mosquitto_pub's QoS 1 publish reaches bob, its PUBACK bob's ACK.
    let publish = Command::new("timeout")
        .args(["20", "mosquitto_pub"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.port().to_string(),
            "-V",
            "mqttv5",
        ])
        .arg("--cafile")
        .arg(&f.ca)
        .arg("--cert")
        .arg(&f.cert)
        .arg("--key")
        .arg(&f.key)
        .args([
            "-q",
            "1",
            "-t",
            &format!("agw/to/{}", bob.agent),
            "-m",
            "hi",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let m = loop {
        assert!(start.elapsed() < WAIT, "nothing came over the MQTT port");
        match reader.recv() {
            Ok(Incoming::Message(m, _)) => break m,
            Ok(_) | Err(AgentError::Io(_)) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(m.source_protocol, pb::Protocol::Mqtt as i32);
    assert_eq!(&m.payload[..], b"hi");
    writer.ack(&m).unwrap();
    writer.flush().unwrap();
    let out = publish.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    // A2A on its port: curl gets bob's card.
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", "--cacert"])
        .arg(&f.ca)
        .arg("--cert")
        .arg(&f.cert)
        .arg("--key")
        .arg(&f.key)
        .arg(format!(
            "https://127.0.0.1:{}/a2a/hotel.example/bob/.well-known/agent-card.json",
            a2a.port()
        ))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"name\":\"bob\""), "{answer}");

    // A native agent on the A2A port speaks no HTTP: refused, never accessed.
    assert!(AgentConnection::connect(a2a, alice.clone(), Duration::from_secs(3)).is_err());
}

/// An A2A server agent that takes requests and never answers: each is NACKed
/// `REQUEST_TIMEOUT` once the server's time to answer passed (here 1 s), and the gateway
/// dials it again; nothing waits forever.
#[test]
fn an_a2a_server_that_never_answers_has_its_requests_nacked_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(NodeConfig {
        a2a_answer_within: Duration::from_secs(1),
        ..NodeConfig::on_loopback(
            Domain::new("hotel.example").unwrap(),
            "agw-1",
            dir.path().join("data"),
        )
    })
    .unwrap();
    // A server that reads and says nothing (a real TCP server on loopback, not an A2A one).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let hotel = certify(&node, "hotel", &[]);
    register_a2a_server(&node, &hotel, &format!("http://127.0.0.1:{port}/"));
    await_local_route(&node, &hotel);
    let alice = certify(&node, "alice", &[]);
    let native = AgentConnection::connect(node.addresses().agents, alice.clone(), WAIT).unwrap();
    let (mut writer, mut reader) = native.split();
    let m = pb::AgentMessage {
        destination: hotel.agent.to_string(),
        source: alice.agent.to_string(),
        message_id: 1,
        content_type: "text/plain".into(),
        payload: Bytes::from_static(b"anyone?"),
        ..Default::default()
    };
    let sent = Instant::now();
    writer.queue_raw(&m, DEFAULT_HOP_LIMIT).unwrap();
    writer.flush().unwrap();
    let nack = outcome(&mut reader, 1).unwrap_err();
    assert_eq!(nack.reason(), pb::ErrorCode::RequestTimeout, "{nack:?}");
    assert!(sent.elapsed() >= Duration::from_secs(1));
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}
