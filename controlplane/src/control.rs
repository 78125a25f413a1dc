//! The control plane's loop: one thread that owns the routing table and turns what the shards
//! and the peers report into routes and advertisements.
//!
//! - Shards report local agents ([`ShardEvent`]): their routes change ([`LocalRoutes`]) and
//!   their summaries go to every established peer.
//! - Peers report summaries ([`PeerEvent`]): the [`Rib`] picks the best path per remote agent;
//!   a change becomes a `Route::Peer` (or, when no path is left, `Route::Unreachable` after a
//!   peer failed, no route at all after a DISCONNECT or a withdrawal) and is advertised on to
//!   the other peers.
//!
//! - A peer's END-OF-SYNC ends its full sync: what it advertised before a drop and not
//!   again (routes left unreachable, registry entries) is withdrawn.
//! - A peer whose gateway is temporarily offline (its KEEPALIVE or OPEN says so) is passed
//!   over; agents reached only through it are marked so and not routed to (`Route::Offline`).
//!   This gateway's own status is set by the operator ([`ControlPlane::set_status`]).
//! - Every summary of a local agent leaving this gateway carries a version from one counter
//!   (at least the Unix time in microseconds, so it grows across restarts too), whether it
//!   comes from an access or from the registry: peers never drop a newer one as stale.
//!
//! Each burst of events is applied, then published as one snapshot: a route change reaches
//! the shards within about a millisecond. The loop sleeps until something happens: a shard
//! event, a peer event, an operator's request, or a batch of the registry's changes.
//!
//! The registry has its own owner ([`agw_ars::owner`]): the loop reads its published snapshot
//! (which agents are registered here, their statuses, their summaries) and sends it commands
//! (statuses, peers' summaries, full syncs) that it applies in order, without waiting for them.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use agw_ars::{Change, RegistryHandle, View};

use agw_dataplane::{
    PeerLinks,
    access::DownReason,
    authorization::{PeerDomains, domain_of},
    events::{LocalRoutes, ShardEvent},
    routing::{Route, RoutingTable},
};
use agw_proto::{identity::GatewayId, pb};
use crossbeam_channel::{Receiver, Sender, select};

use crate::peering::{
    driver::{PeerCommand, PeerEvent, PeerSpec, Peering, PeeringConfig},
    rib::{BestChange, Rib},
};

/// How long an operator's question may wait for the control plane's loop.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the control plane did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Its loop has ended (the gateway is stopping).
    #[error("the control plane has stopped")]
    Stopped,
    /// Its loop did not answer in time (it is busy); a retry may succeed.
    #[error("the control plane did not answer within {} s", ASK_TIMEOUT.as_secs())]
    Busy,
    /// This gateway runs no peering.
    #[error("peering is not running")]
    NoPeering,
    /// Adding a gateway that is a peer already.
    #[error("{0} is a peer already")]
    PeerExists(String),
    /// Removing a gateway that is not a peer.
    #[error("{0} is not a peer")]
    UnknownPeer(String),
    /// A status a gateway cannot have.
    #[error("a gateway is RUNNING or TEMPORARILY_OFFLINE, not {0}")]
    BadStatus(String),
    /// A peer's session could not be started.
    #[error("starting the session with {peer}: {reason}")]
    Session {
        /// The peer.
        peer: String,
        /// What failed.
        reason: String,
    },
}

impl ControlError {
    /// The wire code an operator's client gets for it.
    pub fn code(&self) -> pb::ErrorCode {
        use pb::ErrorCode as E;
        match self {
            ControlError::Stopped => E::Draining,
            ControlError::Busy => E::Overloaded,
            ControlError::NoPeering
            | ControlError::PeerExists(_)
            | ControlError::UnknownPeer(_)
            | ControlError::BadStatus(_) => E::InvalidField,
            ControlError::Session { .. } => E::Internal,
        }
    }

    /// Whether asking again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, ControlError::Busy)
    }
}

/// The running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    peering: Option<Peering>,
    stop: Sender<()>,
    requests: Sender<Request>,
    /// Peers are added and removed one operator at a time.
    changing: Mutex<()>,
    /// This gateway's status (`pb::Status`), which new peers' sessions start with.
    status: Arc<AtomicI32>,
    thread: Option<JoinHandle<RoutingTable>>,
}

/// A route as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    /// The destination agent.
    pub agent: String,
    /// What the relay does with frames for it.
    pub route: Route,
    /// The peer gateway frames go to; `None` for a local agent.
    pub next_hop: Option<String>,
    /// Gateways to the agent, nearest first (its gateway last); empty for a local agent.
    pub path: Vec<String>,
    /// The agent's status as last heard.
    pub status: pb::Status,
}

/// An agent as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// Its ID.
    pub agent: String,
    /// Accessed or registered at this gateway.
    pub local: bool,
    /// Its status as last heard.
    pub status: pb::Status,
    /// The gateway it accessed.
    pub gateway: String,
}

/// Questions and changes from operators, answered by the loop that owns the state.
enum Request {
    Routes {
        agent: Option<String>,
        limit: usize,
        reply: Sender<(Vec<RouteView>, usize)>,
    },
    Agents {
        local_only: bool,
        limit: usize,
        reply: Sender<(Vec<AgentView>, usize)>,
    },
    PeerAdded {
        index: usize,
        gateway: String,
        reply: Sender<()>,
    },
    PeerRemoved {
        index: usize,
        reply: Sender<()>,
    },
    SetStatus {
        status: pb::Status,
        reply: Sender<()>,
    },
}

