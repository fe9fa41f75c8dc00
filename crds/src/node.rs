//! `NexusNode`: one per Kubernetes node. The controller writes the spec (what the node should run);
//! the node agent writes the status (what its NICs actually run). One writer per half.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ArtifactSource, Condition, Time, conditions_schema};
use crate::fabric::{DataplaneConfig, PipelineRef};

/// Desired state of one node, written by the controller.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "nexus.dev",
    doc = "Per-node state: the controller writes what the node should run (spec), its node agent what it runs (status).",
    version = "v1alpha1",
    kind = "NexusNode",
    plural = "nexusnodes",
    shortname = "nxn",
    category = "nexus",
    status = "NexusNodeStatus",
    printcolumn = r#"{"name":"Fabric","type":"string","jsonPath":".spec.fabric"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.firmware.version"}"#,
    printcolumn = r#"{"name":"Running","type":"string","jsonPath":".status.nics[0].runningFirmware"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last Flash","type":"string","jsonPath":".status.lastFlash.result"}"#,
    printcolumn = r#"{"name":"Dataplane","type":"string","jsonPath":".status.dataplane.phase"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.heartbeat"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agentVersion","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NexusNodeSpec {
    /// The Fabric this node belongs to.
    #[schemars(length(min = 1, max = 253))]
    pub fabric: String,
    /// Monotonic version of this desired state; the agent acknowledges it by number.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub desired_version: i64,
    /// Firmware the node's matching NICs should run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<NodeFirmware>,
    /// PCI addresses of the NICs on this node that the Fabric manages (its `nic` match applied
    /// to what the agent reported); the agent flashes these and no others. Empty until the agent
    /// has reported its NICs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"))
    )]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub nics: Vec<String>,
    /// P4 pipeline to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineRef>,
    /// Dataplane configuration.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// Set by the rollout controller while the node is cordoned and drained for a flash.
    #[serde(default)]
    pub maintenance: bool,
    /// The NexRoute tables the node's dataplane should run, written by the RoutingDomain
    /// controller (kube mode; its own field manager): the agent fetches them by version from
    /// the controller's `/v1/routing/{version}` and reports what it runs in `status.routing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<NodeRoutingSpec>,
}

/// The routing tables a node should run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoutingSpec {
    /// Table version (`RoutingDomain.status.routingTableVersion`, a content hash).
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
}

/// Firmware the node should run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFirmware {
    /// Firmware version.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[0-9A-Za-z][0-9A-Za-z._+-]*$")
    )]
    pub version: String,
    /// Bundle source. Absent when the image is already in the NICs' inactive bank (a rollback is
    /// an A/B switch: nothing to download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<ArtifactSource>,
    /// Expected sha256 of the bundle (or of the inactive bank's image for an A/B switch, when
    /// the agent reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
}

/// Observed state of a node, written only by its node agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NexusNodeStatus {
    /// `spec.desiredVersion` the agent last applied (or rejected; see conditions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_version: Option<i64>,
    /// NICs the agent discovered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["pciAddress"]))]
    pub nics: Vec<NicStatus>,
    /// Outcome of the most recent flash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_flash: Option<FlashResult>,
    /// Version of the node agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub agent_version: Option<String>,
    /// Last time the agent reported; a stale heartbeat makes the node count as unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Time>,
    /// The NexRoute tables the node's dataplane runs, as its agent reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<NodeRoutingStatus>,
    /// The node's dataplane process, when its agent supervises one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane: Option<NodeDataplaneStatus>,
    /// `Ready`, `FirmwareCurrent`, `PipelineLoaded`, and `DataplaneReachable` from agents told
    /// their pod's hostPort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The node's dataplane process (`nexus-dataplane`) as its agent supervises it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeDataplaneStatus {
    /// What the process is doing.
    pub phase: DataplanePhase,
    /// Whether it answers `/readyz` with 200 (socket bound, MIC and CRL loaded, not draining).
    #[serde(default)]
    pub ready: bool,
    /// Its process id on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The UDP port it listens on (the Fabric's `dataplane.udpPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub udp_port: Option<u16>,
    /// Unplanned exits since the agent started (a restart for a configuration change is not
    /// one).
    #[serde(default)]
    pub restarts: u32,
    /// How the last run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub last_exit: Option<String>,
    /// When the running process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the next start is due, while backing off after exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_at: Option<Time>,
}

