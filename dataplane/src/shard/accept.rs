//! Agents' connections arriving: the rate per source address, then (on a TLS port) the
//! first byte, the handshake within its bounds, and the connection bound to the identity of
//! its client certificate; or plain TCP where the operator allows it.

use std::{
    net::IpAddr,
    os::fd::AsRawFd,
    rc::Rc,
    time::{Duration, Instant},
};

use super::{
    PortProtocol, Shard,
    conn::{ConnKind, Stream},
    serve,
};
use agw_proto::{FrameEncoder, pb, pb::ErrorCode, rate::Bucket};
use agw_tls::{AGENT_ALPN, H2_ALPN, HTTP_ALPN, MQTT_ALPN, peer_identity};
use bytes::Bytes;
use futures_rustls::TlsAcceptor;
use glommio::{
    net::{TcpListener, TcpStream},
    spawn_local,
    timer::sleep,
};

/// Accepts agents' connections on `listener`, whose clients speak `protocol`.
pub(super) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, protocol: PortProtocol) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or the like: back off instead of spinning.
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.conns.borrow().len() >= shard.limits.get().max_connections_per_shard
            || !shard.arrival_allowed(&stream)
        {
            shard.counter().connection_refused();
            continue;
        }
        let _ = stream.set_nodelay(true);
        if let Some(acceptor) = &shard.agent_tls {
            // Handshakes cost CPU and memory before anyone is known: a bounded number at a
            // time, fewer from any one address, each within the access timeout.
            let Some(slot) = Handshaking::take(&shard, &stream) else {
                shard.counter().connection_refused();
                continue;
            };
            spawn_local(agent_handshake(
                shard.clone(),
                acceptor.clone(),
                stream,
                slot,
                protocol,
            ))
            .detach();
            continue;
        }
        if let Some(conn) = shard.new_conn(Stream::Plain(stream), ConnKind::Agent) {
            if shard.draining.get() {
                shard.close_with(&conn, ErrorCode::Draining, "gateway draining");
            }
            spawn_local(serve(shard.clone(), conn)).detach();
        }
    }
}

impl Shard {
    /// Whether the new connection's source address is within its connection rate.
    fn arrival_allowed(&self, stream: &TcpStream) -> bool {
        let rate = self.limits.get().connection_rate_per_source;
        if rate == 0 {
            return true;
        }
        let Ok(source) = stream.peer_addr().map(|a| a.ip()) else {
            return false;
        };
        let now = Instant::now();
        let mut arrivals = self.arrivals.borrow_mut();
        let (bucket, last) = arrivals
            .entry(source)
            .or_insert_with(|| (Bucket::new(f64::from(rate), f64::from(rate)), now));
        let taken = bucket.take(now.saturating_duration_since(*last));
        *last = now;
        taken.is_ok()
    }

    /// Forgets sources silent long enough that their allowance is whole again.
    pub(super) fn forget_arrivals(&self, now: Instant) {
        let mut arrivals = self.arrivals.borrow_mut();
        if !arrivals.is_empty() {
            arrivals.retain(|_, (_, last)| now.saturating_duration_since(*last) < ARRIVALS_KEPT);
        }
    }
}

/// How long a source's connection allowance is remembered after its last connection (its
/// bucket refills in at most a second).
const ARRIVALS_KEPT: Duration = Duration::from_secs(2);

/// How long a client has to start its TLS handshake; a native client waiting for the
/// challenge sends nothing, and is told `TLS_REQUIRED` after this.
const FIRST_BYTE_WAIT: Duration = Duration::from_secs(1);

/// Whether the client's first byte starts a TLS handshake record (0x16): `Some(false)` for
/// anything else, silence included; `None` if the connection closed.
async fn starts_tls(stream: &TcpStream) -> Option<bool> {
    let mut first = [0u8; 1];
    let peeked = futures_lite::future::or(async { Some(stream.peek(&mut first).await) }, async {
        sleep(FIRST_BYTE_WAIT).await;
        None
    })
    .await;
    match peeked {
        Some(Ok(1)) => Some(first[0] == 0x16),
        Some(_) => None,
        None => Some(false),
    }
}

