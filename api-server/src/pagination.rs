//! Keyset cursors over `(created_at, id)`, newest first.
//!
//! A cursor is `<created_at in µs since the epoch>.<id as 32 hex digits>`. Clients treat it as
//! opaque, but its syntax is public (a pattern in the OpenAPI document) and every string that
//! matches the pattern is a valid position, so a schema-valid request is never refused.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The syntax of a cursor; [`decode`] accepts exactly the strings that match it.
pub const CURSOR_PATTERN: &str = "^[0-9]{1,18}\\.[0-9a-f]{32}$";

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1–100 (default 20).
    #[serde(default, deserialize_with = "crate::num::query_u32")]
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page: the page starts after that item.
    #[param(
        pattern = "^[0-9]{1,18}\\.[0-9a-f]{32}$",
        example = "1764000000000000.0195f3a2c1d84e5f9a6b7c8d9e0f1a2b"
    )]
    pub cursor: Option<String>,
}

/// Where a page starts: after this `(created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl PageParams {
    pub fn limit(&self) -> Result<i64> {
        match self.limit {
            None => Ok(20),
            Some(n @ 1..=100) => Ok(i64::from(n)),
            Some(n) => Err(Error::bad_request(
                "invalid_limit",
                format!("limit {n} is not in 1..=100"),
            )),
        }
    }

    /// The decoded cursor; a cursor this server did not issue is a 400.
    pub fn after(&self) -> Result<(Option<DateTime<Utc>>, Option<Uuid>)> {
        match &self.cursor {
            None => Ok((None, None)),
            Some(c) => {
                let a = decode(c).ok_or_else(|| {
                    Error::bad_request("invalid_cursor", "cursor is not one this API returned")
                })?;
                Ok((Some(a.created_at), Some(a.id)))
            }
        }
    }
}

pub fn encode(a: After) -> String {
    format!(
        "{}.{}",
        a.created_at.timestamp_micros().max(0),
        a.id.simple()
    )
}

/// Decodes a cursor; `None` exactly when `s` does not match [`CURSOR_PATTERN`].
pub fn decode(s: &str) -> Option<After> {
    let (micros, id) = s.split_once('.')?;
    let digits = |p: &str, n: std::ops::RangeInclusive<usize>, hex: bool| {
        n.contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&b)))
    };
    if !digits(micros, 1..=18, false) || !digits(id, 32..=32, true) {
        return None;
    }
    // ≤ 18 digits: below 10^18 µs (year ~33,700), inside both chrono's and PostgreSQL's range.
    let micros: i64 = micros.parse().ok()?;
    Some(After {
        created_at: DateTime::from_timestamp_micros(micros)?,
        id: Uuid::parse_str(id).ok()?,
    })
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` were fetched with `LIMIT limit + 1`; `key` gives each row's `(created_at, id)`.
    pub fn new(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> After) -> Page<T> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| encode(key(r)))
        } else {
            None
        };
        Page {
            data: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let a = After {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default(),
            id: Uuid::new_v4(),
        };
        assert_eq!(decode(&encode(a)), Some(a));
        assert_eq!(decode("not-a-cursor"), None);
        assert_eq!(decode("1.0195F3A2C1D84E5F9A6B7C8D9E0F1A2B"), None);
        assert_eq!(
            decode("1234567890123456789.0195f3a2c1d84e5f9a6b7c8d9e0f1a2b"),
            None
        );
        assert_eq!(decode(""), None);
        // Every string of the documented syntax is a position.
        let re = [
            "0.00000000000000000000000000000000",
            "999999999999999999.ffffffffffffffffffffffffffffffff",
        ];
        for s in re {
            assert!(decode(s).is_some(), "{s}");
        }
    }
}
