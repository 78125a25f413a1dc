//! The Agent Gateway's load generator: agents over connections sending framed messages to each
//! other through a gateway, throughput counted by the gateway and CPU time read from `/proc`.
//!
//! Today it runs sender/receiver pairs against a gateway it starts in the same process
//! ([`InProcessGateway`]), closed loop (maximum throughput) or open loop at a rate with latency
//! from the intended send time (hdrhistogram), and writes JSON; the benchmark-harness issue adds
//! other patterns, scenarios across gateways and peers side by side.

pub mod cpu;
pub mod gateway;
pub mod nats;

pub use gateway::InProcessGateway;
