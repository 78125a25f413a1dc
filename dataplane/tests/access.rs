//! Agent access on simulated time, with certificates from a real authority and requests signed
//! by the SDK: every refusal has its code, heartbeats keep an agent up, silence takes it down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, policy::AllowListPolicy, tls::CertificateChecker,
};
use agw_dataplane::access::{AccessConfig, AccessSession, Action, DownReason};
use agw_proto::{
    Message,
    identity::{AgentId, Domain, GatewayId},
    pb::{self, ErrorCode},
};
use agw_sdk::{
    access::access_request,
    certificates::{AgentKey, CertificateRequests, HeldCertificate},
};

const GATEWAY: &str = "spiffe://travel.example/agw/edge-1";

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

struct World {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let config = AuthorityConfig::new(
        Domain::new("travel.example").unwrap(),
        dir.path(),
        "http://127.0.0.1:1/crl",
    );
    let ca = CertificateAuthority::bootstrap(
        config,
        Box::new(AllowListPolicy::default().allow("Acme", ["bookings"])),
        t0(),
    )
    .unwrap();
    World { _dir: dir, ca }
}

fn certify(ca: &CertificateAuthority, name: &str) -> (AgentId, AgentKey, HeldCertificate) {
    let id = AgentId::parse(&format!("spiffe://travel.example/agent/{name}")).unwrap();
    let key = AgentKey::generate().unwrap();
    let materials = pb::IdentityMaterials {
        organization: "Acme".into(),
        permission_scope: vec!["bookings".into()],
        ..Default::default()
    };
    let app = CertificateRequests::default()
        .application(&key, &id, materials)
        .unwrap();
    let issued = ca
        .apply(&app.csr, app.materials.as_ref().unwrap(), t0())
        .unwrap();
    let reply = pb::CertificateReply {
        certificate_chain: issued.chain.into_iter().map(Into::into).collect(),
        serial: issued.serial.into(),
        ..Default::default()
    };
    (id, key, HeldCertificate::from_reply(reply).unwrap())
}

fn checker(ca: &CertificateAuthority) -> Arc<CertificateChecker> {
    Arc::new(CertificateChecker::new(ca.trust_anchor(), &[ca.crl(t0()).unwrap().der]).unwrap())
}

fn actions(s: &mut AccessSession) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// A session and the challenge it sent.
fn session(checker: Arc<CertificateChecker>, now: Instant) -> (AccessSession, pb::AccessChallenge) {
    let mut s = AccessSession::new(
        GatewayId::parse(GATEWAY).unwrap(),
        [7; 32],
        checker,
        AccessConfig::default(),
        now,
    );
    let a = actions(&mut s);
    let [Action::Send(Message::AccessChallenge(c))] = a.as_slice() else {
        panic!("{a:?}")
    };
    let c = c.clone();
    assert_eq!(
        (c.gateway.as_str(), c.nonce.len(), c.access_timeout_ms),
        (GATEWAY, 32, 10_000)
    );
    (s, c)
}

fn refused(s: &mut AccessSession) -> ErrorCode {
    let a = actions(s);
    let [
        Action::Send(Message::AccessReply(reply)),
        Action::Close(Some(code)),
    ] = a.as_slice()
    else {
        panic!("{a:?}")
    };
    assert_eq!(reply.error.as_ref().unwrap().error_code(), *code);
    assert!(s.agent().is_none() && s.next_timeout().is_none());
    *code
}

