//! The controller's in-memory picture of the fleet: every node agent's session and reported
//! state, every Fabric with its bundle and user overrides, and the reconcile step that turns
//! them into planner input, applies the planner's actions to each node's desired state and pushes
//! what changed down the sessions.
//!
//! No I/O here but non-blocking channel sends; the clock is passed in. The kube mode would keep
//! the same shapes in `NexusNode` and `Fabric` objects; local mode keeps them only here and
//! re-learns them from the agents' `Register` after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use nexus_crds::Fabric;
use nexus_crds::common::ArtifactSource;
use nexus_crds::fabric::{BundleState, BundleStatus, DataplaneMode, FabricPhase, NicMatch};
use nexus_crds::node::{
    Bank, BankStatus, FlashOutcome, FlashResult, NexusNode, NexusNodeSpec, NexusNodeStatus,
    NicStatus, NodeFirmware,
};
use nexus_fleet_api::v1 as pb;
use pb::agent_message::Msg;
use tokio::sync::mpsc;

use super::plan::{self, NodeAction, NodeView};
use super::view;

/// Sender half of an agent's response stream.
/// (Boxed: an unbounded channel allocates a block of 32 slots up front, per session.)
pub type SessionTx = mpsc::UnboundedSender<Box<pb::ControllerMessage>>;

/// Bundles up to this size travel inside the DesiredState; larger ones through FetchBundle.
pub const INLINE_BUNDLE_MAX: usize = 1024 * 1024;

/// Timing knobs of the reconcile step.
#[derive(Clone, Debug)]
pub struct Timing {
    /// A node whose agent has not reported for this long counts as unavailable.
    pub heartbeat_timeout: Duration,
    /// After a (re)start, start no node for this long, so that every agent can re-register and
    /// report what it is doing before budgets are computed.
    pub start_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_timeout: view::DEFAULT_HEARTBEAT_TIMEOUT,
            start_grace: Duration::from_secs(5),
        }
    }
}

/// One connected agent.
#[derive(Debug)]
pub struct Session {
    /// Distinguishes a reconnect from the stream it replaces.
    pub id: u64,
    tx: SessionTx,
    /// Highest desired-state version sent on this session.
    sent: u64,
}

/// A node as the controller knows it.
#[derive(Debug)]
pub struct NodeEntry {
    /// Spec (what we tell it) and status (what its agent reports).
    pub node: NexusNode,
    /// Labels from Register.
    pub labels: BTreeMap<String, String>,
    /// The open stream, if connected.
    pub session: Option<Session>,
    /// Last Progress of a flash.
    pub progress: Option<pb::Progress>,
    /// Last Nack.
    pub nack: Option<(u64, String)>,
}

/// The target bundle of a fabric: fetched once, verified, then pushed to nodes.
#[derive(Debug, Clone)]
pub struct BundleEntry {
    /// Expected sha256 (from the spec).
    pub sha256: String,
    /// Source URL.
    pub url: String,
    /// State for `Fabric.status.bundle`.
    pub status: BundleStatus,
    /// The verified bytes.
    pub bytes: Option<Arc<Vec<u8>>>,
}

/// A fabric and what only the controller holds about it.
#[derive(Debug)]
pub struct FabricEntry {
    /// The object, status included.
    pub fabric: Fabric,
    /// `spec.rollout.paused` as set through the API (an in-memory edit).
    pub paused: Option<bool>,
    /// A rollback requested through the API, for this generation.
    pub rollback_generation: Option<i64>,
    /// The planner halted this generation.
    pub halted_generation: Option<i64>,
    /// Target bundle.
    pub bundle: Option<BundleEntry>,
    /// Member nodes, as of the last reconcile.
    pub members: Vec<String>,
}

/// Counts of what one reconcile did (for metrics and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Start actions applied.
    pub starts: u32,
    /// Finish actions applied.
    pub finishes: u32,
    /// Rollback actions applied.
    pub rollbacks: u32,
    /// Desired states pushed.
    pub pushes: u32,
}

