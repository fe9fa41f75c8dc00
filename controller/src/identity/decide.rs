//! The ModelIdentity decision core: from the resource, what its Secret holds and the time, decide
//! the one next step. No I/O, no clock: the adapter in `reconcile` gathers the inputs and carries
//! the decision out, so every branch is tested here without a cluster.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// What the adapter observed, reduced to what the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Our finalizer is present.
    pub has_finalizer: bool,
    /// Hash of the spec fields that go into the certificate ([`super::spec_hash`]).
    pub spec_hash: String,
    /// Serial recorded in status, if any.
    pub status_serial: Option<String>,
    /// Whether status already says the current certificate was revoked.
    pub status_revoked: bool,
    /// The certificate Secret, if it exists and is ours.
    pub secret: Option<SecretCert>,
    /// Certificate lifetime from the spec.
    pub duration: Duration,
    /// Renewal lead time from the spec.
    pub renew_before: Duration,
}

/// The certificate found in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCert {
    /// Serial (hex).
    pub serial: String,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
    /// Spec hash the certificate was issued for (Secret annotation).
    pub spec_hash: Option<String>,
    /// `tls.key` is present and matches `tls.crt`.
    pub key_matches: bool,
}

/// Why a certificate is (re-)issued; recorded in Events and the Issuing condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// No certificate yet.
    Initial,
    /// The Secret vanished or lost its certificate.
    SecretMissing,
    /// The Secret's key does not match its certificate, or the certificate does not parse.
    SecretInvalid,
    /// The spec changed since issuance.
    SpecChanged,
    /// Renewal time reached.
    Renewal,
    /// Already expired (e.g. the controller was down past renewal).
    Expired,
}

impl IssueReason {
    /// CamelCase reason for conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "Initial",
            Self::SecretMissing => "SecretMissing",
            Self::SecretInvalid => "SecretInvalid",
            Self::SpecChanged => "SpecChanged",
            Self::Renewal => "Renewal",
            Self::Expired => "Expired",
        }
    }
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Add the finalizer before anything external exists, so deletion can always clean up.
    AddFinalizer,
    /// Issue a certificate; `supersedes` is the serial it replaces (revoked as superseded after
    /// the new one is safely stored).
    Issue {
        /// Why.
        reason: IssueReason,
        /// Serial replaced by this issuance.
        supersedes: Option<String>,
    },
    /// The certificate is current: make status say so, then check again at `requeue_after`.
    UpToDate {
        /// Time until renewal is due.
        requeue_after: Duration,
    },
    /// Deleting: revoke `serial` (if any), then remove the finalizer.
    Finalize {
        /// Serial to revoke.
        serial: Option<String>,
    },
    /// Deleting and our finalizer is already gone: nothing to do.
    Nothing,
}

/// Longest wait between checks, so a missed watch event is noticed within this time.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);

/// When a certificate valid `[not_before, not_after]` is renewed. Normally `not_after -
/// renew_before`; when `renew_before` is not shorter than the lifetime (a CA that shortened the
/// validity), two thirds of the lifetime, as cert-manager does by default.
pub fn renewal_time(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    renew_before: Duration,
) -> DateTime<Utc> {
    let lifetime = not_after - not_before;
    let lead = chrono::Duration::from_std(renew_before).unwrap_or(chrono::Duration::MAX);
    if lead < lifetime && lead > chrono::Duration::zero() {
        not_after - lead
    } else {
        not_before + lifetime * 2 / 3
    }
}

/// Back-off after `failures` failed issuances in a row: 5 s doubling to at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(5u64.saturating_mul(1 << exp)).min(Duration::from_secs(300))
}

