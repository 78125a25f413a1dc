//! The registry: registration, information management and discovery (draft 3.2), and the
//! summaries of other domains' agents (draft 3.5). Sans-IO: every method takes the current
//! time; one owner changes it ([`crate::owner`]), and readers see its [`View`].

use std::{path::PathBuf, time::SystemTime};

use agw_aca::tls::CertificateChecker;
use agw_proto::{
    identity::{AgentId, Domain, GatewayId, ResourceId},
    pb::{self, ErrorCode},
};
use hashbrown::HashMap;
use ring::rand::{SecureRandom, SystemRandom};

use crate::{
    RegistryError,
    index::{Entry, Origin, normalise},
    limits::DiscoveryLimiter,
    store::{Embedded, ProfileStore, StoreError, StoredProfile},
    view::{View, summary},
};

/// Bounds on what a profile may hold.
#[derive(Debug, Clone, Copy)]
pub struct ProfileLimits {
    /// Capabilities per profile. Default 32.
    pub max_capabilities: usize,
    /// Protocols, and languages, per profile. Default 16.
    pub max_list: usize,
    /// Bytes of any one capability, language or address. Default 256. (The description is
    /// bounded only by `max_profile_bytes`.)
    pub max_field: usize,
    /// Encoded profile size. Default 8 KiB.
    pub max_profile_bytes: usize,
}

impl Default for ProfileLimits {
    fn default() -> Self {
        ProfileLimits {
            max_capabilities: 32,
            max_list: 16,
            max_field: 256,
            max_profile_bytes: 8 * 1024,
        }
    }
}

/// How the registry is set up.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Its domain.
    pub domain: Domain,
    /// Where its database lives.
    pub data_dir: PathBuf,
    /// Discovery requests each agent may make per minute. Default 60.
    pub discovery_per_minute: u32,
    /// Registrations one certificate may make, over its life. Default 16.
    pub max_registrations_per_certificate: u32,
    /// Results per discovery when the request sets no limit. Default 20; at most 100.
    pub default_discovery_limit: usize,
    /// Profile bounds.
    pub limits: ProfileLimits,
    /// Where this domain's agents reach their gateway's relay: the address discovery gives
    /// for agents of other domains, which the relay reaches for them (by agent ID). Default
    /// empty (a registry without a relay).
    pub agent_access: String,
    /// The domain's etcd mirror (issue 19): profiles are kept there, shared by every gateway
    /// of the domain, instead of in `ars.redb`.
    #[cfg(feature = "etcd")]
    pub shared: Option<agw_etcd::Shared>,
}

impl RegistryConfig {
    /// Defaults for `domain` with its database under `data_dir`.
    pub fn new(domain: Domain, data_dir: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            domain,
            data_dir: data_dir.into(),
            discovery_per_minute: 60,
            max_registrations_per_certificate: 16,
            default_discovery_limit: 20,
            limits: ProfileLimits::default(),
            agent_access: String::new(),
            #[cfg(feature = "etcd")]
            shared: None,
        }
    }
}

/// Most results a discovery returns.
pub const MAX_DISCOVERY_LIMIT: usize = 100;

/// A change of this domain's agents, for the control plane to advertise to peers.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An agent registered or changed.
    Advertise(pb::AgentSummary),
    /// An agent left.
    Withdraw(String),
}

/// An Agent Registration Server for one domain.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    store: Box<dyn ProfileStore>,
    /// Profiles and peers' states: what readers see, published by the owner.
    view: View,
    checker: CertificateChecker,
    /// resource ID -> (agent ID, serial of the certificate it registered with), local profiles.
    resources: HashMap<String, (String, Vec<u8>)>,
    limiter: DiscoveryLimiter,
    /// Per peer in a full sync: its agents not advertised again yet (stale at END-OF-SYNC).
    resyncing: HashMap<String, hashbrown::HashSet<String>>,
    changes: Vec<Change>,
    rng: SystemRandom,
}

fn internal(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::new(ErrorCode::Internal, e.to_string())
}

