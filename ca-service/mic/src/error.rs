//! The crate's one error type, for operations that fail (decoding, issuing, parsing).
//!
//! A certificate that parses but is not acceptable is not an error of this kind: the verifier
//! answers with a [`crate::Rejection`], a decision the caller logs and counts.

/// Why a MIC operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The encoded attestation is larger than [`crate::attestation::MAX_ATTESTATION_LEN`].
    #[error("attestation is {size} bytes, over the {max}-byte limit")]
    AttestationTooLarge {
        /// Size of the input or of the encoding.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not DER of the attestation ASN.1 module.
    #[error("attestation is not valid DER for the MIC attestation schema ({0})")]
    AttestationDer(String),
    /// The attestation has a version this build does not read.
    #[error("attestation version {0} is not supported (this build reads version 1)")]
    AttestationVersion(i64),
    /// A field of the attestation breaks a limit or a syntax rule.
    #[error("attestation field `{field}`: {reason}")]
    AttestationField {
        /// Path of the field, e.g. `capabilities.modalities`.
        field: &'static str,
        /// What is wrong, with the limit where one applies.
        reason: String,
    },
    /// An attestation JSON document could not be read.
    #[error("attestation JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A model URI is not `nexus://<tenant>/<model>@<version>`.
    #[error("invalid model URI `{uri}`: {reason}")]
    ModelUri {
        /// The input (truncated to 128 bytes).
        uri: String,
        /// What is wrong.
        reason: String,
    },
    /// A CSR could not be parsed or its self-signature does not verify.
    #[error("certificate signing request rejected: {0}")]
    Csr(String),
    /// The CSR's key type is not one a MIC may carry.
    #[error("CSR key type {0} is not supported (use ECDSA P-256, ECDSA P-384 or Ed25519)")]
    UnsupportedKey(String),
    /// The CSR asks for a name other than the model being issued for.
    #[error("CSR asks for `{requested}` but the MIC is for `{expected}`")]
    CsrMismatch {
        /// URI SAN(s) in the CSR.
        requested: String,
        /// The model URI of the request.
        expected: String,
    },
    /// A certificate could not be parsed, or lacks what a MIC must have.
    #[error("certificate: {0}")]
    Certificate(String),
    /// PEM input could not be read.
    #[error("PEM: {0}")]
    Pem(String),
    /// Requested validity is empty or outside the issuer's own validity.
    #[error("validity: {0}")]
    Validity(String),
    /// A private key could not be read, or does not match its certificate.
    #[error("key: {0}")]
    Key(String),
    /// A CRL could not be parsed or verified.
    #[error("CRL: {0}")]
    Crl(String),
    /// A requirement string could not be parsed.
    #[error("requirement `{clause}`: {reason}")]
    Requirement {
        /// The offending clause.
        clause: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The certificate library failed to build or sign.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
}

impl Error {
    /// A short, fixed label for a `failures{error=...}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::AttestationTooLarge { .. } => "attestation_too_large",
            Error::AttestationDer(_) => "attestation_der",
            Error::AttestationVersion(_) => "attestation_version",
            Error::AttestationField { .. } => "attestation_field",
            Error::Json(_) => "attestation_json",
            Error::ModelUri { .. } => "model_uri",
            Error::Csr(_) => "csr",
            Error::UnsupportedKey(_) => "unsupported_key",
            Error::CsrMismatch { .. } => "csr_mismatch",
            Error::Certificate(_) => "certificate",
            Error::Pem(_) => "pem",
            Error::Validity(_) => "validity",
            Error::Key(_) => "key",
            Error::Crl(_) => "crl",
            Error::Requirement { .. } => "requirement",
            Error::Rcgen(_) => "rcgen",
            Error::Random => "random",
        }
    }
}
