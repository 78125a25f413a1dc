//! The certificate authority: bootstrap, issuance, renewal, revocation, status and CRLs.
//!
//! Every method takes the current time as an argument, so tests run on simulated time. State
//! changes are committed to the [`CertStore`] before a method returns success.

use std::{
    collections::HashMap,
    fs,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use agw_proto::{
    identity::{AgentId, Domain, GatewayId},
    pb::{self, ErrorCode},
    rate::Bucket,
    signing,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SanType,
    SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::{
    AcaError,
    csr::{CsrError, VerifiedCsr, verify_csr},
    keys::{self, KeyError, key_fingerprint},
    policy::{Application, ApplicationPolicy},
    store::{CertRecord, CertStore, Embedded, Revocation, StoreError},
};

/// Certificates start this long before they are issued, so that a relying party whose clock
/// is a little behind the authority's accepts them at once.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Limits on identity materials, checked before anything is stored.
const MAX_MATERIAL_FIELD: usize = agw_tls::materials::MAX_FIELD;
const MAX_MATERIAL_ITEMS: usize = agw_tls::materials::MAX_ITEMS;
/// A proof of possession for a revocation must be this fresh.
const PROOF_WINDOW: Duration = Duration::from_secs(300);

/// Where the authority's own key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootMode {
    /// A self-signed root for the domain.
    SelfSigned,
    /// An intermediate CA signed by an operator's root (PEM files); the root's key is read
    /// once at bootstrap and not kept.
    Intermediate {
        /// The operator's root certificate, PEM.
        root_cert: PathBuf,
        /// The operator's root key, PKCS#8 PEM.
        root_key: PathBuf,
    },
}

/// How the authority is set up.
#[derive(Debug, Clone)]
pub struct AuthorityConfig {
    /// The domain whose identities it certifies.
    pub domain: Domain,
    /// Directory for the CA key (`ca.key.pem`, mode 0600), certificates and the database.
    pub data_dir: PathBuf,
    /// URL of the CRL, written into every certificate's CRL distribution point.
    pub crl_url: String,
    /// Lifetime of agent certificates. Default 30 days.
    pub agent_validity: Duration,
    /// Lifetime of gateway certificates. Default 90 days.
    pub gateway_validity: Duration,
    /// Time from a CRL's thisUpdate to its nextUpdate; a CRL is reissued after half of it.
    /// Default 24 hours.
    pub crl_validity: Duration,
    /// Self-signed or intermediate.
    pub root: RootMode,
    /// Applications one organisation may make per minute (as many at once), counted once
    /// the policy admitted them; past it `RATE_LIMITED` with the time to wait. Default 6,000.
    pub applications_per_minute: u32,
    /// Applications one source address may make per minute (as many at once), counted before
    /// anything is checked ([`CertificateAuthority::handle_from`]). Default 600.
    pub applications_per_minute_per_source: u32,
    /// The domain's etcd mirror (issue 19): the authority's state is kept there, shared by
    /// every gateway of the domain, instead of in `aca.redb`. Every gateway must hold the
    /// same authority (its files copied from the first gateway's `aca` directory).
    #[cfg(feature = "etcd")]
    pub shared: Option<agw_etcd::Shared>,
}

impl AuthorityConfig {
    /// Defaults for `domain` with state under `data_dir`.
    pub fn new(domain: Domain, data_dir: impl Into<PathBuf>, crl_url: impl Into<String>) -> Self {
        AuthorityConfig {
            domain,
            data_dir: data_dir.into(),
            crl_url: crl_url.into(),
            agent_validity: Duration::from_secs(30 * 86_400),
            gateway_validity: Duration::from_secs(90 * 86_400),
            crl_validity: Duration::from_secs(86_400),
            root: RootMode::SelfSigned,
            applications_per_minute: 6_000,
            applications_per_minute_per_source: 600,
            #[cfg(feature = "etcd")]
            shared: None,
        }
    }
}

/// A certificate just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The new certificate first, then the authority's chain up to (not including) the root,
    /// DER.
    pub chain: Vec<Vec<u8>>,
    /// Its serial number, big-endian bytes.
    pub serial: Vec<u8>,
}

/// What a status query finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Within its validity and not revoked.
    Valid {
        /// Unix seconds.
        not_after: i64,
    },
    /// Past its validity (or not yet valid).
    Expired {
        /// Unix seconds.
        not_after: i64,
    },
    /// Revoked.
    Revoked(Revocation),
    /// Not issued by this authority.
    Unknown,
}

/// The current CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    /// DER.
    pub der: Vec<u8>,
    /// Its CRL number.
    pub number: u64,
    /// Unix seconds of its thisUpdate.
    pub this_update: i64,
}

/// An Agent Certificate Authority for one domain.
#[derive(Debug)]
pub struct CertificateAuthority {
    config: AuthorityConfig,
    policy: Box<dyn ApplicationPolicy>,
    issuer: Issuer<'static, KeyPair>,
    /// The authority's certificate, then what signed it up to the root (excluded), DER.
    ca_chain: Vec<Vec<u8>>,
    /// The certificate that relying parties trust: our root, or the operator's.
    trust_anchor: Vec<u8>,
    store: Box<dyn CertStore>,
    /// Serialises issuance and revocation, so the checks and the write are one step; also
    /// holds the current CRL.
    crl: Mutex<Crl>,
    /// Each admitted organisation's allowance of applications, and when it last took one.
    applications: Mutex<HashMap<String, (Bucket, SystemTime)>>,
    /// The same per source address (the recent ones: see [`MAX_SOURCES`]).
    sources: Mutex<HashMap<IpAddr, (Bucket, SystemTime)>>,
    rng: SystemRandom,
    /// Told after every revocation (its CRL issued), so a gateway need not poll the CRL.
    on_revoke: RevocationHook,
    on_issue: RevocationHook,
}

/// A function called after each revocation (or issuance).
#[derive(Default)]
struct RevocationHook(std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>);

