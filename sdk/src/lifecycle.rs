//! One agent's life with its domain (draft 2.4, 3.1-3.3) behind one type: its certificate
//! (enrolled, renewed while it runs, without dropping its connection), its profile in the
//! registry (registered, updated, deregistered), discovery (this domain's agents and other
//! domains' its gateway learned), and its connection to the gateway, whose heartbeats go out
//! on their own, from a thread of the agent's, whatever the application is doing.
//!
//! Blocking, like the rest of the SDK. [`Agent::recv`] is the one call that waits; sending,
//! acknowledging and the heartbeat thread share the connection's writing half.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use agw_proto::{
    Message,
    identity::AgentId,
    pb::{self, ErrorCode},
};

use crate::{
    agent::{AccessOptions, AgentConnection, AgentError, Credentials, Incoming, Reader, Writer},
    certificates::{AgentKey, CertificateRequests, HeldCertificate},
    connection::{Connection, TlsConnection},
};

/// Where an agent's domain serves it: its gateway's agent port, the registry and the
/// authority's protocol port; and the agent ports of the domain's other gateways, tried in
/// turn when `gateway` does not answer (a domain of several gateways: issue 19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub gateway: SocketAddr,
    pub registry: SocketAddr,
    pub aca: SocketAddr,
    pub other_gateways: Vec<SocketAddr>,
}

/// An agent connected to its gateway (mutual TLS), with its certificate and its domain.
#[derive(Debug)]
pub struct Agent {
    credentials: Arc<Credentials>,
    domain: Domain,
    options: AccessOptions,
    timeout: Duration,
    writer: Arc<Mutex<Writer>>,
    reader: Reader,
    renewal: RenewalTimer,
    /// Held for its `Drop`: the thread ends with the agent's connection.
    _heartbeats: Heartbeats,
}

/// The first wait after a renewal on its own failed; it doubles up to [`MAX_RENEWAL_WAIT`].
pub const FIRST_RENEWAL_WAIT: Duration = Duration::from_secs(60);
pub const MAX_RENEWAL_WAIT: Duration = Duration::from_secs(3600);

/// When an agent renews its certificate on its own: from 70% of its lifetime on (its
/// `renew_at`), at the first [`Agent::recv`] then; after a failure (the authority down), again
/// after [`FIRST_RENEWAL_WAIT`], doubling to [`MAX_RENEWAL_WAIT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewalTimer {
    retry_at: Option<SystemTime>,
    wait: Duration,
    last_error: Option<String>,
}

impl RenewalTimer {
    /// Whether to renew at `now` a certificate due at `renew_at`.
    pub fn due(&self, renew_at: SystemTime, now: SystemTime) -> bool {
        now >= renew_at && self.retry_at.is_none_or(|at| now >= at)
    }

    /// A renewal at `now` failed for `why`.
    pub fn failed(&mut self, now: SystemTime, why: String) {
        self.wait = if self.wait.is_zero() {
            FIRST_RENEWAL_WAIT
        } else {
            (self.wait * 2).min(MAX_RENEWAL_WAIT)
        };
        self.retry_at = Some(now + self.wait);
        self.last_error = Some(why);
    }

    /// A renewal succeeded.
    pub fn renewed(&mut self) {
        *self = RenewalTimer::default();
    }

