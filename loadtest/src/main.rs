//! `agw-loadtest`: agents in a pattern through a relay (this project's gateway, nats-server or
//! nginx's stream proxy); prints throughput, latency percentiles, NACKs by reason and the
//! relay's CPU time, and can write JSON. `scripts/bench.sh` runs the matrix.

use std::{collections::BTreeMap, io::Write as _, path::PathBuf, process::ExitCode};

use agw_loadtest::{
    a2a::{A2aRelay, Binding},
    agw::{AgwRelay, Scenario, Translation},
    cpu::Affinity,
    mqtt::{Broker, MqttRelay},
    nats::NatsRelay,
    nginx::NginxRelay,
    patterns::{self, HEADER, Pattern, Plan},
    transport::{Error, Relay},
};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Agents in a pattern through a relay. Closed loop (the default) sends as fast as the relay
/// takes; open loop (`--rate`) sends on a schedule and measures each message's latency from
/// its intended send time, so a stalled relay shows as latency instead of hiding as fewer
/// sends (no coordinated omission). One agent is one connection (the protocol's access binds
/// a connection to an agent), so N agents are N connections.
#[derive(Debug, Parser)]
#[command(name = "agw-loadtest", version)]
struct Args {
    /// What relays the messages: this project's gateway (started here), nats-server (one
    /// subject per agent) or nginx's stream proxy (a port per agent, L4 pass-through), both
    /// started here; or MQTT 5 agents at QoS 1 over mutual TLS (rumqttc) through the
    /// gateway's MQTT adapter (`agw-mqtt`) or a mosquitto broker (`mosquitto`); or A2A
    /// clients' blocking SendMessage answered by native agents through the gateway's A2A
    /// adapter (`agw-a2a`; `agw-a2a-grpc` over the gRPC binding; ping-pong on one shard).
    #[arg(long, value_enum, default_value = "agw")]
    target: Target,
    /// Who sends to whom.
    #[arg(long, value_enum, default_value = "stream")]
    pattern: Pattern,
    /// Pairs (stream, ping-pong), senders (fan-in) or receivers (fan-out).
    #[arg(long, default_value_t = 4)]
    pairs: usize,
    /// Payload bytes per message (the first 16 carry the send time and the sender).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(HEADER as i64..=1_048_576))]
    size: u32,
    /// Where agents are placed (agw only).
    #[arg(long, value_enum, default_value = "one-gateway")]
    scenario: Scenario,
    /// Shards of each gateway (agw only).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Pin the relay to CPU 0 (the gateway's shard i to CPU i) and the load to the other CPUs.
    #[arg(long)]
    pin: bool,
    /// Agents speak plain TCP to the gateway instead of mutual TLS (agw, one gateway only):
    /// the TLS agent leg's cost is the difference.
    #[arg(long)]
    agent_plaintext: bool,
    /// The gateway translates natural language (agw, one gateway): `idle`, agents name no
    /// language; `understood`, every agent understands English and every message is English
    /// text (read on the shard, never translated): what translation costs the messages that
    /// need none. `tagged`: the same messages as `understood` without translation, its
    /// baseline.
    #[arg(long, value_enum, default_value = "off")]
    translation: Translation,
    /// Seconds of measurement (after `--warmup` seconds).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Seconds of warm-up before the measurement.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Messages per second per sender (open loop); 0: as fast as possible (closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages a closed-loop sender queues before each write.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The nats-server binary.
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// The mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: String,
    /// Instead of a load: memory per idle connection of an `agw` daemon (started from
    /// `--agw`) holding this many accessed agent connections.
    #[arg(long)]
    idle: Option<usize>,
    /// The agw binary for `--idle` [default: the one beside this program].
    #[arg(long)]
    agw: Option<PathBuf>,
    /// Internal: hold this many connections for `--idle` (a child process).
    #[arg(long, hide = true)]
    idle_client: Option<usize>,
    #[arg(long, hide = true, default_value = "")]
    idle_agents: String,
    #[arg(long, hide = true, default_value = "")]
    idle_aca: String,
    #[arg(long, hide = true, default_value = "")]
    idle_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Agw,
    Nats,
    Nginx,
    #[value(name = "agw-mqtt")]
    #[serde(rename = "agw-mqtt")]
    AgwMqtt,
    Mosquitto,
    #[value(name = "agw-a2a")]
    #[serde(rename = "agw-a2a")]
    AgwA2a,
    #[value(name = "agw-a2a-grpc")]
    #[serde(rename = "agw-a2a-grpc")]
    AgwA2aGrpc,
}

