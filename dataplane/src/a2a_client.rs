//! The gateway as an A2A client: an agent that is an A2A server (any `a2a-sdk` server, JSON-RPC
//! binding over HTTP/1.1) registers with its URL, and whatever the relay routes to it (from a
//! native, MQTT or A2A agent, local or of another domain) becomes a `SendMessage` request on
//! the HTTP connection a shard keeps to it; the answer comes back as native frames. Sans-IO
//! like [`crate::a2a`]: [`A2aClient::to_server`] takes a frame the relay queued for the agent,
//! [`A2aClient::take_out`] gives the request bytes, [`A2aClient::from_server`] makes frames
//! of the responses read into [`A2aClient::input`].
//!
//! ```text
//!  AgentMessage to the agent  -> POST <path> SendMessage (blocking; parts from the payload,
//!                                contextId from the session, A2A-Version: 1.0)
//!  result.message             -> Ack + AgentMessage back (correlation echoed)
//!  result.task COMPLETED      -> Ack + AgentMessage of its artifacts (or status message)
//!  result.task INPUT_REQUIRED -> Ack + AgentMessage of its status message; the session's
//!                                next message continues the task
//!  result.task FAILED/REJECTED/CANCELED, JSON-RPC error, HTTP error
//!                             -> Nack with the reason (docs/protocols.md has the table)
//! ```
//!
//! Requests are pipelined on one connection and answered in order (HTTP/1.1), at most
//! [`MAX_IN_FLIGHT`] at once; beyond that the relay's frames are NACKed `OVERLOADED`. A
//! connection that ends with requests unanswered NACKs them `DESTINATION_OFFLINE`
//! ([`A2aClient::lost`]). Response heads are parsed by `httparse`; bodies are bounded before
//! they are buffered.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use agw_proto::{
    DEFAULT_HOP_LIMIT, FrameEncoder, Message,
    a2a_url::A2aUrl,
    pb::{self, ErrorCode},
};
use bytes::{Buf, Bytes, BytesMut};
use hashbrown::HashMap;
use serde_json::{Value, json};

use crate::{
    a2a::{MAX_HEAD, VERSION, parts_of, payload_of},
    mqtt::Close,
};

/// Requests sent and not yet answered, at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long an A2A server has to answer, by default (`DataplaneConfig::a2a_answer_within`): a
/// request unanswered that long is NACKed `REQUEST_TIMEOUT`, with every one behind it (an
/// HTTP/1.1 connection answers in order), and the connection is dialled again.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);
/// Sessions whose open (input-required) task is remembered, at most.
const SESSIONS_KEPT: usize = 1024;
const MAX_HEADERS: usize = 48;
/// Bytes of a chunk's size line (with extensions), at most.
const MAX_CHUNK_LINE: usize = 1024;

/// A request sent and not yet answered: what its answer goes back to.
#[derive(Debug)]
struct Call {
    /// When it was written.
    since: Instant,
    source: String,
    message_id: u64,
    session_id: u64,
    correlation: Bytes,
}

/// A response whose head was read (and taken out of the input); its body is still coming.
#[derive(Debug, Clone, Copy)]
struct Head {
    status: u16,
    body: Body,
}

#[derive(Debug, Clone, Copy)]
enum Body {
    Length(usize),
    Chunked,
}

/// The gateway's side of one HTTP connection to an A2A server agent.
#[derive(Debug)]
pub struct A2aClient {
    /// The A2A server's agent ID: the source of what it answers.
    agent: String,
    endpoint: A2aUrl,
    input: BytesMut,
    out: BytesMut,
    max_body: usize,
    calls: VecDeque<Call>,
    head: Option<Head>,
    /// A chunked body decoded so far (its chunks are taken out of the input as they
    /// complete, so the input holds at most one).
    chunked: Vec<u8>,
    /// Sessions' open tasks (input required), so their next message continues them.
    open_tasks: HashMap<u64, String>,
    next_rpc: u64,
    next_message: u64,
    /// How long the server has to answer a request.
    answer_within: Duration,
}

