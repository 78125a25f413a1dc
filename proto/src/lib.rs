//! The Agent Gateway wire protocol, shared by the gateway, the certificate authority (ACA), the
//! registration server (ARS), the agent SDK and the load tool.
//!
//! What it is: the protobuf messages generated from `schema/agw/v1/*.proto` ([`pb`]), the one
//! table of message kinds ([`Kind`], [`Message`]), the sans-IO frame codec ([`frame`]), the
//! relay's zero-allocation view of data frames ([`DataView`]), the error codes
//! ([`pb::ErrorCode`]), the identity types ([`identity`]) and the byte strings that signatures
//! cover ([`signing`]).
//!
//! What it is not: it opens no socket and reads no clock, and it holds no policy. Callers decide
//! which kinds a connection may send and which errors close it; `docs/protocol.md` says what the
//! gateway does.

pub mod a2a_url;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod identity;
mod kind;
pub mod rate;
pub mod signing;
mod view;

pub use frame::{
    Admission, DEFAULT_HOP_LIMIT, Frame, FrameDecoder, FrameEncoder, FrameError, FrameHeader,
    FrameLimits, HARD_MAX_BODY, HEADER_LEN, PROTOCOL_VERSION, WriteBatch,
};
pub use kind::{DecodeError, EncodeError, Kind, Message, WireMessage};
pub use view::{DataView, LanguageView, ViewError};

/// The generated protobuf types of package `agw.v1`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/agw.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/error_meanings.rs"));
}
