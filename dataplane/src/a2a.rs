//! A2A clients (the Agent2Agent protocol 1.0, its JSON-RPC binding over HTTP/1.1 with SSE, as
//! `a2a-sdk` speaks it) as agents of the relay, sans-IO like [`crate::mqtt`]: one
//! [`A2aAdapter`] per HTTP connection turns the client's requests into the native frames an
//! SDK agent would send, and the frames the gateway sends it into HTTP responses. Access,
//! routing, authorization, counters, NACKs and back-pressure are the native path's.
//! `docs/protocols.md` gives the URLs and the mapping tables.
//!
//! The client is the agent its TLS client certificate names (an ACA certificate, as for
//! MQTT); every agent the gateway routes to is an A2A server at `/a2a/<domain>/<name>`, with
//! an agent card beside it. A message becomes a gateway task: `SUBMITTED` when sent,
//! `WORKING` when the destination acknowledged it, `COMPLETED` with the destination's reply
//! (an `AgentMessage` whose `correlation` is the task ID), `FAILED` or `REJECTED` on a NACK.
//!
//! ```text
//!  first request        -> AccessRequest (the TLS chain; TLS proved the key)
//!  GET  .../agent-card.json              -> the card (from the registry's profile)
//!  POST /a2a/<d>/<n> SendMessage         -> AgentMessage to spiffe://<d>/agent/<n>
//!       Ack -> WORKING   reply -> COMPLETED (a Task)   Nack -> FAILED / REJECTED
//!  POST SendStreamingMessage             -> the same, each state an SSE event
//!  POST GetTask / CancelTask             -> the connection's task table
//! ```
//!
//! HTTP/1.1 request heads are parsed by `httparse` (hyper's parser); the adapter answers one
//! request at a time, in order, with `Content-Length` bodies or chunked SSE.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::Arc,
    time::{Duration, Instant},
};

use agw_proto::{
    DEFAULT_HOP_LIMIT, FrameEncoder, Message,
    identity::{AgentId, Domain},
    pb::{self, ErrorCode},
};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use serde_json::{Value, json};

pub use crate::mqtt::Close;

/// Where an agent is served: this prefix, its domain, `/`, its name.
pub const PATH: &str = "/a2a/";
/// An A2A server's card, below its URL.
pub const CARD: &str = "/.well-known/agent-card.json";
/// The content type of a native payload that holds an A2A message's parts (a JSON array)
/// when they are not one text, data or file part.
pub const PARTS_TYPE: &str = "application/vnd.a2a.parts+json";
/// The A2A protocol version served.
pub const VERSION: &str = "1.0";
/// Bytes of a request head, at most.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;
/// Tasks a connection remembers (the oldest finished ones are forgotten first).
pub const TASKS_KEPT: usize = 1024;
/// The heartbeat interval an A2A connection asks for; a request sends a heartbeat when half of
/// it passed since the last.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// A blocking `SendMessage` whose task is not finished after this long is answered with the
/// task as it stands (working, or submitted), as A2A lets a blocking call return; the client
/// follows it with `GetTask`. A stream stays open.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// What the gateway knows of agents, for their cards: the registry's profiles.
pub trait Directory: Send + Sync {
    /// `agent`'s profile, local or learned from a peer, if the registry has one.
    fn profile(&self, agent: &str) -> Option<pb::AgentProfile>;
}

/// A shared directory.
pub type SharedDirectory = Arc<dyn Directory>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No request yet.
    Fresh,
    /// The first request became an access request; it waits for the reply.
    Accessing,
    Ready,
    Closed,
}

/// A2A task states (the proto's `TaskState` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Sent; the destination has not acknowledged it yet.
    Submitted,
    /// The destination acknowledged the message.
    Working,
    /// The destination replied.
    Completed,
    /// NACKed: the message could not be delivered.
    Failed,
    /// Cancelled by the client.
    Canceled,
    /// NACKed as not allowed.
    Rejected,
}

impl TaskState {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Submitted => "TASK_STATE_SUBMITTED",
            TaskState::Working => "TASK_STATE_WORKING",
            TaskState::Completed => "TASK_STATE_COMPLETED",
            TaskState::Failed => "TASK_STATE_FAILED",
            TaskState::Canceled => "TASK_STATE_CANCELED",
            TaskState::Rejected => "TASK_STATE_REJECTED",
        }
    }

    fn is_final(self) -> bool {
        !matches!(self, TaskState::Submitted | TaskState::Working)
    }
}

/// The A2A task state a NACK's reason leaves a task in.
pub fn nack_state(reason: ErrorCode) -> TaskState {
    match reason {
        ErrorCode::Unauthorized
        | ErrorCode::CertRevoked
        | ErrorCode::CertExpired
        | ErrorCode::CertUntrusted
        | ErrorCode::NotAccessed => TaskState::Rejected,
        _ => TaskState::Failed,
    }
}

#[derive(Debug)]
struct Task {
    id: String,
    context: String,
    state: TaskState,
    /// The client's message, then the reply.
    history: Vec<Value>,
    /// The status message (the reply, or why it failed).
    status_message: Option<Value>,
    /// The NACK's reason, as `agw.reason` in the task's metadata.
    reason: Option<(ErrorCode, String)>,
}

impl Task {
    fn to_json(&self) -> Value {
        let mut status = json!({ "state": self.state.as_str() });
        if let Some(m) = &self.status_message {
            status["message"] = m.clone();
        }
        let mut task = json!({
            "id": self.id,
            "contextId": self.context,
            "status": status,
            "history": self.history,
        });
        if self.state == TaskState::Completed {
            if let Some(parts) = self.status_message.as_ref().map(|m| m["parts"].clone()) {
                task["artifacts"] = json!([{ "artifactId": format!("{}-reply", self.id), "name": "reply", "parts": parts }]);
            }
        }
        if let Some((code, detail)) = &self.reason {
            task["metadata"] = json!({ "agw.reason": code.as_str_name(), "agw.detail": detail });
        }
        task
    }

    fn status_event(&self) -> Value {
        let task = self.to_json();
        json!({ "statusUpdate": {
            "taskId": self.id,
            "contextId": self.context,
            "status": task["status"],
            "metadata": task.get("metadata").cloned().unwrap_or(json!({})),
        }})
    }
}

/// How a request came, and so how it is answered: A2A's JSON-RPC binding (`POST` to the
/// agent's URL) or its HTTP+JSON binding (`POST .../message:send` and the like).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    JsonRpc,
    Rest,
    /// gRPC ([`crate::a2a_grpc`]): answers go to [`A2aAdapter::take_grpc`], not to HTTP/1.1.
    Grpc,
}

/// An answer to the gRPC call being served, in A2A's JSON (the proto's JSON mapping), for
/// [`crate::a2a_grpc`] to encode.
#[derive(Debug, Clone, PartialEq)]
pub enum GrpcAnswer {
    /// The call's one response.
    Reply(Value),
    /// One response of a stream.
    Event(Value),
    /// The stream ended well.
    Done,
    /// The call failed: a JSON-RPC error object (`code`, `message`, `data`).
    Error(Value),
}

/// The request being answered.
#[derive(Debug)]
struct Pending {
    binding: Binding,
    rpc_id: Value,
    task: String,
    /// An SSE stream (`SendStreamingMessage`): every state is an event.
    streaming: bool,
    /// `returnImmediately`: answer once the destination acknowledged.
    immediate: bool,
    /// When the request was taken.
    since: Instant,
}

