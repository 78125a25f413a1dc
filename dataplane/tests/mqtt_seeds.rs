//! The MQTT adapter, byte by byte: the fuzz target's seed corpus (`fuzz/seeds/mqtt/`)
//! replayed on stable, each seed with the outcome its name promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_dataplane::mqtt::check_client_bytes;
use agw_proto::{Message, pb::ErrorCode};

#[test]
fn seed_sessions_translate_or_close_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/mqtt");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (messages, result) = check_client_bytes(&std::fs::read(&path).unwrap());
        let kinds: Vec<&str> = messages.iter().map(|m| m.kind().name()).collect();
        let closed = result.as_ref().err().map(|c| c.code);
        match name.as_str() {
            "valid-connect-311" | "valid-connect-5" => {
                assert_eq!(
                    (kinds.as_slice(), closed),
                    (&["AccessRequest"][..], None),
                    "{name}"
                )
            }
            "valid-session-311" | "valid-session-5" => {
                // CONNECT, SUBSCRIBE (answered by the adapter), a QoS 1 PUBLISH, PINGREQ,
                // then DISCONNECT.
                assert_eq!(
                    kinds,
                    ["AccessRequest", "AgentMessage", "Heartbeat"],
                    "{name}"
                );
                let Message::AgentMessage(m) = &messages[1] else {
                    panic!()
                };
                assert_eq!(m.destination, "spiffe://b.example/agent/bob");
                assert_eq!(&m.payload[..], b"hello");
                assert_eq!(closed, Some(ErrorCode::Unspecified), "{name}: disconnected");
            }
            "first-not-connect" | "qos2-publish" => {
                assert_eq!(closed, Some(ErrorCode::UnexpectedMessage), "{name}")
            }
            "connect-level-3" | "remaining-length-too-large" => {
                assert!(messages.is_empty(), "{name}");
                assert_eq!(closed, Some(ErrorCode::Malformed), "{name}");
            }
            "truncated-connect" => assert_eq!((messages.len(), closed), (0, None), "waits"),
            // Found by the fuzzer: a packet whose inner lengths run past its end was skipped
            // as "not whole yet" when read at once, and refused when read in pieces.
            "found-connect-then-bad-level" => {
                assert_eq!(closed, Some(ErrorCode::Malformed), "{name}")
            }
            "topic-outside-scheme" => {
                // Refused by the adapter (PUBACK 0x90), not relayed.
                assert_eq!(
                    (kinds.as_slice(), closed),
                    (&["AccessRequest"][..], None),
                    "{name}"
                )
            }
            // Inputs saved from fuzzing runs: any outcome, no panic.
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 10, "{seen} seeds in {}", dir.display());
}
