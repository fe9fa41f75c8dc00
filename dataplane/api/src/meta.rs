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

/// Parsed metadata, in wire order: the `key=value;…` text itself, with the byte ranges of
/// each pair, so parsing a stream's metadata costs one allocation (it is parsed for every
/// stream a node serves) and lookups are slices of it.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    text: String,
    /// Per pair: key start, key end (the `=`), value end; the value starts after the `=`.
    spans: [(u16, u16, u16); MAX_PAIRS],
    len: u8,
}

impl PartialEq for Meta {
    fn eq(&self, other: &Self) -> bool {
        // The text is canonical (`k=v` pairs joined by `;`, nothing else), so equal texts are
        // equal pairs in equal order.
        self.text == other.text
    }
}

impl Eq for Meta {}

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
        Self::default().with("op", op)
    }

    /// The pairs, in wire order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.spans[..usize::from(self.len)]
            .iter()
            .map(|&(k, eq, end)| {
                (
                    &self.text[usize::from(k)..usize::from(eq)],
                    &self.text[usize::from(eq) + 1..usize::from(end)],
                )
            })
    }

    /// Metadata of these pairs, in this order (already valid: built by [`Meta::with`] or
    /// taken from parsed metadata).
    fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut m = Meta::default();
        for (k, v) in pairs {
            if usize::from(m.len) == MAX_PAIRS {
                break;
            }
            if !m.text.is_empty() {
                m.text.push(';');
            }
            let start = m.text.len();
            m.text.push_str(k);
            let eq = m.text.len();
            m.text.push('=');
            m.text.push_str(v);
            m.spans[usize::from(m.len)] = (start as u16, eq as u16, m.text.len() as u16);
            m.len += 1;
        }
        m
    }

    /// Adds a pair (replacing one of the same key); values that break the syntax are
    /// sanitised (forbidden bytes become `_`, truncated to [`MAX_VALUE`]) so lifted JSON-RPC
    /// names can never corrupt the block. Beyond [`MAX_PAIRS`] pairs the pair is dropped.
    pub fn with(self, key: &'static str, value: &str) -> Self {
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
        Self::from_pairs(
            self.pairs()
                .filter(|(k, _)| *k != key)
                .chain(std::iter::once((key, v.as_str()))),
        )
    }

    /// Drops the pair of `key`, if any.
    pub fn without(self, key: &str) -> Self {
        Self::from_pairs(self.pairs().filter(|(k, _)| *k != key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Encodes to bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.text.as_bytes().to_vec()
    }

    /// Parses bytes from the wire.
    pub fn parse(b: &[u8]) -> Result<Self, MetaError> {
        let s = std::str::from_utf8(b).map_err(|_| MetaError::NotAscii)?;
        if !s.is_ascii() {
            return Err(MetaError::NotAscii);
        }
        let mut m = Meta {
            text: s.to_owned(),
            ..Meta::default()
        };
        if s.is_empty() {
            return Ok(m);
        }
        let mut at = 0usize;
        for part in s.split(';') {
            if usize::from(m.len) == MAX_PAIRS {
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
            if m.pairs().any(|(have, _)| have == k) {
                return Err(MetaError::Duplicate(k.into()));
            }
            // Keys are at most 32 bytes and values 256, 16 pairs at most: offsets fit u16.
            let eq = at + k.len();
            let end = eq + 1 + v.len();
            m.spans[usize::from(m.len)] = (at as u16, eq as u16, end as u16);
            m.len += 1;
            at = end + 1;
        }
        Ok(m)
    }
}

impl fmt::Display for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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
    fn with_replaces_and_without_removes_in_order() {
        let m = Meta::op("infer")
            .with("domain", "ns/a")
            .with("capability", "chat")
            .with("domain", "ns/b");
        assert_eq!(m.to_string(), "op=infer;capability=chat;domain=ns/b");
        let m = m.without("capability");
        assert_eq!(m.to_string(), "op=infer;domain=ns/b");
        assert_eq!(m.get("domain"), Some("ns/b"));
        assert_eq!(m.get("capability"), None);
        assert_eq!(Meta::parse(b"").unwrap(), Meta::default());
        assert_eq!(Meta::default().get("op"), None);
        let parsed = Meta::parse(b"a=1;b=;c=3").unwrap();
        let pairs: Vec<_> = parsed.pairs().collect();
        assert_eq!(pairs, vec![("a", "1"), ("b", ""), ("c", "3")]);
    }

    proptest::proptest! {
        /// Whatever `with` is given, the encoding parses back to the same pairs.
        #[test]
        fn built_metadata_always_parses_back(values in proptest::collection::vec(".{0,300}", 0..20)) {
            const KEYS: [&str; 5] = ["op", "domain", "capability", "name", "method"];
            let mut m = Meta::default();
            for (i, v) in values.iter().enumerate() {
                m = m.with(KEYS[i % KEYS.len()], v);
            }
            let back = Meta::parse(&m.encode()).unwrap();
            proptest::prop_assert_eq!(&back, &m);
            for (k, v) in m.pairs() {
                proptest::prop_assert_eq!(back.get(k), Some(v));
            }
        }

        /// Arbitrary bytes parse or are refused; they never panic.
        #[test]
        fn parsing_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Meta::parse(&b);
        }
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