/// One HTTP connection's translation state.
#[derive(Debug)]
pub struct A2aAdapter {
    agent: Option<String>,
    chain: Vec<Bytes>,
    max_body: usize,
    state: State,
    input: BytesMut,
    out: BytesMut,
    pending: Option<Pending>,
    tasks: HashMap<String, Task>,
    order: VecDeque<String>,
    /// Message ID sent -> its task.
    sent: HashMap<u64, String>,
    /// Session IDs of context IDs, and back.
    sessions: HashMap<u64, String>,
    next: u64,
    sequence: u64,
    last_heartbeat: Option<Instant>,
    /// The client asked to close after this response.
    close_after: bool,
    /// The request that asked for the access, served once it succeeds.
    first: Option<Request>,
    /// The head of the request at the front of the input, once whole: the body's bytes are
    /// then only counted, never the head parsed again.
    head: Option<Head>,
    directory: Option<SharedDirectory>,
    /// The binding of the request being served.
    binding: Binding,
    /// Answers of gRPC calls, in order.
    grpc: VecDeque<GrpcAnswer>,
}

impl std::fmt::Debug for dyn Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Directory")
    }
}

/// A parsed request head: its length, its body's, and what the adapter reads of it.
#[derive(Debug)]
struct Head {
    len: usize,
    body: usize,
    method: String,
    path: String,
    host: String,
}

/// A parsed request, its head and body.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    host: String,
    body: Bytes,
}

enum Parsed {
    Incomplete,
    /// HTTP/2's connection preface: the client speaks HTTP/2 (gRPC).
    Http2,
    Request(Request),
    /// A status and text to answer with, then close.
    Refused(u16, &'static str),
}

impl A2aAdapter {
    /// An adapter for a connection whose TLS client certificate named `agent` with `chain`
    /// (`None` and empty without one: every request is refused `401`). Request bodies larger
    /// than `max_body` bytes are refused `413`. Cards come from `directory`.
    pub fn new(
        agent: Option<String>,
        chain: Vec<Bytes>,
        max_body: usize,
        directory: Option<SharedDirectory>,
    ) -> A2aAdapter {
        A2aAdapter {
            agent,
            chain,
            max_body,
            state: State::Fresh,
            input: BytesMut::new(),
            out: BytesMut::new(),
            pending: None,
            tasks: HashMap::new(),
            order: VecDeque::new(),
            sent: HashMap::new(),
            sessions: HashMap::new(),
            next: 1,
            sequence: 0,
            last_heartbeat: None,
            close_after: false,
            first: None,
            head: None,
            directory,
            binding: Binding::JsonRpc,
            grpc: VecDeque::new(),
        }
    }

    /// The buffer reads go into.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Bytes waiting to be written.
    pub fn has_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// The bytes to write.
    pub fn take_out(&mut self) -> BytesMut {
        self.out.split()
    }

    /// The access succeeded: requests are answered from now on (call
    /// [`from_client`](Self::from_client) again).
    pub fn accessed(&mut self) {
        if self.state == State::Accessing {
            self.state = State::Ready;
        }
    }

    /// Whether the connection is to close once the output is written.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Answers or forwards the whole requests in [`input`](Self::input), one at a time: a
    /// request whose answer waits on the destination holds the ones after it. Native frames
    /// for the relay go to `up`.
    pub fn from_client(&mut self, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        loop {
            match self.state {
                State::Closed => return Ok(()),
                State::Accessing => return self.bounded(),
                State::Fresh | State::Ready if self.pending.is_some() => return self.bounded(),
                State::Fresh | State::Ready => {}
            }
            let parsed = match self.first.take() {
                Some(first) => Parsed::Request(first),
                None => self.parse(),
            };
            let request = match parsed {
                Parsed::Incomplete => return Ok(()),
                Parsed::Http2 => {
                    self.out.extend_from_slice(&http2_refusal());
                    let text = "HTTP/2 (gRPC) is not served: GOAWAY HTTP_1_1_REQUIRED";
                    return Err(self.close(ErrorCode::UnsupportedVersion, text));
                }
                Parsed::Refused(status, text) => {
                    self.error_page(status, text);
                    return Err(self.close(ErrorCode::Malformed, text));
                }
                Parsed::Request(r) => r,
            };
            if self.state == State::Fresh {
                return self.access(request, now, up);
            }
            self.heartbeat_if_due(now, up);
            self.serve(request, up);
            if self.close_after && self.pending.is_none() {
                return Err(self.close(ErrorCode::Unspecified, "the client asked to close"));
            }
        }
    }

    /// A connection of A2A's gRPC binding: access now, with the TLS chain (the calls wait for
    /// [`is_ready`](Self::is_ready)).
    pub fn grpc_access(&mut self, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        self.binding = Binding::Grpc;
        if self.state != State::Fresh {
            return Ok(());
        }
        let Some(agent) = self.agent.clone() else {
            return Err(self.close(
                ErrorCode::TlsRequired,
                "A2A through the gateway needs TLS with the agent's ACA certificate as client certificate",
            ));
        };
        self.state = State::Accessing;
        self.last_heartbeat = Some(now);
        push(up, &self.access_request(agent));
        Ok(())
    }

    /// Whether a call can be served now: accessed, and none waiting for its answer.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready && self.pending.is_none()
    }

    /// Serves one gRPC call: `method` of `lf.a2a.v1.A2AService` with its request in A2A's
    /// JSON. The agent is the request's `tenant`, `<domain>/<name>` (the tenant of the
    /// interface its card names). Answers come from [`take_grpc`](Self::take_grpc).
    pub fn grpc_call(&mut self, method: &str, params: &Value, now: Instant, up: &mut FrameEncoder) {
        self.binding = Binding::Grpc;
        self.heartbeat_if_due(now, up);
        let tenant = params
            .get("tenant")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let agent = tenant
            .split_once('/')
            .and_then(|(d, n)| AgentId::new(&Domain::new(d).ok()?, n).ok());
        let Some(agent) = agent else {
            let text = "the request's tenant names the agent: <domain>/<name>";
            return self.fail(&Value::Null, -32602, text, ErrorCode::InvalidField);
        };
        self.dispatch(agent, Value::Null, method, params, up);
    }

    /// The next answer to a gRPC call.
    pub fn take_grpc(&mut self) -> Option<GrpcAnswer> {
        self.grpc.pop_front()
    }

    /// Bytes that wait behind an unanswered request are bounded.
    fn bounded(&mut self) -> Result<(), Close> {
        if self.input.len() > MAX_HEAD + self.max_body {
            return Err(self.close(ErrorCode::Overloaded, "too many requests pipelined"));
        }
        Ok(())
    }

    fn close(&mut self, code: ErrorCode, text: &str) -> Close {
        self.state = State::Closed;
        Close {
            code,
            text: text.to_owned(),
        }
    }

    /// Takes the request at the front of the input once it is whole: its head parsed until
    /// whole, then kept while the body's bytes are only counted.
    fn parse(&mut self) -> Parsed {
        let preface = self.input.len().min(HTTP2_PREFACE.len());
        if self.head.is_none() && self.input.starts_with(b"PRI ") {
            if self.input[..preface] != HTTP2_PREFACE[..preface] {
                return Parsed::Refused(400, "not an HTTP/1.1 request");
            }
            if preface < HTTP2_PREFACE.len() {
                return Parsed::Incomplete;
            }
            return Parsed::Http2;
        }
        let head = match self.head.take() {
            Some(head) => head,
            None => match self.parse_head() {
                Ok(Some(head)) => head,
                Ok(None) => return Parsed::Incomplete,
                Err((status, text)) => return Parsed::Refused(status, text),
            },
        };
        if self.input.len() < head.len + head.body {
            self.head = Some(head);
            return Parsed::Incomplete;
        }
        let mut whole = self.input.split_to(head.len + head.body);
        let body = whole.split_off(head.len).freeze();
        Parsed::Request(Request {
            method: head.method,
            path: head.path,
            host: head.host,
            body,
        })
    }

