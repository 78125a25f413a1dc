//! MQTT agents (3.1.1 and 5) as agents of the relay, sans-IO: one [`MqttAdapter`] per MQTT
//! connection turns the client's packets into the native frames an SDK agent would send, and
//! the frames the gateway sends it into packets. Everything else (access, routing,
//! authorization, counters, NACKs, back-pressure) is the native path's, unchanged:
//! `docs/protocols.md` gives the topic scheme and the mapping tables.
//!
//! Call order: [`from_client`](MqttAdapter::from_client) with the bytes read (native frames go
//! to the encoder it is given, for the connection's frame decoder), and
//! [`to_client`](MqttAdapter::to_client) with each frame the gateway queued for the client;
//! after either, [`take_out`](MqttAdapter::take_out) gives the packets to write. Packets are
//! decoded and encoded by `rumqttc`'s codecs (`mqttbytes`), never by hand.
//!
//! ```text
//!  CONNECT            -> AccessRequest (the TLS client certificate's chain; TLS proved the key)
//!  AccessReply        -> CONNACK (success, or the refusal's reason)
//!  PUBLISH agw/to/<id> -> AgentMessage to <id>      Ack / Nack -> PUBACK (reason on NACK)
//!  AgentMessage       -> PUBLISH agw/inbox/<source>  PUBACK -> Ack to the source
//!  PINGREQ            -> Heartbeat                   HeartbeatAck -> PINGRESP
//!  Notification       -> DISCONNECT with its reason (MQTT 5), then close
//! ```

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use agw_proto::{
    DEFAULT_HOP_LIMIT, FrameEncoder, Message,
    pb::{self, ErrorCode},
};
use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use rumqttc::{
    mqttbytes::{self as m4, v4},
    v5::mqttbytes::{self as m5, v5},
};

/// Where a client publishes a message to an agent: this prefix, then the agent's ID.
pub const TO: &str = "agw/to/";
/// Where a client receives a message: this prefix, then the sender's ID.
pub const INBOX: &str = "agw/inbox/";
/// Where a client that subscribed hears of its messages the gateway refused (JSON).
pub const ERRORS: &str = "agw/errors";

/// The client's QoS 1 publishes awaiting their destination's ACK or a NACK, at most; the
/// CONNACK of MQTT 5 announces it as the receive maximum.
pub const RECEIVE_MAXIMUM: u16 = 256;
/// Messages delivered to a client at QoS 1 and not yet acknowledged, at most (fewer if the
/// client's MQTT 5 receive maximum says so); past it messages go at QoS 0.
pub const DELIVERIES_IN_FLIGHT: u16 = 1024;
/// MQTT 5 requests whose response topic is remembered until the reply comes, at most.
const REPLIES_KEPT: usize = 1024;
/// Pings answered at most in flight (a client sends one per keep-alive).
const PINGS_KEPT: usize = 16;
/// Bytes a client may send after its CONNECT before its CONNACK.
pub const BEFORE_CONNACK: usize = 64 * 1024;

/// The MQTT version the client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.
    V5,
}

/// The connection must close once [`MqttAdapter::take_out`]'s bytes are written: the client
/// broke the protocol, or cannot be served. MQTT 5 clients were told why (a CONNACK or a
/// DISCONNECT with a reason code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The gateway's code for it.
    pub code: ErrorCode,
    /// What happened.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing yet: the first packet must be CONNECT.
    AwaitConnect,
    /// CONNECT became an access request; the CONNACK waits for its reply.
    Connecting,
    Connected,
    Closed,
}

/// A message delivered to the client at QoS 1, awaiting its PUBACK.
#[derive(Debug)]
struct Delivery {
    source: String,
    message_id: u64,
}

/// One MQTT connection's translation state.
#[derive(Debug)]
pub struct MqttAdapter {
    /// The agent the TLS client certificate names; `None` on a plaintext connection.
    agent: Option<String>,
    /// That certificate's chain (DER), for the access request.
    chain: Vec<Bytes>,
    version: Version,
    state: State,
    /// The CONNACK went out (accepting or refusing).
    connack_sent: bool,
    max_packet: usize,
    /// Bytes read and not yet a whole packet.
    input: BytesMut,
    /// Packets made of the gateway's frames, to write.
    out: BytesMut,
    /// Answers the adapter gives itself (SUBACK, refusals), written after `out`: a CONNACK
    /// still to come from the queue goes first.
    direct: BytesMut,
    /// Within [`from_client`](Self::from_client): packets go to `direct`.
    answering: bool,
    next_message_id: u64,
    /// The client's QoS 1 publishes in flight: message ID -> packet ID.
    publishes: HashMap<u64, u16>,
    /// Messages delivered at QoS 1 awaiting the client's PUBACK, by packet ID.
    deliveries: HashMap<u16, Delivery>,
    next_packet_id: u16,
    /// QoS 1 deliveries the client takes unacknowledged.
    client_receive_maximum: u16,
    /// The client's keep alive, in seconds (0: none).
    keep_alive: u16,
    /// Topic filters and their granted QoS (0 or 1).
    subscriptions: Vec<(String, u8)>,
    /// MQTT 5 requests with a response topic: correlation data -> response topic.
    replies: VecDeque<(Bytes, String)>,
    /// Heartbeat sequences sent for PINGREQs, answered with PINGRESP.
    pings: VecDeque<u64>,
    sequence: u64,
    /// When the last heartbeat went to the session, and how often one is due while the client
    /// sends other packets (MQTT clients ping only when idle).
    last_heartbeat: Option<Instant>,
    heartbeat_every: Duration,
}

impl MqttAdapter {
    /// An adapter for a connection whose TLS client certificate named `agent` with `chain`
    /// (`None` and empty on plaintext, where CONNECT is refused: MQTT's identity is the
    /// certificate). Packets larger than `max_packet` bytes are refused.
    pub fn new(agent: Option<String>, chain: Vec<Bytes>, max_packet: usize) -> MqttAdapter {
        MqttAdapter {
            agent,
            chain,
            version: Version::V311,
            state: State::AwaitConnect,
            connack_sent: false,
            max_packet,
            input: BytesMut::new(),
            out: BytesMut::new(),
            direct: BytesMut::new(),
            answering: false,
            next_message_id: 1,
            publishes: HashMap::new(),
            deliveries: HashMap::new(),
            next_packet_id: 1,
            client_receive_maximum: DELIVERIES_IN_FLIGHT,
            keep_alive: 0,
            subscriptions: Vec::new(),
            replies: VecDeque::new(),
            pings: VecDeque::new(),
            sequence: 0,
            last_heartbeat: None,
            heartbeat_every: Duration::from_secs(30),
        }
    }

    /// The buffer reads go into (bytes received and not yet a whole packet).
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// The version the client connected with (3.1.1 until its CONNECT says otherwise).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Packets waiting to be written.
    pub fn has_out(&self) -> bool {
        !self.out.is_empty() || !self.direct.is_empty()
    }

