//! Peering sessions over mutual TLS: one thread per configured peer drives its
//! [`PeerSession`] with a real transport, and one thread accepts the peers that dial in.
//!
//! The control plane talks to the peer threads through channels: [`PeerCommand`]s in (full
//! sync, advertisements, stop), [`PeerEvent`]s out (up, down, learned, withdrawn). A peer thread
//! blocks only on its own socket, with a read timeout that wakes it for its timers and
//! commands; nothing here touches the relay's shards.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agw_aca::tls::{TlsIdentity, peer_identity};
use agw_proto::{
    FrameDecoder, FrameEncoder, FrameLimits, Message,
    identity::Domain,
    pb::{self, ErrorCode},
};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rustls::{ClientConnection, ServerConnection, StreamOwned, pki_types::ServerName};

use super::session::{Input, Output, PeerConfig, PeerSession, SessionState, collision_winner};

/// One configured peer.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// The session's settings.
    pub config: PeerConfig,
    /// Where to dial it (`None`: wait to be dialled).
    pub address: Option<SocketAddr>,
}

/// The peering side of a gateway.
#[derive(Debug, Clone)]
pub struct PeeringConfig {
    /// Where peers dial in.
    pub listen: SocketAddr,
    /// This gateway's certificate, key, trust anchor and the CRLs of every domain it peers
    /// with (rustls refuses a peer whose issuer's CRL it lacks).
    pub tls: TlsIdentity,
    /// The peers.
    pub peers: Vec<PeerSpec>,
}

/// What a peer thread reports; the `usize` beside it is the peer's index in the config.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// The session came up: send it the full table.
    Up {
        /// The peer's domain.
        domain: Domain,
        /// The negotiated hold time.
        hold_time: Duration,
        /// Where the peer's relay takes links from this gateway's shards.
        agent_access_address: String,
    },
    /// The session ended; `disconnected` when the peer left for good.
    Down {
        /// It sent DISCONNECT.
        disconnected: bool,
        /// The code it ended with.
        code: ErrorCode,
    },
    /// Summaries learned.
    Learned(Vec<pb::AgentSummary>),
    /// Agents withdrawn.
    Withdrawn(Vec<String>),
    /// The peer's full table is in: what it advertised before this session and not again is
    /// stale.
    Synced,
    /// The peer's gateway status changed (maintenance, or back to running).
    Status(pb::Status),
}

/// What the control plane asks of a peer thread.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerCommand {
    /// The full table, after [`PeerEvent::Up`].
    FullSync(Vec<pb::AgentSummary>),
    /// Incremental changes.
    Advertise(Vec<pb::AgentSummary>, Vec<String>),
    /// This gateway's status changed (an operator's maintenance mode).
    SetStatus(pb::Status),
    /// Leave for good.
    Stop(String),
}

/// One peer as operators see it (the neighbour list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's gateway ID.
    pub gateway: String,
    /// Where its session is.
    pub state: SessionState,
    /// How long the current session has been up.
    pub uptime: Option<Duration>,
    /// Agents learned from it now.
    pub summaries_in: usize,
    /// Summaries sent to it in the current session.
    pub summaries_out: usize,
}

/// One peer's thread as the others reach it.
#[derive(Debug)]
struct Slot {
    gateway: String,
    commands: Sender<PeerCommand>,
    handover: Sender<Handover>,
    status: PeerStatus,
}

/// The peers by index; a removed peer leaves `None` (indices are never reused, so a late
/// event from a removed peer's thread names no one).
#[derive(Debug, Default)]
struct Peers {
    slots: Vec<Option<Slot>>,
}

impl Peers {
    fn by_gateway(&self, gateway: &str) -> Option<(usize, &Slot)> {
        self.slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.as_ref().filter(|s| s.gateway == gateway).map(|s| (i, s)))
    }
}

/// Sends commands to the peer threads.
#[derive(Debug, Clone)]
pub struct PeerCommander {
    peers: Arc<Mutex<Peers>>,
}

