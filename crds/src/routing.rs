//! `RoutingDomain`: a tenant's set of model endpoints, advertised by capability, and the policy that
//! decides which of them may receive traffic.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LocalObjectReference, conditions_schema, named_list_schema};

/// Desired state of a routing domain.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nexus.dev",
    doc = "A tenant's model endpoints, advertised by capability, and the policy that admits them into the routing table.",
    version = "v1alpha1",
    kind = "RoutingDomain",
    plural = "routingdomains",
    shortname = "rd",
    category = "nexus",
    namespaced,
    status = "RoutingDomainStatus",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Fabric","type":"string","jsonPath":".spec.fabricRef.name"}"#,
    printcolumn = r#"{"name":"Admitted","type":"integer","jsonPath":".status.admittedCount"}"#,
    printcolumn = r#"{"name":"Rejected","type":"integer","jsonPath":".status.rejectedCount"}"#,
    printcolumn = r#"{"name":"Table","type":"string","jsonPath":".status.routingTableVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.policy) || !has(self.policy.loadBalancing) || !has(self.endpoints) || self.policy.loadBalancing.fanOut <= size(self.endpoints)",
    "message": "policy.loadBalancing.fanOut cannot exceed the number of endpoints",
    "fieldPath": ".policy.loadBalancing.fanOut"
}]))]
pub struct RoutingDomainSpec {
    /// Tenant that owns the domain (Nexus Cloud tenant ID or an enterprise team name).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub tenant: String,
    /// Fabric whose nodes carry this domain's traffic.
    pub fabric_ref: LocalObjectReference,
    /// Model endpoints advertised in this domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "endpoints_schema")]
    pub endpoints: Vec<EndpointAdvertisement>,
    /// Admission and load-balancing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RoutingPolicy>,
}

fn endpoints_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    named_list_schema::<EndpointAdvertisement>(1024)(g)
}

/// One model endpoint and what it can do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAdvertisement {
    /// Endpoint name, unique in the domain.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Where the endpoint listens: `host:port` of its NexLink overlay.
    #[schemars(
        length(min = 1, max = 261),
        regex(pattern = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
    )]
    pub address: String,
    /// What the model behind the endpoint can do.
    pub capability: CapabilityDescriptor,
    /// ModelIdentity (same namespace) whose certificate the endpoint presents.
    pub model_identity_ref: LocalObjectReference,
    /// Relative share of traffic among endpoints that match a request.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0, max = 1000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

/// A capability descriptor: what NexRoute matches requests against instead of hostnames.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityDescriptor {
    /// Capabilities, e.g. `code-generation`, `chat`, `embedding`, `tool-use`.
    #[schemars(
        length(min = 1, max = 32),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub capabilities: Vec<String>,
    /// Model family, e.g. `llm`, `diffusion`, `asr`.
    #[schemars(length(min = 1, max = 63))]
    pub model_family: String,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub context_window: Option<u32>,
    /// Input/output modalities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub modalities: Vec<Modality>,
    /// Latency the endpoint commits to (time to first token), milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600_000))]
    pub latency_sla_ms: Option<u32>,
    /// Price per 1,000 tokens as an exact decimal string in US dollars (no floats in money).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}(\.[0-9]{1,6})?$"))]
    pub cost_per_1k_tokens: Option<String>,
}

/// A modality a model consumes or produces.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Modality {
    /// Text.
    Text,
    /// Images.
    Image,
    /// Audio.
    Audio,
    /// Video.
    Video,
    /// Raw tensors.
    Tensor,
}

/// Admission and load-balancing policy of a routing domain.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingPolicy {
    /// What an endpoint's MIC must prove before it is admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustRequirements>,
    /// How traffic is spread over admitted endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
}

/// What an endpoint's Model Identity Certificate must show.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustRequirements {
    /// Issuers (certificate subject common names) whose MICs are accepted; empty accepts the
    /// cluster's configured CA only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 256)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub accepted_issuers: Vec<String>,
    /// Attested claims that must be present, e.g. `capability:code-generation`,
    /// `benchmark:humaneval`, `safety:toxicity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 128),
            regex(pattern = r"^(capability|benchmark|safety|provenance):[A-Za-z0-9._/-]+$")
        )
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub required_claims: Vec<String>,
    /// Zero-knowledge proofs the endpoint must present over committed benchmark or safety scores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["claim"]))]
    pub required_proofs: Vec<ProofRequirement>,
}

/// "Prove that committed score `claim` is at least `threshold`."
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProofRequirement {
    /// Benchmark or safety evaluation name as it appears in the MIC, e.g. `safety-eval`.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9._/-]+$"))]
    pub claim: String,
    /// Minimum score, an exact decimal with up to four fractional digits (scores are fixed-point).
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,4})?$"))]
    pub threshold: String,
}

/// How traffic is spread over admitted endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    /// Algorithm.
    #[serde(default)]
    pub strategy: LoadBalancingStrategy,
    /// Endpoints a request is sent to at once (multipath); the first answer wins.
    #[serde(default = "default_fan_out")]
    #[schemars(range(min = 1, max = 16))]
    pub fan_out: u32,
}

fn default_fan_out() -> u32 {
    1
}

/// Load-balancing algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LoadBalancingStrategy {
    /// By `weight`.
    #[default]
    Weighted,
    /// Lowest observed latency first.
    LeastLatency,
    /// Lowest `costPer1kTokens` first.
    LeastCost,
}

/// Observed state of a routing domain, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingDomainStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Endpoints admitted into the routing table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "admitted_schema")]
    pub admitted: Vec<AdmittedEndpoint>,
    /// Endpoints refused, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "rejected_schema")]
    pub rejected: Vec<RejectedEndpoint>,
    /// `admitted` length, for printer columns.
    #[serde(default)]
    pub admitted_count: u32,
    /// `rejected` length, for printer columns.
    #[serde(default)]
    pub rejected_count: u32,
    /// Version of the compiled routing table pushed to nodes (a content hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub routing_table_version: Option<String>,
    /// Nodes running that routing table.
    #[serde(default)]
    pub nodes_programmed: u32,
    /// `Ready`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

fn admitted_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    named_list_schema::<AdmittedEndpoint>(1024)(g)
}
fn rejected_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    named_list_schema::<RejectedEndpoint>(1024)(g)
}

/// An endpoint in the routing table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdmittedEndpoint {
    /// Endpoint name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// sha256 fingerprint of the MIC it was admitted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub certificate_fingerprint: Option<String>,
}

/// An endpoint left out of the routing table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedEndpoint {
    /// Endpoint name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Machine-readable reason in CamelCase, e.g. `IdentityNotReady`, `UntrustedIssuer`,
    /// `MissingClaim`, `ProofFailed`, `Revoked`.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Z][A-Za-z0-9]*$"))]
    pub reason: String,
    /// Human-readable detail.
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// Condition types of a RoutingDomain.
pub mod condition {
    /// The routing table is compiled and programmed on every node of the fabric.
    pub const READY: &str = "Ready";
    /// Some endpoints were rejected or some nodes are not programmed.
    pub const DEGRADED: &str = "Degraded";
}
