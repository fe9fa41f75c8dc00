//! Per-key rate limits shared by every replica, as GCRA (the generic cell rate algorithm, the
//! token bucket written as one timestamp per key): [`Gcra`] is the pure decision, and
//! [`RateLimiter::check`] applies the same decision inside PostgreSQL in one atomic statement, so
//! two cloud API replicas on one database grant each key `burst` requests at once and `rate` per
//! second sustained between them, not each.
//!
//! Time is the database's clock (`clock_timestamp()`), so replicas whose clocks disagree still
//! share one timeline. The state is one row per key in the UNLOGGED `rate_limits` table (migration
//! 0004): a crash loses it, which refills every bucket, erring in the callers' favour.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Result;

/// The limit as GCRA parameters, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// The emission interval: one request per `interval_us` sustained (1 s / rate).
    pub interval_us: i64,
    /// How far the TAT may run ahead of now: `burst` intervals.
    pub tolerance_us: i64,
}

impl Gcra {
    /// `None` when `rate_per_sec` is 0 (the limit is disabled).
    pub fn new(rate_per_sec: u32, burst: u32) -> Option<Gcra> {
        if rate_per_sec == 0 {
            return None;
        }
        let interval_us = (1_000_000 / i64::from(rate_per_sec)).max(1);
        Some(Gcra {
            interval_us,
            tolerance_us: interval_us.saturating_mul(i64::from(burst.max(1))),
        })
    }

    /// One request at `now_us` against the key's stored TAT (`None`: never seen, a full bucket).
    /// `Ok(new_tat)` admits it; `Err(wait)` refuses it and says how long until one would pass.
    /// [`RateLimiter::check`]'s SQL is this function; `gcra_sql_matches_the_model` holds them equal.
    pub fn decide(self, tat_us: Option<i64>, now_us: i64) -> Result<i64, Duration> {
        let next = tat_us
            .unwrap_or(now_us)
            .max(now_us)
            .saturating_add(self.interval_us);
        let ahead = next.saturating_sub(now_us);
        if ahead <= self.tolerance_us {
            Ok(next)
        } else {
            let wait = u64::try_from(ahead - self.tolerance_us).unwrap_or(0);
            Err(Duration::from_micros(wait))
        }
    }
}

/// The shared limiter: GCRA parameters and the pool whose `rate_limits` table holds the state.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    gcra: Option<Gcra>,
    pool: PgPool,
}

/// The UPSERT that is [`Gcra::decide`]: it inserts or advances the key's TAT only when the request
/// is admitted. A refused request changes nothing; the CTE's plain read of `rate_limits` sees the
/// row as it was before the statement and yields the wait. Row locking of `ON CONFLICT DO UPDATE`
/// makes concurrent requests for one key, from any replica, serialise on that row.
/// `$4` fixes "now" for tests; production passes NULL and gets the database clock.
const CHECK_SQL: &str = "
WITH now AS (
    SELECT coalesce($4::int8, (extract(epoch FROM clock_timestamp()) * 1000000)::int8) AS us
), up AS (
    INSERT INTO rate_limits AS r (key_id, tat_us)
    SELECT $1, now.us + $2 FROM now WHERE $2 <= $3
    ON CONFLICT (key_id) DO UPDATE
       SET tat_us = greatest(r.tat_us, (SELECT us FROM now)) + $2
     WHERE greatest(r.tat_us, (SELECT us FROM now)) + $2 - (SELECT us FROM now) <= $3
    RETURNING tat_us
)
SELECT (SELECT tat_us FROM up) AS admitted_tat,
       (SELECT tat_us FROM rate_limits WHERE key_id = $1) AS old_tat,
       (SELECT us FROM now) AS now_us";

impl RateLimiter {
    pub fn new(pool: PgPool, rate_per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            gcra: Gcra::new(rate_per_sec, burst),
            pool,
        }
    }

    /// Takes one request for `key`. `Ok(Err(wait))` when the key has no allowance left.
    pub async fn check(&self, key: Uuid) -> Result<Result<(), Duration>> {
        let Some(g) = self.gcra else {
            return Ok(Ok(())); // disabled
        };
        self.check_at(g, key, None).await
    }

    async fn check_at(
        &self,
        g: Gcra,
        key: Uuid,
        now_us: Option<i64>,
    ) -> Result<Result<(), Duration>> {
        let (admitted, old, now): (Option<i64>, Option<i64>, i64) = sqlx::query_as(CHECK_SQL)
            .bind(key)
            .bind(g.interval_us)
            .bind(g.tolerance_us)
            .bind(now_us)
            .fetch_one(&self.pool)
            .await?;
        if admitted.is_some() {
            return Ok(Ok(()));
        }
        // Refused: the model gives the wait from the TAT the statement saw.
        Ok(match g.decide(old, now) {
            Ok(_) => Err(Duration::from_micros(
                u64::try_from(g.interval_us).unwrap_or(1),
            )),
            Err(wait) => Err(wait),
        })
    }

    /// The statement at a fixed time, for the model test.
    #[doc(hidden)]
    pub async fn check_at_for_tests(&self, key: Uuid, now_us: i64) -> Result<Result<(), Duration>> {
        match self.gcra {
            Some(g) => self.check_at(g, key, Some(now_us)).await,
            None => Ok(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_burst_then_paces() {
        let g = Gcra::new(10, 3).expect("rate 10 is enabled");
        assert_eq!(g.interval_us, 100_000);
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(g.decide(tat, 0).expect("within the burst"));
        }
        assert_eq!(g.decide(tat, 0), Err(Duration::from_millis(100)));
        // 100 ms later one more request passes, and only one.
        tat = Some(g.decide(tat, 100_000).expect("one interval later"));
        assert!(g.decide(tat, 100_000).is_err());
        // Never more than the burst after a long pause.
        let later = 3_600_000_000;
        for _ in 0..3 {
            tat = Some(g.decide(tat, later).expect("refilled"));
        }
        assert!(g.decide(tat, later).is_err());
    }

    #[test]
    fn zero_rate_disables() {
        assert_eq!(Gcra::new(0, 10), None);
        // Burst 0 still admits one request per interval.
        let g = Gcra::new(1, 0).expect("enabled");
        assert!(g.decide(None, 0).is_ok());
    }
}
