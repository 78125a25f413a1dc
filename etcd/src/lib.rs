//! A domain's shared state in etcd, mirrored in memory (issue 19: several gateways per domain).
//!
//! Each gateway of a domain keeps the part of etcd under the domain's prefix
//! (`/agw/<domain>/` by default) in a [`Shared`] mirror:
//! - **reads** come from memory: loaded with one range read at start, then kept current by a
//!   watch from the revision that read saw; a gateway keeps serving what it knows while etcd is
//!   unreachable or has lost quorum;
//! - **writes** are etcd transactions guarded on what the writer saw ([`Guard`]): two gateways
//!   that decide on the same record at once cannot both commit (one gets
//!   [`CommitError::Conflict`] and decides again on the newer state); without quorum a write
//!   fails within the configured timeout ([`CommitError::Unavailable`]), never half-applied;
//! - **changes** that other gateways commit reach [`Shared::subscribe`]rs, in revision order,
//!   on the mirror's thread;
//! - **held keys** ([`Shared::hold`]) say what is true only while this gateway lives (that it
//!   is a member of the domain, and where it listens): written with a lease the mirror keeps
//!   alive, so that etcd deletes them [`LEASE_TTL_S`] seconds after the gateway dies.
//!
//! The etcd client is async (tokio, tonic); the mirror runs it on a thread of its own, so the
//! authority and the registry, which are synchronous, call [`Shared::commit`] and wait for the
//! answer. Keys are strings below the prefix; values are bytes (the stores' protobuf records, or
//! decimal counters that `etcdctl get` shows as they are).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};

/// Seconds a held key outlives its gateway (the mirror renews its lease every second).
pub const LEASE_TTL_S: i64 = 3;

pub mod cluster;

/// Where the domain's etcd cluster is and how long a write may wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members (`http://127.0.0.1:2379`); the client spreads
    /// requests over those that answer.
    pub endpoints: Vec<String>,
    /// Every key of the domain lives below it.
    pub prefix: String,
    /// A write (or the first read) not answered within it fails: etcd lost quorum or is
    /// unreachable.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// The cluster at `endpoints`, the domain's keys under `/agw/<domain>/`, writes waiting at
    /// most 2 s.
    pub fn new(endpoints: Vec<String>, domain: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: format!("/agw/{domain}/"),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The keys this gateway holds, and what changed since the task that writes them last woke
/// (so a wake costs what changed, not what is held).
#[derive(Debug, Default)]
struct Held {
    all: BTreeMap<String, Vec<u8>>,
    changed: BTreeMap<String, Option<Vec<u8>>>,
}

/// Changes to held keys written in one transaction (etcd's default limit is 128 operations).
const HELD_BATCH: usize = 128;

/// One key as the mirror holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    /// The etcd revision of the key's last change (what guards compare).
    pub mod_revision: i64,
}

/// What a write expects of a key, checked by etcd in the write's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The key was last changed at this revision (0: the key does not exist).
    Revision(String, i64),
    /// The key holds exactly this value.
    Value(String, Vec<u8>),
}

/// A change a write makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A change of one key, as subscribers hear it: its new value, or `None` when deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub value: Option<Vec<u8>>,
    /// Made by this mirror's own write (a subscriber may have acted on it already).
    pub local: bool,
}

/// Why a write was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// A guard failed: another gateway changed the key since this one read it. Nothing was
    /// changed.
    #[error("another gateway of the domain changed the same record first")]
    Conflict,
    /// etcd did not answer in time or refused: no quorum, unreachable, stopped. As with any
    /// timed-out request to a replicated store, a write that reached a member may still be
    /// applied when quorum returns (the mirror then hears it like any other change).
    #[error("the domain's etcd cluster cannot take writes now: {0}")]
    Unavailable(String),
}

/// The mirror could not be started.
#[derive(Debug, thiserror::Error)]
#[error("etcd at {endpoints}: {reason}")]
pub struct ConnectError {
    endpoints: String,
    reason: String,
}

type Listener = Box<dyn Fn(&[Change]) + Send + Sync>;

/// What a write sends to the mirror's thread, and where its answer goes.
struct Request {
    guards: Vec<Guard>,
    ops: Vec<Op>,
    answer: crossbeam_channel::Sender<Result<i64, CommitError>>,
}

/// The mirror of one domain's keys. Cheap to clone; the thread that follows etcd ends when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
}

