//! Gateways peering over mutual TLS on loopback, each with its own domain and authority under
//! one federation root: summaries travel along paths, the best path wins, a hung gateway is
//! detected by its peers' hold timers and traffic moves to the other path, and a DISCONNECT
//! removes the peer's agents at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agw_aca::tls::TlsIdentity;
use agw_controlplane::{
    control::{ControlPlane, Wiring},
    peering::{
        driver::{PeerSpec, PeeringConfig},
        session::PeerConfig,
    },
};
use agw_dataplane::{
    events::ShardEvent,
    routing::{Route, RoutingReader, RoutingTable},
};
use agw_proto::identity::AgentId;
use common::{Authority, authority, federation_root, identity};
use crossbeam_channel::Sender;

mod common;

struct Gateway {
    control: Option<ControlPlane>,
    routes: RoutingReader,
    shards: Sender<ShardEvent>,
    addr: std::net::SocketAddr,
    /// Last: the sessions run on it.
    _runtime: tokio::runtime::Runtime,
}

impl Gateway {
    fn route(&self, agent: &str) -> Option<Route> {
        self.routes.load().lookup(agent)
    }
}

/// Starts `me`'s control plane peering with `peers`: (the peer, its address if this side dials).
fn start(
    me: &Authority,
    tls: TlsIdentity,
    peers: &[(&Authority, Option<std::net::SocketAddr>)],
) -> Gateway {
    start_on(me, tls, peers, "127.0.0.1:0".parse().unwrap())
}

fn start_on(
    me: &Authority,
    tls: TlsIdentity,
    peers: &[(&Authority, Option<std::net::SocketAddr>)],
    listen: std::net::SocketAddr,
) -> Gateway {
    let table = RoutingTable::new();
    let routes = table.reader();
    let (shards, events) = crossbeam_channel::unbounded();
    let peers = peers
        .iter()
        .map(|(p, address)| {
            let mut config = PeerConfig::new(me.gateway.clone(), p.gateway.clone());
            config.dial = address.is_some();
            config.hold_time = Duration::from_secs(3);
            config.send_hold_time = Duration::from_secs(6);
            config.retry_min = Duration::from_millis(100);
            config.retry_max = Duration::from_secs(1);
            PeerSpec {
                config,
                address: *address,
            }
        })
        .collect();
    let runtime = agw_rpc::runtime("peering-test").unwrap();
    let peering = PeeringConfig {
        listen,
        tls,
        peers,
        runtime: runtime.handle().clone(),
    };
    let control = ControlPlane::start(
        me.gateway.clone(),
        table,
        events,
        Wiring {
            peering: Some(peering),
            ..Wiring::default()
        },
    )
    .unwrap();
    let addr = control.peering().unwrap().local_addr();
    Gateway {
        control: Some(control),
        routes,
        shards,
        addr,
        _runtime: runtime,
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn routes_follow_the_best_path_and_move_when_a_gateway_hangs_or_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let root = federation_root(dir.path());
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| authority(dir.path(), &root, n));
    let all = [&a, &b, &c, &d];
    // A square: a - b - c and a - d - c. The later gateway dials the earlier.
    let ga = start(&a, identity(&a, &all), &[(&b, None), (&d, None)]);
    let gb = start(&b, identity(&b, &all), &[(&a, Some(ga.addr)), (&c, None)]);
    let gd = start(&d, identity(&d, &all), &[(&a, Some(ga.addr)), (&c, None)]);
    let gc = start(
        &c,
        identity(&c, &all),
        &[(&b, Some(gb.addr)), (&d, Some(gd.addr))],
    );

    // An agent comes up on a's relay.
    let x = AgentId::parse("spiffe://a.example/agent/x").unwrap();
    ga.shards
        .send(ShardEvent::AgentUp {
            agent: x.clone(),
            shard: 0,
            connection: 7,
            serial: vec![1],
            scopes: Vec::new(),
        })
        .unwrap();
    wait_until("a's local route", Duration::from_secs(2), || {
        ga.route(x.as_str())
            == Some(Route::Local {
                shard: 0,
                connection: 7,
            })
    });
    // b hears it from a; c through b and through d: two paths of two hops, the smaller next
    // hop (b, its peer 0) wins.
    wait_until("b's route", Duration::from_secs(10), || {
        gb.route(x.as_str()) == Some(Route::Peer { peer: 0 })
    });
    wait_until("c's route via b", Duration::from_secs(10), || {
        gc.route(x.as_str()) == Some(Route::Peer { peer: 0 })
    });
    wait_until("d's route", Duration::from_secs(10), || {
        gd.route(x.as_str()) == Some(Route::Peer { peer: 0 })
    });

    // b hangs (no reads, no writes, connections left open): c's hold timer (3 s) notices and
    // c's route moves to d (its peer 1).
    // (When the hold timer fires is checked on simulated time by the replayed scenarios.)
    gb.control.as_ref().unwrap().peering().unwrap().pause(true);
    wait_until("c's route via d", Duration::from_secs(10), || {
        gc.route(x.as_str()) == Some(Route::Peer { peer: 1 })
    });

    // d leaves for good: DISCONNECT; with b still hung, c has no path and forgets x at once.
    let mut gd = gd;
    gd.control.take().unwrap().stop();
    wait_until("c forgets x", Duration::from_secs(2), || {
        gc.route(x.as_str()).is_none()
    });

    // b comes back: the sessions re-establish and c routes through b again.
    gb.control.as_ref().unwrap().peering().unwrap().pause(false);
    wait_until("c's route via b again", Duration::from_secs(15), || {
        gc.route(x.as_str()) == Some(Route::Peer { peer: 0 })
    });
}

