//! Per-shard counters. Each shard writes only its own (one writer, so a relaxed load and store,
//! no locked instruction, on a cache line no other shard writes); anyone may read them.
//!
//! The delivery guarantee in numbers: summed over shards, once no frame is in flight,
//! `accepted = delivered + nacked + discarded`, where `discarded` counts only ACK frames that
//! could not be delivered (answering them with a NACK could loop) and never an agent message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use agw_proto::pb::ErrorCode;
use crossbeam_utils::CachePadded;

/// The reasons a relay NACKs a frame, in the order of [`CounterSnapshot::nacked`].
pub const NACK_REASONS: [ErrorCode; 8] = [
    ErrorCode::NoRoute,
    ErrorCode::DestinationOffline,
    ErrorCode::TtlExpired,
    ErrorCode::Overloaded,
    ErrorCode::Unauthorized,
    ErrorCode::Unreachable,
    ErrorCode::Malformed,
    ErrorCode::Draining,
];

fn reason_index(code: ErrorCode) -> usize {
    NACK_REASONS
        .iter()
        .position(|c| *c == code)
        .unwrap_or(NACK_REASONS.len() - 1)
}

#[derive(Debug, Default)]
struct Inner {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    agents_accessed: AtomicU64,
    accepted: AtomicU64,
    delivered: AtomicU64,
    discarded: AtomicU64,
    nacked: [AtomicU64; NACK_REASONS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    queued_bytes: AtomicU64,
    cross_shard_batches: AtomicU64,
}

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardCounters(CachePadded<Inner>);

#[inline]
fn add(c: &AtomicU64, n: u64) {
    // One writer per counter: no read-modify-write instruction needed.
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

#[inline]
fn sub(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).saturating_sub(n), Relaxed);
}

impl ShardCounters {
    pub(crate) fn connection_accepted(&self) {
        add(&self.0.connections_accepted, 1);
        add(&self.0.connections_open, 1);
    }
    pub(crate) fn connection_closed(&self) {
        sub(&self.0.connections_open, 1);
    }
    pub(crate) fn connection_refused(&self) {
        add(&self.0.connections_refused, 1);
    }
    pub(crate) fn agent_accessed(&self) {
        add(&self.0.agents_accessed, 1);
    }
    #[inline]
    pub(crate) fn accepted(&self, bytes: usize) {
        add(&self.0.accepted, 1);
        add(&self.0.bytes_in, bytes as u64);
    }
    #[inline]
    pub(crate) fn delivered(&self, frames: u64) {
        add(&self.0.delivered, frames);
    }
    #[inline]
    pub(crate) fn written(&self, bytes: usize) {
        add(&self.0.bytes_out, bytes as u64);
    }
    pub(crate) fn discarded(&self) {
        add(&self.0.discarded, 1);
    }
    pub(crate) fn nacked(&self, reason: ErrorCode) {
        add(&self.0.nacked[reason_index(reason)], 1);
    }
    pub(crate) fn set_queued_bytes(&self, bytes: usize) {
        self.0.queued_bytes.store(bytes as u64, Relaxed);
    }
    pub(crate) fn cross_shard_batch(&self) {
        add(&self.0.cross_shard_batches, 1);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CounterSnapshot {
        let c = &self.0;
        CounterSnapshot {
            connections_accepted: c.connections_accepted.load(Relaxed),
            connections_open: c.connections_open.load(Relaxed),
            connections_refused: c.connections_refused.load(Relaxed),
            agents_accessed: c.agents_accessed.load(Relaxed),
            accepted: c.accepted.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            discarded: c.discarded.load(Relaxed),
            nacked: std::array::from_fn(|i| c.nacked[i].load(Relaxed)),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            queued_bytes: c.queued_bytes.load(Relaxed),
            cross_shard_batches: c.cross_shard_batches.load(Relaxed),
        }
    }
}

/// A copy of a shard's counters (or their sum over shards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections refused at accept (over the connection cap).
    pub connections_refused: u64,
    /// Agents that completed access since start.
    pub agents_accessed: u64,
    /// Data frames taken from agents.
    pub accepted: u64,
    /// Accepted frames written to their destination's connection.
    pub delivered: u64,
    /// Accepted ACK frames that could not be delivered.
    pub discarded: u64,
    /// Accepted frames answered with a NACK, by reason ([`NACK_REASONS`] order).
    pub nacked: [u64; NACK_REASONS.len()],
    /// Bytes of data frames taken from agents.
    pub bytes_in: u64,
    /// Bytes written to connections (all frames).
    pub bytes_out: u64,
    /// Bytes waiting in the shard's write queues now.
    pub queued_bytes: u64,
    /// Batches sent to other shards.
    pub cross_shard_batches: u64,
}

impl CounterSnapshot {
    /// All NACKs, whatever the reason.
    pub fn nacked_total(&self) -> u64 {
        self.nacked.iter().sum()
    }

    /// NACKs with this reason.
    pub fn nacked_for(&self, reason: ErrorCode) -> u64 {
        self.nacked[reason_index(reason)]
    }

    /// Frames accepted and not yet delivered, NACKed or discarded (0 when nothing is in flight).
    pub fn in_flight(&self) -> i128 {
        i128::from(self.accepted)
            - i128::from(self.delivered)
            - i128::from(self.nacked_total())
            - i128::from(self.discarded)
    }

    /// Adds another shard's counters.
    pub fn add(&mut self, o: &CounterSnapshot) {
        self.connections_accepted += o.connections_accepted;
        self.connections_open += o.connections_open;
        self.connections_refused += o.connections_refused;
        self.agents_accessed += o.agents_accessed;
        self.accepted += o.accepted;
        self.delivered += o.delivered;
        self.discarded += o.discarded;
        for (a, b) in self.nacked.iter_mut().zip(o.nacked) {
            *a += b;
        }
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.queued_bytes += o.queued_bytes;
        self.cross_shard_batches += o.cross_shard_batches;
    }
}
