//! Route selection across peers: a path vector (draft 2.5, route management).
//!
//! Every summary carries the gateway IDs it passed, nearest first. For each remote agent the
//! [`Rib`] keeps what each peer advertised and picks the best: the shortest path, then the
//! smallest next-hop gateway ID, then the smallest full path (so every gateway picks the same
//! way from the same inputs). Loops never get here: a session refuses a summary whose path
//! holds this gateway. A change of the best route is reported as a [`BestChange`]: the
//! control plane turns it into a routing-table update for the shards and into
//! advertisements to the other peers.
//!
//! A peer whose gateway is temporarily offline (its operator's maintenance mode) is
//! *paused*: what it advertised is kept but not chosen, so other paths take over; an agent
//! reached only through paused peers is *held* (known, not routed to) until one resumes.

use std::collections::{HashMap, HashSet};

use agw_proto::{identity::AgentId, pb};

/// The best route to an agent changed.
#[derive(Debug, Clone, PartialEq)]
pub enum BestChange {
    /// Now reached through `peer`, as `summary` says (its path starts at `peer`).
    Via {
        /// The next-hop gateway.
        peer: String,
        /// The summary as the peer sent it.
        summary: pb::AgentSummary,
    },
    /// No peer offers a route any more.
    Gone {
        /// The agent.
        agent: String,
    },
    /// Only paused peers offer a route: the agent is temporarily offline.
    Held {
        /// The agent.
        agent: String,
    },
}

/// The routes learned from peers.
#[derive(Debug, Default)]
pub struct Rib {
    /// Agent -> peer -> summary.
    candidates: HashMap<String, HashMap<String, pb::AgentSummary>>,
    /// Agent -> the peer of its best route.
    best: HashMap<String, String>,
    /// Peers whose gateways are temporarily offline.
    paused: HashSet<String>,
    /// Agents with candidates from paused peers only.
    held: HashSet<String>,
    /// Peer -> domain -> how many of its agents the peer advertised: the domains whose
    /// frames a peer may relay.
    domains: HashMap<String, HashMap<String, usize>>,
    /// A peer's set of domains changed since [`Rib::take_domains`].
    domains_changed: bool,
}

/// Orders candidates: shortest path, then smallest next hop, then smallest path.
fn better(a: &pb::AgentSummary, a_peer: &str, b: &pb::AgentSummary, b_peer: &str) -> bool {
    (a.path.len(), a_peer, &a.path) < (b.path.len(), b_peer, &b.path)
}

impl Rib {
    /// An empty table.
    pub fn new() -> Rib {
        Rib::default()
    }

    /// The peer and summary of the best route to `agent`.
    pub fn best(&self, agent: &str) -> Option<(&str, &pb::AgentSummary)> {
        let peer = self.best.get(agent)?;
        let summary = self.candidates.get(agent)?.get(peer)?;
        Some((peer.as_str(), summary))
    }

    /// Every best route: what a new peer gets in its full sync.
    pub fn best_routes(&self) -> impl Iterator<Item = (&str, &pb::AgentSummary)> {
        self.best.iter().filter_map(|(agent, peer)| {
            self.candidates
                .get(agent)
                .and_then(|c| c.get(peer))
                .map(|s| (peer.as_str(), s))
        })
    }

    /// Agents with a route.
    pub fn len(&self) -> usize {
        self.best.len()
    }

    /// Whether no agent has a route.
    pub fn is_empty(&self) -> bool {
        self.best.is_empty()
    }

    /// `peer` advertised `summary` (checked by its session). Returns the change of the best
    /// route, if any.
    pub fn learn(&mut self, peer: &str, summary: pb::AgentSummary) -> Option<BestChange> {
        let agent = summary.agent.clone();
        if let Some(old) = self.candidates.get(&agent).and_then(|c| c.get(peer))
            && old.origin == summary.origin
            && old.version > summary.version
        {
            return None; // stale: an older version of what the peer already told us
        }
        let before = self.snapshot(&agent);
        let fresh = self
            .candidates
            .entry(agent.clone())
            .or_default()
            .insert(peer.to_owned(), summary)
            .is_none();
        if fresh {
            self.count_domain(peer, &agent, true);
        }
        self.reselect(&agent, before)
    }

    /// Whether a peer's set of advertised domains changed since the last call.
    pub fn take_domains_changed(&mut self) -> bool {
        std::mem::take(&mut self.domains_changed)
    }

