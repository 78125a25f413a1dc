//! One peering session with one peer gateway (draft 3.4.1-3.4.3), sans-IO.
//!
//! The driver owns the transport (mTLS over TCP) and the clock. It feeds the session what
//! happens ([`Input`]) with the current time, drains [`Output`]s (frames to send, connections
//! to open or close, the peer coming up or down, summaries learned or withdrawn), and calls
//! [`PeerSession::handle`] with [`Input::Tick`] when [`PeerSession::next_timeout`] passes.
//!
//! ```text
//!          start / backoff passed                 transport up (we dialled)
//!   Idle ------------------------> Connecting ----------------------------> OpenSent
//!    ^  ^ transport failed: back off     |                                     | OpenReply ok
//!    |  +--------------------------------+                                     v
//!    |      transport up (peer dialled)            Open ok: OpenReply     +-------------+
//!    |   (Idle or Connecting) ----------> OpenWait ---------------------> | Established |
//!    |                                                                    +-------------+
//!    |  hold timer, send hold timer, Notification, Disconnect, bad message, |
//!    +--------------------- transport down: PeerDown, back off ------------+
//! ```
//!
//! Timers: the hold time is the smaller of both sides' proposals (at least
//! [`MIN_HOLD_TIME`]); a keepalive goes out every third of it; no message for the hold time
//! ends the session (`HOLD_TIMER_EXPIRED`), and so does a transport that could not write for
//! the send hold time (`SEND_HOLD_TIMER_EXPIRED`, a peer that stops reading). Reconnection
//! backs off exponentially from `retry_min` to `retry_max`; a session that stayed up resets it.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

use agw_proto::{
    Message,
    identity::{AgentId, Domain, GatewayId},
    pb::{self, ErrorCode},
};

/// The shortest hold time a session accepts (0 is refused too: keepalives are not optional).
pub const MIN_HOLD_TIME: Duration = Duration::from_secs(3);

/// Summaries accepted from one peer unless configured otherwise.
pub const DEFAULT_MAX_SUMMARIES: usize = 1_000_000;

/// What to do when a peer advertises more summaries than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    /// Accept them and report a warning once.
    Warn,
    /// Refuse the excess, one by one; the session stays up.
    Refuse,
    /// End the session with `SUMMARY_LIMIT`.
    Reset,
}

/// One peer's settings.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This gateway.
    pub local: GatewayId,
    /// The peer, as its certificate names it.
    pub peer: GatewayId,
    /// Whether this side dials (both sides may; collisions are resolved).
    pub dial: bool,
    /// Hold time proposed. Default 90 s.
    pub hold_time: Duration,
    /// The send hold time: how long the transport may fail to write. Default 2x hold time.
    pub send_hold_time: Duration,
    /// Protocols this gateway carries.
    pub protocols: Vec<pb::Protocol>,
    /// Where other domains' agents reach this domain's agents.
    pub agent_access_address: String,
    /// First reconnection delay. Default 1 s.
    pub retry_min: Duration,
    /// Longest reconnection delay. Default 60 s.
    pub retry_max: Duration,
    /// The least time between two RESOURCE_UPDATEs of changes to the peer (BGP's MRAI):
    /// changes made meanwhile wait, the newest for each agent, and go together when it has
    /// passed; an agent never advertised to the peer in this session goes at once. Without
    /// it a failure makes every gateway try each alternative path in turn, and the updates
    /// grow with the number of paths (a federation of 40 gateways sent 1.9M for 80 agents;
    /// docs/scale.md). Default [`DEFAULT_ADVERTISEMENT_INTERVAL`]; zero sends each at once.
    pub advertisement_interval: Duration,
    /// Most summaries accepted from the peer, and what happens past it; `None` for no limit.
    /// Default [`DEFAULT_MAX_SUMMARIES`], refusing the excess: a peer's table is bounded
    /// unless an operator says otherwise.
    pub max_summaries: Option<(usize, LimitAction)>,
    /// Domains whose agents this peer may see; `None` for all.
    pub export_domains: Option<HashSet<String>>,
    /// This gateway's certificate chain (DER), sent in OPEN and OPEN_REPLY.
    pub certificate_chain: Vec<Vec<u8>>,
    /// This gateway's status as OPEN, OPEN_REPLY and KEEPALIVE carry it: `RUNNING`, or
    /// `TEMPORARILY_OFFLINE` while an operator has it in maintenance. Default `RUNNING`;
    /// changed live with [`PeerSession::set_local_status`].
    pub status: pb::Status,
}

impl PeerConfig {
    /// Defaults for a session from `local` to `peer`.
    pub fn new(local: GatewayId, peer: GatewayId) -> PeerConfig {
        PeerConfig {
            local,
            peer,
            dial: true,
            hold_time: Duration::from_secs(90),
            send_hold_time: Duration::from_secs(180),
            protocols: vec![pb::Protocol::Native],
            agent_access_address: String::new(),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            advertisement_interval: DEFAULT_ADVERTISEMENT_INTERVAL,
            max_summaries: Some((DEFAULT_MAX_SUMMARIES, LimitAction::Refuse)),
            export_domains: None,
            certificate_chain: Vec::new(),
            status: pb::Status::Running,
        }
    }

