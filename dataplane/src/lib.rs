//! The Agent Gateway's relay dataplane: one glommio (io_uring) executor per core, each owning
//! its agent connections, forwarding framed agent messages by an immutable routing snapshot.
//!
//! [`Dataplane::start`] runs the shards; [`events::spawn_local_routes`] keeps the routes of
//! local agents from what the shards report. `docs/dataplane.md` tells the life of a frame.

pub mod a2a;
pub mod a2a_client;
pub mod a2a_grpc;
pub mod access;
pub mod adapter;
pub mod authorization;
mod clock;
pub mod config;
mod congestion;
pub mod counters;
pub mod events;
pub mod hugepages;
pub mod mqtt;
pub mod routing;
mod runtime;
mod shard;
pub mod translation;

pub use config::{DataplaneConfig, LiveLimits};
pub use counters::{CounterSnapshot, NACK_REASONS, ShardCounters};
pub use runtime::{A2aServers, Dataplane, DataplaneError, DrainReport, PeerLinks};
