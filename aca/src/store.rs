//! The authority's durable state: issued certificates, the current certificate of each
//! identity, revocations, compromised keys, applications and the CRL number. [`CertStore`] is
//! what the authority asks of it; two places keep it:
//! - [`Embedded`], the default for one gateway: an embedded, crash-safe redb database. Every
//!   change is one transaction, committed (fsync) before the caller acknowledges it, so a
//!   `kill -9` loses nothing that was acknowledged.
//! - `shared::Shared` (feature `etcd`): the domain's etcd cluster, shared by every gateway of
//!   the domain, so that they issue from one set of identities and serials and publish one CRL.

use std::path::Path;

use agw_proto::pb;
use prost::Message;
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::keys::key_fingerprint;

/// serial -> CertRecord (protobuf).
const CERTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("certs");
/// identity URI -> serial of its newest certificate.
const IDENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("identities");
/// serial -> (revocation time, RFC 5280 reason) of every revoked certificate.
const REVOKED: TableDefinition<&[u8], (i64, i32)> = TableDefinition::new("revoked");
/// SHA-256 of a key revoked for key compromise -> time of that revocation.
const COMPROMISED: TableDefinition<&[u8], i64> = TableDefinition::new("compromised_keys");
/// SHA-256 of a certified key -> serials of every certificate issued for it.
const BY_KEY: MultimapTableDefinition<&[u8], &[u8]> = MultimapTableDefinition::new("certs_by_key");
/// "crl_number" -> last CRL number issued.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Application ID -> the application (`pb::Application`, protobuf), for organisations whose
/// enrollment needs the operator's approval.
const APPLICATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("applications");

/// One issued certificate as the store keeps it.
#[derive(Clone, PartialEq, Message)]
pub struct CertRecord {
    /// Serial number, big-endian bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub serial: Vec<u8>,
    /// The identity URI in its SAN.
    #[prost(string, tag = "2")]
    pub identity: String,
    /// Its key, DER SubjectPublicKeyInfo.
    #[prost(bytes = "vec", tag = "3")]
    pub spki_der: Vec<u8>,
    /// Validity, Unix seconds.
    #[prost(int64, tag = "4")]
    pub not_before: i64,
    #[prost(int64, tag = "5")]
    pub not_after: i64,
    /// The certificate, DER.
    #[prost(bytes = "vec", tag = "6")]
    pub der: Vec<u8>,
    /// The materials it was issued on; renewals without materials reuse them.
    #[prost(message, optional, tag = "7")]
    pub materials: Option<pb::IdentityMaterials>,
}

/// A revocation as the CRL lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// Unix seconds.
    pub at: i64,
    /// RFC 5280 reason code.
    pub reason: i32,
}

/// The store failed; the operation was not applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another gateway of the domain changed the same record first: decide again.
    #[error("certificate store: another gateway of the domain changed this record first")]
    Conflict,
    /// The shared store cannot take writes now (etcd: no quorum, unreachable).
    #[error("certificate store: {0}")]
    Unavailable(String),
    #[error("certificate store: {0}")]
    Failed(String),
}

macro_rules! store_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Failed(e.to_string())
            }
        }
    )*};
}
store_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    prost::DecodeError
);

/// What the authority keeps and asks. Writes are durable (and, shared, seen by the domain's
/// other gateways) when they return.
pub trait CertStore: Send + Sync + std::fmt::Debug {
    /// Serials of every certificate issued for the key with this fingerprint.
    fn serials_of_key(&self, fingerprint: &[u8; 32]) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The certificate with this serial.
    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError>;
    /// The newest certificate issued for `identity`.
    fn current_for(&self, identity: &str) -> Result<Option<CertRecord>, StoreError>;
    /// The newest certificate of every identity.
    fn current_all(&self) -> Result<Vec<CertRecord>, StoreError>;
    /// Whether a serial is taken.
    fn serial_exists(&self, serial: &[u8]) -> Result<bool, StoreError>;
    /// The revocation of `serial`, if revoked.
    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError>;
    /// Whether a key (by fingerprint) was revoked for key compromise.
    fn is_compromised(&self, fingerprint: &[u8; 32]) -> Result<bool, StoreError>;
    /// Every revocation, for the CRL.
    fn revocations(&self) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError>;
    /// Records an issued certificate as its identity's current one, if the identity's
    /// current certificate is still `replacing` (its serial; `None`: it had none), which is
    /// what the authority decided on ([`StoreError::Conflict`] otherwise).
    fn insert_issued(
        &self,
        record: &CertRecord,
        replacing: Option<&[u8]>,
    ) -> Result<(), StoreError>;
    /// Records revocations (new ones, or a change of reason) and, for key compromise, the
    /// key's fingerprint, in one transaction.
    fn revoke(
        &self,
        revocations: &[(Vec<u8>, Revocation)],
        compromised_key: Option<[u8; 32]>,
    ) -> Result<(), StoreError>;
    /// Every application awaiting or having had the operator's decision, oldest first.
    fn applications(&self) -> Result<Vec<pb::Application>, StoreError>;
    /// Stores `application`; with id 0, as a new one under the next ID (returned).
    fn put_application(&self, application: &pb::Application) -> Result<u64, StoreError>;
    /// Takes the next CRL number, so numbers never repeat.
    fn next_crl_number(&self) -> Result<u64, StoreError>;
}