impl A2aClient {
    /// A client of `agent`, served at `endpoint`; bodies larger than `max_body` are refused.
    pub fn new(agent: String, endpoint: A2aUrl, max_body: usize) -> A2aClient {
        A2aClient {
            agent,
            endpoint,
            input: BytesMut::new(),
            out: BytesMut::new(),
            max_body,
            calls: VecDeque::new(),
            head: None,
            chunked: Vec::new(),
            open_tasks: HashMap::new(),
            next_rpc: 1,
            next_message: 1,
            answer_within: ANSWER_WITHIN,
        }
    }

    /// Gives the server `within` to answer each request (instead of [`ANSWER_WITHIN`]).
    pub fn answer_within(mut self, within: Duration) -> A2aClient {
        self.answer_within = within;
        self
    }

    /// The buffer responses are read into.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Request bytes are waiting to be written.
    pub fn has_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// The request bytes to write.
    pub fn take_out(&mut self) -> BytesMut {
        self.out.split()
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.calls.len()
    }

    /// A frame the relay queued for the agent: a message becomes a request; a NACK of one of
    /// the agent's answers is logged (nobody is waiting for it). Refusals go to `up`.
    pub fn to_server(&mut self, message: Message, up: &mut FrameEncoder) {
        match message {
            Message::AgentMessage(m) => self.request(m, up),
            Message::Nack(n) => tracing::debug!(
                agent = %self.agent,
                reason = n.reason().as_str_name(),
                detail = n.detail,
                "an A2A server's answer was refused"
            ),
            _ => {}
        }
    }

