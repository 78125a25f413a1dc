//! JSON <-> protobuf by a registered schema (prost-reflect, proto3's JSON mapping), and the
//! media type parameter that names a protobuf payload's message.

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};

/// The `messageType` parameter of a protobuf media type (`application/x-protobuf;
/// messageType=travel.v1.Booking`).
pub fn message_type(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("messagetype")
            .then(|| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    })
}

/// `json` parsed as a `schema` message (the whole of it: trailing bytes refused), encoded.
pub fn json_to_protobuf(schema: MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, String> {
    let name = schema.full_name().to_owned();
    let mut input = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize(schema, &mut input)
        .and_then(|m| input.end().map(|()| m))
        .map_err(|e| format!("the JSON is not a {name}: {e}"))?;
    Ok(message.encode_to_vec())
}

/// `bytes` decoded as a `schema` message, written as proto3 JSON (fields at their default
/// left out).
pub fn protobuf_to_json(schema: MessageDescriptor, bytes: Bytes) -> Result<Vec<u8>, String> {
    let name = schema.full_name().to_owned();
    let message = DynamicMessage::decode(schema, bytes)
        .map_err(|e| format!("the payload is not a {name}: {e}"))?;
    serde_json::to_vec(&message).map_err(|e| format!("{name} as JSON: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_message_type_is_a_parameter_of_the_media_type() {
        let named = |c| message_type(c);
        assert_eq!(
            named("application/x-protobuf; messageType=a.B"),
            Some("a.B")
        );
        assert_eq!(
            named("application/protobuf;charset=x; MESSAGETYPE=\"a.B\""),
            Some("a.B")
        );
        assert_eq!(named("application/x-protobuf"), None);
        assert_eq!(named("application/x-protobuf; messageType="), None);
        assert_eq!(named("messageType=a.B"), None);
    }
}