#[test]
fn a_triangle_prefers_the_direct_path_lists_its_neighbours_and_forgets_a_deregistered_agent() {
    let dir = tempfile::tempdir().unwrap();
    let root = federation_root(dir.path());
    let [a, b, c] = ["a", "b", "c"].map(|n| authority(dir.path(), &root, n));
    let all = [&a, &b, &c];
    let ga = start(&a, identity(&a, &all), &[(&b, None), (&c, None)]);
    let gb = start(&b, identity(&b, &all), &[(&a, Some(ga.addr)), (&c, None)]);
    let gc = start(
        &c,
        identity(&c, &all),
        &[(&a, Some(ga.addr)), (&b, Some(gb.addr))],
    );
    let x = AgentId::parse("spiffe://a.example/agent/x").unwrap();
    ga.shards
        .send(ShardEvent::AgentUp {
            agent: x.clone(),
            shard: 0,
            connection: 1,
            serial: vec![1],
            scopes: Vec::new(),
        })
        .unwrap();
    // c hears x from a directly (one hop) and through b (two): the direct path wins.
    wait_until("c's route to x", Duration::from_secs(10), || {
        gc.route(x.as_str()) == Some(Route::Peer { peer: 0 })
    });
    let peering = gc.control.as_ref().unwrap().peering().unwrap();
    // Both sessions up, one summary in from each; c passes x on to b (path c > a), never back
    // to a (the counts settle as the peer threads send what the control plane asked).
    wait_until("c's neighbours", Duration::from_secs(10), || {
        let n = peering.neighbours();
        n.len() == 2
            && n.iter().all(|p| {
                p.state == agw_controlplane::peering::session::SessionState::Established
                    && p.uptime.is_some()
                    && p.summaries_in == 1
            })
            && (n[0].summaries_out, n[1].summaries_out) == (0, 1)
    });
    assert_eq!(peering.neighbours()[0].gateway, a.gateway.to_string());

    // x deregisters at a: the withdrawal reaches everyone.
    ga.shards
        .send(ShardEvent::AgentDown {
            agent: x.clone(),
            shard: 0,
            connection: 1,
            reason: agw_dataplane::access::DownReason::Deregistered,
        })
        .unwrap();
    wait_until("x forgotten everywhere", Duration::from_secs(10), || {
        gb.route(x.as_str()).is_none() && gc.route(x.as_str()).is_none()
    });
}

