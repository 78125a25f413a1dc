//! One gateway node, wired: the embedded certificate authority (protocol port, CRL over HTTP),
//! the embedded registry (mutual TLS), the relay's shards, and the control plane with its peers.
//! The `agw` daemon runs one; `agw-demo` runs three.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, RootMode,
    enrollment::{TokenFile, operator_policy},
    http::{CrlHttpServer, crl_url, url_path},
    tls::{CertificateChecker, Crls, RenewableCertificate, TlsIdentity},
};
use agw_ars::{Registry, RegistryConfig, RegistryHandle};
use agw_dataplane::{
    Dataplane, DataplaneConfig, DrainReport, LiveLimits, authorization::Authorization,
    routing::RoutingTable,
};
use agw_proto::{
    Message,
    identity::{Domain, GatewayId},
    pb::{self, ErrorCode},
};
use agw_rpc::{Caller, Endpoint, EndpointStats, HttpLimits, ServerLimits, notification};
use agw_sdk::certificates::AgentKey;

use crate::peer_crls::{PeerCrl, PeerCrlConfig, PeerCrls};
use crate::{
    control::{AccessScopes, ControlError, ControlPlane, RegistryWiring, Wiring},
    peering::{
        driver::{PeerSpec, PeeringConfig},
        session::{LimitAction, PeerConfig},
    },
};

/// A peer as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerEntry {
    /// Its gateway ID.
    pub gateway: GatewayId,
    /// Its peering address, to dial it; `None` to wait for it to dial.
    pub address: Option<SocketAddr>,
    /// Domains it may see; `None` for all.
    pub export: Option<Vec<String>>,
    /// Most summaries accepted from it, and what happens past that.
    pub max_summaries: Option<(usize, LimitAction)>,
    /// Hold time proposed.
    pub hold_time: Duration,
}

/// Everything a node needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The domain it serves.
    pub domain: Domain,
    /// Its name in the domain (gateway ID `spiffe://<domain>/agw/<name>`).
    pub name: String,
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Organisations allowed certificates: `ORG=SCOPE,SCOPE`. Each enrolls with its token
    /// (see [`Node::enrollment_token`]) unless it is in `open_enrollment`.
    pub allow: Vec<String>,
    /// Organisations anyone may enroll in without a token (tests, closed networks).
    pub open_enrollment: Vec<String>,
    /// Organisations whose applications wait for the operator's approval (`agwctl cert
    /// pending|approve|deny`), token or not.
    pub enrollment_approval: Vec<String>,
    /// Certificate applications one organisation may make per minute. Default 6,000.
    pub applications_per_minute: u32,
    /// Certificate applications one source address may make per minute. Default 600.
    pub applications_per_minute_per_source: u32,
    /// Agents speak plain TCP instead of mutual TLS (ALPN `agw/1`): every message crosses the
    /// network readable. Default off; warned about at start on a non-loopback address.
    pub agent_plaintext: bool,
    /// Relay shards; `None`: one per CPU.
    pub shards: Option<usize>,
    /// Pin shard `i` to CPU `i`. Default true.
    pub pin_cores: bool,
    /// The address agents use to reach the relay, given by discovery for other domains'
    /// agents; `None`: the address the relay listens on.
    pub agent_address: Option<String>,
    /// Where agents connect.
    pub agents: SocketAddr,
    /// A port of its own for MQTT clients (TLS), besides `agents`; `None`: none.
    pub mqtt: Option<SocketAddr>,
    /// A port of its own for A2A clients (HTTPS), besides `agents`; `None`: none.
    pub a2a: Option<SocketAddr>,
    /// How long an A2A server agent has to answer a request (then `REQUEST_TIMEOUT`).
    pub a2a_answer_within: Duration,
    /// Where agents apply for certificates (TLS; plain TCP too with `aca_plaintext`).
    pub aca: SocketAddr,
    /// The authority's port also takes plain TCP (applications then carry their enrollment
    /// token readable). Default: on a loopback address only.
    pub aca_plaintext: bool,
    /// Where the CRL is served.
    pub crl: SocketAddr,
    /// The CRL's public URL, written into certificates; `None`: made from `crl` (which must
    /// then not be a wildcard address).
    pub crl_url: Option<String>,
    /// Where agents register and discover (mutual TLS).
    pub registry: SocketAddr,
    /// Where peers' sessions dial in (with peers only).
    pub peering: SocketAddr,
    /// Where peers' relays link in (with peers only).
    pub relay_links: SocketAddr,
    /// Where Prometheus metrics and health are served; `None`: not served.
    pub metrics: Option<SocketAddr>,
    /// Where the authority serves EST (RFC 7030) over HTTPS; `None`: not served.
    pub est: Option<SocketAddr>,
    /// DNS names and IP addresses written into this gateway's certificate beside its
    /// identity, so that HTTPS clients that check a host name (curl on the EST endpoint)
    /// accept it.
    pub server_names: Vec<String>,
    /// A federation root (certificate, key) to bootstrap the authority under.
    pub root: Option<(PathBuf, PathBuf)>,
    /// CRLs (DER) of the peers' domains, used until one is fetched from a peer's
    /// distribution point.
    pub peer_crls: Vec<Vec<u8>>,
    /// How often peers' CRLs are fetched again from their distribution points. Default 60 s.
    pub peer_crl_refresh: Duration,
    /// The peers.
    pub peers: Vec<PeerEntry>,
    /// The relay's limits (they can change live).
    pub limits: LiveLimits,
    /// Who may message whom (it can change live).
    pub authorization: Authorization,
    /// Lifetime of the gateway certificates its authority issues, its own included (renewed
    /// at 70% of it). Default 90 days.
    pub gateway_validity: Duration,
    /// Natural-language translation for agents that name their languages; `None`: off
    /// (docs/translation.md).
    pub translation: Option<crate::translation::TranslationConfig>,
    /// Agents' access timers: the heartbeat interval asked of them and the hold time after
    /// which a silent one is offline (default 30 s and 90 s, the draft's example).
    pub access: agw_dataplane::access::AccessConfig,
    /// Client URLs of the domain's etcd cluster (issue 19): the authority and the registry
    /// keep their state there, shared with the domain's other gateways (each holding the
    /// same authority files). Empty: the embedded stores in `data_dir` (the default). Needs
    /// a build with the `etcd` feature.
    pub etcd: Vec<String>,
}

