//! The protocol adapters a connection may speak instead of native frames: on the agent port,
//! MQTT ([`crate::mqtt`]) and A2A over HTTP ([`crate::a2a`]); dialled by a shard, the
//! gateway's HTTP client of an A2A server agent ([`crate::a2a_client`]). All are sans-IO and
//! alike: the other end's bytes go to [`Adapter::input`], [`Adapter::from_client`] makes
//! native frames of them for the connection's decoder, [`Adapter::to_client`] takes each
//! frame the gateway queued for the other end, and [`Adapter::take_out`] gives the bytes to
//! write.

use std::time::Instant;

use agw_proto::{FrameEncoder, Message};
use bytes::BytesMut;

use crate::{
    a2a::A2aAdapter, a2a_client::A2aClient, a2a_grpc::GrpcAdapter, mqtt::Close, mqtt::MqttAdapter,
};

/// What a tick asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticked {
    /// Nothing.
    Nothing,
    /// Write what the adapter answered.
    Write,
    /// Relay the frames it made and dial the connection again.
    Redial,
}

/// One connection's adapter (boxed in the connection, so its variants' sizes may differ).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Adapter {
    /// An MQTT 3.1.1 or 5 client.
    Mqtt(MqttAdapter),
    /// An A2A client (JSON-RPC or HTTP+JSON over HTTP/1.1).
    A2a(A2aAdapter),
    /// An A2A client of the gRPC binding (HTTP/2).
    A2aGrpc(Box<GrpcAdapter>),
    /// The gateway's connection to an A2A server agent (it is the client).
    A2aServer(A2aClient),
}

impl Adapter {
    /// The buffer reads go into.
    pub fn input(&mut self) -> &mut BytesMut {
        match self {
            Adapter::Mqtt(a) => a.input(),
            Adapter::A2a(a) => a.input(),
            Adapter::A2aGrpc(a) => a.input(),
            Adapter::A2aServer(a) => a.input(),
        }
    }

    /// Bytes waiting to be written.
    pub fn has_out(&self) -> bool {
        match self {
            Adapter::Mqtt(a) => a.has_out(),
            Adapter::A2a(a) => a.has_out(),
            Adapter::A2aGrpc(a) => a.has_out(),
            Adapter::A2aServer(a) => a.has_out(),
        }
    }

    /// The bytes to write.
    pub fn take_out(&mut self) -> BytesMut {
        match self {
            Adapter::Mqtt(a) => a.take_out(),
            Adapter::A2a(a) => a.take_out(),
            Adapter::A2aGrpc(a) => a.take_out(),
            Adapter::A2aServer(a) => a.take_out(),
        }
    }

    /// The client's access succeeded.
    pub fn accessed(&mut self) {
        match self {
            Adapter::Mqtt(a) => a.accessed(),
            Adapter::A2a(a) => a.accessed(),
            Adapter::A2aGrpc(a) => a.accessed(),
            Adapter::A2aServer(_) => {}
        }
    }

    /// Decodes what the client sent: native frames go to `up`.
    pub fn from_client(&mut self, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        match self {
            Adapter::Mqtt(a) => a.from_client(now, up),
            Adapter::A2a(a) => a.from_client(now, up),
            Adapter::A2aGrpc(a) => a.from_client(now, up),
            Adapter::A2aServer(a) => a.from_server(up),
        }
    }

    /// A frame the gateway queued for the client; frames the adapter answers with itself (an
    /// A2A client's ACK of a reply) go to `up`.
    pub fn to_client(&mut self, message: Message, up: &mut FrameEncoder) {
        match self {
            Adapter::Mqtt(a) => a.to_client(message),
            Adapter::A2a(a) => a.to_client(message, up),
            Adapter::A2aGrpc(a) => a.to_client(message, up),
            Adapter::A2aServer(a) => a.to_server(message, up),
        }
    }

    /// Whether the connection is to close once the output is written.
    pub fn is_closed(&self) -> bool {
        match self {
            Adapter::Mqtt(_) | Adapter::A2aServer(_) => false,
            Adapter::A2a(a) => a.is_closed(),
            Adapter::A2aGrpc(a) => a.is_closed(),
        }
    }

    /// Time passes (each housekeeping tick): an A2A client's blocking request that waited
    /// too long is answered with its task as it stands; an A2A server's requests unanswered
    /// too long are NACKed into `up`. Returns what the connection must do.
    pub fn tick(&mut self, now: Instant, up: &mut FrameEncoder) -> Ticked {
        match self {
            Adapter::Mqtt(_) => Ticked::Nothing,
            Adapter::A2a(a) => {
                if a.tick(now) {
                    Ticked::Write
                } else {
                    Ticked::Nothing
                }
            }
            Adapter::A2aGrpc(a) => {
                if a.tick(now, up) {
                    Ticked::Write
                } else {
                    Ticked::Nothing
                }
            }
            Adapter::A2aServer(a) => {
                if a.tick(now, up) {
                    Ticked::Redial
                } else {
                    Ticked::Nothing
                }
            }
        }
    }

    /// Whether frames are made while writing (an A2A client's ACKs of replies, an A2A server's
    /// refusals), so the reader must be woken to relay them.
    pub fn answers_while_writing(&self) -> bool {
        matches!(self, Adapter::A2a(_) | Adapter::A2aServer(_))
    }
}
