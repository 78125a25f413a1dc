//! Agent access (draft 3.3.1), the gateway's side, sans-IO: one [`AccessSession`] per agent
//! connection.
//!
//! Call order: create the session (it queues the challenge), then feed it what happens —
//! [`handle_message`](AccessSession::handle_message) for every access-kind frame the agent
//! sends, [`handle_timeout`](AccessSession::handle_timeout) when
//! [`next_timeout`](AccessSession::next_timeout) passes — and after each call drain
//! [`poll_action`](AccessSession::poll_action): frames to send, the agent coming up, changing
//! status or going down, and closing. It never touches a socket or a clock: time is an
//! argument (`Instant` for timers, `SystemTime` for certificate validity).
//!
//! ```text
//!            AccessRequest ok                Deregister / hold time passes
//!  Challenged -----------------> Accessed ----------------------------------> Closed
//!      |  bad request, timeout,       |  Heartbeat: ack, status
//!      |  anything else               |  anything else: UNEXPECTED_MESSAGE
//!      +---------------------------------------------------------------------> Closed
//! ```

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agw_proto::{
    Message,
    identity::{AgentId, GatewayId},
    pb::{self, ErrorCode},
    signing,
};
use agw_tls::{CertificateChecker, keys};

/// Timers of agent access.
#[derive(Debug, Clone, Copy)]
pub struct AccessConfig {
    /// Time an agent has to answer the challenge. Default 10 s.
    pub access_timeout: Duration,
    /// Heartbeat interval asked of agents. Default 30 s (the draft's example).
    pub heartbeat_interval: Duration,
    /// No heartbeat for this long: the agent is offline. Default 90 s (three intervals).
    pub hold_time: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            access_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            hold_time: Duration::from_secs(90),
        }
    }
}

/// Why an accessed agent went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// It deregistered: remove it everywhere.
    Deregistered,
    /// No heartbeat within the hold time: mark it offline.
    HoldTimeExpired,
    /// It broke the protocol; its connection is closed.
    ProtocolError,
    /// Its connection closed without a deregistration (set by the connection, not the
    /// session).
    Disconnected,
}

/// What the session asks its connection and the control plane to do.
// A few actions per access, drained at once: not worth a box for `Send`'s message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this frame to the agent.
    Send(Message),
    /// The agent is accessed: record it and route to this connection.
    AgentUp {
        /// Its identity.
        agent: AgentId,
        /// Its certificate's serial, to close the session if it is revoked.
        serial: Vec<u8>,
        /// The permission scopes its certificate grants (the authority wrote them in it).
        scopes: Vec<String>,
        /// The languages it says it understands (BCP 47), for translation.
        languages: Vec<String>,
        /// It wants the original of what the gateway translates for it.
        originals: bool,
    },
    /// The agent reported another status.
    AgentStatus {
        /// Its identity.
        agent: AgentId,
        /// The status reported.
        status: pb::Status,
    },
    /// The agent is gone.
    AgentDown {
        /// Its identity.
        agent: AgentId,
        /// Why.
        reason: DownReason,
    },
    /// Close the connection after sending what was queued before: `None` for a normal end,
    /// else the code of the error that ended it.
    Close(Option<ErrorCode>),
}

#[derive(Debug)]
enum State {
    Challenged {
        nonce: [u8; 32],
        deadline: Instant,
    },
    Accessed {
        agent: AgentId,
        hold_deadline: Instant,
        status: pb::Status,
    },
    Closed,
}

/// One agent connection's access state machine.
#[derive(Debug)]
pub struct AccessSession {
    state: State,
    gateway: GatewayId,
    /// The identity of the TLS client certificate the connection presented, if it is TLS:
    /// access is for that agent only.
    tls_identity: Option<String>,
    /// That certificate's chain (DER, leaf first): the handshake proved its key.
    tls_chain: Vec<bytes::Bytes>,
    checker: Arc<CertificateChecker>,
    config: AccessConfig,
    actions: VecDeque<Action>,
}

