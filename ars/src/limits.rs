//! Traffic control: a token bucket per requester, on simulated time.

use std::time::{Duration, SystemTime};

/// A token bucket: `capacity` tokens, refilled at `capacity` per `period`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: SystemTime,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, period: Duration, now: SystemTime) -> TokenBucket {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            per_second: capacity / period.as_secs_f64().max(1e-9),
            last: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: SystemTime) -> Result<(), Duration> {
        let elapsed = now
            .duration_since(self.last)
            .unwrap_or_default()
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now.max(self.last);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}