    fn request(&mut self, m: pb::AgentMessage, up: &mut FrameEncoder) {
        if self.calls.len() >= MAX_IN_FLIGHT {
            let detail = format!("{MAX_IN_FLIGHT} requests to this A2A server are unanswered");
            return self.nack(&m.source, m.message_id, ErrorCode::Overloaded, &detail, up);
        }
        let id = self.next_rpc;
        self.next_rpc += 1;
        let mut message = json!({
            "messageId": format!("agw-{id}-{}", m.message_id),
            "role": "ROLE_USER",
            "parts": parts_of(&m.content_type, &m.payload),
            "metadata": { "agw.source": m.source },
        });
        if m.session_id != 0 {
            message["contextId"] = json!(format!("agw-session-{:016x}", m.session_id));
            if let Some(task) = self.open_tasks.get(&m.session_id) {
                message["taskId"] = json!(task);
            }
        }
        if !m.language.is_empty() {
            message["metadata"]["language"] = json!(m.language);
        }
        if let Some(t) = &m.translation {
            message["metadata"]["agw.translation"] = crate::translation::a2a_metadata(t);
        }
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "method": "SendMessage",
            "params": { "message": message },
        })
        .to_string();
        let head = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json\r\nA2A-Version: {VERSION}\r\ncontent-length: {}\r\n\r\n",
            self.endpoint.path,
            self.endpoint.host,
            body.len()
        );
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(body.as_bytes());
        self.calls.push_back(Call {
            since: Instant::now(),
            source: m.source,
            message_id: m.message_id,
            session_id: m.session_id,
            correlation: m.correlation,
        });
    }

    /// Decodes the responses read so far into frames for `up`. An answer the connection
    /// cannot carry on after (no request waiting for it, a head or body over the limits, bad
    /// framing) closes it: `Err` says why, and [`A2aClient::lost`] NACKs the calls left.
    pub fn from_server(&mut self, up: &mut FrameEncoder) -> Result<(), Close> {
        loop {
            let head = match self.head {
                Some(h) => h,
                None => match self.parse_head()? {
                    Some(h) => {
                        self.chunked.clear();
                        h
                    }
                    None => return Ok(()),
                },
            };
            self.head = Some(head);
            let body = match head.body {
                Body::Length(n) => {
                    if self.input.len() < n {
                        return Ok(());
                    }
                    self.input.split_to(n).freeze()
                }
                Body::Chunked => match self.dechunk()? {
                    Some(body) => body,
                    None => return Ok(()),
                },
            };
            self.head = None;
            if (100..200).contains(&head.status) {
                continue; // 100 Continue and the like: the answer is still to come
            }
            let Some(call) = self.calls.pop_front() else {
                return Err(close(
                    ErrorCode::UnexpectedMessage,
                    "a response to no request",
                ));
            };
            self.answer(call, head.status, &body, up);
        }
    }

    fn parse_head(&mut self) -> Result<Option<Head>, Close> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        // Only the first 16 KiB are ever parsed, so any split of the bytes ends alike.
        let window = &self.input[..self.input.len().min(MAX_HEAD)];
        let len = match response.parse(window) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if window.len() == MAX_HEAD => {
                return Err(close(ErrorCode::TooLarge, "a response head over 16 KiB"));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(close(ErrorCode::Malformed, &format!("response head: {e}"))),
        };
        let status = response.code.unwrap_or(0);
        let mut body = Body::Length(0);
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| close(ErrorCode::Malformed, "a bad content-length"))?;
                if n > self.max_body {
                    return Err(close(ErrorCode::TooLarge, "a response body over the limit"));
                }
                body = Body::Length(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let chunked = std::str::from_utf8(h.value)
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
                if !chunked {
                    return Err(close(ErrorCode::Malformed, "a transfer coding not chunked"));
                }
                body = Body::Chunked;
            }
        }
        // 1xx, 204 and 304 carry no body whatever they say.
        if (100..200).contains(&status) || status == 204 || status == 304 {
            body = Body::Length(0);
        }
        self.input.advance(len);
        Ok(Some(Head { status, body }))
    }

    /// The whole chunked body, once its last chunk is read; `None` while chunks are still
    /// coming. Each chunk is taken out of the input as it completes.
    fn dechunk(&mut self) -> Result<Option<Bytes>, Close> {
        loop {
            let window = &self.input[..self.input.len().min(MAX_CHUNK_LINE)];
            let (len, size) = match httparse::parse_chunk_size(window) {
                Ok(httparse::Status::Complete((len, size))) => (len, size),
                Ok(httparse::Status::Partial) if window.len() == MAX_CHUNK_LINE => {
                    return Err(close(ErrorCode::Malformed, "a chunk size line over 1 KiB"));
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err(close(ErrorCode::Malformed, "a bad chunk size")),
            };
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > self.max_body.saturating_sub(self.chunked.len()) {
                return Err(close(ErrorCode::TooLarge, "a response body over the limit"));
            }
            if size == 0 {
                // The last chunk; no trailers are taken, only the empty line.
                match self.input.get(len..len + 2) {
                    None => return Ok(None),
                    Some(b"\r\n") => {
                        self.input.advance(len + 2);
                        return Ok(Some(Bytes::from(std::mem::take(&mut self.chunked))));
                    }
                    Some(_) => return Err(close(ErrorCode::Malformed, "trailers")),
                }
            }
            let Some(data) = self.input.get(len..len + size + 2) else {
                return Ok(None);
            };
            if &data[size..] != b"\r\n" {
                return Err(close(ErrorCode::Malformed, "a chunk without its line end"));
            }
            self.chunked.extend_from_slice(&data[..size]);
            self.input.advance(len + size + 2);
        }
    }

    /// The answer to `call`: an ACK and the agent's reply, or a NACK.
    fn answer(&mut self, call: Call, status: u16, body: &[u8], up: &mut FrameEncoder) {
        if status != 200 {
            let reason = http_reason(status);
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            let detail = format!("the A2A server answered HTTP {status}: {text}");
            return self.nack(&call.source, call.message_id, reason, &detail, up);
        }
        let rpc: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                let detail = format!("the A2A server's answer is not JSON: {e}");
                return self.nack(
                    &call.source,
                    call.message_id,
                    ErrorCode::Internal,
                    &detail,
                    up,
                );
            }
        };
        if let Some(error) = rpc.get("error") {
            let (reason, detail) = rpc_reason(error);
            return self.nack(&call.source, call.message_id, reason, &detail, up);
        }
        let result = rpc.get("result").unwrap_or(&Value::Null);
        if let Some(message) = result.get("message") {
            self.open_tasks.remove(&call.session_id);
            return self.reply(call, message, up);
        }
        let Some(task) = result.get("task") else {
            let detail = "the A2A server's answer is neither a message nor a task";
            return self.nack(
                &call.source,
                call.message_id,
                ErrorCode::Internal,
                detail,
                up,
            );
        };
        let state = task
            .pointer("/status/state")
            .and_then(Value::as_str)
            .unwrap_or("TASK_STATE_UNSPECIFIED");
        let status_message = task.pointer("/status/message");
        match state {
            "TASK_STATE_FAILED" | "TASK_STATE_REJECTED" | "TASK_STATE_CANCELED" => {
                self.open_tasks.remove(&call.session_id);
                let reason = task_reason(task, state);
                let said = status_message
                    .and_then(|m| m.get("parts"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" ");
                let detail = format!("A2A task {state}: {said}");
                self.nack(&call.source, call.message_id, reason, &detail, up);
            }
            "TASK_STATE_COMPLETED" => {
                self.open_tasks.remove(&call.session_id);
                // The artifacts' parts are the result; a task without any answers with its
                // status message.
                let parts: Vec<Value> = task
                    .get("artifacts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.get("parts").and_then(Value::as_array))
                    .flatten()
                    .cloned()
                    .collect();
                let message = if parts.is_empty() {
                    status_message.cloned().unwrap_or_else(|| json!({}))
                } else {
                    json!({ "parts": parts })
                };
                self.reply(call, &message, up);
            }
            _ => {
                // Input or auth required (or still working): the status message is the
                // agent's word for now, and the session's next message continues the task.
                if let Some(id) = task.get("id").and_then(Value::as_str)
                    && call.session_id != 0
                {
                    if self.open_tasks.len() >= SESSIONS_KEPT {
                        self.open_tasks.clear();
                    }
                    self.open_tasks.insert(call.session_id, id.to_owned());
                }
                let message = status_message
                    .cloned()
                    .unwrap_or_else(|| json!({ "parts": [{ "text": state }] }));
                self.reply(call, &message, up);
            }
        }
    }

    /// ACKs `call` and sends the agent's reply: `message`'s parts as the payload.
    fn reply(&mut self, call: Call, message: &Value, up: &mut FrameEncoder) {
        let (content_type, payload) = match payload_of(message) {
            Ok(p) => p,
            // An answer without parts: an empty text.
            Err(_) => ("text/plain".to_owned(), Bytes::new()),
        };
        let _ = up.push(&pb::Ack {
            destination: call.source.clone(),
            source: self.agent.clone(),
            message_id: call.message_id,
        });
        let language = message
            .pointer("/metadata/language")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let reply = pb::AgentMessage {
            destination: call.source.clone(),
            source: self.agent.clone(),
            message_id: self.next_message,
            session_id: call.session_id,
            content_type,
            language,
            source_protocol: pb::Protocol::A2a as i32,
            translate_to: String::new(),
            translation: None,
            session_header: None,
            correlation: call.correlation,
            payload,
        };
        self.next_message += 1;
        if up.push_data(&reply, DEFAULT_HOP_LIMIT).is_err() {
            // Larger than a frame may be: the ACK stands (it was delivered), the reply is
            // refused to its would-be receiver's face instead of arriving cut.
            let detail = "the A2A server's answer is larger than this gateway relays";
            self.nack(
                &call.source,
                reply.message_id,
                ErrorCode::TooLarge,
                detail,
                up,
            );
        }
    }

    fn nack(
        &self,
        to: &str,
        message_id: u64,
        reason: ErrorCode,
        detail: &str,
        up: &mut FrameEncoder,
    ) {
        let _ = up.push(&pb::Nack {
            destination: to.to_owned(),
            original_destination: self.agent.clone(),
            message_id,
            reason: reason as i32,
            reporter: self.agent.clone(),
            detail: detail.to_owned(),
            retry_after_ms: 0,
        });
    }

    /// Time passes: when the oldest request waited its time to answer, it and every one behind
    /// it are NACKed `REQUEST_TIMEOUT`; `true` then, and the connection is to be dialled again
    /// (its answers, if they ever come, would answer nobody).
    pub fn tick(&mut self, now: Instant, up: &mut FrameEncoder) -> bool {
        let late = self
            .calls
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= self.answer_within);
        if !late {
            return false;
        }
        while let Some(call) = self.calls.pop_front() {
            let detail = format!(
                "the A2A server did not answer within {} ms",
                self.answer_within.as_millis()
            );
            self.nack(
                &call.source,
                call.message_id,
                ErrorCode::RequestTimeout,
                &detail,
                up,
            );
        }
        true
    }

    /// The connection ended: every request not answered is NACKed `DESTINATION_OFFLINE`, and
    /// what was half read is dropped. The client goes on with a new connection.
    pub fn lost(&mut self, up: &mut FrameEncoder) {
        self.input.clear();
        self.out.clear();
        self.head = None;
        while let Some(call) = self.calls.pop_front() {
            let detail = "the connection to the A2A server ended before its answer";
            self.nack(
                &call.source,
                call.message_id,
                ErrorCode::DestinationOffline,
                detail,
                up,
            );
        }
    }
}

