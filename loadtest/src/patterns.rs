//! The load's patterns, the same over every relay: who sends to whom, how fast, and what is
//! measured. Each message carries, in its first 16 bytes, the time it was meant to be sent
//! (nanoseconds since the run's epoch) and its sender's index; a receiver's latency is its
//! arrival time minus that intended time, so a relay that stalls shows as latency, not as
//! fewer sends (no coordinated omission in open loop).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;

use crate::{
    cpu::{Affinity, threads_cpu},
    transport::{Agent, Error, Event, Inbox, Outbox, Relay, Side},
};

/// Bytes of a payload the load itself uses (send time, sender).
pub const HEADER: usize = 16;

/// Who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// N senders, each streaming pipelined messages to its own receiver.
    Stream,
    /// N pairs, one message in flight each: the receiver sends it back; latency is the round
    /// trip.
    PingPong,
    /// N senders streaming to one receiver.
    FanIn,
    /// One sender streaming to N receivers in turn.
    FanOut,
}

impl Pattern {
    /// Each agent's side, for `n` (pairs, senders or receivers).
    pub fn sides(self, n: usize) -> Vec<Side> {
        let (a, b) = match self {
            Pattern::Stream | Pattern::PingPong => (n, n),
            Pattern::FanIn => (n, 1),
            Pattern::FanOut => (1, n),
        };
        std::iter::repeat_n(Side::A, a)
            .chain(std::iter::repeat_n(Side::B, b))
            .collect()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pattern.
    pub pattern: Pattern,
    /// Pairs, senders (fan-in) or receivers (fan-out).
    pub n: usize,
    /// Payload bytes (at least [`HEADER`]).
    pub size: usize,
    /// Messages per second per sender; 0: closed loop.
    pub rate: u64,
    /// Messages a closed-loop sender queues before each flush.
    pub batch: usize,
    /// Before the measurement.
    pub warmup: Duration,
    /// The measurement.
    pub seconds: u64,
}

/// What a run measured, over the measurement window only.
#[derive(Debug)]
pub struct Measured {
    /// The window's length.
    pub seconds: f64,
    /// Messages received by agents.
    pub delivered: u64,
    /// NACKs received, by reason.
    pub nacked: BTreeMap<String, u64>,
    /// Latencies in nanoseconds: one way, or the round trip for ping-pong.
    pub histogram: Histogram<u64>,
    /// The relay's CPU time.
    pub relay_cpu: Option<f64>,
    /// The load generator's own CPU time (its `load-` threads: agents' senders and
    /// receivers, async clients' runtime).
    pub load_cpu: Option<f64>,
}

struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    measuring: AtomicBool,
    histogram: Mutex<Histogram<u64>>,
    nacked: Mutex<BTreeMap<String, u64>>,
    affinity: Affinity,
}

