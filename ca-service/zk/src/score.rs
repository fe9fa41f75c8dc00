//! Fixed-point scores: `value × 10^4` as `u64`, converted exactly (no floats).

use crate::ZkError;

/// Fixed-point scale: a score of `1.0` is `10_000`; four decimal places are kept.
pub const SCORE_SCALE: u64 = 10_000;
const SCALE_DIGITS: usize = 4;

/// Parse a non-negative decimal (`"0.9731"`, `"97.31"`, `"42"`) into fixed-point units.
///
/// More than four decimal places, signs, exponents and overflow are errors (never
/// rounded), so the committed value is exactly what was written.
pub fn parse_score(text: &str) -> Result<u64, ZkError> {
    let text = text.trim();
    let bad = |why: &str| ZkError::InvalidScore(format!("{why}: {text:?}"));
    if text.is_empty() || text.len() > 40 {
        return Err(bad("expected a decimal number"));
    }
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !digits_only(int_part)
        || !digits_only(frac_part)
    {
        return Err(bad("expected a decimal number"));
    }
    if frac_part.len() > SCALE_DIGITS {
        return Err(bad("more than 4 decimal places"));
    }
    let int: u64 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| bad("too large"))?
    };
    let mut frac: u64 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().map_err(|_| bad("invalid fraction"))?
    };
    for _ in frac_part.len()..SCALE_DIGITS {
        frac *= 10;
    }
    int.checked_mul(SCORE_SCALE)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(|| bad("too large"))
}

/// Format fixed-point units as a decimal with four places (`9731` → `"0.9731"`).
pub fn format_score(value: u64) -> String {
    format!("{}.{:04}", value / SCORE_SCALE, value % SCORE_SCALE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        for (text, want) in [
            ("0.9731", 9731),
            ("97.31", 973_100),
            ("42", 420_000),
            (".5", 5000),
            ("1.", 10_000),
            ("0", 0),
            (" 0.0001 ", 1),
        ] {
            assert_eq!(parse_score(text).ok(), Some(want), "{text}");
            assert_eq!(parse_score(&format_score(want)).ok(), Some(want));
        }
    }

    #[test]
    fn rejects_bad_text() {
        for text in [
            "",
            ".",
            "-1",
            "+1",
            "1e3",
            "0.12345",
            "1.2.3",
            "abc",
            "١",
            "18446744073709551616",
            "1844674407370956",
            " ",
        ] {
            assert!(parse_score(text).is_err(), "{text}");
        }
        assert_eq!(parse_score("1844674407370955.1615").ok(), Some(u64::MAX));
    }
}
