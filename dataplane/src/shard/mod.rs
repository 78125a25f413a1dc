//! One shard: a glommio executor pinned to a core, owning the connections its listeners
//! accepted. Everything here runs on that one thread: state is `Rc`/`RefCell`, and nothing
//! takes a lock. Other shards are reached through bounded shared channels carrying batches of
//! frames; the control plane hears of agents through an unbounded channel and is never waited
//! on. `docs/dataplane.md` tells the life of a frame through this file.

use std::{
    cell::{Cell, RefCell},
    collections::VecDeque,
    io::{self, IoSlice},
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    rc::Rc,
    sync::{Arc, mpsc},
    task::{Context, Poll, Waker},
    time::{Duration, Instant, SystemTime},
};

use agw_proto::{
    Admission, DEFAULT_HOP_LIMIT, DataView, Frame, FrameDecoder, FrameEncoder, FrameError,
    FrameHeader, HEADER_LEN, Kind, Message, WriteBatch,
    identity::{AgentId, GatewayId},
    pb::{self, ErrorCode},
};
use agw_tls::{CertificateChecker, TlsIdentity, peer_identity};
use arc_swap::ArcSwap;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use futures_lite::{AsyncRead, AsyncWrite, future::poll_fn};
use futures_rustls::{TlsAcceptor, TlsConnector, client, server};
use glommio::{
    GlommioError, ResourceType,
    channels::shared_channel::{ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender},
    net::{TcpListener, TcpStream},
    spawn_local,
    timer::sleep,
};
use hashbrown::HashMap;
use nix::{
    errno::Errno,
    sys::socket::{MsgFlags, Shutdown, SockaddrStorage, sendmsg, shutdown},
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::ServerName;

mod conn;
mod links;

use conn::{
    Conn, ConnKind, ConnState, Mark, Notify, Outbound, Stream, read, wait_for_space, write_loop,
};
use links::{accept_peers, keep_link};

use crate::{
    access::{AccessSession, Action, DownReason},
    config::{DataplaneConfig, LiveLimits},
    congestion::Congestion,
    counters::ShardCounters,
    events::ShardEvent,
    routing::{Prepared, Route, RoutingReader, RoutingSnapshot, SnapshotCache},
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
    /// Keep a link to peer `index` (the gateway `gateway`, its relay's peer port `address`).
    Peer {
        index: u32,
        gateway: GatewayId,
        address: SocketAddr,
    },
    /// Drop the link to peer `index`.
    PeerGone { index: u32 },
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
    pub peer_tls: Option<Arc<PeerTls>>,
    pub counters: Arc<[ShardCounters]>,
    pub congestion: Arc<[Congestion]>,
    pub routes: RoutingReader,
    pub checker: Arc<ArcSwap<CertificateChecker>>,
    pub events: Sender<ShardEvent>,
    pub commands: Receiver<ShardCommand>,
    /// Indexed by destination shard; `None` at this shard's own index.
    pub senders: Vec<Option<SharedSender<CrossBatch>>>,
    pub receivers: Vec<SharedReceiver<CrossBatch>>,
    pub ready: mpsc::Sender<io::Result<(SocketAddr, Option<SocketAddr>)>>,
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
    events: Sender<ShardEvent>,
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
    peer_tls: Option<Arc<PeerTls>>,
    /// A reusable buffer for TLS writes (TLS copies into records anyway).
    tls_out: RefCell<Vec<u8>>,
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
    let peer_listener = match setup.peer_listen.map(TcpListener::bind) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            let _ = setup.ready.send(Err(io::Error::other(e.to_string())));
            return;
        }
    };
    let peer_addr = peer_listener.as_ref().and_then(|l| l.local_addr().ok());
    // Listening now; connections wait in the backlog until the mesh is up below.
    let _ = setup.ready.send(Ok((addr, peer_addr)));
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
        events: setup.events,
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(0),
        queued: Cell::new(0),
        cross_out: RefCell::new((0..shards).map(|_| None).collect()),
        pending_cross: RefCell::new((0..shards).map(|_| Vec::new()).collect()),
        rng: SystemRandom::new(),
        links: RefCell::new(HashMap::new()),
        wanted: RefCell::new(HashMap::new()),
        peer_tls: setup.peer_tls,
        tls_out: RefCell::new(Vec::new()),
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
    spawn_local(accept_loop(shard.clone(), listener)).detach();
    if let Some(l) = peer_listener {
        spawn_local(accept_peers(shard.clone(), l)).detach();
    }
    shard.housekeeping(setup.commands).await;
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors or the like: back off instead of spinning.
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.conns.borrow().len() >= shard.limits.get().max_connections_per_shard {
            shard.counter().connection_refused();
            continue;
        }
        let _ = stream.set_nodelay(true);
        if let Some(conn) = shard.new_conn(Stream::Plain(stream), ConnKind::Agent) {
            if shard.draining.get() {
                shard.close_with(&conn, ErrorCode::Draining, "gateway draining");
            }
            spawn_local(serve(shard.clone(), conn)).detach();
        }
    }
}

