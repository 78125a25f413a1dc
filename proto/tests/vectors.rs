//! Byte vectors: for every message kind, a frame written out by hand from the protobuf encoding
//! rules, the message it must decode to, and the same bytes back when that message is encoded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agw_proto::{FrameDecoder, FrameEncoder, FrameLimits, Kind, Message, pb};
use bytes::Bytes;
use common::bytes;
use pb::admin_reply::Result as AdminResult;
use pb::admin_request::Command;

const A: &str = "spiffe://a/agent/x";
const B: &str = "spiffe://b/agent/y";
const GW1: &str = "spiffe://a/agw/gw1";
const GW2: &str = "spiffe://b/agw/gw2";
const RID: &str = "ars:a:00000000000000000000000000000001";

fn b(v: &[u8]) -> Bytes {
    Bytes::copy_from_slice(v)
}

fn err(code: pb::ErrorCode, detail: &str) -> Option<pb::Error> {
    Some(pb::Error::new(code, detail))
}

struct Vector {
    hop_limit: u8,
    frame: &'static str,
    message: Message,
}

fn vectors() -> Vec<Vector> {
    use pb::{ErrorCode as E, Protocol as P, Status as S};
    let v = |hop_limit, frame, message: Message| Vector {
        hop_limit,
        frame,
        message,
    };
    vec![
        v(
            16,
            "01 01 00 10 00000034
               0a 12 'spiffe://b/agent/y'   # destination
               12 12 'spiffe://a/agent/x'   # source
               18 07                        # message_id 7
               32 02 'en'                   # language
               38 01                        # source_protocol NATIVE
               7a 02 'hi'                   # payload",
            pb::AgentMessage {
                destination: B.into(),
                source: A.into(),
                message_id: 7,
                language: "en".into(),
                source_protocol: P::Native as i32,
                payload: b(b"hi"),
                ..Default::default()
            }
            .into(),
        ),
        v(
            16,
            "01 02 00 10 0000002a  0a 12 'spiffe://a/agent/x' 12 12 'spiffe://b/agent/y' 18 07",
            pb::Ack {
                destination: A.into(),
                source: B.into(),
                message_id: 7,
            }
            .into(),
        ),
        v(
            3,
            "01 03 00 03 00000041
              0a 12 'spiffe://a/agent/x' 12 12 'spiffe://b/agent/y' 18 07
              20 c8 01                      # reason NO_ROUTE (200)
              2a 12 'spiffe://a/agw/gw1'    # reporter",
            pb::Nack {
                destination: A.into(),
                original_destination: B.into(),
                message_id: 7,
                reason: E::NoRoute as i32,
                reporter: GW1.into(),
                ..Default::default()
            }
            .into(),
        ),
        v(
            0,
            "01 10 00 00 0000001d  0a 12 'spiffe://a/agw/gw1' 12 04 01 02 03 04 18 88 27",
            pb::AccessChallenge {
                gateway: GW1.into(),
                nonce: b(&[1, 2, 3, 4]),
                access_timeout_ms: 5000,
            }
            .into(),
        ),
        v(
            0,
            "01 11 00 00 00000023
              0a 12 'spiffe://a/agent/x'
              12 02 30 00                   # certificate_chain[0]
              1a 01 aa                      # signature
              22 02 01 03                   # protocols, packed: NATIVE, MQTT
              2a 02 'en'                    # languages[0]",
            pb::AccessRequest {
                agent: A.into(),
                certificate_chain: vec![b(&[0x30, 0])],
                signature: b(&[0xaa]),
                protocols: vec![P::Native as i32, P::Mqtt as i32],
                languages: vec!["en".into()],
                heartbeat_interval_ms: 0,
                translation_originals: false,
            }
            .into(),
        ),
        v(
            0,
            "01 12 00 00 0000000a  0a 08 08 ad 02 12 03 'sig'",
            pb::AccessReply {
                error: err(E::BadSignature, "sig"),
                ..Default::default()
            }
            .into(),
        ),
        v(
            0,
            "01 13 00 00 00000004  08 01 10 03",
            pb::Heartbeat {
                status: S::Running as i32,
                sequence: 3,
            }
            .into(),
        ),
        v(
            0,
            "01 14 00 00 00000002  08 03",
            pb::HeartbeatAck { sequence: 3 }.into(),
        ),
        v(
            0,
            "01 15 00 00 00000005  0a 03 'bye'",
            pb::Deregister {
                reason: "bye".into(),
            }
            .into(),
        ),
        v(
            0,
            "01 16 00 00 00000000",
            pb::DeregisterReply::default().into(),
        ),
        v(
            0,
            "01 20 00 00 0000001e
              0a 12 'spiffe://a/agw/gw1' 12 01 'a' 1a 01 01 28 01
              30 5a                         # hold_time_s 90",
            pb::Open {
                gateway: GW1.into(),
                domain: "a".into(),
                protocols: vec![P::Native as i32],
                status: S::Running as i32,
                hold_time_s: 90,
                ..Default::default()
            }
            .into(),
        ),
        v(
            0,
            "01 21 00 00 00000019  0a 12 'spiffe://b/agw/gw2' 12 01 'b' 30 1e",
            pb::OpenReply {
                gateway: GW2.into(),
                domain: "b".into(),
                hold_time_s: 30,
                ..Default::default()
            }
            .into(),
        ),
        v(
            0,
            "01 22 00 00 00000002  08 01",
            pb::Keepalive {
                status: S::Running as i32,
            }
            .into(),
        ),
        v(
            0,
            "01 23 00 00 00000065
              0a 4f                         # advertise[0], 79 bytes
                 0a 12 'spiffe://a/agent/x' 12 0d 'hotel booking' 28 01
                 32 12 'spiffe://a/agw/gw1' # origin
                 3a 12 'spiffe://a/agw/gw1' # path[0]
                 40 01                      # version 1
              12 12 'spiffe://a/agent/z'    # withdraw[0]",
            pb::ResourceUpdate {
                advertise: vec![pb::AgentSummary {
                    agent: A.into(),
                    capabilities: vec!["hotel booking".into()],
                    status: S::Running as i32,
                    origin: GW1.into(),
                    path: vec![GW1.into()],
                    version: 1,
                    ..Default::default()
                }],
                withdraw: vec!["spiffe://a/agent/z".into()],
            }
            .into(),
        ),
        v(
            0,
            "01 24 00 00 00000002  08 01",
            pb::EndOfSync { summaries: 1 }.into(),
        ),
        v(
            0,
            "01 25 00 00 00000009  08 94 03 1a 04 'hold'",
            pb::Notification {
                code: E::HoldTimerExpired as i32,
                subcode: 0,
                text: "hold".into(),
            }
            .into(),
        ),
        v(
            0,
            "01 26 00 00 0000000d  0a 0b 'maintenance'",
            pb::Disconnect {
                reason: "maintenance".into(),
            }
            .into(),
        ),
        v(
            0,
            "01 30 00 00 00000032
              08 01                         # request_id
              12 2a                         # profile, 42 bytes
                 12 12 'spiffe://a/agent/x' 22 0d 'hotel booking' 2a 01 01 32 02 'en'
              1a 02 30 00                   # certificate_chain[0]",
            pb::RegisterRequest {
                request_id: 1,
                profile: Some(pb::AgentProfile {
                    agent: A.into(),
                    capabilities: vec!["hotel booking".into()],
                    protocols: vec![P::Native as i32],
                    languages: vec!["en".into()],
                    ..Default::default()
                }),
                certificate_chain: vec![b(&[0x30, 0])],
            }
            .into(),
        ),
        v(
            0,
            "01 31 00 00 00000007  08 01 12 03 08 f5 03",
            pb::RegisterReply {
                request_id: 1,
                error: err(E::DuplicateName, ""),
                profile: None,
            }
            .into(),
        ),
        v(
            0,
            "01 32 00 00 0000003c
              08 02 12 38
                 0a 26 'ars:a:00000000000000000000000000000001'
                 3a 0e '127.0.0.1:7000'     # address",
            pb::UpdateRequest {
                request_id: 2,
                profile: Some(pb::AgentProfile {
                    resource_id: RID.into(),
                    address: "127.0.0.1:7000".into(),
                    ..Default::default()
                }),
            }
            .into(),
        ),
        v(
            0,
            "01 33 00 00 00000006  08 02 1a 02 50 02",
            pb::UpdateReply {
                request_id: 2,
                error: None,
                profile: Some(pb::AgentProfile {
                    version: 2,
                    ..Default::default()
                }),
            }
            .into(),
        ),
        v(
            0,
            "01 34 00 00 0000002a  08 03 12 26 'ars:a:00000000000000000000000000000001'",
            pb::DeregisterAgentRequest {
                request_id: 3,
                resource_id: RID.into(),
            }
            .into(),
        ),
        v(
            0,
            "01 35 00 00 00000007  08 03 12 03 08 f7 03",
            pb::DeregisterAgentReply {
                request_id: 3,
                error: err(E::UnknownResource, ""),
            }
            .into(),
        ),
        v(
            0,
            "01 36 00 00 00000012  08 04 12 06 'hotel*' 22 02 'zh' 30 01 38 0a",
            pb::DiscoverRequest {
                request_id: 4,
                capabilities: vec!["hotel*".into()],
                languages: vec!["zh".into()],
                online_only: true,
                limit: 10,
                ..Default::default()
            }
            .into(),
        ),
        v(
            0,
            "01 37 00 00 00000024  08 04 1a 20 12 12 'spiffe://b/agent/y' 3a 0a 'agw.b:7000'",
            pb::DiscoverReply {
                request_id: 4,
                error: None,
                agents: vec![pb::AgentProfile {
                    agent: B.into(),
                    address: "agw.b:7000".into(),
                    ..Default::default()
                }],
            }
            .into(),
        ),
        v(
            0,
            "01 40 00 00 0000001d  08 05 12 02 30 00 1a 0f 0a 04 'acme' 32 07 'booking' 22 04 'tok1'",
            pb::CertificateApplication {
                request_id: 5,
                csr: b(&[0x30, 0]),
                materials: Some(pb::IdentityMaterials {
                    organization: "acme".into(),
                    skills: vec!["booking".into()],
                    ..Default::default()
                }),
                enrollment_token: "tok1".into(),
            }
            .into(),
        ),
        v(
            0,
            "01 41 00 00 0000000a  08 05 1a 02 30 00 22 02 01 02",
            pb::CertificateReply {
                request_id: 5,
                error: None,
                certificate_chain: vec![b(&[0x30, 0])],
                serial: b(&[1, 2]),
            }
            .into(),
        ),
        v(
            0,
            "01 42 00 00 0000000d  08 06 12 02 30 00 1a 02 30 00 22 01 aa",
            pb::RenewalRequest {
                request_id: 6,
                certificate: b(&[0x30, 0]),
                csr: b(&[0x30, 0]),
                proof: b(&[0xaa]),
                materials: None,
            }
            .into(),
        ),
        v(
            0,
            "01 43 00 00 0000000a  08 07 12 02 01 02 18 01 28 01",
            pb::RevocationRequest {
                request_id: 7,
                serial: b(&[1, 2]),
                reason: pb::RevocationReason::KeyCompromise as i32,
                proof: Bytes::new(),
                signed_at_unix_s: 1,
            }
            .into(),
        ),
        v(
            0,
            "01 44 00 00 00000002  08 07",
            pb::RevocationReply {
                request_id: 7,
                error: None,
                also_revoked: Vec::new(),
            }
            .into(),
        ),
        v(
            0,
            "01 44 00 00 00000006  08 07 1a 02 01 02",
            pb::RevocationReply {
                request_id: 7,
                error: None,
                also_revoked: vec![b(&[1, 2])],
            }
            .into(),
        ),
        v(
            0,
            "01 45 00 00 00000006  08 08 12 02 01 02",
            pb::StatusQuery {
                request_id: 8,
                serial: b(&[1, 2]),
            }
            .into(),
        ),
        v(
            0,
            "01 46 00 00 00000008  08 08 18 03 20 01 28 64",
            pb::StatusReply {
                request_id: 8,
                state: pb::CertificateState::Revoked as i32,
                revocation_reason: pb::RevocationReason::KeyCompromise as i32,
                revoked_at_unix_s: 100,
                ..Default::default()
            }
            .into(),
        ),
        v(
            0,
            "01 47 00 00 00000002  08 09",
            pb::CrlRequest { request_id: 9 }.into(),
        ),
        v(
            0,
            "01 48 00 00 00000008  08 09 1a 02 30 00 20 02",
            pb::CrlReply {
                request_id: 9,
                error: None,
                crl: b(&[0x30, 0]),
                crl_number: 2,
            }
            .into(),
        ),
        v(
            0,
            "01 50 00 00 0000000a  08 0a 12 01 't' 72 03 08 e8 07   # drain, deadline 1000 ms",
            pb::AdminRequest {
                request_id: 10,
                token: "t".into(),
                command: Some(Command::Drain(pb::Drain { deadline_ms: 1000 })),
            }
            .into(),
        ),
        v(
            0,
            "01 51 00 00 0000001c
              08 0a 52 18                   # result: peers, 24 bytes
                 0a 16 0a 12 'spiffe://b/agw/gw2' 40 05   # session: ESTABLISHED",
            pb::AdminReply {
                request_id: 10,
                error: None,
                result: Some(AdminResult::Peers(pb::PeerList {
                    peers: vec![pb::PeerInfo {
                        gateway: GW2.into(),
                        session: pb::SessionState::SessionEstablished as i32,
                        ..Default::default()
                    }],
                })),
            }
            .into(),
        ),
    ]
}

