//! Frame codec throughput: decode (framing only, with the relay's routing view, and a full
//! protobuf decode), encode, and queueing forwarded frames for a vectored write.
//!
//! `cargo bench -p agw-benches --bench codec`; figures in docs/benchmarks.md.

use std::{hint::black_box, io::IoSlice};

use agw_benches::{agent_message, frame_stream};
use agw_proto::{FrameDecoder, FrameEncoder, FrameLimits, WriteBatch};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const FRAMES: u64 = 1024;
const SIZES: &[(&str, usize)] = &[("256B", 256), ("16KiB", 16 * 1024)];

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for &(name, payload) in SIZES {
        let stream = frame_stream(FRAMES, payload);
        group.throughput(Throughput::Elements(FRAMES));

        group.bench_function(format!("frames/{name}"), |b| {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            b.iter(|| {
                decoder.read_buf(stream.len()).extend_from_slice(&stream);
                let mut n = 0;
                while let Ok(Some(frame)) = decoder.decode() {
                    black_box(&frame);
                    n += 1;
                }
                assert_eq!(n, FRAMES);
            })
        });

        group.bench_function(format!("routing_view/{name}"), |b| {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            b.iter(|| {
                decoder.read_buf(stream.len()).extend_from_slice(&stream);
                while let Ok(Some(frame)) = decoder.decode() {
                    let view = frame.data_view();
                    black_box(view.map(|v| v.destination.len()).ok());
                }
            })
        });

        group.bench_function(format!("full_message/{name}"), |b| {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            b.iter(|| {
                decoder.read_buf(stream.len()).extend_from_slice(&stream);
                while let Ok(Some(frame)) = decoder.decode() {
                    black_box(frame.message().ok());
                }
            })
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for &(name, payload) in SIZES {
        let messages: Vec<_> = (0..FRAMES).map(|i| agent_message(i, payload)).collect();
        group.throughput(Throughput::Elements(FRAMES));

        group.bench_function(format!("messages/{name}"), |b| {
            let mut encoder = FrameEncoder::new(FrameLimits::default());
            b.iter(|| {
                for m in &messages {
                    black_box(encoder.push(m).is_ok());
                }
                black_box(encoder.take());
            })
        });

        // A relay forwarding decoded frames: a new header (hop limit - 1) and the body slice.
        let stream = frame_stream(FRAMES, payload);
        group.bench_function(format!("forward_batch/{name}"), |b| {
            let mut decoder = FrameDecoder::new(FrameLimits::default());
            let mut batch = WriteBatch::new();
            b.iter(|| {
                decoder.read_buf(stream.len()).extend_from_slice(&stream);
                while let Ok(Some(frame)) = decoder.decode() {
                    let mut header = frame.header;
                    header.hop_limit -= 1;
                    batch.push_frame(header, frame.body);
                }
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(1024);
                batch.io_slices(&mut slices, 1024);
                black_box(slices.len());
                drop(slices);
                let len = batch.len();
                batch.advance(len);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