impl NodeConfig {
    /// A node of `domain` named `name`, state under `data_dir`, every listener on a free
    /// loopback port, organisation `Example` allowed, no peers, default limits and lifetimes:
    /// what the demo and tests start from.
    pub fn on_loopback(domain: Domain, name: &str, data_dir: PathBuf) -> NodeConfig {
        let domain_text = domain.to_string();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        NodeConfig {
            domain,
            name: name.to_owned(),
            data_dir,
            allow: vec!["Example".into()],
            open_enrollment: Vec::new(),
            enrollment_approval: Vec::new(),
            applications_per_minute: 6_000,
            applications_per_minute_per_source: 600,
            agent_plaintext: false,
            shards: Some(1),
            pin_cores: true,
            agent_address: None,
            agents: any,
            mqtt: None,
            a2a: None,
            a2a_answer_within: agw_dataplane::a2a_client::ANSWER_WITHIN,
            aca: any,
            aca_plaintext: true,
            crl: any,
            crl_url: None,
            registry: any,
            peering: any,
            relay_links: any,
            metrics: None,
            est: Some(any),
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            root: None,
            peer_crls: Vec::new(),
            peer_crl_refresh: Duration::from_secs(60),
            peers: Vec::new(),
            authorization: Authorization::allow_all(&domain_text),
            limits: LiveLimits::default(),
            gateway_validity: Duration::from_secs(90 * 86_400),
            translation: None,
            access: agw_dataplane::access::AccessConfig::default(),
            etcd: Vec::new(),
        }
    }
}

/// The domain's etcd mirror, when the node is configured for one.
#[cfg(feature = "etcd")]
fn domain_store(config: &NodeConfig) -> Result<Option<agw_etcd::Shared>, String> {
    if config.etcd.is_empty() {
        return Ok(None);
    }
    let etcd = agw_etcd::EtcdConfig::new(config.etcd.clone(), config.domain.as_str());
    tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, "the domain's state is in etcd");
    agw_etcd::Shared::connect(etcd)
        .map(Some)
        .map_err(|e| format!("the domain's store: {e}"))
}

#[cfg(not(feature = "etcd"))]
fn domain_store(config: &NodeConfig) -> Result<Option<std::convert::Infallible>, String> {
    if config.etcd.is_empty() {
        return Ok(None);
    }
    Err("etcd is configured but this agw was built without it: \
         cargo build --release --features etcd (needs protoc: apt install protobuf-compiler)"
        .into())
}

/// Where a running node listens.
#[derive(Debug, Clone)]
pub struct NodeAddresses {
    /// Agents' relay.
    pub agents: SocketAddr,
    /// MQTT clients' port of their own, when served.
    pub mqtt: Option<SocketAddr>,
    /// A2A clients' port of their own, when served.
    pub a2a: Option<SocketAddr>,
    /// Certificate applications.
    pub aca: SocketAddr,
    /// The CRL's URL.
    pub crl_url: String,
    /// Registration and discovery.
    pub registry: SocketAddr,
    /// Peering sessions.
    pub peering: SocketAddr,
    /// Peers' relay links.
    pub relay_links: SocketAddr,
    /// Metrics and health, when served.
    pub metrics: Option<SocketAddr>,
    /// EST over HTTPS, when served.
    pub est: Option<SocketAddr>,
}

/// A running gateway node.
pub struct Node {
    /// This gateway.
    pub gateway: GatewayId,
    /// The embedded authority.
    pub authority: Arc<CertificateAuthority>,
    /// The embedded registry: its owner's handle.
    pub registry: RegistryHandle,
    /// The relay.
    pub dataplane: Dataplane,
    control: Option<Arc<ControlPlane>>,
    /// The peers' CRLs, fetched; dropped before the control plane.
    peer_crls: Option<PeerCrls>,
    peers: Vec<PeerEntry>,
    /// This gateway's relay-link address, which its OPEN announces to peers.
    relay_links: SocketAddr,
    crl_server: CrlHttpServer,
    addresses: NodeAddresses,
    trust_anchor_path: PathBuf,
    /// The organisations' enrollment tokens.
    enrollment: TokenFile,
    certificate: Mutex<GatewayCertificate>,
    /// The names its certificate carries beside its identity.
    server_names: Vec<String>,
    /// The authorization policy as configured (without its scopes' holders).
    policy: Arc<Mutex<Authorization>>,
    /// The permission scopes attached agents presented in their certificates.
    attached_scopes: AccessScopes,
    endpoints: Vec<(&'static str, Endpoint)>,
    /// A message after each revocation by the embedded authority.
    revoked: crossbeam_channel::Receiver<()>,
    /// The authority's CRL the relay and the registry check now: its number and serials.
    applied_crl: Mutex<(u64, Vec<Vec<u8>>)>,
    /// The translation pool (formats always, languages when configured).
    translation: crate::translation::TranslationPool,
    /// Last: dropped after the endpoints that run on it.
    runtime: ControlRuntime,
}

/// The control plane's runtime, shut down when dropped without waiting long for a handler
/// still running (an operator's request waiting on the daemon).
struct ControlRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ControlRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// This gateway's own certificate: its key (kept in the data directory), what TLS presents,
/// and when to renew it.
struct GatewayCertificate {
    key: AgentKey,
    renewable: RenewableCertificate,
    serial: Vec<u8>,
    /// 70% into its lifetime.
    renew_at: SystemTime,
    not_after: SystemTime,
}

impl GatewayCertificate {
    fn new(
        key: AgentKey,
        renewable: RenewableCertificate,
        issued: &agw_aca::Issued,
    ) -> Result<GatewayCertificate, String> {
        let (not_before, not_after) = validity(&issued.chain)?;
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        Ok(GatewayCertificate {
            key,
            renewable,
            serial: issued.serial.clone(),
            renew_at: not_before + lifetime.mul_f64(0.7),
            not_after,
        })
    }
}

/// The leaf's notBefore and notAfter.
fn validity(chain: &[Vec<u8>]) -> Result<(SystemTime, SystemTime), String> {
    agw_aca::certificate_validity(chain.first().ok_or("an empty certificate chain")?)
}

/// A renewal of this gateway's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    /// The new certificate's serial.
    pub serial: Vec<u8>,
    /// Its notAfter.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("gateway", &self.gateway)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("{what} {addr}: {e}"))
}

