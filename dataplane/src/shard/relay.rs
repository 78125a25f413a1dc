//! The relay: a connection's frames decoded in batches, their destinations looked up
//! together, each frame queued for its destination (here, on another shard, or to a peer's
//! link) or NACKed with its reason, and the write queues' accounting. No lock, no allocation
//! per frame where avoidable, no payload copied.

use std::{
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use agw_proto::{
    DEFAULT_HOP_LIMIT, DataView, Frame, FrameError, FrameHeader, HEADER_LEN, Kind, Message,
    ViewError,
    identity::AgentId,
    pb::{self, ErrorCode},
};
use bytes::Bytes;
use glommio::{
    GlommioError, ResourceType,
    channels::shared_channel::{ConnectedReceiver, SharedReceiver},
};

use super::{
    BATCH, CrossBatch, CrossFrame, Shard,
    conn::{Conn, ConnKind, ConnState, Mark},
};
use crate::{
    authorization::{Authorization, PeerDomains},
    routing::{Prepared, Route, RoutingSnapshot},
};

/// What one batch left to do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchOutcome {
    /// More frames may be buffered: decode another batch before reading.
    pub(super) more: bool,
    /// An agent completed its access: its reply waits until its route is visible.
    pub(super) agent_up: bool,
}

/// Where a connection's reading waits.
pub(super) enum Blocked {
    None,
    /// A connection on this shard, over its soft limit.
    Local(Rc<Conn>),
    /// A connection on another shard, marked congested.
    Remote {
        shard: u16,
        connection: u32,
    },
}

pub(super) async fn cross_receive(shard: Rc<Shard>, rx: SharedReceiver<CrossBatch>) {
    let rx: ConnectedReceiver<CrossBatch> = rx.connect().await;
    while let Some(batch) = rx.recv().await {
        for frame in batch {
            shard.deliver_cross(frame);
        }
    }
}

/// What a NACK refers to.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    kind: Kind,
    destination: &'a str,
    message_id: u64,
}

impl<'a> Target<'a> {
    pub(super) fn of(view: &DataView<'a>) -> Target<'a> {
        Target {
            kind: view.kind,
            destination: view.destination,
            message_id: view.message_id,
        }
    }
}

/// A NACK of `target` for its `source`. `retry_after`: for `RATE_LIMITED`, when the agent may
/// send again (`OVERLOADED` says 100 ms).
pub(super) fn nack_message(
    reporter: &str,
    target: Target<'_>,
    source: &str,
    reason: ErrorCode,
    retry_after: Option<Duration>,
) -> pb::Nack {
    let retry_after_ms = match (reason, retry_after) {
        (_, Some(wait)) => u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX),
        (ErrorCode::Overloaded, None) => 100,
        _ => 0,
    };
    pb::Nack {
        destination: source.to_owned(),
        original_destination: target.destination.to_owned(),
        message_id: target.message_id,
        reason: reason as i32,
        reporter: reporter.to_owned(),
        detail: String::new(),
        retry_after_ms,
    }
}

