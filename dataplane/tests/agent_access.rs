//! Agent access through real sockets: refusals with their codes, timers, revocation of a live
//! session, deregistration, reconnection, and bad bytes that close only their connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::Duration,
};

use agw_dataplane::{access::AccessConfig, routing::Route};
use agw_proto::{
    FrameDecoder, FrameEncoder, FrameLimits, Message,
    pb::{self, ErrorCode},
};
use agw_sdk::{
    agent::{AgentConnection, AgentError, Credentials, Incoming},
    certificates::AgentKey,
};
use bytes::Bytes;
use common::{authority, gateway, wait_until};

fn refusal(result: Result<AgentConnection, AgentError>) -> ErrorCode {
    match result {
        Err(AgentError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A plain socket speaking frames, for what the SDK would never send.
struct Raw {
    stream: TcpStream,
    decoder: FrameDecoder,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Raw {
            stream,
            decoder: FrameDecoder::new(FrameLimits::default()),
        }
    }

    /// The next message, or `None` at end of file.
    fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(frame) = self.decoder.decode().unwrap() {
                return Some(frame.message().unwrap());
            }
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.decoder.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Completes access as `credentials`.
    fn access(&mut self, credentials: &Credentials) {
        let Some(Message::AccessChallenge(c)) = self.next() else {
            panic!("no challenge")
        };
        let request = agw_sdk::access::access_request(
            &c,
            &credentials.agent,
            &credentials.certificate,
            &credentials.key,
        )
        .unwrap();
        self.send(&request.into(), 0);
        match self.next() {
            Some(Message::AccessReply(r)) => assert_eq!(r.error, None),
            other => panic!("{other:?}"),
        }
    }

    fn send(&mut self, message: &Message, hop_limit: u8) {
        let mut encoder = FrameEncoder::new(FrameLimits::default());
        encoder.push_message(message, hop_limit).unwrap();
        self.stream.write_all(&encoder.take()).unwrap();
    }
}

#[test]
fn bad_signature_foreign_ca_and_revoked_certificates_are_refused() {
    let gw = gateway(2, |_| {});
    let timeout = Duration::from_secs(5);

    // The certificate is alice's, the key that signs is not.
    let alice = gw.authority.certify("alice");
    let impostor = Arc::new(Credentials {
        agent: alice.agent.clone(),
        certificate: alice.certificate.clone(),
        key: AgentKey::generate().unwrap(),
    });
    let code = refusal(AgentConnection::connect_plaintext(
        gw.addr(),
        impostor,
        timeout,
    ));
    assert_eq!(code, ErrorCode::BadSignature);

    // A certificate from another authority.
    let foreign = authority("travel.example");
    let mallory = foreign.certify("mallory");
    let code = refusal(AgentConnection::connect_plaintext(
        gw.addr(),
        mallory,
        timeout,
    ));
    assert_eq!(code, ErrorCode::CertUntrusted);

    // Revoked, and the gateway has the new CRL.
    let bob = gw.authority.certify("bob");
    gw.authority
        .ca
        .revoke_by_operator(&bob.certificate.serial, 1, std::time::SystemTime::now())
        .unwrap();
    gw.dp.set_checker(gw.authority.checker(), Vec::new());
    let code = refusal(AgentConnection::connect_plaintext(gw.addr(), bob, timeout));
    assert_eq!(code, ErrorCode::CertRevoked);

    // Alice herself gets in; nobody else ever came up.
    gw.connect(&alice);
    let t = gw.dp.totals();
    assert_eq!((t.agents_accessed, t.accepted), (1, 0));
    for id in [
        "spiffe://travel.example/agent/bob",
        "spiffe://travel.example/agent/mallory",
    ] {
        assert_eq!(gw.dp.route_of(id), None);
    }
}

#[test]
fn a_live_session_is_closed_when_its_certificate_is_revoked() {
    let gw = gateway(2, |_| {});
    let carol = gw.authority.certify("carol");
    let dave = gw.authority.certify("dave");
    let mut cc = gw.connect(&carol);
    let mut cd = gw.connect(&dave);
    gw.authority
        .ca
        .revoke_by_operator(&carol.certificate.serial, 1, std::time::SystemTime::now())
        .unwrap();
    gw.dp.set_checker(
        gw.authority.checker(),
        vec![carol.certificate.serial.to_vec()],
    );
    match cc.recv(Duration::from_secs(5)) {
        Err(AgentError::Closed(Some(n))) => assert_eq!(n.code(), ErrorCode::CertRevoked),
        other => panic!("{other:?}"),
    }
    gw.wait_route(&carol.agent, |r| r == Some(Route::Offline));
    // Dave is untouched and hears that carol is offline.
    let id = cd
        .send(carol.agent.as_str(), Bytes::from_static(b"hi"))
        .unwrap();
    match cd.recv(Duration::from_secs(5)).unwrap() {
        Some(Incoming::Nack(n)) => {
            assert_eq!(
                (n.message_id, n.reason()),
                (id, ErrorCode::DestinationOffline)
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn silence_past_the_access_timeout_or_the_hold_time_ends_the_connection() {
    let gw = gateway(2, |c| {
        c.access = AccessConfig {
            access_timeout: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(50),
            hold_time: Duration::from_millis(250),
        };
    });
    // Challenged, never answers: refused with ACCESS_TIMEOUT, then closed.
    let mut raw = Raw::connect(gw.addr());
    let Some(Message::AccessChallenge(c)) = raw.next() else {
        panic!("no challenge")
    };
    assert_eq!((c.nonce.len(), c.access_timeout_ms), (32, 200));
    match raw.next() {
        Some(Message::AccessReply(r)) => {
            assert_eq!(r.error.unwrap().error_code(), ErrorCode::AccessTimeout)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(raw.next(), None);

    // One agent heartbeats (the SDK does, while it waits in recv); the other falls silent.
    let erin = gw.authority.certify("erin");
    let frank = gw.authority.certify("frank");
    let mut ce = gw.connect(&erin);
    let cf = gw.connect(&frank);
    assert_eq!(ce.terms().hold_time, Duration::from_millis(250));
    let mut acks = 0;
    let until = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < until {
        if let Some(Incoming::HeartbeatAck(_)) = ce.recv(Duration::from_millis(20)).unwrap() {
            acks += 1;
        }
    }
    assert!(acks >= 5, "{acks} heartbeat acks");
    assert!(matches!(
        gw.dp.route_of(erin.agent.as_str()),
        Some(Route::Local { .. })
    ));
    assert_eq!(gw.dp.route_of(frank.agent.as_str()), Some(Route::Offline));
    // Frank's connection was told why; reading it now sends a late heartbeat first, which
    // a closed connection may refuse: either way the notification is what arrives.
    let (_writer, mut reader) = cf.split();
    match reader.recv() {
        Err(AgentError::Closed(Some(n))) => assert_eq!(n.code(), ErrorCode::HoldTimerExpired),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deregistration_removes_the_route_and_reconnection_restores_it() {
    let gw = gateway(2, |_| {});
    let gina = gw.authority.certify("gina");
    let hank = gw.authority.certify("hank");
    let cg = gw.connect(&gina);
    let mut ch = gw.connect(&hank);
    cg.deregister("maintenance").unwrap();
    gw.wait_route(&gina.agent, |r| r.is_none());
    let id = ch
        .send(gina.agent.as_str(), Bytes::from_static(b"?"))
        .unwrap();
    match ch.recv(Duration::from_secs(5)).unwrap() {
        Some(Incoming::Nack(n)) => assert_eq!((n.message_id, n.reason()), (id, ErrorCode::NoRoute)),
        other => panic!("{other:?}"),
    }

    // Hank's connection breaks (the gateway closes it: a frame it cannot parse); he
    // reconnects with the same credentials and is reachable again.
    let before = gw.dp.route_of(hank.agent.as_str());
    let mut cg = gw.connect(&gina);
    ch.reconnect().unwrap();
    assert_ne!(gw.dp.route_of(hank.agent.as_str()), before);
    let id = cg
        .send(hank.agent.as_str(), Bytes::from_static(b"back?"))
        .unwrap();
    match ch.recv(Duration::from_secs(5)).unwrap() {
        Some(Incoming::Message(m, _)) => {
            assert_eq!((m.message_id, &m.payload[..]), (id, &b"back?"[..]))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_bytes_close_only_their_own_connection() {
    let gw = gateway(2, |_| {});
    let ivy = gw.authority.certify("ivy");
    let jack = gw.authority.certify("jack");
    let mut ci = gw.connect(&ivy);
    let mut cj = gw.connect(&jack);

    // A data frame before access: NOT_ACCESSED, closed.
    let mut early = Raw::connect(gw.addr());
    let _challenge = early.next();
    let m = pb::AgentMessage {
        destination: jack.agent.to_string(),
        source: ivy.agent.to_string(),
        message_id: 1,
        ..Default::default()
    };
    early.send(&m.into(), 8);
    match early.next() {
        Some(Message::Notification(n)) => assert_eq!(n.code(), ErrorCode::NotAccessed),
        other => panic!("{other:?}"),
    }
    assert_eq!(early.next(), None);

    // A header with an unknown version, one announcing a body over the hard maximum, and
    // before access: a kind an agent never sends (a CRL reply announcing 4 MiB) and an access
    // request announcing more than a certificate chain needs (20 KiB). Each is refused at its
    // header, at once: no body is awaited or buffered.
    let crl_reply = agw_proto::Kind::CrlReply.code();
    let access_request = agw_proto::Kind::AccessRequest.code();
    for (bytes, code) in [
        ([9u8, 1, 0, 8, 0, 0, 0, 0], ErrorCode::UnsupportedVersion),
        ([1u8, 1, 0, 8, 0xff, 0, 0, 0], ErrorCode::TooLarge),
        (
            [1u8, crl_reply, 0, 0, 0, 0x40, 0, 0],
            ErrorCode::NotAccessed,
        ),
        (
            [1u8, access_request, 0, 0, 0, 0, 0x50, 0],
            ErrorCode::TooLarge,
        ),
    ] {
        let mut raw = Raw::connect(gw.addr());
        let _challenge = raw.next();
        raw.stream.write_all(&bytes).unwrap();
        match raw.next() {
            Some(Message::Notification(n)) => assert_eq!(n.code(), code),
            other => panic!("{other:?}"),
        }
        assert_eq!(raw.next(), None);
    }

    // An accessed agent whose message body is not protobuf: NACK MALFORMED, still connected.
    let kate = gw.authority.certify("kate");
    let mut raw = Raw::connect(gw.addr());
    raw.access(&kate);
    let kind = agw_proto::Kind::AgentMessage.code();
    raw.stream
        .write_all(&[1, kind, 0, 4, 0, 0, 0, 2, 0xff, 0xff])
        .unwrap();
    match raw.next() {
        Some(Message::Nack(n)) => {
            assert_eq!(
                (n.reason(), n.destination.as_str()),
                (ErrorCode::Malformed, kate.agent.as_str())
            )
        }
        other => panic!("{other:?}"),
    }
    raw.send(&pb::Heartbeat::default().into(), 0);
    assert!(matches!(raw.next(), Some(Message::HeartbeatAck(_))));

    // Accessed, an agent still sends only its own kinds: an admin reply is refused at its
    // header.
    let lou = gw.authority.certify("lou");
    let mut odd = Raw::connect(gw.addr());
    odd.access(&lou);
    let admin_reply = agw_proto::Kind::AdminReply.code();
    odd.stream
        .write_all(&[1, admin_reply, 0, 0, 0, 0x40, 0, 0])
        .unwrap();
    loop {
        match odd.next() {
            Some(Message::Notification(n)) => {
                assert_eq!(n.code(), ErrorCode::UnexpectedMessage);
                break;
            }
            Some(_) => {}
            None => panic!("closed without a notification"),
        }
    }
    assert_eq!(odd.next(), None);

    // The others never noticed.
    let id = ci
        .send(jack.agent.as_str(), Bytes::from_static(b"still here"))
        .unwrap();
    match cj.recv(Duration::from_secs(5)).unwrap() {
        Some(Incoming::Message(m, _)) => assert_eq!(m.message_id, id),
        other => panic!("{other:?}"),
    }
    gw.settled_totals();
    // The refused connections are counted closed once their cleanup ran, which may follow
    // the client's end of file by a moment: ci, cj and kate's stay.
    wait_until(
        || gw.dp.totals().connections_open == 3,
        "three connections open",
    );
}

#[test]
fn over_tls_an_agent_signs_access_only_for_the_gateway_the_handshake_authenticated() {
    use agw_sdk::agent::AgentError;
    // A relay whose TLS certificate is edge-1's, the one its challenges name: access works.
    let gw = common::gateway_of(1, |c, authority| {
        c.agent_tls = Some(authority.gateway_tls("spiffe://travel.example/agw/edge-1"));
    });
    let alice = gw.authority.certify("alice");
    let mut conn =
        AgentConnection::connect(gw.addr(), alice.clone(), Duration::from_secs(5)).unwrap();
    conn.heartbeat(pb::Status::Running).unwrap();
    // One presenting another gateway's certificate (edge-2) while its challenges name edge-1:
    // the agent refuses to sign.
    let odd = common::gateway_of(1, |c, authority| {
        c.agent_tls = Some(authority.gateway_tls("spiffe://travel.example/agw/edge-2"));
    });
    let bob = odd.authority.certify("bob");
    match AgentConnection::connect(odd.addr(), bob, Duration::from_secs(5)) {
        Err(AgentError::Unexpected(why)) => assert!(why.contains("another gateway"), "{why}"),
        other => panic!("{other:?}"),
    }
}
