//! The control plane's loop: one thread that owns the routing table and turns what the shards
//! and the peers report into routes and advertisements.
//!
//! - Shards report local agents ([`ShardEvent`]): their routes change ([`LocalRoutes`]) and
//!   their summaries go to every established peer.
//! - Peers report summaries ([`PeerEvent`]): the [`Rib`] picks the best path per remote agent;
//!   a change becomes a `Route::Peer` (or, when no path is left, `Route::Unreachable` after a
//!   peer failed, no route at all after a DISCONNECT or a withdrawal) and is advertised on to
//!   the other peers.
//!
//! Each burst of events is applied, then published as one snapshot: a route change reaches
//! the shards within about a millisecond.

use std::{
    collections::HashMap,
    io,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agw_dataplane::{
    PeerLinks,
    access::DownReason,
    events::{LocalRoutes, ShardEvent},
    routing::{Route, RoutingTable},
};
use agw_proto::{identity::GatewayId, pb};
use crossbeam_channel::{Receiver, Sender, select};

use crate::peering::{
    driver::{PeerCommand, PeerEvent, Peering, PeeringConfig},
    rib::{BestChange, Rib},
};

/// The running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    peering: Option<Peering>,
    stop: Sender<()>,
    thread: Option<JoinHandle<RoutingTable>>,
}

struct State {
    local: GatewayId,
    table: RoutingTable,
    routes: LocalRoutes,
    /// Local agents' summaries, by agent ID.
    summaries: HashMap<String, pb::AgentSummary>,
    version: u64,
    rib: Rib,
    /// Gateway ID of each configured peer, by index.
    peer_ids: Vec<String>,
    peer_up: Vec<bool>,
    /// The relay's links to peers, opened when a session comes up.
    links: Option<PeerLinks>,
}

impl ControlPlane {
    /// Starts the loop on its own thread, and the peering sessions if configured. `table` is
    /// the routing table the shards read; `shard_events` what they report; `links` opens the
    /// relay's links to peers as their sessions come up.
    pub fn start(
        local: GatewayId,
        table: RoutingTable,
        shard_events: Receiver<ShardEvent>,
        peering: Option<PeeringConfig>,
        links: Option<PeerLinks>,
    ) -> io::Result<ControlPlane> {
        let (peer_tx, peer_rx) = crossbeam_channel::unbounded();
        let peer_ids: Vec<String> = peering
            .as_ref()
            .map(|p| p.peers.iter().map(|s| s.config.peer.to_string()).collect())
            .unwrap_or_default();
        let peering = peering.map(|p| Peering::start(p, peer_tx)).transpose()?;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let peer_count = peer_ids.len();
        let mut state = State {
            local,
            table,
            routes: LocalRoutes::new(),
            summaries: HashMap::new(),
            version: 0,
            rib: Rib::new(),
            peer_ids,
            peer_up: vec![false; peer_count],
            links,
        };
        let commander = peering.as_ref().map(Peering::commander);
        let thread = std::thread::Builder::new()
            .name("agw-control".into())
            .spawn(move || {
                let send = |index: usize, command: PeerCommand| {
                    if let Some(c) = &commander {
                        c.command(index, command);
                    }
                };
                loop {
                    select! {
                        recv(shard_events) -> event => match event {
                            Ok(event) => state.shard_event(&event, &send),
                            Err(_) => return state.table,
                        },
                        recv(peer_rx) -> event => {
                            if let Ok((index, event)) = event {
                                state.peer_event(index, event, &send);
                            }
                        },
                        recv(stop_rx) -> _ => return state.table,
                    }
                    // Take the rest of the burst (at most a millisecond of it), then publish.
                    let deadline = Instant::now() + Duration::from_millis(1);
                    while Instant::now() < deadline {
                        if let Ok(event) = shard_events.try_recv() {
                            state.shard_event(&event, &send);
                        } else if let Ok((index, event)) = peer_rx.try_recv() {
                            state.peer_event(index, event, &send);
                        } else {
                            break;
                        }
                    }
                    state.table.publish();
                }
            })?;
        Ok(ControlPlane {
            peering,
            stop: stop_tx,
            thread: Some(thread),
        })
    }

    /// The peering, if configured (its listening address, fault injection).
    pub fn peering(&self) -> Option<&Peering> {
        self.peering.as_ref()
    }