impl PeerCommander {
    /// Sends a command to peer `index`.
    pub fn command(&self, index: usize, command: PeerCommand) {
        if let Ok(peers) = self.peers.lock()
            && let Some(Some(slot)) = peers.slots.get(index)
        {
            let _ = slot.commands.send(command);
        }
    }
}

/// The neighbour list, readable from any thread (the metrics endpoint's).
#[derive(Debug, Clone)]
pub struct Neighbours(Arc<Mutex<Peers>>);

impl Neighbours {
    /// Every peer configured now and its session.
    pub fn list(&self) -> Vec<PeerStatus> {
        self.0
            .lock()
            .map(|p| p.slots.iter().flatten().map(|s| s.status.clone()).collect())
            .unwrap_or_default()
    }
}

/// The running peering: its threads and the channels to them.
#[derive(Debug)]
pub struct Peering {
    listen: SocketAddr,
    tls: TlsIdentity,
    events: Sender<(usize, PeerEvent)>,
    peers: Arc<Mutex<Peers>>,
    paused: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

trait Transport: Read + Write + Send {
    fn socket(&self) -> &TcpStream;
}

impl Transport for StreamOwned<ClientConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

impl Transport for StreamOwned<ServerConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// A transport handed to a peer thread, with who dialled it.
struct Handover {
    transport: Box<dyn Transport>,
    dialled: bool,
    identity: String,
}

impl Peering {
    /// Binds the peering listener and starts one thread per peer; events go to `events`.
    pub fn start(config: PeeringConfig, events: Sender<(usize, PeerEvent)>) -> io::Result<Peering> {
        let listener = TcpListener::bind(config.listen)?;
        let listen = listener.local_addr()?;
        let server = Arc::new(config.tls.server_config().map_err(io::Error::other)?);
        let peering = Peering {
            listen,
            tls: config.tls,
            events,
            peers: Arc::new(Mutex::new(Peers::default())),
            paused: Arc::new(AtomicBool::new(false)),
            stopped: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        };
        for spec in config.peers {
            peering.add_peer(spec)?;
        }
        let (peers, paused, stopped) = (
            peering.peers.clone(),
            peering.paused.clone(),
            peering.stopped.clone(),
        );
        let accept_thread = std::thread::Builder::new()
            .name("agw-peering".into())
            .spawn(move || accept(listener, server, peers, paused, stopped))?;
        peering.keep(accept_thread);
        Ok(peering)
    }

    fn keep(&self, thread: JoinHandle<()>) {
        if let Ok(mut threads) = self.threads.lock() {
            threads.push(thread);
        }
    }

    /// The index the next added peer gets.
    pub fn next_index(&self) -> usize {
        self.peers.lock().map_or(0, |p| p.slots.len())
    }

