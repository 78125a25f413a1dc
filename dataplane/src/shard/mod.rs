//! One shard: a glommio executor pinned to a core, owning the connections its listeners
//! accepted. Everything here runs on that one thread: state is `Rc`/`RefCell`, and nothing
//! takes a lock. Other shards are reached through bounded shared channels carrying batches of
//! frames; the control plane hears of agents through an unbounded channel and is never waited
//! on. `docs/dataplane.md` tells the life of a frame through this file.

use std::{
    cell::{Cell, RefCell},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    rc::Rc,
    sync::{Arc, OnceLock, mpsc},
    time::{Duration, Instant, SystemTime},
};

use agw_proto::{
    Frame, FrameDecoder, FrameEncoder, FrameHeader,
    a2a_url::A2aUrl,
    identity::{AgentId, GatewayId},
    pb::{self, ErrorCode},
    rate::Bucket,
};
use agw_tls::{CertificateChecker, TlsIdentity};
use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use futures_rustls::TlsAcceptor;
use glommio::{
    channels::shared_channel::{ConnectedSender, SharedReceiver, SharedSender},
    net::TcpListener,
    spawn_local,
    timer::sleep,
};
use hashbrown::HashMap;
use ring::rand::{SecureRandom, SystemRandom};

mod a2a_servers;
mod accept;
mod conn;
mod housekeeping;
mod links;
mod relay;
mod translation;

use conn::{Conn, ConnKind, ConnState, Notify, Outbound, Stream, read, wait_for_space, write_loop};
use links::accept_peers;
use relay::{Blocked, cross_receive};

use crate::{
    a2a::{self, A2aAdapter, SharedDirectory},
    a2a_grpc::GrpcAdapter,
    access::{AccessSession, Action, DownReason},
    adapter::Adapter,
    authorization::{Authorization, PeerDomains},
    clock::Tick,
    config::{DataplaneConfig, LiveLimits},
    congestion::Congestion,
    counters::ShardCounters,
    events::ShardEvent,
    mqtt::{self, MqttAdapter},
    routing::{Route, RoutingReader, SnapshotCache},
    translation::ShardPort,
};

/// Frames decoded and routed together: their destinations are looked up as one batch, so the
/// routing table's cache misses overlap.
const BATCH: usize = 32;

/// A frame crossing to the shard that owns its destination's connection.
#[derive(Debug)]
pub(crate) enum CrossFrame {
    /// Taken from an agent or a peer: counted, NACKed if it cannot be delivered.
    Relayed {
        connection: u32,
        header: FrameHeader,
        body: Bytes,
        /// When it was read.
        since: Instant,
    },
    /// Made by this gateway (a NACK), encoded whole: delivered if possible, else dropped.
    Made { connection: u32, frame: Bytes },
}

/// What crosses between two shards at once.
pub(crate) type CrossBatch = Vec<CrossFrame>;

/// Orders from outside the shard, read at each tick.
#[derive(Debug)]
pub(crate) enum ShardCommand {
    /// Close every connection and end the shard.
    Stop,
    /// Take no new connection and read no more from agents; deliver what is queued (peer
    /// links are still read: what peers sent before they heard of the drain is relayed).
    /// Answered with the shard's number once applied.
    Drain(Sender<u16>),
    /// After a drain: close every connection, agents told `DRAINING`.
    Close,
    /// Draining took too long: NACK (`DRAINING`) the frames still queued and close their
    /// connections.
    Abandon,
    /// New limits from the operator.
    Limits(LiveLimits),
    /// Close the sessions of agents whose certificate has one of these serials.
    Revoked(Vec<Vec<u8>>),
    /// Close the links of peer gateways of `domain` whose certificate has one of these
    /// serials (its authority's CRL lists them).
    PeerRevoked {
        domain: String,
        serials: Vec<Vec<u8>>,
    },
    /// Keep a link to peer `index` (the gateway `gateway`, its relay's peer port `address`).
    Peer {
        index: u32,
        gateway: GatewayId,
        address: SocketAddr,
    },
    /// Drop the link to peer `index`.
    PeerGone { index: u32 },
    /// Keep a connection to `agent`'s A2A server (at `address`, served at `endpoint`) as its
    /// route; sent to the one shard the agent hashes to.
    A2aServer {
        agent: AgentId,
        endpoint: A2aUrl,
        address: SocketAddr,
    },
    /// `agent` is no longer an A2A server agent here (deregistered, or its URL removed).
    A2aServerGone { agent: AgentId },
}

