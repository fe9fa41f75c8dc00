//! Error types. See the crate docs for why there are two.

/// Why a NexLink header or frame was rejected. Small and `Copy` so the datapath can count and drop
/// without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than a header (or than the buffer needs).
    #[error("buffer too short: need {need} bytes, have {have}")]
    TooShort {
        /// Bytes required.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The first two bytes are not `NL`: not a NexLink frame, or a mis-framed stream.
    #[error("bad magic {0:02x?}, expected \"NL\"")]
    BadMagic([u8; 2]),
    /// A header version this build does not understand.
    #[error("unsupported header version {0}")]
    UnsupportedVersion(u8),
    /// Header bytes were corrupted.
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// Checksum carried in the header.
        stored: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// Delivery mode outside 0..=3.
    #[error("unknown delivery mode {0}")]
    UnknownDeliveryMode(u8),
    /// Unknown tensor element type.
    #[error("unknown dtype {0}")]
    UnknownDType(u8),
    /// Rank above [`crate::header::MAX_RANK`].
    #[error("tensor rank {0} exceeds the maximum of 4")]
    RankTooLarge(u8),
    /// A used dimension is zero, or an unused one is not.
    #[error("invalid shape at dimension {dim}")]
    BadShape {
        /// Index of the offending dimension.
        dim: u8,
    },
    /// Reserved flag bits set (value shows only the reserved bits).
    #[error("reserved flag bits set: {0:#06x}")]
    ReservedFlags(u16),
    /// The tensor's byte size overflows u64.
    #[error("tensor shape overflows")]
    ShapeOverflow,
    /// Payload length disagrees with shape × dtype size.
    #[error("payload length {header} does not match shape × dtype size {shape}")]
    PayloadShapeMismatch {
        /// Payload length in the header.
        header: u32,
        /// Size implied by the shape.
        shape: u64,
    },
    /// Payload length disagrees with the bytes actually present.
    #[error("payload length {declared} declared, {actual} bytes present")]
    PayloadLengthMismatch {
        /// Payload length in the header.
        declared: u32,
        /// Bytes after the header.
        actual: u64,
    },
}

impl FrameError {
    /// Stable label for a `dropped_frames{reason}` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "too_short",
            Self::BadMagic(_) => "bad_magic",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::BadChecksum { .. } => "bad_checksum",
            Self::UnknownDeliveryMode(_) => "unknown_delivery_mode",
            Self::UnknownDType(_) => "unknown_dtype",
            Self::RankTooLarge(_) => "rank_too_large",
            Self::BadShape { .. } => "bad_shape",
            Self::ReservedFlags(_) => "reserved_flags",
            Self::ShapeOverflow => "shape_overflow",
            Self::PayloadShapeMismatch { .. } => "payload_shape_mismatch",
            Self::PayloadLengthMismatch { .. } => "payload_length_mismatch",
        }
    }
}

/// Why a firmware bundle could not be built, parsed, signed, verified or accepted for a device.
#[cfg(feature = "std")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Input ends before a field it must contain.
    #[error("bundle truncated: {what} needs {need} bytes, {have} left")]
    Truncated {
        /// Field being read.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes left.
        have: u64,
    },
    /// Not a Nexus firmware bundle.
    #[error("not a Nexus firmware bundle (bad magic)")]
    BadMagic,
    /// A container format version this build does not read.
    #[error("unsupported bundle format version {0}")]
    UnsupportedFormat(u16),
    /// A field violates the container format (reserved bits, limits, encoding).
    #[error("malformed bundle: {0}")]
    Malformed(&'static str),
    /// Bytes after the signature block: refused so a bundle has exactly one encoding.
    #[error("{0} unexpected trailing bytes after the bundle")]
    TrailingBytes(u64),
    /// Manifest is not valid JSON of the expected shape.
    #[error("invalid manifest JSON: {0}")]
    ManifestJson(#[from] serde_json::Error),
    /// Manifest parsed but a field is out of range.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The payload's SHA-256 is not the one the manifest states.
    #[error("payload digest mismatch: manifest says {expected}, payload hashes to {actual}")]
    DigestMismatch {
        /// Digest in the manifest.
        expected: String,
        /// Digest of the payload present.
        actual: String,
    },
    /// The payload size is not the one the manifest states (e.g. a truncated payload).
    #[error("payload size mismatch: manifest says {expected} bytes, bundle has {actual}")]
    SizeMismatch {
        /// Size in the manifest.
        expected: u64,
        /// Size present.
        actual: u64,
    },
    /// The bundle carries no signature.
    #[error("bundle is not signed")]
    Unsigned,
    /// Signed by a key the trust store does not hold.
    #[error("bundle signed by unknown key {0:?}: add it to the trust store if it is a release key")]
    UnknownKey(String),
    /// Signature does not verify under the named key.
    #[error("signature does not verify under trusted key {0:?}: bundle altered or mis-signed")]
    BadSignature(String),
    /// A private key could not be generated or read.
    #[error("signing key rejected: {0}")]
    Key(String),
    /// The trust store file is invalid.
    #[error("invalid trust store: {0}")]
    TrustStore(String),
    /// The bundle is not for this device.
    #[error(
        "bundle is for PCI {vendor:04x}:{devices} but the device is {dev_vendor:04x}:{dev_device:04x}"
    )]
    IncompatibleDevice {
        /// Vendor id in the manifest.
        vendor: u16,
        /// Device ids in the manifest, formatted.
        devices: String,
        /// Device's vendor id.
        dev_vendor: u16,
        /// Device's device id.
        dev_device: u16,
    },
    /// This agent version is outside the range the bundle accepts.
    #[error("bundle requires agent {required}, this agent is {actual}")]
    IncompatibleAgent {
        /// Requirement in the manifest.
        required: String,
        /// Agent version.
        actual: String,
    },
}

#[cfg(feature = "std")]
impl BundleError {
    /// Stable label for a `firmware_rejected{reason}` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::BadMagic => "bad_magic",
            Self::UnsupportedFormat(_) => "unsupported_format",
            Self::Malformed(_) => "malformed",
            Self::TrailingBytes(_) => "trailing_bytes",
            Self::ManifestJson(_) => "manifest_json",
            Self::InvalidManifest(_) => "invalid_manifest",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::Unsigned => "unsigned",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature(_) => "bad_signature",
            Self::Key(_) => "key",
            Self::TrustStore(_) => "trust_store",
            Self::IncompatibleDevice { .. } => "incompatible_device",
            Self::IncompatibleAgent { .. } => "incompatible_agent",
        }
    }
}
