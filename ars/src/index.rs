//! The in-memory discovery index: profiles in a slab, inverted postings from capability terms
//! and their words, and a sorted term set for prefix queries.
//!
//! Persistent: every structure is an `imbl` tree that shares its nodes with its copies, so
//! cloning the index is a handful of reference counts, whatever its size, and a change after
//! a clone copies only the nodes on its path (and the postings lists it touches). This is how
//! the registry publishes a snapshot for discovery after each batch of changes.
//!
//! Matching: a query capability ending in `*` matches every capability starting with the rest
//! (quality 1); otherwise a profile capability equal to it matches with quality 3, and one
//! containing it as a word ("booking" in "hotel booking") with quality 2. Capabilities are
//! compared normalised: lowercase, words separated by single spaces. Every query capability
//! must match; a profile's score is the sum of its best qualities.
//!
//! Ranking: score (higher first), then online before not, then local before remote, then
//! fewer gateway hops, then agent ID (ascending), so equal queries give equal answers.

use std::sync::Arc;

use agw_proto::pb;
use hashbrown::HashMap;
use imbl::{GenericHashMap, OrdSet, Vector, shared_ptr::DefaultSharedPtr};

/// A persistent map keyed by shared strings, with hashbrown's fast hasher.
type Map<V> = GenericHashMap<Arc<str>, V, hashbrown::DefaultHashBuilder, DefaultSharedPtr>;

/// Slot numbers, sorted; shared with snapshots until changed.
type Postings = Arc<Vec<u32>>;

/// Prefix queries stop after this many distinct capability terms.
pub const MAX_PREFIX_TERMS: usize = 10_000;

/// Where a profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Registered here.
    Local,
    /// Synchronised from a peer gateway.
    Remote {
        /// The peer's gateway ID.
        peer: String,
        /// Gateways between us and the agent.
        hops: u32,
    },
}

/// A profile in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The profile as discovery returns it (address already the right one for outsiders).
    pub profile: pb::AgentProfile,
    /// Where it comes from.
    pub origin: Origin,
}

/// The index. Slots are reused; postings hold slot numbers, sorted. `Clone` is cheap (see the
/// module's note).
#[derive(Debug, Default, Clone)]
pub struct Index {
    slots: Vector<Option<Arc<Entry>>>,
    free: Vector<u32>,
    by_agent: Map<u32>,
    exact: Map<Postings>,
    words: Map<Postings>,
    terms: OrdSet<Arc<str>>,
}

/// `Hotel  Booking` -> `hotel booking`.
pub fn normalise(capability: &str) -> String {
    capability
        .split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

fn insert_sorted(map: &mut Map<Postings>, key: &str, slot: u32) {
    let list = match map.get_mut(key) {
        Some(list) => list,
        None => map.entry(Arc::from(key)).or_default(),
    };
    if let Err(at) = list.binary_search(&slot) {
        Arc::make_mut(list).insert(at, slot);
    }
}

/// Removes `slot` from `key`'s postings; true when the list is left empty (and removed).
fn remove_sorted(map: &mut Map<Postings>, key: &str, slot: u32) -> bool {
    let Some(list) = map.get_mut(key) else {
        return false;
    };
    if let Ok(at) = list.binary_search(&slot) {
        Arc::make_mut(list).remove(at);
    }
    if list.is_empty() {
        map.remove(key);
        return true;
    }
    false
}

/// What a discovery query asks, normalised.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Normalised capabilities; a trailing `*` asks for a prefix.
    pub capabilities: Vec<String>,
    /// Any of these protocols; empty for any.
    pub protocols: Vec<i32>,
    /// Any of these languages; empty for any.
    pub languages: Vec<String>,
    /// Only this domain; empty for any.
    pub domain: String,
    /// Only RUNNING agents.
    pub online_only: bool,
    /// At most this many results.
    pub limit: usize,
}

impl Index {
    /// Profiles in the index.
    pub fn len(&self) -> usize {
        self.by_agent.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.by_agent.is_empty()
    }

    /// The entry of `agent`.
    pub fn get(&self, agent: &str) -> Option<&Entry> {
        let slot = *self.by_agent.get(agent)?;
        self.slots.get(slot as usize)?.as_deref()
    }

