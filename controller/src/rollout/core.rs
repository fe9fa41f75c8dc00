//! The rollout core: the whole Fabric rollout as one pure function, [`step`], the way
//! quinn-proto holds QUIC without sockets or clocks.
//!
//! ```text
//!  Fabric (spec + status: halt, drains, skips) ─┐
//!  members: NexusNode + Node (cordon, pods) ────┤
//!  bundle: verified / failed / fetching ────────┼──► step(now) ──► node specs to write
//!  now, heartbeat timeout, holds ───────────────┘                  cordons / uncordons
//!                                                                   evictions
//!                                                                   Fabric status, Events
//!                                                                   NexusNodes to release
//!                                                                   when to look again
//! ```
//!
//! Both drivers are thin: the kube driver ([`super::reconcile`]) reads informer stores, calls
//! `step`, and writes what it returns; the local driver ([`super::fleet`]) does the same with
//! agents on gRPC streams and no Nodes or pods. Everything a restarted controller or a new
//! leader needs is in the inputs — drain start times and skips live in the Fabric's status —
//! so two replicas compute the same step from the same objects.
//!
//! What the planner ([`super::plan`]) decides (which nodes start, finish, roll back) the core
//! turns into object edits:
//!
//! - **Start**: maintenance on, the drain recorded in status, the node cordoned (by us, marked
//!   with [`CORDONED_BY`]); each step evicts the pods that must go (`kubectl drain` rules); once
//!   none is left the node is told the target. A drain that outlasts `drainTimeout` is given up:
//!   maintenance off, uncordoned, the node recorded as skipped, tried again after the others.
//!   A drain in progress goes on whatever the budget says now (its slot was taken when it began).
//! - **Finish** (and the end of a rollback on a node): maintenance off, uncordoned.
//! - **Rollback**: the node is told its previous version with no bundle (an A/B switch).
//! - **Cordons are derived, not remembered**: a member is cordoned by us exactly while it is in
//!   maintenance, so none is left cordoned after Ready, Halted or RolledBack.
//! - **Events are derived from status transitions** (phase, a new wave, a new skip, a bundle
//!   failure, a node conflict), so a step repeated without progress repeats no Event.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_crds::Fabric;
use nexus_crds::common::{Time, set_condition};
use nexus_crds::fabric::{
    BundleState, BundleStatus, DrainingNode, FabricPhase, FabricStatus, SkippedNode,
};
use nexus_crds::node::{NexusNode, NexusNodeSpec, NodeFirmware};

use super::plan::{self, NodeAction, NodeState, NodeView, Plan};
use super::view::{self, to_chrono, to_time};
use crate::Error;

/// Annotation the controller puts on a Node it cordons (value: the Fabric), so it only ever
/// uncordons Nodes it cordoned itself — never one an administrator cordoned.
pub const CORDONED_BY: &str = "nexus.dev/cordoned-by";

/// Requeue while a rollout moves and nothing sooner is due.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Requeue of a settled Fabric (watches wake it sooner).
pub const IDLE_INTERVAL: Duration = Duration::from_secs(300);

/// How soon a step with a drain under way looks again: evictions refused by a PDB are retried
/// and terminated pods noticed at this pace (`kubectl drain` polls at a similar one).
pub const DRAIN_INTERVAL: Duration = Duration::from_secs(2);

/// Most blocked pods named in status per draining node.
const MAX_BLOCKED_SHOWN: usize = 16;

/// A pod on a member node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Already being deleted (evicted earlier, or deleted by someone).
    pub terminating: bool,
    /// The last eviction attempt was refused by a PodDisruptionBudget.
    pub blocked: bool,
}

impl PodRef {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the kube driver knows of a member's Kubernetes Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeNode {
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Cordoned by this controller ([`CORDONED_BY`] set).
    pub cordoned_by_us: bool,
    /// Pods a drain must remove (DaemonSet and mirror pods already left out), when the driver
    /// listed them — it does for nodes in maintenance. `None` means not known yet: a drain never
    /// completes on pods it has not seen.
    pub pods: Option<Vec<PodRef>>,
}