/// Phase of a supervised dataplane.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DataplanePhase {
    /// Not running, and not asked to.
    #[default]
    Stopped,
    /// Started, not yet ready.
    Starting,
    /// Running and ready.
    Running,
    /// Asked to stop (configuration change or shutdown): draining.
    Stopping,
    /// Exited unexpectedly; waiting before the next start (exponential backoff).
    BackingOff,
}

/// The routing tables of a node's dataplane.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeRoutingStatus {
    /// Table version programmed (`RoutingDomain.status.routingTableVersion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub programmed_version: Option<String>,
    /// The last version the dataplane refused; it keeps running `programmedVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub refused_version: Option<String>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub refused_reason: Option<String>,
}

/// One NIC and the contents of its flash.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NicStatus {
    /// PCI address, `domain:bus:device.function`.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$"))]
    pub pci_address: String,
    /// Vendor name.
    #[schemars(length(max = 63))]
    pub vendor: String,
    /// Model name.
    #[schemars(length(max = 63))]
    pub model: String,
    /// PCI vendor ID.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub pci_vendor_id: String,
    /// PCI device ID.
    #[schemars(regex(pattern = r"^[0-9a-f]{4}$"))]
    pub pci_device_id: String,
    /// Firmware version running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub running_firmware: Option<String>,
    /// Bank the NIC boots from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_bank: Option<Bank>,
    /// Both flash banks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["bank"]))]
    pub banks: Vec<BankStatus>,
}

/// A flash bank.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Bank {
    /// Bank A.
    A,
    /// Bank B.
    B,
}

/// What one flash bank holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BankStatus {
    /// Which bank.
    pub bank: Bank,
    /// Firmware version in the bank, if any image is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub version: Option<String>,
    /// sha256 of the image in the bank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
    /// Whether the image last booted successfully.
    #[serde(default)]
    pub bootable: bool,
}

/// Outcome of a flash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlashResult {
    /// Version that was being flashed.
    #[schemars(length(min = 1, max = 64))]
    pub version: String,
    /// `Succeeded`, `Failed`, `RolledBack` or `Refused`.
    pub result: FlashOutcome,
    /// Stage reached, e.g. `Verify`, `Write`, `ReadBack`, `Switch`, `HealthCheck`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub stage: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// When the flash started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the flash ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// Outcome of a flash.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FlashOutcome {
    /// The new image booted and passed its health check.
    Succeeded,
    /// The flash failed; the NIC still boots its previous image.
    Failed,
    /// The new image failed its health check and the NIC fell back to the previous bank.
    RolledBack,
    /// The bundle was refused before any write (signature, device, compatibility).
    Refused,
    /// The agent stopped mid-flash (restart, power loss); the previous bank still runs and the
    /// flash will be tried again. Not a failure of the image.
    Interrupted,
}

/// Condition types of a NexusNode.
pub mod condition {
    /// The agent is heartbeating and the node's NICs run what the spec asks.
    pub const READY: &str = "Ready";
    /// Running firmware equals the spec's target.
    pub const FIRMWARE_CURRENT: &str = "FirmwareCurrent";
    /// The P4 pipeline in the spec is loaded.
    pub const PIPELINE_LOADED: &str = "PipelineLoaded";
    /// Peers on other nodes can reach the dataplane: the UDP port the Fabric names is the one
    /// the agent's pod forwards from the node (its hostPort). Set only by agents told which
    /// port that is (`--dataplane-host-port`).
    pub const DATAPLANE_REACHABLE: &str = "DataplaneReachable";
}
