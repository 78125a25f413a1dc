//! The agent's side of the Agent Gateway.
//!
//! - [`certificates`]: the agent's key and certificate life cycle against the Agent
//!   Certificate Authority (key generation, applications, renewal at about 70% of the
//!   lifetime, status, revocation), built as protocol messages.
//! - [`agent`]: the connection to a gateway: access with a signed challenge, heartbeats,
//!   sending and receiving messages, NACKs, reconnecting.
//! - [`connection`]: a blocking request/reply connection for the ACA and ARS protocols.
//! - [`lifecycle`]: one [`lifecycle::Agent`] for all of it: enrollment, renewal while
//!   connected, registration, updates, discovery, deregistration, heartbeats on their own.
//! - [`session`]: conversations between agents that survive reconnects and restarts: ordered,
//!   stored, resent until acknowledged, request/response with deadlines, context carried.
//! - [`task`]: tasks in the draft's states; an orchestrator that runs a plan of subtasks on
//!   agents found by capability, moving a subtask when its agent fails it; a worker's side.
//! - [`store`]: the agent's embedded database of sessions and tasks.

pub mod access;
pub mod agent;
pub mod certificates;
pub mod connection;
pub mod lifecycle;
mod link;
pub mod session;
pub mod store;
pub mod task;
