//! Starting and stopping the shards: [`Dataplane`] is what the daemon, tests and the load tool
//! hold.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use agw_proto::{
    a2a_url::A2aUrl,
    identity::{AgentId, GatewayId},
};
use agw_tls::CertificateChecker;
use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement, channels::shared_channel};

use crate::{
    a2a::SharedDirectory,
    authorization::{Authorization, PeerDomains},
    clock::Clock,
    config::{DataplaneConfig, LiveLimits},
    congestion::Congestion,
    counters::{CounterSnapshot, ShardCounters},
    events::ShardEvent,
    routing::{Route, RoutingReader},
    shard::{self, CrossBatch, PeerTls, ShardCommand, ShardSetup},
    translation::{self, TranslationPort},
};

/// glommio's registered I/O memory per shard. The relay does no file I/O, and the default
/// (10 MiB) exceeds a common `ulimit -l` of 8 MiB on its own.
const IO_MEMORY: usize = 128 * 1024;

/// Why the dataplane did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    /// The configuration is inconsistent.
    #[error("dataplane configuration: {0}")]
    Config(String),
    /// A shard could not listen.
    #[error("shard {shard} cannot listen on {addr}: {source}")]
    Listen {
        /// The shard.
        shard: usize,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A shard thread could not start.
    #[error("shard {shard} did not start: {detail}")]
    Spawn {
        /// The shard.
        shard: usize,
        /// What went wrong.
        detail: String,
    },
}

/// Opens and drops the shards' links to peer gateways; cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct PeerLinks {
    commands: Vec<crossbeam_channel::Sender<ShardCommand>>,
    domains: Arc<ArcSwap<PeerDomains>>,
}

impl PeerLinks {
    /// Every shard keeps a mutual-TLS link to peer `index` (gateway `gateway`, whose relay
    /// takes links at `address`); `Route::Peer { peer: index }` forwards over it.
    pub fn set_peer(&self, index: u32, gateway: GatewayId, address: SocketAddr) {
        for c in &self.commands {
            let _ = c.send(ShardCommand::Peer {
                index,
                gateway: gateway.clone(),
                address,
            });
        }
    }

    /// From the next frame on, each peer may relay frames of these domains' agents only
    /// (besides its own domain's); others are NACKed `UNAUTHORIZED`.
    pub fn set_peer_domains(&self, domains: PeerDomains) {
        self.domains.store(Arc::new(domains));
    }

    /// Drops the links to peer `index`.
    pub fn remove_peer(&self, index: u32) {
        for c in &self.commands {
            let _ = c.send(ShardCommand::PeerGone { index });
        }
    }

    /// Closes, at each shard's next tick, the links (dialled or accepted) of gateways of
    /// `domain` whose certificate has one of `serials`: what that domain's authority's CRL
    /// revokes. A shard dialling such a peer again is refused by the handshake once the TLS
    /// configuration's CRLs list it.
    pub fn revoke(&self, domain: &str, serials: &[Vec<u8>]) {
        for c in &self.commands {
            let _ = c.send(ShardCommand::PeerRevoked {
                domain: domain.to_owned(),
                serials: serials.to_vec(),
            });
        }
    }
}

/// Tells the shards which agents are A2A servers to call; cheap to clone, usable from any
/// thread.
#[derive(Debug, Clone)]
pub struct A2aServers {
    commands: Vec<crossbeam_channel::Sender<ShardCommand>>,
}

impl A2aServers {
    /// `agent` is an A2A server at `url` (`http://host:port/path`), dialled at `address`: the
    /// shard it hashes to keeps a connection to it as its route.
    pub fn set(&self, agent: AgentId, endpoint: A2aUrl, address: SocketAddr) {
        if let Some(c) = self.shard_of(&agent) {
            let _ = c.send(ShardCommand::A2aServer {
                agent,
                endpoint,
                address,
            });
        }
    }

    /// `agent` is no longer called as an A2A server: its connection closes.
    pub fn remove(&self, agent: AgentId) {
        if let Some(c) = self.shard_of(&agent) {
            let _ = c.send(ShardCommand::A2aServerGone { agent });
        }
    }

