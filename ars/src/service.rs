//! The ARS's side of the wire protocol: each request in, its reply out.

use std::time::SystemTime;

use agw_proto::{Admission, Kind, Message, pb};

use crate::{Registry, RegistryError};

/// Requests answered from memory alone (the owner's published snapshot, see
/// [`crate::owner::RegistryHandle::serve`]): a server may answer them on its connection's
/// task rather than its blocking pool.
pub const QUICK: Admission = Admission::only(&[Kind::DiscoverRequest], 64 * 1024);

/// What the registry's port takes: its requests, each within 64 KiB (a profile is at most
/// 8 KiB, a registration's certificate chain a few).
pub const REQUESTS: Admission = Admission::only(
    &[
        Kind::RegisterRequest,
        Kind::UpdateRequest,
        Kind::DeregisterAgentRequest,
        Kind::DiscoverRequest,
    ],
    64 * 1024,
);

impl Registry {
    /// Answers one registry request from `requester` (the identity its connection
    /// authenticated). Any other kind returns `None`: the caller answers it as unexpected.
    pub fn handle(
        &mut self,
        request: &Message,
        requester: &str,
        now: SystemTime,
    ) -> Option<Message> {
        let wire = |e: RegistryError| Some(e.to_wire());
        Some(match request {
            Message::RegisterRequest(req) => {
                let (error, profile) = split(self.register(req, Some(requester), now));
                pb::RegisterReply {
                    request_id: req.request_id,
                    error: error.and_then(wire),
                    profile,
                }
                .into()
            }
            Message::UpdateRequest(req) => {
                let (error, profile) = split(self.update(req, requester));
                pb::UpdateReply {
                    request_id: req.request_id,
                    error: error.and_then(wire),
                    profile,
                }
                .into()
            }
            Message::DeregisterAgentRequest(req) => pb::DeregisterAgentReply {
                request_id: req.request_id,
                error: self
                    .deregister(&req.resource_id, requester)
                    .err()
                    .and_then(wire),
            }
            .into(),
            Message::DiscoverRequest(req) => {
                discover_reply(req.request_id, self.discover(req, requester, now))
            }
            _ => return None,
        })
    }
}

/// The reply to discovery `request_id`: its agents, or why not.
pub(crate) fn discover_reply(
    request_id: u64,
    found: Result<Vec<pb::AgentProfile>, RegistryError>,
) -> Message {
    match found {
        Ok(agents) => pb::DiscoverReply {
            request_id,
            error: None,
            agents,
        },
        Err(e) => pb::DiscoverReply {
            request_id,
            error: Some(e.to_wire()),
            agents: Vec::new(),
        },
    }
    .into()
}

fn split<T>(r: Result<T, RegistryError>) -> (Option<RegistryError>, Option<T>) {
    match r {
        Ok(v) => (None, Some(v)),
        Err(e) => (Some(e), None),
    }
}