/// This gateway's key, kept in the data directory (0600) so that the authority, which will
/// not certify one identity to two keys, re-issues its certificate at every start.
/// `policy` with the holders of the scopes it names, from `authority`'s valid certificates
/// (as is when it names none: no scan).
/// Beside them, the scopes that agents attached here presented in their certificates at
/// access (`attached`).
fn with_scopes(
    authority: &CertificateAuthority,
    attached: &AccessScopes,
    policy: Authorization,
) -> Authorization {
    if !policy.uses_scopes() {
        return policy;
    }
    let mut holders = attached.holders();
    match authority.agent_scopes(SystemTime::now()) {
        Ok(issued) => holders.extend(issued),
        Err(e) => {
            tracing::warn!(error = %e, "the authority's records of scopes unreadable: only attached agents' certificates count");
        }
    }
    policy.with_scopes(&holders)
}

/// Applies the policy again, with its scopes' holders read anew, after each issuance and
/// revocation (a burst is one scan).
async fn follow_scopes(
    authority: Arc<CertificateAuthority>,
    attached: AccessScopes,
    policy: Arc<Mutex<Authorization>>,
    relay: Arc<arc_swap::ArcSwap<Authorization>>,
    changed: Arc<tokio::sync::Notify>,
) {
    loop {
        changed.notified().await;
        let Ok(current) = policy.lock().map(|p| p.clone()) else {
            return;
        };
        if !current.uses_scopes() {
            continue;
        }
        let (authority, attached, policy, relay) = (
            Arc::clone(&authority),
            attached.clone(),
            Arc::clone(&policy),
            Arc::clone(&relay),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let resolved = with_scopes(&authority, &attached, current.clone());
            // Only if the operator did not set another policy meanwhile.
            if let Ok(configured) = policy.lock()
                && *configured == current
            {
                relay.store(Arc::new(resolved));
            }
        })
        .await;
    }
}

fn gateway_key(path: &std::path::Path) -> Result<AgentKey, String> {
    if let Ok(pem) = std::fs::read_to_string(path) {
        return AgentKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()));
    }
    let key = AgentKey::generate().map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(key.to_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(key)
}