/// How peer links authenticate: this gateway's TLS identity and the server side built from it.
pub(crate) struct PeerTls {
    pub identity: TlsIdentity,
    pub server: Arc<rustls::ServerConfig>,
}

/// What a shard thread starts with.
pub(crate) struct ShardSetup {
    pub id: u16,
    pub config: Arc<DataplaneConfig>,
    pub listen: SocketAddr,
    /// Where peer gateways' links connect (mutual TLS), if peering.
    pub peer_listen: Option<SocketAddr>,
    /// The ports of their own for MQTT and A2A clients, if any.
    pub mqtt_listen: Option<SocketAddr>,
    pub a2a_listen: Option<SocketAddr>,
    pub peer_tls: Option<Arc<PeerTls>>,
    /// Agent access over mutual TLS; `None`: plain TCP.
    pub agent_tls: Option<Arc<rustls::ServerConfig>>,
    pub counters: Arc<[ShardCounters]>,
    pub congestion: Arc<[Congestion]>,
    pub routes: RoutingReader,
    pub checker: Arc<ArcSwap<CertificateChecker>>,
    /// The registry's profiles, for A2A agent cards (set once the registry runs).
    pub directory: Arc<OnceLock<SharedDirectory>>,
    pub authorization: Arc<ArcSwap<Authorization>>,
    pub peer_domains: Arc<ArcSwap<PeerDomains>>,
    pub events: Sender<ShardEvent>,
    /// The way to the translation pool and back (`DataplaneConfig::translation`).
    pub translation: Option<ShardPort>,
    pub commands: Receiver<ShardCommand>,
    /// This shard's tick of the dataplane's housekeeping clock.
    pub tick: Arc<Tick>,
    /// Indexed by destination shard; `None` at this shard's own index.
    pub senders: Vec<Option<SharedSender<CrossBatch>>>,
    pub receivers: Vec<SharedReceiver<CrossBatch>>,
    pub ready: mpsc::Sender<io::Result<Listening>>,
}

/// Where a shard listens (the ports asked for, with 0 made the ones the kernel picked).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listening {
    pub agents: SocketAddr,
    pub peer: Option<SocketAddr>,
    pub mqtt: Option<SocketAddr>,
    pub a2a: Option<SocketAddr>,
}

/// What a listener's clients speak: told apart on the agent port, fixed on a protocol's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortProtocol {
    Detect,
    Mqtt,
    A2a,
}

