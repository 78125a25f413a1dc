//! The frame decoder and encoder at their edges: reads split anywhere, size limits checked
//! before allocation, hostile headers and bodies, and zero-copy forwarding.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agw_proto::{
    Admission, DataView, FrameDecoder, FrameEncoder, FrameError, FrameHeader, FrameLimits,
    HARD_MAX_BODY, HEADER_LEN, Kind, LanguageView, Message, ViewError, WriteBatch, pb,
    pb::ErrorCode,
};
use bytes::Bytes;
use common::bytes;

fn agent_message(payload_len: usize) -> pb::AgentMessage {
    pb::AgentMessage {
        destination: "spiffe://b.example/agent/y".into(),
        source: "spiffe://a.example/agent/x".into(),
        message_id: 99,
        payload: Bytes::from(vec![0x5a; payload_len]),
        ..Default::default()
    }
}

/// A stream of frames of several kinds and sizes: empty, small, one large.
fn sample_stream() -> (Bytes, Vec<Message>) {
    let messages: Vec<Message> = vec![
        pb::DeregisterReply::default().into(),
        agent_message(0).into(),
        pb::Heartbeat {
            status: 1,
            sequence: 7,
        }
        .into(),
        agent_message(70_000).into(),
        pb::Notification {
            code: ErrorCode::Cease as i32,
            subcode: 2,
            text: "bye".into(),
        }
        .into(),
    ];
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    for m in &messages {
        let hop = if m.kind().is_data() { 9 } else { 0 };
        encoder.push_message(m, hop).expect("encodes");
    }
    (encoder.take(), messages)
}

fn decode_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Message> {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut out = Vec::new();
    for piece in pieces {
        decoder.read_buf(piece.len()).extend_from_slice(piece);
        while let Some(frame) = decoder.decode().expect("valid stream") {
            out.push(frame.message().expect("valid body"));
        }
    }
    assert_eq!(decoder.buffered(), 0);
    out
}

#[test]
fn a_read_split_at_every_offset_yields_the_same_frames() {
    let (wire, messages) = sample_stream();
    for split in 0..=wire.len() {
        let (a, b) = wire.split_at(split);
        assert_eq!(decode_pieces([a, b]), messages, "split at {split}");
    }
}

#[test]
fn byte_at_a_time_yields_the_same_frames() {
    let (wire, messages) = sample_stream();
    assert_eq!(decode_pieces(wire.chunks(1)), messages);
}

#[test]
fn three_way_splits_around_headers_yield_the_same_frames() {
    let (wire, messages) = sample_stream();
    // Every pair of cut points within the first 120 bytes, where the small frames' headers lie.
    for i in 0..120 {
        for j in i..120 {
            let pieces = [&wire[..i], &wire[i..j], &wire[j..]];
            assert_eq!(decode_pieces(pieces), messages, "cuts at {i} and {j}");
        }
    }
}

#[test]
fn an_oversized_data_frame_is_refused_from_its_header_alone() {
    let limits = FrameLimits { max_data_body: 64 };
    let mut decoder = FrameDecoder::new(limits);
    decoder.extend_from_slice(&bytes("01 01 00 10 00000041")); // 65 bytes announced
    let err = decoder.decode().expect_err("too large");
    assert_eq!(
        err,
        FrameError::TooLarge {
            kind: Kind::AgentMessage,
            len: 65,
            max: 64
        }
    );
    assert_eq!(err.code(), ErrorCode::TooLarge);
    // Nothing was allocated for the announced body.
    assert!(decoder.read_buf(1).capacity() < 1024);

    let mut decoder = FrameDecoder::new(limits);
    decoder.extend_from_slice(&bytes("01 01 00 10 00000040"));
    assert_eq!(decoder.decode(), Ok(None), "64 bytes is within the limit");
}