/// A store's failure as the requester hears it: a conflict with another gateway of the
/// domain and a shared store that takes no writes have codes of their own (both: try again).
fn store_failed(e: StoreError) -> RegistryError {
    let code = match e {
        StoreError::Conflict => ErrorCode::StoreConflict,
        StoreError::Unavailable(_) => ErrorCode::StoreUnavailable,
        StoreError::Failed(_) => ErrorCode::Internal,
    };
    RegistryError::new(code, e.to_string())
}

/// The domain's etcd when configured, else the embedded database in the data directory.
fn open_store(config: &RegistryConfig) -> Result<Box<dyn ProfileStore>, RegistryError> {
    #[cfg(feature = "etcd")]
    if let Some(mirror) = &config.shared {
        return Ok(Box::new(crate::store::shared::Shared::new(mirror.clone())));
    }
    let embedded = Embedded::open(&config.data_dir.join("ars.redb")).map_err(store_failed)?;
    Ok(Box::new(embedded))
}

impl Registry {
    /// Opens the registry, rebuilding the index from the stored profiles. `checker` verifies
    /// certificates against the authority's trust anchor and current CRL.
    pub fn open(
        config: RegistryConfig,
        checker: CertificateChecker,
    ) -> Result<Registry, RegistryError> {
        agw_aca::private::private_dir(&config.data_dir).map_err(internal)?;
        let store = open_store(&config)?;
        let mut registry = Registry {
            view: View::new(config.limits, config.default_discovery_limit),
            limiter: DiscoveryLimiter::new(config.discovery_per_minute),
            config,
            store,
            checker,
            resources: HashMap::new(),
            resyncing: HashMap::new(),
            changes: Vec::new(),
            rng: SystemRandom::new(),
        };
        for stored in registry.store.all().map_err(store_failed)? {
            if let Some(profile) = stored.profile {
                registry.resources.insert(
                    profile.resource_id.clone(),
                    (profile.agent.clone(), stored.certificate_serial),
                );
                registry.view.index.upsert(Entry {
                    profile,
                    origin: Origin::Local,
                });
            }
        }
        Ok(registry)
    }

    /// Replaces the certificate checker (a new CRL was issued).
    pub fn set_certificate_checker(&mut self, checker: CertificateChecker) {
        self.checker = checker;
    }

    /// What readers see now: a snapshot that later changes leave as it is (cheap: it shares
    /// the registry's persistent structures).
    pub fn snapshot(&self) -> View {
        self.view.clone()
    }

    /// Discoveries each requester may make per minute.
    pub fn discovery_per_minute(&self) -> u32 {
        self.config.discovery_per_minute
    }

    /// What the registry knows now.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Registration (draft 3.2.1). `requester` is the identity the connection authenticated
    /// (mTLS), if any; it must be the certificate's.
    pub fn register(
        &mut self,
        req: &pb::RegisterRequest,
        requester: Option<&str>,
        now: SystemTime,
    ) -> Result<pb::AgentProfile, RegistryError> {
        let checked = self
            .checker
            .check(&req.certificate_chain, now)
            .map_err(|e| RegistryError::new(e.code(), e.to_string()))?;
        let mut profile = req
            .profile
            .clone()
            .ok_or_else(|| RegistryError::new(ErrorCode::RegistrationIncomplete, "no profile"))?;
        if profile.agent.is_empty() {
            profile.agent = checked.identity.clone();
        }
        if profile.agent != checked.identity || requester.is_some_and(|r| r != checked.identity) {
            return Err(RegistryError::new(
                ErrorCode::IdentityMismatch,
                format!(
                    "the certificate is {}, not {}",
                    checked.identity, profile.agent
                ),
            ));
        }
        let agent = AgentId::parse(&profile.agent)
            .map_err(|e| RegistryError::new(ErrorCode::InvalidField, e.to_string()))?;
        if agent.domain() != self.config.domain.as_str() {
            return Err(RegistryError::new(
                ErrorCode::IdentityOutsideDomain,
                format!("{agent} is not of {}", self.config.domain),
            ));
        }
        self.check_profile(&profile)?;
        if self.view.get(agent.as_str()).is_some() {
            return Err(RegistryError::new(
                ErrorCode::DuplicateName,
                format!("{agent} is already registered"),
            ));
        }
        let made = self
            .store
            .registrations(&checked.serial)
            .map_err(store_failed)?;
        if made >= self.config.max_registrations_per_certificate {
            return Err(RegistryError::new(
                ErrorCode::RegistrationLimit,
                format!("this certificate made {made} registrations"),
            ));
        }
        profile.resource_id = self.fresh_resource_id()?;
        profile.domain = self.config.domain.to_string();
        profile.gateway.clear();
        profile.version = 1;
        if profile.status == pb::Status::Unspecified as i32 {
            profile.status = pb::Status::Running as i32;
        }
        let stored = StoredProfile {
            profile: Some(profile.clone()),
            certificate_serial: checked.serial.clone(),
        };
        self.store.put(&stored, true).map_err(store_failed)?;
        self.resources.insert(
            profile.resource_id.clone(),
            (profile.agent.clone(), checked.serial),
        );
        self.publish_local(profile.clone());
        Ok(profile)
    }

