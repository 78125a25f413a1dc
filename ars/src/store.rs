//! Registered profiles, durable: [`ProfileStore`] is what the registry asks of them; the
//! discovery index is rebuilt from here at start. Profiles from other domains are not stored:
//! peers send them again when their sessions come up. Two places keep them:
//! - [`Embedded`], the default for one gateway: an embedded, crash-safe redb database; every
//!   change is one transaction, committed before the registry acknowledges it.
//! - `shared::Shared` (feature `etcd`): the domain's etcd cluster, shared by the domain's
//!   gateways, so that an agent registered at one is discoverable at all (draft 2.3: an ARS
//!   serves several AGws).

use std::path::Path;

use agw_proto::pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// resource ID -> StoredProfile.
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
/// certificate serial -> registrations made with it.
const REGISTRATIONS: TableDefinition<&[u8], u32> = TableDefinition::new("registrations");

/// A local profile with what the registry needs beyond it.
#[derive(Clone, PartialEq, Message)]
pub struct StoredProfile {
    #[prost(message, optional, tag = "1")]
    pub profile: Option<pb::AgentProfile>,
    /// Serial of the certificate it was registered with.
    #[prost(bytes = "vec", tag = "2")]
    pub certificate_serial: Vec<u8>,
}

/// The store failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another gateway of the domain changed the same record first.
    #[error("profile store: another gateway of the domain changed this record first")]
    Conflict,
    /// The shared store takes no writes now (etcd: no quorum, unreachable).
    #[error("profile store: {0}")]
    Unavailable(String),
    #[error("profile store: {0}")]
    Failed(String),
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

/// What the registry keeps and asks. Writes are durable (and, shared, seen by the domain's
/// other gateways) when they return.
pub trait ProfileStore: Send + std::fmt::Debug {
    /// Every stored profile.
    fn all(&self) -> Result<Vec<StoredProfile>, StoreError>;
    /// Registrations made with a certificate.
    fn registrations(&self, serial: &[u8]) -> Result<u32, StoreError>;
    /// Stores a profile; `count_registration` also counts a registration for its
    /// certificate (a new registration: refused with [`StoreError::Conflict`] if the agent
    /// was registered meanwhile by another gateway).
    fn put(&self, stored: &StoredProfile, count_registration: bool) -> Result<(), StoreError>;
    /// Deletes a profile.
    fn delete(&self, resource_id: &str) -> Result<(), StoreError>;
}

/// The registry's database, embedded.
#[derive(Debug)]
pub struct Embedded {
    db: Database,
}

impl Embedded {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = Database::create(path).map_err(err)?;
        agw_aca::private::restrict_file(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(PROFILES).map_err(err)?;
        tx.open_table(REGISTRATIONS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Embedded { db })
    }
}

impl ProfileStore for Embedded {
    fn all(&self) -> Result<Vec<StoredProfile>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(PROFILES).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(StoredProfile::decode(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    fn registrations(&self, serial: &[u8]) -> Result<u32, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(REGISTRATIONS).map_err(err)?;
        Ok(table.get(serial).map_err(err)?.map_or(0, |v| v.value()))
    }

    fn put(&self, stored: &StoredProfile, count_registration: bool) -> Result<(), StoreError> {
        let id = stored
            .profile
            .as_ref()
            .map_or("", |p| p.resource_id.as_str());
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut profiles = tx.open_table(PROFILES).map_err(err)?;
            profiles
                .insert(id, stored.encode_to_vec().as_slice())
                .map_err(err)?;
            if count_registration {
                let mut regs = tx.open_table(REGISTRATIONS).map_err(err)?;
                let serial = stored.certificate_serial.as_slice();
                let n = regs.get(serial).map_err(err)?.map_or(0, |v| v.value());
                regs.insert(serial, n.saturating_add(1)).map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn delete(&self, resource_id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(PROFILES)
            .map_err(err)?
            .remove(resource_id)
            .map_err(err)?;
        tx.commit().map_err(err)
    }
}

#[cfg(feature = "etcd")]
pub mod shared;
