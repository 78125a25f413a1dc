//! This project's gateway as the relay under load: one whole gateway started in this process
//! (a `Node`, as the daemon runs it: authority, registry, relay and control plane, its state in
//! a temporary directory), or two or three of them peered in a chain over mutual TLS.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agw_controlplane::{
    node::{Node, NodeConfig},
    translation::{EngineConfig, EngineKind, TranslationConfig},
};
use agw_dataplane::routing::Route;
use agw_demo as demo;
use agw_proto::{
    identity::{AgentId, Domain},
    pb,
};
use agw_sdk::agent::{AccessOptions, AgentConnection, Credentials, Incoming, Reader, Writer};
use bytes::Bytes;

use crate::{
    cpu::threads_cpu,
    transport::{Agent, Error, Event, Inbox, Outbox, Relay, Side},
};

/// Where the agents are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// One gateway; agents on whichever shard the kernel gives them.
    OneGateway,
    /// One gateway; senders and receivers on the same shard.
    SameShard,
    /// One gateway; senders on shard 0, receivers on shard 1 (needs 2 shards).
    CrossShard,
    /// One gateway; pair i on shard i mod shards, sender and receiver alike: every shard
    /// carries its share and nothing crosses shards (how the relay scales with shards).
    Spread,
    /// One gateway; pair i's sender on shard i mod shards, its receiver on the same shard for
    /// even i and on the next for odd i: half the traffic crosses shards (needs 2 shards).
    HalfCross,
    /// Senders at one gateway, receivers at another, a mutual-TLS peer link between them.
    TwoGateways,
    /// Senders at the first of three gateways in a chain, receivers at the last.
    Chain,
}

/// Whether the gateway under load translates natural language (docs/translation.md), and
/// whether its agents name a language: what translation costs messages that need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Translation {
    /// No translation engine configured (the pool off the shards still runs, converting
    /// formats; no agent names a language or a format).
    #[default]
    Off,
    /// No translation configured; every agent understands English and every message is
    /// English text: the same bytes as `understood`, its baseline.
    Tagged,
    /// Translation on; agents name no language (their messages are never looked at).
    Idle,
    /// Translation on; every agent understands English and every message is English text
    /// (each one's language fields are read on the shard, none goes to the pool).
    Understood,
}

impl Translation {
    /// The gateway's translation: an engine that is never reached (no message needs it).
    fn config(self) -> Option<TranslationConfig> {
        matches!(self, Translation::Idle | Translation::Understood).then(|| TranslationConfig {
            engines: vec![EngineConfig::new(
                EngineKind::LibreTranslate,
                "http://127.0.0.1:9",
            )],
            ..TranslationConfig::formats_only()
        })
    }

    fn options(self) -> AccessOptions {
        AccessOptions {
            languages: match self {
                Translation::Tagged | Translation::Understood => vec!["en".into()],
                Translation::Off | Translation::Idle => Vec::new(),
            },
            translation_originals: false,
        }
    }
}

/// A gateway in this process, for load: a whole node, wired as the daemon wires it.
pub struct InProcessGateway {
    /// The node (its relay is `node.dataplane`).
    pub node: Node,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for InProcessGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessGateway")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl InProcessGateway {
    /// Starts a gateway for `domain` with `shards` shards on free loopback ports; `pin` pins
    /// shard `i` to CPU `i`.
    /// `plaintext`: agents speak plain TCP instead of mutual TLS.
    pub fn start(
        domain: &str,
        shards: usize,
        pin: bool,
        plaintext: bool,
    ) -> Result<InProcessGateway, Error> {
        InProcessGateway::start_translating(domain, shards, pin, plaintext, None)
    }

    /// [`InProcessGateway::start`] with `translation`.
    pub fn start_translating(
        domain: &str,
        shards: usize,
        pin: bool,
        plaintext: bool,
        translation: Option<TranslationConfig>,
    ) -> Result<InProcessGateway, Error> {
        let dir = tempfile::tempdir()?;
        let node = Node::start(NodeConfig {
            shards: Some(shards),
            pin_cores: pin,
            agent_plaintext: plaintext,
            allow: vec!["Load".into()],
            translation,
            ..NodeConfig::on_loopback(Domain::new(domain)?, "load-1", dir.path().join("node"))
        })?;
        Ok(InProcessGateway { node, _dir: dir })
    }

