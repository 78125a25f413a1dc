//! Peering sessions over mutual TLS, as tasks on the control plane's tokio runtime: one task
//! per configured peer drives its [`PeerSession`] with a real transport, one task accepts the
//! peers that dial in, and each transport has a writer task.
//!
//! ```text
//!  control loop --PeerCommand--> peer task <--Handover-- accept task <-- peers dialling in
//!  control loop <--PeerEvent---- peer task --bytes--> writer task --> the peer
//!                                peer task <--backlog since / ended-- writer task
//! ```
//!
//! A peer task sleeps until something happens: a command, a transport handed over, bytes
//! read, the writer's backlog changing or its end, or the session's next deadline
//! ([`PeerSession::next_timeout`]); nothing polls. A writer that cannot write (a peer that
//! stops reading) never holds the session's timers: its backlog goes to the session, whose
//! send hold timer ends it. A write that fails is the transport going down; bytes that do not
//! decode are `Input::Malformed` with the decoder's code.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use agw_aca::tls::{TlsIdentity, peer_identity};
use agw_proto::{
    FrameDecoder, FrameEncoder, FrameLimits, Message,
    identity::Domain,
    pb::{self, ErrorCode},
};
use bytes::Bytes;
use crossbeam_channel::Sender;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    net::{TcpListener, TcpStream},
    runtime::Handle,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::timeout,
};

use super::session::{Input, Output, PeerConfig, PeerSession, SessionState, collision_winner};

/// Time to open a TCP connection to a peer.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a TLS handshake, either way.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes of dialling peers under way at once; more are refused at accept.
const MAX_HANDSHAKES: usize = 64;
/// How long a closing transport may take to send what was queued (a DISCONNECT).
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// Reads at most this much at a time.
const READ_CHUNK: usize = 16 * 1024;

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
    /// The control plane's runtime, where the sessions run.
    pub runtime: Handle,
}

/// What a peer's task reports; the `usize` beside it is the peer's index in the config.
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

/// What the control plane asks of a peer's task.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerCommand {
    /// The full table, after [`PeerEvent::Up`].
    FullSync(Vec<pb::AgentSummary>),
    /// Incremental changes.
    Advertise(Vec<pb::AgentSummary>, Vec<String>),
    /// This gateway's status changed (an operator's maintenance mode).
    SetStatus(pb::Status),
    /// The peer's certificate was revoked: close the transport now (told `CERT_REVOKED`);
    /// the session dials and awaits again as after any loss, and a handshake with the revoked
    /// certificate is refused.
    Revoked,
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

/// One peer's task as the others reach it.
#[derive(Debug)]
struct Slot {
    gateway: String,
    commands: mpsc::UnboundedSender<PeerCommand>,
    handover: mpsc::Sender<Handover>,
    status: PeerStatus,
    /// When the current session came up: the uptime is computed when the list is read (the
    /// task reports only when something happens).
    up_since: Option<Instant>,
    /// The certificate chain the peer presented on the current transport (leaf first, DER).
    chain: Option<Vec<Vec<u8>>>,
}

/// The peers by index; a removed peer leaves `None` (indices are never reused, so a late
/// event from a removed peer's task names no one).
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

/// Sends commands to the peer tasks.
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
    /// Each peer with a transport now, and the certificate chain it presented on it.
    pub fn chains(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        self.each(|s| Some((s.gateway.clone(), s.chain.clone()?)))
    }

    /// What `f` makes of each configured peer, where it makes something.
    fn each<T>(&self, f: impl FnMut(&Slot) -> Option<T>) -> Vec<T> {
        self.0
            .lock()
            .map(|p| p.slots.iter().flatten().filter_map(f).collect())
            .unwrap_or_default()
    }

    /// Closes the transport of peer `gateway` at once: its certificate was revoked.
    pub fn revoked(&self, gateway: &str) {
        if let Ok(peers) = self.0.lock()
            && let Some((_, slot)) = peers.by_gateway(gateway)
        {
            let _ = slot.commands.send(PeerCommand::Revoked);
        }
    }

    /// Every peer configured now and its session.
    pub fn list(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        self.each(|s| {
            Some(PeerStatus {
                uptime: s.up_since.map(|t| now.saturating_duration_since(t)),
                ..s.status.clone()
            })
        })
    }
}

/// A TLS stream either way round.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type BoxedStream = Box<dyn Stream>;

