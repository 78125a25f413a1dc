//! MQTT agents under load, QoS 1 over mutual TLS with ACA certificates, through either this
//! project's gateway (its MQTT adapter on the agent port) or mosquitto as a broker, side by
//! side: the same client (rumqttc, MQTT 5), the same agents, the same certificates.
//!
//! The two do not promise the same thing: the gateway's PUBACK is end to end (it waits for the
//! receiver's PUBACK, docs/protocols.md), mosquitto's is per hop (the broker stored it). Each
//! agent is one client; its event loop runs in its inbox's thread, which also sends what the
//! outbox queued.

use std::{
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_proto::identity::GatewayId;
use agw_sdk::{agent::Credentials, certificates::AgentKey};
use bytes::Bytes;
use rumqttc::{
    NetworkOptions, TlsConfiguration, Transport,
    v5::{
        AsyncClient, Event as MqttEvent, EventLoop, MqttOptions,
        mqttbytes::{
            QoS,
            v5::{Packet, PubAckReason},
        },
    },
};
use tokio::runtime::{Handle, Runtime};

use crate::{
    agw::InProcessGateway,
    cpu::{Affinity, process_tree_cpu, threads_cpu},
    nats::{await_listening, free_port},
    transport::{Agent, Error, Event, Inbox, Outbox, Relay, Side},
};

/// Which relays the MQTT agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Broker {
    /// This project's gateway: its MQTT adapter, one shard.
    Agw,
    /// mosquitto, the Eclipse broker, over TLS with the gateway authority's certificates.
    Mosquitto,
}

/// The gateway (always: its authority certifies the agents) and, for mosquitto, the broker.
pub struct MqttRelay {
    broker: Broker,
    gateway: InProcessGateway,
    mosquitto: Option<(Child, tempfile::TempDir)>,
    port: u16,
    runtime: Runtime,
}

impl std::fmt::Debug for MqttRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttRelay")
            .field("broker", &self.broker)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for MqttRelay {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self.mosquitto {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl MqttRelay {
    /// Starts the gateway (one shard, pinned per `pin`) and, for mosquitto, the broker
    /// (`binary`, placed by `affinity`) with a gateway certificate of the same authority.
    pub fn start(
        broker: Broker,
        binary: &str,
        pin: bool,
        affinity: &Affinity,
    ) -> Result<MqttRelay, Error> {
        let gateway = InProcessGateway::start("load.example", 1, pin, false)?;
        let (mosquitto, port) = match broker {
            Broker::Agw => (None, gateway.node.addresses().agents.port()),
            Broker::Mosquitto => {
                let (child, dir, port) = start_mosquitto(&gateway, binary, affinity)?;
                (Some((child, dir)), port)
            }
        };
        let runtime = affinity.client_runtime()?;
        Ok(MqttRelay {
            broker,
            gateway,
            mosquitto,
            port,
            runtime,
        })
    }

    /// What relays the messages.
    pub fn describe(&self) -> String {
        match self.broker {
            Broker::Agw => "agw MQTT adapter, one shard".to_owned(),
            Broker::Mosquitto => "mosquitto broker".to_owned(),
        }
    }

    /// One agent's client, connected and subscribed.
    fn client(&self, creds: &Credentials) -> Result<(AsyncClient, EventLoop), Error> {
        let mut tls = (*creds.tls_config()?).clone();
        tls.alpn_protocols = vec![b"mqtt".to_vec()];
        let name = creds.agent.as_str().rsplit('/').next().unwrap_or("agent");
        let mut options = MqttOptions::new(name, "127.0.0.1", self.port);
        // As the native agents do: a small reply must not wait for the ACK of the last write.
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options
            .set_network_options(network)
            .set_keep_alive(Duration::from_secs(30))
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )))
            .set_request_channel_capacity(1024)
            .set_outgoing_inflight_upper_limit(64)
            .set_max_packet_size(Some(1 << 20));
        let (client, mut events) = AsyncClient::new(options, 1024);
        let topic = match self.broker {
            Broker::Agw => "agw/inbox/#".to_owned(),
            Broker::Mosquitto => format!("agw/to/{}", creds.agent),
        };
        self.runtime.block_on(async {
            client.subscribe(topic, QoS::AtLeastOnce).await?;
            // Until the broker granted the subscription.
            loop {
                let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
                    .await
                    .map_err(|_| "no SUBACK within 10 s")??;
                if let MqttEvent::Incoming(Packet::SubAck(_)) = event {
                    return Ok::<_, Error>(());
                }
            }
        })?;
        Ok((client, events))
    }
}