    /// The packets to write, in order: those made of the gateway's frames, then the adapter's
    /// own answers.
    pub fn take_out(&mut self) -> BytesMut {
        let mut out = self.out.split();
        out.extend_from_slice(&self.direct);
        self.direct.clear();
        out
    }

    /// The session accepted the client's access: packets it sent after its CONNECT can be
    /// decoded now (call [`from_client`](Self::from_client) again). The CONNACK itself is
    /// made of the access reply, in the write queue's order.
    pub fn accessed(&mut self) {
        if self.state == State::Connecting {
            self.state = State::Connected;
        }
    }

    /// Whether the client connected and was accepted.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Decodes the whole packets in [`input`](Self::input): native frames for the relay go to
    /// `up`, answers the gateway gives itself (SUBACK, UNSUBACK) to the output.
    /// Packets after the CONNECT wait, undecoded, for the access to complete (MQTT lets a
    /// client send them before its CONNACK); at most [`BEFORE_CONNACK`] bytes of them.
    pub fn from_client(&mut self, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        self.answering = true;
        let result = self.decode_all(now, up);
        self.answering = false;
        result
    }

    fn decode_all(&mut self, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        loop {
            match self.state {
                State::Closed => return Ok(()),
                State::Connecting if self.input.len() > BEFORE_CONNACK => {
                    return Err(self.close(Close {
                        code: ErrorCode::Overloaded,
                        text: format!("more than {BEFORE_CONNACK} bytes before the CONNACK"),
                    }));
                }
                State::Connecting => return Ok(()),
                State::AwaitConnect | State::Connected if self.input.is_empty() => return Ok(()),
                State::AwaitConnect | State::Connected => {}
            }
            let packet = match self.decode() {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(close) => return Err(self.close(close)),
            };
            if let Err(close) = self.handle(packet, now, up) {
                return Err(self.close(close));
            }
        }
    }

    fn emit4(&mut self, packet: v4::Packet) {
        let to = if self.answering {
            &mut self.direct
        } else {
            &mut self.out
        };
        // Sizes are bounded by what the gateway relays: a write cannot fail.
        let _ = packet.write(to, usize::MAX);
    }

    fn emit5(&mut self, packet: v5::Packet) {
        let to = if self.answering {
            &mut self.direct
        } else {
            &mut self.out
        };
        let _ = packet.write(to, None);
    }

