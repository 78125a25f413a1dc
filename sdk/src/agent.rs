//! An agent's connection to its gateway (draft 3.3.1): mutual TLS with its ACA certificate
//! (ALPN `agw/1`; plain TCP only where the gateway's operator allows it), access with a
//! signed challenge, heartbeats, sending and receiving messages, NACKs, reconnecting.
//!
//! Blocking and single-threaded: one [`AgentConnection`] per agent. Heartbeats go out from
//! [`send`](AgentConnection::send), [`flush`](AgentConnection::flush) and
//! [`recv`](AgentConnection::recv) when due, so an agent that calls `recv` regularly stays
//! online. For pipelined load, [`split`](AgentConnection::split) gives a sending and a
//! receiving half for two threads.

use std::{
    io,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;

use agw_proto::{
    DEFAULT_HOP_LIMIT, DecodeError, EncodeError, FrameDecoder, FrameEncoder, FrameError,
    FrameLimits, Message,
    identity::{AgentId, GatewayId},
    pb::{self, ErrorCode},
};

use crate::{
    access::access_request,
    certificates::{AgentKey, CertificateError, CertificateRequests, HeldCertificate},
    link::{Link, Records},
};

/// What an agent proves itself with.
#[derive(Debug)]
pub struct Credentials {
    /// Its identity.
    pub agent: AgentId,
    /// Its certificate (and chain) from the ACA.
    pub certificate: HeldCertificate,
    /// Its private key.
    pub key: AgentKey,
}

impl Credentials {
    /// Generates a key and applies for `agent`'s certificate as a member of `organization`,
    /// with the enrollment token its operator handed out (empty for an organisation the
    /// authority leaves open): `ask` carries the application to the authority (over its
    /// protocol port, or to one embedded in the caller) and returns the authority's answer.
    pub fn enroll<E: std::fmt::Display>(
        agent: AgentId,
        organization: &str,
        enrollment_token: &str,
        ask: impl FnOnce(pb::CertificateApplication) -> Result<Message, E>,
    ) -> Result<Credentials, CertificateError> {
        let materials = pb::IdentityMaterials {
            organization: organization.to_owned(),
            ..Default::default()
        };
        Credentials::enroll_with(agent, materials, enrollment_token, ask)
    }

    /// [`Credentials::enroll`] with the whole materials the authority checks and certifies
    /// (organisation, developer, function type, skills, permission scopes).
    pub fn enroll_with<E: std::fmt::Display>(
        agent: AgentId,
        materials: pb::IdentityMaterials,
        enrollment_token: &str,
        ask: impl FnOnce(pb::CertificateApplication) -> Result<Message, E>,
    ) -> Result<Credentials, CertificateError> {
        let key = AgentKey::generate()?;
        let mut application =
            CertificateRequests::default().application(&key, &agent, materials)?;
        application.enrollment_token = enrollment_token.to_owned();
        let certificate = match ask(application) {
            Ok(Message::CertificateReply(reply)) => HeldCertificate::from_reply(reply)?,
            // The port refused the connection itself (TLS_REQUIRED, too many connections).
            Ok(Message::Notification(n)) => {
                return Err(CertificateError::Refused(pb::Error {
                    code: n.code,
                    detail: n.text,
                    retry_after_ms: 0,
                }));
            }
            Ok(other) => {
                return Err(CertificateError::BadReply(format!(
                    "{} instead of a certificate",
                    other.kind().name()
                )));
            }
            Err(e) => return Err(CertificateError::BadReply(format!("no answer: {e}"))),
        };
        Ok(Credentials {
            agent,
            certificate,
            key,
        })
    }

    /// The TLS client these credentials reach their domain's gateways with: the certificate
    /// and key as the client's identity; the last certificate of the chain (its domain's
    /// authority, which issued the gateway's certificate too) to check the gateway's, which
    /// must name a gateway of the agent's domain.
    /// (The agent holds no CRL: a revoked gateway certificate is caught by its peers and its
    /// operator, not here.)
    pub fn tls_config(&self) -> io::Result<Arc<rustls::ClientConfig>> {
        let anchor = self
            .certificate
            .chain
            .last()
            .ok_or_else(|| io::Error::other("an empty certificate chain"))?;
        let identity = agw_tls::TlsIdentity {
            chain: self.certificate.chain.iter().map(|c| c.to_vec()).collect(),
            key_pkcs8: self.key.to_pkcs8_der(),
            trust_anchor: anchor.to_vec(),
            crls: agw_tls::Crls::default(),
            allow_unknown_revocation: true,
            renewable: None,
        };
        identity
            .agent_client_config(self.agent.domain())
            .map(Arc::new)
            .map_err(io::Error::other)
    }
}

/// Why a call on the connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The socket failed or timed out.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The gateway's bytes are not frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame from the gateway does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message cannot be framed (too large, say).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Signing the challenge failed.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The gateway refused access, or the registry a request.
    #[error("refused: {code:?}: {detail}")]
    Refused {
        /// Why.
        code: ErrorCode,
        /// The gateway's words.
        detail: String,
    },
    /// The gateway closed the connection, with the notification it sent if any.
    #[error("closed by the gateway{}", .0.as_ref().map(|n| format!(": {:?} {}", n.code(), n.text)).unwrap_or_default())]
    Closed(Option<pb::Notification>),
    /// The gateway sent something out of turn.
    #[error("unexpected {0} from the gateway")]
    Unexpected(&'static str),
}

/// A request to the authority or the registry that got no reply fails as a connection does.
impl From<crate::connection::ConnectionError> for AgentError {
    fn from(e: crate::connection::ConnectionError) -> AgentError {
        use crate::connection::ConnectionError as C;
        match e {
            C::Io(e) => AgentError::Io(e),
            C::Frame(e) => AgentError::Frame(e),
            C::Decode(e) => AgentError::Decode(e),
            C::Encode(e) => AgentError::Encode(e),
        }
    }
}

/// What arrives from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A message from another agent, with the hop limit it arrived with.
    Message(pb::AgentMessage, u8),
    /// The destination acknowledged a message.
    Ack(pb::Ack),
    /// A gateway refused a message; [`pb::Nack::reason`] says why.
    Nack(pb::Nack),
    /// The gateway acknowledged a heartbeat.
    HeartbeatAck(u64),
}