fn close(code: ErrorCode, text: &str) -> Close {
    Close {
        code,
        text: text.to_owned(),
    }
}

/// An HTTP status other than 200 as a NACK reason.
pub fn http_reason(status: u16) -> ErrorCode {
    match status {
        400 | 411 | 415 | 422 => ErrorCode::Malformed,
        401 | 403 => ErrorCode::Unauthorized,
        404 | 405 => ErrorCode::NoRoute,
        408 => ErrorCode::RequestTimeout,
        413 => ErrorCode::TooLarge,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Overloaded,
        _ => ErrorCode::Internal,
    }
}

/// A JSON-RPC error as a NACK reason and detail: the gateway's own reason where another
/// gateway's A2A endpoint put one in the error's `ErrorInfo`, else by the A2A code.
pub fn rpc_reason(error: &Value) -> (ErrorCode, String) {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let carried = error
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|d| d.pointer("/metadata/agw.reason").and_then(Value::as_str))
        .and_then(ErrorCode::from_str_name);
    let reason = carried.unwrap_or(match code {
        -32700 | -32600 => ErrorCode::Malformed,
        -32602 | -32001 | -32005 => ErrorCode::InvalidField,
        -32601 | -32002 | -32003 | -32004 => ErrorCode::UnexpectedMessage,
        -32009 => ErrorCode::UnsupportedVersion,
        _ => ErrorCode::Internal,
    });
    (reason, format!("A2A error {code}: {message}"))
}

