//! When a certificate is due for renewal — one rule for every certificate Nexus rotates: the
//! node agent's node certificate, the CA's own server certificate and the client
//! certificates the CA publishes as Secrets.

/// The Unix second after which a certificate valid from `not_before` to `not_after` should
/// be renewed: after two thirds of its life (kubelet's rule, roughly), leaving the last third
/// for retries while the issuer is unreachable. A certificate whose validity is inverted is
/// due from its `not_before` on.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let life = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add(life / 3 * 2 + life % 3 * 2 / 3)
}

/// Whether a certificate valid from `not_before` to `not_after` is due for renewal at `now`.
pub fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    now >= renew_at(not_before, not_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn two_thirds_of_a_week() {
        let week = 7 * 86_400;
        assert_eq!(renew_at(1_000, 1_000 + week), 1_000 + week * 2 / 3);
        assert!(!renewal_due(1_000, 1_000 + week, 1_000 + week * 2 / 3 - 1));
        assert!(renewal_due(1_000, 1_000 + week, 1_000 + week * 2 / 3));
    }

    #[test]
    fn an_inverted_validity_is_due_at_once() {
        assert_eq!(renew_at(500, 100), 500);
        assert!(renewal_due(500, 100, 500));
    }

    proptest! {
        /// Inside the validity, at two thirds (rounded down) — also for lifetimes near
        /// i64::MAX where `life * 2` would overflow.
        #[test]
        fn renewal_falls_at_two_thirds_inside_the_validity(nb in -(1i64 << 40)..(1i64 << 40), life in 0i64..(i64::MAX >> 2)) {
            let at = renew_at(nb, nb + life);
            prop_assert!(at >= nb && at <= nb + life);
            prop_assert_eq!(i128::from(at), i128::from(nb) + i128::from(life) * 2 / 3);
        }
    }
}
