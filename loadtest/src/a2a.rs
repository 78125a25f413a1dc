//! A2A clients under load: `SendMessage` round trips through the gateway's A2A adapter to
//! native agents that answer. Side A agents are A2A clients (hyper's HTTP/1.1 client over
//! rustls with their ACA certificate, one connection each, as a2a-sdk's would be; or, for the
//! gRPC binding, hyper's HTTP/2 client with the request framed as gRPC); side B
//! agents are native SDK agents that reply to each message with its correlation (the gateway's
//! task ID), which completes the client's task. So a round trip is: an HTTP request, a native
//! message to B, B's reply, the gateway's ACK of it, the HTTP answer.
//!
//! Only the ping-pong pattern: a blocking `SendMessage` waits for its answer.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use agw_proto::{DEFAULT_HOP_LIMIT, pb};
use agw_sdk::agent::{AgentConnection, Credentials, Incoming, Reader, Writer};
use base64::Engine as _;
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::runtime::{Handle, Runtime};

use crate::{
    agw::{InProcessGateway, event_of},
    cpu::{Affinity, threads_cpu},
    transport::{Agent, Error, Event, Inbox, Outbox, Relay, Side},
};

const DOMAIN: &str = "load.example";

/// Which of A2A's bindings the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// JSON-RPC over HTTP/1.1.
    JsonRpc,
    /// gRPC over HTTP/2.
    Grpc,
}

/// The gateway (one shard) and the runtime of the A2A clients.
pub struct A2aRelay {
    gateway: InProcessGateway,
    runtime: Runtime,
    binding: Binding,
}

/// One client's connection.
enum Connection {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl std::fmt::Debug for A2aRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A2aRelay").finish_non_exhaustive()
    }
}

impl A2aRelay {
    /// Starts the gateway (one shard, pinned per `pin`) and the clients' runtime, placed by
    /// `affinity`.
    pub fn start(pin: bool, affinity: &Affinity, binding: Binding) -> Result<A2aRelay, Error> {
        let gateway = InProcessGateway::start(DOMAIN, 1, pin, false)?;
        let runtime = affinity.client_runtime()?;
        Ok(A2aRelay {
            gateway,
            runtime,
            binding,
        })
    }

    /// One A2A client's HTTP connection: TLS with the agent's certificate, ALPN http/1.1.
    fn client(&self, creds: &Credentials) -> Result<Connection, Error> {
        let mut tls = (*creds.tls_config()?).clone();
        tls.alpn_protocols = match self.binding {
            Binding::JsonRpc => vec![b"http/1.1".to_vec()],
            Binding::Grpc => vec![b"h2".to_vec()],
        };
        let binding = self.binding;
        let addr = self.gateway.node.addresses().agents;
        self.runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await?;
            let io = TokioIo::new(stream);
            Ok::<_, Error>(match binding {
                Binding::JsonRpc => {
                    let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                    tokio::spawn(connection);
                    Connection::Http1(sender)
                }
                Binding::Grpc => {
                    let (sender, connection) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                    tokio::spawn(connection);
                    Connection::Http2(sender)
                }
            })
        })
    }
}

impl Relay for A2aRelay {
    fn connect(&mut self, sides: &[Side]) -> Result<Vec<Agent>, Error> {
        let mut certified = Vec::new();
        for i in 0..sides.len() {
            certified.push(self.gateway.certify(&format!("agent-{i}"))?);
        }
        // Where each agent is: its URL's path (JSON-RPC), its tenant (gRPC).
        let paths: Arc<Vec<String>> = Arc::new(
            certified
                .iter()
                .map(|c| match self.binding {
                    Binding::JsonRpc => format!("/a2a/{DOMAIN}/{}", c.agent.name()),
                    Binding::Grpc => format!("{DOMAIN}/{}", c.agent.name()),
                })
                .collect(),
        );
        let ids: Arc<Vec<String>> =
            Arc::new(certified.iter().map(|c| c.agent.to_string()).collect());
        let mut agents = Vec::new();
        for (creds, side) in certified.iter().zip(sides) {
            match side {
                Side::A => {
                    let sender = self.client(creds)?;
                    let (answers, inbox) = crossbeam_channel::unbounded();
                    agents.push(Agent {
                        outbox: Box::new(A2aOutbox {
                            sender,
                            handle: self.runtime.handle().clone(),
                            paths: paths.clone(),
                            queued: Vec::new(),
                            answers,
                            next: 1,
                        }),
                        inbox: Box::new(A2aInbox(inbox)),
                    });
                }
                Side::B => {
                    let addr = self.gateway.node.addresses().agents;
                    let (writer, reader) =
                        AgentConnection::connect(addr, creds.clone(), Duration::from_secs(1))?
                            .split();
                    let last = Arc::new(Mutex::new(None));
                    agents.push(Agent {
                        outbox: Box::new(ReplyOutbox {
                            writer,
                            me: creds.agent.to_string(),
                            ids: ids.clone(),
                            last: last.clone(),
                            next: 1,
                        }),
                        inbox: Box::new(ReplyInbox { reader, last }),
                    });
                }
            }
        }
        Ok(agents)
    }

    fn cpu(&self) -> Option<Duration> {
        threads_cpu("agw-shard")
    }
}

/// An A2A client: each queued message is a blocking `SendMessage`, its answer (the reply's
/// payload, or the failed task's reason) goes to the inbox.
struct A2aOutbox {
    sender: Connection,
    handle: Handle,
    paths: Arc<Vec<String>>,
    queued: Vec<(usize, Bytes)>,
    answers: Sender<Event>,
    next: u64,
}

