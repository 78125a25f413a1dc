//! Sessions (draft 2.4, session management): conversations between two agents that survive
//! reconnects and restarts of either. A session has a random ID every message of it carries
//! (`AgentMessage.session_id`) and a [`pb::SessionHeader`]: the message's sequence (per sender,
//! from 1), the sequence it answers, a deadline for its answer, and the sender's context.
//!
//! [`Sessions`] wraps an [`Agent`] with a [`Store`]:
//! - a message is stored (and in the outbox) before it is sent, and leaves the outbox when the
//!   peer acknowledges it; what was not acknowledged is sent again after [`Sessions::reconnect`]
//!   and when [`Sessions::open`] starts on the same store after a restart, and after a NACK for
//!   a temporary reason (the destination offline, a gateway overloaded) once a backoff has
//!   passed (from [`FIRST_RETRY`], doubling to [`MAX_RETRY`] while refusals go on), during
//!   [`Sessions::next`] and [`Sessions::request`];
//! - a received message is stored before it is acknowledged, and a copy already stored is
//!   acknowledged again and not delivered twice;
//! - [`Sessions::request`] sends and waits for the answer until its deadline, keeping what else
//!   arrives meanwhile for [`Sessions::next`];
//! - the context set with [`Sessions::set_context`] travels with every later message, and the
//!   peer's latest is kept with the session, so an agent that restarted reads where the
//!   conversation is from its own store.
//!
//! The connection is made again on its own: when it is lost (the gateway restarted, the
//! network failed), the next [`Sessions::next`] or [`Sessions::request`] connects again, from
//! [`FIRST_RETRY`] doubling to [`MAX_RECONNECT_WAIT`] between tries, and sends what was not
//! acknowledged; a message sent while it is down waits in the outbox.
//!
//! The gateways keep a session's order: its messages leave one connection and arrive on one,
//! through the same relays (docs/agents.md).

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use agw_proto::{
    identity::AgentId,
    pb::{self, ErrorCode},
};
use bytes::Bytes;

use crate::{
    agent::{AgentError, Incoming},
    lifecycle::Agent,
    store::{Arrival, Delivery, Entry, SessionRecord, Store, StoreError, unix_ms},
};

/// The most context a message carries.
pub const MAX_CONTEXT: usize = 4096;

/// Why a session call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The connection or the gateway failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No answer came before the deadline.
    #[error("no answer before the deadline")]
    Deadline,
    /// A gateway refused the message (the NACK says why).
    #[error("refused: {:?}: {}", .0.reason(), .0.detail)]
    Refused(pb::Nack),
    /// No such session, or it is closed.
    #[error("{0}")]
    Session(String),
}

/// A message that arrived, stored if it belongs to a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Its session; `None` for a message outside any (or one that named another peer's
    /// session).
    pub session: Option<u64>,
    pub message: pb::AgentMessage,
}

impl Received {
    /// The sender.
    pub fn peer(&self) -> &str {
        &self.message.source
    }

    /// Its sequence in the session (0 outside one).
    pub fn sequence(&self) -> u64 {
        self.message
            .session_header
            .as_ref()
            .map_or(0, |h| h.sequence)
    }

    /// The sequence of this agent's message it answers (0 when none).
    pub fn in_reply_to(&self) -> u64 {
        self.message
            .session_header
            .as_ref()
            .map_or(0, |h| h.in_reply_to)
    }

    /// When the sender stops waiting for an answer, if it said.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.message
            .session_header
            .as_ref()
            .filter(|h| h.deadline_unix_ms != 0)
            .and_then(|h| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(h.deadline_unix_ms))
            })
    }

    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    pub fn content_type(&self) -> &str {
        &self.message.content_type
    }
}

/// What [`Sessions::next`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message arrived (stored and acknowledged).
    Message(Received),
    /// The peer acknowledged this agent's message `sequence` of `session`.
    Delivered { session: u64, sequence: u64 },
    /// A gateway NACKed this agent's message `sequence` of `session`.
    Refused {
        session: u64,
        sequence: u64,
        nack: pb::Nack,
    },
    /// An ACK or NACK of a message sent outside any session.
    Other(Incoming),
}

/// A message to send in a session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outgoing {
    pub content_type: String,
    pub language: String,
    pub payload: Bytes,
    /// The peer's sequence this answers; 0 when none.
    pub in_reply_to: u64,
    /// When this agent stops waiting for an answer; `None` when it does not wait.
    pub deadline: Option<SystemTime>,
}

