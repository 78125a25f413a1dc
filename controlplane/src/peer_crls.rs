//! Revocation across domains: the peers' CRLs, fetched from the distribution points their
//! certificates name, on a schedule and on demand, checked against the authority that issued
//! each peer's certificate, and put where every TLS handshake reads them ([`Crls`]). When a
//! CRL lists the certificate a peer holds now, its peering session and its relay links are
//! closed at once (`CERT_REVOKED`); its next handshakes are refused.
//!
//! One task on the control plane's runtime. It looks at the peers' presented chains every
//! second, so a new peer's CRL is fetched within a second of its session coming up; each
//! domain's is fetched again every `refresh`, and at once when asked
//! ([`PeerCrls::refresh`]: SIGHUP, `agwctl reload`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use agw_aca::tls::{Crls, VerifiedCrl, crl_distribution_points, leaf_issuer, verify_crl};
use agw_dataplane::PeerLinks;
use agw_proto::identity::GatewayId;
use tokio::{runtime::Handle, sync::Notify, task::JoinHandle};

use crate::peering::driver::Neighbours;

/// How often the chains are looked at.
const LOOK: Duration = Duration::from_secs(1);
/// Time for one fetch.
const FETCH_DEADLINE: Duration = Duration::from_secs(5);
/// Largest CRL taken.
const MAX_CRL: usize = 8 << 20;

/// What the fetcher is given.
pub struct PeerCrlConfig {
    /// How often each peer domain's CRL is fetched again.
    pub refresh: Duration,
    /// This domain's CRL now (always in the set; read at each publication).
    pub own: Box<dyn Fn() -> Option<Vec<u8>> + Send + Sync>,
    /// Peer domains' CRLs from the configuration: used until one is fetched for their issuer.
    pub configured: Vec<Vec<u8>>,
}

impl std::fmt::Debug for PeerCrlConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCrlConfig")
            .field("refresh", &self.refresh)
            .field("configured", &self.configured.len())
            .finish()
    }
}

/// One peer domain's CRL as the gateway knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCrl {
    /// Where it is fetched (the first distribution point of the peer's certificate).
    pub url: String,
    /// Its CRL number, hex; empty before the first good fetch.
    pub number: String,
    /// How many certificates it revokes.
    pub revoked: usize,
    /// When it was last fetched and found good.
    pub fetched: Option<SystemTime>,
    /// Why the last fetch failed, if it did.
    pub error: Option<String>,
}

/// A peer domain: its authority, where its CRL is, and the CRL.
#[derive(Debug, Default)]
struct Domain {
    /// The authority's certificate, from a peer's presented chain.
    ca: Vec<u8>,
    urls: Vec<String>,
    der: Option<Vec<u8>>,
    crl: Option<VerifiedCrl>,
    /// When it was last tried.
    tried: Option<tokio::time::Instant>,
    error: Option<String>,
    fetched: Option<SystemTime>,
}

/// The running fetcher; stops when dropped.
#[derive(Debug)]
pub struct PeerCrls {
    wake: Arc<Notify>,
    forced: Arc<std::sync::atomic::AtomicBool>,
    domains: Arc<Mutex<BTreeMap<String, Domain>>>,
    task: JoinHandle<()>,
}

impl Drop for PeerCrls {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerCrls {
    /// Starts fetching on `runtime`: CRLs go into `crls`, revoked peers are cut through
    /// `neighbours` (sessions) and `links` (relay links).
    pub fn start(
        runtime: &Handle,
        config: PeerCrlConfig,
        crls: Crls,
        neighbours: Neighbours,
        links: Option<PeerLinks>,
    ) -> PeerCrls {
        let wake = Arc::new(Notify::new());
        let forced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let domains = Arc::new(Mutex::new(BTreeMap::new()));
        let fetcher = Fetcher {
            forced: Arc::clone(&forced),
            config,
            crls,
            neighbours,
            links,
            domains: Arc::clone(&domains),
        };
        let task = runtime.spawn(fetcher.run(Arc::clone(&wake)));
        PeerCrls {
            wake,
            forced,
            domains,
            task,
        }
    }

