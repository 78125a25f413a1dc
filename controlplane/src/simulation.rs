//! A federation of gateways in one process, on simulated time (issue 19): each gateway is the
//! control plane's own route state (the code the daemon runs, with no relay or registry
//! attached) and one [`PeerSession`] per neighbour, the sans-IO peering state machine, wired
//! by a simulated network that delivers each frame one link latency after it was sent.
//! Nothing reads the clock: time is the event queue's. The `agw-simulate` binary runs it and
//! reports convergence after start, after a gateway fails and after a link flaps.
//!
//! ```text
//!   gateway i: State (RIB, routing table) <--PeerEvent/PeerCommand--> PeerSession per link
//!                                                                       |  frames
//!   event queue (time, sequence): start, connect, frame, transport down, timer  <--+
//! ```

use std::{
    cell::RefCell,
    cmp::Reverse,
    collections::BinaryHeap,
    time::{Duration, Instant},
};

use agw_dataplane::{
    events::ShardEvent,
    routing::{Route, RoutingTable},
};
use agw_proto::{
    Message,
    identity::{AgentId, GatewayId},
};
use prost::Message as _;

use crate::{
    control::State,
    peering::{
        driver::{PeerCommand, PeerEvent},
        session::{Input, Output, PeerConfig, PeerSession},
    },
};

/// Which gateways link to which.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Its name, for reports.
    pub name: String,
    /// How many gateways.
    pub gateways: usize,
    /// Each link once, lower index first.
    pub links: Vec<(usize, usize)>,
}

impl Topology {
    /// Gateway i links to i + 1: the longest paths.
    pub fn chain(gateways: usize) -> Topology {
        Topology {
            name: "chain".into(),
            gateways,
            links: (1..gateways).map(|i| (i - 1, i)).collect(),
        }
    }

    /// A random connected graph of average degree about `degree`: a random tree (each gateway
    /// links to one before it), then random extra links.
    pub fn random(gateways: usize, degree: usize, seed: u64) -> Topology {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut links: Vec<(usize, usize)> = (1..gateways).map(|i| (rng.usize(0..i), i)).collect();
        let mut seen: hashbrown::HashSet<(usize, usize)> = links.iter().copied().collect();
        let wanted = gateways * degree / 2;
        let mut tries = 0;
        while links.len() < wanted && tries < wanted * 20 && gateways > 2 {
            tries += 1;
            let (a, b) = (rng.usize(0..gateways), rng.usize(0..gateways));
            let link = (a.min(b), a.max(b));
            if a != b && seen.insert(link) {
                links.push(link);
            }
        }
        Topology {
            name: format!("random (degree {degree})"),
            gateways,
            links,
        }
    }

    /// Three tiers as the Internet's: a full mesh of `core` gateways; a tenth of the rest in
    /// the middle, each linked to two core gateways; the rest at the edge, each linked to two
    /// middle gateways.
    pub fn tiered(gateways: usize, core: usize, seed: u64) -> Topology {
        let mut rng = fastrand::Rng::with_seed(seed);
        let core = core.min(gateways);
        let middle = ((gateways - core) / 10).max(1).min(gateways - core);
        let mut links = Vec::new();
        for a in 0..core {
            for b in a + 1..core {
                links.push((a, b));
            }
        }
        let mut two_of = |first: usize, count: usize, of: usize| {
            let a = first + rng.usize(0..count);
            let mut b = first + rng.usize(0..count);
            if count > 1 {
                while b == a {
                    b = first + rng.usize(0..count);
                }
            }
            let mut out = vec![(a.min(of), a.max(of))];
            if b != a {
                out.push((b.min(of), b.max(of)));
            }
            out
        };
        for m in core..core + middle {
            links.extend(two_of(0, core.max(1), m));
        }
        for e in core + middle..gateways {
            links.extend(two_of(core, middle, e));
        }
        links.retain(|(a, b)| a != b);
        Topology {
            name: format!("tiered ({core} core, {middle} middle)"),
            gateways,
            links,
        }
    }