#[derive(Debug, Serialize)]
struct Report {
    target: Target,
    pattern: Pattern,
    scenario: Option<Scenario>,
    relay: String,
    pairs: usize,
    agents: usize,
    size: u32,
    shards: usize,
    pinned: bool,
    rate_per_sender: u64,
    seconds: f64,
    delivered: u64,
    delivered_per_second: f64,
    nacked: BTreeMap<String, u64>,
    relay_cpu_seconds: Option<f64>,
    delivered_per_relay_cpu_second: Option<f64>,
    /// CPUs the relay may use: its pinned cores, or all.
    relay_cpus: usize,
    /// The load generator's own CPU time over the window, and the CPUs it may use.
    load_cpu_seconds: Option<f64>,
    load_cpus: usize,
    /// What held the figure: `relay` or `load`, the busier side when it used at least 80% of
    /// its CPUs (`load`: the figure is the load generator's, not the relay's), or `neither`
    /// (round trips, a schedule, or the loopback itself).
    bound: Bound,
    /// "one-way", or "round-trip" for ping-pong.
    latency: &'static str,
    latency_us: Latency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Bound {
    Relay,
    Load,
    Neither,
}

impl Bound {
    /// The busier side (its CPU time over what its CPUs could give in `seconds`), when it was
    /// at least 80% busy.
    fn of(seconds: f64, relay: (Option<f64>, usize), load: (Option<f64>, usize)) -> Bound {
        let busy = |(cpu, cpus): (Option<f64>, usize)| {
            cpu.map_or(0.0, |c| c / (seconds * cpus.max(1) as f64))
        };
        let (relay, load) = (busy(relay), busy(load));
        if relay.max(load) < 0.8 {
            Bound::Neither
        } else if relay >= load {
            Bound::Relay
        } else {
            Bound::Load
        }
    }
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
    // As the daemon runs: the gateway's routing table on huge pages.
    agw_dataplane::hugepages::ensure();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agw-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Error> {
    if let Some(count) = args.idle_client {
        return agw_loadtest::idle::client(
            count,
            &args.idle_agents,
            &args.idle_aca,
            &args.idle_name,
            args.agent_plaintext,
        );
    }
    if let Some(connections) = args.idle {
        return idle(args, connections);
    }
    if args.target != Target::Agw && args.scenario != Scenario::OneGateway {
        return Err("--scenario applies to --target agw only".into());
    }
    if matches!(args.target, Target::AgwMqtt | Target::Mosquitto) && args.shards != 1 {
        return Err("MQTT targets run one shard (or one broker process)".into());
    }
    if matches!(args.target, Target::AgwA2a | Target::AgwA2aGrpc)
        && (args.pattern != Pattern::PingPong || args.shards != 1)
    {
        return Err(
            "--target agw-a2a (or agw-a2a-grpc) runs ping-pong on one shard (a blocking SendMessage waits for its answer)"
                .into(),
        );
    }
    if args.target == Target::Nginx && args.pattern == Pattern::FanOut {
        return Err("an L4 proxy cannot fan out: one connection goes to one backend".into());
    }
    if args.translation != Translation::Off && args.target != Target::Agw {
        return Err("--translation applies to --target agw".into());
    }
    if args.agent_plaintext
        && (args.target != Target::Agw
            || matches!(args.scenario, Scenario::TwoGateways | Scenario::Chain))
    {
        return Err("--agent-plaintext applies to --target agw with one gateway".into());
    }
    // The relay's CPUs: the gateway's shards (every gateway's shard i shares CPU i), or the
    // one a peer server runs on; the load takes the others.
    let relay_cores = if args.target == Target::Agw {
        args.shards
    } else {
        1
    };
    let affinity = Affinity::new(args.pin, relay_cores);
    let mut relay: Box<dyn Relay> = match args.target {
        Target::Agw => Box::new(AgwRelay::start(
            args.scenario,
            args.shards,
            affinity.pinned(),
            args.agent_plaintext,
            args.translation,
        )?),
        Target::Nats => Box::new(NatsRelay::start(&args.nats_server, &affinity)?),
        Target::Nginx => Box::new(NginxRelay::new(&args.nginx, &affinity)?),
        Target::AgwMqtt => Box::new(MqttRelay::start(
            Broker::Agw,
            &args.mosquitto,
            affinity.pinned(),
            &affinity,
        )?),
        Target::Mosquitto => Box::new(MqttRelay::start(
            Broker::Mosquitto,
            &args.mosquitto,
            affinity.pinned(),
            &affinity,
        )?),
        Target::AgwA2a => Box::new(A2aRelay::start(
            affinity.pinned(),
            &affinity,
            Binding::JsonRpc,
        )?),
        Target::AgwA2aGrpc => Box::new(A2aRelay::start(
            affinity.pinned(),
            &affinity,
            Binding::Grpc,
        )?),
    };
    let described = match args.target {
        Target::Agw => format!("agw: {}", describe_agw(args)),
        Target::Nats => "nats-server".to_owned(),
        Target::Nginx => "nginx stream proxy, 1 worker".to_owned(),
        Target::AgwMqtt => "agw MQTT adapter (QoS 1, end to end), 1 shard".to_owned(),
        Target::Mosquitto => "mosquitto broker (QoS 1, per hop)".to_owned(),
        Target::AgwA2a => {
            "agw A2A adapter: a2a clients' SendMessage answered by native agents, 1 shard"
                .to_owned()
        }
        Target::AgwA2aGrpc => {
            "agw A2A adapter, gRPC binding: SendMessage over HTTP/2 answered by native agents, 1 shard"
                .to_owned()
        }
    };
    let plan = Plan {
        pattern: args.pattern,
        n: args.pairs,
        size: args.size as usize,
        rate: args.rate,
        batch: args.batch,
        warmup: std::time::Duration::from_secs_f64(args.warmup),
        seconds: args.seconds,
    };
    eprintln!(
        "{described}; {:?} x{} , {} B payloads, {}{}",
        args.pattern,
        args.pairs,
        args.size,
        match args.rate {
            0 => "closed loop".to_owned(),
            r => format!("open loop at {r}/s per sender"),
        },
        if affinity.pinned() {
            ", relay pinned to CPU 0, load on the others"
        } else {
            ""
        }
    );
    let started = std::time::Instant::now();
    let measured = patterns::run(relay.as_mut(), &plan, &affinity, |s, delivered| {
        eprintln!(
            "[{s}/{}] delivered {delivered} ({:.0}/s)",
            args.seconds,
            delivered as f64 / (started.elapsed().as_secs_f64() - args.warmup).max(0.001)
        );
    })?;
    let agents = args.pattern.sides(args.pairs).len();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let relay_cpus = match (affinity.pinned(), args.target) {
        (false, _) => cpus,
        (true, Target::Agw) => args.shards.min(cpus),
        (true, _) => 1,
    };
    let load_cpus = affinity.load_cpus();
    let report = Report {
        target: args.target,
        pattern: args.pattern,
        scenario: (args.target == Target::Agw).then_some(args.scenario),
        relay: described,
        pairs: args.pairs,
        agents,
        size: args.size,
        shards: if args.target == Target::Agw {
            args.shards
        } else {
            1
        },
        pinned: affinity.pinned(),
        rate_per_sender: args.rate,
        seconds: measured.seconds,
        delivered: measured.delivered,
        delivered_per_second: measured.delivered as f64 / measured.seconds,
        nacked: measured.nacked,
        relay_cpu_seconds: measured.relay_cpu,
        delivered_per_relay_cpu_second: measured
            .relay_cpu
            .filter(|c| *c > 0.0)
            .map(|c| measured.delivered as f64 / c),
        relay_cpus,
        load_cpu_seconds: measured.load_cpu,
        load_cpus,
        bound: Bound::of(
            measured.seconds,
            (measured.relay_cpu, relay_cpus),
            (measured.load_cpu, load_cpus),
        ),
        latency: if args.pattern == Pattern::PingPong {
            "round-trip"
        } else {
            "one-way"
        },
        latency_us: latency(&measured.histogram),
    };
    print_report(args, &report)
}

fn idle(args: &Args, connections: usize) -> Result<(), Error> {
    let agw = match &args.agw {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("no directory")?
            .join("agw"),
    };
    eprintln!(
        "agw daemon {}; {connections} idle agent connections",
        agw.display()
    );
    let report = agw_loadtest::idle::measure(&agw, connections, args.agent_plaintext, |line| {
        eprintln!("{line}")
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "idle connections {}: rss {:.1} MiB -> {:.1} MiB = {:.0} B per connection",
        report.connections,
        report.rss_before as f64 / 1048576.0,
        report.rss_after as f64 / 1048576.0,
        report.bytes_per_connection
    )?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn describe_agw(args: &Args) -> String {
    let agents = if args.agent_plaintext {
        "agents over plain TCP"
    } else {
        "agents over mutual TLS"
    };
    let placement = match args.scenario {
        Scenario::OneGateway => format!("one gateway, {} shard(s)", args.shards),
        Scenario::SameShard => format!("one gateway, {} shard(s), agents on shard 0", args.shards),
        Scenario::CrossShard => format!(
            "one gateway, {} shard(s), senders on shard 0, receivers on shard 1",
            args.shards
        ),
        Scenario::Spread => format!(
            "one gateway, {} shard(s), pairs spread over the shards, none crossing",
            args.shards
        ),
        Scenario::HalfCross => format!(
            "one gateway, {} shard(s), pairs spread over the shards, half crossing",
            args.shards
        ),
        Scenario::TwoGateways => format!(
            "two gateways over a mutual-TLS peer link, {} shard(s) each",
            args.shards
        ),
        Scenario::Chain => format!("a chain of three gateways, {} shard(s) each", args.shards),
    };
    let translation = match args.translation {
        Translation::Off => "",
        Translation::Tagged => ", no translation (English text to agents that understand English)",
        Translation::Idle => ", translation on (agents name no language)",
        Translation::Understood => {
            ", translation on (English text to agents that understand English)"
        }
    };
    format!("{placement}, {agents}{translation}")
}

fn print_report(args: &Args, report: &Report) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} | {:?} x{} ({} agents) | {} B | {}",
        report.relay,
        report.pattern,
        report.pairs,
        report.agents,
        report.size,
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
    let nacks: Vec<String> = report
        .nacked
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    writeln!(
        out,
        "nacked         {}",
        if nacks.is_empty() {
            "0".to_owned()
        } else {
            nacks.join(", ")
        }
    )?;
    if let (Some(cpu), Some(per)) = (
        report.relay_cpu_seconds,
        report.delivered_per_relay_cpu_second,
    ) {
        writeln!(
            out,
            "relay cpu      {cpu:.2} s = {per:.0} msg per relay CPU-second ({} CPU(s) for it)",
            report.relay_cpus
        )?;
    }
    if let Some(load) = report.load_cpu_seconds {
        writeln!(
            out,
            "load cpu       {load:.2} s ({} CPU(s) for it): {}",
            report.load_cpus,
            match report.bound {
                Bound::Relay => "the relay was the limit",
                Bound::Load => {
                    "the LOAD GENERATOR was the limit (busier than the relay): the figure is \
                     the load's, not the relay's"
                }
                Bound::Neither => "neither was busy (round trips, a schedule or the loopback)",
            }
        )?;
    }
    let l = &report.latency_us;
    writeln!(
        out,
        "latency (us, {}) p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)",
        report.latency, l.p50, l.p90, l.p99, l.p999, l.max, l.samples
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

#[cfg(test)]
mod tests {
    use super::Bound;

    #[test]
    fn the_busier_side_is_the_limit_once_it_is_80_percent_busy() {
        // 4 s on one relay CPU and one load CPU.
        assert_eq!(Bound::of(4.0, (Some(3.9), 1), (Some(2.0), 1)), Bound::Relay);
        assert_eq!(Bound::of(4.0, (Some(1.8), 1), (Some(3.4), 1)), Bound::Load);
        assert_eq!(
            Bound::of(4.0, (Some(1.8), 1), (Some(3.0), 1)),
            Bound::Neither
        );
        // Two relay CPUs half busy against one load CPU nearly full.
        assert_eq!(Bound::of(4.0, (Some(4.0), 2), (Some(3.8), 1)), Bound::Load);
        // Nothing measured of the relay (no /proc): only the load can be told busy.
        assert_eq!(Bound::of(4.0, (None, 1), (Some(3.9), 1)), Bound::Load);
    }
}
