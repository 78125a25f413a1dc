//! Routing snapshots: what the relay reads for every frame, and how the control plane
//! replaces them.
//!
//! A [`RoutingSnapshot`] is immutable. Shards read the current one through an `arc-swap`
//! ([`RoutingReader`]): no lock, no wait on the control plane, and a snapshot a shard holds
//! never changes under it. The control plane owns the [`RoutingTable`], collects route changes
//! and [`publish`](RoutingTable::publish)es a new snapshot.
//!
//! The table is split into 4,096 buckets (in 64 groups of 64) by the top bits of each agent
//! ID's hash. A publish copies only the buckets its changes touch, plus the pointers of their
//! groups and the 64 group pointers; every other bucket is shared with the previous snapshot. So a change costs a copy of one bucket (about
//! 250 routes at 1M), never of the table, and batching the changes of a millisecond into one
//! publish keeps 10k changes/s cheap.

use std::{hash::BuildHasher, sync::Arc};

use arc_swap::{ArcSwap, Cache};
use hashbrown::{DefaultHashBuilder, HashMap};

/// log2 of the number of buckets.
pub const BUCKET_BITS: u32 = 12;
/// Buckets are held in groups of 64, so a publish copies 64 group pointers and the 64 bucket
/// pointers of each group it touches, not all 4,096.
const GROUP_BITS: u32 = 6;
const GROUPS: usize = 1 << (BUCKET_BITS - GROUP_BITS);
const GROUP_SIZE: usize = 1 << GROUP_BITS;

/// Where frames for an agent go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Connected to this gateway, on this shard and connection.
    Local {
        /// The shard that owns the connection.
        shard: u16,
        /// The connection's number on that shard.
        connection: u32,
    },
    /// Behind a peer gateway, by its number in the peer table.
    Peer {
        /// The peer's number.
        peer: u32,
    },
    /// Known but offline: answered with NACK `DESTINATION_OFFLINE`.
    Offline,
    /// Behind a gateway that is unreachable now: answered with NACK `UNREACHABLE`.
    Unreachable,
}

/// Longest agent ID stored inside its entry; longer ones live on the heap.
const INLINE: usize = 46;

/// An agent ID as the table stores it: inline when short (the common case, so a lookup reads
/// one entry and no other memory), on the heap otherwise.
#[derive(Debug, Clone)]
enum Key {
    Inline(u8, [u8; INLINE]),
    Heap(Arc<str>),
}

impl Key {
    fn new(agent: &str) -> Key {
        let bytes = agent.as_bytes();
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE => {
                let mut inline = [0u8; INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                Key::Inline(len, inline)
            }
            _ => Key::Heap(agent.into()),
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline(len, bytes) => &bytes[..usize::from(*len)],
            Key::Heap(s) => s.as_bytes(),
        }
    }

    /// The ID again (it was a `str` when stored), to hash it when slots move.
    fn as_str(&self) -> &str {
        match self {
            Key::Inline(..) => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Key::Heap(s) => s,
        }
    }
}

/// One route: a whole cache line, so a lookup that finds its agent at the first probe reads
/// one line of memory beyond the (cache-resident) bucket headers.
#[derive(Debug, Clone)]
#[repr(align(64))]
struct Slot {
    /// Bits of the hash the probe position does not use: most misses end here.
    tag: u32,
    route: Route,
    agent: Key,
}

/// A bucket: open addressing with linear probing over an array of slots, at most 5/8 full,
/// growing by half. Removal shifts the following slots back, so there are no tombstones and a probe
/// ends at the first empty slot. Buckets sit by value in their group's array and share their
/// slots: a lookup goes group -> bucket -> slot, and a publish copies the slots of the buckets
/// it changes.
#[derive(Debug, Clone)]
struct Bucket {
    slots: Arc<[Option<Slot>]>,
    len: usize,
}

const MIN_SLOTS: usize = 8;

/// The tag: the hash's high half (the top bits also pick the bucket, the low half the slot).
#[inline]
fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// The first slot to probe among `len`: the low half of the hash scaled to the length (a
/// multiply, not a modulo), so a bucket can grow by half instead of doubling.
#[inline]
fn home_of(hash: u64, len: usize) -> usize {
    (((hash & 0xffff_ffff) * len as u64) >> 32) as usize
}

/// The slot after `i` among `len`, wrapping.
#[inline]
fn next_of(i: usize, len: usize) -> usize {
    if i + 1 == len { 0 } else { i + 1 }
}