struct Shard {
    id: u16,
    config: Arc<DataplaneConfig>,
    /// The limits now (the operator may change them).
    limits: Cell<LiveLimits>,
    /// Draining: new connections and frames are refused.
    draining: Cell<bool>,
    counters: Arc<[ShardCounters]>,
    /// Every shard's congested connections (this shard writes only its own).
    congestion: Arc<[Congestion]>,
    /// The routing snapshot, reloaded per batch without touching a shared counter.
    routes: RefCell<SnapshotCache>,
    checker: Arc<ArcSwap<CertificateChecker>>,
    directory: Arc<OnceLock<SharedDirectory>>,
    /// Who may message whom, loaded once per batch.
    authorization: Arc<ArcSwap<Authorization>>,
    /// Which domains' frames each peer may relay, loaded per frame on peer links.
    peer_domains: Arc<ArcSwap<PeerDomains>>,
    events: Sender<ShardEvent>,
    /// The way to the translation pool and back (`DataplaneConfig::translation`).
    translation: Option<ShardPort>,
    /// A reusable vector for a batch of frames.
    batch: RefCell<Vec<Frame>>,
    conns: RefCell<HashMap<u32, Rc<Conn>>>,
    next_conn: Cell<u32>,
    /// Bytes in all this shard's write queues.
    queued: Cell<usize>,
    cross_out: RefCell<Vec<Option<Rc<ConnectedSender<CrossBatch>>>>>,
    pending_cross: RefCell<Vec<CrossBatch>>,
    encoder: RefCell<FrameEncoder>,
    reporter: String,
    rng: SystemRandom,
    /// This shard's link to each peer, by peer index.
    links: RefCell<HashMap<u32, Rc<Conn>>>,
    /// Peers this shard should keep a link to (index -> gateway, address).
    wanted: RefCell<HashMap<u32, (GatewayId, SocketAddr)>>,
    /// A2A server agents this shard keeps a connection to, and those connections.
    a2a_wanted: RefCell<HashMap<AgentId, (A2aUrl, SocketAddr)>>,
    a2a_conns: RefCell<HashMap<AgentId, Rc<Conn>>>,
    peer_tls: Option<Arc<PeerTls>>,
    /// A reusable buffer for TLS writes (TLS copies into records anyway).
    tls_out: RefCell<Vec<u8>>,
    /// A reusable buffer for TLS records read off a socket, before they are decrypted.
    tls_in: RefCell<Vec<u8>>,
    /// Agent access over mutual TLS; `None`: plain TCP.
    agent_tls: Option<TlsAcceptor>,
    /// Agents' TLS handshakes in progress, in all and by source address.
    handshaking: Cell<usize>,
    handshaking_from: RefCell<HashMap<IpAddr, usize>>,
    /// Each recent source address's allowance of new connections, and when it last took one.
    arrivals: RefCell<HashMap<IpAddr, (Bucket, Instant)>>,
}

/// Runs a shard until it is told to stop.
pub(crate) async fn run(setup: ShardSetup) {
    let listener = match TcpListener::bind(setup.listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = setup.ready.send(Err(io::Error::other(e.to_string())));
            return;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = setup.ready.send(Err(io::Error::other(e.to_string())));
            return;
        }
    };
    let bind_extra = |addr: Option<SocketAddr>| -> io::Result<Option<(TcpListener, SocketAddr)>> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = TcpListener::bind(addr).map_err(|e| io::Error::other(e.to_string()))?;
        let bound = listener
            .local_addr()
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Some((listener, bound)))
    };
    let (peer, mqtt, a2a) = match (
        bind_extra(setup.peer_listen),
        bind_extra(setup.mqtt_listen),
        bind_extra(setup.a2a_listen),
    ) {
        (Ok(peer), Ok(mqtt), Ok(a2a)) => (peer, mqtt, a2a),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            let _ = setup.ready.send(Err(e));
            return;
        }
    };
    // Listening now; connections wait in the backlog until the mesh is up below.
    let _ = setup.ready.send(Ok(Listening {
        agents: addr,
        peer: peer.as_ref().map(|(_, a)| *a),
        mqtt: mqtt.as_ref().map(|(_, a)| *a),
        a2a: a2a.as_ref().map(|(_, a)| *a),
    }));
    let shards = setup.senders.len();
    let shard = Rc::new(Shard {
        id: setup.id,
        reporter: setup.config.gateway.to_string(),
        encoder: RefCell::new(FrameEncoder::new(setup.config.limits)),
        limits: Cell::new(setup.config.live_limits()),
        draining: Cell::new(false),
        config: setup.config,
        counters: setup.counters,
        congestion: setup.congestion,
        routes: RefCell::new(setup.routes.cache()),
        batch: RefCell::new(Vec::with_capacity(BATCH)),
        checker: setup.checker,
        directory: setup.directory,
        authorization: setup.authorization,
        peer_domains: setup.peer_domains,
        events: setup.events,
        translation: setup.translation,
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        queued: Cell::new(0),
        cross_out: RefCell::new((0..shards).map(|_| None).collect()),
        pending_cross: RefCell::new((0..shards).map(|_| Vec::new()).collect()),
        rng: SystemRandom::new(),
        links: RefCell::new(HashMap::new()),
        wanted: RefCell::new(HashMap::new()),
        a2a_wanted: RefCell::new(HashMap::new()),
        a2a_conns: RefCell::new(HashMap::new()),
        peer_tls: setup.peer_tls,
        tls_out: RefCell::new(Vec::new()),
        tls_in: RefCell::new(Vec::new()),
        agent_tls: setup.agent_tls.map(TlsAcceptor::from),
        handshaking: Cell::new(0),
        handshaking_from: RefCell::new(HashMap::new()),
        arrivals: RefCell::new(HashMap::new()),
    });
    // Connecting a channel end waits for the other end: connect all of them concurrently.
    for rx in setup.receivers {
        spawn_local(cross_receive(shard.clone(), rx)).detach();
    }
    let mut connecting = Vec::new();
    for (to, tx) in setup.senders.into_iter().enumerate() {
        if let Some(tx) = tx {
            connecting.push((to, spawn_local(tx.connect())));
        }
    }
    for (to, task) in connecting {
        let tx = task.await;
        if let Some(slot) = shard.cross_out.borrow_mut().get_mut(to) {
            *slot = Some(Rc::new(tx));
        }
    }
    // The listeners live in their accept loops, which end with the shard.
    let mut listening = vec![listener.as_raw_fd()];
    let mut accepting = vec![spawn_local(accept::accept_loop(
        shard.clone(),
        listener,
        PortProtocol::Detect,
    ))];
    for (port, protocol) in [(mqtt, PortProtocol::Mqtt), (a2a, PortProtocol::A2a)] {
        if let Some((l, _)) = port {
            listening.push(l.as_raw_fd());
            accepting.push(spawn_local(accept::accept_loop(shard.clone(), l, protocol)));
        }
    }
    if let Some((l, _)) = peer {
        listening.push(l.as_raw_fd());
        accepting.push(spawn_local(accept_peers(shard.clone(), l)));
    }
    if shard.translation.is_some() {
        spawn_local(translation::returns(shard.clone())).detach();
    }
    shard.housekeeping(setup.commands, &setup.tick).await;
    // Stopped: the listening sockets are shut down, then their accept loops cancelled and
    // dropped, before the shard's thread ends, so the ports refuse connections at once and a
    // gateway started again on them gets every connection (SO_REUSEPORT would otherwise share
    // them with listeners nobody accepts on). Shut down first: closing the descriptor alone
    // leaves the socket listening while io_uring still holds it for an accept, until the
    // ring's cancellation is submitted or the ring torn down after the thread ends.
    for fd in listening {
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
    for task in accepting {
        task.cancel().await;
    }
}