    /// The domains `peer` advertised agents of now.
    pub fn domains_of(&self, peer: &str) -> Vec<String> {
        self.domains
            .get(peer)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn count_domain(&mut self, peer: &str, agent: &str, added: bool) {
        // Sessions let only valid agent IDs into summaries.
        let Ok(agent) = AgentId::parse(agent) else {
            return;
        };
        let domain = agent.domain();
        let domains = self.domains.entry(peer.to_owned()).or_default();
        if added {
            let count = domains.entry(domain.to_owned()).or_default();
            *count += 1;
            self.domains_changed |= *count == 1;
        } else if let Some(count) = domains.get_mut(domain) {
            *count -= 1;
            if *count == 0 {
                domains.remove(domain);
                self.domains_changed = true;
            }
            if domains.is_empty() {
                self.domains.remove(peer);
            }
        }
    }

    /// `peer` withdrew `agent`.
    pub fn withdraw(&mut self, peer: &str, agent: &str) -> Option<BestChange> {
        let before = self.snapshot(agent);
        self.candidates.get_mut(agent)?.remove(peer)?;
        self.count_domain(peer, agent, false);
        self.reselect(agent, before)
    }

    /// `peer` is gone: everything it advertised is withdrawn (and it is no longer paused).
    pub fn remove_peer(&mut self, peer: &str) -> Vec<BestChange> {
        let changes = self
            .agents_of(peer)
            .into_iter()
            .filter_map(|a| self.withdraw(peer, &a))
            .collect();
        self.paused.remove(peer);
        changes
    }

    /// `peer`'s gateway went temporarily offline (`paused`) or back to running: its routes
    /// stop or start counting. Returns the changes of best routes.
    pub fn set_paused(&mut self, peer: &str, paused: bool) -> Vec<BestChange> {
        let changed = if paused {
            self.paused.insert(peer.to_owned())
        } else {
            self.paused.remove(peer)
        };
        if !changed {
            return Vec::new();
        }
        self.agents_of(peer)
            .into_iter()
            .filter_map(|a| {
                let before = self.snapshot(&a);
                self.reselect(&a, before)
            })
            .collect()
    }

    /// Whether `agent` is known only through paused peers.
    pub fn is_held(&self, agent: &str) -> bool {
        self.held.contains(agent)
    }

    /// Agents `peer` advertised, sorted (so changes come out in the same order everywhere).
    fn agents_of(&self, peer: &str) -> Vec<String> {
        let mut agents: Vec<String> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.contains_key(peer))
            .map(|(a, _)| a.clone())
            .collect();
        agents.sort();
        agents
    }

    fn snapshot(&self, agent: &str) -> Option<(String, pb::AgentSummary)> {
        self.best(agent).map(|(p, s)| (p.to_owned(), s.clone()))
    }

