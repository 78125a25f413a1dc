//! The way off the shards and back for natural-language translation (docs/translation.md) and
//! format conversion (docs/protocols.md, formats).
//!
//! A shard never translates or converts. A message whose destination declared the languages it
//! understands, and whose text may not be in one of them (or whose source asked for another),
//! or whose JSON or protobuf payload is in a format the destination does not accept, is copied
//! into a [`Job`] on a bounded queue that the translation pool (in the control plane) reads; the
//! shard goes on. The pool sends the message back as [`Done`] (translated, marked untranslated,
//! or refused) to the shard that owns the destination's connection, and wakes it. While any
//! message for a connection is in the pool, the next ones for it follow through the pool
//! unchanged, so a conversation's order holds. A full queue refuses the message (`OVERLOADED`):
//! nothing waits on the pool.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use agw_proto::{
    FrameHeader, LanguageView,
    pb::{self, ErrorCode},
};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_util::task::AtomicWaker;

/// Messages waiting for the pool, all shards together.
pub const QUEUE: usize = 4096;

/// A media type whose payload is A2A parts (text parts among them).
const PARTS_TYPE: &str = crate::a2a::PARTS_TYPE;

/// What a destination agent understands, from its access request and its profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Its agent ID.
    pub agent: String,
    /// BCP 47 tags, in its order of preference; never empty.
    pub languages: Vec<String>,
    /// Translated messages carry their original payload too.
    pub originals: bool,
    /// Its profile's natural-language fields of JSON payloads (JSON pointers).
    pub text_fields: Vec<String>,
    /// The media types of structured payloads it accepts (its profile's); empty: any.
    pub accepts: Vec<String>,
}

impl Recipient {
    /// Whether this agent understands `language` (by primary subtag: "en-GB" understands "en").
    pub fn understands(&self, language: &str) -> bool {
        let primary = primary(language);
        self.languages
            .iter()
            .any(|l| primary.eq_ignore_ascii_case(self::primary(l)))
    }

    /// Whether a message with these fields goes to the pool: its format needs converting
    /// ([`Recipient::needs_conversion`]) or its language translating
    /// ([`Recipient::may_translate`]).
    pub fn needs_pool(&self, view: &LanguageView<'_>) -> bool {
        self.needs_conversion(view.content_type) || self.may_translate(view)
    }

    /// Whether a payload of `content_type` is structured (JSON or protobuf) and in neither a
    /// media type this agent accepts nor its family (an agent that accepts `application/json`
    /// takes `application/ld+json` as it is): the pool converts it, or refuses it.
    pub fn needs_conversion(&self, content_type: &str) -> bool {
        let (json, protobuf) = (is_json(content_type), is_protobuf(content_type));
        !self.accepts.is_empty()
            && (json || protobuf)
            && !self.accepts.iter().any(|a| {
                media(a).eq_ignore_ascii_case(media(content_type))
                    || (json && is_json(a))
                    || (protobuf && is_protobuf(a))
            })
    }

    /// Whether a message with these fields may need its language translated: natural text (see
    /// [`is_natural`], A2A parts, or JSON when this agent's profile names text fields) that is in no language this agent understands, whose language is not
    /// known (the pool detects it), or whose source asked for another language. A message a
    /// gateway translated already is never translated again.
    pub fn may_translate(&self, view: &LanguageView<'_>) -> bool {
        let text = is_natural(view.content_type)
            || media(view.content_type) == PARTS_TYPE
            || (is_json(view.content_type) && !self.text_fields.is_empty());
        if self.languages.is_empty() || view.translated || !text {
            return false;
        }
        if !view.translate_to.is_empty() {
            return !primary(view.translate_to).eq_ignore_ascii_case(primary(view.language));
        }
        view.language.is_empty() || !self.understands(view.language)
    }
}

