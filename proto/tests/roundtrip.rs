//! Property tests: messages survive encode and decode whatever their content and however the
//! bytes arrive, and arbitrary bytes never panic the decoder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_proto::{FrameDecoder, FrameEncoder, FrameHeader, FrameLimits, Kind, Message, fuzzing, pb};
use bytes::Bytes;
use proptest::{collection::vec, option, prelude::*};

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including multi-byte characters, at bounded length.
    ".{0,40}"
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..2048).prop_map(Bytes::from)
}

fn agent_message() -> impl Strategy<Value = pb::AgentMessage> {
    (
        (text(), text(), any::<u64>(), any::<u64>()),
        (text(), text(), 0..7i32, text()),
        (
            payload(),
            vec(any::<u8>(), 0..16),
            option::of((text(), text(), any::<bool>())),
            option::of((any::<u64>(), any::<u64>(), vec(any::<u8>(), 0..64))),
        ),
    )
        .prop_map(
            |(
                (destination, source, message_id, session_id),
                (content_type, language, p, t),
                (payload, correlation, translated, in_session),
            )| {
                let session_header = in_session.map(|(sequence, in_reply_to, context)| {
                    Box::new(pb::SessionHeader {
                        sequence,
                        in_reply_to,
                        deadline_unix_ms: sequence / 2,
                        context: context.into(),
                        context_type: "application/json".into(),
                    })
                });
                let translation = translated.map(|(from, engine, failed)| {
                    Box::new(pb::Translation {
                        from,
                        to: language.clone(),
                        engine,
                        original: payload.clone(),
                        failed,
                        detail: String::new(),
                    })
                });
                pb::AgentMessage {
                    destination,
                    source,
                    message_id,
                    session_id,
                    content_type,
                    language,
                    source_protocol: p,
                    translate_to: t,
                    correlation: correlation.into(),
                    translation,
                    session_header,
                    payload,
                }
            },
        )
}

fn summary() -> impl Strategy<Value = pb::AgentSummary> {
    (
        (
            text(),
            vec(text(), 0..5),
            vec(0..7i32, 0..4),
            vec(text(), 0..3),
        ),
        (0..4i32, text(), vec(text(), 0..4), any::<u64>()),
    )
        .prop_map(
            |((agent, capabilities, protocols, languages), (status, origin, path, version))| {
                pb::AgentSummary {
                    agent,
                    capabilities,
                    protocols,
                    languages,
                    status,
                    origin,
                    path,
                    version,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        agent_message().prop_map(Message::from),
        (text(), text(), any::<u64>(), any::<i32>(), text()).prop_map(
            |(destination, original_destination, message_id, reason, detail)| {
                pb::Nack {
                    destination,
                    original_destination,
                    message_id,
                    reason,
                    detail,
                    ..Default::default()
                }
                .into()
            }
        ),
        (vec(summary(), 0..6), vec(text(), 0..6)).prop_map(|(advertise, withdraw)| {
            pb::ResourceUpdate {
                advertise,
                withdraw,
            }
            .into()
        }),
        (text(), vec(payload(), 0..3), payload()).prop_map(
            |(agent, certificate_chain, signature)| {
                pb::AccessRequest {
                    agent,
                    certificate_chain,
                    signature,
                    ..Default::default()
                }
                .into()
            }
        ),
        (
            any::<u64>(),
            vec(text(), 0..4),
            text(),
            any::<bool>(),
            any::<u32>()
        )
            .prop_map(|(request_id, capabilities, domain, online_only, limit)| {
                pb::DiscoverRequest {
                    request_id,
                    capabilities,
                    domain,
                    online_only,
                    limit,
                    ..Default::default()
                }
                .into()
            }),
        (any::<i32>(), any::<u32>(), text()).prop_map(|(code, subcode, text)| pb::Notification {
            code,
            subcode,
            text
        }
        .into()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn messages_round_trip_however_the_bytes_arrive(
        messages in vec(message(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut encoder = FrameEncoder::new(FrameLimits::default());
        for m in &messages {
            let hop = if m.kind().is_data() { 7 } else { 0 };
            encoder.push_message(m, hop).expect("within limits");
        }
        let wire = encoder.take();

        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();

        let mut decoder = FrameDecoder::new(FrameLimits::default());
        let mut decoded = Vec::new();
        for pair in points.windows(2) {
            decoder.extend_from_slice(&wire[pair[0]..pair[1]]);
            while let Some(frame) = decoder.decode().expect("valid stream") {
                decoded.push(frame.message().expect("valid body"));
            }
        }
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn arbitrary_bodies_of_every_kind_never_panic(
        kind in prop::sample::select(Kind::ALL),
        body in vec(any::<u8>(), 0..512),
    ) {
        if let Ok(m) = Message::decode(kind, Bytes::from(body)) {
            prop_assert_eq!(m.kind(), kind);
        }
    }

    #[test]
    fn arbitrary_headers_parse_or_fail_cleanly(raw in any::<[u8; 8]>()) {
        if let Ok(header) = FrameHeader::parse(raw, &FrameLimits::default()) {
            prop_assert_eq!(header.to_bytes(), raw);
        }
    }

    #[test]
    fn arbitrary_streams_pass_the_fuzz_check(data in vec(any::<u8>(), 0..1024)) {
        fuzzing::check_frame_stream(&data);
    }

    #[test]
    fn valid_frames_with_arbitrary_chunking_pass_the_fuzz_check(
        selector in any::<u8>(),
        messages in vec(message(), 1..4),
    ) {
        let mut encoder = FrameEncoder::new(FrameLimits::default());
        for m in &messages {
            let hop = if m.kind().is_data() { 3 } else { 0 };
            encoder.push_message(m, hop).expect("within limits");
        }
        let mut data = vec![selector];
        data.extend_from_slice(&encoder.take());
        fuzzing::check_frame_stream(&data);
    }
}
