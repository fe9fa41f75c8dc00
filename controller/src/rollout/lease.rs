//! Leader election over a `coordination.k8s.io/v1` Lease, so that only one controller replica
//! writes NexusNode specs and Fabric status (as linkerd's policy controller does for status).
//!
//! [`decide`] is the pure rule (client-go's): create the Lease if missing; renew it if we hold
//! it; take it over when the holder's `renewTime + leaseDurationSeconds` has passed; otherwise
//! wait. [`LeaseLock::try_acquire_or_renew`] applies it with optimistic concurrency: every write
//! carries the `resourceVersion` that was read, so two replicas racing for an expired Lease
//! cannot both win (the loser gets a 409 and stays a follower).

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::Error;

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// The holder let it expire: take it over.
    TakeOver,
    /// Someone else holds it.
    Follow {
        /// The holder.
        holder: String,
    },
}

fn micro(t: DateTime<Utc>) -> MicroTime {
    MicroTime(
        k8s_openapi::jiff::Timestamp::from_microsecond(t.timestamp_micros()).unwrap_or_default(),
    )
}

fn chrono_of(t: &MicroTime) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.0.as_microsecond()).unwrap_or_default()
}

/// The election rule.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: DateTime<Utc>,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    let expires = spec
        .renew_time
        .as_ref()
        .map(|t| chrono_of(t) + chrono::Duration::from_std(duration).unwrap_or_default());
    match expires {
        Some(e) if e > now => Decision::Follow { holder },
        _ => Decision::TakeOver,
    }
}

/// One replica's handle on the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub duration: Duration,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl LeaseLock {
    /// A lock on Lease `name` in `namespace`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn spec(&self, now: DateTime<Utc>, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or_else(|| micro(now))),
            renew_time: Some(micro(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Acquires or renews the Lease; `Ok(true)` while we are the leader. A lost race (409) is
    /// `Ok(false)`, not an error.
    pub async fn try_acquire_or_renew(&self, now: DateTime<Utc>) -> Result<bool, Error> {
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
            self.duration,
        );
        let result = match (decision, current) {
            (Decision::Follow { .. }, _) => return Ok(false),
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (d, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(if d == Decision::Renew {
                    self.spec(now, old.acquire_time, transitions)
                } else {
                    self.spec(now, None, transitions + 1)
                });
                // `lease.metadata.resourceVersion` is the one read: a concurrent write makes
                // this a 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(micro(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn election_rule() {
        let d = Duration::from_secs(15);
        assert_eq!(decide(None, "a", at(0), d), Decision::Create);
        assert_eq!(
            decide(Some(&held("a", 0)), "a", at(100), d),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held("b", 0)), "a", at(10), d),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&held("b", 0)), "a", at(16), d),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&held("", 0)), "a", at(1), d),
            Decision::TakeOver
        );
    }
}
