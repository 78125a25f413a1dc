//! A2A clients of A2A's gRPC binding (`lf.a2a.v1.A2AService` over HTTP/2, as `a2a-sdk`'s
//! `GrpcTransport` speaks it) as agents of the relay, sans-IO like [`crate::a2a`]: one
//! [`GrpcAdapter`] per HTTP/2 connection.
//!
//! HTTP/2 is the `h2` crate's (hyper's), driven without a runtime: the client's bytes go into
//! an in-memory buffer `h2` reads from, what it writes collects in another the shard sends,
//! and the connection is polled whenever bytes or frames arrive (a no-op waker: nothing
//! waits inside it). A call's request (gRPC's 5-byte framing, then protobuf) becomes A2A's
//! JSON through A2A's own schema (`a2a_grpc.pb`, written from a2a-sdk by
//! `scripts/a2a-descriptors.py`) and is served by an [`A2aAdapter`] with the JSON-RPC
//! binding's semantics (tasks, NACK mapping, access); its answers go back the same way, a
//! failure as a gRPC status with A2A's `ErrorInfo` in `grpc-status-details-bin`.
//!
//! The agent a call is for is its request's `tenant`, `<domain>/<name>`: the tenant the
//! agent's card gives its gRPC interface. Calls are served one at a time, in the order they
//! came (as the HTTP/1.1 binding serves its requests); at most [`MAX_CALLS`] wait.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    pin::Pin,
    rc::Rc,
    sync::OnceLock,
    task::{Context, Poll},
    time::Instant,
};

use agw_proto::{FrameEncoder, Message, pb::ErrorCode};
use base64::Engine as _;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures_util::task::noop_waker_ref;
use h2::{
    RecvStream, SendStream,
    server::{self, SendResponse},
};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, SerializeOptions};
use serde_json::Value;

use crate::{
    a2a::{A2aAdapter, GrpcAnswer, SharedDirectory},
    mqtt::Close,
};

/// A2A's schema, `lf.a2a.v1` and what it imports, as a2a-sdk 1.3.0 has it.
const SCHEMA: &[u8] = include_bytes!("a2a_grpc.pb");
/// The service served.
pub const SERVICE: &str = "lf.a2a.v1.A2AService";
/// Calls accepted and not answered yet, at most; more are refused `RESOURCE_EXHAUSTED`.
pub const MAX_CALLS: usize = 32;
/// Requests' bytes held at once by a connection, at most, in largest requests.
const MAX_HELD_REQUESTS: usize = 4;
/// HTTP/2's connection preface, the first bytes of every HTTP/2 client.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn schema() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(SCHEMA).ok())
        .as_ref()
}

/// The method `path` names (`/lf.a2a.v1.A2AService/<Method>`).
fn method_of(path: &str) -> Option<MethodDescriptor> {
    let name = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE)?
        .strip_prefix('/')?;
    schema()?
        .get_service_by_name(SERVICE)?
        .methods()
        .find(|m| m.name() == name)
}

/// `google.rpc.Status`, for `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.ErrorInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: std::collections::HashMap<String, String>,
}

/// gRPC status codes by name.
fn grpc_code(name: &str) -> i32 {
    match name {
        "INVALID_ARGUMENT" => 3,
        "NOT_FOUND" => 5,
        "RESOURCE_EXHAUSTED" => 8,
        "FAILED_PRECONDITION" => 9,
        "UNIMPLEMENTED" => 12,
        "UNAVAILABLE" => 14,
        "UNAUTHENTICATED" => 16,
        _ => 13,
    }
}

/// The client's bytes for `h2` to read, and what it writes.
#[derive(Debug, Default)]
struct Buffers {
    input: BytesMut,
    output: BytesMut,
}

/// `h2`'s end of the buffers.
struct Pipe(Rc<RefCell<Buffers>>);

impl tokio::io::AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut b = self.0.borrow_mut();
        if b.input.is_empty() {
            // More comes with the next read; the adapter polls again then.
            return Poll::Pending;
        }
        let n = b.input.len().min(buf.remaining());
        buf.put_slice(&b.input[..n]);
        b.input.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.borrow_mut().output.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

