//! The A2A adapter, byte by byte: the fuzz target's seed corpus (`fuzz/seeds/a2a/`) replayed
//! on stable, each seed with the outcome its name promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agw_dataplane::a2a::check_client_bytes;
use agw_proto::{Message, pb::ErrorCode};

fn kinds(messages: &[Message]) -> Vec<&'static str> {
    messages.iter().map(|m| m.kind().name()).collect()
}

#[test]
fn seed_requests_are_answered_or_refused_as_named() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/a2a");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let (messages, out, result) = check_client_bytes(&std::fs::read(&path).unwrap());
        let out = String::from_utf8_lossy(&out).into_owned();
        let closed = result.as_ref().err().map(|c| c.code);
        match name.as_str() {
            "valid-card" => {
                assert_eq!(kinds(&messages), ["AccessRequest"], "{name}");
                assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{name}: {out}");
                assert!(
                    out.contains("\"url\":\"https://gw:7400/a2a/a.example/bob\""),
                    "{out}"
                );
                assert_eq!(closed, None, "{name}");
            }
            "valid-send" | "valid-stream" | "valid-pipelined" => {
                let k = kinds(&messages);
                assert_eq!(&k[..2], ["AccessRequest", "AgentMessage"], "{name}");
                let Message::AgentMessage(m) = &messages[1] else {
                    panic!()
                };
                assert_eq!(m.destination, "spiffe://a.example/agent/bob");
                assert_eq!(&m.payload[..], b"hello");
                assert_eq!(&m.correlation[..], b"task-1");
                // The reply is ACKed to its source.
                assert!(k.contains(&"Ack"), "{name}: {k:?}");
                assert!(out.contains("TASK_STATE_COMPLETED"), "{name}: {out}");
                assert!(out.contains("\"text\":\"done\""), "{name}: {out}");
                assert_eq!(closed, None, "{name}");
                if name == "valid-stream" {
                    assert!(out.contains("content-type: text/event-stream"), "{out}");
                    assert!(out.contains("TASK_STATE_WORKING"), "{out}");
                    assert!(out.ends_with("0\r\n\r\n"), "{out}");
                }
                if name == "valid-pipelined" {
                    // Three answers in order: the gateway's card, the task, GetTask's task.
                    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
                }
            }
            "valid-rest-send" | "valid-rest-stream" => {
                // The HTTP+JSON binding: the same translation, answers without JSON-RPC.
                let k = kinds(&messages);
                assert_eq!(&k[..2], ["AccessRequest", "AgentMessage"], "{name}");
                assert!(!out.contains("jsonrpc"), "{name}: {out}");
                assert!(out.contains("TASK_STATE_COMPLETED"), "{name}: {out}");
                assert_eq!(closed, None, "{name}");
                if name == "valid-rest-send" {
                    assert!(out.contains("{\"task\":{"), "{out}");
                } else {
                    // The stream, the task, then a finished task that cannot be canceled: a
                    // 400 with A2A's reason, the connection kept.
                    assert!(out.contains("content-type: text/event-stream"), "{out}");
                    assert!(out.contains("TASK_STATE_WORKING"), "{out}");
                    assert!(out.contains("HTTP/1.1 400"), "{out}");
                    assert!(out.contains("TASK_NOT_CANCELABLE"), "{out}");
                    assert!(!out.contains("connection: close"), "{out}");
                }
            }
            "bad-http2-preface" => {
                // SETTINGS, then GOAWAY HTTP_1_1_REQUIRED; no access asked.
                assert!(messages.is_empty(), "{name}");
                assert_eq!(closed, Some(ErrorCode::UnsupportedVersion));
                assert!(out.contains("not served"), "{out}");
            }
            "bad-not-http" => {
                assert!(out.starts_with("HTTP/1.1 400"), "{out}");
                assert_eq!(closed, Some(ErrorCode::Malformed));
            }
            "bad-chunked-body" => {
                assert!(out.starts_with("HTTP/1.1 411"), "{out}");
                assert_eq!(closed, Some(ErrorCode::Malformed));
            }
            "bad-too-large" => {
                assert!(out.starts_with("HTTP/1.1 413"), "{out}");
                assert_eq!(closed, Some(ErrorCode::Malformed));
            }
            "bad-json" => {
                assert!(out.contains("\"code\":-32700"), "{out}");
                assert_eq!(closed, None, "a JSON-RPC error leaves the connection open");
            }
            // Inputs the fuzzer found: anything but a panic.
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 8, "seeds in {}", dir.display());
}