impl Node {
    /// Starts every part; returns once all listen.
    pub fn start(config: NodeConfig) -> Result<Node, String> {
        let gateway = GatewayId::new(&config.domain, &config.name)
            .map_err(|e| format!("name {}: {e}", config.name))?;
        agw_aca::private::private_dir(&config.data_dir)
            .map_err(|e| format!("data dir {}: {e}", config.data_dir.display()))?;
        let aca_dir = config.data_dir.join("aca");
        let shared = domain_store(&config)?;
        // Every organisation not opened by the operator enrolls with its token.
        let (policy, mut enrollment) = operator_policy(
            &config.allow,
            &config.open_enrollment,
            &config.enrollment_approval,
            &aca_dir.join("enrollment-tokens"),
        )
        .map_err(|e| format!("enrollment tokens: {e}"))?;
        for org in policy.open_organizations() {
            tracing::warn!(
                organisation = org,
                "open enrollment: anyone naming this organisation is certified"
            );
        }

        // The authority and its CRL.
        let crl_listener = bind("CRL listener", config.crl)?;
        let crl_addr = crl_listener.local_addr().map_err(|e| e.to_string())?;
        let crl_url = crl_url(config.crl_url.as_deref(), crl_addr, config.domain.as_str())?;
        let mut aca_config = AuthorityConfig::new(config.domain.clone(), &aca_dir, crl_url.clone());
        aca_config.gateway_validity = config.gateway_validity;
        aca_config.applications_per_minute = config.applications_per_minute;
        aca_config.applications_per_minute_per_source = config.applications_per_minute_per_source;
        if let Some((root_cert, root_key)) = &config.root {
            aca_config.root = RootMode::Intermediate {
                root_cert: root_cert.clone(),
                root_key: root_key.clone(),
            };
        }
        #[cfg(feature = "etcd")]
        {
            aca_config.shared = shared.clone();
        }
        let now = SystemTime::now();
        let authority = Arc::new(
            CertificateAuthority::bootstrap(aca_config, Box::new(policy), now)
                .map_err(|e| format!("certificate authority in {}: {e}", aca_dir.display()))?,
        );
        enrollment
            .save()
            .map_err(|e| format!("{}: {e}", enrollment.path().display()))?;
        // The control plane's runtime: every server of the node runs on it.
        let runtime = agw_rpc::runtime("agw-control").map_err(|e| format!("runtime: {e}"))?;
        // Revocations wake whoever watches them (the daemon closes live sessions): no polling.
        let (revoked_tx, revoked) = crossbeam_channel::bounded(1);
        // Who holds which permission scope changes with every issuance and revocation.
        let scopes_changed = Arc::new(tokio::sync::Notify::new());
        let on_change = Arc::clone(&scopes_changed);
        authority.on_revoke(move || {
            let _ = revoked_tx.try_send(());
            on_change.notify_one();
        });
        let on_change = Arc::clone(&scopes_changed);
        authority.on_issue(move || on_change.notify_one());
        // The domain's other gateways' issues and revocations count as this one's.
        #[cfg(feature = "etcd")]
        authority
            .follow_domain()
            .map_err(|e| format!("following the domain's authority: {e}"))?;
        // And with every agent attaching with scopes in its certificate, or leaving.
        let attached_scopes = AccessScopes::new(Arc::clone(&scopes_changed));
        let crl_server = CrlHttpServer::from_listener(
            runtime.handle(),
            crl_listener,
            Arc::clone(&authority),
            url_path(&crl_url),
        )
        .map_err(|e| format!("CRL server on {crl_addr}: {e}"))?;
        // This gateway's certificate, for the registry's TLS and for peering.
        let key = gateway_key(&config.data_dir.join("gateway.key.pem"))?;
        let csr = key.csr(gateway.as_str()).map_err(|e| e.to_string())?;
        let issued = authority
            .issue_gateway_named(&gateway, &csr, &config.server_names, now)
            .map_err(|e| format!("gateway certificate: {e}"))?;
        let own_crl = authority.crl(now).map_err(|e| e.to_string())?;
        let applied_crl_number = own_crl.number;
        let own_crl = own_crl.der;
        let mut crls = vec![own_crl.clone()];
        crls.extend(config.peer_crls.iter().cloned());
        // Shared with every TLS configuration: the peers' CRLs fetched later replace these.
        let crls = Crls::new(crls);
        // Every TLS configuration made from it presents the certificate as renewed since.
        let renewable = RenewableCertificate::new(issued.chain.clone(), &key.to_pkcs8_der())
            .map_err(|e| format!("gateway certificate: {e}"))?;
        let certificate = GatewayCertificate::new(key, renewable.clone(), &issued)?;
        let tls = TlsIdentity {
            chain: issued.chain,
            key_pkcs8: certificate.key.to_pkcs8_der(),
            trust_anchor: authority.trust_anchor().to_vec(),
            crls: crls.clone(),
            // Without peer domains' CRLs, their gateways' revocations cannot be checked; with
            // them, a peer certificate of an unknown issuer is refused.
            allow_unknown_revocation: config.peer_crls.is_empty(),
            renewable: Some(renewable),
        };

        // The authority's port: TLS (the gateway's certificate; an applicant has none yet,
        // a holder may present its own), and plain TCP where the operator allows it.
        let aca_listener = bind("ACA listener", config.aca)?;
        let aca_addr = aca_listener.local_addr().map_err(|e| e.to_string())?;
        let served = Arc::clone(&authority);
        let handler = Arc::new(move |request: &Message, caller: &Caller, now| {
            served.handle_from(request, caller.address, now)
        });
        let aca_tls = tls
            .est_server_config()
            .map_err(|e| format!("ACA TLS: {e}"))?;
        if config.aca_plaintext && !config.aca.ip().is_loopback() {
            tracing::warn!(listen = %config.aca, "the authority takes plain TCP on a non-loopback address: enrollment tokens cross the network readable");
        }
        let aca_endpoint = Endpoint::tcp_tls_or_plain(
            runtime.handle(),
            aca_listener,
            (Arc::new(aca_tls), agw_aca::tls::peer_identity),
            config.aca_plaintext,
            handler,
            ServerLimits {
                admission: agw_aca::service::REQUESTS,
                ..ServerLimits::default()
            },
        )
        .map_err(|e| format!("ACA endpoint: {e}"))?;

        // Certificates presented outside TLS are checked as TLS checks them.
        let checker = || {
            CertificateChecker::new(authority.trust_anchor(), std::slice::from_ref(&own_crl))
                .map_err(|e| e.to_string())
        };
        // The relay, always ready for peers (they may be added while it runs).
        let mut dp_config = DataplaneConfig::new(gateway.clone(), config.agents);
        if let Some(shards) = config.shards {
            dp_config.shards = shards;
        }
        dp_config.pin_cores = config.pin_cores;
        dp_config.access = config.access;
        dp_config.set_live_limits(config.limits);
        dp_config.authorization =
            with_scopes(&authority, &attached_scopes, config.authorization.clone());
        dp_config.peer_listen = Some(config.relay_links);
        dp_config.peer_tls = Some(tls.clone());
        dp_config.mqtt_listen = config.mqtt;
        dp_config.a2a_listen = config.a2a;
        dp_config.a2a_answer_within = config.a2a_answer_within;
        // The pool off the shards always runs: it converts formats for agents that say which
        // they accept, and translates languages when an engine is configured.
        dp_config.translation = true;
        dp_config.translate_languages = config.translation.is_some();
        if config.agent_plaintext {
            if !config.agents.ip().is_loopback() {
                tracing::warn!(listen = %config.agents, "agents speak plain TCP on a non-loopback address: every message crosses the network readable and alterable");
            }
        } else {
            dp_config.agent_tls = Some(tls.clone());
        }
        let table = RoutingTable::new();
        let reader = table.reader();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let dataplane = Dataplane::start(dp_config, reader, checker()?, events_tx)
            .map_err(|e| e.to_string())?;

        // The registry, over mutual TLS.
        let mut registry_config =
            RegistryConfig::new(config.domain.clone(), config.data_dir.join("ars"));
        // Other domains' agents are reached through this gateway's relay.
        registry_config.agent_access = match &config.agent_address {
            Some(address) => address.clone(),
            None => {
                let bound = dataplane.local_addr();
                if bound.ip().is_unspecified() {
                    tracing::warn!(%bound, "the relay listens on a wildcard address: set agent_address, the address agents dial, or discovery gives them this one");
                }
                bound.to_string()
            }
        };
        #[cfg(feature = "etcd")]
        {
            registry_config.shared = shared.clone();
        }
        let registry =
            Registry::open(registry_config, checker()?).map_err(|e| format!("registry: {e}"))?;
        // Its owner hands changes of local agents to the control plane, which tells the peers.
        let (to_control, registry_changes) = crate::control::registry_changes();
        // ... and names its A2A server agents to the relay, which calls them.
        let (to_a2a, a2a_changes) = crate::a2a_servers::channel();
        let on_changes = move |changes: Vec<agw_ars::Change>| {
            let _ = to_a2a.send(crate::a2a_servers::changed_agents(&changes));
            to_control(changes);
        };
        let registry = agw_ars::owner::spawn(registry, on_changes)
            .map_err(|e| format!("registry owner: {e}"))?;
        // What the domain's other gateways register reaches this registry.
        #[cfg(feature = "etcd")]
        if let Some(mirror) = &shared {
            agw_ars::store::shared::follow(mirror, &registry);
        }
        let profiles: agw_dataplane::a2a::SharedDirectory = Arc::new(Profiles(registry.clone()));
        dataplane.set_directory(profiles.clone());
        let translation = dataplane
            .translation_port()
            .ok_or("the relay has no translation port")?;
        let translation = crate::translation::TranslationPool::start(
            runtime.handle(),
            translation,
            config
                .translation
                .clone()
                .unwrap_or_else(crate::translation::TranslationConfig::formats_only),
            profiles,
        )
        .map_err(|e| format!("translation: {e}"))?;
        runtime.spawn(crate::a2a_servers::follow(
            registry.clone(),
            dataplane.a2a_servers(),
            a2a_changes,
        ));
        let ars_listener = bind("registry listener", config.registry)?;
        let ars_addr = ars_listener.local_addr().map_err(|e| e.to_string())?;
        let ars_tls = Arc::new(
            tls.server_config()
                .map_err(|e| format!("registry TLS: {e}"))?,
        );
        let served = registry.clone();
        let revoker = Arc::clone(&authority);
        let handler = Arc::new(move |request: &Message, caller: &Caller, now| {
            let Some(peer) = caller.identity.as_deref() else {
                return Some(notification(
                    ErrorCode::NotAccessed,
                    "no client certificate",
                ));
            };
            let reply = served.serve(request, peer, now);
            // A deregistered agent's certificate is revoked (draft 2.2): its live sessions
            // close, and it applies again to come back.
            if let Some(Message::DeregisterAgentReply(r)) = &reply
                && r.error.is_none()
                && let Err(e) = revoker.revoke_identity(
                    peer,
                    pb::RevocationReason::CessationOfOperation as i32,
                    now,
                )
            {
                tracing::warn!(agent = %peer, error = %e, "deregistered, but its certificate could not be revoked");
            }
            reply
        });
        let ars_endpoint = Endpoint::tcp(
            runtime.handle(),
            ars_listener,
            Some((ars_tls, agw_aca::tls::peer_identity)),
            handler,
            ServerLimits {
                admission: agw_ars::service::REQUESTS,
                inline: agw_ars::service::QUICK,
                ..ServerLimits::default()
            },
        )
        .map_err(|e| format!("registry endpoint: {e}"))?;

        // The control plane and its peers.
        let relay_links = dataplane
            .peer_addr()
            .ok_or("the relay did not open its peer listener")?;
        let peering_config = PeeringConfig {
            runtime: runtime.handle().clone(),
            listen: config.peering,
            tls: tls.clone(),
            peers: config
                .peers
                .iter()
                .map(|p| peer_spec(&gateway, relay_links, p))
                .collect(),
        };
        let control = ControlPlane::start(
            gateway.clone(),
            table,
            events_rx,
            Wiring {
                peering: Some(peering_config),
                links: Some(dataplane.peer_links()),
                registry: Some(RegistryWiring {
                    handle: registry.clone(),
                    changes: registry_changes,
                }),
                access_scopes: Some(attached_scopes.clone()),
                attachments: attachments(&shared, &gateway),
            },
        )
        .map_err(|e| format!("control plane: {e}"))?;
        // The policy as configured; the relay's has its scopes' holders filled in, again after
        // every issuance and revocation.
        let policy = Arc::new(Mutex::new(config.authorization.clone()));
        runtime.spawn(follow_scopes(
            Arc::clone(&authority),
            attached_scopes.clone(),
            Arc::clone(&policy),
            dataplane.authorization_handle(),
            scopes_changed,
        ));
        let own = Arc::clone(&authority);
        let peer_crls = control.peering().map(|peering| {
            PeerCrls::start(
                runtime.handle(),
                PeerCrlConfig {
                    refresh: config.peer_crl_refresh,
                    own: Box::new(move || own.crl(SystemTime::now()).ok().map(|c| c.der)),
                    configured: config.peer_crls.clone(),
                },
                crls.clone(),
                peering.neighbours_handle(),
                Some(dataplane.peer_links()),
            )
        });
        let mut endpoints = vec![("aca", aca_endpoint), ("registry", ars_endpoint)];
        // EST over HTTPS: enrollment and renewal with openssl and curl.
        let mut est = None;
        if let Some(addr) = config.est {
            let est_tls = tls
                .est_server_config()
                .map_err(|e| format!("EST TLS: {e}"))?;
            let endpoint = Endpoint::https(
                runtime.handle(),
                bind("EST listener", addr)?,
                Arc::new(est_tls),
                agw_aca::tls::peer_identity,
                agw_aca::est::route(Arc::clone(&authority)),
                HttpLimits {
                    max_body: agw_aca::est::MAX_BODY,
                    ..HttpLimits::default()
                },
            )
            .map_err(|e| format!("EST endpoint: {e}"))?;
            est = endpoint.local_addr();
            endpoints.push(("est", endpoint));
        }
        let mut served: Vec<_> = endpoints.iter().map(|(n, e)| (*n, e.stats())).collect();
        served.push(("crl", crl_server.stats()));
        let metrics = match config.metrics {
            Some(addr) => {
                let endpoint = crate::metrics::serve(
                    runtime.handle(),
                    bind("metrics listener", addr)?,
                    crate::metrics::MetricsSources {
                        counters: dataplane.counters_handle(),
                        neighbours: control.peering().map(|p| p.neighbours_handle()),
                        endpoints: served,
                        registry: Some(registry.clone()),
                        peer_crls: peer_crls.as_ref().map(PeerCrls::view),
                        translation: Some(translation.stats.clone()),
                    },
                )
                .map_err(|e| format!("metrics: {e}"))?;
                let addr = endpoint.local_addr();
                endpoints.push(("metrics", endpoint));
                addr
            }
            None => None,
        };
        tracing::info!(%gateway, agents = %dataplane.local_addr(), aca = %aca_addr, registry = %ars_addr, peers = config.peers.len(), "node started");
        let addresses = NodeAddresses {
            agents: dataplane.local_addr(),
            mqtt: dataplane.mqtt_addr(),
            a2a: dataplane.a2a_addr(),
            aca: aca_addr,
            crl_url,
            registry: ars_addr,
            peering: control
                .peering()
                .map(|p| p.local_addr())
                .ok_or("peering did not start")?,
            relay_links,
            metrics,
            est,
        };
        let control = Arc::new(control);
        // The domain's other gateways, linked as they come (issue 19, part 2).
        #[cfg(feature = "etcd")]
        if let Some(mirror) = &shared {
            follow_siblings(
                mirror,
                &gateway,
                addresses.peering,
                relay_links,
                Arc::downgrade(&control),
            )
            .map_err(|e| format!("following the domain's gateways: {e}"))?;
        }
        Ok(Node {
            gateway,
            authority,
            registry,
            dataplane,
            control: Some(control),
            peer_crls,
            peers: config.peers,
            relay_links,
            crl_server,
            addresses,
            trust_anchor_path: aca_dir.join("trust-anchor.pem"),
            enrollment,
            certificate: Mutex::new(certificate),
            server_names: config.server_names,
            policy,
            attached_scopes,
            endpoints,
            revoked,
            applied_crl: Mutex::new((applied_crl_number, Vec::new())),
            translation,
            runtime: ControlRuntime(Some(runtime)),
        })
    }

