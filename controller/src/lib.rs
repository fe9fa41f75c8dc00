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
pub mod cloud;
pub mod identity;
pub mod metrics;
pub mod rollout;
pub mod routing;

/// Errors of the controllers: one variant per thing that can fail, so the failures metric,
/// the back-off and the condition reasons can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A field of a resource cannot be acted on (something the CRD schema could not catch).
    #[error("{field}: {problem}")]
    InvalidField {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A duration, budget or other spec value did not parse.
    #[error("spec: {0}")]
    Spec(#[from] nexus_crds::Error),
    /// Building a key, CSR or attestation, or reading a certificate, failed.
    #[error("certificate: {0}")]
    Mic(#[from] nexus_mic::Error),
    /// The CA refused the request (its validation, its policy, an unknown tenant).
    #[error("the CA refused the request: {code:?}: {message}")]
    IssuerRefused {
        /// gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA could not be reached or did not answer in time.
    #[error("the CA is unavailable: {0}")]
    IssuerUnavailable(String),
    /// The CA endpoint or credentials are misconfigured.
    #[error("CA client configuration: {0}")]
    IssuerConfig(String),
    /// A Secret the controller would write exists and belongs to something else.
    #[error(
        "Secret {namespace}/{name} exists and is not owned by this ModelIdentity; refusing to overwrite it"
    )]
    SecretNotOwned {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// An object from the API server lacks a field the server always sets.
    #[error("{kind} without {field}")]
    MissingField {
        /// Kind of the object.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// An object could not be encoded as JSON.
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    /// Fetching or verifying an artifact (a firmware bundle) failed.
    #[error("artifact: {0}")]
    Artifact(#[from] nexus_artifact::Error),
}

impl Error {
    /// Low-cardinality label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::InvalidField { .. } | Self::Spec(_) => "invalid_spec",
            Self::Mic(_) => "certificate",
            Self::IssuerRefused { .. } => "issuer_refused",
            Self::IssuerUnavailable(_) => "issuer_unavailable",
            Self::IssuerConfig(_) => "issuer_config",
            Self::SecretNotOwned { .. } => "secret_not_owned",
            Self::MissingField { .. } => "missing_field",
            Self::Artifact(_) => "artifact",
            Self::Encode(_) => "encode",
        }
    }

    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesError",
            Self::InvalidField { .. } | Self::Spec(_) => "InvalidSpec",
            Self::Mic(_) => "CertificateError",
            Self::IssuerRefused { .. } => "IssuerRefused",
            Self::IssuerUnavailable(_) => "IssuerUnavailable",
            Self::IssuerConfig(_) => "IssuerMisconfigured",
            Self::SecretNotOwned { .. } => "SecretNotOwned",
            Self::MissingField { .. } => "MissingField",
            Self::Artifact(_) => "ArtifactError",
            Self::Encode(_) => "InternalError",
        }
    }

    pub(crate) fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}