/// A task that ended without a result as a NACK reason: the gateway's own reason where
/// another gateway put one in its metadata (`agw.reason`), else REJECTED as `UNAUTHORIZED`,
/// FAILED and CANCELED as `INTERNAL`.
fn task_reason(task: &Value, state: &str) -> ErrorCode {
    task.pointer("/metadata/agw.reason")
        .and_then(Value::as_str)
        .and_then(ErrorCode::from_str_name)
        .unwrap_or(if state == "TASK_STATE_REJECTED" {
            ErrorCode::Unauthorized
        } else {
            ErrorCode::Internal
        })
}

/// What the gateway makes of an A2A server's `responses` to four requests in flight (text to
/// `spiffe://a.example/agent/server` from `.../client`), for the fuzz target and the test that
/// replays its seeds on stable: the frames for the relay and how the connection ended. Read
/// whole and in 7-byte reads; panics only if the two disagree (hostile bytes must be answered
/// or closed, never panic, whatever the reads).
pub fn check_server_bytes(responses: &[u8]) -> (Vec<Message>, Result<(), Close>) {
    let whole = server_bytes(responses, responses.len());
    let chunked = server_bytes(responses, 7);
    assert_eq!(
        whole, chunked,
        "the same bytes read in chunks made something else"
    );
    whole
}