    fn parse_head(&mut self) -> Result<Option<Head>, (u16, &'static str)> {
        // Empty lines before a request line are ignored (RFC 9112, 2.2).
        let blank = self
            .input
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        let _ = self.input.split_to(blank);
        // Parsed again at each read until whole (garbage is refused at its first byte); a
        // head is at most MAX_HEAD bytes, so a client dripping it costs a bounded parse per
        // read, and never more once the head is whole.
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(&self.input) {
            Ok(httparse::Status::Complete(n)) => n,
            Err(httparse::Error::TooManyHeaders) => return Err((431, "too many headers")),
            Ok(httparse::Status::Partial) if self.input.len() > MAX_HEAD => {
                return Err((431, "request head too large"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err((400, "not an HTTP/1.1 request")),
        };
        if len > MAX_HEAD {
            return Err((431, "request head too large"));
        }
        let mut body = 0usize;
        let mut host = String::new();
        for h in request.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                body = value.parse().map_err(|_| (400, "bad Content-Length"))?;
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err((411, "a request body needs a Content-Length"));
            } else if h.name.eq_ignore_ascii_case("host") {
                host = value.to_owned();
            } else if h.name.eq_ignore_ascii_case("connection")
                && value.eq_ignore_ascii_case("close")
            {
                self.close_after = true;
            }
        }
        if request.version == Some(0) {
            self.close_after = true;
        }
        if body > self.max_body {
            return Err((413, "request body too large"));
        }
        Ok(Some(Head {
            len,
            body,
            method: request.method.unwrap_or("").to_owned(),
            path: request.path.unwrap_or("/").to_owned(),
            host,
        }))
    }

    /// The first request: access first, with the TLS chain; the request stays for later.
    fn access(
        &mut self,
        request: Request,
        now: Instant,
        up: &mut FrameEncoder,
    ) -> Result<(), Close> {
        let Some(agent) = self.agent.clone() else {
            self.respond_json(
                401,
                &rpc_error(&Value::Null, -32600, "A2A through the gateway needs TLS with the agent's ACA certificate as client certificate", ErrorCode::TlsRequired),
            );
            return Err(self.close(
                ErrorCode::TlsRequired,
                "A2A request without a client certificate",
            ));
        };
        self.state = State::Accessing;
        self.last_heartbeat = Some(now);
        push(up, &self.access_request(agent));
        self.first = Some(request);
        Ok(())
    }

    fn access_request(&self, agent: String) -> pb::AccessRequest {
        pb::AccessRequest {
            agent,
            certificate_chain: self.chain.clone(),
            signature: Bytes::new(),
            protocols: vec![pb::Protocol::A2a as i32],
            languages: Vec::new(),
            heartbeat_interval_ms: HEARTBEAT_EVERY.as_millis() as u32,
            translation_originals: false,
        }
    }

    fn heartbeat_if_due(&mut self, now: Instant, up: &mut FrameEncoder) {
        if self
            .last_heartbeat
            .is_some_and(|t| now.saturating_duration_since(t) < HEARTBEAT_EVERY / 2)
        {
            return;
        }
        self.sequence += 1;
        self.last_heartbeat = Some(now);
        push(
            up,
            &pb::Heartbeat {
                status: pb::Status::Running as i32,
                sequence: self.sequence,
            },
        );
    }

    fn serve(&mut self, request: Request, up: &mut FrameEncoder) {
        let Some(rest) = request.path.strip_prefix(PATH) else {
            if request.method == "GET" && request.path == CARD {
                let card = self.gateway_card(&request.host);
                self.respond_json(200, &card);
            } else {
                self.error_page(404, "A2A agents are served at /a2a/<domain>/<name>");
            }
            return;
        };
        let (target, card) = match rest.strip_suffix(CARD) {
            Some(target) => (target, true),
            None => (rest.trim_end_matches('/'), false),
        };
        // /a2a/<domain>/<name>, then (HTTP+JSON binding) the operation.
        let mut parts = target.splitn(3, '/');
        let (domain, name, operation) = (parts.next(), parts.next(), parts.next());
        let agent = domain
            .zip(name)
            .and_then(|(d, n)| AgentId::new(&Domain::new(d).ok()?, n).ok());
        let Some(agent) = agent else {
            self.error_page(404, "not an agent: /a2a/<domain>/<name>");
            return;
        };
        self.binding = if operation.is_some() {
            Binding::Rest
        } else {
            Binding::JsonRpc
        };
        match (request.method.as_str(), card, operation) {
            ("GET", true, None) => {
                let card = self.agent_card(&agent, &request.host);
                self.respond_json(200, &card);
            }
            ("POST", false, None) => self.rpc(agent, &request.body, up),
            (method, false, Some(operation)) => {
                self.rest(agent, method, operation, &request.body, up);
            }
            _ => self.error_page(405, "GET the card, POST JSON-RPC to the agent's URL"),
        }
    }

    /// A request of A2A's HTTP+JSON binding: the same operations as JSON-RPC's, the request
    /// and the answer without the JSON-RPC envelope, errors as HTTP statuses.
    fn rest(
        &mut self,
        agent: AgentId,
        method: &str,
        operation: &str,
        body: &[u8],
        up: &mut FrameEncoder,
    ) {
        let params = || serde_json::from_slice::<Value>(body);
        let task = operation
            .strip_prefix("tasks/")
            .filter(|t| !t.is_empty() && !t.contains('/'));
        match (method, operation, task) {
            ("POST", "message:send" | "message:stream", _) => match params() {
                Ok(params) => {
                    let streaming = operation == "message:stream";
                    self.send(agent, Value::Null, &params, streaming, up);
                }
                Err(_) => self.fail(&Value::Null, -32700, "invalid JSON", ErrorCode::Malformed),
            },
            ("POST", _, Some(t)) if t.ends_with(":cancel") => {
                let id = json!({ "id": t.trim_end_matches(":cancel") });
                self.cancel_task(&Value::Null, &id);
            }
            ("GET", _, Some(t)) if !t.contains(':') => {
                self.get_task(&Value::Null, &json!({ "id": t }));
            }
            ("GET" | "POST", "tasks" | "extendedAgentCard", _) | ("GET" | "POST", _, Some(_)) => {
                let text = format!("{operation} is not supported by the gateway");
                self.fail(&Value::Null, -32004, &text, ErrorCode::UnexpectedMessage);
            }
            _ => {
                let text = format!("no operation {method} {operation}");
                self.fail(&Value::Null, -32601, &text, ErrorCode::UnexpectedMessage);
            }
        }
    }

    /// Answers the request being served with `result`, in its binding.
    fn succeed(&mut self, id: &Value, result: Value) {
        let answer = match self.binding {
            Binding::JsonRpc => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            Binding::Rest => result,
            Binding::Grpc => return self.grpc.push_back(GrpcAnswer::Reply(result)),
        };
        self.respond_json(200, &answer);
    }

    /// Answers the request being served with an error, in its binding: a JSON-RPC error with
    /// `code`, or the HTTP status and error body the HTTP+JSON binding gives it.
    fn fail(&mut self, id: &Value, code: i64, message: &str, reason: ErrorCode) {
        let error = rpc_error(id, code, message, reason);
        match self.binding {
            Binding::JsonRpc => self.respond_json(200, &error),
            Binding::Rest => self.respond_rest_error(&error),
            Binding::Grpc => self
                .grpc
                .push_back(GrpcAnswer::Error(error["error"].clone())),
        }
    }

    fn get_task(&mut self, id: &Value, params: &Value) {
        match self.task_named(params).map(Task::to_json) {
            Some(task) => self.succeed(id, task),
            None => self.fail(
                id,
                -32001,
                "no such task on this connection",
                ErrorCode::InvalidField,
            ),
        }
    }

    fn cancel_task(&mut self, id: &Value, params: &Value) {
        let answer = match self.task_named_mut(params) {
            None => Err((
                -32001,
                "no such task on this connection",
                ErrorCode::InvalidField,
            )),
            Some(task) if task.state.is_final() => {
                Err((-32002, "the task is finished", ErrorCode::UnexpectedMessage))
            }
            Some(task) => {
                task.state = TaskState::Canceled;
                Ok(task.to_json())
            }
        };
        match answer {
            Ok(task) => self.succeed(id, task),
            Err((code, text, reason)) => self.fail(id, code, text, reason),
        }
    }

    fn rpc(&mut self, agent: AgentId, body: &[u8], up: &mut FrameEncoder) {
        let request: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(_) => return self.fail(&Value::Null, -32700, "invalid JSON", ErrorCode::Malformed),
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let (Some("2.0"), Some(method)) = (
            request.get("jsonrpc").and_then(Value::as_str),
            request.get("method").and_then(Value::as_str),
        ) else {
            let text = "not a JSON-RPC 2.0 request";
            return self.fail(&id, -32600, text, ErrorCode::Malformed);
        };
        let params = request.get("params").cloned().unwrap_or(Value::Null);
        self.dispatch(agent, id, method, &params, up);
    }

    /// One A2A operation, by its JSON-RPC method name (the gRPC method's too).
    fn dispatch(
        &mut self,
        agent: AgentId,
        id: Value,
        method: &str,
        params: &Value,
        up: &mut FrameEncoder,
    ) {
        match method {
            "SendMessage" | "SendStreamingMessage" => {
                self.send(agent, id, params, method == "SendStreamingMessage", up);
            }
            "GetTask" => self.get_task(&id, params),
            "CancelTask" => self.cancel_task(&id, params),
            "CreateTaskPushNotificationConfig"
            | "GetTaskPushNotificationConfig"
            | "ListTaskPushNotificationConfigs"
            | "DeleteTaskPushNotificationConfig" => {
                let text = "push notifications are not supported";
                self.fail(&id, -32003, text, ErrorCode::UnexpectedMessage);
            }
            "ListTasks" | "SubscribeToTask" | "GetExtendedAgentCard" => {
                let text = format!("{method} is not supported by the gateway");
                self.fail(&id, -32004, &text, ErrorCode::UnexpectedMessage);
            }
            _ => {
                let text = format!("no method {method}");
                self.fail(&id, -32601, &text, ErrorCode::UnexpectedMessage);
            }
        }
    }

    fn task_named(&self, params: &Value) -> Option<&Task> {
        self.tasks.get(params.get("id")?.as_str()?)
    }

    fn task_named_mut(&mut self, params: &Value) -> Option<&mut Task> {
        self.tasks.get_mut(params.get("id")?.as_str()?)
    }

    fn send(
        &mut self,
        agent: AgentId,
        rpc_id: Value,
        params: &Value,
        streaming: bool,
        up: &mut FrameEncoder,
    ) {
        let Some(message) = params.get("message").filter(|m| m.is_object()) else {
            let text = "params.message is required";
            return self.fail(&rpc_id, -32602, text, ErrorCode::MissingField);
        };
        let (content_type, payload) = match payload_of(message) {
            Ok(p) => p,
            Err(text) => return self.fail(&rpc_id, -32005, text, ErrorCode::InvalidField),
        };
        let n = self.next;
        self.next += 1;
        let task_id = message
            .get("taskId")
            .and_then(Value::as_str)
            .filter(|t| self.tasks.get(*t).is_some_and(|t| !t.state.is_final()))
            .map_or_else(|| format!("task-{n}"), str::to_owned);
        let context = message
            .get("contextId")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map_or_else(|| format!("context-{n}"), str::to_owned);
        let session_id = session_of(&context);
        self.sessions.insert(session_id, context.clone());
        let language = message
            .pointer("/metadata/language")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let native = pb::AgentMessage {
            destination: agent.as_str().to_owned(),
            source: self.agent.clone().unwrap_or_default(),
            message_id: n,
            session_id,
            content_type,
            language,
            source_protocol: pb::Protocol::A2a as i32,
            translate_to: String::new(),
            translation: None,
            session_header: None,
            correlation: Bytes::from(task_id.clone().into_bytes()),
            payload,
        };
        if up.push_data(&native, DEFAULT_HOP_LIMIT).is_err() {
            let text = "the message is larger than this gateway relays";
            return self.fail(&rpc_id, -32602, text, ErrorCode::TooLarge);
        }
        let mut sent = message.clone();
        sent["taskId"] = json!(task_id);
        sent["contextId"] = json!(context);
        self.remember(Task {
            id: task_id.clone(),
            context,
            state: TaskState::Submitted,
            history: vec![sent],
            status_message: None,
            reason: None,
        });
        self.sent.insert(n, task_id.clone());
        let immediate = params
            .pointer("/configuration/returnImmediately")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        self.pending = Some(Pending {
            binding: self.binding,
            rpc_id,
            task: task_id.clone(),
            streaming,
            immediate,
            since: Instant::now(),
        });
        if streaming {
            if self.binding != Binding::Grpc {
                self.out.extend_from_slice(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
                );
            }
            if let Some(task) = self.tasks.get(&task_id) {
                let first = json!({ "task": task.to_json() });
                self.event(&first);
            }
        }
    }

    fn remember(&mut self, task: Task) {
        if !self.tasks.contains_key(&task.id) {
            while self.order.len() >= TASKS_KEPT {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.tasks.remove(&old);
                self.sent.retain(|_, t| *t != old);
            }
            self.order.push_back(task.id.clone());
        }
        self.tasks.insert(task.id.clone(), task);
    }

    /// A frame the gateway queued for the client, as HTTP. NACKs and ACKs of the client's own
    /// (its reply ACKs) go to `up`.
    pub fn to_client(&mut self, message: Message, up: &mut FrameEncoder) {
        if self.state == State::Closed {
            return;
        }
        match message {
            Message::AccessReply(reply) => match reply.error {
                None => self.accessed(),
                Some(e) => {
                    let code = e.error_code();
                    let status = match code {
                        ErrorCode::Overloaded | ErrorCode::Draining | ErrorCode::RateLimited => 503,
                        _ => 403,
                    };
                    let text = format!("{}: {}", code.as_str_name(), e.detail);
                    let error = rpc_error(&Value::Null, -32600, &text, code);
                    if self.binding == Binding::Grpc {
                        self.grpc
                            .push_back(GrpcAnswer::Error(error["error"].clone()));
                    } else {
                        self.respond_json(status, &error);
                    }
                    self.state = State::Closed;
                }
            },
            Message::Ack(ack) => {
                if let Some(task) = self.sent.get(&ack.message_id).cloned() {
                    self.advance(&task, TaskState::Working, None, None);
                }
            }
            Message::Nack(nack) => {
                if let Some(task) = self.sent.remove(&nack.message_id) {
                    let reason = nack.reason();
                    let text = format!("{}: {}", reason.as_str_name(), nack.detail);
                    let status = agent_message(&task, None, json!([{ "text": text }]));
                    self.advance(
                        &task,
                        nack_state(reason),
                        Some(status),
                        Some((reason, nack.detail)),
                    );
                }
            }
            Message::AgentMessage(m) => self.reply(m, up),
            Message::Notification(n) => {
                let text = format!("{}: {}", n.code().as_str_name(), n.text);
                let error = rpc_error(&Value::Null, -32603, &text, n.code());
                if self.pending.is_some() {
                    self.finish_pending(Some(error));
                } else if self.binding == Binding::Grpc {
                    self.grpc
                        .push_back(GrpcAnswer::Error(error["error"].clone()));
                }
                self.state = State::Closed;
            }
            _ => {}
        }
    }

    /// A message for the client: the reply to one of its tasks, or NACKed.
    fn reply(&mut self, m: pb::AgentMessage, up: &mut FrameEncoder) {
        let me = self.agent.clone().unwrap_or_default();
        let task = std::str::from_utf8(&m.correlation).ok().map(str::to_owned);
        let open = task
            .as_ref()
            .and_then(|t| self.tasks.get(t))
            .is_some_and(|t| !t.state.is_final());
        let Some(task) = task.filter(|_| open) else {
            push(
                up,
                &pb::Nack {
                    destination: m.source.clone(),
                    original_destination: me.clone(),
                    message_id: m.message_id,
                    reason: ErrorCode::UnexpectedMessage as i32,
                    reporter: me,
                    detail: "an A2A client takes only replies to its open tasks (correlation: the task ID)".into(),
                    retry_after_ms: 0,
                },
            );
            return;
        };
        push(
            up,
            &pb::Ack {
                destination: m.source.clone(),
                source: me,
                message_id: m.message_id,
            },
        );
        let mut reply = agent_message(
            &task,
            self.sessions.get(&m.session_id),
            parts_of(&m.content_type, &m.payload),
        );
        if !m.language.is_empty() {
            reply["metadata"] = json!({ "language": m.language });
        }
        if let Some(t) = &m.translation {
            reply["metadata"]["agw.translation"] = crate::translation::a2a_metadata(t);
        }
        if let Some(t) = self.tasks.get_mut(&task) {
            t.history.push(reply.clone());
        }
        self.sent.retain(|_, t| *t != task);
        self.advance(&task, TaskState::Completed, Some(reply), None);
    }

    /// Moves a task on; the pending request learns of it (an event, or its answer).
    fn advance(
        &mut self,
        id: &str,
        state: TaskState,
        message: Option<Value>,
        reason: Option<(ErrorCode, String)>,
    ) {
        let Some(task) = self.tasks.get_mut(id) else {
            return;
        };
        if task.state.is_final() {
            return;
        }
        task.state = state;
        if message.is_some() {
            task.status_message = message;
        }
        if reason.is_some() {
            task.reason = reason;
        }
        let Some(pending) = self.pending.as_ref().filter(|p| p.task == id) else {
            return;
        };
        if pending.streaming {
            let event = task.status_event();
            self.event(&event);
            if state.is_final() {
                self.finish_pending(None);
            }
        } else if state.is_final() || pending.immediate {
            self.finish_pending(None);
        }
    }

    /// Time passes: a blocking request that waited [`ANSWER_WITHIN`] is answered with its task
    /// as it stands. Returns whether anything was written.
    pub fn tick(&mut self, now: Instant) -> bool {
        let due = self.pending.as_ref().is_some_and(|p| {
            !p.streaming && now.saturating_duration_since(p.since) >= ANSWER_WITHIN
        });
        if due {
            self.finish_pending(None);
        }
        due
    }

    /// Answers the pending request: with its task, or `error` (a JSON-RPC error).
    fn finish_pending(&mut self, error: Option<Value>) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let answer = match error {
            Some(mut e) => {
                e["id"] = pending.rpc_id.clone();
                Err(e)
            }
            None => {
                let task = self
                    .tasks
                    .get(&pending.task)
                    .map(Task::to_json)
                    .unwrap_or(Value::Null);
                Ok(json!({ "task": task }))
            }
        };
        match (pending.streaming, pending.binding, answer) {
            (true, Binding::Grpc, Ok(_)) => return self.grpc.push_back(GrpcAnswer::Done),
            (_, Binding::Grpc, Err(e)) => {
                return self.grpc.push_back(GrpcAnswer::Error(e["error"].clone()));
            }
            (false, Binding::Grpc, Ok(result)) => {
                return self.grpc.push_back(GrpcAnswer::Reply(result));
            }
            (true, _, Ok(_)) => {}
            (true, Binding::JsonRpc, Err(e)) => self.sse(None, &e),
            (true, Binding::Rest, Err(e)) => self.sse(Some("error"), &rest_error(&e).1),
            (false, Binding::JsonRpc, Ok(result)) => {
                let answer = json!({ "jsonrpc": "2.0", "id": pending.rpc_id, "result": result });
                self.respond_json(200, &answer);
            }
            (false, Binding::Rest, Ok(result)) => self.respond_json(200, &result),
            (false, Binding::JsonRpc, Err(e)) => self.respond_json(200, &e),
            (false, Binding::Rest, Err(e)) => self.respond_rest_error(&e),
        }
        if pending.streaming {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
    }

    /// One SSE event of the pending stream: a `StreamResponse`, wrapped in a JSON-RPC
    /// response for that binding, as is for HTTP+JSON.
    fn event(&mut self, value: &Value) {
        let body = match self.pending.as_ref() {
            Some(p) if p.binding == Binding::JsonRpc => {
                json!({ "jsonrpc": "2.0", "id": p.rpc_id, "result": value })
            }
            Some(p) if p.binding == Binding::Grpc => {
                return self.grpc.push_back(GrpcAnswer::Event(value.clone()));
            }
            _ => value.clone(),
        };
        self.sse(None, &body);
    }

    /// An SSE event (named `event`, if any) as a chunk of the response.
    fn sse(&mut self, event: Option<&str>, data: &Value) {
        let name = event.map(|e| format!("event: {e}\n")).unwrap_or_default();
        let data = format!("{name}data: {data}\n\n");
        let _ = write!(Chunk(&mut self.out), "{:x}\r\n{data}\r\n", data.len());
    }

    fn respond_json(&mut self, status: u16, value: &Value) {
        let body = value.to_string();
        self.respond(status, "application/json", body.as_bytes());
    }

    /// An HTTP+JSON binding's error: an answer like any other, the connection stays.
    fn respond_rest_error(&mut self, error: &Value) {
        let (status, body) = rest_error(error);
        let body = body.to_string();
        self.respond_as(
            status,
            "application/json",
            body.as_bytes(),
            self.close_after,
        );
    }

    fn error_page(&mut self, status: u16, text: &str) {
        self.respond(status, "text/plain; charset=utf-8", text.as_bytes());
    }

    /// A response; one refusing the request at the HTTP level (400, 411, 413, 431...) closes
    /// the connection after it.
    fn respond(&mut self, status: u16, content_type: &str, body: &[u8]) {
        let close = self.close_after || status >= 400 && status != 404 && status != 405;
        self.respond_as(status, content_type, body, close);
    }

    fn respond_as(&mut self, status: u16, content_type: &str, body: &[u8], close: bool) {
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            411 => "Length Required",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            500 => "Internal Server Error",
            _ => "Error",
        };
        let close = if close { "connection: close\r\n" } else { "" };
        let _ = write!(
            Chunk(&mut self.out),
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{close}\r\n",
            body.len()
        );
        self.out.extend_from_slice(body);
    }