#[test]
fn two_gateways_dialling_each_other_end_up_with_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let root = federation_root(dir.path());
    let [a, b] = ["a", "b"].map(|n| authority(dir.path(), &root, n));
    let all = [&a, &b];
    // Both dial: each needs the other's address before it starts, so take two free ports.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (addr_a, addr_b) = (free(), free());
    let ga = start_on(&a, identity(&a, &all), &[(&b, Some(addr_b))], addr_a);
    let gb = start_on(&b, identity(&b, &all), &[(&a, Some(addr_a))], addr_b);
    let x = AgentId::parse("spiffe://a.example/agent/x").unwrap();
    ga.shards
        .send(ShardEvent::AgentUp {
            agent: x.clone(),
            shard: 0,
            connection: 1,
            serial: vec![1],
            scopes: Vec::new(),
        })
        .unwrap();
    wait_until("b's route to x", Duration::from_secs(10), || {
        gb.route(x.as_str()) == Some(Route::Peer { peer: 0 })
    });
    // One session survived the collision on both sides, and it stays up.
    std::thread::sleep(Duration::from_millis(500));
    for g in [&ga, &gb] {
        let n = g.control.as_ref().unwrap().peering().unwrap().neighbours();
        assert_eq!(
            n[0].state,
            agw_controlplane::peering::session::SessionState::Established,
            "{n:?}"
        );
        assert!(n[0].uptime.unwrap() >= Duration::from_millis(400), "{n:?}");
    }
}

#[test]
fn a_peer_that_drops_misses_changes_and_returns_leaves_nothing_stale() {
    let dir = tempfile::tempdir().unwrap();
    let root = federation_root(dir.path());
    let [a, b] = ["a", "b"].map(|n| authority(dir.path(), &root, n));
    let all = [&a, &b];
    let ga = start(&a, identity(&a, &all), &[(&b, None)]);
    let gb = start(&b, identity(&b, &all), &[(&a, Some(ga.addr))]);
    let [x, y] =
        ["x", "y"].map(|n| AgentId::parse(&format!("spiffe://a.example/agent/{n}")).unwrap());
    for (i, agent) in [&x, &y].into_iter().enumerate() {
        ga.shards
            .send(ShardEvent::AgentUp {
                agent: agent.clone(),
                shard: 0,
                connection: i as u32,
                serial: vec![1],
                scopes: Vec::new(),
            })
            .unwrap();
    }
    wait_until("b's routes to x and y", Duration::from_secs(10), || {
        gb.route(x.as_str()) == Some(Route::Peer { peer: 0 })
            && gb.route(y.as_str()) == Some(Route::Peer { peer: 0 })
    });

    // a hangs: b's hold timer ends the session, and b keeps x and y as unreachable.
    let a_peering = || ga.control.as_ref().unwrap().peering().unwrap();
    a_peering().pause(true);
    wait_until("x and y unreachable at b", Duration::from_secs(10), || {
        gb.route(x.as_str()) == Some(Route::Unreachable)
            && gb.route(y.as_str()) == Some(Route::Unreachable)
    });
    // Meanwhile x leaves a for good; b cannot hear of it.
    ga.shards
        .send(ShardEvent::AgentDown {
            agent: x.clone(),
            shard: 0,
            connection: 0,
            reason: agw_dataplane::access::DownReason::Deregistered,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(gb.route(x.as_str()), Some(Route::Unreachable));

    // a returns: its full sync names y only, and its END-OF-SYNC makes b forget x.
    a_peering().pause(false);
    wait_until(
        "y routed again, x forgotten",
        Duration::from_secs(15),
        || gb.route(y.as_str()) == Some(Route::Peer { peer: 0 }) && gb.route(x.as_str()).is_none(),
    );
}