    fn decode(&mut self) -> Result<Option<Packet>, Close> {
        let max = self.max_packet;
        let before = self.input.len();
        if self.state == State::AwaitConnect {
            // The CONNECT's protocol level says which codec reads everything after it.
            let mut probe = self.input.clone();
            match v5::Packet::read(&mut probe, u32::try_from(max).ok()) {
                Ok(packet) => {
                    self.version = Version::V5;
                    self.input = probe;
                    return Ok(Some(Packet::V5(packet)));
                }
                // Only a packet not whole yet is left in the buffer: "insufficient bytes" from
                // inside one taken out is a malformed packet.
                Err(m5::Error::InsufficientBytes(_)) if probe.len() == self.input.len() => {
                    return Ok(None);
                }
                Err(m5::Error::InvalidProtocolLevel(4)) => {}
                Err(e) => return Err(malformed(e)),
            }
        }
        match self.version {
            // MQTT 5 lets a normal DISCONNECT be two bytes (reason and properties left out),
            // which rumqttc 0.25's packet reader refuses ("payload required"): read here.
            Version::V5 if self.input.starts_with(&[0xE0, 0x00]) => {
                let _ = self.input.split_to(2);
                Ok(Some(Packet::V5(v5::Packet::Disconnect(
                    v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection),
                ))))
            }
            Version::V5 => match v5::Packet::read(&mut self.input, u32::try_from(max).ok()) {
                Ok(p) => Ok(Some(Packet::V5(p))),
                Err(m5::Error::InsufficientBytes(_)) if self.input.len() == before => Ok(None),
                Err(e) => Err(malformed(e)),
            },
            Version::V311 => match v4::Packet::read(&mut self.input, max) {
                Ok(p) => Ok(Some(Packet::V4(p))),
                Err(m4::Error::InsufficientBytes(_)) if self.input.len() == before => Ok(None),
                Err(e) => Err(malformed(e)),
            },
        }
    }

    fn handle(&mut self, packet: Packet, now: Instant, up: &mut FrameEncoder) -> Result<(), Close> {
        let packet = Incoming::from(packet);
        if self.state == State::AwaitConnect {
            let Incoming::Connect {
                keep_alive,
                receive_maximum,
            } = packet
            else {
                return Err(protocol("the first packet must be CONNECT"));
            };
            // The access itself counts as the first heartbeat.
            self.last_heartbeat = Some(now);
            self.client_receive_maximum = receive_maximum.clamp(1, DELIVERIES_IN_FLIGHT);
            return self.connect(keep_alive, up);
        }
        if self.state != State::Connected {
            return Err(protocol("packets before the CONNACK"));
        }
        if !matches!(packet, Incoming::PingReq) {
            self.heartbeat_if_due(now, false, up);
        }
        match packet {
            Incoming::Connect { .. } => Err(protocol("a second CONNECT")),
            Incoming::Publish(p) => self.publish(p, up),
            Incoming::PubAck { packet_id } => {
                if let Some(d) = self.deliveries.remove(&packet_id) {
                    push(
                        up,
                        &pb::Ack {
                            destination: d.source,
                            source: self.agent.clone().unwrap_or_default(),
                            message_id: d.message_id,
                        },
                    );
                }
                Ok(())
            }
            Incoming::Subscribe { packet_id, filters } => {
                self.subscribe(packet_id, filters);
                Ok(())
            }
            Incoming::Unsubscribe { packet_id, filters } => {
                self.subscriptions.retain(|(f, _)| !filters.contains(f));
                match self.version {
                    Version::V311 => self.emit4(v4::Packet::UnsubAck(v4::UnsubAck::new(packet_id))),
                    Version::V5 => self.emit5(v5::Packet::UnsubAck(v5::UnsubAck {
                        pkid: packet_id,
                        reasons: vec![v5::UnsubAckReason::Success; filters.len()],
                        properties: None,
                    })),
                }
                Ok(())
            }
            Incoming::PingReq => {
                self.heartbeat_if_due(now, true, up);
                Ok(())
            }
            Incoming::Disconnect => {
                self.state = State::Closed;
                Err(Close {
                    code: ErrorCode::Unspecified,
                    text: "the client disconnected".into(),
                })
            }
            Incoming::QoS2 => Err(Close {
                code: ErrorCode::UnexpectedMessage,
                text: "QoS 2 is not supported (the CONNACK says maximum QoS 1)".into(),
            }),
            Incoming::Other(name) => Err(protocol(&format!("{name} from a client"))),
        }
    }

    fn connect(&mut self, keep_alive: u16, up: &mut FrameEncoder) -> Result<(), Close> {
        let Some(agent) = self.agent.clone() else {
            self.connack_refused(
                ErrorCode::TlsRequired,
                "MQTT needs TLS with the agent's ACA certificate as client certificate",
            );
            return Err(Close {
                code: ErrorCode::TlsRequired,
                text: "MQTT CONNECT without TLS".into(),
            });
        };
        self.state = State::Connecting;
        self.keep_alive = keep_alive;
        if keep_alive > 0 {
            self.heartbeat_every = Duration::from_secs(u64::from(keep_alive));
        }
        push(
            up,
            &pb::AccessRequest {
                agent,
                certificate_chain: self.chain.clone(),
                // The TLS handshake proved the key: no challenge to sign.
                signature: Bytes::new(),
                protocols: vec![pb::Protocol::Mqtt as i32],
                languages: Vec::new(),
                heartbeat_interval_ms: u32::from(keep_alive).saturating_mul(1000),
                translation_originals: false,
            },
        );
        Ok(())
    }

    /// A heartbeat to the session: for a PINGREQ (answered with PINGRESP), or while other
    /// packets flow, once per interval, so a busy client that never pings stays up.
    fn heartbeat_if_due(&mut self, now: Instant, ping: bool, up: &mut FrameEncoder) {
        let due = self
            .last_heartbeat
            .is_none_or(|t| now.saturating_duration_since(t) >= self.heartbeat_every / 2);
        if !ping && !due {
            return;
        }
        self.sequence += 1;
        if ping {
            if self.pings.len() >= PINGS_KEPT {
                self.pings.pop_front();
            }
            self.pings.push_back(self.sequence);
        }
        self.last_heartbeat = Some(now);
        push(
            up,
            &pb::Heartbeat {
                status: pb::Status::Running as i32,
                sequence: self.sequence,
            },
        );
    }

    fn publish(&mut self, p: Publish, up: &mut FrameEncoder) -> Result<(), Close> {
        let Some(destination) = p.topic.strip_prefix(TO).filter(|d| !d.is_empty()) else {
            let detail = format!("publish to {TO}<agent ID>, not {}", p.topic);
            self.refuse_publish(p.packet_id, PublishRefusal::Topic, &p.topic, &detail);
            return Ok(());
        };
        if p.qos == 1 {
            if self.publishes.len() >= usize::from(RECEIVE_MAXIMUM) {
                let detail = format!("more than {RECEIVE_MAXIMUM} QoS 1 publishes unacknowledged");
                self.refuse_publish(p.packet_id, PublishRefusal::Quota, destination, &detail);
                return Ok(());
            }
            if self.publishes.values().any(|&id| id == p.packet_id) {
                if p.dup {
                    return Ok(()); // a retransmission of what is in flight already
                }
                let detail = "packet ID in use";
                self.refuse_publish(p.packet_id, PublishRefusal::InUse, destination, detail);
                return Ok(());
            }
        }
        let message_id = self.next_message_id;
        self.next_message_id += 1;
        if let (Some(topic), Some(correlation)) = (&p.response_topic, &p.correlation) {
            if self.replies.len() >= REPLIES_KEPT {
                self.replies.pop_front();
            }
            self.replies.push_back((correlation.clone(), topic.clone()));
        }
        let message = pb::AgentMessage {
            destination: destination.to_owned(),
            source: self.agent.clone().unwrap_or_default(),
            message_id,
            session_id: p.session_id,
            content_type: p.content_type.unwrap_or_default(),
            language: p.language.unwrap_or_default(),
            source_protocol: pb::Protocol::Mqtt as i32,
            translate_to: String::new(),
            translation: None,
            session_header: None,
            correlation: p.correlation.unwrap_or_default(),
            payload: p.payload,
        };
        // The encoder refuses (appending nothing) a body over the gateway's frame limit.
        if up.push_data(&message, DEFAULT_HOP_LIMIT).is_err() {
            let detail = "the message is larger than this gateway relays";
            self.refuse_publish(p.packet_id, PublishRefusal::TooLarge, destination, detail);
            return Ok(());
        }
        if p.qos == 1 {
            self.publishes.insert(message_id, p.packet_id);
        }
        Ok(())
    }

    fn subscribe(&mut self, packet_id: u16, filters: Vec<(String, u8)>) {
        let mut granted = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            if !m4::valid_filter(&filter) || self.subscriptions.len() >= 64 {
                granted.push(None);
                continue;
            }
            let qos = qos.min(1);
            self.subscriptions.retain(|(f, _)| *f != filter);
            self.subscriptions.push((filter, qos));
            granted.push(Some(qos));
        }
        match self.version {
            Version::V311 => {
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(q) => v4::SubscribeReasonCode::Success(qos4(*q)),
                        None => v4::SubscribeReasonCode::Failure,
                    })
                    .collect();
                self.emit4(v4::Packet::SubAck(v4::SubAck::new(packet_id, codes)));
            }
            Version::V5 => {
                let codes = granted
                    .iter()
                    .map(|g| match g {
                        Some(q) => v5::SubscribeReasonCode::Success(qos5(*q)),
                        None => v5::SubscribeReasonCode::TopicFilterInvalid,
                    })
                    .collect();
                self.emit5(v5::Packet::SubAck(v5::SubAck {
                    pkid: packet_id,
                    return_codes: codes,
                    properties: None,
                }));
            }
        }
    }

    /// A frame the gateway queued for the client, as MQTT.
    pub fn to_client(&mut self, message: Message) {
        if self.state == State::Closed {
            return;
        }
        match message {
            Message::AccessReply(reply) => match reply.error {
                None => self.connack_accepted(reply.heartbeat_interval_ms),
                Some(e) => {
                    let code = e.error_code();
                    self.connack_refused(code, &e.detail);
                }
            },
            Message::HeartbeatAck(ack) => {
                if let Some(at) = self.pings.iter().position(|&s| s == ack.sequence) {
                    self.pings.remove(at);
                    match self.version {
                        Version::V311 => self.emit4(v4::Packet::PingResp),
                        Version::V5 => self.emit5(v5::Packet::PingResp(v5::PingResp)),
                    }
                }
            }
            Message::AgentMessage(m) => self.deliver(m),
            Message::Ack(ack) => {
                if let Some(packet_id) = self.publishes.remove(&ack.message_id) {
                    self.puback(packet_id, None);
                }
            }
            Message::Nack(nack) => self.nacked(&nack),
            Message::Notification(n) => self.notified(n.code(), &n.text),
            // The challenge is answered by the TLS handshake; nothing else reaches a client.
            _ => {}
        }
    }

    fn connack_accepted(&mut self, heartbeat_interval_ms: u32) {
        if self.connack_sent || self.state == State::AwaitConnect {
            return;
        }
        self.connack_sent = true;
        self.state = State::Connected;
        match self.version {
            Version::V311 => self.emit4(v4::Packet::ConnAck(v4::ConnAck::new(
                v4::ConnectReturnCode::Success,
                false,
            ))),
            Version::V5 => {
                // Ask for pings at least as often as the gateway expects heartbeats.
                let interval = u16::try_from(heartbeat_interval_ms / 1000).unwrap_or(u16::MAX);
                let keep_alive = self.keep_alive;
                let properties = v5::ConnAckProperties {
                    receive_max: Some(RECEIVE_MAXIMUM),
                    max_qos: Some(1),
                    retain_available: Some(0),
                    max_packet_size: u32::try_from(self.max_packet).ok(),
                    wildcard_subscription_available: Some(1),
                    subscription_identifiers_available: Some(0),
                    shared_subscription_available: Some(0),
                    server_keep_alive: (interval > 0 && (keep_alive == 0 || keep_alive > interval))
                        .then_some(interval),
                    ..connack_properties()
                };
                self.emit5(v5::Packet::ConnAck(v5::ConnAck {
                    session_present: false,
                    code: v5::ConnectReturnCode::Success,
                    properties: Some(properties),
                }));
            }
        }
    }

    fn connack_refused(&mut self, code: ErrorCode, detail: &str) {
        self.state = State::Closed;
        if std::mem::replace(&mut self.connack_sent, true) {
            return;
        }
        match self.version {
            Version::V311 => {
                let refusal = match code {
                    ErrorCode::Overloaded | ErrorCode::Draining | ErrorCode::RateLimited => {
                        v4::ConnectReturnCode::ServiceUnavailable
                    }
                    _ => v4::ConnectReturnCode::NotAuthorized,
                };
                self.emit4(v4::Packet::ConnAck(v4::ConnAck::new(refusal, false)));
            }
            Version::V5 => {
                let refusal = match code {
                    ErrorCode::Overloaded | ErrorCode::RateLimited => {
                        v5::ConnectReturnCode::ServerBusy
                    }
                    ErrorCode::Draining => v5::ConnectReturnCode::ServerUnavailable,
                    _ => v5::ConnectReturnCode::NotAuthorized,
                };
                let properties = v5::ConnAckProperties {
                    reason_string: Some(reason_text(code, detail)),
                    ..connack_properties()
                };
                self.emit5(v5::Packet::ConnAck(v5::ConnAck {
                    session_present: false,
                    code: refusal,
                    properties: Some(properties),
                }));
            }
        }
    }

    fn notified(&mut self, code: ErrorCode, text: &str) {
        if !self.connack_sent {
            self.connack_refused(code, text);
            return;
        }
        self.state = State::Closed;
        if self.version == Version::V5 {
            self.disconnect5(disconnect_reason(code), &reason_text(code, text));
        }
    }

    fn disconnect5(&mut self, reason: v5::DisconnectReasonCode, text: &str) {
        let properties = v5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(text.to_owned()),
            user_properties: Vec::new(),
            server_reference: None,
        };
        self.emit5(v5::Packet::Disconnect(v5::Disconnect {
            reason_code: reason,
            properties: Some(properties),
        }));
    }

    /// Marks the adapter closed; an MQTT 5 client is told why (unless it left itself).
    fn close(&mut self, close: Close) -> Close {
        if self.connack_sent && self.state == State::Connected && self.version == Version::V5 {
            self.disconnect5(disconnect_reason(close.code), &close.text);
        }
        self.state = State::Closed;
        close
    }

    fn deliver(&mut self, m: pb::AgentMessage) {
        // A reply to a request the client made with a response topic goes to that topic.
        let reply_topic = (!m.correlation.is_empty())
            .then(|| {
                let at = self.replies.iter().position(|(c, _)| *c == m.correlation)?;
                self.replies.remove(at).map(|(_, topic)| topic)
            })
            .flatten();
        let topic = reply_topic.unwrap_or_else(|| format!("{INBOX}{}", m.source));
        let qos = self
            .subscriptions
            .iter()
            .filter(|(f, _)| m4::matches(&topic, f))
            .map(|(_, q)| *q)
            .max()
            .unwrap_or(1);
        // The client's receive maximum is not exceeded: past it, QoS 0 (no ACK to the source).
        let qos = if self.deliveries.len() >= usize::from(self.client_receive_maximum) {
            0
        } else {
            qos
        };
        let packet_id = if qos == 1 {
            let id = self.next_packet_id();
            self.deliveries.insert(
                id,
                Delivery {
                    source: m.source.clone(),
                    message_id: m.message_id,
                },
            );
            id
        } else {
            0
        };
        match self.version {
            Version::V311 => {
                let mut publish = v4::Publish::from_bytes(topic, qos4(qos), m.payload);
                publish.pkid = packet_id;
                self.emit4(v4::Packet::Publish(publish));
            }
            Version::V5 => {
                let mut user_properties = Vec::new();
                if !m.language.is_empty() {
                    user_properties.push(("language".to_owned(), m.language));
                }
                if m.session_id != 0 {
                    user_properties.push(("session-id".to_owned(), m.session_id.to_string()));
                }
                if let Some(t) = &m.translation {
                    user_properties.extend(crate::translation::mqtt_properties(t));
                }
                let properties = v5::PublishProperties {
                    content_type: (!m.content_type.is_empty()).then_some(m.content_type),
                    response_topic: Some(format!("{TO}{}", m.source)),
                    correlation_data: (!m.correlation.is_empty()).then_some(m.correlation),
                    user_properties,
                    ..Default::default()
                };
                let mut publish = v5::Publish::new(topic, qos5(qos), m.payload, Some(properties));
                publish.pkid = packet_id;
                self.emit5(v5::Packet::Publish(publish));
            }
        }
    }

    fn next_packet_id(&mut self) -> u16 {
        // Packet IDs are 1..=65535; one still unacknowledged after a wrap is given up.
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        self.deliveries.remove(&id);
        id
    }

    fn nacked(&mut self, nack: &pb::Nack) {
        let code = nack.reason();
        let packet_id = self.publishes.remove(&nack.message_id);
        if let Some(packet_id) = packet_id {
            self.puback(packet_id, Some((code, &nack.detail)));
        }
        self.report_error(
            nack.message_id,
            &nack.original_destination,
            code,
            &nack.detail,
            &nack.reporter,
        );
    }

    /// A publish the gateway does not forward: PUBACK with the reason (QoS 1), and the error
    /// topic.
    fn refuse_publish(
        &mut self,
        packet_id: u16,
        why: PublishRefusal,
        destination: &str,
        detail: &str,
    ) {
        let code = why.code();
        if packet_id != 0 {
            self.puback_reason(packet_id, why.reason(), &reason_text(code, detail));
        }
        self.report_error(0, destination, code, detail, "");
    }

    fn puback(&mut self, packet_id: u16, refused: Option<(ErrorCode, &str)>) {
        match refused {
            None => self.puback_reason(packet_id, v5::PubAckReason::Success, ""),
            Some((code, detail)) => {
                self.puback_reason(packet_id, puback_reason(code), &reason_text(code, detail));
            }
        }
    }

    fn puback_reason(&mut self, packet_id: u16, reason: v5::PubAckReason, text: &str) {
        match self.version {
            // 3.1.1 has no reason: the error topic says it.
            Version::V311 => self.emit4(v4::Packet::PubAck(v4::PubAck::new(packet_id))),
            Version::V5 => {
                let properties =
                    (reason != v5::PubAckReason::Success).then(|| v5::PubAckProperties {
                        reason_string: Some(text.to_owned()),
                        user_properties: Vec::new(),
                    });
                self.emit5(v5::Packet::PubAck(v5::PubAck {
                    pkid: packet_id,
                    reason,
                    properties,
                }));
            }
        }
    }

    /// Publishes a refusal on [`ERRORS`] if the client subscribed to it (QoS 0).
    fn report_error(
        &mut self,
        message_id: u64,
        destination: &str,
        code: ErrorCode,
        detail: &str,
        reporter: &str,
    ) {
        if !self
            .subscriptions
            .iter()
            .any(|(f, _)| m4::matches(ERRORS, f))
        {
            return;
        }
        let body = serde_json::json!({
            "message_id": message_id,
            "destination": destination,
            "reason": code.as_str_name(),
            "detail": detail,
            "reporter": reporter,
        })
        .to_string();
        match self.version {
            Version::V311 => self.emit4(v4::Packet::Publish(v4::Publish::new(
                ERRORS,
                m4::QoS::AtMostOnce,
                body,
            ))),
            Version::V5 => {
                let properties = v5::PublishProperties {
                    content_type: Some("application/json".into()),
                    ..Default::default()
                };
                self.emit5(v5::Packet::Publish(v5::Publish::new(
                    ERRORS,
                    m5::QoS::AtMostOnce,
                    body,
                    Some(properties),
                )));
            }
        }
    }
}