    /// The card of `agent`, served by this gateway: from its registry profile where there is
    /// one.
    fn agent_card(&self, agent: &AgentId, host: &str) -> Value {
        let profile = self
            .directory
            .as_ref()
            .and_then(|d| d.profile(agent.as_str()));
        let url = format!("https://{host}{PATH}{}/{}", agent.domain(), agent.name());
        let (description, skills) = match &profile {
            Some(p) => (
                p.description.clone(),
                p.capabilities
                    .iter()
                    .map(|c| json!({ "id": c, "name": c, "description": format!("{c} (registry capability)"), "tags": [c] }))
                    .collect::<Vec<_>>(),
            ),
            None => (format!("{agent}, reached through the agent gateway"), Vec::new()),
        };
        let mut card = card_shell(agent.name(), &description, &url);
        // gRPC: the gateway's address, the agent named by the tenant of every request.
        if let Some(interfaces) = card["supportedInterfaces"].as_array_mut() {
            interfaces.push(json!({
                "url": host,
                "protocolBinding": "GRPC",
                "protocolVersion": VERSION,
                "tenant": format!("{}/{}", agent.domain(), agent.name()),
            }));
        }
        card["skills"] = json!(skills);
        if let Some(p) = profile {
            card["metadata"] = json!({ "agw.agent": agent.as_str(), "agw.languages": p.languages, "agw.status": p.status().as_str_name() });
            if !p.languages.is_empty() {
                card["defaultInputModes"] = json!(["text/plain", "application/json"]);
            }
        }
        card
    }

