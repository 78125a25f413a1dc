//! What the registry knows, as readers see it: the discovery index and the state of the
//! peers' agents. The registry changes its own [`View`]; its owner publishes a clone after
//! each batch of changes (cheap: the structures are persistent, see [`crate::index`]), and
//! discovery and the control plane read that snapshot without waiting for the owner.

use agw_proto::pb::{self, ErrorCode};
use imbl::{GenericHashSet, shared_ptr::DefaultSharedPtr};

use crate::{
    MAX_DISCOVERY_LIMIT, ProfileLimits, RegistryError,
    index::{Entry, Index, Origin, Query, normalise},
};

/// A persistent set of agent or gateway IDs.
pub(crate) type Set = GenericHashSet<String, hashbrown::DefaultHashBuilder, DefaultSharedPtr>;

/// The registry's profiles and its peers' states, as of one moment.
#[derive(Debug, Clone)]
pub struct View {
    pub(crate) index: Index,
    /// Peers whose agents are not discovered (their session failed).
    pub(crate) inapplicable: Set,
    /// Peers whose gateways are temporarily offline: their agents are discovered as such.
    pub(crate) offline_peers: Set,
    /// Local agents that left their gateway (deregistered from the relay): their profiles
    /// stay, offline, but peers were told to forget them until they come back.
    pub(crate) departed: Set,
    pub(crate) limits: ProfileLimits,
    pub(crate) default_limit: usize,
}

impl View {
    pub(crate) fn new(limits: ProfileLimits, default_limit: usize) -> View {
        View {
            index: Index::default(),
            inapplicable: Set::default(),
            offline_peers: Set::default(),
            departed: Set::default(),
            limits,
            default_limit,
        }
    }

    /// Profiles known, local and remote.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no profile is known.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// `agent`'s profile, local or a peer's, if it has one here.
    pub fn profile(&self, agent: &str) -> Option<&pb::AgentProfile> {
        self.index.get(agent).map(|e| &e.profile)
    }

    /// The status in `agent`'s profile, if it has one here.
    pub fn status_of(&self, agent: &str) -> Option<pb::Status> {
        self.index.get(agent).map(|e| e.profile.status())
    }

    /// Whether `agent` is registered here (a local profile).
    pub fn is_local(&self, agent: &str) -> bool {
        self.index
            .get(agent)
            .is_some_and(|e| e.origin == Origin::Local)
    }

    /// Summaries of every local agent, for a full sync to a new peer.
    pub fn local_summaries(&self) -> Vec<pb::AgentSummary> {
        self.index
            .entries()
            .filter(|e| e.origin == Origin::Local && !self.departed.contains(&e.profile.agent))
            .map(|e| summary(&e.profile))
            .collect()
    }

    /// The summary of one local agent, as [`View::local_summaries`] gives it.
    pub fn local_summary(&self, agent: &str) -> Option<pb::AgentSummary> {
        self.index
            .get(agent)
            .filter(|e| e.origin == Origin::Local && !self.departed.contains(agent))
            .map(|e| summary(&e.profile))
    }

    /// Every local agent and the status in its profile (what an operator's listing needs,
    /// without the summaries' capabilities).
    pub fn local_statuses(&self) -> Vec<(String, pb::Status)> {
        self.index
            .entries()
            .filter(|e| e.origin == Origin::Local)
            .map(|e| (e.profile.agent.clone(), e.profile.status()))
            .collect()
    }

    /// Discovery (draft 3.2.3) without the requester's rate limit: the best matches, best
    /// first (see [`crate::index`] for the ranking).
    pub fn discover(
        &self,
        req: &pb::DiscoverRequest,
    ) -> Result<Vec<pb::AgentProfile>, RegistryError> {
        if req.capabilities.is_empty() {
            return Err(RegistryError::new(
                ErrorCode::MissingField,
                "discovery needs a capability",
            ));
        }
        let limits = &self.limits;
        if req.capabilities.len() > limits.max_capabilities
            || req.languages.len() > limits.max_list
            || req.protocols.len() > limits.max_list
            || req
                .capabilities
                .iter()
                .chain(&req.languages)
                .any(|s| s.len() > limits.max_field)
        {
            return Err(RegistryError::new(
                ErrorCode::InvalidField,
                "discovery request too large",
            ));
        }
        let limit = match req.limit {
            0 => self.default_limit,
            n => usize::try_from(n).unwrap_or(MAX_DISCOVERY_LIMIT),
        }
        .min(MAX_DISCOVERY_LIMIT);
        let query = Query {
            capabilities: req.capabilities.iter().map(|c| normalise(c)).collect(),
            protocols: req.protocols.clone(),
            languages: req.languages.clone(),
            domain: req.domain.clone(),
            online_only: req.online_only,
            limit,
        };
        let (inapplicable, offline) = (&self.inapplicable, &self.offline_peers);
        let online_only = query.online_only;
        Ok(self
            .index
            .discover(&query, |peer| {
                !(inapplicable.contains(peer) || online_only && offline.contains(peer))
            })
            .into_iter()
            .map(|e| {
                let mut profile = e.profile.clone();
                if let Origin::Remote { peer, .. } = &e.origin
                    && offline.contains(peer)
                {
                    profile.status = pb::Status::TemporarilyOffline as i32;
                }
                profile
            })
            .collect())
    }

    /// The agents advertised by `peer`.
    pub(crate) fn agents_from(&self, peer: &str) -> Vec<String> {
        self.index
            .entries()
            .filter(|e| matches!(&e.origin, Origin::Remote { peer: p, .. } if p == peer))
            .map(|e| e.profile.agent.clone())
            .collect()
    }

    /// Whether `agent`'s entry came from `peer`.
    pub(crate) fn is_from(&self, agent: &str, peer: &str) -> bool {
        matches!(self.index.get(agent).map(|e| &e.origin), Some(Origin::Remote { peer: p, .. }) if p == peer)
    }

    pub(crate) fn get(&self, agent: &str) -> Option<&Entry> {
        self.index.get(agent)
    }
}

/// A local profile as peers hear of it.
pub(crate) fn summary(p: &pb::AgentProfile) -> pb::AgentSummary {
    pb::AgentSummary {
        agent: p.agent.clone(),
        capabilities: p.capabilities.clone(),
        protocols: p.protocols.clone(),
        languages: p.languages.clone(),
        status: p.status,
        origin: String::new(),
        path: Vec::new(),
        version: p.version,
    }
}
