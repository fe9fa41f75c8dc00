//! The ModelIdentity controller, whole (`identity::reconcile::run`: watches, predicates,
//! back-off, finalizer), against the fake API server (`nexus-kube-fake`: it validates writes
//! against the CRDs, sends watch events for the controller's own status writes and garbage-
//! collects) and the real NexTrust CA (`nexus-ca` on a fresh PostgreSQL database, over gRPC).
//!
//! These are the tests that would have caught what a real cluster showed: request ids the CA
//! refuses, failures that hot-loop through the controller's own status writes, and a
//! ModelIdentity that cannot be deleted because its Secret lost its ownerReference.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use nexus_controller::ca_client::GrpcIssuer;
use nexus_controller::identity::FINALIZER;
use nexus_controller::identity::reconcile::{Context, Issuer, MANAGER, run};
use nexus_controller::metrics::Metrics;
use nexus_crds::ModelIdentity;
use nexus_kube_fake::FakeApiServer;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;

mod real_ca;

use real_ca::{TOKEN, revoked};

fn identity() -> Value {
    let text = include_str!("../../deploy/examples/modelidentity.yaml");
    serde_saphyr::from_str(text).unwrap()
}

async fn real_ca(pool: &PgPool) -> (nexus_ca::RunningServer, Arc<GrpcIssuer>) {
    real_ca::start(pool).await
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn start(fake: &FakeApiServer, issuer: Arc<dyn Issuer>) -> (Running, Arc<Metrics>) {
    let client = fake.client();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        issuer,
        recorder: kube::runtime::events::Recorder::new(client, MANAGER.into()),
        metrics: metrics.clone(),
        now: chrono::Utc::now,
        leader: None,
    });
    let (stop, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run(ctx, async move {
        let _ = rx.await;
    }));
    (Running { stop, task }, metrics)
}

async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn status_writes(fake: &FakeApiServer) -> usize {
    fake.writes()
        .iter()
        .filter(|w| w.path.ends_with("/modelidentities/coder-70b/status"))
        .count()
}