    /// The gateway's own card: where its agents are.
    fn gateway_card(&self, host: &str) -> Value {
        let url = format!("https://{host}{PATH}");
        card_shell(
            "agent gateway",
            "Every agent this gateway routes to is an A2A server at /a2a/<domain>/<name>, its card below it",
            &url,
        )
    }
}

fn card_shell(name: &str, description: &str, url: &str) -> Value {
    json!({
        "name": name,
        "description": description,
        "version": env!("CARGO_PKG_VERSION"),
        "supportedInterfaces": [
            { "url": url, "protocolBinding": "JSONRPC", "protocolVersion": VERSION },
            { "url": url, "protocolBinding": "HTTP+JSON", "protocolVersion": VERSION },
        ],
        "provider": { "organization": "agent gateway", "url": url },
        "capabilities": { "streaming": true, "pushNotifications": false },
        "securitySchemes": { "mtls": { "mtlsSecurityScheme": { "description": "mutual TLS with an ACA certificate of the gateway's domain or a peer's" } } },
        "securityRequirements": [{ "schemes": { "mtls": { "list": [] } } }],
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [],
    })
}

/// An A2A message from the destination (role agent) in task `task`.
fn agent_message(task: &str, context: Option<&String>, parts: Value) -> Value {
    let mut m = json!({
        "messageId": format!("{task}-agent"),
        "taskId": task,
        "role": "ROLE_AGENT",
        "parts": parts,
    });
    if let Some(c) = context {
        m["contextId"] = json!(c);
    }
    m
}