    /// Certifies an agent called `name`.
    pub fn certify(&self, name: &str) -> Result<Arc<Credentials>, Error> {
        let agent = AgentId::new(self.node.authority.domain(), name)?;
        let ca = &self.node.authority;
        let ask = |app: pb::CertificateApplication| {
            ca.handle(&app.into(), SystemTime::now()).ok_or("no answer")
        };
        // The harness is the gateway's operator: it holds the organisation's token.
        let token = self
            .node
            .enrollment_token("Load")
            .ok_or("no enrollment token for Load")?;
        Ok(Arc::new(Credentials::enroll(agent, "Load", token, ask)?))
    }
}

enum Gateways {
    One(Box<InProcessGateway>),
    Chain {
        _dir: tempfile::TempDir,
        nodes: Vec<Node>,
    },
}

/// The gateway(s) under load.
pub struct AgwRelay {
    scenario: Scenario,
    gateways: Gateways,
    /// Agents speak plain TCP instead of mutual TLS.
    plaintext: bool,
    translation: Translation,
}

impl std::fmt::Debug for AgwRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgwRelay")
            .field("scenario", &self.scenario)
            .finish_non_exhaustive()
    }
}

impl AgwRelay {
    /// Starts the gateways the scenario needs, `shards` shards each; `plaintext` (one
    /// gateway only): agents speak plain TCP instead of mutual TLS.
    pub fn start(
        scenario: Scenario,
        shards: usize,
        pin: bool,
        plaintext: bool,
        translation: Translation,
    ) -> Result<AgwRelay, Error> {
        if matches!(scenario, Scenario::CrossShard | Scenario::HalfCross) && shards < 2 {
            let name = if scenario == Scenario::CrossShard {
                "cross-shard"
            } else {
                "half-cross"
            };
            return Err(format!("--scenario {name} needs --shards 2 or more").into());
        }
        let gateways = match scenario {
            Scenario::OneGateway
            | Scenario::SameShard
            | Scenario::CrossShard
            | Scenario::Spread
            | Scenario::HalfCross => Gateways::One(Box::new(InProcessGateway::start_translating(
                "load.example",
                shards,
                pin,
                plaintext,
                translation.config(),
            )?)),
            Scenario::TwoGateways | Scenario::Chain => {
                let dir = tempfile::tempdir()?;
                let names: &[&str] = if scenario == Scenario::Chain {
                    &["a", "b", "c"]
                } else {
                    &["a", "b"]
                };
                let nodes = demo::chain(dir.path(), names, shards)?;
                Gateways::Chain { _dir: dir, nodes }
            }
        };
        if translation != Translation::Off && matches!(gateways, Gateways::Chain { .. }) {
            return Err("--translation applies to one gateway".into());
        }
        Ok(AgwRelay {
            scenario,
            gateways,
            plaintext,
            translation,
        })
    }

    /// Shards of each gateway.
    pub fn describe(&self) -> String {
        match &self.gateways {
            Gateways::One(g) => format!("one gateway, {} shard(s)", g.node.dataplane.shards()),
            Gateways::Chain { nodes, .. } => format!(
                "{} gateways peered in a chain over mutual TLS, {} shard(s) each",
                nodes.len(),
                nodes.first().map_or(0, |n| n.dataplane.shards())
            ),
        }
    }

    /// Connects `credentials` where side `side` belongs, on the shard the scenario wants;
    /// `rank`: the agent's place among its side's (pair `rank` in a stream).
    fn connect_one(
        &self,
        creds: &Arc<Credentials>,
        side: Side,
        rank: usize,
    ) -> Result<AgentConnection, Error> {
        let timeout = Duration::from_secs(1);
        match &self.gateways {
            Gateways::One(g) => {
                let addr = g.node.dataplane.local_addr();
                let shards = g.node.dataplane.shards();
                let want = match (self.scenario, side) {
                    (Scenario::SameShard, _) | (Scenario::CrossShard, Side::A) => Some(0),
                    (Scenario::CrossShard, Side::B) => Some(1),
                    (Scenario::Spread | Scenario::HalfCross, Side::A)
                    | (Scenario::Spread, Side::B) => u16::try_from(rank % shards).ok(),
                    (Scenario::HalfCross, Side::B) => {
                        u16::try_from((rank + rank % 2) % shards).ok()
                    }
                    _ => None,
                };
                // The kernel spreads connections over the shards' listeners: reconnect until
                // this one lands where the scenario wants it.
                for _ in 0..200 {
                    let conn = if self.plaintext {
                        AgentConnection::connect_plaintext(addr, creds.clone(), timeout)?
                    } else {
                        let options = self.translation.options();
                        AgentConnection::connect_with(addr, creds.clone(), timeout, options)?
                    };
                    let shard = match g.node.dataplane.route_of(creds.agent.as_str()) {
                        Some(Route::Local { shard, .. }) => Some(shard),
                        _ => None,
                    };
                    if want.is_none() || shard == want {
                        return Ok(conn);
                    }
                }
                Err(format!("{} never landed on shard {want:?}", creds.agent).into())
            }
            Gateways::Chain { nodes, .. } => {
                let node = match side {
                    Side::A => nodes.first(),
                    Side::B => nodes.last(),
                }
                .ok_or("no gateway")?;
                Ok(AgentConnection::connect(
                    node.addresses().agents,
                    creds.clone(),
                    timeout,
                )?)
            }
        }
    }

