//! Traffic control's one primitive: a token bucket that knows no clock. Its owner says how much
//! time passed since the last take (from simulated wall time in the registry, from the read
//! times of frames on a relay shard), so it runs the same in tests and on the hot path.

use std::time::Duration;

/// `capacity` tokens, refilled at `per_second`; one token per thing taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
}

impl Bucket {
    /// A full bucket of `capacity` tokens (at least 1), refilled at `per_second`.
    pub fn new(per_second: f64, capacity: f64) -> Bucket {
        let capacity = capacity.max(1.0);
        Bucket {
            capacity,
            tokens: capacity,
            per_second: per_second.max(1e-9),
        }
    }

    /// Refills for `elapsed`, then takes a token, or says how long until one is there.
    pub fn take(&mut self, elapsed: Duration) -> Result<(), Duration> {
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut b = Bucket::new(10.0, 3.0);
        for _ in 0..3 {
            assert_eq!(b.take(Duration::ZERO), Ok(()));
        }
        assert_eq!(b.take(Duration::ZERO), Err(Duration::from_millis(100)));
        // A tenth of a second brings one token back, never more than the capacity.
        assert_eq!(b.take(Duration::from_millis(100)), Ok(()));
        assert!(b.take(Duration::ZERO).is_err());
        assert_eq!(b.take(Duration::from_secs(60)), Ok(()));
        assert_eq!(b.take(Duration::ZERO), Ok(()));
        assert_eq!(b.take(Duration::ZERO), Ok(()));
        assert!(b.take(Duration::ZERO).is_err());
    }
}