/// One node the Fabric's selector picks.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    /// Node name.
    pub name: String,
    /// Its NexusNode, if it exists.
    pub nexus_node: Option<&'a NexusNode>,
    /// Its Kubernetes Node (kube mode); `None` in local mode, where there is nothing to cordon
    /// or drain.
    pub kube: Option<KubeNode>,
}

/// Where the Fabric's bundle stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bundle {
    /// Fetched and checked against the pinned sha256.
    Verified,
    /// Being fetched.
    Fetching,
    /// The last fetch failed; the next one is not before `retry_at`.
    Failed {
        /// Why.
        message: String,
        /// Next attempt.
        retry_at: DateTime<Utc>,
    },
}

/// Everything one step looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The Fabric, status included (halt, drains, skips of its generation).
    pub fabric: &'a Fabric,
    /// Nodes the selector picks (in any order).
    pub members: Vec<Member<'a>>,
    /// NexusNodes that name this Fabric but whose node the selector no longer picks.
    pub former: Vec<&'a NexusNode>,
    /// Nodes the selector picks that another Fabric manages.
    pub conflicting: Vec<String>,
    /// The bundle.
    pub bundle: Bundle,
    /// Now.
    pub now: DateTime<Utc>,
    /// A node whose agent has not reported for this long is unavailable.
    pub heartbeat_timeout: Duration,
    /// Start nothing new (local mode, just after a restart: agents are still re-registering).
    pub hold_starts: bool,
    /// Roll back now, as if the rollout had halted (an operator's request, local mode).
    pub rollback_requested: bool,
}

/// A Kubernetes Event to publish about the Fabric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Message.
    pub message: String,
}

/// What one step decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// NexusNode specs to write (each differs from what is stored; new ones included).
    pub node_specs: Vec<(String, NexusNodeSpec)>,
    /// Nodes to cordon (`true`) or uncordon (`false`).
    pub cordons: Vec<(String, bool)>,
    /// Pods to evict.
    pub evictions: Vec<PodRef>,
    /// NexusNodes to delete: their node left the selector and nothing is under way on them.
    pub release: Vec<String>,
    /// The Fabric's status (write it when it differs from the stored one).
    pub status: FabricStatus,
    /// Events.
    pub notes: Vec<Note>,
    /// Look again after this long at the latest.
    pub requeue: Duration,
    /// The plan behind it (for metrics and tests).
    pub plan: Plan,
}

fn note(warning: bool, reason: &str, message: String) -> Note {
    Note {
        warning,
        reason: reason.to_owned(),
        message,
    }
}

/// A fresh spec for a node joining the Fabric.
fn joining_spec(fabric_name: &str) -> NexusNodeSpec {
    NexusNodeSpec {
        fabric: fabric_name.to_owned(),
        desired_version: 0,
        firmware: None,
        nics: Vec::new(),
        pipeline: None,
        dataplane: Default::default(),
        maintenance: false,
        routing: None,
    }
}

/// PCI addresses of the member's NICs the Fabric manages, sorted.
fn managed_nics(fabric: &Fabric, node: Option<&NexusNode>) -> Option<Vec<String>> {
    let node = node?;
    node.status.as_ref()?;
    let mut v: Vec<String> = view::matching_nics(&fabric.spec.nic, node)
        .map(|n| n.pci_address.clone())
        .collect();
    v.sort();
    v.dedup();
    Some(v)
}

/// The sha256 of `version` in one of the node's flash banks, if reported.
fn bank_sha(fabric: &Fabric, node: Option<&NexusNode>, version: &str) -> Option<String> {
    let node = node?;
    view::matching_nics(&fabric.spec.nic, node)
        .flat_map(|n| n.banks.iter())
        .find(|b| b.version.as_deref() == Some(version))
        .and_then(|b| b.sha256.clone())
}