    /// Whether the peer may see agents of `domain`.
    pub fn exports(&self, domain: &str) -> bool {
        self.export_domains
            .as_ref()
            .is_none_or(|allowed| allowed.contains(domain))
    }
}

/// What happens to a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Begin: dial (if configured) or wait to be dialled.
    Start,
    /// A transport to the peer is up; `dialled` when this side opened it. `identity` is the
    /// gateway ID the TLS handshake proved.
    TransportUp {
        /// This side opened it.
        dialled: bool,
        /// The peer's certificate identity.
        identity: String,
    },
    /// The transport failed or closed.
    TransportDown,
    /// A frame from the peer.
    Received(Box<Message>),
    /// Bytes from the peer that are not a valid frame or message (`code` and why): the
    /// session ends with a NOTIFICATION carrying that code.
    Malformed {
        /// The decoder's code (`MALFORMED`, `TOO_LARGE`, `UNKNOWN_KIND`...).
        code: ErrorCode,
        /// What it found.
        text: String,
    },
    /// The transport has had bytes waiting to be written since this time (`None`: drained).
    Backlog(Option<Instant>),
    /// Time passed; timers may fire.
    Tick,
    /// Leave for good (operator, shutdown): DISCONNECT, then close.
    Stop(String),
}

/// What the session asks of its driver.
// Drained as they come, never stored in bulk: not worth a box for `Send`'s message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a transport to the peer.
    Connect,
    /// Send this frame.
    Send(Message),
    /// Close the transport (after sending what was queued).
    Close,
    /// The session is established: send the full table ([`PeerSession::full_sync`]).
    PeerUp {
        /// The negotiated hold time.
        hold_time: Duration,
        /// The peer's domain.
        domain: Domain,
        /// Where the peer's domain's agents are reached.
        agent_access_address: String,
    },
    /// The session ended: every summary learned from the peer is withdrawn (implicitly: no
    /// [`Output::Withdrawn`] precedes it).
    PeerDown {
        /// The code it ended with (`CEASE` for a DISCONNECT either way).
        code: ErrorCode,
        /// The peer sent DISCONNECT: it left for good.
        disconnected: bool,
    },
    /// Summaries learned (checked: well-formed, loop-free, within the limit).
    Learned(Vec<pb::AgentSummary>),
    /// Agents withdrawn by the peer, or refused (malformed, loop, over the limit).
    Withdrawn(Vec<String>),
    /// A summary was refused; the session stays up.
    Refused {
        /// The agent, as the summary named it.
        agent: String,
        /// Why.
        code: ErrorCode,
    },
    /// The peer's full table is in (END-OF-SYNC): what it advertised in an earlier session
    /// and not in this one is stale.
    SyncComplete,
    /// The peer's gateway status changed (OPEN or KEEPALIVE): `TEMPORARILY_OFFLINE` while its
    /// operator has it in maintenance, `RUNNING` again after. Reported after [`Output::PeerUp`]
    /// only when not `RUNNING`; a session that goes down resets it to `RUNNING`.
    PeerStatus(pb::Status),
    /// Something an operator should hear of (e.g. the summary limit passed with `Warn`).
    Warning(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle { next_attempt: Option<Instant> },
    Connecting,
    OpenSent { deadline: Instant },
    OpenWait { deadline: Instant },
    Established(Timers),
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Timers {
    hold: Duration,
    hold_deadline: Instant,
    next_keepalive: Instant,
    up_since: Instant,
}

/// A session's state, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Not connected; waiting to (re)connect or to be dialled.
    Idle,
    /// Dialling.
    Connecting,
    /// OPEN sent, waiting for the reply.
    OpenSent,
    /// Dialled by the peer, waiting for its OPEN.
    OpenWait,
    /// Up.
    Established,
    /// Stopped for good.
    Stopped,
}

impl SessionState {
    /// Its wire form (the admin API's).
    pub fn wire(self) -> pb::SessionState {
        match self {
            SessionState::Idle => pb::SessionState::SessionIdle,
            SessionState::Connecting => pb::SessionState::SessionConnecting,
            SessionState::OpenSent => pb::SessionState::SessionOpenSent,
            SessionState::OpenWait => pb::SessionState::SessionOpenWait,
            SessionState::Established => pb::SessionState::SessionEstablished,
            SessionState::Stopped => pb::SessionState::SessionStopped,
        }
    }
}

/// An agent ID's hash, for [`PeerSession`]'s record of what the peer holds.
fn agent_hash(agent: &str) -> u64 {
    use std::hash::BuildHasher as _;
    // One hasher for the process: an agent hashes the same in every session.
    static HASHER: std::sync::OnceLock<hashbrown::DefaultHashBuilder> = std::sync::OnceLock::new();
    HASHER
        .get_or_init(hashbrown::DefaultHashBuilder::default)
        .hash_one(agent)
}

