//! The table of message kinds: each kind's code on the wire, its protobuf type and its size cap,
//! declared once in [`message_kinds!`]. Everything that maps kinds to types derives from it.

use bytes::{BufMut, Bytes};
use prost::Message as _;

use crate::{
    frame::HARD_MAX_BODY,
    pb::{self, ErrorCode},
};

/// Body caps for kinds that carry no agent payload. Data kinds are capped by
/// [`FrameLimits::max_data_body`](crate::FrameLimits) instead.
const SMALL: u32 = 4 * 1024;
const CHAIN: u32 = 64 * 1024;
const TABLE: u32 = 1024 * 1024;
const LARGE: u32 = 4 * 1024 * 1024;

/// A protobuf message that travels in frames of one [`Kind`].
pub trait WireMessage: prost::Message + Default + Into<Message> + Sized {
    /// The kind of frame that carries this message.
    const KIND: Kind;
}

macro_rules! message_kinds {
    ($( $code:literal $variant:ident($ty:ty) max $max:expr, $doc:literal; )*) => {
        /// The kind of message a frame carries: byte 1 of the frame header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum Kind {
            $( #[doc = $doc] $variant = $code, )*
        }

        impl Kind {
            /// Every kind, in code order.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The kind with this code, if any.
            pub const fn from_code(code: u8) -> Option<Kind> {
                match code {
                    $( $code => Some(Kind::$variant), )*
                    _ => None,
                }
            }

            /// The kind's name, as in `docs/protocol.md`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Kind::$variant => stringify!($variant), )*
                }
            }

            /// What a frame of this kind carries, in one line.
            pub const fn doc(self) -> &'static str {
                match self {
                    $( Kind::$variant => $doc, )*
                }
            }

            /// Largest body of this kind a decoder accepts, before [`FrameLimits`] apply.
            ///
            /// [`FrameLimits`]: crate::FrameLimits
            pub const fn max_body(self) -> u32 {
                match self {
                    $( Kind::$variant => $max, )*
                }
            }
        }

        /// Any message of the protocol, decoded.
        #[derive(Debug, Clone, PartialEq)]
        #[non_exhaustive]
        pub enum Message {
            $( #[doc = $doc] $variant($ty), )*
        }

        impl Message {
            /// The kind of frame that carries this message.
            pub fn kind(&self) -> Kind {
                match self {
                    $( Message::$variant(_) => Kind::$variant, )*
                }
            }

            /// Decodes a frame body of the given kind. `body` is sliced, not copied, into the
            /// message's `bytes` fields.
            pub fn decode(kind: Kind, body: Bytes) -> Result<Message, DecodeError> {
                let result = match kind {
                    $( Kind::$variant => <$ty>::decode(body).map(Message::$variant), )*
                };
                result.map_err(|source| DecodeError { kind, source })
            }

            /// Length of the encoded body.
            pub fn encoded_len(&self) -> usize {
                match self {
                    $( Message::$variant(m) => m.encoded_len(), )*
                }
            }

            /// Appends the encoded body; the caller has written the frame header.
            pub(crate) fn encode_body(&self, buf: &mut impl BufMut) {
                match self {
                    $( Message::$variant(m) => m.encode_raw(buf), )*
                }
            }
        }

        $(
            impl WireMessage for $ty {
                const KIND: Kind = Kind::$variant;
            }

            impl From<$ty> for Message {
                fn from(m: $ty) -> Message {
                    Message::$variant(m)
                }
            }
        )*
    };
}

