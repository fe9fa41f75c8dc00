//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `nexus-zk`.
///
/// Messages never contain secret material (scores, blindings): they are safe to log.
#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    /// Input bytes (or their text encoding) are longer than the limit for that object.
    #[error("{what}: {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The kind of object being decoded.
        what: &'static str,
        /// Length received.
        len: usize,
        /// Largest accepted length.
        max: usize,
    },
    /// A fixed-size object had the wrong length.
    #[error("{what}: expected {expected} bytes, got {got}")]
    WrongLength {
        /// The kind of object being decoded.
        what: &'static str,
        /// Exact length required.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// Hex/base64 text could not be decoded.
    #[error("{what}: invalid {encoding} text: {reason}")]
    Encoding {
        /// The kind of object being decoded.
        what: &'static str,
        /// `hex` or `base64`.
        encoding: &'static str,
        /// Decoder message.
        reason: String,
    },
    /// Bytes decoded but do not form a valid object (not a canonical field element, a point
    /// off the curve or outside the prime-order subgroup, trailing bytes, keys for another
    /// circuit, ...).
    #[error("{what}: malformed: {reason}")]
    Malformed {
        /// The kind of object being decoded.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A score given as text or float is not a valid fixed-point score.
    #[error("invalid score: {0}")]
    InvalidScore(String),
    /// `prove` was asked to prove a false statement.
    #[error("the committed score is below the threshold: refusing to prove")]
    ScoreBelowThreshold,
    /// The witness (score, blinding) does not open the commitment the proof is about.
    #[error("the opening (score, blinding) does not match the commitment")]
    OpeningMismatch,
    /// Constraint synthesis or proof generation failed inside arkworks.
    #[error("proof system error: {0}")]
    ProofSystem(String),
    /// The proof does not verify for this verifying key, commitment and threshold.
    #[error("proof rejected")]
    ProofRejected,
    /// A `ClaimProof` is not acceptable (unknown scheme, bad claim name, threshold too low,
    /// unexpected commitment).
    #[error("invalid claim: {0}")]
    InvalidClaim(String),
    /// The operating system's random number generator failed.
    #[error("system random number generator failed: {0}")]
    Rng(String),
    /// Reading or writing a key/proof file failed.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// JSON (de)serialization of a transport object failed.
    #[error("{what}: invalid JSON: {reason}")]
    Json {
        /// The kind of object being decoded.
        what: &'static str,
        /// Parser message.
        reason: String,
    },
}

impl ZkError {
    /// A short, stable label for a `failures{error=...}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ZkError::TooLarge { .. } => "too_large",
            ZkError::WrongLength { .. } => "wrong_length",
            ZkError::Encoding { .. } => "encoding",
            ZkError::Malformed { .. } => "malformed",
            ZkError::InvalidScore(_) => "invalid_score",
            ZkError::ScoreBelowThreshold => "score_below_threshold",
            ZkError::OpeningMismatch => "opening_mismatch",
            ZkError::ProofSystem(_) => "proof_system",
            ZkError::ProofRejected => "proof_rejected",
            ZkError::InvalidClaim(_) => "invalid_claim",
            ZkError::Rng(_) => "rng",
            ZkError::Io { .. } => "io",
            ZkError::Json { .. } => "json",
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> Self {
        ZkError::Malformed {
            what,
            reason: reason.to_string(),
        }
    }
}