impl Bucket {
    fn empty() -> Bucket {
        Bucket {
            slots: Arc::new([]),
            len: 0,
        }
    }

    /// Index of `agent`'s slot, or of the empty slot that ends its probe sequence.
    #[inline]
    fn probe(&self, hash: u64, agent: &[u8]) -> Result<usize, usize> {
        let n = self.slots.len();
        let tag = tag_of(hash);
        let mut i = home_of(hash, n);
        loop {
            match self.slots.get(i) {
                Some(Some(slot)) if slot.tag == tag && slot.agent.as_bytes() == agent => {
                    return Ok(i);
                }
                Some(Some(_)) => i = next_of(i, n),
                _ => return Err(i),
            }
        }
    }

    #[inline]
    fn get(&self, hash: u64, agent: &[u8]) -> Option<Route> {
        if self.len == 0 {
            return None;
        }
        let i = self.probe(hash, agent).ok()?;
        self.slots.get(i)?.as_ref().map(|s| s.route)
    }

    /// Sets a route; returns whether the agent is new.
    fn set(&mut self, hash: u64, agent: &str, route: Route, hasher: &DefaultHashBuilder) -> bool {
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.grow(hasher);
        }
        match self.probe(hash, agent.as_bytes()) {
            Ok(i) => {
                if let Some(Some(slot)) = Arc::make_mut(&mut self.slots).get_mut(i) {
                    slot.route = route;
                }
                false
            }
            Err(i) => {
                if let Some(free) = Arc::make_mut(&mut self.slots).get_mut(i) {
                    *free = Some(Slot {
                        tag: tag_of(hash),
                        route,
                        agent: Key::new(agent),
                    });
                    self.len += 1;
                }
                true
            }
        }
    }

    /// Removes a route; returns whether there was one.
    fn remove(&mut self, hash: u64, agent: &[u8], hasher: &DefaultHashBuilder) -> bool {
        if self.len == 0 {
            return false;
        }
        let Ok(mut hole) = self.probe(hash, agent) else {
            return false;
        };
        let n = self.slots.len();
        let slots = Arc::make_mut(&mut self.slots);
        if let Some(slot) = slots.get_mut(hole) {
            *slot = None;
        }
        self.len -= 1;
        // Backward shift: move up every later slot of the run that may live in the hole.
        let mut i = next_of(hole, n);
        loop {
            let home = match slots.get(i) {
                Some(Some(slot)) => home_of(hasher.hash_one(slot.agent.as_str()), n),
                _ => return true,
            };
            // The slot may move to the hole if its home is not cyclically in (hole, i].
            let stays = if hole <= i {
                hole < home && home <= i
            } else {
                hole < home || home <= i
            };
            if !stays {
                slots.swap(hole, i);
                hole = i;
            }
            i = next_of(i, n);
        }
    }

    fn grow(&mut self, hasher: &DefaultHashBuilder) {
        let n = (self.slots.len() + self.slots.len() / 2).max(MIN_SLOTS);
        let mut slots: Vec<Option<Slot>> = (0..n).map(|_| None).collect();
        for slot in self.slots.iter().flatten() {
            let mut i = home_of(hasher.hash_one(slot.agent.as_str()), n);
            while matches!(slots.get(i), Some(Some(_))) {
                i = next_of(i, n);
            }
            if let Some(free) = slots.get_mut(i) {
                *free = Some(slot.clone());
            }
        }
        self.slots = slots.into();
    }
}

/// An immutable routing table, as shards read it.
#[derive(Debug, Clone)]
pub struct RoutingSnapshot {
    version: u64,
    len: usize,
    hasher: DefaultHashBuilder,
    groups: Arc<[Arc<[Bucket]>]>,
}

/// (group, bucket within the group) of a hash, from its top bits.
fn bucket_of(hash: u64) -> (usize, usize) {
    let b = (hash >> (64 - BUCKET_BITS)) as usize;
    (b >> GROUP_BITS, b & (GROUP_SIZE - 1))
}

impl RoutingSnapshot {
    /// The route to `agent` (its ID's bytes, as the frame carries them).
    #[inline]
    pub fn lookup(&self, agent: &str) -> Option<Route> {
        let hash = self.hasher.hash_one(agent);
        let (g, b) = bucket_of(hash);
        self.groups.get(g)?.get(b)?.get(hash, agent.as_bytes())
    }