/// The control plane's route state: local agents, what peers advertised, the routing table
/// the relay reads. Driven by one thread in the daemon ([`ControlPlane`]), and by the
/// federation simulation ([`crate::simulation`]) on simulated time.
pub(crate) struct State {
    local: GatewayId,
    pub(crate) table: RoutingTable,
    routes: LocalRoutes,
    /// Summaries of local agents without a registry profile, by agent ID.
    summaries: HashMap<String, pb::AgentSummary>,
    /// The last version given to a local agent's summary (see [`State::stamp`]).
    version: u64,
    /// Each local agent's current summary version.
    versions: HashMap<String, u64>,
    rib: Rib,
    /// Agents left unreachable by a peer's failure, and that peer: forgotten when it comes
    /// back and its full sync does not name them.
    unreachable: HashMap<String, String>,
    /// Gateway ID of each configured peer, by index.
    peer_ids: Vec<String>,
    peer_up: Vec<bool>,
    /// The relay's links to peers, opened when a session comes up.
    links: Option<PeerLinks>,
    /// The embedded registry: local profiles go to peers, peers' summaries come to it.
    registry: Option<RegistryHandle>,
    /// The scopes attached agents' certificates grant.
    access_scopes: Option<AccessScopes>,
    attachments: Option<Attachments>,
}

/// What the control plane is wired to besides the routing table.
#[derive(Debug, Default)]
pub struct Wiring {
    /// Peering sessions, if this gateway peers.
    pub peering: Option<PeeringConfig>,
    /// The relay's links to peers.
    pub links: Option<PeerLinks>,
    /// The embedded registry (ARS).
    pub registry: Option<RegistryWiring>,
    /// Where the permission scopes of the agents attached here are kept.
    pub access_scopes: Option<AccessScopes>,
    /// Told when an agent attaches here (`true`) or leaves (`false`): the domain's etcd keeps
    /// which agent is attached where (issue 19).
    pub attachments: Option<Attachments>,
}

/// Told when an agent attaches to this gateway or leaves it, on the control plane's thread:
/// must not wait.
pub struct Attachments(pub Box<AttachmentHook>);

/// What [`Attachments`] calls: the agent's ID, and whether it is attached here now.
pub type AttachmentHook = dyn Fn(&str, bool) + Send;

impl std::fmt::Debug for Attachments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attachments")
    }
}

/// The permission scopes each agent attached to this gateway presented in its certificate at
/// access (the authority wrote them in it), kept while it stays attached: authorization rules
/// on scopes match these holders as well as those of the authority's records, so an agent
/// whose certificate another gateway's authority issued is known by its scopes here too.
#[derive(Debug, Clone, Default)]
pub struct AccessScopes {
    held: Arc<Mutex<HashMap<String, Vec<String>>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl AccessScopes {
    /// Kept scopes that wake `changed` whenever who holds which changes.
    pub fn new(changed: Arc<tokio::sync::Notify>) -> AccessScopes {
        AccessScopes {
            held: Arc::default(),
            changed,
        }
    }

    /// Each attached agent and the scopes its certificate grants.
    pub fn holders(&self) -> Vec<(String, Vec<String>)> {
        self.held
            .lock()
            .map(|held| held.iter().map(|(a, s)| (a.clone(), s.clone())).collect())
            .unwrap_or_default()
    }

    fn attached(&self, agent: &str, scopes: &[String]) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        let changed = if scopes.is_empty() {
            held.remove(agent).is_some()
        } else if held.get(agent).map(Vec::as_slice) != Some(scopes) {
            held.insert(agent.to_owned(), scopes.to_vec());
            true
        } else {
            false
        };
        drop(held);
        if changed {
            self.changed.notify_one();
        }
    }
}

/// The embedded registry as the control plane sees it: its handle, and the batches of changes
/// of local agents its owner hands over (see [`registry_changes`]).
#[derive(Debug)]
pub struct RegistryWiring {
    /// Commands and the published snapshot.
    pub handle: RegistryHandle,
    /// Registrations, updates, deregistrations and statuses, a batch at a time.
    pub changes: Receiver<Vec<Change>>,
}

/// Where a registry's owner sends its changes (give it to [`agw_ars::owner::spawn`]), and
/// where the control plane takes them.
pub fn registry_changes() -> (impl Fn(Vec<Change>) + Send + 'static, Receiver<Vec<Change>>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (
        move |changes| {
            let _ = tx.send(changes);
        },
        rx,
    )
}

