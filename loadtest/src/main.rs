//! `agw-loadtest`: sender/receiver pairs of agents through a gateway started in this process;
//! prints throughput, latency percentiles, NACKs and the relay's CPU time, and can write JSON.

use std::{
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use agw_loadtest::{InProcessGateway, cpu::threads_cpu};
use agw_sdk::agent::{AgentConnection, Incoming};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Pairs of agents through one gateway: each sender writes to its receiver. Closed loop (the
/// default) writes as fast as the gateway takes; open loop (`--rate`) sends on a schedule and
/// measures each message's latency from its intended send time, so a stalled gateway shows as
/// latency instead of hiding as fewer sends (no coordinated omission).
#[derive(Debug, Parser)]
#[command(name = "agw-loadtest", version)]
struct Args {
    /// Sender/receiver pairs (two agents each).
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Payload bytes per message (at least 8: the send time travels in them).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=1_048_576))]
    size: u32,
    /// Gateway shards.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Pin shards to cores.
    #[arg(long)]
    pin: bool,
    /// Seconds of measurement (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Messages per second per sender (open loop); 0: as fast as possible (closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages a closed-loop sender writes at once.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// What relays the messages: this project's gateway (started here), or a nats-server
    /// already running at `--nats-url` (one subject per receiving agent).
    #[arg(long, value_enum, default_value = "agw")]
    target: Target,
    /// The nats-server to use with `--target nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Agw,
    Nats,
}

#[derive(Debug, Serialize)]
struct Report {
    target: Target,
    pairs: usize,
    size: u32,
    shards: usize,
    rate_per_sender: u64,
    seconds: f64,
    delivered: u64,
    delivered_per_second: f64,
    nacked: u64,
    relay_cpu_seconds: Option<f64>,
    delivered_per_relay_cpu_second: Option<f64>,
    latency_us: Latency,
}

