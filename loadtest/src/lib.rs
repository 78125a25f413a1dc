//! The Agent Gateway's load generator: agents over connections sending framed messages to each
//! other through a gateway, throughput counted by the gateway and CPU time read from `/proc`.
//!
//! Today it runs the closed-loop maximum-throughput pattern against a gateway it starts in
//! the same process ([`InProcessGateway`]); the benchmark-harness issue adds open-loop load,
//! latency histograms, other patterns and peers side by side.

pub mod cpu;
pub mod gateway;

pub use gateway::InProcessGateway;
