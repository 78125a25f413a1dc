//! The Agent Gateway's control plane: peering sessions with other gateways, resource
//! synchronisation, heartbeats and hold timers, route computation, and the calls to the
//! embedded certificate authority and registration server. It publishes routing snapshots to
//! the dataplane's shards and never sits on their hot path.
//!
//! Status: empty. The peering issue builds it, and the daemon issue adds the `agw` binary here
//! (the workspace's default member, so `cargo run --release` starts the gateway).
