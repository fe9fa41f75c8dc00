//! Nexus controllers.
//!
//! - [`identity`]: ModelIdentity → a renewed Model Identity Certificate in a Secret.
//! - [`rollout`]: Fabric firmware rollouts over the fleet push protocol (`nexus.fleet.v1`).
//! - `cli` (feature `cli`): nexctl's `get` and `rollout` commands against the local-mode API.
//!
//! Each controller is a pure decision core (`decide`) plus a kube adapter (`reconcile`).
//!
//! Invariant: decisions never perform I/O and never read the clock; adapters never decide.

pub mod ca_client;
#[cfg(feature = "cli")]
pub mod cli;
pub mod identity;
pub mod metrics;
pub mod rollout;

/// Errors of the controllers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The resource's spec cannot be acted on (the schema could not catch it).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The CA refused or failed.
    #[error("issuer: {0}")]
    Issuer(String),
    /// The CA could not be reached.
    #[error("issuer unavailable: {0}")]
    IssuerUnavailable(String),
    /// A Secret we would write belongs to something else.
    #[error("{0}")]
    SecretConflict(String),
    /// A bug: an invariant of this crate did not hold.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Low-cardinality label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Issuer(_) => "issuer",
            Self::IssuerUnavailable(_) => "issuer_unavailable",
            Self::SecretConflict(_) => "secret_conflict",
            Self::Internal(_) => "internal",
        }
    }
}