/// A media type without its parameters.
pub fn media(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Whether a payload of `content_type` is natural language for people: plain text or
/// Markdown (or no type at all). Code (`text/x-python`), tables (`text/csv`), markup, data and
/// bytes are never translated.
pub fn is_natural(content_type: &str) -> bool {
    let media = media(content_type);
    media.is_empty()
        || media.eq_ignore_ascii_case("text/plain")
        || media.eq_ignore_ascii_case("text/markdown")
}

/// What the gateway did to a message's language, as A2A metadata (`agw.translation`).
pub fn a2a_metadata(t: &pb::Translation) -> serde_json::Value {
    let mut v = serde_json::json!({ "from": t.from, "to": t.to, "engine": t.engine });
    if t.failed {
        v["failed"] = true.into();
        v["detail"] = t.detail.clone().into();
    }
    v
}

/// The same as MQTT 5 user properties of the PUBLISH that delivers the message.
pub fn mqtt_properties(t: &pb::Translation) -> Vec<(String, String)> {
    let mut p = vec![
        ("translated-from".to_owned(), t.from.clone()),
        ("translation-engine".to_owned(), t.engine.clone()),
    ];
    if t.failed {
        p.push(("translation-failed".to_owned(), t.detail.clone()));
    }
    p
}

/// Whether `content_type` is JSON (`application/json`, `application/*+json`).
pub fn is_json(content_type: &str) -> bool {
    let media = media(content_type);
    media.eq_ignore_ascii_case("application/json")
        || (media.starts_with("application/") && media.ends_with("+json") && media != PARTS_TYPE)
}

/// Whether `content_type` is protobuf (`application/x-protobuf`, `application/protobuf`).
pub fn is_protobuf(content_type: &str) -> bool {
    let media = media(content_type);
    media.eq_ignore_ascii_case("application/x-protobuf")
        || media.eq_ignore_ascii_case("application/protobuf")
}

/// A language tag's primary subtag: "zh" of "zh-CN".
pub fn primary(tag: &str) -> &str {
    tag.split(['-', '_']).next().unwrap_or("")
}

/// A message handed to the translation pool.
#[derive(Debug)]
pub struct Job {
    /// The shard that owns the destination's connection, and the connection.
    pub shard: u16,
    pub connection: u32,
    /// Its header as it will be written (hop limit already decremented).
    pub header: FrameHeader,
    /// The `AgentMessage` body, copied out of the read buffer (a slice would hold the whole
    /// buffer for as long as the engine takes).
    pub body: Bytes,
    /// When it was read.
    pub since: Instant,
    pub recipient: Arc<Recipient>,
    /// Only here to keep order behind an earlier message for the same connection: deliver it
    /// as it is.
    pub follow: bool,
}

/// A message back from the pool, for the connection it was handed over for.
#[derive(Debug)]
pub enum Done {
    /// Deliver this frame (translated, marked untranslated, or unchanged).
    Deliver {
        connection: u32,
        header: FrameHeader,
        body: Bytes,
        since: Instant,
    },
    /// Do not deliver it: NACK it to its source with `reason` and `detail`.
    Refuse {
        connection: u32,
        /// The message as it was handed over (the NACK names its ID and destination).
        body: Bytes,
        reason: ErrorCode,
        detail: String,
    },
}

impl Done {
    /// The connection it is for.
    pub fn connection(&self) -> u32 {
        match self {
            Done::Deliver { connection, .. } | Done::Refuse { connection, .. } => *connection,
        }
    }
}

/// The pool's side: the queue it reads, and the way back to each shard (by shard number).
#[derive(Debug)]
pub struct TranslationPort {
    pub jobs: Receiver<Job>,
    pub returns: Vec<Returns>,
    /// The largest `AgentMessage` body the relay carries; a translation must fit.
    pub max_body: usize,
}

/// The way back to one shard.
#[derive(Debug, Clone)]
pub struct Returns {
    done: Sender<Done>,
    waker: Arc<AtomicWaker>,
}

impl Returns {
    /// Sends `done` back and wakes the shard (from any thread).
    pub fn send(&self, done: Done) {
        if self.done.send(done).is_ok() {
            self.waker.wake();
        }
    }
}

/// A shard's side: where it hands messages over, and where they come back.
#[derive(Debug)]
pub(crate) struct ShardPort {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    waker: Arc<AtomicWaker>,
}

/// Why a message was not handed over.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The pool's queue is full: refuse it (`OVERLOADED`), the source may retry.
    Full,
    /// The pool is gone (stopping): deliver it as it is.
    Gone,
}

