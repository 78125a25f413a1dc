//! An endpoint under abuse, on loopback with real sockets: slow drips, connection floods from
//! one address, stalled TLS handshakes and oversized requests. Each case checks what the
//! attacker gets (a refusal or a deadline, with its code) and that a legitimate client is
//! still answered within a second meanwhile. Bounded in count and time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use agw_proto::{
    Admission, FrameDecoder, FrameEncoder, FrameLimits, Kind, Message, pb, pb::ErrorCode,
};
use agw_rpc::{Endpoint, Handler, ServerLimits};

/// Answers a StatusQuery with a StatusReply of the same request ID.
fn handler() -> Arc<Handler> {
    Arc::new(
        |request: &Message, _caller: &agw_rpc::Caller, _now| match request {
            Message::StatusQuery(q) => Some(
                pb::StatusReply {
                    request_id: q.request_id,
                    ..Default::default()
                }
                .into(),
            ),
            _ => None,
        },
    )
}

fn limits() -> ServerLimits {
    ServerLimits {
        max_connections: 64,
        max_per_source: 8,
        handshake_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(2),
        admission: Admission::only(&[Kind::StatusQuery], 1024),
        // Answered on the connection's task (the authority's and the admin tests cover the
        // blocking pool).
        inline: Admission::only(&[Kind::StatusQuery], 1024),
    }
}

fn frame(message: impl Into<Message>) -> Vec<u8> {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    encoder.push_message(&message.into(), 0).unwrap();
    encoder.take().to_vec()
}

/// Reads frames from `stream` until one decodes or the stream ends.
fn next(stream: &mut impl Read) -> Option<Message> {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.decode().unwrap() {
            return Some(frame.message().unwrap());
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => decoder.extend_from_slice(&buf[..n]),
        }
    }
}

/// A legitimate client from 127.0.0.1: connects, asks, and must be answered within a second.
fn served(addr: SocketAddr, id: u64) -> Duration {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(&frame(pb::StatusQuery {
        request_id: id,
        ..Default::default()
    }))
    .unwrap();
    match next(&mut s) {
        Some(Message::StatusReply(r)) => assert_eq!(r.request_id, id),
        other => panic!("a legitimate client got {other:?}"),
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    took
}

/// A connection from `source` (another loopback address than the legitimate client's).
async fn attacker(source: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// What the server says before it closes (`None`: closed without a word).
async fn parting(stream: &mut tokio::net::TcpStream) -> Option<ErrorCode> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut bytes)).await;
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(&bytes);
    match decoder.decode().ok()??.message().ok()? {
        Message::Notification(n) => Some(n.code()),
        _ => None,
    }
}

fn plain_endpoint(runtime: &tokio::runtime::Runtime) -> Endpoint {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Endpoint::tcp(runtime.handle(), listener, None, handler(), limits()).unwrap()
}

#[test]
fn a_slow_drip_is_cut_at_the_request_deadline_and_others_are_served() {
    let runtime = agw_rpc::runtime("abuse-test").unwrap();
    let endpoint = plain_endpoint(&runtime);
    let addr = endpoint.local_addr().unwrap();
    let stats = endpoint.stats();
    // 20 connections from 127.0.0.2, each dripping a request a byte every 100 ms: 8 are
    // admitted (the per-source cap) and cut at the 500 ms request deadline, 12 are refused.
    let drips = runtime.spawn(async move {
        use tokio::io::AsyncWriteExt;
        let request = frame(pb::StatusQuery::default());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = attacker("127.0.0.2", addr).await;
                for byte in &request {
                    if s.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                parting(&mut s).await
            }));
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.unwrap());
        }
        codes
    });
    std::thread::sleep(Duration::from_millis(200));
    for id in 1..=5 {
        served(addr, id);
        std::thread::sleep(Duration::from_millis(100));
    }
    let codes = runtime.block_on(drips).unwrap();
    let count = |code| codes.iter().filter(|c| **c == Some(code)).count();
    assert_eq!(count(ErrorCode::RequestTimeout), 8, "{codes:?}");
    assert_eq!(count(ErrorCode::RateLimited), 12, "{codes:?}");
    assert_eq!(
        stats
            .refused_source
            .load(std::sync::atomic::Ordering::Relaxed),
        12
    );
    served(addr, 6);
}

