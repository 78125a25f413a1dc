//! `agw-simulate`: a federation of gateways simulated in one process
//! ([`agw_controlplane::simulation`]): the daemon's route state and peering state machine per
//! gateway, a simulated network between them. Reports convergence after start, after a
//! gateway fails and after a link flaps: simulated time, frames and summaries exchanged
//! (against what path-vector routing needs at least), memory per route.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Write as _,
    process::ExitCode,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use agw_controlplane::{
    peering::session::DEFAULT_ADVERTISEMENT_INTERVAL,
    simulation::{Federation, Topology, Traffic},
};
use clap::{Parser, ValueEnum};
use serde_json::json;

/// Simulates GATEWAYS gateways (one domain each, AGENTS agents each) linked as TOPOLOGY, on
/// simulated time; prints one line per phase (start, a gateway's failure, a link's flap).
#[derive(Debug, Parser)]
#[command(name = "agw-simulate", version)]
struct Args {
    /// How many gateways.
    #[arg(long, default_value_t = 100)]
    gateways: usize,
    /// Agents attached to each gateway.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// How they link.
    #[arg(long, value_enum, default_value = "random")]
    topology: Kind,
    /// Average links per gateway (random topology).
    #[arg(long, default_value_t = 4)]
    degree: usize,
    /// One-way latency of every link, milliseconds.
    #[arg(long, default_value_t = 10)]
    latency_ms: u64,
    /// The least time between two updates to a peer, milliseconds (the sessions' MRAI;
    /// 0 sends every change at once) [default: the gateway's].
    #[arg(long)]
    advertisement_interval_ms: Option<u64>,
    /// Seed of the random topologies and of which gateway and link fail.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated seconds a phase may take before it is reported unconverged.
    #[arg(long, default_value_t = 600)]
    limit_s: u64,
    /// One JSON object per phase instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Random,
    Tiered,
    Chain,
}