impl Outgoing {
    /// A message of media type `content_type`.
    pub fn new(content_type: &str, payload: impl Into<Bytes>) -> Outgoing {
        Outgoing {
            content_type: content_type.to_owned(),
            payload: payload.into(),
            ..Default::default()
        }
    }

    /// Plain text.
    pub fn text(text: &str) -> Outgoing {
        Outgoing::new("text/plain", Bytes::copy_from_slice(text.as_bytes()))
    }
}

/// Whether a message NACKed for `reason` is worth sending again later as it is.
pub fn temporary(reason: ErrorCode) -> bool {
    matches!(
        reason,
        ErrorCode::DestinationOffline
            | ErrorCode::NoRoute
            | ErrorCode::Overloaded
            | ErrorCode::RateLimited
            | ErrorCode::Draining
            | ErrorCode::Unreachable
            | ErrorCode::TranslationFailed
    )
}

/// The first wait before messages refused for a temporary reason are sent again; it doubles
/// while they keep being refused, up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// An agent with its sessions.
#[derive(Debug)]
pub struct Sessions {
    agent: Agent,
    store: Store,
    /// This connection's message IDs of session messages awaiting their ACK.
    in_flight: HashMap<u64, (u64, u64)>,
    /// What arrived while [`Sessions::request`] waited.
    backlog: VecDeque<Event>,
    /// When refused messages are sent again, and the wait after that.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The connection is gone: made again by the next call that waits.
    broken: bool,
    /// When to try that next, and the wait after that.
    reconnect_at: Option<Instant>,
    reconnect_backoff: Duration,
}

/// The longest wait between two tries to connect again.
pub const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// Whether `e` says the connection is gone (the gateway closed it, the socket failed).
fn connection_lost(e: &AgentError) -> bool {
    matches!(e, AgentError::Io(_) | AgentError::Closed(_))
}

