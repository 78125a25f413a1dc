//! Prometheus metrics and a health endpoint over HTTP: `GET /metrics` (text exposition,
//! encoded by prometheus-client from the relay's per-shard counters and the peers' neighbour
//! list at each scrape), `GET /health` (`ok` while the node runs).

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
};

use agw_dataplane::{
    NACK_REASONS, ShardCounters,
    counters::{RESIDENCE_BUCKETS, residence_bound},
};
use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::peering::{
    driver::{Neighbours, PeerStatus},
    session::SessionState,
};

/// What a scrape reads.
#[derive(Debug, Clone)]
pub struct MetricsSources {
    /// The relay's counters, one per shard.
    pub counters: Arc<[ShardCounters]>,
    /// The neighbour list, when peering.
    pub neighbours: Option<Neighbours>,
}

type Labels = Vec<(String, String)>;

/// A histogram read from the relay's counters at scrape time: (upper bound in seconds, count)
/// per bucket, the sum in seconds. Set once after the family creates it.
#[derive(Debug, Default)]
struct Residence(Mutex<(Vec<(f64, u64)>, f64)>);

impl TypedMetric for Residence {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Residence {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let Ok(inner) = self.0.lock() else {
            return Ok(());
        };
        let (buckets, sum) = &*inner;
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(*sum, count, buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn shard(i: usize) -> Labels {
    vec![("shard".into(), i.to_string())]
}

/// The exposition text for the current values.
pub fn render(sources: &MetricsSources) -> String {
    let mut registry = Registry::with_prefix("agw");
    let counter = |registry: &mut Registry, name: &str, help: &str, values: &[(Labels, u64)]| {
        let family = Family::<Labels, Counter>::default();
        for (labels, v) in values {
            family.get_or_create(labels).inc_by(*v);
        }
        registry.register(name, help, family);
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str, values: &[(Labels, i64)]| {
        let family = Family::<Labels, Gauge>::default();
        for (labels, v) in values {
            family.get_or_create(labels).set(*v);
        }
        registry.register(name, help, family);
    };
    let snaps: Vec<_> = sources
        .counters
        .iter()
        .map(ShardCounters::snapshot)
        .collect();
    let per = |f: &dyn Fn(&agw_dataplane::CounterSnapshot) -> u64| -> Vec<(Labels, u64)> {
        snaps
            .iter()
            .enumerate()
            .map(|(i, s)| (shard(i), f(s)))
            .collect()
    };
    counter(
        &mut registry,
        "frames_accepted",
        "Data frames taken from agents and peers",
        &per(&|s| s.accepted),
    );
    counter(
        &mut registry,
        "frames_delivered",
        "Accepted frames written to their destination",
        &per(&|s| s.delivered),
    );
    counter(
        &mut registry,
        "frames_discarded",
        "Accepted ACKs that could not be delivered",
        &per(&|s| s.discarded),
    );
    counter(
        &mut registry,
        "bytes_in",
        "Bytes of data frames accepted",
        &per(&|s| s.bytes_in),
    );
    counter(
        &mut registry,
        "bytes_out",
        "Bytes written to connections",
        &per(&|s| s.bytes_out),
    );
    counter(
        &mut registry,
        "connections_accepted",
        "Connections accepted",
        &per(&|s| s.connections_accepted),
    );
    counter(
        &mut registry,
        "connections_refused",
        "Connections refused at accept",
        &per(&|s| s.connections_refused),
    );
    counter(
        &mut registry,
        "agents_accessed",
        "Agents that completed access",
        &per(&|s| s.agents_accessed),
    );
    let mut nacks = Vec::new();
    for (i, s) in snaps.iter().enumerate() {
        for (reason, n) in NACK_REASONS.iter().zip(s.nacked) {
            let mut labels = shard(i);
            labels.push(("reason".into(), reason.as_str_name().to_owned()));
            nacks.push((labels, n));
        }
    }
    counter(
        &mut registry,
        "frames_nacked",
        "Accepted frames answered with a NACK, by reason",
        &nacks,
    );
    let gauges = |f: &dyn Fn(&agw_dataplane::CounterSnapshot) -> u64| -> Vec<(Labels, i64)> {
        snaps
            .iter()
            .enumerate()
            .map(|(i, s)| (shard(i), i64::try_from(f(s)).unwrap_or(i64::MAX)))
            .collect()
    };
    gauge(
        &mut registry,
        "connections_open",
        "Connections open now",
        &gauges(&|s| s.connections_open),
    );
    gauge(
        &mut registry,
        "queued_bytes",
        "Bytes waiting in write queues",
        &gauges(&|s| s.queued_bytes),
    );
    let residence = Family::<Labels, Residence>::default();
    for (i, s) in snaps.iter().enumerate() {
        let buckets = s
            .residence
            .iter()
            .enumerate()
            .map(|(k, n)| {
                let bound = if k < RESIDENCE_BUCKETS {
                    residence_bound(k)
                } else {
                    f64::INFINITY
                };
                (bound, *n)
            })
            .collect();
        if let Ok(mut h) = residence.get_or_create(&shard(i)).0.lock() {
            *h = (buckets, s.residence_ns as f64 * 1e-9);
        }
    }
    registry.register(
        "relay_residence_seconds",
        "Time delivered frames spent in the gateway, from the read that brought them to the \
         write that finished them",
        residence,
    );
    if let Some(neighbours) = &sources.neighbours {
        let list = neighbours.list();
        let peer = |p: &PeerStatus| vec![("peer".to_string(), p.gateway.clone())];
        let up: Vec<_> = list
            .iter()
            .map(|p| (peer(p), i64::from(p.state == SessionState::Established)))
            .collect();
        gauge(
            &mut registry,
            "peer_up",
            "1 while the peering session is established",
            &up,
        );
        let uptime: Vec<_> = list
            .iter()
            .map(|p| (peer(p), p.uptime.map_or(0, |u| u.as_secs() as i64)))
            .collect();
        gauge(
            &mut registry,
            "peer_uptime_seconds",
            "Age of the current session",
            &uptime,
        );
        let inn: Vec<_> = list
            .iter()
            .map(|p| (peer(p), p.summaries_in as i64))
            .collect();
        gauge(
            &mut registry,
            "peer_summaries_in",
            "Agents learned from the peer",
            &inn,
        );
        let out: Vec<_> = list
            .iter()
            .map(|p| (peer(p), p.summaries_out as i64))
            .collect();
        gauge(
            &mut registry,
            "peer_summaries_out",
            "Summaries sent in the current session",
            &out,
        );
    }
    let mut text = String::new();
    let _ = encode(&mut text, &registry);
    text
}

/// Serves `/metrics` and `/health` on `listener` from a thread of its own.
pub fn serve(listener: TcpListener, sources: MetricsSources) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let server = tiny_http::Server::from_listener(listener, None)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    std::thread::Builder::new()
        .name("agw-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body, kind) = match request.url() {
                    "/metrics" => (200, render(&sources), "text/plain; version=0.0.4"),
                    "/health" => (200, "ok\n".to_owned(), "text/plain"),
                    _ => (404, "not found\n".to_owned(), "text/plain"),
                };
                let mut response = tiny_http::Response::from_string(body).with_status_code(status);
                if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind.as_bytes())
                {
                    response = response.with_header(h);
                }
                let _ = request.respond(response);
            }
        })?;
    Ok(addr)
}
