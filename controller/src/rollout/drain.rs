//! The Kubernetes side of a drain: which pods must go, listing them, evicting them through the
//! Eviction API, and cordoning. No decisions: [`super::core`] decides when.
//!
//! Evictions respect PodDisruptionBudgets: the API server answers 429 when evicting a pod would
//! break one, which here means "not yet", never "delete anyway". They go through a client
//! **without** kube's default retry policy (which retries 429 up to 15 times with exponential
//! back-off — one refused eviction would hold the reconcile for minutes) and with a timeout.
//! DaemonSet pods (they would come straight back), mirror pods (owned by the kubelet) and
//! finished pods are left alone, as `kubectl drain --ignore-daemonsets` does.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{EvictParams, ListParams, Patch, PatchParams};

use super::core::{CORDONED_BY, PodRef};
use crate::Error;

/// Annotation of kubelet mirror pods.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Longest wait for one eviction call.
pub const EVICTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a drain must remove this pod.
pub fn must_evict(p: &Pod) -> bool {
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

/// The pods a drain of `node` must remove. `blocked` are pods whose last eviction a PDB refused.
pub async fn pods_to_drain(
    client: &kube::Client,
    node: &str,
    blocked: &std::collections::BTreeSet<String>,
) -> Result<Vec<PodRef>, Error> {
    let all: Api<Pod> = Api::all(client.clone());
    let pods = all
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mut out: Vec<PodRef> = pods
        .items
        .iter()
        .filter(|p| must_evict(p))
        .filter_map(|p| {
            let namespace = p.metadata.namespace.clone()?;
            let name = p.metadata.name.clone()?;
            let key = format!("{namespace}/{name}");
            Some(PodRef {
                terminating: p.metadata.deletion_timestamp.is_some(),
                blocked: blocked.contains(&key),
                namespace,
                name,
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// What an eviction came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Accepted: the pod is terminating.
    Yes,
    /// A PodDisruptionBudget refused it (429): try again on a later step.
    Blocked,
    /// The pod is gone already.
    Gone,
}

/// Evicts one pod through `client` (built without retries) within [`EVICTION_TIMEOUT`].
pub async fn evict(client: &kube::Client, pod: &PodRef) -> Result<Evicted, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let params = EvictParams::default();
    let call = api.evict(&pod.name, &params);
    match tokio::time::timeout(EVICTION_TIMEOUT, call).await {
        Err(_) => Ok(Evicted::Blocked),
        Ok(Ok(_)) => Ok(Evicted::Yes),
        Ok(Err(kube::Error::Api(s))) if s.code == 429 => Ok(Evicted::Blocked),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(Evicted::Gone),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Cordons (`on`) or uncordons a node. A cordon carries [`CORDONED_BY`] = `fabric`, so the
/// controller later uncordons only what it cordoned.
pub async fn cordon(
    client: &kube::Client,
    node: &str,
    on: bool,
    fabric: &str,
    manager: &str,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let annotation = if on {
        serde_json::Value::String(fabric.to_owned())
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({
        "metadata": { "annotations": { CORDONED_BY: annotation } },
        "spec": { "unschedulable": on },
    });
    let params = PatchParams {
        field_manager: Some(manager.to_owned()),
        ..PatchParams::default()
    };
    nodes.patch(node, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}
