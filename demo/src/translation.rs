//! The demo's second act, protocol translation: an MQTT agent of domain a asks an A2A agent of
//! domain c through gateway b; the A2A agent asks back, and a native agent of b, in the same
//! session, answers it and completes the same A2A task.
//!
//! The A2A agent is a small A2A 1.0 server (JSON-RPC over HTTP/1.1, hyper) standing in for an
//! a2a-sdk one, so the demo needs nothing but itself; `controlplane/tests/a2a.rs` runs the same
//! scenario with a2a-sdk's server and paho-mqtt. The MQTT agent is rumqttc, an MQTT 5 client.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use agw_controlplane::node::Node;
use agw_dataplane::routing::Route;
use agw_proto::{DEFAULT_HOP_LIMIT, Message, pb};
use agw_sdk::agent::{AgentConnection, Incoming};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming as Body, service::service_fn};
use hyper_util::rt::TokioIo;
use rumqttc::{
    TlsConfiguration, Transport,
    v5::{
        AsyncClient, Event, MqttOptions,
        mqttbytes::{
            QoS,
            v5::{Packet, PubAckReason, PublishProperties},
        },
    },
};
use serde_json::{Value, json};

use crate::{WAIT, certify, client_config, registry, say};

/// The session the MQTT agent and the native agent share.
const SESSION: u64 = 77;

