//! The gateway's A2A client, byte by byte: the fuzz target's seed corpus
//! (`fuzz/seeds/a2a_client/`, an A2A server's answers to four requests in flight) replayed on
//! stable, each seed with the outcome its name promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_dataplane::a2a_client::check_server_bytes;
use agw_proto::{Message, pb::ErrorCode};

fn kinds(messages: &[Message]) -> Vec<&'static str> {
    messages.iter().map(|m| m.kind().name()).collect()
}

fn nacks(messages: &[Message]) -> Vec<(u64, ErrorCode)> {
    messages
        .iter()
        .filter_map(|m| match m {
            Message::Nack(n) => Some((n.message_id, n.reason())),
            _ => None,
        })
        .collect()
}

fn reply(messages: &[Message], at: usize) -> &agw_proto::pb::AgentMessage {
    match &messages[at] {
        Message::AgentMessage(m) => m,
        other => panic!("{other:?}"),
    }
}

#[test]
fn seed_answers_become_the_frames_their_names_promise() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/a2a_client");
    let offline = |ids: std::ops::Range<u64>| {
        ids.map(|i| (i, ErrorCode::DestinationOffline))
            .collect::<Vec<_>>()
    };
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (messages, end) = check_server_bytes(&std::fs::read(&path).unwrap());
        let closed = end.as_ref().err().map(|c| c.code);
        match name.as_str() {
            "valid-message" | "valid-chunked" | "valid-continue-then-answer" => {
                assert_eq!(kinds(&messages), ["Ack", "AgentMessage"], "{name}");
                let m = reply(&messages, 1);
                assert_eq!(&m.payload[..], b"echo: hello", "{name}");
                assert_eq!(m.source, "spiffe://a.example/agent/server");
                assert_eq!(m.destination, "spiffe://a.example/agent/client");
                assert_eq!(closed, None, "{name}");
            }
            "valid-data" => {
                assert_eq!(kinds(&messages), ["Ack", "AgentMessage"]);
                assert_eq!(reply(&messages, 1).content_type, "application/json");
            }
            "valid-four-states" => {
                assert_eq!(
                    kinds(&messages),
                    [
                        "Ack",
                        "AgentMessage",
                        "Ack",
                        "AgentMessage",
                        "Nack",
                        "Ack",
                        "AgentMessage"
                    ]
                );
                assert_eq!(&reply(&messages, 3).payload[..], b"booked");
                assert_eq!(nacks(&messages), [(2, ErrorCode::Internal)]);
                assert_eq!(&reply(&messages, 6).payload[..], b"which night?");
                assert_eq!(closed, None);
            }
            "nack-rpc-error" => {
                assert_eq!(nacks(&messages), [(0, ErrorCode::UnsupportedVersion)]);
            }
            "nack-carried-reason" => assert_eq!(nacks(&messages), [(0, ErrorCode::NoRoute)]),
            "nack-http-503" => assert_eq!(nacks(&messages), [(0, ErrorCode::Overloaded)]),
            "nack-not-json" | "nack-neither" => {
                assert_eq!(nacks(&messages), [(0, ErrorCode::Internal)], "{name}");
                assert_eq!(closed, None, "{name}");
            }
            "bad-not-http"
            | "bad-content-length"
            | "bad-transfer-coding"
            | "bad-chunk-size"
            | "bad-chunk-end"
            | "bad-trailers" => {
                assert_eq!(closed, Some(ErrorCode::Malformed), "{name}");
                // Every request left is NACKed when the connection is found bad.
                assert_eq!(nacks(&messages), offline(0..4), "{name}");
            }
            "large-body" | "large-head" => {
                assert_eq!(closed, Some(ErrorCode::TooLarge), "{name}");
                assert_eq!(nacks(&messages), offline(0..4), "{name}");
            }
            "extra-answer" => {
                assert_eq!(closed, Some(ErrorCode::UnexpectedMessage));
                assert_eq!(messages.len(), 8);
            }
            // Inputs the fuzzer found: any outcome but a panic.
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 19, "seeds missing in {}", dir.display());
}