message_kinds! {
    // Data plane: routed by gateways, hop limit in the header.
    0x01 AgentMessage(pb::AgentMessage) max HARD_MAX_BODY, "An agent's message to another agent.";
    0x02 Ack(pb::Ack) max SMALL, "The destination agent acknowledges a message.";
    0x03 Nack(pb::Nack) max SMALL, "A gateway refuses a message, with the reason.";

    // Agent <-> AGw access.
    0x10 AccessChallenge(pb::AccessChallenge) max SMALL, "The gateway's nonce to sign.";
    0x11 AccessRequest(pb::AccessRequest) max CHAIN, "The agent's certificate and signature.";
    0x12 AccessReply(pb::AccessReply) max SMALL, "The gateway admits or refuses the agent.";
    0x13 Heartbeat(pb::Heartbeat) max SMALL, "The agent's periodic status.";
    0x14 HeartbeatAck(pb::HeartbeatAck) max SMALL, "The gateway acknowledges a heartbeat.";
    0x15 Deregister(pb::Deregister) max SMALL, "The agent leaves the gateway.";
    0x16 DeregisterReply(pb::DeregisterReply) max SMALL, "The gateway confirms the agent left.";

    // AGw <-> AGw peering.
    0x20 Open(pb::Open) max CHAIN, "A gateway opens a peering session.";
    0x21 OpenReply(pb::OpenReply) max CHAIN, "The peer accepts the session.";
    0x22 Keepalive(pb::Keepalive) max SMALL, "The session is alive.";
    0x23 ResourceUpdate(pb::ResourceUpdate) max TABLE, "Agent summaries advertised and withdrawn.";
    0x24 EndOfSync(pb::EndOfSync) max SMALL, "The full table has been sent.";
    0x25 Notification(pb::Notification) max SMALL, "An error report; the session closes.";
    0x26 Disconnect(pb::Disconnect) max SMALL, "The peer leaves for good.";

    // Agent <-> ARS.
    0x30 RegisterRequest(pb::RegisterRequest) max CHAIN, "An agent registers its profile.";
    0x31 RegisterReply(pb::RegisterReply) max CHAIN, "The registry's answer to a registration.";
    0x32 UpdateRequest(pb::UpdateRequest) max CHAIN, "An agent updates its profile.";
    0x33 UpdateReply(pb::UpdateReply) max CHAIN, "The registry's answer to an update.";
    0x34 DeregisterAgentRequest(pb::DeregisterAgentRequest) max SMALL, "An agent leaves the registry.";
    0x35 DeregisterAgentReply(pb::DeregisterAgentReply) max SMALL, "The registry's answer to a deregistration.";
    0x36 DiscoverRequest(pb::DiscoverRequest) max SMALL, "An agent looks for collaborators.";
    0x37 DiscoverReply(pb::DiscoverReply) max TABLE, "The matching agents, best first.";

    // Agent <-> ACA.
    0x40 CertificateApplication(pb::CertificateApplication) max CHAIN, "A CSR with identity materials.";
    0x41 CertificateReply(pb::CertificateReply) max CHAIN, "A new certificate, or the refusal.";
    0x42 RenewalRequest(pb::RenewalRequest) max CHAIN, "Renew a certificate before it expires.";
    0x43 RevocationRequest(pb::RevocationRequest) max SMALL, "Revoke a certificate.";
    0x44 RevocationReply(pb::RevocationReply) max SMALL, "The authority's answer to a revocation.";
    0x45 StatusQuery(pb::StatusQuery) max SMALL, "Ask a certificate's status.";
    0x46 StatusReply(pb::StatusReply) max SMALL, "Valid, expired, revoked or unknown.";
    0x47 CrlRequest(pb::CrlRequest) max SMALL, "Ask for the current CRL.";
    0x48 CrlReply(pb::CrlReply) max LARGE, "The current CRL, DER.";

    // Operator <-> AGw.
    0x50 AdminRequest(pb::AdminRequest) max CHAIN, "An operator's command.";
    0x51 AdminReply(pb::AdminReply) max LARGE, "The answer to an operator's command.";
}

impl Kind {
    /// Data kinds are routed between agents through gateways and carry a hop limit.
    pub const fn is_data(self) -> bool {
        matches!(self, Kind::AgentMessage | Kind::Ack | Kind::Nack)
    }

    /// The kind's code on the wire.
    pub const fn code(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A frame body that is not a valid message of its kind.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed {kind} body: {source}")]
pub struct DecodeError {
    /// The kind the frame header announced.
    pub kind: Kind,
    /// What prost found wrong.
    #[source]
    pub source: prost::DecodeError,
}

impl DecodeError {
    /// The code to report to the sender.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Malformed
    }
}

/// A message that cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The body exceeds what receivers accept for its kind.
    #[error("{kind} body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The message's kind.
        kind: Kind,
        /// Its encoded body length.
        len: usize,
        /// The limit it exceeds.
        max: u32,
    },
    /// Only data kinds carry a hop limit.
    #[error("{0} is not a data kind and takes no hop limit")]
    HopLimitOnControl(Kind),
}

impl EncodeError {
    /// The code to report for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            EncodeError::TooLarge { .. } => ErrorCode::TooLarge,
            EncodeError::HopLimitOnControl(_) => ErrorCode::InvalidField,
        }
    }
}