/// Timers the gateway announced at access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessTerms {
    /// Send a heartbeat this often.
    pub heartbeat_interval: Duration,
    /// Silence for this long takes the agent offline.
    pub hold_time: Duration,
}

/// What an agent tells its gateway at access besides who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessOptions {
    /// The natural languages it understands (BCP 47, in its order of preference). Its gateway
    /// translates text in other languages into the first (docs/translation.md); empty: never.
    pub languages: Vec<String>,
    /// Messages its gateway translates carry their original payload too.
    pub translation_originals: bool,
}

/// An accessed connection to a gateway.
#[derive(Debug)]
pub struct AgentConnection {
    /// Every address it was given (the gateways of its domain), and the one it reached.
    addrs: Vec<SocketAddr>,
    addr: SocketAddr,
    credentials: Arc<Credentials>,
    options: AccessOptions,
    timeout: Duration,
    link: Link,
    reader: Reader,
    writer: Writer,
    gateway: GatewayId,
}

/// The receiving half of a split connection.
#[derive(Debug)]
pub struct Reader {
    link: Link,
    decoder: FrameDecoder,
    /// TLS records read off the socket, before decryption.
    records: Records,
}

/// The sending half of a split connection.
#[derive(Debug)]
pub struct Writer {
    link: Link,
    encoder: FrameEncoder,
    source: String,
    next_message_id: u64,
    sequence: u64,
    terms: AccessTerms,
    last_heartbeat: Instant,
}

impl AgentConnection {
    /// Connects to the gateway at `addr` over mutual TLS (its certificate must name a gateway
    /// of the agent's domain and chain to the last certificate of the agent's own chain: see
    /// [`Credentials::tls_config`]) and completes access with `credentials`; every later
    /// blocking read or write times out after `timeout`. Given several addresses (a slice,
    /// or a name with one address per gateway of the domain), it tries them in turn until one
    /// answers, and so does [`AgentConnection::reconnect`].
    pub fn connect(
        addr: impl ToSocketAddrs,
        credentials: Arc<Credentials>,
        timeout: Duration,
    ) -> Result<AgentConnection, AgentError> {
        AgentConnection::open(addr, credentials, timeout, true, AccessOptions::default())
    }

