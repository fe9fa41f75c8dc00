//! The rollout scenarios of `rollout_scenarios` against a real API server — only when
//! KUBECONFIG is set; otherwise each test says it skipped. They create Nodes (no kubelet joins
//! them), pods bound to them, a PodDisruptionBudget, a ConfigMap bundle in the scenario's own
//! namespace and a Fabric selecting only those Nodes by a label of the run, run real node agents
//! over simulated NICs and the controller's kube driver in-process, and clean up after.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rollout_scenarios;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use rollout_scenarios::{Opts, cluster};
use serde_json::json;

async fn clients(test: &str) -> Option<(kube::Client, kube::Client)> {
    if std::env::var_os("KUBECONFIG").is_none() {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: KUBECONFIG is not set");
        return None;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .expect("cluster reachable");
    let mut config = kube::Config::infer().await.expect("config");
    config.default_retry = false;
    let eviction = kube::Client::try_from(config).expect("client");
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
    Some((client, eviction))
}

fn id(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_of_nodes_with_pods_and_a_pdb_on_a_real_cluster() {
    let Some((client, eviction)) =
        clients("waves_of_nodes_with_pods_and_a_pdb_on_a_real_cluster").await
    else {
        return;
    };
    let c = cluster(
        client,
        eviction,
        Opts {
            id: id("w"),
            nodes: 4,
            refused: vec![],
            rollout: json!({"canary": 1, "maxUnavailable": 2, "soakTime": "0s", "drainTimeout": "120s"}),
            bundle_exists: true,
            pdb_min_available: Some(3),
        },
    )
    .await;
    rollout_scenarios::waves_with_pods_behind_a_pdb(&c).await;
    c.clean_up().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_rollback_on_a_real_cluster() {
    let Some((client, eviction)) = clients("auto_rollback_on_a_real_cluster").await else {
        return;
    };
    let c = cluster(
        client,
        eviction,
        Opts {
            id: id("r"),
            nodes: 3,
            refused: vec![2],
            rollout: json!({"canary": 0, "maxUnavailable": 3, "soakTime": "0s", "failureThreshold": 0, "drainTimeout": "60s"}),
            bundle_exists: true,
            pdb_min_available: None,
        },
    )
    .await;
    rollout_scenarios::a_failure_halts_and_rolls_back(&c).await;
    c.clean_up().await;
    c.stop().await;
}