struct Inner {
    config: EtcdConfig,
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Keys this gateway deleted, with the deletion's revision, until the watch has passed
    /// it: an older change the watch still delivers must not bring the key back.
    deleted: Mutex<BTreeMap<String, i64>>,
    /// The newest revision the mirror has applied.
    revision: AtomicI64,
    listeners: Mutex<Vec<(String, Listener)>>,
    /// Keys held while this gateway lives, and a wake-up for the task that writes them.
    held: Mutex<Held>,
    held_changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.inner.config.prefix)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Connects, reads every key under the prefix and starts following changes. Fails when
    /// no member answers within the timeout: a gateway configured for etcd does not start on
    /// state it cannot read.
    pub fn connect(config: EtcdConfig) -> Result<Shared, ConnectError> {
        let failed = |reason: String| ConnectError {
            endpoints: config.endpoints.join(","),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let inner = Arc::new(Inner {
            config: config.clone(),
            entries: RwLock::new(BTreeMap::new()),
            deleted: Mutex::new(BTreeMap::new()),
            revision: AtomicI64::new(0),
            listeners: Mutex::new(Vec::new()),
            held: Mutex::new(Held::default()),
            held_changed: tokio::sync::Notify::new(),
        });
        let client = runtime
            .block_on(async {
                let options = ConnectOptions::new()
                    .with_connect_timeout(config.timeout)
                    .with_timeout(config.timeout)
                    .with_keep_alive(Duration::from_secs(2), config.timeout);
                let mut client = Client::connect(&config.endpoints, Some(options)).await?;
                inner.load(&mut client).await?;
                Ok::<_, etcd_client::Error>(client)
            })
            .map_err(|e| failed(e.to_string()))?;
        let (requests, queue) = tokio::sync::mpsc::unbounded_channel();
        let follower = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("agw-etcd".into())
            .spawn(move || runtime.block_on(follower.run(client, queue)))
            .map_err(|e| failed(e.to_string()))?;
        Ok(Shared { inner, requests })
    }

    /// The newest etcd revision applied to the mirror.
    pub fn revision(&self) -> i64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// The key as the mirror holds it.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.inner.read().get(key).cloned()
    }

    /// Every key starting with `prefix`, in key order.
    pub fn scan(&self, prefix: &str) -> Vec<(String, Entry)> {
        self.inner
            .read()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// The revision of a key's last change as the mirror knows it (0: absent): the guard for
    /// a write that decided on what the mirror showed.
    pub fn seen(&self, key: &str) -> Guard {
        Guard::Revision(
            key.to_owned(),
            self.inner.read().get(key).map_or(0, |e| e.mod_revision),
        )
    }

    /// Applies `ops` if every guard holds, as one etcd transaction; the mirror holds the
    /// result when this returns. Returns the revision of the write.
    pub fn commit(&self, guards: Vec<Guard>, ops: Vec<Op>) -> Result<i64, CommitError> {
        let (answer, answered) = crossbeam_channel::bounded(1);
        self.requests
            .send(Request {
                guards,
                ops,
                answer,
            })
            .map_err(|_| CommitError::Unavailable("the mirror stopped".into()))?;
        // The client's own timeout ends the request; this one only guards a stuck thread.
        answered
            .recv_timeout(self.inner.config.timeout * 2)
            .map_err(|_| CommitError::Unavailable("no answer in time".into()))?
    }

    /// Keeps `key` = `value` in etcd while this gateway lives (see [`LEASE_TTL_S`]); written
    /// again after a lost lease. Returns at once: the mirror's thread writes it.
    pub fn hold(&self, key: &str, value: Vec<u8>) {
        let mut held = self.inner.held();
        held.all.insert(key.to_owned(), value.clone());
        held.changed.insert(key.to_owned(), Some(value));
        drop(held);
        self.inner.held_changed.notify_one();
    }

    /// Stops holding `key`: it is deleted from etcd (at once, or when the lease ends), unless
    /// another gateway wrote it since (the key is theirs then).
    pub fn release(&self, key: &str) {
        let mut held = self.inner.held();
        held.all.remove(key);
        held.changed.insert(key.to_owned(), None);
        drop(held);
        self.inner.held_changed.notify_one();
    }

    /// Calls `listener` with every change of keys under `prefix` made by any gateway
    /// (this one's writes included, once each), in revision order, on the mirror's thread.
    pub fn subscribe(&self, prefix: &str, listener: impl Fn(&[Change]) + Send + Sync + 'static) {
        if let Ok(mut all) = self.inner.listeners.lock() {
            all.push((prefix.to_owned(), Box::new(listener)));
        }
    }
}

