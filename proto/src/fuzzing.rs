//! The frame decoder's fuzz check, shared by the cargo-fuzz target (`fuzz/`) and the test that
//! replays its seed corpus on stable.
//!
//! [`check_frame_stream`] panics only when the codec contradicts itself: the same bytes framed
//! differently when read in chunks, a decoded message that does not survive re-encoding, or the
//! relay's [`DataView`] or [`LanguageView`] disagreeing with the full decode. Hostile input must produce errors,
//! never panics, so any panic here is a bug.

use crate::{
    Admission, DataView, FrameDecoder, FrameEncoder, FrameError, FrameLimits, Kind, LanguageView,
    Message, frame::Frame,
};

/// The admission the fuzzer tries beside [`Admission::ALL`]: what an accessed agent may send.
const NARROW: Admission = Admission::only(
    &[
        Kind::AgentMessage,
        Kind::Ack,
        Kind::Nack,
        Kind::Heartbeat,
        Kind::Deregister,
    ],
    64,
);

/// Decodes `data` as a stream of frames, reading it whole and in chunks whose size the first
/// byte picks (and whether the decoder admits every kind or an accessed agent's only), and
/// checks that every frame decodes the same way both times, is admitted, and round-trips.
pub fn check_frame_stream(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let limits = FrameLimits {
        // Small limits let the fuzzer reach the size checks.
        max_data_body: if selector & 0x80 != 0 { 64 } else { 1 << 20 },
    };
    let admission = if selector & 0x40 != 0 {
        NARROW
    } else {
        Admission::ALL
    };
    let chunk = usize::from(selector & 0x1f) + 1;

    let whole = decode_all(stream, stream.len().max(1), limits, admission);
    let chunked = decode_all(stream, chunk, limits, admission);
    assert_eq!(whole, chunked, "framing depends on how the bytes arrive");

    for frame in whole.0 {
        if admission == NARROW {
            let kind = frame.header.kind;
            assert!(
                kind.is_data() || matches!(kind, Kind::Heartbeat | Kind::Deregister),
                "{kind} passed a narrow admission"
            );
            assert!(
                kind.is_data() || frame.body.len() <= 64,
                "control body over the cap"
            );
        }
        check_frame(&frame, limits);
    }
}

fn decode_all(
    stream: &[u8],
    chunk: usize,
    limits: FrameLimits,
    admission: Admission,
) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(limits);
    decoder.set_admission(admission);
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        decoder.read_buf(chunk).extend_from_slice(piece);
        loop {
            match decoder.decode() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn check_frame(frame: &Frame, limits: FrameLimits) {
    let kind = frame.header.kind;
    // What a shard reads before translation: never a panic, and (below) the decode's fields.
    let language = (kind == Kind::AgentMessage)
        .then(|| LanguageView::parse(&frame.body))
        .flatten();
    let Ok(message) = frame.message() else {
        return;
    };
    if let Message::AgentMessage(m) = &message {
        let expected = LanguageView {
            content_type: &m.content_type,
            language: &m.language,
            translate_to: &m.translate_to,
            translated: m.translation.is_some(),
        };
        assert_eq!(
            language,
            Some(expected),
            "the language view disagrees with the decode"
        );
    }
    if kind.is_data() {
        let view = frame.data_view();
        let destination = match &message {
            Message::AgentMessage(m) => &m.destination,
            Message::Ack(m) => &m.destination,
            Message::Nack(m) => &m.destination,
            _ => unreachable!("data kinds are AgentMessage, Ack and Nack"),
        };
        match view {
            Ok(DataView { destination: d, .. }) => assert_eq!(d, destination.as_str()),
            Err(e) => assert!(destination.is_empty(), "view refused a valid {kind}: {e}"),
        }
    }

    let mut encoder = FrameEncoder::new(limits);
    match encoder.push_message(&message, frame.header.hop_limit) {
        Ok(()) => {}
        // Re-encoding can grow a body (prost writes a negative enum in ten bytes, whatever
        // the input used), so a body near its cap may legitimately not fit again.
        Err(crate::EncodeError::TooLarge { .. }) => return,
        Err(e) => panic!("a decoded {kind} does not re-encode: {e}"),
    }
    let mut decoder = FrameDecoder::new(limits);
    decoder.extend_from_slice(&encoder.take());
    let again = decoder
        .decode()
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("a re-encoded {kind} does not decode"));
    assert_eq!(again.header, frame.header.with_body_len(again.body.len()));
    assert_eq!(
        again.message().ok().as_ref(),
        Some(&message),
        "{kind} does not round-trip"
    );
}