/// A transport handed to a peer's task, with who dialled it.
struct Handover {
    stream: BoxedStream,
    dialled: bool,
    identity: String,
    /// The chain the peer presented.
    chain: Vec<Vec<u8>>,
}

/// The running peering: its tasks and the channels to them.
#[derive(Debug)]
pub struct Peering {
    listen: SocketAddr,
    tls: TlsIdentity,
    runtime: Handle,
    events: Sender<(usize, PeerEvent)>,
    peers: Arc<Mutex<Peers>>,
    paused: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Peering {
    /// Binds the peering listener and starts one task per peer on the config's runtime;
    /// events go to `events`.
    pub fn start(
        config: PeeringConfig,
        events: Sender<(usize, PeerEvent)>,
    ) -> std::io::Result<Peering> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        let listen = listener.local_addr()?;
        let server = Arc::new(config.tls.server_config().map_err(std::io::Error::other)?);
        let listener = {
            let _inside = config.runtime.enter();
            TcpListener::from_std(listener)?
        };
        let (paused, _) = watch::channel(false);
        let (stopped, _) = watch::channel(false);
        let peering = Peering {
            listen,
            tls: config.tls,
            runtime: config.runtime,
            events,
            peers: Arc::new(Mutex::new(Peers::default())),
            paused,
            stopped,
            tasks: Mutex::new(Vec::new()),
        };
        for spec in config.peers {
            peering.add_peer(spec)?;
        }
        let accept = peering.runtime.spawn(accept(
            listener,
            server,
            peering.peers.clone(),
            peering.paused.subscribe(),
            peering.stopped.subscribe(),
        ));
        peering.keep(accept);
        Ok(peering)
    }

    fn keep(&self, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// The index the next added peer gets.
    pub fn next_index(&self) -> usize {
        self.peers.lock().map_or(0, |p| p.slots.len())
    }

    /// Starts a session with one more peer; returns its index. Refused if it is a peer
    /// already.
    pub fn add_peer(&self, spec: PeerSpec) -> std::io::Result<usize> {
        let gateway = spec.config.peer.to_string();
        let mut session_config = spec.config.clone();
        session_config.certificate_chain = match &self.tls.renewable {
            Some(renewable) => renewable.chain(),
            None => self.tls.chain.clone(),
        };
        let client = Arc::new(
            self.tls
                .client_config(spec.config.peer.as_str())
                .map_err(std::io::Error::other)?,
        );
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (handover_tx, handover_rx) = mpsc::channel(4);
        let index = {
            let mut peers = self
                .peers
                .lock()
                .map_err(|_| std::io::Error::other("peer table poisoned"))?;
            if peers.by_gateway(&gateway).is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
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
                up_since: None,
                chain: None,
            }));
            peers.slots.len() - 1
        };
        let task = PeerTask {
            index,
            session: PeerSession::new(session_config),
            peers: self.peers.clone(),
            address: spec.address,
            client,
            link: None,
            events: self.events.clone(),
            commands: command_rx,
            handovers: handover_rx,
            paused: self.paused.subscribe(),
        };
        let task = self.runtime.spawn(task.run());
        self.keep(task);
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

    /// A handle that sends commands to the peers, for the control plane's loop.
    pub fn commander(&self) -> PeerCommander {
        PeerCommander {
            peers: self.peers.clone(),
        }
    }

    /// Freezes every session without closing anything: no reads, writes or timers, as a hung
    /// gateway would; new connections are accepted and never answered. For fault tests of the
    /// peers' hold timers.
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Sends DISCONNECT on every established session and ends the tasks. Call it from outside
    /// the runtime.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Ok(peers) = self.peers.lock() {
            for slot in peers.slots.iter().flatten() {
                let _ = slot.commands.send(PeerCommand::Stop("shutdown".into()));
            }
        }
        self.paused.send_replace(false);
        self.stopped.send_replace(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        // The sessions send their DISCONNECTs, bounded in time. (From inside the runtime
        // there is no waiting: the tasks finish on their own.)
        if Handle::try_current().is_err() {
            self.runtime.block_on(async {
                for task in tasks {
                    let _ = timeout(CLOSE_FLUSH * 2, task).await;
                }
            });
        }
    }
}