/// mosquitto on a free port: TLS with a gateway certificate of the load's authority, client
/// certificates required (the agents' own).
fn start_mosquitto(
    gateway: &InProcessGateway,
    binary: &str,
    affinity: &Affinity,
) -> Result<(Child, tempfile::TempDir, u16), Error> {
    let dir = tempfile::tempdir()?;
    let authority = &gateway.node.authority;
    let id = GatewayId::new(authority.domain(), "mosquitto")?;
    let key = AgentKey::generate()?;
    let csr = key.csr(id.as_str())?;
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let issued = authority.issue_gateway_named(&id, &csr, &names, SystemTime::now())?;
    let pem_of = |der: &[u8]| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()));
    let write = |name: &str, text: String| -> Result<String, Error> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_str().ok_or("a non-UTF-8 path")?.to_owned())
    };
    let cafile = write("ca.pem", pem_of(authority.trust_anchor()))?;
    let certfile = write("cert.pem", issued.chain.iter().map(|c| pem_of(c)).collect())?;
    let keyfile = write("key.pem", key.to_pem())?;
    let port = free_port()?;
    let config = write(
        "mosquitto.conf",
        format!(
            "listener {port} 127.0.0.1\ncafile {cafile}\ncertfile {certfile}\nkeyfile \
             {keyfile}\nrequire_certificate true\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 64\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
        ),
    )?;
    let mut command = affinity.relay_command(binary);
    command
        .args(["-c", &config])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = command
        .spawn()
        .map_err(|e| format!("{binary}: {e} (install mosquitto)"))?;
    await_listening(port, "mosquitto")?;
    Ok((child, dir, port))
}

impl Relay for MqttRelay {
    fn connect(&mut self, sides: &[Side]) -> Result<Vec<Agent>, Error> {
        let mut certified = Vec::new();
        for i in 0..sides.len() {
            certified.push(self.gateway.certify(&format!("agent-{i}"))?);
        }
        let topics: Arc<Vec<String>> = Arc::new(
            certified
                .iter()
                .map(|c| format!("agw/to/{}", c.agent))
                .collect(),
        );
        let handle = self.runtime.handle().clone();
        let mut agents = Vec::new();
        for creds in &certified {
            let (client, events) = self.client(creds)?;
            agents.push(Agent {
                outbox: Box::new(MqttOutbox {
                    client,
                    handle: handle.clone(),
                    topics: topics.clone(),
                    queued: Vec::new(),
                }),
                inbox: Box::new(MqttInbox {
                    events,
                    handle: handle.clone(),
                }),
            });
        }
        Ok(agents)
    }

    fn cpu(&self) -> Option<Duration> {
        match &self.mosquitto {
            None => threads_cpu("agw-shard"),
            Some((child, _)) => process_tree_cpu(child.id()),
        }
    }
}

struct MqttOutbox {
    client: AsyncClient,
    handle: Handle,
    topics: Arc<Vec<String>>,
    queued: Vec<(usize, Bytes)>,
}

impl Outbox for MqttOutbox {
    fn queue(&mut self, to: usize, payload: Bytes) -> Result<(), Error> {
        self.queued.push((to, payload));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        let batch = std::mem::take(&mut self.queued);
        let client = &self.client;
        let topics = &self.topics;
        self.handle.block_on(async {
            for (to, payload) in batch {
                let topic = topics.get(to).ok_or("no such agent")?;
                // Waits while the client's request channel is full: back-pressure.
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await?;
            }
            Ok::<_, Error>(())
        })
    }
}

struct MqttInbox {
    events: EventLoop,
    handle: Handle,
}

impl Inbox for MqttInbox {
    fn recv(&mut self) -> Result<Event, Error> {
        let events = &mut self.events;
        let next = self
            .handle
            .block_on(async { tokio::time::timeout(Duration::from_secs(1), events.poll()).await });
        match next {
            Err(_) => Ok(Event::Idle),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) => Ok(Event::Message(p.payload)),
            Ok(Ok(MqttEvent::Incoming(Packet::PubAck(ack))))
                if !matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ) =>
            {
                Ok(Event::Nack("PUBACK failure"))
            }
            Ok(Ok(_)) => Ok(Event::Other),
        }
    }
}
