//! Frame codec throughput: decode (framing only, with the relay's routing view, and a full
//! protobuf decode), encode, and queueing forwarded frames for a vectored write.
//!
//! The decode benches copy the stream into the decoder's buffer each iteration, as a read
//! would; that copy is part of the figure.
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

        // A relay forwarding decoded frames: a new header (hop limit - 1) and the body slice,
        // queued for a vectored write, then written (here: handed to a no-op writer).
        let mut decoder = FrameDecoder::new(FrameLimits::default());
        decoder.extend_from_slice(&frame_stream(FRAMES, payload));
        let frames: Vec<_> = std::iter::from_fn(|| decoder.decode().ok().flatten()).collect();
        assert_eq!(frames.len() as u64, FRAMES);
        group.bench_function(format!("forward_batch/{name}"), |b| {
            let mut batch = WriteBatch::new();
            b.iter(|| {
                for frame in &frames {
                    let mut header = frame.header;
                    header.hop_limit -= 1;
                    batch.push_frame(header, frame.body.clone());
                }
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * FRAMES as usize);
                batch.io_slices(&mut slices, 2 * FRAMES as usize);
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