impl ControlPlane {
    /// Starts the loop on its own thread, and the peering sessions if configured. `table` is
    /// the routing table the shards read; `shard_events` what they report; `links` opens the
    /// relay's links to peers as their sessions come up.
    pub fn start(
        local: GatewayId,
        table: RoutingTable,
        shard_events: Receiver<ShardEvent>,
        wiring: Wiring,
    ) -> io::Result<ControlPlane> {
        let Wiring {
            peering,
            links,
            registry,
            access_scopes,
            attachments,
        } = wiring;
        let (peer_tx, peer_rx) = crossbeam_channel::unbounded();
        let peer_ids: Vec<String> = peering
            .as_ref()
            .map(|p| p.peers.iter().map(|s| s.config.peer.to_string()).collect())
            .unwrap_or_default();
        let peering = peering.map(|p| Peering::start(p, peer_tx)).transpose()?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let (requests_tx, requests_rx) = crossbeam_channel::unbounded::<Request>();
        let (registry, changes_rx) = match registry {
            Some(RegistryWiring { handle, changes }) => (Some(handle), changes),
            None => (None, crossbeam_channel::never()),
        };
        let mut state = State::new(local, table, peer_ids);
        state.links = links;
        state.registry = registry;
        state.access_scopes = access_scopes;
        state.attachments = attachments;
        let commander = peering.as_ref().map(Peering::commander);
        let thread = std::thread::Builder::new()
            .name("agw-control".into())
            .spawn(move || {
                let send = |index: usize, command: PeerCommand| {
                    if let Some(c) = &commander {
                        c.command(index, command);
                    }
                };
                loop {
                    select! {
                        recv(shard_events) -> event => match event {
                            Ok(event) => state.shard_event(&event, &send),
                            Err(_) => return state.table,
                        },
                        recv(peer_rx) -> event => {
                            if let Ok((index, event)) = event {
                                state.peer_event(index, event, &send);
                            }
                        },
                        recv(stop_rx) -> _ => return state.table,
                        recv(requests_rx) -> request => {
                            if let Ok(request) = request {
                                state.request(request, &send);
                            }
                        },
                        recv(changes_rx) -> changes => {
                            if let Ok(changes) = changes {
                                state.registry_changes(changes, &send);
                            }
                        },
                    }
                    // Take the rest of the burst (at most a millisecond of it), then publish.
                    let deadline = Instant::now() + Duration::from_millis(1);
                    while Instant::now() < deadline {
                        if let Ok(event) = shard_events.try_recv() {
                            state.shard_event(&event, &send);
                        } else if let Ok((index, event)) = peer_rx.try_recv() {
                            state.peer_event(index, event, &send);
                        } else {
                            break;
                        }
                    }
                    state.table.publish();
                }
            })?;
        Ok(ControlPlane {
            peering,
            stop: stop_tx,
            requests: requests_tx,
            changing: Mutex::new(()),
            status: Arc::new(AtomicI32::new(pb::Status::Running as i32)),
            thread: Some(thread),
        })
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Request) -> Result<T, ControlError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.requests
            .send(make(tx))
            .map_err(|_| ControlError::Stopped)?;
        rx.recv_timeout(ASK_TIMEOUT).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => ControlError::Busy,
            crossbeam_channel::RecvTimeoutError::Disconnected => ControlError::Stopped,
        })
    }

    /// One operator's change at a time.
    fn one_at_a_time(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guard protects nothing but the order: a panic elsewhere leaves it usable.
        self.changing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Routes by agent ID, at most `limit` of them, and how many there are in all; with
    /// `agent`, only the route to it.
    pub fn routes(
        &self,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RouteView>, usize), ControlError> {
        let agent = agent.map(str::to_owned);
        self.ask(|reply| Request::Routes {
            agent,
            limit,
            reply,
        })
    }

    /// Agents by ID (local and remote, or local only), at most `limit`, and how many in all.
    pub fn agents(
        &self,
        local_only: bool,
        limit: usize,
    ) -> Result<(Vec<AgentView>, usize), ControlError> {
        self.ask(|reply| Request::Agents {
            local_only,
            limit,
            reply,
        })
    }

    /// Sets this gateway's status: `TEMPORARILY_OFFLINE` for maintenance (peers route
    /// around it and show its agents as temporarily offline), `RUNNING` to end it. Every
    /// peer hears it at once.
    pub fn set_status(&self, status: pb::Status) -> Result<(), ControlError> {
        if !matches!(status, pb::Status::Running | pb::Status::TemporarilyOffline) {
            return Err(ControlError::BadStatus(status.as_str_name().to_owned()));
        }
        let _one_at_a_time = self.one_at_a_time();
        self.status.store(status as i32, Ordering::Relaxed);
        self.ask(|reply| Request::SetStatus { status, reply })
    }

    /// This gateway's status as peers hear it.
    pub fn status(&self) -> pb::Status {
        pb::Status::try_from(self.status.load(Ordering::Relaxed)).unwrap_or(pb::Status::Running)
    }

    /// Starts peering with one more gateway; returns its index.
    pub fn add_peer(&self, mut spec: PeerSpec) -> Result<usize, ControlError> {
        spec.config.status = self.status();
        let peering = self.peering.as_ref().ok_or(ControlError::NoPeering)?;
        let _one_at_a_time = self.one_at_a_time();
        let gateway = spec.config.peer.to_string();
        if peering.neighbours().iter().any(|n| n.gateway == gateway) {
            return Err(ControlError::PeerExists(gateway));
        }
        // The loop learns of the index before the peer's thread can report on it.
        let index = peering.next_index();
        self.ask(|reply| Request::PeerAdded {
            index,
            gateway,
            reply,
        })?;
        let peer = gateway_of(&spec);
        let added = peering.add_peer(spec).map_err(|e| ControlError::Session {
            peer,
            reason: e.to_string(),
        })?;
        debug_assert_eq!(added, index);
        Ok(added)
    }

    /// Leaves peer `gateway` (DISCONNECT): its routes and agents are withdrawn everywhere.
    pub fn remove_peer(&self, gateway: &str) -> Result<(), ControlError> {
        let peering = self.peering.as_ref().ok_or(ControlError::NoPeering)?;
        let _one_at_a_time = self.one_at_a_time();
        let index = peering
            .remove_peer(gateway)
            .ok_or_else(|| ControlError::UnknownPeer(gateway.to_owned()))?;
        self.ask(|reply| Request::PeerRemoved { index, reply })
    }

    /// The peering, if configured (its listening address, fault injection).
    pub fn peering(&self) -> Option<&Peering> {
        self.peering.as_ref()
    }

    /// Leaves every peer (DISCONNECT) and ends the loop; returns the routing table.
    pub fn stop(mut self) -> Option<RoutingTable> {
        if let Some(p) = self.peering.take() {
            p.stop();
        }
        let _ = self.stop.send(());
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(p) = self.peering.take() {
            p.stop();
        }
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    fn request(&mut self, request: Request, send: &impl Fn(usize, PeerCommand)) {
        match request {
            Request::Routes {
                agent,
                limit,
                reply,
            } => {
                let _ = reply.send(self.route_views(agent.as_deref(), limit));
            }
            Request::Agents {
                local_only,
                limit,
                reply,
            } => {
                let _ = reply.send(self.agent_views(local_only, limit));
            }
            Request::PeerAdded {
                index,
                gateway,
                reply,
            } => {
                let grow = |v: &mut Vec<_>, fill| {
                    if v.len() <= index {
                        v.resize(index + 1, fill);
                    }
                };
                grow(&mut self.peer_ids, String::new());
                if self.peer_up.len() <= index {
                    self.peer_up.resize(index + 1, false);
                }
                self.peer_ids[index] = gateway;
                let _ = reply.send(());
            }
            Request::PeerRemoved { index, reply } => {
                self.peer_removed(index, send);
                let _ = reply.send(());
            }
            Request::SetStatus { status, reply } => {
                tracing::info!(status = status.as_str_name(), "gateway status set");
                for (i, id) in self.peer_ids.iter().enumerate() {
                    if !id.is_empty() {
                        send(i, PeerCommand::SetStatus(status));
                    }
                }
                let _ = reply.send(());
            }
        }
    }

    /// The state of gateway `local` with peers `peer_ids` (by index), wired to nothing else.
    pub(crate) fn new(local: GatewayId, table: RoutingTable, peer_ids: Vec<String>) -> State {
        let peer_count = peer_ids.len();
        State {
            local,
            table,
            routes: LocalRoutes::new(),
            summaries: HashMap::new(),
            version: 0,
            versions: HashMap::new(),
            rib: Rib::new(),
            unreachable: HashMap::new(),
            peer_ids,
            peer_up: vec![false; peer_count],
            links: None,
            registry: None,
            access_scopes: None,
            attachments: None,
        }
    }

    /// Summaries held from peers, every path counted.
    pub(crate) fn rib_len(&self) -> usize {
        self.rib.len()
    }

    /// The gateways the best learned path to `agent` crosses, nearest first.
    pub(crate) fn best_path(&self, agent: &str) -> Option<Vec<String>> {
        self.rib.best(agent).map(|(_, s)| s.path.clone())
    }

    /// A version for a local agent's summary, above every one given before: at least the
    /// Unix time in microseconds, so that a restarted gateway's versions are newer too.
    fn stamp(&mut self, agent: &str) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.version = (self.version + 1).max(now);
        self.versions.insert(agent.to_owned(), self.version);
        self.version
    }

    /// An operator removed peer `index`: what was learned from it goes, everywhere.
    fn peer_removed(&mut self, index: usize, send: &impl Fn(usize, PeerCommand)) {
        let Some(peer) = self.peer_ids.get(index).cloned().filter(|p| !p.is_empty()) else {
            return;
        };
        tracing::info!(%peer, "peer removed");
        if let Some(links) = &self.links {
            links.remove_peer(index as u32);
        }
        if let Some(registry) = &self.registry
            && let Ok(id) = GatewayId::parse(&peer)
        {
            registry.change(move |r| r.remove_peer(&id));
        }
        if let Some(up) = self.peer_up.get_mut(index) {
            *up = false;
        }
        for change in self.rib.remove_peer(&peer) {
            self.apply(change, false, &peer, send);
        }
        self.forget_unreachable(&peer, false);
        if let Some(id) = self.peer_ids.get_mut(index) {
            id.clear();
        }
    }

    /// Routes left unreachable by `peer`'s failure: gone when it left for good, or when it
    /// came back and its full sync did not name them (`only_unrouted`: unless another peer
    /// routes to them by now).
    fn forget_unreachable(&mut self, peer: &str, only_unrouted: bool) -> usize {
        let stale: Vec<String> = self
            .unreachable
            .iter()
            .filter(|(_, via)| *via == peer)
            .map(|(agent, _)| agent.clone())
            .collect();
        let mut forgotten = 0;
        for agent in stale {
            self.unreachable.remove(&agent);
            let routed = self.rib.best(&agent).is_some() || self.rib.is_held(&agent);
            if (only_unrouted && routed) || self.is_local(&agent) {
                continue;
            }
            if self.table.current().lookup(&agent) == Some(Route::Unreachable) {
                self.table.remove(&agent);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// The status of a local agent: its registry profile's, else its last report.
    fn local_status(&self, agent: &str, default: pb::Status) -> pb::Status {
        let registered = self
            .view()
            .and_then(|r| r.is_local(agent).then(|| r.status_of(agent)).flatten());
        registered
            .or_else(|| self.summaries.get(agent).map(pb::AgentSummary::status))
            .unwrap_or(default)
    }

    fn route_view(&self, agent: &str, route: Route) -> RouteView {
        let best = self.rib.best(agent);
        let (next_hop, path, status) = match route {
            Route::Local { .. } => (
                None,
                Vec::new(),
                self.local_status(agent, pb::Status::Running),
            ),
            Route::Offline if self.rib.is_held(agent) => {
                (None, Vec::new(), pb::Status::TemporarilyOffline)
            }
            Route::Offline => (None, Vec::new(), pb::Status::Offline),
            Route::Peer { peer } => (
                self.peer_ids.get(peer as usize).cloned(),
                best.map(|(_, s)| s.path.clone()).unwrap_or_default(),
                best.map_or(pb::Status::Unspecified, |(_, s)| s.status()),
            ),
            Route::Unreachable => (None, Vec::new(), pb::Status::Offline),
        };
        RouteView {
            agent: agent.to_owned(),
            route,
            next_hop,
            path,
            status,
        }
    }

    fn route_views(&self, agent: Option<&str>, limit: usize) -> (Vec<RouteView>, usize) {
        let snapshot = self.table.current();
        let mut routes: Vec<(&str, Route)> = match agent {
            Some(a) => snapshot.lookup(a).map(|r| vec![(a, r)]).unwrap_or_default(),
            None => snapshot.entries().collect(),
        };
        let total = routes.len();
        first_by_agent(&mut routes, limit, |(a, _)| a);
        let views = routes
            .into_iter()
            .map(|(a, r)| self.route_view(a, r))
            .collect();
        (views, total)
    }

    fn agent_views(&self, local_only: bool, limit: usize) -> (Vec<AgentView>, usize) {
        let local = self.local.to_string();
        // One look at the registry, not one per agent.
        let registered: HashMap<String, pb::Status> = self
            .view()
            .map(|r| r.local_statuses())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut agents: HashMap<&str, (bool, pb::Status, &str)> = HashMap::new();
        for (agent, route) in self.table.current().entries() {
            let status = match route {
                Route::Local { .. } => registered
                    .get(agent)
                    .copied()
                    .or_else(|| self.summaries.get(agent).map(pb::AgentSummary::status))
                    .unwrap_or(pb::Status::Running),
                Route::Offline => pb::Status::Offline,
                _ => continue,
            };
            agents.insert(agent, (true, status, &local));
        }
        for (agent, status) in &registered {
            agents.entry(agent).or_insert((true, *status, &local));
        }
        if !local_only {
            for (_, s) in self.rib.best_routes() {
                agents
                    .entry(&s.agent)
                    .or_insert((false, s.status(), &s.origin));
            }
        }
        let total = agents.len();
        let mut agents: Vec<_> = agents.into_iter().collect();
        first_by_agent(&mut agents, limit, |(a, _)| a);
        let views = agents
            .into_iter()
            .map(|(agent, (local, status, gateway))| AgentView {
                agent: agent.to_owned(),
                local,
                status,
                gateway: gateway.to_owned(),
            })
            .collect();
        (views, total)
    }

    fn local_summary(&mut self, agent: &str, status: pb::Status) -> pb::AgentSummary {
        pb::AgentSummary {
            agent: agent.to_owned(),
            status: status as i32,
            origin: self.local.to_string(),
            path: Vec::new(),
            version: self.stamp(agent),
            ..Default::default()
        }
    }

    /// Whether `peer` is a gateway of this domain (a sibling: issue 19, part 2). Peer IDs and
    /// summaries' agents were checked when they came in; this runs for every advertisement
    /// to every peer, so it reads the domain without parsing (no allocation).
    fn is_sibling(&self, peer: &str) -> bool {
        domain_of(peer) == self.local.domain()
    }

    fn is_ours(&self, agent: &str) -> bool {
        domain_of(agent) == self.local.domain()
    }

    /// What peer `index` hears of `command`. A sibling hears of this domain's agents only
    /// those attached here (a summary of one that is not becomes a withdrawal): the domain's
    /// shared registry gives it their profiles, and a route to an agent that is not here would
    /// send its messages back and forth between the domain's gateways. Others hear all.
    fn to_peer(&self, index: usize, command: PeerCommand) -> PeerCommand {
        if !self.peer_ids.get(index).is_some_and(|p| self.is_sibling(p)) {
            return command;
        }
        let local = self.local.as_str();
        let heard = |s: &pb::AgentSummary| {
            !self.is_ours(&s.agent) || (s.origin == local && self.routes.is_attached(&s.agent))
        };
        match command {
            PeerCommand::Advertise(advertise, mut withdraw) => {
                let (keep, gone): (Vec<_>, Vec<_>) = advertise.into_iter().partition(heard);
                withdraw.extend(gone.into_iter().map(|s| s.agent));
                PeerCommand::Advertise(keep, withdraw)
            }
            PeerCommand::FullSync(table) => {
                PeerCommand::FullSync(table.into_iter().filter(heard).collect())
            }
            other => other,
        }
    }

    /// An agent of this domain attached at a sibling is routed to it (and told to nobody:
    /// the sibling's own peers hear of it from it); the route to one attached here, or
    /// learned from anyone else, is not taken. Returns whether `apply` is done.
    fn route_ours(&mut self, agent: &str, via: Option<&str>) -> bool {
        if !self.is_ours(agent) {
            return false;
        }
        if self.routes.is_attached(agent) {
            return true;
        }
        let sibling = via
            .filter(|v| self.is_sibling(v))
            .and_then(|v| self.peer_ids.iter().position(|p| p == v));
        match sibling {
            Some(index) => self.table.set(agent, Route::Peer { peer: index as u32 }),
            None if via.is_some() => {}
            // Gone from the sibling, attached nowhere known: offline if registered.
            None if self.is_local(agent) => self.table.set(agent, Route::Offline),
            None => self.table.remove(agent),
        }
        true
    }

    /// How other domains hear of one of this domain's agents from here: from this gateway
    /// when the agent is attached here or at no sibling; otherwise through the sibling it is
    /// attached to, with that sibling's path and status (one hop longer than the sibling's
    /// own, so that they prefer the gateway the agent is attached to).
    fn through_sibling(&self, mut summary: pb::AgentSummary) -> pb::AgentSummary {
        if self.is_ours(&summary.agent)
            && !self.routes.is_attached(&summary.agent)
            && let Some((via, best)) = self.rib.best(&summary.agent)
            && self.is_sibling(via)
        {
            summary.origin.clone_from(&best.origin);
            summary.path.clone_from(&best.path);
            summary.status = best.status;
        }
        summary
    }

    /// Tells the peers of other domains where one of this domain's agents is now (after it
    /// came, left, or moved between the domain's gateways), if they heard of it from here.
    fn tell_outside(&mut self, agent: &str, send: &impl Fn(usize, PeerCommand)) {
        let local = match self.view().and_then(|v| v.local_summary(agent)) {
            Some(registered) => Some(registered),
            None => self.summaries.get(agent).cloned(),
        };
        let Some(mut summary) = local else {
            return;
        };
        summary.origin = self.local.to_string();
        summary.version = self.stamp(agent);
        let summary = self.through_sibling(summary);
        let outside: Vec<usize> = self
            .established()
            .filter(|i| !self.peer_ids.get(*i).is_some_and(|p| self.is_sibling(p)))
            .collect();
        for i in outside {
            send(i, PeerCommand::Advertise(vec![summary.clone()], Vec::new()));
        }
    }

    fn is_local(&self, agent: &str) -> bool {
        self.summaries.contains_key(agent) || self.view().is_some_and(|r| r.is_local(agent))
    }

    /// The registry as its owner last published it.
    fn view(&self) -> Option<Arc<View>> {
        self.registry.as_ref().map(RegistryHandle::view)
    }

    fn established(&self) -> impl Iterator<Item = usize> + '_ {
        self.peer_up
            .iter()
            .enumerate()
            .filter(|(_, up)| **up)
            .map(|(i, _)| i)
    }

    pub(crate) fn shard_event(&mut self, event: &ShardEvent, send: &impl Fn(usize, PeerCommand)) {
        if !self.routes.apply(&mut self.table, event) {
            return; // one of its connections left; another still holds its route
        }
        // Left here while attached at a sibling of the domain: routed there again.
        if let ShardEvent::AgentDown { agent, .. } = event
            && let Some(via) = self.rib.best(agent.as_str()).map(|(via, _)| via.to_owned())
        {
            self.route_ours(agent.as_str(), Some(&via));
        }
        if let Some(Attachments(tell)) = &self.attachments {
            match event {
                ShardEvent::AgentUp { agent, .. } => tell(agent.as_str(), true),
                ShardEvent::AgentDown { agent, .. } => tell(agent.as_str(), false),
                ShardEvent::AgentStatus { .. } => {}
            }
        }
        if let Some(kept) = &self.access_scopes {
            match event {
                ShardEvent::AgentUp { agent, scopes, .. } => kept.attached(agent.as_str(), scopes),
                ShardEvent::AgentDown { agent, .. } => kept.attached(agent.as_str(), &[]),
                ShardEvent::AgentStatus { .. } => {}
            }
        }
        let (agent, change) = match event {
            ShardEvent::AgentUp { agent, .. } => (agent, Some(pb::Status::Running)),
            ShardEvent::AgentStatus { agent, status } => (agent, Some(*status)),
            ShardEvent::AgentDown { agent, reason, .. } => match reason {
                DownReason::Deregistered => (agent, None),
                _ => (agent, Some(pb::Status::Offline)),
            },
        };
        let registered = self
            .registry
            .as_ref()
            .is_some_and(|r| r.view().is_local(agent.as_str()));
        if registered {
            // Registered: its profile (with capabilities) carries the status to the peers;
            // one that left the gateway is withdrawn from them. The domain's other gateways
            // (which share the registry) hear where it is attached, or that it left here.
            let presence = match event {
                ShardEvent::AgentUp { .. } => Some(true),
                ShardEvent::AgentDown { .. } => Some(false),
                ShardEvent::AgentStatus { .. } => None,
            };
            let siblings: Vec<usize> = self
                .established()
                .filter(|i| self.peer_ids.get(*i).is_some_and(|p| self.is_sibling(p)))
                .collect();
            if let (Some(up), false) = (presence, siblings.is_empty()) {
                let command = if up {
                    let here = self.local_summary(agent.as_str(), pb::Status::Running);
                    PeerCommand::Advertise(vec![here], Vec::new())
                } else {
                    PeerCommand::Advertise(Vec::new(), vec![agent.to_string()])
                };
                for i in siblings {
                    send(i, self.to_peer(i, command.clone()));
                }
                // Other domains hear of it from here as it is now: attached here, or
                // through the sibling it is attached to.
                self.tell_outside(agent.as_str(), send);
            }
            let Some(registry) = &self.registry else {
                return;
            };
            let agent = agent.to_string();
            self.summaries.remove(&agent);
            registry.change(move |r| match change {
                Some(status) => r.set_status(&agent, status),
                None => r.set_departed(&agent),
            });
            return;
        }
        let peers: Vec<usize> = self.established().collect();
        match (event, change) {
            (ShardEvent::AgentUp { .. }, Some(status)) => {
                let summary = self.local_summary(agent.as_str(), status);
                self.summaries.insert(agent.to_string(), summary.clone());
                for i in peers {
                    send(
                        i,
                        self.to_peer(i, PeerCommand::Advertise(vec![summary.clone()], Vec::new())),
                    );
                }
            }
            (_, Some(status)) if self.summaries.contains_key(agent.as_str()) => {
                let summary = self.local_summary(agent.as_str(), status);
                self.summaries.insert(agent.to_string(), summary.clone());
                // Gone from here while attached at a sibling: through it.
                let summary = self.through_sibling(summary);
                for i in peers {
                    send(
                        i,
                        self.to_peer(i, PeerCommand::Advertise(vec![summary.clone()], Vec::new())),
                    );
                }
            }
            // Neither accessed here since it was withdrawn (it deregistered from the
            // registry while connected) nor registered: peers have nothing to hear.
            (_, Some(_)) => {}
            (_, None) => {
                self.summaries.remove(agent.as_str());
                self.versions.remove(agent.as_str());
                for i in peers {
                    send(
                        i,
                        self.to_peer(
                            i,
                            PeerCommand::Advertise(Vec::new(), vec![agent.to_string()]),
                        ),
                    );
                }
            }
        }
    }

    pub(crate) fn peer_event(
        &mut self,
        index: usize,
        event: PeerEvent,
        send: &impl Fn(usize, PeerCommand),
    ) {
        let up_or_down = matches!(event, PeerEvent::Up { .. } | PeerEvent::Down { .. });
        self.handle_peer_event(index, event, send);
        // Which domains' frames each peer may relay: its own and those it advertised agents
        // of, while its session is up; a gateway that is not a peer up relays nothing.
        if (self.rib.take_domains_changed() || up_or_down)
            && let Some(links) = &self.links
        {
            let up = self
                .peer_ids
                .iter()
                .zip(&self.peer_up)
                .filter(|(id, up)| **up && !id.is_empty())
                .map(|(id, _)| (id.clone(), self.rib.domains_of(id)));
            links.set_peer_domains(PeerDomains::new(up));
        }
    }

    fn handle_peer_event(
        &mut self,
        index: usize,
        event: PeerEvent,
        send: &impl Fn(usize, PeerCommand),
    ) {
        // A removed peer's thread may still report on its way out: nobody listens.
        let Some(peer) = self.peer_ids.get(index).cloned().filter(|p| !p.is_empty()) else {
            return;
        };
        match event {
            PeerEvent::Up {
                agent_access_address,
                domain,
                hold_time,
            } => {
                tracing::info!(%peer, %domain, hold_s = hold_time.as_secs(), links = %agent_access_address, "peer up");
                if let Some(up) = self.peer_up.get_mut(index) {
                    *up = true;
                }
                if let (Some(links), Ok(address), Ok(gateway)) = (
                    &self.links,
                    agent_access_address.parse(),
                    GatewayId::parse(&peer),
                ) {
                    links.set_peer(index as u32, gateway, address);
                }
                if let Some(registry) = &self.registry
                    && let Ok(id) = GatewayId::parse(&peer)
                {
                    registry.change(move |r| {
                        r.set_peer_applicable(&id, true);
                        r.begin_sync(&id);
                    });
                }
                let mut table: Vec<pb::AgentSummary> = self.summaries.values().cloned().collect();
                table.extend(self.registry_summaries());
                table.extend(
                    self.rib
                        .best_routes()
                        .filter(|(via, _)| *via != peer)
                        .map(|(_, s)| s.clone()),
                );
                send(index, self.to_peer(index, PeerCommand::FullSync(table)));
            }
            PeerEvent::Down { disconnected, code } => {
                tracing::warn!(%peer, code = code.as_str_name(), disconnected, "peer down");
                if let Some(up) = self.peer_up.get_mut(index) {
                    *up = false;
                }
                if let Some(links) = &self.links {
                    links.remove_peer(index as u32);
                }
                if let Some(registry) = &self.registry
                    && let Ok(id) = GatewayId::parse(&peer)
                {
                    // Gone for good: forget its agents; failed: keep them, not discoverable.
                    registry.change(move |r| {
                        if disconnected {
                            r.remove_peer(&id);
                        } else {
                            r.set_peer_applicable(&id, false);
                        }
                    });
                }
                for change in self.rib.remove_peer(&peer) {
                    self.apply(change, !disconnected, &peer, send);
                }
                if disconnected {
                    self.forget_unreachable(&peer, false);
                }
            }
            PeerEvent::Learned(summaries) => {
                tracing::debug!(%peer, count = summaries.len(), "summaries learned");
                self.to_registry(&peer, summaries.clone(), Vec::new());
                for s in summaries {
                    if let Some(change) = self.rib.learn(&peer, s) {
                        self.apply(change, false, &peer, send);
                    }
                }
            }
            PeerEvent::Withdrawn(agents) => {
                tracing::debug!(%peer, count = agents.len(), "agents withdrawn");
                self.to_registry(&peer, Vec::new(), agents.clone());
                for a in agents {
                    if let Some(change) = self.rib.withdraw(&peer, &a) {
                        self.apply(change, false, &peer, send);
                    }
                }
            }
            PeerEvent::Synced => {
                let routes = self.forget_unreachable(&peer, true);
                tracing::info!(%peer, stale_routes = routes, "peer's full table received");
                if let (Some(registry), Ok(id)) = (&self.registry, GatewayId::parse(&peer)) {
                    registry.change(move |r| {
                        let profiles = r.end_of_sync(&id);
                        tracing::info!(peer = %id, stale_profiles = profiles, "registry synced");
                    });
                }
            }
            PeerEvent::Status(status) => {
                tracing::info!(%peer, status = status.as_str_name(), "peer's gateway status");
                let paused = status == pb::Status::TemporarilyOffline;
                for change in self.rib.set_paused(&peer, paused) {
                    self.apply(change, false, &peer, send);
                }
                if let Some(registry) = &self.registry
                    && let Ok(id) = GatewayId::parse(&peer)
                {
                    registry.change(move |r| r.set_peer_status(&id, status));
                }
            }
        }
    }

    /// Peers' summaries into the registry, for discovery (it refuses loops and bad ones too).
    fn to_registry(&self, peer: &str, advertise: Vec<pb::AgentSummary>, withdraw: Vec<String>) {
        let (Some(registry), Ok(id)) = (&self.registry, GatewayId::parse(peer)) else {
            return;
        };
        // A sibling's routes to this domain's agents are not profiles: the shared registry
        // holds those.
        let (advertise, withdraw) = if self.is_sibling(peer) {
            (
                advertise
                    .into_iter()
                    .filter(|s| !self.is_ours(&s.agent))
                    .collect(),
                withdraw.into_iter().filter(|a| !self.is_ours(a)).collect(),
            )
        } else {
            (advertise, withdraw)
        };
        let update = pb::ResourceUpdate {
            advertise,
            withdraw,
        };
        let local = self.local.clone();
        registry.change(move |r| {
            r.apply_remote(&id, &local, &update);
        });
    }

    /// The registry's local profiles as summaries from this gateway, with the versions they
    /// were advertised with.
    fn registry_summaries(&mut self) -> Vec<pb::AgentSummary> {
        let Some(local) = self.view().map(|r| r.local_summaries()) else {
            return Vec::new();
        };
        let origin = self.local.to_string();
        local
            .into_iter()
            .map(|mut s| {
                s.origin.clone_from(&origin);
                s.version = match self.versions.get(&s.agent) {
                    Some(v) => *v,
                    None => self.stamp(&s.agent),
                };
                self.through_sibling(s)
            })
            .collect()
    }

    /// A batch of local registrations, updates and status changes, to every peer.
    fn registry_changes(&mut self, changes: Vec<Change>, send: &impl Fn(usize, PeerCommand)) {
        let origin = self.local.to_string();
        let (mut advertise, mut withdraw) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                Change::Advertise(mut s) => {
                    s.origin.clone_from(&origin);
                    s.version = self.stamp(&s.agent);
                    advertise.push(self.through_sibling(s));
                }
                Change::Withdraw(agent) => {
                    // Deregistered (or gone from the gateway): no later status of its
                    // connection brings it back to the peers as OFFLINE.
                    self.summaries.remove(&agent);
                    self.versions.remove(&agent);
                    withdraw.push(agent);
                }
            }
        }
        for i in self.established().collect::<Vec<_>>() {
            send(
                i,
                self.to_peer(
                    i,
                    PeerCommand::Advertise(advertise.clone(), withdraw.clone()),
                ),
            );
        }
    }

    /// A best route changed: route the shards by it and tell the other peers. `failed`: the
    /// route was lost because `from` failed (not left), so an agent left without any path is
    /// kept as unreachable rather than unknown, until `from` returns without it.
    fn apply(
        &mut self,
        change: BestChange,
        failed: bool,
        from: &str,
        send: &impl Fn(usize, PeerCommand),
    ) {
        let peers: Vec<usize> = self.established().collect();
        match change {
            BestChange::Via { peer, summary } => {
                if self.route_ours(&summary.agent, Some(&peer)) {
                    if self.is_sibling(&peer) && !self.routes.is_attached(&summary.agent) {
                        self.tell_outside(&summary.agent, send);
                    }
                    return;
                }
                if self.is_local(&summary.agent) {
                    return; // ours: the local route wins
                }
                self.unreachable.remove(&summary.agent);
                if let Some(index) = self.peer_ids.iter().position(|p| *p == peer) {
                    self.table
                        .set(&summary.agent, Route::Peer { peer: index as u32 });
                }
                for i in peers {
                    send(
                        i,
                        self.to_peer(i, PeerCommand::Advertise(vec![summary.clone()], Vec::new())),
                    );
                }
            }
            BestChange::Gone { agent } => {
                if self.route_ours(&agent, None) {
                    if !self.routes.is_attached(&agent) {
                        self.tell_outside(&agent, send);
                    }
                    return;
                }
                if self.is_local(&agent) {
                    return;
                }
                if failed {
                    self.table.set(&agent, Route::Unreachable);
                    self.unreachable.insert(agent.clone(), from.to_owned());
                } else {
                    self.table.remove(&agent);
                    self.unreachable.remove(&agent);
                }
                for i in peers {
                    send(
                        i,
                        self.to_peer(i, PeerCommand::Advertise(Vec::new(), vec![agent.clone()])),
                    );
                }
            }
            BestChange::Held { agent } => {
                if self.route_ours(&agent, None) {
                    if !self.routes.is_attached(&agent) {
                        self.tell_outside(&agent, send);
                    }
                    return;
                }
                if self.is_local(&agent) {
                    return;
                }
                // Its gateway is in maintenance: known, not routed to (NACKed as offline),
                // and not offered to other peers meanwhile.
                self.table.set(&agent, Route::Offline);
                self.unreachable.remove(&agent);
                for i in peers {
                    send(
                        i,
                        self.to_peer(i, PeerCommand::Advertise(Vec::new(), vec![agent.clone()])),
                    );
                }
            }
        }
    }
}

