//! The agent's side of the Agent Gateway.
//!
//! - [`certificates`]: the agent's key and certificate life cycle against the Agent
//!   Certificate Authority (key generation, applications, renewal at about 70% of the
//!   lifetime, status, revocation), built as protocol messages.
//! - [`agent`]: the connection to a gateway: access with a signed challenge, heartbeats,
//!   sending and receiving messages, NACKs, reconnecting.
//! - [`connection`]: a blocking request/reply connection for the ACA and ARS protocols.
//!
//! Discovery, sessions and task orchestration come with the registry and daemon issues.

pub mod access;
pub mod agent;
pub mod certificates;
pub mod connection;
mod link;
