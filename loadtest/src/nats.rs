//! The same pairs over NATS (one subject per receiving agent), with the official client: the
//! peer the relay is compared with, measured the same way (receivers count, latency from the
//! intended send time carried in the payload).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use hdrhistogram::Histogram;

/// What one NATS run measured.
#[derive(Debug)]
pub struct NatsRun {
    /// Messages received during the measurement.
    pub delivered: u64,
    /// Its length.
    pub seconds: f64,
    /// Latencies in nanoseconds.
    pub histogram: Histogram<u64>,
}

/// Runs `pairs` publisher/subscriber pairs against the server at `url` for `seconds` after one
/// second of warm-up; `rate` per publisher (0: as fast as the client takes), `size`-byte
/// payloads. `window` is called when the measurement starts (`true`) and ends (`false`);
/// `progress` every second with the messages received so far.
pub fn run(
    url: &str,
    pairs: usize,
    size: usize,
    rate: u64,
    seconds: u64,
    window: impl Fn(bool),
    progress: impl Fn(u64, u64),
) -> Result<NatsRun, Box<dyn std::error::Error + Send + Sync>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let measuring = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let mut histograms = Vec::new();
        let mut tasks = Vec::new();
        for p in 0..pairs {
            let subject = format!("agent.receiver-{p}");
            let publisher = async_nats::connect(url).await?;
            let subscriber = async_nats::connect(url).await?;
            let mut subscription = subscriber.subscribe(subject.clone()).await?;
            subscriber.flush().await?;
            // Each subscriber records into its own histogram (its lock is never contended).
            let mine = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
                1,
                60_000_000_000,
                3,
            )?));
            histograms.push(mine.clone());
            let (m, r) = (measuring.clone(), received.clone());
            tasks.push(tokio::spawn(async move {
                let _keep = subscriber;
                while let Some(message) = subscription.next().await {
                    if !m.load(Ordering::Relaxed) {
                        continue;
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                    if let (Ok(mut h), Some(sent)) = (mine.lock(), sent_at(&message.payload)) {
                        let now = epoch.elapsed().as_nanos() as u64;
                        let _ = h.record(now.saturating_sub(sent).max(1));
                    }
                }
            }));
            let s = stop.clone();
            tasks.push(tokio::spawn(async move {
                let start = epoch.elapsed();
                let mut sent: u64 = 0;
                while !s.load(Ordering::Relaxed) {
                    let due = match rate {
                        0 => sent + 64,
                        r => {
                            (epoch.elapsed().saturating_sub(start).as_secs_f64() * r as f64) as u64
                        }
                    };
                    if due <= sent {
                        tokio::time::sleep(Duration::from_micros(200)).await;
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
                        if publisher
                            .publish(subject.clone(), payload.freeze())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    sent = due;
                    if rate != 0 && publisher.flush().await.is_err() {
                        return;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        measuring.store(true, Ordering::Relaxed);
        window(true);
        let started = Instant::now();
        for s in 1..=seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            progress(s, received.load(Ordering::Relaxed));
        }
        measuring.store(false, Ordering::Relaxed);
        let delivered = received.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        window(false);
        stop.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for t in tasks {
            t.abort();
        }
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        for h in histograms {
            if let Ok(h) = h.lock() {
                histogram.add(&*h)?;
            }
        }
        Ok(NatsRun {
            delivered,
            seconds: elapsed,
            histogram,
        })
    })
}

fn sent_at(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}