impl Drop for Peering {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Accepts peers dialling in: the TLS handshake (bounded in time and number), then the
/// transport goes to the task of the peer its certificate names.
async fn accept(
    listener: TcpListener,
    server: Arc<rustls::ServerConfig>,
    peers: Arc<Mutex<Peers>>,
    mut paused: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let handshakes = Arc::new(AtomicUsize::new(0));
    // Connections taken while paused (a hung gateway): held, never answered.
    let mut hung = Vec::new();
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            _ = paused.changed() => continue,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, from)) = accepted else {
            // Out of descriptors or memory: let it pass rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if *paused.borrow() {
            hung.push(stream);
            continue;
        }
        hung.clear();
        if handshakes.load(Ordering::Relaxed) >= MAX_HANDSHAKES {
            tracing::warn!(%from, "too many peering handshakes under way; refused");
            continue;
        }
        let _ = stream.set_nodelay(true);
        handshakes.fetch_add(1, Ordering::Relaxed);
        let (server, peers, handshakes) = (server.clone(), peers.clone(), handshakes.clone());
        tokio::spawn(async move {
            let accept = tokio_rustls::TlsAcceptor::from(server).accept(stream);
            let tls = timeout(HANDSHAKE_TIMEOUT, accept).await;
            handshakes.fetch_sub(1, Ordering::Relaxed);
            let mut tls = match tls {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%from, error = %e, "peering TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%from, "peering TLS handshake timed out");
                    return;
                }
            };
            let (identity, chain) = presented(tls.get_ref().1.peer_certificates());
            let handover = peers
                .lock()
                .ok()
                .and_then(|p| p.by_gateway(&identity).map(|(_, s)| s.handover.clone()));
            match handover {
                Some(handover) => {
                    let _ = handover
                        .send(Handover {
                            stream: Box::new(tls),
                            dialled: false,
                            identity,
                            chain,
                        })
                        .await;
                }
                None => {
                    tracing::warn!(%identity, "a gateway that is not a configured peer dialled in");
                    let text = format!("{identity} is not a configured peer");
                    let _ = timeout(
                        CLOSE_FLUSH,
                        tls.write_all(&notification_bytes(ErrorCode::OpenRefused, &text)),
                    )
                    .await;
                    let _ = timeout(CLOSE_FLUSH, tls.shutdown()).await;
                }
            }
        });
    }
}

/// A NOTIFICATION, framed.
fn notification_bytes(code: ErrorCode, text: &str) -> Vec<u8> {
    let mut encoder = FrameEncoder::new(FrameLimits::default());
    let note = pb::Notification {
        code: code as i32,
        subcode: 0,
        text: text.to_owned(),
    };
    match encoder.push(&note) {
        Ok(()) => encoder.take().to_vec(),
        Err(_) => Vec::new(),
    }
}

/// A transport in use: its read half, and its writer task behind a queue.
struct Link {
    reader: ReadHalf<BoxedStream>,
    decoder: FrameDecoder,
    /// Frames to write; `None` closes after what was queued.
    writer: mpsc::UnboundedSender<Option<Bytes>>,
    /// Since when bytes have waited to be written (`None`: drained).
    backlog: watch::Receiver<Option<Instant>>,
    writer_task: JoinHandle<()>,
}

impl Link {
    fn new(stream: BoxedStream) -> Link {
        let (reader, writer) = tokio::io::split(stream);
        let (queue, frames) = mpsc::unbounded_channel();
        let (backlog_tx, backlog) = watch::channel(None);
        let writer_task = tokio::spawn(write(writer, frames, backlog_tx));
        Link {
            reader,
            decoder: FrameDecoder::new(FrameLimits::default()),
            writer: queue,
            backlog,
            writer_task,
        }
    }

    /// Sends what was queued (bounded in time), then closes.
    async fn close(self) {
        let _ = self.writer.send(None);
        let mut task = self.writer_task;
        if timeout(CLOSE_FLUSH, &mut task).await.is_err() {
            task.abort();
        }
    }

    /// Closes at once, after a last NOTIFICATION if it can go out.
    fn refuse(self, code: ErrorCode) {
        let _ = self
            .writer
            .send(Some(Bytes::from(notification_bytes(code, ""))));
        tokio::spawn(self.close());
    }
}

