//! Prometheus metrics and a health endpoint over HTTP: `GET /metrics` (text exposition,
//! encoded by prometheus-client from the relay's per-shard counters and the peers' neighbour
//! list at each scrape), `GET /health` (`ok` while every server of the node takes
//! connections; `503` naming those that do not, e.g. out of file descriptors).

use std::{
    net::TcpListener,
    sync::{Arc, Mutex, atomic::Ordering},
};

use agw_dataplane::{
    NACK_REASONS, ShardCounters,
    counters::{RESIDENCE_BUCKETS, residence_bound},
};
use agw_rpc::{Endpoint, EndpointStats, HttpAnswer, HttpLimits, HttpRequest, Method};
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
    /// The node's servers by name (authority, registry, CRL), their counters and whether
    /// they serve.
    pub endpoints: Vec<(&'static str, Arc<EndpointStats>)>,
    /// The embedded registry's owner, which health watches too.
    pub registry: Option<agw_ars::RegistryHandle>,
    /// The peer domains' CRLs, when peering.
    pub peer_crls: Option<crate::peer_crls::PeerCrlView>,
    /// The translation pool's figures, when translation is on.
    pub translation: Option<Arc<crate::translation::TranslationStats>>,
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

/// The translation pool's counters, and its latencies as histograms of 2^k microseconds.
fn translation_metrics(registry: &mut Registry, t: &crate::translation::TranslationStats) {
    let translated = Family::<Labels, Counter>::default();
    if let Ok(list) = t.translated.lock() {
        for ((from, to, engine), n) in list.iter() {
            let labels = vec![
                ("from".into(), from.clone()),
                ("to".into(), to.clone()),
                ("engine".into(), engine.clone()),
            ];
            translated.get_or_create(&labels).inc_by(*n);
        }
    }
    registry.register(
        "translations",
        "Messages translated, by language pair and engine",
        translated,
    );
    for (name, help, value) in [
        (
            "translation_unchanged",
            "Messages handed to the translation pool and delivered as they were",
            &t.unchanged,
        ),
        (
            "translation_failures",
            "Messages that could not be translated (NACKed or delivered marked)",
            &t.failed,
        ),
        (
            "translation_cache_hits",
            "Text segments found among recent translations",
            &t.cache_hits,
        ),
        (
            "translation_engine_calls",
            "Text segments sent to a translation engine",
            &t.engine_calls,
        ),
        (
            "formats_converted",
            "Structured payloads converted into a format their destination accepts",
            &t.converted,
        ),
        (
            "formats_refused",
            "Structured payloads that could not be converted (FORMAT_UNSUPPORTED)",
            &t.conversion_failed,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(value.load(Ordering::Relaxed));
        registry.register(name, help, counter);
    }
    for (name, help, histogram) in [
        (
            "translation_engine_seconds",
            "Time engines took per translated message",
            &t.engine_us,
        ),
        (
            "translation_added_seconds",
            "Time the pool added to a translated message beyond its engine's",
            &t.added_us,
        ),
    ] {
        let metric = Residence::default();
        if let (Ok(h), Ok(mut m)) = (histogram.lock(), metric.0.lock()) {
            let mut buckets = Vec::new();
            let mut below = 0;
            for k in 0..=24u32 {
                let bound = 1u64 << k;
                let n = h.count_between(below, bound.saturating_sub(1));
                buckets.push((bound as f64 * 1e-6, n));
                below = bound;
            }
            buckets.push((f64::INFINITY, h.count_between(below, u64::MAX)));
            let sum = h.mean() * h.len() as f64 * 1e-6;
            *m = (buckets, sum);
        }
        registry.register(name, help, metric);
    }
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
        "tls_handshakes_failed",
        "Agents' TLS handshakes that failed or timed out",
        &per(&|s| s.tls_handshakes_failed),
    );
    counter(
        &mut registry,
        "mqtt_connections",
        "Agents' connections that turned out to speak MQTT",
        &per(&|s| s.mqtt_connections),
    );
    counter(
        &mut registry,
        "a2a_connections",
        "Agents' connections that turned out to speak A2A over HTTP",
        &per(&|s| s.a2a_connections),
    );
    counter(
        &mut registry,
        "a2a_server_connections",
        "Connections this gateway dialled to A2A server agents (again after each idle close)",
        &per(&|s| s.a2a_server_connections),
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
    if let Some(t) = &sources.translation {
        translation_metrics(&mut registry, t);
    }
    let per_endpoint = |f: &dyn Fn(&EndpointStats) -> u64| -> Vec<(Labels, u64)> {
        sources
            .endpoints
            .iter()
            .map(|(name, stats)| (vec![("server".into(), (*name).into())], f(stats)))
            .collect()
    };
    let open: Vec<_> = sources
        .endpoints
        .iter()
        .map(|(name, stats)| {
            let open = stats.open.load(Ordering::Relaxed);
            (
                vec![("server".into(), (*name).into())],
                i64::try_from(open).unwrap_or(i64::MAX),
            )
        })
        .collect();
    gauge(
        &mut registry,
        "server_connections",
        "Connections open on each control-plane server",
        &open,
    );
    let serving: Vec<_> = sources
        .endpoints
        .iter()
        .map(|(name, stats)| {
            (
                vec![("server".into(), (*name).into())],
                i64::from(stats.serving()),
            )
        })
        .collect();
    gauge(
        &mut registry,
        "server_serving",
        "1 while the server takes connections (0 while accepts fail, e.g. out of descriptors)",
        &serving,
    );
    let refused = |stats: &EndpointStats| {
        stats.refused_full.load(Ordering::Relaxed) + stats.refused_source.load(Ordering::Relaxed)
    };
    counter(
        &mut registry,
        "server_refused",
        "Connections refused at a server's caps (in all, or per source address)",
        &per_endpoint(&refused),
    );
    counter(
        &mut registry,
        "server_timed_out",
        "Connections closed at a deadline (handshake, request, idle)",
        &per_endpoint(&|s| s.timed_out.load(Ordering::Relaxed)),
    );
    counter(
        &mut registry,
        "server_accept_errors",
        "Accepts that failed for want of resources (file descriptors, memory)",
        &per_endpoint(&|s| s.accept_errors.load(Ordering::Relaxed)),
    );
    if let Some(view) = &sources.peer_crls {
        let known = view.known();
        let domain = |d: &String| vec![("domain".to_string(), d.clone())];
        let now = std::time::SystemTime::now();
        let age: Vec<_> = known
            .iter()
            .map(|(d, c)| {
                let age = c.fetched.map_or(-1, |t| {
                    now.duration_since(t).unwrap_or_default().as_secs() as i64
                });
                (domain(d), age)
            })
            .collect();
        gauge(
            &mut registry,
            "peer_crl_age_seconds",
            "Since a peer domain's CRL was last fetched and found good (-1: never)",
            &age,
        );
        let revoked: Vec<_> = known
            .iter()
            .map(|(d, c)| (domain(d), c.revoked as i64))
            .collect();
        gauge(
            &mut registry,
            "peer_crl_revoked",
            "Certificates a peer domain's CRL revokes",
            &revoked,
        );
        let failing: Vec<_> = known
            .iter()
            .map(|(d, c)| (domain(d), i64::from(c.error.is_some())))
            .collect();
        gauge(
            &mut registry,
            "peer_crl_fetch_failing",
            "1 while the last fetch of a peer domain's CRL failed (the last good one is kept)",
            &failing,
        );
    }
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

/// `/health`: `ok` while every server takes connections and every other part (`parts`: a
/// name and whether it runs) runs, else `503` naming those that do not.
pub fn health(
    endpoints: &[(&'static str, Arc<EndpointStats>)],
    parts: &[(&'static str, bool)],
) -> HttpAnswer {
    let down: Vec<&str> = endpoints
        .iter()
        .filter(|(_, stats)| !stats.serving())
        .map(|(name, _)| *name)
        .chain(
            parts
                .iter()
                .filter(|(_, running)| !running)
                .map(|(name, _)| *name),
        )
        .collect();
    if down.is_empty() {
        HttpAnswer::text(200, "ok\n")
    } else {
        HttpAnswer::text(503, format!("not serving: {}\n", down.join(", ")))
    }
}

/// Serves `/metrics` and `/health` on `listener`, on `runtime`.
pub fn serve(
    runtime: &tokio::runtime::Handle,
    listener: TcpListener,
    sources: MetricsSources,
) -> std::io::Result<Endpoint> {
    let route = Arc::new(move |request: &HttpRequest| {
        if request.method != Method::GET && request.method != Method::HEAD {
            return HttpAnswer::text(405, "only GET\n");
        }
        match request.path.as_str() {
            "/metrics" => HttpAnswer::new(200, "text/plain; version=0.0.4", render(&sources)),
            "/health" => {
                let registry = sources.registry.as_ref().map(|r| r.is_running());
                health(
                    &sources.endpoints,
                    &[("registry owner", registry.unwrap_or(true))],
                )
            }
            _ => HttpAnswer::text(404, "not found\n"),
        }
    });
    Endpoint::http(runtime, listener, route, HttpLimits::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_names_a_part_that_stopped() {
        assert_eq!(health(&[], &[("registry owner", true)]).status, 200);
        let answer = health(&[], &[("registry owner", false)]);
        assert_eq!(answer.status, 503);
        assert_eq!(&answer.body[..], b"not serving: registry owner\n");
    }
}