/// The authority's database, embedded.
#[derive(Debug)]
pub struct Embedded {
    db: Database,
}

impl Embedded {
    /// Opens the database at `path` (readable by its owner only), creating it and its tables
    /// if needed. A database from before the key index gets the index built once.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = Database::create(path)?;
        crate::private::restrict_file(path).map_err(|e| StoreError::Failed(e.to_string()))?;
        let tx = db.begin_write()?;
        {
            let certs = tx.open_table(CERTS)?;
            tx.open_table(IDENTITIES)?;
            tx.open_table(REVOKED)?;
            tx.open_table(COMPROMISED)?;
            tx.open_table(META)?;
            tx.open_table(APPLICATIONS)?;
            let mut by_key = tx.open_multimap_table(BY_KEY)?;
            if by_key.is_empty()? {
                for entry in certs.iter()? {
                    let (serial, bytes) = entry?;
                    let record = CertRecord::decode(bytes.value())?;
                    by_key.insert(&key_fingerprint(&record.spki_der)[..], serial.value())?;
                }
            }
        }
        tx.commit()?;
        Ok(Embedded { db })
    }
}

impl CertStore for Embedded {
    fn serials_of_key(&self, fingerprint: &[u8; 32]) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_multimap_table(BY_KEY)?;
        let mut out = Vec::new();
        for serial in table.get(&fingerprint[..])? {
            out.push(serial?.value().to_vec());
        }
        Ok(out)
    }

    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CERTS)?;
        let Some(bytes) = table.get(serial)? else {
            return Ok(None);
        };
        Ok(Some(CertRecord::decode(bytes.value())?))
    }

    fn current_for(&self, identity: &str) -> Result<Option<CertRecord>, StoreError> {
        let serial = {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(IDENTITIES)?;
            match table.get(identity)? {
                Some(s) => s.value().to_vec(),
                None => return Ok(None),
            }
        };
        self.cert(&serial)
    }

    fn current_all(&self) -> Result<Vec<CertRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let identities = tx.open_table(IDENTITIES)?;
        let certs = tx.open_table(CERTS)?;
        let mut out = Vec::new();
        for entry in identities.iter()? {
            let (_, serial) = entry?;
            if let Some(bytes) = certs.get(serial.value())? {
                out.push(CertRecord::decode(bytes.value())?);
            }
        }
        Ok(out)
    }

    fn serial_exists(&self, serial: &[u8]) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(CERTS)?.get(serial)?.is_some())
    }

    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REVOKED)?;
        Ok(table.get(serial)?.map(|v| {
            let (at, reason) = v.value();
            Revocation { at, reason }
        }))
    }

    fn is_compromised(&self, fingerprint: &[u8; 32]) -> Result<bool, StoreError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(COMPROMISED)?.get(&fingerprint[..])?.is_some())
    }

    fn revocations(&self) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REVOKED)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (serial, value) = entry?;
            let (at, reason) = value.value();
            out.push((serial.value().to_vec(), Revocation { at, reason }));
        }
        Ok(out)
    }

    fn insert_issued(
        &self,
        record: &CertRecord,
        replacing: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut ids = tx.open_table(IDENTITIES)?;
            let current = ids
                .get(record.identity.as_str())?
                .map(|s| s.value().to_vec());
            if current.as_deref() != replacing {
                return Err(StoreError::Conflict);
            }
            ids.insert(record.identity.as_str(), record.serial.as_slice())?;
            let mut certs = tx.open_table(CERTS)?;
            if certs.get(record.serial.as_slice())?.is_some() {
                return Err(StoreError::Conflict);
            }
            certs.insert(record.serial.as_slice(), record.encode_to_vec().as_slice())?;
            let mut by_key = tx.open_multimap_table(BY_KEY)?;
            by_key.insert(
                &key_fingerprint(&record.spki_der)[..],
                record.serial.as_slice(),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn revoke(
        &self,
        revocations: &[(Vec<u8>, Revocation)],
        compromised_key: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut revoked = tx.open_table(REVOKED)?;
            for (serial, revocation) in revocations {
                revoked.insert(serial.as_slice(), (revocation.at, revocation.reason))?;
            }
            if let (Some(fp), Some((_, first))) = (compromised_key, revocations.first()) {
                let mut keys = tx.open_table(COMPROMISED)?;
                keys.insert(&fp[..], first.at)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn applications(&self) -> Result<Vec<pb::Application>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(APPLICATIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, bytes) = entry?;
            out.push(pb::Application::decode(bytes.value())?);
        }
        Ok(out)
    }

    fn put_application(&self, application: &pb::Application) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let id = {
            let mut meta = tx.open_table(META)?;
            let id = match application.id {
                0 => {
                    let next = meta.get("application_id")?.map_or(0, |v| v.value()) + 1;
                    meta.insert("application_id", next)?;
                    next
                }
                id => id,
            };
            let mut table = tx.open_table(APPLICATIONS)?;
            let stored = pb::Application {
                id,
                ..application.clone()
            };
            table.insert(id, stored.encode_to_vec().as_slice())?;
            id
        };
        tx.commit()?;
        Ok(id)
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let next = {
            let mut meta = tx.open_table(META)?;
            let next = meta.get("crl_number")?.map_or(0, |v| v.value()) + 1;
            meta.insert("crl_number", next)?;
            next
        };
        tx.commit()?;
        Ok(next)
    }
}

#[cfg(feature = "etcd")]
pub mod shared;
