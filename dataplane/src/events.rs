//! What shards tell the control plane, and the keeper of local routes that turns it into
//! routing snapshots.
//!
//! Shards send [`ShardEvent`]s over an unbounded channel and never wait for an answer: the
//! channel holds at most a few events per connection. [`LocalRoutes`] applies them to the
//! [`RoutingTable`] and publishes; the control plane runs it on its own thread (the peering
//! issue adds routes through peers beside it).

use std::{
    collections::HashMap,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agw_proto::{identity::AgentId, pb};
use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::{
    access::DownReason,
    routing::{Route, RoutingTable},
};

/// An agent's connection changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// The agent completed access on this shard and connection.
    AgentUp {
        /// Its identity.
        agent: AgentId,
        /// The shard that owns the connection.
        shard: u16,
        /// The connection's number on that shard.
        connection: u32,
        /// Its certificate's serial, to close the session if it is revoked.
        serial: Vec<u8>,
    },
    /// The agent reported another status.
    AgentStatus {
        /// Its identity.
        agent: AgentId,
        /// The status it reported.
        status: pb::Status,
    },
    /// The agent left this connection.
    AgentDown {
        /// Its identity.
        agent: AgentId,
        /// The shard that owned the connection.
        shard: u16,
        /// The connection it left.
        connection: u32,
        /// Why.
        reason: DownReason,
    },
}

/// Local agents' routes: which connection each accessed agent is on.
#[derive(Debug, Default)]
pub struct LocalRoutes {
    /// Agent -> the connection that holds its route now.
    owners: HashMap<AgentId, (u16, u32)>,
}

impl LocalRoutes {
    /// An empty set.
    pub fn new() -> LocalRoutes {
        LocalRoutes::default()
    }

    /// Applies one event to `table` (not yet published). An agent that accessed again on a new
    /// connection keeps that one: a late `AgentDown` from its old connection changes nothing.
    pub fn apply(&mut self, table: &mut RoutingTable, event: &ShardEvent) {
        match event {
            ShardEvent::AgentUp {
                agent,
                shard,
                connection,
                ..
            } => {
                self.owners.insert(agent.clone(), (*shard, *connection));
                table.set(
                    agent.as_str(),
                    Route::Local {
                        shard: *shard,
                        connection: *connection,
                    },
                );
            }
            ShardEvent::AgentStatus { .. } => {}
            ShardEvent::AgentDown {
                agent,
                shard,
                connection,
                reason,
            } => {
                if self.owners.get(agent) != Some(&(*shard, *connection)) {
                    return;
                }
                self.owners.remove(agent);
                match reason {
                    DownReason::Deregistered => table.remove(agent.as_str()),
                    _ => table.set(agent.as_str(), Route::Offline),
                }
            }
        }
    }
}

/// Runs [`LocalRoutes`] on its own thread until every sender of `events` is gone: each burst
/// of events is applied, then published as one snapshot.
pub fn spawn_local_routes(
    mut table: RoutingTable,
    events: Receiver<ShardEvent>,
) -> std::io::Result<JoinHandle<RoutingTable>> {
    std::thread::Builder::new()
        .name("agw-routes".into())
        .spawn(move || {
            let mut routes = LocalRoutes::new();
            loop {
                match events.recv_timeout(Duration::from_secs(1)) {
                    Ok(event) => routes.apply(&mut table, &event),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return table,
                }
                // Take the rest of the burst, bounded so a flood still publishes every ms.
                let deadline = Instant::now() + Duration::from_millis(1);
                while let Ok(event) = events.try_recv() {
                    routes.apply(&mut table, &event);
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                table.publish();
            }
        })
}