    /// Starts a session with one more peer; returns its index. Refused if it is a peer
    /// already.
    pub fn add_peer(&self, spec: PeerSpec) -> io::Result<usize> {
        let gateway = spec.config.peer.to_string();
        let mut session_config = spec.config.clone();
        session_config.certificate_chain = self.tls.chain.clone();
        let client = Arc::new(
            self.tls
                .client_config(spec.config.peer.as_str())
                .map_err(io::Error::other)?,
        );
        let (command_tx, command_rx) = crossbeam_channel::unbounded();
        let (handover_tx, handover_rx) = crossbeam_channel::bounded(4);
        let index = {
            let mut peers = self
                .peers
                .lock()
                .map_err(|_| io::Error::other("peer table poisoned"))?;
            if peers.by_gateway(&gateway).is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{gateway} is a peer already"),
                ));
            }
            peers.slots.push(Some(Slot {
                gateway: gateway.clone(),
                commands: command_tx,
                handover: handover_tx,
                status: PeerStatus {
                    gateway,
                    state: SessionState::Idle,
                    uptime: None,
                    summaries_in: 0,
                    summaries_out: 0,
                },
            }));
            peers.slots.len() - 1
        };
        let worker = PeerThread {
            index,
            session: PeerSession::new(session_config),
            peers: self.peers.clone(),
            address: spec.address,
            client,
            transport: None,
            decoder: FrameDecoder::new(FrameLimits::default()),
            events: self.events.clone(),
            commands: command_rx,
            handovers: handover_rx,
            paused: self.paused.clone(),
            stopped: self.stopped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("agw-peer-{index}"))
            .spawn(move || worker.run())?;
        self.keep(thread);
        Ok(index)
    }

    /// Leaves peer `gateway` (DISCONNECT) and forgets it; returns its index.
    pub fn remove_peer(&self, gateway: &str) -> Option<usize> {
        let mut peers = self.peers.lock().ok()?;
        let (index, slot) = peers.by_gateway(gateway)?;
        let _ = slot
            .commands
            .send(PeerCommand::Stop("removed by the operator".into()));
        if let Some(s) = peers.slots.get_mut(index) {
            *s = None;
        }
        Some(index)
    }

    /// Where peers dial in.
    pub fn local_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The live neighbour list, for a metrics endpoint on another thread.
    pub fn neighbours_handle(&self) -> Neighbours {
        Neighbours(self.peers.clone())
    }

    /// The neighbour list: every configured peer and its session.
    pub fn neighbours(&self) -> Vec<PeerStatus> {
        self.neighbours_handle().list()
    }

    /// A handle that sends commands to the peers, for the control plane's thread.
    pub fn commander(&self) -> PeerCommander {
        PeerCommander {
            peers: self.peers.clone(),
        }
    }

    /// Freezes every session without closing anything: no reads, writes or timers, as a hung
    /// gateway would. For fault tests of the peers' hold timers.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Sends DISCONNECT on every established session and ends the threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Ok(peers) = self.peers.lock() {
            for slot in peers.slots.iter().flatten() {
                let _ = slot.commands.send(PeerCommand::Stop("shutdown".into()));
            }
        }
        self.paused.store(false, Ordering::Relaxed);
        self.stopped.store(true, Ordering::Relaxed);
        // Unblock the accept loop.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_millis(200));
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Peering {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    peers: Arc<Mutex<Peers>>,
    paused: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
) {
    for stream in listener.incoming() {
        if stopped.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if paused.load(Ordering::Relaxed) {
            // A hung gateway accepts (the kernel does) but never answers.
            std::mem::forget(stream);
            continue;
        }
        let (server, peers) = (server.clone(), peers.clone());
        // The handshake runs beside the accept loop, so a slow dialler holds up no one.
        let _ = std::thread::Builder::new()
            .name("agw-peer-handshake".into())
            .spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_nodelay(true);
                let Ok(conn) = ServerConnection::new(server) else {
                    return;
                };
                let mut tls = StreamOwned::new(conn, stream);
                while tls.conn.is_handshaking() {
                    if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                        tracing::warn!(error = %e, "peering TLS handshake refused");
                        return;
                    }
                }
                let identity = tls
                    .conn
                    .peer_certificates()
                    .and_then(peer_identity)
                    .unwrap_or_default();
                let handover = peers
                    .lock()
                    .ok()
                    .and_then(|p| p.by_gateway(&identity).map(|(_, s)| s.handover.clone()));
                match handover {
                    Some(handover) => {
                        let _ = handover.send(Handover {
                            transport: Box::new(tls),
                            dialled: false,
                            identity,
                        });
                    }
                    None => {
                        tracing::warn!(%identity, "a gateway that is not a configured peer dialled in");
                        // Not a configured peer: say why, then close.
                        let mut encoder = FrameEncoder::new(FrameLimits::default());
                        let note = pb::Notification {
                            code: ErrorCode::OpenRefused as i32,
                            subcode: 0,
                            text: format!("{identity} is not a configured peer"),
                        };
                        if encoder.push(&note).is_ok() {
                            let _ = tls.write_all(&encoder.take());
                            let _ = tls.flush();
                        }
                    }
                }
            });
    }
}

