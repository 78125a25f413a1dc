//! The demo (`agw-demo`): three domains on this machine, peered in a chain (a - b - c) under
//! one federation root, and a conversation across them, step by step: a hotel agent of domain
//! a gets a certificate and registers; a traveller agent of domain c gets one, discovers the
//! hotel through c's registry, and books a room through the relays of c, b and a. Then the
//! draft's travel scenario ([`travel`]): a task of three subtasks across the three domains,
//! one moved when its agent goes offline, a follow-up question in a session. Then
//! protocol translation ([`translation`]): an MQTT agent of a asks an A2A agent of c through
//! b, and a native agent of b completes the same A2A task in the session. Last, natural-language
//! translation ([`languages`]): an English agent of a and a Spanish agent of c book a room,
//! each reading the other in its own language.
//!
//! Its helpers build federations of whole gateways for the tests and the load tool too
//! ([`chain`], [`certify`], [`registry`]); none of this is in the `agw` daemon.

use std::{io::Write as _, path::Path, sync::Arc, time::Duration};

use agw_aca::tls::TlsIdentity;
use agw_proto::{
    DEFAULT_HOP_LIMIT, Message,
    identity::{AgentId, Domain, GatewayId},
    pb,
};
use agw_sdk::{
    agent::{AgentConnection, Credentials, Incoming},
    connection::Connection,
};
use bytes::Bytes;

use agw_controlplane::{
    node::{Node, NodeConfig, PeerEntry},
    peering::session::{LimitAction, SessionState},
};

mod languages;
mod translation;
pub mod travel;

const WAIT: Duration = Duration::from_secs(10);

