//! Per-key token buckets. The bucket is pure (time is passed in); the limiter keeps them in memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

/// A token bucket counted in milli-tokens so refill needs no floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    milli: u64,
    last: Duration,
}

impl Bucket {
    pub fn full(burst: u32, now: Duration) -> Self {
        Bucket {
            milli: u64::from(burst) * 1000,
            last: now,
        }
    }

    /// Takes one token at `now` (a monotonic time since any fixed origin). `Err` holds the wait.
    pub fn take(&mut self, rate_per_sec: u32, burst: u32, now: Duration) -> Result<(), Duration> {
        let cap = u64::from(burst) * 1000;
        let elapsed = now.saturating_sub(self.last);
        let refill = elapsed.as_millis().saturating_mul(u128::from(rate_per_sec));
        self.milli = u64::try_from(
            u128::from(self.milli)
                .saturating_add(refill)
                .min(u128::from(cap)),
        )
        .unwrap_or(cap);
        self.last = now.max(self.last);
        if self.milli >= 1000 {
            self.milli -= 1000;
            Ok(())
        } else {
            let missing = 1000 - self.milli;
            let ms = missing.div_ceil(u64::from(rate_per_sec.max(1)));
            Err(Duration::from_millis(ms))
        }
    }
}

/// Buckets of every key seen, behind a short-held lock.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_sec: u32,
    burst: u32,
    origin: tokio::time::Instant,
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            rate_per_sec,
            burst,
            origin: tokio::time::Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when the key has no token left.
    pub fn check(&self, key: Uuid) -> Result<(), Duration> {
        if self.rate_per_sec == 0 {
            return Ok(()); // disabled
        }
        let now = self.origin.elapsed();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            map.clear(); // bound memory; a reset bucket is full, which only errs in the caller's favour
        }
        map.entry(key)
            .or_insert_with(|| Bucket::full(self.burst, now))
            .take(self.rate_per_sec, self.burst, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Duration::ZERO;
        let mut b = Bucket::full(3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(10, 3, t0), Ok(()));
        }
        assert_eq!(b.take(10, 3, t0), Err(Duration::from_millis(100)));
        assert_eq!(b.take(10, 3, Duration::from_millis(100)), Ok(()));
        // Never above the burst.
        let later = Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(10, 3, later), Ok(()));
        }
        assert!(b.take(10, 3, later).is_err());
    }
}
