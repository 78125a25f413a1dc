//! The agent's side of the Agent Gateway.
//!
//! What it is today: the agent's key and certificate life cycle against the Agent Certificate
//! Authority ([`certificates`]): key generation, certificate applications, renewal at about
//! 70% of the lifetime, status queries and revocation requests, built as protocol messages
//! (sans-IO: the caller carries them over its connection). Access to gateways, messaging,
//! discovery and sessions come with the dataplane and registry issues.

pub mod access;
pub mod certificates;
pub mod connection;