/// Decides the next step for one ModelIdentity.
pub fn decide(o: &Observed, now: DateTime<Utc>) -> Decision {
    if o.deleting {
        if !o.has_finalizer {
            return Decision::Nothing;
        }
        let serial = if o.status_revoked {
            None
        } else {
            o.status_serial
                .clone()
                .or_else(|| o.secret.as_ref().map(|s| s.serial.clone()))
        };
        return Decision::Finalize { serial };
    }
    if !o.has_finalizer {
        return Decision::AddFinalizer;
    }
    let Some(cert) = &o.secret else {
        let reason = if o.status_serial.is_some() {
            IssueReason::SecretMissing
        } else {
            IssueReason::Initial
        };
        return Decision::Issue {
            reason,
            supersedes: o.status_serial.clone().filter(|_| !o.status_revoked),
        };
    };
    let supersedes = Some(cert.serial.clone());
    if !cert.key_matches {
        return Decision::Issue {
            reason: IssueReason::SecretInvalid,
            supersedes,
        };
    }
    if cert.spec_hash.as_deref() != Some(o.spec_hash.as_str()) {
        return Decision::Issue {
            reason: IssueReason::SpecChanged,
            supersedes,
        };
    }
    if o.status_revoked && o.status_serial.as_deref() == Some(cert.serial.as_str()) {
        // Revoked out of band (e.g. by a security owner through the CA): replace it.
        return Decision::Issue {
            reason: IssueReason::SecretInvalid,
            supersedes: None,
        };
    }
    if now >= cert.not_after {
        return Decision::Issue {
            reason: IssueReason::Expired,
            supersedes: None,
        };
    }
    let renew_at = renewal_time(cert.not_before, cert.not_after, o.renew_before);
    if now >= renew_at {
        return Decision::Issue {
            reason: IssueReason::Renewal,
            supersedes: None,
        };
    }
    let until = (renew_at - now).to_std().unwrap_or_default();
    Decision::UpToDate {
        requeue_after: until.min(MAX_REQUEUE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + h * 3600, 0)
            .single()
            .expect("valid timestamp")
    }

    fn observed() -> Observed {
        Observed {
            deleting: false,
            has_finalizer: true,
            spec_hash: "h1".into(),
            status_serial: Some("0a".into()),
            status_revoked: false,
            secret: Some(SecretCert {
                serial: "0a".into(),
                not_before: t(0),
                not_after: t(24),
                spec_hash: Some("h1".into()),
                key_matches: true,
            }),
            duration: Duration::from_secs(24 * 3600),
            renew_before: Duration::from_secs(8 * 3600),
        }
    }

    #[test]
    fn new_resource_gets_a_finalizer_first_then_a_certificate() {
        let mut o = observed();
        o.has_finalizer = false;
        o.secret = None;
        o.status_serial = None;
        assert_eq!(decide(&o, t(0)), Decision::AddFinalizer);
        o.has_finalizer = true;
        assert_eq!(
            decide(&o, t(0)),
            Decision::Issue {
                reason: IssueReason::Initial,
                supersedes: None
            }
        );
    }

    #[test]
    fn current_certificate_waits_until_renewal() {
        assert_eq!(
            decide(&observed(), t(10)),
            Decision::UpToDate {
                requeue_after: Duration::from_secs(3600)
            }
        );
        assert_eq!(
            decide(&observed(), t(15) + chrono::Duration::minutes(30)),
            Decision::UpToDate {
                requeue_after: Duration::from_secs(1800)
            }
        );
    }

    #[test]
    fn renews_at_renew_before_and_reissues_when_expired() {
        let renewal = Decision::Issue {
            reason: IssueReason::Renewal,
            supersedes: None,
        };
        assert_eq!(decide(&observed(), t(16)), renewal);
        assert_eq!(
            decide(&observed(), t(25)),
            Decision::Issue {
                reason: IssueReason::Expired,
                supersedes: None
            }
        );
    }

    #[test]
    fn spec_change_reissues_and_supersedes() {
        let mut o = observed();
        o.spec_hash = "h2".into();
        assert_eq!(
            decide(&o, t(1)),
            Decision::Issue {
                reason: IssueReason::SpecChanged,
                supersedes: Some("0a".into())
            }
        );
    }

    #[test]
    fn missing_or_broken_secret_reissues() {
        let mut o = observed();
        o.secret = None;
        assert_eq!(
            decide(&o, t(1)),
            Decision::Issue {
                reason: IssueReason::SecretMissing,
                supersedes: Some("0a".into())
            }
        );
        let mut o = observed();
        if let Some(s) = o.secret.as_mut() {
            s.key_matches = false;
        }
        assert!(matches!(
            decide(&o, t(1)),
            Decision::Issue {
                reason: IssueReason::SecretInvalid,
                ..
            }
        ));
    }

    #[test]
    fn deletion_revokes_once_then_lets_go() {
        let mut o = observed();
        o.deleting = true;
        assert_eq!(
            decide(&o, t(1)),
            Decision::Finalize {
                serial: Some("0a".into())
            }
        );
        o.status_revoked = true;
        assert_eq!(decide(&o, t(1)), Decision::Finalize { serial: None });
        o.has_finalizer = false;
        assert_eq!(decide(&o, t(1)), Decision::Nothing);
    }

    #[test]
    fn renewal_time_falls_back_to_two_thirds() {
        assert_eq!(
            renewal_time(t(0), t(24), Duration::from_secs(8 * 3600)),
            t(16)
        );
        assert_eq!(
            renewal_time(t(0), t(3), Duration::from_secs(8 * 3600)),
            t(2)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    proptest! {
        /// A live resource with a valid, current certificate is never re-issued before its
        /// renewal time and always re-issued from then on; the requeue never overshoots renewal.
        #[test]
        fn renewal_is_exact(hours in 1i64..2000, lead_frac in 1i64..99, at in 0i64..3000) {
            let mut o = observed();
            let nb = t(0);
            let na = t(hours);
            let lead = Duration::from_secs((hours * 3600 * lead_frac / 100) as u64);
            o.renew_before = lead;
            if let Some(s) = o.secret.as_mut() { s.not_before = nb; s.not_after = na; }
            let now = t(0) + chrono::Duration::minutes(at * hours * 60 / 1000);
            let renew_at = renewal_time(nb, na, lead);
            match decide(&o, now) {
                Decision::UpToDate { requeue_after } => {
                    prop_assert!(now < renew_at);
                    prop_assert!(now + chrono::Duration::from_std(requeue_after).expect("small") <= renew_at);
                }
                Decision::Issue { reason, .. } => {
                    prop_assert!(now >= renew_at);
                    let renewing = matches!(reason, IssueReason::Renewal | IssueReason::Expired);
                    prop_assert!(renewing);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        /// Deletion never issues, and a resource without our finalizer never gets external state.
        #[test]
        fn deletion_and_finalizer_gate(deleting: bool, has_finalizer: bool, secret: bool, at in 0i64..48) {
            let mut o = observed();
            o.deleting = deleting;
            o.has_finalizer = has_finalizer;
            if !secret { o.secret = None; }
            let d = decide(&o, t(at));
            if deleting {
                let finalizing = matches!(d, Decision::Finalize { .. } | Decision::Nothing);
                prop_assert!(finalizing, "deleting must finalize, got {:?}", d);
            } else if !has_finalizer {
                prop_assert_eq!(d, Decision::AddFinalizer);
            }
        }
    }
}
