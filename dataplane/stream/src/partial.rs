//! Timed reliability (PR-SCTP's idea, RFC 3758, with Media-over-QUIC's mechanism): a
//! partially reliable message is a QUIC stream that QUIC retransmits normally until its
//! deadline; then the sender resets the stream and the receiver stops it, so neither side
//! spends more on it, and the drop is counted. The deadline is the only decision, made here
//! without I/O.

use std::time::Duration;

/// When a partially reliable message stops being worth delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A fixed time budget from the send.
    Within(Duration),
    /// A retransmission budget: roughly `n` retransmissions after the first transmission.
    /// QUIC does not expose per-stream retransmission counts, so the budget is converted to
    /// time: each attempt costs one probe timeout, estimated as 3 × the smoothed RTT (RTT +
    /// 4 × RTT variance ≈ RTT/2 each, plus ack delay), with a 10 ms floor per attempt.
    Retries(u32),
}

/// Smallest probe timeout assumed per attempt of a retry budget.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(10);

impl Expiry {
    /// The time budget for this expiry on a path with smoothed RTT `rtt`.
    pub fn deadline(self, rtt: Duration) -> Duration {
        match self {
            Expiry::Within(d) => d.max(Duration::from_millis(1)),
            Expiry::Retries(n) => (rtt * 3).max(MIN_ATTEMPT) * n.saturating_add(1),
        }
    }
}

/// The deadline as carried in the preamble: whole milliseconds, at least 1 (0 means "no
/// deadline" on the wire), saturating at `u32::MAX`.
pub fn wire_deadline_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budgets_scale_with_rtt_and_have_a_floor() {
        let ms = Duration::from_millis;
        assert_eq!(Expiry::Retries(0).deadline(ms(20)), ms(60));
        assert_eq!(Expiry::Retries(2).deadline(ms(20)), ms(180));
        assert_eq!(Expiry::Retries(1).deadline(ms(1)), ms(20));
        assert_eq!(Expiry::Within(ms(0)).deadline(ms(5)), ms(1));
        assert_eq!(wire_deadline_ms(Duration::from_micros(10)), 1);
        assert_eq!(
            wire_deadline_ms(Duration::from_secs(u64::MAX / 2)),
            u32::MAX
        );
    }
}