/// Why the gateway itself refuses a publish, before any relay sees it.
#[derive(Debug, Clone, Copy)]
enum PublishRefusal {
    Topic,
    Quota,
    InUse,
    TooLarge,
}

impl PublishRefusal {
    fn code(self) -> ErrorCode {
        match self {
            PublishRefusal::Topic => ErrorCode::InvalidField,
            PublishRefusal::Quota => ErrorCode::Overloaded,
            PublishRefusal::InUse => ErrorCode::UnexpectedMessage,
            PublishRefusal::TooLarge => ErrorCode::TooLarge,
        }
    }

    fn reason(self) -> v5::PubAckReason {
        match self {
            PublishRefusal::Topic => v5::PubAckReason::TopicNameInvalid,
            PublishRefusal::Quota => v5::PubAckReason::QuotaExceeded,
            PublishRefusal::InUse => v5::PubAckReason::PacketIdentifierInUse,
            PublishRefusal::TooLarge => v5::PubAckReason::ImplementationSpecificError,
        }
    }
}

/// The PUBACK reason code of a NACK's reason (docs/protocols.md's table).
pub fn puback_reason(code: ErrorCode) -> v5::PubAckReason {
    match code {
        ErrorCode::Unauthorized | ErrorCode::CertRevoked | ErrorCode::NotAccessed => {
            v5::PubAckReason::NotAuthorized
        }
        ErrorCode::RateLimited | ErrorCode::Overloaded => v5::PubAckReason::QuotaExceeded,
        ErrorCode::NoRoute
        | ErrorCode::DestinationOffline
        | ErrorCode::TtlExpired
        | ErrorCode::Unreachable
        | ErrorCode::Draining => v5::PubAckReason::UnspecifiedError,
        ErrorCode::InvalidField | ErrorCode::MissingField => v5::PubAckReason::TopicNameInvalid,
        _ => v5::PubAckReason::ImplementationSpecificError,
    }
}