fn histogram() -> Result<Histogram<u64>, Error> {
    Ok(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn payload(size: usize, intended: Duration, me: usize) -> Bytes {
    let mut p = BytesMut::with_capacity(size);
    p.put_u64(intended.as_nanos() as u64);
    p.put_u32(me as u32);
    p.put_u32(0);
    p.resize(size, 0x42);
    p.freeze()
}

/// (intended send time in ns, sender) of a payload.
fn stamp(payload: &[u8]) -> Option<(u64, usize)> {
    let t: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let s: [u8; 4] = payload.get(8..12)?.try_into().ok()?;
    Some((u64::from_be_bytes(t), u32::from_be_bytes(s) as usize))
}

/// What one agent's thread counted.
struct Tally {
    delivered: AtomicU64,
}

/// Connects the agents the plan needs through `relay`, runs the plan, and measures.
/// `progress(second, delivered so far)` is called every second of the measurement.
pub fn run(
    relay: &mut dyn Relay,
    plan: &Plan,
    affinity: &Affinity,
    progress: impl Fn(u64, u64),
) -> Result<Measured, Error> {
    if plan.size < HEADER || plan.n == 0 || plan.batch == 0 || plan.seconds == 0 {
        return Err(
            format!("size must be at least {HEADER} B; pairs, batch and seconds above 0").into(),
        );
    }
    let sides = plan.pattern.sides(plan.n);
    let agents = relay.connect(&sides)?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        histogram: Mutex::new(histogram()?),
        nacked: Mutex::new(BTreeMap::new()),
        affinity: affinity.clone(),
    });
    let a: Vec<usize> = (0..sides.len()).filter(|i| sides[*i] == Side::A).collect();
    let b: Vec<usize> = (0..sides.len()).filter(|i| sides[*i] == Side::B).collect();
    let mut tallies = Vec::new();
    let mut readers = Vec::new();
    for (i, agent) in agents.into_iter().enumerate() {
        let tally = Arc::new(Tally {
            delivered: AtomicU64::new(0),
        });
        tallies.push(tally.clone());
        let Agent { outbox, inbox } = agent;
        let (shared, plan) = (shared.clone(), plan.clone());
        let side = sides[i];
        let targets: Vec<usize> = match plan.pattern {
            Pattern::Stream | Pattern::PingPong => b
                .get(a.iter().position(|x| *x == i).unwrap_or(0))
                .into_iter()
                .copied()
                .collect(),
            Pattern::FanIn => b.clone(),
            Pattern::FanOut => b.clone(),
        };
        let name = format!("load-{i}");
        match (plan.pattern, side) {
            (Pattern::PingPong, Side::A) => {
                readers.push(std::thread::Builder::new().name(name).spawn(move || {
                    shared.affinity.pin_client();
                    ping(outbox, inbox, targets, i, &plan, &shared, &tally)
                })?);
            }
            (Pattern::PingPong, Side::B) => {
                readers.push(std::thread::Builder::new().name(name).spawn(move || {
                    shared.affinity.pin_client();
                    echo(outbox, inbox, &shared, &tally)
                })?);
            }
            (_, Side::A) => {
                let (reader_shared, reader_tally) = (shared.clone(), tally.clone());
                readers.push(
                    std::thread::Builder::new()
                        .name(format!("{name}-in"))
                        .spawn(move || {
                            reader_shared.affinity.pin_client();
                            receive(inbox, &reader_shared, &reader_tally)
                        })?,
                );
                std::thread::Builder::new().name(name).spawn(move || {
                    shared.affinity.pin_client();
                    send(outbox, targets, i, &plan, &shared)
                })?;
            }
            (_, Side::B) => {
                readers.push(std::thread::Builder::new().name(name).spawn(move || {
                    shared.affinity.pin_client();
                    // Kept: dropping it could close the agent's connection.
                    let _outbox = outbox;
                    receive(inbox, &shared, &tally)
                })?);
            }
        }
    }
    let delivered = || -> u64 {
        tallies
            .iter()
            .map(|t| t.delivered.load(Ordering::Relaxed))
            .sum()
    };
    std::thread::sleep(plan.warmup);
    shared.measuring.store(true, Ordering::Relaxed);
    let (started, cpu_start, load_start) = (Instant::now(), relay.cpu(), threads_cpu("load-"));
    for s in 1..=plan.seconds {
        std::thread::sleep(Duration::from_secs(1));
        progress(s, delivered());
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let (seconds, cpu_end, load_end, total) = (
        started.elapsed().as_secs_f64(),
        relay.cpu(),
        threads_cpu("load-"),
        delivered(),
    );
    shared.stop.store(true, Ordering::Relaxed);
    // Receivers see the stop at their next event or idle second and merge what they recorded;
    // senders may be blocked on a relay that stopped reading: they are left behind.
    for r in readers {
        let _ = r.join();
    }
    let histogram = std::mem::replace(
        &mut *shared.histogram.lock().map_err(|_| "poisoned")?,
        histogram()?,
    );
    let nacked = shared.nacked.lock().map_err(|_| "poisoned")?.clone();
    Ok(Measured {
        seconds,
        delivered: total,
        nacked,
        histogram,
        relay_cpu: spent(cpu_start, cpu_end),
        load_cpu: spent(load_start, load_end),
    })
}

fn spent(start: Option<Duration>, end: Option<Duration>) -> Option<f64> {
    Some(end?.saturating_sub(start?).as_secs_f64())
}

/// Streams to `targets` in turn: batches as fast as the relay takes them, or on schedule.
fn send(mut outbox: Box<dyn Outbox>, targets: Vec<usize>, me: usize, plan: &Plan, shared: &Shared) {
    if targets.is_empty() {
        return;
    }
    let start = shared.epoch.elapsed();
    let mut sent: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let due = match plan.rate {
            0 => sent + plan.batch as u64,
            // Every message whose intended time has come: message k is due at k / r.
            r => (shared.epoch.elapsed().saturating_sub(start).as_secs_f64() * r as f64) as u64 + 1,
        };
        if due <= sent {
            // Asleep until the next message is due (at most 10 ms, to see the stop): a
            // sender at a light rate costs its CPU nothing between messages, as a real one.
            let next = start + Duration::from_secs_f64(sent as f64 / plan.rate as f64);
            let wait = next.saturating_sub(shared.epoch.elapsed());
            std::thread::sleep(wait.clamp(Duration::from_micros(20), Duration::from_millis(10)));
            continue;
        }
        for k in sent..due {
            let intended = match plan.rate {
                0 => shared.epoch.elapsed(),
                r => start + Duration::from_secs_f64(k as f64 / r as f64),
            };
            let to = targets[(k % targets.len() as u64) as usize];
            if outbox.queue(to, payload(plan.size, intended, me)).is_err() {
                return;
            }
        }
        sent = due;
        if outbox.flush().is_err() {
            return;
        }
    }
}