/// The heap in use, counted at every allocation: memory per route is what the federation
/// holds, not what the allocator kept from the messages of convergence.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator with its arguments unchanged; the
// counter only adds and subtracts the sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Quiet this long (no update delivered anywhere) and in agreement: converged.
const QUIET: Duration = Duration::from_secs(5);
const STEP: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let args = Args::parse();
    if args.gateways < 2 {
        eprintln!("agw-simulate: --gateways must be at least 2");
        return ExitCode::FAILURE;
    }
    let topology = match args.topology {
        Kind::Random => Topology::random(args.gateways, args.degree.max(1), args.seed),
        Kind::Tiered => Topology::tiered(args.gateways, 10, args.seed),
        Kind::Chain => Topology::chain(args.gateways),
    };
    let live_before = LIVE.load(Ordering::Relaxed);
    let wall = std::time::Instant::now();
    let interval = args
        .advertisement_interval_ms
        .map_or(DEFAULT_ADVERTISEMENT_INTERVAL, Duration::from_millis);
    let mut fed = Federation::new(
        &topology,
        args.agents,
        Duration::from_millis(args.latency_ms),
        interval,
    );
    if !args.json {
        eprintln!(
            "{} gateways, {} links ({}), {} agents each, {} ms links, updates at most every {} ms",
            args.gateways,
            topology.links.len(),
            topology.name,
            args.agents,
            args.latency_ms,
            interval.as_millis()
        );
    }
    let limit = Duration::from_secs(args.limit_s);
    let mut ok = true;

    fed.start();
    let start = phase(&mut fed, &args, "start", limit);
    let (table_routes, rib_routes) = fed.routes_held();
    fed.compact();
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(live_before);
    let per_route = live as f64 / (table_routes + rib_routes).max(1) as f64;
    ok &= report(
        &args,
        &topology,
        &start,
        Some((live, per_route)),
        wall.elapsed(),
    );

    // The best-connected gateway fails: the most routes to move.
    let neighbours = topology.neighbours();
    let failed = (0..args.gateways)
        .max_by_key(|&g| (neighbours[g].len(), usize::MAX - g))
        .unwrap_or(0);
    let wall = std::time::Instant::now();
    fed.fail(failed);
    let failure = phase(&mut fed, &args, "gateway fails", limit);
    ok &= report(&args, &topology, &failure, None, wall.elapsed());

    // A link between two live gateways flaps once.
    let mut rng = fastrand::Rng::with_seed(args.seed ^ 0x5eed);
    let live: Vec<(usize, usize)> = topology
        .links
        .iter()
        .copied()
        .filter(|&(a, b)| a != failed && b != failed)
        .collect();
    if !live.is_empty() {
        let (a, b) = live[rng.usize(0..live.len())];
        let wall = std::time::Instant::now();
        fed.flap(a, b);
        let flap = phase(&mut fed, &args, "link flaps", limit);
        ok &= report(&args, &topology, &flap, None, wall.elapsed());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One phase's outcome.
struct Phase {
    name: &'static str,
    /// From the phase's event to the last update delivered; `None` if not converged.
    converged: Option<Duration>,
    traffic: Traffic,
    /// Routes still wrong at the end.
    wrong: usize,
    live_gateways: usize,
}

/// Runs until every live gateway agrees and no update has moved for [`QUIET`].
fn phase(fed: &mut Federation, args: &Args, name: &'static str, limit: Duration) -> Phase {
    let began = fed.now();
    let before = fed.traffic;
    let mut wrong = usize::MAX;
    let mut converged = None;
    while fed.now() - began < limit {
        fed.run_until(fed.now() + STEP);
        let last = fed.last_update.max(began);
        if fed.now() - last >= QUIET {
            wrong = fed.disagreements(args.agents);
            if wrong == 0 {
                converged = Some(last - began);
                break;
            }
        }
    }
    if converged.is_none() {
        wrong = fed.disagreements(args.agents);
    }
    let after = fed.traffic;
    Phase {
        name,
        converged,
        traffic: Traffic {
            frames: after.frames - before.frames,
            updates: after.updates - before.updates,
            advertised: after.advertised - before.advertised,
            withdrawn: after.withdrawn - before.withdrawn,
            update_bytes: after.update_bytes - before.update_bytes,
        },
        wrong,
        live_gateways: fed.live_gateways(),
    }
}

fn report(
    args: &Args,
    topology: &Topology,
    phase: &Phase,
    memory: Option<(usize, f64)>,
    wall: Duration,
) -> bool {
    // Path vector at least: every live gateway hears of every other's agents once (start);
    // at most without path exploration: each gateway tells each neighbour of each route once.
    let routes = (args.gateways * args.agents) as u64;
    let floor = (phase.live_gateways as u64).saturating_sub(1) * routes;
    let ceiling = 2 * topology.links.len() as u64 * routes;
    let t = &phase.traffic;
    let converged_ms = phase.converged.map(|d| d.as_secs_f64() * 1000.0);
    if args.json {
        let doc = json!({
            "topology": topology.name,
            "gateways": args.gateways,
            "links": topology.links.len(),
            "agents_per_gateway": args.agents,
            "latency_ms": args.latency_ms,
            "advertisement_interval_ms": args.advertisement_interval_ms,
            "phase": phase.name,
            "converged_ms": converged_ms,
            "routes_wrong": phase.wrong,
            "frames": t.frames,
            "updates": t.updates,
            "summaries_advertised": t.advertised,
            "agents_withdrawn": t.withdrawn,
            "update_bytes": t.update_bytes,
            "path_vector_floor": floor,
            "path_vector_ceiling": ceiling,
            "heap_bytes": memory.map(|m| m.0),
            "bytes_per_route": memory.map(|m| m.1),
            "wall_s": wall.as_secs_f64(),
        });
        let _ = writeln!(std::io::stdout(), "{doc}");
    } else {
        let when = converged_ms.map_or("NOT converged".to_owned(), |ms| format!("{ms:.0} ms"));
        let mut line = format!(
            "{:<14} {when:>12}  {} frames, {} updates, {} summaries, {} withdrawals, {:.1} MB of updates",
            phase.name,
            t.frames,
            t.updates,
            t.advertised,
            t.withdrawn,
            t.update_bytes as f64 / 1e6
        );
        if phase.name == "start" {
            line.push_str(&format!(
                "; path vector needs {floor} to {ceiling} summaries"
            ));
        }
        if let Some((heap, per_route)) = memory {
            line.push_str(&format!(
                "; {:.0} MB of heap, {per_route:.0} B per route",
                heap as f64 / 1e6
            ));
        }
        if phase.wrong > 0 {
            line.push_str(&format!("; {} routes still wrong", phase.wrong));
        }
        line.push_str(&format!(" ({:.1} s of CPU)", wall.as_secs_f64()));
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    phase.converged.is_some()
}
