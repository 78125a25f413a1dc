//! The A2A gRPC adapter, byte by byte: the fuzz target's seed corpus (`fuzz/seeds/a2a_grpc/`:
//! what grpcio sends for GetTask, SendMessage, SendStreamingMessage and an unknown method,
//! captured from the real client; a cut connection; a frame too long) replayed on stable,
//! each with the frames its name promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_dataplane::a2a_grpc::check_client_bytes;
use agw_proto::Message;

fn kinds(messages: &[Message]) -> Vec<&'static str> {
    messages.iter().map(|m| m.kind().name()).collect()
}

#[test]
fn seed_calls_reach_the_relay_or_are_refused_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/a2a_grpc");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (messages, out, result) = check_client_bytes(&std::fs::read(&path).unwrap());
        let k = kinds(&messages);
        match name.as_str() {
            "send-message" | "streaming" => {
                assert_eq!(&k[..2], ["AccessRequest", "AgentMessage"], "{name}");
                let Message::AgentMessage(m) = &messages[1] else {
                    panic!()
                };
                assert_eq!(m.destination, "spiffe://hotel.example/agent/bob", "{name}");
                assert_eq!(m.source_protocol, agw_proto::pb::Protocol::A2a as i32);
                // The reply is ACKed to its source, and the call answered.
                assert!(k.contains(&"Ack"), "{name}: {k:?}");
                assert!(!out.is_empty(), "{name}");
                assert!(result.is_ok(), "{name}");
            }
            "get-task" | "unknown-method" => {
                // Answered (NOT_FOUND, UNIMPLEMENTED) without troubling the relay.
                assert_eq!(k, ["AccessRequest"], "{name}");
                assert!(!out.is_empty(), "{name}");
            }
            "bad-frame" => {
                // A frame longer than HTTP/2 allows: GOAWAY FRAME_SIZE_ERROR (6), no call.
                assert_eq!(k, ["AccessRequest"], "{name}");
                let goaway = out.windows(5).position(|w| w == [0, 0, 8, 7, 0]).unwrap();
                assert_eq!(out[goaway + 9 + 7], 6, "{out:?}");
            }
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 6, "seeds in {}", dir.display());
}
