//! The translation pool (draft 2.5, "dual translation": natural language): off the shards,
//! it takes the messages the shards hand over (`agw_dataplane::translation`), finds their
//! language (the `language` field, or detected), translates their text into a language the
//! destination understands with the first configured engine that serves the pair, and sends
//! them back to the destination's shard. docs/translation.md tells what is translated when.
//! The same lanes convert structured payloads between JSON and protobuf for destinations
//! whose profile says which they accept, by the schemas agents registered (prost-reflect;
//! docs/protocols.md, formats): what cannot be converted is NACKed `FORMAT_UNSUPPORTED`.
//!
//! Lanes keep order: a message goes to the lane its destination's connection hashes to, and a
//! lane finishes one message before the next. A failure or an engine past the deadline NACKs
//! the message `TRANSLATION_FAILED`, or delivers it untranslated and marked, per the policy.

mod engines;
pub mod formats;
pub mod fuzzing;
mod text;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use std::collections::HashMap;

use agw_dataplane::{
    a2a::SharedDirectory,
    translation::{Done, Job, Recipient, Returns, TranslationPort, is_json, is_protobuf, media},
};
use agw_proto::{
    identity::AgentId,
    pb::{self, ErrorCode},
};
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use serde::Deserialize;
use tokio::sync::mpsc;

pub use engines::{Engine, EngineConfig, EngineKind};
pub use text::{Cache, Language, Text, detect};

/// What to do with a message that could not be translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// NACK it to its source, `TRANSLATION_FAILED`: the source may retry, or send it in
    /// another language.
    #[default]
    Nack,
    /// Deliver it untranslated, its `translation` saying it failed and why.
    Deliver,
}

/// The `[translation]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslationConfig {
    /// The engines, tried in order: the first that serves a pair translates it.
    #[serde(rename = "engine", default)]
    pub engines: Vec<EngineConfig>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// How long a message may take to translate, in milliseconds. Default 2,000.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Messages translated at once (each lane one at a time, in order). Default 16.
    #[serde(default = "default_lanes")]
    pub lanes: usize,
    /// Recent translations kept, by text and pair. Default 4,096.
    #[serde(default = "default_cache")]
    pub cache_entries: usize,
    /// Agent IDs and domains whose messages are never translated, sent or received.
    #[serde(default)]
    pub off: Vec<String>,
}

fn default_deadline_ms() -> u64 {
    2_000
}
fn default_lanes() -> usize {
    16
}
fn default_cache() -> usize {
    4_096
}

impl TranslationConfig {
    /// Translation by Apertium's APy at `url`, every other setting its default.
    pub fn apertium(url: &str) -> TranslationConfig {
        TranslationConfig {
            engines: vec![EngineConfig::new(EngineKind::Apertium, url)],
            ..TranslationConfig::formats_only()
        }
    }

    /// No engine: languages are never translated; the pool converts formats only. Every
    /// other setting its default.
    pub fn formats_only() -> TranslationConfig {
        TranslationConfig {
            engines: Vec::new(),
            on_failure: OnFailure::Nack,
            deadline_ms: default_deadline_ms(),
            lanes: default_lanes(),
            cache_entries: default_cache(),
            off: Vec::new(),
        }
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// Checks it before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.engines.is_empty() {
            return Err("translation: name at least one [[translation.engine]]".into());
        }
        if self.deadline_ms == 0 || self.lanes == 0 || self.lanes > 1024 {
            return Err("translation: deadline_ms must be > 0 and lanes 1..=1024".into());
        }
        for e in &self.engines {
            Engine::new(e)?;
        }
        Ok(())
    }
}

