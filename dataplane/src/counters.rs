//! Per-shard counters. Each shard writes only its own (one writer, so a relaxed load and store,
//! no locked instruction, on a cache line no other shard writes); anyone may read them.
//!
//! The delivery guarantee in numbers: summed over shards, once no frame is in flight,
//! `accepted = delivered + nacked + discarded`, where `discarded` counts only ACK frames that
//! could not be delivered (answering them with a NACK could loop) and never an agent message.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use agw_proto::pb::ErrorCode;
use crossbeam_utils::CachePadded;

/// The reasons a relay NACKs a frame, in the order of [`CounterSnapshot::nacked`].
pub const NACK_REASONS: [ErrorCode; 11] = [
    ErrorCode::NoRoute,
    ErrorCode::DestinationOffline,
    ErrorCode::TtlExpired,
    ErrorCode::Overloaded,
    ErrorCode::RateLimited,
    ErrorCode::Unauthorized,
    ErrorCode::Unreachable,
    ErrorCode::Malformed,
    ErrorCode::TranslationFailed,
    ErrorCode::FormatUnsupported,
    ErrorCode::Draining,
];

/// Buckets of the residence histogram: bucket `k` counts frames that stayed under
/// `2^k` microseconds (1 us to 524 ms); one more bucket holds the longer stays.
pub const RESIDENCE_BUCKETS: usize = 20;

/// The upper bound of residence bucket `k`, in seconds.
pub fn residence_bound(k: usize) -> f64 {
    (1u64 << k) as f64 * 1e-6
}

#[inline]
fn residence_index(d: Duration) -> usize {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    ((u64::BITS - micros.leading_zeros()) as usize).min(RESIDENCE_BUCKETS)
}

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
    tls_handshakes_failed: AtomicU64,
    mqtt_connections: AtomicU64,
    a2a_connections: AtomicU64,
    a2a_server_connections: AtomicU64,
    agents_accessed: AtomicU64,
    accepted: AtomicU64,
    delivered: AtomicU64,
    discarded: AtomicU64,
    nacked: [AtomicU64; NACK_REASONS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    queued_bytes: AtomicU64,
    cross_shard_batches: AtomicU64,
    residence: [AtomicU64; RESIDENCE_BUCKETS + 1],
    residence_ns: AtomicU64,
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
    pub(crate) fn tls_handshake_failed(&self) {
        add(&self.0.tls_handshakes_failed, 1);
    }
    pub(crate) fn mqtt_connection(&self) {
        add(&self.0.mqtt_connections, 1);
    }
    pub(crate) fn a2a_connection(&self) {
        add(&self.0.a2a_connections, 1);
    }
    pub(crate) fn a2a_server_connection(&self) {
        add(&self.0.a2a_server_connections, 1);
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
    /// A delivered frame spent `d` in the gateway (read to written).
    #[inline]
    pub(crate) fn resided(&self, d: Duration) {
        add(&self.0.residence[residence_index(d)], 1);
        add(
            &self.0.residence_ns,
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// The counters now.
    pub fn snapshot(&self) -> CounterSnapshot {
        let c = &self.0;
        CounterSnapshot {
            connections_accepted: c.connections_accepted.load(Relaxed),
            connections_open: c.connections_open.load(Relaxed),
            connections_refused: c.connections_refused.load(Relaxed),
            tls_handshakes_failed: c.tls_handshakes_failed.load(Relaxed),
            mqtt_connections: c.mqtt_connections.load(Relaxed),
            a2a_connections: c.a2a_connections.load(Relaxed),
            a2a_server_connections: c.a2a_server_connections.load(Relaxed),
            agents_accessed: c.agents_accessed.load(Relaxed),
            accepted: c.accepted.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            discarded: c.discarded.load(Relaxed),
            nacked: std::array::from_fn(|i| c.nacked[i].load(Relaxed)),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            queued_bytes: c.queued_bytes.load(Relaxed),
            cross_shard_batches: c.cross_shard_batches.load(Relaxed),
            residence: std::array::from_fn(|i| c.residence[i].load(Relaxed)),
            residence_ns: c.residence_ns.load(Relaxed),
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
    /// Connections refused at accept (over the connection cap, or too many handshakes).
    pub connections_refused: u64,
    /// Agents' TLS handshakes that failed or timed out (no certificate, untrusted, no ALPN
    /// in common, plaintext on a TLS port).
    pub tls_handshakes_failed: u64,
    /// Connections that turned out to speak MQTT, since start.
    pub mqtt_connections: u64,
    /// Connections that turned out to speak A2A (HTTP), since start.
    pub a2a_connections: u64,
    /// Connections this gateway dialled to A2A server agents, since start.
    pub a2a_server_connections: u64,
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
    /// Delivered frames by time spent in the gateway, from the read that brought them to the
    /// write that finished them: bucket `k` under [`residence_bound(k)`](residence_bound),
    /// the last one longer.
    pub residence: [u64; RESIDENCE_BUCKETS + 1],
    /// Time delivered frames spent in the gateway, summed, in nanoseconds.
    pub residence_ns: u64,
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
        self.tls_handshakes_failed += o.tls_handshakes_failed;
        self.mqtt_connections += o.mqtt_connections;
        self.a2a_connections += o.a2a_connections;
        self.a2a_server_connections += o.a2a_server_connections;
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
        for (a, b) in self.residence.iter_mut().zip(o.residence) {
            *a += b;
        }
        self.residence_ns += o.residence_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residence_buckets_double_from_one_microsecond() {
        let at = |us: u64| residence_index(Duration::from_micros(us));
        assert_eq!((at(0), at(1), at(2), at(3), at(4)), (0, 1, 2, 2, 3));
        assert_eq!(residence_index(Duration::from_nanos(999)), 0);
        // Bucket k holds stays under 2^k us.
        for k in 1..RESIDENCE_BUCKETS {
            let below = Duration::from_secs_f64(residence_bound(k)) - Duration::from_nanos(1);
            assert_eq!(residence_index(below), k, "just under bucket {k}'s bound");
        }
        assert_eq!(at(1 << 19), RESIDENCE_BUCKETS);
        assert_eq!(
            residence_index(Duration::from_secs(3600)),
            RESIDENCE_BUCKETS
        );
    }
}