    fn shard_of(&self, agent: &AgentId) -> Option<&crossbeam_channel::Sender<ShardCommand>> {
        let hash = agent
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let n = self.commands.len() as u64;
        self.commands.get(usize::try_from(hash % n.max(1)).ok()?)
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    /// How long it took.
    pub elapsed: Duration,
    /// The deadline passed with frames still queued: those were NACKed `DRAINING`.
    pub abandoned: bool,
    /// The counters summed over shards at the end (nothing in flight:
    /// accepted = delivered + nacked + discarded).
    pub totals: CounterSnapshot,
}

/// The running relay: its shards, their counters and the address agents connect to.
pub struct Dataplane {
    addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
    a2a_addr: Option<SocketAddr>,
    counters: Arc<[ShardCounters]>,
    commands: Vec<crossbeam_channel::Sender<ShardCommand>>,
    threads: Vec<ExecutorJoinHandle<()>>,
    routes: RoutingReader,
    checker: Arc<ArcSwap<CertificateChecker>>,
    directory: Arc<OnceLock<SharedDirectory>>,
    authorization: Arc<ArcSwap<Authorization>>,
    peer_domains: Arc<ArcSwap<PeerDomains>>,
    /// The translation pool's side of the way off the shards, until it is taken.
    translation: Mutex<Option<TranslationPort>>,
    /// How long a closing connection may take to flush.
    linger: Duration,
    /// The shards' housekeeping clock (stopped after the shards, when dropped).
    clock: Clock,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("addr", &self.addr)
            .field("shards", &self.threads.len())
            .finish()
    }
}

