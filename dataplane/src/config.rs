//! The dataplane's settings, with the defaults a single gateway runs on.

use std::{net::SocketAddr, time::Duration};

use agw_proto::{FrameLimits, identity::GatewayId};
use agw_tls::TlsIdentity;

use crate::{access::AccessConfig, authorization::Authorization};

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// This gateway's identity (challenges and NACKs carry it).
    pub gateway: GatewayId,
    /// Where agents connect; every shard listens on it (SO_REUSEPORT). Port 0 picks one.
    pub listen: SocketAddr,
    /// Where peer gateways' relay links connect (mutual TLS, every shard listening); `None`
    /// for a gateway without peers.
    pub peer_listen: Option<SocketAddr>,
    /// This gateway's certificate for peer links (required with `peer_listen`, and to dial).
    pub peer_tls: Option<TlsIdentity>,
    /// A port of its own for MQTT clients (TLS, no protocol detection), besides the agent
    /// port that tells protocols apart; `None`: none. Needs `agent_tls`.
    pub mqtt_listen: Option<SocketAddr>,
    /// A port of its own for A2A clients (HTTPS, no protocol detection); needs `agent_tls`.
    pub a2a_listen: Option<SocketAddr>,
    /// How long an A2A server agent has to answer a request before it is NACKed
    /// `REQUEST_TIMEOUT` (and the connection dialled again). Default 60 s.
    pub a2a_answer_within: Duration,
    /// Messages that may need translating into a language their destination understands, or
    /// converting into a format it accepts, go to a translation pool off the shards, whose
    /// side is taken with [`Dataplane::translation_port`](crate::Dataplane::translation_port)
    /// (docs/translation.md). `false`: no message is ever translated or converted, and no
    /// shard reads a language field.
    pub translation: bool,
    /// The pool translates natural language (an engine is configured): agents' languages
    /// count. `false`: only formats are converted.
    pub translate_languages: bool,
    /// Agent access over mutual TLS (ALPN `agw/1`) with this gateway's certificate: the client
    /// certificate must chain to the trust anchor, and access is for the agent it names
    /// (revocation is checked by the access session, against the live CRL). `None`: agents
    /// speak plain TCP (an operator's choice, for loopback and tests).
    pub agent_tls: Option<TlsIdentity>,
    /// Shards (threads). Default: the number of CPUs.
    pub shards: usize,
    /// Pin shard `i` to CPU `i`. Default on.
    pub pin_cores: bool,
    /// Agent access timers.
    pub access: AccessConfig,
    /// Who may message whom (see [`Authorization`]); default: everyone.
    pub authorization: Authorization,
    /// Frame size limits.
    pub limits: FrameLimits,
    /// Bytes asked of each read. Default 64 KiB.
    pub read_chunk: usize,
    /// A connection's write queue above this stops same-shard senders to it from being read.
    /// Default 256 KiB.
    pub queue_soft_limit: usize,
    /// A connection's write queue above this NACKs new frames for it `OVERLOADED`.
    /// Default 4 MiB.
    pub queue_hard_limit: usize,
    /// A shard's write queues together above this NACK new frames `OVERLOADED`.
    /// Default 256 MiB.
    pub shard_memory_budget: usize,
    /// Connections one shard holds at most; more are closed at accept. Default 10,000.
    pub max_connections_per_shard: usize,
    /// Messages (and ACKs) one agent's connection may send per second, on average; past it
    /// they are NACKed `RATE_LIMITED` with the time to wait. 0 (the default): no limit.
    pub agent_rate: u32,
    /// How many an agent may send at once above its rate (the token bucket's size). 0: one
    /// second's worth of `agent_rate`.
    pub agent_burst: u32,
    /// New agent connections one source address may open per second on each shard (as many at
    /// once); past it they are closed at accept and counted refused. 0 (the default): no
    /// limit.
    pub connection_rate_per_source: u32,
    /// Batches in flight from one shard to another at most (a batch is what one read brought
    /// for that shard, at most `read_chunk` bytes of frames). Default 8.
    pub cross_shard_capacity: usize,
    /// Period of the shard's housekeeping (timers, idle buffers, commands). Default 50 ms.
    pub tick: Duration,
    /// A connection being closed gets this long to flush what was queued. Default 2 s.
    pub close_linger: Duration,
}

/// The limits an operator may change while the relay runs (`agw` reloads them on SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    /// See [`DataplaneConfig::queue_soft_limit`].
    pub queue_soft_limit: usize,
    /// See [`DataplaneConfig::queue_hard_limit`].
    pub queue_hard_limit: usize,
    /// See [`DataplaneConfig::shard_memory_budget`].
    pub shard_memory_budget: usize,
    /// See [`DataplaneConfig::max_connections_per_shard`].
    pub max_connections_per_shard: usize,
    /// See [`DataplaneConfig::agent_rate`].
    pub agent_rate: u32,
    /// See [`DataplaneConfig::agent_burst`].
    pub agent_burst: u32,
    /// See [`DataplaneConfig::connection_rate_per_source`].
    pub connection_rate_per_source: u32,
}

