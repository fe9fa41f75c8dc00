//! The NexStream wire format on top of QUIC: the preamble that opens every stream, the
//! length-prefixed messages that follow it, and the datagram envelope. This module owns that
//! format and does no I/O, so the same decoders run in the endpoint, the fuzzer and tests.
//!
//! # Stream preamble (first bytes of every stream, either direction of a bidi stream is
//! opened by the initiator only)
//!
//! | offset | size | field                                                              |
//! |-------:|-----:|--------------------------------------------------------------------|
//! | 0      | 1    | version, [`VERSION`]                                               |
//! | 1      | 1    | delivery mode ([`Mode`]; best-effort is refused on a stream)       |
//! | 2      | 1    | flags ([`FLAG_IDEMPOTENT`], [`FLAG_BULK`]); other bits must be 0   |
//! | 3      | 1    | reserved, 0                                                        |
//! | 4      | 4    | deadline in milliseconds (partially reliable only, else 0), LE     |
//! | 8      | 2    | metadata length, LE, at most the configured limit                  |
//! | 10     | n    | metadata (opaque to NexStream; NexAPI puts its routing keys here)  |
//!
//! Then messages, each a little-endian `u32` length and that many bytes, until the stream's
//! FIN. A bulk stream ([`FLAG_BULK`]) carries raw bytes after the preamble instead.
//!
//! # Datagram
//!
//! `u8` version, `u16` channel (LE), payload. Nothing else: a datagram is one QUIC
//! DATAGRAM frame and is never fragmented.

use bytes::{BufMut, Bytes, BytesMut};

/// Wire version of the preamble and the datagram envelope.
pub const VERSION: u8 = 1;
/// Fixed part of the preamble.
pub const PREAMBLE_FIXED: usize = 10;
/// Length prefix of a message.
pub const LEN_PREFIX: usize = 4;
/// Datagram envelope size.
pub const DATAGRAM_HEADER: usize = 3;
/// The request on this stream may be replayed safely (it may then travel in 0-RTT).
pub const FLAG_IDEMPOTENT: u8 = 1 << 0;
/// After the preamble the stream carries raw bytes, not length-prefixed messages (tensor
/// shards read straight into their place in a preallocated buffer).
pub const FLAG_BULK: u8 = 1 << 1;
const KNOWN_FLAGS: u8 = FLAG_IDEMPOTENT | FLAG_BULK;

/// Delivery mode of a stream or message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mode {
    /// One bidirectional QUIC stream; messages delivered in order, retransmitted.
    ReliableOrdered = 0,
    /// One unidirectional QUIC stream per message; retransmitted, delivered when complete.
    ReliableUnordered = 1,
    /// RFC 9221 DATAGRAM frames; never retransmitted.
    BestEffort = 2,
    /// One unidirectional stream per message, retransmitted until its deadline, then reset.
    PartiallyReliable = 3,
}

impl Mode {
    /// All modes, in wire order.
    pub const ALL: [Mode; 4] = [
        Mode::ReliableOrdered,
        Mode::ReliableUnordered,
        Mode::BestEffort,
        Mode::PartiallyReliable,
    ];

    /// Decodes the wire value.
    pub const fn from_u8(v: u8) -> Option<Mode> {
        match v {
            0 => Some(Mode::ReliableOrdered),
            1 => Some(Mode::ReliableUnordered),
            2 => Some(Mode::BestEffort),
            3 => Some(Mode::PartiallyReliable),
            _ => None,
        }
    }

    /// Label for metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Mode::ReliableOrdered => "reliable_ordered",
            Mode::ReliableUnordered => "reliable_unordered",
            Mode::BestEffort => "best_effort",
            Mode::PartiallyReliable => "partially_reliable",
        }
    }
}

/// Why bytes from a peer were refused. Each is reported to the peer as a stream reset /
/// stop code ([`crate::codes`]) and counted; none closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The buffer ends before the structure does.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Unknown version byte.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Unknown delivery mode.
    #[error("unknown delivery mode {0}")]
    UnknownMode(u8),
    /// Best-effort cannot be a stream.
    #[error("mode {0:?} cannot open a stream")]
    ModeNotOnStream(Mode),
    /// Reserved flag bits or reserved byte set.
    #[error("reserved bits set: {0:#04x}")]
    Reserved(u8),
    /// Deadline on a mode that has none, or a partially reliable stream without one.
    #[error("deadline {0} ms does not fit the mode")]
    Deadline(u32),
    /// Metadata longer than the limit.
    #[error("metadata of {len} bytes exceeds the limit of {max}")]
    MetadataTooLarge {
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Message longer than the limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Declared length.
        len: u64,
        /// Limit.
        max: u64,
    },
}

