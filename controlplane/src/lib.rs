//! The Agent Gateway's control plane and the `agw` daemon.
//!
//! - [`control`]: the loop that owns the routing table: local agents from the shards, remote
//!   agents from the peers (through the path-vector RIB), the embedded registry.
//! - [`peering`]: sessions with peer gateways (sans-IO state machine, mutual-TLS driver).
//! - [`node`]: one gateway wired whole (authority, registry, relay, control plane).
//! - [`daemon`]: what the `agw` binary runs. (The demo is crate `agw-demo`.)
//! - [`admin`]: the operators' API over a Unix socket, which `agwctl` (`src/bin/agwctl.rs`)
//!   speaks.
//! - [`metrics`]: Prometheus metrics and health over HTTP.
//! - [`a2a_servers`]: names the registry's A2A server agents to the relay, which calls them.

pub mod a2a_servers;
pub mod admin;
pub mod control;
pub mod daemon;
pub mod metrics;
pub mod node;
pub mod peer_crls;
pub mod peering;
pub mod simulation;
pub mod translation;
