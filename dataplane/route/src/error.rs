//! Error types. Two on purpose, like `nexus-firmware`: [`SadError`] is `Copy` and
//! allocation-free because the datapath decodes a descriptor per frame and counts refusals by
//! kind; [`Error`] carries context (names, JSON errors) for control-plane callers.

use crate::sad::Field;

/// Why descriptor bytes were rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SadError {
    /// Fewer bytes than the fixed part, or than the declared length.
    #[error("descriptor too short: need {need} bytes, have {have}")]
    TooShort {
        /// Bytes required.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Not `NR`: not a descriptor, or a mis-framed buffer.
    #[error("bad magic {0:02x?}, expected \"NR\"")]
    BadMagic([u8; 2]),
    /// A version this build does not read.
    #[error("unsupported descriptor version {0}")]
    UnsupportedVersion(u8),
    /// Reserved flag bits set.
    #[error("reserved flag bits set: {0:#04x}")]
    ReservedFlags(u8),
    /// The declared length disagrees with the list counts.
    #[error("declared length {declared} disagrees with the counts ({computed} bytes)")]
    LengthMismatch {
        /// From the length field.
        declared: usize,
        /// From the counts.
        computed: usize,
    },
    /// A list longer than version 1 allows.
    #[error("{count} {field}, more than version 1 allows")]
    TooMany {
        /// Which list.
        field: Field,
        /// Its count.
        count: usize,
    },
    /// Modality bits version 1 does not define.
    #[error("unknown modality bits {0:#04x}")]
    UnknownModalities(u8),
    /// Trust level above 3.
    #[error("unknown trust level {0}")]
    BadTrustLevel(u8),
    /// Fan-out 0 or above 16.
    #[error("fan-out {0} outside 1..=16")]
    BadFanOut(u8),
    /// An id of 0 where a name is required.
    #[error("zero id in {field}")]
    ZeroId {
        /// Where.
        field: Field,
    },
    /// A list not strictly ascending (unsorted or duplicated): not the canonical encoding.
    #[error("{field} not strictly ascending at index {index}")]
    NotAscending {
        /// Which list.
        field: Field,
        /// First offending position.
        index: usize,
    },
    /// The class id repeated among the additional capabilities.
    #[error("class id repeated among the additional capabilities")]
    ClassRepeated,
    /// Bytes after the descriptor where none were expected.
    #[error("{0} trailing bytes after the descriptor")]
    TrailingBytes(usize),
}

impl SadError {
    /// A short, fixed label for a `descriptor_rejected{reason=...}` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SadError::TooShort { .. } => "too_short",
            SadError::BadMagic(_) => "bad_magic",
            SadError::UnsupportedVersion(_) => "unsupported_version",
            SadError::ReservedFlags(_) => "reserved_flags",
            SadError::LengthMismatch { .. } => "length_mismatch",
            SadError::TooMany { .. } => "too_many",
            SadError::UnknownModalities(_) => "unknown_modalities",
            SadError::BadTrustLevel(_) => "bad_trust_level",
            SadError::BadFanOut(_) => "bad_fan_out",
            SadError::ZeroId { .. } => "zero_id",
            SadError::NotAscending { .. } => "not_ascending",
            SadError::ClassRepeated => "class_repeated",
            SadError::TrailingBytes(_) => "trailing_bytes",
        }
    }
}

/// Control-plane errors: building descriptors and advertisements, importing, admission set-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The descriptor would not encode (or did not decode).
    #[error("descriptor: {0}")]
    Descriptor(#[from] SadError),
    /// A value in a descriptor or advertisement is out of range or malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Two different names hash to the same id inside one domain.
    #[error("names `{a}` and `{b}` have the same id {id:#010x}; rename one")]
    IdCollision {
        /// One name.
        a: String,
        /// The other.
        b: String,
        /// Their id.
        id: u32,
    },
    /// An import source is not what it claims to be.
    #[error("import: {0}")]
    Import(String),
    /// JSON that does not parse.
    #[cfg(feature = "control-plane")]
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A short, fixed label for a `failures{error=...}` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Descriptor(_) => "descriptor",
            Error::Invalid { .. } => "invalid",
            Error::IdCollision { .. } => "id_collision",
            Error::Import(_) => "import",
            #[cfg(feature = "control-plane")]
            Error::Json(_) => "json",
        }
    }
}
