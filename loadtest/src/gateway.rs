//! A gateway in this process: a certificate authority in a temporary directory, the shards,
//! and the keeper of local routes, wired as the daemon wires them.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, policy::AllowListPolicy, tls::CertificateChecker,
};
use agw_dataplane::{
    Dataplane, DataplaneConfig, events::spawn_local_routes, routing::RoutingTable,
};
use agw_proto::{
    identity::{AgentId, Domain, GatewayId},
    pb,
};
use agw_sdk::agent::Credentials;

/// Why the gateway or an agent could not be set up.
pub type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// A gateway with its own authority, for load.
pub struct InProcessGateway {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
    /// The running shards.
    pub dataplane: Dataplane,
}

impl std::fmt::Debug for InProcessGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessGateway")
            .field("dataplane", &self.dataplane)
            .finish_non_exhaustive()
    }
}

impl InProcessGateway {
    /// Starts a gateway for `domain` with `shards` shards on a free loopback port.
    pub fn start(domain: &str, shards: usize, pin: bool) -> Result<InProcessGateway, SetupError> {
        let dir = tempfile::tempdir()?;
        let domain = Domain::new(domain)?;
        let config = AuthorityConfig::new(domain.clone(), dir.path(), "http://127.0.0.1:1/crl");
        let now = SystemTime::now();
        let ca = CertificateAuthority::bootstrap(
            config,
            Box::new(AllowListPolicy::default().allow("Load", [])),
            now - Duration::from_secs(60),
        )?;
        let checker = CertificateChecker::new(ca.trust_anchor(), &[ca.crl(now)?.der])?;
        let gateway = GatewayId::new(&domain, "load-1")?;
        let mut config = DataplaneConfig::new(gateway, "127.0.0.1:0".parse()?);
        config.shards = shards;
        config.pin_cores = pin;
        let table = RoutingTable::new();
        let reader = table.reader();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        spawn_local_routes(table, events_rx)?;
        let dataplane = Dataplane::start(config, reader, checker, events_tx)?;
        Ok(InProcessGateway {
            _dir: dir,
            ca,
            dataplane,
        })
    }

    /// Certifies an agent called `name`.
    pub fn certify(&self, name: &str) -> Result<Arc<Credentials>, SetupError> {
        let agent = AgentId::new(self.ca.domain(), name)?;
        let ca = &self.ca;
        let ask = |app: pb::CertificateApplication| {
            ca.handle(&app.into(), SystemTime::now()).ok_or("no answer")
        };
        Ok(Arc::new(Credentials::enroll(agent, "Load", ask)?))
    }
}
