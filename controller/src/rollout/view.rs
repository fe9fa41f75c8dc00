//! Conversions between the API types and the planner's inputs and outputs — pure, so the rollout
//! adapter (kube or the local directory mode) only moves data.

use std::time::Duration;

use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use nexus_crds::fabric::{self, BatchStatus, BundleStatus, FabricPhase, FabricStatus, NicMatch};
use nexus_crds::node::{NexusNode, NicStatus};
use nexus_crds::{Fabric, common};

use super::plan::{NodeView, Plan, Strategy};
use crate::Error;
use nexus_crds::common::set_condition;

/// A node whose agent has not reported for this long counts as unavailable.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

pub use nexus_crds::common::{time_from_chrono as to_time, time_to_chrono as to_chrono};

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

/// The NICs of a node that a fabric manages, as its agent reported them.
pub fn matching_nics<'a>(
    m: &'a NicMatch,
    node: &'a NexusNode,
) -> impl Iterator<Item = &'a NicStatus> + 'a {
    node.status
        .iter()
        .flat_map(|s| s.nics.iter())
        .filter(move |n| nic_matches(m, n))
}

/// Whether an agent heartbeat is fresh at `now`.
pub fn heartbeat_fresh(node: &NexusNode, now: DateTime<Utc>, timeout: Duration) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.heartbeat.as_ref())
        .is_some_and(|h| {
            now.signed_duration_since(to_chrono(h))
                .to_std()
                .map(|age| age <= timeout)
                .unwrap_or(true) // a heartbeat from the future: clock skew, not staleness
        })
}

/// The planner's view of a member NexusNode: the first NIC the fabric manages stands for the
/// node (the agent flashes all of them together), drains and skips come from the Fabric's
/// status. The one view builder, for both drivers.
pub fn node_view(
    node: &NexusNode,
    nic_match: &NicMatch,
    fabric_status: Option<&FabricStatus>,
    now: DateTime<Utc>,
    heartbeat_timeout: Duration,
) -> NodeView {
    let name = node.metadata.name.clone().unwrap_or_default();
    let status = node.status.as_ref();
    let nic = matching_nics(nic_match, node).next();
    let draining = node.spec.maintenance
        && fabric_status.is_some_and(|s| s.draining.iter().any(|d| d.node == name));
    let skipped_at = fabric_status
        .and_then(|s| s.skipped.iter().find(|d| d.node == name))
        .map(|d| to_chrono(&d.at));
    NodeView {
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
                f.finished_at.as_ref().map(to_chrono),
            )
        }),
        heartbeat_fresh: heartbeat_fresh(node, now, heartbeat_timeout),
        draining,
        skipped_at,
        name,
    }
}

/// The fabric's strategy with budgets resolved against `population` nodes.
pub fn strategy(fabric: &Fabric, population: u32) -> Result<Strategy, Error> {
    let r = &fabric.spec.rollout;
    Ok(Strategy {
        target: fabric.spec.firmware.version.clone(),
        canary: r.canary,
        max_unavailable: common::resolve_budget(&r.max_unavailable, population)?,
        soak: common::parse_duration(&r.soak_time)?,
        failure_threshold: r.failure_threshold,
        auto_rollback: r.auto_rollback,
        paused: r.paused,
        retry_skipped_after: common::parse_duration(&r.drain_timeout)?,
    })
}

/// Whether the Fabric's status records a halt for its current generation.
pub fn halted(fabric: &Fabric) -> bool {
    let Some(st) = &fabric.status else {
        return false;
    };
    st.observed_generation == fabric.metadata.generation
        && matches!(
            st.phase,
            Some(FabricPhase::Halted | FabricPhase::RollingBack | FabricPhase::RolledBack)
        )
}

/// The Fabric status for a plan, keeping condition transition times.
pub fn fabric_status(
    fabric: &Fabric,
    plan: &Plan,
    bundle: Option<BundleStatus>,
    now: DateTime<Utc>,
) -> FabricStatus {
    let mut st = fabric.status.clone().unwrap_or_default();
    let generation = fabric.metadata.generation;
    let phase = match &bundle {
        Some(b) if b.state != fabric::BundleState::Verified && !plan.halted => FabricPhase::Pending,
        _ => plan.phase,
    };
    st.observed_generation = generation;
    st.phase = Some(phase);
    st.nodes = plan.counts.clone();
    st.versions = plan.versions.clone();
    st.bundle = bundle;
    st.current_batch = plan.wave.as_ref().map(|w| BatchStatus {
        index: w.index,
        nodes: w.nodes.clone(),
        started_at: None,
        soak_until: w.soak_until.map(|t| {
            common::Time(
                k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default(),
            )
        }),
    });
    let c = &plan.counts;
    let target = &fabric.spec.firmware.version;
    set_condition(
        &mut st.conditions,
        fabric::condition::READY,
        phase == FabricPhase::Ready,
        if phase == FabricPhase::Ready {
            "AllNodesUpdated"
        } else {
            "RolloutIncomplete"
        },
        format!("{}/{} nodes run {target}", c.updated, c.total),
        generation,
        now,
    );
    set_condition(
        &mut st.conditions,
        fabric::condition::PROGRESSING,
        matches!(phase, FabricPhase::Progressing | FabricPhase::RollingBack),
        &format!("{phase:?}"),
        match &plan.wave {
            Some(w) => format!("wave {} of {} node(s)", w.index, w.nodes.len()),
            None => String::new(),
        },
        generation,
        now,
    );
    set_condition(
        &mut st.conditions,
        fabric::condition::DEGRADED,
        c.failed > 0 || c.unavailable > c.updating,
        if c.failed > 0 {
            "FlashFailures"
        } else if c.unavailable > c.updating {
            "NodesUnavailable"
        } else {
            "Healthy"
        },
        format!("{} failed, {} unavailable", c.failed, c.unavailable),
        generation,
        now,
    );
    set_condition(
        &mut st.conditions,
        fabric::condition::ROLLED_BACK,
        phase == FabricPhase::RolledBack,
        if plan.halted {
            "FailureThresholdExceeded"
        } else {
            "NotRolledBack"
        },
        if plan.halted {
            format!(
                "{} failures exceeded the threshold of {}",
                c.failed, fabric.spec.rollout.failure_threshold
            )
        } else {
            String::new()
        },
        generation,
        now,
    );
    st
}