/// Reads and relays one connection's frames; the connection ends when this returns.
async fn serve(shard: Rc<Shard>, conn: Rc<Conn>) {
    shard.counter().connection_accepted();
    spawn_local(write_loop(shard.clone(), conn.clone())).detach();
    shard.apply_actions(&conn);
    let chunk = shard.config.read_chunk;
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
        match read(&conn, chunk).await {
            Ok(0) | Err(_) => break,
            Ok(_) => conn.active.set(true),
        }
        let since = Instant::now();
        loop {
            let (more, up) = shard.process_batch(&conn, &mut blocked, since);
            if up {
                shard.await_route(&conn).await;
            }
            if !more {
                break;
            }
        }
        shard.flush_cross().await;
    }
    // Closing by our choice: what was queued (the reply, the notification) goes out first;
    // housekeeping cuts the wait at the linger time.
    if matches!(conn.state.get(), ConnState::Flushing(_)) {
        conn.flushed.wait().await;
    }
    shard.cleanup(&conn, ErrorCode::DestinationOffline);
    shard.flush_cross().await;
}

/// Where a connection's reading waits.
enum Blocked {
    None,
    /// A connection on this shard, over its soft limit.
    Local(Rc<Conn>),
    /// A connection on another shard, marked congested.
    Remote {
        shard: u16,
        connection: u32,
    },
}

async fn cross_receive(shard: Rc<Shard>, rx: SharedReceiver<CrossBatch>) {
    let rx: ConnectedReceiver<CrossBatch> = rx.connect().await;
    while let Some(batch) = rx.recv().await {
        for frame in batch {
            shard.deliver_cross(frame);
        }
    }
}

/// What a NACK refers to.
#[derive(Clone, Copy)]
struct Target<'a> {
    kind: Kind,
    destination: &'a str,
    message_id: u64,
}

impl<'a> Target<'a> {
    fn of(view: &DataView<'a>) -> Target<'a> {
        Target {
            kind: view.kind,
            destination: view.destination,
            message_id: view.message_id,
        }
    }
}

fn nack_message(reporter: &str, target: Target<'_>, source: &str, reason: ErrorCode) -> pb::Nack {
    pb::Nack {
        destination: source.to_owned(),
        original_destination: target.destination.to_owned(),
        message_id: target.message_id,
        reason: reason as i32,
        reporter: reporter.to_owned(),
        detail: String::new(),
        retry_after_ms: if reason == ErrorCode::Overloaded {
            100
        } else {
            0
        },
    }
}

impl Shard {
    fn counter(&self) -> &ShardCounters {
        &self.counters[usize::from(self.id)]
    }

