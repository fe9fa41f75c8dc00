//! The NexLink 64-byte AI metadata header.
//!
//! Every NexLink frame starts with this fixed header so that a NIC, a switch or a receiving host can
//! steer, order and account for the frame (tenant, stream, delivery mode, tensor shape) without
//! looking at the payload. It is fixed-size and cache-line sized so it parses in a few nanoseconds
//! and fits one DMA descriptor's inline area.
//!
//! # Byte layout
//!
//! All multi-byte integers are **little-endian** (every host and NIC we target is little-endian, so
//! reads compile to plain loads).
//!
//! | offset | size | field          | notes                                                              |
//! |-------:|-----:|----------------|--------------------------------------------------------------------|
//! | 0      | 2    | magic          | `b"NL"` (`0x4E 0x4C`)                                              |
//! | 2      | 1    | version        | [`VERSION`] (= 1); other values are rejected                       |
//! | 3      | 1    | delivery mode  | 0 reliable-ordered, 1 reliable-unordered, 2 best-effort, 3 partially-reliable |
//! | 4      | 2    | flags          | see [`Flags`]; bits outside [`Flags::KNOWN`] must be zero          |
//! | 6      | 1    | dtype          | see [`DType`]                                                      |
//! | 7      | 1    | rank           | 0..=[`MAX_RANK`]                                                   |
//! | 8      | 4    | stream id      |                                                                    |
//! | 12     | 4    | tenant id      |                                                                    |
//! | 16     | 8    | sequence       | per stream                                                         |
//! | 24     | 16   | shape          | 4 × u32; dims at index ≥ rank must be 0, dims < rank must be ≥ 1  |
//! | 40     | 4    | payload length | bytes following the header                                         |
//! | 44     | 4    | checksum       | [`checksum`] of bytes 0..44 and 48..64                             |
//! | 48     | 16   | trace id       | 128-bit W3C-compatible trace id                                    |
//!
//! For a dense tensor (rank ≥ 1, neither [`Flags::COMPRESSED`] nor [`Flags::FRAGMENT`] set) the
//! payload length must equal `product(shape) × dtype size`, so a receiver can size its buffer from
//! the header alone and a lying header is caught before the payload is touched.
//!
//! # Checksum
//!
//! The header checksum is a four-lane Fletcher-style sum over the fifteen other 32-bit words (see
//! [`checksum`]). It is *not* a MAC: it catches corruption and mis-framing (wrong offset in a byte
//! stream) at ~1 ns cost, which CRC32 in software cannot; integrity against an attacker is the job
//! of the transport's AEAD. Being position-dependent, it also catches swapped words.

use crate::FrameError;

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 64;
/// The two magic bytes at offset 0.
pub const MAGIC: [u8; 2] = *b"NL";
/// The only header version this crate reads and writes.
pub const VERSION: u8 = 1;
/// Maximum tensor rank the header can describe.
pub const MAX_RANK: usize = 4;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 2;
const OFF_MODE: usize = 3;
const OFF_FLAGS: usize = 4;
const OFF_DTYPE: usize = 6;
const OFF_RANK: usize = 7;
const OFF_STREAM: usize = 8;
const OFF_TENANT: usize = 12;
const OFF_SEQ: usize = 16;
const OFF_SHAPE: usize = 24;
const OFF_PAYLOAD_LEN: usize = 40;
const OFF_CHECKSUM: usize = 44;
const OFF_TRACE: usize = 48;

/// How the transport must deliver the frame; lets token streams avoid waiting behind tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DeliveryMode {
    /// Retransmitted and delivered in sequence order (control messages, token streams).
    ReliableOrdered = 0,
    /// Retransmitted, delivered as soon as complete (tensor shards that are reassembled by offset).
    ReliableUnordered = 1,
    /// Never retransmitted (telemetry, speculative activations).
    BestEffort = 2,
    /// Retransmitted until a deadline, then dropped (real-time inference streams).
    PartiallyReliable = 3,
}

impl DeliveryMode {
    /// Decodes the wire value.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::ReliableOrdered,
            1 => Self::ReliableUnordered,
            2 => Self::BestEffort,
            3 => Self::PartiallyReliable,
            _ => return None,
        })
    }
}