/// How long a TLS client that named no protocol in ALPN has to send its first bytes before
/// it is taken for a native agent (MQTT clients send CONNECT at once; native agents wait for
/// the challenge, and name `agw/1` in ALPN to skip this wait).
const IDENTIFY_WAIT: Duration = Duration::from_millis(500);

/// The first byte of an MQTT CONNECT packet.
const MQTT_CONNECT: u8 = 0x10;

/// The smallest read: a few messages of a connection that trickles.
const MIN_READ: usize = 4096;

/// The size of the next read after one of `chunk` bytes brought `got`: twice as large
/// (up to `most`) after a full one, half as large (down to [`MIN_READ`]) after one a quarter
/// full or less.
fn next_read(chunk: usize, got: usize, most: usize) -> usize {
    if got >= chunk {
        (chunk * 2).min(most)
    } else if got <= chunk / 4 {
        (chunk / 2).max(MIN_READ).min(most)
    } else {
        chunk
    }
}

/// Reads and relays one connection's frames; the connection ends when this returns.
async fn serve(shard: Rc<Shard>, conn: Rc<Conn>) {
    shard.counter().connection_accepted();
    spawn_local(write_loop(shard.clone(), conn.clone())).detach();
    shard.apply_actions(&conn);
    // Reads ask for about what the connection sends: a trickle gets small reads (less buffer
    // to clear before each read, and to hold while a frame is partial), a stream doubles its
    // reads up to `read_chunk`.
    let most = shard.config.read_chunk;
    let mut chunk = MIN_READ.min(most);
    // A destination this connection's frames went to that is over its soft limit.
    let mut blocked = Blocked::None;
    while conn.is_open() {
        let soft = shard.limits.get().queue_soft_limit;
        // Back-pressure: read nothing more while a destination (or this connection's own
        // queue, which holds its NACKs) is over the soft limit.
        match std::mem::replace(&mut blocked, Blocked::None) {
            Blocked::None => {}
            Blocked::Local(dest) => wait_for_space(&dest, soft).await,
            Blocked::Remote {
                shard: to,
                connection,
            } => {
                // Another shard's connection: poll its mark (no wake-up crosses shards).
                while conn.is_open() && shard.remote_congested(to, connection) {
                    sleep(Duration::from_micros(500)).await;
                }
            }
        }
        if conn.queued() > soft {
            wait_for_space(&conn, soft).await;
        }
        // Draining: an agent's frames not read yet were never accepted; they stay unread.
        while shard.draining.get() && conn.kind == ConnKind::Agent && conn.is_open() {
            sleep(Duration::from_millis(10)).await;
        }
        if !conn.is_open() {
            break;
        }
        let got = if conn.identifying.get() {
            // A TLS client that named no protocol: its first bytes say which; silence says
            // native (a native agent waits for the challenge).
            let first = futures_lite::future::or(
                async { Some(read(&conn, chunk, &shard.tls_in).await) },
                async {
                    sleep(IDENTIFY_WAIT).await;
                    None
                },
            )
            .await;
            let Some(got) = first else {
                shard.identify(&conn);
                continue;
            };
            got
        } else if conn
            .adapter
            .borrow()
            .as_deref()
            .is_some_and(Adapter::answers_while_writing)
        {
            // An A2A adapter makes frames while writing too (a client's ACKs of replies, a
            // server's refusals): they wait in the decoder, relayed when the writer wakes
            // this reader.
            futures_lite::future::or(read(&conn, chunk, &shard.tls_in), async {
                conn.upstream.wait().await;
                Ok(usize::MAX)
            })
            .await
        } else {
            read(&conn, chunk, &shard.tls_in).await
        };
        match got {
            // An A2A server's connection is dialled again under its route.
            Ok(0) | Err(_) => {
                // Boxed: a dial's state (TLS included) would otherwise sit in every
                // connection's task, though only A2A servers' connections ever dial.
                if !Box::pin(shard.redial(&conn)).await {
                    break;
                }
            }
            Ok(usize::MAX) => {}
            Ok(got) => {
                conn.active.set(true);
                chunk = next_read(chunk, got, most);
            }
        }
        if conn.identifying.get() {
            shard.identify(&conn);
        }
        // An adapted client's packets or requests become frames in its decoder; what it sent
        // last (an MQTT DISCONNECT) closes the connection after those frames are relayed.
        let mut closing = shard.adapter_in(&conn);
        let since = Instant::now();
        loop {
            let outcome = shard.process_batch(&conn, &mut blocked, since);
            if outcome.agent_up {
                shard.await_route(&conn).await;
                if shard.adapter_accessed(&conn) {
                    closing = closing.or(shard.adapter_in(&conn));
                    continue;
                }
            }
            if !outcome.more {
                break;
            }
        }
        shard.flush_cross().await;
        if let Some(close) = closing {
            tracing::debug!(
                shard = shard.id,
                connection = conn.id,
                code = close.code.as_str_name(),
                text = close.text,
                "adapted client closed"
            );
            shard.close_after_flush(&conn);
        }
    }
    // Closing by our choice: what was queued (the reply, the notification) goes out first;
    // housekeeping cuts the wait at the linger time.
    if matches!(conn.state.get(), ConnState::Flushing(_)) {
        conn.flushed.wait().await;
    }
    shard.cleanup(&conn, ErrorCode::DestinationOffline);
    shard.flush_cross().await;
}

