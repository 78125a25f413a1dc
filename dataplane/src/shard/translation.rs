//! The shard's side of natural-language translation (`crate::translation`): which messages go
//! to the pool off the shards, and delivering what comes back. Nothing here waits on the pool.

use std::{rc::Rc, sync::Arc, time::Instant};

use agw_proto::{FrameHeader, Kind, LanguageView, identity::AgentId, pb::ErrorCode};
use bytes::Bytes;

use super::{Shard, conn::Conn};
use crate::translation::{Done, Job, Recipient, Refused};

/// At most this many languages of an agent are kept, each a BCP 47 tag of at most 35 bytes.
const MAX_LANGUAGES: usize = 8;
const MAX_TAG: usize = 35;

impl Shard {
    /// What `agent` understands: the languages it named at access (`told`), then its
    /// profile's, and its profile's text fields (where the gateway translates languages), and
    /// the media types it accepts. `None` when it names neither: its messages are then never
    /// looked at.
    pub(super) fn recipient(
        &self,
        agent: &AgentId,
        told: &[String],
        originals: bool,
    ) -> Option<Arc<Recipient>> {
        self.translation.as_ref()?;
        let profile = self
            .directory
            .get()
            .and_then(|d| d.profile(agent.as_str()))
            .unwrap_or_default();
        let mut languages: Vec<String> = Vec::new();
        // Languages only where the gateway translates them.
        let named: &[String] = if self.config.translate_languages {
            &profile.languages
        } else {
            &[]
        };
        let told = if self.config.translate_languages {
            told
        } else {
            &[]
        };
        for tag in told.iter().chain(named) {
            let tag = tag.trim();
            let valid = !tag.is_empty()
                && tag.len() <= MAX_TAG
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if valid && languages.len() < MAX_LANGUAGES && !languages.iter().any(|l| l == tag) {
                languages.push(tag.to_owned());
            }
        }
        (!languages.is_empty() || !profile.accepts.is_empty()).then(|| {
            Arc::new(Recipient {
                agent: agent.to_string(),
                languages,
                originals,
                text_fields: profile.text_fields,
                accepts: profile.accepts,
            })
        })
    }

    /// A relayed `AgentMessage` for `dest` on this shard: handed to the translation pool when
    /// it may need translating, or when an earlier one for `dest` is still there (order).
    /// `None`: deliver it here and now.
    pub(super) fn hand_over(
        &self,
        dest: &Conn,
        header: FrameHeader,
        body: &Bytes,
        since: Instant,
    ) -> Option<Result<(), ErrorCode>> {
        let port = self.translation.as_ref()?;
        let recipient = dest.recipient.borrow();
        let r = recipient.as_ref()?;
        let translate = LanguageView::parse(body).is_some_and(|v| r.needs_pool(&v));
        // Needs none, but an earlier message for `dest` is in the pool: it follows.
        let follow = !translate && dest.translating.get() > 0;
        if !translate && !follow {
            return None;
        }
        let recipient = r.clone();
        let job = Job {
            shard: self.id,
            connection: dest.id,
            header,
            body: Bytes::copy_from_slice(body),
            since,
            recipient,
            follow,
        };
        match port.hand_over(job) {
            Ok(()) => {
                dest.translating.set(dest.translating.get() + 1);
                Some(Ok(()))
            }
            Err(Refused::Full) => Some(Err(ErrorCode::Overloaded)),
            // Stopping: nothing translates any more, and nothing is in the pool to overtake.
            Err(Refused::Gone) => None,
        }
    }

    /// A message back from the pool: delivered to its connection, or NACKed to its source.
    pub(super) fn returned(&self, done: Done) {
        let dest = self.conns.borrow().get(&done.connection()).cloned();
        if let Some(dest) = &dest {
            dest.translating
                .set(dest.translating.get().saturating_sub(1));
        }
        match done {
            Done::Deliver {
                header,
                body,
                since,
                ..
            } => {
                let result = match dest {
                    Some(dest) => self.enqueue(&dest, header, body.clone(), since),
                    None => Err(ErrorCode::DestinationOffline),
                };
                if let Err(code) = result {
                    self.undeliverable(header.kind, &body, code, String::new());
                }
            }
            Done::Refuse {
                body,
                reason,
                detail,
                ..
            } => self.undeliverable(Kind::AgentMessage, &body, reason, detail),
        }
    }
}

/// Delivers what the translation pool sends back to this shard, as it comes.
pub(super) async fn returns(shard: Rc<Shard>) {
    let mut done = Vec::new();
    loop {
        let Some(port) = shard.translation.as_ref() else {
            return;
        };
        port.returned(&mut done).await;
        for d in done.drain(..) {
            shard.returned(d);
        }
        // NACKs for sources on other shards.
        shard.flush_cross().await;
    }
}
