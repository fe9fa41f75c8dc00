//! `ModelIdentity`: a request for a Model Identity Certificate (MIC) — the NexTrust credential that
//! names a model and attests where it came from and what it can do. The controller keeps a
//! short-lived certificate in a Secret and renews it, as cert-manager does for `Certificate`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Time, conditions_schema, named_list_schema};
use crate::routing::Modality;

/// Desired identity of a model.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nexus.dev",
    doc = "A Model Identity Certificate (MIC) request: a short-lived X.509 identity attesting what a model is and can do, kept renewed in a Secret.",
    version = "v1alpha1",
    kind = "ModelIdentity",
    plural = "modelidentities",
    shortname = "mid",
    category = "nexus",
    namespaced,
    status = "ModelIdentityStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.model.version"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secretName"}"#,
    // `date` columns render as an age, which kubectl shows as `<invalid>` for a time in the
    // future: the expiry is a timestamp, shown as one.
    printcolumn = r#"{"name":"Expires","type":"string","format":"date-time","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Revoked","type":"boolean","jsonPath":".status.revoked","priority":1}"#,
    printcolumn = r#"{"name":"Serial","type":"string","jsonPath":".status.serial","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "duration(self.renewBefore) < duration(self.duration)",
        "message": "renewBefore must be shorter than duration",
        "fieldPath": ".renewBefore"
    },
    {
        "rule": "duration(self.duration) >= duration('5m') && duration(self.duration) <= duration('2160h')",
        "message": "duration must be between 5m and 2160h (90 days)",
        "fieldPath": ".duration"
    }
]))]
pub struct ModelIdentitySpec {
    /// Tenant the model belongs to; it is the authority of the MIC's URI
    /// `nexus://<tenant>/<model>@<version>`. Defaults to the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub tenant: Option<String>,
    /// Model name and version.
    pub model: ModelRef,
    /// `sha256:` digest of the model's architecture description (layer graph and shapes).
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub architecture_hash: String,
    /// Where the model's weights came from.
    pub provenance: TrainingProvenance,
    /// What the model claims it can do.
    pub capabilities: CapabilityClaims,
    /// Benchmark results: plain values, or commitments proven later in zero knowledge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scores_schema")]
    pub benchmarks: Vec<ScoreClaim>,
    /// Safety evaluation results, in the same shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scores_schema")]
    pub safety_evaluations: Vec<ScoreClaim>,
    /// Certificate lifetime. Short by default (SPIFFE-style): a leaked key is useful for hours.
    #[serde(default = "default_duration")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"),
        length(max = 32)
    )]
    pub duration: String,
    /// How long before expiry the certificate is renewed.
    #[serde(default = "default_renew_before")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"),
        length(max = 32)
    )]
    pub renew_before: String,
    /// Secret (same namespace) that receives `tls.crt`, `tls.key`, `ca.crt` and `attestation.json`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
    /// The CA that issues the certificate.
    pub issuer_ref: IssuerRef,
}

fn default_duration() -> String {
    "24h".into()
}
fn default_renew_before() -> String {
    "8h".into()
}
fn scores_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    named_list_schema::<ScoreClaim>(64)(g)
}

/// Model name and version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRef {
    /// Model name, e.g. `coder-70b`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Model version, e.g. `2.1.0`.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
    )]
    pub version: String,
}

/// Where a model's weights came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingProvenance {
    /// `sha256:` digests of the training datasets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = r"^sha256:[a-f0-9]{64}$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub dataset_digests: Vec<String>,
    /// Who trained and published the model.
    #[schemars(length(min = 1, max = 256))]
    pub publisher: String,
    /// Model this one was fine-tuned or distilled from, as `name@version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?@[0-9A-Za-z][0-9A-Za-z._+-]*$")
    )]
    pub parent_model: Option<String>,
}

/// What a model claims it can do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityClaims {
    /// Capabilities, e.g. `code-generation`.
    #[schemars(
        length(min = 1, max = 32),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub capabilities: Vec<String>,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub context_window: Option<u32>,
    /// Modalities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub modalities: Vec<Modality>,
}

/// A benchmark or safety-evaluation result: either the score itself, or a Poseidon commitment to it
/// (made with `nexctl zk commit`) so the model can later prove `score ≥ threshold` without
/// revealing the score.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.value) != has(self.commitment)",
    "message": "set exactly one of value or commitment"
}]))]
pub struct ScoreClaim {
    /// Benchmark or evaluation name, e.g. `humaneval`, `safety-eval`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._/-]+$"))]
    pub name: String,
    /// The score as an exact decimal with up to four fractional digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,4})?$"))]
    pub value: Option<String>,
    /// Hex commitment `Poseidon(score, blinding)` (32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub commitment: Option<String>,
    /// Who ran the evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub evaluator: Option<String>,
}

/// The CA that issues a MIC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the CA as configured in the controller (`nexus-ca` by default).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Observed state of a model identity, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelIdentityStatus {
    /// The `metadata.generation` the current certificate was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Serial of the current certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{2,64}$"))]
    pub serial: Option<String>,
    /// sha256 fingerprint of the current certificate (hex of the DER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub fingerprint: Option<String>,
    /// Start of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the controller will renew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// The current certificate was revoked.
    #[serde(default)]
    pub revoked: bool,
    /// Issuance attempts that failed in a row (drives back-off; reset on success).
    #[serde(default)]
    pub failed_issuance_attempts: u32,
    /// `Ready`, `Issuing`, `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Condition types of a ModelIdentity.
pub mod condition {
    /// A valid, unrevoked certificate is in the Secret.
    pub const READY: &str = "Ready";
    /// A certificate is being issued or renewed.
    pub const ISSUING: &str = "Issuing";
    /// The last issuance failed; the message says why.
    pub const FAILED: &str = "Failed";
}