    /// Adds or replaces the entry of its agent.
    pub fn upsert(&mut self, entry: Entry) {
        self.remove(&entry.profile.agent);
        let slot = match self.free.pop_back() {
            Some(s) => s,
            None => {
                self.slots.push_back(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        for cap in &entry.profile.capabilities {
            let term = normalise(cap);
            for word in term.split(' ') {
                insert_sorted(&mut self.words, word, slot);
            }
            insert_sorted(&mut self.exact, &term, slot);
            if !self.terms.contains(term.as_str()) {
                self.terms.insert(Arc::from(term));
            }
        }
        self.by_agent
            .insert(Arc::from(entry.profile.agent.as_str()), slot);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(Arc::new(entry));
        }
    }

    /// Removes the entry of `agent`, returning it.
    pub fn remove(&mut self, agent: &str) -> Option<Entry> {
        let slot = self.by_agent.remove(agent)?;
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        for cap in &entry.profile.capabilities {
            let term = normalise(cap);
            for word in term.split(' ') {
                remove_sorted(&mut self.words, word, slot);
            }
            if remove_sorted(&mut self.exact, &term, slot) {
                self.terms.remove(term.as_str());
            }
        }
        self.free.push_back(slot);
        Some(Arc::unwrap_or_clone(entry))
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().flatten().map(Arc::as_ref)
    }

    /// Slots matching one query capability, with their quality.
    fn candidates(&self, capability: &str) -> HashMap<u32, u32> {
        let mut out = HashMap::new();
        if let Some(prefix) = capability.strip_suffix('*') {
            let terms = self
                .terms
                .range::<_, str>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|t| t.starts_with(prefix))
                .take(MAX_PREFIX_TERMS);
            for term in terms {
                for &slot in self.exact.get(&**term).into_iter().flat_map(|l| l.iter()) {
                    out.entry(slot).or_insert(1);
                }
            }
            return out;
        }
        for &slot in self
            .words
            .get(capability)
            .into_iter()
            .flat_map(|l| l.iter())
        {
            out.insert(slot, 2);
        }
        for &slot in self
            .exact
            .get(capability)
            .into_iter()
            .flat_map(|l| l.iter())
        {
            out.insert(slot, 3);
        }
        out
    }

    /// An upper bound on the profiles one query capability matches, without collecting them.
    fn estimate(&self, capability: &str) -> usize {
        if capability.ends_with('*') {
            return usize::MAX;
        }
        self.exact.get(capability).map_or(0, |l| l.len())
            + self.words.get(capability).map_or(0, |l| l.len())
    }

    /// How `slot` matches one query capability: by binary search in the postings (sorted, so
    /// cheap even for a broad term), or on the entry's own list for a prefix.
    fn quality(&self, slot: u32, entry: &Entry, capability: &str) -> Option<u32> {
        if capability.ends_with('*') {
            return quality_of(&entry.profile.capabilities, capability);
        }
        let has = |map: &Map<Postings>| {
            map.get(capability)
                .is_some_and(|list| list.binary_search(&slot).is_ok())
        };
        if has(&self.exact) {
            Some(3)
        } else if has(&self.words) {
            Some(2)
        } else {
            None
        }
    }

    /// The best matches for `query`, best first, with `applicable` deciding whether a remote
    /// peer's agents may be returned.
    ///
    /// The capability with the fewest postings drives: its candidates are collected, and each
    /// is checked against the other capabilities on its own capability list, so a broad term
    /// in the query costs nothing beyond the narrow one's candidates.
    pub fn discover(&self, query: &Query, applicable: impl Fn(&str) -> bool) -> Vec<&Entry> {
        let Some(driver) = query
            .capabilities
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| self.estimate(c))
            .map(|(i, _)| i)
        else {
            return Vec::new();
        };
        let mut scored: Vec<(u32, &Entry)> = self
            .candidates(&query.capabilities[driver])
            .into_iter()
            .filter_map(|(slot, quality)| {
                let entry = self.slots.get(slot as usize)?.as_deref()?;
                let mut score = quality;
                for (i, capability) in query.capabilities.iter().enumerate() {
                    if i != driver {
                        score += self.quality(slot, entry, capability)?;
                    }
                }
                self.admits(entry, query, &applicable)
                    .then_some((score, entry))
            })
            .collect();
        let key = |(score, e): &(u32, &Entry)| {
            let online = e.profile.status == pb::Status::Running as i32;
            let (remote, hops) = match &e.origin {
                Origin::Local => (false, 0),
                Origin::Remote { hops, .. } => (true, *hops),
            };
            (std::cmp::Reverse(*score), !online, remote, hops)
        };
        scored.sort_unstable_by(|a, b| {
            key(a)
                .cmp(&key(b))
                .then_with(|| a.1.profile.agent.cmp(&b.1.profile.agent))
        });
        scored.truncate(query.limit);
        scored.into_iter().map(|(_, e)| e).collect()
    }

    fn admits(&self, e: &Entry, q: &Query, applicable: &impl Fn(&str) -> bool) -> bool {
        let p = &e.profile;
        if let Origin::Remote { peer, .. } = &e.origin {
            if !applicable(peer) {
                return false;
            }
        }
        (q.protocols.is_empty() || p.protocols.iter().any(|x| q.protocols.contains(x)))
            && (q.languages.is_empty()
                || p.languages
                    .iter()
                    .any(|l| q.languages.iter().any(|w| w.eq_ignore_ascii_case(l))))
            && (q.domain.is_empty() || p.domain == q.domain)
            && (!q.online_only || p.status == pb::Status::Running as i32)
    }
}

/// Whether a profile's capabilities match a prefix query capability (`prefix*`, normalised):
/// quality 1, as in the postings, compared without allocating.
fn quality_of(capabilities: &[String], query: &str) -> Option<u32> {
    let prefix = query.strip_suffix('*')?;
    capabilities
        .iter()
        .any(|c| {
            let mut chars = normalised_chars(c);
            prefix.chars().all(|p| chars.next() == Some(p))
        })
        .then_some(1)
}

/// The characters of [`normalise`]`(capability)`, without building the string.
fn normalised_chars(capability: &str) -> impl Iterator<Item = char> + '_ {
    capability
        .split_whitespace()
        .enumerate()
        .flat_map(|(i, word)| {
            (i > 0)
                .then_some(' ')
                .into_iter()
                .chain(word.chars().flat_map(char::to_lowercase))
        })
}
