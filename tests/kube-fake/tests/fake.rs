//! The fake answers like a real API server where it matters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use nexus_crds::NexusNode;
use nexus_kube_fake::FakeApiServer;
use serde_json::json;

fn nexus_node(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "NexusNode",
        "metadata": {"name": name},
        "spec": {"fabric": "f", "desiredVersion": 1},
        "status": {"agentVersion": "0.1.0"},
    })
}

#[tokio::test]
async fn status_is_dropped_on_create_and_spec_ignored_on_status_writes() {
    let fake = FakeApiServer::new();
    let api: Api<NexusNode> = Api::all(fake.client());
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(nexus_node("n1")).unwrap(),
        )
        .await
        .unwrap();
    assert!(created.status.is_none(), "status dropped on create");
    assert_eq!(created.metadata.generation, Some(1));
    let patched = api
        .patch_status(
            "n1",
            &PatchParams::apply("agent"),
            &Patch::Apply(json!({"apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode", "spec": {"fabric": "other"}, "status": {"agentVersion": "0.2.0"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.fabric, "f", "spec ignored on /status");
    assert_eq!(
        patched.status.unwrap().agent_version.as_deref(),
        Some("0.2.0")
    );
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "a status write keeps the generation"
    );
}

#[tokio::test]
async fn schema_violations_are_422() {
    let fake = FakeApiServer::new();
    fake.apply_value(nexus_node("n1"));
    let api: Api<NexusNode> = Api::all(fake.client());
    let err = api
        .patch(
            "n1",
            &PatchParams::apply("controller").force(),
            &Patch::Apply(json!({
                "apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode",
                "spec": {"fabric": "f", "firmware": {"version": "1.0", "bundle": {}, "sha256": "a".repeat(64)}},
            })),
        )
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("bundle"), "{}", s.message);
        }
        e => panic!("unexpected {e}"),
    }
    let n = fake.get::<NexusNode>(None, "n1").unwrap();
    assert!(n.spec.firmware.is_none(), "nothing written");
}

#[tokio::test]
async fn own_writes_come_back_as_watch_events_and_noop_writes_do_not() {
    let fake = FakeApiServer::new();
    fake.apply_value(nexus_node("n1"));
    let api: Api<NexusNode> = Api::all(fake.client());
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    // Initial list.
    loop {
        if let Some(Ok(watcher::Event::InitDone)) = stream.next().await {
            break;
        }
    }
    let status = json!({"apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode", "status": {"agentVersion": "9"}});
    api.patch_status("n1", &PatchParams::apply("agent"), &Patch::Apply(&status))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event for our own status write")
        .unwrap()
        .unwrap();
    assert!(matches!(ev, watcher::Event::Apply(_)));
    let before = fake.events().len();
    api.patch_status("n1", &PatchParams::apply("agent"), &Patch::Apply(&status))
        .await
        .unwrap();
    assert_eq!(fake.events().len(), before, "a no-op write changes nothing");
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict_and_apply_conflicts_unless_forced() {
    let fake = FakeApiServer::new();
    fake.apply_value(nexus_node("n1"));
    let api: Api<NexusNode> = Api::all(fake.client());
    let err = api
        .patch(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1", "finalizers": ["x/y"]}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    let spec = |fabric: &str| json!({"apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode", "spec": {"fabric": fabric}});
    api.patch("n1", &PatchParams::apply("a"), &Patch::Apply(spec("f1")))
        .await
        .unwrap();
    let err = api
        .patch("n1", &PatchParams::apply("b"), &Patch::Apply(spec("f2")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    api.patch(
        "n1",
        &PatchParams::apply("b").force(),
        &Patch::Apply(spec("f2")),
    )
    .await
    .unwrap();
    assert!(
        fake.owners("NexusNode", None, "n1")
            .contains(&("spec.fabric".into(), "b".into()))
    );
    // A merge patch without a field manager is recorded as "unknown".
    api.patch(
        "n1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await
    .unwrap();
    assert!(fake.writes().iter().any(|w| w.manager == "unknown"));
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owners_collect_dependents() {
    let fake = FakeApiServer::new();
    let mut n = nexus_node("n1");
    n["metadata"]["finalizers"] = json!(["nexus.dev/x"]);
    let owner = fake.apply_value(n);
    let uid = owner["metadata"]["uid"].as_str().unwrap().to_owned();
    fake.apply_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "default", "ownerReferences": [{"apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode", "name": "n1", "uid": uid}]},
    }));
    let api: Api<NexusNode> = Api::all(fake.client());
    api.delete("n1", &DeleteParams::default()).await.unwrap();
    let n = fake
        .get::<NexusNode>(None, "n1")
        .expect("held by its finalizer");
    assert!(n.metadata.deletion_timestamp.is_some());
    assert_eq!(
        n.metadata.generation,
        Some(2),
        "deletion bumps the generation"
    );
    api.patch(
        "n1",
        &PatchParams::apply("c"),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(fake.get::<NexusNode>(None, "n1").is_none());
    assert!(
        fake.get::<Secret>(Some("default"), "s").is_none(),
        "garbage-collected"
    );
}

#[tokio::test(start_paused = true)]
async fn evictions_respect_pod_disruption_budgets() {
    let fake = FakeApiServer::new();
    for i in 0..2 {
        fake.apply_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": "app", "labels": {"app": "x"}},
            "spec": {"nodeName": format!("n{i}"), "containers": [{"name": "c", "image": "i"}]},
        }));
    }
    fake.apply_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "x", "namespace": "app"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "x"}}},
    }));
    let _: Option<PodDisruptionBudget> = fake.get(Some("app"), "x");
    let pods: Api<Pod> = Api::namespaced(fake.client_without_retry(), "app");
    pods.evict("p0", &EvictParams::default()).await.unwrap();
    let err = pods.evict("p1", &EvictParams::default()).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 429),
        "{err}"
    );
    assert!(
        fake.get::<Pod>(Some("app"), "p0")
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(fake.get::<Pod>(Some("app"), "p0").is_none(), "terminated");
}
