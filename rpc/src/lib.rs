//! The framed request/reply endpoint behind the control plane's servers: the certificate
//! authority's protocol port, the registry (mutual TLS) and the operator's admin socket. Each
//! frame a client sends is answered by a handler; what a handler cannot use is answered with a
//! `Notification` and that connection alone is closed.
//!
//! What it is: tasks on a tokio runtime, one per connection (no thread per connection), with
//! the bounds a server open to the network needs so that the next legitimate client is still
//! served:
//!
//! - a cap on open connections and one per source address; past either, the connection is
//!   refused at once (`OVERLOADED` or `RATE_LIMITED` in a `Notification` on a plain endpoint;
//!   closed before the handshake on a TLS one);
//! - a deadline for the TLS handshake, one for each whole request (from its first byte, not
//!   per read: a slow drip does not extend it) and one for silence between requests
//!   (`REQUEST_TIMEOUT`);
//! - the kinds and body sizes a service takes ([`Admission`]), refused at the header before
//!   anything is buffered;
//! - accept errors (out of file descriptors, out of memory) back off, are counted and logged,
//!   and the endpoint keeps serving; [`EndpointStats::serving`] tells health checks.
//!
//! Handlers are blocking functions (the authority writes to its database, a registration waits
//! for the registry's owner): each request runs on the runtime's bounded blocking pool, except
//! the kinds a service answers from memory ([`ServerLimits::inline`]). A handler learns who
//! called ([`Caller`]: the TLS identity and the source address).
//!
//! What it is not: the relay (agents' messages go through the dataplane's shards), nor HTTP.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use agw_proto::{Admission, FrameDecoder, FrameEncoder, FrameLimits, Message, pb, pb::ErrorCode};
use rustls::{ServerConfig, pki_types::CertificateDer};
pub mod http;

pub use http::{HttpAnswer, HttpLimits, HttpRequest, Route};
/// The HTTP method type routes take.
pub use hyper::Method;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, UnixListener},
    runtime::Handle,
    sync::watch,
    time::{Instant, sleep, timeout, timeout_at},
};

/// Answers one request from a caller at the given time; `None` for a kind the service does
/// not serve.
pub type Handler = dyn Fn(&Message, &Caller, SystemTime) -> Option<Message> + Send + Sync;

/// Who sent a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The identity in its certificate, when TLS authenticated it.
    pub identity: Option<String>,
    /// Its address (none on a Unix socket).
    pub address: Option<IpAddr>,
}

/// How a TLS endpoint names its peers: the identity in their certificate chain.
pub type Identify = fn(&[CertificateDer<'_>]) -> Option<String>;

/// Reads at most this much at a time into a connection's buffer.
const READ_CHUNK: usize = 16 * 1024;
/// How long a refusal or a last notification may take to write.
pub(crate) const PARTING_WRITE: Duration = Duration::from_secs(1);
/// Pause after an accept failed for want of resources (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Structured logs on stderr for a server program (the servers' warnings, such as running out
/// of file descriptors, go there); `RUST_LOG` picks the levels, `default` otherwise.
pub fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The control plane's runtime: two worker threads for every endpoint's connections, and a
/// bounded pool for handlers (which block on a database or a lock).
pub fn runtime(name: &str) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(32)
        .thread_name(name)
        .enable_all()
        .build()
}

/// The flags that set an endpoint's bounds (the standalone servers take them).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Connections served at once; more are refused.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections served at once from one source address.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_source: usize,
    /// Milliseconds a TLS handshake may take.
    #[arg(long, default_value_t = 5000)]
    pub handshake_timeout_ms: u64,
    /// Milliseconds a request may take to arrive whole once it has begun (and its reply to
    /// be read).
    #[arg(long, default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Milliseconds a connection may stay silent between requests.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
}

impl LimitArgs {
    /// The limits these flags set, for a service taking `admission`.
    pub fn limits(&self, admission: Admission) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            max_per_source: self.max_connections_per_source,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            admission,
            inline: Admission::NONE,
        }
    }
}

/// The bounds of one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections open at once; past it new ones are refused. Default 1,024.
    pub max_connections: usize,
    /// Connections open at once from one source address. Default 64.
    pub max_per_source: usize,
    /// Time for a TLS handshake to complete. Default 5 s.
    pub handshake_timeout: Duration,
    /// Time for a request to arrive whole once its first byte has, and for its reply to be
    /// written. Default 5 s.
    pub request_timeout: Duration,
    /// Silence allowed between requests. Default 30 s.
    pub idle_timeout: Duration,
    /// The kinds the service takes and the cap on their bodies. Default every kind.
    pub admission: Admission,
    /// Kinds whose handler is quick and never blocks (a lookup in memory): answered on the
    /// connection's task. Others go to the runtime's blocking pool (they write to a database,
    /// or wait). Default none.
    pub inline: Admission,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_per_source: 64,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            admission: Admission::ALL,
            inline: Admission::NONE,
        }
    }
}