    /// Each gateway's neighbours, by index.
    pub fn neighbours(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.gateways];
        for &(a, b) in &self.links {
            out[a].push(b);
            out[b].push(a);
        }
        out
    }
}

/// What the network carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Frames of every kind.
    pub frames: u64,
    /// RESOURCE_UPDATE frames (routes advertised or withdrawn).
    pub updates: u64,
    /// Summaries advertised in them.
    pub advertised: u64,
    /// Agents withdrawn in them.
    pub withdrawn: u64,
    /// Their encoded bytes.
    pub update_bytes: u64,
}

/// One gateway of the federation.
struct Gateway {
    id: GatewayId,
    state: State,
    sessions: Vec<PeerSession>,
    /// For each session: the neighbour, and this gateway's index among its sessions.
    peers: Vec<(usize, usize)>,
    /// Each session's transport is up.
    connected: Vec<bool>,
    /// When each session's timer is due, as queued.
    timer: Vec<Option<Duration>>,
    alive: bool,
}

#[derive(Debug)]
enum What {
    /// A transport between `gateway`'s session `index` and its neighbour's opens (or, the
    /// neighbour being down, fails).
    Connect { gateway: usize, index: usize },
    /// A frame arrives at `gateway`'s session `index`.
    Frame {
        gateway: usize,
        index: usize,
        message: Box<Message>,
    },
    /// The transport of `gateway`'s session `index` closes.
    Down { gateway: usize, index: usize },
    /// `gateway`'s session `index`'s timer.
    Timer { gateway: usize, index: usize },
}

/// Something due at `at`; events due at once happen in the order they were queued.
#[derive(Debug)]
struct Event {
    at: Duration,
    sequence: u64,
    what: What,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.sequence).cmp(&(other.at, other.sequence))
    }
}

/// The federation and its network.
pub struct Federation {
    gateways: Vec<Gateway>,
    queue: BinaryHeap<Reverse<Event>>,
    sequence: u64,
    now: Duration,
    epoch: Instant,
    latency: Duration,
    /// What the network carried so far.
    pub traffic: Traffic,
    /// When a route last changed anywhere (an update delivered), since the start.
    pub last_update: Duration,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("gateways", &self.gateways.len())
            .field("now", &self.now)
            .field("traffic", &self.traffic)
            .finish()
    }
}

/// Gateway `i`'s ID: its own domain, `d<i>.example`.
pub fn gateway_id(i: usize) -> GatewayId {
    GatewayId::parse(&format!("spiffe://d{i}.example/agw/g{i}"))
        .unwrap_or_else(|_| unreachable!("a well-formed gateway ID"))
}

/// Agent `j` of gateway `i`.
pub fn agent_id(i: usize, j: usize) -> AgentId {
    AgentId::parse(&format!("spiffe://d{i}.example/agent/a{j}"))
        .unwrap_or_else(|_| unreachable!("a well-formed agent ID"))
}