/// A configuration in one line, as `agwctl reload` reports a change.
pub fn describe(config: Option<&TranslationConfig>) -> String {
    let Some(c) = config else {
        return "off".into();
    };
    let engines: Vec<String> = c
        .engines
        .iter()
        .map(|e| format!("{}@{}", e.kind.name(), e.url))
        .collect();
    format!(
        "engines {}, on_failure {:?}, deadline {} ms, lanes {}, cache {}, off [{}]",
        engines.join(" "),
        c.on_failure,
        c.deadline_ms,
        c.lanes,
        c.cache_entries,
        c.off.join(" ")
    )
}

/// Messages a lane holds waiting, beyond the one it translates.
const LANE_QUEUE: usize = 64;

/// A translation's languages and engine: (from, to, engine).
pub type Route = (String, String, String);

/// What the pool did, for metrics and `agwctl stats`.
#[derive(Debug)]
pub struct TranslationStats {
    /// Messages translated, by (from, to, engine).
    pub translated: Mutex<Vec<(Route, u64)>>,
    /// Messages handed over and delivered as they were (already understood, order only,
    /// no text, switched off).
    pub unchanged: AtomicU64,
    /// Messages that could not be translated (NACKed or delivered marked).
    pub failed: AtomicU64,
    /// Segments found in the cache, and asked of an engine.
    pub cache_hits: AtomicU64,
    pub engine_calls: AtomicU64,
    /// Structured payloads converted into a format their destination accepts, and refused
    /// (`FORMAT_UNSUPPORTED`).
    pub converted: AtomicU64,
    pub conversion_failed: AtomicU64,
    /// Microseconds engines took per translated message, and what the pool added to that
    /// (from taking the message off the queue to sending it back).
    pub engine_us: Mutex<hdrhistogram::Histogram<u64>>,
    pub added_us: Mutex<hdrhistogram::Histogram<u64>>,
}

