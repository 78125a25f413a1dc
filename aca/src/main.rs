//! `agw-aca`: the Agent Certificate Authority as a standalone server, for a CA shared by
//! several gateways. (The `agw` daemon embeds the same authority by default.)

use std::{
    io::Write as _,
    net::TcpListener,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agw_aca::{
    AuthorityConfig, CertificateAuthority, RootMode,
    enrollment::operator_policy,
    http::{CrlHttpServer, crl_url, url_path},
    service::REQUESTS,
};
use agw_proto::identity::Domain;
use agw_rpc::{Endpoint, LimitArgs};
use clap::Parser;

/// Agent Certificate Authority: issues, renews and revokes X.509 certificates for the agents
/// and gateways of one domain, and publishes its CRL over HTTP.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The domain whose identities it certifies (spiffe://<domain>/...).
    #[arg(long)]
    domain: String,
    /// Directory for the CA key (created mode 0600), certificates and the database.
    #[arg(long, default_value = "aca-data")]
    data_dir: PathBuf,
    /// Address for the protocol (certificate applications, renewals, revocations, status).
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: String,
    /// Address of the HTTP server that publishes the CRL.
    #[arg(long, default_value = "127.0.0.1:7810")]
    crl_listen: String,
    /// URL written into certificates as their CRL distribution point: where relying parties
    /// fetch the CRL [default: http://<crl-listen>/crl/<domain>.crl; needed when --crl-listen
    /// is a wildcard address].
    #[arg(long)]
    crl_url: Option<String>,
    /// An organisation allowed to apply, with the permission scopes it may grant:
    /// `--allow "Acme Travel=booking,payments"`. Repeatable.
    /// Each enrolls with its token, which the authority makes and keeps in
    /// DATA_DIR/enrollment-tokens (0600): hand each organisation its own.
    #[arg(long = "allow", value_name = "ORG=SCOPE,...")]
    allow: Vec<String>,
    /// An organisation anyone may enroll in without a token (tests, closed networks; warned
    /// about at start). Repeatable.
    #[arg(long = "open-enrollment", value_name = "ORG")]
    open_enrollment: Vec<String>,
    /// Certificate applications one organisation may make per minute (as many at once).
    #[arg(long, default_value_t = 6_000)]
    applications_per_minute: u32,
    /// Certificate applications one source address may make per minute (as many at once).
    #[arg(long, default_value_t = 600)]
    applications_per_minute_per_source: u32,
    /// Lifetime of agent certificates, in days.
    #[arg(long, default_value_t = 30)]
    agent_validity_days: u64,
    /// Lifetime of gateway certificates, in days.
    #[arg(long, default_value_t = 90)]
    gateway_validity_days: u64,
    /// Be an intermediate under this operator root certificate (PEM) instead of a
    /// self-signed root; read at first start only. Needs --root-key.
    #[arg(long, requires = "root_key")]
    root_cert: Option<PathBuf>,
    /// The operator root's key (PKCS#8 PEM); read at first start only.
    #[arg(long, requires = "root_cert")]
    root_key: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
}

fn main() {
    let args = Args::parse();
    agw_rpc::init_logs("info");
    if let Err(e) = run(args) {
        eprintln!("agw-aca: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let domain = Domain::new(&args.domain).map_err(|e| format!("--domain {}: {e}", args.domain))?;
    let (policy, mut tokens) = operator_policy(
        &args.allow,
        &args.open_enrollment,
        // No admin socket here to approve from: approval is the daemon's.
        &[],
        &args.data_dir.join("enrollment-tokens"),
    )
    .map_err(|e| format!("enrollment tokens: {e}"))?;
    for org in policy.open_organizations() {
        eprintln!("agw-aca: open enrollment: anyone naming {org:?} is certified");
    }
    let crl_listener = TcpListener::bind(&args.crl_listen)
        .map_err(|e| format!("--crl-listen {}: {e}", args.crl_listen))?;
    let crl_addr = crl_listener.local_addr().map_err(|e| e.to_string())?;
    let crl_url = crl_url(args.crl_url.as_deref(), crl_addr, domain.as_str())?;
    let mut config = AuthorityConfig::new(domain, &args.data_dir, crl_url.clone());
    config.agent_validity = Duration::from_secs(args.agent_validity_days * 86_400);
    config.applications_per_minute = args.applications_per_minute;
    config.applications_per_minute_per_source = args.applications_per_minute_per_source;
    config.gateway_validity = Duration::from_secs(args.gateway_validity_days * 86_400);
    if let (Some(root_cert), Some(root_key)) = (args.root_cert, args.root_key) {
        config.root = RootMode::Intermediate {
            root_cert,
            root_key,
        };
    }
    let authority = Arc::new(
        CertificateAuthority::bootstrap(config, Box::new(policy), SystemTime::now())
            .map_err(|e| format!("bootstrap in {}: {e}", args.data_dir.display()))?,
    );
    tokens
        .save()
        .map_err(|e| format!("{}: {e}", tokens.path().display()))?;
    let runtime = agw_rpc::runtime("agw-aca").map_err(|e| e.to_string())?;
    let crl_server = CrlHttpServer::from_listener(
        runtime.handle(),
        crl_listener,
        Arc::clone(&authority),
        url_path(&crl_url),
    )
    .map_err(|e| format!("CRL server on {crl_addr}: {e}"))?;
    let listener =
        TcpListener::bind(&args.listen).map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Where to reach it; a closed stdout must not stop the server.
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "agw-aca: domain {} listening on {addr}",
        authority.domain()
    );
    let _ = writeln!(
        out,
        "agw-aca: CRL at {crl_url} (served on {})",
        crl_server.local_addr()
    );
    let _ = writeln!(
        out,
        "agw-aca: trust anchor in {}",
        args.data_dir.join("trust-anchor.pem").display()
    );
    let _ = writeln!(
        out,
        "agw-aca: enrollment tokens (hand each organisation its own) in {}",
        tokens.path().display()
    );
    let _ = out.flush();
    let handler = Arc::new(
        move |request: &agw_proto::Message, caller: &agw_rpc::Caller, now| {
            authority.handle_from(request, caller.address, now)
        },
    );
    let _endpoint = Endpoint::tcp(
        runtime.handle(),
        listener,
        None,
        handler,
        args.limits.limits(REQUESTS),
    )
    .map_err(|e| e.to_string())?;
    // It serves until the process is stopped.
    runtime.block_on(std::future::pending::<()>());
    Ok(())
}
