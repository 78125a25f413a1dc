//! The Agent Gateway's control plane and the `agw` daemon.
//!
//! Today: [`daemon`] wires the embedded certificate authority, the relay's shards and the
//! keeper of local routes into one process. Peering, resource synchronisation, the embedded
//! registry, the admin API and `agwctl` come with the peering and daemon issues.

pub mod control;
pub mod daemon;
pub mod peering;