impl Federation {
    /// The gateways of `topology`, each with `agents` agents attached, links of `latency`,
    /// updates to each peer at most every `interval`; nothing started yet.
    pub fn new(
        topology: &Topology,
        agents: usize,
        latency: Duration,
        interval: Duration,
    ) -> Federation {
        let neighbours = topology.neighbours();
        let mut gateways: Vec<Gateway> = (0..topology.gateways)
            .map(|i| {
                let id = gateway_id(i);
                let peer_ids = neighbours[i].iter().map(|&n| gateway_id(n).to_string());
                let state = State::new(id.clone(), RoutingTable::new(), peer_ids.collect());
                let sessions = neighbours[i]
                    .iter()
                    .map(|&n| {
                        let mut config = PeerConfig::new(id.clone(), gateway_id(n));
                        // One side dials: the lower index.
                        config.dial = i < n;
                        config.max_summaries = None;
                        config.advertisement_interval = interval;
                        PeerSession::new(config)
                    })
                    .collect();
                let count = neighbours[i].len();
                Gateway {
                    id,
                    state,
                    sessions,
                    peers: Vec::new(),
                    connected: vec![false; count],
                    timer: vec![None; count],
                    alive: true,
                }
            })
            .collect();
        for i in 0..gateways.len() {
            gateways[i].peers = neighbours[i]
                .iter()
                .map(|&n| {
                    let back = neighbours[n].iter().position(|&m| m == i).unwrap_or(0);
                    (n, back)
                })
                .collect();
        }
        for (i, gateway) in gateways.iter_mut().enumerate() {
            for j in 0..agents {
                let up = ShardEvent::AgentUp {
                    agent: agent_id(i, j),
                    shard: 0,
                    connection: j as u32,
                    serial: Vec::new(),
                    scopes: Vec::new(),
                };
                gateway.state.shard_event(&up, &|_, _| {});
            }
            gateway.state.table.publish();
        }
        Federation {
            gateways,
            queue: BinaryHeap::new(),
            sequence: 0,
            now: Duration::ZERO,
            epoch: Instant::now(),
            latency,
            traffic: Traffic::default(),
            last_update: Duration::ZERO,
        }
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Gives back the event queue's room beyond what is queued (it grows to the largest burst
    /// of frames in flight): call before measuring what the gateways hold.
    pub fn compact(&mut self) {
        self.queue.shrink_to_fit();
    }

    /// Gateways not failed.
    pub fn live_gateways(&self) -> usize {
        self.gateways.iter().filter(|g| g.alive).count()
    }

    /// Starts every session (diallers dial).
    pub fn start(&mut self) {
        for g in 0..self.gateways.len() {
            for index in 0..self.gateways[g].sessions.len() {
                self.input(g, index, Input::Start);
            }
        }
    }

    /// Runs until simulated time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.queue.peek().is_some_and(|Reverse(e)| e.at <= until) {
            let Some(Reverse(event)) = self.queue.pop() else {
                break;
            };
            self.now = event.at;
            self.happen(event.what);
        }
        self.now = until;
    }

    /// Gateway `g` fails for good: its transports close (its neighbours see them go, as after
    /// a reset), and it neither answers nor dials.
    pub fn fail(&mut self, g: usize) {
        self.gateways[g].alive = false;
        for index in 0..self.gateways[g].sessions.len() {
            if self.gateways[g].connected[index] {
                self.gateways[g].connected[index] = false;
                let (n, back) = self.gateways[g].peers[index];
                self.at(
                    self.latency,
                    What::Down {
                        gateway: n,
                        index: back,
                    },
                );
            }
        }
    }

    /// The link between `a` and `b` fails (both ends see the transport close); the dialling
    /// side dials again on its own schedule.
    pub fn flap(&mut self, a: usize, b: usize) {
        if let Some(index) = self.gateways[a].peers.iter().position(|&(n, _)| n == b) {
            let (_, back) = self.gateways[a].peers[index];
            self.down(a, index);
            self.down(b, back);
        }
    }

    /// Routes that are wrong: a live gateway without a route to the first agent of another
    /// live gateway it can reach through live gateways, or with a route to one of a failed
    /// or unreachable gateway's; zero once converged.
    pub fn disagreements(&self, agents: usize) -> usize {
        if agents == 0 {
            return 0;
        }
        // Which live gateways reach which: components over links between live gateways.
        let mut component: Vec<usize> = (0..self.gateways.len()).collect();
        fn root(component: &mut [usize], mut g: usize) -> usize {
            while component[g] != g {
                component[g] = component[component[g]];
                g = component[g];
            }
            g
        }
        for (g, gateway) in self.gateways.iter().enumerate() {
            for &(n, _) in &gateway.peers {
                if gateway.alive && self.gateways[n].alive {
                    let (a, b) = (root(&mut component, g), root(&mut component, n));
                    component[a] = b;
                }
            }
        }
        let roots: Vec<usize> = (0..self.gateways.len())
            .map(|g| root(&mut component, g))
            .collect();
        let mut wrong = 0;
        for (i, g) in self.gateways.iter().enumerate() {
            if !g.alive {
                continue;
            }
            for (k, other) in self.gateways.iter().enumerate() {
                if k == i {
                    continue;
                }
                let reachable = other.alive && roots[k] == roots[i];
                let known = g.state.table.current().lookup(agent_id(k, 0).as_str());
                match (reachable, known) {
                    (true, None) | (false, Some(Route::Peer { .. })) => wrong += 1,
                    _ => {}
                }
            }
        }
        wrong
    }

    /// Routes held by every gateway together (local and learned), and summaries in their RIBs.
    pub fn routes_held(&self) -> (usize, usize) {
        self.gateways.iter().fold((0, 0), |(t, r), g| {
            (t + g.state.table.current().len(), r + g.state.rib_len())
        })
    }

    /// Gateway `g`'s route to `agent` as its relay would see it.
    pub fn route(&self, g: usize, agent: &AgentId) -> Option<Route> {
        self.gateways[g]
            .state
            .table
            .current()
            .lookup(agent.as_str())
    }

    /// The path gateway `g` holds to `agent` (the gateways it would cross), if learned.
    pub fn path(&self, g: usize, agent: &AgentId) -> Option<Vec<String>> {
        self.gateways[g].state.best_path(agent.as_str())
    }

    fn at(&mut self, after: Duration, what: What) {
        self.sequence += 1;
        self.queue.push(Reverse(Event {
            at: self.now + after,
            sequence: self.sequence,
            what,
        }));
    }

    fn happen(&mut self, what: What) {
        match what {
            What::Connect { gateway, index } => {
                let (n, back) = self.gateways[gateway].peers[index];
                if !self.gateways[gateway].alive {
                    return;
                }
                if !self.gateways[n].alive {
                    self.input(gateway, index, Input::TransportDown);
                    return;
                }
                self.gateways[gateway].connected[index] = true;
                self.gateways[n].connected[back] = true;
                let (me, them) = (
                    self.gateways[gateway].id.to_string(),
                    self.gateways[n].id.to_string(),
                );
                self.input(
                    gateway,
                    index,
                    Input::TransportUp {
                        dialled: true,
                        identity: them,
                    },
                );
                self.input(
                    n,
                    back,
                    Input::TransportUp {
                        dialled: false,
                        identity: me,
                    },
                );
            }
            What::Frame {
                gateway,
                index,
                message,
            } => {
                if self.gateways[gateway].alive && self.gateways[gateway].connected[index] {
                    if matches!(*message, Message::ResourceUpdate(_)) {
                        self.last_update = self.now;
                    }
                    self.input(gateway, index, Input::Received(message));
                }
            }
            What::Down { gateway, index } => self.down(gateway, index),
            What::Timer { gateway, index } => {
                if self.gateways[gateway].timer[index] == Some(self.now) {
                    self.gateways[gateway].timer[index] = None;
                    self.input(gateway, index, Input::Tick);
                }
            }
        }
    }

    fn down(&mut self, gateway: usize, index: usize) {
        if self.gateways[gateway].connected[index] {
            self.gateways[gateway].connected[index] = false;
            self.input(gateway, index, Input::TransportDown);
        }
    }

    /// Gives `input` to a live gateway's session, then carries out what it asks, what the
    /// route state makes of it, and what that asks of the sessions, until nothing is left.
    fn input(&mut self, gateway: usize, index: usize, input: Input) {
        if !self.gateways[gateway].alive {
            return;
        }
        let now = self.epoch + self.now;
        self.gateways[gateway].sessions[index].handle(input, now);
        self.drain(gateway, index);
    }

    fn drain(&mut self, gateway: usize, index: usize) {
        let mut pending = vec![index];
        while let Some(index) = pending.pop() {
            while let Some(output) = self.gateways[gateway].sessions[index].poll_output() {
                let event = match output {
                    Output::Connect => {
                        self.at(self.latency, What::Connect { gateway, index });
                        None
                    }
                    Output::Send(message) => {
                        self.carry(gateway, index, message);
                        None
                    }
                    Output::Close => {
                        // The session closed it (and knows): the neighbour sees it close
                        // after what was sent before.
                        let (n, back) = self.gateways[gateway].peers[index];
                        if self.gateways[gateway].connected[index] {
                            self.gateways[gateway].connected[index] = false;
                            self.at(
                                self.latency,
                                What::Down {
                                    gateway: n,
                                    index: back,
                                },
                            );
                        }
                        None
                    }
                    Output::PeerUp {
                        hold_time,
                        domain,
                        agent_access_address,
                    } => Some(PeerEvent::Up {
                        domain,
                        hold_time,
                        agent_access_address,
                    }),
                    Output::PeerDown { code, disconnected } => {
                        Some(PeerEvent::Down { disconnected, code })
                    }
                    Output::Learned(summaries) => Some(PeerEvent::Learned(summaries)),
                    Output::Withdrawn(agents) => Some(PeerEvent::Withdrawn(agents)),
                    Output::SyncComplete => Some(PeerEvent::Synced),
                    Output::PeerStatus(status) => Some(PeerEvent::Status(status)),
                    Output::Refused { .. } | Output::Warning(_) => None,
                };
                let Some(event) = event else { continue };
                let now = self.epoch + self.now;
                let commands = RefCell::new(Vec::new());
                self.gateways[gateway]
                    .state
                    .peer_event(index, event, &|to, command| {
                        commands.borrow_mut().push((to, command));
                    });
                self.gateways[gateway].state.table.publish();
                for (to, command) in commands.into_inner() {
                    let session = &mut self.gateways[gateway].sessions[to];
                    match command {
                        PeerCommand::FullSync(table) => session.full_sync(&table),
                        PeerCommand::Advertise(summaries, withdraw) => {
                            session.advertise(&summaries, &withdraw, now);
                        }
                        PeerCommand::SetStatus(_) | PeerCommand::Revoked | PeerCommand::Stop(_) => {
                        }
                    }
                    // Its outputs are drained here, the current session's by this loop.
                    if to != index {
                        pending.push(to);
                    }
                }
            }
            self.schedule_timer(gateway, index);
        }
    }

    fn schedule_timer(&mut self, gateway: usize, index: usize) {
        let Some(due) = self.gateways[gateway].sessions[index].next_timeout() else {
            return;
        };
        let due = due.saturating_duration_since(self.epoch).max(self.now);
        if self.gateways[gateway].timer[index].is_some_and(|queued| queued <= due) {
            return;
        }
        self.gateways[gateway].timer[index] = Some(due);
        let after = due - self.now;
        self.at(after, What::Timer { gateway, index });
    }

    fn carry(&mut self, gateway: usize, index: usize, message: Message) {
        self.traffic.frames += 1;
        if let Message::ResourceUpdate(update) = &message {
            self.traffic.updates += 1;
            self.traffic.advertised += update.advertise.len() as u64;
            self.traffic.withdrawn += update.withdraw.len() as u64;
            self.traffic.update_bytes += update.encoded_len() as u64;
        }
        let (n, back) = self.gateways[gateway].peers[index];
        if self.gateways[gateway].connected[index] {
            self.at(
                self.latency,
                What::Frame {
                    gateway: n,
                    index: back,
                    message: Box::new(message),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::peering::session::DEFAULT_ADVERTISEMENT_INTERVAL;

    const LATENCY: Duration = Duration::from_millis(10);

    /// Runs until every route agrees and nothing moved for 5 s; returns when the last update
    /// arrived, from `began`.
    fn converge(fed: &mut Federation, agents: usize) -> Duration {
        let began = fed.now();
        for _ in 0..2400 {
            fed.run_until(fed.now() + Duration::from_millis(250));
            let last = fed.last_update.max(began);
            if fed.now() - last >= Duration::from_secs(5) && fed.disagreements(agents) == 0 {
                return last - began;
            }
        }
        panic!("not converged: {} routes wrong", fed.disagreements(agents));
    }

    fn ids(gateways: &[usize]) -> Vec<String> {
        gateways
            .iter()
            .map(|&g| gateway_id(g).to_string())
            .collect()
    }

    #[test]
    fn a_triangle_prefers_the_direct_path_as_real_gateways_do() {
        // As controlplane/tests/peering.rs wires three daemons: c (2) hears a's (0) agent
        // from a directly and through b (1); the direct path wins.
        let triangle = Topology {
            name: "triangle".into(),
            gateways: 3,
            links: vec![(0, 1), (1, 2), (0, 2)],
        };
        let mut fed = Federation::new(&triangle, 1, LATENCY, DEFAULT_ADVERTISEMENT_INTERVAL);
        fed.start();
        let took = converge(&mut fed, 1);
        // Connect, OPEN, OPEN_REPLY, the tables, then what waited for the advertisement
        // interval: a few link latencies and one interval.
        assert!(
            took <= DEFAULT_ADVERTISEMENT_INTERVAL + 10 * LATENCY,
            "{took:?}"
        );
        let x = agent_id(0, 0);
        // c's neighbours in link order: b (index 0), then a (index 1).
        assert_eq!(fed.route(2, &x), Some(Route::Peer { peer: 1 }));
        assert_eq!(fed.path(2, &x), Some(ids(&[0])));
        assert_eq!(
            fed.route(0, &x).map(|r| matches!(r, Route::Local { .. })),
            Some(true)
        );
    }

    #[test]
    fn a_chain_routes_end_to_end_parts_when_its_middle_fails_and_heals_after_a_flap() {
        let chain = Topology::chain(5);
        let mut fed = Federation::new(&chain, 2, LATENCY, DEFAULT_ADVERTISEMENT_INTERVAL);
        fed.start();
        converge(&mut fed, 2);
        // The far end reaches gateway 0's agents across the three between, nearest first.
        let far = agent_id(0, 1);
        assert_eq!(fed.path(4, &far), Some(ids(&[3, 2, 1, 0])));
        assert_eq!(fed.route(4, &far), Some(Route::Peer { peer: 0 }));
        // Every gateway heard every other's agents at least once, each over one link.
        let (table, rib) = fed.routes_held();
        assert_eq!(table, 5 * 10);
        assert_eq!(rib, 5 * 8);
        assert!(fed.traffic.advertised >= 4 * 10, "{:?}", fed.traffic);

        // The middle fails: each half keeps its own, and no route crosses the gap.
        fed.fail(2);
        converge(&mut fed, 2);
        assert_ne!(
            fed.route(4, &far).map(|r| matches!(r, Route::Peer { .. })),
            Some(true)
        );
        assert_eq!(fed.path(4, &agent_id(3, 0)), Some(ids(&[3])));
        assert_eq!(fed.path(0, &agent_id(1, 1)), Some(ids(&[1])));

        // A link in the surviving half flaps: the dialler comes back and the routes with it.
        fed.flap(3, 4);
        converge(&mut fed, 2);
        assert_eq!(fed.path(4, &agent_id(3, 0)), Some(ids(&[3])));
    }

    #[test]
    fn topologies_are_connected_and_as_named() {
        for topology in [
            Topology::chain(50),
            Topology::random(200, 4, 7),
            Topology::tiered(300, 10, 7),
        ] {
            let neighbours = topology.neighbours();
            let mut seen = vec![false; topology.gateways];
            let mut stack = vec![0];
            while let Some(g) = stack.pop() {
                if !std::mem::replace(&mut seen[g], true) {
                    stack.extend(&neighbours[g]);
                }
            }
            assert!(
                seen.iter().all(|s| *s),
                "{} is not connected",
                topology.name
            );
            assert!(
                topology.links.iter().all(|(a, b)| a < b),
                "{}",
                topology.name
            );
        }
        assert_eq!(Topology::chain(50).links.len(), 49);
        let random = Topology::random(200, 4, 7);
        assert_eq!(random.links.len(), 400);
        // The core is a full mesh of 10: 45 links, then two up-links per other gateway.
        assert_eq!(Topology::tiered(300, 10, 7).links.len(), 45 + 2 * 290);
    }
}