#[test]
fn a_flood_of_idle_connections_from_one_address_cannot_crowd_others_out() {
    let runtime = agw_rpc::runtime("abuse-test").unwrap();
    let endpoint = plain_endpoint(&runtime);
    let addr = endpoint.local_addr().unwrap();
    // 200 connections from 127.0.0.3 that never speak.
    let held = runtime.block_on(async move {
        let mut held = Vec::new();
        for _ in 0..200 {
            held.push(attacker("127.0.0.3", addr).await);
        }
        held
    });
    served(addr, 1);
    let stats = endpoint.stats();
    let open = stats.open.load(std::sync::atomic::Ordering::Relaxed);
    assert!(open <= 8 + 1, "{open} open");
    // The admitted ones are closed at the idle deadline (2 s), with the reason.
    let codes = runtime.block_on(async move {
        let mut codes = Vec::new();
        for mut s in held.into_iter().take(8) {
            codes.push(parting(&mut s).await);
        }
        codes
    });
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Some(ErrorCode::RequestTimeout | ErrorCode::RateLimited))),
        "{codes:?}"
    );
    served(addr, 2);
}

#[test]
fn oversized_and_foreign_requests_are_refused_at_their_header() {
    let runtime = agw_rpc::runtime("abuse-test").unwrap();
    let endpoint = plain_endpoint(&runtime);
    let addr = endpoint.local_addr().unwrap();
    // A StatusQuery announcing 4 MiB (the service takes 1 KiB), and a CRL reply announcing
    // 4 MiB (a kind it does not take): refused at once, nothing of the body awaited.
    let status = Kind::StatusQuery.code();
    let crl_reply = Kind::CrlReply.code();
    for (header, code) in [
        ([1u8, status, 0, 0, 0, 0x40, 0, 0], ErrorCode::TooLarge),
        (
            [1u8, crl_reply, 0, 0, 0, 0x40, 0, 0],
            ErrorCode::UnexpectedMessage,
        ),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(&header).unwrap();
        match next(&mut s) {
            Some(Message::Notification(n)) => assert_eq!(n.code(), code),
            other => panic!("{other:?}"),
        }
    }
    served(addr, 1);
}

#[test]
fn stalled_tls_handshakes_are_cut_at_their_deadline() {
    let runtime = agw_rpc::runtime("abuse-test").unwrap();
    let (server, client) = tls_pair();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let identify: agw_rpc::Identify = |_| Some("client".to_owned());
    let endpoint = Endpoint::tcp(
        runtime.handle(),
        listener,
        Some((server, identify)),
        handler(),
        limits(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    // Eight connections from 127.0.0.4 that never start their handshake: closed at the
    // 500 ms handshake deadline.
    let stalled = runtime.spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut closed_after = Vec::new();
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(attacker("127.0.0.4", addr).await);
        }
        let start = Instant::now();
        for mut s in held {
            let mut b = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await;
            closed_after.push(start.elapsed());
        }
        closed_after
    });
    // Meanwhile a TLS client from 127.0.0.1 is served.
    let start = Instant::now();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client, name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(&frame(pb::StatusQuery {
        request_id: 9,
        ..Default::default()
    }))
    .unwrap();
    assert!(matches!(next(&mut tls), Some(Message::StatusReply(r)) if r.request_id == 9));
    assert!(start.elapsed() < Duration::from_secs(1));
    let closed_after = runtime.block_on(stalled).unwrap();
    assert!(
        closed_after.iter().all(|t| *t < Duration::from_secs(2)),
        "{closed_after:?}"
    );
    assert!(
        endpoint
            .stats()
            .timed_out
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 8
    );
}

/// A server config (self-signed, no client authentication) and a client that trusts it.
fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

