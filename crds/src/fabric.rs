//! `Fabric`: a fleet of nodes whose NICs run one firmware, one P4 pipeline and one dataplane
//! configuration, and the strategy for rolling changes out to them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    ArtifactSource, Condition, IntOrString, Time, budget_schema, conditions_schema,
    string_set_schema,
};

/// Desired state of a fabric.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nexus.dev",
    doc = "A fleet of nodes whose NICs run one firmware, P4 pipeline and dataplane configuration, and how changes roll out to them.",
    version = "v1alpha1",
    kind = "Fabric",
    plural = "fabrics",
    shortname = "fab",
    category = "nexus",
    status = "FabricStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Firmware","type":"string","jsonPath":".spec.firmware.version"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes.total"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","jsonPath":".status.nodes.updated"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.nodes.failed"}"#,
    printcolumn = r#"{"name":"Batch","type":"integer","jsonPath":".status.currentBatch.index"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.rollout.paused","priority":1}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.dataplane.mode","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.dataplane.mode != 'native' || has(self.pipeline)",
    "message": "dataplane mode native needs a P4 pipeline",
    "fieldPath": ".pipeline",
    "reason": "FieldValueRequired"
}]))]
pub struct FabricSpec {
    /// Nodes that belong to this fabric. An empty selector selects every node, which is rarely
    /// what a platform team wants, so the field is required.
    pub node_selector: LabelSelector,
    /// Which NICs on those nodes this fabric manages.
    pub nic: NicMatch,
    /// The firmware every matching NIC should run.
    pub firmware: FirmwareTarget,
    /// How firmware changes are rolled out.
    #[serde(default)]
    pub rollout: RolloutStrategy,
    /// The NexRoute P4 pipeline loaded on programmable NICs and switches (required in native mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineRef>,
    /// How the Nexus dataplane runs on each node.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
}

/// Selects NICs by vendor and model names and by PCI IDs (all given fields must match).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NicMatch {
    /// Vendor as reported by the driver, e.g. `nvidia`, `intel`, `amd-pensando`.
    #[schemars(length(min = 1, max = 63))]
    pub vendor: String,
    /// Model, e.g. `ConnectX-7`, `E810-CQDA2`; omitted means any model of the vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub model: Option<String>,
    /// PCI vendor ID, four lowercase hex digits (`15b3` for NVIDIA/Mellanox, `8086` for Intel).
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub pci_vendor_id: String,
    /// PCI device IDs accepted (four lowercase hex digits each).
    #[schemars(length(min = 1, max = 32), inner(regex(pattern = r"^[0-9a-f]{4}$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub pci_device_ids: Vec<String>,
}

/// The firmware every matching NIC should run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareTarget {
    /// Firmware version as the NIC reports it, e.g. `28.39.1002` or `2.4.1`.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
    )]
    pub version: String,
    /// Where the signed firmware bundle comes from.
    pub bundle: ArtifactSource,
    /// sha256 of the bundle (lowercase hex). The controller refuses a bundle that does not match
    /// before any node flashes it.
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: String,
}

/// How a firmware change is rolled out: canaries first, then batches bounded by `maxUnavailable`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Nodes flashed first, alone, before any batch; 0 disables the canary wave.
    #[serde(default = "default_canary")]
    #[schemars(range(min = 0, max = 1000))]
    pub canary: u32,
    /// Most nodes out of service (being drained, flashed or failed) at once: an integer ≥ 1 or a
    /// percentage of the fabric's nodes, rounded up.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "budget_schema")]
    pub max_unavailable: IntOrString,
    /// Time to watch a finished wave before starting the next, e.g. `10m`.
    #[serde(default = "default_soak_time")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"),
        length(max = 32)
    )]
    pub soak_time: String,
    /// Failed nodes tolerated; one more halts the rollout. 0 halts on the first failure.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub failure_threshold: u32,
    /// Roll every updated node back to the previous firmware when the rollout halts.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// Stop starting new nodes; nodes already flashing finish.
    #[serde(default)]
    pub paused: bool,
    /// Longest wait for a node's pods to be evicted before the flash is given up on that node.
    #[serde(default = "default_drain_timeout")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"),
        length(max = 32)
    )]
    pub drain_timeout: String,
}

fn default_canary() -> u32 {
    1
}
fn default_max_unavailable() -> IntOrString {
    IntOrString::String("10%".into())
}
fn default_soak_time() -> String {
    "5m".into()
}
fn default_drain_timeout() -> String {
    "10m".into()
}
fn default_true() -> bool {
    true
}

impl Default for RolloutStrategy {
    fn default() -> Self {
        Self {
            canary: default_canary(),
            max_unavailable: default_max_unavailable(),
            soak_time: default_soak_time(),
            failure_threshold: 0,
            auto_rollback: true,
            paused: false,
            drain_timeout: default_drain_timeout(),
        }
    }
}

/// A P4 pipeline: the compiled NexRoute program and its P4Info.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PipelineRef {
    /// Pipeline name, e.g. `nexroute`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Pipeline version.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
    )]
    pub version: String,
    /// Where the compiled pipeline comes from.
    pub source: ArtifactSource,
}