impl FrameError {
    /// Short label for the `refused{reason}` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            FrameError::Truncated { .. } => "truncated",
            FrameError::Version(_) => "version",
            FrameError::UnknownMode(_) => "unknown_mode",
            FrameError::ModeNotOnStream(_) => "mode_not_on_stream",
            FrameError::Reserved(_) => "reserved_bits",
            FrameError::Deadline(_) => "deadline",
            FrameError::MetadataTooLarge { .. } => "metadata_too_large",
            FrameError::MessageTooLarge { .. } => "message_too_large",
        }
    }
}

/// The opening of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preamble {
    /// Delivery mode (never best-effort).
    pub mode: Mode,
    /// Flag bits ([`FLAG_IDEMPOTENT`], [`FLAG_BULK`]).
    pub flags: u8,
    /// Partially reliable deadline, milliseconds (0 for other modes).
    pub deadline_ms: u32,
    /// Opaque metadata.
    pub meta: Bytes,
}

impl Preamble {
    /// A preamble without flags or deadline.
    pub fn new(mode: Mode, meta: impl Into<Bytes>) -> Self {
        Self {
            mode,
            flags: 0,
            deadline_ms: 0,
            meta: meta.into(),
        }
    }

    /// Whether the initiator marked the stream idempotent.
    pub fn idempotent(&self) -> bool {
        self.flags & FLAG_IDEMPOTENT != 0
    }

    /// Whether the stream carries raw bytes.
    pub fn bulk(&self) -> bool {
        self.flags & FLAG_BULK != 0
    }

    /// Encoded length.
    pub fn encoded_len(&self) -> usize {
        PREAMBLE_FIXED + self.meta.len()
    }

    /// Checks the invariants the decoder enforces, so we never send what a peer refuses.
    pub fn validate(&self, max_meta: usize) -> Result<(), FrameError> {
        if self.mode == Mode::BestEffort {
            return Err(FrameError::ModeNotOnStream(self.mode));
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::Reserved(self.flags & !KNOWN_FLAGS));
        }
        let partial = self.mode == Mode::PartiallyReliable;
        if partial != (self.deadline_ms != 0) {
            return Err(FrameError::Deadline(self.deadline_ms));
        }
        let max = max_meta.min(usize::from(u16::MAX));
        if self.meta.len() > max {
            return Err(FrameError::MetadataTooLarge {
                len: self.meta.len(),
                max,
            });
        }
        Ok(())
    }

    /// Appends the encoded preamble.
    pub fn encode(&self, out: &mut BytesMut, max_meta: usize) -> Result<(), FrameError> {
        self.validate(max_meta)?;
        out.reserve(self.encoded_len());
        out.put_u8(VERSION);
        out.put_u8(self.mode as u8);
        out.put_u8(self.flags);
        out.put_u8(0);
        out.put_u32_le(self.deadline_ms);
        // validate() bounded the length by u16::MAX.
        out.put_u16_le(self.meta.len() as u16);
        out.put_slice(&self.meta);
        Ok(())
    }

    /// Decodes the fixed part: returns the preamble without metadata and the metadata length
    /// still to read. Lets a stream reader learn how much more to read before allocating.
    pub fn decode_fixed(
        buf: &[u8; PREAMBLE_FIXED],
        max_meta: usize,
    ) -> Result<(Preamble, usize), FrameError> {
        if buf[0] != VERSION {
            return Err(FrameError::Version(buf[0]));
        }
        let mode = Mode::from_u8(buf[1]).ok_or(FrameError::UnknownMode(buf[1]))?;
        let p = Preamble {
            mode,
            flags: buf[2],
            deadline_ms: u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]),
            meta: Bytes::new(),
        };
        if buf[3] != 0 {
            return Err(FrameError::Reserved(buf[3]));
        }
        let meta_len = usize::from(u16::from_le_bytes([buf[8], buf[9]]));
        p.validate(usize::from(u16::MAX))?;
        if meta_len > max_meta {
            return Err(FrameError::MetadataTooLarge {
                len: meta_len,
                max: max_meta,
            });
        }
        Ok((p, meta_len))
    }

    /// Decodes a whole preamble from the start of `buf`; returns it and the bytes consumed.
    pub fn decode(buf: &[u8], max_meta: usize) -> Result<(Preamble, usize), FrameError> {
        let fixed: &[u8; PREAMBLE_FIXED] = buf
            .get(..PREAMBLE_FIXED)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Truncated {
                need: PREAMBLE_FIXED,
                have: buf.len(),
            })?;
        let (mut p, meta_len) = Self::decode_fixed(fixed, max_meta)?;
        let end = PREAMBLE_FIXED + meta_len;
        let meta = buf.get(PREAMBLE_FIXED..end).ok_or(FrameError::Truncated {
            need: end,
            have: buf.len(),
        })?;
        p.meta = Bytes::copy_from_slice(meta);
        Ok((p, end))
    }
}

/// Checks a message length prefix against the limit.
pub fn check_message_len(prefix: [u8; LEN_PREFIX], max: u64) -> Result<usize, FrameError> {
    let len = u64::from(u32::from_le_bytes(prefix));
    if len > max {
        return Err(FrameError::MessageTooLarge { len, max });
    }
    // len ≤ u32::MAX, which fits usize on every target we build for (64-bit).
    usize::try_from(len).map_err(|_| FrameError::MessageTooLarge { len, max })
}