#[test]
fn http_slow_and_huge_request_heads_do_not_hold_the_endpoint() {
    let runtime = agw_rpc::runtime("abuse-test").unwrap();
    let route: Arc<agw_rpc::Route> = Arc::new(|request: &agw_rpc::HttpRequest| {
        agw_rpc::HttpAnswer::text(200, format!("you asked for {}\n", request.path))
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let limits = agw_rpc::HttpLimits {
        max_connections: 64,
        max_per_source: 8,
        request_timeout: Duration::from_millis(500),
        max_body: 0,
    };
    let endpoint = Endpoint::http(runtime.handle(), listener, route, limits).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let get = |path: &str| -> String {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(start.elapsed() < Duration::from_secs(1));
        text
    };
    // 20 connections from 127.0.0.5 dripping a request head a byte every 100 ms: 8 admitted
    // and cut at the deadline, 12 refused with 503.
    let drips = runtime.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tasks = Vec::new();
        for _ in 0..20 {
            tasks.push(tokio::spawn(async move {
                let mut s = attacker("127.0.0.5", addr).await;
                let start = Instant::now();
                for byte in b"GET /slow HTTP/1.1\r\nHost: a\r\n" {
                    if s.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut answer = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await;
                (
                    String::from_utf8_lossy(&answer).into_owned(),
                    start.elapsed(),
                )
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(get("/one").starts_with("HTTP/1.1 200"));
    // A request head of 100 KiB is refused, not buffered.
    let mut huge = TcpStream::connect(addr).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let head = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100 * 1024));
    let _ = huge.write_all(head.as_bytes());
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer:.60}");
    let dripped = runtime.block_on(drips).unwrap();
    let refused = dripped
        .iter()
        .filter(|(a, _)| a.starts_with("HTTP/1.1 503"))
        .count();
    assert_eq!(refused, 12, "{dripped:?}");
    assert!(
        dripped
            .iter()
            .filter(|(a, _)| !a.starts_with("HTTP/1.1 503"))
            .all(|(_, took)| *took < Duration::from_secs(2)),
        "{dripped:?}"
    );
    assert!(get("/two").contains("you asked for /two"));
}

#[test]
fn https_stalled_handshakes_are_cut_and_bodies_are_bounded() {
    let runtime = agw_rpc::runtime("abuse-test").unwrap();
    let (server, client) = tls_pair();
    let route: Arc<agw_rpc::Route> = Arc::new(|request: &agw_rpc::HttpRequest| {
        agw_rpc::HttpAnswer::text(
            200,
            format!("{} of {} bytes\n", request.method, request.body.len()),
        )
    });
    let limits = agw_rpc::HttpLimits {
        max_connections: 64,
        max_per_source: 8,
        request_timeout: Duration::from_millis(500),
        max_body: 1024,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint =
        Endpoint::https(runtime.handle(), listener, server, |_| None, route, limits).unwrap();
    let addr = endpoint.local_addr().unwrap();
    // One HTTPS POST of `len` bytes by a legitimate client: its answer.
    let post = move |len: usize| {
        let client = Arc::clone(&client);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap();
            let head = format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n");
            tls.write_all(head.as_bytes()).await.unwrap();
            let _ = tls.write_all(&vec![b'x'; len]).await;
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    // 8 connections from one address that never start their handshake: each cut at the
    // deadline, while a client from elsewhere is served.
    let stalled = runtime.spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            tasks.push(tokio::spawn(async move {
                let mut s = attacker("127.0.0.6", addr).await;
                let start = Instant::now();
                let mut sink = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut sink)).await;
                start.elapsed()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let answer = runtime.block_on(post(10));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("POST of 10 bytes\n"), "{answer}");
    // A body over the limit is refused, not buffered.
    let answer = runtime.block_on(post(4096));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let cut_after = runtime.block_on(stalled).unwrap();
    assert!(
        cut_after.iter().all(|t| *t < Duration::from_secs(2)),
        "{cut_after:?}"
    );
}

#[test]
fn a_port_moving_to_tls_tells_tls_from_plain_by_the_first_byte() {
    let runtime = agw_rpc::runtime("abuse-test").unwrap();
    let (server, client) = tls_pair();
    let identify: agw_rpc::Identify = |_| Some("client".to_owned());
    let query = |id| {
        frame(pb::StatusQuery {
            request_id: id,
            ..Default::default()
        })
    };
    for plain in [true, false] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint::tcp_tls_or_plain(
            runtime.handle(),
            listener,
            (server.clone(), identify),
            plain,
            handler(),
            limits(),
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap();
        // A TLS client is served either way.
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(&query(1)).unwrap();
        assert!(matches!(next(&mut tls), Some(Message::StatusReply(r)) if r.request_id == 1));
        // A client that never sends its first byte: closed at the handshake deadline, and
        // counted, whichever it would have been.
        let mut silent = TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let start = Instant::now();
        let mut sink = Vec::new();
        let _ = silent.read_to_end(&mut sink);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(sink.is_empty());
        assert_eq!(
            endpoint
                .stats()
                .timed_out
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // A plain client: served where plain is allowed, else told TLS_REQUIRED.
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock.write_all(&query(2)).unwrap();
        match next(&mut sock) {
            Some(Message::StatusReply(r)) if plain => assert_eq!(r.request_id, 2),
            Some(Message::Notification(n)) if !plain => {
                assert_eq!(n.code(), ErrorCode::TlsRequired)
            }
            other => panic!("plain {plain}: {other:?}"),
        }
    }
}