/// Runs the act on the chain a - b - c.
pub(crate) fn run(a: &Node, b: &Node, c: &Node) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    say("== protocol translation: an MQTT agent of a asks an A2A agent of c, through b");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    runtime.spawn(serve_a2a(listener));
    let url = format!("http://{address}/");
    let concierge = certify(c, "concierge")?;
    let profile = pb::AgentProfile {
        agent: concierge.agent.to_string(),
        description: "An A2A agent: asks which night, then books".into(),
        capabilities: vec!["book-hotel".into()],
        protocols: vec![pb::Protocol::A2a as i32],
        address: url.clone(),
        a2a_url: url.clone(),
        ..Default::default()
    };
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(profile),
        certificate_chain: concierge.certificate.chain.clone(),
    };
    match registry(c, &concierge)?
        .request(request)
        .map_err(|e| e.to_string())?
    {
        Message::RegisterReply(r) if r.error.is_none() => say(format!(
            "   {} registered its A2A server {url}: c's gateway calls it there",
            concierge.agent
        )),
        other => return Err(format!("registration refused: {other:?}")),
    }
    let deadline = std::time::Instant::now() + WAIT * 2;
    while !matches!(
        a.dataplane.route_of(concierge.agent.as_str()),
        Some(Route::Peer { .. })
    ) {
        if std::time::Instant::now() > deadline {
            return Err("a never learned a route to the concierge".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say("   a routes to it through its peer b");

    let guest = certify(a, "guest")?;
    let mut tls = (*client_config(a, &guest)?).clone();
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let agents = a.addresses().agents;
    let answer = runtime.block_on(ask_over_mqtt(agents, tls, concierge.agent.as_str()))?;
    say(format!(
        "   the MQTT guest of a published \"book a room for two\" (session {SESSION}); \
         its PUBACK came once c's gateway had the A2A answer; the reply on its response \
         topic: {answer:?}"
    ));

    say("== a native agent of b answers in the same session: the same A2A task completes");
    let host = certify(b, "host")?;
    let (mut writer, mut reader) =
        AgentConnection::connect(b.addresses().agents, host.clone(), WAIT)
            .map_err(|e| e.to_string())?
            .split();
    // The concierge's answer goes back to the host: c must know the way (a reply to an agent
    // whose route had not reached c yet was lost, and the demo waited in vain, once in ten).
    let deadline = std::time::Instant::now() + WAIT;
    while !matches!(
        c.dataplane.route_of(host.agent.as_str()),
        Some(Route::Peer { .. })
    ) {
        if std::time::Instant::now() > deadline {
            return Err("c never learned a route to the host".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = std::time::Instant::now() + WAIT;
    let mut id = 0;
    let reply = 'ask: loop {
        id += 1;
        let m = pb::AgentMessage {
            destination: concierge.agent.to_string(),
            source: host.agent.to_string(),
            message_id: id,
            session_id: SESSION,
            content_type: "text/plain".into(),
            payload: Bytes::from_static(b"friday"),
            ..Default::default()
        };
        writer
            .queue_raw(&m, DEFAULT_HOP_LIMIT)
            .and_then(|()| writer.flush())
            .map_err(|e| e.to_string())?;
        loop {
            if std::time::Instant::now() > deadline {
                return Err("the concierge did not answer the host".into());
            }
            match reader.recv() {
                Ok(Incoming::Message(m, _)) => break 'ask m,
                Ok(Incoming::Nack(n)) if n.message_id == id => {
                    // The host's own route may still be on its way to c.
                    say(format!("   (NACK {:?}, retrying)", n.reason()));
                    std::thread::sleep(Duration::from_millis(200));
                    continue 'ask;
                }
                Ok(_) | Err(agw_sdk::agent::AgentError::Io(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    say(format!(
        "   host received {:?} from {} (session {})",
        String::from_utf8_lossy(&reply.payload),
        reply.source,
        reply.session_id
    ));
    Ok(())
}

/// The MQTT guest: connects over mutual TLS, asks with a response topic and correlation data,
/// and returns the reply's text once the question's PUBACK (a success) came too.
async fn ask_over_mqtt(
    agents: SocketAddr,
    tls: rustls::ClientConfig,
    concierge: &str,
) -> Result<String, String> {
    let mut options = MqttOptions::new("guest", agents.ip().to_string(), agents.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    let (client, mut events) = AsyncClient::new(options, 16);
    let properties = PublishProperties {
        response_topic: Some("guest/replies".into()),
        correlation_data: Some(Bytes::from_static(b"ask-1")),
        content_type: Some("text/plain".into()),
        user_properties: vec![("session-id".into(), SESSION.to_string())],
        ..Default::default()
    };
    let topic = format!("agw/to/{concierge}");
    let ask = async {
        client
            .subscribe("agw/inbox/#", QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        let (mut asked, mut acked, mut reply) = (false, false, None);
        loop {
            if acked && let Some(text) = reply.take() {
                let _ = client.disconnect().await;
                return Ok(text);
            }
            match events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::SubAck(_)) if !asked => {
                    asked = true;
                    client
                        .publish_with_properties(
                            topic.clone(),
                            QoS::AtLeastOnce,
                            false,
                            "book a room for two",
                            properties.clone(),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                // QoS 1 end to end: the PUBACK is the A2A agent's gateway's ACK.
                Event::Incoming(Packet::PubAck(ack)) => {
                    if ack.reason != PubAckReason::Success {
                        return Err(format!("the question was refused: {ack:?}"));
                    }
                    acked = true;
                }
                Event::Incoming(Packet::Publish(p)) => {
                    reply = Some(String::from_utf8_lossy(&p.payload).into_owned());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT * 2, ask)
        .await
        .map_err(|_| "no reply over MQTT".to_owned())?
}

/// A minimal A2A 1.0 server (JSON-RPC binding): a message asking to book gets a task that
/// needs input ("which night?"); the next message in that task completes it.
async fn serve_a2a(listener: tokio::net::TcpListener) {
    let mut next = 0u64;
    while let Ok((stream, _)) = listener.accept().await {
        next += 1;
        let connection = next;
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, connection));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Body>,
    connection: u64,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = request.into_body().collect().await?.to_bytes();
    let rpc: Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = &rpc["params"]["message"];
    let text = message["parts"][0]["text"].as_str().unwrap_or_default();
    let context = message["contextId"].clone();
    let task = match message["taskId"].as_str() {
        // The open task continues: completed, its artifact the booking.
        Some(id) => json!({
            "id": id, "contextId": context,
            "status": { "state": "TASK_STATE_COMPLETED" },
            "artifacts": [{ "artifactId": "booking",
                            "parts": [{ "text": format!("booked: room 42 for {text}") }] }],
        }),
        None => json!({
            "id": format!("task-{connection}-{}", rpc["id"]), "contextId": context,
            "status": { "state": "TASK_STATE_INPUT_REQUIRED",
                        "message": { "messageId": "q", "role": "ROLE_AGENT",
                                     "parts": [{ "text": "which night?" }] } },
        }),
    };
    let answer = json!({ "jsonrpc": "2.0", "id": rpc["id"], "result": { "task": task } });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap_or_default())
}
