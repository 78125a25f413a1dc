//! What a load runs over: agents, each with an outbox (messages to other agents, by index) and
//! an inbox, connected through a relay: this project's gateway, a nats-server, or nginx's stream
//! proxy. The patterns ([`crate::patterns`]) drive any of them the same way.

use std::time::Duration;

use bytes::Bytes;

/// Why a load could not be set up or run.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// What an agent's inbox brought.
#[derive(Debug)]
pub enum Event {
    /// A message's payload.
    Message(Bytes),
    /// A relay refused a message, with the reason's name.
    Nack(&'static str),
    /// Nothing within the read timeout (about a second).
    Idle,
    /// Something that is not counted (an ACK, a heartbeat's answer).
    Other,
}

/// Sends to other agents by their index.
pub trait Outbox: Send {
    /// Queues a message for agent `to`.
    fn queue(&mut self, to: usize, payload: Bytes) -> Result<(), Error>;
    /// Writes what is queued.
    fn flush(&mut self) -> Result<(), Error>;
}

/// Receives what other agents sent.
pub trait Inbox: Send {
    /// The next event; blocks up to about a second.
    fn recv(&mut self) -> Result<Event, Error>;
}

/// Which end of the load an agent is at. Senders are at A, receivers at B; across gateways, A
/// and B are at different gateways, and within one gateway a scenario may place them on the
/// same shard or on different ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where messages start.
    A,
    /// Where they end.
    B,
}

/// One connected agent.
pub struct Agent {
    /// Its sending half.
    pub outbox: Box<dyn Outbox>,
    /// Its receiving half.
    pub inbox: Box<dyn Inbox>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Agent")
    }
}

/// A relay under load.
pub trait Relay {
    /// Connects one agent per entry of `sides`; agent `i` reaches agent `j` as `j`.
    fn connect(&mut self, sides: &[Side]) -> Result<Vec<Agent>, Error>;
    /// CPU time (user and system) the relay has used so far, from `/proc`.
    fn cpu(&self) -> Option<Duration>;
}