/// Appends a length-prefixed message.
pub fn encode_message(msg: &[u8], out: &mut BytesMut, max: u64) -> Result<(), FrameError> {
    let len = msg.len() as u64;
    if len > max || len > u64::from(u32::MAX) {
        return Err(FrameError::MessageTooLarge { len, max });
    }
    out.reserve(LEN_PREFIX + msg.len());
    out.put_u32_le(len as u32);
    out.put_slice(msg);
    Ok(())
}

/// Splits a buffer of length-prefixed messages (what follows a preamble). Returns the
/// complete messages and the number of bytes they used; a trailing partial message is left.
pub fn decode_messages(buf: &[u8], max: u64) -> Result<(Vec<&[u8]>, usize), FrameError> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(prefix) = buf.get(at..at + LEN_PREFIX) {
        let mut p = [0u8; LEN_PREFIX];
        p.copy_from_slice(prefix);
        let len = check_message_len(p, max)?;
        let Some(body) = buf.get(at + LEN_PREFIX..at + LEN_PREFIX + len) else {
            break;
        };
        out.push(body);
        at += LEN_PREFIX + len;
    }
    Ok((out, at))
}

/// Encodes a datagram.
pub fn encode_datagram(channel: u16, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(DATAGRAM_HEADER + payload.len());
    b.put_u8(VERSION);
    b.put_u16_le(channel);
    b.put_slice(payload);
    b.freeze()
}

/// Decodes a datagram into its channel and payload (a zero-copy slice of `d`).
pub fn decode_datagram(d: &Bytes) -> Result<(u16, Bytes), FrameError> {
    if d.len() < DATAGRAM_HEADER {
        return Err(FrameError::Truncated {
            need: DATAGRAM_HEADER,
            have: d.len(),
        });
    }
    if d[0] != VERSION {
        return Err(FrameError::Version(d[0]));
    }
    Ok((u16::from_le_bytes([d[1], d[2]]), d.slice(DATAGRAM_HEADER..)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn preamble_round_trips() {
        let mut p = Preamble::new(Mode::PartiallyReliable, &b"method=infer"[..]);
        p.deadline_ms = 250;
        p.flags = FLAG_IDEMPOTENT;
        let mut b = BytesMut::new();
        p.encode(&mut b, 1024).unwrap();
        let (q, used) = Preamble::decode(&b, 1024).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(p, q);
        assert!(q.idempotent());
    }

    #[test]
    fn bad_preambles_are_refused_with_a_reason() {
        let mut good = BytesMut::new();
        Preamble::new(Mode::ReliableOrdered, &b"x"[..])
            .encode(&mut good, 16)
            .unwrap();
        let check = |edit: &dyn Fn(&mut Vec<u8>), want: &str| {
            let mut b = good.to_vec();
            edit(&mut b);
            let e = Preamble::decode(&b, 16).unwrap_err();
            assert_eq!(e.metric_label(), want, "{e}");
        };
        check(&|b| b[0] = 9, "version");
        check(&|b| b[1] = 7, "unknown_mode");
        check(&|b| b[1] = Mode::BestEffort as u8, "mode_not_on_stream");
        check(&|b| b[2] = 0x80, "reserved_bits");
        check(&|b| b[3] = 1, "reserved_bits");
        check(&|b| b[4] = 1, "deadline");
        check(&|b| b[1] = Mode::PartiallyReliable as u8, "deadline");
        check(&|b| b[8] = 200, "metadata_too_large");
        check(&|b| b.truncate(5), "truncated");
        check(&|b| b.truncate(10), "truncated");
    }

    #[test]
    fn messages_split_and_oversize_is_refused() {
        let mut b = BytesMut::new();
        encode_message(b"hello", &mut b, 100).unwrap();
        encode_message(b"", &mut b, 100).unwrap();
        encode_message(b"world!", &mut b, 100).unwrap();
        let whole = b.len();
        b.put_slice(&[3, 0, 0, 0, b'a']);
        let (msgs, used) = decode_messages(&b, 100).unwrap();
        assert_eq!(msgs, vec![&b"hello"[..], b"", b"world!"]);
        assert_eq!(used, whole);
        let e = decode_messages(&[0xff, 0xff, 0, 0], 100).unwrap_err();
        assert_eq!(e.metric_label(), "message_too_large");
        assert!(encode_message(&[0; 101], &mut BytesMut::new(), 100).is_err());
    }

    #[test]
    fn datagrams_round_trip() {
        let d = encode_datagram(7, b"tick");
        assert_eq!(
            decode_datagram(&d).unwrap(),
            (7, Bytes::from_static(b"tick"))
        );
        assert!(decode_datagram(&Bytes::from_static(&[1, 0])).is_err());
        assert!(decode_datagram(&Bytes::from_static(&[2, 0, 0])).is_err());
    }
}