    /// Information update (draft 3.2.2) by the profile's owner: the fields sent replace the
    /// stored ones; the identity, resource ID and domain stay.
    pub fn update(
        &mut self,
        req: &pb::UpdateRequest,
        requester: &str,
    ) -> Result<pb::AgentProfile, RegistryError> {
        let new = req
            .profile
            .as_ref()
            .ok_or_else(|| RegistryError::new(ErrorCode::MissingField, "no profile"))?;
        let current = self.owned(&new.resource_id, requester)?;
        let mut profile = new.clone();
        profile.agent = current.agent.clone();
        profile.domain = current.domain.clone();
        profile.gateway.clear();
        profile.version = current.version + 1;
        if profile.status == pb::Status::Unspecified as i32 {
            profile.status = current.status;
        }
        self.check_profile(&profile)?;
        let serial = self
            .resources
            .get(&profile.resource_id)
            .map(|(_, serial)| serial.clone())
            .unwrap_or_default();
        self.store
            .put(
                &StoredProfile {
                    profile: Some(profile.clone()),
                    certificate_serial: serial,
                },
                false,
            )
            .map_err(store_failed)?;
        self.publish_local(profile.clone());
        Ok(profile)
    }

    /// Deregistration (draft 3.2.2) by the owner: the profile leaves the discoverable pool.
    pub fn deregister(&mut self, resource_id: &str, requester: &str) -> Result<(), RegistryError> {
        let current = self.owned(resource_id, requester)?;
        self.store.delete(resource_id).map_err(store_failed)?;
        self.resources.remove(resource_id);
        self.view.index.remove(&current.agent);
        self.view.departed.remove(&current.agent);
        self.push_change(Change::Withdraw(current.agent));
        Ok(())
    }

    /// Sets a local agent's online status, as its gateway learns it (access, heartbeats,
    /// hold time). Not stored: a restarted gateway learns it again.
    pub fn set_status(&mut self, agent: &str, status: pb::Status) {
        let Some(entry) = self.view.get(agent) else {
            return;
        };
        if entry.origin != Origin::Local || entry.profile.status == status as i32 {
            return;
        }
        let mut profile = entry.profile.clone();
        profile.status = status as i32;
        profile.version += 1;
        self.publish_local(profile);
    }

    /// A local agent left its gateway (it deregistered from the relay; the draft's agent
    /// offline): its profile stays, offline, and peers are told to withdraw it (not an
    /// OFFLINE summary they would keep) until its status changes again.
    pub fn set_departed(&mut self, agent: &str) {
        let Some(entry) = self.view.get(agent) else {
            return;
        };
        if entry.origin != Origin::Local || self.view.departed.contains(agent) {
            return;
        }
        let mut profile = entry.profile.clone();
        profile.status = pb::Status::Offline as i32;
        profile.version += 1;
        self.view.index.upsert(Entry {
            profile,
            origin: Origin::Local,
        });
        self.view.departed.insert(agent.to_owned());
        self.push_change(Change::Withdraw(agent.to_owned()));
    }

