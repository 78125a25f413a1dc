//! The Agent Registration Server (ARS, draft sections 2.3, 3.2 and 3.5): agents register
//! profiles with their ACA certificate, keep them current, and discover collaborators by
//! capability; profiles of other domains arrive as summaries through the gateways' resource
//! synchronisation.
//!
//! What it is: [`Registry`] (sans-IO: every method takes the time; state in an embedded
//! crash-safe store with an in-memory persistent index rebuilt at start), its owner thread
//! ([`owner::spawn`]: changed by commands, publishing a [`View`] snapshot that discovery
//! reads without waiting), its protocol service ([`Registry::handle`],
//! [`owner::RegistryHandle::serve`]) and what its port admits ([`service::REQUESTS`]). What
//! it is not: it accepts no connections; the gateway daemon (or a standalone server) carries
//! frames to it and tells it who the requester is.

pub mod index;
pub mod limits;
pub mod owner;
mod registry;
pub mod service;
pub mod store;
mod view;

use agw_proto::pb::{self, ErrorCode};
pub use owner::RegistryHandle;
pub use registry::{Change, MAX_DISCOVERY_LIMIT, ProfileLimits, Registry, RegistryConfig};
pub use view::View;

/// A refusal or failure, with the code the requester sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {detail}")]
pub struct RegistryError {
    /// The wire code.
    pub code: ErrorCode,
    /// For humans.
    pub detail: String,
    /// For RATE_LIMITED: when to retry, in milliseconds.
    pub retry_after_ms: u32,
}

impl RegistryError {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        RegistryError {
            code,
            detail: detail.into(),
            retry_after_ms: 0,
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> pb::Error {
        pb::Error {
            code: self.code as i32,
            detail: self.detail.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}