impl ShardPort {
    pub(crate) fn hand_over(&self, job: Job) -> Result<(), Refused> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Gone,
        })
    }

    /// Waits until messages came back, then takes those there are.
    pub(crate) async fn returned(&self, into: &mut Vec<Done>) {
        futures_lite::future::poll_fn(|cx: &mut Context<'_>| {
            self.take(into);
            if !into.is_empty() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // What came back between the take and the registration would not wake us.
            self.take(into);
            if into.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    fn take(&self, into: &mut Vec<Done>) {
        into.extend(self.done.try_iter());
    }
}

/// The ports between `shards` shards and one pool.
pub(crate) fn ports(shards: usize, max_body: usize) -> (TranslationPort, Vec<ShardPort>) {
    let (jobs_tx, jobs) = crossbeam_channel::bounded(QUEUE);
    let mut returns = Vec::with_capacity(shards);
    let mut sides = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (done_tx, done) = crossbeam_channel::unbounded();
        let waker = Arc::new(AtomicWaker::new());
        returns.push(Returns {
            done: done_tx,
            waker: waker.clone(),
        });
        sides.push(ShardPort {
            jobs: jobs_tx.clone(),
            done,
            waker,
        });
    }
    let port = TranslationPort {
        jobs,
        returns,
        max_body,
    };
    (port, sides)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(languages: &[&str]) -> Recipient {
        Recipient {
            agent: "spiffe://b.example/agent/y".into(),
            languages: languages.iter().map(|l| (*l).to_owned()).collect(),
            originals: false,
            text_fields: Vec::new(),
            accepts: Vec::new(),
        }
    }

    fn view<'a>(
        content_type: &'a str,
        language: &'a str,
        translate_to: &'a str,
    ) -> LanguageView<'a> {
        LanguageView {
            content_type,
            language,
            translate_to,
            translated: false,
        }
    }

    #[test]
    fn only_text_in_a_language_the_recipient_lacks_goes_to_the_pool() {
        let es = recipient(&["es", "fr"]);
        assert!(es.may_translate(&view("text/plain", "en", "")));
        assert!(!es.may_translate(&view("text/plain", "es-MX", "")));
        assert!(!es.may_translate(&view("text/plain; charset=utf-8", "FR", "")));
        // Unknown language: the pool detects it.
        assert!(es.may_translate(&view("text/plain", "", "")));
        assert!(es.may_translate(&view("", "", "")));
        assert!(es.may_translate(&view(PARTS_TYPE, "en", "")));
        // Structured data and bytes are never touched, JSON only where the profile names
        // text fields.
        assert!(!es.may_translate(&view("application/json", "en", "")));
        let fields = Recipient {
            text_fields: vec!["/note".into()],
            ..es.clone()
        };
        assert!(fields.may_translate(&view("application/json", "en", "")));
        assert!(fields.may_translate(&view("application/ld+json", "", "")));
        assert!(!fields.may_translate(&view("application/json", "es", "")));
        assert!(!es.may_translate(&view("application/octet-stream", "en", "")));
        assert!(!es.may_translate(&view("text/x-python", "en", "")));
        assert!(!es.may_translate(&view("text/csv", "en", "")));
        // The source asks: translated even into a language outside the profile, never into
        // the one it is in.
        assert!(recipient(&["en"]).may_translate(&view("text/plain", "en", "de")));
        assert!(!es.may_translate(&view("text/plain", "en-US", "en")));
        // Already translated by a gateway on the way.
        let mut done = view("text/plain", "en", "");
        done.translated = true;
        assert!(!es.may_translate(&done));
        // No language named: never translated.
        assert!(!recipient(&[]).may_translate(&view("text/plain", "en", "")));
    }

    #[test]
    fn structured_payloads_in_a_format_the_recipient_does_not_accept_go_to_the_pool() {
        let protobuf = Recipient {
            accepts: vec!["application/x-protobuf".into()],
            ..recipient(&[])
        };
        assert!(protobuf.needs_conversion("application/json"));
        assert!(protobuf.needs_pool(&view("application/json; charset=utf-8", "", "")));
        assert!(!protobuf.needs_conversion("application/x-protobuf; messageType=a.B"));
        assert!(!protobuf.needs_conversion("text/plain"));
        assert!(!protobuf.needs_conversion(PARTS_TYPE));
        let json = Recipient {
            accepts: vec!["application/json".into()],
            ..recipient(&[])
        };
        assert!(json.needs_conversion("application/protobuf; messageType=a.B"));
        assert!(!json.needs_conversion("APPLICATION/JSON"));
        // The same family is accepted as it is.
        assert!(!json.needs_conversion("application/ld+json"));
        assert!(!protobuf.needs_conversion("application/protobuf; messageType=a.B"));
        assert!(!recipient(&["es"]).needs_conversion("application/json"));
    }

    #[test]
    fn a_returned_message_wakes_its_shard() {
        let (port, mut sides) = ports(1, 1024);
        let side = sides.remove(0);
        let mut got = Vec::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        {
            let mut wait = std::pin::pin!(side.returned(&mut got));
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            port.returns[0].send(Done::Refuse {
                connection: 7,
                body: Bytes::new(),
                reason: ErrorCode::TranslationFailed,
                detail: String::new(),
            });
            assert!(wait.as_mut().poll(&mut cx).is_ready());
        }
        assert_eq!(got.iter().map(Done::connection).collect::<Vec<_>>(), [7]);
    }
}
