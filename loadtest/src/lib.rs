//! The Agent Gateway's load generator: agents sending framed messages to each other through a
//! relay, in a pattern (stream, ping-pong, fan-in, fan-out), closed loop (maximum throughput)
//! or open loop at a rate with latency from the intended send time (hdrhistogram); the relay's
//! CPU time read from `/proc`.
//!
//! Relays ([`transport::Relay`]): this project's gateway in scenarios within one gateway and
//! across two or three ([`agw`]), nats-server ([`nats`]) and nginx's stream proxy ([`nginx`]),
//! MQTT agents through the gateway's MQTT adapter or mosquitto ([`mqtt`]), A2A clients'
//! round trips to native agents through the gateway's A2A adapter ([`a2a`]),
//! the same patterns over each ([`patterns`]); and the memory an idle agent connection costs a
//! running `agw` ([`idle`]).

pub mod a2a;
pub mod agw;
pub mod cpu;
pub mod idle;
pub mod mqtt;
pub mod nats;
pub mod nginx;
pub mod patterns;
pub mod transport;

pub use agw::InProcessGateway;