fn gateway_of(spec: &PeerSpec) -> String {
    spec.config.peer.to_string()
}

/// Keeps the first `limit` of `items` by agent ID, sorted: found in linear time, so a listing
/// of 1,000 out of 1M routes does not sort the million while the loop waits.
fn first_by_agent<T>(items: &mut Vec<T>, limit: usize, agent: impl Fn(&T) -> &&str) {
    if items.len() > limit {
        if limit == 0 {
            items.clear();
            return;
        }
        items.select_nth_unstable_by(limit - 1, |x, y| agent(x).cmp(agent(y)));
        items.truncate(limit);
    }
    items.sort_unstable_by(|x, y| agent(x).cmp(agent(y)));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn scopes_presented_at_access_are_held_while_the_agent_stays_attached() {
        let local = GatewayId::parse("spiffe://a.example/agw/a1").unwrap();
        let (shards, events) = crossbeam_channel::unbounded();
        let changed = Arc::new(tokio::sync::Notify::new());
        let kept = AccessScopes::new(Arc::clone(&changed));
        let control = ControlPlane::start(
            local,
            RoutingTable::new(),
            events,
            Wiring {
                access_scopes: Some(kept.clone()),
                ..Wiring::default()
            },
        )
        .unwrap();
        let alice = agw_proto::identity::AgentId::parse("spiffe://a.example/agent/alice").unwrap();
        let up = |connection: u32, scopes: &[&str]| ShardEvent::AgentUp {
            agent: alice.clone(),
            shard: 0,
            connection,
            serial: vec![1],
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        };
        let down = |connection: u32| ShardEvent::AgentDown {
            agent: alice.clone(),
            shard: 0,
            connection,
            reason: DownReason::Disconnected,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // Each change wakes whoever applies the policy, within the test's patience.
        let woken = || {
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), changed.notified())
                    .await
                    .is_ok()
            })
        };
        let holders = || kept.holders();

        shards.send(up(1, &["payments", "booking"])).unwrap();
        assert!(woken());
        assert_eq!(
            holders(),
            [(alice.to_string(), vec!["payments".into(), "booking".into()])]
        );
        // A second connection with the same certificate's scopes: the same holders.
        shards.send(up(2, &["payments", "booking"])).unwrap();
        // The first connection leaves; the second still holds the route and the scopes.
        shards.send(down(1)).unwrap();
        // Renewed with fewer scopes and attached again: they are replaced.
        shards.send(up(3, &["booking"])).unwrap();
        assert!(woken());
        assert_eq!(holders(), [(alice.to_string(), vec!["booking".into()])]);
        // Gone from every connection: held no more.
        shards.send(down(2)).unwrap();
        shards.send(down(3)).unwrap();
        assert!(woken());
        assert!(holders().is_empty());
        drop(control);
    }

    #[test]
    fn refusals_are_typed_with_their_wire_code() {
        let local = GatewayId::parse("spiffe://a.example/agw/a1").unwrap();
        let (_shards, events) = crossbeam_channel::unbounded();
        let control = ControlPlane::start(
            local.clone(),
            RoutingTable::new(),
            events,
            Wiring::default(),
        )
        .unwrap();
        let peer = GatewayId::parse("spiffe://b.example/agw/b1").unwrap();
        let spec = PeerSpec {
            config: crate::peering::session::PeerConfig::new(local, peer),
            address: None,
        };
        let refused = control.add_peer(spec).unwrap_err();
        assert_eq!(refused, ControlError::NoPeering);
        assert_eq!(refused.code(), pb::ErrorCode::InvalidField);
        let refused = control.set_status(pb::Status::Offline).unwrap_err();
        assert!(matches!(refused, ControlError::BadStatus(_)), "{refused}");
        assert!(control.routes(None, 10).unwrap().0.is_empty());
        // Stopped: its questions are answered as such, with a code that says so.
        let (requests, stop) = (control.requests.clone(), control.stop.clone());
        let _ = stop.send(());
        std::thread::sleep(Duration::from_millis(50));
        let probe = ControlPlane {
            peering: None,
            stop,
            requests,
            changing: Mutex::new(()),
            status: Arc::new(AtomicI32::new(0)),
            thread: None,
        };
        let refused = probe.routes(None, 1).unwrap_err();
        assert_eq!(refused, ControlError::Stopped);
        assert_eq!(refused.code(), pb::ErrorCode::Draining);
        drop(control);
    }

    #[test]
    fn a_listing_keeps_the_first_agents_in_order() {
        let mut items = vec![("d", 4), ("a", 1), ("c", 3), ("e", 5), ("b", 2)];
        first_by_agent(&mut items, 3, |(a, _)| a);
        assert_eq!(items, [("a", 1), ("b", 2), ("c", 3)]);
        let mut few = vec![("b", 2), ("a", 1)];
        first_by_agent(&mut few, 10, |(a, _)| a);
        assert_eq!(few, [("a", 1), ("b", 2)]);
        first_by_agent(&mut few, 0, |(a, _)| a);
        assert!(few.is_empty());
    }
}
