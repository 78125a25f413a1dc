//! The translation pool's payload check, shared by the cargo-fuzz target (`fuzz/`) and the test
//! that replays its seed corpus on stable: what an agent's payload can make of the text
//! extraction (plain text, A2A parts, JSON text fields) and of JSON <-> protobuf conversion.
//!
//! [`check_payload`] panics only when the pool contradicts itself: text put back unchanged
//! that is not the payload it came from, or a conversion that does not survive the way back.
//! Hostile payloads must produce `None` or an error, never a panic.

#![allow(clippy::expect_used)] // a contradiction is a finding: it panics, as the fuzzer wants

use agw_dataplane::a2a::PARTS_TYPE;
use bytes::Bytes;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::Value;

use super::{
    Text,
    formats::{json_to_protobuf, message_type, protobuf_to_json},
};

/// The descriptor set of `fuzz_schema.proto` (a message with scalars, repeated, nested,
/// recursive, map, bytes, enum and oneof fields).
const SCHEMA: &[u8] = include_bytes!("fuzz_schema.pb");

/// The message the check converts with.
pub fn schema() -> Option<MessageDescriptor> {
    DescriptorPool::decode(SCHEMA)
        .ok()?
        .get_message_by_name("fuzz.v1.Booking")
}

/// Runs the first byte's choice of checks on the rest of `data`.
pub fn check_payload(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let _ = message_type(&String::from_utf8_lossy(payload));
    match selector % 4 {
        0 => text_round_trip("text/plain", payload, &[]),
        1 => text_round_trip(PARTS_TYPE, payload, &[]),
        2 => {
            let fields = ["/note", "/a/b", "/list", "/0", ""].map(str::to_owned);
            text_round_trip("application/json", payload, &fields);
            from_json(payload);
        }
        _ => from_protobuf(payload),
    }
}

/// The text found, put back as it was, gives the payload back (as JSON values where the
/// payload is JSON).
fn text_round_trip(content_type: &str, payload: &[u8], fields: &[String]) {
    let Some(text) = Text::of(content_type, payload, fields) else {
        return;
    };
    assert!(!text.segments().is_empty(), "text found without segments");
    let back = text.payload(text.segments());
    match text {
        Text::Plain(_) => assert_eq!(back, payload, "plain text changed"),
        Text::Parts { .. } | Text::Json { .. } => {
            let (before, after): (Value, Value) = (
                serde_json::from_slice(payload).expect("parsed once"),
                serde_json::from_slice(&back).expect("written by serde_json"),
            );
            assert_eq!(before, after, "JSON changed by an unchanged translation");
        }
    }
}

/// JSON that converts into protobuf converts back, and again into the same message.
fn from_json(payload: &[u8]) {
    let Some(schema) = schema() else { return };
    let Ok(first) = json_to_protobuf(schema.clone(), payload) else {
        return;
    };
    let json = protobuf_to_json(schema.clone(), Bytes::from(first.clone()))
        .expect("converted protobuf does not convert back");
    let second =
        json_to_protobuf(schema.clone(), &json).expect("JSON written from protobuf refused");
    let decode = |b: Vec<u8>| DynamicMessage::decode(schema.clone(), Bytes::from(b)).ok();
    assert_eq!(
        decode(first),
        decode(second),
        "JSON <-> protobuf changed the message"
    );
}

/// Protobuf that decodes writes JSON that converts back.
fn from_protobuf(payload: &[u8]) {
    let Some(schema) = schema() else { return };
    if let Ok(json) = protobuf_to_json(schema.clone(), Bytes::copy_from_slice(payload)) {
        json_to_protobuf(schema, &json).expect("JSON written from protobuf refused");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_embedded_schema_is_the_proto_file_compiled() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/translation");
        let compiled = protox::Compiler::new([dir])
            .unwrap()
            .open_file("fuzz_schema.proto")
            .unwrap()
            .encode_file_descriptor_set();
        assert_eq!(
            compiled, SCHEMA,
            "regenerate fuzz_schema.pb from fuzz_schema.proto"
        );
        assert!(schema().is_some());
    }
}
