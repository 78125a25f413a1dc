//! Criterion benchmarks of the Agent Gateway's hot functions; run them with
//! `cargo bench -p agw-benches`. This library holds only the inputs they share.

use agw_proto::{FrameEncoder, FrameLimits, pb};
use bytes::Bytes;

/// An agent message with realistic identities and a payload of `payload_len` bytes.
pub fn agent_message(seq: u64, payload_len: usize) -> pb::AgentMessage {
    pb::AgentMessage {
        destination: format!("spiffe://hotels.example/agent/booking-{}", seq % 1000),
        source: "spiffe://travel.example/agent/planner-7".into(),
        message_id: seq,
        session_id: 42,
        content_type: "application/json".into(),
        language: "en".into(),
        source_protocol: pb::Protocol::Native as i32,
        translate_to: String::new(),
        translation: None,
        session_header: None,
        correlation: Bytes::new(),
        payload: Bytes::from(vec![b'x'; payload_len]),
    }
}

/// `count` encoded agent-message frames back to back, as one read would deliver them.
pub fn frame_stream(count: u64, payload_len: usize) -> Bytes {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    for seq in 0..count {
        // The inputs are built to fit the default limits.
        if let Err(e) = encoder.push(&agent_message(seq, payload_len)) {
            panic!("benchmark input does not encode: {e}");
        }
    }
    encoder.take()
}