impl Inner {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the held keys with a lease and keeps it alive; on a lost lease (etcd
    /// unreachable past its TTL), takes a new one and writes them all again.
    async fn keep_held(self: Arc<Self>, mut client: Client) {
        loop {
            let lease = match client.lease_grant(LEASE_TTL_S, None).await {
                Ok(granted) => granted.id(),
                Err(e) => {
                    tracing::debug!(error = %e, "etcd lease: retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            let Ok((mut keeper, mut replies)) = client.lease_keep_alive(lease).await else {
                continue;
            };
            // A new lease: everything held is written again under it.
            let mut written: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            let mut todo: Vec<(String, Option<Vec<u8>>)> = {
                let mut held = self.held();
                held.changed.clear();
                held.all
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(v.clone())))
                    .collect()
            };
            'lease: loop {
                for batch in todo.chunks(HELD_BATCH) {
                    let puts: Vec<TxnOp> = batch
                        .iter()
                        .filter_map(|(key, value)| {
                            let options = PutOptions::new().with_lease(lease);
                            let value = value.clone()?;
                            Some(TxnOp::put(self.full_key(key), value, Some(options)))
                        })
                        .collect();
                    if !puts.is_empty() && client.txn(Txn::new().and_then(puts)).await.is_err() {
                        break 'lease;
                    }
                    for (key, value) in batch {
                        if let Some(value) = value {
                            written.insert(key.clone(), value.clone());
                            continue;
                        }
                        // Deleted only while it holds what this gateway wrote: another
                        // gateway may have written it since, and it is theirs then.
                        let Some(mine) = written.remove(key) else {
                            continue;
                        };
                        let full = self.full_key(key);
                        let txn = Txn::new()
                            .when(vec![Compare::value(full.clone(), CompareOp::Equal, mine)])
                            .and_then(vec![TxnOp::delete(full, None)]);
                        if client.txn(txn).await.is_err() {
                            break 'lease;
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if keeper.keep_alive().await.is_err() {
                            break 'lease;
                        }
                        match replies.message().await {
                            Ok(Some(reply)) if reply.ttl() > 0 => {}
                            _ => break 'lease,
                        }
                    }
                    () = self.held_changed.notified() => {}
                }
                todo = std::mem::take(&mut self.held().changed)
                    .into_iter()
                    .collect();
            }
            tracing::warn!("etcd lease lost: holding this gateway's keys again");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    /// Replaces the mirror with what etcd holds now; subscribers hear the difference.
    async fn load(&self, client: &mut Client) -> Result<(), etcd_client::Error> {
        let reply = client
            .get(
                self.config.prefix.as_bytes(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = reply.header().map_or(0, |h| h.revision());
        let mut fresh = BTreeMap::new();
        for kv in reply.kvs() {
            if let Some(key) = self.relative(kv.key()) {
                fresh.insert(
                    key,
                    Entry {
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    },
                );
            }
        }
        let changes = {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            let mut changes = Vec::new();
            for (key, entry) in &fresh {
                if entries.get(key).map(|e| &e.value) != Some(&entry.value) {
                    changes.push(Change {
                        key: key.clone(),
                        value: Some(entry.value.clone()),
                        local: false,
                    });
                }
            }
            for key in entries.keys() {
                if !fresh.contains_key(key) {
                    changes.push(Change {
                        key: key.clone(),
                        value: None,
                        local: false,
                    });
                }
            }
            *entries = fresh;
            self.tombstones().clear();
            changes
        };
        self.revision.store(revision, Ordering::Release);
        self.tell(&changes);
        Ok(())
    }

    fn relative(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.config.prefix.as_str())
            .map(str::to_owned)
    }

    fn tombstones(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, i64>> {
        self.deleted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies changes made at `revision` unless the mirror already holds them or newer.
    /// `watched`: they come from the watch, which delivers nothing older afterwards.
    fn apply(&self, revision: i64, changes: Vec<(String, Option<Vec<u8>>)>, watched: bool) {
        let mut told = Vec::new();
        {
            let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
            let mut deleted = self.tombstones();
            for (key, value) in changes {
                let held = entries
                    .get(&key)
                    .map(|e| e.mod_revision)
                    .or_else(|| deleted.get(&key).copied())
                    .unwrap_or(0);
                if held >= revision {
                    continue;
                }
                match value {
                    Some(value) => {
                        deleted.remove(&key);
                        entries.insert(
                            key.clone(),
                            Entry {
                                value: value.clone(),
                                mod_revision: revision,
                            },
                        );
                        told.push(Change {
                            key,
                            value: Some(value),
                            local: !watched,
                        });
                    }
                    None => {
                        if !watched {
                            deleted.insert(key.clone(), revision);
                        }
                        if entries.remove(&key).is_some() {
                            told.push(Change {
                                key,
                                value: None,
                                local: !watched,
                            });
                        }
                    }
                }
            }
            if watched {
                deleted.retain(|_, at| *at > revision);
            }
        }
        self.revision.fetch_max(revision, Ordering::AcqRel);
        self.tell(&told);
    }

    fn tell(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let Ok(listeners) = self.listeners.lock() else {
            return;
        };
        for (prefix, listener) in listeners.iter() {
            let mine: Vec<Change> = changes
                .iter()
                .filter(|c| c.key.starts_with(prefix.as_str()))
                .cloned()
                .collect();
            if !mine.is_empty() {
                listener(&mine);
            }
        }
    }

    /// The mirror's thread: writes as they come, changes as etcd sends them; on a broken
    /// watch, reads everything again and follows from there (after a pause that grows to 1 s).
    async fn run(
        self: Arc<Self>,
        client: Client,
        mut queue: tokio::sync::mpsc::UnboundedReceiver<Request>,
    ) {
        // Ends with the runtime, when the last `Shared` is gone.
        tokio::spawn(Arc::clone(&self).keep_held(client.clone()));
        let mut pause = Duration::from_millis(50);
        loop {
            let mut watching = client.clone();
            let from = self.revision.load(Ordering::Acquire) + 1;
            let options = WatchOptions::new().with_prefix().with_start_revision(from);
            let mut stream = match watching
                .watch(self.config.prefix.as_bytes(), Some(options))
                .await
            {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch: retrying");
                    if !self.serve_for(&client, &mut queue, pause).await {
                        return;
                    }
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let broken = loop {
                tokio::select! {
                    request = queue.recv() => match request {
                        Some(request) => self.spawn_commit(&client, request),
                        None => return,
                    },
                    message = stream.message() => match message {
                        Ok(Some(reply)) if reply.canceled() || reply.compact_revision() > 0 => {
                            break format!("watch cancelled: {}", reply.cancel_reason());
                        }
                        Ok(Some(reply)) => {
                            for event in reply.events() {
                                let Some(kv) = event.kv() else { continue };
                                let Some(key) = self.relative(kv.key()) else { continue };
                                let value = (event.event_type() == EventType::Put)
                                    .then(|| kv.value().to_vec());
                                self.apply(kv.mod_revision(), vec![(key, value)], true);
                            }
                            pause = Duration::from_millis(50);
                        }
                        Ok(None) => break "watch ended".to_owned(),
                        Err(e) => break e.to_string(),
                    },
                }
            };
            tracing::warn!(reason = %broken, "etcd watch broken: reading the domain's state again");
            // What changed while the watch was down comes with the fresh read.
            let mut reader = client.clone();
            while let Err(e) = self.load(&mut reader).await {
                tracing::warn!(error = %e, "etcd: cannot read the domain's state; retrying");
                if !self.serve_for(&client, &mut queue, pause).await {
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }

    /// Takes writes (which fail or succeed on their own) for `pause`; false when every
    /// [`Shared`] is gone.
    async fn serve_for(
        self: &Arc<Self>,
        client: &Client,
        queue: &mut tokio::sync::mpsc::UnboundedReceiver<Request>,
        pause: Duration,
    ) -> bool {
        let until = tokio::time::sleep(pause);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return true,
                request = queue.recv() => match request {
                    Some(request) => self.spawn_commit(client, request),
                    None => return false,
                },
            }
        }
    }

    fn spawn_commit(self: &Arc<Self>, client: &Client, request: Request) {
        let mut client = client.clone();
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            let result = inner.commit(&mut client, request.guards, request.ops).await;
            let _ = request.answer.send(result);
        });
    }

    async fn commit(
        &self,
        client: &mut Client,
        guards: Vec<Guard>,
        ops: Vec<Op>,
    ) -> Result<i64, CommitError> {
        let compares: Vec<Compare> = guards
            .iter()
            .map(|g| match g {
                Guard::Revision(key, 0) => {
                    Compare::create_revision(self.full_key(key), CompareOp::Equal, 0)
                }
                Guard::Revision(key, revision) => {
                    Compare::mod_revision(self.full_key(key), CompareOp::Equal, *revision)
                }
                Guard::Value(key, value) => {
                    Compare::value(self.full_key(key), CompareOp::Equal, value.clone())
                }
            })
            .collect();
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => TxnOp::put(self.full_key(key), value.clone(), None),
                Op::Delete(key) => TxnOp::delete(self.full_key(key), None),
            })
            .collect();
        let reply = tokio::time::timeout(
            self.config.timeout,
            client.txn(Txn::new().when(compares).and_then(txn_ops)),
        )
        .await
        .map_err(|_| {
            CommitError::Unavailable(format!("no answer within {:?}", self.config.timeout))
        })?
        .map_err(|e| CommitError::Unavailable(e.to_string()))?;
        if !reply.succeeded() {
            return Err(CommitError::Conflict);
        }
        let revision = reply.header().map_or(0, |h| h.revision());
        self.apply(
            revision,
            ops.into_iter()
                .map(|op| match op {
                    Op::Put(key, value) => (key, Some(value)),
                    Op::Delete(key) => (key, None),
                })
                .collect(),
            false,
        );
        Ok(revision)
    }
}