fn min_opt(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The version the member's managed NICs run, if known.
fn member_running(input: &Input<'_>, name: &str) -> Option<String> {
    let m = input.members.iter().find(|m| m.name == name)?;
    let node = m.nexus_node?;
    view::matching_nics(&input.fabric.spec.nic, node)
        .next()
        .and_then(|n| n.running_firmware.clone())
}

/// One step of a Fabric's rollout. Pure: no I/O, no clock.
pub fn step(input: &Input<'_>) -> Result<Step, Error> {
    let fabric = input.fabric;
    let name = fabric.metadata.name.clone().ok_or(Error::MissingField {
        kind: "Fabric",
        field: "metadata.name",
    })?;
    let now = input.now;
    let old_status = fabric.status.clone().unwrap_or_default();
    let generation = fabric.metadata.generation;
    // Drains and skips belong to the generation that started them.
    let same_generation = old_status.observed_generation == generation;
    let mut draining: BTreeMap<String, DrainingNode> = if same_generation {
        old_status
            .draining
            .iter()
            .map(|d| (d.node.clone(), d.clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut skipped: BTreeMap<String, SkippedNode> = if same_generation {
        old_status
            .skipped
            .iter()
            .map(|d| (d.node.clone(), d.clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let drain_timeout = nexus_crds::common::parse_duration(&fabric.spec.rollout.drain_timeout)?;

    // Desired specs start from what is stored (or a fresh one), with membership applied.
    let mut members: Vec<&Member<'_>> = input.members.iter().collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let mut specs: BTreeMap<String, NexusNodeSpec> = BTreeMap::new();
    let mut stored: BTreeMap<String, Option<NexusNodeSpec>> = BTreeMap::new();
    for m in &members {
        let current = m.nexus_node.map(|n| n.spec.clone());
        let mut spec = current.clone().unwrap_or_else(|| joining_spec(&name));
        spec.fabric = name.clone();
        spec.dataplane = fabric.spec.dataplane.clone();
        spec.pipeline = fabric.spec.pipeline.clone();
        if let Some(nics) = managed_nics(fabric, m.nexus_node) {
            spec.nics = nics;
        }
        stored.insert(m.name.clone(), current);
        specs.insert(m.name.clone(), spec);
    }
    // A drain whose node is no longer in maintenance (someone cleared it) is over.
    draining.retain(|n, _| specs.get(n).is_some_and(|s| s.maintenance));
    // A skipped node stays skipped while it is tried again, until it is no longer pending.
    skipped.retain(|n, _| {
        specs.contains_key(n)
            && member_running(input, n).as_deref() != Some(fabric.spec.firmware.version.as_str())
    });
    // A node in maintenance that is not told the target is being drained for it (outside a
    // rollback nothing else puts it there). If the status write that recorded the drain was
    // lost, the drain is picked up again from now.
    if !input.rollback_requested && !view::halted(fabric) {
        let target = &fabric.spec.firmware.version;
        for (n, spec) in &specs {
            let told = spec.firmware.as_ref().is_some_and(|f| &f.version == target);
            if spec.maintenance && !told && !draining.contains_key(n) {
                draining.insert(
                    n.clone(),
                    DrainingNode {
                        node: n.clone(),
                        started_at: to_time(now),
                        blocked_pods: Vec::new(),
                    },
                );
            }
        }
    }

    // The drain status of this generation as the planner sees it.
    let mut status_view = old_status.clone();
    status_view.draining = draining.values().cloned().collect();
    status_view.skipped = skipped.values().cloned().collect();
    let views: Vec<NodeView> = members
        .iter()
        .map(|m| match m.nexus_node {
            Some(n) => NodeView {
                // The member's name, not the object's (which the server always sets).
                name: m.name.clone(),
                ..view::node_view(
                    n,
                    &fabric.spec.nic,
                    Some(&status_view),
                    now,
                    input.heartbeat_timeout,
                )
            },
            None => NodeView {
                name: m.name.clone(),
                spec_target: None,
                maintenance: false,
                running: None,
                previous: None,
                last_flash: None,
                heartbeat_fresh: false,
                draining: false,
                skipped_at: None,
            },
        })
        .collect();
    let population = u32::try_from(views.len()).unwrap_or(u32::MAX);
    let mut strategy = view::strategy(fabric, population)?;
    if input.rollback_requested {
        strategy.auto_rollback = true;
    }
    let halted = input.rollback_requested || view::halted(fabric);
    let mut plan = plan::plan(&strategy, &views, halted, now);
    if input.rollback_requested && plan.halted && plan.phase == FabricPhase::Halted {
        plan.phase = FabricPhase::RollingBack;
    }
    let target = strategy.target.clone();
    let verified = input.bundle == Bundle::Verified;
    let view_of: BTreeMap<&str, &NodeView> = views.iter().map(|v| (v.name.as_str(), v)).collect();
    let member_of: BTreeMap<&str, &Member<'_>> =
        members.iter().map(|m| (m.name.as_str(), *m)).collect();

    let mut evictions = Vec::new();
    let mut notes = Vec::new();
    let mut requeue: Option<Duration> = plan.requeue_after;

    // Starts: maintenance on and the drain recorded. No start before the bundle is verified,
    // none while holding, none once halted.
    for a in &plan.actions {
        if let NodeAction::Start { node, .. } = a
            && verified
            && !input.hold_starts
            && !plan.halted
            && let Some(spec) = specs.get_mut(node)
        {
            spec.maintenance = true;
            draining
                .entry(node.clone())
                .or_insert_with(|| DrainingNode {
                    node: node.clone(),
                    started_at: to_time(now),
                    blocked_pods: Vec::new(),
                });
        }
    }
    // Halted: drains for starts are called off.
    if plan.halted {
        for n in std::mem::take(&mut draining).into_keys() {
            if let Some(spec) = specs.get_mut(&n) {
                spec.maintenance = false;
            }
        }
    }
    // Drains under way: evict what must go; done → told the target; too long → skipped.
    let started: Vec<String> = draining.keys().cloned().collect();
    for n in started {
        let Some(d) = draining.get_mut(&n) else {
            continue;
        };
        let kube = member_of.get(n.as_str()).and_then(|m| m.kube.as_ref());
        let pods: Vec<&PodRef> = match kube {
            // Local mode: nothing runs on the node that a drain would move.
            None => Vec::new(),
            Some(k) => match &k.pods {
                Some(p) => p.iter().collect(),
                None => {
                    // Started this step: its pods are listed on the next one.
                    requeue = min_opt(requeue, Some(Duration::from_secs(1)));
                    continue;
                }
            },
        };
        let since = now
            .signed_duration_since(to_chrono(&d.started_at))
            .to_std()
            .unwrap_or_default();
        if pods.is_empty() {
            draining.remove(&n);
            if let Some(spec) = specs.get_mut(&n) {
                spec.firmware = Some(NodeFirmware {
                    version: target.clone(),
                    bundle: Some(fabric.spec.firmware.bundle.clone()),
                    sha256: Some(fabric.spec.firmware.sha256.clone()),
                });
            }
        } else if since >= drain_timeout {
            let waiting: Vec<String> = pods.iter().map(|p| p.key()).collect();
            let message = format!(
                "drain took longer than {}: {} pod(s) still on the node ({})",
                fabric.spec.rollout.drain_timeout,
                waiting.len(),
                waiting
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            notes.push(note(
                true,
                "DrainTimedOut",
                format!("{n}: {message}; uncordoned, will be tried again after the other nodes"),
            ));
            skipped.insert(
                n.clone(),
                SkippedNode {
                    node: n.clone(),
                    at: to_time(now),
                    message: Some(message.chars().take(1024).collect()),
                },
            );
            draining.remove(&n);
            if let Some(spec) = specs.get_mut(&n) {
                spec.maintenance = false;
            }
        } else {
            d.blocked_pods = pods
                .iter()
                .filter(|p| p.blocked)
                .take(MAX_BLOCKED_SHOWN)
                .map(|p| p.key())
                .collect();
            evictions.extend(pods.iter().filter(|p| !p.terminating).map(|p| (*p).clone()));
            let left = drain_timeout.saturating_sub(since);
            requeue = min_opt(requeue, Some(left.min(DRAIN_INTERVAL)));
        }
    }
    // Finish and rollback.
    for a in &plan.actions {
        match a {
            NodeAction::Finish { node } => {
                if let Some(spec) = specs.get_mut(node) {
                    spec.maintenance = false;
                }
            }
            NodeAction::Rollback {
                node,
                version,
                flash,
            } => {
                let nn = member_of.get(node.as_str()).and_then(|m| m.nexus_node);
                if let Some(spec) = specs.get_mut(node) {
                    spec.firmware = Some(NodeFirmware {
                        version: version.clone(),
                        // An A/B switch: the image is in the inactive bank already.
                        bundle: None,
                        sha256: bank_sha(fabric, nn, version),
                    });
                    spec.maintenance = *flash;
                }
                if *flash
                    && let Some(k) = member_of.get(node.as_str()).and_then(|m| m.kube.as_ref())
                {
                    // Urgent: the pods are asked to leave, but the switch does not wait.
                    evictions.extend(k.pods.iter().flatten().filter(|p| !p.terminating).cloned());
                }
            }
            NodeAction::Start { .. } => {}
        }
    }
    // Any member in maintenance that is not draining and already runs what it was told (a
    // rollback done, a re-pointed node) leaves maintenance.
    for (n, spec) in &mut specs {
        if !spec.maintenance || draining.contains_key(n) {
            continue;
        }
        let Some(v) = view_of.get(n.as_str()) else {
            continue;
        };
        let told = spec.firmware.as_ref().map(|f| f.version.as_str());
        if v.heartbeat_fresh && told.is_some() && v.running.as_deref() == told {
            spec.maintenance = false;
        }
    }

    // Bundle gating and status.
    let bundle_status = match &input.bundle {
        Bundle::Verified => BundleStatus {
            state: BundleState::Verified,
            sha256: Some(fabric.spec.firmware.sha256.clone()),
            message: None,
        },
        Bundle::Fetching => BundleStatus {
            state: BundleState::Downloading,
            sha256: None,
            message: None,
        },
        Bundle::Failed { message, retry_at } => {
            requeue = min_opt(requeue, (*retry_at - now).to_std().ok());
            BundleStatus {
                state: BundleState::Failed,
                sha256: None,
                message: Some(
                    format!("{message} (next attempt at {})", retry_at.to_rfc3339())
                        .chars()
                        .take(1024)
                        .collect(),
                ),
            }
        }
    };

    // Plan counts see the drains as this step left them.
    let mut status = view::fabric_status(fabric, &plan, Some(bundle_status.clone()), now);
    status.draining = draining.values().cloned().collect();
    status.skipped = skipped.values().cloned().collect();
    status.conflicting_nodes = input.conflicting.clone();
    status.conflicting_nodes.sort();
    status.nodes.skipped = u32::try_from(skipped.len()).unwrap_or(u32::MAX);
    if members.is_empty() {
        status.phase = Some(FabricPhase::Pending);
        let (reason, message) = if input.conflicting.is_empty() {
            ("NoNodes", "the node selector matches no node".to_owned())
        } else {
            (
                "NodesOwnedByAnotherFabric",
                format!(
                    "every selected node belongs to another Fabric: {}",
                    status.conflicting_nodes.join(", ")
                ),
            )
        };
        set_condition(
            &mut status.conditions,
            nexus_crds::fabric::condition::READY,
            false,
            reason,
            message,
            generation,
            now,
        );
    }
    // The wave's start time survives across steps.
    if let Some(b) = status.current_batch.as_mut() {
        let prev = old_status.current_batch.as_ref();
        b.started_at = match prev {
            Some(p) if p.index == b.index && same_generation => p.started_at.clone(),
            _ => Some(to_time(now)),
        };
    }
    if !skipped.is_empty() && !plan.halted {
        set_condition(
            &mut status.conditions,
            nexus_crds::fabric::condition::DEGRADED,
            true,
            "DrainTimedOut",
            format!(
                "{} node(s) could not be drained in time and wait for another try: {}",
                skipped.len(),
                skipped.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            generation,
            now,
        );
    }

    // Events from transitions.
    let old_phase = old_status.phase;
    let phase = status.phase.unwrap_or(FabricPhase::Pending);
    if old_phase != Some(phase) || !same_generation {
        let warning = matches!(
            phase,
            FabricPhase::Halted | FabricPhase::RollingBack | FabricPhase::RolledBack
        );
        let c = &status.nodes;
        let message = match (phase, &bundle_status.message) {
            (FabricPhase::Pending, Some(m)) => format!("bundle: {m}"),
            (FabricPhase::Halted | FabricPhase::RollingBack, _) => format!(
                "{} node(s) failed to run {target}, more than the threshold of {}{}",
                c.failed,
                fabric.spec.rollout.failure_threshold,
                if strategy.auto_rollback {
                    "; rolling updated nodes back"
                } else {
                    "; autoRollback is off"
                }
            ),
            _ => format!("{}/{} nodes run {target}", c.updated, c.total),
        };
        notes.push(note(warning, &format!("{phase:?}"), message));
    }
    if let Some(b) = &status.current_batch {
        let old_index = old_status
            .current_batch
            .as_ref()
            .filter(|_| same_generation)
            .map(|w| w.index);
        let started_any = b.nodes.iter().any(|n| {
            specs.get(n).is_some_and(|s| s.maintenance)
                || view_of
                    .get(n.as_str())
                    .is_some_and(|v| plan::state(v, &target) != NodeState::Pending)
        });
        if old_index != Some(b.index) && started_any {
            notes.push(note(
                false,
                "WaveStarted",
                format!("wave {}: {} → {target}", b.index, b.nodes.join(", ")),
            ));
        }
    }
    if bundle_status.state == BundleState::Failed
        && old_status.bundle.as_ref().map(|b| b.state) != Some(BundleState::Failed)
    {
        notes.push(note(
            true,
            "BundleFailed",
            bundle_status.message.clone().unwrap_or_default(),
        ));
    }
    let old_conflicts: BTreeSet<&String> = old_status.conflicting_nodes.iter().collect();
    let new_conflicts: Vec<&String> = status
        .conflicting_nodes
        .iter()
        .filter(|n| !old_conflicts.contains(n))
        .collect();
    if !new_conflicts.is_empty() {
        notes.push(note(
            true,
            "NodeConflict",
            format!(
                "selected node(s) managed by another Fabric, left alone: {}",
                new_conflicts
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }

    // Writes: specs that changed (a new desired version each), and cordons derived from
    // maintenance.
    let mut node_specs = Vec::new();
    let mut cordons = Vec::new();
    for (n, mut spec) in specs {
        let before = stored.get(&n).cloned().flatten();
        let changed = match &before {
            Some(b) => {
                let mut b2 = b.clone();
                b2.desired_version = spec.desired_version;
                b2 != spec
            }
            None => true,
        };
        if changed {
            spec.desired_version = before.as_ref().map_or(0, |b| b.desired_version) + 1;
            if before.is_none() && spec.firmware.is_none() && !spec.maintenance {
                // A new member: nothing to act on yet, version 0 until it is told something.
                spec.desired_version = 0;
            }
            node_specs.push((n.clone(), spec.clone()));
        }
        if let Some(k) = member_of.get(n.as_str()).and_then(|m| m.kube.as_ref()) {
            if spec.maintenance && !k.unschedulable {
                cordons.push((n.clone(), true));
            } else if !spec.maintenance && k.unschedulable && k.cordoned_by_us {
                cordons.push((n.clone(), false));
            }
        }
    }
    // Nodes that left the selector: released once nothing is under way on them.
    let release = input
        .former
        .iter()
        .filter(|n| !n.spec.maintenance)
        .filter_map(|n| n.metadata.name.clone())
        .collect();

    let busy = matches!(
        phase,
        FabricPhase::Progressing | FabricPhase::RollingBack | FabricPhase::Pending
    ) || !node_specs.is_empty()
        || !cordons.is_empty()
        || !evictions.is_empty();
    let requeue = match requeue {
        Some(d) => d.min(if busy {
            PROGRESS_INTERVAL
        } else {
            IDLE_INTERVAL
        }),
        None if busy => PROGRESS_INTERVAL,
        None => IDLE_INTERVAL,
    };
    // The planner's counts and versions were computed before this step's edits; they describe
    // what the nodes run, which the edits do not change.
    Ok(Step {
        node_specs,
        cordons,
        evictions,
        release,
        status,
        notes,
        requeue: requeue.max(Duration::from_millis(100)),
        plan,
    })
}

/// Whether writing `new` over `old` changes anything but condition heartbeat-free fields: the
/// drivers write status only when it differs, so a settled Fabric causes no writes (and no watch
/// events of its own).
pub fn status_changed(old: Option<&FabricStatus>, new: &FabricStatus) -> bool {
    old != Some(new)
}

/// The Time of `t`, for tests.
pub fn time(t: DateTime<Utc>) -> Time {
    to_time(t)
}