impl Shard {
    fn counter(&self) -> &ShardCounters {
        &self.counters[usize::from(self.id)]
    }

    fn new_conn(&self, stream: Stream, kind: ConnKind) -> Option<Rc<Conn>> {
        let fd = stream.raw_fd();
        self.new_conn_fd(stream, fd, kind)
    }

    fn new_conn_fd(&self, stream: Stream, fd: RawFd, kind: ConnKind) -> Option<Rc<Conn>> {
        let mut nonce = [0u8; 32];
        self.rng.fill(&mut nonce).ok()?;
        let mut id = self.next_conn.get();
        while self.conns.borrow().contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_conn.set(id.wrapping_add(1));
        let session = (kind == ConnKind::Agent).then(|| {
            AccessSession::new(
                self.config.gateway.clone(),
                nonce,
                self.checker.load_full(),
                self.config.access,
                Instant::now(),
            )
        });
        let mut decoder = FrameDecoder::new(self.config.limits);
        decoder.set_admission(match kind {
            ConnKind::Agent => conn::BEFORE_ACCESS,
            ConnKind::Peer { .. } => conn::PEER_LINK,
        });
        let conn = Rc::new(Conn {
            id,
            fd: Cell::new(fd),
            plain: matches!(stream, Stream::Plain(_)),
            kind,
            stream: RefCell::new(stream),
            session: RefCell::new(session),
            agent: RefCell::new(None),
            serial: RefCell::new(Vec::new()),
            decoder: RefCell::new(decoder),
            out: RefCell::new(Outbound::default()),
            state: Cell::new(ConnState::Open),
            hold: Cell::new(false),
            down_reported: Cell::new(false),
            congested: Cell::new(false),
            active: Cell::new(false),
            writer: Notify::default(),
            flushed: Notify::default(),
            space: RefCell::new(Vec::new()),
            allowance: Cell::new(None),
            writing: Cell::new(false),
            identifying: Cell::new(false),
            adapter: RefCell::new(None),
            upstream: Notify::default(),
            recipient: RefCell::new(None),
            translating: Cell::new(0),
        });
        self.conns.borrow_mut().insert(id, conn.clone());
        Some(conn)
    }