/// The DISCONNECT reason code of a notification's code.
fn disconnect_reason(code: ErrorCode) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode as D;
    match code {
        ErrorCode::Unspecified => D::NormalDisconnection,
        ErrorCode::Draining => D::ServerShuttingDown,
        ErrorCode::HoldTimerExpired => D::KeepAliveTimeout,
        ErrorCode::CertRevoked | ErrorCode::Unauthorized => D::NotAuthorized,
        ErrorCode::Malformed => D::MalformedPacket,
        ErrorCode::UnexpectedMessage => D::ProtocolError,
        ErrorCode::TooLarge => D::PacketTooLarge,
        ErrorCode::Overloaded => D::ServerBusy,
        ErrorCode::RateLimited => D::MessageRateTooHigh,
        _ => D::UnspecifiedError,
    }
}

/// CONNACK properties, none set.
fn connack_properties() -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

fn reason_text(code: ErrorCode, detail: &str) -> String {
    if detail.is_empty() {
        code.as_str_name().to_owned()
    } else {
        format!("{}: {detail}", code.as_str_name())
    }
}

fn malformed(e: impl std::fmt::Display) -> Close {
    Close {
        code: ErrorCode::Malformed,
        text: format!("malformed MQTT: {e}"),
    }
}

fn protocol(text: &str) -> Close {
    Close {
        code: ErrorCode::UnexpectedMessage,
        text: text.to_owned(),
    }
}

fn push<M: agw_proto::WireMessage>(up: &mut FrameEncoder, message: &M) {
    // Control messages the adapter makes are far below their caps.
    let _ = up.push(message);
}

fn qos4(q: u8) -> m4::QoS {
    if q == 0 {
        m4::QoS::AtMostOnce
    } else {
        m4::QoS::AtLeastOnce
    }
}

fn qos5(q: u8) -> m5::QoS {
    if q == 0 {
        m5::QoS::AtMostOnce
    } else {
        m5::QoS::AtLeastOnce
    }
}

/// A packet of either version (one at a time, on the stack: not worth a box).
#[allow(clippy::large_enum_variant)]
enum Packet {
    V4(v4::Packet),
    V5(v5::Packet),
}

/// A publish, whatever the version.
struct Publish {
    topic: String,
    qos: u8,
    dup: bool,
    packet_id: u16,
    payload: Bytes,
    content_type: Option<String>,
    language: Option<String>,
    session_id: u64,
    response_topic: Option<String>,
    correlation: Option<Bytes>,
}