/// A message's parts as a native payload: one text part as its text, one data part as JSON,
/// one raw part as its bytes; anything else as the parts themselves ([`PARTS_TYPE`]).
pub fn payload_of(message: &Value) -> Result<(String, Bytes), &'static str> {
    let parts = message
        .get("parts")
        .and_then(Value::as_array)
        .filter(|p| !p.is_empty())
        .ok_or("a message needs parts")?;
    if let [part] = parts.as_slice() {
        let media = part.get("mediaType").and_then(Value::as_str);
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            let kind = media.unwrap_or("text/plain").to_owned();
            return Ok((kind, Bytes::from(text.to_owned())));
        }
        if let Some(data) = part.get("data") {
            let kind = media.unwrap_or("application/json").to_owned();
            return Ok((kind, Bytes::from(data.to_string())));
        }
        if let Some(raw) = part.get("raw").and_then(Value::as_str) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .map_err(|_| "a raw part is not base64")?;
            let kind = media.unwrap_or("application/octet-stream").to_owned();
            return Ok((kind, Bytes::from(bytes)));
        }
    }
    if parts.iter().any(|p| !p.is_object()) {
        return Err("a part is not an object");
    }
    Ok((
        PARTS_TYPE.to_owned(),
        Bytes::from(Value::Array(parts.clone()).to_string()),
    ))
}

/// A native payload as A2A parts (the inverse of [`payload_of`]).
pub fn parts_of(content_type: &str, payload: &[u8]) -> Value {
    let base = content_type.split(';').next().unwrap_or("").trim();
    if base == PARTS_TYPE {
        if let Ok(parts @ Value::Array(_)) = serde_json::from_slice(payload) {
            return parts;
        }
    }
    let json_type = base == "application/json" || base.ends_with("+json");
    if json_type {
        if let Ok(data) = serde_json::from_slice::<Value>(payload) {
            return json!([{ "data": data, "mediaType": base }]);
        }
    }
    match std::str::from_utf8(payload) {
        Ok(text) if base.is_empty() || base.starts_with("text/") => {
            json!([{ "text": text, "mediaType": if base.is_empty() { "text/plain" } else { base } }])
        }
        _ => {
            let raw = base64::engine::general_purpose::STANDARD.encode(payload);
            let media = if base.is_empty() {
                "application/octet-stream"
            } else {
                base
            };
            json!([{ "raw": raw, "mediaType": media }])
        }
    }
}

/// A context ID's session: FNV-1a of it, never 0.
fn session_of(context: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in context.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// A JSON-RPC error whose data names the gateway's reason (the `ErrorInfo` shape a2a-sdk
/// reads).
fn rpc_error(id: &Value, code: i64, message: &str, reason: ErrorCode) -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": code,
            "message": message,
            "data": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason.as_str_name(),
                "domain": "agw",
                "metadata": { "agw.reason": reason.as_str_name() },
            }],
        },
    })
}

/// A JSON-RPC error (from [`rpc_error`]) as the HTTP+JSON binding gives it: the HTTP status
/// and `{"error": {code, status, message, details}}` with an `ErrorInfo` whose reason is
/// A2A's (as a2a-sdk maps them) and whose metadata keeps the gateway's.
pub(crate) fn rest_error(rpc: &Value) -> (u16, Value) {
    let error = rpc.get("error").unwrap_or(rpc);
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(-32603);
    let (status, grpc, reason) = match code {
        -32700 | -32600 => (400, "INVALID_ARGUMENT", "INVALID_REQUEST"),
        -32602 => (400, "INVALID_ARGUMENT", "INVALID_PARAMS"),
        -32601 => (404, "NOT_FOUND", "METHOD_NOT_FOUND"),
        -32001 => (404, "NOT_FOUND", "TASK_NOT_FOUND"),
        -32002 => (400, "FAILED_PRECONDITION", "TASK_NOT_CANCELABLE"),
        -32003 => (
            400,
            "FAILED_PRECONDITION",
            "PUSH_NOTIFICATION_NOT_SUPPORTED",
        ),
        -32004 => (400, "FAILED_PRECONDITION", "UNSUPPORTED_OPERATION"),
        -32005 => (400, "INVALID_ARGUMENT", "CONTENT_TYPE_NOT_SUPPORTED"),
        _ => (500, "INTERNAL", "INTERNAL_ERROR"),
    };
    let gateway = error
        .pointer("/data/0/metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let body = json!({
        "error": {
            "code": status,
            "status": grpc,
            "message": error.get("message").cloned().unwrap_or_default(),
            "details": [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "a2a-protocol.org",
                "metadata": gateway,
            }],
        },
    });
    (status, body)
}

fn push<M: agw_proto::WireMessage>(up: &mut FrameEncoder, message: &M) {
    let _ = up.push(message);
}

