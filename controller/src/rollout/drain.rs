//! Cordon and drain a node through the Eviction API before its flash, uncordon after.
//!
//! Evictions respect PodDisruptionBudgets: the API server answers 429 when evicting a pod would
//! break one, which here means "retry on the next step", never "delete anyway". DaemonSet pods
//! (they would come straight back) and mirror pods (owned by the kubelet) are left alone, as
//! `kubectl drain --ignore-daemonsets` does. The caller calls [`drain_step`] until
//! [`DrainStatus::done`] or the Fabric's `drainTimeout` passes ([`verdict`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{EvictParams, ListParams, Patch, PatchParams};

use crate::Error;

/// Annotation of kubelet mirror pods.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Where a drain stands after one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainStatus {
    /// Evictions accepted in this step.
    pub evicted: u32,
    /// Pods whose eviction a PodDisruptionBudget refused (429), `namespace/name`.
    pub blocked: Vec<String>,
    /// Pods still on the node that the drain waits for (evicted ones still terminating too).
    pub remaining: u32,
}

impl DrainStatus {
    /// Nothing left to wait for.
    pub fn done(&self) -> bool {
        self.remaining == 0
    }
}

/// What to do with a drain that started at `started`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drained: flash.
    Drained,
    /// Keep trying.
    Wait,
    /// `drainTimeout` passed: give up on this node (uncordon it, count it as failed).
    TimedOut,
}

/// The drain rule.
pub fn verdict(
    status: &DrainStatus,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
    timeout: Duration,
) -> Verdict {
    if status.done() {
        Verdict::Drained
    } else if now
        .signed_duration_since(started)
        .to_std()
        .is_ok_and(|d| d >= timeout)
    {
        Verdict::TimedOut
    } else {
        Verdict::Wait
    }
}

/// Marks the node (un)schedulable.
pub async fn cordon(client: &kube::Client, node: &str, unschedulable: bool) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "spec": { "unschedulable": unschedulable } });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn must_evict(p: &Pod) -> bool {
    let daemonset = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let mirror = p
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
    let finished = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
    !daemonset && !mirror && !finished
}

/// One drain step: evict every pod that must go and is not already terminating.
pub async fn drain_step(client: &kube::Client, node: &str) -> Result<DrainStatus, Error> {
    let all: Api<Pod> = Api::all(client.clone());
    let pods = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mut st = DrainStatus::default();
    for p in pods.items.iter().filter(|p| must_evict(p)) {
        st.remaining += 1;
        if p.metadata.deletion_timestamp.is_some() {
            continue; // already going
        }
        let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
        else {
            continue;
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        match api.evict(name, &EvictParams::default()).await {
            Ok(_) => st.evicted += 1,
            Err(kube::Error::Api(s)) if s.code == 429 => st.blocked.push(format!("{ns}/{name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => st.remaining -= 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_timeout_rule() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let later = |s| t0 + chrono::Duration::seconds(s);
        let waiting = DrainStatus {
            remaining: 1,
            ..DrainStatus::default()
        };
        let timeout = Duration::from_secs(600);
        assert_eq!(
            verdict(&DrainStatus::default(), t0, later(1), timeout),
            Verdict::Drained
        );
        assert_eq!(verdict(&waiting, t0, later(599), timeout), Verdict::Wait);
        assert_eq!(
            verdict(&waiting, t0, later(600), timeout),
            Verdict::TimedOut
        );
    }
}