/// The whole fleet.
#[derive(Debug)]
pub struct Fleet {
    /// Fabrics by name.
    pub fabrics: BTreeMap<String, FabricEntry>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// When this controller started (for the start grace).
    pub started: DateTime<Utc>,
    next_session: u64,
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn time_ms(ms: i64) -> Option<nexus_crds::common::Time> {
    (ms > 0).then(|| {
        nexus_crds::common::Time(
            k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap_or_default(),
        )
    })
}

fn bank_of(b: i32) -> Option<Bank> {
    match pb::Bank::try_from(b) {
        Ok(pb::Bank::A) => Some(Bank::A),
        Ok(pb::Bank::B) => Some(Bank::B),
        _ => None,
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Wire NIC → API NIC.
pub fn nic_status(n: &pb::Nic) -> NicStatus {
    NicStatus {
        pci_address: n.pci_address.clone(),
        vendor: n.vendor.clone(),
        model: n.model.clone(),
        pci_vendor_id: n.pci_vendor_id.clone(),
        pci_device_id: n.pci_device_id.clone(),
        running_firmware: opt(&n.running_firmware),
        active_bank: bank_of(n.active_bank),
        banks: n
            .banks
            .iter()
            .filter_map(|b| {
                Some(BankStatus {
                    bank: bank_of(b.bank)?,
                    version: opt(&b.version),
                    sha256: is_sha256(&b.sha256).then(|| b.sha256.clone()),
                    bootable: b.bootable,
                })
            })
            .collect(),
    }
}

/// Wire flash result → API flash result.
pub fn flash_result(r: &pb::FlashResult) -> Option<FlashResult> {
    let result = match pb::FlashOutcome::try_from(r.outcome).ok()? {
        pb::FlashOutcome::Succeeded => FlashOutcome::Succeeded,
        pb::FlashOutcome::Failed => FlashOutcome::Failed,
        pb::FlashOutcome::RolledBack => FlashOutcome::RolledBack,
        pb::FlashOutcome::Refused => FlashOutcome::Refused,
        pb::FlashOutcome::Unspecified => return None,
    };
    Some(FlashResult {
        version: r.version.clone(),
        result,
        stage: opt(&r.stage),
        message: opt(&r.message),
        started_at: time_ms(r.started_at_ms),
        finished_at: time_ms(r.finished_at_ms),
    })
}

/// Whether a label selector matches a label set (matchLabels and matchExpressions).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether a NIC is one a fabric manages.
pub fn nic_matches(m: &NicMatch, nic: &NicStatus) -> bool {
    nic.vendor == m.vendor
        && m.model.as_ref().is_none_or(|model| &nic.model == model)
        && nic.pci_vendor_id == m.pci_vendor_id
        && m.pci_device_ids.contains(&nic.pci_device_id)
}

fn matching_nics<'a>(m: &'a NicMatch, node: &'a NexusNode) -> impl Iterator<Item = &'a NicStatus> {
    node.status
        .iter()
        .flat_map(|s| s.nics.iter())
        .filter(move |n| nic_matches(m, n))
}

/// The planner's view of a member node: like [`view::node_view`], but from the first NIC the
/// fabric manages rather than the first NIC.
pub fn member_view(
    node: &NexusNode,
    m: &NicMatch,
    now: DateTime<Utc>,
    timeout: Duration,
) -> NodeView {
    // Like view::node_view, without cloning the status (this runs for every member on every
    // reconcile).
    let status = node.status.as_ref();
    let nic = matching_nics(m, node).next();
    let heartbeat_fresh = status.and_then(|s| s.heartbeat.as_ref()).is_some_and(|h| {
        now.signed_duration_since(view::to_chrono(h))
            .to_std()
            .map(|age| age <= timeout)
            .unwrap_or(true) // a heartbeat from the future: clock skew, not staleness
    });
    NodeView {
        name: node.metadata.name.clone().unwrap_or_default(),
        spec_target: node.spec.firmware.as_ref().map(|f| f.version.clone()),
        maintenance: node.spec.maintenance,
        running: nic.and_then(|n| n.running_firmware.clone()),
        previous: nic.and_then(|n| {
            let active = n.active_bank?;
            n.banks
                .iter()
                .find(|b| b.bank != active && b.bootable)
                .and_then(|b| b.version.clone())
        }),
        last_flash: status.and_then(|s| s.last_flash.as_ref()).map(|f| {
            (
                f.version.clone(),
                f.result,
                f.finished_at.as_ref().map(view::to_chrono),
            )
        }),
        heartbeat_fresh,
    }
}

fn dataplane_pb(d: &nexus_crds::fabric::DataplaneConfig) -> pb::Dataplane {
    pb::Dataplane {
        mode: match d.mode {
            DataplaneMode::Overlay => "overlay".into(),
            DataplaneMode::Native => "native".into(),
        },
        udp_port: u32::from(d.udp_port),
        mtu: d.mtu,
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new(Utc::now())
    }
}

impl Fleet {
    /// An empty fleet, started at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            fabrics: BTreeMap::new(),
            nodes: BTreeMap::new(),
            started: now,
            next_session: 1,
        }
    }

    /// Adds or updates a fabric read from a manifest. A changed spec bumps `metadata.generation`
    /// (as the API server would); status and overrides are kept; a new bundle is fetched again.
    pub fn upsert_fabric(&mut self, mut fabric: Fabric) {
        let Some(name) = fabric.metadata.name.clone() else {
            return;
        };
        match self.fabrics.get_mut(&name) {
            Some(e) => {
                if e.fabric.spec != fabric.spec {
                    let bundle_changed = e.fabric.spec.firmware != fabric.spec.firmware;
                    e.fabric.metadata.generation =
                        Some(e.fabric.metadata.generation.unwrap_or(1) + 1);
                    e.fabric.spec = fabric.spec;
                    e.fabric.metadata.labels = fabric.metadata.labels;
                    if bundle_changed {
                        e.bundle = None;
                    }
                }
            }
            None => {
                fabric.metadata.generation = Some(1);
                fabric.metadata.creation_timestamp = Some(view::to_time(Utc::now()));
                fabric.status = None;
                self.fabrics.insert(
                    name,
                    FabricEntry {
                        fabric,
                        paused: None,
                        rollback_generation: None,
                        halted_generation: None,
                        bundle: None,
                        members: Vec::new(),
                    },
                );
            }
        }
    }

    /// A fabric as clients see it: the in-memory overrides applied to the spec.
    pub fn fabric_view(e: &FabricEntry) -> Fabric {
        let mut f = e.fabric.clone();
        if let Some(p) = e.paused {
            f.spec.rollout.paused = p;
        }
        f
    }

    /// Drops fabrics whose manifests are gone.
    pub fn retain_fabrics(&mut self, names: &BTreeSet<String>) {
        self.fabrics.retain(|n, _| names.contains(n));
    }

    /// A new session: records the agent's inventory and, on a controller that does not know the
    /// node's desired state (a restart), adopts the one the agent reports. Returns the session id.
    pub fn register(&mut self, reg: pb::Register, tx: SessionTx, now: DateTime<Utc>) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        let entry = self
            .nodes
            .entry(reg.node_name.clone())
            .or_insert_with(|| NodeEntry {
                node: NexusNode {
                    metadata: ObjectMeta {
                        name: Some(reg.node_name.clone()),
                        creation_timestamp: Some(view::to_time(now)),
                        ..ObjectMeta::default()
                    },
                    spec: NexusNodeSpec {
                        fabric: String::new(),
                        desired_version: 0,
                        firmware: None,
                        pipeline: None,
                        dataplane: Default::default(),
                        maintenance: false,
                    },
                    status: None,
                },
                labels: BTreeMap::new(),
                session: None,
                progress: None,
                nack: None,
            });
        entry.labels = reg.labels.into_iter().collect();
        let spec = &mut entry.node.spec;
        if let Some(cur) = reg.current {
            let v = i64::try_from(cur.version).unwrap_or(i64::MAX);
            if v > spec.desired_version {
                spec.desired_version = v;
                spec.fabric = cur.fabric;
                spec.maintenance = cur.maintenance;
                spec.firmware = cur.firmware.map(|f| NodeFirmware {
                    version: f.version,
                    bundle: ArtifactSource {
                        url: opt(&f.bundle_url),
                        ..ArtifactSource::default()
                    },
                    sha256: f.sha256,
                });
            }
        }
        let status = entry
            .node
            .status
            .get_or_insert_with(NexusNodeStatus::default);
        status.agent_version = opt(&reg.agent_version);
        status.nics = reg.nics.iter().map(nic_status).collect();
        status.last_flash = reg.last_flash.as_ref().and_then(flash_result);
        status.heartbeat = Some(view::to_time(now));
        entry.session = Some(Session { id, tx, sent: 0 });
        id
    }