/// Element type of the tensor carried in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    /// Untyped bytes (tokens, serialized messages); element size 1.
    Opaque = 0,
    /// IEEE 754 binary32.
    F32 = 1,
    /// IEEE 754 binary16.
    F16 = 2,
    /// bfloat16.
    BF16 = 3,
    /// IEEE 754 binary64.
    F64 = 4,
    /// 8-bit float, E4M3.
    F8E4M3 = 5,
    /// 8-bit float, E5M2.
    F8E5M2 = 6,
    /// Signed 8-bit integer.
    I8 = 7,
    /// Unsigned 8-bit integer.
    U8 = 8,
    /// Signed 16-bit integer.
    I16 = 9,
    /// Signed 32-bit integer.
    I32 = 10,
    /// Signed 64-bit integer.
    I64 = 11,
    /// Boolean stored as one byte.
    Bool = 12,
}

impl DType {
    /// All dtypes, in wire order (handy for tests and fuzzing).
    pub const ALL: [DType; 13] = [
        Self::Opaque,
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::F64,
        Self::F8E4M3,
        Self::F8E5M2,
        Self::I8,
        Self::U8,
        Self::I16,
        Self::I32,
        Self::I64,
        Self::Bool,
    ];

    /// Decodes the wire value.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<Self> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// Size of one element in bytes.
    #[inline]
    pub const fn size(self) -> u64 {
        match self {
            Self::Opaque | Self::F8E4M3 | Self::F8E5M2 | Self::I8 | Self::U8 | Self::Bool => 1,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }
}

/// Header flag bits (a plain bit set; no external bitflags dependency for six bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// Last frame of the stream.
    pub const END_OF_STREAM: Flags = Flags(1 << 0);
    /// Payload is compressed: its length no longer follows from the shape.
    pub const COMPRESSED: Flags = Flags(1 << 1);
    /// Payload is encrypted by the transport.
    pub const ENCRYPTED: Flags = Flags(1 << 2);
    /// Sender asks for an explicit acknowledgement.
    pub const ACK_REQUESTED: Flags = Flags(1 << 3);
    /// Payload is one fragment of a larger tensor: its length no longer follows from the shape.
    pub const FRAGMENT: Flags = Flags(1 << 4);
    /// Last fragment of a fragmented tensor.
    pub const LAST_FRAGMENT: Flags = Flags(1 << 5);
    /// Every bit this version defines; the rest are reserved and must be zero so that a future
    /// version can give them meaning without old receivers silently misreading frames.
    pub const KNOWN: Flags = Flags(0b11_1111);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union of two flag sets.
    #[must_use]
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// An owned, decoded header: what an encoder fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Delivery semantics.
    pub mode: DeliveryMode,
    /// Flag bits.
    pub flags: Flags,
    /// Element type.
    pub dtype: DType,
    /// Number of meaningful entries in `shape`.
    pub rank: u8,
    /// Stream the frame belongs to.
    pub stream_id: u32,
    /// Tenant that owns the stream (for isolation and metering).
    pub tenant_id: u32,
    /// Sequence number within the stream.
    pub sequence: u64,
    /// Tensor dimensions; entries at index ≥ `rank` are zero.
    pub shape: [u32; MAX_RANK],
    /// Bytes of payload following the header.
    pub payload_len: u32,
    /// Distributed trace id.
    pub trace_id: u128,
}

impl Header {
    /// A header for an untyped payload of `payload_len` bytes.
    pub const fn opaque(stream_id: u32, sequence: u64, payload_len: u32) -> Self {
        Self {
            mode: DeliveryMode::ReliableOrdered,
            flags: Flags(0),
            dtype: DType::Opaque,
            rank: 0,
            stream_id,
            tenant_id: 0,
            sequence,
            shape: [0; MAX_RANK],
            payload_len,
            trace_id: 0,
        }
    }