#[test]
fn an_admission_refuses_other_kinds_and_larger_control_bodies_at_the_header() {
    let access_only = Admission::only(&[Kind::AccessRequest, Kind::AgentMessage], 100);
    let refused = |hex: &str| {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.set_admission(access_only);
        decoder.extend_from_slice(&bytes(hex));
        decoder.decode()
    };
    // A CRL reply (0x48) announcing 4 MiB: not admitted, nothing buffered.
    let err = refused("01 48 00 00 00400000").expect_err("not admitted");
    assert_eq!(err, FrameError::NotAdmitted(Kind::CrlReply));
    assert_eq!(err.code(), ErrorCode::UnexpectedMessage);
    // An access request (0x11) over the admission's control cap, and at it.
    assert_eq!(
        refused("01 11 00 00 00000065"),
        Err(FrameError::TooLarge {
            kind: Kind::AccessRequest,
            len: 101,
            max: 100
        })
    );
    assert_eq!(refused("01 11 00 00 00000064"), Ok(None));
    // Data kinds keep the limits' cap, not the control cap.
    assert_eq!(refused("01 01 00 10 00001000"), Ok(None));
    // Admission::ALL (the default) takes every kind again.
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.set_admission(access_only);
    decoder.set_admission(Admission::ALL);
    decoder.extend_from_slice(&bytes("01 48 00 00 00000000"));
    assert!(matches!(decoder.decode(), Ok(Some(f)) if f.header.kind == Kind::CrlReply));
}

#[test]
fn a_huge_announced_length_allocates_nothing() {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(&bytes("01 01 00 10 ffffffff"));
    assert!(matches!(
        decoder.decode(),
        Err(FrameError::TooLarge { len: u32::MAX, .. })
    ));
    assert!(decoder.read_buf(1).capacity() < 1024);
}

#[test]
fn the_buffer_grows_with_bytes_received_not_bytes_announced() {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(&bytes("01 01 00 10 00100000")); // 1 MiB announced, allowed
    assert_eq!(decoder.decode(), Ok(None));
    assert!(decoder.read_buf(4096).capacity() < 64 * 1024);
}

#[test]
fn an_idle_decoder_gives_its_buffer_back_but_never_a_partial_frame() {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    assert_eq!(decoder.capacity(), 0, "nothing before the first read");
    decoder
        .read_buf(64 * 1024)
        .extend_from_slice(&bytes("01 22 00 00 00000002 08 01 01 13"));
    assert!(decoder.capacity() >= 64 * 1024);
    assert!(decoder.decode().unwrap().is_some());
    // Two bytes of the next header are buffered: they must stay.
    assert!(!decoder.release_if_idle());
    decoder.extend_from_slice(&bytes("00 00 00000002 08 01"));
    let frame = decoder.decode().unwrap().unwrap();
    assert_eq!(
        frame.message().unwrap(),
        pb::Heartbeat {
            status: 1,
            sequence: 0
        }
        .into()
    );
    // Drained: the buffer goes, and frames already returned keep their bytes.
    assert!(decoder.release_if_idle());
    assert_eq!(decoder.capacity(), 0);
    assert_eq!(frame.body.as_ref(), &[0x08, 0x01]);
    assert!(!decoder.release_if_idle());
}

#[test]
fn control_kinds_have_their_own_caps() {
    let mut decoder = FrameDecoder::new(FrameLimits {
        max_data_body: HARD_MAX_BODY,
    });
    decoder.extend_from_slice(&bytes("01 13 00 00 00001001")); // heartbeat of 4097 bytes
    assert_eq!(
        decoder.decode(),
        Err(FrameError::TooLarge {
            kind: Kind::Heartbeat,
            len: 4097,
            max: 4096
        })
    );
}