#[test]
fn every_kind_has_a_vector() {
    let covered: Vec<Kind> = vectors().iter().map(|v| v.message.kind()).collect();
    for kind in Kind::ALL {
        assert!(covered.contains(kind), "no byte vector for {kind}");
    }
}

#[test]
fn vectors_decode_to_their_message() {
    for v in vectors() {
        let wire = bytes(v.frame);
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.extend_from_slice(&wire);
        let frame = decoder
            .decode()
            .expect("valid frame")
            .expect("complete frame");
        assert_eq!(frame.header.kind, v.message.kind());
        assert_eq!(frame.header.hop_limit, v.hop_limit, "{}", v.message.kind());
        assert_eq!(frame.message().expect("valid body"), v.message);
        assert_eq!(
            decoder.decode(),
            Ok(None),
            "{}: bytes left over",
            v.message.kind()
        );
    }
}

#[test]
fn messages_encode_to_their_vector() {
    for v in vectors() {
        let mut encoder = FrameEncoder::new(FrameLimits::default());
        encoder
            .push_message(&v.message, v.hop_limit)
            .expect("encodes");
        assert_eq!(
            encoder.take().as_ref(),
            bytes(v.frame),
            "{}",
            v.message.kind()
        );
    }
}

#[test]
fn all_vectors_in_one_write_decode_in_order() {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    let all = vectors();
    for v in &all {
        encoder
            .push_message(&v.message, v.hop_limit)
            .expect("encodes");
    }
    let wire = encoder.take();
    assert_eq!(
        wire.as_ref(),
        all.iter().flat_map(|v| bytes(v.frame)).collect::<Vec<_>>()
    );

    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(&wire);
    for v in &all {
        let frame = decoder.decode().expect("valid").expect("complete");
        assert_eq!(frame.message().expect("valid body"), v.message);
    }
    assert_eq!(decoder.decode(), Ok(None));
}

