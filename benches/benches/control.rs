//! How long a route change takes to reach the shards: an agent's access reported on the shards'
//! channel, applied by the control plane's loop and published, until a shard's reader sees it
//! (target: within 10 ms). 1,000 agents come and go; each iteration is one change, measured to
//! the moment it is visible.
//!
//! `cargo bench -p agw-benches --bench control`; figures in docs/benchmarks.md.

use std::hint::black_box;

use agw_controlplane::control::{ControlPlane, Wiring};
use agw_dataplane::{
    access::DownReason,
    events::ShardEvent,
    routing::{Route, RoutingTable},
};
use agw_proto::identity::{AgentId, GatewayId};
use criterion::{Criterion, criterion_group, criterion_main};

fn control(c: &mut Criterion) {
    let table = RoutingTable::new();
    let reader = table.reader();
    let (events, rx) = crossbeam_channel::unbounded();
    let gateway =
        GatewayId::parse("spiffe://bench.example/agw/g1").unwrap_or_else(|e| panic!("{e}"));
    let _control = ControlPlane::start(gateway, table, rx, Wiring::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let agents: Vec<AgentId> = (0..1000)
        .map(|i| {
            AgentId::parse(&format!("spiffe://bench.example/agent/a{i}"))
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let mut cache = reader.cache();
    let mut n = 0usize;
    c.bench_function("route_change_visible_to_shards", |b| {
        b.iter(|| {
            let agent = &agents[n % agents.len()];
            let up = (n / agents.len()) % 2 == 0;
            n += 1;
            let event = if up {
                ShardEvent::AgentUp {
                    agent: agent.clone(),
                    shard: 0,
                    connection: n as u32,
                    serial: Vec::new(),
                    scopes: Vec::new(),
                }
            } else {
                ShardEvent::AgentDown {
                    agent: agent.clone(),
                    shard: 0,
                    connection: (n - agents.len()) as u32,
                    reason: DownReason::Deregistered,
                }
            };
            let _ = events.send(event);
            // Spin as a shard would on its next batch, until the change shows.
            loop {
                let route = cache.load().lookup(agent.as_str());
                if matches!(route, Some(Route::Local { .. })) == up {
                    break black_box(route);
                }
                std::hint::spin_loop();
            }
        })
    });
}

criterion_group!(benches, control);
criterion_main!(benches);
