//! Which connections are congested, for senders on other shards.
//!
//! A shard marks one of its connections when the connection's write queue passes the soft
//! limit and clears it when the queue drains below. Other shards read the mark before sending
//! it more: a congested destination pauses the sending connection, as a same-shard one does,
//! instead of filling the queue to its hard limit and NACKing. Marks change only on those
//! transitions, so the cache lines are read far more than written and never contended on the
//! relay's path.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// Slots per shard. Two congested connections that share a slot hide one of them (its senders
/// then meet the hard limit's NACKs); a connection never appears congested when it is not.
const SLOTS: usize = 4096;

/// One shard's congested connections.
#[derive(Debug)]
pub(crate) struct Congestion {
    /// Connection number + 1 of a congested connection in this slot; 0 for none.
    slots: Box<[AtomicU32]>,
}

impl Default for Congestion {
    fn default() -> Self {
        Congestion {
            slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

fn slot(connection: u32) -> usize {
    connection as usize % SLOTS
}

impl Congestion {
    /// The owning shard: `connection` passed its soft limit.
    pub(crate) fn mark(&self, connection: u32) {
        if let Some(s) = self.slots.get(slot(connection)) {
            s.store(connection.wrapping_add(1), Relaxed);
        }
    }

    /// The owning shard: `connection` drained below its soft limit (or closed).
    pub(crate) fn clear(&self, connection: u32) {
        if let Some(s) = self.slots.get(slot(connection)) {
            let _ = s.compare_exchange(connection.wrapping_add(1), 0, Relaxed, Relaxed);
        }
    }

    /// Any shard: whether `connection` is congested now.
    #[inline]
    pub(crate) fn is_congested(&self, connection: u32) -> bool {
        self.slots
            .get(slot(connection))
            .is_some_and(|s| s.load(Relaxed) == connection.wrapping_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_exact_and_cleared_only_by_their_connection() {
        let c = Congestion::default();
        assert!(!c.is_congested(7));
        c.mark(7);
        assert!(c.is_congested(7));
        // Another connection in the same slot is never reported congested by 7's mark.
        assert!(!c.is_congested(7 + SLOTS as u32));
        c.mark(7 + SLOTS as u32);
        c.clear(7);
        assert!(
            c.is_congested(7 + SLOTS as u32),
            "7 cannot clear its slot-mate's mark"
        );
        c.clear(7 + SLOTS as u32);
        assert!(!c.is_congested(7 + SLOTS as u32));
        c.mark(u32::MAX);
        assert!(c.is_congested(u32::MAX) && !c.is_congested(0));
    }
}