    /// As [`AgentConnection::connect`], telling the gateway `options` at access.
    pub fn connect_with(
        addr: impl ToSocketAddrs,
        credentials: Arc<Credentials>,
        timeout: Duration,
        options: AccessOptions,
    ) -> Result<AgentConnection, AgentError> {
        AgentConnection::open(addr, credentials, timeout, true, options)
    }

    /// As [`AgentConnection::connect`], over plain TCP: only for a gateway whose operator
    /// enabled plaintext agent access (every message crosses the network readable).
    pub fn connect_plaintext(
        addr: impl ToSocketAddrs,
        credentials: Arc<Credentials>,
        timeout: Duration,
    ) -> Result<AgentConnection, AgentError> {
        AgentConnection::open(addr, credentials, timeout, false, AccessOptions::default())
    }

    fn open(
        addr: impl ToSocketAddrs,
        credentials: Arc<Credentials>,
        timeout: Duration,
        tls: bool,
        options: AccessOptions,
    ) -> Result<AgentConnection, AgentError> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        AgentConnection::open_first(addrs, 0, &credentials, timeout, tls, &options)
    }

    /// Tries the addresses in turn from `start`, as the gateways of one domain (issue 19):
    /// one that does not answer, or closes before access, is skipped; a gateway that answers
    /// and refuses access is the answer.
    fn open_first(
        addrs: Vec<SocketAddr>,
        start: usize,
        credentials: &Arc<Credentials>,
        timeout: Duration,
        tls: bool,
        options: &AccessOptions,
    ) -> Result<AgentConnection, AgentError> {
        let mut last = AgentError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no gateway address",
        ));
        for k in 0..addrs.len() {
            let at = addrs[(start + k) % addrs.len()];
            match AgentConnection::open_at(at, credentials.clone(), timeout, tls, options.clone()) {
                Ok(mut connection) => {
                    connection.addrs = addrs;
                    return Ok(connection);
                }
                Err(e @ (AgentError::Io(_) | AgentError::Closed(None))) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn open_at(
        addr: SocketAddr,
        credentials: Arc<Credentials>,
        timeout: Duration,
        tls: bool,
        options: AccessOptions,
    ) -> Result<AgentConnection, AgentError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let link = if tls {
            Link::tls(stream, credentials.tls_config()?)?
        } else {
            Link::plain(stream)
        };
        let mut reader = Reader {
            link: link.clone(),
            decoder: FrameDecoder::new(FrameLimits::default()),
            records: Records::default(),
        };
        let challenge = match reader.next_message()? {
            Message::AccessChallenge(c) => c,
            other => return Err(unexpected(other)),
        };
        let gateway = GatewayId::parse(&challenge.gateway)
            .map_err(|_| AgentError::Unexpected("gateway ID in the challenge"))?;
        // Over TLS, the challenge comes from the gateway the handshake authenticated: an
        // agent signs access to no other.
        if link.is_tls() && link.server_identity().as_deref() != Some(gateway.as_str()) {
            return Err(AgentError::Unexpected(
                "a challenge from another gateway than the TLS server",
            ));
        }
        let mut request = access_request(
            &challenge,
            &credentials.agent,
            &credentials.certificate,
            &credentials.key,
        )?;
        request.languages = options.languages.clone();
        request.translation_originals = options.translation_originals;
        let mut encoder = FrameEncoder::new(FrameLimits::default());
        encoder.push(&request)?;
        link.write_all(&encoder.take())?;
        let reply = match reader.next_message()? {
            Message::AccessReply(r) => r,
            other => return Err(unexpected(other)),
        };
        if let Some(error) = reply.error {
            return Err(AgentError::Refused {
                code: error.error_code(),
                detail: error.detail,
            });
        }
        let terms = AccessTerms {
            heartbeat_interval: Duration::from_millis(u64::from(reply.heartbeat_interval_ms)),
            hold_time: Duration::from_millis(u64::from(reply.hold_time_ms)),
        };
        let writer = Writer {
            link: link.clone(),
            encoder,
            source: credentials.agent.to_string(),
            next_message_id: 1,
            sequence: 0,
            terms,
            last_heartbeat: Instant::now(),
        };
        Ok(AgentConnection {
            addrs: vec![addr],
            addr,
            credentials,
            options,
            timeout,
            link,
            reader,
            writer,
            gateway,
        })
    }

    /// Connects again with the same credentials, after the connection broke: to the same
    /// gateway, or, when it does not answer, to the next address it was given (the other
    /// gateways of its domain). Message IDs keep increasing across reconnections.
    pub fn reconnect(&mut self) -> Result<(), AgentError> {
        let _ = self.link.socket().shutdown(std::net::Shutdown::Both);
        let start = self
            .addrs
            .iter()
            .position(|a| *a == self.addr)
            .unwrap_or_default();
        let mut fresh = AgentConnection::open_first(
            self.addrs.clone(),
            start,
            &self.credentials,
            self.timeout,
            self.link.is_tls(),
            &self.options,
        )?;
        fresh.writer.next_message_id = self.writer.next_message_id;
        *self = fresh;
        Ok(())
    }

    /// The gateway this connection reached.
    pub fn gateway(&self) -> &GatewayId {
        &self.gateway
    }

    /// This agent.
    pub fn agent(&self) -> &AgentId {
        &self.credentials.agent
    }

    /// The timers the gateway set.
    pub fn terms(&self) -> AccessTerms {
        self.writer.terms
    }

    /// Sends `payload` to `destination` now; returns the message ID NACKs and ACKs will carry.
    pub fn send(&mut self, destination: &str, payload: Bytes) -> Result<u64, AgentError> {
        let id = self.writer.queue(destination, payload)?;
        self.writer.flush()?;
        Ok(id)
    }

    /// Queues a message without writing it (see [`flush`](Self::flush)).
    pub fn queue(&mut self, destination: &str, payload: Bytes) -> Result<u64, AgentError> {
        self.writer.queue(destination, payload)
    }

    /// Sends `message` now as this agent (its source and message ID are filled in; its media
    /// type, language, session and the rest are as given); returns its message ID.
    pub fn send_message(&mut self, message: pb::AgentMessage) -> Result<u64, AgentError> {
        let id = self.writer.queue_message(message)?;
        self.writer.flush()?;
        Ok(id)
    }

    /// Writes what is queued, with a heartbeat first if one is due.
    pub fn flush(&mut self) -> Result<(), AgentError> {
        self.writer.flush()
    }

    /// Acknowledges a message to its source.
    pub fn ack(&mut self, message: &pb::AgentMessage) -> Result<(), AgentError> {
        self.writer.ack(message)?;
        self.writer.flush()
    }

    /// Sends a heartbeat with this status now.
    pub fn heartbeat(&mut self, status: pb::Status) -> Result<(), AgentError> {
        self.writer.heartbeat(status)?;
        self.writer.flush()
    }

    /// The next frame from the gateway, waiting up to `wait`; `None` if nothing came. Sends a
    /// heartbeat first if one is due.
    pub fn recv(&mut self, wait: Duration) -> Result<Option<Incoming>, AgentError> {
        self.writer.flush()?;
        let socket = self.link.socket();
        socket.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
        let result = self.reader.recv();
        socket.set_read_timeout(Some(self.timeout))?;
        match result {
            Err(AgentError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Stops the agent's services: the gateway removes it and closes the connection.
    pub fn deregister(mut self, reason: &str) -> Result<(), AgentError> {
        self.writer.encoder.push(&pb::Deregister {
            reason: reason.to_owned(),
        })?;
        self.writer.flush()?;
        loop {
            match self.reader.next_message()? {
                Message::DeregisterReply(r) => {
                    return match r.error {
                        None => Ok(()),
                        Some(e) => Err(AgentError::Refused {
                            code: e.error_code(),
                            detail: e.detail,
                        }),
                    };
                }
                // Messages still in flight to the agent are dropped with it.
                _ => continue,
            }
        }
    }

    /// Splits into a sending and a receiving half, for one thread each. Heartbeats go out
    /// with the writer's flushes.
    pub fn split(self) -> (Writer, Reader) {
        (self.writer, self.reader)
    }
}

impl Writer {
    /// Queues a message to `destination`; returns its message ID.
    pub fn queue(&mut self, destination: &str, payload: Bytes) -> Result<u64, AgentError> {
        self.queue_message(pb::AgentMessage {
            destination: destination.to_owned(),
            payload,
            ..Default::default()
        })
    }

    /// Queues `message` as this agent: its source and message ID are filled in.
    pub fn queue_message(&mut self, mut message: pb::AgentMessage) -> Result<u64, AgentError> {
        let id = self.next_message_id;
        message.source.clone_from(&self.source);
        message.message_id = id;
        self.encoder.push_data(&message, DEFAULT_HOP_LIMIT)?;
        self.next_message_id += 1;
        Ok(id)
    }

    /// Queues a message as given (destination, message ID, hop limit and all): for tests and
    /// tools that need frames an SDK user would not send.
    pub fn queue_raw(
        &mut self,
        message: &pb::AgentMessage,
        hop_limit: u8,
    ) -> Result<(), AgentError> {
        self.encoder.push_data(message, hop_limit)?;
        Ok(())
    }

    /// Queues an acknowledgement of `message` to its source.
    pub fn ack(&mut self, message: &pb::AgentMessage) -> Result<(), AgentError> {
        self.encoder.push_data(
            &pb::Ack {
                destination: message.source.clone(),
                source: self.source.clone(),
                message_id: message.message_id,
            },
            DEFAULT_HOP_LIMIT,
        )?;
        Ok(())
    }

    fn heartbeat(&mut self, status: pb::Status) -> Result<(), AgentError> {
        self.sequence += 1;
        self.encoder.push(&pb::Heartbeat {
            status: status as i32,
            sequence: self.sequence,
        })?;
        self.last_heartbeat = Instant::now();
        Ok(())
    }

    /// The message ID the next message gets.
    pub(crate) fn next_message_id(&self) -> u64 {
        self.next_message_id
    }

    /// Numbers messages from `id` on.
    pub(crate) fn set_next_message_id(&mut self, id: u64) {
        self.next_message_id = id;
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.encoder.len()
    }

    /// Writes what is queued, with a heartbeat first if one is due.
    pub fn flush(&mut self) -> Result<(), AgentError> {
        if !self.terms.heartbeat_interval.is_zero()
            && self.last_heartbeat.elapsed() >= self.terms.heartbeat_interval
        {
            self.heartbeat(pb::Status::Running)?;
        }
        if !self.encoder.is_empty() {
            self.link.write_all(&self.encoder.take())?;
        }
        Ok(())
    }
}

impl Reader {
    /// How long [`Reader::recv`] waits from now on.
    pub(crate) fn set_wait(&self, wait: Duration) -> io::Result<()> {
        self.link
            .socket()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
    }

    /// The next data frame or heartbeat acknowledgement; blocks up to the read timeout.
    pub fn recv(&mut self) -> Result<Incoming, AgentError> {
        loop {
            if let Some(frame) = self.decoder.decode()? {
                let hop = frame.header.hop_limit;
                return match frame.message()? {
                    Message::AgentMessage(m) => Ok(Incoming::Message(m, hop)),
                    Message::Ack(a) => Ok(Incoming::Ack(a)),
                    Message::Nack(n) => Ok(Incoming::Nack(n)),
                    Message::HeartbeatAck(h) => Ok(Incoming::HeartbeatAck(h.sequence)),
                    Message::Notification(n) => Err(AgentError::Closed(Some(n))),
                    other => Err(unexpected(other)),
                };
            }
            self.fill()?;
        }
    }

    fn next_message(&mut self) -> Result<Message, AgentError> {
        loop {
            if let Some(frame) = self.decoder.decode()? {
                return match frame.message()? {
                    Message::Notification(n) => Err(AgentError::Closed(Some(n))),
                    m => Ok(m),
                };
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> Result<(), AgentError> {
        let buf = self.decoder.read_buf(64 * 1024);
        let start = buf.len();
        buf.resize(start + 64 * 1024, 0);
        let n = self.link.read(&mut buf[start..], &mut self.records);
        let got = *n.as_ref().unwrap_or(&0);
        buf.truncate(start + got);
        match n? {
            0 => Err(AgentError::Closed(None)),
            _ => Ok(()),
        }
    }
}

fn unexpected(message: Message) -> AgentError {
    AgentError::Unexpected(message.kind().name())
}
