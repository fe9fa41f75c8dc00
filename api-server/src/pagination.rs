//! Opaque keyset cursors over `(created_at, id)`, newest first.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{Error, Result};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1–100 (default 20).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
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
    B64.encode(format!("c1|{}|{}", a.created_at.timestamp_micros(), a.id))
}

pub fn decode(s: &str) -> Option<After> {
    let raw = B64.decode(s).ok()?;
    let text = std::str::from_utf8(&raw).ok()?;
    let mut parts = text.split('|');
    if parts.next()? != "c1" {
        return None;
    }
    let micros: i64 = parts.next()?.parse().ok()?;
    let id: Uuid = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(After {
        created_at: DateTime::from_timestamp_micros(micros)?,
        id,
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
        assert_eq!(decode(&B64.encode("c2|1|x")), None);
        assert_eq!(decode(""), None);
    }
}