#[test]
fn hostile_headers_get_typed_errors_and_stay_failed() {
    let cases: &[(&str, FrameError, ErrorCode)] = &[
        (
            "02 01 00 10 00000000",
            FrameError::UnsupportedVersion(2),
            ErrorCode::UnsupportedVersion,
        ),
        (
            "00 01 00 10 00000000",
            FrameError::UnsupportedVersion(0),
            ErrorCode::UnsupportedVersion,
        ),
        (
            "01 7f 00 00 00000000",
            FrameError::UnknownKind(0x7f),
            ErrorCode::UnknownKind,
        ),
        (
            "01 00 00 00 00000000",
            FrameError::UnknownKind(0),
            ErrorCode::UnknownKind,
        ),
        (
            "01 01 80 10 00000000",
            FrameError::ReservedBits {
                kind: Kind::AgentMessage,
                flags: 0x80,
                hop_limit: 16,
            },
            ErrorCode::Malformed,
        ),
        (
            "01 22 00 05 00000000",
            FrameError::ReservedBits {
                kind: Kind::Keepalive,
                flags: 0,
                hop_limit: 5,
            },
            ErrorCode::Malformed,
        ),
    ];
    for (header, expected, code) in cases {
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.extend_from_slice(&bytes(header));
        assert_eq!(decoder.decode().as_ref(), Err(expected), "{header}");
        assert_eq!(expected.code(), *code);
        // Framing is lost: valid bytes after the error do not resynchronise the decoder.
        decoder.extend_from_slice(&bytes("01 22 00 00 00000000"));
        assert_eq!(
            decoder.decode().as_ref(),
            Err(expected),
            "{header} then a keepalive"
        );
    }
}

#[test]
fn a_garbage_body_fails_alone_and_framing_continues() {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    // A heartbeat whose body is a truncated varint, then a valid keepalive.
    decoder.extend_from_slice(&bytes(
        "01 13 00 00 00000002 08 ff  01 22 00 00 00000002 08 01",
    ));
    let bad = decoder.decode().expect("framing intact").expect("complete");
    let err = bad.message().expect_err("truncated varint");
    assert_eq!(err.kind, Kind::Heartbeat);
    assert_eq!(err.code(), ErrorCode::Malformed);
    let good = decoder.decode().expect("framing intact").expect("complete");
    assert_eq!(
        good.message().expect("valid"),
        pb::Keepalive { status: 1 }.into()
    );
}

#[test]
fn garbage_bodies_of_every_kind_give_errors_not_panics() {
    let garbage: &[&[u8]] = &[
        &[0xff],
        &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // length far past the end
        &[0x0a, 0x02, 0xc3, 0x28],             // invalid UTF-8 in field 1
        &[0x0b],                               // start group, never ended
        &[0x0c],                               // end group without start
        &[
            0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01,
        ], // 11-byte varint
        &[0x07],                               // invalid wire type 7
        &[0x00],                               // field number 0
    ];
    for kind in Kind::ALL {
        for body in garbage {
            let result = Message::decode(*kind, Bytes::from_static(body));
            if let Err(e) = &result {
                assert_eq!(e.code(), ErrorCode::Malformed);
            }
            if kind.is_data() {
                assert!(DataView::parse(*kind, body).is_err(), "{kind} {body:02x?}");
            }
        }
    }
}

#[test]
fn the_encoder_refuses_what_decoders_would_refuse_and_appends_nothing() {
    let mut encoder = FrameEncoder::new(FrameLimits { max_data_body: 100 });
    let err = encoder.push(&agent_message(200)).expect_err("too large");
    assert_eq!(err.code(), ErrorCode::TooLarge);
    assert!(encoder.is_empty());

    let err = encoder
        .push_data(&pb::Heartbeat::default(), 3)
        .expect_err("control kind");
    assert_eq!(err.code(), ErrorCode::InvalidField);
    let err = encoder
        .push_message(&pb::Keepalive::default().into(), 1)
        .expect_err("hop");
    assert_eq!(err.code(), ErrorCode::InvalidField);
    assert!(encoder.is_empty());
}