    /// The translation pool: languages translated (when configured), formats converted.
    pub fn translation(&self) -> &crate::translation::TranslationPool {
        &self.translation
    }

    /// The control plane's runtime (the admin socket is served on it too).
    pub fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.0.as_ref().map(tokio::runtime::Runtime::handle)
    }

    /// The servers by name (`aca`, `registry`, `metrics`, `crl`) and their counters, for
    /// metrics and health.
    pub fn endpoint_stats(&self) -> Vec<(&'static str, Arc<EndpointStats>)> {
        let mut stats: Vec<_> = self
            .endpoints
            .iter()
            .map(|(name, e)| (*name, e.stats()))
            .collect();
        stats.push(("crl", self.crl_server.stats()));
        stats
    }

    /// The node's other parts and whether they run, for health (beside
    /// [`Node::endpoint_stats`]).
    pub fn parts_running(&self) -> Vec<(&'static str, bool)> {
        vec![("registry owner", self.registry.is_running())]
    }

    /// Renews this gateway's certificate once 70% of its lifetime has passed (same key, from
    /// its own authority): registry, peering and relay links present the new one from their
    /// next handshake; live sessions go on. Call it now and then (the daemon does, every
    /// loop); returns the renewal when one happened.
    pub fn renew_certificate_if_due(&self, now: SystemTime) -> Result<Option<Renewed>, String> {
        let mut current = self
            .certificate
            .lock()
            .map_err(|_| "certificate state poisoned")?;
        if now < current.renew_at {
            return Ok(None);
        }
        // A failed attempt is tried again in a minute, not at every call.
        current.renew_at = now + Duration::from_secs(60);
        let csr = current
            .key
            .csr(self.gateway.as_str())
            .map_err(|e| e.to_string())?;
        let issued = self
            .authority
            .issue_gateway_named(&self.gateway, &csr, &self.server_names, now)
            .map_err(|e| format!("renewing the gateway certificate: {e}"))?;
        current
            .renewable
            .renew(issued.chain.clone())
            .map_err(|e| format!("renewing the gateway certificate: {e}"))?;
        let (not_before, not_after) = validity(&issued.chain)?;
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        current.serial = issued.serial.clone();
        current.renew_at = not_before + lifetime.mul_f64(0.7);
        current.not_after = not_after;
        Ok(Some(Renewed {
            serial: issued.serial,
            not_after,
        }))
    }

    /// Authorizes messages by `policy` from now on, its scopes' holders filled in from the
    /// authority (every shard's next batch).
    pub fn set_authorization(&self, policy: Authorization) {
        // Under the lock: a resolution of the previous policy cannot land after this one.
        let Ok(mut configured) = self.policy.lock() else {
            return;
        };
        configured.clone_from(&policy);
        self.dataplane.set_authorization(with_scopes(
            &self.authority,
            &self.attached_scopes,
            policy,
        ));
    }

    /// Fetches the peers' CRLs now (and puts this domain's CRL of the moment beside them in
    /// every TLS configuration): an operator's reload, or a revocation here.
    pub fn refresh_crls(&self) {
        if let Some(p) = &self.peer_crls {
            p.refresh();
        }
    }

    /// The peer domains' CRLs as fetched, by domain.
    pub fn peer_crls(&self) -> std::collections::BTreeMap<String, PeerCrl> {
        self.peer_crls
            .as_ref()
            .map(PeerCrls::known)
            .unwrap_or_default()
    }

    /// What the metrics read of the peer domains' CRLs.
    pub fn peer_crl_view(&self) -> Option<crate::peer_crls::PeerCrlView> {
        self.peer_crls.as_ref().map(PeerCrls::view)
    }

    /// Receives a message after each revocation by the embedded authority: call
    /// [`apply_revocations`](Self::apply_revocations) then.
    pub fn revocations(&self) -> &crossbeam_channel::Receiver<()> {
        &self.revoked
    }

    /// Revocations reach the relay and the registry: the authority's CRL, if newer than the
    /// one they check, replaces their checkers (the next access and handshake are refused)
    /// and closes the live sessions of the certificates it newly revokes.
    pub fn apply_revocations(&self) {
        let authority = &self.authority;
        let Ok(crl) = authority.crl(SystemTime::now()) else {
            return;
        };
        let Ok(mut applied) = self.applied_crl.lock() else {
            return;
        };
        if crl.number == applied.0 {
            return;
        }
        let serials = agw_aca::revoked_serials(&crl.der).unwrap_or_default();
        let new: Vec<Vec<u8>> = serials
            .iter()
            .filter(|s| !applied.1.contains(s))
            .cloned()
            .collect();
        *applied = (crl.number, serials);
        drop(applied);
        // Handshakes (registry, peering) check this CRL from now on.
        self.refresh_crls();
        let anchor = authority.trust_anchor();
        if let Ok(checker) = CertificateChecker::new(anchor, std::slice::from_ref(&crl.der)) {
            self.dataplane.set_checker(checker, new);
        }
        if let Ok(checker) = CertificateChecker::new(anchor, std::slice::from_ref(&crl.der)) {
            self.registry
                .change(move |r| r.set_certificate_checker(checker));
        }
    }

    /// When this gateway's certificate is next due for renewal.
    pub fn renewal_due(&self) -> Option<SystemTime> {
        self.certificate.lock().ok().map(|c| c.renew_at)
    }

    /// This gateway's certificate now: its serial and notAfter.
    pub fn certificate(&self) -> Option<(Vec<u8>, SystemTime)> {
        let current = self.certificate.lock().ok()?;
        Some((current.serial.clone(), current.not_after))
    }

    /// Where it listens.
    pub fn addresses(&self) -> &NodeAddresses {
        &self.addresses
    }

    /// The trust anchor agents and peers need, as a file.
    pub fn trust_anchor_path(&self) -> &std::path::Path {
        &self.trust_anchor_path
    }

    /// The token with which `organization`'s agents enroll, unless it is open (see
    /// [`agw_aca::enrollment`]).
    pub fn enrollment_token(&self, organization: &str) -> Option<&str> {
        self.enrollment.token(organization)
    }

    /// The file of the organisations' enrollment tokens (0600), for the operator.
    pub fn enrollment_tokens_path(&self) -> &std::path::Path {
        self.enrollment.path()
    }

    /// The control plane (peers, neighbours).
    pub fn control(&self) -> Option<&ControlPlane> {
        self.control.as_deref()
    }

    /// The peers as configured now.
    pub fn peers(&self) -> &[PeerEntry] {
        &self.peers
    }

    /// Makes the peers these: sessions with removed peers end (DISCONNECT), new peers are
    /// dialled or awaited, a changed peer's session restarts. Returns what changed, a line
    /// each.
    pub fn set_peers(&mut self, peers: Vec<PeerEntry>) -> Result<Vec<String>, ControlError> {
        let control = self.control.as_ref().ok_or(ControlError::Stopped)?;
        let mut changes = Vec::new();
        for old in &self.peers {
            match peers.iter().find(|p| p.gateway == old.gateway) {
                Some(new) if new == old => {}
                Some(_) => {
                    control.remove_peer(old.gateway.as_str())?;
                    changes.push(format!("peer {} changed: session restarted", old.gateway));
                }
                None => {
                    control.remove_peer(old.gateway.as_str())?;
                    changes.push(format!("peer {} removed", old.gateway));
                }
            }
        }
        for new in &peers {
            let old = self.peers.iter().find(|p| p.gateway == new.gateway);
            if old == Some(new) {
                continue;
            }
            control.add_peer(peer_spec(&self.gateway, self.relay_links, new))?;
            if old.is_none() {
                changes.push(format!("peer {} added", new.gateway));
            }
        }
        self.peers = peers;
        Ok(changes)
    }

    /// Takes these relay limits (see [`Dataplane::set_limits`]).
    pub fn set_limits(&self, limits: LiveLimits) -> Result<(), String> {
        self.dataplane.set_limits(limits)
    }

    /// Drains: peers are left (DISCONNECT, so they route around this gateway), then the relay
    /// delivers what it accepted, bounded by `deadline` (see [`Dataplane::drain`]).
    pub fn drain(&mut self, deadline: Duration, progress: impl FnMut(i128, u64)) -> DrainReport {
        if let Some(c) = self.control.take() {
            stop_control(c);
        }
        self.dataplane.drain(deadline, progress)
    }

    /// Leaves the peers (DISCONNECT), stops the relay and closes the registry's store (the
    /// data directory can be opened again at once, in this process too).
    pub fn stop(mut self) {
        if let Some(c) = self.control.take() {
            stop_control(c);
        }
        self.dataplane.stop();
        self.registry.stop();
    }
}