impl Shard {
    /// Decodes up to [`BATCH`] frames, prepares their destinations' lookups, then relays or
    /// handles each; says whether to go on and whether an agent came up.
    pub(super) fn process_batch(
        &self,
        conn: &Rc<Conn>,
        blocked: &mut Blocked,
        since: Instant,
    ) -> BatchOutcome {
        let mut frames = std::mem::take(&mut *self.batch.borrow_mut());
        let mut more = true;
        {
            let mut decoder = conn.decoder.borrow_mut();
            while frames.len() < BATCH {
                match decoder.decode() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => {
                        more = false;
                        break;
                    }
                    Err(e) => {
                        drop(decoder);
                        // Frames before the bad bytes are still handled.
                        self.finish_batch(conn, &mut frames, blocked, since);
                        let code = match e {
                            // An agent that has not accessed yet sent something else.
                            FrameError::NotAdmitted(_)
                                if conn.kind == ConnKind::Agent
                                    && conn.agent.borrow().is_none() =>
                            {
                                ErrorCode::NotAccessed
                            }
                            _ => e.code(),
                        };
                        self.close_with(conn, code, &e.to_string());
                        *self.batch.borrow_mut() = frames;
                        return BatchOutcome::default();
                    }
                }
            }
        }
        let up = self.finish_batch(conn, &mut frames, blocked, since);
        *self.batch.borrow_mut() = frames;
        BatchOutcome {
            more: more && conn.is_open(),
            agent_up: up,
        }
    }

    pub(super) fn finish_batch(
        &self,
        conn: &Rc<Conn>,
        frames: &mut Vec<Frame>,
        blocked: &mut Blocked,
        since: Instant,
    ) -> bool {
        let mut cache = self.routes.borrow_mut();
        let snapshot: &RoutingSnapshot = cache.load();
        let authorization = self.authorization.load();
        // What a peer link may carry, loaded once per batch (agents' connections never read it).
        let peer_domains =
            matches!(conn.kind, ConnKind::Peer { .. }).then(|| self.peer_domains.load());
        let policy = Policy {
            authorization: &authorization,
            peer_domains: peer_domains.as_deref().map(Arc::as_ref),
        };
        // Each data frame's routing fields, read once (their destination's UTF-8 checked once),
        // and its destination's lookup prepared, so the batch's lookups overlap.
        let mut views: [Option<Result<DataView<'_>, ViewError>>; BATCH] = [const { None }; BATCH];
        let mut prepared = [None; BATCH];
        for ((v, p), frame) in views.iter_mut().zip(prepared.iter_mut()).zip(frames.iter()) {
            if frame.header.kind.is_data() {
                let view = frame.data_view();
                if let Ok(view) = &view {
                    *p = Some(snapshot.prepare(view.destination));
                }
                *v = Some(view);
            }
        }
        let mut up = false;
        for ((frame, view), p) in frames.iter().zip(views).zip(prepared) {
            if !conn.is_open() {
                continue;
            }
            match view {
                Some(view) => self.relay(conn, frame, view, snapshot, policy, p, blocked, since),
                None => up |= self.control(conn, frame),
            }
        }
        frames.clear();
        up
    }

    /// The hot path: one data frame from an accessed agent to its destination's queue.
    /// `policy`: who may message whom, and (on a peer link) which domains' frames it carries.
    /// `since`: when the read that brought it finished.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn relay(
        &self,
        conn: &Rc<Conn>,
        frame: &Frame,
        view: Result<DataView<'_>, ViewError>,
        snapshot: &RoutingSnapshot,
        policy: Policy<'_>,
        prepared: Option<Prepared>,
        blocked: &mut Blocked,
        since: Instant,
    ) {
        let agent_ref = conn.agent.borrow();
        let accessed = agent_ref.as_ref().map(AgentId::as_str);
        if conn.kind == ConnKind::Agent && accessed.is_none() {
            drop(agent_ref);
            self.close_with(conn, ErrorCode::NotAccessed, "access first");
            return;
        }
        self.counter().accepted(HEADER_LEN + frame.body.len());
        let view = match view {
            Ok(v) => v,
            Err(e) => {
                let target = Target {
                    kind: frame.header.kind,
                    destination: "",
                    message_id: 0,
                };
                self.refuse(conn, accessed.unwrap_or_default(), target, e.code());
                return;
            }
        };
        let target = Target::of(&view);
        // Who NACKs go back to: the agent itself, or (on a peer link) the frame's source.
        let source = accessed.or_else(|| view.source()).unwrap_or_default();
        let allowed = match &conn.kind {
            // An agent sends messages and ACKs as itself; NACKs are the gateways' to send,
            // this gateway's adapters' included (an A2A server's failed task, a message an
            // A2A client has no task for): their frames are made by the gateway, never read.
            ConnKind::Agent if view.kind == Kind::Nack => conn.adapter.borrow().is_some(),
            // Compared as bytes: equal to the accessed ID, it is that ID's UTF-8.
            ConnKind::Agent => accessed.is_some_and(|a| view.source_bytes() == Some(a.as_bytes())),
            // A peer relays frames of the agents of domains reachable through it, and NACKs;
            // never ours, unless it is a gateway of this domain (issue 19: one domain, several
            // gateways, their agents attached at either).
            ConnKind::Peer { gateway, .. } => match view.source() {
                None => view.kind == Kind::Nack,
                Some(s) => AgentId::check(s).is_ok_and(|domain| {
                    let own = self.config.gateway.domain();
                    (domain != own || crate::authorization::domain_of(gateway) == own)
                        && policy
                            .peer_domains
                            .is_some_and(|d| d.allows(gateway, domain))
                }),
            },
        };
        if !allowed {
            self.refuse(conn, source, target, ErrorCode::Unauthorized);
            return;
        }
        // An agent's messages within its rate (ACKs are answers, never held back).
        let limits = self.limits.get();
        if limits.agent_rate > 0
            && conn.kind == ConnKind::Agent
            && view.kind == Kind::AgentMessage
            && let Err(wait) = conn.allow(since, limits.agent_rate, limits.agent_burst)
        {
            self.counter().nacked(ErrorCode::RateLimited);
            let nack = nack_message(
                &self.reporter,
                target,
                source,
                ErrorCode::RateLimited,
                Some(wait),
            );
            self.push_gateway(conn, &nack.into());
            return;
        }
        if view.kind == Kind::AgentMessage
            && let Err(denial) = policy.authorization.check(source, view.destination)
        {
            self.counter().nacked(ErrorCode::Unauthorized);
            let mut nack = nack_message(
                &self.reporter,
                target,
                source,
                ErrorCode::Unauthorized,
                None,
            );
            nack.detail = denial.to_string();
            self.push_gateway(conn, &nack.into());
            return;
        }
        if frame.header.hop_limit == 0 {
            self.refuse(conn, source, target, ErrorCode::TtlExpired);
            return;
        }
        let soft = limits.queue_soft_limit;
        let header = FrameHeader {
            hop_limit: frame.header.hop_limit - 1,
            ..frame.header
        };
        let route = match prepared {
            Some(p) => snapshot.lookup_prepared(view.destination, p),
            None => snapshot.lookup(view.destination),
        };
        let refusal = match route {
            None => ErrorCode::NoRoute,
            Some(Route::Offline) => ErrorCode::DestinationOffline,
            Some(Route::Unreachable) => ErrorCode::Unreachable,
            Some(Route::Peer { peer }) => {
                let link = self.links.borrow().get(&peer).cloned();
                match link {
                    Some(link) => match self.push_relayed(&link, header, frame.body.clone(), since)
                    {
                        Ok(()) => {
                            if link.queued() > soft {
                                *blocked = Blocked::Local(link);
                            }
                            return;
                        }
                        Err(code) => code,
                    },
                    // No link from this shard yet (it is being dialled): unreachable for now.
                    None => ErrorCode::Unreachable,
                }
            }
            Some(Route::Local { shard, connection }) if shard == self.id => {
                let dest = self.conns.borrow().get(&connection).cloned();
                let Some(dest) = dest else {
                    self.refuse(conn, source, target, ErrorCode::DestinationOffline);
                    return;
                };
                match self.push_relayed(&dest, header, frame.body.clone(), since) {
                    Ok(()) => {
                        if dest.queued() > soft {
                            *blocked = Blocked::Local(dest);
                        }
                        return;
                    }
                    Err(code) => code,
                }
            }
            Some(Route::Local { shard, connection }) => {
                if self.over_budget(frame.body.len()) {
                    ErrorCode::Overloaded
                } else {
                    let mut pending = self.pending_cross.borrow_mut();
                    match pending.get_mut(usize::from(shard)) {
                        Some(batch) => {
                            batch.push(CrossFrame::Relayed {
                                connection,
                                header,
                                body: frame.body.clone(),
                                since,
                            });
                            if self.remote_congested(shard, connection) {
                                *blocked = Blocked::Remote { shard, connection };
                            }
                            return;
                        }
                        None => ErrorCode::NoRoute,
                    }
                }
            }
        };
        self.refuse(conn, source, target, refusal);
    }

    pub(super) fn remote_congested(&self, shard: u16, connection: u32) -> bool {
        self.congestion
            .get(usize::from(shard))
            .is_some_and(|c| c.is_congested(connection))
    }

    pub(super) fn set_congested(&self, conn: &Conn, congested: bool) {
        if conn.congested.replace(congested) == congested {
            return;
        }
        if let Some(c) = self.congestion.get(usize::from(self.id)) {
            if congested {
                c.mark(conn.id);
            } else {
                c.clear(conn.id);
            }
        }
    }

    pub(super) fn over_budget(&self, len: usize) -> bool {
        self.queued.get() + len > self.limits.get().shard_memory_budget
    }

    /// NACKs a frame from `conn` back to it (an ACK is only counted: answering could loop).
    pub(super) fn refuse(&self, conn: &Conn, source: &str, target: Target<'_>, reason: ErrorCode) {
        if target.kind != Kind::AgentMessage {
            self.counter().discarded();
            return;
        }
        self.counter().nacked(reason);
        let nack = nack_message(&self.reporter, target, source, reason, None);
        self.push_gateway(conn, &nack.into());
    }

    /// Queues a relayed frame for `dest` (read at `since`), or hands it to the translation
    /// pool first, or says why not.
    pub(super) fn push_relayed(
        &self,
        dest: &Conn,
        header: FrameHeader,
        body: Bytes,
        since: Instant,
    ) -> Result<(), ErrorCode> {
        if !dest.is_open() {
            return Err(ErrorCode::DestinationOffline);
        }
        if header.kind == Kind::AgentMessage
            && let Some(handed) = self.hand_over(dest, header, &body, since)
        {
            return handed;
        }
        self.enqueue(dest, header, body, since)
    }

    /// Queues a relayed frame for `dest` as it is, or says why not.
    pub(super) fn enqueue(
        &self,
        dest: &Conn,
        header: FrameHeader,
        body: Bytes,
        since: Instant,
    ) -> Result<(), ErrorCode> {
        if !dest.is_open() {
            return Err(ErrorCode::DestinationOffline);
        }
        let len = HEADER_LEN + body.len();
        let limits = self.limits.get();
        if dest.queued() + len > limits.queue_hard_limit || self.over_budget(len) {
            return Err(ErrorCode::Overloaded);
        }
        let mut out = dest.out.borrow_mut();
        out.pushed += len as u64;
        let end = out.pushed;
        out.marks.push_back(Mark { end, since });
        out.batch.push_frame(header, body);
        let over = out.batch.len() > limits.queue_soft_limit;
        drop(out);
        self.queued_add(len);
        if over {
            self.set_congested(dest, true);
        }
        dest.writer.notify();
        Ok(())
    }

    /// Queues a frame the gateway made (challenge, reply, NACK, notification).
    pub(super) fn push_gateway(&self, conn: &Conn, message: &Message) {
        if let Some(frame) = self.encode(message) {
            self.push_encoded(conn, frame);
        }
    }

    /// A message this gateway makes, framed (data kinds with the default hop limit).
    pub(super) fn encode(&self, message: &Message) -> Option<Bytes> {
        let mut encoder = self.encoder.borrow_mut();
        let hop = if message.kind().is_data() {
            DEFAULT_HOP_LIMIT
        } else {
            0
        };
        encoder.push_message(message, hop).ok()?;
        Some(encoder.take())
    }

    /// Queues whole encoded frames for `conn`.
    pub(super) fn push_encoded(&self, conn: &Conn, bytes: Bytes) {
        if conn.state.get() == ConnState::Closed {
            return;
        }
        let len = bytes.len();
        let mut out = conn.out.borrow_mut();
        out.pushed += len as u64;
        out.batch.push_encoded(bytes);
        drop(out);
        self.queued_add(len);
        conn.writer.notify();
    }

    pub(super) fn queued_add(&self, len: usize) {
        let q = self.queued.get() + len;
        self.queued.set(q);
        self.counter().set_queued_bytes(q);
    }

    pub(super) fn queued_sub(&self, len: usize) {
        let q = self.queued.get().saturating_sub(len);
        self.queued.set(q);
        self.counter().set_queued_bytes(q);
    }

    /// After a write of `n` bytes: count the frames it completed, wake paused senders.
    pub(super) fn wrote(&self, conn: &Conn, n: usize) {
        let mut out = conn.out.borrow_mut();
        out.batch.advance(n);
        out.written += n as u64;
        let mut delivered = 0;
        let mut now = None;
        let written = out.written;
        while out.marks.front().is_some_and(|m| m.end <= written) {
            let Some(mark) = out.marks.pop_front() else {
                break;
            };
            let now = *now.get_or_insert_with(Instant::now);
            self.counter()
                .resided(now.saturating_duration_since(mark.since));
            delivered += 1;
        }
        let below = out.batch.len() <= self.limits.get().queue_soft_limit;
        drop(out);
        self.counter().delivered(delivered);
        self.counter().written(n);
        self.queued_sub(n);
        if below {
            self.set_congested(conn, false);
            for w in conn.space.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }

    /// Sends the frames gathered for other shards, one batch per shard. A full channel makes
    /// this connection wait (its sender is not read meanwhile), never the others.
    pub(super) async fn flush_cross(&self) {
        let shards = self.pending_cross.borrow().len();
        for to in 0..shards {
            let batch = match self.pending_cross.borrow_mut().get_mut(to) {
                Some(b) if !b.is_empty() => std::mem::take(b),
                _ => continue,
            };
            let tx = self.cross_out.borrow().get(to).cloned().flatten();
            let Some(tx) = tx else {
                continue;
            };
            self.counter().cross_shard_batch();
            let refused = match tx.try_send(batch) {
                Ok(()) => continue,
                Err(GlommioError::WouldBlock(ResourceType::Channel(batch))) => {
                    match tx.send(batch).await {
                        Ok(()) => continue,
                        Err(GlommioError::Closed(ResourceType::Channel(batch))) => batch,
                        Err(_) => continue,
                    }
                }
                Err(GlommioError::Closed(ResourceType::Channel(batch))) => batch,
                Err(_) => continue,
            };
            // The other shard is gone (stopping): these frames cannot be delivered.
            for frame in refused {
                if let CrossFrame::Relayed { header, body, .. } = frame {
                    self.undeliverable(header.kind, &body, ErrorCode::Unreachable, String::new());
                }
            }
        }
    }

    /// A frame from another shard for one of this shard's connections.
    pub(super) fn deliver_cross(&self, frame: CrossFrame) {
        match frame {
            CrossFrame::Made { connection, frame } => {
                let dest = self.conns.borrow().get(&connection).cloned();
                if let Some(dest) = dest {
                    self.push_encoded(&dest, frame);
                }
            }
            CrossFrame::Relayed {
                connection,
                header,
                body,
                since,
            } => {
                let dest = self.conns.borrow().get(&connection).cloned();
                let result = match dest {
                    Some(dest) => self.push_relayed(&dest, header, body.clone(), since),
                    None => Err(ErrorCode::DestinationOffline),
                };
                if let Err(code) = result {
                    self.undeliverable(header.kind, &body, code, String::new());
                }
            }
        }
    }

    /// An accepted frame that cannot reach its destination: NACK it to its source, wherever
    /// the source's connection is.
    pub(super) fn undeliverable(&self, kind: Kind, body: &[u8], reason: ErrorCode, detail: String) {
        let Ok(view) = DataView::parse(kind, body) else {
            self.counter().discarded();
            return;
        };
        if view.kind != Kind::AgentMessage {
            self.counter().discarded();
            return;
        }
        self.counter().nacked(reason);
        let Some(source) = view.source() else {
            return;
        };
        let mut nack = nack_message(&self.reporter, Target::of(&view), source, reason, None);
        nack.detail = detail;
        self.send_made(source, &nack.into());
    }

    /// A message this gateway made (a NACK) to agent `to`, wherever its connection is; dropped
    /// when it has none.
    pub(super) fn send_made(&self, to: &str, message: &Message) {
        let route = self.routes.borrow_mut().load().lookup(to);
        match route {
            Some(Route::Local { shard, connection }) if shard == self.id => {
                if let Some(c) = self.conns.borrow().get(&connection) {
                    self.push_gateway(c, message);
                }
            }
            Some(Route::Local { shard, connection }) => {
                let Some(frame) = self.encode(message) else {
                    return;
                };
                if let Some(batch) = self.pending_cross.borrow_mut().get_mut(usize::from(shard)) {
                    batch.push(CrossFrame::Made { connection, frame });
                }
            }
            Some(Route::Peer { peer }) => {
                let link = self.links.borrow().get(&peer).cloned();
                if let Some(link) = link {
                    self.push_gateway(&link, message);
                }
            }
            // The agent left too: nobody to tell.
            _ => {}
        }
    }
}

/// The published policies a batch is checked against, loaded once per batch.
#[derive(Clone, Copy)]
pub(super) struct Policy<'a> {
    authorization: &'a Authorization,
    /// On a peer link: the domains each peer may relay frames of.
    peer_domains: Option<&'a PeerDomains>,
}
