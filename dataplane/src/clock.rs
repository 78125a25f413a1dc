//! The shards' housekeeping clock: one thread that wakes every shard each tick.
//!
//! A shard's housekeeping (timers, idle buffers, orders from outside) runs every tick. Were
//! the tick a glommio timer, every sleep of the shard would arm it anew: glommio cancels the
//! latency ring's timer at each wake-up and, before sleeping, arms one for the next user
//! timer, one `io_uring_enter` of the nine a wake-up costs at light load
//! (docs/benchmarks.md, "What limits it"). With the clock outside, a shard that has nothing
//! to do sleeps with no timer, and the tick costs it one remote wake-up (an eventfd write)
//! per tick instead of one system call per sleep.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    thread::JoinHandle,
    time::Duration,
};

use crossbeam_channel::{Sender, select};
use futures_util::task::AtomicWaker;

/// One shard's tick: set by the clock's thread, taken by the shard.
#[derive(Debug, Default)]
pub(crate) struct Tick {
    due: AtomicBool,
    waker: AtomicWaker,
}

impl Tick {
    /// Waits for the next tick (at once if one came since the last wait).
    pub(crate) async fn next(&self) {
        futures_lite::future::poll_fn(|cx: &mut Context<'_>| {
            if self.due.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A tick between the check and the registration would not wake us.
            if self.due.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn fire(&self) {
        self.due.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The clock's thread and the ticks it fires; stops when dropped.
#[derive(Debug)]
pub(crate) struct Clock {
    ticks: Vec<Arc<Tick>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Clock {
    /// A clock for `shards` shards, firing every `period`.
    pub(crate) fn start(shards: usize, period: Duration) -> std::io::Result<Clock> {
        let ticks: Vec<Arc<Tick>> = (0..shards).map(|_| Arc::new(Tick::default())).collect();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let fired = ticks.clone();
        let thread = std::thread::Builder::new()
            .name("agw-clock".into())
            .spawn(move || {
                let every = crossbeam_channel::tick(period);
                loop {
                    select! {
                        recv(every) -> _ => fired.iter().for_each(|t| t.fire()),
                        // Dropped: the clock stops.
                        recv(stopped) -> _ => return,
                    }
                }
            })?;
        Ok(Clock {
            ticks,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Shard `shard`'s tick.
    pub(crate) fn tick(&self, shard: usize) -> Option<Arc<Tick>> {
        self.ticks.get(shard).cloned()
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{pin::pin, task::Waker, time::Instant};

    use super::*;

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_shard_is_woken_each_tick_and_a_missed_tick_is_not_lost() {
        let clock = Clock::start(2, Duration::from_millis(20)).unwrap();
        let (first, second) = (clock.tick(0).unwrap(), clock.tick(1).unwrap());
        assert!(clock.tick(2).is_none());
        let count = Arc::new(Count(0.into()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let started = Instant::now();
        // Waiting (a tick that came before the first wait is taken at once: wait again).
        loop {
            let mut next = pin!(second.next());
            if next.as_mut().poll(&mut cx).is_ready() {
                continue;
            }
            // Pending: the clock's next tick wakes this task, and the wait is over.
            while count.0.load(Ordering::SeqCst) == 0 {
                assert!(started.elapsed() < Duration::from_secs(5), "never woken");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(next.as_mut().poll(&mut cx).is_ready());
            break;
        }
        // Not waiting while a tick comes: the next wait returns at once.
        std::thread::sleep(Duration::from_millis(60));
        let mut again = pin!(first.next());
        assert!(again.as_mut().poll(&mut cx).is_ready());
        // Dropping the clock stops its thread (the drop joins it).
        drop(clock);
    }
}