/// How the dataplane runs on each node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneConfig {
    /// `overlay` runs NexLink over UDP on any NIC; `native` offloads it to the P4 pipeline.
    #[serde(default)]
    pub mode: DataplaneMode,
    /// UDP port of the overlay.
    #[serde(default = "default_udp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub udp_port: u16,
    /// MTU of the NexLink path in bytes (IPv6 minimum to jumbo frames).
    #[serde(default = "default_mtu")]
    #[schemars(range(min = 1280, max = 9216))]
    pub mtu: u32,
    /// Congestion controller of the dataplane's sessions. `cubic` (the default) reads loss
    /// as congestion; `bbr` paces at the measured path rate and does not back off on loss
    /// alone, which keeps bulk transfers fast on paths whose loss is not congestion (lossy
    /// long-haul or radio links). Its implementation in the QUIC engine is experimental.
    #[serde(default)]
    pub congestion: Congestion,
}

/// Congestion controller of NexStream sessions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Congestion {
    /// CUBIC (RFC 9438).
    #[default]
    Cubic,
    /// BBR (version 1).
    Bbr,
}

impl Congestion {
    /// The name the dataplane's `--congestion` flag reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        }
    }
}

fn default_udp_port() -> u16 {
    7400
}
fn default_mtu() -> u32 {
    1500
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            mode: DataplaneMode::default(),
            udp_port: default_udp_port(),
            mtu: default_mtu(),
            congestion: Congestion::default(),
        }
    }
}

/// Dataplane mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DataplaneMode {
    /// NexLink over UDP, in software, on any hardware.
    #[default]
    Overlay,
    /// NexLink handled by the NIC or switch pipeline.
    Native,
}

/// Observed state of a fabric, written only by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FabricStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary of the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FabricPhase>,
    /// Node counts by rollout state.
    #[serde(default)]
    pub nodes: NodeCounts,
    /// Node counts by running firmware version: the fleet's version histogram.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["version"]))]
    pub versions: Vec<VersionCount>,
    /// The wave in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_batch: Option<BatchStatus>,
    /// Fetch and verification state of the target bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleStatus>,
    /// Nodes being drained before their flash, with when the drain started: kept here, not in
    /// the controller's memory, so a new leader does not restart `drainTimeout`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub draining: Vec<DrainingNode>,
    /// Nodes whose drain outlasted `drainTimeout` in this rollout: uncordoned and left for
    /// later; tried again once the other nodes are done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub skipped: Vec<SkippedNode>,
    /// Nodes the selector picks that another Fabric already manages (a node belongs to one
    /// Fabric; the first keeps it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "node_names_schema")]
    pub conflicting_nodes: Vec<String>,
    /// `Ready`, `Progressing`, `Degraded`, `RolledBack`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// One-word summary of a fabric's rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FabricPhase {
    /// Waiting for the bundle or for nodes.
    Pending,
    /// Canaries or batches are being flashed.
    Progressing,
    /// `spec.rollout.paused` is set.
    Paused,
    /// Every node runs the target.
    Ready,
    /// Every wave finished, but some nodes failed their flash (within `failureThreshold`): they
    /// run their previous firmware, uncordoned; `status.nodes.failed` counts them.
    Degraded,
    /// Failures passed the threshold and the rollout halted.
    Halted,
    /// Updated nodes are being flashed back to the previous firmware.
    RollingBack,
    /// The rollback finished; the fabric runs the previous firmware.
    RolledBack,
}

/// Node counts by rollout state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes selected by the fabric.
    #[serde(default)]
    pub total: u32,
    /// Nodes running the target firmware and healthy.
    #[serde(default)]
    pub updated: u32,
    /// Nodes being drained, flashed or health-checked.
    #[serde(default)]
    pub updating: u32,
    /// Nodes not yet started.
    #[serde(default)]
    pub pending: u32,
    /// Nodes whose flash or health check failed.
    #[serde(default)]
    pub failed: u32,
    /// Nodes out of service for any reason, including lost heartbeats.
    #[serde(default)]
    pub unavailable: u32,
    /// Nodes flashed back to the previous firmware.
    #[serde(default)]
    pub rolled_back: u32,
    /// Nodes whose drain timed out, waiting to be tried again.
    #[serde(default)]
    pub skipped: u32,
}

/// A node being drained for its flash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainingNode {
    /// Node name.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// When the drain started.
    pub started_at: Time,
    /// Pods a PodDisruptionBudget protects right now (`namespace/name`), the first few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 317)))]
    pub blocked_pods: Vec<String>,
}

/// A node left out of the current wave because its drain timed out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedNode {
    /// Node name.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// When it was given up on.
    pub at: Time,
    /// Why, e.g. the pods that would not leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// How many nodes run one firmware version.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionCount {
    /// Firmware version.
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
    /// Nodes running it.
    pub count: u32,
}

/// The wave in progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatus {
    /// 0 is the canary wave, then 1, 2, … for batches.
    pub index: u32,
    /// Nodes in this wave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "node_names_schema")]
    pub nodes: Vec<String>,
    /// When the wave started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the soak of a finished wave ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_until: Option<Time>,
}

fn node_names_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    string_set_schema(10000, 253)(g)
}

/// Fetch and verification state of a firmware bundle.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    /// `Downloading`, `Verified` or `Failed`.
    pub state: BundleState,
    /// sha256 actually computed over the fetched bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
    /// Why verification failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Fetch and verification state of a firmware bundle.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BundleState {
    /// Being fetched.
    #[default]
    Downloading,
    /// Digest and signature checked: nodes may flash it.
    Verified,
    /// Digest, signature or fetch failed: no node flashes it.
    Failed,
}

/// Condition types of a Fabric.
pub mod condition {
    /// Every selected node runs the target firmware and is healthy.
    pub const READY: &str = "Ready";
    /// A rollout is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Nodes failed or are unavailable.
    pub const DEGRADED: &str = "Degraded";
    /// The last rollout was rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
}
