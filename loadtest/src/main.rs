//! `agw-loadtest`: pipelined sender/receiver pairs through a gateway started in this process;
//! prints throughput, NACKs and the relay's CPU time.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agw_loadtest::{InProcessGateway, cpu::threads_cpu};
use agw_sdk::agent::{AgentConnection, Incoming};
use bytes::Bytes;
use clap::Parser;
use std::io::Write as _;

/// Closed-loop maximum throughput: each pair's sender writes messages as fast as the gateway
/// takes them, its receiver reads them; the gateway's own counters give the rate.
#[derive(Debug, Parser)]
#[command(name = "agw-loadtest", version)]
struct Args {
    /// Sender/receiver pairs (two agents each).
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
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
    /// Messages a sender writes at once.
    #[arg(long, default_value_t = 64)]
    batch: usize,
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

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if args.pairs == 0 || args.batch == 0 || args.seconds == 0 {
        return Err("--pairs, --batch and --seconds must be above 0".into());
    }
    let gw = InProcessGateway::start("load.example", args.shards, args.pin)?;
    let addr = gw.dataplane.local_addr();
    eprintln!(
        "gateway on {addr}, {} shard(s); {} pairs, {} B payloads",
        args.shards, args.pairs, args.size
    );
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // Every agent connects before any sends: access under full load is not what is measured.
    let mut pairs = Vec::new();
    for p in 0..args.pairs {
        let from = gw.certify(&format!("sender-{p}"))?;
        let to = gw.certify(&format!("receiver-{p}"))?;
        let sender = AgentConnection::connect(addr, from, Duration::from_secs(10))?;
        let receiver = AgentConnection::connect(addr, to.clone(), Duration::from_secs(2))?;
        pairs.push((sender, receiver, to));
    }
    for (sender, receiver, to) in pairs {
        let (mut writer, _sender_reader) = sender.split();
        let (_receiver_writer, mut reader) = receiver.split();
        let destination = to.agent.to_string();
        let payload = Bytes::from(vec![0x42; args.size as usize]);
        let (stop_s, batch) = (stop.clone(), args.batch);
        threads.push(std::thread::spawn(move || {
            // Keep the sender's reading half alive: NACKs would land there.
            let _keep = _sender_reader;
            while !stop_s.load(Ordering::Relaxed) {
                for _ in 0..batch {
                    if writer.queue(&destination, payload.clone()).is_err() {
                        return;
                    }
                }
                if writer.flush().is_err() {
                    return;
                }
            }
        }));
        let (stop_r, count) = (stop.clone(), received.clone());
        threads.push(std::thread::spawn(move || {
            let _keep = _receiver_writer;
            while !stop_r.load(Ordering::Relaxed) {
                match reader.recv() {
                    Ok(Incoming::Message(..)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let start = (
        Instant::now(),
        gw.dataplane.totals(),
        threads_cpu("agw-shard"),
    );
    let received_before = received.load(Ordering::Relaxed);
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
    let received_during = received.load(Ordering::Relaxed) - received_before;
    stop.store(true, Ordering::Relaxed);
    let secs = end.0.duration_since(start.0).as_secs_f64();
    let mut out = std::io::stdout().lock();
    let delivered = end.1.delivered - start.1.delivered;
    let rate = delivered as f64 / secs;
    let frame = args.size as f64 + 100.0;
    writeln!(
        out,
        "pairs {} size {} B shards {}",
        args.pairs, args.size, args.shards
    )?;
    writeln!(
        out,
        "delivered      {delivered} in {secs:.2} s = {rate:.0} msg/s (~{:.1} MB/s of frames)",
        rate * frame / 1e6
    )?;
    writeln!(
        out,
        "nacked         {}",
        end.1.nacked_total() - start.1.nacked_total()
    )?;
    if let (Some(a), Some(b)) = (start.2, end.2) {
        let cpu = b.saturating_sub(a).as_secs_f64();
        if cpu > 0.0 {
            writeln!(
                out,
                "relay cpu      {cpu:.2} s = {:.0} msg per relay CPU-second",
                delivered as f64 / cpu
            )?;
        }
    }
    writeln!(
        out,
        "received       {received_during} by the receivers meanwhile"
    )?;
    Ok(())
}
