//! `agw-discovery-load`: discovery requests per second through a registry server, from many
//! concurrent agents over mutual TLS, with latency percentiles.
//!
//! ```text
//! agw-discovery-load --ars target/release/agw-ars [--clients 64] [--profiles 1000] [--seconds 5]
//!                    [--writers 0]
//! ```
//!
//! It makes an authority in a temporary directory, gives the registry server (the `agw-ars`
//! binary named, of any version that speaks the protocol) a gateway certificate and the CRL,
//! registers `--profiles` agents, then runs `--clients` agents each asking for a capability in
//! a closed loop over its own connection; with `--writers N`, N of the registered agents update
//! their profiles in a closed loop meanwhile (each update is a durable write), so the figures
//! show whether discovery waits for writes. Loopback only; bounded in time.

use std::{
    io::{BufRead, BufReader, Write as _},
    process::{Child, Command, Stdio},
    sync::{Arc, Barrier},
    time::{Duration, Instant, SystemTime},
};

use agw_aca::{AuthorityConfig, CertificateAuthority, policy::AllowListPolicy, tls::TlsIdentity};
use agw_proto::{
    Message,
    identity::{AgentId, Domain, GatewayId},
    pb,
};
use agw_sdk::{agent::Credentials, certificates::AgentKey, connection::Connection};
use clap::Parser;
use hdrhistogram::Histogram;

type Error = Box<dyn std::error::Error + Send + Sync>;

const DOMAIN: &str = "load.example";
const ARS: &str = "spiffe://load.example/agw/ars";