/// Counts what arrives (and the NACKs), recording latencies while measuring.
fn receive(mut inbox: Box<dyn Inbox>, shared: &Shared, tally: &Tally) {
    let Ok(mut local) = histogram() else { return };
    let mut nacked: BTreeMap<String, u64> = BTreeMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match inbox.recv() {
            Ok(Event::Message(p)) => {
                if shared.measuring.load(Ordering::Relaxed) {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some((sent, _)) = stamp(&p) {
                        let now = shared.epoch.elapsed().as_nanos() as u64;
                        let _ = local.record(now.saturating_sub(sent).max(1));
                    }
                }
            }
            Ok(Event::Nack(reason)) => {
                if shared.measuring.load(Ordering::Relaxed) {
                    *nacked.entry(reason.to_owned()).or_default() += 1;
                }
            }
            Ok(Event::Idle | Event::Other) => {}
            Err(_) => break,
        }
    }
    merge(shared, &local, nacked);
}

fn merge(shared: &Shared, local: &Histogram<u64>, nacked: BTreeMap<String, u64>) {
    if let Ok(mut all) = shared.histogram.lock() {
        let _ = all.add(local);
    }
    if let Ok(mut all) = shared.nacked.lock() {
        for (r, n) in nacked {
            *all.entry(r).or_default() += n;
        }
    }
}

/// One message in flight: send, wait for it to come back, record the round trip.
fn ping(
    mut outbox: Box<dyn Outbox>,
    mut inbox: Box<dyn Inbox>,
    targets: Vec<usize>,
    me: usize,
    plan: &Plan,
    shared: &Shared,
    tally: &Tally,
) {
    let (Some(&to), Ok(mut local)) = (targets.first(), histogram()) else {
        return;
    };
    let mut nacked: BTreeMap<String, u64> = BTreeMap::new();
    'outer: while !shared.stop.load(Ordering::Relaxed) {
        let sent = shared.epoch.elapsed();
        if outbox.queue(to, payload(plan.size, sent, me)).is_err() || outbox.flush().is_err() {
            break;
        }
        loop {
            match inbox.recv() {
                Ok(Event::Message(p)) => {
                    if stamp(&p).is_some_and(|(t, _)| t == sent.as_nanos() as u64) {
                        if shared.measuring.load(Ordering::Relaxed) {
                            // The ping and the pong: two messages relayed.
                            tally.delivered.fetch_add(1, Ordering::Relaxed);
                            let rtt = shared.epoch.elapsed().saturating_sub(sent);
                            let _ = local.record((rtt.as_nanos() as u64).max(1));
                        }
                        break;
                    }
                }
                Ok(Event::Nack(reason)) => {
                    if shared.measuring.load(Ordering::Relaxed) {
                        *nacked.entry(reason.to_owned()).or_default() += 1;
                    }
                    break;
                }
                // Lost (a relay without a NACK): send the next one.
                Ok(Event::Idle) => break,
                Ok(Event::Other) => {}
                Err(_) => break 'outer,
            }
            if shared.stop.load(Ordering::Relaxed) {
                break 'outer;
            }
        }
    }
    merge(shared, &local, nacked);
}

/// Sends every message back to its sender.
fn echo(mut outbox: Box<dyn Outbox>, mut inbox: Box<dyn Inbox>, shared: &Shared, tally: &Tally) {
    while !shared.stop.load(Ordering::Relaxed) {
        match inbox.recv() {
            Ok(Event::Message(p)) => {
                if shared.measuring.load(Ordering::Relaxed) {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                }
                let Some((_, from)) = stamp(&p) else { continue };
                if outbox.queue(from, p).is_err() || outbox.flush().is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_their_send_time_and_sender() {
        let p = payload(64, Duration::from_nanos(123_456_789), 42);
        assert_eq!(p.len(), 64);
        assert_eq!(stamp(&p), Some((123_456_789, 42)));
        assert_eq!(stamp(&p[..10]), None);
    }

    #[test]
    fn patterns_put_senders_at_a_and_receivers_at_b() {
        assert_eq!(
            Pattern::Stream.sides(2),
            [Side::A, Side::A, Side::B, Side::B]
        );
        assert_eq!(
            Pattern::FanIn.sides(3),
            [Side::A, Side::A, Side::A, Side::B]
        );
        assert_eq!(Pattern::FanOut.sides(2), [Side::A, Side::B, Side::B]);
    }
}