    /// One message from an agent's session `session`. Returns whether it changed anything the
    /// planner looks at (a heartbeat that only repeats the last report does not).
    pub fn on_message(&mut self, node: &str, session: u64, msg: Msg, now: DateTime<Utc>) -> bool {
        let Some(e) = self.nodes.get_mut(node) else {
            return false;
        };
        if e.session.as_ref().map(|s| s.id) != Some(session) {
            return false; // a stream that was replaced by a reconnect
        }
        let status = e.node.status.get_or_insert_with(NexusNodeStatus::default);
        status.heartbeat = Some(view::to_time(now));
        match msg {
            Msg::Register(_) => false,
            Msg::Status(s) => {
                let nics: Vec<NicStatus> = s.nics.iter().map(nic_status).collect();
                let last_flash = s.last_flash.as_ref().and_then(flash_result);
                let changed = nics != status.nics || last_flash != status.last_flash;
                status.nics = nics;
                status.last_flash = last_flash;
                status.applied_version = Some(i64::try_from(s.applied_version).unwrap_or(i64::MAX));
                if !s.busy {
                    e.progress = None;
                }
                changed
            }
            Msg::Ack(a) => {
                let v = i64::try_from(a.version).unwrap_or(i64::MAX);
                status.applied_version = Some(status.applied_version.unwrap_or(0).max(v));
                e.progress = None;
                true
            }
            Msg::Nack(n) => {
                e.nack = Some((n.version, n.reason));
                e.progress = None;
                true
            }
            Msg::Progress(p) => {
                e.progress = Some(p);
                false
            }
        }
    }