/// Default [`PeerConfig::advertisement_interval`].
pub const DEFAULT_ADVERTISEMENT_INTERVAL: Duration = Duration::from_millis(100);

/// One peering session.
#[derive(Debug)]
pub struct PeerSession {
    config: PeerConfig,
    /// Changes waiting for the advertisement interval: each agent's newest summary (as sent,
    /// this gateway prepended), or `None` to withdraw it. Ordered, so updates are the same
    /// from run to run.
    pending: std::collections::BTreeMap<String, Option<pb::AgentSummary>>,
    /// When the last RESOURCE_UPDATE of changes went, in this session.
    last_update: Option<Instant>,
    /// The agents advertised to the peer in this session, as hashes: an agent never
    /// advertised goes at once, whatever the interval (a collision only makes one wait).
    sent: hashbrown::HashSet<u64>,
    /// When the pending changes go.
    flush_at: Option<Instant>,
    state: State,
    backoff: Duration,
    backlog_since: Option<Instant>,
    /// Agents the peer currently has advertised to us.
    learned: HashSet<String>,
    /// Summaries sent to the peer in the current session.
    advertised: usize,
    warned: bool,
    /// The peer's gateway status as last heard in this session.
    peer_status: pb::Status,
    outputs: VecDeque<Output>,
}