impl std::fmt::Debug for RevocationHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "set"
        } else {
            "none"
        })
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Whether 70% of a certificate's lifetime has passed: from then on an application with its
/// key gets a new certificate rather than this one again (the SDK renews at the same point).
fn past_renewal_point(record: &CertRecord, now: SystemTime) -> bool {
    let lifetime = record.not_after.saturating_sub(record.not_before);
    unix(now)
        >= record
            .not_before
            .saturating_add(lifetime.saturating_mul(7) / 10)
}

fn datetime(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// Source addresses whose application rate is remembered before the silent ones are forgotten.
const MAX_SOURCES: usize = 16_384;

/// One application from `key`'s allowance of `per_minute` a minute (as many at once).
fn take<K: std::hash::Hash + Eq>(
    all: &mut HashMap<K, (Bucket, SystemTime)>,
    key: K,
    per_minute: u32,
    now: SystemTime,
) -> Result<(), Duration> {
    let per_minute = f64::from(per_minute.max(1));
    let (bucket, last) = all
        .entry(key)
        .or_insert_with(|| (Bucket::new(per_minute / 60.0, per_minute), now));
    let taken = bucket.take(now.duration_since(*last).unwrap_or_default());
    *last = now.max(*last);
    taken
}

fn rate_limited(detail: String) -> AcaError {
    AcaError::new(ErrorCode::RateLimited, detail)
}

fn internal(e: impl std::fmt::Display) -> AcaError {
    AcaError::new(ErrorCode::Internal, e.to_string())
}

/// A store's failure as the applicant hears it: a conflict with another gateway of the domain
/// and a shared store that takes no writes have codes of their own (both: try again).
fn stored(e: StoreError) -> AcaError {
    let code = match e {
        StoreError::Conflict => ErrorCode::StoreConflict,
        StoreError::Unavailable(_) => ErrorCode::StoreUnavailable,
        StoreError::Failed(_) => ErrorCode::Internal,
    };
    AcaError::new(code, e.to_string())
}

/// The domain's etcd when configured, else the embedded database in the data directory.
fn open_store(config: &AuthorityConfig, ca: &[u8]) -> Result<Box<dyn CertStore>, AcaError> {
    #[cfg(feature = "etcd")]
    if let Some(mirror) = &config.shared {
        let shared = crate::store::shared::Shared::new(mirror.clone(), ca).map_err(stored)?;
        return Ok(Box::new(shared));
    }
    let _ = ca;
    let embedded = Embedded::open(&config.data_dir.join("aca.redb")).map_err(stored)?;
    Ok(Box::new(embedded))
}

/// What the identity holds when the authority decides on an application.
struct Decision {
    /// Its live certificate, when it is of the applying key (or the one being renewed).
    live: Option<CertRecord>,
    /// The serial of its newest certificate, live or not: the issue replaces it only if it
    /// is still the newest when stored.
    replacing: Option<Vec<u8>>,
}

impl CertificateAuthority {
    /// Loads the authority from `config.data_dir`, creating its key and certificate on first
    /// start, and issues a fresh CRL.
    pub fn bootstrap(
        config: AuthorityConfig,
        policy: Box<dyn ApplicationPolicy>,
        now: SystemTime,
    ) -> Result<CertificateAuthority, AcaError> {
        let key_path = config.data_dir.join("ca.key.pem");
        let chain_path = config.data_dir.join("ca.chain.pem");
        let anchor_path = config.data_dir.join("trust-anchor.pem");

        if !key_path.exists() {
            #[cfg(feature = "etcd")]
            if let Some(mirror) = &config.shared
                && crate::store::shared::Shared::has_authority(mirror)
            {
                return Err(internal(format!(
                    "the domain's etcd records an authority and {} holds none: copy \
                     ca.key.pem, ca.chain.pem and trust-anchor.pem from the domain's first \
                     gateway's aca directory",
                    config.data_dir.display()
                )));
            }
            create_ca(&config, now, &key_path, &chain_path, &anchor_path)?;
        }
        crate::private::private_dir(&config.data_dir).map_err(internal)?;
        let key_pem = fs::read_to_string(&key_path).map_err(internal)?;
        let key = KeyPair::from_pem(&key_pem).map_err(internal)?;
        let chain_pem = fs::read_to_string(&chain_path).map_err(internal)?;
        let ca_chain = pem_blocks(&chain_pem, "CERTIFICATE")?;
        let ca_cert = ca_chain.first().ok_or_else(|| internal("empty CA chain"))?;
        let expected = format!("spiffe://{}", config.domain);
        let held = crate::tls::peer_identity(&[ca_cert.as_slice().into()]);
        if held.as_deref() != Some(expected.as_str()) {
            return Err(internal(format!(
                "{} holds the authority of {}, not of {expected}",
                config.data_dir.display(),
                held.as_deref().unwrap_or("no domain"),
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&ca_cert.clone().into(), key).map_err(internal)?;
        let trust_anchor = pem_blocks(
            &fs::read_to_string(&anchor_path).map_err(internal)?,
            "CERTIFICATE",
        )?
        .into_iter()
        .next()
        .ok_or_else(|| internal("no trust anchor certificate"))?;
        let store = open_store(&config, ca_cert)?;

        let authority = CertificateAuthority {
            config,
            policy,
            issuer,
            ca_chain,
            trust_anchor,
            store,
            crl: Mutex::new(Crl {
                der: Vec::new(),
                number: 0,
                this_update: 0,
            }),
            applications: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
            on_revoke: RevocationHook::default(),
            on_issue: RevocationHook::default(),
        };
        {
            let mut crl = authority.lock_crl()?;
            authority.reissue_crl(&mut crl, now)?;
        }
        Ok(authority)
    }

    /// Calls `notify` after every revocation, once its CRL is issued (set once; later calls
    /// are ignored): how a gateway closes the revoked certificates' sessions without polling.
    pub fn on_revoke(&self, notify: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_revoke.0.set(Box::new(notify));
    }

    /// Follows what the domain's other gateways do in the shared store: their revocations
    /// reissue this gateway's CRL and call the revocation hook (so sessions of revoked
    /// certificates close here too), their issues call the issue hook. Without a shared
    /// store, nothing to follow. The thread it starts ends with the mirror.
    #[cfg(feature = "etcd")]
    pub fn follow_domain(self: &std::sync::Arc<Self>) -> std::io::Result<()> {
        use crate::store::shared;
        let Some(mirror) = self.config.shared.clone() else {
            return Ok(());
        };
        let (told, heard) = std::sync::mpsc::channel::<bool>();
        let revoked = told.clone();
        mirror.subscribe(shared::REVOCATIONS, move |changes| {
            if changes.iter().any(|c| !c.local) {
                let _ = revoked.send(true);
            }
        });
        mirror.subscribe(shared::ISSUED, move |changes| {
            if changes.iter().any(|c| !c.local) {
                let _ = told.send(false);
            }
        });
        let authority = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("agw-aca-domain".into())
            .spawn(move || {
                while let Ok(first) = heard.recv() {
                    // Whatever else arrived meanwhile is handled with it.
                    let revoked = heard.try_iter().fold(first, |any, r| any || r);
                    let Some(authority) = authority.upgrade() else {
                        return;
                    };
                    if revoked {
                        authority.revoked_elsewhere(SystemTime::now());
                    } else if let Some(notify) = authority.on_issue.0.get() {
                        notify();
                    }
                }
            })?;
        Ok(())
    }

    /// Another gateway of the domain revoked: the CRL is issued again with it, then whoever
    /// follows revocations hears of it.
    #[cfg(feature = "etcd")]
    fn revoked_elsewhere(&self, now: SystemTime) {
        let reissued = self
            .lock_crl()
            .and_then(|mut crl| self.reissue_crl(&mut crl, now));
        if let Err(e) = reissued {
            tracing::warn!(error = %e, "CRL not reissued after another gateway's revocation");
        }
        if let Some(notify) = self.on_revoke.0.get() {
            notify();
        }
    }

    /// Calls `notify` after every certificate issued (set once; later calls are ignored).
    pub fn on_issue(&self, notify: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_issue.0.set(Box::new(notify));
    }

    /// The permission scopes of every agent whose current certificate is valid at `now`, from
    /// the materials the authority checked and certified: what authorization rules on scopes
    /// (`scope:<name>`) match. Reads every identity's record: a scan of the store.
    pub fn agent_scopes(&self, now: SystemTime) -> Result<Vec<(String, Vec<String>)>, AcaError> {
        let mut out = Vec::new();
        for record in self.store.current_all().map_err(stored)? {
            let scopes = record
                .materials
                .as_ref()
                .map(|m| m.permission_scope.clone())
                .unwrap_or_default();
            if scopes.is_empty() || AgentId::parse(&record.identity).is_err() {
                continue;
            }
            if matches!(
                self.status_of(&record, now)?,
                CertificateStatus::Valid { .. }
            ) {
                out.push((record.identity.clone(), scopes));
            }
        }
        Ok(out)
    }

    /// The domain this authority certifies.
    pub fn domain(&self) -> &Domain {
        &self.config.domain
    }

    /// The certificate relying parties trust (DER): the root of the chain.
    pub fn trust_anchor(&self) -> &[u8] {
        &self.trust_anchor
    }

    /// The authority's certificate and its chain below the root, DER.
    pub fn ca_chain(&self) -> &[Vec<u8>] {
        &self.ca_chain
    }

    fn lock_crl(&self) -> Result<std::sync::MutexGuard<'_, Crl>, AcaError> {
        self.crl
            .lock()
            .map_err(|_| internal("authority state poisoned"))
    }

    /// Certificate application (draft 3.1.1): verifies the CSR and the materials, then issues
    /// an agent certificate.
    pub fn apply(
        &self,
        csr_der: &[u8],
        materials: &pb::IdentityMaterials,
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        self.apply_with_token(csr_der, materials, "", now)
    }

    /// [`CertificateAuthority::apply`] with the organisation's enrollment token, which the
    /// policy checks (see [`crate::enrollment`]).
    pub fn apply_with_token(
        &self,
        csr_der: &[u8],
        materials: &pb::IdentityMaterials,
        enrollment_token: &str,
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        self.apply_as(csr_der, materials, enrollment_token, false, now)
    }

    /// An application vouched for by `voucher` (DER), a live certificate this authority issued
    /// to an agent of the organisation the materials name, whose key the applicant proved (a
    /// TLS handshake made with it): it stands for the organisation's token. EST's
    /// `simpleenroll` with a client certificate.
    pub fn apply_vouched(
        &self,
        csr_der: &[u8],
        materials: &pb::IdentityMaterials,
        voucher: &[u8],
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        let record = self.renewable(voucher, now)?;
        let organization = record
            .materials
            .as_ref()
            .map(|m| m.organization.as_str())
            .unwrap_or_default();
        if AgentId::parse(&record.identity).is_err() || organization != materials.organization {
            return Err(AcaError::new(
                ErrorCode::EnrollmentUnauthenticated,
                format!(
                    "the certificate presented is not of an agent of {:?}",
                    materials.organization
                ),
            ));
        }
        self.apply_as(csr_der, materials, "", true, now)
    }

    fn apply_as(
        &self,
        csr_der: &[u8],
        materials: &pb::IdentityMaterials,
        enrollment_token: &str,
        vouched: bool,
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        let csr = verify_csr(csr_der)?;
        let identity = self.requested_agent(&csr)?;
        check_materials(materials)?;
        let application = Application {
            identity: &identity,
            key: csr.algorithm,
            materials,
            enrollment_token,
            renewal: false,
            vouched,
        };
        self.policy.check(&application)?;
        self.take_application(&materials.organization, now)?;
        if self.policy.needs_approval(&application) {
            self.approved(&identity, &csr, materials, now)?;
        }
        let _guard = self.lock_crl()?;
        let decision = self.check_key_and_identity(&csr, identity.as_str(), None, now)?;
        if let Some(current) = decision.live
            && current.materials.as_ref() == Some(materials)
            && !past_renewal_point(&current, now)
        {
            return Ok(self.reissued(current));
        }
        self.issue(
            identity.as_str(),
            identity.name(),
            &csr,
            Some(materials.clone()),
            self.config.agent_validity,
            (decision.replacing.as_deref(), now),
        )
    }

    /// Charges one application to `source`, or refuses it `RATE_LIMITED`.
    pub(crate) fn take_from_source(&self, source: IpAddr, now: SystemTime) -> Result<(), AcaError> {
        let per_minute = self.config.applications_per_minute_per_source;
        let mut all = self
            .sources
            .lock()
            .map_err(|_| internal("application limiter poisoned"))?;
        if all.len() >= MAX_SOURCES {
            // Sources silent for a minute have their whole allowance back: forget them.
            all.retain(|_, (_, last)| {
                now.duration_since(*last).unwrap_or_default() < Duration::from_secs(60)
            });
        }
        take(&mut all, source, per_minute, now).map_err(|wait| {
            rate_limited(format!(
                "{source} applied more than {per_minute} times a minute: retry in {} ms",
                wait.as_millis().max(1)
            ))
        })
    }

    /// Charges one application to `organization` (one the policy admitted, so the map holds
    /// the allow-list's organisations at most), or refuses it `RATE_LIMITED`.
    fn take_application(&self, organization: &str, now: SystemTime) -> Result<(), AcaError> {
        let per_minute = self.config.applications_per_minute;
        let mut all = self
            .applications
            .lock()
            .map_err(|_| internal("application limiter poisoned"))?;
        take(&mut all, organization.to_owned(), per_minute, now).map_err(|wait| {
            rate_limited(format!(
                "{organization:?} applied more than {per_minute} times a minute: retry in {} ms",
                wait.as_millis().max(1)
            ))
        })
    }

    /// The operator's decision on this identity and key: `Ok` once approved; otherwise the
    /// application is recorded (once) and refused `APPROVAL_PENDING`, or `APPLICATION_DENIED`.
    fn approved(
        &self,
        identity: &AgentId,
        csr: &VerifiedCsr,
        materials: &pb::IdentityMaterials,
        now: SystemTime,
    ) -> Result<(), AcaError> {
        let fingerprint = key_fingerprint(&csr.spki_der).to_vec();
        let known = self
            .store
            .applications()
            .map_err(stored)?
            .into_iter()
            .rev()
            .find(|a| a.identity == identity.as_str() && a.key_fingerprint == fingerprint);
        let pending = |id: u64| {
            AcaError::new(
                ErrorCode::ApprovalPending,
                format!(
                    "application {id} awaits the operator's approval: apply again with the same key later"
                ),
            )
        };
        match known.map(|a| (a.id, a.state())) {
            Some((_, pb::ApplicationState::ApplicationApproved)) => Ok(()),
            Some((id, pb::ApplicationState::ApplicationDeniedByOperator)) => Err(AcaError::new(
                ErrorCode::ApplicationDenied,
                format!("the operator denied application {id}"),
            )),
            Some((id, _)) => Err(pending(id)),
            None => {
                let id = self
                    .store
                    .put_application(&pb::Application {
                        id: 0,
                        identity: identity.to_string(),
                        materials: Some(materials.clone()),
                        key_fingerprint: fingerprint.into(),
                        state: pb::ApplicationState::ApplicationPending as i32,
                        received_unix_s: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                    })
                    .map_err(stored)?;
                Err(pending(id))
            }
        }
    }

    /// The applications that waited or wait for the operator's decision (`all`: decided ones
    /// too), oldest first.
    pub fn applications(&self, all: bool) -> Result<Vec<pb::Application>, AcaError> {
        Ok(self
            .store
            .applications()
            .map_err(stored)?
            .into_iter()
            .filter(|a| all || a.state() == pb::ApplicationState::ApplicationPending)
            .collect())
    }

    /// The operator approves or denies application `id` (a pending one): the agent applies
    /// again with the same key to hear the decision. Returns the application as decided.
    pub fn decide(&self, id: u64, approve: bool) -> Result<pb::Application, AcaError> {
        let mut application = self
            .store
            .applications()
            .map_err(stored)?
            .into_iter()
            .find(|a| a.id == id)
            .ok_or_else(|| {
                AcaError::new(ErrorCode::InvalidField, format!("no application {id}"))
            })?;
        if application.state() != pb::ApplicationState::ApplicationPending {
            return Err(AcaError::new(
                ErrorCode::InvalidField,
                format!("application {id} is already {:?}", application.state()),
            ));
        }
        application.set_state(if approve {
            pb::ApplicationState::ApplicationApproved
        } else {
            pb::ApplicationState::ApplicationDeniedByOperator
        });
        self.store.put_application(&application).map_err(stored)?;
        Ok(application)
    }

    /// Issues a gateway certificate for an operator (no materials, no policy: the operator
    /// is the authority's administrator). The CSR must name `gateway` and nothing else. Like
    /// [`CertificateAuthority::apply`], a request for an identity whose live certificate
    /// holds the same key is answered with that certificate (a restarting gateway), or with
    /// a new one once 70% of its lifetime has passed.
    pub fn issue_gateway(
        &self,
        gateway: &GatewayId,
        csr_der: &[u8],
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        self.issue_gateway_named(gateway, csr_der, &[], now)
    }

    /// [`CertificateAuthority::issue_gateway`] with DNS names and IP addresses written beside
    /// the identity (`server_names`), for clients that check a server by its host name (curl
    /// on the EST endpoint). A live certificate with other names is not reused.
    pub fn issue_gateway_named(
        &self,
        gateway: &GatewayId,
        csr_der: &[u8],
        server_names: &[String],
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        let names = server_names
            .iter()
            .map(|n| server_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let csr = verify_csr(csr_der)?;
        if gateway.domain() != self.config.domain.as_str() {
            return Err(AcaError::new(
                ErrorCode::IdentityOutsideDomain,
                format!("{gateway} is outside {}", self.config.domain),
            ));
        }
        match csr.uris.as_slice() {
            [uri] if uri == gateway.as_str() => {}
            uris => {
                return Err(AcaError::new(
                    ErrorCode::IdentityMismatch,
                    format!(
                        "the CSR must name exactly {gateway}; it names [{}]",
                        uris.join(", ")
                    ),
                ));
            }
        }
        let _guard = self.lock_crl()?;
        let decision = self.check_key_and_identity(&csr, gateway.as_str(), None, now)?;
        if let Some(current) = decision.live
            && !past_renewal_point(&current, now)
            && server_names_of(&current.der) == names
        {
            return Ok(self.reissued(current));
        }
        self.issue_with_names(
            gateway.as_str(),
            gateway.name(),
            &csr,
            None,
            &names,
            self.config.gateway_validity,
            (decision.replacing.as_deref(), now),
        )
    }

    /// Renewal (draft 3.1.2): the old certificate, a CSR for the new one, and a proof by the
    /// old key over the CSR. Without materials, the old ones are kept.
    pub fn renew(&self, req: &pb::RenewalRequest, now: SystemTime) -> Result<Issued, AcaError> {
        let old = self.renewable(&req.certificate, now)?;
        if !keys::verify(&old.spki_der, &signing::renewal_input(&req.csr), &req.proof) {
            return Err(AcaError::new(
                ErrorCode::BadProof,
                "the proof does not verify with the old key",
            ));
        }
        self.renew_known(old, &req.csr, req.materials.as_ref(), now)
    }

    /// Renewal of `certificate` (DER) whose holder proved its key another way: a TLS handshake
    /// made with it (EST's `simplereenroll`). The old materials are kept.
    pub fn renew_presented(
        &self,
        certificate: &[u8],
        csr_der: &[u8],
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        let old = self.renewable(certificate, now)?;
        self.renew_known(old, csr_der, None, now)
    }

    /// The organisation of the agent certificate `certificate` (DER), one this authority
    /// issued and that is valid now.
    pub fn organization_of(&self, certificate: &[u8], now: SystemTime) -> Result<String, AcaError> {
        let record = self.renewable(certificate, now)?;
        Ok(record.materials.map(|m| m.organization).unwrap_or_default())
    }

    /// The record of `certificate`, one this authority issued and that is valid now.
    fn renewable(&self, certificate: &[u8], now: SystemTime) -> Result<CertRecord, AcaError> {
        let old = self.known_certificate(certificate)?;
        match self.status_of(&old, now)? {
            CertificateStatus::Valid { .. } => {}
            CertificateStatus::Revoked(_) => {
                return Err(AcaError::new(
                    ErrorCode::CertRevoked,
                    "a revoked certificate is not renewed",
                ));
            }
            CertificateStatus::Expired { .. } | CertificateStatus::Unknown => {
                return Err(AcaError::new(
                    ErrorCode::CertExpired,
                    "an expired certificate is not renewed",
                ));
            }
        }
        Ok(old)
    }

    fn renew_known(
        &self,
        old: CertRecord,
        csr_der: &[u8],
        materials: Option<&pb::IdentityMaterials>,
        now: SystemTime,
    ) -> Result<Issued, AcaError> {
        let csr = verify_csr(csr_der)?;
        if !csr.uris.is_empty() && !csr.uris.contains(&old.identity) {
            return Err(AcaError::new(
                ErrorCode::IdentityMismatch,
                format!("a renewal keeps the identity {}", old.identity),
            ));
        }
        let (materials, validity, name) = if let Ok(agent) = AgentId::parse(&old.identity) {
            let materials = match materials {
                Some(m) => {
                    check_materials(m)?;
                    let old_organization = old
                        .materials
                        .as_ref()
                        .map(|o| o.organization.as_str())
                        .unwrap_or_default();
                    if m.organization != old_organization {
                        return Err(AcaError::new(
                            ErrorCode::EnrollmentUnauthenticated,
                            format!(
                                "a renewal keeps the organisation {old_organization:?}: apply anew with {:?}'s enrollment token",
                                m.organization
                            ),
                        ));
                    }
                    self.policy.check(&Application {
                        identity: &agent,
                        key: csr.algorithm,
                        materials: m,
                        enrollment_token: "",
                        renewal: true,
                        vouched: false,
                    })?;
                    m.clone()
                }
                None => old.materials.clone().unwrap_or_default(),
            };
            (
                Some(materials),
                self.config.agent_validity,
                agent.name().to_owned(),
            )
        } else {
            let gateway = GatewayId::parse(&old.identity).map_err(internal)?;
            (
                None,
                self.config.gateway_validity,
                gateway.name().to_owned(),
            )
        };
        let _guard = self.lock_crl()?;
        let decision = self.check_key_and_identity(&csr, &old.identity, Some(&old.serial), now)?;
        if let Some(current) = decision.live
            && current.serial != old.serial
        {
            // The old certificate was renewed already: one renewal per certificate, so that
            // it cannot fork the identity (a lost reply is answered by a new application).
            return Err(AcaError::new(
                ErrorCode::IdentityTaken,
                format!("{} was renewed already", old.identity),
            ));
        }
        self.issue(
            &old.identity,
            &name,
            &csr,
            materials,
            validity,
            (decision.replacing.as_deref(), now),
        )
    }

    /// Revocation requested by the holder: `proof` signs the serial and `signed_at` with the
    /// certificate's key. Returns the serials of the key's other live certificates, revoked
    /// with it when the reason is key compromise.
    pub fn revoke_by_holder(
        &self,
        req: &pb::RevocationRequest,
        now: SystemTime,
    ) -> Result<Vec<Vec<u8>>, AcaError> {
        let record = self.record(&req.serial)?;
        let signed_at = UNIX_EPOCH + Duration::from_secs(req.signed_at_unix_s);
        let age = now
            .duration_since(signed_at)
            .unwrap_or_else(|e| e.duration());
        if age > PROOF_WINDOW {
            return Err(AcaError::new(ErrorCode::BadProof, "the proof is not fresh"));
        }
        let input = signing::revocation_input(&req.serial, req.signed_at_unix_s);
        if !keys::verify(&record.spki_der, &input, &req.proof) {
            return Err(AcaError::new(
                ErrorCode::BadProof,
                "the proof does not verify",
            ));
        }
        self.revoke(&record, req.reason, now)
    }

    /// Revocation by the operator. Returns the serials of the key's other live certificates,
    /// revoked with it when the reason is key compromise.
    pub fn revoke_by_operator(
        &self,
        serial: &[u8],
        reason: i32,
        now: SystemTime,
    ) -> Result<Vec<Vec<u8>>, AcaError> {
        let record = self.record(serial)?;
        self.revoke(&record, reason, now)
    }

    fn revoke(
        &self,
        record: &CertRecord,
        reason: i32,
        now: SystemTime,
    ) -> Result<Vec<Vec<u8>>, AcaError> {
        let reason_code = revocation_reason(reason).ok_or_else(|| {
            AcaError::new(
                ErrorCode::InvalidField,
                format!("unknown revocation reason {reason}"),
            )
        })?;
        if matches!(
            reason_code,
            RevocationReason::RemoveFromCrl | RevocationReason::CertificateHold
        ) {
            return Err(AcaError::new(
                ErrorCode::RevocationNotAllowed,
                "revocations are final: no hold, no removal from the CRL",
            ));
        }
        let compromise = reason_code == RevocationReason::KeyCompromise;
        let mut crl = self.lock_crl()?;
        let at = match self.store.revocation(&record.serial).map_err(stored)? {
            None => unix(now),
            Some(existing)
                if compromise && existing.reason != RevocationReason::KeyCompromise as i32 =>
            {
                existing.at
            }
            Some(_) => {
                return Err(AcaError::new(
                    ErrorCode::RevocationNotAllowed,
                    "already revoked; only a change to keyCompromise is allowed",
                ));
            }
        };
        let mut revocations = vec![(record.serial.clone(), Revocation { at, reason })];
        let fingerprint = compromise.then(|| key_fingerprint(&record.spki_der));
        // A compromised key compromises every certificate of it: the other live ones go too.
        let mut also = Vec::new();
        if let Some(fp) = &fingerprint {
            for serial in self.store.serials_of_key(fp).map_err(stored)? {
                if serial == record.serial {
                    continue;
                }
                let Some(other) = self.store.cert(&serial).map_err(stored)? else {
                    continue;
                };
                if matches!(
                    self.status_of(&other, now)?,
                    CertificateStatus::Valid { .. }
                ) {
                    revocations.push((
                        serial.clone(),
                        Revocation {
                            at: unix(now),
                            reason,
                        },
                    ));
                    also.push(serial);
                }
            }
        }
        self.store
            .revoke(&revocations, fingerprint)
            .map_err(stored)?;
        self.reissue_crl(&mut crl, now)?;
        drop(crl);
        if let Some(notify) = self.on_revoke.0.get() {
            notify();
        }
        Ok(also)
    }

    /// Revokes the live certificate of `identity`, if it has one (its holder left: draft 2.2,
    /// "revocation when an Agent is deregistered"). Returns its serial.
    pub fn revoke_identity(
        &self,
        identity: &str,
        reason: i32,
        now: SystemTime,
    ) -> Result<Option<Vec<u8>>, AcaError> {
        let Some(current) = self.live_certificate(identity, now)? else {
            return Ok(None);
        };
        self.revoke(&current, reason, now)?;
        Ok(Some(current.serial))
    }

    /// The newest certificate of `identity`, if it is valid now.
    fn live_certificate(
        &self,
        identity: &str,
        now: SystemTime,
    ) -> Result<Option<CertRecord>, AcaError> {
        let Some(current) = self.store.current_for(identity).map_err(stored)? else {
            return Ok(None);
        };
        let live = matches!(
            self.status_of(&current, now)?,
            CertificateStatus::Valid { .. }
        );
        Ok(live.then_some(current))
    }

    /// Status query (draft 3.1.2).
    pub fn status(&self, serial: &[u8], now: SystemTime) -> Result<CertificateStatus, AcaError> {
        match self.store.cert(serial).map_err(stored)? {
            Some(record) => self.status_of(&record, now),
            None => Ok(CertificateStatus::Unknown),
        }
    }

    fn status_of(
        &self,
        record: &CertRecord,
        now: SystemTime,
    ) -> Result<CertificateStatus, AcaError> {
        if let Some(r) = self.store.revocation(&record.serial).map_err(stored)? {
            return Ok(CertificateStatus::Revoked(r));
        }
        let now = unix(now);
        if now < record.not_before || now > record.not_after {
            return Ok(CertificateStatus::Expired {
                not_after: record.not_after,
            });
        }
        Ok(CertificateStatus::Valid {
            not_after: record.not_after,
        })
    }

    /// The current CRL, reissued first when half its validity has passed.
    pub fn crl(&self, now: SystemTime) -> Result<Crl, AcaError> {
        let mut crl = self.lock_crl()?;
        let half = i64::try_from(self.config.crl_validity.as_secs() / 2).unwrap_or(i64::MAX);
        if unix(now) - crl.this_update >= half {
            self.reissue_crl(&mut crl, now)?;
        }
        Ok(crl.clone())
    }

    fn reissue_crl(&self, crl: &mut Crl, now: SystemTime) -> Result<(), AcaError> {
        let number = self.store.next_crl_number().map_err(stored)?;
        let mut revoked_certs = Vec::new();
        for (serial, r) in self.store.revocations().map_err(stored)? {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: OffsetDateTime::from_unix_timestamp(r.at).map_err(internal)?,
                reason_code: revocation_reason(r.reason),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: datetime(now),
            next_update: datetime(now + self.config.crl_validity),
            crl_number: SerialNumber::from_slice(&minimal_be(number)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let signed = params.signed_by(&self.issuer).map_err(internal)?;
        *crl = Crl {
            der: signed.der().to_vec(),
            number,
            this_update: unix(now),
        };
        Ok(())
    }

    fn record(&self, serial: &[u8]) -> Result<CertRecord, AcaError> {
        self.store
            .cert(serial)
            .map_err(stored)?
            .ok_or_else(|| AcaError::new(ErrorCode::CertUnknown, "no certificate has this serial"))
    }

    /// The stored record of a certificate presented in full (DER), which must be ours.
    fn known_certificate(&self, der: &[u8]) -> Result<CertRecord, AcaError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|_| AcaError::new(ErrorCode::Malformed, "not a DER certificate"))?;
        let record = self.record(cert.raw_serial())?;
        if record.der != der {
            return Err(AcaError::new(
                ErrorCode::CertUnknown,
                "not a certificate this authority issued",
            ));
        }
        Ok(record)
    }

    fn requested_agent(&self, csr: &VerifiedCsr) -> Result<AgentId, AcaError> {
        let [uri] = csr.uris.as_slice() else {
            return Err(AcaError::new(
                ErrorCode::InvalidField,
                format!(
                    "the CSR must name exactly one identity URI, it names {}",
                    csr.uris.len()
                ),
            ));
        };
        let agent = AgentId::parse(uri)
            .map_err(|e| AcaError::new(ErrorCode::InvalidField, format!("{uri}: {e}")))?;
        if agent.domain() != self.config.domain.as_str() {
            return Err(AcaError::new(
                ErrorCode::IdentityOutsideDomain,
                format!("{agent} is outside {}", self.config.domain),
            ));
        }
        Ok(agent)
    }

    /// The key was never revoked for compromise, and no certificate of another key holds the
    /// identity; says which certificate the identity has now, and whether it is a live one of
    /// this very key (or the one being renewed, `renewing`).
    fn check_key_and_identity(
        &self,
        csr: &VerifiedCsr,
        identity: &str,
        renewing: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<Decision, AcaError> {
        if self
            .store
            .is_compromised(&key_fingerprint(&csr.spki_der))
            .map_err(stored)?
        {
            return Err(AcaError::new(
                ErrorCode::KeyCompromised,
                "this key was revoked for key compromise",
            ));
        }
        let Some(current) = self.store.current_for(identity).map_err(stored)? else {
            return Ok(Decision {
                live: None,
                replacing: None,
            });
        };
        let replacing = Some(current.serial.clone());
        if !matches!(
            self.status_of(&current, now)?,
            CertificateStatus::Valid { .. }
        ) {
            return Ok(Decision {
                live: None,
                replacing,
            });
        }
        if current.spki_der == csr.spki_der || renewing == Some(current.serial.as_slice()) {
            return Ok(Decision {
                live: Some(current),
                replacing,
            });
        }
        Err(AcaError::new(
            ErrorCode::IdentityTaken,
            format!("{identity} is certified to another key until it expires or is revoked"),
        ))
    }

    /// A live certificate answered again, with the authority's chain.
    fn reissued(&self, current: CertRecord) -> Issued {
        let mut chain = vec![current.der];
        chain.extend(self.ca_chain.iter().cloned());
        Issued {
            chain,
            serial: current.serial,
        }
    }

    /// Issues `identity` a certificate, if its current one is still `replacing` (the serial
    /// the decision saw; `None`: it had none) when the issue is stored.
    fn issue(
        &self,
        identity: &str,
        name: &str,
        csr: &VerifiedCsr,
        materials: Option<pb::IdentityMaterials>,
        validity: Duration,
        at: (Option<&[u8]>, SystemTime),
    ) -> Result<Issued, AcaError> {
        self.issue_with_names(identity, name, csr, materials, &[], validity, at)
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_with_names(
        &self,
        identity: &str,
        name: &str,
        csr: &VerifiedCsr,
        materials: Option<pb::IdentityMaterials>,
        server_names: &[SanType],
        validity: Duration,
        (replacing, now): (Option<&[u8]>, SystemTime),
    ) -> Result<Issued, AcaError> {
        let serial = self.fresh_serial()?;
        let not_before = now - BACKDATE;
        let not_after = now + validity;
        let mut params = CertificateParams::default();
        params.not_before = datetime(not_before);
        params.not_after = datetime(not_after);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.subject_alt_names = vec![SanType::URI(identity.try_into().map_err(internal)?)];
        params
            .subject_alt_names
            .extend(server_names.iter().cloned());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        if let Some(org) = materials
            .as_ref()
            .map(|m| &m.organization)
            .filter(|o| !o.is_empty())
        {
            dn.push(DnType::OrganizationName, org.as_str());
        }
        params.distinguished_name = dn;
        // No basicConstraints: a leaf's is optional (RFC 5280 4.2.1.9), and rcgen's explicit
        // `cA FALSE` encodes the default, which DER forbids (pyca/cryptography refuses the
        // whole certificate).
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![self.config.crl_url.clone()],
        }];
        params.use_authority_key_identifier_extension = true;
        // The materials checked before issue, in the certificate for whoever verifies it.
        if let Some(m) = &materials {
            let value = agw_tls::materials::encode(m)
                .ok_or_else(|| internal("materials past their sizes reached issue"))?;
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    agw_tls::materials::EXTENSION_OID,
                    value,
                ));
        }
        let spki = SubjectPublicKeyInfo::from_der(&csr.spki_der).map_err(internal)?;
        let cert = params.signed_by(&spki, &self.issuer).map_err(internal)?;
        let der = cert.der().to_vec();

        self.store
            .insert_issued(
                &CertRecord {
                    serial: serial.clone(),
                    identity: identity.to_owned(),
                    spki_der: csr.spki_der.clone(),
                    not_before: unix(not_before),
                    not_after: unix(not_after),
                    der: der.clone(),
                    materials,
                },
                replacing,
            )
            .map_err(stored)?;
        if let Some(notify) = self.on_issue.0.get() {
            notify();
        }
        let mut chain = vec![der];
        chain.extend(self.ca_chain.iter().cloned());
        Ok(Issued { chain, serial })
    }

    /// 16 random bytes, positive (top bit clear), never zero-led, never used before.
    fn fresh_serial(&self) -> Result<Vec<u8>, AcaError> {
        loop {
            let mut serial = vec![0u8; 16];
            self.rng
                .fill(&mut serial)
                .map_err(|_| internal("no randomness"))?;
            serial[0] = (serial[0] & 0x7f) | 0x01;
            if !self.store.serial_exists(&serial).map_err(stored)? {
                return Ok(serial);
            }
        }
    }
}

fn create_ca(
    config: &AuthorityConfig,
    now: SystemTime,
    key_path: &Path,
    chain_path: &Path,
    anchor_path: &Path,
) -> Result<(), AcaError> {
    // An operator's root is read and checked before anything is written: a mismatched pair
    // leaves no half-made authority behind.
    let root = match &config.root {
        RootMode::SelfSigned => None,
        RootMode::Intermediate {
            root_cert,
            root_key,
        } => Some(OperatorRoot::load(root_cert, root_key)?),
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(internal)?;
    let domain = config.domain.as_str();
    let mut params = CertificateParams::default();
    params.not_before = datetime(now - BACKDATE);
    let ten_years = now + Duration::from_secs(10 * 365 * 86_400);
    // An intermediate never outlives the root that vouches for it.
    params.not_after = datetime(match &root {
        Some(r) => ten_years.min(r.not_after),
        None => ten_years,
    });
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{domain} Agent CA"));
    dn.push(DnType::OrganizationName, domain);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{domain}").try_into().map_err(internal)?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let (ca_pem, anchor_pem) = match root {
        None => {
            let cert = params.self_signed(&key).map_err(internal)?;
            (cert.pem(), cert.pem())
        }
        Some(root) => {
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &root.issuer).map_err(internal)?;
            (cert.pem(), root.pem)
        }
    };
    crate::private::private_dir(&config.data_dir).map_err(internal)?;
    // The key goes last: its presence marks a complete set, so a crash in between leads to a
    // fresh start rather than a key without its certificate.
    fs::write(chain_path, ca_pem).map_err(internal)?;
    fs::write(anchor_path, anchor_pem).map_err(internal)?;
    write_private(key_path, key.serialize_pem().as_bytes())
}

/// An operator's root certificate and its key, checked to belong together and to be a CA
/// valid now.
struct OperatorRoot {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl OperatorRoot {
    fn load(cert_path: &Path, key_path: &Path) -> Result<OperatorRoot, AcaError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let bad = |what: &Path, e: &dyn std::fmt::Display| {
            AcaError::new(ErrorCode::InvalidField, format!("{}: {e}", what.display()))
        };
        let pem = fs::read_to_string(cert_path).map_err(|e| bad(cert_path, &e))?;
        let key_pem = fs::read_to_string(key_path).map_err(|e| bad(key_path, &e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(key_path, &e))?;
        let der = pem_blocks(&pem, "CERTIFICATE")?
            .into_iter()
            .next()
            .ok_or_else(|| bad(cert_path, &"no CERTIFICATE block"))?;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| bad(cert_path, &e))?;
        if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(AcaError::new(
                ErrorCode::InvalidField,
                format!(
                    "{} is not the key of the root certificate {}",
                    key_path.display(),
                    cert_path.display()
                ),
            ));
        }
        if !cert.is_ca() {
            return Err(bad(cert_path, &"not a CA certificate"));
        }
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .map_err(|_| bad(cert_path, &"expired"))?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| bad(cert_path, &e))?;
        Ok(OperatorRoot {
            pem,
            issuer,
            not_after,
        })
    }
}