    /// An access-kind frame: to the session. Returns whether the agent just came up (the
    /// caller then waits for its route before the reply goes out).
    fn control(&self, conn: &Rc<Conn>, frame: &Frame) -> bool {
        match frame.message() {
            Ok(message) => {
                let mut session = conn.session.borrow_mut();
                match session.as_mut() {
                    Some(s) => s.handle_message(&message, Instant::now(), SystemTime::now()),
                    None => {
                        // A peer link carries only data frames (peering has its own session).
                        drop(session);
                        self.close_with(conn, ErrorCode::UnexpectedMessage, message.kind().name());
                        return false;
                    }
                }
                drop(session);
                self.apply_actions(conn)
            }
            Err(e) => {
                self.close_with(conn, e.code(), &e.to_string());
                false
            }
        }
    }

    /// Carries out what the session asked; returns whether an agent came up.
    fn apply_actions(&self, conn: &Rc<Conn>) -> bool {
        let mut up = false;
        loop {
            let action = conn
                .session
                .borrow_mut()
                .as_mut()
                .and_then(AccessSession::poll_action);
            let Some(action) = action else {
                return up;
            };
            match action {
                Action::Send(message) => self.push_gateway(conn, &message),
                Action::AgentUp {
                    agent,
                    serial,
                    scopes,
                    languages,
                    originals,
                } => {
                    tracing::debug!(shard = self.id, connection = conn.id, %agent, "agent up");
                    up = true;
                    conn.hold.set(true);
                    conn.decoder.borrow_mut().set_admission(conn::ACCESSED);
                    self.counter().agent_accessed();
                    let _ = self.events.send(ShardEvent::AgentUp {
                        agent: agent.clone(),
                        shard: self.id,
                        connection: conn.id,
                        serial: serial.clone(),
                        scopes,
                    });
                    *conn.recipient.borrow_mut() = self.recipient(&agent, &languages, originals);
                    *conn.agent.borrow_mut() = Some(agent);
                    *conn.serial.borrow_mut() = serial;
                }
                Action::AgentStatus { agent, status } => {
                    let _ = self.events.send(ShardEvent::AgentStatus { agent, status });
                }
                Action::AgentDown { agent, reason } => {
                    conn.down_reported.set(true);
                    let _ = self.events.send(ShardEvent::AgentDown {
                        agent,
                        shard: self.id,
                        connection: conn.id,
                        reason,
                    });
                }
                Action::Close(None) => self.close_after_flush(conn),
                // The session sent the reply or notification that says why.
                Action::Close(Some(code)) => {
                    tracing::info!(
                        shard = self.id,
                        connection = conn.id,
                        agent = ?conn.agent.borrow().as_ref().map(AgentId::as_str),
                        code = code.as_str_name(),
                        "agent connection closed"
                    );
                    self.close_after_flush(conn);
                }
            }
        }
    }