    /// Picks the best candidate again; reports it if the route (peer or summary) changed.
    fn reselect(
        &mut self,
        agent: &str,
        before: Option<(String, pb::AgentSummary)>,
    ) -> Option<BestChange> {
        let mut best: Option<(&str, &pb::AgentSummary)> = None;
        let mut any = false;
        for (peer, summary) in self.candidates.get(agent).into_iter().flatten() {
            any = true;
            if self.paused.contains(peer) {
                continue;
            }
            if best.is_none_or(|(bp, bs)| better(summary, peer, bs, bp)) {
                best = Some((peer.as_str(), summary));
            }
        }
        let after = best.map(|(p, s)| (p.to_owned(), s.clone()));
        match after {
            Some((peer, summary)) => {
                let was_held = self.held.remove(agent);
                if !was_held && before.as_ref() == Some(&(peer.clone(), summary.clone())) {
                    return None;
                }
                self.best.insert(agent.to_owned(), peer.clone());
                Some(BestChange::Via { peer, summary })
            }
            None if any => {
                self.best.remove(agent);
                self.held
                    .insert(agent.to_owned())
                    .then(|| BestChange::Held {
                        agent: agent.to_owned(),
                    })
            }
            None => {
                self.candidates.remove(agent);
                self.best.remove(agent);
                let was_held = self.held.remove(agent);
                (before.is_some() || was_held).then(|| BestChange::Gone {
                    agent: agent.to_owned(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "spiffe://b.example/agw/b1";
    const C: &str = "spiffe://c.example/agw/c1";
    const D: &str = "spiffe://d.example/agw/d1";
    const Z: &str = "spiffe://d.example/agent/z";

    fn via(path: &[&str], version: u64) -> pb::AgentSummary {
        pb::AgentSummary {
            agent: Z.into(),
            origin: path.last().map(|s| (*s).to_owned()).unwrap_or_default(),
            path: path.iter().map(|s| (*s).to_owned()).collect(),
            version,
            ..Default::default()
        }
    }

    fn peer_of(change: Option<BestChange>) -> Option<String> {
        match change {
            Some(BestChange::Via { peer, .. }) => Some(peer),
            Some(BestChange::Gone { .. }) => Some("gone".into()),
            Some(BestChange::Held { .. }) => Some("held".into()),
            None => None,
        }
    }

    #[test]
    fn each_peer_s_domains_follow_what_it_advertised() {
        let mut rib = Rib::new();
        assert!(!rib.take_domains_changed());
        rib.learn(B, via(&[B, C, D], 1));
        assert!(rib.take_domains_changed());
        assert_eq!(rib.domains_of(B), vec!["d.example".to_owned()]);
        // A second agent of the same domain changes nothing.
        let mut other = via(&[B, C, D], 1);
        other.agent = "spiffe://d.example/agent/y".into();
        rib.learn(B, other);
        assert!(!rib.take_domains_changed());
        rib.withdraw(B, Z);
        assert!(!rib.take_domains_changed());
        assert_eq!(rib.domains_of(B), vec!["d.example".to_owned()]);
        rib.remove_peer(B);
        assert!(rib.take_domains_changed());
        assert!(rib.domains_of(B).is_empty());
    }

    #[test]
    fn the_shortest_path_wins_and_the_next_best_takes_over() {
        // A triangle: z (in d) reachable from us through b directly (b > d) and through c
        // (c > b > d).
        let mut rib = Rib::new();
        assert_eq!(peer_of(rib.learn(C, via(&[C, B, D], 1))), Some(C.into()));
        assert_eq!(peer_of(rib.learn(B, via(&[B, D], 1))), Some(B.into()));
        // A longer path from c changes nothing.
        assert_eq!(rib.learn(C, via(&[C, B, D], 2)), None);
        assert_eq!(rib.best(Z).map(|(p, _)| p), Some(B));
        // b goes away: c's path takes over at once.
        let changes = rib.remove_peer(B);
        assert_eq!(changes.len(), 1);
        assert_eq!(rib.best(Z).map(|(p, s)| (p, s.path.len())), Some((C, 3)));
        // c withdraws: no route.
        assert_eq!(peer_of(rib.withdraw(C, Z)), Some("gone".into()));
        assert!(rib.is_empty());
    }

    #[test]
    fn equal_paths_break_ties_the_same_way_in_any_order() {
        let mut one = Rib::new();
        one.learn(C, via(&[C, D], 1));
        one.learn(B, via(&[B, D], 1));
        let mut two = Rib::new();
        two.learn(B, via(&[B, D], 1));
        two.learn(C, via(&[C, D], 1));
        // The smaller next-hop ID wins on both.
        assert_eq!(one.best(Z).map(|(p, _)| p), Some(B));
        assert_eq!(two.best(Z).map(|(p, _)| p), Some(B));
    }

    #[test]
    fn a_paused_peer_is_passed_over_and_its_only_routes_are_held() {
        const Y: &str = "spiffe://d.example/agent/y";
        let mut rib = Rib::new();
        rib.learn(B, via(&[B, D], 1));
        rib.learn(C, via(&[C, B, D], 1));
        let mut y = via(&[B, D], 1);
        y.agent = Y.into();
        rib.learn(B, y);
        // b goes into maintenance: z moves to c's longer path, y (only through b) is held.
        let changes = rib.set_paused(B, true);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(rib.best(Z).map(|(p, _)| p), Some(C));
        assert!(rib.is_held(Y) && rib.best(Y).is_none());
        assert!(changes.contains(&BestChange::Held { agent: Y.into() }));
        assert!(
            rib.set_paused(B, true).is_empty(),
            "no change, nothing to say"
        );
        // A new version from the paused peer changes nothing visible.
        let mut y2 = via(&[B, D], 2);
        y2.agent = Y.into();
        assert_eq!(rib.learn(B, y2), None);
        // Back to running: both return to b, y with its newest version.
        let changes = rib.set_paused(B, false);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(rib.best(Y).map(|(p, s)| (p, s.version)), Some((B, 2)));
        assert_eq!(rib.best(Z).map(|(p, _)| p), Some(B));
        // Paused again, then gone: the held agent is reported gone.
        rib.set_paused(B, true);
        let gone = rib.remove_peer(B);
        assert!(
            gone.contains(&BestChange::Gone { agent: Y.into() }),
            "{gone:?}"
        );
        assert_eq!(rib.best(Z).map(|(p, _)| p), Some(C));
        assert!(!rib.is_held(Y));
    }

    #[test]
    fn a_new_version_from_the_best_peer_is_a_change_and_a_stale_one_is_not() {
        let mut rib = Rib::new();
        rib.learn(B, via(&[B, D], 5));
        let mut newer = via(&[B, D], 6);
        newer.status = pb::Status::TemporarilyOffline as i32;
        assert!(matches!(rib.learn(B, newer), Some(BestChange::Via { .. })));
        assert_eq!(rib.learn(B, via(&[B, D], 4)), None, "stale");
        assert_eq!(rib.best(Z).map(|(_, s)| s.version), Some(6));
        assert_eq!(rib.best_routes().count(), 1);
    }
}