#[derive(Debug, Serialize)]
struct Latency {
    samples: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agw-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn run(args: &Args) -> Result<(), Error> {
    if args.pairs == 0 || args.batch == 0 || args.seconds == 0 {
        return Err("--pairs, --batch and --seconds must be above 0".into());
    }
    if args.target == Target::Nats {
        return run_nats(args);
    }
    let gw = InProcessGateway::start("load.example", args.shards, args.pin)?;
    let addr = gw.dataplane.local_addr();
    eprintln!(
        "gateway on {addr}, {} shard(s); {} pairs, {} B payloads, {}",
        args.shards,
        args.pairs,
        args.size,
        match args.rate {
            0 => "closed loop".to_owned(),
            r => format!("open loop at {r}/s per sender"),
        }
    );
    // Every agent connects before any sends: access under full load is not what is measured.
    let mut pairs = Vec::new();
    for p in 0..args.pairs {
        let from = gw.certify(&format!("sender-{p}"))?;
        let to = gw.certify(&format!("receiver-{p}"))?;
        let sender = AgentConnection::connect(addr, from, Duration::from_secs(10))?;
        let receiver = AgentConnection::connect(addr, to.clone(), Duration::from_secs(2))?;
        pairs.push((sender, receiver, to));
    }
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        60_000_000_000,
        3,
    )?));
    for (sender, receiver, to) in pairs {
        let (mut writer, sender_reader) = sender.split();
        let (receiver_writer, mut reader) = receiver.split();
        let destination = to.agent.to_string();
        let (size, batch, rate) = (args.size as usize, args.batch, args.rate);
        let stop_s = stop.clone();
        std::thread::spawn(move || {
            // Keep the sender's reading half alive: NACKs land there.
            let _keep = sender_reader;
            let start = epoch.elapsed();
            let mut sent: u64 = 0;
            while !stop_s.load(Ordering::Relaxed) {
                // Open loop: every message whose time has come; closed loop: a batch.
                let due = match rate {
                    0 => sent + batch as u64,
                    r => {
                        let elapsed = epoch.elapsed().saturating_sub(start);
                        (elapsed.as_secs_f64() * r as f64) as u64
                    }
                };
                if due <= sent {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for k in sent..due {
                    let intended = match rate {
                        0 => epoch.elapsed(),
                        r => start + Duration::from_secs_f64(k as f64 / r as f64),
                    };
                    let mut payload = BytesMut::with_capacity(size);
                    payload.put_u64(intended.as_nanos() as u64);
                    payload.resize(size, 0x42);
                    if writer.queue(&destination, payload.freeze()).is_err() {
                        return;
                    }
                }
                sent = due;
                if writer.flush().is_err() {
                    return;
                }
            }
        });
        let (stop_r, measuring_r, histogram_r) =
            (stop.clone(), measuring.clone(), histogram.clone());
        std::thread::spawn(move || {
            let _keep = receiver_writer;
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).ok();
            while !stop_r.load(Ordering::Relaxed) {
                match reader.recv() {
                    Ok(Incoming::Message(m, _)) => {
                        if measuring_r.load(Ordering::Relaxed)
                            && let (Some(h), Some(sent)) = (local.as_mut(), sent_at(&m.payload))
                        {
                            let latency = epoch.elapsed().as_nanos() as u64;
                            let _ = h.record(latency.saturating_sub(sent).max(1));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if let (Some(h), Ok(mut all)) = (local, histogram_r.lock()) {
                let _ = all.add(h);
            }
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    measuring.store(true, Ordering::Relaxed);
    let start = (
        Instant::now(),
        gw.dataplane.totals(),
        threads_cpu("agw-shard"),
    );
    for s in 1..=args.seconds {
        std::thread::sleep(Duration::from_secs(1));
        let t = gw.dataplane.totals();
        eprintln!(
            "[{s}/{}] delivered {} ({:.0}/s so far)",
            args.seconds,
            t.delivered - start.1.delivered,
            (t.delivered - start.1.delivered) as f64 / start.0.elapsed().as_secs_f64()
        );
    }
    let end = (
        Instant::now(),
        gw.dataplane.totals(),
        threads_cpu("agw-shard"),
    );
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    // Receivers leave when their read times out (2 s) and merge their histograms.
    std::thread::sleep(Duration::from_millis(2500));

    let secs = end.0.duration_since(start.0).as_secs_f64();
    let delivered = end.1.delivered - start.1.delivered;
    let cpu = match (start.2, end.2) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let h = histogram.lock().map_err(|_| "histogram poisoned")?;
    let report = Report {
        target: Target::Agw,
        pairs: args.pairs,
        size: args.size,
        shards: args.shards,
        rate_per_sender: args.rate,
        seconds: secs,
        delivered,
        delivered_per_second: delivered as f64 / secs,
        nacked: end.1.nacked_total() - start.1.nacked_total(),
        relay_cpu_seconds: cpu,
        delivered_per_relay_cpu_second: cpu.filter(|c| *c > 0.0).map(|c| delivered as f64 / c),
        latency_us: latency(&h),
    };
    print_report(args, &report)
}

fn print_report(args: &Args, report: &Report) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "pairs {} size {} B shards {} rate {}",
        report.pairs,
        report.size,
        report.shards,
        match report.rate_per_sender {
            0 => "closed loop".to_owned(),
            r => format!("{r}/s per sender"),
        }
    )?;
    writeln!(
        out,
        "delivered      {} in {:.2} s = {:.0} msg/s",
        report.delivered, report.seconds, report.delivered_per_second
    )?;
    writeln!(out, "nacked         {}", report.nacked)?;
    if let (Some(cpu), Some(per)) = (
        report.relay_cpu_seconds,
        report.delivered_per_relay_cpu_second,
    ) {
        writeln!(
            out,
            "relay cpu      {cpu:.2} s = {per:.0} msg per relay CPU-second"
        )?;
    }
    let l = &report.latency_us;
    writeln!(
        out,
        "latency (us)   p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)",
        l.p50, l.p90, l.p99, l.p999, l.max, l.samples
    )?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
        writeln!(out, "written        {}", path.display())?;
    }
    Ok(())
}

fn latency(h: &Histogram<u64>) -> Latency {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        samples: h.len(),
        p50: us(0.5),
        p90: us(0.9),
        p99: us(0.99),
        p999: us(0.999),
        max: h.max() as f64 / 1000.0,
    }
}

/// The same pairs through a nats-server; its CPU read from /proc by process name.
fn run_nats(args: &Args) -> Result<(), Error> {
    eprintln!(
        "nats-server at {}; {} pairs, {} B payloads",
        args.nats_url, args.pairs, args.size
    );
    let cpu = Mutex::new((None, None));
    let run = agw_loadtest::nats::run(
        &args.nats_url,
        args.pairs,
        args.size as usize,
        args.rate,
        args.seconds,
        |start| {
            if let Ok(mut c) = cpu.lock() {
                let now = agw_loadtest::cpu::process_cpu("nats-server");
                if start {
                    c.0 = now;
                } else {
                    c.1 = now;
                }
            }
        },
        |s, received| eprintln!("[{s}/{}] received {received}", args.seconds),
    )?;
    let (a, b) = *cpu.lock().map_err(|_| "cpu poisoned")?;
    let cpu = match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    let report = Report {
        target: Target::Nats,
        pairs: args.pairs,
        size: args.size,
        shards: 0,
        rate_per_sender: args.rate,
        seconds: run.seconds,
        delivered: run.delivered,
        delivered_per_second: run.delivered as f64 / run.seconds,
        nacked: 0,
        relay_cpu_seconds: cpu,
        delivered_per_relay_cpu_second: cpu.filter(|c| *c > 0.0).map(|c| run.delivered as f64 / c),
        latency_us: latency(&run.histogram),
    };
    print_report(args, &report)
}

/// The send time a payload carries (its first 8 bytes, nanoseconds since the run's epoch).
fn sent_at(payload: &Bytes) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}