/// A native client on the TLS port: a NOTIFICATION in the clear says why, then close.
async fn refuse_plaintext(shard: &Shard, mut stream: TcpStream) {
    use futures_lite::AsyncWriteExt as _;
    let mut encoder = FrameEncoder::new(shard.config.limits);
    let refusal = pb::Notification {
        code: ErrorCode::TlsRequired as i32,
        subcode: 0,
        text: "this port speaks TLS (mutual, ALPN agw/1): connect with TLS".into(),
    };
    if encoder.push(&refusal).is_ok() {
        let bytes = encoder.take();
        let _ = futures_lite::future::or(async { stream.write_all(&bytes).await.ok() }, async {
            sleep(FIRST_BYTE_WAIT).await;
            None
        })
        .await;
    }
    let _ = stream.close().await;
}

/// Agents' TLS handshakes in progress on one shard at most; past it new connections are
/// closed at accept (and counted refused).
const MAX_HANDSHAKES: usize = 256;
/// The same, from one source address: one address cannot take every slot.
const MAX_HANDSHAKES_PER_SOURCE: usize = 32;

/// A handshake's place in the shard's counts, given back when dropped.
struct Handshaking {
    shard: Rc<Shard>,
    source: IpAddr,
}

impl Handshaking {
    fn take(shard: &Rc<Shard>, stream: &TcpStream) -> Option<Handshaking> {
        let source = stream.peer_addr().ok()?.ip();
        let mut from = shard.handshaking_from.borrow_mut();
        let here = from.get(&source).copied().unwrap_or(0);
        if shard.handshaking.get() >= MAX_HANDSHAKES || here >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        from.insert(source, here + 1);
        shard.handshaking.set(shard.handshaking.get() + 1);
        Some(Handshaking {
            shard: shard.clone(),
            source,
        })
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let shard = &self.shard;
        shard
            .handshaking
            .set(shard.handshaking.get().saturating_sub(1));
        let mut from = shard.handshaking_from.borrow_mut();
        if let Some(n) = from.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                from.remove(&self.source);
            }
        }
    }
}

/// An agent's TLS handshake, then its connection, bound to the identity its client
/// certificate names. A handshake that fails or outlasts the access timeout closes the
/// connection.
async fn agent_handshake(
    shard: Rc<Shard>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    slot: Handshaking,
    protocol: PortProtocol,
) {
    let starts_tls = starts_tls(&stream).await;
    if starts_tls != Some(true) {
        drop(slot);
        shard.counter().tls_handshake_failed();
        if starts_tls == Some(false) {
            refuse_plaintext(&shard, stream).await;
        }
        return;
    }
    let fd = stream.as_raw_fd();
    let handshake = acceptor.accept(stream);
    let timeout = sleep(shard.config.access.access_timeout);
    let done = futures_lite::future::or(async { Some(handshake.await) }, async {
        timeout.await;
        None
    })
    .await;
    drop(slot);
    let Some(Ok(tls)) = done else {
        shard.counter().tls_handshake_failed();
        return;
    };
    let session = tls.get_ref().1;
    let Some(identity) = session.peer_certificates().and_then(peer_identity) else {
        shard.counter().tls_handshake_failed();
        return;
    };
    let chain: Vec<Bytes> = session
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| Bytes::copy_from_slice(c))
        .collect();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    if shard.conns.borrow().len() >= shard.limits.get().max_connections_per_shard {
        shard.counter().connection_refused();
        return;
    }
    let Some(conn) = shard.new_conn_fd(Stream::Server(Box::new(tls)), fd, ConnKind::Agent) else {
        return;
    };
    if let Some(session) = conn.session.borrow_mut().as_mut() {
        session.bind_tls_identity(identity.clone(), chain.clone());
    }
    // On a protocol's own port, that protocol; on the agent port, ALPN names it, and a client
    // that named none (MQTT clients, usually) is told apart by its first bytes.
    match (protocol, alpn.as_deref()) {
        (PortProtocol::Mqtt, _) | (PortProtocol::Detect, Some(MQTT_ALPN)) => {
            shard.speak_mqtt(&conn);
        }
        (PortProtocol::A2a | PortProtocol::Detect, Some(H2_ALPN)) => shard.speak_grpc(&conn),
        (PortProtocol::A2a, _) | (PortProtocol::Detect, Some(HTTP_ALPN)) => {
            shard.speak_a2a(&conn);
        }
        (PortProtocol::Detect, Some(AGENT_ALPN)) => {}
        (PortProtocol::Detect, _) => {
            conn.identifying.set(true);
            conn.hold.set(true);
        }
    }
    if shard.draining.get() {
        shard.close_with(&conn, ErrorCode::Draining, "gateway draining");
    }
    // A task of its own: this one, sized for the handshake's state (rustls's included), ends
    // here instead of being carried for the connection's life.
    spawn_local(serve(shard, conn)).detach();
}