/// Stops the control plane: at once when this is its last holder; otherwise (the sibling
/// follower holds it for a moment) when that holder lets go.
fn stop_control(control: Arc<ControlPlane>) {
    if let Ok(control) = Arc::try_unwrap(control) {
        control.stop();
    }
}

/// Which agent is attached where, in the domain's etcd: `attached/<agent ID>` = the gateway's
/// ID, held while the agent stays (and the gateway lives: the lease).
#[cfg(feature = "etcd")]
fn attachments(
    shared: &Option<agw_etcd::Shared>,
    gateway: &GatewayId,
) -> Option<crate::control::Attachments> {
    let mirror = shared.clone()?;
    let gateway = gateway.to_string().into_bytes();
    Some(crate::control::Attachments(Box::new(move |agent, here| {
        let key = format!("attached/{agent}");
        if here {
            mirror.hold(&key, gateway.clone());
        } else {
            mirror.release(&key);
        }
    })))
}

#[cfg(not(feature = "etcd"))]
fn attachments(
    _: &Option<std::convert::Infallible>,
    _: &GatewayId,
) -> Option<crate::control::Attachments> {
    None
}

/// Where the domain's gateways list themselves in its etcd (held while each lives, see
/// [`agw_etcd::Shared::hold`]): `gateways/<gateway ID>` = its peering address.
#[cfg(feature = "etcd")]
const GATEWAYS: &str = "gateways/";