/// What the client sent, whatever the version.
enum Incoming {
    Connect {
        keep_alive: u16,
        receive_maximum: u16,
    },
    Publish(Publish),
    PubAck {
        packet_id: u16,
    },
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    QoS2,
    Other(&'static str),
}

impl From<Packet> for Incoming {
    fn from(packet: Packet) -> Incoming {
        match packet {
            Packet::V4(p) => match p {
                v4::Packet::Connect(c) => Incoming::Connect {
                    keep_alive: c.keep_alive,
                    receive_maximum: DELIVERIES_IN_FLIGHT,
                },
                v4::Packet::Publish(p) if p.qos == m4::QoS::ExactlyOnce => Incoming::QoS2,
                v4::Packet::Publish(p) => Incoming::Publish(Publish {
                    topic: p.topic,
                    qos: p.qos as u8,
                    dup: p.dup,
                    packet_id: p.pkid,
                    payload: p.payload,
                    content_type: None,
                    language: None,
                    session_id: 0,
                    response_topic: None,
                    correlation: None,
                }),
                v4::Packet::PubAck(a) => Incoming::PubAck { packet_id: a.pkid },
                v4::Packet::Subscribe(s) => Incoming::Subscribe {
                    packet_id: s.pkid,
                    filters: s
                        .filters
                        .into_iter()
                        .map(|f| (f.path, f.qos as u8))
                        .collect(),
                },
                v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                    packet_id: u.pkid,
                    filters: u.topics,
                },
                v4::Packet::PingReq => Incoming::PingReq,
                v4::Packet::Disconnect => Incoming::Disconnect,
                v4::Packet::PubRec(_) | v4::Packet::PubRel(_) | v4::Packet::PubComp(_) => {
                    Incoming::QoS2
                }
                v4::Packet::ConnAck(_) => Incoming::Other("CONNACK"),
                v4::Packet::SubAck(_) => Incoming::Other("SUBACK"),
                v4::Packet::UnsubAck(_) => Incoming::Other("UNSUBACK"),
                v4::Packet::PingResp => Incoming::Other("PINGRESP"),
            },
            Packet::V5(p) => match p {
                v5::Packet::Connect(c, _, _) => Incoming::Connect {
                    keep_alive: c.keep_alive,
                    receive_maximum: c
                        .properties
                        .and_then(|p| p.receive_maximum)
                        .unwrap_or(u16::MAX),
                },
                v5::Packet::Publish(p) if p.qos == m5::QoS::ExactlyOnce => Incoming::QoS2,
                v5::Packet::Publish(p) => {
                    let properties = p.properties.unwrap_or_default();
                    let user = |name: &str| {
                        properties
                            .user_properties
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                    };
                    Incoming::Publish(Publish {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        qos: p.qos as u8,
                        dup: p.dup,
                        packet_id: p.pkid,
                        language: user("language"),
                        session_id: user("session-id").and_then(|s| s.parse().ok()).unwrap_or(0),
                        content_type: properties.content_type,
                        response_topic: properties.response_topic,
                        correlation: properties.correlation_data,
                        payload: p.payload,
                    })
                }
                v5::Packet::PubAck(a) => Incoming::PubAck { packet_id: a.pkid },
                v5::Packet::Subscribe(s) => Incoming::Subscribe {
                    packet_id: s.pkid,
                    filters: s
                        .filters
                        .into_iter()
                        .map(|f| (f.path, f.qos as u8))
                        .collect(),
                },
                v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                    packet_id: u.pkid,
                    filters: u.filters,
                },
                v5::Packet::PingReq(_) => Incoming::PingReq,
                v5::Packet::Disconnect(_) => Incoming::Disconnect,
                v5::Packet::PubRec(_) | v5::Packet::PubRel(_) | v5::Packet::PubComp(_) => {
                    Incoming::QoS2
                }
                v5::Packet::Auth(_) => Incoming::Other("AUTH"),
                v5::Packet::ConnAck(_) => Incoming::Other("CONNACK"),
                v5::Packet::SubAck(_) => Incoming::Other("SUBACK"),
                v5::Packet::UnsubAck(_) => Incoming::Other("UNSUBACK"),
                v5::Packet::PingResp(_) => Incoming::Other("PINGRESP"),
            },
        }
    }
}

/// The adapter's fuzz check, shared by the cargo-fuzz target `mqtt` (`fuzz/`) and the test
/// that replays its seed corpus on stable: `data` is what a client sends, decoded whole and
/// in 7-byte reads (its access accepted after the first read that asked for it). Returns the
/// native messages made and how the client's input ended. Panics only if the two readings
/// disagree: hostile input must close the connection with a reason, never panic.
pub fn check_client_bytes(data: &[u8]) -> (Vec<Message>, Result<(), Close>) {
    let whole = client_bytes(data, data.len().max(1));
    let chunked = client_bytes(data, 7);
    assert_eq!(
        whole, chunked,
        "the same bytes read in chunks made something else"
    );
    whole
}