/// The writer task: writes frames in order; says since when bytes wait.
async fn write(
    mut out: WriteHalf<BoxedStream>,
    mut frames: mpsc::UnboundedReceiver<Option<Bytes>>,
    backlog: watch::Sender<Option<Instant>>,
) {
    while let Some(frame) = frames.recv().await {
        let Some(bytes) = frame else {
            let _ = out.flush().await;
            let _ = out.shutdown().await;
            return;
        };
        if backlog.borrow().is_none() {
            backlog.send_replace(Some(Instant::now()));
        }
        if out.write_all(&bytes).await.is_err() {
            return; // the transport is down: the peer task sees this task end
        }
        if frames.is_empty() {
            let _ = out.flush().await;
            backlog.send_replace(None);
        }
    }
}

/// What woke a peer task.
enum Wake {
    Paused,
    Command(Option<PeerCommand>),
    Handover(Option<Handover>),
    Read(std::io::Result<usize>),
    Backlog(Option<Instant>),
    WriterEnded,
    Timer,
}

/// Waits for what the current link has to say; never, without one.
async fn link_event(link: Option<&mut Link>) -> Wake {
    let Some(link) = link else {
        return std::future::pending().await;
    };
    tokio::select! {
        read = link.reader.read_buf(link.decoder.read_buf(READ_CHUNK)) => Wake::Read(read),
        changed = link.backlog.changed() => match changed {
            Ok(()) => Wake::Backlog(*link.backlog.borrow_and_update()),
            Err(_) => Wake::WriterEnded,
        },
        _ = &mut link.writer_task => Wake::WriterEnded,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

struct PeerTask {
    index: usize,
    session: PeerSession,
    peers: Arc<Mutex<Peers>>,
    address: Option<SocketAddr>,
    client: Arc<rustls::ClientConfig>,
    link: Option<Link>,
    events: Sender<(usize, PeerEvent)>,
    commands: mpsc::UnboundedReceiver<PeerCommand>,
    handovers: mpsc::Receiver<Handover>,
    paused: watch::Receiver<bool>,
}

impl PeerTask {
    async fn run(mut self) {
        self.session.handle(Input::Start, Instant::now());
        loop {
            if self.act().await {
                return;
            }
            self.report();
            if *self.paused.borrow_and_update() {
                // Hung: nothing is read, written or timed until resumed.
                if self.paused.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let timer = self.session.next_timeout();
            let wake = tokio::select! {
                changed = self.paused.changed() => match changed {
                    Ok(()) => Wake::Paused,
                    Err(_) => return,
                },
                command = self.commands.recv() => Wake::Command(command),
                handover = self.handovers.recv() => Wake::Handover(handover),
                event = link_event(self.link.as_mut()) => event,
                () = sleep_until(timer) => Wake::Timer,
            };
            let now = Instant::now();
            match wake {
                Wake::Paused => {}
                Wake::Command(None) => return,
                Wake::Command(Some(command)) => match command {
                    PeerCommand::FullSync(table) => self.session.full_sync(&table),
                    PeerCommand::Advertise(a, w) => self.session.advertise(&a, &w, Instant::now()),
                    PeerCommand::SetStatus(s) => self.session.set_local_status(s, now),
                    PeerCommand::Revoked => {
                        if let Some(link) = self.link.take() {
                            tracing::warn!(peer = %self.session.config().peer, "its certificate is revoked: session closed");
                            link.refuse(ErrorCode::CertRevoked);
                            self.session.handle(Input::TransportDown, now);
                        }
                    }
                    PeerCommand::Stop(reason) => {
                        self.session.handle(Input::Stop(reason), now);
                        self.act().await;
                        return;
                    }
                },
                Wake::Handover(None) => return,
                Wake::Handover(Some(handover)) => self.take_over(handover, now),
                Wake::Read(Ok(0) | Err(_)) | Wake::WriterEnded => self.transport_down(now),
                Wake::Read(Ok(_)) => self.decode(now),
                Wake::Backlog(since) => self.session.handle(Input::Backlog(since), now),
                Wake::Timer => self.session.handle(Input::Tick, now),
            }
        }
    }

    fn transport_down(&mut self, now: Instant) {
        if let Some(link) = self.link.take() {
            link.writer_task.abort();
        }
        self.session.handle(Input::TransportDown, now);
    }

    /// Feeds the session every whole frame read, until the session leaves the transport.
    fn decode(&mut self, now: Instant) {
        loop {
            let decoded = match self.link.as_mut() {
                Some(link) => link.decoder.decode(),
                None => return,
            };
            let input = match decoded {
                Ok(None) => return,
                Ok(Some(frame)) => match frame.message() {
                    Ok(m) => Input::Received(Box::new(m)),
                    Err(e) => Input::Malformed {
                        code: e.code(),
                        text: e.to_string(),
                    },
                },
                Err(e) => Input::Malformed {
                    code: e.code(),
                    text: e.to_string(),
                },
            };
            let malformed = matches!(input, Input::Malformed { .. });
            self.session.handle(input, now);
            if malformed || self.session.state() == SessionState::Idle {
                return;
            }
        }
    }

    fn report(&self) {
        if let Ok(mut peers) = self.peers.lock()
            && let Some(Some(slot)) = peers.slots.get_mut(self.index)
        {
            if self.link.is_none() {
                slot.chain = None;
            }
            slot.up_since = self.session.established_since();
            let status = &mut slot.status;
            status.state = self.session.state();
            status.summaries_in = self.session.learned();
            status.summaries_out = self.session.advertised();
        }
    }

    /// A transport the peer dialled: keep it, or resolve a collision with ours.
    fn take_over(&mut self, handover: Handover, now: Instant) {
        if self.link.is_some() {
            let local = self.session.config().local.clone();
            let peer = self.session.config().peer.clone();
            let keep_new = self.session.state() != SessionState::Established
                && collision_winner(&peer, &local);
            if !keep_new {
                Link::new(handover.stream).refuse(ErrorCode::ConnectionCollision);
                return;
            }
            if let Some(old) = self.link.take() {
                old.refuse(ErrorCode::ConnectionCollision);
            }
            self.session.handle(Input::TransportDown, now);
        }
        self.link = Some(Link::new(handover.stream));
        self.set_chain(handover.chain);
        self.session.handle(
            Input::TransportUp {
                dialled: handover.dialled,
                identity: handover.identity,
            },
            now,
        );
    }

    /// Carries out the session's outputs; returns whether the session has stopped for good.
    async fn act(&mut self) -> bool {
        while let Some(output) = self.session.poll_output() {
            match output {
                Output::Connect => self.dial().await,
                Output::Send(message) => self.send(&message),
                Output::Close => {
                    if let Some(link) = self.link.take() {
                        link.close().await;
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
        self.session.state() == SessionState::Stopped
    }

    /// Records the chain the peer presented on the new transport, for revocation checks.
    fn set_chain(&self, chain: Vec<Vec<u8>>) {
        if let Ok(mut peers) = self.peers.lock()
            && let Some(Some(slot)) = peers.slots.get_mut(self.index)
        {
            slot.chain = Some(chain);
        }
    }

    fn emit(&self, event: PeerEvent) {
        let _ = self.events.send((self.index, event));
    }

    async fn dial(&mut self) {
        let dialled = match self.address {
            Some(address) => dial(address, self.client.clone()).await,
            None => Err("no address to dial".to_owned()),
        };
        let now = Instant::now();
        match dialled {
            Ok((stream, identity, chain)) => {
                self.link = Some(Link::new(stream));
                self.set_chain(chain);
                self.session.handle(
                    Input::TransportUp {
                        dialled: true,
                        identity,
                    },
                    now,
                );
            }
            Err(e) => {
                tracing::debug!(peer = %self.session.config().peer, address = ?self.address, error = %e, "dial failed");
                self.session.handle(Input::TransportDown, now);
            }
        }
    }

    fn send(&mut self, message: &Message) {
        let Some(link) = self.link.as_ref() else {
            return;
        };
        let mut encoder = FrameEncoder::new(FrameLimits::default());
        if encoder.push_message(message, 0).is_ok() {
            let _ = link.writer.send(Some(encoder.take()));
        }
    }
}

/// Dials a peer's peering address with mutual TLS; returns the stream and the identity its
/// certificate proves.
async fn dial(
    address: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> Result<(BoxedStream, String, Vec<Vec<u8>>), String> {
    let tcp = timeout(DIAL_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    // Peers are named by their certificate's URI; the verifier checks it, not this name.
    let name = ServerName::try_from("peer.invalid").map_err(|e| e.to_string())?;
    let tls = timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(client).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let (identity, chain) = presented(tls.get_ref().1.peer_certificates());
    Ok((Box::new(tls), identity, chain))
}

/// The identity a peer's certificate names, and its chain as presented (DER).
fn presented(certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> (String, Vec<Vec<u8>>) {
    let certs = certs.unwrap_or_default();
    let identity = peer_identity(certs).unwrap_or_default();
    (identity, certs.iter().map(|c| c.to_vec()).collect())
}
