//! The relay's view of a data frame: the routing fields, read in place.
//!
//! A relay needs only the destination (to look up the route) and, to answer with a NACK, the
//! source and the message ID. Decoding the whole message would allocate a `String` per field;
//! this view walks the body's protobuf fields once and borrows the strings from it.

use prost::encoding::{DecodeContext, WireType, decode_varint, skip_field};

use crate::{Kind, pb::ErrorCode};

/// Routing fields of a data frame ([`Kind::is_data`]), borrowed from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataView<'a> {
    /// The frame's kind.
    pub kind: Kind,
    /// Field 1 of every data kind: the agent the frame is routed to.
    pub destination: &'a str,
    /// Field 3 of every data kind.
    pub message_id: u64,
    /// Field 2, unchecked: only the rare answer to a frame (a NACK) needs it.
    field2: &'a [u8],
}

/// A data frame whose routing fields cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// Only data kinds have routing fields.
    #[error("{0} is not a data kind")]
    NotData(Kind),
    /// The body is not valid protobuf, or a routing field has the wrong wire type.
    #[error("malformed {kind} body: {reason}")]
    Malformed {
        /// The frame's kind.
        kind: Kind,
        /// What is wrong.
        reason: &'static str,
    },
    /// The destination is empty or absent.
    #[error("{0} without a destination")]
    MissingDestination(Kind),
}

impl ViewError {
    /// The code of the NACK or NOTIFICATION that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ViewError::NotData(_) => ErrorCode::UnexpectedMessage,
            ViewError::Malformed { .. } => ErrorCode::Malformed,
            ViewError::MissingDestination(_) => ErrorCode::MissingField,
        }
    }
}

impl<'a> DataView<'a> {
    /// The agent that sent an `AgentMessage` or an `Ack` (field 2), to answer it with a NACK.
    /// `None` for a `Nack`, which is never answered, and for a source that is not UTF-8.
    pub fn source(&self) -> Option<&'a str> {
        std::str::from_utf8(self.source_bytes()?).ok()
    }

    /// [`source`](Self::source)'s bytes, unchecked: what the relay compares with the agent a
    /// connection accessed as, with no UTF-8 check (equal to a `str`, they are UTF-8).
    pub fn source_bytes(&self) -> Option<&'a [u8]> {
        (self.kind != Kind::Nack).then_some(self.field2)
    }

    /// Reads the routing fields of a `kind` body. As in protobuf, when a field repeats, the
    /// last occurrence wins; unknown fields are skipped.
    pub fn parse(kind: Kind, body: &'a [u8]) -> Result<DataView<'a>, ViewError> {
        if !kind.is_data() {
            return Err(ViewError::NotData(kind));
        }
        let bad = |reason| ViewError::Malformed { kind, reason };
        let mut buf = body;
        let (mut destination, mut field2, mut message_id): (&[u8], &[u8], u64) = (&[], &[], 0);
        while !buf.is_empty() {
            let (tag, wire_type) = key(&mut buf).ok_or_else(|| bad("bad field key"))?;
            match (tag, wire_type) {
                (1 | 2, WireType::LengthDelimited) => {
                    let field = length_delimited(&mut buf).ok_or_else(|| bad("bad length"))?;
                    if tag == 1 {
                        destination = field;
                    } else {
                        field2 = field;
                    }
                }
                (3, WireType::Varint) => {
                    message_id = varint(&mut buf).ok_or_else(|| bad("bad message_id"))?;
                }
                (1..=3, _) => return Err(bad("routing field with the wrong wire type")),
                (_, WireType::Varint) => {
                    varint(&mut buf).ok_or_else(|| bad("bad varint"))?;
                }
                (_, WireType::LengthDelimited) => {
                    length_delimited(&mut buf).ok_or_else(|| bad("bad length"))?;
                }
                (_, WireType::SixtyFourBit | WireType::ThirtyTwoBit) => {
                    let width = if wire_type == WireType::SixtyFourBit {
                        8
                    } else {
                        4
                    };
                    buf = buf
                        .get(width..)
                        .ok_or_else(|| bad("bad fixed-width field"))?;
                }
                // Groups (deprecated, never in our schema) are rare enough for prost's own skip.
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                    .map_err(|_| bad("bad field"))?,
            }
        }
        if destination.is_empty() {
            return Err(ViewError::MissingDestination(kind));
        }
        let destination = std::str::from_utf8(destination).map_err(|_| bad("invalid UTF-8"))?;
        Ok(DataView {
            kind,
            destination,
            message_id,
            field2,
        })
    }
}

/// The fields of an `AgentMessage` that say whether its natural language may need translating,
/// borrowed from its body: what a shard reads before it hands a message to the translation
/// pool (docs/translation.md), without decoding the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LanguageView<'a> {
    /// Field 5: the payload's media type.
    pub content_type: &'a str,
    /// Field 6: the payload's natural language (BCP 47), empty when the source did not say.
    pub language: &'a str,
    /// Field 8: the language the source asks for, empty for none.
    pub translate_to: &'a str,
    /// Field 10 is present: a gateway already translated (or tried to) this message.
    pub translated: bool,
}

impl<'a> LanguageView<'a> {
    /// Reads the language fields of an `AgentMessage` body; `None` when it is malformed or a
    /// field is not UTF-8 (such a message is relayed as it is, never translated).
    pub fn parse(body: &'a [u8]) -> Option<LanguageView<'a>> {
        let mut view = LanguageView::default();
        let mut buf = body;
        while !buf.is_empty() {
            let (tag, wire_type) = key(&mut buf)?;
            match wire_type {
                WireType::LengthDelimited => {
                    let field = length_delimited(&mut buf)?;
                    let text = || std::str::from_utf8(field).ok();
                    match tag {
                        5 => view.content_type = text()?,
                        6 => view.language = text()?,
                        8 => view.translate_to = text()?,
                        10 => view.translated = true,
                        _ => {}
                    }
                }
                WireType::Varint => {
                    varint(&mut buf)?;
                }
                WireType::SixtyFourBit => buf = buf.get(8..)?,
                WireType::ThirtyTwoBit => buf = buf.get(4..)?,
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?,
            }
        }
        Some(view)
    }
}

/// A varint, with the one-byte case (field keys, short lengths) inline.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    match buf.split_first() {
        Some((&b, rest)) if b < 0x80 => {
            *buf = rest;
            Some(u64::from(b))
        }
        _ => decode_varint(buf).ok(),
    }
}

/// A field key: tag (at least 1, at most 2^29 - 1) and wire type, checked as prost checks them.
#[inline(always)]
fn key(buf: &mut &[u8]) -> Option<(u32, WireType)> {
    let key = u32::try_from(varint(buf)?).ok()?;
    let tag = key >> 3;
    (tag != 0).then_some(())?;
    Some((tag, WireType::try_from(u64::from(key & 7)).ok()?))
}

/// A length-delimited field's bytes.
#[inline(always)]
fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(buf)?).ok()?;
    let (field, rest) = (buf.get(..len)?, buf.get(len..)?);
    *buf = rest;
    Some(field)
}
