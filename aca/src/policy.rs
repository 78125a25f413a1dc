//! Which applications the authority approves, beyond the checks it always makes (a valid CSR
//! signature, an accepted key, an identity in its domain that nobody else holds, a key never
//! revoked for compromise). The policy is pluggable; [`AllowListPolicy`] is the default.

use std::collections::{BTreeSet, HashMap};

use agw_proto::{identity::AgentId, pb, pb::ErrorCode};

use crate::{
    AcaError,
    enrollment::{TokenDigest, digest_of},
    keys::KeyAlgorithm,
};

/// An application as the policy sees it, after the authority's own checks passed.
#[derive(Debug)]
pub struct Application<'a> {
    /// The identity asked for.
    pub identity: &'a AgentId,
    /// The key to certify.
    pub key: KeyAlgorithm,
    /// The supporting materials (draft 3.1.1).
    pub materials: &'a pb::IdentityMaterials,
    /// The enrollment token it carries (empty if none).
    pub enrollment_token: &'a str,
    /// A renewal: the applicant proved it holds a live certificate of the same organisation,
    /// which stands for the token.
    pub renewal: bool,
    /// A new identity applied for by a holder of a live certificate of the same organisation
    /// (it proved the key in a TLS handshake): that certificate stands for the token; the
    /// operator's approval, where required, still applies.
    pub vouched: bool,
}

/// Decides whether an application is approved.
pub trait ApplicationPolicy: Send + Sync + std::fmt::Debug {
    /// `Ok` approves; an error refuses, with the code the agent sees.
    fn check(&self, application: &Application<'_>) -> Result<(), AcaError>;

    /// Whether an application that passed [`ApplicationPolicy::check`] also waits for the
    /// operator's decision (`agwctl cert approve|deny`). Renewals never do.
    fn needs_approval(&self, _application: &Application<'_>) -> bool {
        false
    }
}

/// What an organisation on the allow-list may get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrganizationGrant {
    /// Permission scopes its agents may hold.
    pub scopes: BTreeSet<String>,
    /// The SHA-256 of its enrollment token: an application must carry the token. `None`: the
    /// organisation is open, anyone naming it is certified (tests, closed networks; the
    /// daemon gives every organisation a token unless its operator opens it).
    pub token: Option<TokenDigest>,
    /// Its applications wait for the operator's approval.
    pub approval: bool,
}

/// The default policy: the organisation must be on the allow-list, the application must carry
/// its enrollment token (unless it is open), and the permission scope asked for must be
/// within its grant.
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
                token: None,
                approval: false,
            },
        );
        self
    }

    /// Requires `organization`'s applications to carry the token whose SHA-256 is `digest`
    /// (see [`crate::enrollment`]). An organisation not on the list is left off it.
    pub fn require_token(mut self, organization: &str, digest: TokenDigest) -> Self {
        if let Some(grant) = self.organizations.get_mut(organization) {
            grant.token = Some(digest);
        }
        self
    }

    /// Makes `organization`'s applications wait for the operator's approval.
    pub fn require_approval(mut self, organization: &str) -> Self {
        if let Some(grant) = self.organizations.get_mut(organization) {
            grant.approval = true;
        }
        self
    }

    /// Organisations anyone may apply for (no token), sorted: what a daemon warns about.
    pub fn open_organizations(&self) -> Vec<&str> {
        let mut open: Vec<&str> = self
            .organizations
            .iter()
            .filter(|(_, g)| g.token.is_none())
            .map(|(org, _)| org.as_str())
            .collect();
        open.sort_unstable();
        open
    }
}

impl ApplicationPolicy for AllowListPolicy {
    fn needs_approval(&self, app: &Application<'_>) -> bool {
        !app.renewal
            && self
                .organizations
                .get(&app.materials.organization)
                .is_some_and(|g| g.approval)
    }

    fn check(&self, app: &Application<'_>) -> Result<(), AcaError> {
        let org = &app.materials.organization;
        let grant = self.organizations.get(org).ok_or_else(|| {
            AcaError::new(
                ErrorCode::OrgNotAllowed,
                format!("organisation {org:?} is not on the allow-list"),
            )
        })?;
        // Digests of equal length compared whole: the time taken says nothing of the token.
        if let Some(digest) = grant.token
            && !app.renewal
            && !app.vouched
            && digest_of(app.enrollment_token)
                .iter()
                .zip(&digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return Err(AcaError::new(
                ErrorCode::EnrollmentUnauthenticated,
                if app.enrollment_token.is_empty() {
                    format!("{org:?} enrolls with a token from its operator; none was sent")
                } else {
                    format!("the enrollment token is not {org:?}'s")
                },
            ));
        }
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
