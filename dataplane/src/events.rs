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
        /// The permission scopes its certificate grants, read at access: authorization
        /// rules on scopes match it by these as well as by the authority's records.
        scopes: Vec<String>,
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
    /// Agent -> its live connections, oldest first; the route is the newest.
    owners: HashMap<AgentId, Vec<(u16, u32)>>,
}

impl LocalRoutes {
    /// An empty set.
    pub fn new() -> LocalRoutes {
        LocalRoutes::default()
    }

    /// Whether `agent` holds a connection here now.
    pub fn is_attached(&self, agent: &str) -> bool {
        AgentId::parse(agent).is_ok_and(|a| self.owners.contains_key(&a))
    }

    /// Applies one event to `table` (not yet published); returns whether the agent's
    /// presence changed (`false` for a connection that left while another of the agent's
    /// stays). An agent that accessed again on a new connection is routed there; when that
    /// one leaves, its route goes back to the newest connection still open, and turns
    /// offline only when none is.
    pub fn apply(&mut self, table: &mut RoutingTable, event: &ShardEvent) -> bool {
        match event {
            ShardEvent::AgentUp {
                agent,
                shard,
                connection,
                ..
            } => {
                self.owners
                    .entry(agent.clone())
                    .or_default()
                    .push((*shard, *connection));
                table.set(
                    agent.as_str(),
                    Route::Local {
                        shard: *shard,
                        connection: *connection,
                    },
                );
                true
            }
            ShardEvent::AgentStatus { .. } => true,
            ShardEvent::AgentDown {
                agent,
                shard,
                connection,
                reason,
            } => {
                let Some(live) = self.owners.get_mut(agent) else {
                    return false;
                };
                let Some(at) = live.iter().position(|c| *c == (*shard, *connection)) else {
                    return false;
                };
                live.remove(at);
                if let Some(&(shard, connection)) = live.last() {
                    if *reason != DownReason::Deregistered {
                        table.set(agent.as_str(), Route::Local { shard, connection });
                        return false;
                    }
                    // Deregistered: its other connections close too; the route goes now.
                }
                self.owners.remove(agent);
                match reason {
                    DownReason::Deregistered => table.remove(agent.as_str()),
                    _ => table.set(agent.as_str(), Route::Offline),
                }
                true
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
                    Ok(event) => {
                        routes.apply(&mut table, &event);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn up(connection: u32) -> ShardEvent {
        ShardEvent::AgentUp {
            agent: AgentId::parse("spiffe://a.example/agent/alice").unwrap(),
            shard: 0,
            connection,
            serial: Vec::new(),
            scopes: Vec::new(),
        }
    }

    fn down(connection: u32, reason: DownReason) -> ShardEvent {
        ShardEvent::AgentDown {
            agent: AgentId::parse("spiffe://a.example/agent/alice").unwrap(),
            shard: 0,
            connection,
            reason,
        }
    }

    fn route(table: &mut RoutingTable) -> Option<Route> {
        table.publish();
        table
            .reader()
            .load()
            .lookup("spiffe://a.example/agent/alice")
    }

    #[test]
    fn a_route_goes_back_to_an_agents_older_connection_when_its_newest_leaves() {
        let mut table = RoutingTable::new();
        let mut routes = LocalRoutes::new();
        assert!(routes.apply(&mut table, &up(1)));
        assert!(routes.apply(&mut table, &up(2)));
        let local = |connection| {
            Some(Route::Local {
                shard: 0,
                connection,
            })
        };
        assert_eq!(route(&mut table), local(2));
        // The newest leaves: the older still holds the agent, no change of presence.
        assert!(!routes.apply(&mut table, &down(2, DownReason::Disconnected)));
        assert_eq!(route(&mut table), local(1));
        // A late report of a connection already gone changes nothing.
        assert!(!routes.apply(&mut table, &down(2, DownReason::Disconnected)));
        assert!(routes.apply(&mut table, &down(1, DownReason::Disconnected)));
        assert_eq!(route(&mut table), Some(Route::Offline));
        // Deregistered from one connection: gone, whatever else it holds.
        routes.apply(&mut table, &up(3));
        routes.apply(&mut table, &up(4));
        assert!(routes.apply(&mut table, &down(3, DownReason::Deregistered)));
        assert_eq!(route(&mut table), None);
        assert!(!routes.apply(&mut table, &down(4, DownReason::Disconnected)));
    }
}