    /// Discovery (draft 3.2.3), rate-limited per requester.
    pub fn discover(
        &mut self,
        req: &pb::DiscoverRequest,
        requester: &str,
        now: SystemTime,
    ) -> Result<Vec<pb::AgentProfile>, RegistryError> {
        self.limiter.take(requester, now)?;
        self.view.discover(req)
    }

    /// Applies a RESOURCE_UPDATE from `peer`. Summaries that are invalid, loop back to
    /// `local_gateway`, or claim this domain are refused one by one (returned with their
    /// code); the others apply. Remote profiles name the agent's gateway (the summary's
    /// origin) and, as their address, this domain's relay ([`RegistryConfig::agent_access`]):
    /// an agent reaches another domain's agent through its own gateway.
    pub fn apply_remote(
        &mut self,
        peer: &GatewayId,
        local_gateway: &GatewayId,
        update: &pb::ResourceUpdate,
    ) -> Vec<(String, ErrorCode)> {
        let mut refused = Vec::new();
        if let Some(pending) = self.resyncing.get_mut(peer.as_str()) {
            for summary in &update.advertise {
                pending.remove(&summary.agent);
            }
        }
        for agent in &update.withdraw {
            if self.view.is_from(agent, peer.as_str()) {
                self.view.index.remove(agent);
            }
        }
        for summary in &update.advertise {
            match self.remote_entry(peer, local_gateway, summary) {
                Ok(Some(entry)) => self.view.index.upsert(entry),
                // Older than what we have: nothing to do.
                Ok(None) => {}
                Err(code) => {
                    // A bad summary withdraws what we had of that agent from this peer.
                    if self.view.is_from(&summary.agent, peer.as_str()) {
                        self.view.index.remove(&summary.agent);
                    }
                    refused.push((summary.agent.clone(), code));
                }
            }
        }
        refused
    }

    fn remote_entry(
        &self,
        peer: &GatewayId,
        local_gateway: &GatewayId,
        s: &pb::AgentSummary,
    ) -> Result<Option<Entry>, ErrorCode> {
        let agent = AgentId::parse(&s.agent).map_err(|_| ErrorCode::BadSummary)?;
        if agent.domain() == self.config.domain.as_str() {
            return Err(ErrorCode::BadSummary);
        }
        if s.path.iter().any(|g| g == local_gateway.as_str()) {
            return Err(ErrorCode::PathLoop);
        }
        let limits = &self.config.limits;
        if s.capabilities.len() > limits.max_capabilities
            || s.languages.len() > limits.max_list
            || s.protocols.len() > limits.max_list
            || s.capabilities
                .iter()
                .chain(&s.languages)
                .any(|c| c.len() > limits.max_field)
        {
            return Err(ErrorCode::BadSummary);
        }
        if let Some(existing) = self.view.get(agent.as_str()) {
            match &existing.origin {
                Origin::Local => return Err(ErrorCode::BadSummary),
                Origin::Remote { peer: p, .. }
                    if p == peer.as_str() && existing.profile.version > s.version =>
                {
                    return Ok(None);
                }
                _ => {}
            }
        }
        Ok(Some(Entry {
            profile: pb::AgentProfile {
                resource_id: String::new(),
                agent: s.agent.clone(),
                description: String::new(),
                capabilities: s.capabilities.clone(),
                protocols: s.protocols.clone(),
                languages: s.languages.clone(),
                // Agents here reach it through their own gateway's relay, by agent ID; the
                // relay carries it to its domain's gateway.
                address: self.config.agent_access.clone(),
                status: s.status,
                domain: agent.domain().to_owned(),
                version: s.version,
                gateway: s.origin.clone(),
                // Called by its own gateway only.
                a2a_url: String::new(),
                // Translated and converted for by its own gateway only.
                text_fields: Vec::new(),
                accepts: Vec::new(),
                descriptor_set: Default::default(),
                message_type: String::new(),
            },
            origin: Origin::Remote {
                peer: peer.to_string(),
                hops: u32::try_from(s.path.len()).unwrap_or(u32::MAX),
            },
        }))
    }