impl Default for LiveLimits {
    fn default() -> Self {
        LiveLimits {
            queue_soft_limit: 256 * 1024,
            queue_hard_limit: 4 * 1024 * 1024,
            shard_memory_budget: 256 * 1024 * 1024,
            max_connections_per_shard: 10_000,
            agent_rate: 0,
            agent_burst: 0,
            connection_rate_per_source: 0,
        }
    }
}

impl LiveLimits {
    /// Checks the limits agree with each other; says which does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_soft_limit == 0 || self.queue_soft_limit > self.queue_hard_limit {
            return Err("queue_soft_limit must be above 0 and at most queue_hard_limit".into());
        }
        if self.queue_hard_limit > self.shard_memory_budget {
            return Err("queue_hard_limit must be at most shard_memory_budget".into());
        }
        if self.max_connections_per_shard == 0 {
            return Err("max_connections_per_shard must be above 0".into());
        }
        if self.agent_burst > 0 && self.agent_rate == 0 {
            return Err("agent_burst needs agent_rate".into());
        }
        Ok(())
    }
}

impl DataplaneConfig {
    /// The limits that can change live.
    pub fn live_limits(&self) -> LiveLimits {
        LiveLimits {
            queue_soft_limit: self.queue_soft_limit,
            queue_hard_limit: self.queue_hard_limit,
            shard_memory_budget: self.shard_memory_budget,
            max_connections_per_shard: self.max_connections_per_shard,
            agent_rate: self.agent_rate,
            agent_burst: self.agent_burst,
            connection_rate_per_source: self.connection_rate_per_source,
        }
    }

    /// Takes these limits.
    pub fn set_live_limits(&mut self, limits: LiveLimits) {
        self.queue_soft_limit = limits.queue_soft_limit;
        self.queue_hard_limit = limits.queue_hard_limit;
        self.shard_memory_budget = limits.shard_memory_budget;
        self.max_connections_per_shard = limits.max_connections_per_shard;
        self.agent_rate = limits.agent_rate;
        self.agent_burst = limits.agent_burst;
        self.connection_rate_per_source = limits.connection_rate_per_source;
    }

    /// Defaults for `gateway` listening on `listen`.
    pub fn new(gateway: GatewayId, listen: SocketAddr) -> DataplaneConfig {
        let domain = gateway.domain().to_owned();
        let limits = LiveLimits::default();
        DataplaneConfig {
            gateway,
            listen,
            peer_listen: None,
            peer_tls: None,
            mqtt_listen: None,
            a2a_listen: None,
            a2a_answer_within: crate::a2a_client::ANSWER_WITHIN,
            translation: false,
            translate_languages: false,
            agent_tls: None,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_cores: true,
            access: AccessConfig::default(),
            authorization: Authorization::allow_all(&domain),
            limits: FrameLimits::default(),
            read_chunk: 64 * 1024,
            queue_soft_limit: limits.queue_soft_limit,
            queue_hard_limit: limits.queue_hard_limit,
            shard_memory_budget: limits.shard_memory_budget,
            max_connections_per_shard: limits.max_connections_per_shard,
            agent_rate: limits.agent_rate,
            agent_burst: limits.agent_burst,
            connection_rate_per_source: limits.connection_rate_per_source,
            cross_shard_capacity: 8,
            tick: Duration::from_millis(50),
            close_linger: Duration::from_secs(2),
        }
    }

    /// Checks the settings agree with each other; says which does not.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > usize::from(u16::MAX) {
            return Err(format!("shards must be 1..=65535, not {}", self.shards));
        }
        if self.read_chunk < 4096 {
            return Err(format!(
                "read_chunk must be at least 4096, not {}",
                self.read_chunk
            ));
        }
        self.live_limits().validate()?;
        if self.cross_shard_capacity == 0 {
            return Err("cross_shard_capacity must be above 0".into());
        }
        if self.peer_listen.is_some() && self.peer_tls.is_none() {
            return Err("peer_listen needs peer_tls (the gateway's certificate)".into());
        }
        if (self.mqtt_listen.is_some() || self.a2a_listen.is_some()) && self.agent_tls.is_none() {
            return Err(
                "a port of its own for MQTT or A2A needs agent TLS (their clients are known by \
                 their certificates)"
                    .into(),
            );
        }
        if self.a2a_answer_within.is_zero() {
            return Err("a2a_answer_within must be above 0".into());
        }
        if self.tick.is_zero() || self.tick > Duration::from_secs(1) {
            return Err("tick must be above 0 and at most 1 s".into());
        }
        self.limits.validate().map(|_| ())
    }
}
