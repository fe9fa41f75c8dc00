//! Conversions between the API types and the planner's inputs and outputs — pure, so the rollout
//! adapter (kube or the local directory mode) only moves data.

use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_crds::fabric::{self, BatchStatus, BundleStatus, FabricPhase, FabricStatus};
use nexus_crds::node::NexusNode;
use nexus_crds::{Fabric, common};

use super::plan::{NodeView, Plan, Strategy};
use crate::Error;
use nexus_crds::common::set_condition;

/// A node whose agent has not reported for this long counts as unavailable.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

pub use nexus_crds::common::{time_from_chrono as to_time, time_to_chrono as to_chrono};

/// The planner's view of a NexusNode.
pub fn node_view(node: &NexusNode, now: DateTime<Utc>, heartbeat_timeout: Duration) -> NodeView {
    let status = node.status.clone().unwrap_or_default();
    let nic = status.nics.first();
    let previous = nic.and_then(|n| {
        let active = n.active_bank?;
        n.banks
            .iter()
            .find(|b| b.bank != active && b.bootable)
            .and_then(|b| b.version.clone())
    });
    let heartbeat_fresh = status.heartbeat.as_ref().is_some_and(|h| {
        now.signed_duration_since(to_chrono(h))
            .to_std()
            .map(|age| age <= heartbeat_timeout)
            .unwrap_or(true) // a heartbeat from the future: clock skew, not staleness
    });
    NodeView {
        name: node.metadata.name.clone().unwrap_or_default(),
        spec_target: node.spec.firmware.as_ref().map(|f| f.version.clone()),
        maintenance: node.spec.maintenance,
        running: nic.and_then(|n| n.running_firmware.clone()),
        previous,
        last_flash: status.last_flash.as_ref().map(|f| {
            (
                f.version.clone(),
                f.result,
                f.finished_at.as_ref().map(to_chrono),
            )
        }),
        heartbeat_fresh,
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