    /// Fetches every peer domain's CRL now, and publishes this domain's CRL of the moment
    /// with them.
    pub fn refresh(&self) {
        self.forced
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut domains) = self.domains.lock() {
            for d in domains.values_mut() {
                d.tried = None;
            }
        }
        self.wake.notify_one();
    }

    /// The peer domains' CRLs as known now, by domain.
    pub fn known(&self) -> BTreeMap<String, PeerCrl> {
        self.view().known()
    }

    /// A handle that reads them from any thread (the metrics endpoint's).
    pub fn view(&self) -> PeerCrlView {
        PeerCrlView(Arc::clone(&self.domains))
    }
}

/// Reads the peer domains' CRLs as the fetcher knows them.
#[derive(Debug, Clone)]
pub struct PeerCrlView(Arc<Mutex<BTreeMap<String, Domain>>>);

impl PeerCrlView {
    /// The peer domains' CRLs as known now, by domain.
    pub fn known(&self) -> BTreeMap<String, PeerCrl> {
        let Ok(domains) = self.0.lock() else {
            return BTreeMap::new();
        };
        domains
            .iter()
            .map(|(name, d)| {
                let known = PeerCrl {
                    url: d.urls.first().cloned().unwrap_or_default(),
                    number: d.crl.as_ref().map(|c| hex(&c.number)).unwrap_or_default(),
                    revoked: d.crl.as_ref().map_or(0, |c| c.revoked.len()),
                    fetched: d.fetched,
                    error: d.error.clone(),
                };
                (name.clone(), known)
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Fetcher {
    /// A refresh was asked for: publish even if no peer CRL changed.
    forced: Arc<std::sync::atomic::AtomicBool>,
    config: PeerCrlConfig,
    crls: Crls,
    neighbours: Neighbours,
    links: Option<PeerLinks>,
    domains: Arc<Mutex<BTreeMap<String, Domain>>>,
}

impl Fetcher {
    async fn run(self, wake: Arc<Notify>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(LOOK) => {}
                () = wake.notified() => {}
            }
            self.cycle().await;
        }
    }

    /// Learns the peers' domains from their chains, fetches what is due, publishes, cuts.
    async fn cycle(&self) {
        let forced = self
            .forced
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let chains = self.neighbours.chains();
        let due = self.learn(&chains);
        let mut changed = Vec::new();
        for (domain, urls, ca) in due {
            let result = fetch(&urls, &ca).await;
            let Ok(mut domains) = self.domains.lock() else {
                return;
            };
            let Some(d) = domains.get_mut(&domain) else {
                continue;
            };
            d.tried = Some(tokio::time::Instant::now());
            match result {
                Ok((der, crl)) => {
                    let older = d
                        .crl
                        .as_ref()
                        .is_some_and(|known| number_order(&crl.number, &known.number).is_lt());
                    if older {
                        d.error = Some("a CRL older than the one known was served".into());
                        continue;
                    }
                    d.error = None;
                    d.fetched = Some(SystemTime::now());
                    if d.der.as_ref() != Some(&der) {
                        tracing::info!(%domain, revoked = crl.revoked.len(), "peer domain's CRL updated");
                        changed.push((domain.clone(), crl.revoked.clone()));
                        d.der = Some(der);
                        d.crl = Some(crl);
                    }
                }
                Err(e) => {
                    if d.error.as_ref() != Some(&e) {
                        tracing::warn!(%domain, error = %e, "peer domain's CRL not fetched");
                    }
                    d.error = Some(e);
                }
            }
        }
        if forced || !changed.is_empty() {
            self.publish();
            if let Some(links) = &self.links {
                for (domain, serials) in &changed {
                    links.revoke(domain, serials);
                }
            }
        }
        self.cut(&chains);
    }

    /// Records each peer's domain, authority and distribution points; returns the domains
    /// whose CRL is due: never fetched, `refresh` since the last try, or asked for.
    fn learn(&self, chains: &[(String, Vec<Vec<u8>>)]) -> Vec<(String, Vec<String>, Vec<u8>)> {
        let Ok(mut domains) = self.domains.lock() else {
            return Vec::new();
        };
        for (gateway, chain) in chains {
            // The authority that issued the peer's certificate, whatever the order it was sent
            // in: its CRL is the one that counts, and it must have signed it.
            let (Ok(gateway), Some(leaf), Some(ca)) =
                (GatewayId::parse(gateway), chain.first(), leaf_issuer(chain))
            else {
                continue;
            };
            let d = domains.entry(gateway.domain().to_owned()).or_default();
            d.ca = ca;
            let urls: Vec<String> = crl_distribution_points(leaf)
                .into_iter()
                .filter(|u| u.starts_with("http://"))
                .collect();
            if !urls.is_empty() {
                d.urls = urls;
            }
        }
        let now = tokio::time::Instant::now();
        domains
            .iter()
            .filter(|(_, d)| !d.urls.is_empty())
            .filter(|(_, d)| d.tried.is_none_or(|t| now >= t + self.config.refresh))
            .map(|(name, d)| (name.clone(), d.urls.clone(), d.ca.clone()))
            .collect()
    }

    /// Puts this domain's CRL, the fetched ones, and the configured ones of other issuers
    /// where every handshake reads them.
    fn publish(&self) {
        let Ok(domains) = self.domains.lock() else {
            return;
        };
        let fetched: Vec<&Vec<u8>> = domains.values().filter_map(|d| d.der.as_ref()).collect();
        let mut set: Vec<Vec<u8>> = (self.config.own)().into_iter().collect();
        let issuers: Vec<Vec<u8>> = fetched.iter().filter_map(|c| issuer_of(c)).collect();
        for configured in &self.config.configured {
            if issuer_of(configured).is_none_or(|i| !issuers.contains(&i)) {
                set.push(configured.clone());
            }
        }
        set.extend(fetched.into_iter().cloned());
        self.crls.set(set);
    }

    /// Closes the session of every peer whose certificate its domain's CRL lists.
    fn cut(&self, chains: &[(String, Vec<Vec<u8>>)]) {
        let Ok(domains) = self.domains.lock() else {
            return;
        };
        for (gateway, chain) in chains {
            let revoked = GatewayId::parse(gateway)
                .ok()
                .and_then(|g| domains.get(g.domain()))
                .and_then(|d| d.crl.as_ref())
                .zip(chain.first().and_then(|leaf| serial_of(leaf)))
                .is_some_and(|(crl, serial)| crl.revoked.contains(&serial));
            if revoked {
                self.neighbours.revoked(gateway);
            }
        }
    }
}

/// The first distribution point that serves a CRL `ca` signed.
async fn fetch(urls: &[String], ca: &[u8]) -> Result<(Vec<u8>, VerifiedCrl), String> {
    let mut errors = Vec::new();
    for url in urls {
        match agw_rpc::http::get(url, FETCH_DEADLINE, MAX_CRL).await {
            Ok(body) => match verify_crl(&body, ca) {
                Ok(crl) => return Ok((body.to_vec(), crl)),
                Err(e) => errors.push(format!("{url}: {e}")),
            },
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

/// Orders CRL numbers (big-endian, minimal).
fn number_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn issuer_of(crl: &[u8]) -> Option<Vec<u8>> {
    agw_aca::tls::crl_issuer(crl)
}

fn serial_of(certificate: &[u8]) -> Option<Vec<u8>> {
    agw_aca::tls::leaf_serial(&[rustls::pki_types::CertificateDer::from(certificate)])
}