impl PeerSession {
    /// A session, idle until [`Input::Start`].
    pub fn new(config: PeerConfig) -> PeerSession {
        PeerSession {
            backoff: config.retry_min,
            config,
            state: State::Idle { next_attempt: None },
            pending: std::collections::BTreeMap::new(),
            last_update: None,
            sent: hashbrown::HashSet::new(),
            flush_at: None,
            backlog_since: None,
            learned: HashSet::new(),
            advertised: 0,
            warned: false,
            peer_status: pb::Status::Running,
            outputs: VecDeque::new(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &PeerConfig {
        &self.config
    }

    /// Where it is.
    pub fn state(&self) -> SessionState {
        match self.state {
            State::Idle { .. } => SessionState::Idle,
            State::Connecting => SessionState::Connecting,
            State::OpenSent { .. } => SessionState::OpenSent,
            State::OpenWait { .. } => SessionState::OpenWait,
            State::Established(_) => SessionState::Established,
            State::Stopped => SessionState::Stopped,
        }
    }

    /// The peer's gateway status as last heard (`RUNNING` when not established).
    pub fn peer_status(&self) -> pb::Status {
        self.peer_status
    }

    /// Changes this gateway's status: an established peer hears it at once (a KEEPALIVE),
    /// later OPENs and KEEPALIVEs carry it.
    pub fn set_local_status(&mut self, status: pb::Status, now: Instant) {
        if self.config.status == status {
            return;
        }
        self.config.status = status;
        if let State::Established(t) = &mut self.state {
            t.next_keepalive = now + t.hold / 3;
            self.send(pb::Keepalive {
                status: status as i32,
            });
        }
    }

    /// Agents learned from the peer now.
    pub fn learned(&self) -> usize {
        self.learned.len()
    }

    /// Summaries sent to the peer in the current session.
    pub fn advertised(&self) -> usize {
        self.advertised
    }

    /// When the current session came up.
    pub fn established_since(&self) -> Option<Instant> {
        match &self.state {
            State::Established(t) => Some(t.up_since),
            _ => None,
        }
    }

    /// The earliest time a timer fires, if any.
    pub fn next_timeout(&self) -> Option<Instant> {
        let send_hold = self.backlog_since.map(|t| t + self.config.send_hold_time);
        let state = match &self.state {
            State::Idle { next_attempt } => *next_attempt,
            State::OpenSent { deadline } | State::OpenWait { deadline } => Some(*deadline),
            State::Established(t) => Some(
                t.hold_deadline
                    .min(t.next_keepalive)
                    .min(self.flush_at.unwrap_or(t.next_keepalive)),
            ),
            State::Connecting | State::Stopped => None,
        };
        match (state, send_hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Advertises local or other peers' summaries to this peer at `now`, or at the end of the
    /// advertisement interval since the last update (a timer), if established and the export
    /// policy allows; `summaries` carry their path as received (this gateway is prepended). A
    /// route that came through this peer cannot go back to it (split horizon): the peer is told
    /// to withdraw what it may have had from us for that agent instead.
    pub fn advertise(&mut self, summaries: &[pb::AgentSummary], withdraw: &[String], now: Instant) {
        if !matches!(self.state, State::Established(_)) {
            return;
        }
        let mut new = Vec::new();
        for agent in withdraw {
            if AgentId::parse(agent).is_ok_and(|id| self.config.exports(id.domain())) {
                self.pending.insert(agent.clone(), None);
            }
        }
        for s in summaries {
            if !AgentId::parse(&s.agent).is_ok_and(|id| self.config.exports(id.domain())) {
                continue;
            }
            if s.path.iter().any(|g| g == self.config.peer.as_str()) {
                self.pending.insert(s.agent.clone(), None);
            } else if !self.sent.contains(&agent_hash(&s.agent))
                && !self.pending.contains_key(&s.agent)
            {
                // New to the peer: a first route is never a path being explored, and an
                // agent that just connected may be answered at once.
                new.push(self.outgoing(s));
            } else {
                self.pending.insert(s.agent.clone(), Some(self.outgoing(s)));
            }
        }
        for chunk in new.chunks(512) {
            self.sent.extend(chunk.iter().map(|s| agent_hash(&s.agent)));
            self.send_update(&mut chunk.to_vec(), &mut Vec::new());
        }
        if self.pending.is_empty() {
            return;
        }
        // Within the interval since the last update: wait for its end (the timer), gathering.
        match self.last_update {
            Some(last) if now < last + self.config.advertisement_interval => {
                self.flush_at = Some(last + self.config.advertisement_interval);
            }
            _ => self.flush(now),
        }
    }

    /// Sends the pending changes (in updates of at most 512 each).
    fn flush(&mut self, now: Instant) {
        self.flush_at = None;
        if self.pending.is_empty() {
            return;
        }
        self.last_update = Some(now);
        let pending = std::mem::take(&mut self.pending);
        let (mut advertise, mut withdraw) = (Vec::new(), Vec::new());
        for (agent, change) in pending {
            match change {
                Some(summary) => {
                    self.sent.insert(agent_hash(&agent));
                    advertise.push(summary);
                }
                // Still counted as sent: a withdrawn agent's next route waits for the
                // interval, or withdrawals and new paths would explore at full speed.
                None => withdraw.push(agent),
            }
            if advertise.len() + withdraw.len() == 512 {
                self.send_update(&mut advertise, &mut withdraw);
            }
        }
        if !advertise.is_empty() || !withdraw.is_empty() {
            self.send_update(&mut advertise, &mut withdraw);
        }
    }

    fn send_update(&mut self, advertise: &mut Vec<pb::AgentSummary>, withdraw: &mut Vec<String>) {
        self.advertised += advertise.len();
        self.send(pb::ResourceUpdate {
            advertise: std::mem::take(advertise),
            withdraw: std::mem::take(withdraw),
        });
    }

    /// Sends the whole table, then END-OF-SYNC; call it after [`Output::PeerUp`].
    pub fn full_sync(&mut self, summaries: &[pb::AgentSummary]) {
        if !matches!(self.state, State::Established(_)) {
            return;
        }
        let table: Vec<pb::AgentSummary> = summaries
            .iter()
            .filter(|s| self.exportable(s))
            .map(|s| self.outgoing(s))
            .collect();
        let count = table.len() as u64;
        self.advertised = table.len();
        self.sent = table.iter().map(|s| agent_hash(&s.agent)).collect();
        for chunk in table.chunks(512) {
            self.send(pb::ResourceUpdate {
                advertise: chunk.to_vec(),
                withdraw: Vec::new(),
            });
        }
        self.send(pb::EndOfSync { summaries: count });
    }

    /// A summary may go to this peer: its domain is exported, and it did not come through
    /// the peer (split horizon; the peer would refuse it as a loop anyway).
    fn exportable(&self, s: &pb::AgentSummary) -> bool {
        AgentId::parse(&s.agent).is_ok_and(|id| self.config.exports(id.domain()))
            && !s.path.iter().any(|g| g == self.config.peer.as_str())
    }

    fn outgoing(&self, s: &pb::AgentSummary) -> pb::AgentSummary {
        let mut out = s.clone();
        out.path.insert(0, self.config.local.to_string());
        out
    }

    /// Feeds one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Start => {
                if let State::Idle { .. } = self.state {
                    self.state = State::Idle {
                        next_attempt: self.config.dial.then_some(now),
                    };
                    self.tick(now);
                }
            }
            Input::Stop(reason) => {
                if matches!(self.state, State::Established(_)) {
                    self.send(pb::Disconnect { reason });
                    self.down(ErrorCode::Cease, true);
                }
                if !matches!(self.state, State::Idle { .. } | State::Stopped) {
                    self.outputs.push_back(Output::Close);
                }
                self.state = State::Stopped;
            }
            Input::TransportUp { dialled, identity } => self.transport_up(dialled, &identity, now),
            Input::TransportDown => self.transport_down(now),
            Input::Received(message) => self.received(*message, now),
            Input::Malformed { code, text } => {
                if !matches!(self.state, State::Idle { .. } | State::Stopped) {
                    self.fail(code, &text, now);
                }
            }
            Input::Backlog(since) => {
                self.backlog_since = since;
                self.tick(now);
            }
            Input::Tick => self.tick(now),
        }
    }

    fn transport_up(&mut self, dialled: bool, identity: &str, now: Instant) {
        if identity != self.config.peer.as_str() {
            // Not the peer this session is for: refuse, stay where we were.
            self.send(notification(ErrorCode::BadPeerId, identity));
            self.outputs.push_back(Output::Close);
            return;
        }
        match (&self.state, dialled) {
            (State::Connecting, true) => {
                self.send(self.open());
                self.state = State::OpenSent {
                    deadline: now + self.config.hold_time,
                };
            }
            (State::Idle { .. } | State::Connecting, false) => {
                self.state = State::OpenWait {
                    deadline: now + self.config.hold_time,
                };
            }
            _ => {
                // A second transport while this one is busy: the driver resolves collisions
                // before it gets here (see `collision_winner`); refuse it.
                self.send(notification(ErrorCode::ConnectionCollision, "session busy"));
                self.outputs.push_back(Output::Close);
            }
        }
    }

    fn transport_down(&mut self, now: Instant) {
        match self.state {
            State::Stopped | State::Idle { .. } => {}
            State::Established(_) => {
                self.down(ErrorCode::Cease, false);
                self.retry_later(now);
            }
            _ => self.retry_later(now),
        }
        self.backlog_since = None;
    }

    fn open(&self) -> pb::Open {
        pb::Open {
            gateway: self.config.local.to_string(),
            domain: self.config.local.domain().to_owned(),
            protocols: self.config.protocols.iter().map(|p| *p as i32).collect(),
            certificate_chain: self.chain(),
            status: self.config.status as i32,
            hold_time_s: self.config.hold_time.as_secs() as u32,
            agent_access_address: self.config.agent_access_address.clone(),
        }
    }

    fn chain(&self) -> Vec<bytes::Bytes> {
        self.config
            .certificate_chain
            .iter()
            .map(|c| bytes::Bytes::from(c.clone()))
            .collect()
    }

    /// Checks an OPEN or OPEN_REPLY's fields: the peer's ID and domain, the hold time, a
    /// protocol in common. Returns the negotiated hold time.
    fn check_open(
        &self,
        gateway: &str,
        domain: &str,
        protocols: &[i32],
        hold_time_s: u32,
        chain: &[bytes::Bytes],
    ) -> Result<(Duration, Domain), (ErrorCode, String)> {
        if gateway != self.config.peer.as_str() {
            return Err((ErrorCode::BadPeerId, format!("OPEN from {gateway}")));
        }
        // The TLS handshake proved the key; a chain in the OPEN must name the same gateway.
        if let Some(leaf) = chain.first() {
            let named = agw_aca::tls::peer_identity(&[rustls::pki_types::CertificateDer::from(
                leaf.to_vec(),
            )]);
            if named.as_deref() != Some(gateway) {
                return Err((
                    ErrorCode::BadPeerId,
                    "certificate in OPEN names another".into(),
                ));
            }
        }
        let Ok(domain) = Domain::new(domain) else {
            return Err((ErrorCode::BadPeerId, format!("domain {domain}")));
        };
        if domain.as_str() != self.config.peer.domain() {
            return Err((
                ErrorCode::BadPeerId,
                format!("{gateway} is not in {domain}"),
            ));
        }
        let proposed = Duration::from_secs(u64::from(hold_time_s));
        if proposed < MIN_HOLD_TIME {
            return Err((ErrorCode::BadHoldTime, format!("hold time {hold_time_s} s")));
        }
        let ours: Vec<i32> = self.config.protocols.iter().map(|p| *p as i32).collect();
        if !protocols.iter().any(|p| ours.contains(p)) {
            return Err((
                ErrorCode::ProtocolIncompatible,
                "no protocol in common".into(),
            ));
        }
        Ok((proposed.min(self.config.hold_time), domain))
    }

    fn received(&mut self, message: Message, now: Instant) {
        if let State::Established(t) = &mut self.state {
            t.hold_deadline = now + t.hold;
        }
        match (&self.state, message) {
            (State::OpenWait { .. }, Message::Open(open)) => {
                match self.check_open(
                    &open.gateway,
                    &open.domain,
                    &open.protocols,
                    open.hold_time_s,
                    &open.certificate_chain,
                ) {
                    Ok((hold, domain)) => {
                        self.send(pb::OpenReply {
                            gateway: self.config.local.to_string(),
                            domain: self.config.local.domain().to_owned(),
                            protocols: self.config.protocols.iter().map(|p| *p as i32).collect(),
                            certificate_chain: self.chain(),
                            status: self.config.status as i32,
                            hold_time_s: hold.as_secs() as u32,
                            agent_access_address: self.config.agent_access_address.clone(),
                        });
                        self.established(hold, domain, open.agent_access_address, now);
                        self.peer_status_heard(open.status);
                    }
                    Err((code, text)) => self.fail(code, &text, now),
                }
            }
            (State::OpenSent { .. }, Message::OpenReply(reply)) => {
                match self.check_open(
                    &reply.gateway,
                    &reply.domain,
                    &reply.protocols,
                    reply.hold_time_s,
                    &reply.certificate_chain,
                ) {
                    Ok((hold, domain)) => {
                        self.established(hold, domain, reply.agent_access_address, now);
                        self.peer_status_heard(reply.status);
                    }
                    Err((code, text)) => self.fail(code, &text, now),
                }
            }
            (_, Message::Notification(n)) => {
                let established = matches!(self.state, State::Established(_));
                self.outputs.push_back(Output::Close);
                if established {
                    self.down(n.code(), false);
                }
                self.retry_later(now);
            }
            (State::Established(_), Message::Disconnect(_)) => {
                self.outputs.push_back(Output::Close);
                self.down(ErrorCode::Cease, true);
                self.retry_later(now);
            }
            (State::Established(_), Message::Keepalive(k)) => self.peer_status_heard(k.status),
            (State::Established(_), Message::ResourceUpdate(update)) => self.update(update, now),
            (State::Established(_), Message::EndOfSync(_)) => {
                self.outputs.push_back(Output::SyncComplete);
            }
            (_, other) => self.fail(ErrorCode::FsmError, other.kind().name(), now),
        }
    }

    /// Applies a RESOURCE_UPDATE: withdrawals, then each advertised summary checked alone.
    fn update(&mut self, update: pb::ResourceUpdate, now: Instant) {
        let mut withdrawn: Vec<String> = update
            .withdraw
            .into_iter()
            .filter(|a| self.learned.remove(a))
            .collect();
        let mut learned = Vec::new();
        for summary in update.advertise {
            if let Err(code) = self.check_summary(&summary) {
                if self.learned.remove(&summary.agent) {
                    withdrawn.push(summary.agent.clone());
                }
                self.outputs.push_back(Output::Refused {
                    agent: summary.agent,
                    code,
                });
                continue;
            }
            let new = !self.learned.contains(&summary.agent);
            if new
                && let Some((max, action)) = self.config.max_summaries
                && self.learned.len() >= max
            {
                match action {
                    LimitAction::Warn => {
                        if !self.warned {
                            self.warned = true;
                            self.outputs.push_back(Output::Warning(format!(
                                "{} advertises more than {max} summaries",
                                self.config.peer
                            )));
                        }
                    }
                    LimitAction::Refuse => {
                        self.outputs.push_back(Output::Refused {
                            agent: summary.agent,
                            code: ErrorCode::SummaryLimit,
                        });
                        continue;
                    }
                    LimitAction::Reset => {
                        if !withdrawn.is_empty() {
                            self.outputs.push_back(Output::Withdrawn(withdrawn));
                        }
                        if !learned.is_empty() {
                            self.outputs.push_back(Output::Learned(learned));
                        }
                        let text = format!("more than {max} summaries");
                        self.fail(ErrorCode::SummaryLimit, &text, now);
                        return;
                    }
                }
            }
            self.learned.insert(summary.agent.clone());
            learned.push(summary);
        }
        if !withdrawn.is_empty() {
            self.outputs.push_back(Output::Withdrawn(withdrawn));
        }
        if !learned.is_empty() {
            self.outputs.push_back(Output::Learned(learned));
        }
    }

    /// A summary from this peer must name a valid agent of the origin's domain, and carry a
    /// path from the peer to the origin that does not pass this gateway.
    fn check_summary(&self, s: &pb::AgentSummary) -> Result<(), ErrorCode> {
        let agent = AgentId::parse(&s.agent).map_err(|_| ErrorCode::BadSummary)?;
        let origin = GatewayId::parse(&s.origin).map_err(|_| ErrorCode::BadSummary)?;
        if agent.domain() != origin.domain() {
            return Err(ErrorCode::BadSummary);
        }
        if s.path.first().map(String::as_str) != Some(self.config.peer.as_str())
            || s.path.last().map(String::as_str) != Some(origin.as_str())
        {
            return Err(ErrorCode::BadSummary);
        }
        if s.path.iter().any(|g| g == self.config.local.as_str()) {
            return Err(ErrorCode::PathLoop);
        }
        let mut seen = HashSet::new();
        if !s.path.iter().all(|g| seen.insert(g.as_str())) {
            return Err(ErrorCode::PathLoop);
        }
        Ok(())
    }

    fn established(
        &mut self,
        hold: Duration,
        domain: Domain,
        agent_access_address: String,
        now: Instant,
    ) {
        self.state = State::Established(Timers {
            hold,
            hold_deadline: now + hold,
            next_keepalive: now + hold / 3,
            up_since: now,
        });
        self.outputs.push_back(Output::PeerUp {
            hold_time: hold,
            domain,
            agent_access_address,
        });
    }

    /// Ends the session with a NOTIFICATION carrying `code`.
    fn fail(&mut self, code: ErrorCode, text: &str, now: Instant) {
        self.send(notification(code, text));
        self.outputs.push_back(Output::Close);
        if matches!(self.state, State::Established(_)) {
            self.down(code, false);
        }
        self.retry_later(now);
    }

    /// A status in OPEN, OPEN_REPLY or KEEPALIVE: a change is reported. Anything but
    /// `TEMPORARILY_OFFLINE` (an unknown value too) counts as `RUNNING`: a gateway that
    /// answers is up.
    fn peer_status_heard(&mut self, status: i32) {
        let status = match pb::Status::try_from(status) {
            Ok(pb::Status::TemporarilyOffline) => pb::Status::TemporarilyOffline,
            _ => pb::Status::Running,
        };
        if status != self.peer_status {
            self.peer_status = status;
            self.outputs.push_back(Output::PeerStatus(status));
        }
    }

    /// The session ended. What the peer advertised is not reported as withdrawn one by one:
    /// [`Output::PeerDown`] says it all, and the control plane tells a peer that failed
    /// (its agents kept as unreachable until it returns) from one that left.
    fn down(&mut self, code: ErrorCode, disconnected: bool) {
        self.learned.clear();
        self.pending.clear();
        self.sent.clear();
        self.last_update = None;
        self.flush_at = None;
        self.warned = false;
        self.peer_status = pb::Status::Running;
        self.outputs
            .push_back(Output::PeerDown { code, disconnected });
    }

    /// Back to idle; dial again after the backoff (doubling, reset by a session that stayed
    /// up for a hold time).
    fn retry_later(&mut self, now: Instant) {
        if let State::Established(t) = &self.state
            && now.duration_since(t.up_since) >= t.hold
        {
            self.backoff = self.config.retry_min;
        }
        if self.state == State::Stopped {
            return;
        }
        let next_attempt = self.config.dial.then(|| now + self.backoff);
        self.backoff = (self.backoff * 2).min(self.config.retry_max);
        self.state = State::Idle { next_attempt };
        self.backlog_since = None;
    }

    fn tick(&mut self, now: Instant) {
        if let Some(since) = self.backlog_since
            && now >= since + self.config.send_hold_time
            && !matches!(self.state, State::Idle { .. } | State::Stopped)
        {
            // The peer does not read: a notification could not get through, just close.
            self.outputs.push_back(Output::Close);
            if matches!(self.state, State::Established(_)) {
                self.down(ErrorCode::SendHoldTimerExpired, false);
            }
            self.retry_later(now);
            return;
        }
        match &mut self.state {
            State::Idle {
                next_attempt: Some(at),
            } if now >= *at => {
                self.state = State::Connecting;
                self.outputs.push_back(Output::Connect);
            }
            State::OpenSent { deadline } | State::OpenWait { deadline } if now >= *deadline => {
                self.fail(ErrorCode::HoldTimerExpired, "no OPEN in time", now);
            }
            State::Established(_) if self.flush_at.is_some_and(|at| now >= at) => {
                self.flush(now);
                // Other timers may be due as well.
                self.tick(now);
            }
            State::Established(t) if now >= t.hold_deadline => {
                self.fail(
                    ErrorCode::HoldTimerExpired,
                    "no message within the hold time",
                    now,
                );
            }
            State::Established(t) if now >= t.next_keepalive => {
                t.next_keepalive = now + t.hold / 3;
                self.send(pb::Keepalive {
                    status: self.config.status as i32,
                });
            }
            _ => {}
        }
    }

    fn send(&mut self, message: impl Into<Message>) {
        self.outputs.push_back(Output::Send(message.into()));
    }
}

fn notification(code: ErrorCode, text: &str) -> pb::Notification {
    pb::Notification {
        code: code as i32,
        subcode: 0,
        text: text.to_owned(),
    }
}

/// Two transports between the same pair of gateways at once (both dialled): the one dialled by
/// the gateway with the greater ID survives, on both sides alike. Returns whether the
/// transport dialled by `dialler` is kept.
pub fn collision_winner(dialler: &GatewayId, other: &GatewayId) -> bool {
    dialler.as_str() > other.as_str()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn cert_naming(uri: &str) -> bytes::Bytes {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.self_signed(&key).unwrap().der().to_vec().into()
    }

    /// A session that accepted a transport and heard the peer's OPEN (carrying `chain`) at `t`.
    fn opened(chain: Vec<bytes::Bytes>, t: Instant) -> PeerSession {
        let local = GatewayId::parse("spiffe://a.example/agw/a1").unwrap();
        let peer = GatewayId::parse("spiffe://b.example/agw/b1").unwrap();
        let mut config = PeerConfig::new(local, peer.clone());
        config.dial = false;
        let mut s = PeerSession::new(config);
        s.handle(Input::Start, t);
        s.handle(
            Input::TransportUp {
                dialled: false,
                identity: peer.to_string(),
            },
            t,
        );
        let open = pb::Open {
            gateway: peer.to_string(),
            domain: "b.example".into(),
            protocols: vec![pb::Protocol::Native as i32],
            certificate_chain: chain,
            hold_time_s: 90,
            ..Default::default()
        };
        s.handle(Input::Received(Box::new(open.into())), t);
        s
    }

    fn opened_with(chain: Vec<bytes::Bytes>) -> Vec<Output> {
        let mut s = opened(chain, Instant::now());
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    #[test]
    fn a_certificate_in_open_must_name_the_gateway_that_sends_it() {
        let refused = opened_with(vec![cert_naming("spiffe://c.example/agw/c1")]);
        assert!(
            matches!(&refused[..], [Output::Send(Message::Notification(n)), Output::Close]
                if n.code() == ErrorCode::BadPeerId),
            "{refused:?}"
        );
        let accepted = opened_with(vec![cert_naming("spiffe://b.example/agw/b1")]);
        assert!(
            matches!(
                &accepted[..],
                [Output::Send(Message::OpenReply(_)), Output::PeerUp { .. }]
            ),
            "{accepted:?}"
        );
    }

    /// An established session (accepted, OPEN answered) at `t`, its outputs drained.
    fn established_at(t: Instant) -> PeerSession {
        let mut s = opened(Vec::new(), t);
        while s.poll_output().is_some() {}
        assert_eq!(s.state(), SessionState::Established);
        s
    }

    fn summary(agent: &str, version: u64) -> pb::AgentSummary {
        pb::AgentSummary {
            agent: format!("spiffe://a.example/agent/{agent}"),
            origin: "spiffe://a.example/agw/a1".into(),
            version,
            ..Default::default()
        }
    }

    /// One RESOURCE_UPDATE: agents advertised (their names) with their versions, withdrawn.
    type Update = (Vec<(String, u64)>, Vec<String>);

    /// The RESOURCE_UPDATEs sent so far.
    fn updates(s: &mut PeerSession) -> Vec<Update> {
        std::iter::from_fn(|| s.poll_output())
            .filter_map(|o| match o {
                Output::Send(Message::ResourceUpdate(u)) => Some((
                    u.advertise
                        .iter()
                        .map(|a| (a.agent.rsplit('/').next().unwrap().to_owned(), a.version))
                        .collect(),
                    u.withdraw
                        .iter()
                        .map(|w| w.rsplit('/').next().unwrap().to_owned())
                        .collect(),
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn changes_within_the_advertisement_interval_go_together_the_newest_for_each_agent() {
        let t = Instant::now();
        let mut s = established_at(t);
        let gap = DEFAULT_ADVERTISEMENT_INTERVAL;
        let ms = Duration::from_millis;
        let y = ["spiffe://a.example/agent/y".to_owned()];
        // An agent new to the peer goes at once; so does the first change after a quiet spell.
        s.advertise(&[summary("x", 1)], &[], t);
        assert_eq!(updates(&mut s), [(vec![("x".into(), 1)], vec![])]);
        s.advertise(&[summary("x", 2)], &[], t + ms(5));
        assert_eq!(updates(&mut s), [(vec![("x".into(), 2)], vec![])]);
        // Within the interval: x changes twice and waits; y and z are new and go at once;
        // y is withdrawn and that waits.
        s.advertise(&[summary("x", 3)], &[], t + ms(10));
        s.advertise(&[summary("y", 1)], &[], t + ms(20));
        assert_eq!(updates(&mut s), [(vec![("y".into(), 1)], vec![])]);
        s.advertise(&[summary("x", 4), summary("z", 1)], &y, t + ms(30));
        assert_eq!(updates(&mut s), [(vec![("z".into(), 1)], vec![])]);
        assert_eq!(s.next_timeout(), Some(t + ms(5) + gap));
        // A tick before the interval's end sends nothing; at it, one update: the newest x,
        // y withdrawn.
        s.handle(Input::Tick, t + ms(4) + gap);
        assert!(updates(&mut s).is_empty());
        s.handle(Input::Tick, t + ms(5) + gap);
        assert_eq!(updates(&mut s), [(vec![("x".into(), 4)], vec!["y".into()])]);
        assert_eq!(s.advertised(), 5);
        // y was advertised in this session: its next route waits for the interval like any
        // change (withdrawals and new paths would otherwise explore at full speed).
        s.advertise(&[summary("y", 2)], &[], t + ms(6) + gap);
        assert!(updates(&mut s).is_empty());
        s.handle(Input::Tick, t + ms(5) + 2 * gap);
        assert_eq!(updates(&mut s), [(vec![("y".into(), 2)], vec![])]);
        // Pending changes die with the session: a new one starts from its full sync.
        s.advertise(&[summary("z", 2)], &[], t + ms(7) + 2 * gap);
        s.handle(Input::TransportDown, t + ms(8) + 2 * gap);
        s.handle(Input::Tick, t + 5 * gap);
        assert!(updates(&mut s).is_empty());
    }
}
