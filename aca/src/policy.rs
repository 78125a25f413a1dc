//! Which applications the authority approves, beyond the checks it always makes (a valid CSR
//! signature, an accepted key, an identity in its domain that nobody else holds, a key never
//! revoked for compromise). The policy is pluggable; [`AllowListPolicy`] is the default.

use std::collections::{BTreeSet, HashMap};

use agw_proto::{identity::AgentId, pb, pb::ErrorCode};

use crate::{AcaError, keys::KeyAlgorithm};

/// An application as the policy sees it, after the authority's own checks passed.
#[derive(Debug)]
pub struct Application<'a> {
    /// The identity asked for.
    pub identity: &'a AgentId,
    /// The key to certify.
    pub key: KeyAlgorithm,
    /// The supporting materials (draft 3.1.1).
    pub materials: &'a pb::IdentityMaterials,
}

/// Decides whether an application is approved.
pub trait ApplicationPolicy: Send + Sync + std::fmt::Debug {
    /// `Ok` approves; an error refuses, with the code the agent sees.
    fn check(&self, application: &Application<'_>) -> Result<(), AcaError>;
}

/// What an organisation on the allow-list may get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrganizationGrant {
    /// Permission scopes its agents may hold.
    pub scopes: BTreeSet<String>,
}

/// The default policy: the organisation must be on the allow-list, and the permission scope
/// asked for must be within its grant.
#[derive(Debug, Clone, Default)]
pub struct AllowListPolicy {
    /// Organisation name -> grant.
    pub organizations: HashMap<String, OrganizationGrant>,
}

impl AllowListPolicy {
    /// Adds `organization` with the scopes it may grant.
    pub fn allow<'a>(
        mut self,
        organization: &str,
        scopes: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        self.organizations.insert(
            organization.to_owned(),
            OrganizationGrant {
                scopes: scopes.into_iter().map(str::to_owned).collect(),
            },
        );
        self
    }
}

impl ApplicationPolicy for AllowListPolicy {
    fn check(&self, app: &Application<'_>) -> Result<(), AcaError> {
        let org = &app.materials.organization;
        let grant = self.organizations.get(org).ok_or_else(|| {
            AcaError::new(
                ErrorCode::OrgNotAllowed,
                format!("organisation {org:?} is not on the allow-list"),
            )
        })?;
        if let Some(scope) = app
            .materials
            .permission_scope
            .iter()
            .find(|s| !grant.scopes.contains(*s))
        {
            return Err(AcaError::new(
                ErrorCode::ScopeNotPermitted,
                format!("scope {scope:?} is not granted to {org:?}"),
            ));
        }
        Ok(())
    }
}