impl AccessSession {
    /// A session for a new connection; `nonce` must be fresh random bytes. The challenge is
    /// the first action.
    pub fn new(
        gateway: GatewayId,
        nonce: [u8; 32],
        checker: Arc<CertificateChecker>,
        config: AccessConfig,
        now: Instant,
    ) -> AccessSession {
        let challenge = pb::AccessChallenge {
            gateway: gateway.to_string(),
            nonce: nonce.to_vec().into(),
            access_timeout_ms: millis(config.access_timeout),
        };
        AccessSession {
            state: State::Challenged {
                nonce,
                deadline: now + config.access_timeout,
            },
            gateway,
            tls_identity: None,
            tls_chain: Vec::new(),
            checker,
            config,
            actions: VecDeque::from([Action::Send(challenge.into())]),
        }
    }

    /// Binds the session to the agent its connection's TLS client certificate names (`chain`,
    /// leaf first): an access request for another agent is refused `IDENTITY_MISMATCH`, and
    /// one that presents this very certificate needs no signature (the handshake proved the
    /// key: what protocol adapters send, having no key to sign with).
    pub fn bind_tls_identity(&mut self, identity: String, chain: Vec<bytes::Bytes>) {
        self.tls_identity = Some(identity);
        self.tls_chain = chain;
    }

    /// The TLS client certificate's chain the session is bound to (empty on plaintext).
    pub fn tls_chain(&self) -> &[bytes::Bytes] {
        &self.tls_chain
    }

    /// The TLS client certificate's identity the session is bound to.
    pub fn tls_identity(&self) -> Option<&str> {
        self.tls_identity.as_deref()
    }

    /// The accessed agent, once access succeeded.
    pub fn agent(&self) -> Option<&AgentId> {
        match &self.state {
            State::Accessed { agent, .. } => Some(agent),
            _ => None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Challenged { deadline, .. } => Some(*deadline),
            State::Accessed { hold_deadline, .. } => Some(*hold_deadline),
            State::Closed => None,
        }
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// An access-kind frame from the agent. `wall` is the time certificates are checked at.
    pub fn handle_message(&mut self, message: &Message, now: Instant, wall: SystemTime) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.state = match (state, message) {
            (State::Challenged { nonce, .. }, Message::AccessRequest(req)) => {
                match self.verify(&nonce, req, wall) {
                    Ok((agent, serial, scopes)) => {
                        // The agent comes up before the reply is sent, so the connection
                        // can make its route visible first: a reply means reachable.
                        self.actions.push_back(Action::AgentUp {
                            agent: agent.clone(),
                            serial,
                            scopes,
                            languages: req.languages.clone(),
                            originals: req.translation_originals,
                        });
                        self.send(pb::AccessReply {
                            error: None,
                            heartbeat_interval_ms: millis(self.config.heartbeat_interval),
                            hold_time_ms: millis(self.config.hold_time),
                        });
                        State::Accessed {
                            agent,
                            hold_deadline: now + self.config.hold_time,
                            status: pb::Status::Running,
                        }
                    }
                    Err(error) => self.refuse(error),
                }
            }
            (State::Challenged { .. }, _) => {
                self.refuse(pb::Error::new(ErrorCode::NotAccessed, "access first"))
            }
            (State::Accessed { agent, status, .. }, Message::Heartbeat(hb)) => {
                let reported = pb::Status::try_from(hb.status).unwrap_or(pb::Status::Running);
                if reported != status {
                    self.actions.push_back(Action::AgentStatus {
                        agent: agent.clone(),
                        status: reported,
                    });
                }
                self.send(pb::HeartbeatAck {
                    sequence: hb.sequence,
                });
                State::Accessed {
                    agent,
                    hold_deadline: now + self.config.hold_time,
                    status: reported,
                }
            }
            (State::Accessed { agent, .. }, Message::Deregister(_)) => {
                self.send(pb::DeregisterReply { error: None });
                self.actions.push_back(Action::AgentDown {
                    agent,
                    reason: DownReason::Deregistered,
                });
                self.actions.push_back(Action::Close(None));
                State::Closed
            }
            (State::Accessed { agent, .. }, _) => {
                self.send(pb::Notification {
                    code: ErrorCode::UnexpectedMessage as i32,
                    subcode: 0,
                    text: message.kind().name().to_owned(),
                });
                self.actions.push_back(Action::AgentDown {
                    agent,
                    reason: DownReason::ProtocolError,
                });
                self.actions
                    .push_back(Action::Close(Some(ErrorCode::UnexpectedMessage)));
                State::Closed
            }
            (State::Closed, _) => State::Closed,
        };
    }

