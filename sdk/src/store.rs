//! An agent's sessions and tasks in an embedded, crash-safe redb database (one file the agent
//! names): every message it sends or receives in a session, in order, with what became of it;
//! the messages not yet acknowledged (resent after a reconnect or a restart); the status of
//! the tasks it requested. Each change is one transaction, committed before the SDK acts on
//! it: a received message is acknowledged only once it is stored, a message is sent only once
//! it is in the outbox.
//!
//! One process opens the file at a time (redb locks it): `agw-agent session` reads it while
//! the agent is stopped.

use std::{path::Path, time::SystemTime};

use agw_proto::pb;
use bytes::Bytes;
use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// session ID -> [`SessionRecord`].
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// (session, entry number) -> [`Entry`], in the order they happened.
const ENTRIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("entries");
/// (session, 0 sent / 1 received, sequence) -> entry number.
const SEQUENCES: TableDefinition<(u64, u8, u64), u64> = TableDefinition::new("sequences");
/// (session, sequence) -> entry number, of sent messages not yet acknowledged.
const OUTBOX: TableDefinition<(u64, u64), u64> = TableDefinition::new("outbox");
/// task ID -> `pb::TaskStatus`.
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");

const SENT: u8 = 0;
const RECEIVED: u8 = 1;

/// A conversation with one peer agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionRecord {
    /// The session ID every message of it carries (`AgentMessage.session_id`).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The other agent.
    #[prost(string, tag = "2")]
    pub peer: String,
    /// The sequence the next message this agent sends gets.
    #[prost(uint64, tag = "3")]
    pub next_sequence: u64,
    /// This agent's context, attached to every message it sends.
    #[prost(bytes = "bytes", tag = "4")]
    pub context: Bytes,
    #[prost(string, tag = "5")]
    pub context_type: String,
    /// The peer's context, as its latest message carried it.
    #[prost(bytes = "bytes", tag = "6")]
    pub peer_context: Bytes,
    #[prost(string, tag = "7")]
    pub peer_context_type: String,
    #[prost(uint64, tag = "8")]
    pub started_unix_ms: u64,
    /// Entries in its history.
    #[prost(uint64, tag = "9")]
    pub entries: u64,
    /// Closed by this agent: nothing of it is resent.
    #[prost(bool, tag = "10")]
    pub closed: bool,
    /// What it is for, as the agent named it (a task's sessions: "task <id> <subtask>").
    #[prost(string, tag = "11")]
    pub label: String,
}

/// What became of a message in a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Delivery {
    /// Sent (or to be resent), not yet acknowledged.
    Pending = 0,
    /// Acknowledged by the peer.
    Delivered = 1,
    /// A gateway NACKed it; `detail` says why. Resent later when the reason is temporary.
    Refused = 2,
    /// Received from the peer (and acknowledged once stored).
    Received = 3,
    /// Given up: its session was closed before it was delivered.
    Abandoned = 4,
}

impl Delivery {
    /// Its name, in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Pending => "pending",
            Delivery::Delivered => "delivered",
            Delivery::Refused => "refused",
            Delivery::Received => "received",
            Delivery::Abandoned => "abandoned",
        }
    }
}

/// One message of a session's history.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// Sent by this agent (else received from the peer).
    #[prost(bool, tag = "1")]
    pub outgoing: bool,
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
    #[prost(uint64, tag = "3")]
    pub in_reply_to: u64,
    #[prost(string, tag = "4")]
    pub content_type: String,
    #[prost(bytes = "bytes", tag = "5")]
    pub payload: Bytes,
    #[prost(uint64, tag = "6")]
    pub at_unix_ms: u64,
    #[prost(enumeration = "Delivery", tag = "7")]
    pub delivery: i32,
    /// Why it was refused, when it was.
    #[prost(string, tag = "8")]
    pub detail: String,
    #[prost(string, tag = "9")]
    pub language: String,
    #[prost(uint64, tag = "10")]
    pub deadline_unix_ms: u64,
}

/// What storing a received message found.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// New: stored in this session.
    Stored(SessionRecord),
    /// Already stored (a resent copy).
    Duplicate,
    /// The session ID is another peer's session: not stored.
    NotThePeers,
}

/// The store failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("session store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(err)
}