    /// A TLS client that named no protocol in ALPN sent its first bytes (or nothing within
    /// [`IDENTIFY_WAIT`]): an MQTT CONNECT makes it an MQTT client, anything else native.
    /// Writes (the challenge) go out from now on.
    fn identify(&self, conn: &Conn) {
        conn.identifying.set(false);
        let first = conn.decoder.borrow().unread().first().copied();
        if first == Some(MQTT_CONNECT) {
            self.speak_mqtt(conn);
        } else if conn.decoder.borrow().unread().starts_with(b"PRI ") {
            self.speak_grpc(conn);
        } else if a2a::looks_like_http(conn.decoder.borrow().unread()) {
            self.speak_a2a(conn);
        }
        conn.hold.set(false);
        conn.writer.notify();
    }

    /// The connection speaks MQTT: what it sent so far goes to a new adapter.
    fn speak_mqtt(&self, conn: &Conn) {
        let (agent, chain) = self.tls_agent(conn);
        // A packet carries a message's body plus its topic and properties.
        let max_packet = self.config.limits.max_data_body as usize + 8 * 1024;
        let adapter = MqttAdapter::new(agent, chain, max_packet);
        self.adapt(conn, Adapter::Mqtt(adapter));
        self.counter().mqtt_connection();
    }

    /// The connection speaks A2A over HTTP/1.1: what it sent so far goes to a new adapter.
    fn speak_a2a(&self, conn: &Conn) {
        let (agent, chain) = self.tls_agent(conn);
        let max_body = self.config.limits.max_data_body as usize + 64 * 1024;
        let directory = self.directory.get().cloned();
        let adapter = A2aAdapter::new(agent, chain, max_body, directory);
        self.adapt(conn, Adapter::A2a(adapter));
        self.counter().a2a_connection();
    }

    /// The connection speaks HTTP/2, A2A's gRPC binding: what it sent so far goes to a new
    /// adapter.
    fn speak_grpc(&self, conn: &Conn) {
        let (agent, chain) = self.tls_agent(conn);
        let max_message = self.config.limits.max_data_body as usize + 64 * 1024;
        let directory = self.directory.get().cloned();
        let adapter = GrpcAdapter::new(agent, chain, max_message, directory);
        self.adapt(conn, Adapter::A2aGrpc(Box::new(adapter)));
        self.counter().a2a_connection();
    }

    fn adapt(&self, conn: &Conn, mut adapter: Adapter) {
        let sent = conn.decoder.borrow_mut().take_unread();
        adapter.input().extend_from_slice(&sent);
        *conn.adapter.borrow_mut() = Some(Box::new(adapter));
    }

    /// The agent the TLS client certificate names, and its chain.
    fn tls_agent(&self, conn: &Conn) -> (Option<String>, Vec<Bytes>) {
        conn.session
            .borrow()
            .as_ref()
            .map(|s| (s.tls_identity().map(str::to_owned), s.tls_chain().to_vec()))
            .unwrap_or_default()
    }

    /// Decodes what an MQTT client sent into frames for its decoder; `Some` when the
    /// connection is to close (after what was decoded is relayed).
    fn adapter_in(&self, conn: &Conn) -> Option<mqtt::Close> {
        let mut mqtt = conn.adapter.borrow_mut();
        let adapter = mqtt.as_mut()?;
        let mut up = self.encoder.borrow_mut();
        let result = adapter.from_client(Instant::now(), &mut up);
        let frames = up.take();
        let answered = adapter.has_out();
        drop(up);
        drop(mqtt);
        if !frames.is_empty() {
            conn.decoder.borrow_mut().extend_from_slice(&frames);
        }
        if answered {
            conn.writer.notify();
        }
        result.err()
    }

    /// The access of an MQTT client succeeded: its adapter decodes what came after CONNECT.
    fn adapter_accessed(&self, conn: &Conn) -> bool {
        match conn.adapter.borrow_mut().as_mut() {
            Some(adapter) => {
                adapter.accessed();
                true
            }
            None => false,
        }
    }