#[test]
fn frame_limits_are_validated() {
    assert!(FrameLimits::default().validate().is_ok());
    assert!(FrameLimits { max_data_body: 0 }.validate().is_err());
    assert!(
        FrameLimits {
            max_data_body: HARD_MAX_BODY + 1
        }
        .validate()
        .is_err()
    );
    assert!(
        FrameLimits {
            max_data_body: HARD_MAX_BODY
        }
        .validate()
        .is_ok()
    );
}

/// The frames of `wire` decoded and queued as a relay queues them, their hop limits lowered
/// by `hops`; the bodies queued.
fn forwarded(wire: &[u8], hops: u8) -> (WriteBatch, Vec<Bytes>) {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    decoder.extend_from_slice(wire);
    let mut batch = WriteBatch::new();
    let mut bodies = Vec::new();
    while let Some(frame) = decoder.decode().expect("valid") {
        bodies.push(frame.body.clone());
        let header = FrameHeader {
            hop_limit: frame.header.hop_limit - hops,
            ..frame.header
        };
        batch.push_frame(header, frame.body);
    }
    (batch, bodies)
}

#[test]
fn forwarding_rewrites_the_hop_limit_and_shares_the_payload() {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    for size in [0, 10, 300, 5000] {
        encoder.push_data(&agent_message(size), 5).expect("encodes");
    }
    let wire = encoder.take();

    let (batch, bodies) = forwarded(&wire, 1);
    assert_eq!(batch.frames(), 4);

    let mut expected = Vec::new();
    for size in [0, 10, 300, 5000] {
        let mut e = FrameEncoder::new(FrameLimits::default());
        e.push_data(&agent_message(size), 4).expect("encodes");
        expected.extend_from_slice(&e.take());
    }
    assert_eq!(batch.len(), expected.len());

    let mut slices = Vec::new();
    batch.io_slices(&mut slices, usize::MAX);
    let written: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(written, expected);
    // Each body segment is the very memory the decoder read into.
    for body in &bodies {
        assert!(
            slices
                .iter()
                .any(|s| s.as_ptr() == body.as_ptr() && s.len() == body.len())
        );
    }
}

#[test]
fn partial_writes_resume_exactly_where_they_stopped() {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    encoder.push(&agent_message(1000)).expect("encodes");
    encoder.push(&pb::Keepalive { status: 1 }).expect("encodes");
    let wire = encoder.take();

    for step in [1, 3, 7, 8, 9, 100, 4096] {
        let (mut batch, _) = forwarded(&wire, 0);
        // A writer that accepts at most `step` bytes per call.
        let mut written = Vec::new();
        while !batch.is_empty() {
            let mut slices = Vec::new();
            batch.io_slices(&mut slices, 3);
            let chunk: Vec<u8> = slices
                .iter()
                .flat_map(|s| s.iter().copied())
                .take(step)
                .collect();
            drop(slices);
            written.extend_from_slice(&chunk);
            batch.advance(chunk.len());
        }
        assert_eq!(written, wire.as_ref(), "step {step}");
        assert_eq!(batch.frames(), 0);
    }
}

#[test]
fn a_frame_written_in_part_is_still_whole_among_the_unwritten() {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    encoder.push(&agent_message(1000)).expect("encodes");
    encoder.push(&agent_message(10)).expect("encodes");
    let wire = encoder.take();
    let (mut batch, bodies) = forwarded(&wire, 0);
    // Gateway-made frames in between are not relayed frames.
    batch.push_encoded(Bytes::from_static(b"made"));
    let unwritten = |b: &WriteBatch| -> Vec<(Kind, Bytes)> {
        b.unwritten().map(|(k, body)| (k, body.clone())).collect()
    };
    let both: Vec<_> = bodies
        .iter()
        .map(|b| (Kind::AgentMessage, b.clone()))
        .collect();
    assert_eq!(unwritten(&batch), both);
    // The first header and half the first body written: the first frame is still whole.
    batch.advance(HEADER_LEN + 500);
    assert_eq!(unwritten(&batch), both);
    assert_eq!(batch.front().map(<[u8]>::len), Some(bodies[0].len() - 500));
    // The rest of the first frame: only the second is left.
    batch.advance(bodies[0].len() - 500);
    assert_eq!(unwritten(&batch), both[1..]);
    batch.advance(HEADER_LEN + bodies[1].len() + 4);
    assert!(batch.is_empty());
    assert_eq!(batch.unwritten().count(), 0);
}