impl Outbox for A2aOutbox {
    fn queue(&mut self, to: usize, payload: Bytes) -> Result<(), Error> {
        self.queued.push((to, payload));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        for (to, payload) in std::mem::take(&mut self.queued) {
            let path = self.paths.get(to).ok_or("no such agent")?;
            let id = self.next;
            self.next += 1;
            let raw = base64::engine::general_purpose::STANDARD.encode(&payload);
            let event = match &mut self.sender {
                Connection::Http1(sender) => {
                    let body = format!(
                        r#"{{"jsonrpc":"2.0","id":{id},"method":"SendMessage","params":{{"message":{{"messageId":"m-{id}","role":"ROLE_USER","parts":[{{"raw":"{raw}","mediaType":"application/octet-stream"}}]}}}}}}"#
                    );
                    let request = hyper::Request::post(path.as_str())
                        .header("host", "localhost")
                        .header("content-type", "application/json")
                        .header("a2a-version", "1.0")
                        .body(Full::new(Bytes::from(body)))?;
                    let answer = self.handle.block_on(async {
                        sender.ready().await?;
                        let response = sender.send_request(request).await?;
                        let body = response.into_body().collect().await?.to_bytes();
                        Ok::<_, Error>(body)
                    })?;
                    match serde_json::from_slice::<serde_json::Value>(&answer) {
                        Ok(v) => task_event(&v["result"]["task"]),
                        Err(_) => Event::Nack("MALFORMED"),
                    }
                }
                Connection::Http2(sender) => {
                    let request = serde_json::json!({
                        "tenant": path,
                        "message": {
                            "messageId": format!("m-{id}"),
                            "role": "ROLE_USER",
                            "parts": [{ "raw": raw, "mediaType": "application/octet-stream" }],
                        },
                    });
                    let body = agw_dataplane::a2a_grpc::encode_request("SendMessage", &request)?;
                    let uri = format!(
                        "https://localhost/{}/SendMessage",
                        agw_dataplane::a2a_grpc::SERVICE
                    );
                    let request = hyper::Request::post(uri)
                        .header("content-type", "application/grpc")
                        .header("te", "trailers")
                        .body(Full::new(body))?;
                    let answer = self.handle.block_on(async {
                        sender.ready().await?;
                        let response = sender.send_request(request).await?;
                        let body = response.into_body().collect().await?.to_bytes();
                        Ok::<_, Error>(body)
                    })?;
                    match agw_dataplane::a2a_grpc::decode_response("SendMessage", &answer) {
                        Ok(v) => task_event(&v["task"]),
                        Err(_) => Event::Nack("A2A_GRPC_FAILED"),
                    }
                }
            };
            let _ = self.answers.send(event);
        }
        Ok(())
    }
}

/// A `SendMessage` answer's task as the harness's event: a completed task's reply payload,
/// or the reason of a failed one.
fn task_event(task: &serde_json::Value) -> Event {
    if task["status"]["state"] != "TASK_STATE_COMPLETED" {
        return Event::Nack("A2A_TASK_NOT_COMPLETED");
    }
    let raw = task["status"]["message"]["parts"][0]["raw"]
        .as_str()
        .unwrap_or_default();
    match base64::engine::general_purpose::STANDARD.decode(raw) {
        Ok(payload) => Event::Message(Bytes::from(payload)),
        Err(_) => Event::Nack("MALFORMED"),
    }
}

struct A2aInbox(Receiver<Event>);

impl Inbox for A2aInbox {
    fn recv(&mut self) -> Result<Event, Error> {
        match self.0.recv_timeout(Duration::from_secs(1)) {
            Ok(event) => Ok(event),
            Err(RecvTimeoutError::Timeout) => Ok(Event::Idle),
            Err(RecvTimeoutError::Disconnected) => Err("the A2A client stopped".into()),
        }
    }
}

/// A native agent answering A2A clients: its replies carry the correlation (the task ID) and
/// session of the message it last received.
struct ReplyOutbox {
    writer: Writer,
    me: String,
    ids: Arc<Vec<String>>,
    last: Arc<Mutex<Option<(Bytes, u64)>>>,
    next: u64,
}

impl Outbox for ReplyOutbox {
    fn queue(&mut self, to: usize, payload: Bytes) -> Result<(), Error> {
        let destination = self.ids.get(to).ok_or("no such agent")?.clone();
        let (correlation, session_id) = self
            .last
            .lock()
            .map_err(|_| "poisoned")?
            .take()
            .unwrap_or_default();
        let reply = pb::AgentMessage {
            destination,
            source: self.me.clone(),
            message_id: self.next,
            session_id,
            content_type: "application/octet-stream".into(),
            correlation,
            payload,
            ..Default::default()
        };
        self.next += 1;
        self.writer.queue_raw(&reply, DEFAULT_HOP_LIMIT)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        Ok(self.writer.flush()?)
    }
}

struct ReplyInbox {
    reader: Reader,
    last: Arc<Mutex<Option<(Bytes, u64)>>>,
}

impl Inbox for ReplyInbox {
    fn recv(&mut self) -> Result<Event, Error> {
        let received = self.reader.recv();
        if let Ok(Incoming::Message(m, _)) = &received {
            *self.last.lock().map_err(|_| "poisoned")? =
                Some((m.correlation.clone(), m.session_id));
        }
        event_of(received)
    }
}
