//! One gateway process: the embedded certificate authority (its protocol port and its CRL over
//! HTTP), the relay's shards, and the keeper of local routes, until SIGINT or SIGTERM.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority,
    http::{CrlHttpServer, url_path},
    policy::AllowListPolicy,
    server::{ServerLimits, serve},
    tls::CertificateChecker,
};
use agw_dataplane::{
    Dataplane, DataplaneConfig, events::spawn_local_routes, routing::RoutingTable,
};
use agw_proto::identity::{Domain, GatewayId};
use clap::Parser;

/// The Agent Gateway daemon: agents connect to it, prove their certificate and exchange
/// messages through it. With no options it runs a single-node gateway for the domain
/// `local.agw`, keeping its certificate authority under `./agw-data`.
#[derive(Debug, Parser)]
#[command(name = "agw", version)]
pub struct DaemonArgs {
    /// The domain this gateway serves (agents are spiffe://DOMAIN/agent/NAME).
    #[arg(long, default_value = "local.agw")]
    pub domain: String,
    /// This gateway's name within the domain (its ID is spiffe://DOMAIN/agw/NAME).
    #[arg(long, default_value = "agw-1")]
    pub name: String,
    /// Where state lives (the certificate authority's keys and store).
    #[arg(long, default_value = "agw-data")]
    pub data_dir: PathBuf,
    /// Where agents connect (the relay).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Where agents apply for certificates (the ACA protocol).
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub aca_listen: SocketAddr,
    /// Where the certificate revocation list is served over HTTP.
    #[arg(long, default_value = "127.0.0.1:7402")]
    pub crl_listen: SocketAddr,
    /// Organisations allowed certificates, with their permitted scopes: ORG=SCOPE,SCOPE.
    #[arg(
        long = "allow",
        value_name = "ORG=SCOPE,...",
        default_value = "Example"
    )]
    pub allow: Vec<String>,
    /// Relay shards (threads, one per core); default: one per CPU.
    #[arg(long)]
    pub shards: Option<usize>,
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(args: DaemonArgs) -> Result<(), String> {
    let domain = Domain::new(&args.domain).map_err(|e| format!("--domain {}: {e}", args.domain))?;
    let gateway =
        GatewayId::new(&domain, &args.name).map_err(|e| format!("--name {}: {e}", args.name))?;
    let mut policy = AllowListPolicy::default();
    for entry in &args.allow {
        let (org, scopes) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        policy = policy.allow(org, scopes.split(',').filter(|s| !s.is_empty()));
    }

    // The certificate authority, its CRL and its protocol port.
    let crl_listener = TcpListener::bind(args.crl_listen)
        .map_err(|e| format!("--crl-listen {}: {e}", args.crl_listen))?;
    let crl_addr = crl_listener.local_addr().map_err(|e| e.to_string())?;
    let crl_url = format!("http://{crl_addr}/crl/{domain}.crl");
    let aca_dir = args.data_dir.join("aca");
    let config = AuthorityConfig::new(domain.clone(), &aca_dir, crl_url.clone());
    let authority = Arc::new(
        CertificateAuthority::bootstrap(config, Box::new(policy), SystemTime::now())
            .map_err(|e| format!("certificate authority in {}: {e}", aca_dir.display()))?,
    );
    let crl_server =
        CrlHttpServer::from_listener(crl_listener, Arc::clone(&authority), url_path(&crl_url))
            .map_err(|e| format!("CRL server on {crl_addr}: {e}"))?;
    let aca_listener = TcpListener::bind(args.aca_listen)
        .map_err(|e| format!("--aca-listen {}: {e}", args.aca_listen))?;
    let aca_addr = aca_listener.local_addr().map_err(|e| e.to_string())?;
    let served = Arc::clone(&authority);
    let handler = Arc::new(
        move |request: &agw_proto::Message, _peer: Option<&str>, now| served.handle(request, now),
    );
    std::thread::Builder::new()
        .name("agw-aca".into())
        .spawn(move || serve(aca_listener, None, handler, ServerLimits::default()))
        .map_err(|e| e.to_string())?;

    // The relay.
    let now = SystemTime::now();
    let crl = authority.crl(now).map_err(|e| e.to_string())?;
    let checker =
        CertificateChecker::new(authority.trust_anchor(), &[crl.der]).map_err(|e| e.to_string())?;
    let mut config = DataplaneConfig::new(gateway.clone(), args.listen);
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    let shards = config.shards;
    let table = RoutingTable::new();
    let reader = table.reader();
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    spawn_local_routes(table, events_rx).map_err(|e| e.to_string())?;
    let dataplane =
        Dataplane::start(config, reader, checker, events_tx).map_err(|e| e.to_string())?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(|e| e.to_string())?;
    }

    let mut out = std::io::stdout();
    let _ = writeln!(out, "agw: gateway {gateway}, {shards} shard(s)");
    let _ = writeln!(out, "agw: agents connect to {}", dataplane.local_addr());
    let _ = writeln!(
        out,
        "agw: certificates from the ACA at {aca_addr} (organisations: {}); trust anchor in {}",
        args.allow.join(", "),
        aca_dir.join("trust-anchor.pem").display()
    );
    let _ = writeln!(
        out,
        "agw: CRL at {crl_url} (served on {})",
        crl_server.local_addr()
    );
    let _ = writeln!(out, "agw: Ctrl-C or SIGTERM stops it");
    let _ = out.flush();

    // Revocations reach the relay: a new CRL replaces the checker and closes the sessions of
    // the certificates it revokes.
    let mut crl_number = crl.number;
    let mut revoked: Vec<Vec<u8>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(crl) = authority.crl(SystemTime::now()) else {
            continue;
        };
        if crl.number != crl_number {
            crl_number = crl.number;
            let serials = agw_aca::revoked_serials(&crl.der).unwrap_or_default();
            let new: Vec<Vec<u8>> = serials
                .iter()
                .filter(|s| !revoked.contains(s))
                .cloned()
                .collect();
            revoked = serials;
            if let Ok(checker) = CertificateChecker::new(authority.trust_anchor(), &[crl.der]) {
                dataplane.set_checker(checker, new);
            }
        }
    }
    let totals = dataplane.totals();
    dataplane.stop();
    let _ = writeln!(
        out,
        "agw: stopped; {} frames accepted, {} delivered, {} NACKed",
        totals.accepted,
        totals.delivered,
        totals.nacked_total()
    );
    Ok(())
}