#[test]
fn an_agent_accesses_heartbeats_and_goes_offline_when_silent() {
    let w = world();
    let (id, key, held) = certify(&w.ca, "alice");
    let start = Instant::now();
    let wall = t0() + Duration::from_secs(3600);
    let (mut s, challenge) = session(checker(&w.ca), start);

    let req = access_request(&challenge, &id, &held, &key).unwrap();
    s.handle_message(&req.into(), start + Duration::from_secs(1), wall);
    let a = actions(&mut s);
    let [
        Action::AgentUp {
            agent,
            serial,
            scopes,
            languages,
            originals: false,
        },
        Action::Send(Message::AccessReply(reply)),
    ] = a.as_slice()
    else {
        panic!("{a:?}")
    };
    assert_eq!(reply.error, None);
    assert_eq!(
        (reply.heartbeat_interval_ms, reply.hold_time_ms),
        (30_000, 90_000)
    );
    assert_eq!((agent, serial.as_slice()), (&id, held.serial.as_ref()));
    // The scopes come from the certificate presented, where the authority wrote them.
    assert_eq!(scopes, &["bookings".to_string()]);
    assert!(languages.is_empty());
    assert_eq!(s.next_timeout(), Some(start + Duration::from_secs(91)));

    // A heartbeat 60 s later acknowledges and pushes the hold time.
    let t = start + Duration::from_secs(61);
    s.handle_message(
        &pb::Heartbeat {
            status: pb::Status::Running as i32,
            sequence: 4,
        }
        .into(),
        t,
        wall,
    );
    assert_eq!(
        actions(&mut s),
        [Action::Send(pb::HeartbeatAck { sequence: 4 }.into())]
    );
    s.handle_timeout(start + Duration::from_secs(91));
    assert!(
        actions(&mut s).is_empty(),
        "the heartbeat moved the hold time"
    );

    // A status change is reported.
    s.handle_message(
        &pb::Heartbeat {
            status: pb::Status::TemporarilyOffline as i32,
            sequence: 5,
        }
        .into(),
        t,
        wall,
    );
    let a = actions(&mut s);
    assert_eq!(
        a[0],
        Action::AgentStatus {
            agent: id.clone(),
            status: pb::Status::TemporarilyOffline
        }
    );

    // Then silence past the hold time.
    s.handle_timeout(t + Duration::from_secs(90));
    assert_eq!(
        actions(&mut s),
        [
            Action::Send(
                pb::Notification {
                    code: ErrorCode::HoldTimerExpired as i32,
                    subcode: 0,
                    text: "no heartbeat within the hold time".into(),
                }
                .into()
            ),
            Action::AgentDown {
                agent: id,
                reason: DownReason::HoldTimeExpired
            },
            Action::Close(Some(ErrorCode::HoldTimerExpired)),
        ]
    );
}

#[test]
fn deregistration_ends_the_session_cleanly() {
    let w = world();
    let (id, key, held) = certify(&w.ca, "alice");
    let now = Instant::now();
    let (mut s, challenge) = session(checker(&w.ca), now);
    s.handle_message(
        &access_request(&challenge, &id, &held, &key).unwrap().into(),
        now,
        t0(),
    );
    actions(&mut s);
    s.handle_message(
        &pb::Deregister {
            reason: "done".into(),
        }
        .into(),
        now,
        t0(),
    );
    assert_eq!(
        actions(&mut s),
        [
            Action::Send(pb::DeregisterReply { error: None }.into()),
            Action::AgentDown {
                agent: id,
                reason: DownReason::Deregistered
            },
            Action::Close(None),
        ]
    );
    // Nothing more happens on a closed session.
    s.handle_message(&pb::Heartbeat::default().into(), now, t0());
    s.handle_timeout(now + Duration::from_secs(1000));
    assert!(actions(&mut s).is_empty());
}

