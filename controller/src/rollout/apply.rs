//! Writes of the kube driver: NexusNode specs and Fabric status by server-side apply, with one
//! field manager ([`MANAGER`]). A NexusNode is owned by its Fabric (an ownerReference), so
//! deleting the Fabric garbage-collects its NexusNodes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use nexus_crds::node::NexusNode;
use nexus_crds::{Fabric, FabricStatus, NexusNodeSpec};

use crate::Error;

/// Field manager of every write of the rollout controller.
pub const MANAGER: &str = "nexus-rollout-controller";

/// The ownerReference a Fabric's NexusNodes carry.
pub fn owner(fabric: &Fabric) -> Option<OwnerReference> {
    // Not a controller reference: a node moving to another Fabric changes owner.
    let mut o = fabric.controller_owner_ref(&())?;
    o.block_owner_deletion = Some(false);
    Some(o)
}

/// Server-side applies `spec` (and the owner) to NexusNode `name` — the controller's half.
/// `spec.routing` is left out: the RoutingDomain controller owns it under its own field
/// manager, and applying a (possibly stale) copy of it here would take it over.
pub async fn apply_node_spec(
    client: &kube::Client,
    name: &str,
    spec: &NexusNodeSpec,
    owner: Option<&OwnerReference>,
) -> Result<(), Error> {
    let api: Api<NexusNode> = Api::all(client.clone());
    let spec = NexusNodeSpec {
        routing: None,
        ..spec.clone()
    };
    let mut metadata = serde_json::json!({ "name": name });
    if let Some(o) = owner {
        metadata["ownerReferences"] = serde_json::json!([o]);
    }
    let body = serde_json::json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "NexusNode",
        "metadata": metadata,
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

/// The body of a server-side apply of one top-level `section` (`spec`, `status`) of the
/// object `name` of kind `K`: only the fields the caller owns.
pub fn apply_body<K: Resource<DynamicType = ()>>(
    name: &str,
    section: &str,
    value: impl serde::Serialize,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
    });
    body[section] = serde_json::to_value(value).unwrap_or_default();
    body
}

/// Server-side applies a Fabric's status.
pub async fn apply_fabric_status(
    client: &kube::Client,
    name: &str,
    status: &FabricStatus,
) -> Result<(), Error> {
    let api: Api<Fabric> = Api::all(client.clone());
    let body = apply_body::<Fabric>(name, "status", status);
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Deletes a NexusNode whose node left the Fabric.
pub async fn release(client: &kube::Client, name: &str) -> Result<(), Error> {
    let api: Api<NexusNode> = Api::all(client.clone());
    match api.delete(name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