struct PeerThread {
    index: usize,
    session: PeerSession,
    peers: Arc<Mutex<Peers>>,
    address: Option<SocketAddr>,
    client: Arc<rustls::ClientConfig>,
    transport: Option<Box<dyn Transport>>,
    decoder: FrameDecoder,
    events: Sender<(usize, PeerEvent)>,
    commands: Receiver<PeerCommand>,
    handovers: Receiver<Handover>,
    paused: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl PeerThread {
    fn run(mut self) {
        self.session.handle(Input::Start, Instant::now());
        loop {
            if self.paused.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let now = Instant::now();
            loop {
                match self.commands.try_recv() {
                    Ok(PeerCommand::FullSync(table)) => self.session.full_sync(&table),
                    Ok(PeerCommand::Advertise(a, w)) => self.session.advertise(&a, &w),
                    Ok(PeerCommand::SetStatus(s)) => self.session.set_local_status(s, now),
                    Ok(PeerCommand::Stop(reason)) => {
                        self.session.handle(Input::Stop(reason), now);
                        self.act(now);
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            while let Ok(handover) = self.handovers.try_recv() {
                self.take_over(handover, now);
            }
            if self.session.next_timeout().is_some_and(|t| t <= now) {
                self.session.handle(Input::Tick, now);
            }
            self.act(now);
            self.report(now);
            if self.stopped.load(Ordering::Relaxed) {
                return;
            }
            self.read(now);
        }
    }

    fn report(&self, now: Instant) {
        if let Ok(mut peers) = self.peers.lock()
            && let Some(Some(slot)) = peers.slots.get_mut(self.index)
        {
            let status = &mut slot.status;
            status.state = self.session.state();
            status.uptime = self.session.established_since().map(|t| now - t);
            status.summaries_in = self.session.learned();
            status.summaries_out = self.session.advertised();
        }
    }

    /// A transport the peer dialled: keep it, or resolve a collision with ours.
    fn take_over(&mut self, handover: Handover, now: Instant) {
        if self.transport.is_some() {
            let local = self.session.config().local.clone();
            let peer = self.session.config().peer.clone();
            let keep_new = self.session.state() != SessionState::Established
                && collision_winner(&peer, &local);
            if !keep_new {
                refuse(handover.transport, ErrorCode::ConnectionCollision);
                return;
            }
            if let Some(old) = self.transport.take() {
                refuse(old, ErrorCode::ConnectionCollision);
            }
            self.session.handle(Input::TransportDown, now);
            self.act(now);
        }
        let _ = handover
            .transport
            .socket()
            .set_read_timeout(Some(Duration::from_millis(20)));
        let _ = handover
            .transport
            .socket()
            .set_write_timeout(Some(self.send_hold()));
        self.transport = Some(handover.transport);
        self.decoder = FrameDecoder::new(FrameLimits::default());
        self.session.handle(
            Input::TransportUp {
                dialled: handover.dialled,
                identity: handover.identity,
            },
            now,
        );
    }

    /// Carries out the session's outputs.
    fn act(&mut self, now: Instant) {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Connect => self.dial(now),
                Output::Send(message) => self.send(&message, now),
                Output::Close => {
                    if let Some(mut t) = self.transport.take() {
                        let _ = t.flush();
                        let _ = t.socket().shutdown(std::net::Shutdown::Both);
                    }
                }
                Output::PeerUp {
                    hold_time,
                    domain,
                    agent_access_address,
                } => self.emit(PeerEvent::Up {
                    domain,
                    hold_time,
                    agent_access_address,
                }),
                Output::PeerDown { code, disconnected } => {
                    self.emit(PeerEvent::Down { disconnected, code })
                }
                Output::Learned(s) => self.emit(PeerEvent::Learned(s)),
                Output::Withdrawn(a) => self.emit(PeerEvent::Withdrawn(a)),
                Output::SyncComplete => self.emit(PeerEvent::Synced),
                Output::PeerStatus(s) => self.emit(PeerEvent::Status(s)),
                Output::Refused { agent, code } => {
                    tracing::info!(peer = %self.session.config().peer, %agent, code = code.as_str_name(), "summary refused");
                }
                Output::Warning(w) => {
                    tracing::warn!(peer = %self.session.config().peer, "{w}");
                }
            }
        }
    }

    fn emit(&self, event: PeerEvent) {
        let _ = self.events.send((self.index, event));
    }

    fn dial(&mut self, now: Instant) {
        let result = self.address.ok_or(()).and_then(|addr| {
            let stream =
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|_| ())?;
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            let name = ServerName::try_from("peer.invalid").map_err(|_| ())?;
            let conn = ClientConnection::new(self.client.clone(), name).map_err(|_| ())?;
            let mut tls = StreamOwned::new(conn, stream);
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).map_err(|_| ())?;
            }
            let identity = tls
                .conn
                .peer_certificates()
                .and_then(peer_identity)
                .unwrap_or_default();
            Ok((tls, identity))
        });
        match result {
            Ok((tls, identity)) => {
                let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(20)));
                let _ = tls.sock.set_write_timeout(Some(self.send_hold()));
                self.transport = Some(Box::new(tls));
                self.decoder = FrameDecoder::new(FrameLimits::default());
                self.session.handle(
                    Input::TransportUp {
                        dialled: true,
                        identity,
                    },
                    now,
                );
            }
            Err(()) => {
                tracing::debug!(peer = %self.session.config().peer, address = ?self.address, "dial failed");
                self.session.handle(Input::TransportDown, now);
            }
        }
    }

    fn send(&mut self, message: &Message, now: Instant) {
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        let mut encoder = FrameEncoder::new(FrameLimits::default());
        if encoder.push_message(message, 0).is_err() {
            return;
        }
        let bytes = encoder.take();
        let started = Instant::now();
        if t.write_all(&bytes).and_then(|()| t.flush()).is_err() {
            // The write timed out (the socket's write timeout is the send hold time) or failed:
            // a peer that stops reading meets its send hold timer; a broken one is down.
            self.session
                .handle(Input::Backlog(Some(started - self.send_hold())), now);
            if self.session.state() != SessionState::Idle {
                self.transport = None;
                self.session.handle(Input::TransportDown, now);
            }
        }
    }

    fn send_hold(&self) -> Duration {
        self.session.config().send_hold_time
    }

    /// Reads what arrived (waiting at most 20 ms) and feeds the session whole frames.
    fn read(&mut self, now: Instant) {
        let Some(t) = self.transport.as_mut() else {
            std::thread::sleep(Duration::from_millis(20));
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        match t.read(&mut buf) {
            Ok(0) => {
                self.transport = None;
                self.session.handle(Input::TransportDown, now);
            }
            Ok(n) => {
                self.decoder.extend_from_slice(&buf[..n]);
                loop {
                    match self.decoder.decode() {
                        Ok(Some(frame)) => match frame.message() {
                            Ok(m) => self.session.handle(Input::Received(Box::new(m)), now),
                            Err(e) => {
                                self.session.handle(
                                    Input::Received(Box::new(
                                        pb::Notification {
                                            code: e.code() as i32,
                                            subcode: 0,
                                            text: e.to_string(),
                                        }
                                        .into(),
                                    )),
                                    now,
                                );
                                break;
                            }
                        },
                        Ok(None) => break,
                        Err(_) => {
                            self.transport = None;
                            self.session.handle(Input::TransportDown, now);
                            break;
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                self.transport = None;
                self.session.handle(Input::TransportDown, now);
            }
        }
    }
}

/// Closes a transport with a notification.
fn refuse(mut transport: Box<dyn Transport>, code: ErrorCode) {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    let note = pb::Notification {
        code: code as i32,
        subcode: 0,
        text: String::new(),
    };
    if encoder.push(&note).is_ok() {
        let _ = transport.write_all(&encoder.take());
        let _ = transport.flush();
    }
    let _ = transport.socket().shutdown(std::net::Shutdown::Both);
}