/// A federation root for the demo's three authorities.
fn root(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
        PKCS_ECDSA_P256_SHA256,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(DnType::CommonName, "Demo Federation Root");
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let (c, k) = (dir.join("root.pem"), dir.join("root.key"));
    std::fs::write(&c, cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(&k, key.serialize_pem()).map_err(|e| e.to_string())?;
    Ok((c, k))
}

fn node(
    dir: &Path,
    root: &(std::path::PathBuf, std::path::PathBuf),
    name: &str,
    peers: Vec<PeerEntry>,
    shards: usize,
    configure: &dyn Fn(&str, &mut NodeConfig),
) -> Result<Node, String> {
    let domain = Domain::new(&format!("{name}.example")).map_err(|e| e.to_string())?;
    let mut config = NodeConfig {
        shards: Some(shards),
        root: Some(root.clone()),
        // Peer CRLs are not known before the peers start: the demo's gateways check the leaf
        // certificates of their own domain only (see docs/peering.md).
        peer_crls: Default::default(),
        peers,
        ..NodeConfig::on_loopback(domain, &format!("{name}1"), dir.join(name))
    };
    configure(name, &mut config);
    Node::start(config)
}

fn peer(node: &Node, dial: bool) -> PeerEntry {
    PeerEntry {
        gateway: node.gateway.clone(),
        address: dial.then(|| node.addresses().peering),
        export: None,
        max_summaries: Some((10_000, LimitAction::Refuse)),
        hold_time: Duration::from_secs(9),
    }
}

/// Gateways of the domains `<name>.example` (gateway `<name>1`), started in this process under
/// one federation root kept in `dir`, peered in a chain in the order given (each dials the one
/// before it), `shards` relay shards each; returns once every session is up. The demo runs
/// three; the load tool runs two or three to measure hops between gateways.
pub fn chain(dir: &Path, names: &[&str], shards: usize) -> Result<Vec<Node>, String> {
    chain_with(dir, names, shards, &|_, _| {})
}

/// [`chain`], each gateway's configuration changed by `configure` (given its name) before it
/// starts.
pub fn chain_with(
    dir: &Path,
    names: &[&str],
    shards: usize,
    configure: &dyn Fn(&str, &mut NodeConfig),
) -> Result<Vec<Node>, String> {
    let root = root(dir)?;
    // Each waits for the next to dial it: a peer's ID is known in advance, an address only
    // once that gateway listens.
    let accept = |name: &str| -> Result<PeerEntry, String> {
        Ok(PeerEntry {
            gateway: GatewayId::parse(&format!("spiffe://{name}.example/agw/{name}1"))
                .map_err(|e| e.to_string())?,
            address: None,
            export: None,
            max_summaries: Some((10_000, LimitAction::Refuse)),
            hold_time: Duration::from_secs(9),
        })
    };
    let mut nodes: Vec<Node> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut peers = Vec::new();
        if let Some(before) = nodes.last() {
            peers.push(peer(before, true));
        }
        if let Some(next) = names.get(i + 1) {
            peers.push(accept(next)?);
        }
        nodes.push(node(dir, &root, name, peers, shards, configure)?);
    }
    let deadline = std::time::Instant::now() + WAIT;
    for n in &nodes {
        let up = || {
            n.control().and_then(|c| c.peering()).is_some_and(|p| {
                p.neighbours()
                    .iter()
                    .all(|s| s.state == SessionState::Established)
            })
        };
        while !up() {
            if std::time::Instant::now() > deadline {
                return Err(format!("{}: peering did not come up", n.gateway));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(nodes)
}

/// An agent applies to its domain's authority over the ACA protocol.
pub fn certify(node: &Node, name: &str) -> Result<Arc<Credentials>, String> {
    let agent = AgentId::new(node.authority.domain(), name).map_err(|e| e.to_string())?;
    let mut conn = Connection::connect(node.addresses().aca, WAIT).map_err(|e| e.to_string())?;
    // The demo is the operator too: it hands its agents the organisation's token.
    let token = node
        .enrollment_token("Example")
        .ok_or("no enrollment token for Example")?;
    let credentials = Credentials::enroll(agent, "Example", token, |app| conn.request(app))
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(credentials))
}

/// The TLS client config with which `who` reaches `node`'s servers (the server must prove
/// it is that gateway).
pub fn client_config(node: &Node, who: &Credentials) -> Result<Arc<rustls::ClientConfig>, String> {
    let identity = TlsIdentity {
        chain: who.certificate.chain.iter().map(|c| c.to_vec()).collect(),
        key_pkcs8: who.key.to_pkcs8_der(),
        trust_anchor: node.authority.trust_anchor().to_vec(),
        crls: Default::default(),
        allow_unknown_revocation: true,
        renewable: None,
    };
    let config = identity
        .client_config(node.gateway.as_str())
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// An agent's mutual-TLS connection to its domain's registry.
pub fn registry(
    node: &Node,
    who: &Credentials,
) -> Result<agw_sdk::connection::TlsConnection, String> {
    Connection::connect_tls(node.addresses().registry, WAIT, client_config(node, who)?)
        .map_err(|e| e.to_string())
}

fn say(text: impl AsRef<str>) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", text.as_ref());
    let _ = out.flush();
}

/// Runs the demo; prints each step.
pub fn run() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    say("== three domains, peered a - b - c, under one federation root");
    // Gateways a and c translate natural language for their agents (the last act).
    let apy = languages::Apy::start();
    let translating = apy.as_ref().map(languages::Apy::config);
    let configure = move |name: &str, config: &mut NodeConfig| {
        if name != "b" {
            config.translation.clone_from(&translating);
        }
    };
    let mut nodes = chain_with(dir.path(), &["a", "b", "c"], 1, &configure)?.into_iter();
    let (Some(a), Some(b), Some(c)) = (nodes.next(), nodes.next(), nodes.next()) else {
        return Err("three gateways did not start".into());
    };
    for n in [&a, &b, &c] {
        say(format!(
            "   {}: agents {}, ACA {}, registry {}, peering {}",
            n.gateway,
            n.addresses().agents,
            n.addresses().aca,
            n.addresses().registry,
            n.addresses().peering
        ));
    }

    say("== the hotel agent of a.example gets a certificate and registers");
    let hotel = certify(&a, "hotel")?;
    say(format!(
        "   certificate for {} from a's authority",
        hotel.agent
    ));
    let mut conn = registry(&a, &hotel)?;
    let profile = pb::AgentProfile {
        agent: hotel.agent.to_string(),
        description: "Books hotel rooms in Lisbon".into(),
        capabilities: vec!["book-hotel".into(), "cancel-booking".into()],
        protocols: vec![pb::Protocol::Native as i32],
        languages: vec!["en".into(), "pt".into()],
        address: a.addresses().agents.to_string(),
        ..Default::default()
    };
    let request = pb::RegisterRequest {
        request_id: 1,
        profile: Some(profile),
        certificate_chain: hotel.certificate.chain.clone(),
    };
    match conn.request(request).map_err(|e| e.to_string())? {
        Message::RegisterReply(r) if r.error.is_none() => say(format!(
            "   registered as {}",
            r.profile.map(|p| p.resource_id).unwrap_or_default()
        )),
        other => return Err(format!("registration refused: {other:?}")),
    }
    let mut hotel_conn = AgentConnection::connect(a.addresses().agents, hotel.clone(), WAIT)
        .map_err(|e| e.to_string())?;
    say("   connected to a's relay (signed challenge accepted)");

    say("== the traveller agent of c.example discovers a hotel agent");
    let traveller = certify(&c, "traveller")?;
    let mut conn = registry(&c, &traveller)?;
    let query = pb::DiscoverRequest {
        request_id: 2,
        capabilities: vec!["book-hotel".into()],
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + WAIT;
    let found = loop {
        match conn.request(query.clone()).map_err(|e| e.to_string())? {
            Message::DiscoverReply(r) if !r.agents.is_empty() => break r.agents,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return Err(format!("nothing found: {other:?}")),
        }
    };
    for p in &found {
        say(format!(
            "   found {}, capabilities {:?}, languages {:?}, attached to {}; reached through \
             c's relay at {}",
            p.agent, p.capabilities, p.languages, p.gateway, p.address
        ));
    }
    let hotel_id = found[0].agent.clone();

    say("== a conversation through the relays of c, b and a");
    let mut traveller_conn =
        AgentConnection::connect(c.addresses().agents, traveller.clone(), WAIT)
            .map_err(|e| e.to_string())?;
    let ask = Bytes::from_static(b"{\"book\": \"room for two\", \"nights\": 3}");
    let (message, hops) = loop {
        let id = traveller_conn
            .send(&hotel_id, ask.clone())
            .map_err(|e| e.to_string())?;
        match hotel_conn
            .recv(Duration::from_millis(500))
            .map_err(|e| e.to_string())?
        {
            Some(Incoming::Message(m, hop)) if m.message_id == id => break (m, hop),
            _ => {
                // The relays' links are still coming up: the first try is NACKed UNREACHABLE.
                if let Some(Incoming::Nack(n)) = traveller_conn
                    .recv(Duration::from_millis(100))
                    .map_err(|e| e.to_string())?
                {
                    say(format!("   (NACK {:?}, retrying)", n.reason()));
                }
            }
        }
    };
    say(format!(
        "   hotel received {:?} from {}, {} gateways crossed",
        String::from_utf8_lossy(&message.payload),
        message.source,
        DEFAULT_HOP_LIMIT - hops
    ));
    hotel_conn.ack(&message).map_err(|e| e.to_string())?;
    // The traveller's own route may still be on its way to a (it connected a moment ago):
    // a reply refused NO_ROUTE is sent again, as an agent would on a retryable NACK.
    let reply = Bytes::from_static(b"{\"confirmed\": true, \"room\": 42}");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let id = hotel_conn
            .send(traveller.agent.as_str(), reply.clone())
            .map_err(|e| e.to_string())?;
        match hotel_conn
            .recv(Duration::from_millis(300))
            .map_err(|e| e.to_string())?
        {
            Some(Incoming::Nack(n)) if n.message_id == id => {
                say(format!(
                    "   (hotel's reply NACKed {:?}, retrying)",
                    n.reason()
                ));
                if std::time::Instant::now() > deadline {
                    return Err("the reply was never delivered".into());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            _ => break,
        }
    }
    loop {
        match traveller_conn.recv(WAIT).map_err(|e| e.to_string())? {
            Some(Incoming::Ack(_)) => say("   traveller got the hotel's ACK"),
            Some(Incoming::Message(m, _)) => {
                say(format!(
                    "   traveller received {:?}",
                    String::from_utf8_lossy(&m.payload)
                ));
                break;
            }
            Some(_) => {}
            None => return Err("the reply did not arrive".into()),
        }
    }

    // The first act's agents leave: the scenario's hotel is another.
    drop((hotel_conn, traveller_conn));
    travel::run(&a, &b, &c, dir.path(), Duration::from_secs(2))?;
    translation::run(&a, &b, &c)?;
    languages::run(&a, &c, apy.as_ref())?;

    say("== what each relay counted");
    for n in [&a, &b, &c] {
        let t = n.dataplane.totals();
        say(format!(
            "   {}: accepted {}, delivered {}, NACKed {}",
            n.gateway,
            t.accepted,
            t.delivered,
            t.nacked_total()
        ));
    }
    for n in [c, b, a] {
        n.stop();
    }
    say("== done");
    Ok(())
}