#[test]
fn access_is_refused_with_the_reason() {
    let w = world();
    let (alice, alice_key, alice_cert) = certify(&w.ca, "alice");
    let (_, _, bob_cert) = certify(&w.ca, "bob");
    let now = Instant::now();

    // Signed with another key.
    let (mut s, challenge) = session(checker(&w.ca), now);
    let other = AgentKey::generate().unwrap();
    s.handle_message(
        &access_request(&challenge, &alice, &alice_cert, &other)
            .unwrap()
            .into(),
        now,
        t0(),
    );
    assert_eq!(refused(&mut s), ErrorCode::BadSignature);

    // Signed over another connection's nonce (a replay).
    let (mut s, mut challenge) = session(checker(&w.ca), now);
    challenge.nonce = vec![8; 32].into();
    s.handle_message(
        &access_request(&challenge, &alice, &alice_cert, &alice_key)
            .unwrap()
            .into(),
        now,
        t0(),
    );
    assert_eq!(refused(&mut s), ErrorCode::BadSignature);

    // Claiming another agent's identity with one's own certificate.
    let (mut s, challenge) = session(checker(&w.ca), now);
    let mut req = access_request(&challenge, &alice, &bob_cert, &alice_key).unwrap();
    req.agent = alice.to_string();
    s.handle_message(&req.into(), now, t0());
    assert_eq!(refused(&mut s), ErrorCode::IdentityMismatch);

    // Over TLS as bob (his client certificate), a valid access request as alice: the
    // connection is bob's, so it is refused.
    let (mut s, challenge) = session(checker(&w.ca), now);
    s.bind_tls_identity(
        alice.as_str().replace("/alice", "/bob"),
        bob_cert.chain.clone(),
    );
    s.handle_message(
        &access_request(&challenge, &alice, &alice_cert, &alice_key)
            .unwrap()
            .into(),
        now,
        t0(),
    );
    assert_eq!(refused(&mut s), ErrorCode::IdentityMismatch);
    // And over TLS as alice, the same request passes.
    let (mut s, challenge) = session(checker(&w.ca), now);
    s.bind_tls_identity(alice.to_string(), alice_cert.chain.clone());
    s.handle_message(
        &access_request(&challenge, &alice, &alice_cert, &alice_key)
            .unwrap()
            .into(),
        now,
        t0(),
    );
    assert_eq!(s.agent(), Some(&alice));

    // Over TLS as alice, her very certificate needs no signature (the handshake proved the
    // key: a protocol adapter's request)...
    let unsigned = |held: &agw_sdk::certificates::HeldCertificate| pb::AccessRequest {
        agent: alice.to_string(),
        certificate_chain: held.chain.clone(),
        ..Default::default()
    };
    let (mut s, _) = session(checker(&w.ca), now);
    s.bind_tls_identity(alice.to_string(), alice_cert.chain.clone());
    s.handle_message(&unsigned(&alice_cert).into(), now, t0());
    assert_eq!(s.agent(), Some(&alice));
    // ...but a certificate other than the handshake's does.
    let (_, _, bob_cert) = certify(&w.ca, "bob-2");
    let (mut s, _) = session(checker(&w.ca), now);
    s.bind_tls_identity(alice.to_string(), bob_cert.chain.clone());
    s.handle_message(&unsigned(&alice_cert).into(), now, t0());
    assert_eq!(refused(&mut s), ErrorCode::BadSignature);
    // And without TLS, an unsigned request is refused.
    let (mut s, _) = session(checker(&w.ca), now);
    s.handle_message(&unsigned(&alice_cert).into(), now, t0());
    assert_eq!(refused(&mut s), ErrorCode::BadSignature);

    // A certificate from a foreign authority.
    let foreign = world();
    let (_, fkey, fcert) = certify(&foreign.ca, "alice");
    let (mut s, challenge) = session(checker(&w.ca), now);
    s.handle_message(
        &access_request(&challenge, &alice, &fcert, &fkey)
            .unwrap()
            .into(),
        now,
        t0(),
    );
    assert_eq!(refused(&mut s), ErrorCode::CertUntrusted);

    // An expired certificate.
    let (mut s, challenge) = session(checker(&w.ca), now);
    let req = access_request(&challenge, &alice, &alice_cert, &alice_key).unwrap();
    s.handle_message(&req.into(), now, t0() + Duration::from_secs(31 * 86_400));
    assert_eq!(refused(&mut s), ErrorCode::CertExpired);

    // A revoked certificate, once the gateway has the new CRL.
    w.ca.revoke_by_operator(&alice_cert.serial, 1, t0())
        .unwrap();
    let (mut s, challenge) = session(checker(&w.ca), now);
    s.handle_message(
        &access_request(&challenge, &alice, &alice_cert, &alice_key)
            .unwrap()
            .into(),
        now,
        t0(),
    );
    assert_eq!(refused(&mut s), ErrorCode::CertRevoked);

    // Anything but an access request first.
    let (mut s, _) = session(checker(&w.ca), now);
    s.handle_message(&pb::Heartbeat::default().into(), now, t0());
    assert_eq!(refused(&mut s), ErrorCode::NotAccessed);

    // No request before the deadline.
    let (mut s, _) = session(checker(&w.ca), now);
    s.handle_timeout(now + Duration::from_secs(9));
    assert!(actions(&mut s).is_empty());
    s.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(refused(&mut s), ErrorCode::AccessTimeout);
}

#[test]
fn a_second_access_request_is_a_protocol_error() {
    let w = world();
    let (id, key, held) = certify(&w.ca, "alice");
    let now = Instant::now();
    let (mut s, challenge) = session(checker(&w.ca), now);
    let req = access_request(&challenge, &id, &held, &key).unwrap();
    s.handle_message(&req.clone().into(), now, t0());
    actions(&mut s);
    s.handle_message(&req.into(), now, t0());
    let a = actions(&mut s);
    assert!(
        matches!(&a[0], Action::Send(Message::Notification(n)) if n.code == ErrorCode::UnexpectedMessage as i32)
    );
    assert_eq!(
        a[1],
        Action::AgentDown {
            agent: id,
            reason: DownReason::ProtocolError
        }
    );
    assert_eq!(a[2], Action::Close(Some(ErrorCode::UnexpectedMessage)));
}