/// `fmt::Write` into a byte buffer.
struct Chunk<'a>(&'a mut BytesMut);

impl std::fmt::Write for Chunk<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Whether a connection's first bytes are an HTTP/1.1 request (a method and a space).
pub fn looks_like_http(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 7] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        // HTTP/2's connection preface (gRPC): refused by the adapter in HTTP/2's own terms.
        b"PRI ",
    ];
    METHODS.iter().any(|m| first.starts_with(m))
}

/// HTTP/2's client connection preface (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What an HTTP/2 client (gRPC) is answered: the server's preface (an empty SETTINGS frame)
/// and a GOAWAY with `HTTP_1_1_REQUIRED` (0xd) saying why, as RFC 9113 has a server do that
/// will not speak HTTP/2; then the connection closes.
fn http2_refusal() -> Vec<u8> {
    const WHY: &[u8] =
        b"agw: A2A's gRPC binding is not served; use JSON-RPC or HTTP+JSON over HTTP/1.1";
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + WHY.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0xdu32.to_be_bytes());
    out.extend_from_slice(WHY);
    out
}

/// The adapter's fuzz check, shared by the cargo-fuzz target `a2a` (`fuzz/`) and the test
/// that replays its seed corpus on stable: `data` is what a client sends, read whole and in
/// 7-byte reads (its access accepted once asked for, every message ACKed by its destination).
/// Returns the native messages made, the bytes answered and how the input ended. Panics only
/// if the two readings disagree: hostile input must be answered or closed, never panic.
pub fn check_client_bytes(data: &[u8]) -> (Vec<Message>, Vec<u8>, Result<(), Close>) {
    let whole = client_bytes(data, data.len().max(1));
    let chunked = client_bytes(data, 7);
    assert_eq!(
        whole, chunked,
        "the same bytes read in chunks made something else"
    );
    whole
}

fn client_bytes(data: &[u8], chunk: usize) -> (Vec<Message>, Vec<u8>, Result<(), Close>) {
    let limits = agw_proto::FrameLimits {
        max_data_body: 4096,
    };
    let mut adapter = A2aAdapter::new(
        Some("spiffe://a.example/agent/alice".into()),
        vec![Bytes::from_static(b"leaf")],
        8192,
        None,
    );
    let now = Instant::now();
    let mut up = FrameEncoder::new(limits);
    let mut messages = Vec::new();
    let mut result = Ok(());
    for piece in data.chunks(chunk) {
        adapter.input().extend_from_slice(piece);
        // Every request answered at once: its access accepted, its messages ACKed.
        loop {
            result = adapter.from_client(now, &mut up);
            let made = decode_all(&mut up, limits);
            let mut answered = false;
            for m in &made {
                let answer = match m {
                    Message::AccessRequest(_) => Message::AccessReply(pb::AccessReply::default()),
                    Message::AgentMessage(m) => Message::Ack(pb::Ack {
                        destination: m.source.clone(),
                        source: m.destination.clone(),
                        message_id: m.message_id,
                    }),
                    _ => continue,
                };
                adapter.to_client(answer, &mut up);
                answered = true;
            }
            if let Some(pending) = adapter.pending.as_ref() {
                // The destination's reply completes the task.
                let reply = pb::AgentMessage {
                    source: "spiffe://a.example/agent/bob".into(),
                    correlation: Bytes::from(pending.task.clone().into_bytes()),
                    payload: Bytes::from_static(b"done"),
                    ..Default::default()
                };
                adapter.to_client(Message::AgentMessage(reply), &mut up);
                answered = true;
            }
            messages.extend(made);
            messages.extend(decode_all(&mut up, limits));
            if !answered || result.is_err() {
                break;
            }
        }
        if result.is_err() {
            break;
        }
    }
    (messages, adapter.take_out().to_vec(), result)
}