    /// Time has reached `now`: an unanswered challenge or a silent agent ends the session.
    pub fn handle_timeout(&mut self, now: Instant) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.state = match state {
            State::Challenged { deadline, .. } if now >= deadline => self.refuse(pb::Error::new(
                ErrorCode::AccessTimeout,
                "no access request in time",
            )),
            State::Accessed {
                agent,
                hold_deadline,
                ..
            } if now >= hold_deadline => {
                self.send(pb::Notification {
                    code: ErrorCode::HoldTimerExpired as i32,
                    subcode: 0,
                    text: "no heartbeat within the hold time".to_owned(),
                });
                self.actions.push_back(Action::AgentDown {
                    agent,
                    reason: DownReason::HoldTimeExpired,
                });
                self.actions
                    .push_back(Action::Close(Some(ErrorCode::HoldTimerExpired)));
                State::Closed
            }
            other => other,
        };
    }

    fn send(&mut self, message: impl Into<Message>) {
        self.actions.push_back(Action::Send(message.into()));
    }

    fn refuse(&mut self, error: pb::Error) -> State {
        let code = error.error_code();
        self.send(pb::AccessReply {
            error: Some(error),
            ..Default::default()
        });
        self.actions.push_back(Action::Close(Some(code)));
        State::Closed
    }

    /// The chain is trusted and not revoked, names the agent claimed, and its key signed this
    /// connection's challenge.
    fn verify(
        &self,
        nonce: &[u8; 32],
        req: &pb::AccessRequest,
        wall: SystemTime,
    ) -> Result<(AgentId, Vec<u8>, Vec<String>), pb::Error> {
        let agent = AgentId::parse(&req.agent)
            .map_err(|e| pb::Error::new(ErrorCode::InvalidField, e.to_string()))?;
        let checked = self
            .checker
            .check(&req.certificate_chain, wall)
            .map_err(|e| pb::Error::new(e.code(), e.to_string()))?;
        if checked.identity != agent.as_str() {
            return Err(pb::Error::new(
                ErrorCode::IdentityMismatch,
                format!("the certificate is {}", checked.identity),
            ));
        }
        if let Some(tls) = &self.tls_identity
            && tls != agent.as_str()
        {
            return Err(pb::Error::new(
                ErrorCode::IdentityMismatch,
                format!("this connection's TLS certificate is {tls}"),
            ));
        }
        let proved_by_tls = req.signature.is_empty()
            && self.tls_identity.is_some()
            && !req.certificate_chain.is_empty()
            && req.certificate_chain.first() == self.tls_chain.first();
        let scopes = checked
            .materials
            .map(|m| m.permission_scope)
            .unwrap_or_default();
        if proved_by_tls {
            return Ok((agent, checked.serial, scopes));
        }
        let signed = signing::access_input(&self.gateway, nonce, &agent);
        if !keys::verify(&checked.spki_der, &signed, &req.signature) {
            return Err(pb::Error::new(
                ErrorCode::BadSignature,
                "the signature does not verify",
            ));
        }
        Ok((agent, checked.serial, scopes))
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}