    /// Starts a lookup of `agent`: computes its hash and asks the CPU to fetch the memory the
    /// lookup will read, without waiting for it. Preparing a batch of frames' destinations
    /// before looking them up lets their cache misses overlap (a relay reads frames in
    /// batches); [`lookup_prepared`](Self::lookup_prepared) finishes.
    #[inline]
    pub fn prepare(&self, agent: &str) -> Prepared {
        let hash = self.hasher.hash_one(agent);
        let (g, b) = bucket_of(hash);
        if let Some(bucket) = self.groups.get(g).and_then(|group| group.get(b)) {
            let home = home_of(hash, bucket.slots.len());
            // The home slot, and the next: at the table's load (5/12 to 5/8) a lookup probes
            // 1.4 to 1.8 slots on average, so the second line is often read too.
            if let Some(slot) = bucket.slots.get(home) {
                prefetch(slot);
            }
            if let Some(slot) = bucket.slots.get(home + 1) {
                prefetch(slot);
            }
        }
        Prepared(hash)
    }

    /// The route to `agent`, prepared by [`prepare`](Self::prepare) on this snapshot.
    #[inline]
    pub fn lookup_prepared(&self, agent: &str, prepared: Prepared) -> Option<Route> {
        let hash = prepared.0;
        let (g, b) = bucket_of(hash);
        self.groups.get(g)?.get(b)?.get(hash, agent.as_bytes())
    }

    /// Publishes so far; 0 for the empty table.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Routes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no route is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every route, in no particular order (for operators' listings, not the relay).
    pub fn entries(&self) -> impl Iterator<Item = (&str, Route)> + '_ {
        self.groups
            .iter()
            .flat_map(|group| group.iter())
            .flat_map(|bucket| bucket.slots.iter().flatten())
            .map(|slot| (slot.agent.as_str(), slot.route))
    }

    /// Whether `self` and `other` share the bucket that holds `agent` (the same memory, not a
    /// copy): how a publish proves it copied only what changed.
    pub fn shares_bucket_with(&self, other: &RoutingSnapshot, agent: &str) -> bool {
        let (g, b) = bucket_of(self.hasher.hash_one(agent));
        let bucket = |s: &RoutingSnapshot| s.groups.get(g).and_then(|group| group.get(b)).cloned();
        match (bucket(self), bucket(other)) {
            (Some(x), Some(y)) => Arc::ptr_eq(&x.slots, &y.slots),
            _ => false,
        }
    }
}

/// A lookup started by [`RoutingSnapshot::prepare`]: the agent ID's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared(u64);

/// Hints the CPU to bring `value`'s cache line in; never waits, never faults.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it reads nothing architecturally and cannot fault, and the
    // address comes from a live reference. SSE, which it needs, is part of x86_64's baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A reader's cached snapshot: [`Cache::load`] returns it without touching a shared counter
/// while nothing was published.
pub type SnapshotCache = Cache<Arc<ArcSwap<RoutingSnapshot>>, Arc<RoutingSnapshot>>;

/// A shard's handle on the current snapshot.
#[derive(Debug, Clone)]
pub struct RoutingReader {
    shared: Arc<ArcSwap<RoutingSnapshot>>,
}

impl RoutingReader {
    /// The current snapshot; hold it for a batch of frames, not longer.
    pub fn load(&self) -> Arc<RoutingSnapshot> {
        self.shared.load_full()
    }

    /// A per-shard cache: loading through it costs one pointer comparison while nothing was
    /// published.
    pub fn cache(&self) -> SnapshotCache {
        Cache::new(Arc::clone(&self.shared))
    }
}

/// The control plane's routing table: changes collect here until published.
#[derive(Debug)]
pub struct RoutingTable {
    current: RoutingSnapshot,
    shared: Arc<ArcSwap<RoutingSnapshot>>,
    pending: HashMap<Arc<str>, Option<Route>>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        RoutingTable::new()
    }
}

impl RoutingTable {
    /// An empty table, published as version 0.
    pub fn new() -> RoutingTable {
        let group: Arc<[Bucket]> = (0..GROUP_SIZE).map(|_| Bucket::empty()).collect();
        let current = RoutingSnapshot {
            version: 0,
            len: 0,
            hasher: DefaultHashBuilder::default(),
            groups: (0..GROUPS).map(|_| Arc::clone(&group)).collect(),
        };
        RoutingTable {
            shared: Arc::new(ArcSwap::from_pointee(current.clone())),
            current,
            pending: HashMap::new(),
        }
    }