/// Writes a file readable by its owner only (mode 0600), created that way.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), AcaError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(internal)?;
    file.write_all(contents).map_err(internal)?;
    file.sync_all().map_err(internal)
}

/// The DER contents of every `label` block in `pem`.
fn pem_blocks(pem: &str, label: &str) -> Result<Vec<Vec<u8>>, AcaError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(internal)?;
        if block.label == label {
            out.push(block.contents);
        }
    }
    Ok(out)
}

/// A DNS name or an IP address, as a subject alternative name.
fn server_name(text: &str) -> Result<SanType, AcaError> {
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(AcaError::new(
            ErrorCode::InvalidField,
            format!("server name {text:?}: a DNS name or an IP address"),
        ));
    }
    Ok(SanType::DnsName(text.try_into().map_err(internal)?))
}

/// The DNS names and IP addresses a certificate (DER) names, in order.
fn server_names_of(der: &[u8]) -> Vec<SanType> {
    use x509_parser::{
        extensions::GeneralName,
        prelude::{FromDer, X509Certificate},
    };
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => server_name(dns).ok(),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| SanType::IpAddress(b.into())),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| SanType::IpAddress(b.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn check_materials(m: &pb::IdentityMaterials) -> Result<(), AcaError> {
    if !agw_tls::materials::within_limits(m) {
        return Err(AcaError::new(
            ErrorCode::InvalidField,
            format!(
                "materials exceed {MAX_MATERIAL_ITEMS} items or {MAX_MATERIAL_FIELD} bytes a field"
            ),
        ));
    }
    if m.organization.is_empty() {
        return Err(AcaError::new(
            ErrorCode::MissingField,
            "materials name no organisation",
        ));
    }
    Ok(())
}

fn revocation_reason(code: i32) -> Option<RevocationReason> {
    use RevocationReason as R;
    Some(match code {
        0 => R::Unspecified,
        1 => R::KeyCompromise,
        2 => R::CaCompromise,
        3 => R::AffiliationChanged,
        4 => R::Superseded,
        5 => R::CessationOfOperation,
        6 => R::CertificateHold,
        8 => R::RemoveFromCrl,
        9 => R::PrivilegeWithdrawn,
        10 => R::AaCompromise,
        _ => return None,
    })
}

fn minimal_be(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    bytes[skip..].to_vec()
}

impl From<CsrError> for AcaError {
    fn from(e: CsrError) -> Self {
        let code = match &e {
            CsrError::TooLarge(_) => ErrorCode::TooLarge,
            CsrError::Malformed | CsrError::BadSignature => ErrorCode::BadCsr,
            CsrError::Key(KeyError::Malformed) => ErrorCode::BadCsr,
            CsrError::Key(_) => ErrorCode::WeakKey,
        };
        AcaError::new(code, e.to_string())
    }
}