    /// Checks the same invariants the parser enforces, so an encoder never emits a frame that
    /// its peer would reject.
    pub fn validate(&self) -> Result<(), FrameError> {
        if self.flags.0 & !Flags::KNOWN.0 != 0 {
            return Err(FrameError::ReservedFlags(self.flags.0 & !Flags::KNOWN.0));
        }
        validate_shape(
            self.rank,
            &self.shape,
            self.dtype,
            self.flags,
            self.payload_len,
        )
    }

    /// Writes the header (checksum included) into `out`.
    ///
    /// Fails if the header is not one the parser would accept.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) -> Result<(), FrameError> {
        self.validate()?;
        out[OFF_MAGIC..OFF_MAGIC + 2].copy_from_slice(&MAGIC);
        out[OFF_VERSION] = VERSION;
        out[OFF_MODE] = self.mode as u8;
        out[OFF_FLAGS..OFF_FLAGS + 2].copy_from_slice(&self.flags.0.to_le_bytes());
        out[OFF_DTYPE] = self.dtype as u8;
        out[OFF_RANK] = self.rank;
        out[OFF_STREAM..OFF_STREAM + 4].copy_from_slice(&self.stream_id.to_le_bytes());
        out[OFF_TENANT..OFF_TENANT + 4].copy_from_slice(&self.tenant_id.to_le_bytes());
        out[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&self.sequence.to_le_bytes());
        for (i, d) in self.shape.iter().enumerate() {
            let o = OFF_SHAPE + 4 * i;
            out[o..o + 4].copy_from_slice(&d.to_le_bytes());
        }
        out[OFF_PAYLOAD_LEN..OFF_PAYLOAD_LEN + 4].copy_from_slice(&self.payload_len.to_le_bytes());
        out[OFF_TRACE..OFF_TRACE + 16].copy_from_slice(&self.trace_id.to_le_bytes());
        out[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&[0; 4]);
        let sum = checksum(out);
        out[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        Ok(())
    }

    /// Encodes into the start of `out`, returning the number of bytes written (always
    /// [`HEADER_LEN`]).
    pub fn encode_into(&self, out: &mut [u8]) -> Result<usize, FrameError> {
        let have = out.len();
        let dst: &mut [u8; HEADER_LEN] = out
            .get_mut(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::TooShort {
                need: HEADER_LEN,
                have,
            })?;
        self.encode(dst)?;
        Ok(HEADER_LEN)
    }

    /// Number of tensor elements (1 for rank 0), or `None` on overflow.
    pub fn element_count(&self) -> Option<u64> {
        element_count(self.rank, &self.shape)
    }
}

#[inline]
fn element_count(rank: u8, shape: &[u32; MAX_RANK]) -> Option<u64> {
    // Unused dims are 1 here, so this is branch-free: two u32×u32 products always fit in u64, and
    // only their product can overflow.
    let dim = |i: usize| {
        if i < rank as usize {
            u64::from(shape[i])
        } else {
            1
        }
    };
    (dim(0) * dim(1)).checked_mul(dim(2) * dim(3))
}