/// Hold time of a session between two gateways of the domain (keepalives every 3 s); a
/// gateway that dies closes its connections, which ends the session sooner.
#[cfg(feature = "etcd")]
const SIBLING_HOLD: Duration = Duration::from_secs(9);

/// Lists this gateway among the domain's (issue 19, part 2) and peers with every other one
/// listed, as they come and go: the gateway with the lower ID dials, the other waits for it,
/// so that each pair has one session. Runs on a thread of its own until the control plane
/// stops.
#[cfg(feature = "etcd")]
fn follow_siblings(
    mirror: &agw_etcd::Shared,
    me: &GatewayId,
    peering: SocketAddr,
    relay_links: SocketAddr,
    control: std::sync::Weak<ControlPlane>,
) -> std::io::Result<()> {
    mirror.hold(&format!("{GATEWAYS}{me}"), peering.to_string().into_bytes());
    let (changed, heard) = crossbeam_channel::bounded(1);
    let _ = changed.try_send(());
    mirror.subscribe(GATEWAYS, move |_| {
        let _ = changed.try_send(());
    });
    let (mirror, me) = (mirror.clone(), me.clone());
    std::thread::Builder::new()
        .name("agw-siblings".into())
        .spawn(move || {
            let mut linked: std::collections::BTreeMap<GatewayId, Option<SocketAddr>> =
                std::collections::BTreeMap::new();
            loop {
                let woken = heard.recv_timeout(Duration::from_secs(1));
                let Some(control) = control.upgrade() else {
                    return;
                };
                if woken.is_err() {
                    continue;
                }
                let wanted: std::collections::BTreeMap<GatewayId, Option<SocketAddr>> = mirror
                    .scan(GATEWAYS)
                    .into_iter()
                    .filter_map(|(key, entry)| {
                        let id = GatewayId::parse(&key[GATEWAYS.len()..]).ok()?;
                        let address: SocketAddr =
                            std::str::from_utf8(&entry.value).ok()?.parse().ok()?;
                        let dial = me.as_str() < id.as_str();
                        (id != me && id.domain() == me.domain())
                            .then_some((id, dial.then_some(address)))
                    })
                    .collect();
                for (id, _) in linked.iter().filter(|(id, a)| wanted.get(*id) != Some(*a)) {
                    match control.remove_peer(id.as_str()) {
                        Ok(()) => tracing::info!(gateway = %id, "the domain's gateway left"),
                        Err(e) => tracing::warn!(gateway = %id, error = %e, "unlinking"),
                    }
                }
                for (id, address) in wanted.iter().filter(|(id, a)| linked.get(*id) != Some(*a)) {
                    let entry = PeerEntry {
                        gateway: id.clone(),
                        address: *address,
                        export: None,
                        max_summaries: None,
                        hold_time: SIBLING_HOLD,
                    };
                    match control.add_peer(peer_spec(&me, relay_links, &entry)) {
                        Ok(_) => tracing::info!(gateway = %id, dial = address.is_some(), "linking with the domain's gateway"),
                        Err(e) => tracing::warn!(gateway = %id, error = %e, "not linked"),
                    }
                }
                linked = wanted;
            }
        })?;
    Ok(())
}

/// A configured peer as the peering driver takes it.
fn peer_spec(local: &GatewayId, relay_links: SocketAddr, p: &PeerEntry) -> PeerSpec {
    let mut c = PeerConfig::new(local.clone(), p.gateway.clone());
    c.dial = p.address.is_some();
    c.hold_time = p.hold_time;
    c.send_hold_time = p.hold_time * 2;
    c.max_summaries = p.max_summaries;
    c.export_domains = p.export.as_ref().map(|d| d.iter().cloned().collect());
    c.agent_access_address = relay_links.to_string();
    PeerSpec {
        config: c,
        address: p.address,
    }
}

/// A2A agent cards on the shards read the registry's last snapshot (lock-free).
struct Profiles(RegistryHandle);

impl agw_dataplane::a2a::Directory for Profiles {
    fn profile(&self, agent: &str) -> Option<pb::AgentProfile> {
        self.0.view().profile(agent).cloned()
    }
}