    fn new_conn(&self, stream: Stream, kind: ConnKind) -> Option<Rc<Conn>> {
        let fd = match &stream {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Server(s) => s.get_ref().0.as_raw_fd(),
            Stream::Client(s) => s.get_ref().0.as_raw_fd(),
        };
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
            fd,
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
        });
        self.conns.borrow_mut().insert(id, conn.clone());
        Some(conn)
    }

    /// Decodes up to [`BATCH`] frames, prepares their destinations' lookups, then relays or
    /// handles each. Returns whether more frames may be buffered, and whether an agent came up
    /// (its reply then waits for its route).
    fn process_batch(
        &self,
        conn: &Rc<Conn>,
        blocked: &mut Blocked,
        since: Instant,
    ) -> (bool, bool) {
        let mut frames = std::mem::take(&mut *self.batch.borrow_mut());
        let mut more = true;
        {
            let mut decoder = conn.decoder.borrow_mut();
            while frames.len() < BATCH {
                match decoder.decode() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => {
                        more = false;
                        break;
                    }
                    Err(e) => {
                        drop(decoder);
                        // Frames before the bad bytes are still handled.
                        self.finish_batch(conn, &mut frames, blocked, since);
                        let code = match e {
                            // An agent that has not accessed yet sent something else.
                            FrameError::NotAdmitted(_)
                                if conn.kind == ConnKind::Agent
                                    && conn.agent.borrow().is_none() =>
                            {
                                ErrorCode::NotAccessed
                            }
                            _ => e.code(),
                        };
                        self.close_with(conn, code, &e.to_string());
                        *self.batch.borrow_mut() = frames;
                        return (false, false);
                    }
                }
            }
        }
        let up = self.finish_batch(conn, &mut frames, blocked, since);
        *self.batch.borrow_mut() = frames;
        (more && conn.is_open(), up)
    }

    fn finish_batch(
        &self,
        conn: &Rc<Conn>,
        frames: &mut Vec<Frame>,
        blocked: &mut Blocked,
        since: Instant,
    ) -> bool {
        let mut cache = self.routes.borrow_mut();
        let snapshot: &RoutingSnapshot = cache.load();
        let mut prepared = [None; BATCH];
        for (p, frame) in prepared.iter_mut().zip(frames.iter()) {
            if frame.header.kind.is_data()
                && let Ok(view) = frame.data_view()
            {
                *p = Some(snapshot.prepare(view.destination));
            }
        }
        let mut up = false;
        for (frame, p) in frames.drain(..).zip(prepared) {
            if !conn.is_open() {
                continue;
            }
            if frame.header.kind.is_data() {
                self.relay(conn, frame, snapshot, p, blocked, since);
            } else {
                up |= self.control(conn, &frame);
            }
        }
        up
    }

    /// The hot path: one data frame from an accessed agent to its destination's queue.
    /// `since`: when the read that brought it finished.
    fn relay(
        &self,
        conn: &Rc<Conn>,
        frame: Frame,
        snapshot: &RoutingSnapshot,
        prepared: Option<Prepared>,
        blocked: &mut Blocked,
        since: Instant,
    ) {
        let agent_ref = conn.agent.borrow();
        let accessed = agent_ref.as_ref().map(AgentId::as_str);
        if conn.kind == ConnKind::Agent && accessed.is_none() {
            drop(agent_ref);
            self.close_with(conn, ErrorCode::NotAccessed, "access first");
            return;
        }
        self.counter().accepted(HEADER_LEN + frame.body.len());
        let view = match frame.data_view() {
            Ok(v) => v,
            Err(e) => {
                let target = Target {
                    kind: frame.header.kind,
                    destination: "",
                    message_id: 0,
                };
                self.refuse(conn, accessed.unwrap_or_default(), target, e.code());
                return;
            }
        };
        let target = Target::of(&view);
        // Who NACKs go back to: the agent itself, or (on a peer link) the frame's source.
        let source = accessed.or(view.source()).unwrap_or_default();
        let allowed = match &conn.kind {
            // An agent sends messages and ACKs as itself; NACKs are the gateways' to send.
            ConnKind::Agent => view.kind != Kind::Nack && view.source() == accessed,
            // A peer relays other domains' agents' frames, and NACKs; never ours.
            ConnKind::Peer { .. } => match view.source() {
                None => view.kind == Kind::Nack,
                Some(s) => {
                    AgentId::parse(s).is_ok_and(|a| a.domain() != self.config.gateway.domain())
                }
            },
        };
        if !allowed {
            self.refuse(conn, source, target, ErrorCode::Unauthorized);
            return;
        }
        if frame.header.hop_limit == 0 {
            self.refuse(conn, source, target, ErrorCode::TtlExpired);
            return;
        }
        let soft = self.limits.get().queue_soft_limit;
        let header = FrameHeader {
            hop_limit: frame.header.hop_limit - 1,
            ..frame.header
        };
        let route = match prepared {
            Some(p) => snapshot.lookup_prepared(view.destination, p),
            None => snapshot.lookup(view.destination),
        };
        let refusal = match route {
            None => ErrorCode::NoRoute,
            Some(Route::Offline) => ErrorCode::DestinationOffline,
            Some(Route::Unreachable) => ErrorCode::Unreachable,
            Some(Route::Peer { peer }) => {
                let link = self.links.borrow().get(&peer).cloned();
                match link {
                    Some(link) => match self.push_relayed(&link, header, frame.body.clone(), since)
                    {
                        Ok(()) => {
                            if link.queued() > soft {
                                *blocked = Blocked::Local(link);
                            }
                            return;
                        }
                        Err(code) => code,
                    },
                    // No link from this shard yet (it is being dialled): unreachable for now.
                    None => ErrorCode::Unreachable,
                }
            }
            Some(Route::Local { shard, connection }) if shard == self.id => {
                let dest = self.conns.borrow().get(&connection).cloned();
                let Some(dest) = dest else {
                    self.refuse(conn, source, target, ErrorCode::DestinationOffline);
                    return;
                };
                match self.push_relayed(&dest, header, frame.body.clone(), since) {
                    Ok(()) => {
                        if dest.queued() > soft {
                            *blocked = Blocked::Local(dest);
                        }
                        return;
                    }
                    Err(code) => code,
                }
            }
            Some(Route::Local { shard, connection }) => {
                if self.over_budget(frame.body.len()) {
                    ErrorCode::Overloaded
                } else {
                    let mut pending = self.pending_cross.borrow_mut();
                    match pending.get_mut(usize::from(shard)) {
                        Some(batch) => {
                            batch.push(CrossFrame::Relayed {
                                connection,
                                header,
                                body: frame.body.clone(),
                                since,
                            });
                            if self.remote_congested(shard, connection) {
                                *blocked = Blocked::Remote { shard, connection };
                            }
                            return;
                        }
                        None => ErrorCode::NoRoute,
                    }
                }
            }
        };
        self.refuse(conn, source, target, refusal);
    }

    fn remote_congested(&self, shard: u16, connection: u32) -> bool {
        self.congestion
            .get(usize::from(shard))
            .is_some_and(|c| c.is_congested(connection))
    }

    fn set_congested(&self, conn: &Conn, congested: bool) {
        if conn.congested.replace(congested) == congested {
            return;
        }
        if let Some(c) = self.congestion.get(usize::from(self.id)) {
            if congested {
                c.mark(conn.id);
            } else {
                c.clear(conn.id);
            }
        }
    }

    fn over_budget(&self, len: usize) -> bool {
        self.queued.get() + len > self.limits.get().shard_memory_budget
    }

    /// NACKs a frame from `conn` back to it (an ACK is only counted: answering could loop).
    fn refuse(&self, conn: &Conn, source: &str, target: Target<'_>, reason: ErrorCode) {
        if target.kind != Kind::AgentMessage {
            self.counter().discarded();
            return;
        }
        self.counter().nacked(reason);
        let nack = nack_message(&self.reporter, target, source, reason);
        self.push_gateway(conn, &nack.into());
    }

    /// Queues a relayed frame for `dest` (read at `since`), or says why not.
    fn push_relayed(
        &self,
        dest: &Conn,
        header: FrameHeader,
        body: Bytes,
        since: Instant,
    ) -> Result<(), ErrorCode> {
        if !dest.is_open() {
            return Err(ErrorCode::DestinationOffline);
        }
        let len = HEADER_LEN + body.len();
        let limits = self.limits.get();
        if dest.queued() + len > limits.queue_hard_limit || self.over_budget(len) {
            return Err(ErrorCode::Overloaded);
        }
        let mut out = dest.out.borrow_mut();
        out.pushed += len as u64;
        let end = out.pushed;
        out.marks.push_back(Mark {
            end,
            kind: header.kind,
            body: body.clone(),
            since,
        });
        out.batch.push_frame(header, body);
        let over = out.batch.len() > limits.queue_soft_limit;
        drop(out);
        self.queued_add(len);
        if over {
            self.set_congested(dest, true);
        }
        dest.writer.notify();
        Ok(())
    }

    /// Queues a frame the gateway made (challenge, reply, NACK, notification).
    fn push_gateway(&self, conn: &Conn, message: &Message) {
        if let Some(frame) = self.encode(message) {
            self.push_encoded(conn, frame);
        }
    }

    /// A message this gateway makes, framed (data kinds with the default hop limit).
    fn encode(&self, message: &Message) -> Option<Bytes> {
        let mut encoder = self.encoder.borrow_mut();
        let hop = if message.kind().is_data() {
            DEFAULT_HOP_LIMIT
        } else {
            0
        };
        encoder.push_message(message, hop).ok()?;
        Some(encoder.take())
    }

    /// Queues whole encoded frames for `conn`.
    fn push_encoded(&self, conn: &Conn, bytes: Bytes) {
        if conn.state.get() == ConnState::Closed {
            return;
        }
        let len = bytes.len();
        let mut out = conn.out.borrow_mut();
        out.pushed += len as u64;
        out.batch.push_encoded(bytes);
        drop(out);
        self.queued_add(len);
        conn.writer.notify();
    }

    fn queued_add(&self, len: usize) {
        let q = self.queued.get() + len;
        self.queued.set(q);
        self.counter().set_queued_bytes(q);
    }

    fn queued_sub(&self, len: usize) {
        let q = self.queued.get().saturating_sub(len);
        self.queued.set(q);
        self.counter().set_queued_bytes(q);
    }

    /// After a write of `n` bytes: count the frames it completed, wake paused senders.
    fn wrote(&self, conn: &Conn, n: usize) {
        let mut out = conn.out.borrow_mut();
        out.batch.advance(n);
        out.written += n as u64;
        let mut delivered = 0;
        let mut now = None;
        let written = out.written;
        while out.marks.front().is_some_and(|m| m.end <= written) {
            let Some(mark) = out.marks.pop_front() else {
                break;
            };
            let now = *now.get_or_insert_with(Instant::now);
            self.counter()
                .resided(now.saturating_duration_since(mark.since));
            delivered += 1;
        }
        let below = out.batch.len() <= self.limits.get().queue_soft_limit;
        drop(out);
        self.counter().delivered(delivered);
        self.counter().written(n);
        self.queued_sub(n);
        if below {
            self.set_congested(conn, false);
            for w in conn.space.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// Sends the frames gathered for other shards, one batch per shard. A full channel makes
    /// this connection wait (its sender is not read meanwhile), never the others.
    async fn flush_cross(&self) {
        let shards = self.pending_cross.borrow().len();
        for to in 0..shards {
            let batch = match self.pending_cross.borrow_mut().get_mut(to) {
                Some(b) if !b.is_empty() => std::mem::take(b),
                _ => continue,
            };
            let tx = self.cross_out.borrow().get(to).cloned().flatten();
            let Some(tx) = tx else {
                continue;
            };
            self.counter().cross_shard_batch();
            let refused = match tx.try_send(batch) {
                Ok(()) => continue,
                Err(GlommioError::WouldBlock(ResourceType::Channel(batch))) => {
                    match tx.send(batch).await {
                        Ok(()) => continue,
                        Err(GlommioError::Closed(ResourceType::Channel(batch))) => batch,
                        Err(_) => continue,
                    }
                }
                Err(GlommioError::Closed(ResourceType::Channel(batch))) => batch,
                Err(_) => continue,
            };
            // The other shard is gone (stopping): these frames cannot be delivered.
            for frame in refused {
                if let CrossFrame::Relayed { header, body, .. } = frame {
                    self.undeliverable(header.kind, &body, ErrorCode::Unreachable);
                }
            }
        }
    }

    /// A frame from another shard for one of this shard's connections.
    fn deliver_cross(&self, frame: CrossFrame) {
        match frame {
            CrossFrame::Made { connection, frame } => {
                let dest = self.conns.borrow().get(&connection).cloned();
                if let Some(dest) = dest {
                    self.push_encoded(&dest, frame);
                }
            }
            CrossFrame::Relayed {
                connection,
                header,
                body,
                since,
            } => {
                let dest = self.conns.borrow().get(&connection).cloned();
                let result = match dest {
                    Some(dest) => self.push_relayed(&dest, header, body.clone(), since),
                    None => Err(ErrorCode::DestinationOffline),
                };
                if let Err(code) = result {
                    self.undeliverable(header.kind, &body, code);
                }
            }
        }
    }

    /// An accepted frame that cannot reach its destination: NACK it to its source, wherever
    /// the source's connection is.
    fn undeliverable(&self, kind: Kind, body: &[u8], reason: ErrorCode) {
        let Ok(view) = DataView::parse(kind, body) else {
            self.counter().discarded();
            return;
        };
        if view.kind != Kind::AgentMessage {
            self.counter().discarded();
            return;
        }
        self.counter().nacked(reason);
        let Some(source) = view.source() else {
            return;
        };
        let nack: Message = nack_message(&self.reporter, Target::of(&view), source, reason).into();
        let route = self.routes.borrow_mut().load().lookup(source);
        match route {
            Some(Route::Local { shard, connection }) if shard == self.id => {
                if let Some(c) = self.conns.borrow().get(&connection) {
                    self.push_gateway(c, &nack);
                }
            }
            Some(Route::Local { shard, connection }) => {
                let Some(frame) = self.encode(&nack) else {
                    return;
                };
                if let Some(batch) = self.pending_cross.borrow_mut().get_mut(usize::from(shard)) {
                    batch.push(CrossFrame::Made { connection, frame });
                }
            }
            Some(Route::Peer { peer }) => {
                let link = self.links.borrow().get(&peer).cloned();
                if let Some(link) = link {
                    self.push_gateway(&link, &nack);
                }
            }
            // The source left too: nobody to tell.
            _ => {}
        }
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
                Action::AgentUp { agent, serial } => {
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
                    });
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
        let mut out = std::mem::take(&mut *conn.out.borrow_mut());
        self.queued_sub(out.batch.len());
        for mark in out.marks.drain(..) {
            self.undeliverable(mark.kind, &mark.body, reason);
        }
        for w in conn.space.borrow_mut().drain(..) {
            w.wake();
        }
        conn.writer.notify();
    }

    /// Timers, idle buffers, lingering closes and orders, every tick, until told to stop.
    async fn housekeeping(self: &Rc<Self>, commands: Receiver<ShardCommand>) {
        let tick = self.config.tick;
        loop {
            sleep(tick).await;
            let mut revoked: Vec<Vec<u8>> = Vec::new();
            while let Ok(command) = commands.try_recv() {
                match command {
                    ShardCommand::Stop => {
                        self.stop();
                        return;
                    }
                    ShardCommand::Drain(applied) => {
                        self.draining.set(true);
                        let _ = applied.send(self.id);
                    }
                    ShardCommand::Close => {
                        self.wanted.borrow_mut().clear();
                        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
                        for conn in conns {
                            self.close_with(&conn, ErrorCode::Draining, "gateway stopping");
                        }
                    }
                    ShardCommand::Abandon => self.abandon(),
                    ShardCommand::Limits(limits) => self.limits.set(limits),
                    ShardCommand::Revoked(serials) => revoked.extend(serials),
                    ShardCommand::Peer {
                        index,
                        gateway,
                        address,
                    } => {
                        let new = self
                            .wanted
                            .borrow_mut()
                            .insert(index, (gateway, address))
                            .is_none();
                        if new {
                            spawn_local(keep_link(self.clone(), index)).detach();
                        }
                    }
                    ShardCommand::PeerGone { index } => {
                        self.wanted.borrow_mut().remove(&index);
                        let link = self.links.borrow_mut().remove(&index);
                        if let Some(link) = link {
                            self.close_after_flush(&link);
                        }
                    }
                }
            }
            let now = Instant::now();
            let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
            for conn in conns {
                let due = conn
                    .session
                    .borrow()
                    .as_ref()
                    .and_then(AccessSession::next_timeout)
                    .is_some_and(|t| t <= now);
                if due {
                    if let Some(s) = conn.session.borrow_mut().as_mut() {
                        s.handle_timeout(now);
                    }
                    self.apply_actions(&conn);
                }
                if !revoked.is_empty() && revoked.contains(&conn.serial.borrow()) {
                    self.close_with(&conn, ErrorCode::CertRevoked, "certificate revoked");
                }
                if !conn.active.replace(false) {
                    conn.decoder.borrow_mut().release_if_idle();
                }
                if let ConnState::Flushing(since) = conn.state.get()
                    && now.duration_since(since) > self.config.close_linger
                {
                    conn.shut();
                }
            }
            self.flush_cross().await;
        }
    }

    fn stop(&self) {
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for conn in conns {
            conn.shut();
            self.cleanup(&conn, ErrorCode::DestinationOffline);
        }
    }

    /// The drain's deadline passed: every connection still holding relayed frames is closed,
    /// its frames NACKed `DRAINING` to their senders (a frame half written cannot be taken
    /// back, so its connection cannot stay).
    fn abandon(&self) {
        let stuck: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .values()
            .filter(|c| !c.out.borrow().marks.is_empty())
            .cloned()
            .collect();
        for conn in stuck {
            tracing::warn!(
                shard = self.id,
                connection = conn.id,
                frames = conn.out.borrow().marks.len(),
                "drain deadline: queued frames NACKed, connection closed"
            );
            conn.shut();
            self.cleanup(&conn, ErrorCode::Draining);
        }
    }
}