#[inline(always)]
fn validate_shape(
    rank: u8,
    shape: &[u32; MAX_RANK],
    dtype: DType,
    flags: Flags,
    payload_len: u32,
) -> Result<(), FrameError> {
    if rank as usize > MAX_RANK {
        return Err(FrameError::RankTooLarge(rank));
    }
    for (i, &d) in shape.iter().enumerate() {
        let used = i < rank as usize;
        if used && d == 0 || !used && d != 0 {
            return Err(FrameError::BadShape { dim: i as u8 });
        }
    }
    let whole_tensor =
        rank > 0 && !flags.contains(Flags::COMPRESSED) && !flags.contains(Flags::FRAGMENT);
    if whole_tensor {
        let expected = element_count(rank, shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or(FrameError::ShapeOverflow)?;
        if expected != u64::from(payload_len) {
            return Err(FrameError::PayloadShapeMismatch {
                header: payload_len,
                shape: expected,
            });
        }
    }
    Ok(())
}

/// The header checksum over a 64-byte header, skipping the checksum field itself.
///
/// A four-lane Fletcher sum: the header is read as four rows of four little-endian u32 words
/// (word 11, the checksum, counts as zero). Per lane `l`, `a[l]` sums the lane's words (seeded)
/// and `b[l]` sums the running `a[l]`, so `b` weights rows 4, 3, 2, 1 and catches swapped rows;
/// the lanes are folded with lane-dependent rotations, which catches swaps within a row. Lane-wise
/// adds map to plain SSE2 vector adds, so the checksum costs a few cycles on baseline x86-64
/// (a serial Fletcher or a table CRC32 would dominate the parse).
#[inline]
pub fn checksum(h: &[u8; HEADER_LEN]) -> u32 {
    const SEED: [u32; 4] = [0x4E4C_0001, 0x4E4C_0002, 0x4E4C_0003, 0x4E4C_0004];
    let mut a = SEED;
    let mut b = [0u32; 4];
    for row in 0..4 {
        for lane in 0..4 {
            let o = 16 * row + 4 * lane;
            let w = if o == OFF_CHECKSUM {
                0
            } else {
                u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]])
            };
            a[lane] = a[lane].wrapping_add(w);
            b[lane] = b[lane].wrapping_add(a[lane]);
        }
    }
    let mut out = 0u32;
    for lane in 0..4 {
        let r = 8 * lane as u32;
        out = out.wrapping_add(a[lane].rotate_left(r) ^ b[lane].rotate_left(r + 16));
    }
    out
}

#[inline(always)]
fn rd_u16(b: &[u8; HEADER_LEN], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
#[inline(always)]
fn rd_u32(b: &[u8; HEADER_LEN], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
#[inline(always)]
fn rd_u64(b: &[u8; HEADER_LEN], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

/// A validated header borrowed from a receive buffer: parsing copies nothing, and field
/// accessors read straight from the buffer.
///
/// Only [`HeaderView::parse`] builds one, so every accessor can rely on the bytes having passed
/// all checks; the two enum fields are decoded once during the parse and kept alongside.
#[derive(Debug, Clone, Copy)]
pub struct HeaderView<'a> {
    bytes: &'a [u8; HEADER_LEN],
    mode: DeliveryMode,
    dtype: DType,
}

impl<'a> HeaderView<'a> {
    /// Parses and validates the header at the start of `buf` (trailing bytes are ignored: they are
    /// the payload, checked by [`Frame::parse`]).
    ///
    /// Checks are ordered cheapest-first and by diagnostic value: length, magic, version, checksum
    /// (so that corruption is reported as such, not as a bogus field), then field semantics.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, FrameError> {
        let bytes: &'a [u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::TooShort {
                need: HEADER_LEN,
                have: buf.len(),
            })?;
        if bytes[OFF_MAGIC..OFF_MAGIC + 2] != MAGIC {
            return Err(FrameError::BadMagic([bytes[0], bytes[1]]));
        }
        if bytes[OFF_VERSION] != VERSION {
            return Err(FrameError::UnsupportedVersion(bytes[OFF_VERSION]));
        }
        let stored = rd_u32(bytes, OFF_CHECKSUM);
        let computed = checksum(bytes);
        if stored != computed {
            return Err(FrameError::BadChecksum { stored, computed });
        }
        let mode = DeliveryMode::from_u8(bytes[OFF_MODE])
            .ok_or(FrameError::UnknownDeliveryMode(bytes[OFF_MODE]))?;
        let flags = Flags(rd_u16(bytes, OFF_FLAGS));
        if flags.0 & !Flags::KNOWN.0 != 0 {
            return Err(FrameError::ReservedFlags(flags.0 & !Flags::KNOWN.0));
        }
        let dtype =
            DType::from_u8(bytes[OFF_DTYPE]).ok_or(FrameError::UnknownDType(bytes[OFF_DTYPE]))?;
        let view = Self { bytes, mode, dtype };
        validate_shape(
            bytes[OFF_RANK],
            &view.shape(),
            dtype,
            flags,
            view.payload_len(),
        )?;
        Ok(view)
    }

    /// The raw 64 header bytes.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8; HEADER_LEN] {
        self.bytes
    }
    /// Delivery mode.
    #[inline]
    pub fn mode(&self) -> DeliveryMode {
        self.mode
    }
    /// Flag bits (reserved bits are known to be zero).
    #[inline]
    pub fn flags(&self) -> Flags {
        Flags(rd_u16(self.bytes, OFF_FLAGS))
    }
    /// Element type.
    #[inline]
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Tensor rank (≤ [`MAX_RANK`]).
    #[inline]
    pub fn rank(&self) -> u8 {
        self.bytes[OFF_RANK]
    }
    /// Stream id.
    #[inline]
    pub fn stream_id(&self) -> u32 {
        rd_u32(self.bytes, OFF_STREAM)
    }
    /// Tenant id.
    #[inline]
    pub fn tenant_id(&self) -> u32 {
        rd_u32(self.bytes, OFF_TENANT)
    }
    /// Sequence number.
    #[inline]
    pub fn sequence(&self) -> u64 {
        rd_u64(self.bytes, OFF_SEQ)
    }
    /// All four shape slots (unused ones are zero).
    #[inline(always)]
    pub fn shape(&self) -> [u32; MAX_RANK] {
        let mut s = [0u32; MAX_RANK];
        for (i, d) in s.iter_mut().enumerate() {
            *d = rd_u32(self.bytes, OFF_SHAPE + 4 * i);
        }
        s
    }
    /// Payload length in bytes.
    #[inline]
    pub fn payload_len(&self) -> u32 {
        rd_u32(self.bytes, OFF_PAYLOAD_LEN)
    }
    /// Stored header checksum.
    #[inline]
    pub fn checksum(&self) -> u32 {
        rd_u32(self.bytes, OFF_CHECKSUM)
    }
    /// Trace id.
    #[inline]
    pub fn trace_id(&self) -> u128 {
        let mut x = [0u8; 16];
        x.copy_from_slice(&self.bytes[OFF_TRACE..OFF_TRACE + 16]);
        u128::from_le_bytes(x)
    }

    /// Copies the fields out into an owned [`Header`].
    #[inline]
    pub fn to_header(&self) -> Header {
        Header {
            mode: self.mode,
            flags: self.flags(),
            dtype: self.dtype,
            rank: self.rank(),
            stream_id: self.stream_id(),
            tenant_id: self.tenant_id(),
            sequence: self.sequence(),
            shape: self.shape(),
            payload_len: self.payload_len(),
            trace_id: self.trace_id(),
        }
    }
}

