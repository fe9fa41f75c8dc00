//! Stream metadata of NexAPI: `key=value` pairs separated by `;`, carried in the NexStream
//! preamble so a router (or the P4 pipeline's software twin) can steer a stream by its
//! operation, method or tool name without parsing the body. This module owns that format.
//!
//! Keys are `[a-z0-9_]{1,32}`; values are printable ASCII without `;` or `=`, at most 256
//! bytes; at most 16 pairs; keys unique.

use std::fmt;

/// Most pairs in one metadata block.
pub const MAX_PAIRS: usize = 16;
/// Longest value.
pub const MAX_VALUE: usize = 256;

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Not ASCII text.
    #[error("metadata is not printable ASCII")]
    NotAscii,
    /// A pair without `=`.
    #[error("pair `{0}` has no `=`")]
    NoEquals(String),
    /// Key outside the allowed syntax.
    #[error("bad key `{0}`")]
    BadKey(String),
    /// Value too long or with forbidden characters.
    #[error("bad value for `{0}`")]
    BadValue(String),
    /// Key given twice.
    #[error("duplicate key `{0}`")]
    Duplicate(String),
    /// Too many pairs.
    #[error("more than {MAX_PAIRS} pairs")]
    TooMany,
}

/// Parsed metadata, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pairs: Vec<(String, String)>,
}

fn key_ok(k: &str) -> bool {
    (1..=32).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn value_ok(v: &str) -> bool {
    v.len() <= MAX_VALUE
        && v.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b';' && b != b'=')
}

impl Meta {
    /// Metadata with one `op` pair.
    pub fn op(op: &str) -> Self {
        Self {
            pairs: vec![("op".into(), op.into())],
        }
    }

    /// Adds a pair; values that break the syntax are sanitised (forbidden bytes become `_`,
    /// truncated to [`MAX_VALUE`]) so lifted JSON-RPC names can never corrupt the block.
    pub fn with(mut self, key: &'static str, value: &str) -> Self {
        let mut v: String = value
            .chars()
            .map(|c| {
                if c.is_ascii() && (' '..='~').contains(&c) && c != ';' && c != '=' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        v.truncate(MAX_VALUE);
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.into(), v));
        self
    }

    /// Drops the pair of `key`, if any.
    pub fn without(mut self, key: &str) -> Self {
        self.pairs.retain(|(k, _)| k != key);
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Encodes to bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Parses bytes from the wire.
    pub fn parse(b: &[u8]) -> Result<Self, MetaError> {
        let s = std::str::from_utf8(b).map_err(|_| MetaError::NotAscii)?;
        if !s.is_ascii() {
            return Err(MetaError::NotAscii);
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        if s.is_empty() {
            return Ok(Self { pairs });
        }
        for part in s.split(';') {
            if pairs.len() == MAX_PAIRS {
                return Err(MetaError::TooMany);
            }
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| MetaError::NoEquals(part.chars().take(40).collect()))?;
            if !key_ok(k) {
                return Err(MetaError::BadKey(k.chars().take(40).collect()));
            }
            if !value_ok(v) {
                return Err(MetaError::BadValue(k.into()));
            }
            if pairs.iter().any(|(have, _)| have == k) {
                return Err(MetaError::Duplicate(k.into()));
            }
            pairs.push((k.into(), v.into()));
        }
        Ok(Self { pairs })
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_sanitises() {
        let m = Meta::op("jsonrpc")
            .with("method", "tools/call")
            .with("name", "evil;op=x\n");
        let back = Meta::parse(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.get("name"), Some("evil_op_x_"));
        assert_eq!(back.get("op"), Some("jsonrpc"));
    }

    #[test]
    fn refuses_malformed() {
        for (bad, want) in [
            (&b"op"[..], "no `=`"),
            (b"OP=x", "bad key"),
            (b"op=x;op=y", "duplicate"),
            (b"op=\x01", "bad value"),
            (b"op=\xff", "not printable"),
        ] {
            let e = Meta::parse(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            Meta::parse(many.join(";").as_bytes()),
            Err(MetaError::TooMany)
        );
    }
}