/// What an endpoint has done, for metrics and health.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections refused: the endpoint was full.
    pub refused_full: AtomicU64,
    /// Connections refused: their source had too many open.
    pub refused_source: AtomicU64,
    /// Connections closed at a deadline (handshake, request, idle, a reply not read).
    pub timed_out: AtomicU64,
    /// Accepts that failed for want of resources (file descriptors, memory).
    pub accept_errors: AtomicU64,
    serving: AtomicBool,
}

impl EndpointStats {
    /// Whether the endpoint takes connections now: false while accepts fail for want of
    /// resources, and once it has stopped.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }
}

/// A running endpoint; it stops, and closes its connections, when dropped.
#[derive(Debug)]
pub struct Endpoint {
    addr: Option<SocketAddr>,
    stats: Arc<EndpointStats>,
    stop: watch::Sender<bool>,
}

impl Endpoint {
    /// Serves `listener` on `runtime`: with `tls`, each connection is a TLS session first
    /// (mutual when its config asks for client certificates; `identify` names the client).
    pub fn tcp(
        runtime: &Handle,
        listener: std::net::TcpListener,
        tls: Option<(Arc<ServerConfig>, Identify)>,
        handler: Arc<Handler>,
        limits: ServerLimits,
    ) -> io::Result<Endpoint> {
        let (listener, addr) = tokio_listener(runtime, listener)?;
        let (endpoint, shared) = Endpoint::new(Some(addr), handler, limits);
        let tls = tls.map(|(config, identify)| (config, identify, FirstByte::Ignored));
        runtime.spawn(accept_tcp(listener, tls, shared));
        Ok(endpoint)
    }

    /// Serves `listener` over TLS (`tls`, as [`Endpoint::tcp`]) and, when `plain` allows it,
    /// plain TCP too: a connection whose first byte opens a TLS handshake (0x16) is TLS, any
    /// other is plain, or refused `TLS_REQUIRED` when plain is not allowed. For a service
    /// whose clients move to TLS (the authority's port: applications carry enrollment tokens).
    pub fn tcp_tls_or_plain(
        runtime: &Handle,
        listener: std::net::TcpListener,
        tls: (Arc<ServerConfig>, Identify),
        plain: bool,
        handler: Arc<Handler>,
        limits: ServerLimits,
    ) -> io::Result<Endpoint> {
        let (listener, addr) = tokio_listener(runtime, listener)?;
        let (endpoint, shared) = Endpoint::new(Some(addr), handler, limits);
        let (config, identify) = tls;
        let first = if plain {
            FirstByte::PlainServed
        } else {
            FirstByte::PlainRefused
        };
        runtime.spawn(accept_tcp(
            listener,
            Some((config, identify, first)),
            shared,
        ));
        Ok(endpoint)
    }

    /// Serves a Unix socket (a local administrative endpoint); peers have no certificate
    /// identity (the handler authenticates them itself) and count as one source.
    pub fn unix(
        runtime: &Handle,
        listener: std::os::unix::net::UnixListener,
        handler: Arc<Handler>,
        limits: ServerLimits,
    ) -> io::Result<Endpoint> {
        listener.set_nonblocking(true)?;
        let listener = {
            let _inside = runtime.enter();
            UnixListener::from_std(listener)?
        };
        let (endpoint, shared) = Endpoint::new(None, handler, limits);
        runtime.spawn(accept_unix(listener, shared));
        Ok(endpoint)
    }

    fn new(
        addr: Option<SocketAddr>,
        handler: Arc<Handler>,
        limits: ServerLimits,
    ) -> (Endpoint, Shared) {
        let stats = Arc::new(EndpointStats::default());
        stats.serving.store(true, Ordering::Relaxed);
        let (stop, stopped) = watch::channel(false);
        let shared = Shared {
            handler,
            limits,
            gate: Gate::new(
                limits.max_connections,
                limits.max_per_source,
                Arc::clone(&stats),
            ),
            stopped,
        };
        (Endpoint { addr, stats, stop }, shared)
    }

    /// Where it listens (TCP endpoints).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Its counters and whether it serves.
    pub fn stats(&self) -> Arc<EndpointStats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A std listener moved onto `runtime`, and its address.
fn tokio_listener(
    runtime: &Handle,
    listener: std::net::TcpListener,
) -> io::Result<(TcpListener, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let _inside = runtime.enter();
    Ok((TcpListener::from_std(listener)?, addr))
}

/// What every connection task of an endpoint shares.
#[derive(Clone)]
struct Shared {
    handler: Arc<Handler>,
    limits: ServerLimits,
    gate: Gate,
    stopped: watch::Receiver<bool>,
}

/// Counts connections in and out against an endpoint's caps.
#[derive(Clone)]
struct Gate {
    max_connections: usize,
    max_per_source: usize,
    stats: Arc<EndpointStats>,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection: counted open (in all and for its source) until dropped.
struct Admitted {
    stats: Arc<EndpointStats>,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        if let (Some(ip), Ok(mut sources)) = (self.source, self.sources.lock())
            && let Some(n) = sources.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                sources.remove(&ip);
            }
        }
    }
}

