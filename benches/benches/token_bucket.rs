//! The per-requester token bucket the registry (and, with messages per second, the relay)
//! charges on every request: one `take` at a time, allowed and refused.
//!
//! `cargo bench -p agw-benches --bench token_bucket`; figures in docs/benchmarks.md.

use std::{
    hint::black_box,
    time::{Duration, SystemTime},
};

use agw_ars::limits::TokenBucket;
use criterion::{Criterion, criterion_group, criterion_main};

fn token_bucket(c: &mut Criterion) {
    let start = SystemTime::now();
    let mut group = c.benchmark_group("token_bucket");
    // Plenty of tokens, time advancing: every take refills and is allowed.
    group.bench_function("take_allowed", |b| {
        let mut bucket = TokenBucket::new(1_000_000, Duration::from_secs(1), start);
        let mut now = start;
        b.iter(|| {
            now += Duration::from_micros(1);
            black_box(bucket.take(black_box(now)))
        })
    });
    // An empty bucket at a fixed time: every take is refused with the time to wait.
    group.bench_function("take_refused", |b| {
        let mut bucket = TokenBucket::new(1, Duration::from_secs(60), start);
        let _ = bucket.take(start);
        b.iter(|| black_box(bucket.take(black_box(start))))
    });
    group.finish();
}

criterion_group!(benches, token_bucket);
criterion_main!(benches);
