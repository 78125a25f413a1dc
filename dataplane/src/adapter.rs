//! The protocol adapters a connection of the agent port may speak instead of native frames:
//! MQTT ([`crate::mqtt`]) and A2A over HTTP ([`crate::a2a`]). Both are sans-IO and alike: the
//! client's bytes go to [`Adapter::input`], [`Adapter::from_client`] makes native frames of
//! them for the connection's decoder, [`Adapter::to_client`] takes each frame the gateway
//! queued for the client, and [`Adapter::take_out`] gives the bytes to write.

use std::time::Instant;

use agw_proto::{FrameEncoder, Message};
use bytes::BytesMut;

use crate::{a2a::A2aAdapter, mqtt::Close, mqtt::MqttAdapter};

/// One connection's adapter.
#[derive(Debug)]
pub enum Adapter {
    /// An MQTT 3.1.1 or 5 client.
    Mqtt(MqttAdapter),
    /// An A2A client (JSON-RPC over HTTP/1.1).
    A2a(A2aAdapter),
}

impl Adapter {
    /// The buffer reads go into.
    pub fn input(&mut self) -> &mut BytesMut {
        match self {
            Adapter::Mqtt(a) => a.input(),
            Adapter::A2a(a) => a.input(),
        }
    }

    /// Bytes waiting to be written.
    pub fn has_out(&self) -> bool {
        match self {
            Adapter::Mqtt(a) => a.has_out(),
            Adapter::A2a(a) => a.has_out(),
        }
    }

    /// The bytes to write.
    pub fn take_out(&mut self) -> BytesMut {
        match self {
            Adapter::Mqtt(a) => a.take_out(),
            Adapter::A2a(a) => a.take_out(),
        }
    }

    /// The client's access succeeded.
    pub fn accessed(&mut self) {
        match self {
            Adapter::Mqtt(a) => a.accessed(),
            Adapter::A2a(a) => a.accessed(),
        }
    }

    /// Decodes what the client sent: native frames go to `up`.
    pub fn from_client(&mut self, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        match self {
            Adapter::Mqtt(a) => a.from_client(now, up),
            Adapter::A2a(a) => a.from_client(now, up),
        }
    }

    /// A frame the gateway queued for the client; frames the adapter answers with itself (an
    /// A2A client's ACK of a reply) go to `up`.
    pub fn to_client(&mut self, message: Message, up: &mut FrameEncoder) {
        match self {
            Adapter::Mqtt(a) => a.to_client(message),
            Adapter::A2a(a) => a.to_client(message, up),
        }
    }

    /// Whether the connection is to close once the output is written.
    pub fn is_closed(&self) -> bool {
        match self {
            Adapter::Mqtt(_) => false,
            Adapter::A2a(a) => a.is_closed(),
        }
    }
}
