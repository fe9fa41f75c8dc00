//! The kube adapter of the rollout: what a [`NodeAction`] becomes against the API server.
//! `NexusNode.spec` and `Fabric.status` are written by server-side apply with one field manager
//! ([`MANAGER`]); a Start first marks the node in maintenance (so the planner counts it against
//! `maxUnavailable` at once), cordons and drains it through the Eviction API, and only then
//! points it at the target; a Finish clears maintenance and uncordons.
//!
//! The leader-elected loop that calls them is [`super::reconcile`] (`nexus-controller rollout`);
//! the agents writing `NexusNode.status` in kube mode are not wired yet.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::Api;
use kube::api::{Patch, PatchParams};
use nexus_crds::common::ArtifactSource;
use nexus_crds::node::{NexusNode, NodeFirmware};
use nexus_crds::{Fabric, FabricStatus};

use super::drain::{self, Verdict};
use super::plan::NodeAction;
use crate::Error;

/// Field manager of every write of the rollout controller.
pub const MANAGER: &str = "nexus-rollout-controller";

/// Drains under way: node → when it started.
#[derive(Debug, Default, Clone)]
pub struct Drains {
    started: BTreeMap<String, DateTime<Utc>>,
}

/// What applying one action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The spec was written.
    Written,
    /// Draining; call again later.
    Draining {
        /// Pods a PodDisruptionBudget protects right now.
        blocked: Vec<String>,
    },
    /// The drain timed out: the node was uncordoned and left out of this rollout step.
    DrainTimedOut,
}

/// Server-side applies `spec` to NexusNode `name` (the controller's half of the object).
pub async fn apply_node_spec(
    client: &kube::Client,
    name: &str,
    spec: &nexus_crds::NexusNodeSpec,
) -> Result<(), Error> {
    let api: Api<NexusNode> = Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "NexusNode",
        "metadata": { "name": name },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Server-side applies a Fabric's status.
pub async fn apply_fabric_status(
    client: &kube::Client,
    name: &str,
    status: &FabricStatus,
) -> Result<(), Error> {
    let api: Api<Fabric> = Api::all(client.clone());
    let body = serde_json::json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "Fabric",
        "metadata": { "name": name },
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Applies one planner action to `node` (its current object).
pub async fn apply_action(
    client: &kube::Client,
    fabric: &Fabric,
    node: &NexusNode,
    action: &NodeAction,
    drains: &mut Drains,
    drain_timeout: Duration,
    now: DateTime<Utc>,
) -> Result<Applied, Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut spec = node.spec.clone();
    spec.fabric = fabric.metadata.name.clone().unwrap_or_default();
    match action {
        NodeAction::Start { version, .. } => {
            if !spec.maintenance {
                spec.maintenance = true;
                spec.desired_version += 1;
                apply_node_spec(client, &name, &spec).await?;
            }
            drain::cordon(client, &name, true).await?;
            let st = drain::drain_step(client, &name).await?;
            let started = *drains.started.entry(name.clone()).or_insert(now);
            match drain::verdict(&st, started, now, drain_timeout) {
                Verdict::Wait => Ok(Applied::Draining {
                    blocked: st.blocked,
                }),
                Verdict::TimedOut => {
                    drains.started.remove(&name);
                    drain::cordon(client, &name, false).await?;
                    spec.maintenance = false;
                    spec.desired_version += 1;
                    apply_node_spec(client, &name, &spec).await?;
                    Ok(Applied::DrainTimedOut)
                }
                Verdict::Drained => {
                    drains.started.remove(&name);
                    let fw = &fabric.spec.firmware;
                    spec.firmware = Some(NodeFirmware {
                        version: version.clone(),
                        bundle: fw.bundle.clone(),
                        sha256: fw.sha256.clone(),
                    });
                    spec.desired_version += 1;
                    apply_node_spec(client, &name, &spec).await?;
                    Ok(Applied::Written)
                }
            }
        }
        NodeAction::Finish { .. } => {
            spec.maintenance = false;
            spec.desired_version += 1;
            apply_node_spec(client, &name, &spec).await?;
            drain::cordon(client, &name, false).await?;
            Ok(Applied::Written)
        }
        NodeAction::Rollback { version, flash, .. } => {
            if *flash {
                // Urgent: cordon and start evictions, but do not wait for them.
                drain::cordon(client, &name, true).await?;
                drain::drain_step(client, &name).await?;
            }
            let sha256 = node
                .status
                .iter()
                .flat_map(|s| s.nics.iter())
                .flat_map(|n| n.banks.iter())
                .find(|b| b.version.as_deref() == Some(version.as_str()))
                .and_then(|b| b.sha256.clone())
                .unwrap_or_default();
            spec.firmware = Some(NodeFirmware {
                version: version.clone(),
                bundle: ArtifactSource::default(),
                sha256,
            });
            spec.maintenance = *flash;
            spec.desired_version += 1;
            apply_node_spec(client, &name, &spec).await?;
            Ok(Applied::Written)
        }
    }
}
