//! The crate's error type, with its gRPC status, HTTP status and stable code in one place.

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request field is missing or malformed.
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The MIC building blocks refused the input (CSR, attestation, model URI, validity).
    #[error(transparent)]
    Mic(#[from] nexus_mic::Error),
    /// Requested validity outside the configured bounds.
    #[error("validity {requested}s is outside 1..={max}s")]
    Validity {
        /// Requested seconds.
        requested: u64,
        /// Configured maximum.
        max: u64,
    },
    /// The tenant is not known to the CA.
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    /// The tenant exists but is suspended.
    #[error("tenant `{0}` is not active")]
    TenantInactive(String),
    /// No certificate with this serial for this tenant.
    #[error("no certificate with serial {0} for this tenant")]
    NotFound(String),
    /// A request id was reused with different content.
    #[error("request id `{0}` was already used for a different request")]
    RequestIdReused(String),
    /// The certificate to renew is revoked.
    #[error("certificate {0} is revoked and cannot be renewed")]
    Revoked(String),
    /// A claim proof could not be checked (malformed, claim missing from the certificate).
    #[error("claim proof: {0}")]
    Zk(String),
    /// No client certificate with a role, and no (accepted) bearer token.
    #[error(
        "missing or invalid credentials: a client certificate issued by this CA, or a bearer token where allowed"
    )]
    Unauthenticated,
    /// Authenticated, but the certificate's role may not call the CA.
    #[error("role `{0}` may not call the CA")]
    PermissionDenied(String),
    /// A join token that is unknown, expired, already used by another node or key, or bound
    /// to another node name. One message for all: the caller learns nothing about tokens.
    #[error("join token refused: unknown, expired, already used, or not for this node")]
    JoinRefused,
    /// The operation needs the CA to serve TLS (a join token must not cross in clear).
    #[error("{0} needs the CA to serve TLS")]
    TlsRequired(&'static str),
    /// TLS material could not be built or written.
    #[error("TLS: {0}")]
    Tls(String),
    /// The key-encryption key is missing, malformed or does not open the stored keys.
    #[error("KEK: {0}")]
    Kek(String),
    /// Stored CA material is inconsistent.
    #[error("CA state: {0}")]
    State(String),
    /// The service is shutting down.
    #[error("the CA is shutting down")]
    Unavailable,
    /// A database operation failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Binding or serving a listener failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The ZK setup failed.
    #[error("ZK keys: {0}")]
    ZkSetup(#[from] nexus_zk::ZkError),
}

impl From<nexus_tls::Error> for Error {
    fn from(e: nexus_tls::Error) -> Self {
        Error::Tls(e.to_string())
    }
}

impl From<nexus_ca_api::validate::Invalid> for Error {
    fn from(e: nexus_ca_api::validate::Invalid) -> Self {
        Error::InvalidArgument {
            field: e.field,
            reason: e.reason.to_owned(),
        }
    }
}

impl Error {
    /// Stable machine-readable code (JSON `error.code`, `failures{reason}` label).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::Mic(e) => match e {
                nexus_mic::Error::AttestationTooLarge { .. } => "attestation_too_large",
                nexus_mic::Error::AttestationDer(_)
                | nexus_mic::Error::AttestationVersion(_)
                | nexus_mic::Error::AttestationField { .. }
                | nexus_mic::Error::Json(_) => "invalid_attestation",
                nexus_mic::Error::ModelUri { .. } => "invalid_model_uri",
                nexus_mic::Error::Csr(_) | nexus_mic::Error::Pem(_) => "invalid_csr",
                nexus_mic::Error::UnsupportedKey(_) => "unsupported_key",
                nexus_mic::Error::CsrMismatch { .. } => "csr_mismatch",
                nexus_mic::Error::Validity(_) => "invalid_validity",
                _ => "internal",
            },
            Error::Validity { .. } => "invalid_validity",
            Error::UnknownTenant(_) => "unknown_tenant",
            Error::TenantInactive(_) => "tenant_inactive",
            Error::NotFound(_) => "not_found",
            Error::RequestIdReused(_) => "request_id_reused",
            Error::Revoked(_) => "revoked",
            Error::Zk(_) => "invalid_claim_proof",
            Error::Unauthenticated => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::JoinRefused => "join_refused",
            Error::TlsRequired(_) => "tls_required",
            Error::Unavailable => "unavailable",
            Error::Kek(_)
            | Error::State(_)
            | Error::Db(_)
            | Error::Migrate(_)
            | Error::Io(_)
            | Error::ZkSetup(_)
            | Error::Tls(_) => "internal",
        }
    }

    /// Whether the caller is at fault (4xx) rather than the service (5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(self.code(), "internal" | "unavailable")
    }

    /// What a caller may be told: the message for client errors, nothing internal otherwise.
    pub fn public_message(&self) -> String {
        if self.is_client_error() {
            self.to_string()
        } else if matches!(self, Error::Unavailable) {
            "the CA is unavailable, retry later".into()
        } else {
            "internal error".into()
        }
    }

    /// gRPC status.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.code() {
            "unknown_tenant" | "not_found" => Code::NotFound,
            "tenant_inactive" | "revoked" => Code::FailedPrecondition,
            "request_id_reused" => Code::AlreadyExists,
            "unauthenticated" | "join_refused" => Code::Unauthenticated,
            "tls_required" => Code::FailedPrecondition,
            "permission_denied" => Code::PermissionDenied,
            "unavailable" => Code::Unavailable,
            "internal" => Code::Internal,
            _ => Code::InvalidArgument,
        }
    }

    /// HTTP status.
    pub fn http_status(&self) -> u16 {
        match self.grpc_code() {
            tonic::Code::NotFound => 404,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => 409,
            tonic::Code::Unauthenticated => 401,
            tonic::Code::PermissionDenied => 403,
            tonic::Code::Unavailable => 503,
            tonic::Code::Internal => 500,
            _ => 400,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        if !e.is_client_error() {
            tracing::error!(error = %e, "request failed");
        }
        let mut status = tonic::Status::new(e.grpc_code(), e.public_message());
        if let Ok(v) = e.code().parse() {
            status.metadata_mut().insert("x-nexus-error-code", v);
        }
        status
    }
}
