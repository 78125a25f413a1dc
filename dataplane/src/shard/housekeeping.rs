//! A shard's housekeeping: its tick (access and hold timers, idle read buffers, lingering
//! closes), the commands of the control plane (limits, links, revocations, drain), and stop.

use std::{rc::Rc, time::Instant};

use agw_proto::{identity::GatewayId, pb::ErrorCode};
use crossbeam_channel::Receiver;
use glommio::spawn_local;

use super::{
    Shard, ShardCommand,
    a2a_servers::keep_a2a_server,
    conn::{Conn, ConnKind, ConnState},
    links::keep_link,
};
use crate::{
    access::{AccessSession, DownReason},
    adapter::Ticked,
    clock::Tick,
    events::ShardEvent,
};

impl Shard {
    /// Timers, idle buffers, lingering closes and orders, every tick, until told to stop.
    /// `tick`: this shard's tick of the dataplane's clock (every `DataplaneConfig::tick`).
    pub(super) async fn housekeeping(
        self: &Rc<Self>,
        commands: Receiver<ShardCommand>,
        tick: &Tick,
    ) {
        loop {
            tick.next().await;
            let mut revoked: Vec<Vec<u8>> = Vec::new();
            let mut peers_revoked: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
            while let Ok(command) = commands.try_recv() {
                match command {
                    ShardCommand::Stop => {
                        self.stop();
                        return;
                    }
                    ShardCommand::Drain(applied) => {
                        self.draining.set(true);
                        let _ = applied.send(self.id);
                    }
                    ShardCommand::Close => {
                        self.wanted.borrow_mut().clear();
                        self.a2a_wanted.borrow_mut().clear();
                        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
                        for conn in conns {
                            self.close_with(&conn, ErrorCode::Draining, "gateway stopping");
                        }
                    }
                    ShardCommand::Abandon => self.abandon(),
                    ShardCommand::Limits(limits) => self.limits.set(limits),
                    ShardCommand::Revoked(serials) => revoked.extend(serials),
                    ShardCommand::PeerRevoked { domain, serials } => {
                        peers_revoked.push((domain, serials));
                    }
                    ShardCommand::Peer {
                        index,
                        gateway,
                        address,
                    } => {
                        let new = self
                            .wanted
                            .borrow_mut()
                            .insert(index, (gateway, address))
                            .is_none();
                        if new {
                            spawn_local(keep_link(self.clone(), index)).detach();
                        }
                    }
                    ShardCommand::A2aServer {
                        agent,
                        endpoint,
                        address,
                    } => {
                        let before = self
                            .a2a_wanted
                            .borrow_mut()
                            .insert(agent.clone(), (endpoint, address));
                        match before {
                            None => {
                                spawn_local(keep_a2a_server(self.clone(), agent)).detach();
                            }
                            // Moved: the connection closes, and is dialled again to the new URL.
                            Some(old) if old != self.a2a_wanted.borrow()[&agent] => {
                                let conn = self.a2a_conns.borrow().get(&agent).cloned();
                                if let Some(conn) = conn {
                                    self.close_after_flush(&conn);
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    ShardCommand::A2aServerGone { agent } => {
                        self.a2a_wanted.borrow_mut().remove(&agent);
                        let conn = self.a2a_conns.borrow_mut().remove(&agent);
                        if let Some(conn) = conn {
                            // Gone from the registry: its route goes, as a native agent's
                            // does when it deregisters (not left offline).
                            if !conn.down_reported.replace(true) {
                                let _ = self.events.send(ShardEvent::AgentDown {
                                    agent,
                                    shard: self.id,
                                    connection: conn.id,
                                    reason: DownReason::Deregistered,
                                });
                            }
                            self.close_after_flush(&conn);
                        }
                    }
                    ShardCommand::PeerGone { index } => {
                        self.wanted.borrow_mut().remove(&index);
                        let link = self.links.borrow_mut().remove(&index);
                        if let Some(link) = link {
                            self.close_after_flush(&link);
                        }
                    }
                }
            }
            let now = Instant::now();
            self.forget_arrivals(now);
            let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
            for conn in conns {
                let due = conn
                    .session
                    .borrow()
                    .as_ref()
                    .and_then(AccessSession::next_timeout)
                    .is_some_and(|t| t <= now);
                if due {
                    if let Some(s) = conn.session.borrow_mut().as_mut() {
                        s.handle_timeout(now);
                    }
                    self.apply_actions(&conn);
                }
                let agent_revoked = matches!(conn.kind, ConnKind::Agent)
                    && !revoked.is_empty()
                    && revoked.contains(&conn.serial.borrow());
                if agent_revoked || peer_revoked(&conn, &peers_revoked) {
                    self.close_with(&conn, ErrorCode::CertRevoked, "certificate revoked");
                }
                self.tick_adapter(&conn, now);
                if !conn.active.replace(false) {
                    conn.decoder.borrow_mut().release_if_idle();
                }
                if let ConnState::Flushing(since) = conn.state.get()
                    && now.duration_since(since) > self.config.close_linger
                {
                    conn.shut();
                }
            }
            self.flush_cross().await;
        }
    }

    /// An adapted connection's timers: an answer written, or frames relayed and the
    /// connection dialled again.
    fn tick_adapter(&self, conn: &Conn, now: Instant) {
        let mut adapter = conn.adapter.borrow_mut();
        let Some(adapter) = adapter.as_mut() else {
            return;
        };
        let mut up = self.encoder.borrow_mut();
        match adapter.tick(now, &mut up) {
            Ticked::Nothing => {}
            Ticked::Write => conn.writer.notify(),
            Ticked::Redial => {
                // The NACKs wait in the decoder; the reader relays them once it sees the
                // socket end, and dials again.
                conn.decoder.borrow_mut().extend_from_slice(&up.take());
                conn.shut();
            }
        }
    }

    pub(super) fn stop(&self) {
        let conns: Vec<Rc<Conn>> = self.conns.borrow().values().cloned().collect();
        for conn in conns {
            conn.shut();
            self.cleanup(&conn, ErrorCode::DestinationOffline);
        }
    }

    /// The drain's deadline passed: every connection still holding relayed frames is closed,
    /// its frames NACKed `DRAINING` to their senders (a frame half written cannot be taken
    /// back, so its connection cannot stay).
    pub(super) fn abandon(&self) {
        let stuck: Vec<Rc<Conn>> = self
            .conns
            .borrow()
            .values()
            .filter(|c| !c.out.borrow().marks.is_empty())
            .cloned()
            .collect();
        for conn in stuck {
            tracing::warn!(
                shard = self.id,
                connection = conn.id,
                frames = conn.out.borrow().marks.len(),
                "drain deadline: queued frames NACKed, connection closed"
            );
            conn.shut();
            self.cleanup(&conn, ErrorCode::Draining);
        }
    }
}

/// Whether `conn` is a peer gateway's link whose certificate one of `revoked` (a domain and
/// the serials its authority's CRL lists) names.
fn peer_revoked(conn: &Conn, revoked: &[(String, Vec<Vec<u8>>)]) -> bool {
    let ConnKind::Peer { gateway, .. } = &conn.kind else {
        return false;
    };
    let domain = GatewayId::parse(gateway).map(|g| g.domain().to_owned());
    revoked.iter().any(|(d, serials)| {
        domain.as_deref().is_ok_and(|own| own == d) && serials.contains(&conn.serial.borrow())
    })
}
