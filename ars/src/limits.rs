//! Traffic control: a token bucket per requester, on simulated time.

use std::time::{Duration, SystemTime};

use agw_proto::{pb::ErrorCode, rate::Bucket};
use hashbrown::HashMap;

use crate::RegistryError;

/// A token bucket on simulated wall time: `capacity` tokens, refilled at `capacity` per
/// `period`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    bucket: Bucket,
    last: SystemTime,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, period: Duration, now: SystemTime) -> TokenBucket {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            bucket: Bucket::new(capacity / period.as_secs_f64().max(1e-9), capacity),
            last: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: SystemTime) -> Result<(), Duration> {
        let elapsed = now.duration_since(self.last).unwrap_or_default();
        self.last = now.max(self.last);
        self.bucket.take(elapsed)
    }
}

/// Discoveries per requester per minute: one bucket per requester identity.
#[derive(Debug, Clone)]
pub struct DiscoveryLimiter {
    per_minute: u32,
    buckets: HashMap<String, TokenBucket>,
}

impl DiscoveryLimiter {
    /// `per_minute` discoveries a minute for each requester.
    pub fn new(per_minute: u32) -> DiscoveryLimiter {
        DiscoveryLimiter {
            per_minute,
            buckets: HashMap::new(),
        }
    }

    /// Charges one discovery to `requester`, or refuses it RATE_LIMITED with when to retry.
    pub fn take(&mut self, requester: &str, now: SystemTime) -> Result<(), RegistryError> {
        let per_minute = self.per_minute;
        let bucket = self
            .buckets
            .entry_ref(requester)
            .or_insert_with(|| TokenBucket::new(per_minute, Duration::from_secs(60), now));
        bucket.take(now).map_err(|wait| {
            let mut e = RegistryError::new(
                ErrorCode::RateLimited,
                format!("{per_minute} discoveries a minute"),
            );
            e.retry_after_ms = u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX);
            e
        })
    }
}