    /// The stream `session` of `node` ended.
    pub fn disconnect(&mut self, node: &str, session: u64) {
        if let Some(e) = self.nodes.get_mut(node)
            && e.session.as_ref().map(|s| s.id) == Some(session)
        {
            e.session = None;
        }
    }

    /// Closes every session (shutdown): the response streams end.
    pub fn disconnect_all(&mut self) {
        for e in self.nodes.values_mut() {
            e.session = None;
        }
    }

    /// Bundles that need fetching, marked Downloading: (fabric, url, expected sha256).
    pub fn bundles_to_fetch(&mut self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (name, e) in &mut self.fabrics {
            if e.bundle.is_some() {
                continue;
            }
            let fw = &e.fabric.spec.firmware;
            let url = fw.bundle.url.clone().unwrap_or_default();
            e.bundle = Some(BundleEntry {
                sha256: fw.sha256.clone(),
                url: url.clone(),
                status: BundleStatus {
                    state: BundleState::Downloading,
                    sha256: None,
                    message: None,
                },
                bytes: None,
            });
            out.push((name.clone(), url, fw.sha256.clone()));
        }
        out
    }

    /// Records a fetch: verified bytes, or why it failed.
    pub fn bundle_fetched(&mut self, fabric: &str, sha256: &str, result: super::bundle::Fetched) {
        let Some(e) = self.fabrics.get_mut(fabric) else {
            return;
        };
        let Some(b) = e.bundle.as_mut() else { return };
        if b.sha256 != sha256 {
            return; // the spec moved on meanwhile
        }
        b.status = result.status;
        b.bytes = result.bytes;
    }