fn client_bytes(data: &[u8], chunk: usize) -> (Vec<Message>, Result<(), Close>) {
    let limits = agw_proto::FrameLimits {
        max_data_body: 4096,
    };
    let mut adapter = MqttAdapter::new(
        Some("spiffe://a.example/agent/alice".into()),
        vec![Bytes::from_static(b"leaf")],
        8192,
    );
    let now = Instant::now();
    let mut up = FrameEncoder::new(limits);
    let mut result = Ok(());
    for piece in data.chunks(chunk) {
        adapter.input().extend_from_slice(piece);
        result = adapter.from_client(now, &mut up);
        if adapter.state == State::Connecting {
            adapter.accessed();
            result = result.and_then(|()| adapter.from_client(now, &mut up));
        }
        if result.is_err() {
            break;
        }
    }
    let mut decoder = agw_proto::FrameDecoder::new(limits);
    decoder.extend_from_slice(&up.take());
    let mut messages = Vec::new();
    while let Ok(Some(frame)) = decoder.decode() {
        if let Ok(m) = frame.message() {
            messages.push(m);
        }
    }
    (messages, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agw_proto::{FrameDecoder, FrameLimits};

    const ALICE: &str = "spiffe://a.example/agent/alice";
    const BOB: &str = "spiffe://b.example/agent/bob";

    fn adapter() -> MqttAdapter {
        MqttAdapter::new(
            Some(ALICE.into()),
            vec![Bytes::from_static(b"leaf")],
            64 * 1024,
        )
    }

    /// Feeds `bytes`; returns the frames made and the packets to write.
    fn feed(a: &mut MqttAdapter, bytes: &[u8]) -> (Vec<Message>, Vec<u8>, Result<(), Close>) {
        a.input().extend_from_slice(bytes);
        let mut up = FrameEncoder::new(FrameLimits::default());
        let result = a.from_client(Instant::now(), &mut up);
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.extend_from_slice(&up.take());
        let mut frames = Vec::new();
        while let Some(f) = decoder.decode().unwrap() {
            frames.push(f.message().unwrap());
        }
        (frames, a.take_out().to_vec(), result)
    }

    /// Feeds a CONNECT, which must make an access request.
    fn connect(a: &mut MqttAdapter, bytes: &[u8]) {
        let (frames, _, result) = feed(a, bytes);
        assert_eq!(result, Ok(()));
        assert!(
            matches!(frames.as_slice(), [Message::AccessRequest(_)]),
            "{frames:?}"
        );
    }

    fn accept(a: &mut MqttAdapter) -> Vec<u8> {
        a.accessed();
        a.to_client(Message::AccessReply(pb::AccessReply {
            error: None,
            heartbeat_interval_ms: 30_000,
            hold_time_ms: 90_000,
        }));
        a.take_out().to_vec()
    }

    // CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client ID "c".
    const CONNECT_311: &[u8] = &[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c',
    ];
    // CONNECT, MQTT 5, clean start, keep-alive 60, no properties, client ID "c".
    const CONNECT_5: &[u8] = &[
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 1, b'c',
    ];

    fn publish_311(topic: &str, qos1: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let mut p = v4::Publish::new(
            topic,
            if qos1.is_some() {
                m4::QoS::AtLeastOnce
            } else {
                m4::QoS::AtMostOnce
            },
            payload.to_vec(),
        );
        p.pkid = qos1.unwrap_or(0);
        let mut out = BytesMut::new();
        v4::Packet::Publish(p).write(&mut out, usize::MAX).unwrap();
        out.to_vec()
    }

    #[test]
    fn a_311_connect_becomes_an_unsigned_access_request_and_its_reply_a_connack() {
        let mut a = adapter();
        let (frames, out, result) = feed(&mut a, CONNECT_311);
        assert_eq!(result, Ok(()));
        assert!(out.is_empty(), "nothing before the access reply");
        let [Message::AccessRequest(req)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        assert_eq!(req.agent, ALICE);
        assert_eq!(req.certificate_chain, vec![Bytes::from_static(b"leaf")]);
        assert!(req.signature.is_empty());
        assert_eq!(req.heartbeat_interval_ms, 60_000);
        assert_eq!(req.protocols, vec![pb::Protocol::Mqtt as i32]);
        // CONNACK: no session present, return code 0.
        assert_eq!(accept(&mut a), vec![0x20, 2, 0, 0]);
        assert_eq!(a.version(), Version::V311);
    }

    #[test]
    fn a_refused_access_is_a_refusing_connack_with_the_reason_in_mqtt_5() {
        let mut a = adapter();
        connect(&mut a, CONNECT_311);
        a.to_client(Message::AccessReply(pb::AccessReply {
            error: Some(pb::Error::new(ErrorCode::CertRevoked, "revoked")),
            ..Default::default()
        }));
        // 3.1.1: "not authorized" (5).
        assert_eq!(a.take_out().to_vec(), vec![0x20, 2, 0, 5]);

        let mut a = adapter();
        let (_, _, result) = feed(&mut a, CONNECT_5);
        assert_eq!(result, Ok(()));
        assert_eq!(a.version(), Version::V5);
        a.to_client(Message::AccessReply(pb::AccessReply {
            error: Some(pb::Error::new(ErrorCode::CertRevoked, "revoked")),
            ..Default::default()
        }));
        let mut out = a.take_out();
        let v5::Packet::ConnAck(ack) = v5::Packet::read(&mut out, None).unwrap() else {
            panic!()
        };
        assert_eq!(ack.code, v5::ConnectReturnCode::NotAuthorized);
        assert_eq!(
            ack.properties.unwrap().reason_string.unwrap(),
            "CERT_REVOKED: revoked"
        );
    }

    #[test]
    fn plaintext_connect_is_refused_with_a_connack() {
        let mut a = MqttAdapter::new(None, Vec::new(), 64 * 1024);
        let (frames, out, result) = feed(&mut a, CONNECT_311);
        assert!(frames.is_empty());
        assert_eq!(out, vec![0x20, 2, 0, 5]);
        assert_eq!(result.unwrap_err().code, ErrorCode::TlsRequired);
    }

    #[test]
    fn publishes_become_messages_and_their_acks_and_nacks_pubacks() {
        let mut a = adapter();
        connect(&mut a, CONNECT_311);
        accept(&mut a);
        let topic = format!("{TO}{BOB}");
        let (frames, out, _) = feed(&mut a, &publish_311(&topic, Some(7), b"hi"));
        assert!(out.is_empty(), "the PUBACK waits for the destination");
        let [Message::AgentMessage(m)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        assert_eq!((m.destination.as_str(), m.source.as_str()), (BOB, ALICE));
        assert_eq!(&m.payload[..], b"hi");
        assert_eq!(m.source_protocol, pb::Protocol::Mqtt as i32);
        a.to_client(Message::Ack(pb::Ack {
            destination: ALICE.into(),
            source: BOB.into(),
            message_id: m.message_id,
        }));
        assert_eq!(a.take_out().to_vec(), vec![0x40, 2, 0, 7]);

        // A NACK: PUBACK (3.1.1 has no reason) and, subscribed, the error topic.
        let (_, suback, _) = feed(
            &mut a,
            &[
                0x82, 15, 0, 1, 0, 10, b'a', b'g', b'w', b'/', b'e', b'r', b'r', b'o', b'r', b's',
                0,
            ],
        );
        assert_eq!(suback, vec![0x90, 3, 0, 1, 0]);
        let (frames, _, _) = feed(&mut a, &publish_311(&topic, Some(8), b"again"));
        let [Message::AgentMessage(m)] = frames.as_slice() else {
            panic!()
        };
        a.to_client(Message::Nack(pb::Nack {
            destination: ALICE.into(),
            original_destination: BOB.into(),
            message_id: m.message_id,
            reason: ErrorCode::DestinationOffline as i32,
            reporter: "spiffe://b.example/agw/1".into(),
            detail: "bob is offline".into(),
            retry_after_ms: 0,
        }));
        let mut out = a.take_out();
        assert_eq!(
            v4::Packet::read(&mut out, 1 << 20).unwrap(),
            v4::Packet::PubAck(v4::PubAck::new(8))
        );
        let v4::Packet::Publish(error) = v4::Packet::read(&mut out, 1 << 20).unwrap() else {
            panic!()
        };
        assert_eq!(error.topic, ERRORS);
        let json: serde_json::Value = serde_json::from_slice(&error.payload).unwrap();
        assert_eq!(json["reason"], "DESTINATION_OFFLINE");
        assert_eq!(json["destination"], BOB);
    }

    #[test]
    fn a_publish_outside_the_scheme_is_refused_not_relayed() {
        let mut a = adapter();
        connect(&mut a, CONNECT_5);
        accept(&mut a);
        let mut p = v5::Publish::new("sensors/x", m5::QoS::AtLeastOnce, b"1".to_vec(), None);
        p.pkid = 3;
        let mut bytes = BytesMut::new();
        v5::Packet::Publish(p).write(&mut bytes, None).unwrap();
        let (frames, out, result) = feed(&mut a, &bytes);
        assert_eq!(result, Ok(()));
        assert!(frames.is_empty());
        let v5::Packet::PubAck(ack) =
            v5::Packet::read(&mut BytesMut::from(&out[..]), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (ack.pkid, ack.reason),
            (3, v5::PubAckReason::TopicNameInvalid)
        );
    }

    #[test]
    fn messages_reach_the_inbox_and_a_puback_acks_them_to_the_source() {
        let mut a = adapter();
        connect(&mut a, CONNECT_5);
        accept(&mut a);
        a.to_client(Message::AgentMessage(pb::AgentMessage {
            destination: ALICE.into(),
            source: BOB.into(),
            message_id: 41,
            content_type: "text/plain".into(),
            correlation: Bytes::from_static(b"req-1"),
            payload: Bytes::from_static(b"hello"),
            ..Default::default()
        }));
        let mut out = a.take_out();
        let v5::Packet::Publish(p) = v5::Packet::read(&mut out, None).unwrap() else {
            panic!()
        };
        assert_eq!(&p.topic[..], format!("{INBOX}{BOB}").as_bytes());
        assert_eq!(p.qos, m5::QoS::AtLeastOnce);
        let props = p.properties.unwrap();
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.response_topic, Some(format!("{TO}{BOB}")));
        assert_eq!(props.correlation_data, Some(Bytes::from_static(b"req-1")));
        let mut puback = BytesMut::new();
        v5::Packet::PubAck(v5::PubAck::new(p.pkid, None))
            .write(&mut puback, None)
            .unwrap();
        let (frames, _, _) = feed(&mut a, &puback);
        let [Message::Ack(ack)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        assert_eq!(
            (
                ack.destination.as_str(),
                ack.source.as_str(),
                ack.message_id
            ),
            (BOB, ALICE, 41)
        );
    }

    #[test]
    fn a_reply_goes_to_the_response_topic_its_request_named() {
        let mut a = adapter();
        connect(&mut a, CONNECT_5);
        accept(&mut a);
        let properties = v5::PublishProperties {
            response_topic: Some("my/replies".into()),
            correlation_data: Some(Bytes::from_static(b"c-9")),
            ..Default::default()
        };
        let p = v5::Publish::new(
            format!("{TO}{BOB}"),
            m5::QoS::AtMostOnce,
            b"q".to_vec(),
            Some(properties),
        );
        let mut bytes = BytesMut::new();
        v5::Packet::Publish(p).write(&mut bytes, None).unwrap();
        let (frames, _, _) = feed(&mut a, &bytes);
        let [Message::AgentMessage(m)] = frames.as_slice() else {
            panic!()
        };
        assert_eq!(&m.correlation[..], b"c-9");
        a.to_client(Message::AgentMessage(pb::AgentMessage {
            destination: ALICE.into(),
            source: BOB.into(),
            message_id: 1,
            correlation: Bytes::from_static(b"c-9"),
            payload: Bytes::from_static(b"a"),
            ..Default::default()
        }));
        let v5::Packet::Publish(reply) = v5::Packet::read(&mut a.take_out(), None).unwrap() else {
            panic!()
        };
        assert_eq!(&reply.topic[..], b"my/replies");
    }

    #[test]
    fn pings_are_heartbeats_and_their_acks_pingresps() {
        let mut a = adapter();
        connect(&mut a, CONNECT_311);
        accept(&mut a);
        let (frames, _, _) = feed(&mut a, &[0xC0, 0]);
        let [Message::Heartbeat(hb)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        a.to_client(Message::HeartbeatAck(pb::HeartbeatAck {
            sequence: hb.sequence,
        }));
        assert_eq!(a.take_out().to_vec(), vec![0xD0, 0]);
    }

    #[test]
    fn packets_after_connect_wait_for_the_access() {
        let mut a = adapter();
        let mut bytes = CONNECT_311.to_vec();
        bytes.extend_from_slice(&publish_311(&format!("{TO}{BOB}"), None, b"early"));
        let (frames, _, _) = feed(&mut a, &bytes);
        assert_eq!(frames.len(), 1, "the access request alone");
        accept(&mut a);
        let (frames, _, _) = feed(&mut a, &[]);
        let [Message::AgentMessage(m)] = frames.as_slice() else {
            panic!("{frames:?}")
        };
        assert_eq!(&m.payload[..], b"early");
    }

    #[test]
    fn bad_bytes_close_with_a_typed_reason() {
        for (bytes, code) in [
            // Not a CONNECT first.
            (&[0xC0, 0][..], ErrorCode::UnexpectedMessage),
            // A CONNECT for protocol level 3 (MQTT 3.1).
            (
                &[
                    0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 1, b'c',
                ][..],
                ErrorCode::Malformed,
            ),
            // A remaining length past the limit.
            (&[0x10, 0xFF, 0xFF, 0xFF, 0x7F][..], ErrorCode::Malformed),
        ] {
            let mut a = adapter();
            let (frames, _, result) = feed(&mut a, bytes);
            assert!(frames.is_empty());
            assert_eq!(result.unwrap_err().code, code, "{bytes:?}");
        }
        // QoS 2 after access.
        let mut a = adapter();
        connect(&mut a, CONNECT_311);
        accept(&mut a);
        let mut p = v4::Publish::new(format!("{TO}{BOB}"), m4::QoS::ExactlyOnce, b"x".to_vec());
        p.pkid = 1;
        let mut bytes = BytesMut::new();
        v4::Packet::Publish(p)
            .write(&mut bytes, usize::MAX)
            .unwrap();
        let (_, _, result) = feed(&mut a, &bytes);
        assert_eq!(result.unwrap_err().code, ErrorCode::UnexpectedMessage);
    }

    #[test]
    fn deliveries_past_the_clients_receive_maximum_go_at_qos_0() {
        let mut a = adapter();
        // MQTT 5 CONNECT with receive maximum 2 (property 0x21).
        connect(
            &mut a,
            &[
                0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x21, 0, 2, 0, 1, b'c',
            ],
        );
        accept(&mut a);
        let mut qos = Vec::new();
        for id in 0..3 {
            a.to_client(Message::AgentMessage(pb::AgentMessage {
                destination: ALICE.into(),
                source: BOB.into(),
                message_id: id,
                payload: Bytes::from_static(b"m"),
                ..Default::default()
            }));
            let v5::Packet::Publish(p) = v5::Packet::read(&mut a.take_out(), None).unwrap() else {
                panic!()
            };
            qos.push(p.qos as u8);
        }
        assert_eq!(qos, [1, 1, 0]);
    }

    #[test]
    fn a_closing_notification_is_a_disconnect_with_its_reason_in_mqtt_5() {
        let mut a = adapter();
        connect(&mut a, CONNECT_5);
        accept(&mut a);
        a.to_client(Message::Notification(pb::Notification {
            code: ErrorCode::CertRevoked as i32,
            subcode: 0,
            text: "revoked".into(),
        }));
        let v5::Packet::Disconnect(d) = v5::Packet::read(&mut a.take_out(), None).unwrap() else {
            panic!()
        };
        assert_eq!(d.reason_code, v5::DisconnectReasonCode::NotAuthorized);
        assert_eq!(
            d.properties.unwrap().reason_string.as_deref(),
            Some("CERT_REVOKED: revoked")
        );
        // Nothing more reaches a closed client.
        a.to_client(Message::HeartbeatAck(pb::HeartbeatAck { sequence: 1 }));
        assert!(!a.has_out());
    }

    #[test]
    fn too_much_before_the_connack_closes() {
        let mut a = adapter();
        connect(&mut a, CONNECT_311);
        let (_, _, result) = feed(&mut a, &vec![0u8; BEFORE_CONNACK + 1]);
        assert_eq!(result.unwrap_err().code, ErrorCode::Overloaded);
    }
}