impl Gate {
    fn new(max_connections: usize, max_per_source: usize, stats: Arc<EndpointStats>) -> Gate {
        Gate {
            max_connections,
            max_per_source,
            stats,
            sources: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a new connection in, or says why it is refused.
    fn admit(&self, source: Option<IpAddr>) -> Result<Admitted, (ErrorCode, &'static str)> {
        if self.stats.open.load(Ordering::Relaxed) >= self.max_connections {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return Err((ErrorCode::Overloaded, "the server is full; try again later"));
        }
        if let Some(ip) = source {
            let mut sources = self
                .sources
                .lock()
                .map_err(|_| (ErrorCode::Internal, "server state poisoned"))?;
            let n = sources.entry(ip).or_insert(0);
            if *n >= self.max_per_source {
                self.stats.refused_source.fetch_add(1, Ordering::Relaxed);
                return Err((
                    ErrorCode::RateLimited,
                    "too many connections from this address",
                ));
            }
            *n += 1;
        }
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            stats: Arc::clone(&self.stats),
            sources: Arc::clone(&self.sources),
            source,
        })
    }

    /// An accept failed. For want of resources: back off (the listener stays ready, so
    /// retrying at once would spin), count it, say so once a second at most.
    async fn accept_failed(&self, e: &io::Error, last_log: &mut Option<Instant>) {
        let starved = matches!(
            e.raw_os_error(),
            Some(
                libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM
            )
        );
        if !starved {
            return; // the client gave up before we accepted (ECONNABORTED and the like)
        }
        self.stats.serving.store(false, Ordering::Relaxed);
        self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
        if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(error = %e, "cannot accept connections; backing off");
            *last_log = Some(Instant::now());
        }
        sleep(ACCEPT_BACKOFF).await;
    }
}

/// The errno values an accept fails with for want of resources (Linux).
mod libc_errno {
    pub(super) const ENOMEM: i32 = 12;
    pub(super) const ENFILE: i32 = 23;
    pub(super) const EMFILE: i32 = 24;
    pub(super) const ENOBUFS: i32 = 105;
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a TLS endpoint makes of a client whose first byte opens no handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstByte {
    /// Not looked at: the handshake fails.
    Ignored,
    /// Served plain.
    PlainServed,
    /// Told `TLS_REQUIRED`.
    PlainRefused,
}

/// TLS for a TCP endpoint: the configuration, how a client certificate names its holder, and
/// what a client that does not speak TLS gets.
type TcpTls = (Arc<ServerConfig>, Identify, FirstByte);

async fn accept_tcp(listener: TcpListener, tls: Option<TcpTls>, shared: Shared) {
    let mut stopped = shared.stopped.clone();
    let mut last_log = None;
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                shared.gate.accept_failed(&e, &mut last_log).await;
                continue;
            }
        };
        shared.gate.stats.serving.store(true, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let admitted = match shared.gate.admit(Some(from.ip())) {
                Ok(a) => a,
                Err((code, text)) => {
                    // A TLS client could not read a plain refusal: it is closed unanswered.
                    if tls.is_none() {
                        refuse(stream, code, text).await;
                    }
                    return;
                }
            };
            let caller = Caller {
                identity: None,
                address: Some(from.ip()),
            };
            // Where plain clients are served or told off, the first byte says which this is.
            let tls = match tls {
                Some((config, identify, FirstByte::Ignored)) => Some((config, identify)),
                Some((config, identify, first_byte)) => {
                    let mut first = [0u8; 1];
                    let peeked =
                        timeout(shared.limits.handshake_timeout, stream.peek(&mut first)).await;
                    match peeked {
                        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => Some((config, identify)),
                        Ok(Ok(1)) if first_byte == FirstByte::PlainServed => None,
                        Ok(Ok(1)) => {
                            let text = "this port speaks TLS: connect with TLS, trusting the \
                                        domain's anchor";
                            refuse(stream, ErrorCode::TlsRequired, text).await;
                            return;
                        }
                        Err(_) => {
                            shared.gate.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        _ => return,
                    }
                }
                None => None,
            };
            match tls {
                None => serve(stream, caller, &shared).await,
                Some((config, identify)) => {
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    match timeout(shared.limits.handshake_timeout, accept).await {
                        Ok(Ok(tls)) => {
                            let identity = tls.get_ref().1.peer_certificates().and_then(identify);
                            serve(tls, Caller { identity, ..caller }, &shared).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%from, error = %e, "TLS handshake refused"),
                        Err(_) => {
                            shared.gate.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%from, "TLS handshake timed out");
                        }
                    }
                }
            }
            drop(admitted);
        });
    }
    shared.gate.stats.serving.store(false, Ordering::Relaxed);
}

