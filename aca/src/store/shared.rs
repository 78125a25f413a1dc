//! The authority's state in the domain's etcd cluster, shared by every gateway of the domain
//! (issue 19). Keys under the domain's prefix (`etcdctl get --prefix /agw/<domain>/aca/`):
//!
//! | key | value |
//! | --- | --- |
//! | `aca/ca` | the authority's certificate (DER): every gateway must hold the same authority |
//! | `aca/certs/<serial, hex>` | the issued certificate's record (`CertRecord`, protobuf) |
//! | `aca/identities/<identity URI>` | the serial (hex) of the identity's newest certificate |
//! | `aca/revoked/<serial, hex>` | `<unix seconds>,<RFC 5280 reason>` |
//! | `aca/compromised/<key SHA-256, hex>` | unix seconds of the key-compromise revocation |
//! | `aca/crl_number`, `aca/application_id` | the last number taken, decimal |
//! | `aca/applications/<id, 20 digits>` | an application awaiting the operator (protobuf) |
//!
//! Reads come from the gateway's mirror. An issuance commits only if the certificate's serial
//! is new and the identity still has the certificate the authority decided on: two gateways
//! applying for one identity at once cannot both issue. Counters are taken with a guard on
//! the value read, and taken again on a conflict, so no two gateways use one CRL number.

use agw_etcd::{CommitError, Guard, Op, Shared as Mirror};
use agw_proto::pb;
use prost::Message;

use super::{CertRecord, CertStore, Revocation, StoreError};
use crate::keys::key_fingerprint;

const CA: &str = "aca/ca";
const CERTS: &str = "aca/certs/";
const IDENTITIES: &str = "aca/identities/";
const REVOKED: &str = "aca/revoked/";
const COMPROMISED: &str = "aca/compromised/";
const APPLICATIONS: &str = "aca/applications/";
const CRL_NUMBER: &str = "aca/crl_number";
const APPLICATION_ID: &str = "aca/application_id";

/// Prefix whose changes mean a certificate was issued (by any gateway of the domain).
pub const ISSUED: &str = CERTS;
/// Prefix whose changes mean a certificate was revoked.
pub const REVOCATIONS: &str = REVOKED;

/// Tries at a counter before a write fails: each conflict means another gateway took a number.
const COUNTER_TRIES: usize = 64;

impl From<CommitError> for StoreError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Conflict => StoreError::Conflict,
            CommitError::Unavailable(why) => StoreError::Unavailable(why),
        }
    }
}

/// The authority's store on the domain's etcd mirror.
#[derive(Debug, Clone)]
pub struct Shared {
    mirror: Mirror,
}

fn text(bytes: &[u8]) -> Result<&str, StoreError> {
    std::str::from_utf8(bytes).map_err(|_| StoreError::Failed("a value is not UTF-8".into()))
}

fn number<T: std::str::FromStr>(bytes: &[u8]) -> Result<T, StoreError> {
    text(bytes)?
        .trim()
        .parse()
        .map_err(|_| StoreError::Failed(format!("not a number: {:?}", text(bytes))))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Failed(e.to_string()))
}

fn parse_revocation(bytes: &[u8]) -> Result<Revocation, StoreError> {
    let value = text(bytes)?;
    let (at, reason) = value
        .split_once(',')
        .ok_or_else(|| StoreError::Failed(format!("not a revocation: {value:?}")))?;
    Ok(Revocation {
        at: number(at.as_bytes())?,
        reason: number(reason.as_bytes())?,
    })
}

impl Shared {
    /// The authority's store on `mirror`. `ca` is this gateway's authority certificate
    /// (DER): recorded by the first gateway of the domain, and every later one must hold
    /// the same (copied from the first), or the domain would have two authorities.
    pub fn new(mirror: Mirror, ca: &[u8]) -> Result<Shared, StoreError> {
        for _ in 0..COUNTER_TRIES {
            match mirror.get(CA) {
                Some(held) if held.value == ca => return Ok(Shared { mirror }),
                Some(_) => {
                    return Err(StoreError::Failed(
                        "the domain's etcd holds another authority: copy ca.key.pem, \
                         ca.chain.pem and trust-anchor.pem from the first gateway's aca directory"
                            .into(),
                    ));
                }
                None => match mirror.commit(
                    vec![Guard::Revision(CA.into(), 0)],
                    vec![Op::Put(CA.into(), ca.to_vec())],
                ) {
                    Ok(_) => return Ok(Shared { mirror }),
                    // Another gateway recorded its authority first: once the mirror has it,
                    // ours must be the same.
                    Err(CommitError::Conflict) => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    Err(e) => return Err(e.into()),
                },
            }
        }
        Err(StoreError::Conflict)
    }

    /// Whether the domain's etcd already records an authority (a gateway without one must
    /// not make its own).
    pub fn has_authority(mirror: &Mirror) -> bool {
        mirror.get(CA).is_some()
    }

