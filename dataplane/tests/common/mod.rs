//! A gateway on loopback for tests: a real certificate authority, the shards, and the keeper of
//! local routes, as the daemon wires them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, policy::AllowListPolicy, tls::CertificateChecker,
};
use agw_dataplane::{
    CounterSnapshot, Dataplane, DataplaneConfig,
    events::spawn_local_routes,
    routing::{Route, RoutingTable},
};
use agw_proto::{
    identity::{AgentId, Domain, GatewayId},
    pb,
};
use agw_sdk::agent::{AgentConnection, Credentials};

pub const DOMAIN: &str = "travel.example";

pub struct Authority {
    _dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

pub fn authority(domain: &str) -> Authority {
    let dir = tempfile::tempdir().unwrap();
    let config = AuthorityConfig::new(
        Domain::new(domain).unwrap(),
        dir.path(),
        "http://127.0.0.1:1/crl",
    );
    let ca = CertificateAuthority::bootstrap(
        config,
        Box::new(AllowListPolicy::default().allow("Acme", [])),
        SystemTime::now() - Duration::from_secs(60),
    )
    .unwrap();
    Authority { _dir: dir, ca }
}

impl Authority {
    /// A TLS identity for `gateway`, certified by this authority.
    pub fn gateway_tls(&self, gateway: &str) -> agw_aca::tls::TlsIdentity {
        let id = GatewayId::parse(gateway).unwrap();
        let key = agw_sdk::certificates::AgentKey::generate().unwrap();
        let issued = self
            .ca
            .issue_gateway(&id, &key.csr(gateway).unwrap(), SystemTime::now())
            .unwrap();
        agw_aca::tls::TlsIdentity {
            chain: issued.chain,
            key_pkcs8: key.to_pkcs8_der(),
            trust_anchor: self.ca.trust_anchor().to_vec(),
            crls: vec![self.ca.crl(SystemTime::now()).unwrap().der].into(),
            allow_unknown_revocation: false,
            renewable: None,
        }
    }

    pub fn certify(&self, name: &str) -> Arc<Credentials> {
        let agent = AgentId::new(self.ca.domain(), name).unwrap();
        let ca = &self.ca;
        let ask = |app: pb::CertificateApplication| {
            ca.handle(&app.into(), SystemTime::now()).ok_or("no answer")
        };
        Arc::new(Credentials::enroll(agent, "Acme", "", ask).unwrap())
    }

    pub fn checker(&self) -> CertificateChecker {
        CertificateChecker::new(
            self.ca.trust_anchor(),
            &[self.ca.crl(SystemTime::now()).unwrap().der],
        )
        .unwrap()
    }
}

pub struct Gateway {
    pub dp: Dataplane,
    pub authority: Authority,
}

pub fn gateway(shards: usize, tweak: impl FnOnce(&mut DataplaneConfig)) -> Gateway {
    gateway_of(shards, |config, _| tweak(config))
}

/// [`gateway`], the tweak seeing the authority too (to certify the gateway itself).
pub fn gateway_of(shards: usize, tweak: impl FnOnce(&mut DataplaneConfig, &Authority)) -> Gateway {
    let authority = authority(DOMAIN);
    let mut config = DataplaneConfig::new(
        GatewayId::parse("spiffe://travel.example/agw/edge-1").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.shards = shards;
    config.pin_cores = false;
    config.tick = Duration::from_millis(20);
    tweak(&mut config, &authority);
    let table = RoutingTable::new();
    let reader = table.reader();
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    spawn_local_routes(table, events_rx).unwrap();
    let dp = Dataplane::start(config, reader, authority.checker(), events_tx).unwrap();
    Gateway { dp, authority }
}

impl Gateway {
    pub fn addr(&self) -> SocketAddr {
        self.dp.local_addr()
    }

    pub fn connect(&self, credentials: &Arc<Credentials>) -> AgentConnection {
        AgentConnection::connect_plaintext(
            self.addr(),
            credentials.clone(),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// The shard an accessed agent is on.
    pub fn shard_of(&self, agent: &AgentId) -> u16 {
        match self.dp.route_of(agent.as_str()) {
            Some(Route::Local { shard, .. }) => shard,
            other => panic!("{agent} is not local: {other:?}"),
        }
    }

    /// Waits until `agent`'s route satisfies `pred`.
    pub fn wait_route(&self, agent: &AgentId, pred: impl Fn(Option<Route>) -> bool) {
        wait_until(|| pred(self.dp.route_of(agent.as_str())), "route");
    }

    /// The counters once nothing is in flight; asserts the delivery guarantee.
    pub fn settled_totals(&self) -> CounterSnapshot {
        wait_until(|| self.dp.totals().in_flight() == 0, "frames in flight");
        let t = self.dp.totals();
        assert_eq!(
            t.accepted,
            t.delivered + t.nacked_total() + t.discarded,
            "{t:?}"
        );
        t
    }
}

pub fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