async fn accept_unix(listener: UnixListener, shared: Shared) {
    let mut stopped = shared.stopped.clone();
    let mut last_log = None;
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                shared.gate.accept_failed(&e, &mut last_log).await;
                continue;
            }
        };
        shared.gate.stats.serving.store(true, Ordering::Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            match shared.gate.admit(None) {
                Ok(admitted) => {
                    serve(stream, Caller::default(), &shared).await;
                    drop(admitted);
                }
                Err((code, text)) => refuse(stream, code, text).await,
            }
        });
    }
    shared.gate.stats.serving.store(false, Ordering::Relaxed);
}

/// Tells a refused client why, briefly, and closes.
async fn refuse(mut stream: impl AsyncWrite + Unpin, code: ErrorCode, text: &str) {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    if encoder.push_message(&notification(code, text), 0).is_ok() {
        let _ = timeout(PARTING_WRITE, stream.write_all(&encoder.take())).await;
    }
    let _ = timeout(PARTING_WRITE, stream.shutdown()).await;
}

/// Answers the connection's requests until it closes, breaks the protocol, misses a deadline
/// or the endpoint stops.
async fn serve(mut stream: impl AsyncRead + AsyncWrite + Unpin, caller: Caller, shared: &Shared) {
    let limits = shared.limits;
    let mut stopped = shared.stopped.clone();
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.set_admission(limits.admission);
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    // When the request now arriving began to arrive.
    let mut request_began: Option<Instant> = None;
    loop {
        // Answer every whole request buffered.
        loop {
            let (reply, close) = match decoder.decode() {
                Ok(None) => break,
                Ok(Some(frame)) => match frame.message() {
                    Ok(request) => match answer(shared, request, &caller).await {
                        Some(reply) => (reply, false),
                        None => (
                            notification(ErrorCode::UnexpectedMessage, frame.header.kind.name()),
                            true,
                        ),
                    },
                    Err(e) => (notification(e.code(), &e.to_string()), true),
                },
                Err(e) => (notification(e.code(), &e.to_string()), true),
            };
            if let Err(e) = encoder.push_message(&reply, 0) {
                encoder
                    .push_message(&notification(e.code(), "reply too large"), 0)
                    .ok();
            }
            match timeout(limits.request_timeout, stream.write_all(&encoder.take())).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    // The client does not read its replies.
                    shared.gate.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            if close {
                let _ = timeout(PARTING_WRITE, stream.shutdown()).await;
                return;
            }
        }
        let now = Instant::now();
        let deadline = if decoder.buffered() == 0 {
            request_began = None;
            now + limits.idle_timeout
        } else {
            *request_began.get_or_insert(now) + limits.request_timeout
        };
        let read = tokio::select! {
            _ = stopped.changed() => return,
            read = timeout_at(deadline, stream.read_buf(decoder.read_buf(READ_CHUNK))) => read,
        };
        match read {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                shared.gate.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                let text = if request_began.is_some() {
                    "the request did not arrive whole in time"
                } else {
                    "silent too long"
                };
                let mut parting = FrameEncoder::new(FrameLimits::default());
                if parting
                    .push_message(&notification(ErrorCode::RequestTimeout, text), 0)
                    .is_ok()
                {
                    let _ = timeout(PARTING_WRITE, stream.write_all(&parting.take())).await;
                }
                let _ = timeout(PARTING_WRITE, stream.shutdown()).await;
                return;
            }
        }
    }
}

/// Runs the handler: on this task for the quick kinds, else on the blocking pool.
async fn answer(shared: &Shared, request: Message, caller: &Caller) -> Option<Message> {
    if shared.limits.inline.takes(request.kind()) {
        return (shared.handler)(&request, caller, SystemTime::now());
    }
    let handler = Arc::clone(&shared.handler);
    let caller = caller.clone();
    let joined =
        tokio::task::spawn_blocking(move || handler(&request, &caller, SystemTime::now())).await;
    match joined {
        Ok(reply) => reply,
        Err(e) => {
            tracing::error!(error = %e, "a request handler failed");
            Some(notification(ErrorCode::Internal, "the request failed"))
        }
    }
}

/// A `Notification` with `code`: how these endpoints refuse what they cannot answer.
pub fn notification(code: ErrorCode, text: &str) -> Message {
    pb::Notification {
        code: code as i32,
        subcode: 0,
        text: text.to_owned(),
    }
    .into()
}
