//! Registered profiles in the domain's etcd cluster, shared by every gateway of the domain
//! (issue 19). Keys under the domain's prefix (`etcdctl get --prefix /agw/<domain>/ars/`):
//!
//! | key | value |
//! | --- | --- |
//! | `ars/profiles/<resource ID>` | the profile and its certificate's serial (`StoredProfile`, protobuf) |
//! | `ars/agents/<agent ID>` | its resource ID: one registration per agent in the domain |
//! | `ars/registrations/<serial, hex>` | registrations made with that certificate, decimal |
//!
//! A registration commits only if no gateway registered the agent meanwhile and the
//! certificate's count is still the one read; what other gateways register, update and
//! deregister reaches this gateway's registry through [`follow`].

use agw_etcd::{CommitError, Guard, Op, Shared as Mirror};
use prost::Message;

use super::{ProfileStore, StoreError, StoredProfile};
use crate::{Registry, RegistryHandle};

const PROFILES: &str = "ars/profiles/";
const AGENTS: &str = "ars/agents/";
const REGISTRATIONS: &str = "ars/registrations/";

impl From<CommitError> for StoreError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Conflict => StoreError::Conflict,
            CommitError::Unavailable(why) => StoreError::Unavailable(why),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<StoredProfile, StoreError> {
    StoredProfile::decode(bytes).map_err(|e| StoreError::Failed(e.to_string()))
}

/// The registry's store on the domain's etcd mirror.
#[derive(Debug, Clone)]
pub struct Shared {
    mirror: Mirror,
}

impl Shared {
    pub fn new(mirror: Mirror) -> Shared {
        Shared { mirror }
    }
}

impl ProfileStore for Shared {
    fn all(&self) -> Result<Vec<StoredProfile>, StoreError> {
        self.mirror
            .scan(PROFILES)
            .into_iter()
            .map(|(_, e)| decode(&e.value))
            .collect()
    }

    fn registrations(&self, serial: &[u8]) -> Result<u32, StoreError> {
        let Some(count) = self
            .mirror
            .get(&format!("{REGISTRATIONS}{}", hex::encode(serial)))
        else {
            return Ok(0);
        };
        std::str::from_utf8(&count.value)
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| StoreError::Failed("a registration count is not a number".into()))
    }

    fn put(&self, stored: &StoredProfile, count_registration: bool) -> Result<(), StoreError> {
        let Some(profile) = &stored.profile else {
            return Err(StoreError::Failed("no profile to store".into()));
        };
        let mut guards = Vec::new();
        let mut ops = vec![Op::Put(
            format!("{PROFILES}{}", profile.resource_id),
            stored.encode_to_vec(),
        )];
        if count_registration {
            let agent = format!("{AGENTS}{}", profile.agent);
            let count = format!("{REGISTRATIONS}{}", hex::encode(&stored.certificate_serial));
            let made = self.registrations(&stored.certificate_serial)?;
            guards.push(Guard::Revision(agent.clone(), 0));
            guards.push(self.mirror.seen(&count));
            ops.push(Op::Put(agent, profile.resource_id.clone().into_bytes()));
            ops.push(Op::Put(count, (made + 1).to_string().into_bytes()));
        }
        self.mirror.commit(guards, ops)?;
        Ok(())
    }

    fn delete(&self, resource_id: &str) -> Result<(), StoreError> {
        let key = format!("{PROFILES}{resource_id}");
        let mut ops = vec![Op::Delete(key.clone())];
        if let Some(entry) = self.mirror.get(&key)
            && let Some(profile) = decode(&entry.value)?.profile
        {
            ops.push(Op::Delete(format!("{AGENTS}{}", profile.agent)));
        }
        self.mirror.commit(Vec::new(), ops)?;
        Ok(())
    }
}

/// Hands the registry what the domain's other gateways register, update and deregister, as
/// commands on its owner's thread (never waiting on the mirror's thread).
pub fn follow(mirror: &Mirror, registry: &RegistryHandle) {
    let registry = registry.clone();
    mirror.subscribe(PROFILES, move |changes| {
        let theirs: Vec<(String, Option<StoredProfile>)> = changes
            .iter()
            .filter(|c| !c.local)
            .filter_map(|c| {
                let id = c.key.strip_prefix(PROFILES)?.to_owned();
                match &c.value {
                    Some(bytes) => decode(bytes).ok().map(|p| (id, Some(p))),
                    None => Some((id, None)),
                }
            })
            .collect();
        if theirs.is_empty() {
            return;
        }
        registry.change(move |r: &mut Registry| {
            for (id, stored) in theirs {
                r.apply_shared(&id, stored);
            }
        });
    });
}
