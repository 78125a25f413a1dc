//! `agw-ars`: the Agent Registration Server as a standalone server over mutual TLS, for a
//! registry shared by several gateways. (The `agw` daemon embeds the same registry by default.)

use std::{
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use agw_aca::tls::{CertificateChecker, TlsIdentity, peer_identity};
use agw_ars::{Registry, RegistryConfig, service::REQUESTS};
use agw_proto::{Message, identity::Domain, pb::ErrorCode};
use agw_rpc::{Endpoint, LimitArgs, notification};
use clap::Parser;

/// Agent Registration Server: agents register their profiles with their ACA certificate and
/// discover collaborators by capability, over mutual TLS.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The domain whose agents register here.
    #[arg(long)]
    domain: String,
    /// Directory for the profile database.
    #[arg(long, default_value = "ars-data")]
    data_dir: PathBuf,
    /// Address for the protocol (mutual TLS).
    #[arg(long, default_value = "127.0.0.1:7820")]
    listen: String,
    /// The server's certificate chain (PEM), issued by the domain's ACA.
    #[arg(long)]
    cert: PathBuf,
    /// The server's private key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// The ACA's trust anchor (PEM).
    #[arg(long)]
    trust_anchor: PathBuf,
    /// The ACA's current CRL (DER), re-read when the file changes: fetch it from the ACA's
    /// distribution point (e.g. with curl) as often as you like.
    #[arg(long)]
    crl: PathBuf,
    /// Discovery requests each agent may make per minute.
    #[arg(long, default_value_t = 60)]
    discovery_per_minute: u32,
    /// Registrations one certificate may make over its life.
    #[arg(long, default_value_t = 16)]
    max_registrations_per_certificate: u32,
    #[command(flatten)]
    limits: LimitArgs,
}

fn main() {
    let args = Args::parse();
    agw_rpc::init_logs("info");
    if let Err(e) = run(args) {
        eprintln!("agw-ars: {e}");
        std::process::exit(1);
    }
}

fn pem_blocks(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let blocks = pem::parse_many(text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(blocks.into_iter().map(|b| b.into_contents()).collect())
}

fn first_block(path: &Path) -> Result<Vec<u8>, String> {
    pem_blocks(path)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{}: no PEM block", path.display()))
}

/// The CRL file and the checker built from it, rebuilt when the file's mtime changes.
struct Crl {
    path: PathBuf,
    anchor: Vec<u8>,
    seen: Option<SystemTime>,
}

impl Crl {
    fn refresh(&mut self) -> Result<Option<CertificateChecker>, String> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified == self.seen {
            return Ok(None);
        }
        let der = std::fs::read(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let checker = CertificateChecker::new(&self.anchor, &[der])
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.seen = modified;
        Ok(Some(checker))
    }
}

fn run(args: Args) -> Result<(), String> {
    let domain = Domain::new(&args.domain).map_err(|e| format!("--domain {}: {e}", args.domain))?;
    let anchor = first_block(&args.trust_anchor)?;
    let mut crl = Crl {
        path: args.crl.clone(),
        anchor: anchor.clone(),
        seen: None,
    };
    let checker = crl.refresh()?.ok_or("CRL unreadable")?;
    let identity = TlsIdentity {
        chain: pem_blocks(&args.cert)?,
        key_pkcs8: first_block(&args.key)?,
        trust_anchor: anchor,
        crls: vec![std::fs::read(&args.crl).map_err(|e| e.to_string())?].into(),
        allow_unknown_revocation: false,
        renewable: None,
    };
    let tls = Arc::new(identity.server_config().map_err(|e| format!("TLS: {e}"))?);

    let mut config = RegistryConfig::new(domain, &args.data_dir);
    config.discovery_per_minute = args.discovery_per_minute;
    config.max_registrations_per_certificate = args.max_registrations_per_certificate;
    let registry = Registry::open(config, checker).map_err(|e| e.to_string())?;
    // No peers to tell of changes: the registry's owner keeps them to itself.
    let registry = agw_ars::owner::spawn(registry, |_| {}).map_err(|e| e.to_string())?;
    let crl = Mutex::new(crl);

    let listener =
        TcpListener::bind(&args.listen).map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "agw-ars: domain {} listening on {addr} (mutual TLS)",
        args.domain
    );
    let _ = out.flush();

    let handler = Arc::new(move |request: &Message, caller: &agw_rpc::Caller, now| {
        // New CRL on disk: registrations check against it from now on (the change is queued
        // before this request). TLS handshakes keep the CRL they started with until a restart.
        if let Ok(Some(checker)) = crl.lock().map_or(Ok(None), |mut crl| crl.refresh()) {
            registry.change(move |r| r.set_certificate_checker(checker));
        }
        match caller.identity.as_deref() {
            Some(peer) => registry.serve(request, peer, now),
            None => Some(notification(
                ErrorCode::NotAccessed,
                "no client certificate",
            )),
        }
    });
    let runtime = agw_rpc::runtime("agw-ars").map_err(|e| e.to_string())?;
    let _endpoint = Endpoint::tcp(
        runtime.handle(),
        listener,
        Some((tls, peer_identity)),
        handler,
        agw_rpc::ServerLimits {
            inline: agw_ars::service::QUICK,
            ..args.limits.limits(REQUESTS)
        },
    )
    .map_err(|e| e.to_string())?;
    // It serves until the process is stopped.
    runtime.block_on(std::future::pending::<()>());
    Ok(())
}