    fn certify(&self, name: &str, side: Side) -> Result<Arc<Credentials>, Error> {
        match &self.gateways {
            Gateways::One(g) => g.certify(name),
            Gateways::Chain { nodes, .. } => {
                let node = match side {
                    Side::A => nodes.first(),
                    Side::B => nodes.last(),
                }
                .ok_or("no gateway")?;
                Ok(demo::certify(node, name)?)
            }
        }
    }

    /// Across gateways: waits until each end routes to the other's agents.
    fn await_routes(&self, agents: &[(Arc<Credentials>, Side)]) -> Result<(), Error> {
        let Gateways::Chain { nodes, .. } = &self.gateways else {
            return Ok(());
        };
        let (Some(first), Some(last)) = (nodes.first(), nodes.last()) else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for (creds, side) in agents {
            let at = if *side == Side::A { last } else { first };
            while !matches!(
                at.dataplane.route_of(creds.agent.as_str()),
                Some(Route::Peer { .. })
            ) {
                if Instant::now() > deadline {
                    return Err(format!("no route to {} across the gateways", creds.agent).into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

impl Relay for AgwRelay {
    fn connect(&mut self, sides: &[Side]) -> Result<Vec<Agent>, Error> {
        let mut certified = Vec::new();
        for (i, side) in sides.iter().enumerate() {
            certified.push((self.certify(&format!("agent-{i}"), *side)?, *side));
        }
        let ids: Arc<Vec<String>> =
            Arc::new(certified.iter().map(|(c, _)| c.agent.to_string()).collect());
        let mut agents = Vec::new();
        let mut ranks = [0, 0];
        for (creds, side) in &certified {
            let rank = &mut ranks[usize::from(*side == Side::B)];
            let (writer, reader) = self.connect_one(creds, *side, *rank)?.split();
            *rank += 1;
            agents.push(Agent {
                outbox: Box::new(AgwOutbox {
                    writer,
                    ids: ids.clone(),
                    english: matches!(
                        self.translation,
                        Translation::Tagged | Translation::Understood
                    ),
                }),
                inbox: Box::new(AgwInbox { reader }),
            });
        }
        self.await_routes(&certified)?;
        Ok(agents)
    }

    fn cpu(&self) -> Option<Duration> {
        // Every shard of every gateway in this process (the relay's threads).
        threads_cpu("agw-shard")
    }
}

struct AgwOutbox {
    writer: Writer,
    ids: Arc<Vec<String>>,
    /// Messages say they are English text.
    english: bool,
}

impl Outbox for AgwOutbox {
    fn queue(&mut self, to: usize, payload: Bytes) -> Result<(), Error> {
        let id = self.ids.get(to).ok_or("no such agent")?;
        if self.english {
            self.writer.queue_message(pb::AgentMessage {
                destination: id.clone(),
                content_type: "text/plain".into(),
                language: "en".into(),
                payload,
                ..Default::default()
            })?;
        } else {
            self.writer.queue(id, payload)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        Ok(self.writer.flush()?)
    }
}

struct AgwInbox {
    reader: Reader,
}

impl Inbox for AgwInbox {
    fn recv(&mut self) -> Result<Event, Error> {
        event_of(self.reader.recv())
    }
}

/// What a native agent's reader brought, as the harness's event.
pub(crate) fn event_of(
    received: Result<Incoming, agw_sdk::agent::AgentError>,
) -> Result<Event, Error> {
    match received {
        Ok(Incoming::Message(m, _)) => Ok(Event::Message(m.payload)),
        Ok(Incoming::Nack(n)) => Ok(Event::Nack(n.reason().as_str_name())),
        Ok(_) => Ok(Event::Other),
        Err(agw_sdk::agent::AgentError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(Event::Idle)
        }
        Err(e) => Err(e.into()),
    }
}
