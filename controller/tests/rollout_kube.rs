//! The kube driver of the rollout against the fake API server (`nexus-kube-fake`), which
//! answers like kube-apiserver where it matters: CRD validation (the rollback that wrote
//! `bundle: {}` was a 422 on a real cluster, and is here), PodDisruptionBudgets refusing
//! evictions with 429, kube's own 429 retry policy on the default client, status dropped on
//! create, watch events for the controller's own writes, garbage collection through
//! ownerReferences. The scenarios (`rollout_scenarios`) also run on a real cluster in
//! `rollout_cluster.rs`; what only the fake can count (429s, 422s, GETs) is checked here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rollout_scenarios;

use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_controller::rollout::apply::MANAGER;
use nexus_crds::fabric::FabricPhase;
use nexus_crds::{Fabric, NexusNode};
use nexus_kube_fake::FakeApiServer;
use rollout_scenarios::{Opts, cluster, events};
use serde_json::json;

fn fake() -> FakeApiServer {
    let fake = FakeApiServer::new();
    fake.set_pod_termination(Duration::from_millis(300));
    fake
}

/// Waves of nodes with pods behind a PDB allowing one disruption at a time: evictions are
/// refused (429) again and again, yet every wave finishes (the deadlock a real cluster showed),
/// the reconcile never freezes in kube's 429 retries, every write carries our field manager,
/// and deleting the Fabric garbage-collects its NexusNodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_of_nodes_with_pods_behind_a_pdb_finish() {
    let fake = fake();
    let c = cluster(
        fake.client(),
        fake.client_without_retry(),
        Opts {
            id: "w".into(),
            nodes: 4,
            refused: vec![],
            rollout: json!({"canary": 1, "maxUnavailable": 2, "soakTime": "0s", "drainTimeout": "60s"}),
            bundle_exists: true,
            pdb_min_available: Some(3),
        },
    )
    .await;
    rollout_scenarios::waves_with_pods_behind_a_pdb(&c).await;
    let refused = fake
        .requests()
        .iter()
        .filter(|(m, p, code)| m == "POST" && p.ends_with("/eviction") && *code == 429)
        .count();
    assert!(refused > 0, "the PDB refused evictions along the way");
    // Every write of the controller carries its field manager (none recorded as "unknown").
    for w in fake.writes() {
        if w.manager == rollout_scenarios::HARNESS {
            continue;
        }
        if w.path.contains("nexusnodes") && !w.path.ends_with("/status")
            || w.path.contains("/fabrics/")
            || w.path.starts_with("/api/v1/nodes/")
        {
            assert_eq!(w.manager, MANAGER, "{} {}", w.method, w.path);
        }
    }
    fake.delete("Fabric", None, &c.fabric).unwrap();
    assert!(
        fake.list::<NexusNode>().is_empty(),
        "NexusNodes go with their Fabric"
    );
    c.stop().await;
}

/// A refused flash halts and rolls back through the API server: no write is refused (422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_halts_and_rolls_back_through_the_api_server() {
    let fake = fake();
    let c = cluster(
        fake.client(),
        fake.client_without_retry(),
        Opts {
            id: "r".into(),
            nodes: 3,
            refused: vec![2],
            rollout: json!({"canary": 0, "maxUnavailable": 3, "soakTime": "0s", "failureThreshold": 0, "drainTimeout": "30s"}),
            bundle_exists: true,
            pdb_min_available: None,
        },
    )
    .await;
    rollout_scenarios::a_failure_halts_and_rolls_back(&c).await;
    let refused: Vec<_> = fake
        .writes()
        .into_iter()
        .filter(|w| w.code == 422)
        .collect();
    assert!(refused.is_empty(), "the API server refused: {refused:?}");
    c.stop().await;
}

/// A bundle source that does not exist: Failed in status and an Event, fetched once and then
/// not again until the back-off passes, however often the controller is woken; nothing starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_is_cached_and_nothing_starts() {
    let fake = fake();
    let c = cluster(
        fake.client(),
        fake.client_without_retry(),
        Opts {
            id: "f".into(),
            nodes: 2,
            refused: vec![],
            rollout: json!({"canary": 0, "maxUnavailable": 1, "soakTime": "0s"}),
            bundle_exists: false,
            pdb_min_available: None,
        },
    )
    .await;
    c.phase_reaches(&[FabricPhase::Pending], 30).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gets = fake
        .requests()
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/configmaps/no-such-configmap"))
        .count();
    assert_eq!(gets, 1, "one fetch, then the back-off");
    let st = serde_json::to_value(c.get_fabric().await.unwrap().status).unwrap();
    assert_eq!(st["bundle"]["state"], "Failed", "{st}");
    assert!(
        st["bundle"]["message"]
            .as_str()
            .unwrap()
            .contains("nexus-system/no-such-configmap"),
        "{st}"
    );
    assert!(!events(&c.client, "BundleFailed").await.is_empty());
    assert_eq!(c.max_cordoned.load(Ordering::SeqCst), 0, "nothing started");
    c.stop().await;
}

/// A Fabric whose every node belongs to another Fabric says so (condition, Event, the
/// conflicting nodes) instead of reporting Ready 0/0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fabric_whose_nodes_belong_to_another_says_so() {
    let fake = fake();
    let c = cluster(
        fake.client(),
        fake.client_without_retry(),
        Opts {
            id: "c".into(),
            nodes: 2,
            refused: vec![],
            rollout: json!({"canary": 0, "maxUnavailable": 1, "soakTime": "0s"}),
            bundle_exists: true,
            pdb_min_available: None,
        },
    )
    .await;
    c.phase_reaches(&[FabricPhase::Ready], 60).await;
    let mut second = serde_json::to_value(c.get_fabric().await.unwrap()).unwrap();
    second["metadata"] = json!({"name": "gpu-second"});
    if let Some(o) = second.as_object_mut() {
        o.remove("status");
    }
    fake.apply_value(second);
    let mut st = None;
    for _ in 0..100 {
        let f: Option<Fabric> = fake.get(None, "gpu-second");
        st = f
            .and_then(|f| f.status)
            .filter(|s| s.conflicting_nodes.len() == 2);
        if st.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = st.expect("the second Fabric reports the conflict");
    assert_eq!(st.phase, Some(FabricPhase::Pending));
    assert_eq!(st.conflicting_nodes, c.nodes);
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "NodesOwnedByAnotherFabric");
    assert!(!events(&c.client, "NodeConflict").await.is_empty());
    c.stop().await;
}