/// Discovery load against a registry server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The agw-ars binary to start.
    #[arg(long)]
    ars: String,
    /// Concurrent agents asking.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Profiles registered before the run.
    #[arg(long, default_value_t = 1000)]
    profiles: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Registered agents that update their profiles in a closed loop during the run.
    #[arg(long, default_value_t = 0)]
    writers: usize,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("agw-discovery-load: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let now = SystemTime::now();
    let ca = Arc::new(CertificateAuthority::bootstrap(
        AuthorityConfig::new(
            Domain::new(DOMAIN)?,
            dir.path().join("aca"),
            "http://127.0.0.1:1/crl",
        ),
        Box::new(AllowListPolicy::default().allow("Load", [])),
        now - Duration::from_secs(60),
    )?);
    let key = AgentKey::generate()?;
    let issued = ca.issue_gateway(&GatewayId::parse(ARS)?, &key.csr(ARS)?, now)?;
    let files = dir.path();
    let chain: String = issued.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    std::fs::write(files.join("ars.pem"), chain)?;
    std::fs::write(files.join("ars.key"), key.to_pem())?;
    std::fs::write(
        files.join("anchor.pem"),
        pem("CERTIFICATE", ca.trust_anchor()),
    )?;
    std::fs::write(files.join("crl.der"), ca.crl(now)?.der)?;
    let mut child = Command::new(&args.ars)
        .args(["--domain", DOMAIN, "--listen", "127.0.0.1:0"])
        .args(["--discovery-per-minute", "100000000"])
        .args(["--max-registrations-per-certificate", "1000000"])
        // Every client dials from 127.0.0.1.
        .args(["--max-connections-per-source", "4096"])
        .arg("--data-dir")
        .arg(files.join("ars-data"))
        .arg("--cert")
        .arg(files.join("ars.pem"))
        .arg("--key")
        .arg(files.join("ars.key"))
        .arg("--trust-anchor")
        .arg(files.join("anchor.pem"))
        .arg("--crl")
        .arg(files.join("crl.der"))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let server = Server(child);
    let first = BufReader::new(stdout)
        .lines()
        .next()
        .ok_or("the server said nothing")??;
    let addr = first
        .split_whitespace()
        .nth(5)
        .ok_or_else(|| format!("no address in {first:?}"))?
        .to_owned();

    let client = |who: &Credentials| -> Result<agw_sdk::connection::TlsConnection, Error> {
        let identity = TlsIdentity {
            chain: who.certificate.chain.iter().map(|c| c.to_vec()).collect(),
            key_pkcs8: who.key.to_pkcs8_der(),
            trust_anchor: ca.trust_anchor().to_vec(),
            crls: Default::default(),
            allow_unknown_revocation: true,
            renewable: None,
        };
        let config = Arc::new(identity.client_config(ARS)?);
        Ok(Connection::connect_tls(
            &addr,
            Duration::from_secs(5),
            config,
        )?)
    };
    let enroll = |name: String| -> Result<Credentials, Error> {
        let agent = AgentId::new(&Domain::new(DOMAIN)?, &name)?;
        let ask = |app: pb::CertificateApplication| {
            ca.handle(&app.into(), SystemTime::now()).ok_or("no answer")
        };
        Ok(Credentials::enroll(agent, "Load", "", ask)?)
    };

    // The profiles, each registered by its own agent (the registry requires it).
    eprintln!("registering {} profiles...", args.profiles);
    let mut writers = Vec::new();
    for i in 0..args.profiles {
        let holder = enroll(format!("p{i}"))?;
        let request = pb::RegisterRequest {
            request_id: i as u64,
            profile: Some(pb::AgentProfile {
                agent: holder.agent.to_string(),
                capabilities: vec![format!("skill-{}", i % 50), "hotel booking".into()],
                address: format!("127.0.0.1:9/{i}"),
                ..Default::default()
            }),
            certificate_chain: holder.certificate.chain.clone(),
        };
        let mut own = client(&holder)?;
        match own.request(request)? {
            Message::RegisterReply(r) if r.error.is_none() => {
                if writers.len() < args.writers {
                    writers.push((holder, r.profile.ok_or("no profile in the reply")?));
                }
            }
            other => return Err(format!("registration refused: {other:?}").into()),
        }
    }

    let clients: Vec<Credentials> = (0..args.clients)
        .map(|i| enroll(format!("asker{i}")))
        .collect::<Result<_, _>>()?;
    let barrier = Arc::new(Barrier::new(args.clients + writers.len() + 1));
    let duration = Duration::from_secs_f64(args.seconds);
    let mut updaters = Vec::new();
    for (holder, mut profile) in writers {
        let mut conn = client(&holder)?;
        let barrier = Arc::clone(&barrier);
        updaters.push(std::thread::spawn(move || -> Result<u64, String> {
            barrier.wait();
            let end = Instant::now() + duration;
            let mut done = 0u64;
            while Instant::now() < end {
                done += 1;
                profile.description = format!("update {done}");
                let update = pb::UpdateRequest {
                    request_id: done,
                    profile: Some(profile.clone()),
                };
                match conn.request(update).map_err(|e| e.to_string())? {
                    Message::UpdateReply(r) if r.error.is_none() => {}
                    other => return Err(format!("update refused: {other:?}")),
                }
            }
            Ok(done)
        }));
    }
    let mut threads = Vec::new();
    for (i, who) in clients.into_iter().enumerate() {
        let mut conn = client(&who)?;
        let barrier = Arc::clone(&barrier);
        threads.push(std::thread::spawn(
            move || -> Result<Histogram<u64>, String> {
                let mut latency = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
                barrier.wait();
                let end = Instant::now() + duration;
                let mut id = 0u64;
                while Instant::now() < end {
                    id += 1;
                    let query = pb::DiscoverRequest {
                        request_id: id,
                        capabilities: vec![format!("skill-{}", (i + id as usize) % 50)],
                        limit: 10,
                        ..Default::default()
                    };
                    let asked = Instant::now();
                    match conn.request(query).map_err(|e| e.to_string())? {
                        Message::DiscoverReply(r) if r.error.is_none() => {}
                        other => return Err(format!("discovery refused: {other:?}")),
                    }
                    let _ = latency.record(asked.elapsed().as_micros() as u64);
                }
                Ok(latency)
            },
        ));
    }
    let start = Instant::now();
    barrier.wait();
    let mut all = Histogram::<u64>::new(3)?;
    for t in threads {
        let h = t.join().map_err(|_| "a client panicked")??;
        all.add(h)?;
    }
    let mut updates = 0;
    for t in updaters {
        updates += t.join().map_err(|_| "a writer panicked")??;
    }
    let took = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{} clients, {} profiles: {:.0} discoveries/s; latency p50 {} us, p99 {} us, max {} us",
        args.clients,
        args.profiles,
        all.len() as f64 / took,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.max()
    )?;
    if args.writers > 0 {
        writeln!(
            out,
            "{} writers: {:.0} updates/s",
            args.writers,
            updates as f64 / took
        )?;
    }
    drop(server);
    Ok(())
}