#[test]
fn data_view_refuses_what_cannot_be_routed() {
    let kind = Kind::AgentMessage;
    let cases: &[(&str, ViewError)] = &[
        ("12 01 'x' 18 01", ViewError::MissingDestination(kind)),
        ("0a 00", ViewError::MissingDestination(kind)),
        (
            "0a 05 'ab'",
            ViewError::Malformed {
                kind,
                reason: "bad length",
            },
        ),
        (
            "0a 02 c3 28",
            ViewError::Malformed {
                kind,
                reason: "invalid UTF-8",
            },
        ),
        (
            "08 01",
            ViewError::Malformed {
                kind,
                reason: "routing field with the wrong wire type",
            },
        ),
        (
            "1a 01 00",
            ViewError::Malformed {
                kind,
                reason: "routing field with the wrong wire type",
            },
        ),
        (
            "0a 01 'x' 07",
            ViewError::Malformed {
                kind,
                reason: "bad field key",
            },
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            DataView::parse(kind, &bytes(body)).as_ref(),
            Err(expected),
            "{body}"
        );
    }
    assert_eq!(
        DataView::parse(Kind::Heartbeat, &[]),
        Err(ViewError::NotData(Kind::Heartbeat))
    );
    assert_eq!(
        ViewError::MissingDestination(kind).code(),
        ErrorCode::MissingField
    );
}

#[test]
fn data_view_skips_unknown_fields_and_takes_the_last_destination() {
    let body = bytes(
        "0a 01 'p'  25 01020304  31 0102030405060708  9a 05 02 'zz'  0a 01 'q'  18 2a  7a 00",
    );
    let view = DataView::parse(Kind::AgentMessage, &body).expect("valid");
    assert_eq!(view.destination, "q");
    assert_eq!(view.message_id, 42);
    assert_eq!(view.source(), Some(""));
    let body = bytes("0a 01 'q' 12 02 c3 28 18 01");
    let view = DataView::parse(Kind::AgentMessage, &body).expect("routable");
    assert_eq!(
        view.source(),
        None,
        "a source that is not UTF-8 cannot be answered"
    );
}

#[test]
fn the_language_view_reads_what_translation_needs_and_refuses_what_it_cannot_read() {
    // content_type (5), language (6), translate_to (8), translation (10), among others.
    let body = bytes("0a 01 'y'  2a 0a 'text/plain'  32 02 'en'  38 01  42 02 'es'  7a 02 'hi'");
    assert_eq!(
        LanguageView::parse(&body),
        Some(LanguageView {
            content_type: "text/plain",
            language: "en",
            translate_to: "es",
            translated: false,
        })
    );
    // A translation present, fixed-width fields skipped, the last language wins.
    let body = bytes("32 02 'en'  52 00  25 01020304  31 0102030405060708  32 02 'es'");
    let view = LanguageView::parse(&body).expect("valid");
    assert_eq!((view.language, view.translated), ("es", true));
    assert_eq!(LanguageView::parse(&[]), Some(LanguageView::default()));
    for bad in [
        "32 02 c3 28", // a language that is not UTF-8
        "32 05 'en'",  // a length past the end
        "38",          // a key without its varint
        "00",          // field 0
        "25 0102",     // a fixed32 cut short
    ] {
        assert_eq!(LanguageView::parse(&bytes(bad)), None, "{bad}");
    }
}