    /// Marks a peer's agents (in)applicable: a silent peer's agents are not discovered until it
    /// returns.
    pub fn set_peer_applicable(&mut self, peer: &GatewayId, applicable: bool) {
        if applicable {
            self.view.inapplicable.remove(peer.as_str());
        } else {
            self.view.inapplicable.insert(peer.to_string());
        }
    }

    /// A session with `peer` came up and its full table follows: what it advertised before
    /// and does not advertise again by [`Registry::end_of_sync`] is stale.
    pub fn begin_sync(&mut self, peer: &GatewayId) {
        let before = self.view.agents_from(peer.as_str());
        self.resyncing
            .insert(peer.to_string(), before.into_iter().collect());
    }

    /// `peer`'s full table is in: its agents it did not advertise again are forgotten.
    /// Returns how many.
    pub fn end_of_sync(&mut self, peer: &GatewayId) -> usize {
        let Some(stale) = self.resyncing.remove(peer.as_str()) else {
            return 0;
        };
        let mut gone = 0;
        for agent in stale {
            if self.view.is_from(&agent, peer.as_str()) {
                self.view.index.remove(&agent);
                gone += 1;
            }
        }
        gone
    }

    /// `peer`'s gateway status (OPEN, KEEPALIVE): while `TEMPORARILY_OFFLINE`, its agents
    /// are discovered as temporarily offline (and not by `online_only` queries).
    pub fn set_peer_status(&mut self, peer: &GatewayId, status: pb::Status) {
        if status == pb::Status::TemporarilyOffline {
            self.view.offline_peers.insert(peer.to_string());
        } else {
            self.view.offline_peers.remove(peer.as_str());
        }
    }

    /// Forgets a peer and its agents (DISCONNECT).
    pub fn remove_peer(&mut self, peer: &GatewayId) {
        for agent in self.view.agents_from(peer.as_str()) {
            self.view.index.remove(&agent);
        }
        self.view.inapplicable.remove(peer.as_str());
        self.view.offline_peers.remove(peer.as_str());
        self.resyncing.remove(peer.as_str());
    }

    /// A change another gateway of the domain made in the shared store (issue 19): its
    /// agents are this domain's, discoverable and advertised here as they are there.
    pub fn apply_shared(&mut self, resource_id: &str, stored: Option<StoredProfile>) {
        match stored.and_then(|s| Some((s.profile?, s.certificate_serial))) {
            Some((profile, serial)) => {
                self.resources
                    .insert(resource_id.to_owned(), (profile.agent.clone(), serial));
                self.publish_local(profile);
            }
            None => {
                if let Some((agent, _)) = self.resources.remove(resource_id) {
                    self.view.index.remove(&agent);
                    self.view.departed.remove(&agent);
                    self.push_change(Change::Withdraw(agent));
                }
            }
        }
    }