type Handshake =
    Pin<Box<dyn std::future::Future<Output = Result<server::Connection<Pipe, Bytes>, h2::Error>>>>;

enum H2 {
    Handshaking(Handshake),
    Serving(Box<server::Connection<Pipe, Bytes>>),
    Closed,
}

/// One gRPC call.
struct Call {
    method: MethodDescriptor,
    body: Option<RecvStream>,
    request: BytesMut,
    /// The request in A2A's JSON, once whole.
    params: Option<Value>,
    respond: SendResponse<Bytes>,
    stream: Option<SendStream<Bytes>>,
}

/// One HTTP/2 connection of A2A's gRPC binding.
pub struct GrpcAdapter {
    /// What the client sent, until [`GrpcAdapter::from_client`] hands it to HTTP/2.
    input: BytesMut,
    buffers: Rc<RefCell<Buffers>>,
    h2: H2,
    inner: A2aAdapter,
    /// Accepted, oldest first; the front one is being served once `serving`.
    calls: VecDeque<Call>,
    serving: bool,
    max_message: usize,
    now: Instant,
    closed: bool,
}

impl std::fmt::Debug for GrpcAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcAdapter")
            .field("calls", &self.calls.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl GrpcAdapter {
    /// An adapter for a connection whose TLS client certificate named `agent` with `chain`;
    /// request messages larger than `max_message` bytes are refused.
    pub fn new(
        agent: Option<String>,
        chain: Vec<Bytes>,
        max_message: usize,
        directory: Option<SharedDirectory>,
    ) -> GrpcAdapter {
        let buffers = Rc::new(RefCell::new(Buffers::default()));
        let handshake = server::Builder::new()
            .max_concurrent_streams(MAX_CALLS as u32)
            .max_header_list_size(16 * 1024)
            .handshake::<Pipe, Bytes>(Pipe(buffers.clone()));
        GrpcAdapter {
            input: BytesMut::new(),
            buffers,
            h2: H2::Handshaking(Box::pin(handshake)),
            inner: A2aAdapter::new(agent, chain, max_message, directory),
            calls: VecDeque::new(),
            serving: false,
            max_message,
            now: Instant::now(),
            closed: false,
        }
    }

    /// The buffer reads go into.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Bytes waiting to be written.
    pub fn has_out(&self) -> bool {
        !self.buffers.borrow().output.is_empty()
    }

    /// The bytes to write.
    pub fn take_out(&mut self) -> BytesMut {
        self.buffers.borrow_mut().output.split()
    }

    /// Whether the connection is to close once the output is written.
    pub fn is_closed(&self) -> bool {
        self.closed || self.inner.is_closed()
    }

    /// The access succeeded: calls are served from now on.
    pub fn accessed(&mut self) {
        self.inner.accessed();
    }

    /// Reads what the client sent: calls are accepted and served; native frames go to `up`.
    pub fn from_client(&mut self, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        self.now = now;
        if !self.input.is_empty() {
            let read = self.input.split();
            self.buffers.borrow_mut().input.unsplit(read);
        }
        self.inner.grpc_access(now, up)?;
        self.drive(up)
    }

    /// A frame the gateway queued for the client.
    pub fn to_client(&mut self, message: Message, up: &mut FrameEncoder) {
        self.inner.to_client(message, up);
        if self.drive(up).is_err() {
            self.closed = true;
        }
    }

    /// Time passes: a blocking call that waited too long is answered with its task as it
    /// stands. Returns whether anything was written.
    pub fn tick(&mut self, now: Instant, up: &mut FrameEncoder) -> bool {
        self.now = now;
        let before = self.has_out();
        self.inner.tick(now);
        let _ = self.drive(up);
        self.has_out() && !before
    }

    /// Polls HTTP/2 and serves calls until nothing moves.
    fn drive(&mut self, up: &mut FrameEncoder) -> Result<(), Close> {
        let mut cx = Context::from_waker(noop_waker_ref());
        loop {
            let mut moved = false;
            match &mut self.h2 {
                H2::Closed => return Ok(()),
                H2::Handshaking(handshake) => match handshake.as_mut().poll(&mut cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Ok(conn)) => {
                        self.h2 = H2::Serving(Box::new(conn));
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Err(self.close(&format!("HTTP/2: {e}"))),
                },
                H2::Serving(conn) => match conn.poll_accept(&mut cx) {
                    Poll::Pending => {}
                    Poll::Ready(Some(Ok((request, respond)))) => {
                        self.accept(request, respond);
                        moved = true;
                    }
                    Poll::Ready(Some(Err(e))) => return Err(self.close(&format!("HTTP/2: {e}"))),
                    Poll::Ready(None) => return Err(self.close("the client ended the connection")),
                },
            }
            moved |= self.read_requests(&mut cx);
            moved |= self.serve(up);
            moved |= self.answer();
            if !moved {
                // What the answers queued leaves with this poll; a connection the client
                // ended ends here. (After a GOAWAY of its own for a protocol error, h2 waits for
                // the client to close; one that does not is closed by its hold time.)
                if let H2::Serving(conn) = &mut self.h2 {
                    match conn.poll_closed(&mut cx) {
                        Poll::Pending => {}
                        Poll::Ready(Ok(())) => {
                            return Err(self.close("the client ended the connection"));
                        }
                        Poll::Ready(Err(e)) => return Err(self.close(&format!("HTTP/2: {e}"))),
                    }
                }
                return Ok(());
            }
        }
    }

    fn close(&mut self, why: &str) -> Close {
        self.h2 = H2::Closed;
        self.closed = true;
        Close {
            code: ErrorCode::Unspecified,
            text: why.to_owned(),
        }
    }

    fn accept(&mut self, request: http::Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let method = method_of(request.uri().path());
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/grpc"));
        let refusal = match (&method, grpc) {
            (_, false) => Some((
                3,
                "not a gRPC request (content-type application/grpc)".to_owned(),
            )),
            (None, true) => Some((12, format!("no such method: {}", request.uri().path()))),
            _ if self.calls.len() >= MAX_CALLS => Some((8, "too many calls waiting".to_owned())),
            _ => None,
        };
        if let Some((code, text)) = refusal {
            refuse(&mut respond, code, &text, None);
            return;
        }
        let Some(method) = method else { return };
        self.calls.push_back(Call {
            method,
            body: Some(request.into_body()),
            request: BytesMut::new(),
            params: None,
            respond,
            stream: None,
        });
    }

    /// Reads the requests' bodies; a whole one becomes A2A's JSON (or is refused).
    fn read_requests(&mut self, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        let max = self.max_message + 5;
        // All calls' requests held at once are bounded too (h2's windows are released as
        // bytes are read).
        let mut held: usize = self.calls.iter().map(|c| c.request.len()).sum();
        let mut refused = Vec::new();
        for (i, call) in self.calls.iter_mut().enumerate() {
            let Some(body) = call.body.as_mut() else {
                continue;
            };
            loop {
                match body.poll_data(cx) {
                    Poll::Ready(Some(Ok(data))) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        call.request.extend_from_slice(&data);
                        held += data.len();
                        moved = true;
                        if held > MAX_HELD_REQUESTS * max {
                            refused.push((i, 8, "too many request bytes waiting".to_owned()));
                            break;
                        }
                        if call.request.len() > max {
                            refused.push((
                                i,
                                8,
                                "the request is larger than the gateway relays".to_owned(),
                            ));
                            break;
                        }
                    }
                    Poll::Ready(None) => {
                        call.body = None;
                        moved = true;
                        match request_json(&call.method, &call.request) {
                            Ok(params) => call.params = Some(params),
                            Err(text) => refused.push((i, 3, text)),
                        }
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        refused.push((i, 3, format!("the request: {e}")));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        for (i, code, text) in refused.into_iter().rev() {
            if let Some(mut call) = self.calls.remove(i) {
                if i == 0 && self.serving {
                    self.serving = false;
                }
                refuse(&mut call.respond, code, &text, None);
            }
        }
        moved
    }

    /// Hands the oldest whole call to the A2A adapter when it is free.
    fn serve(&mut self, up: &mut FrameEncoder) -> bool {
        if self.serving || !self.inner.is_ready() {
            return false;
        }
        let Some(call) = self.calls.front_mut() else {
            return false;
        };
        let Some(params) = call.params.take() else {
            return false;
        };
        self.serving = true;
        let method = call.method.name().to_owned();
        self.inner.grpc_call(&method, &params, self.now, up);
        true
    }

    /// Writes the A2A adapter's answers to the call being served.
    fn answer(&mut self) -> bool {
        let mut moved = false;
        while let Some(answer) = self.inner.take_grpc() {
            moved = true;
            let answer_is = match &answer {
                GrpcAnswer::Event(_) => AnswerIs::Event,
                _ => AnswerIs::Other,
            };
            let Some(call) = self.calls.front_mut().filter(|_| self.serving) else {
                // No call served: the access was refused (or the gateway closed the
                // connection). Every call waiting is answered with why, then it closes.
                if let GrpcAnswer::Error(error) = &answer {
                    let (code, message, info) = status_of(error);
                    for mut call in self.calls.drain(..) {
                        refuse(&mut call.respond, code, &message, Some(&info));
                    }
                    self.closed = true;
                }
                continue;
            };
            let output = call.method.output();
            let ended = match answer {
                GrpcAnswer::Reply(value) | GrpcAnswer::Event(value) => {
                    let last = !matches!(answer_is, AnswerIs::Event);
                    match response_bytes(&output, &value) {
                        Ok(message) => {
                            send(call, message);
                            if last {
                                finish(call, 0, "", None);
                            }
                            last
                        }
                        Err(text) => {
                            finish(call, 13, &text, None);
                            true
                        }
                    }
                }
                GrpcAnswer::Done => {
                    finish(call, 0, "", None);
                    true
                }
                GrpcAnswer::Error(error) => {
                    let (code, message, info) = status_of(&error);
                    finish(call, code, &message, Some(&info));
                    true
                }
            };
            if ended {
                self.calls.pop_front();
                self.serving = false;
            }
        }
        moved
    }
}

/// A JSON-RPC error object as a gRPC status: its code, message and A2A's `ErrorInfo` (the
/// HTTP+JSON binding's table).
fn status_of(error: &Value) -> (i32, String, Value) {
    let (_, rest) = crate::a2a::rest_error(&serde_json::json!({ "error": error }));
    let status = rest["error"]["status"].as_str().unwrap_or("INTERNAL");
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    (
        grpc_code(status),
        message,
        rest["error"]["details"][0].clone(),
    )
}

/// A stream's event leaves the call open; any other answer ends it.
enum AnswerIs {
    Event,
    Other,
}

/// A request's gRPC framing taken off and its protobuf read into A2A's JSON.
fn request_json(method: &MethodDescriptor, framed: &[u8]) -> Result<Value, String> {
    message_json(&method.input(), framed)
}

/// One framed gRPC message of type `descriptor` read into A2A's JSON.
fn message_json(
    descriptor: &prost_reflect::MessageDescriptor,
    framed: &[u8],
) -> Result<Value, String> {
    let (flag, len) = match framed {
        [flag, a, b, c, d, ..] => (*flag, u32::from_be_bytes([*a, *b, *c, *d]) as usize),
        _ => return Err("a gRPC request without its message".into()),
    };
    if flag != 0 {
        return Err("compressed requests are not accepted".into());
    }
    let Some(message) = framed.get(5..5 + len).filter(|_| framed.len() == 5 + len) else {
        return Err("one gRPC message per request".into());
    };
    let decoded = DynamicMessage::decode(descriptor.clone(), message)
        .map_err(|e| format!("it does not decode as {}: {e}", descriptor.full_name()))?;
    let options = SerializeOptions::new().skip_default_fields(true);
    decoded
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("the request: {e}"))
}

/// An answer in A2A's JSON as the response message, framed.
fn response_bytes(
    output: &prost_reflect::MessageDescriptor,
    value: &Value,
) -> Result<Bytes, String> {
    let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(false);
    let message = DynamicMessage::deserialize_with_options(output.clone(), value, &options)
        .map_err(|e| format!("the answer does not encode as {}: {e}", output.full_name()))?;
    let body = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(body.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(body.len()).map_err(|_| "an answer too large")?);
    framed.extend_from_slice(&body);
    Ok(framed.freeze())
}

/// A request of `method` (its name in [`SERVICE`]) from A2A's JSON, framed as gRPC sends it:
/// what a client of the binding writes (the load tool's).
pub fn encode_request(method: &str, request: &Value) -> Result<Bytes, String> {
    let method = method_of(&format!("/{SERVICE}/{method}")).ok_or("no such method")?;
    response_bytes(&method.input(), request)
}

/// A framed response of `method` read into A2A's JSON: what a client of the binding reads.
pub fn decode_response(method: &str, framed: &[u8]) -> Result<Value, String> {
    let method = method_of(&format!("/{SERVICE}/{method}")).ok_or("no such method")?;
    message_json(&method.output(), framed)
}

fn headers_sent(call: &mut Call) -> Option<&mut SendStream<Bytes>> {
    if call.stream.is_none() {
        let response = http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/grpc+proto")
            .body(())
            .ok()?;
        call.stream = call.respond.send_response(response, false).ok();
    }
    call.stream.as_mut()
}

fn send(call: &mut Call, message: Bytes) {
    if let Some(stream) = headers_sent(call) {
        let _ = stream.send_data(message, false);
    }
}

/// Ends a call with its status (and, for a failure, A2A's `ErrorInfo`).
fn finish(call: &mut Call, code: i32, message: &str, info: Option<&Value>) {
    let Some(stream) = headers_sent(call) else {
        return;
    };
    let _ = stream.send_trailers(trailers(code, message, info));
}

/// A call refused before it was served: a trailers-only response.
fn refuse(respond: &mut SendResponse<Bytes>, code: i32, message: &str, info: Option<&Value>) {
    let mut response = http::Response::new(());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc+proto"),
    );
    response.headers_mut().extend(trailers(code, message, info));
    let _ = respond.send_response(response, true);
}

fn trailers(code: i32, message: &str, info: Option<&Value>) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&code.to_string()) {
        map.insert("grpc-status", v);
    }
    if code != 0 {
        // gRPC's percent-encoding of the message: anything outside printable ASCII.
        let encoded: String = message
            .bytes()
            .map(|b| {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(v) = http::HeaderValue::from_str(&encoded) {
            map.insert("grpc-message", v);
        }
        if let Some(info) = info {
            let metadata = info["metadata"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let error = ErrorInfo {
                reason: info["reason"].as_str().unwrap_or_default().to_owned(),
                domain: info["domain"].as_str().unwrap_or_default().to_owned(),
                metadata,
            };
            let status = RpcStatus {
                code,
                message: message.to_owned(),
                details: vec![prost_types::Any {
                    type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                    value: error.encode_to_vec(),
                }],
            };
            let details =
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
            if let Ok(v) = http::HeaderValue::from_str(&details) {
                map.insert("grpc-status-details-bin", v);
            }
        }
    }
    map
}

/// What a client's bytes make of an adapter, for the fuzz target `a2a_grpc` and its seed
/// corpus: read whole and in 7-byte pieces, each call answered at once (its access accepted,
/// its message ACKed and replied to). The relay gets the same frames both ways, except that a
/// connection HTTP/2 ends may end sooner one way: calls not served by then are dropped (their
/// answers could not arrive), so one way's frames begin the other's. Returns the frames sent
/// to the relay, the bytes written to the client, and how it ended (the bytes read whole).
/// Hostile bytes end in an error, never a panic.
pub fn check_client_bytes(data: &[u8]) -> (Vec<Message>, Vec<u8>, Result<(), Close>) {
    let whole = client_bytes(data, data.len().max(1));
    let chunked = client_bytes(data, 7);
    let (shorter, longer) = if whole.0.len() <= chunked.0.len() {
        (&whole.0, &chunked.0)
    } else {
        (&chunked.0, &whole.0)
    };
    assert_eq!(
        shorter[..],
        longer[..shorter.len()],
        "the same bytes read in pieces sent the relay something else"
    );
    if whole.2.is_ok() && chunked.2.is_ok() {
        assert_eq!(
            whole.0, chunked.0,
            "the same bytes read in pieces sent the relay more or less"
        );
    }
    whole
}

fn client_bytes(data: &[u8], piece: usize) -> (Vec<Message>, Vec<u8>, Result<(), Close>) {
    let limits = agw_proto::FrameLimits {
        max_data_body: 4096,
    };
    let mut adapter = GrpcAdapter::new(
        Some("spiffe://a.example/agent/alice".into()),
        vec![Bytes::from_static(b"leaf")],
        8192,
        None,
    );
    let now = Instant::now();
    let mut up = FrameEncoder::new(limits);
    let mut messages = Vec::new();
    let mut out = Vec::new();
    let mut result = Ok(());
    for chunk in data.chunks(piece) {
        adapter.input().extend_from_slice(chunk);
        result = adapter.from_client(now, &mut up);
        // Everything the relay is asked is answered at once, until nothing more is asked.
        loop {
            let made = crate::a2a::decode_all(&mut up, limits);
            if made.is_empty() {
                break;
            }
            for m in &made {
                match m {
                    Message::AccessRequest(_) => {
                        adapter.accessed();
                        result = adapter.from_client(now, &mut up);
                    }
                    Message::AgentMessage(m) => {
                        adapter.to_client(
                            Message::Ack(agw_proto::pb::Ack {
                                destination: m.source.clone(),
                                source: m.destination.clone(),
                                message_id: m.message_id,
                            }),
                            &mut up,
                        );
                        let reply = agw_proto::pb::AgentMessage {
                            source: m.destination.clone(),
                            destination: m.source.clone(),
                            message_id: 1000 + m.message_id,
                            correlation: m.correlation.clone(),
                            payload: Bytes::from_static(b"done"),
                            ..Default::default()
                        };
                        adapter.to_client(Message::AgentMessage(reply), &mut up);
                    }
                    _ => {}
                }
            }
            messages.extend(made);
        }
        out.extend_from_slice(&adapter.take_out());
        if result.is_err() {
            break;
        }
    }
    (messages, out, result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn method(name: &str) -> MethodDescriptor {
        method_of(&format!("/{SERVICE}/{name}")).unwrap()
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_refused_access_answers_the_waiting_call_with_why_then_closes() {
        // What grpcio sends for a GetTask (captured: the fuzz target's seed), up to the
        // RST_STREAM it sent when its deadline passed.
        let call = &include_bytes!("../../fuzz/seeds/a2a_grpc/get-task")[..410];
        let mut adapter = GrpcAdapter::new(
            Some("spiffe://a.example/agent/alice".into()),
            Vec::new(),
            8192,
            None,
        );
        let mut up = FrameEncoder::new(agw_proto::FrameLimits::default());
        adapter.input().extend_from_slice(call);
        adapter.from_client(Instant::now(), &mut up).unwrap();
        let asked = crate::a2a::decode_all(&mut up, agw_proto::FrameLimits::default());
        assert!(
            matches!(&asked[..], [Message::AccessRequest(_)]),
            "{asked:?}"
        );
        assert!(!adapter.is_closed());
        assert_eq!(adapter.calls.len(), 1, "the call waits for the access");
        adapter.take_out();
        let refused = agw_proto::pb::AccessReply {
            error: Some(agw_proto::pb::Error {
                code: ErrorCode::CertRevoked as i32,
                detail: "revoked".into(),
                retry_after_ms: 0,
            }),
            ..Default::default()
        };
        adapter.to_client(Message::AccessReply(refused), &mut up);
        assert!(adapter.is_closed());
        // The call's answer (a trailers-only response) went out.
        assert!(!adapter.take_out().is_empty(), "nothing written");
        assert!(adapter.calls.is_empty());
    }

    #[test]
    fn methods_are_found_by_path_and_only_in_the_service() {
        assert_eq!(
            method("SendMessage").input().full_name(),
            "lf.a2a.v1.SendMessageRequest"
        );
        assert!(method("SendStreamingMessage").is_server_streaming());
        assert!(method_of("/lf.a2a.v1.A2AService/Nope").is_none());
        assert!(method_of("/other.Service/GetTask").is_none());
        assert!(method_of("GetTask").is_none());
    }

    #[test]
    fn requests_are_read_from_grpc_framing_into_a2a_json() {
        // GetTaskRequest{tenant: "a.example/bob" (1), id: "t-1" (2)}, by hand.
        let body = b"\x0a\x0da.example/bob\x12\x03t-1";
        let value = request_json(&method("GetTask"), &framed(body)).unwrap();
        assert_eq!(value, json!({ "tenant": "a.example/bob", "id": "t-1" }));
        // Refused: nothing, a compressed message, two messages, a cut one, bad protobuf.
        let get = method("GetTask");
        assert!(request_json(&get, b"").is_err());
        let mut compressed = framed(body);
        compressed[0] = 1;
        assert!(
            request_json(&get, &compressed)
                .unwrap_err()
                .contains("compressed")
        );
        let two = [framed(body), framed(body)].concat();
        assert!(request_json(&get, &two).is_err());
        assert!(request_json(&get, &framed(body)[..8]).is_err());
        assert!(request_json(&get, &framed(b"\xff\xff\xff")).is_err());
    }

    #[test]
    fn answers_are_written_as_the_methods_response_messages() {
        let task =
            json!({ "id": "t-1", "contextId": "c", "status": { "state": "TASK_STATE_COMPLETED" } });
        let bytes = response_bytes(&method("GetTask").output(), &task).unwrap();
        assert_eq!(bytes[0], 0);
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert_eq!(len, bytes.len() - 5);
        let back = DynamicMessage::decode(method("GetTask").output(), &bytes[5..]).unwrap();
        let back: Value = back
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .unwrap();
        assert_eq!(back["status"]["state"], "TASK_STATE_COMPLETED");
        // JSON the schema does not have as that message: refused, never sent garbled.
        assert!(response_bytes(&method("GetTask").output(), &json!({ "status": 7 })).is_err());
    }

    #[test]
    fn a_failure_carries_its_status_message_and_a2a_error_info() {
        let info = json!({ "reason": "TASK_NOT_FOUND", "domain": "a2a-protocol.org", "metadata": { "agw.reason": "INVALID_FIELD" } });
        let map = trailers(5, "no such task: é", Some(&info));
        assert_eq!(map["grpc-status"], "5");
        assert_eq!(map["grpc-message"], "no such task: %C3%A9");
        let details = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(map["grpc-status-details-bin"].as_bytes())
            .unwrap();
        let status = RpcStatus::decode(&details[..]).unwrap();
        assert_eq!(status.code, 5);
        let error = ErrorInfo::decode(&status.details[0].value[..]).unwrap();
        assert_eq!(
            (error.reason.as_str(), error.domain.as_str()),
            ("TASK_NOT_FOUND", "a2a-protocol.org")
        );
        assert_eq!(error.metadata["agw.reason"], "INVALID_FIELD");
        // Success: the status only.
        let ok = trailers(0, "", None);
        assert_eq!(ok.len(), 1);
        assert_eq!(
            (
                grpc_code("NOT_FOUND"),
                grpc_code("FAILED_PRECONDITION"),
                grpc_code("?")
            ),
            (5, 9, 13)
        );
    }
}