    /// Holds the access reply until the control plane made the agent's route visible, so a
    /// reply means reachable. Bounded: after 2 s the reply goes out anyway.
    async fn await_route(&self, conn: &Conn) {
        let expected = Route::Local {
            shard: self.id,
            connection: conn.id,
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let visible = conn.agent.borrow().as_ref().is_some_and(|a| {
                self.routes.borrow_mut().load().lookup(a.as_str()) == Some(expected)
            });
            if visible || Instant::now() >= deadline || !conn.is_open() {
                break;
            }
            sleep(Duration::from_micros(500)).await;
        }
        conn.hold.set(false);
        conn.writer.notify();
    }

    /// Sends a notification with `code`, then closes once it is written.
    fn close_with(&self, conn: &Conn, code: ErrorCode, text: &str) {
        if !conn.is_open() {
            return;
        }
        tracing::info!(
            shard = self.id,
            connection = conn.id,
            code = code.as_str_name(),
            text,
            "closing a connection"
        );
        let note = pb::Notification {
            code: code as i32,
            subcode: 0,
            text: text.to_owned(),
        };
        self.push_gateway(conn, &note.into());
        self.close_after_flush(conn);
    }

    fn close_after_flush(&self, conn: &Conn) {
        if conn.is_open() {
            conn.state.set(ConnState::Flushing(Instant::now()));
            conn.hold.set(false);
            conn.writer.notify();
        }
    }

    /// The connection is gone: forget it, tell the control plane, NACK what it still had
    /// queued (with `reason`), release its memory.
    fn cleanup(&self, conn: &Conn, reason: ErrorCode) {
        if conn.state.replace(ConnState::Closed) == ConnState::Closed {
            return; // cleaned up already (the drain's deadline closed it)
        }
        self.set_congested(conn, false);
        conn.shut();
        self.lose_calls(conn);
        self.conns.borrow_mut().remove(&conn.id);
        if let ConnKind::Peer {
            link: Some(index), ..
        } = conn.kind
        {
            let mut links = self.links.borrow_mut();
            if links.get(&index).is_some_and(|l| l.id == conn.id) {
                links.remove(&index);
            }
        }
        self.counter().connection_closed();
        if let Some(agent) = conn.agent.borrow_mut().take()
            && !conn.down_reported.replace(true)
        {
            let _ = self.events.send(ShardEvent::AgentDown {
                agent,
                shard: self.id,
                connection: conn.id,
                reason: DownReason::Disconnected,
            });
        }
        let out = std::mem::take(&mut *conn.out.borrow_mut());
        self.queued_sub(out.batch.len());
        for (kind, body) in out.batch.unwritten() {
            self.undeliverable(kind, body, reason, String::new());
        }
        for w in conn.space.borrow_mut().drain(..) {
            w.wake();
        }
        conn.writer.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grow_with_a_stream_and_shrink_with_a_trickle() {
        let most = 64 * 1024;
        let mut chunk = MIN_READ;
        for _ in 0..10 {
            chunk = next_read(chunk, chunk, most);
        }
        assert_eq!(chunk, most);
        // Half full: stays.
        assert_eq!(next_read(most, most / 2, most), most);
        for _ in 0..10 {
            chunk = next_read(chunk, 300, most);
        }
        assert_eq!(chunk, MIN_READ);
        // A configured ceiling below the floor wins.
        assert_eq!(next_read(4096, 10, 2048), 2048);
    }

    /// The size of the future `task` makes: what its task holds for as long as it runs.
    fn task_size<F, T>(_task: impl FnOnce(Rc<Shard>, Rc<Conn>) -> F) -> usize
    where
        F: std::future::Future<Output = T>,
    {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_s_tasks_hold_little_for_its_life() {
        // Every connection runs a reader and a writer for as long as it is open: their
        // futures are part of what an idle connection costs (issue 20: at most 16 KiB each,
        // all told). What only some connections do (an A2A server's TLS redial) is boxed
        // when it happens; sized into the reader it once cost every connection 3.5 KB.
        let (reader, writer) = (task_size(serve), task_size(conn::write_loop));
        assert!(
            reader + writer <= 2048,
            "reader {reader} B, writer {writer} B"
        );
    }
}
