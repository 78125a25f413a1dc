//! The relay's view of a data frame: the routing fields, read in place.
//!
//! A relay needs only the destination (to look up the route) and, to answer with a NACK, the
//! source and the message ID. Decoding the whole message would allocate a `String` per field;
//! this view walks the body's protobuf fields once and borrows the strings from it.

use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

use crate::{Kind, pb::ErrorCode};

/// Routing fields of a data frame ([`Kind::is_data`]), borrowed from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataView<'a> {
    /// The frame's kind.
    pub kind: Kind,
    /// Field 1 of every data kind: the agent the frame is routed to.
    pub destination: &'a str,
    /// The agent that sent an `AgentMessage` or an `Ack` (field 2); `None` for a `Nack`, which
    /// is never answered.
    pub source: Option<&'a str>,
    /// Field 3 of every data kind.
    pub message_id: u64,
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
    /// Reads the routing fields of a `kind` body. As in protobuf, when a field repeats, the
    /// last occurrence wins; unknown fields are skipped.
    pub fn parse(kind: Kind, body: &'a [u8]) -> Result<DataView<'a>, ViewError> {
        if !kind.is_data() {
            return Err(ViewError::NotData(kind));
        }
        let bad = |reason| ViewError::Malformed { kind, reason };
        let mut buf = body;
        let (mut destination, mut field2, mut message_id) = ("", "", 0);
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf).map_err(|_| bad("bad field key"))?;
            match (tag, wire_type) {
                (1 | 2, WireType::LengthDelimited) => {
                    let len = decode_varint(&mut buf).map_err(|_| bad("bad length"))?;
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|l| *l <= buf.len())
                        .ok_or_else(|| bad("length past the end"))?;
                    let (field, rest) = buf.split_at(len);
                    buf = rest;
                    let s = std::str::from_utf8(field).map_err(|_| bad("invalid UTF-8"))?;
                    if tag == 1 {
                        destination = s;
                    } else {
                        field2 = s;
                    }
                }
                (3, WireType::Varint) => {
                    message_id = decode_varint(&mut buf).map_err(|_| bad("bad message_id"))?;
                }
                (1..=3, _) => return Err(bad("routing field with the wrong wire type")),
                _ => skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                    .map_err(|_| bad("bad field"))?,
            }
        }
        if destination.is_empty() {
            return Err(ViewError::MissingDestination(kind));
        }
        Ok(DataView {
            kind,
            destination,
            source: (kind != Kind::Nack).then_some(field2),
            message_id,
        })
    }
}