/// Issuance through the real CA: the request id is one the CA accepts, the Secret holds a chain
/// the CA's root verifies, every write carries the controller's field manager.
#[sqlx::test(migrations = false)]
async fn issues_through_the_real_ca(pool: PgPool) {
    let (ca, issuer) = real_ca(&pool).await;
    let fake = FakeApiServer::new();
    fake.apply_value(identity());
    let (running, _) = start(&fake, issuer.clone());
    let secret: Secret =
        eventually("the MIC Secret", || fake.get(Some("acme"), "coder-70b-mic")).await;
    let data = secret.data.unwrap();
    let chain = std::str::from_utf8(&data["tls.crt"].0).unwrap();
    let root = std::str::from_utf8(&data["ca.crt"].0).unwrap();
    let verifier = nexus_mic::Verifier::from_pem(root).unwrap();
    let ders = nexus_mic::pem_to_der_chain(chain).unwrap();
    let verified = verifier
        .verify(
            &ders,
            std::time::SystemTime::now(),
            &nexus_mic::NoRevocation,
            &"capability=code-generation".parse().unwrap(),
        )
        .unwrap();
    assert_eq!(verified.model.to_string(), "nexus://acme/coder-70b@2.1.0");
    let mi: ModelIdentity = eventually("Ready", || {
        let mi: ModelIdentity = fake.get(Some("acme"), "coder-70b")?;
        let ready = mi
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(mi)
    })
    .await;
    assert_eq!(mi.finalizers(), [FINALIZER]);
    // The CA has it, by the serial in status.
    let serial = mi.status.unwrap().serial.unwrap();
    assert!(!revoked(&ca, &serial).await);
    // No write went out without our field manager (finalizer patches included).
    for w in fake.writes() {
        if w.path.contains("modelidentities") || w.path.contains("secrets") {
            assert_eq!(w.manager, MANAGER, "{} {}", w.method, w.path);
        }
    }
    // Deleting revokes at the real CA and lets the object go.
    fake.delete("ModelIdentity", Some("acme"), "coder-70b")
        .unwrap();
    eventually("deletion", || {
        fake.get::<ModelIdentity>(Some("acme"), "coder-70b")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(revoked(&ca, &serial).await, "revoked on delete");
    eventually("the Secret garbage-collected", || {
        fake.get::<Secret>(Some("acme"), "coder-70b-mic")
            .is_none()
            .then_some(())
    })
    .await;
    running.stop().await;
    let _ = ca.shutdown().await;
}

/// The request id the controller sends passes the CA's own rule, for every reason and for
/// uids of any shape the API server hands out.
#[test]
fn request_ids_are_what_the_ca_accepts() {
    use nexus_controller::identity::decide::IssueReason::*;
    for reason in [
        Initial,
        SecretMissing,
        SecretInvalid,
        SpecChanged,
        Renewal,
        Expired,
    ] {
        let long = "é/".repeat(200);
        for uid in [
            "0b8f9e2c-5d1a-4c3e-9f7b-2a6d8e1c4b3f",
            "",
            "x/y z",
            long.as_str(),
        ] {
            let id = nexus_controller::identity::reconcile::request_id(
                uid,
                Some(i64::MAX),
                reason,
                b"csr",
            );
            // The CA's own rule, from the crate the CA server calls.
            assert_eq!(
                nexus_ca_api::validate::check_request_id(&id),
                Ok(()),
                "{id}"
            );
        }
    }
}

/// The CA is unreachable: each failure writes status (which comes back as a watch event) but
/// the next attempt waits for the back-off (5 s first), and repeated Warning events fold into
/// one series. Real time, not paused: a hot loop never lets a paused clock advance, so the test
/// would hang instead of failing; two worker threads, so the test body keeps running beside a
/// controller that never rests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_instead_of_hot_looping_on_their_own_status_writes() {
    let fake = FakeApiServer::new();
    fake.apply_value(identity());
    // Nothing listens on port 9 of loopback: every call fails as "unavailable".
    let issuer = Arc::new(GrpcIssuer::new("http://127.0.0.1:9", Some(TOKEN.into()), None).unwrap());
    let (running, metrics) = start(&fake, issuer);
    eventually("a first failure", || {
        (status_writes(&fake) >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.stop().await;
    let failures = status_writes(&fake);
    // Within the first 5 s back-off: one attempt (Issuing, then Failed). Without the back-off,
    // hundreds (378 in 10 s on a real cluster).
    assert!(
        failures <= 3,
        "{failures} status writes within the first back-off"
    );
    let mi: ModelIdentity = fake.get(Some("acme"), "coder-70b").unwrap();
    let st = mi.status.unwrap();
    assert!(st.failed_issuance_attempts >= 1);
    let failed = st.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "IssuerUnavailable");
    let events: Vec<Event> = fake.list();
    let warnings: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "repeats are one Event with a series: {warnings:?}"
    );
    let _ = metrics;
}

/// A Secret of the same name that is not ours: refused (never overwritten), backed off — and
/// the ModelIdentity can still be deleted, because the finalizer runs before any ownership check.
#[sqlx::test(migrations = false)]
async fn a_secret_that_is_not_ours_is_never_overwritten_and_never_blocks_deletion(pool: PgPool) {
    let (ca, issuer) = real_ca(&pool).await;
    let fake = FakeApiServer::new();
    fake.apply_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "coder-70b-mic", "namespace": "acme"},
        "stringData": {}, "data": {"tls.crt": "c29tZW9uZSBlbHNl"},
    }));
    fake.apply_value(identity());
    let (running, _) = start(&fake, issuer);
    let mi: ModelIdentity = eventually("SecretNotOwned", || {
        let mi: ModelIdentity = fake.get(Some("acme"), "coder-70b")?;
        mi.status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.reason == "SecretNotOwned")
            .then_some(mi)
    })
    .await;
    assert_eq!(mi.finalizers(), [FINALIZER]);
    let secret: Secret = fake.get(Some("acme"), "coder-70b-mic").unwrap();
    assert_eq!(
        secret.data.unwrap()["tls.crt"].0,
        b"someone else",
        "untouched"
    );
    let writes_before = status_writes(&fake);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        status_writes(&fake) - writes_before <= 2,
        "backed off, not a hot loop"
    );
    fake.delete("ModelIdentity", Some("acme"), "coder-70b")
        .unwrap();
    eventually("deletion", || {
        fake.get::<ModelIdentity>(Some("acme"), "coder-70b")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        fake.get::<Secret>(Some("acme"), "coder-70b-mic").is_some(),
        "not ours: not collected"
    );
    running.stop().await;
    let _ = ca.shutdown().await;
}

/// A spec change re-issues, and the superseded certificate is revoked at the real CA; a
/// ModelIdentity whose Secret lost its ownerReference after issuance deletes cleanly and its
/// certificate is revoked.
#[sqlx::test(migrations = false)]
async fn spec_change_supersedes_and_a_disowned_secret_still_lets_deletion_finish(pool: PgPool) {
    let (ca, issuer) = real_ca(&pool).await;
    let fake = FakeApiServer::new();
    fake.apply_value(identity());
    let (running, _) = start(&fake, issuer);
    let first = eventually("first serial", || {
        let mi: ModelIdentity = fake.get(Some("acme"), "coder-70b")?;
        mi.status?.serial
    })
    .await;
    let mut changed = identity();
    changed["spec"]["capabilities"]["contextWindow"] = json!(262144);
    fake.apply_value(changed);
    let second = eventually("second serial", || {
        let mi: ModelIdentity = fake.get(Some("acme"), "coder-70b")?;
        mi.status?.serial.filter(|s| *s != first)
    })
    .await;
    for _ in 0..100 {
        if revoked(&ca, &first).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        revoked(&ca, &first).await,
        "the superseded certificate is revoked"
    );
    assert!(!revoked(&ca, &second).await);
    // The Secret loses its ownerReference (someone re-created it by hand, say).
    let mut s: Value =
        serde_json::to_value(fake.get::<Secret>(Some("acme"), "coder-70b-mic").unwrap()).unwrap();
    s["metadata"]["ownerReferences"] = Value::Null;
    if let Some(m) = s["metadata"].as_object_mut() {
        m.remove("ownerReferences");
    }
    fake.apply_value(s);
    fake.delete("ModelIdentity", Some("acme"), "coder-70b")
        .unwrap();
    eventually("deletion", || {
        fake.get::<ModelIdentity>(Some("acme"), "coder-70b")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        revoked(&ca, &second).await,
        "revoked on delete, Secret or no Secret"
    );
    running.stop().await;
    let _ = ca.shutdown().await;
}
