//! Integers as JSON Schema counts them: `12.0` and `1e3` are integers there (a number with no
//! fractional part), while serde's derived `u32`/`u64` refuse them. These deserializers accept
//! any JSON number with an integral value in range, and nothing else (not strings, not `12.5`).

use std::fmt;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Largest integer an `f64` holds exactly; beyond it a float cannot name one integer.
const EXACT: f64 = 9_007_199_254_740_992.0;

struct Int {
    min: i128,
    max: i128,
}

impl Visitor<'_> for Int {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an integer from {} to {}", self.min, self.max)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        self.check(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        self.check(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
        if v.fract() != 0.0 || !v.is_finite() || v.abs() > EXACT {
            return Err(E::invalid_value(de::Unexpected::Float(v), &self));
        }
        // Integral and within ±2^53: the conversion is exact.
        self.check(v as i128)
    }
}

impl Int {
    fn check<E: de::Error>(&self, v: i128) -> Result<i128, E> {
        if v < self.min || v > self.max {
            return Err(E::custom(format!(
                "{v} is not in {}..={}",
                self.min, self.max
            )));
        }
        Ok(v)
    }
}

fn int<'de, D: Deserializer<'de>>(d: D, min: i128, max: i128) -> Result<i128, D::Error> {
    d.deserialize_any(Int { min, max })
}

pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    int(d, 0, i128::from(u32::MAX)).map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

/// A `u64` that also fits PostgreSQL's `bigint` (≤ 2^63 − 1).
pub fn u63<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    int(d, 0, i128::from(i64::MAX)).map(|v| u64::try_from(v).unwrap_or(0))
}

pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    int(d, 0, i128::from(u64::MAX)).map(|v| u64::try_from(v).unwrap_or(u64::MAX))
}

pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
            u64(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

pub fn opt_i64_nonneg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a non-negative integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<i64>, D::Error> {
            int(d, 0, i128::from(i64::MAX)).map(|v| Some(i64::try_from(v).unwrap_or(i64::MAX)))
        }
    }
    d.deserialize_option(Opt)
}

/// An optional field that may be absent but not `null` (the document says "string", not
/// "string or null"): use with `#[serde(default, deserialize_with = "crate::num::not_null")]`.
pub fn not_null<'de, D: Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An integer query parameter: the text of a JSON number with an integral value (`12`, `12.0`).
pub fn query_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let text: Option<String> = serde::Deserialize::deserialize(d)?;
    let Some(text) = text else { return Ok(None) };
    let bad = || de::Error::custom(format!("{text:?} is not an integer from 0 to 4294967295"));
    if let Ok(v) = text.parse::<u32>() {
        return Ok(Some(v));
    }
    let f: f64 = text.parse().map_err(|_| bad())?;
    if f.fract() != 0.0 || !(0.0..=f64::from(u32::MAX)).contains(&f) {
        return Err(bad());
    }
    Ok(Some(f as u32))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::u32")]
        a: u32,
        #[serde(default, deserialize_with = "super::opt_u64")]
        b: Option<u64>,
        #[serde(default, deserialize_with = "super::u63")]
        c: u64,
        #[serde(default, deserialize_with = "super::not_null")]
        d: Option<String>,
    }

    fn parse(s: &str) -> Result<T, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn integral_numbers_in_any_json_form() {
        let t = parse(r#"{"a": 12.0, "b": 1e3, "c": 9223372036854775807}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.a, t.b, t.c), (12, Some(1000), i64::MAX as u64));
        assert_eq!(
            parse(r#"{"a": 1, "b": null}"#).map(|t| t.b).ok(),
            Some(None)
        );
        assert_eq!(
            parse(r#"{"a": 1, "d": "x"}"#).map(|t| t.d).ok(),
            Some(Some("x".into()))
        );
        assert_eq!(parse(r#"{"a": 1}"#).map(|t| t.d).ok(), Some(None));
        for bad in [
            r#"{"a": 12.5}"#,
            r#"{"a": "12"}"#,
            r#"{"a": -1}"#,
            r#"{"a": 4294967296}"#,
            r#"{"a": 1, "c": 9223372036854775808}"#,
            r#"{"a": 1e300}"#,
            r#"{"a": true}"#,
            r#"{"a": 1, "d": null}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