    fn desired_state(&self, e: &NodeEntry) -> Option<pb::DesiredState> {
        let spec = &e.node.spec;
        let fabric = self.fabrics.get(&spec.fabric);
        let mut firmware = None;
        if let Some(fw) = &spec.firmware {
            let running = fabric
                .and_then(|f| matching_nics(&f.fabric.spec.nic, &e.node).next())
                .and_then(|n| n.running_firmware.clone());
            let mut bundle = Vec::new();
            if running.as_deref() != Some(fw.version.as_str())
                && let Some(f) = fabric
                && f.fabric.spec.firmware.version == fw.version
            {
                // The agent must flash: it needs the verified bytes, so wait for them.
                let b = f.bundle.as_ref()?;
                if b.status.state != BundleState::Verified || b.sha256 != fw.sha256 {
                    return None;
                }
                let bytes = b.bytes.as_ref()?;
                if bytes.len() <= INLINE_BUNDLE_MAX {
                    bundle = bytes.to_vec();
                }
                // Larger bundles: the agent fetches them once with FetchBundle(sha256), so a
                // wave of pushes does not hold a copy per node.
            }
            firmware = Some(pb::FirmwareTarget {
                version: fw.version.clone(),
                bundle_url: fw.bundle.url.clone().unwrap_or_default(),
                bundle,
                sha256: fw.sha256.clone(),
                pci_addresses: fabric
                    .map(|f| {
                        matching_nics(&f.fabric.spec.nic, &e.node)
                            .map(|n| n.pci_address.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        Some(pb::DesiredState {
            version: u64::try_from(spec.desired_version).unwrap_or(0),
            fabric: spec.fabric.clone(),
            firmware,
            pipeline: spec.pipeline.as_ref().map(|p| pb::Pipeline {
                name: p.name.clone(),
                version: p.version.clone(),
                url: p.source.url.clone().unwrap_or_default(),
            }),
            dataplane: Some(dataplane_pb(&spec.dataplane)),
            maintenance: spec.maintenance,
        })
    }

    /// The verified bytes of the bundle with this sha256, if any fabric has one.
    pub fn verified_bundle(&self, sha256: &str) -> Option<Arc<Vec<u8>>> {
        self.fabrics.values().find_map(|f| {
            let b = f.bundle.as_ref()?;
            (b.sha256 == sha256 && b.status.state == BundleState::Verified)
                .then(|| b.bytes.clone())
                .flatten()
        })
    }

    /// Sends every connected node whose desired state is newer than what its session has seen.
    fn push(&mut self) -> u32 {
        let mut sends = Vec::new();
        for (name, e) in &self.nodes {
            let Some(s) = &e.session else { continue };
            let v = u64::try_from(e.node.spec.desired_version).unwrap_or(0);
            if v == 0 || v <= s.sent {
                continue;
            }
            if let Some(d) = self.desired_state(e) {
                sends.push((name.clone(), d));
            }
        }
        let mut n = 0;
        for (name, d) in sends {
            if let Some(s) = self.nodes.get_mut(&name).and_then(|e| e.session.as_mut()) {
                s.sent = d.version;
                if s.tx
                    .send(Box::new(pb::ControllerMessage::desired(d)))
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// One reconcile of every fabric at `now`: plan, apply, push. Returns what it did and when
    /// to run again at the latest.
    pub fn reconcile(
        &mut self,
        now: DateTime<Utc>,
        timing: &Timing,
    ) -> (Applied, Option<Duration>) {
        let mut applied = Applied::default();
        let mut requeue: Option<Duration> = None;
        let grace_end =
            self.started + chrono::Duration::from_std(timing.start_grace).unwrap_or_default();
        let in_grace = now < grace_end;
        if in_grace {
            // Wake up when the grace ends rather than on the next tick.
            requeue = (grace_end - now).to_std().ok();
        }
        let mut taken: BTreeSet<String> = BTreeSet::new();
        let names: Vec<String> = self.fabrics.keys().cloned().collect();
        for name in names {
            let Some(fe) = self.fabrics.get(&name) else {
                continue;
            };
            let spec = &fe.fabric.spec;
            let members: Vec<String> = self
                .nodes
                .iter()
                .filter(|(n, e)| {
                    !taken.contains(*n)
                        && selector_matches(&spec.node_selector, &e.labels)
                        && matching_nics(&spec.nic, &e.node).next().is_some()
                })
                .map(|(n, _)| n.clone())
                .collect();
            taken.extend(members.iter().cloned());
            let mut fabric = fe.fabric.clone();
            if let Some(p) = fe.paused {
                fabric.spec.rollout.paused = p;
            }
            let generation = fabric.metadata.generation;
            let population = u32::try_from(members.len()).unwrap_or(u32::MAX);
            let mut strategy = match view::strategy(&fabric, population) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(fabric = %name, error = %e, "invalid rollout strategy");
                    continue;
                }
            };
            let rollback = fe.rollback_generation.is_some() && fe.rollback_generation == generation;
            if rollback {
                strategy.auto_rollback = true;
            }
            let halted = rollback
                || (fe.halted_generation.is_some() && fe.halted_generation == generation)
                || view::halted(&fabric);
            let views: Vec<NodeView> = members
                .iter()
                .filter_map(|m| self.nodes.get(m))
                .map(|e| member_view(&e.node, &spec.nic, now, timing.heartbeat_timeout))
                .collect();
            let mut p = plan::plan(&strategy, &views, halted, now);
            if rollback && p.halted && p.phase == FabricPhase::Halted {
                p.phase = FabricPhase::RollingBack;
            }
            let bundle_status = fe.bundle.as_ref().map(|b| b.status.clone());
            let verified = bundle_status
                .as_ref()
                .is_some_and(|b| b.state == BundleState::Verified);
            if !verified || in_grace {
                // No node flashes before the bundle is verified (or before every agent has had
                // a chance to re-register after a restart).
                p.actions.retain(|a| !matches!(a, NodeAction::Start { .. }));
            }
            if let Some(r) = p.requeue_after {
                requeue = Some(requeue.map_or(r, |q| q.min(r)));
            }
            let target_fw = NodeFirmware {
                version: spec.firmware.version.clone(),
                bundle: spec.firmware.bundle.clone(),
                sha256: spec.firmware.sha256.clone(),
            };
            let dataplane = spec.dataplane.clone();
            let pipeline = spec.pipeline.clone();
            let nic_match = spec.nic.clone();
            let target = spec.firmware.version.clone();
            // Membership: point each member at this fabric's dataplane and pipeline.
            for m in &members {
                if let Some(e) = self.nodes.get_mut(m) {
                    let s = &mut e.node.spec;
                    if s.fabric != name || s.dataplane != dataplane || s.pipeline != pipeline {
                        s.fabric = name.clone();
                        s.dataplane = dataplane.clone();
                        s.pipeline = pipeline.clone();
                        s.desired_version += 1;
                    }
                }
            }
            for a in &p.actions {
                let node = match a {
                    NodeAction::Start { node, .. }
                    | NodeAction::Finish { node }
                    | NodeAction::Rollback { node, .. } => node,
                };
                let Some(e) = self.nodes.get_mut(node) else {
                    continue;
                };
                let inactive_sha = |version: &str| {
                    matching_nics(&nic_match, &e.node)
                        .flat_map(|n| n.banks.iter())
                        .find(|b| b.version.as_deref() == Some(version))
                        .and_then(|b| b.sha256.clone())
                        .unwrap_or_default()
                };
                match a {
                    NodeAction::Start { .. } => {
                        e.node.spec.firmware = Some(target_fw.clone());
                        e.node.spec.maintenance = true;
                        applied.starts += 1;
                    }
                    NodeAction::Finish { .. } => {
                        e.node.spec.maintenance = false;
                        applied.finishes += 1;
                    }
                    NodeAction::Rollback { version, flash, .. } => {
                        let sha256 = inactive_sha(version);
                        e.node.spec.firmware = Some(NodeFirmware {
                            version: version.clone(),
                            bundle: ArtifactSource::default(),
                            sha256,
                        });
                        e.node.spec.maintenance = *flash;
                        applied.rollbacks += 1;
                    }
                }
                e.node.spec.desired_version += 1;
            }
            // A node flashed back (or re-pointed) leaves maintenance once it runs what it was told.
            for m in &members {
                let Some(e) = self.nodes.get_mut(m) else {
                    continue;
                };
                let v = member_view(&e.node, &nic_match, now, timing.heartbeat_timeout);
                if e.node.spec.maintenance
                    && v.heartbeat_fresh
                    && v.spec_target.as_deref() != Some(target.as_str())
                    && v.spec_target.is_some()
                    && v.running == v.spec_target
                {
                    e.node.spec.maintenance = false;
                    e.node.spec.desired_version += 1;
                }
            }
            let Some(fe) = self.fabrics.get_mut(&name) else {
                continue;
            };
            if p.halted {
                fe.halted_generation = generation;
            }
            let mut status = view::fabric_status(&fe.fabric, &p, bundle_status, now);
            if members.is_empty() || (in_grace && status.phase == Some(FabricPhase::Ready)) {
                // No node has registered yet, or not every agent has re-registered since a
                // restart: nothing is Ready yet.
                status.phase = Some(FabricPhase::Pending);
            }
            if let Some(b) = status.current_batch.as_mut() {
                let prev = fe
                    .fabric
                    .status
                    .as_ref()
                    .and_then(|s| s.current_batch.as_ref());
                b.started_at = match prev {
                    Some(pb) if pb.index == b.index => pb.started_at.clone(),
                    _ => Some(view::to_time(now)),
                };
            }
            fe.fabric.status = Some(status);
            fe.members = members;
        }
        applied.pushes = self.push();
        (applied, requeue)
    }
}