    /// Takes the next value of a counter, with `also` written in the same transaction.
    fn take_next(&self, counter: &str, also: impl Fn(u64) -> Vec<Op>) -> Result<u64, StoreError> {
        for _ in 0..COUNTER_TRIES {
            let (current, guard) = match self.mirror.get(counter) {
                Some(e) => (
                    number::<u64>(&e.value)?,
                    Guard::Revision(counter.into(), e.mod_revision),
                ),
                None => (0, Guard::Revision(counter.into(), 0)),
            };
            let next = current + 1;
            let mut ops = vec![Op::Put(counter.into(), next.to_string().into_bytes())];
            ops.extend(also(next));
            match self.mirror.commit(vec![guard], ops) {
                Ok(_) => return Ok(next),
                // The mirror has not heard another gateway's number yet: it will shortly.
                Err(CommitError::Conflict) => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict)
    }
}

impl CertStore for Shared {
    fn serials_of_key(&self, fingerprint: &[u8; 32]) -> Result<Vec<Vec<u8>>, StoreError> {
        // A scan of the mirror: asked only when a key is revoked for compromise.
        let mut out = Vec::new();
        for (_, entry) in self.mirror.scan(CERTS) {
            let record: CertRecord = decode(&entry.value)?;
            if key_fingerprint(&record.spki_der) == *fingerprint {
                out.push(record.serial);
            }
        }
        Ok(out)
    }

    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        self.mirror
            .get(&format!("{CERTS}{}", hex::encode(serial)))
            .map(|e| decode(&e.value))
            .transpose()
    }

    fn current_for(&self, identity: &str) -> Result<Option<CertRecord>, StoreError> {
        let Some(serial) = self.mirror.get(&format!("{IDENTITIES}{identity}")) else {
            return Ok(None);
        };
        let serial = hex::decode(text(&serial.value)?)
            .map_err(|_| StoreError::Failed("a serial is not hex".into()))?;
        self.cert(&serial)
    }

    fn current_all(&self) -> Result<Vec<CertRecord>, StoreError> {
        let mut out = Vec::new();
        for (_, serial) in self.mirror.scan(IDENTITIES) {
            if let Some(e) = self.mirror.get(&format!("{CERTS}{}", text(&serial.value)?)) {
                out.push(decode(&e.value)?);
            }
        }
        Ok(out)
    }

    fn serial_exists(&self, serial: &[u8]) -> Result<bool, StoreError> {
        Ok(self
            .mirror
            .get(&format!("{CERTS}{}", hex::encode(serial)))
            .is_some())
    }

    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError> {
        self.mirror
            .get(&format!("{REVOKED}{}", hex::encode(serial)))
            .map(|e| parse_revocation(&e.value))
            .transpose()
    }

    fn is_compromised(&self, fingerprint: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self
            .mirror
            .get(&format!("{COMPROMISED}{}", hex::encode(fingerprint)))
            .is_some())
    }

    fn revocations(&self) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError> {
        let mut out = Vec::new();
        for (key, entry) in self.mirror.scan(REVOKED) {
            let serial = hex::decode(&key[REVOKED.len()..])
                .map_err(|_| StoreError::Failed(format!("{key}: not a hex serial")))?;
            out.push((serial, parse_revocation(&entry.value)?));
        }
        Ok(out)
    }

    fn insert_issued(
        &self,
        record: &CertRecord,
        replacing: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let serial = hex::encode(&record.serial);
        let cert_key = format!("{CERTS}{serial}");
        let identity_key = format!("{IDENTITIES}{}", record.identity);
        let identity_guard = match replacing {
            None => Guard::Revision(identity_key.clone(), 0),
            Some(old) => Guard::Value(identity_key.clone(), hex::encode(old).into_bytes()),
        };
        self.mirror.commit(
            vec![Guard::Revision(cert_key.clone(), 0), identity_guard],
            vec![
                Op::Put(cert_key, record.encode_to_vec()),
                Op::Put(identity_key, serial.into_bytes()),
            ],
        )?;
        Ok(())
    }

    fn revoke(
        &self,
        revocations: &[(Vec<u8>, Revocation)],
        compromised_key: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let mut ops: Vec<Op> = revocations
            .iter()
            .map(|(serial, r)| {
                Op::Put(
                    format!("{REVOKED}{}", hex::encode(serial)),
                    format!("{},{}", r.at, r.reason).into_bytes(),
                )
            })
            .collect();
        if let (Some(fp), Some((_, first))) = (compromised_key, revocations.first()) {
            ops.push(Op::Put(
                format!("{COMPROMISED}{}", hex::encode(fp)),
                first.at.to_string().into_bytes(),
            ));
        }
        self.mirror.commit(Vec::new(), ops)?;
        Ok(())
    }

    fn applications(&self) -> Result<Vec<pb::Application>, StoreError> {
        self.mirror
            .scan(APPLICATIONS)
            .into_iter()
            .map(|(_, e)| decode(&e.value))
            .collect()
    }

    fn put_application(&self, application: &pb::Application) -> Result<u64, StoreError> {
        let put = |id: u64| {
            let stored = pb::Application {
                id,
                ..application.clone()
            };
            Op::Put(format!("{APPLICATIONS}{id:020}"), stored.encode_to_vec())
        };
        match application.id {
            0 => self.take_next(APPLICATION_ID, |id| vec![put(id)]),
            id => {
                self.mirror.commit(Vec::new(), vec![put(id)])?;
                Ok(id)
            }
        }
    }

    fn next_crl_number(&self) -> Result<u64, StoreError> {
        self.take_next(CRL_NUMBER, |_| Vec::new())
    }
}