impl Dataplane {
    /// Starts `config.shards` shards listening on `config.listen`. They route by `routes`,
    /// check agents' certificates with `checker` (replace it with
    /// [`set_checker`](Self::set_checker) when the CRL changes) and report agents on `events`.
    /// Returns once every shard listens.
    pub fn start(
        config: DataplaneConfig,
        routes: RoutingReader,
        checker: CertificateChecker,
        events: Sender<ShardEvent>,
    ) -> Result<Dataplane, DataplaneError> {
        config.validate().map_err(DataplaneError::Config)?;
        let n = config.shards;
        let config = Arc::new(config);
        let counters: Arc<[ShardCounters]> = (0..n).map(|_| ShardCounters::default()).collect();
        let congestion: Arc<[Congestion]> = (0..n).map(|_| Congestion::default()).collect();
        let checker = Arc::new(ArcSwap::from_pointee(checker));
        let directory = Arc::new(OnceLock::new());
        let authorization = Arc::new(ArcSwap::from_pointee(config.authorization.clone()));
        let peer_domains = Arc::new(ArcSwap::from_pointee(PeerDomains::default()));
        // A full mesh of bounded channels: senders[from][to], receivers[to][..].
        let mut senders: Vec<Vec<Option<shared_channel::SharedSender<CrossBatch>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<shared_channel::SharedReceiver<CrossBatch>>> =
            (0..n).map(|_| Vec::new()).collect();
        for (from, row) in senders.iter_mut().enumerate() {
            for (to, slot) in row.iter_mut().enumerate() {
                if from != to {
                    let (tx, rx) = shared_channel::new_bounded(config.cross_shard_capacity);
                    *slot = Some(tx);
                    receivers[to].push(rx);
                }
            }
        }
        let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
        let peer_tls = match &config.peer_tls {
            Some(identity) => Some(Arc::new(PeerTls {
                server: Arc::new(
                    identity
                        .server_config()
                        .map_err(|e| DataplaneError::Config(format!("peer TLS: {e}")))?,
                ),
                identity: identity.clone(),
            })),
            None => None,
        };
        let agent_tls = match &config.agent_tls {
            Some(identity) => {
                Some(Arc::new(identity.agent_server_config().map_err(|e| {
                    DataplaneError::Config(format!("agent TLS: {e}"))
                })?))
            }
            None => None,
        };
        let (translation, mut shard_ports) = if config.translation {
            let (port, sides) = translation::ports(n, config.limits.max_data_body as usize);
            (Some(port), sides.into_iter().map(Some).collect())
        } else {
            (None, (0..n).map(|_| None).collect::<Vec<_>>())
        };
        let mut dataplane = Dataplane {
            addr: config.listen,
            peer_addr: None,
            mqtt_addr: None,
            a2a_addr: None,
            counters: counters.clone(),
            commands: Vec::new(),
            threads: Vec::new(),
            routes: routes.clone(),
            checker: checker.clone(),
            directory: directory.clone(),
            authorization: authorization.clone(),
            peer_domains: peer_domains.clone(),
            translation: Mutex::new(translation),
            linger: config.close_linger,
            clock: Clock::start(n, config.tick).map_err(|e| DataplaneError::Spawn {
                shard: 0,
                detail: format!("the housekeeping clock: {e}"),
            })?,
        };

        // Shard 0 binds first so that the others join its port when the configured one is 0.
        let mut listen = config.listen;
        let mut peer_listen = config.peer_listen;
        let (mut mqtt_listen, mut a2a_listen) = (config.mqtt_listen, config.a2a_listen);
        for (id, (senders, receivers)) in senders.into_iter().zip(receivers).enumerate() {
            let (ready_tx, ready_rx) = mpsc::channel();
            let (command_tx, command_rx) = crossbeam_channel::unbounded();
            let setup = ShardSetup {
                id: id as u16,
                config: config.clone(),
                listen,
                peer_listen,
                mqtt_listen,
                a2a_listen,
                peer_tls: peer_tls.clone(),
                agent_tls: agent_tls.clone(),
                counters: counters.clone(),
                congestion: congestion.clone(),
                routes: routes.clone(),
                checker: checker.clone(),
                directory: directory.clone(),
                authorization: authorization.clone(),
                peer_domains: peer_domains.clone(),
                events: events.clone(),
                translation: shard_ports.get_mut(id).and_then(Option::take),
                commands: command_rx,
                tick: dataplane
                    .clock
                    .tick(id)
                    .ok_or_else(|| DataplaneError::Spawn {
                        shard: id,
                        detail: "no tick for the shard".into(),
                    })?,
                senders,
                receivers,
                ready: ready_tx,
            };
            let placement = if config.pin_cores {
                Placement::Fixed(id % cpus)
            } else {
                Placement::Unbound
            };
            let thread = LocalExecutorBuilder::new(placement)
                .name(&format!("agw-shard-{id}"))
                .io_memory(IO_MEMORY)
                .spawn(move || shard::run(setup))
                .map_err(|e| DataplaneError::Spawn {
                    shard: id,
                    detail: e.to_string(),
                })?;
            dataplane.commands.push(command_tx);
            dataplane.threads.push(thread);
            // Each shard reports as soon as it listens (its channels connect afterwards).
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(bound)) if id == 0 => {
                    listen = bound.agents;
                    peer_listen = bound.peer;
                    mqtt_listen = bound.mqtt;
                    a2a_listen = bound.a2a;
                }
                Ok(Ok(_)) => {}
                Ok(Err(source)) => {
                    return Err(DataplaneError::Listen {
                        shard: id,
                        addr: listen,
                        source,
                    });
                }
                Err(e) => {
                    return Err(DataplaneError::Spawn {
                        shard: id,
                        detail: e.to_string(),
                    });
                }
            }
        }
        dataplane.addr = listen;
        dataplane.peer_addr = peer_listen;
        dataplane.mqtt_addr = mqtt_listen;
        dataplane.a2a_addr = a2a_listen;
        Ok(dataplane)
    }

    /// Gives A2A agent cards the registry's profiles (once; later calls change nothing).
    pub fn set_directory(&self, directory: SharedDirectory) {
        let _ = self.directory.set(directory);
    }

    /// Where agents connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of its own for MQTT clients, if configured.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// The port of its own for A2A clients, if configured.
    pub fn a2a_addr(&self) -> Option<SocketAddr> {
        self.a2a_addr
    }

    /// Where peer gateways' relay links connect, if peering.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The handle that names A2A server agents to the shards.
    pub fn a2a_servers(&self) -> A2aServers {
        A2aServers {
            commands: self.commands.clone(),
        }
    }

    /// The translation pool's side of the way off the shards (`config.translation`): the
    /// messages to translate, and the way back to each shard. Taken once; `None` after, or
    /// when translation is off.
    pub fn translation_port(&self) -> Option<TranslationPort> {
        self.translation.lock().ok()?.take()
    }

    /// A handle the control plane uses to open and drop links to peers.
    pub fn peer_links(&self) -> PeerLinks {
        PeerLinks {
            commands: self.commands.clone(),
            domains: self.peer_domains.clone(),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.threads.len()
    }

    /// The shards' live counters, for a metrics endpoint on another thread.
    pub fn counters_handle(&self) -> Arc<[ShardCounters]> {
        self.counters.clone()
    }

    /// Each shard's counters.
    pub fn counters(&self) -> Vec<CounterSnapshot> {
        self.counters.iter().map(ShardCounters::snapshot).collect()
    }

    /// The counters summed over shards.
    pub fn totals(&self) -> CounterSnapshot {
        let mut sum = CounterSnapshot::default();
        for c in self.counters.iter() {
            sum.add(&c.snapshot());
        }
        sum
    }

    /// The route shards use for `agent` now.
    pub fn route_of(&self, agent: &str) -> Option<Route> {
        self.routes.load().lookup(agent)
    }

    /// Authorizes messages by `policy` from now on (every shard's next batch).
    pub fn set_authorization(&self, policy: Authorization) {
        self.authorization.store(Arc::new(policy));
    }

    /// Where the policy the shards read is set, for a thread that does not hold the relay.
    pub fn authorization_handle(&self) -> Arc<ArcSwap<Authorization>> {
        self.authorization.clone()
    }

    /// Checks later accesses with `checker` (a new CRL), and closes the live sessions of
    /// certificates with these serials.
    pub fn set_checker(&self, checker: CertificateChecker, revoked_serials: Vec<Vec<u8>>) {
        self.checker.store(Arc::new(checker));
        if !revoked_serials.is_empty() {
            for c in &self.commands {
                let _ = c.send(ShardCommand::Revoked(revoked_serials.clone()));
            }
        }
    }

    /// Takes these limits from now on (shards apply them at their next tick).
    pub fn set_limits(&self, limits: LiveLimits) -> Result<(), String> {
        limits.validate()?;
        for c in &self.commands {
            let _ = c.send(ShardCommand::Limits(limits));
        }
        Ok(())
    }

    /// Drains the relay: no new connection is taken and agents are read no more; what was
    /// accepted is delivered. Returns once nothing is queued or in flight, or at `deadline`,
    /// when the frames still queued are NACKed `DRAINING` and their connections closed.
    /// Every connection is then closed (agents told `DRAINING`); [`stop`](Self::stop) ends
    /// the shards. `progress` hears the frames and bytes still in flight every 100 ms.
    pub fn drain(&self, deadline: Duration, mut progress: impl FnMut(i128, u64)) -> DrainReport {
        let start = Instant::now();
        let end = start + deadline;
        let (applied_tx, applied_rx) = crossbeam_channel::unbounded();
        for c in &self.commands {
            let _ = c.send(ShardCommand::Drain(applied_tx.clone()));
        }
        // Once every shard applied it, no agent frame is read any more.
        for _ in &self.commands {
            if applied_rx
                .recv_timeout(end.saturating_duration_since(Instant::now()))
                .is_err()
            {
                break;
            }
        }
        let quiet = |t: &CounterSnapshot| t.in_flight() <= 0 && t.queued_bytes == 0;
        let mut last_progress = Instant::now();
        let mut abandoned = false;
        loop {
            let totals = self.totals();
            if quiet(&totals) {
                break;
            }
            if Instant::now() >= end {
                abandoned = true;
                for c in &self.commands {
                    let _ = c.send(ShardCommand::Abandon);
                }
                // The NACKs go out, bounded by the linger time.
                let linger = Instant::now() + self.linger;
                while self.totals().in_flight() > 0 || self.totals().queued_bytes > 0 {
                    if Instant::now() >= linger {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                break;
            }
            if last_progress.elapsed() >= Duration::from_millis(100) {
                last_progress = Instant::now();
                progress(totals.in_flight(), totals.queued_bytes);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for c in &self.commands {
            let _ = c.send(ShardCommand::Close);
        }
        // The notifications go out (bounded by the linger time).
        let linger = Instant::now() + self.linger;
        while self.totals().connections_open > 0 && Instant::now() < linger {
            std::thread::sleep(Duration::from_millis(10));
        }
        DrainReport {
            elapsed: start.elapsed(),
            abandoned,
            totals: self.totals(),
        }
    }

    /// Closes every connection and ends the shards.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for c in &self.commands {
            let _ = c.send(ShardCommand::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}