impl Sessions {
    /// `agent` with the session store at `path` (created if new); what the store holds unsent
    /// or unacknowledged from before a restart is sent now.
    pub fn open(agent: Agent, path: &Path) -> Result<Sessions, SessionError> {
        let mut sessions = Sessions {
            agent,
            store: Store::open(path)?,
            in_flight: HashMap::new(),
            backlog: VecDeque::new(),
            retry_at: None,
            backoff: FIRST_RETRY,
            broken: false,
            reconnect_at: None,
            reconnect_backoff: FIRST_RETRY,
        };
        sessions.resend()?;
        Ok(sessions)
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The agent, to renew its certificate, register, discover.
    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a session with `peer`; `label` says what it is for (kept in the store).
    pub fn start(&mut self, peer: &AgentId, label: &str) -> Result<u64, SessionError> {
        Ok(self.store.start(peer.as_str(), label)?.id)
    }

    /// The session `id` as stored.
    pub fn session(&self, id: u64) -> Result<SessionRecord, SessionError> {
        self.store
            .session(id)?
            .ok_or_else(|| SessionError::Session(format!("no session {id:016x}")))
    }

    /// Sets this agent's context of session `id`: every message it sends from now on carries
    /// it (at most [`MAX_CONTEXT`] bytes).
    pub fn set_context(
        &mut self,
        id: u64,
        content_type: &str,
        context: impl Into<Bytes>,
    ) -> Result<(), SessionError> {
        let context = context.into();
        if context.len() > MAX_CONTEXT {
            return Err(SessionError::Session(format!(
                "a context of {} bytes (at most {MAX_CONTEXT})",
                context.len()
            )));
        }
        self.store.set_context(id, content_type, context)?;
        Ok(())
    }

    /// Closes session `id`: what it has not delivered is never resent.
    pub fn close(&mut self, id: u64) -> Result<(), SessionError> {
        self.in_flight.retain(|_, (s, _)| *s != id);
        Ok(self.store.close(id)?)
    }

    /// Sends `message` in session `id`; returns its sequence. It is in the store (and its
    /// outbox) before it leaves: a failed connection loses nothing, the next
    /// [`Sessions::reconnect`] sends it.
    pub fn send(&mut self, id: u64, message: Outgoing) -> Result<u64, SessionError> {
        let entry = Entry {
            in_reply_to: message.in_reply_to,
            content_type: message.content_type,
            payload: message.payload,
            at_unix_ms: unix_ms(SystemTime::now()),
            language: message.language,
            deadline_unix_ms: message.deadline.map_or(0, unix_ms),
            ..Default::default()
        };
        let (record, entry) = self.store.send(id, entry)?;
        let sequence = entry.sequence;
        self.transmit(&record, entry)?;
        Ok(sequence)
    }

    /// Answers `to` in its session.
    pub fn reply(&mut self, to: &Received, mut message: Outgoing) -> Result<u64, SessionError> {
        let id = to.session.ok_or_else(|| {
            SessionError::Session("an answer to a message outside sessions".into())
        })?;
        message.in_reply_to = to.sequence();
        self.send(id, message)
    }

    /// Sends `message` in session `id` and waits up to `within` for the peer's answer to it;
    /// whatever else arrives meanwhile waits for [`Sessions::next`].
    pub fn request(
        &mut self,
        id: u64,
        mut message: Outgoing,
        within: Duration,
    ) -> Result<Received, SessionError> {
        let deadline = Instant::now() + within;
        message.deadline = Some(SystemTime::now() + within);
        let sequence = self.send(id, message)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SessionError::Deadline);
            }
            match self.receive(left)? {
                Some(Event::Message(m)) if m.session == Some(id) && m.in_reply_to() == sequence => {
                    return Ok(m);
                }
                Some(Event::Refused {
                    session,
                    sequence: s,
                    nack,
                }) if session == id && s == sequence => return Err(SessionError::Refused(nack)),
                Some(other) => self.backlog.push_back(other),
                None => {}
            }
        }
    }

    /// The next event, waiting up to `within`; `None` when nothing came.
    pub fn next(&mut self, within: Duration) -> Result<Option<Event>, SessionError> {
        if let Some(event) = self.backlog.pop_front() {
            return Ok(Some(event));
        }
        self.receive(within)
    }

    /// Connects again (after the gateway closed the connection, or to present a renewed
    /// certificate) and sends what was not acknowledged.
    pub fn reconnect(&mut self) -> Result<(), SessionError> {
        self.agent.reconnect()?;
        self.broken = false;
        self.reconnect_at = None;
        self.reconnect_backoff = FIRST_RETRY;
        self.in_flight.clear();
        self.resend()
    }

    /// Connects again when the connection is gone and a try is due; `Err` with why when the
    /// try failed.
    fn mend(&mut self) -> Result<(), SessionError> {
        if !self.broken || self.reconnect_at.is_some_and(|at| at > Instant::now()) {
            return Ok(());
        }
        match self.reconnect() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.broken = true;
                self.reconnect_at = Some(Instant::now() + self.reconnect_backoff);
                self.reconnect_backoff = (self.reconnect_backoff * 2).min(MAX_RECONNECT_WAIT);
                Err(e)
            }
        }
    }

    /// Sends again, in order, every message the store holds unacknowledged that is not on its
    /// way now (refused for a temporary reason, or sent before a reconnect or restart).
    pub fn resend(&mut self) -> Result<(), SessionError> {
        let on_the_way: std::collections::HashSet<(u64, u64)> =
            self.in_flight.values().copied().collect();
        for (record, entry) in self.store.outbox()? {
            if !on_the_way.contains(&(record.id, entry.sequence)) {
                self.transmit(&record, entry)?;
            }
        }
        Ok(())
    }

    /// The stored history of session `id`.
    pub fn history(&self, id: u64) -> Result<Vec<Entry>, SessionError> {
        Ok(self.store.history(id)?)
    }

    fn transmit(&mut self, record: &SessionRecord, entry: Entry) -> Result<(), SessionError> {
        let header = pb::SessionHeader {
            sequence: entry.sequence,
            in_reply_to: entry.in_reply_to,
            deadline_unix_ms: entry.deadline_unix_ms,
            context: record.context.clone(),
            context_type: record.context_type.clone(),
        };
        let sent = self.agent.send(pb::AgentMessage {
            destination: record.peer.clone(),
            session_id: record.id,
            content_type: entry.content_type,
            language: entry.language,
            session_header: Some(Box::new(header)),
            payload: entry.payload,
            ..Default::default()
        });
        match sent {
            Ok(message_id) => {
                self.in_flight
                    .insert(message_id, (record.id, entry.sequence));
                Ok(())
            }
            // It stays in the outbox: sent again once the connection is made again.
            Err(e) if connection_lost(&e) => {
                self.broken = true;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn receive(&mut self, within: Duration) -> Result<Option<Event>, SessionError> {
        let deadline = Instant::now() + within;
        loop {
            if let Err(e) = self.mend() {
                if Instant::now() >= deadline {
                    return Err(e);
                }
            }
            if self.broken {
                // Down: wait for the next try, or the end of this call.
                let until = self.reconnect_at.map_or(deadline, |at| at.min(deadline));
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                if Instant::now() >= deadline && self.mend().is_err() {
                    return Err(SessionError::Agent(AgentError::Closed(None)));
                }
                continue;
            }
            if self.retry_at.is_some_and(|at| at <= Instant::now()) {
                self.retry_at = None;
                self.resend()?;
            }
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Some(at) = self.retry_at {
                left = left.min(at.saturating_duration_since(Instant::now()));
            }
            let incoming = match self.agent.recv_within(left) {
                Ok(Some(incoming)) => incoming,
                Ok(None) if Instant::now() >= deadline => return Ok(None),
                Ok(None) => continue,
                Err(e) if connection_lost(&e) => {
                    self.broken = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(event) = self.handle(incoming)? {
                return Ok(Some(event));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Stores and acknowledges a message, records an ACK or NACK; `None` for a resent copy.
    fn handle(&mut self, incoming: Incoming) -> Result<Option<Event>, SessionError> {
        match incoming {
            Incoming::Message(message, _) => {
                let Some(header) = message
                    .session_header
                    .as_deref()
                    .filter(|_| message.session_id != 0)
                else {
                    match self.agent.ack(&message) {
                        Err(e) if connection_lost(&e) => self.broken = true,
                        other => other?,
                    }
                    return Ok(Some(Event::Message(Received {
                        session: None,
                        message,
                    })));
                };
                let entry = Entry {
                    sequence: header.sequence,
                    in_reply_to: header.in_reply_to,
                    content_type: message.content_type.clone(),
                    payload: message.payload.clone(),
                    at_unix_ms: unix_ms(SystemTime::now()),
                    language: message.language.clone(),
                    deadline_unix_ms: header.deadline_unix_ms,
                    ..Default::default()
                };
                let context = (!header.context.is_empty() && header.context.len() <= MAX_CONTEXT)
                    .then(|| (header.context_type.as_str(), header.context.clone()));
                let arrival =
                    self.store
                        .receive(message.session_id, &message.source, &entry, context)?;
                // Stored first: an ACK means the message is safe. One lost with the
                // connection is sent again for the copy the peer sends again.
                match self.agent.ack(&message) {
                    Err(e) if connection_lost(&e) => self.broken = true,
                    other => other?,
                }
                Ok(match arrival {
                    Arrival::Duplicate => None,
                    Arrival::Stored(_) => Some(Event::Message(Received {
                        session: Some(message.session_id),
                        message,
                    })),
                    Arrival::NotThePeers => Some(Event::Message(Received {
                        session: None,
                        message,
                    })),
                })
            }
            Incoming::Ack(ack) => match self.in_flight.remove(&ack.message_id) {
                Some((session, sequence)) => {
                    self.store
                        .outcome(session, sequence, Delivery::Delivered, "", false)?;
                    self.backoff = FIRST_RETRY;
                    Ok(Some(Event::Delivered { session, sequence }))
                }
                None => Ok(Some(Event::Other(Incoming::Ack(ack)))),
            },
            Incoming::Nack(nack) => match self.in_flight.remove(&nack.message_id) {
                Some((session, sequence)) => {
                    let detail = format!("{:?}: {}", nack.reason(), nack.detail);
                    let again = temporary(nack.reason());
                    self.store
                        .outcome(session, sequence, Delivery::Refused, &detail, again)?;
                    if again && self.retry_at.is_none() {
                        let wait = self
                            .backoff
                            .max(Duration::from_millis(u64::from(nack.retry_after_ms)));
                        self.retry_at = Some(Instant::now() + wait);
                        self.backoff = (self.backoff * 2).min(MAX_RETRY);
                    }
                    Ok(Some(Event::Refused {
                        session,
                        sequence,
                        nack,
                    }))
                }
                None => Ok(Some(Event::Other(Incoming::Nack(nack)))),
            },
            Incoming::HeartbeatAck(_) => Ok(None),
        }
    }
}
