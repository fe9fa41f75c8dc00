//! The ModelIdentity controller against a real API server — only when KUBECONFIG is set;
//! otherwise the test says it skipped. Runs the controller exactly as `nexus-controller` does
//! (`identity::reconcile::run`) with the real CA (`nexus-ca` on PostgreSQL from DATABASE_URL):
//! create → Secret + Ready; idle → no status writes (no hot loop through our own writes);
//! spec change → new serial, the old one revoked at the CA; delete → revoked and gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod real_ca;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use nexus_controller::identity::reconcile::{Context, MANAGER, run};
use nexus_controller::metrics::Metrics;
use nexus_crds::ModelIdentity;
use sqlx::PgPool;

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..120 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("timed out waiting for {what}");
}

#[sqlx::test(migrations = false)]
async fn model_identity_lifecycle_on_a_real_cluster(pool: PgPool) {
    if std::env::var_os("KUBECONFIG").is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED model_identity_lifecycle_on_a_real_cluster: KUBECONFIG is not set"
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ca, issuer) = real_ca::start(&pool).await;
    let client = kube::Client::try_default()
        .await
        .expect("cluster reachable");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = nexus_crds::crd::all()
        .into_iter()
        .find(|(f, _)| *f == "modelidentity.yaml")
        .map(|(_, c)| c)
        .expect("ModelIdentity CRD");
    crds.patch(
        "modelidentities.nexus.dev",
        &PatchParams::apply("nexus-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("CRD applies");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let ns_name = format!("nexus-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}}))
        .expect("namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");

    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
        issuer,
        recorder: kube::runtime::events::Recorder::new(client.clone(), MANAGER.into()),
        metrics: Arc::new(Metrics::new(&mut registry)),
        now: chrono::Utc::now,
        leader: None,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(ctx, async move {
        let _ = stopped.await;
    }));
    let identities: Api<ModelIdentity> = Api::namespaced(client.clone(), &ns_name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_name);

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/modelidentity.yaml"
    ))
    .expect("example");
    let mut mi: ModelIdentity = serde_saphyr::from_str(&text).expect("example parses");
    mi.metadata.namespace = Some(ns_name.clone());
    mi.spec.tenant = Some("acme".into());
    identities
        .create(&PostParams::default(), &mi)
        .await
        .expect("created");

    let ready_serial = || async {
        identities.get("coder-70b").await.ok().and_then(|m| {
            let st = m.status?;
            let ready = nexus_crds::common::find_condition(&st.conditions, "Ready")
                .is_some_and(|c| c.status == "True");
            ready.then_some(st.serial).flatten()
        })
    };
    wait_for("Ready", || async { ready_serial().await.is_some() }).await;
    let first = ready_serial().await.expect("serial");
    let secret = secrets.get("coder-70b-mic").await.expect("Secret exists");
    let data = secret.data.expect("data");
    let crt = String::from_utf8(data["tls.crt"].0.clone()).expect("PEM");
    let key = String::from_utf8(data["tls.key"].0.clone()).expect("PEM");
    assert!(nexus_controller::identity::key_matches_cert(&key, &crt));
    assert!(!real_ca::revoked(&ca, &first).await);

    // Idle: nothing changes for 15 s, so the object must not change either (a controller that
    // writes status on every reconcile would show up here as a stream of MODIFIED events).
    let mut changes = watcher(identities.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let _initial = changes.next().await;
    let idle = tokio::time::timeout(Duration::from_secs(15), changes.next()).await;
    assert!(
        idle.is_err(),
        "the ModelIdentity changed while idle: {idle:?}"
    );

    identities
        .patch(
            "coder-70b",
            &PatchParams {
                field_manager: Some("nexus-e2e".into()),
                ..PatchParams::default()
            },
            &Patch::Merge(serde_json::json!({"spec": {"model": {"version": "2.2.0"}}})),
        )
        .await
        .expect("spec patched");
    wait_for("re-issue", || async {
        ready_serial().await.is_some_and(|s| s != first)
    })
    .await;
    let second = ready_serial().await.expect("serial");
    wait_for("superseded revoked", || async {
        real_ca::revoked(&ca, &first).await
    })
    .await;

    identities
        .delete("coder-70b", &DeleteParams::default())
        .await
        .expect("deleted");
    wait_for("finalized", || async {
        identities
            .get_opt("coder-70b")
            .await
            .ok()
            .flatten()
            .is_none()
    })
    .await;
    assert!(
        real_ca::revoked(&ca, &second).await,
        "the current certificate is revoked on delete"
    );

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
    let _ = ca.shutdown().await;
}