    /// Changes of local agents since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    fn push_change(&mut self, change: Change) {
        self.changes.push(change);
    }

    fn publish_local(&mut self, profile: pb::AgentProfile) {
        self.view.departed.remove(&profile.agent);
        self.push_change(Change::Advertise(summary(&profile)));
        self.view.index.upsert(Entry {
            profile,
            origin: Origin::Local,
        });
    }

    fn owned(&self, resource_id: &str, requester: &str) -> Result<pb::AgentProfile, RegistryError> {
        let (agent, _) = self.resources.get(resource_id).ok_or_else(|| {
            RegistryError::new(
                ErrorCode::UnknownResource,
                format!("no profile {resource_id}"),
            )
        })?;
        if agent != requester {
            return Err(RegistryError::new(
                ErrorCode::NotOwner,
                format!("{resource_id} belongs to {agent}"),
            ));
        }
        self.view
            .get(agent)
            .map(|e| e.profile.clone())
            .ok_or_else(|| internal("index lost a local profile"))
    }

    fn check_profile(&self, p: &pb::AgentProfile) -> Result<(), RegistryError> {
        use prost::Message as _;
        let l = &self.config.limits;
        let too =
            |what: &str| RegistryError::new(ErrorCode::InvalidField, format!("{what} too long"));
        if p.encoded_len() > l.max_profile_bytes {
            return Err(RegistryError::new(
                ErrorCode::ProfileTooLarge,
                format!(
                    "profile of {} bytes; at most {}",
                    p.encoded_len(),
                    l.max_profile_bytes
                ),
            ));
        }
        if p.capabilities.is_empty() {
            return Err(RegistryError::new(
                ErrorCode::RegistrationIncomplete,
                "no capability",
            ));
        }
        if p.capabilities.len() > l.max_capabilities {
            return Err(RegistryError::new(
                ErrorCode::TooManyCapabilities,
                format!(
                    "{} capabilities; at most {}",
                    p.capabilities.len(),
                    l.max_capabilities
                ),
            ));
        }
        if p.protocols.len() > l.max_list
            || p.languages.len() > l.max_list
            || p.text_fields.len() > l.max_list
            || p.accepts.len() > l.max_list
        {
            return Err(too("protocol, language, text field or media type list"));
        }
        if p.accepts
            .iter()
            .any(|m| !m.contains('/') || m.chars().any(char::is_whitespace))
        {
            return Err(RegistryError::new(
                ErrorCode::InvalidField,
                "accepts: media types, type/subtype",
            ));
        }
        if !p.descriptor_set.is_empty() || !p.message_type.is_empty() {
            let schema =
                prost_reflect::DescriptorPool::decode(p.descriptor_set.as_ref()).map_err(|e| {
                    RegistryError::new(ErrorCode::InvalidField, format!("descriptor_set: {e}"))
                })?;
            if !p.message_type.is_empty() && schema.get_message_by_name(&p.message_type).is_none() {
                return Err(RegistryError::new(
                    ErrorCode::InvalidField,
                    format!(
                        "message_type {} is not in the descriptor set",
                        p.message_type
                    ),
                ));
            }
        }
        if p.text_fields.iter().any(|f| !f.starts_with('/')) {
            return Err(RegistryError::new(
                ErrorCode::InvalidField,
                "a text field is a JSON pointer: /name[/name...]",
            ));
        }
        if p.capabilities.iter().any(|c| normalise(c).is_empty()) {
            return Err(RegistryError::new(
                ErrorCode::InvalidField,
                "empty capability",
            ));
        }
        if p.capabilities
            .iter()
            .chain(&p.languages)
            .chain(&p.text_fields)
            .chain(&p.accepts)
            .chain([&p.address, &p.a2a_url, &p.message_type])
            .any(|s| s.len() > l.max_field)
        {
            return Err(too("a field"));
        }
        if !p.a2a_url.is_empty()
            && let Err(e) = agw_proto::a2a_url::A2aUrl::parse(&p.a2a_url)
        {
            return Err(RegistryError::new(ErrorCode::InvalidField, e));
        }
        if p.address.is_empty() {
            return Err(RegistryError::new(
                ErrorCode::RegistrationIncomplete,
                "no address",
            ));
        }
        Ok(())
    }

    fn fresh_resource_id(&self) -> Result<String, RegistryError> {
        loop {
            let mut bytes = [0u8; 16];
            self.rng
                .fill(&mut bytes)
                .map_err(|_| internal("no randomness"))?;
            let id =
                ResourceId::new(self.config.domain.clone(), u128::from_be_bytes(bytes)).to_string();
            if !self.resources.contains_key(&id) {
                return Ok(id);
            }
        }
    }
}
