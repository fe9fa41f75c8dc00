//! Outcomes of fetches, remembered: verified bytes until evicted, failures until their back-off
//! passes. Pure — the caller passes `now` — so the back-off is tested without waiting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{Error, Source, Verified};

/// First retry after a failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(10);
/// Longest wait between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
enum Entry {
    Verified(Arc<Vec<u8>>),
    Failed {
        error: Error,
        failures: u32,
        retry_at: DateTime<Utc>,
    },
    InFlight {
        failures: u32,
    },
}

/// What the cache knows of (source, digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Verified bytes.
    Verified(Verified),
    /// The last attempt failed; do not try again before `retry_at`.
    Failed {
        /// Why.
        error: Error,
        /// Failures in a row.
        failures: u32,
        /// Next attempt.
        retry_at: DateTime<Utc>,
    },
    /// A fetch is under way.
    InFlight,
    /// Fetch it (the entry is now marked in flight).
    Fetch,
}

/// The cache, keyed by source and pinned digest (the same bytes from another source are another
/// entry: the source is what is being vouched for).
#[derive(Debug, Clone, Default)]
pub struct Cache {
    entries: BTreeMap<(Source, String), Entry>,
}

/// Back-off after `failures` failures in a row: 10 s doubling to 10 minutes.
pub fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << exp).min(MAX_RETRY)
}

impl Cache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks up (source, sha256) at `now`. [`Lookup::Fetch`] claims the fetch: later lookups
    /// answer [`Lookup::InFlight`] until [`Cache::record`] is called.
    pub fn lookup(&mut self, source: &Source, sha256: &str, now: DateTime<Utc>) -> Lookup {
        let key = (source.clone(), sha256.to_owned());
        match self.entries.get(&key) {
            Some(Entry::Verified(bytes)) => Lookup::Verified(Verified {
                bytes: bytes.clone(),
                sha256: sha256.to_owned(),
            }),
            Some(Entry::InFlight { .. }) => Lookup::InFlight,
            Some(Entry::Failed {
                error,
                failures,
                retry_at,
            }) if now < *retry_at => Lookup::Failed {
                error: error.clone(),
                failures: *failures,
                retry_at: *retry_at,
            },
            other => {
                let failures = match other {
                    Some(Entry::Failed { failures, .. }) => *failures,
                    _ => 0,
                };
                self.entries.insert(key, Entry::InFlight { failures });
                Lookup::Fetch
            }
        }
    }

    /// Like [`Cache::lookup`] without claiming anything: [`Lookup::Fetch`] only says a fetch
    /// is due.
    pub fn peek(&self, source: &Source, sha256: &str, now: DateTime<Utc>) -> Lookup {
        match self.entries.get(&(source.clone(), sha256.to_owned())) {
            Some(Entry::Verified(bytes)) => Lookup::Verified(Verified {
                bytes: bytes.clone(),
                sha256: sha256.to_owned(),
            }),
            Some(Entry::InFlight { .. }) => Lookup::InFlight,
            Some(Entry::Failed {
                error,
                failures,
                retry_at,
            }) if now < *retry_at => Lookup::Failed {
                error: error.clone(),
                failures: *failures,
                retry_at: *retry_at,
            },
            _ => Lookup::Fetch,
        }
    }

    /// Records the outcome of a fetch claimed by [`Cache::lookup`]; returns what a lookup now
    /// answers.
    pub fn record(
        &mut self,
        source: &Source,
        sha256: &str,
        result: Result<Verified, Error>,
        now: DateTime<Utc>,
    ) -> Lookup {
        let key = (source.clone(), sha256.to_owned());
        let before = match self.entries.get(&key) {
            Some(Entry::InFlight { failures } | Entry::Failed { failures, .. }) => *failures,
            _ => 0,
        };
        match result {
            Ok(v) => {
                self.entries.insert(key, Entry::Verified(v.bytes.clone()));
                Lookup::Verified(v)
            }
            Err(error) => {
                let failures = before.saturating_add(1);
                let retry_at = now
                    + chrono::Duration::from_std(retry_delay(failures))
                        .unwrap_or(chrono::Duration::MAX);
                self.entries.insert(
                    key,
                    Entry::Failed {
                        error: error.clone(),
                        failures,
                        retry_at,
                    },
                );
                Lookup::Failed {
                    error,
                    failures,
                    retry_at,
                }
            }
        }
    }

    /// Verified bytes with this digest, from any source.
    pub fn by_digest(&self, sha256: &str) -> Option<Arc<Vec<u8>>> {
        self.entries.iter().find_map(|((_, d), e)| match e {
            Entry::Verified(b) if d == sha256 => Some(b.clone()),
            _ => None,
        })
    }

    /// Forgets everything but the digests in `keep` (bundles no Fabric pins any more).
    pub fn retain_digests(&mut self, keep: &[&str]) {
        self.entries.retain(|(_, d), _| keep.contains(&d.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    #[test]
    fn failures_are_cached_with_backoff_and_successes_for_good() {
        let mut c = Cache::new();
        let src = Source::Http("http://x/b".into());
        assert_eq!(c.lookup(&src, "aa", t(0)), Lookup::Fetch);
        assert_eq!(
            c.lookup(&src, "aa", t(1)),
            Lookup::InFlight,
            "one fetch at a time"
        );
        let err = Error::Http {
            url: "http://x/b".into(),
            message: "503".into(),
        };
        c.record(&src, "aa", Err(err.clone()), t(1));
        match c.lookup(&src, "aa", t(5)) {
            Lookup::Failed {
                failures, retry_at, ..
            } => {
                assert_eq!(failures, 1);
                assert_eq!(retry_at, t(11));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.lookup(&src, "aa", t(11)),
            Lookup::Fetch,
            "retried after the back-off"
        );
        c.record(&src, "aa", Err(err), t(11));
        match c.lookup(&src, "aa", t(12)) {
            Lookup::Failed {
                failures, retry_at, ..
            } => {
                assert_eq!(failures, 2);
                assert_eq!(retry_at, t(31), "doubled");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.lookup(&src, "aa", t(31)), Lookup::Fetch);
        let v = Verified {
            bytes: Arc::new(b"x".to_vec()),
            sha256: "aa".into(),
        };
        c.record(&src, "aa", Ok(v.clone()), t(32));
        assert_eq!(c.lookup(&src, "aa", t(10_000)), Lookup::Verified(v));
        assert!(c.by_digest("aa").is_some());
        c.retain_digests(&[]);
        assert!(c.by_digest("aa").is_none());
    }

    #[test]
    fn delay_is_bounded() {
        assert_eq!(retry_delay(1), FIRST_RETRY);
        assert_eq!(retry_delay(100), MAX_RETRY);
    }
}
