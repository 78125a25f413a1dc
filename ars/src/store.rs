//! Registered profiles in an embedded, crash-safe redb database. Every change is one
//! transaction, committed before the registry acknowledges it; the discovery index is rebuilt
//! from here at start. Profiles from other domains are not stored: peers send them again when
//! their sessions come up.

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
#[error("profile store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The registry's database.
#[derive(Debug)]
pub struct ProfileStore {
    db: Database,
}

impl ProfileStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<ProfileStore, StoreError> {
        let db = Database::create(path).map_err(err)?;
        agw_aca::private::restrict_file(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(PROFILES).map_err(err)?;
        tx.open_table(REGISTRATIONS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(ProfileStore { db })
    }

    /// Every stored profile.
    pub fn all(&self) -> Result<Vec<StoredProfile>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(PROFILES).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(StoredProfile::decode(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// Registrations made with a certificate.
    pub fn registrations(&self, serial: &[u8]) -> Result<u32, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(REGISTRATIONS).map_err(err)?;
        Ok(table.get(serial).map_err(err)?.map_or(0, |v| v.value()))
    }

    /// Stores a profile; `count_registration` also counts a registration for its certificate.
    pub fn put(&self, stored: &StoredProfile, count_registration: bool) -> Result<(), StoreError> {
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

    /// Deletes a profile.
    pub fn delete(&self, resource_id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(PROFILES)
            .map_err(err)?
            .remove(resource_id)
            .map_err(err)?;
        tx.commit().map_err(err)
    }
}