/// Session `id` of `table`, decoded.
fn session_in(
    table: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<SessionRecord>, StoreError> {
    table
        .get(id)
        .map_err(err)?
        .map(|v| decode(v.value()))
        .transpose()
}

/// Session `id` of `table`, which must be there.
fn existing_in(
    table: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<SessionRecord, StoreError> {
    session_in(table, id)?.ok_or_else(|| StoreError(format!("no session {id:016x}")))
}

/// Entry `index` of session `id` in `table`, decoded.
fn entry_in(
    table: &impl ReadableTable<(u64, u64), &'static [u8]>,
    id: u64,
    index: u64,
) -> Result<Option<Entry>, StoreError> {
    table
        .get((id, index))
        .map_err(err)?
        .map(|v| decode(v.value()))
        .transpose()
}

/// Records what became of entry `index` of session `id` (if it is there), and why when
/// `detail` says (else the last reason stays).
fn mark(
    entries: &mut redb::Table<'_, (u64, u64), &'static [u8]>,
    id: u64,
    index: u64,
    delivery: Delivery,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    if let Some(mut entry) = entry_in(entries, id, index)? {
        entry.delivery = delivery as i32;
        if let Some(detail) = detail {
            detail.clone_into(&mut entry.detail);
        }
        entries
            .insert((id, index), entry.encode_to_vec().as_slice())
            .map_err(err)?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An agent's session and task database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens or creates the database at `path`.
    /// The file is readable by its owner only: it holds the agent's conversations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(err)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(SESSIONS).map_err(err)?;
        tx.open_table(ENTRIES).map_err(err)?;
        tx.open_table(SEQUENCES).map_err(err)?;
        tx.open_table(OUTBOX).map_err(err)?;
        tx.open_table(TASKS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Store { db })
    }

    /// Starts a session with `peer` under a fresh random ID.
    pub fn start(&self, peer: &str, label: &str) -> Result<SessionRecord, StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        let record = {
            let mut sessions = tx.open_table(SESSIONS).map_err(err)?;
            let id = loop {
                let id = random_id()?;
                if sessions.get(id).map_err(err)?.is_none() {
                    break id;
                }
            };
            let record = SessionRecord {
                id,
                peer: peer.to_owned(),
                next_sequence: 1,
                started_unix_ms: unix_ms(SystemTime::now()),
                label: label.to_owned(),
                ..Default::default()
            };
            sessions
                .insert(id, record.encode_to_vec().as_slice())
                .map_err(err)?;
            record
        };
        tx.commit().map_err(err)?;
        Ok(record)
    }

    /// The session `id`.
    pub fn session(&self, id: u64) -> Result<Option<SessionRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        session_in(&tx.open_table(SESSIONS).map_err(err)?, id)
    }

    /// Every session, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(SESSIONS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            out.push(decode::<SessionRecord>(row.map_err(err)?.1.value())?);
        }
        out.sort_by_key(|s| (s.started_unix_ms, s.id));
        Ok(out)
    }

    /// Replaces this agent's context of session `id`.
    pub fn set_context(
        &self,
        id: u64,
        content_type: &str,
        context: Bytes,
    ) -> Result<SessionRecord, StoreError> {
        self.update_session(id, |r| {
            r.context = context;
            r.context_type = content_type.to_owned();
        })
    }

    /// Closes session `id`: what it has not delivered is abandoned, never resent.
    pub fn close(&self, id: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut sessions = tx.open_table(SESSIONS).map_err(err)?;
            let Some(mut record) = session_in(&sessions, id)? else {
                return Ok(());
            };
            record.closed = true;
            sessions
                .insert(id, record.encode_to_vec().as_slice())
                .map_err(err)?;
            let mut outbox = tx.open_table(OUTBOX).map_err(err)?;
            let mut entries = tx.open_table(ENTRIES).map_err(err)?;
            let pending: Vec<((u64, u64), u64)> = outbox
                .range((id, 0)..=(id, u64::MAX))
                .map_err(err)?
                .map(|row| row.map(|(k, v)| (k.value(), v.value())))
                .collect::<Result<_, _>>()
                .map_err(err)?;
            for (key, index) in pending {
                outbox.remove(key).map_err(err)?;
                mark(&mut entries, id, index, Delivery::Abandoned, None)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Appends `entry` to session `id` as the next message this agent sends (its sequence is
    /// given here) and puts it in the outbox; returns the session as it is now and the entry.
    pub fn send(&self, id: u64, mut entry: Entry) -> Result<(SessionRecord, Entry), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        let record = {
            let mut sessions = tx.open_table(SESSIONS).map_err(err)?;
            let mut record = existing_in(&sessions, id)?;
            if record.closed {
                return Err(StoreError(format!("session {id:016x} is closed")));
            }
            entry.outgoing = true;
            entry.sequence = record.next_sequence;
            entry.delivery = Delivery::Pending as i32;
            let index = record.entries;
            tx.open_table(ENTRIES)
                .map_err(err)?
                .insert((id, index), entry.encode_to_vec().as_slice())
                .map_err(err)?;
            tx.open_table(SEQUENCES)
                .map_err(err)?
                .insert((id, SENT, entry.sequence), index)
                .map_err(err)?;
            tx.open_table(OUTBOX)
                .map_err(err)?
                .insert((id, entry.sequence), index)
                .map_err(err)?;
            record.next_sequence += 1;
            record.entries += 1;
            sessions
                .insert(id, record.encode_to_vec().as_slice())
                .map_err(err)?;
            record
        };
        tx.commit().map_err(err)?;
        Ok((record, entry))
    }

    /// Stores a message `peer` sent in session `id` (a session it started is created here),
    /// and the context it carried.
    pub fn receive(
        &self,
        id: u64,
        peer: &str,
        entry: &Entry,
        context: Option<(&str, Bytes)>,
    ) -> Result<Arrival, StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        let arrival = {
            let mut sessions = tx.open_table(SESSIONS).map_err(err)?;
            let known = session_in(&sessions, id)?;
            let mut record = match known {
                Some(r) if r.peer != peer => return Ok(Arrival::NotThePeers),
                Some(r) => r,
                None => SessionRecord {
                    id,
                    peer: peer.to_owned(),
                    next_sequence: 1,
                    started_unix_ms: unix_ms(SystemTime::now()),
                    ..Default::default()
                },
            };
            let mut sequences = tx.open_table(SEQUENCES).map_err(err)?;
            if sequences
                .get((id, RECEIVED, entry.sequence))
                .map_err(err)?
                .is_some()
            {
                return Ok(Arrival::Duplicate);
            }
            let index = record.entries;
            let mut stored = entry.clone();
            stored.outgoing = false;
            stored.delivery = Delivery::Received as i32;
            tx.open_table(ENTRIES)
                .map_err(err)?
                .insert((id, index), stored.encode_to_vec().as_slice())
                .map_err(err)?;
            sequences
                .insert((id, RECEIVED, entry.sequence), index)
                .map_err(err)?;
            record.entries += 1;
            if let Some((content_type, context)) = context {
                record.peer_context = context;
                content_type.clone_into(&mut record.peer_context_type);
            }
            sessions
                .insert(id, record.encode_to_vec().as_slice())
                .map_err(err)?;
            Arrival::Stored(record)
        };
        tx.commit().map_err(err)?;
        Ok(arrival)
    }

    /// Records what became of the message this agent sent as `sequence` in session `id`;
    /// `resend` keeps it in the outbox.
    pub fn outcome(
        &self,
        id: u64,
        sequence: u64,
        delivery: Delivery,
        detail: &str,
        resend: bool,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let Some(index) = tx
                .open_table(SEQUENCES)
                .map_err(err)?
                .get((id, SENT, sequence))
                .map_err(err)?
                .map(|v| v.value())
            else {
                return Ok(());
            };
            mark(
                &mut tx.open_table(ENTRIES).map_err(err)?,
                id,
                index,
                delivery,
                Some(detail),
            )?;
            if !resend {
                tx.open_table(OUTBOX)
                    .map_err(err)?
                    .remove((id, sequence))
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Messages sent and not yet acknowledged, by session and sequence, with their sessions.
    pub fn outbox(&self) -> Result<Vec<(SessionRecord, Entry)>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let outbox = tx.open_table(OUTBOX).map_err(err)?;
        let sessions = tx.open_table(SESSIONS).map_err(err)?;
        let entries = tx.open_table(ENTRIES).map_err(err)?;
        let mut out = Vec::new();
        for row in outbox.iter().map_err(err)? {
            let (key, index) = row.map_err(err)?;
            let (id, _) = key.value();
            let record = session_in(&sessions, id)?;
            if let (Some(r), Some(e)) = (record, entry_in(&entries, id, index.value())?) {
                out.push((r, e));
            }
        }
        Ok(out)
    }

    /// Session `id`'s messages in the order they were sent or received.
    pub fn history(&self, id: u64) -> Result<Vec<Entry>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let entries = tx.open_table(ENTRIES).map_err(err)?;
        let mut out = Vec::new();
        for row in entries.range((id, 0)..=(id, u64::MAX)).map_err(err)? {
            out.push(decode(row.map_err(err)?.1.value())?);
        }
        Ok(out)
    }

    /// Stores a task's status (replacing the last).
    pub fn put_task(&self, status: &pb::TaskStatus) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(TASKS)
            .map_err(err)?
            .insert(status.task_id.as_str(), status.encode_to_vec().as_slice())
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// The task `id`'s last stored status.
    pub fn task(&self, id: &str) -> Result<Option<pb::TaskStatus>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TASKS).map_err(err)?;
        table
            .get(id)
            .map_err(err)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// Every task's last stored status, by task ID.
    pub fn tasks(&self) -> Result<Vec<pb::TaskStatus>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(TASKS).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            out.push(decode(row.map_err(err)?.1.value())?);
        }
        Ok(out)
    }

    fn update_session(
        &self,
        id: u64,
        change: impl FnOnce(&mut SessionRecord),
    ) -> Result<SessionRecord, StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        let record = {
            let mut sessions = tx.open_table(SESSIONS).map_err(err)?;
            let mut record = existing_in(&sessions, id)?;
            change(&mut record);
            sessions
                .insert(id, record.encode_to_vec().as_slice())
                .map_err(err)?;
            record
        };
        tx.commit().map_err(err)?;
        Ok(record)
    }
}

/// A random non-zero session ID (0 means "no session" on the wire).
fn random_id() -> Result<u64, StoreError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    loop {
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| StoreError("no randomness".into()))?;
        let id = u64::from_le_bytes(bytes);
        if id != 0 {
            return Ok(id);
        }
    }
}
