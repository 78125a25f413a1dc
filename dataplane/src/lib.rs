//! The Agent Gateway's relay dataplane: one glommio (io_uring) executor per core, each owning
//! its agent connections, forwarding framed agent messages by an immutable routing snapshot.
//!
//! Status: the routing snapshot ([`routing`]) and the agent-access state machine ([`access`])
//! exist; the shards, connections and the relay
//! are built by the rest of the dataplane issue (`docs/architecture.md` describes the design).

pub mod access;
pub mod routing;