    /// Why the last renewal on its own failed, while no renewal has succeeded since.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

/// The thread that sends heartbeats when due; stopped when dropped.
#[derive(Debug)]
struct Heartbeats {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeats {
    /// Every `interval / 4` (at least 50 ms, at most 1 s) it flushes the writer, which sends
    /// a heartbeat first when one is due; it ends when the writer fails or it is stopped.
    fn start(writer: Arc<Mutex<Writer>>, interval: Duration) -> Heartbeats {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let tick = (interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name("agw-agent-heartbeats".into())
            .spawn(move || {
                loop {
                    // Woken early by the stop.
                    std::thread::park_timeout(tick);
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut w) = writer.lock() else { return };
                    if w.flush().is_err() {
                        return;
                    }
                }
            })
            .ok();
        Heartbeats { stop, thread }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Agent {
    /// Applies for `agent`'s certificate at `domain`'s authority (its protocol port, in the
    /// clear: before it has a certificate the agent cannot check the authority's; use the
    /// authority's TLS with [`Agent::connect`] and [`Credentials::enroll`] where the anchor
    /// is known) as a member of `organization` with its enrollment token, then connects.
    pub fn enroll(
        agent: AgentId,
        organization: &str,
        enrollment_token: &str,
        domain: Domain,
        options: AccessOptions,
        timeout: Duration,
    ) -> Result<Agent, AgentError> {
        let mut aca = Connection::connect(domain.aca, timeout)?;
        let credentials = Credentials::enroll(agent, organization, enrollment_token, |app| {
            aca.request(app)
        })?;
        Agent::connect(Arc::new(credentials), domain, options, timeout)
    }

    /// Connects to the gateway with `credentials`, telling it `options`; every blocking call
    /// after gives up after `timeout`.
    pub fn connect(
        credentials: Arc<Credentials>,
        domain: Domain,
        options: AccessOptions,
        timeout: Duration,
    ) -> Result<Agent, AgentError> {
        let gateways: Vec<SocketAddr> = std::iter::once(domain.gateway)
            .chain(domain.other_gateways.iter().copied())
            .collect();
        let conn = AgentConnection::connect_with(
            gateways.as_slice(),
            credentials.clone(),
            timeout,
            options.clone(),
        )?;
        let interval = conn.terms().heartbeat_interval;
        let (mut writer, reader) = conn.split();
        // Message IDs from the clock (microseconds): an ACK or NACK of a message sent on an
        // earlier connection (before a reconnect or a restart) never matches a new message.
        writer.set_next_message_id(crate::store::unix_ms(SystemTime::now()).saturating_mul(1000));
        let writer = Arc::new(Mutex::new(writer));
        Ok(Agent {
            renewal: RenewalTimer::default(),
            _heartbeats: Heartbeats::start(writer.clone(), interval),
            credentials,
            domain,
            options,
            timeout,
            writer,
            reader,
        })
    }

    /// This agent.
    pub fn id(&self) -> &AgentId {
        &self.credentials.agent
    }

    /// Its certificate and key now (renewal replaces them).
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    fn writer(&self) -> Result<MutexGuard<'_, Writer>, AgentError> {
        self.writer
            .lock()
            .map_err(|_| AgentError::Unexpected("a heartbeat thread that panicked"))
    }

    /// Sends `message` now as this agent (its source and message ID filled in); returns its
    /// message ID, which its ACK or NACK will carry.
    pub fn send(&self, message: pb::AgentMessage) -> Result<u64, AgentError> {
        let mut w = self.writer()?;
        let id = w.queue_message(message)?;
        w.flush()?;
        Ok(id)
    }

    /// Acknowledges `message` to its source.
    pub fn ack(&self, message: &pb::AgentMessage) -> Result<(), AgentError> {
        let mut w = self.writer()?;
        w.ack(message)?;
        w.flush()
    }

    /// What the gateway sent next (a message, an ACK, a NACK), heartbeat answers skipped;
    /// `None` when nothing came within the timeout. Renews the certificate first when it is
    /// due ([`RenewalTimer`]); the connection stays up.
    pub fn recv(&mut self) -> Result<Option<Incoming>, AgentError> {
        let now = SystemTime::now();
        if self
            .renewal
            .due(self.credentials.certificate.renew_at(), now)
            && let Err(e) = self.renew()
        {
            self.renewal.failed(now, e.to_string());
        }
        loop {
            match self.reader.recv() {
                Ok(Incoming::HeartbeatAck(_)) => continue,
                Ok(other) => return Ok(Some(other)),
                Err(AgentError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Agent::recv`], waiting at most `wait` this once (a deadline nearer than the
    /// agent's timeout).
    pub fn recv_within(&mut self, wait: Duration) -> Result<Option<Incoming>, AgentError> {
        self.reader.set_wait(wait.min(self.timeout))?;
        let got = self.recv();
        self.reader.set_wait(self.timeout)?;
        got
    }

    /// Connects again (after the gateway closed the connection, or to present a renewed
    /// certificate). Message IDs go on from where they were: an ACK or NACK that arrives
    /// late for the old connection's message matches none of the new one's.
    pub fn reconnect(&mut self) -> Result<(), AgentError> {
        let next = self.writer()?.next_message_id();
        let fresh = Agent::connect(
            self.credentials.clone(),
            self.domain.clone(),
            self.options.clone(),
            self.timeout,
        )?;
        {
            let mut w = fresh.writer()?;
            let from_clock = w.next_message_id();
            w.set_next_message_id(next.max(from_clock));
        }
        let renewal = std::mem::take(&mut self.renewal);
        *self = fresh;
        self.renewal = renewal;
        Ok(())
    }

    /// Registers `profile` as this agent's (its `agent` is filled in); the registry's copy,
    /// with its resource ID, comes back.
    pub fn register(&self, mut profile: pb::AgentProfile) -> Result<pb::AgentProfile, AgentError> {
        profile.agent = self.id().to_string();
        let request = pb::RegisterRequest {
            request_id: 1,
            profile: Some(profile),
            certificate_chain: self.credentials.certificate.chain.clone(),
        };
        match self.registry()?.request(request)? {
            Message::RegisterReply(r) => {
                refused(r.error)?
                    .then_some(r.profile)
                    .flatten()
                    .ok_or(AgentError::Unexpected(
                        "a registration reply without the profile",
                    ))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces the profile registered as `resource_id` (its `agent` is filled in).
    pub fn update(
        &self,
        resource_id: &str,
        mut profile: pb::AgentProfile,
    ) -> Result<pb::AgentProfile, AgentError> {
        profile.agent = self.id().to_string();
        profile.resource_id = resource_id.to_owned();
        let request = pb::UpdateRequest {
            request_id: 1,
            profile: Some(profile),
        };
        match self.registry()?.request(request)? {
            Message::UpdateReply(r) => {
                refused(r.error)?
                    .then_some(r.profile)
                    .flatten()
                    .ok_or(AgentError::Unexpected(
                        "an update reply without the profile",
                    ))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Agents matching `query`: this domain's and other domains' the registry learned from
    /// its gateway's peers.
    pub fn discover(
        &self,
        query: pb::DiscoverRequest,
    ) -> Result<Vec<pb::AgentProfile>, AgentError> {
        match self.registry()?.request(query)? {
            Message::DiscoverReply(r) => {
                refused(r.error)?;
                Ok(r.agents)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Deregisters the profile `resource_id`; the registry revokes this agent's certificate
    /// (draft 2.2), so the agent ends here.
    pub fn deregister(self, resource_id: &str) -> Result<(), AgentError> {
        let request = pb::DeregisterAgentRequest {
            request_id: 1,
            resource_id: resource_id.to_owned(),
        };
        match self.registry()?.request(request)? {
            Message::DeregisterAgentReply(r) => refused(r.error).map(|_| ()),
            other => Err(unexpected(&other)),
        }
    }

    /// When it renews its certificate on its own, and why the last try failed.
    pub fn renewal(&self) -> &RenewalTimer {
        &self.renewal
    }

    /// Whether the certificate is due for renewal at `now` (70% of its lifetime).
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        now >= self.credentials.certificate.renew_at()
    }

    /// Renews the certificate with the same key at the authority's TLS port, proving the
    /// current one. The connection stays up; the new certificate is what
    /// [`Agent::reconnect`] and the registry calls present from now on.
    pub fn renew(&mut self) -> Result<(), AgentError> {
        let held = &self.credentials.certificate;
        let anchor = held
            .chain
            .last()
            .ok_or(AgentError::Unexpected("an empty certificate chain"))?;
        let request = CertificateRequests::default().renewal(
            held,
            &self.credentials.key,
            &self.credentials.key,
            self.id(),
            None,
        )?;
        let config = agw_tls::applicant_client_config(anchor, self.id().domain())
            .map_err(|e| AgentError::Io(std::io::Error::other(e.to_string())))?;
        let mut aca = Connection::connect_tls(self.domain.aca, self.timeout, Arc::new(config))?;
        let renewed = match aca.request(request)? {
            Message::CertificateReply(reply) => HeldCertificate::from_reply(reply)?,
            other => return Err(unexpected(&other)),
        };
        // The same key, held twice: the live connection's credentials keep theirs.
        let key = AgentKey::from_pem(&self.credentials.key.to_pem())?;
        self.credentials = Arc::new(Credentials {
            agent: self.credentials.agent.clone(),
            certificate: renewed,
            key,
        });
        self.renewal.renewed();
        Ok(())
    }

    /// A mutual-TLS connection to the registry with the current certificate.
    fn registry(&self) -> Result<TlsConnection, AgentError> {
        let mut config = (*self.credentials.tls_config()?).clone();
        // The registry speaks the framed protocol without ALPN.
        config.alpn_protocols.clear();
        Ok(Connection::connect_tls(
            self.domain.registry,
            self.timeout,
            Arc::new(config),
        )?)
    }
}

/// `Ok(true)` when the registry's reply carries no error, else the refusal.
fn refused(error: Option<pb::Error>) -> Result<bool, AgentError> {
    match error {
        None => Ok(true),
        Some(e) => Err(AgentError::Refused {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Malformed),
            detail: e.detail,
        }),
    }
}

fn unexpected(message: &Message) -> AgentError {
    AgentError::Unexpected(message.kind().name())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{FIRST_RENEWAL_WAIT, MAX_RENEWAL_WAIT, RenewalTimer};

    #[test]
    fn renewal_on_its_own_waits_for_its_time_and_backs_off_after_failures() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let renew_at = t0 + Duration::from_secs(100);
        let mut timer = RenewalTimer::default();
        assert!(!timer.due(renew_at, t0));
        assert!(timer.due(renew_at, renew_at));
        // The authority is down: not again for a minute, then two, then up to an hour.
        timer.failed(renew_at, "refused".into());
        assert_eq!(timer.last_error(), Some("refused"));
        assert!(!timer.due(
            renew_at,
            renew_at + FIRST_RENEWAL_WAIT - Duration::from_secs(1)
        ));
        let t1 = renew_at + FIRST_RENEWAL_WAIT;
        assert!(timer.due(renew_at, t1));
        timer.failed(t1, "refused".into());
        assert!(!timer.due(renew_at, t1 + FIRST_RENEWAL_WAIT));
        assert!(timer.due(renew_at, t1 + FIRST_RENEWAL_WAIT * 2));
        let mut t = t1;
        for _ in 0..20 {
            timer.failed(t, "refused".into());
            t += MAX_RENEWAL_WAIT;
        }
        assert!(timer.due(renew_at, t));
        assert!(!timer.due(renew_at, t - Duration::from_secs(1)));
        // Renewed: the next is due at the new certificate's time, with no error kept.
        timer.renewed();
        assert_eq!(timer, RenewalTimer::default());
        assert!(!timer.due(t + Duration::from_secs(10), t));
    }
}