/// A whole frame (header + payload) borrowed from one buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// The validated header.
    pub header: HeaderView<'a>,
    /// Exactly `header.payload_len()` bytes.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses a frame that must occupy `buf` exactly: a datagram or a DMA buffer holding one frame.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, FrameError> {
        let header = HeaderView::parse(buf)?;
        let payload = &buf[HEADER_LEN..];
        let declared = header.payload_len();
        if payload.len() as u64 != u64::from(declared) {
            return Err(FrameError::PayloadLengthMismatch {
                declared,
                actual: payload.len() as u64,
            });
        }
        Ok(Self { header, payload })
    }

    /// Parses the first frame of a byte stream and returns it with the rest of the stream.
    #[inline]
    pub fn parse_prefix(buf: &'a [u8]) -> Result<(Self, &'a [u8]), FrameError> {
        let header = HeaderView::parse(buf)?;
        let declared = header.payload_len();
        let end = HEADER_LEN + declared as usize;
        let payload = buf
            .get(HEADER_LEN..end)
            .ok_or(FrameError::PayloadLengthMismatch {
                declared,
                actual: (buf.len() - HEADER_LEN) as u64,
            })?;
        Ok((Self { header, payload }, &buf[end..]))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn tensor() -> Header {
        Header {
            mode: DeliveryMode::PartiallyReliable,
            flags: Flags::ACK_REQUESTED,
            dtype: DType::BF16,
            rank: 3,
            stream_id: 7,
            tenant_id: 42,
            sequence: 1 << 40,
            shape: [2, 3, 4, 0],
            payload_len: 2 * 3 * 4 * 2,
            trace_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        }
    }

    fn enc(h: &Header) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        h.encode(&mut b).unwrap();
        b
    }

    /// Re-seals a hand-modified header so that the test reaches the field check under test.
    fn reseal(b: &mut [u8; HEADER_LEN]) {
        b[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&[0; 4]);
        let s = checksum(b);
        b[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&s.to_le_bytes());
    }

    fn check_err(mutate: impl FnOnce(&mut [u8; HEADER_LEN]), expected: FrameError) {
        let mut b = enc(&tensor());
        mutate(&mut b);
        assert_eq!(HeaderView::parse(&b).unwrap_err(), expected);
    }

    /// A straightforward restatement of the checksum; [`checksum`] must agree with it.
    fn checksum_reference(h: &[u8; HEADER_LEN]) -> u32 {
        let mut words = [0u32; 16];
        for (i, w) in words.iter_mut().enumerate() {
            if 4 * i != OFF_CHECKSUM {
                *w = u32::from_le_bytes(h[4 * i..4 * i + 4].try_into().unwrap());
            }
        }
        let mut out = 0u32;
        for lane in 0..4u32 {
            let (mut a, mut b) = (0x4E4C_0001 + lane, 0u32);
            for row in 0..4 {
                a = a.wrapping_add(words[(4 * row + lane) as usize]);
                b = b.wrapping_add(a);
            }
            out = out.wrapping_add(a.rotate_left(8 * lane) ^ b.rotate_left(8 * lane + 16));
        }
        out
    }

    #[test]
    fn checksum_pinned_value() {
        // Pinned so a refactor cannot silently change the wire format.
        assert_eq!(
            checksum(&[0; HEADER_LEN]),
            checksum_reference(&[0; HEADER_LEN])
        );
        assert_eq!(checksum(&[0; HEADER_LEN]), 0x0003_15F8);
    }

    #[test]
    fn layout_is_pinned() {
        let b = enc(&tensor());
        assert_eq!(&b[0..2], b"NL");
        assert_eq!(b[2], 1);
        assert_eq!(b[3], 3);
        assert_eq!(&b[4..6], &8u16.to_le_bytes());
        assert_eq!(b[6], DType::BF16 as u8);
        assert_eq!(b[7], 3);
        assert_eq!(&b[8..12], &7u32.to_le_bytes());
        assert_eq!(&b[12..16], &42u32.to_le_bytes());
        assert_eq!(&b[16..24], &(1u64 << 40).to_le_bytes());
        assert_eq!(&b[24..28], &2u32.to_le_bytes());
        assert_eq!(&b[36..40], &0u32.to_le_bytes());
        assert_eq!(&b[40..44], &48u32.to_le_bytes());
        assert_eq!(b[48], 0x77);
    }

    #[test]
    fn round_trip_and_frame() {
        let h = tensor();
        let mut buf = [0u8; HEADER_LEN + 48];
        h.encode_into(&mut buf).unwrap();
        let f = Frame::parse(&buf).unwrap();
        assert_eq!(f.header.to_header(), h);
        assert_eq!(f.payload.len(), 48);
        let (f2, rest) = Frame::parse_prefix(&buf).unwrap();
        assert_eq!(f2.header.sequence(), h.sequence);
        assert!(rest.is_empty());
    }

    #[test]
    fn negative_cases() {
        assert_eq!(
            HeaderView::parse(&[0u8; 10]).unwrap_err(),
            FrameError::TooShort { need: 64, have: 10 }
        );
        check_err(|b| b[0] = b'X', FrameError::BadMagic([b'X', b'L']));
        check_err(|b| b[2] = 2, FrameError::UnsupportedVersion(2));
        let mut b = enc(&tensor());
        b[20] ^= 1;
        assert!(matches!(
            HeaderView::parse(&b),
            Err(FrameError::BadChecksum { .. })
        ));
        check_err(
            |b| {
                b[3] = 9;
                reseal(b)
            },
            FrameError::UnknownDeliveryMode(9),
        );
        check_err(
            |b| {
                b[6] = 200;
                reseal(b)
            },
            FrameError::UnknownDType(200),
        );
        check_err(
            |b| {
                b[5] = 0x80;
                reseal(b)
            },
            FrameError::ReservedFlags(0x8000),
        );
        check_err(
            |b| {
                b[7] = 5;
                reseal(b)
            },
            FrameError::RankTooLarge(5),
        );
        check_err(
            |b| {
                b[36] = 1;
                reseal(b)
            },
            FrameError::BadShape { dim: 3 },
        );
        check_err(
            |b| {
                b[40] = 47;
                reseal(b)
            },
            FrameError::PayloadShapeMismatch {
                header: 47,
                shape: 48,
            },
        );
        // Frame-level: declared payload vs bytes present.
        let mut buf = [0u8; HEADER_LEN + 47];
        tensor().encode_into(&mut buf).unwrap();
        assert_eq!(
            Frame::parse(&buf).unwrap_err(),
            FrameError::PayloadLengthMismatch {
                declared: 48,
                actual: 47
            }
        );
        assert!(Frame::parse_prefix(&buf).is_err());
    }

    #[test]
    fn encoder_refuses_what_parser_would_reject() {
        let mut h = tensor();
        h.payload_len = 1;
        assert!(h.encode(&mut [0; HEADER_LEN]).is_err());
        h.flags = Flags::FRAGMENT;
        assert!(h.encode(&mut [0; HEADER_LEN]).is_ok());
        h.flags = Flags(0x4000);
        assert!(h.encode(&mut [0; HEADER_LEN]).is_err());
        assert!(tensor().encode_into(&mut [0; 63]).is_err());
    }

    #[test]
    fn huge_shape_overflow_is_an_error_not_a_panic() {
        let mut h = tensor();
        h.rank = 4;
        h.shape = [u32::MAX; 4];
        h.dtype = DType::F64;
        assert_eq!(h.validate(), Err(FrameError::ShapeOverflow));
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (
            0u8..4,
            0u16..64,
            0usize..DType::ALL.len(),
            0u8..=4,
            any::<(u32, u32, u64, u128)>(),
            proptest::array::uniform4(1u32..64),
            any::<u32>(),
        )
            .prop_map(
                |(m, f, d, rank, (stream, tenant, seq, trace), dims, plen)| {
                    let mut shape = [0; MAX_RANK];
                    shape[..rank as usize].copy_from_slice(&dims[..rank as usize]);
                    let dtype = DType::ALL[d];
                    let flags = Flags(f);
                    let mut h = Header {
                        mode: DeliveryMode::from_u8(m).unwrap(),
                        flags,
                        dtype,
                        rank,
                        stream_id: stream,
                        tenant_id: tenant,
                        sequence: seq,
                        shape,
                        payload_len: plen,
                        trace_id: trace,
                    };
                    if rank > 0
                        && !flags.contains(Flags::COMPRESSED)
                        && !flags.contains(Flags::FRAGMENT)
                    {
                        h.payload_len = (h.element_count().unwrap() * dtype.size()) as u32;
                    }
                    h
                },
            )
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(h in arb_header()) {
            let mut b = [0u8; HEADER_LEN];
            h.encode(&mut b).unwrap();
            let v = HeaderView::parse(&b).unwrap();
            prop_assert_eq!(v.to_header(), h);
        }

        #[test]
        fn any_single_bit_flip_is_rejected(h in arb_header(), bit in 0usize..512) {
            let mut b = [0u8; HEADER_LEN];
            h.encode(&mut b).unwrap();
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(HeaderView::parse(&b).is_err());
        }

        #[test]
        fn checksum_matches_reference(bytes in proptest::array::uniform32(any::<u8>()), more in proptest::array::uniform32(any::<u8>())) {
            let mut h = [0u8; HEADER_LEN];
            h[..32].copy_from_slice(&bytes);
            h[32..].copy_from_slice(&more);
            prop_assert_eq!(checksum(&h), checksum_reference(&h));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = HeaderView::parse(&bytes);
            let _ = Frame::parse(&bytes);
            let _ = Frame::parse_prefix(&bytes);
        }
    }
}