#[test]
fn data_view_reads_routing_fields_in_place() {
    for v in vectors().into_iter().filter(|v| v.message.kind().is_data()) {
        let wire = bytes(v.frame);
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.extend_from_slice(&wire);
        let frame = decoder.decode().expect("valid").expect("complete");
        let view = frame.data_view().expect("routing fields");
        let (destination, source, id) = match &v.message {
            Message::AgentMessage(m) => (&m.destination, Some(m.source.as_str()), m.message_id),
            Message::Ack(m) => (&m.destination, Some(m.source.as_str()), m.message_id),
            Message::Nack(m) => (&m.destination, None, m.message_id),
            other => panic!("not a data kind: {other:?}"),
        };
        assert_eq!(view.destination, destination);
        assert_eq!(view.source(), source);
        assert_eq!(view.message_id, id);
        // The view borrows from the frame body: no copy of the destination was made.
        let body = frame.body.as_ptr_range();
        assert!(body.contains(&view.destination.as_ptr()));
    }
}

#[test]
fn payload_is_a_slice_of_the_read_buffer() {
    let wire = bytes(vectors()[0].frame);
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(&wire);
    let frame = decoder.decode().expect("valid").expect("complete");
    let Ok(Message::AgentMessage(m)) = frame.message() else {
        panic!("vector 0 is an agent message");
    };
    assert_eq!(m.payload.as_ref(), b"hi");
    assert!(frame.body.as_ptr_range().contains(&m.payload.as_ptr()));
}