fn server_bytes(responses: &[u8], chunk: usize) -> (Vec<Message>, Result<(), Close>) {
    let limits = agw_proto::FrameLimits::default();
    let mut up = FrameEncoder::new(limits);
    let mut client = A2aClient::new(
        "spiffe://a.example/agent/server".into(),
        A2aUrl {
            host: "server".into(),
            path: "/".into(),
            dial: "server:80".into(),
            tls: false,
        },
        64 * 1024,
    );
    for i in 0..4 {
        let m = pb::AgentMessage {
            destination: "spiffe://a.example/agent/server".into(),
            source: "spiffe://a.example/agent/client".into(),
            message_id: i,
            session_id: 7,
            content_type: "text/plain".into(),
            payload: Bytes::from_static(b"hello"),
            ..Default::default()
        };
        client.to_server(Message::AgentMessage(m), &mut up);
    }
    let mut result = Ok(());
    for piece in responses.chunks(chunk.max(1)) {
        client.input().extend_from_slice(piece);
        result = client.from_server(&mut up);
        if result.is_err() {
            break;
        }
    }
    if result.is_err() {
        client.lost(&mut up);
    }
    let mut decoder = agw_proto::FrameDecoder::new(limits);
    decoder.extend_from_slice(&up.take());
    let mut out = Vec::new();
    while let Ok(Some(frame)) = decoder.decode() {
        if let Ok(m) = frame.message() {
            out.push(m);
        }
    }
    (out, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nserver: uvicorn\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
            body.len()
        )
    }

    fn kinds(messages: &[Message]) -> Vec<&'static str> {
        messages.iter().map(|m| m.kind().name()).collect()
    }

    #[test]
    fn a_message_becomes_a_send_message_request() {
        let mut up = FrameEncoder::new(Default::default());
        let endpoint = A2aUrl::parse("http://127.0.0.1:9000/rpc").unwrap();
        let mut client = A2aClient::new("spiffe://a/agent/s".into(), endpoint, 1024);
        let m = pb::AgentMessage {
            destination: "spiffe://a/agent/s".into(),
            source: "spiffe://a/agent/c".into(),
            message_id: 9,
            session_id: 0x10,
            content_type: "application/json".into(),
            language: "fr".into(),
            payload: Bytes::from_static(br#"{"nights":2}"#),
            ..Default::default()
        };
        client.to_server(Message::AgentMessage(m), &mut up);
        let out = client.take_out();
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /rpc HTTP/1.1\r\nhost: 127.0.0.1:9000\r\n"));
        assert!(head.contains("A2A-Version: 1.0"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let rpc: Value = serde_json::from_str(body).unwrap();
        assert_eq!(rpc["method"], "SendMessage");
        let message = &rpc["params"]["message"];
        assert_eq!(message["role"], "ROLE_USER");
        assert_eq!(message["contextId"], "agw-session-0000000000000010");
        assert_eq!(message["parts"][0]["data"]["nights"], 2);
        assert_eq!(message["metadata"]["language"], "fr");
        assert_eq!(message["metadata"]["agw.source"], "spiffe://a/agent/c");
        assert_eq!(client.in_flight(), 1);
    }

    #[test]
    fn a_message_answer_is_acked_and_replied_with_the_correlation() {
        let body = r#"{"result":{"message":{"messageId":"x","role":"ROLE_AGENT","parts":[{"text":"echo: hello"}]}},"id":1,"jsonrpc":"2.0"}"#;
        let (messages, end) = server_bytes(response(body).as_bytes(), 1);
        assert!(end.is_ok());
        assert_eq!(kinds(&messages), ["Ack", "AgentMessage"]);
        let Message::AgentMessage(reply) = &messages[1] else {
            unreachable!()
        };
        assert_eq!(reply.payload.as_ref(), b"echo: hello");
        assert_eq!(reply.content_type, "text/plain");
        assert_eq!(reply.destination, "spiffe://a.example/agent/client");
        assert_eq!(reply.source, "spiffe://a.example/agent/server");
        assert_eq!(reply.session_id, 7);
    }

    #[test]
    fn tasks_answer_by_their_state_and_errors_become_nack_reasons() {
        let completed = r#"{"result":{"task":{"id":"t","status":{"state":"TASK_STATE_COMPLETED"},"artifacts":[{"artifactId":"a","parts":[{"text":"booked"}]}]}},"id":1,"jsonrpc":"2.0"}"#;
        let failed = r#"{"result":{"task":{"id":"t","status":{"state":"TASK_STATE_FAILED","message":{"parts":[{"text":"no rooms left"}]}}}},"id":2,"jsonrpc":"2.0"}"#;
        let rejected = r#"{"result":{"task":{"id":"t","status":{"state":"TASK_STATE_REJECTED"}}},"id":3,"jsonrpc":"2.0"}"#;
        let error = r#"{"error":{"code":-32009,"message":"version"},"id":4,"jsonrpc":"2.0"}"#;
        let all = [completed, failed, rejected, error]
            .iter()
            .map(|b| response(b))
            .collect::<String>();
        for chunk in [1, 7, all.len()] {
            let (messages, end) = server_bytes(all.as_bytes(), chunk);
            assert!(end.is_ok());
            assert_eq!(
                kinds(&messages),
                ["Ack", "AgentMessage", "Nack", "Nack", "Nack"]
            );
            let Message::AgentMessage(reply) = &messages[1] else {
                unreachable!()
            };
            assert_eq!(reply.payload.as_ref(), b"booked");
            let reasons: Vec<_> = messages[2..]
                .iter()
                .map(|m| match m {
                    Message::Nack(n) => (n.message_id, n.reason(), n.detail.clone()),
                    _ => unreachable!(),
                })
                .collect();
            assert_eq!(reasons[0].1, ErrorCode::Internal);
            assert!(reasons[0].2.contains("no rooms left"), "{}", reasons[0].2);
            assert_eq!(reasons[1].1, ErrorCode::Unauthorized);
            assert_eq!(
                (reasons[2].0, reasons[2].1),
                (3, ErrorCode::UnsupportedVersion)
            );
        }
    }

    #[test]
    fn a_reason_another_gateway_put_in_an_error_comes_back_as_itself() {
        let error = json!({"code": -32603, "message": "m", "data": [{"reason": "NO_ROUTE", "metadata": {"agw.reason": "NO_ROUTE"}}]});
        assert_eq!(rpc_reason(&error).0, ErrorCode::NoRoute);
        let task = json!({"metadata": {"agw.reason": "TTL_EXPIRED"}});
        assert_eq!(
            task_reason(&task, "TASK_STATE_FAILED"),
            ErrorCode::TtlExpired
        );
    }

    #[test]
    fn http_errors_and_chunked_bodies() {
        let mut bytes =
            String::from("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy");
        let body =
            r#"{"result":{"message":{"parts":[{"text":"chunked"}]}},"id":2,"jsonrpc":"2.0"}"#;
        let (a, b) = body.split_at(10);
        bytes.push_str(&format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        ));
        for chunk in [1, 3, bytes.len()] {
            let (messages, end) = server_bytes(bytes.as_bytes(), chunk);
            assert!(end.is_ok());
            assert_eq!(kinds(&messages), ["Nack", "Ack", "AgentMessage"]);
            let Message::Nack(n) = &messages[0] else {
                unreachable!()
            };
            assert_eq!(n.reason(), ErrorCode::Overloaded);
        }
    }

    #[test]
    fn a_chunked_body_leaves_the_input_chunk_by_chunk() {
        let mut up = FrameEncoder::new(Default::default());
        let endpoint = A2aUrl::parse("http://127.0.0.1:9000/").unwrap();
        let mut client = A2aClient::new("spiffe://a/agent/s".into(), endpoint, 64 * 1024);
        let m = pb::AgentMessage {
            source: "spiffe://a/agent/c".into(),
            ..Default::default()
        };
        client.to_server(Message::AgentMessage(m), &mut up);
        client
            .input()
            .extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        for _ in 0..1000 {
            client.input().extend_from_slice(b"1\r\nx\r\n");
            client.from_server(&mut up).unwrap();
            // A thousand 1-byte chunks cost six bytes of framing each: none of it is kept.
            assert!(client.input().is_empty());
        }
        client.input().extend_from_slice(b"0\r\n\r\n");
        client.from_server(&mut up).unwrap();
        assert_eq!(
            client.in_flight(),
            0,
            "answered (a body that is not JSON: a NACK)"
        );
    }

    #[test]
    fn bad_framing_closes_and_nacks_every_call_left() {
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n".to_owned(),
            "garbage\r\n\r\n".to_owned(),
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 1 << 20),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n".to_owned(),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_owned(),
            format!("HTTP/1.1 200 OK\r\n{}", "x-a: b\r\n".repeat(3000)),
        ] {
            let (messages, end) = server_bytes(bad.as_bytes(), 5);
            assert!(end.is_err(), "{bad:.60}");
            assert_eq!(kinds(&messages), ["Nack"; 4], "{bad:.60}");
            assert!(messages.iter().all(
                |m| matches!(m, Message::Nack(n) if n.reason() == ErrorCode::DestinationOffline)
            ));
        }
        // More answers than requests.
        let many =
            response(r#"{"result":{"message":{"parts":[{"text":"a"}]}},"id":1,"jsonrpc":"2.0"}"#)
                .repeat(5);
        let (messages, end) = server_bytes(many.as_bytes(), 64);
        assert_eq!(end.unwrap_err().code, ErrorCode::UnexpectedMessage);
        assert_eq!(messages.len(), 8);
    }

    #[test]
    fn a_server_that_does_not_answer_in_time_has_its_requests_nacked() {
        let mut up = FrameEncoder::new(Default::default());
        let endpoint = A2aUrl::parse("http://127.0.0.1:9000/").unwrap();
        let mut client = A2aClient::new("spiffe://a/agent/s".into(), endpoint, 1024);
        for i in 0..3 {
            let m = pb::AgentMessage {
                source: "spiffe://a/agent/c".into(),
                message_id: i,
                ..Default::default()
            };
            client.to_server(Message::AgentMessage(m), &mut up);
        }
        let now = Instant::now();
        assert!(!client.tick(now, &mut up));
        assert!(up.take().is_empty());
        assert!(client.tick(now + ANSWER_WITHIN, &mut up));
        assert_eq!(client.in_flight(), 0);
        let mut decoder = agw_proto::FrameDecoder::new(Default::default());
        decoder.extend_from_slice(&up.take());
        let mut nacked = Vec::new();
        while let Ok(Some(frame)) = decoder.decode() {
            if let Ok(Message::Nack(n)) = frame.message() {
                nacked.push((n.message_id, n.reason()));
            }
        }
        assert_eq!(
            nacked,
            (0..3)
                .map(|i| (i, ErrorCode::RequestTimeout))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn in_flight_requests_are_bounded() {
        let mut up = FrameEncoder::new(Default::default());
        let endpoint = A2aUrl::parse("http://127.0.0.1:9000/").unwrap();
        let mut client = A2aClient::new("spiffe://a/agent/s".into(), endpoint, 1024);
        for i in 0..=MAX_IN_FLIGHT as u64 {
            let m = pb::AgentMessage {
                source: "spiffe://a/agent/c".into(),
                message_id: i,
                ..Default::default()
            };
            client.to_server(Message::AgentMessage(m), &mut up);
        }
        assert_eq!(client.in_flight(), MAX_IN_FLIGHT);
        let mut decoder = agw_proto::FrameDecoder::new(Default::default());
        decoder.extend_from_slice(&up.take());
        let frame = decoder.decode().unwrap().unwrap();
        let Ok(Message::Nack(n)) = frame.message() else {
            panic!("not a NACK")
        };
        assert_eq!(
            (n.message_id, n.reason()),
            (MAX_IN_FLIGHT as u64, ErrorCode::Overloaded)
        );
    }
}
