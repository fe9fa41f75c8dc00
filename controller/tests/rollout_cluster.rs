//! The kube-mode rollout reconciler against a real API server — only when KUBECONFIG is set;
//! otherwise it says it skipped. Non-disruptive: the Fabric selects nodes by a label no node has,
//! so nothing is cordoned; the test checks the Lease is taken, the CRD accepts the status the
//! controller writes, and the Fabric reports its phase and counts.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nexus_controller::rollout::lease::LeaseLock;
use nexus_controller::rollout::reconcile::{Context, hold_lease, reconcile};
use nexus_crds::Fabric;

#[tokio::test]
async fn fabric_status_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED fabric_status_on_a_real_cluster: KUBECONFIG is not set"
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .expect("cluster reachable");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, crd) in nexus_crds::crd::all() {
        if file == "fabric.yaml" || file == "nexusnode.yaml" {
            let name = crd.metadata.name.clone().expect("named");
            crds.patch(
                &name,
                &PatchParams::apply("nexus-e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("CRD applies");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns = format!("nexus-e2e-rollout-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let nsobj: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("ns");
    namespaces
        .create(&PostParams::default(), &nsobj)
        .await
        .expect("namespace");

    let ctx = Arc::new(Context::new(client.clone(), &ns));
    let lock = LeaseLock::new(
        client.clone(),
        &ns,
        "nexus-controller-e2e",
        "e2e",
        Duration::from_secs(15),
    );
    let lease = tokio::spawn(hold_lease(lock, ctx.leader.clone()));

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/fabric-overlay.yaml"
    ))
    .expect("example");
    let mut fabric: Fabric = serde_saphyr::from_str(&text).expect("example parses");
    let name = format!("e2e-{}", std::process::id());
    fabric.metadata.name = Some(name.clone());
    fabric.spec.node_selector.match_labels = Some(
        [("nexus.dev/e2e-no-such-label".to_owned(), "x".to_owned())]
            .into_iter()
            .collect(),
    );
    let fabrics: Api<Fabric> = Api::all(client.clone());
    fabrics
        .create(&PostParams::default(), &fabric)
        .await
        .expect("fabric created");

    let mut status = None;
    for _ in 0..60 {
        let current = Arc::new(fabrics.get(&name).await.expect("fabric"));
        let _ = reconcile(current, ctx.clone()).await;
        status = fabrics.get(&name).await.expect("fabric").status;
        if status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = status.expect("the controller wrote status");
    assert_eq!(status.nodes.total, 0, "no node carries the test label");
    assert!(status.phase.is_some());
    assert!(!status.conditions.is_empty());

    lease.abort();
    let _ = fabrics.delete(&name, &DeleteParams::default()).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