    /// Leaves every peer (DISCONNECT) and ends the loop; returns the routing table.
    pub fn stop(mut self) -> Option<RoutingTable> {
        if let Some(p) = self.peering.take() {
            p.stop();
        }
        let _ = self.stop.send(());
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(p) = self.peering.take() {
            p.stop();
        }
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    fn local_summary(&mut self, agent: &str, status: pb::Status) -> pb::AgentSummary {
        self.version += 1;
        pb::AgentSummary {
            agent: agent.to_owned(),
            status: status as i32,
            origin: self.local.to_string(),
            path: Vec::new(),
            version: self.version,
            ..Default::default()
        }
    }

    fn established(&self) -> impl Iterator<Item = usize> + '_ {
        self.peer_up
            .iter()
            .enumerate()
            .filter(|(_, up)| **up)
            .map(|(i, _)| i)
    }

    fn shard_event(&mut self, event: &ShardEvent, send: &impl Fn(usize, PeerCommand)) {
        self.routes.apply(&mut self.table, event);
        let (agent, change) = match event {
            ShardEvent::AgentUp { agent, .. } => (agent, Some(pb::Status::Running)),
            ShardEvent::AgentStatus { agent, status } => (agent, Some(*status)),
            ShardEvent::AgentDown { agent, reason, .. } => match reason {
                DownReason::Deregistered => (agent, None),
                _ => (agent, Some(pb::Status::Offline)),
            },
        };
        let peers: Vec<usize> = self.established().collect();
        match change {
            Some(status) => {
                let summary = self.local_summary(agent.as_str(), status);
                self.summaries.insert(agent.to_string(), summary.clone());
                for i in peers {
                    send(i, PeerCommand::Advertise(vec![summary.clone()], Vec::new()));
                }
            }
            None => {
                self.summaries.remove(agent.as_str());
                for i in peers {
                    send(
                        i,
                        PeerCommand::Advertise(Vec::new(), vec![agent.to_string()]),
                    );
                }
            }
        }
    }

    fn peer_event(&mut self, index: usize, event: PeerEvent, send: &impl Fn(usize, PeerCommand)) {
        let Some(peer) = self.peer_ids.get(index).cloned() else {
            return;
        };
        match event {
            PeerEvent::Up {
                agent_access_address,
                ..
            } => {
                if let Some(up) = self.peer_up.get_mut(index) {
                    *up = true;
                }
                if let (Some(links), Ok(address), Ok(gateway)) = (
                    &self.links,
                    agent_access_address.parse(),
                    GatewayId::parse(&peer),
                ) {
                    links.set_peer(index as u32, gateway, address);
                }
                let mut table: Vec<pb::AgentSummary> = self.summaries.values().cloned().collect();
                table.extend(
                    self.rib
                        .best_routes()
                        .filter(|(via, _)| *via != peer)
                        .map(|(_, s)| s.clone()),
                );
                send(index, PeerCommand::FullSync(table));
            }
            PeerEvent::Down { disconnected, .. } => {
                if let Some(up) = self.peer_up.get_mut(index) {
                    *up = false;
                }
                if let Some(links) = &self.links {
                    links.remove_peer(index as u32);
                }
                for change in self.rib.remove_peer(&peer) {
                    self.apply(change, !disconnected, send);
                }
            }
            PeerEvent::Learned(summaries) => {
                for s in summaries {
                    if let Some(change) = self.rib.learn(&peer, s) {
                        self.apply(change, false, send);
                    }
                }
            }
            PeerEvent::Withdrawn(agents) => {
                for a in agents {
                    if let Some(change) = self.rib.withdraw(&peer, &a) {
                        self.apply(change, false, send);
                    }
                }
            }
            PeerEvent::Synced => {}
        }
    }

    /// A best route changed: route the shards by it and tell the other peers. `failed`: the
    /// route was lost because a peer failed (not left), so an agent left without any path is
    /// kept as unreachable rather than unknown.
    fn apply(&mut self, change: BestChange, failed: bool, send: &impl Fn(usize, PeerCommand)) {
        let peers: Vec<usize> = self.established().collect();
        match change {
            BestChange::Via { peer, summary } => {
                if self.summaries.contains_key(&summary.agent) {
                    return; // connected here: the local route wins
                }
                if let Some(index) = self.peer_ids.iter().position(|p| *p == peer) {
                    self.table
                        .set(&summary.agent, Route::Peer { peer: index as u32 });
                }
                for i in peers {
                    send(i, PeerCommand::Advertise(vec![summary.clone()], Vec::new()));
                }
            }
            BestChange::Gone { agent } => {
                if self.summaries.contains_key(&agent) {
                    return;
                }
                if failed {
                    self.table.set(&agent, Route::Unreachable);
                } else {
                    self.table.remove(&agent);
                }
                for i in peers {
                    send(i, PeerCommand::Advertise(Vec::new(), vec![agent.clone()]));
                }
            }
        }
    }
}
