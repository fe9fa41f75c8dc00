//! The crate's error type, and P4Runtime status codes.

/// gRPC canonical codes as P4Runtime uses them (the numeric values of `google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// Not applied because another update of an all-or-nothing batch failed.
    Aborted = 10,
    /// An entity that must not exist exists (INSERT of a present entry).
    AlreadyExists = 6,
    /// The target is not in a state to do this (no pipeline; a member still in use).
    FailedPrecondition = 9,
    /// Malformed request (missing action, wrong match kind, unknown field).
    InvalidArgument = 3,
    /// An entity that must exist does not (unknown table or action, MODIFY of an absent entry).
    NotFound = 5,
    /// A value wider than its P4 bitwidth, an index beyond a counter.
    OutOfRange = 11,
    /// The caller is not the primary controller.
    PermissionDenied = 7,
    /// A table or group is full.
    ResourceExhausted = 8,
    /// Not something this target implements.
    Unimplemented = 12,
    /// A batch had errors (the per-update codes are in the details).
    Unknown = 2,
    /// Internal failure.
    Internal = 13,
}

impl Code {
    /// The tonic code.
    pub fn to_tonic(self) -> tonic::Code {
        tonic::Code::from_i32(self as i32)
    }
}

/// One failed P4Runtime operation: a status code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct P4Error {
    /// The canonical code the specification prescribes.
    pub code: Code,
    /// What was wrong, for the controller's logs.
    pub message: String,
}

impl P4Error {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> P4Error {
        P4Error {
            code,
            message: message.into(),
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A P4Info that does not parse or is inconsistent.
    #[error("P4Info: {0}")]
    P4Info(String),
    /// A P4Info the NexRoute pipeline cannot run (a table, action or width it needs differs).
    #[error("pipeline cannot run this P4Info: {0}")]
    Incompatible(String),
    /// A P4Runtime operation was refused.
    #[error(transparent)]
    P4(#[from] P4Error),
    /// The table compiler refused its input.
    #[error("table compiler: {0}")]
    Compile(String),
    /// A descriptor or advertisement problem.
    #[error(transparent)]
    Route(#[from] nexus_route::Error),
    /// A gRPC call failed.
    #[error("gRPC: {0}")]
    Rpc(#[from] tonic::Status),
    /// Could not connect.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The controller lost or never got primary status.
    #[error("not the primary controller: {0}")]
    NotPrimary(String),
}

impl Error {
    /// A short, fixed label for a `failures{error=...}` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::P4Info(_) => "p4info",
            Error::Incompatible(_) => "incompatible",
            Error::P4(_) => "p4",
            Error::Compile(_) => "compile",
            Error::Route(_) => "route",
            Error::Rpc(_) => "rpc",
            Error::Transport(_) => "transport",
            Error::NotPrimary(_) => "not_primary",
        }
    }
}