/// The fuzz target's seed corpus (`fuzz/seeds/frame_decoder/`) holds every vector, behind a
/// selector byte that varies the read size, plus the whole stream and a few broken headers.
/// `AGW_WRITE_SEEDS=1 cargo test -p agw-proto --test vectors` rewrites them.
#[test]
fn fuzz_seed_corpus_holds_every_vector() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame_decoder");
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut stream = vec![0x3f];
    for (i, v) in vectors().iter().enumerate() {
        let frame = bytes(v.frame);
        let selector = (i % 64) as u8;
        let mut name = format!("kind-{}", v.message.kind());
        if seeds.iter().any(|(n, _)| *n == name) {
            name = format!("{name}-{i}");
        }
        seeds.push((name, [&[selector][..], &frame].concat()));
        stream.extend_from_slice(&frame);
    }
    seeds.push(("stream-all-kinds".into(), stream));
    for (name, spec) in [
        ("bad-version", "05  02 01 00 10 00000000"),
        ("unknown-kind", "05  01 ee 00 00 00000000"),
        ("reserved-flags", "05  01 22 01 00 00000000"),
        ("too-large-small-limit", "80  01 01 00 10 00000041"),
        ("truncated-body", "02  01 13 00 00 00000010 08 01"),
        // Selector 0x40: an accessed agent's admission; a CRL reply is refused.
        ("narrow-admission-crl-reply", "45  01 48 00 00 00400000"),
        (
            "narrow-admission-heartbeat",
            "45  01 13 00 00 00000002 08 01",
        ),
    ] {
        seeds.push((name.into(), bytes(spec)));
    }

    let write = std::env::var_os("AGW_WRITE_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).expect("create seed dir");
    }
    for (name, content) in seeds {
        let path = dir.join(&name);
        if write {
            std::fs::write(&path, &content).expect("write seed");
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            stored, content,
            "seed {name} is stale: rerun with AGW_WRITE_SEEDS=1"
        );
    }
}
