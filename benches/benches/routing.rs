//! The routing snapshot at 1M routes: lookups of uniformly random destinations (target: at
//! most 100 ns), and publishing a batch of route changes (10k changes/s published every
//! millisecond is 10 changes per publish; target: visible to shards within 10 ms).
//!
//! `cargo bench -p agw-benches --bench routing`; figures in docs/benchmarks.md.

use std::hint::black_box;

use agw_dataplane::routing::{Route, RoutingTable};
use criterion::{BatchSize, Criterion, Throughput, criterion_group};

const LOOKUPS: usize = 100_000;

/// Routes in the table: 1M, or `AGW_BENCH_ROUTES` (a small table shows the lookup's compute
/// alone, without memory misses).
fn routes() -> u32 {
    std::env::var("AGW_BENCH_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn agent(n: u32) -> String {
    format!("spiffe://d{}.example/agent/agent-{n}", n % 100)
}

/// A xorshift stream, so the benchmark needs no random-number crate.
fn randoms(seed: u64) -> impl Iterator<Item = u64> {
    let mut x = seed;
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(x)
    })
}

fn routing(c: &mut Criterion) {
    #[allow(non_snake_case)]
    let ROUTES = routes();
    let mut table = RoutingTable::new();
    for n in 0..ROUTES {
        table.set(&agent(n), Route::Peer { peer: n % 16 });
    }
    table.publish();
    let reader = table.reader();
    // Destinations as frames carry them: back to back in one buffer, as in a read buffer,
    // uniformly random over all routes.
    let mut buffer = String::new();
    let mut spans = Vec::with_capacity(LOOKUPS);
    for r in randoms(7).take(LOOKUPS) {
        let start = buffer.len();
        buffer.push_str(&agent((r % u64::from(ROUTES)) as u32));
        spans.push(start..buffer.len());
    }
    let queries: Vec<&str> = spans.iter().map(|s| &buffer[s.clone()]).collect();

    let mut group = c.benchmark_group("routing_1M");
    group.throughput(Throughput::Elements(LOOKUPS as u64));
    group.bench_function("lookup_random", |b| {
        let mut cache = reader.cache();
        b.iter(|| {
            let snapshot = cache.load();
            let mut found = 0u32;
            for q in &queries {
                found += u32::from(snapshot.lookup(q).is_some());
            }
            assert_eq!(found as usize, LOOKUPS);
        })
    });
    // As the relay does it: the destinations of a batch of 32 frames prepared (hashed,
    // their memory prefetched), then looked up.
    group.bench_function("lookup_random_batched_32", |b| {
        let mut cache = reader.cache();
        b.iter(|| {
            let snapshot = cache.load();
            let mut found = 0u32;
            for batch in queries.chunks(32) {
                let mut prepared = [None; 32];
                for (p, q) in prepared.iter_mut().zip(batch) {
                    *p = Some(snapshot.prepare(q));
                }
                for (p, q) in prepared.iter().zip(batch) {
                    if let Some(p) = p {
                        found += u32::from(snapshot.lookup_prepared(q, *p).is_some());
                    }
                }
            }
            assert_eq!(found as usize, LOOKUPS);
        })
    });
    // The same lookups in one plain hashbrown map of the same routes: the floor this machine's
    // memory sets for 1M uniformly random lookups, to compare against.
    let plain: hashbrown::HashMap<String, u32> = (0..ROUTES).map(|n| (agent(n), n % 16)).collect();
    group.bench_function("baseline_single_hashmap", |b| {
        b.iter(|| {
            let mut found = 0u32;
            for q in &queries {
                found += u32::from(plain.get(*q).is_some());
            }
            assert_eq!(found as usize, LOOKUPS);
        })
    });
    // One random 8-byte read per lookup in 64 MiB (the size of 1M routes): the cost of a
    // single cache and TLB miss here, the floor of any table that does not fit in cache.
    let words: Vec<u64> = (0..(64u64 << 20) / 8).collect();
    let indexes: Vec<usize> = randoms(13)
        .take(LOOKUPS)
        .map(|r| (r % words.len() as u64) as usize)
        .collect();
    group.bench_function("floor_one_random_read_64MiB", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for &i in &indexes {
                sum = sum.wrapping_add(words[i]);
            }
            black_box(sum)
        })
    });
    group.throughput(Throughput::Elements(10));
    let mut changes = randoms(11).map(|r| (r % u64::from(ROUTES)) as u32);
    group.bench_function("publish_10_changes", |b| {
        b.iter_batched(
            || {
                (0..10)
                    .map(|_| agent(changes.next().unwrap_or(0)))
                    .collect::<Vec<_>>()
            },
            |agents| {
                for a in &agents {
                    table.set(a, Route::Offline);
                }
                black_box(table.publish())
            },
            BatchSize::SmallInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("publish_1_change", |b| {
        b.iter_batched(
            || agent(changes.next().unwrap_or(0)),
            |a| {
                table.set(&a, Route::Unreachable);
                black_box(table.publish())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, routing);

fn main() {
    // As the daemon runs: the table on huge pages (AGW_HUGEPAGES=0 for small pages).
    agw_dataplane::hugepages::ensure();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
