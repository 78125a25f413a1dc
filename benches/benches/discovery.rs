//! Discovery over 1M profiles: a query matching up to 100 agents (target: median at most
//! 100 µs), a two-capability query, and a prefix query; and what the registry pays to publish
//! a snapshot for discovery and then change one profile (the copy-on-write of the persistent
//! index).
//!
//! `cargo bench -p agw-benches --bench discovery`; figures in docs/benchmarks.md.

use std::{hint::black_box, time::Instant};

use agw_ars::index::{Entry, Index, Origin, Query};
use agw_proto::pb;
use criterion::{Criterion, criterion_group, criterion_main};

const PROFILES: u32 = 1_000_000;
/// 30,000 capability terms, 3 per profile: about 100 profiles per term.
const TERMS: u32 = 30_000;

fn capability(n: u32) -> String {
    // Two words, so word matches are exercised too: "skill-123 task-7".
    format!("skill-{n} task-{}", n % 97)
}

fn build() -> Index {
    let started = Instant::now();
    let mut index = Index::default();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..PROFILES {
        let caps = (0..3)
            .map(|_| capability((next() % u64::from(TERMS)) as u32))
            .collect();
        index.upsert(profile(i, caps));
    }
    eprintln!(
        "built {} profiles in {:.1?}; resident memory {} MiB",
        index.len(),
        started.elapsed(),
        resident_mib()
    );
    index
}

fn resident_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib / 1024)
}

/// Agent `i`'s profile: half speak English, half Chinese; three protocols in turn.
fn profile(i: u32, capabilities: Vec<String>) -> Entry {
    Entry {
        profile: pb::AgentProfile {
            resource_id: format!("ars:bench.example:{i:032x}"),
            agent: format!("spiffe://bench.example/agent/a{i}"),
            capabilities,
            protocols: vec![1 + (i % 3) as i32],
            languages: vec![if i % 2 == 0 { "en" } else { "zh" }.into()],
            address: "10.0.0.1:7000".into(),
            status: pb::Status::Running as i32,
            domain: "bench.example".into(),
            version: 1,
            ..Default::default()
        },
        origin: Origin::Local,
    }
}

fn discovery(c: &mut Criterion) {
    let index = build();
    let query = |caps: &[&str]| Query {
        capabilities: caps.iter().map(|s| s.to_string()).collect(),
        limit: 100,
        ..Default::default()
    };
    let exact = query(&["skill-12345 task-26"]);
    eprintln!(
        "exact query matches {}",
        index.discover(&exact, |_| true).len()
    );
    // The same term, and one of its words that ~31,000 profiles share.
    let two = query(&["skill-12345 task-26", "task-26"]);
    let prefix = query(&["skill-1234*"]);
    eprintln!(
        "prefix query returns {}",
        index.discover(&prefix, |_| true).len()
    );

    let mut group = c.benchmark_group("discovery_1M");
    group.bench_function("one_capability", |b| {
        b.iter(|| black_box(index.discover(&exact, |_| true).len()))
    });
    group.bench_function("capability_and_word", |b| {
        b.iter(|| black_box(index.discover(&two, |_| true).len()))
    });
    group.bench_function("prefix", |b| {
        b.iter(|| black_box(index.discover(&prefix, |_| true).len()))
    });
    let mut filtered = exact.clone();
    filtered.languages = vec!["zh".into()];
    filtered.protocols = vec![2];
    eprintln!(
        "filtered query matches {}",
        index.discover(&filtered, |_| true).len()
    );
    group.bench_function("one_capability_filtered", |b| {
        b.iter(|| black_box(index.discover(&filtered, |_| true).len()))
    });
    group.finish();

    // The registry's cycle: a snapshot is out (discovery reads it), one profile changes.
    let mut index = index;
    let mut group = c.benchmark_group("registry_1M");
    let mut n = 0u32;
    group.bench_function("snapshot_then_change_one", |b| {
        b.iter(|| {
            let snapshot = index.clone();
            n = n.wrapping_add(1);
            let capabilities = (0..3)
                .map(|k| capability((n * 7 + k * 1_009) % TERMS))
                .collect();
            index.upsert(profile(n % 1_000, capabilities));
            black_box(snapshot.len())
        })
    });
    group.finish();
}

criterion_group!(benches, discovery);
criterion_main!(benches);
