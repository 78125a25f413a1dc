//! A blocking request/reply endpoint for the framed protocol, used by the standalone authority
//! and registry servers: one thread per connection (these services answer a few requests per
//! agent per hour), optional TLS (mutual when the config asks for client certificates), each
//! frame answered by a handler. A frame the handler cannot use is answered with a
//! `Notification` carrying the code, and that connection alone is closed.

use std::{
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixListener,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use agw_proto::{FrameDecoder, FrameEncoder, FrameLimits, Message, pb, pb::ErrorCode};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::tls::peer_identity;

/// Answers one request from a peer (its identity when TLS authenticated it); `None` for a kind
/// the service does not serve.
pub type Handler = dyn Fn(&Message, Option<&str>, SystemTime) -> Option<Message> + Send + Sync;

/// Limits of the protocol endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; more are closed on accept. Default 256.
    pub max_connections: usize,
    /// A connection silent this long is closed. Default 30 s.
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Accepts connections on `listener` and serves them with `handler` until the listener fails;
/// with `tls`, every connection is TLS first.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    handler: Arc<Handler>,
    limits: ServerLimits,
) -> io::Result<()> {
    accept_loop(listener.incoming(), limits, move |stream| {
        serve_stream(stream, tls.clone(), handler.as_ref(), limits)
    })
}

/// Serves a Unix socket (a local administrative endpoint) with `handler` until the listener
/// fails; peers have no certificate identity (the handler authenticates them itself).
pub fn serve_unix(
    listener: UnixListener,
    handler: Arc<Handler>,
    limits: ServerLimits,
) -> io::Result<()> {
    accept_loop(listener.incoming(), limits, move |stream| {
        stream.set_read_timeout(Some(limits.idle_timeout))?;
        stream.set_write_timeout(Some(limits.idle_timeout))?;
        serve_connection(stream, None, handler.as_ref())
    })
}

/// One thread per accepted connection, at most `limits.max_connections` at once.
fn accept_loop<S: Send + 'static>(
    incoming: impl Iterator<Item = io::Result<S>>,
    limits: ServerLimits,
    serve_one: impl Fn(S) -> io::Result<()> + Clone + Send + 'static,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in incoming {
        let Ok(stream) = stream else { continue };
        if active.load(Ordering::Relaxed) >= limits.max_connections {
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (serve_one, active) = (serve_one.clone(), Arc::clone(&active));
        std::thread::Builder::new()
            .name("agw-conn".into())
            .spawn(move || {
                // Errors end this connection only; the peer has been told where possible.
                let _ = serve_one(stream);
                active.fetch_sub(1, Ordering::Relaxed);
            })?;
    }
    Ok(())
}

fn serve_stream(
    stream: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    handler: &Handler,
    limits: ServerLimits,
) -> io::Result<()> {
    stream.set_read_timeout(Some(limits.idle_timeout))?;
    stream.set_write_timeout(Some(limits.idle_timeout))?;
    let Some(config) = tls else {
        return serve_connection(stream, None, handler);
    };
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    let peer = tls.conn.peer_certificates().and_then(peer_identity);
    serve_connection(tls, peer.as_deref(), handler)
}

fn serve_connection(
    mut stream: impl Read + Write,
    peer: Option<&str>,
    handler: &Handler,
) -> io::Result<()> {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        decoder.read_buf(n).extend_from_slice(&chunk[..n]);
        loop {
            let (reply, close) = match decoder.decode() {
                Ok(None) => break,
                Ok(Some(frame)) => match frame.message() {
                    Ok(request) => match handler(&request, peer, SystemTime::now()) {
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
            // Replies are small and fit their kind's cap; a failure here is a bug we report.
            if let Err(e) = encoder.push_message(&reply, 0) {
                encoder
                    .push_message(&notification(e.code(), "reply too large"), 0)
                    .ok();
            }
            stream.write_all(&encoder.take())?;
            if close {
                return Ok(());
            }
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