impl TranslationStats {
    fn new() -> Result<TranslationStats, String> {
        let histogram = || {
            hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 2)
                .map(Mutex::new)
                .map_err(|e| e.to_string())
        };
        Ok(TranslationStats {
            translated: Mutex::default(),
            unchanged: AtomicU64::default(),
            failed: AtomicU64::default(),
            cache_hits: AtomicU64::default(),
            engine_calls: AtomicU64::default(),
            converted: AtomicU64::default(),
            conversion_failed: AtomicU64::default(),
            engine_us: histogram()?,
            added_us: histogram()?,
        })
    }

    fn count_translated(&self, from: Language, to: Language, engine: &str) {
        let Ok(mut t) = self.translated.lock() else {
            return;
        };
        let key = (
            from.tag().to_owned(),
            to.tag().to_owned(),
            engine.to_owned(),
        );
        match t.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => t.push((key, 1)),
        }
    }

    /// The figures as `agwctl stats` shows them.
    pub fn to_wire(&self) -> pb::TranslationStats {
        let quantiles = |h: &Mutex<hdrhistogram::Histogram<u64>>| {
            h.lock()
                .map(|h| {
                    [0.5, 0.99, 0.999].map(|q| {
                        if h.is_empty() {
                            0
                        } else {
                            h.value_at_quantile(q)
                        }
                    })
                })
                .unwrap_or_default()
        };
        let [engine_p50, engine_p99, _] = quantiles(&self.engine_us);
        let [added_p50, added_p99, added_p999] = quantiles(&self.added_us);
        pb::TranslationStats {
            translated: self
                .translated
                .lock()
                .map(|t| {
                    t.iter()
                        .map(|((from, to, engine), n)| pb::TranslatedCount {
                            from: from.clone(),
                            to: to.clone(),
                            engine: engine.clone(),
                            count: *n,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            unchanged: self.unchanged.load(Relaxed),
            failed: self.failed.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            engine_calls: self.engine_calls.load(Relaxed),
            engine_p50_us: engine_p50,
            engine_p99_us: engine_p99,
            added_p50_us: added_p50,
            added_p99_us: added_p99,
            added_p999_us: added_p999,
            converted: self.converted.load(Relaxed),
            conversion_failed: self.conversion_failed.load(Relaxed),
        }
    }
}

/// The running pool.
#[derive(Debug)]
pub struct TranslationPool {
    pub stats: Arc<TranslationStats>,
    /// Dropped with the pool: its thread ends (shards that stopped may not have let their
    /// end of the queue go).
    _stop: crossbeam_channel::Sender<()>,
}

struct Shared {
    config: TranslationConfig,
    schemas: Schemas,
    engines: Vec<Engine>,
    cache: Mutex<Cache>,
    stats: Arc<TranslationStats>,
    returns: Vec<Returns>,
    max_body: usize,
}

impl TranslationPool {
    /// Starts the pool on `runtime`, reading `port`: a thread takes messages off the shards'
    /// queue and hands each to its lane (a task on the runtime).
    pub fn start(
        runtime: &tokio::runtime::Handle,
        port: TranslationPort,
        config: TranslationConfig,
        directory: SharedDirectory,
    ) -> Result<TranslationPool, String> {
        // Without an engine the pool converts formats only.
        if !config.engines.is_empty() {
            config.validate()?;
        }
        let engines = config
            .engines
            .iter()
            .map(Engine::new)
            .collect::<Result<Vec<_>, _>>()?;
        let stats = Arc::new(TranslationStats::new()?);
        let shared = Arc::new(Shared {
            schemas: Schemas {
                directory,
                parsed: Mutex::new(HashMap::new()),
            },
            cache: Mutex::new(Cache::new(config.cache_entries)),
            engines,
            stats: stats.clone(),
            returns: port.returns,
            max_body: port.max_body,
            config,
        });
        // Apertium's pairs, listed now and every five minutes (every ten seconds until it
        // answers).
        let lister = shared.clone();
        runtime.spawn(async move {
            loop {
                let mut wait = Duration::from_secs(300);
                for engine in &lister.engines {
                    match engine.list_pairs(Duration::from_secs(5)).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(engine = %engine.name, pairs = n, "translation pairs listed"),
                        Err(e) => {
                            tracing::warn!(engine = %engine.name, error = %e, "translation engine unreachable");
                            wait = Duration::from_secs(10);
                        }
                    }
                }
                tokio::time::sleep(wait).await;
            }
        });
        let mut lanes = Vec::with_capacity(shared.config.lanes);
        for _ in 0..shared.config.lanes {
            let (tx, mut rx) = mpsc::channel::<Job>(LANE_QUEUE);
            let lane = shared.clone();
            runtime.spawn(async move {
                while let Some(job) = rx.recv().await {
                    let (shard, taken) = (usize::from(job.shard), Instant::now());
                    let done = lane.handle(job, taken).await;
                    if let Some(r) = lane.returns.get(shard) {
                        r.send(done);
                    }
                }
            });
            lanes.push(tx);
        }
        let jobs = port.jobs;
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        std::thread::Builder::new()
            .name("agw-translation".into())
            .spawn(move || {
                // Ends with the pool, or when every shard has let its end of the queue go.
                loop {
                    let job = crossbeam_channel::select! {
                        recv(jobs) -> job => job,
                        recv(stopped) -> _ => return,
                    };
                    let Ok(job) = job else { return };
                    let lane = lane_of(job.shard, job.connection, lanes.len());
                    if let Some(tx) = lanes.get(lane)
                        && tx.blocking_send(job).is_err()
                    {
                        return;
                    }
                }
            })
            .map_err(|e| format!("translation thread: {e}"))?;
        Ok(TranslationPool { stats, _stop: stop })
    }
}

/// The lane of a destination connection.
fn lane_of(shard: u16, connection: u32, lanes: usize) -> usize {
    let h = (u64::from(shard) << 32 | u64::from(connection)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 32) as usize % lanes.max(1)
}

/// A message's way through the pool, for the figures.
enum Outcome {
    Unchanged,
    Translated {
        engine_time: Duration,
    },
    /// Its language could not be translated (NACKed or delivered marked).
    Failed,
    /// Only its format was converted.
    Converted,
    /// Its format could not be converted (NACKed).
    Refused,
}

/// What the language stage did.
enum Stage {
    Unchanged,
    Translated {
        engine_time: Duration,
        /// (from, to, engine), counted once the message is sent back.
        counted: (Language, Language, String),
    },
    Failed(Failure),
}

/// Why a message's language could not be translated, and what was tried.
struct Failure {
    from: String,
    to: String,
    engine: String,
    why: String,
}

/// The job's message, delivered as it came.
fn unchanged(job: Job) -> (Done, Outcome) {
    let done = Done::Deliver {
        connection: job.connection,
        header: job.header,
        body: job.body,
        since: job.since,
    };
    (done, Outcome::Unchanged)
}

/// The job's message NACKed to its source with `reason`.
fn refuse(job: Job, reason: ErrorCode, detail: String, outcome: Outcome) -> (Done, Outcome) {
    let done = Done::Refuse {
        connection: job.connection,
        body: job.body,
        reason,
        detail,
    };
    (done, outcome)
}

/// Agents' registered protobuf schemas, parsed once per profile version.
struct Schemas {
    directory: SharedDirectory,
    parsed: Mutex<HashMap<String, (u64, DescriptorPool)>>,
}

/// Schemas kept parsed; past this many the cache starts again.
const SCHEMAS: usize = 1024;

impl Schemas {
    fn profile(&self, agent: &str) -> Option<pb::AgentProfile> {
        self.directory.profile(agent)
    }

    /// The message `name` in the first of `agents`' descriptor sets that has it.
    fn message(&self, name: &str, agents: &[&str]) -> Result<MessageDescriptor, String> {
        for agent in agents {
            let Some(profile) = self.profile(agent) else {
                continue;
            };
            if profile.descriptor_set.is_empty() {
                continue;
            }
            let pool = {
                let Ok(mut parsed) = self.parsed.lock() else {
                    return Err("schema cache poisoned".into());
                };
                match parsed.get(*agent) {
                    Some((version, pool)) if *version == profile.version => pool.clone(),
                    _ => {
                        let pool = DescriptorPool::decode(profile.descriptor_set.as_ref())
                            .map_err(|e| format!("{agent}'s descriptor set: {e}"))?;
                        if parsed.len() >= SCHEMAS {
                            parsed.clear();
                        }
                        parsed.insert((*agent).to_owned(), (profile.version, pool.clone()));
                        pool
                    }
                }
            };
            if let Some(m) = pool.get_message_by_name(name) {
                return Ok(m);
            }
        }
        Err(format!(
            "no registered schema has {name} ({})",
            agents.join(", ")
        ))
    }
}

impl Shared {
    async fn handle(&self, job: Job, taken: Instant) -> Done {
        let (done, outcome) = self.translate(job, taken).await;
        match outcome {
            Outcome::Unchanged => {
                self.stats.unchanged.fetch_add(1, Relaxed);
            }
            Outcome::Failed => {
                self.stats.failed.fetch_add(1, Relaxed);
            }
            Outcome::Converted | Outcome::Refused => {}
            Outcome::Translated { engine_time } => {
                let added = taken.elapsed().saturating_sub(engine_time);
                if let Ok(mut h) = self.stats.engine_us.lock() {
                    let _ = h.record(engine_time.as_micros().max(1) as u64);
                }
                if let Ok(mut h) = self.stats.added_us.lock() {
                    let _ = h.record(added.as_micros().max(1) as u64);
                }
            }
        }
        done
    }

    fn off(&self, agent: &str) -> bool {
        let domain = AgentId::parse(agent).ok();
        self.config
            .off
            .iter()
            .any(|o| o == agent || domain.as_ref().is_some_and(|d| d.domain() == o.as_str()))
    }

    async fn translate(&self, job: Job, taken: Instant) -> (Done, Outcome) {
        if job.follow {
            return unchanged(job);
        }
        let Ok(mut message) = pb::AgentMessage::decode(job.body.clone()) else {
            return unchanged(job);
        };
        let mut outcome = Outcome::Unchanged;
        let mut translated = None;
        let switched_off = self.off(&message.source) || self.off(&message.destination);
        if !switched_off && !job.recipient.languages.is_empty() {
            match self.language(&job, &mut message, taken).await {
                Stage::Unchanged => {}
                Stage::Translated {
                    engine_time,
                    counted,
                } => {
                    outcome = Outcome::Translated { engine_time };
                    translated = Some(counted);
                }
                Stage::Failed(failure) => {
                    tracing::debug!(source = %message.source, destination = %message.destination, error = %failure.why, "translation failed");
                    if self.config.on_failure == OnFailure::Nack {
                        return refuse(
                            job,
                            ErrorCode::TranslationFailed,
                            failure.why,
                            Outcome::Failed,
                        );
                    }
                    message.translation = Some(Box::new(pb::Translation {
                        from: failure.from,
                        to: failure.to,
                        engine: failure.engine,
                        original: Bytes::new(),
                        failed: true,
                        detail: failure.why,
                    }));
                    outcome = Outcome::Failed;
                }
            }
        }
        match self.convert(&job.recipient, &mut message) {
            Ok(false) => {}
            Ok(true) => {
                self.stats.converted.fetch_add(1, Relaxed);
                if matches!(outcome, Outcome::Unchanged) {
                    outcome = Outcome::Converted;
                }
            }
            Err(why) => {
                self.stats.conversion_failed.fetch_add(1, Relaxed);
                return refuse(job, ErrorCode::FormatUnsupported, why, Outcome::Refused);
            }
        }
        if matches!(outcome, Outcome::Unchanged) {
            return unchanged(job);
        }
        let Some(done) = rewritten(&job, &message, self.max_body) else {
            let why = "translated or converted, it is larger than the relay carries".to_owned();
            return refuse(job, ErrorCode::TranslationFailed, why, Outcome::Failed);
        };
        if let Some((from, to, engine)) = translated {
            self.stats.count_translated(from, to, &engine);
        }
        (done, outcome)
    }

    /// Translates `message`'s natural language for its destination, when it needs it.
    async fn language(&self, job: &Job, message: &mut pb::AgentMessage, taken: Instant) -> Stage {
        let fields = &job.recipient.text_fields;
        let Some(text) = Text::of(&message.content_type, &message.payload, fields) else {
            return Stage::Unchanged;
        };
        let from = if message.language.is_empty() {
            detect(&text.joined())
        } else {
            Language::from_tag(&message.language)
        };
        let Some(from) = from else {
            return Stage::Unchanged;
        };
        let to_tag = if message.translate_to.is_empty() {
            if job.recipient.understands(from.tag()) {
                return Stage::Unchanged;
            }
            job.recipient.languages.first().cloned().unwrap_or_default()
        } else {
            message.translate_to.clone()
        };
        let failed = |to: &str, engine: &str, why: String| {
            Stage::Failed(Failure {
                from: from.tag().to_owned(),
                to: to.to_owned(),
                engine: engine.to_owned(),
                why,
            })
        };
        let Some(to) = Language::from_tag(&to_tag) else {
            return failed(
                &to_tag,
                "",
                format!("{to_tag} is not a language this gateway knows"),
            );
        };
        if from == to {
            return Stage::Unchanged;
        }
        let Some(engine) = self.engines.iter().find(|e| e.serves(from, to)) else {
            let why = format!("no engine translates {} into {}", from.tag(), to.tag());
            return failed(&to_tag, "", why);
        };
        let deadline = taken + self.config.deadline();
        let mut translated = Vec::with_capacity(text.segments().len());
        let mut engine_time = Duration::ZERO;
        for segment in text.segments() {
            let cached = self
                .cache
                .lock()
                .ok()
                .and_then(|mut c| c.get(segment, from, to));
            if let Some(hit) = cached {
                self.stats.cache_hits.fetch_add(1, Relaxed);
                translated.push(hit);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let asked = Instant::now();
            self.stats.engine_calls.fetch_add(1, Relaxed);
            let answer = if left.is_zero() {
                Err(format!(
                    "{}: no answer within {:?}",
                    engine.name,
                    self.config.deadline()
                ))
            } else {
                engine.translate(segment, from, to, left).await
            };
            engine_time += asked.elapsed();
            match answer {
                Ok(t) => {
                    if let Ok(mut c) = self.cache.lock() {
                        c.put(segment, from, to, t.clone());
                    }
                    translated.push(t);
                }
                Err(why) => return failed(&to_tag, &engine.name, why),
            }
        }
        let original =
            std::mem::replace(&mut message.payload, Bytes::from(text.payload(&translated)));
        message.translation = Some(Box::new(pb::Translation {
            from: from.tag().to_owned(),
            to: to_tag.clone(),
            engine: engine.name.clone(),
            original: if job.recipient.originals {
                original
            } else {
                Bytes::new()
            },
            failed: false,
            detail: String::new(),
        }));
        message.language = to_tag;
        Stage::Translated {
            engine_time,
            counted: (from, to, engine.name.clone()),
        }
    }

    /// Converts `message`'s structured payload into a format its destination accepts, when it
    /// is in another: `Ok(true)` converted, `Ok(false)` nothing to do, `Err` why it cannot be.
    fn convert(
        &self,
        recipient: &Recipient,
        message: &mut pb::AgentMessage,
    ) -> Result<bool, String> {
        if !recipient.needs_conversion(&message.content_type) {
            return Ok(false);
        }
        let accepts = |f: fn(&str) -> bool| recipient.accepts.iter().any(|a| f(a));
        let refused = || {
            format!(
                "{} accepts {}, not {}",
                recipient.agent,
                recipient.accepts.join(", "),
                media(&message.content_type)
            )
        };
        if is_json(&message.content_type) {
            if !accepts(is_protobuf) {
                return Err(refused());
            }
            let name = self
                .schemas
                .profile(&message.destination)
                .map(|p| p.message_type)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| format!("{} registered no message_type", recipient.agent))?;
            let schema = self.schemas.message(&name, &[&message.destination])?;
            message.payload = Bytes::from(formats::json_to_protobuf(schema, &message.payload)?);
            // In the protobuf media type it named (application/x-protobuf or /protobuf).
            let media_type = recipient
                .accepts
                .iter()
                .find(|a| is_protobuf(a))
                .map_or("application/x-protobuf", |a| media(a));
            message.content_type = format!("{media_type}; messageType={name}");
        } else {
            if !accepts(is_json) {
                return Err(refused());
            }
            let name = formats::message_type(&message.content_type).ok_or_else(|| {
                "a protobuf payload whose media type names no messageType".to_owned()
            })?;
            let schema = self
                .schemas
                .message(name, &[&message.destination, &message.source])?;
            let json = formats::protobuf_to_json(schema, message.payload.clone())?;
            message.payload = Bytes::from(json);
            message.content_type = "application/json".into();
        }
        Ok(true)
    }
}

/// `message` in place of `job`'s, to deliver; `None` when it is larger than the relay carries.
fn rewritten(job: &Job, message: &pb::AgentMessage, max_body: usize) -> Option<Done> {
    let body = Bytes::from(message.encode_to_vec());
    if body.len() > max_body {
        return None;
    }
    let mut header = job.header;
    header.body_len = u32::try_from(body.len()).ok()?;
    Some(Done::Deliver {
        connection: job.connection,
        header,
        body,
        since: job.since,
    })
}