/// The frames `up` holds, decoded (for the adapters' fuzz checks).
pub(crate) fn decode_all(up: &mut FrameEncoder, limits: agw_proto::FrameLimits) -> Vec<Message> {
    let mut decoder = agw_proto::FrameDecoder::new(limits);
    decoder.extend_from_slice(&up.take());
    let mut messages = Vec::new();
    while let Ok(Some(frame)) = decoder.decode() {
        if let Ok(m) = frame.message() {
            messages.push(m);
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "spiffe://a.example/agent/alice";

    fn accessed() -> (A2aAdapter, FrameEncoder) {
        let mut a = A2aAdapter::new(Some(ALICE.into()), Vec::new(), 8192, None);
        a.state = State::Ready;
        a.last_heartbeat = Some(Instant::now());
        (a, FrameEncoder::new(agw_proto::FrameLimits::default()))
    }

    #[test]
    fn parts_and_payloads_map_both_ways() {
        let text = json!({ "parts": [{ "text": "hola" }] });
        assert_eq!(
            payload_of(&text).unwrap(),
            ("text/plain".into(), Bytes::from("hola"))
        );
        let data = json!({ "parts": [{ "data": { "n": 1 } }] });
        let (kind, payload) = payload_of(&data).unwrap();
        assert_eq!(
            (kind.as_str(), &payload[..]),
            ("application/json", &b"{\"n\":1}"[..])
        );
        assert_eq!(
            parts_of(&kind, &payload),
            json!([{ "data": { "n": 1 }, "mediaType": "application/json" }])
        );
        let raw = json!({ "parts": [{ "raw": "AAEC", "mediaType": "image/png" }] });
        assert_eq!(
            payload_of(&raw).unwrap(),
            ("image/png".into(), Bytes::from_static(&[0, 1, 2]))
        );
        assert_eq!(
            parts_of("image/png", &[0, 1, 2]),
            json!([{ "raw": "AAEC", "mediaType": "image/png" }])
        );
        let two = json!({ "parts": [{ "text": "a" }, { "url": "https://x/y" }] });
        let (kind, payload) = payload_of(&two).unwrap();
        assert_eq!(kind, PARTS_TYPE);
        assert_eq!(parts_of(&kind, &payload), two["parts"]);
        assert!(payload_of(&json!({ "parts": [] })).is_err());
        assert!(payload_of(&json!({ "parts": [{ "raw": "not base64!" }] })).is_err());
        // Text in a JSON type that is not JSON stays text; bytes that are not UTF-8 are raw.
        assert_eq!(
            parts_of("", b"hi"),
            json!([{ "text": "hi", "mediaType": "text/plain" }])
        );
        assert_eq!(
            parts_of("text/plain", &[0xff]),
            json!([{ "raw": "/w==", "mediaType": "text/plain" }])
        );
    }

    #[test]
    fn a_request_dripped_a_byte_at_a_time_is_served_and_its_head_kept_while_the_body_comes() {
        let (mut a, mut up) = accessed();
        let request =
            b"\r\nGET /a2a/a.example/bob/.well-known/agent-card.json HTTP/1.1\r\nHost: gw\r\n\r\n";
        for (i, byte) in request.iter().enumerate() {
            a.input().extend_from_slice(&[*byte]);
            a.from_client(Instant::now(), &mut up).unwrap();
            if i + 1 < request.len() {
                assert!(!a.has_out(), "answered at byte {i}");
            }
        }
        let out = String::from_utf8(a.take_out().to_vec()).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\"name\":\"bob\""), "{out}");
        // A body dripped after its head: the head waits parsed, the body is only counted.
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"Fly"}"#;
        let head = format!(
            "POST /a2a/a.example/bob HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        a.input().extend_from_slice(head.as_bytes());
        a.from_client(Instant::now(), &mut up).unwrap();
        for byte in &body[..body.len() - 1] {
            a.input().extend_from_slice(&[*byte]);
            a.from_client(Instant::now(), &mut up).unwrap();
            assert!(a.head.is_some() && !a.has_out());
        }
        a.input().extend_from_slice(&body[body.len() - 1..]);
        a.from_client(Instant::now(), &mut up).unwrap();
        assert!(String::from_utf8_lossy(&a.take_out()).contains("\"code\":-32601"));
    }

    #[test]
    fn nack_reasons_become_task_states() {
        assert_eq!(nack_state(ErrorCode::NoRoute), TaskState::Failed);
        assert_eq!(nack_state(ErrorCode::DestinationOffline), TaskState::Failed);
        assert_eq!(nack_state(ErrorCode::Unauthorized), TaskState::Rejected);
        assert_eq!(nack_state(ErrorCode::CertRevoked), TaskState::Rejected);
    }

    #[test]
    fn a_message_that_answers_no_open_task_is_nacked_to_its_sender() {
        let (mut a, mut up) = accessed();
        let stray = pb::AgentMessage {
            source: "spiffe://a.example/agent/bob".into(),
            message_id: 7,
            correlation: Bytes::from_static(b"task-99"),
            ..Default::default()
        };
        a.to_client(Message::AgentMessage(stray), &mut up);
        let made = decode_all(&mut up, agw_proto::FrameLimits::default());
        let [Message::Nack(nack)] = made.as_slice() else {
            panic!("{made:?}")
        };
        assert_eq!(
            (nack.destination.as_str(), nack.message_id),
            ("spiffe://a.example/agent/bob", 7)
        );
        assert_eq!(nack.reason(), ErrorCode::UnexpectedMessage);
        assert!(!a.has_out(), "nothing for the client");
    }

    #[test]
    fn a_refused_access_is_answered_then_closed() {
        let mut a = A2aAdapter::new(Some(ALICE.into()), Vec::new(), 8192, None);
        let mut up = FrameEncoder::new(agw_proto::FrameLimits::default());
        a.input()
            .extend_from_slice(b"GET /.well-known/agent-card.json HTTP/1.1\r\nHost: gw\r\n\r\n");
        a.from_client(Instant::now(), &mut up).unwrap();
        assert_eq!(a.state, State::Accessing);
        let refusal = pb::AccessReply {
            error: Some(pb::Error {
                code: ErrorCode::CertRevoked as i32,
                detail: "serial 01".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        a.to_client(Message::AccessReply(refusal), &mut up);
        let out = String::from_utf8(a.take_out().to_vec()).unwrap();
        assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
        assert!(out.contains("CERT_REVOKED: serial 01"), "{out}");
        assert!(a.is_closed());
    }

    #[test]
    fn an_http2_client_is_told_http_1_1_is_required_in_http2s_terms() {
        for chunk in [1, 7, 100] {
            let mut a = A2aAdapter::new(Some(ALICE.into()), Vec::new(), 8192, None);
            let mut up = FrameEncoder::new(agw_proto::FrameLimits::default());
            let mut end = Ok(());
            for piece in b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04".chunks(chunk) {
                a.input().extend_from_slice(piece);
                end = a.from_client(Instant::now(), &mut up);
                if end.is_err() {
                    break;
                }
            }
            assert_eq!(end.unwrap_err().code, ErrorCode::UnsupportedVersion);
            let out = a.take_out();
            // An empty SETTINGS frame, then GOAWAY (type 7) with error code 0xd.
            assert_eq!(&out[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
            assert_eq!(out[12], 7);
            assert_eq!(&out[22..26], &[0, 0, 0, 0xd]);
            let len = u32::from_be_bytes([0, out[9], out[10], out[11]]) as usize;
            assert_eq!(out.len(), 9 + 9 + len);
            assert!(up.take().is_empty(), "no access asked");
        }
        // Not the preface after all: an HTTP/1.1 refusal.
        let mut a = A2aAdapter::new(Some(ALICE.into()), Vec::new(), 8192, None);
        let mut up = FrameEncoder::new(agw_proto::FrameLimits::default());
        a.input().extend_from_slice(b"PRI /x HTTP/1.1\r\n\r\n");
        assert!(a.from_client(Instant::now(), &mut up).is_err());
        assert!(String::from_utf8_lossy(&a.take_out()).starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn a_client_without_a_certificate_is_refused() {
        let mut a = A2aAdapter::new(None, Vec::new(), 8192, None);
        let mut up = FrameEncoder::new(agw_proto::FrameLimits::default());
        a.input().extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let close = a.from_client(Instant::now(), &mut up).unwrap_err();
        assert_eq!(close.code, ErrorCode::TlsRequired);
        assert!(String::from_utf8_lossy(&a.take_out()).starts_with("HTTP/1.1 401"));
        assert!(up.take().is_empty(), "no access request");
    }

    #[test]
    fn a_blocking_request_is_answered_with_its_task_as_it_stands_after_a_while() {
        let (mut a, mut up) = accessed();
        let send = json!({"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"parts":[{"text":"x"}]}}}).to_string();
        let head = format!(
            "POST /a2a/a.example/bob HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n",
            send.len()
        );
        a.input().extend_from_slice(head.as_bytes());
        a.input().extend_from_slice(send.as_bytes());
        a.from_client(Instant::now(), &mut up).unwrap();
        let now = Instant::now();
        assert!(!a.tick(now));
        assert!(
            a.take_out().is_empty(),
            "the destination has not answered yet"
        );
        assert!(a.tick(now + ANSWER_WITHIN));
        let out = String::from_utf8(a.take_out().to_vec()).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("TASK_STATE_SUBMITTED"), "{out}");
        // The task goes on: its reply completes it, for GetTask.
        assert!(!a.tick(now + ANSWER_WITHIN * 2));
    }

    #[test]
    fn cancel_marks_an_open_task_and_its_late_reply_is_nacked() {
        let (mut a, mut up) = accessed();
        let send = json!({"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"parts":[{"text":"x"}]},"configuration":{"returnImmediately":true}}}).to_string();
        let cancel = json!({"jsonrpc":"2.0","id":2,"method":"CancelTask","params":{"id":"task-1"}})
            .to_string();
        for body in [&send, &cancel] {
            let head = format!(
                "POST /a2a/a.example/bob HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            a.input().extend_from_slice(head.as_bytes());
            a.input().extend_from_slice(body.as_bytes());
        }
        a.from_client(Instant::now(), &mut up).unwrap();
        let made = decode_all(&mut up, agw_proto::FrameLimits::default());
        let Some(Message::AgentMessage(m)) = made.first() else {
            panic!("{made:?}")
        };
        // The ACK answers returnImmediately; the cancel is read after it.
        let ack = pb::Ack {
            destination: ALICE.into(),
            source: m.destination.clone(),
            message_id: m.message_id,
        };
        a.to_client(Message::Ack(ack), &mut up);
        a.from_client(Instant::now(), &mut up).unwrap();
        let out = String::from_utf8(a.take_out().to_vec()).unwrap();
        assert!(out.contains("TASK_STATE_WORKING"), "{out}");
        assert!(out.contains("TASK_STATE_CANCELED"), "{out}");
        let late = pb::AgentMessage {
            source: m.destination.clone(),
            message_id: 3,
            correlation: m.correlation.clone(),
            ..Default::default()
        };
        a.to_client(Message::AgentMessage(late), &mut up);
        let made = decode_all(&mut up, agw_proto::FrameLimits::default());
        assert!(
            matches!(made.as_slice(), [Message::Nack(n)] if n.reason() == ErrorCode::UnexpectedMessage),
            "{made:?}"
        );
    }
}