    /// A handle for a shard.
    pub fn reader(&self) -> RoutingReader {
        RoutingReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Routes `agent` by `route` from the next publish on.
    pub fn set(&mut self, agent: &str, route: Route) {
        self.pending.insert(agent.into(), Some(route));
    }

    /// Removes `agent`'s route from the next publish on (frames to it get NACK `NO_ROUTE`).
    pub fn remove(&mut self, agent: &str) {
        self.pending.insert(agent.into(), None);
    }

    /// Changes waiting for the next publish.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The snapshot the shards see now.
    pub fn current(&self) -> &RoutingSnapshot {
        &self.current
    }

    /// Applies the pending changes to copies of the buckets they touch and publishes the new
    /// snapshot; returns its version. Shards see it at their next load.
    pub fn publish(&mut self) -> u64 {
        if self.pending.is_empty() {
            return self.current.version;
        }
        let hasher = self.current.hasher.clone();
        let mut groups: Vec<Arc<[Bucket]>> = self.current.groups.to_vec();
        let mut len = self.current.len;
        // Taken, not drained: draining would keep the capacity of the largest batch ever (1M
        // at start) and scan all of it on every later publish.
        for (agent, change) in std::mem::take(&mut self.pending) {
            let hash = hasher.hash_one(&*agent);
            let (g, b) = bucket_of(hash);
            // Copy-on-write: the first change to a group or a bucket copies it, later ones
            // reuse the copy.
            let Some(group) = groups.get_mut(g) else {
                continue;
            };
            let Some(bucket) = Arc::make_mut(group).get_mut(b) else {
                continue;
            };
            match change {
                Some(route) => {
                    if bucket.set(hash, &agent, route, &hasher) {
                        len += 1;
                    }
                }
                None => {
                    if bucket.remove(hash, agent.as_bytes(), &hasher) {
                        len -= 1;
                    }
                }
            }
        }
        self.current = RoutingSnapshot {
            version: self.current.version + 1,
            len,
            hasher,
            groups: groups.into(),
        };
        self.shared.store(Arc::new(self.current.clone()));
        self.current.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(n: u32) -> String {
        format!("spiffe://d{}.example/agent/a{n}", n % 7)
    }

    #[test]
    fn shards_see_changes_only_after_a_publish_and_old_snapshots_never_change() {
        let mut table = RoutingTable::new();
        let reader = table.reader();
        table.set(
            &agent(1),
            Route::Local {
                shard: 0,
                connection: 7,
            },
        );
        assert_eq!(
            reader.load().lookup(&agent(1)),
            None,
            "not before the publish"
        );
        assert_eq!(table.publish(), 1);
        let v1 = reader.load();
        assert_eq!(
            v1.lookup(&agent(1)),
            Some(Route::Local {
                shard: 0,
                connection: 7
            })
        );

        table.set(&agent(1), Route::Peer { peer: 3 });
        table.set(&agent(2), Route::Offline);
        table.publish();
        let v2 = reader.load();
        assert_eq!(v2.lookup(&agent(1)), Some(Route::Peer { peer: 3 }));
        assert_eq!(v2.lookup(&agent(2)), Some(Route::Offline));
        assert_eq!(
            v1.lookup(&agent(1)),
            Some(Route::Local {
                shard: 0,
                connection: 7
            })
        );
        assert_eq!(v1.lookup(&agent(2)), None);
        assert_eq!((v1.len(), v2.len()), (1, 2));

        table.remove(&agent(1));
        table.remove(&agent(99));
        table.publish();
        let v3 = reader.load();
        assert_eq!(v3.lookup(&agent(1)), None);
        assert_eq!(v3.len(), 1);
        assert_eq!(v3.version(), 3);
        assert_eq!(table.publish(), 3, "nothing pending, nothing published");
        let listed: Vec<_> = v3.entries().collect();
        assert_eq!(listed, [(agent(2).as_str(), Route::Offline)]);
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 64);
        assert_eq!(std::mem::align_of::<Option<Slot>>(), 64);
    }

    #[test]
    fn entries_list_every_route_once() {
        let mut table = RoutingTable::new();
        for n in 0..5_000 {
            table.set(&agent(n), Route::Peer { peer: n });
        }
        for n in (0..5_000).step_by(3) {
            table.remove(&agent(n));
        }
        table.publish();
        let mut listed: Vec<(String, Route)> = table
            .current()
            .entries()
            .map(|(a, r)| (a.to_owned(), r))
            .collect();
        let mut expected: Vec<(String, Route)> = (0..5_000)
            .filter(|n| n % 3 != 0)
            .map(|n| (agent(n), Route::Peer { peer: n }))
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(listed, expected);
    }

    #[test]
    fn a_publish_copies_only_the_buckets_it_changes() {
        let mut table = RoutingTable::new();
        for n in 0..100_000 {
            table.set(&agent(n), Route::Peer { peer: n % 5 });
        }
        table.publish();
        let before = table.reader().load();
        table.set(&agent(42), Route::Offline);
        table.publish();
        let after = table.reader().load();
        assert!(!after.shares_bucket_with(&before, &agent(42)));
        let shared = (0..100_000)
            .filter(|n| *n != 42)
            .filter(|n| after.shares_bucket_with(&before, &agent(*n)))
            .count();
        // Only the ~24 routes that share agent 42's bucket were copied.
        assert!(shared > 99_900, "{shared}");
        assert_eq!(after.lookup(&agent(42)), Some(Route::Offline));
        assert_eq!(before.lookup(&agent(42)), Some(Route::Peer { peer: 2 }));
    }

    #[test]
    fn long_agent_ids_are_routed_like_short_ones() {
        let mut table = RoutingTable::new();
        let long = format!(
            "spiffe://{}.example/agent/{}",
            "d".repeat(60),
            "n".repeat(100)
        );
        let edge = "x".repeat(INLINE);
        table.set(&long, Route::Peer { peer: 1 });
        table.set(&edge, Route::Peer { peer: 2 });
        table.publish();
        let snapshot = table.reader().load();
        assert_eq!(snapshot.lookup(&long), Some(Route::Peer { peer: 1 }));
        assert_eq!(snapshot.lookup(&edge), Some(Route::Peer { peer: 2 }));
        assert_eq!(snapshot.lookup(&long[..long.len() - 1]), None);
        assert_eq!(snapshot.lookup(&edge[..INLINE - 1]), None);
    }

    #[test]
    fn a_route_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 64);
    }

    #[test]
    fn removals_keep_every_other_route_findable() {
        // Many routes per bucket, then remove every third: backward shifts must not lose any.
        let mut table = RoutingTable::new();
        for n in 0..50_000 {
            table.set(&agent(n), Route::Peer { peer: n });
        }
        table.publish();
        for n in (0..50_000).step_by(3) {
            table.remove(&agent(n));
        }
        table.publish();
        let s = table.reader().load();
        for n in 0..50_000 {
            let expected = (n % 3 != 0).then_some(Route::Peer { peer: n });
            assert_eq!(s.lookup(&agent(n)), expected, "agent {n}");
        }
        assert_eq!(s.len(), 50_000 - 16_667);
        // And they can come back.
        for n in (0..50_000).step_by(3) {
            table.set(&agent(n), Route::Offline);
        }
        table.publish();
        let s = table.reader().load();
        assert!(
            (0..50_000)
                .step_by(3)
                .all(|n| s.lookup(&agent(n)) == Some(Route::Offline))
        );
        assert_eq!(s.len(), 50_000);
    }

    #[test]
    fn random_changes_agree_with_a_plain_map() {
        let mut table = RoutingTable::new();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..200 {
            for _ in 0..500 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = agent((x % 3_000) as u32);
                if x % 5 < 2 {
                    table.remove(&key);
                    model.remove(&key);
                } else {
                    let route = Route::Peer {
                        peer: (x >> 32) as u32,
                    };
                    table.set(&key, route);
                    model.insert(key, route);
                }
            }
            table.publish();
            if round % 20 == 19 {
                let s = table.reader().load();
                assert_eq!(s.len(), model.len());
                for n in 0..3_000 {
                    let key = agent(n);
                    assert_eq!(s.lookup(&key), model.get(&key).copied(), "{key}");
                }
            }
        }
    }

    #[test]
    fn prepared_lookups_agree_with_plain_ones() {
        let mut table = RoutingTable::new();
        for n in 0..10_000 {
            table.set(&agent(n), Route::Peer { peer: n });
        }
        table.publish();
        let s = table.reader().load();
        for n in 0..12_000 {
            let a = agent(n);
            assert_eq!(s.lookup_prepared(&a, s.prepare(&a)), s.lookup(&a));
        }
    }

    #[test]
    fn a_cached_reader_follows_publishes() {
        let mut table = RoutingTable::new();
        let mut cache = table.reader().cache();
        assert_eq!(cache.load().version(), 0);
        table.set(&agent(5), Route::Unreachable);
        table.publish();
        assert_eq!(cache.load().version(), 1);
        assert_eq!(cache.load().lookup(&agent(5)), Some(Route::Unreachable));
    }
}
