//! The ModelIdentity adapter against kube's mock API service: each scenario scripts the exact
//! requests the controller must make (method, path, body) and the API server's answers, with an
//! in-process CA (nexus-mic) behind the `Issuer` trait.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use nexus_controller::identity::local_ca::LocalIssuer;
use nexus_controller::identity::reconcile::{
    Context, IssueRequest, Issuer, RevokeReason, error_policy, reconcile,
};
use nexus_controller::identity::{FINALIZER, IssuedCertificate};
use nexus_controller::metrics::Metrics;
use nexus_crds::ModelIdentity;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The in-process CA, failing every issuance when `fail` is set.
struct LocalCa {
    inner: LocalIssuer,
    fail: bool,
}

impl LocalCa {
    fn new(fail: bool) -> Self {
        Self {
            inner: LocalIssuer::ephemeral().expect("CA"),
            fail,
        }
    }
}

#[async_trait]
impl Issuer for LocalCa {
    async fn issue(&self, req: IssueRequest) -> Result<IssuedCertificate, nexus_controller::Error> {
        if self.fail {
            return Err(nexus_controller::Error::IssuerUnavailable(
                "CA is down".into(),
            ));
        }
        self.inner.issue(req).await
    }
    async fn revoke(
        &self,
        tenant: &str,
        serial: &str,
        reason: RevokeReason,
    ) -> Result<(), nexus_controller::Error> {
        self.inner.revoke(tenant, serial, reason).await
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

fn ctx(issuer: Arc<LocalCa>) -> (Arc<Context>, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "acme");
    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Context {
        client,
        issuer,
        reporter: "nexus-controller".into(),
        metrics: Arc::new(Metrics::new(&mut registry)),
        now,
        leader: None,
    };
    (Arc::new(ctx), handle)
}

fn identity(extra: Value) -> ModelIdentity {
    let mut v: Value = json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "ModelIdentity",
        "metadata": {"name": "coder", "namespace": "acme", "uid": "uid-1", "generation": 1, "resourceVersion": "7"},
        "spec": {
            "model": {"name": "coder-70b", "version": "2.1.0"},
            "architectureHash": "sha256:7d1e5c3a9b2f4e6d8c0a1b3e5f7d9c2a4b6e8f0d1c3a5b7e9f2d4c6a8b0e1f3d",
            "provenance": {"publisher": "Acme"},
            "capabilities": {"capabilities": ["code-generation"], "contextWindow": 131072, "modalities": ["text"]},
            "benchmarks": [{"name": "humaneval", "value": "0.872"}],
            "safetyEvaluations": [{"name": "safety-eval", "commitment": "0e4c2a8f6b1d3e5a7c9f0b2d4e6a8c1f3b5d7e9a0c2e4f6b8d1a3c5e7f9b0d2c"}],
            "duration": "24h", "renewBefore": "8h",
            "secretName": "coder-mic",
            "issuerRef": {"name": "nexus-ca"}
        }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).expect("valid ModelIdentity")
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

async fn body_json(req: Request<Body>) -> Value {
    use http_body_util::BodyExt;
    let bytes = req.into_body().collect().await.expect("body").to_bytes();
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).expect("serialises")))
        .expect("response")
}

/// The API server's answer to a PATCH of the ModelIdentity: the whole object, patched.
fn patched(base: &ModelIdentity, patch: &Value) -> Response<Body> {
    let mut v = serde_json::to_value(base).expect("serialises");
    let mut p = patch.clone();
    if let Some(o) = p.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
    }
    merge(&mut v, p);
    respond(StatusCode::OK, v)
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// Expects the next request to be `method path…`; returns its body and sends `answer(body)`.
async fn expect(
    handle: &mut Handle,
    method: &str,
    path_prefix: &str,
    answer: impl FnOnce(&Value) -> Response<Body>,
) -> Value {
    let (req, send) = handle.next_request().await.expect("a request");
    assert_eq!(req.method().as_str(), method, "method of {}", req.uri());
    assert!(
        req.uri().path().starts_with(path_prefix),
        "{} {} does not start with {path_prefix}",
        req.method(),
        req.uri()
    );
    let body = body_json(req).await;
    send.send_response(answer(&body));
    body
}

#[tokio::test]
async fn new_identity_gets_a_finalizer_first() {
    let (ctx, mut handle) = ctx(Arc::new(LocalCa::new(false)));
    let mi = Arc::new(identity(json!({})));
    let base = (*mi).clone();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/acme/secrets/coder-mic",
            |_| not_found(),
        )
        .await;
        let patch = expect(
            &mut handle,
            "PATCH",
            "/apis/nexus.dev/v1alpha1/namespaces/acme/modelidentities/coder",
            |b| patched(&base, b),
        )
        .await;
        assert_eq!(patch["metadata"]["finalizers"], json!([FINALIZER]));
        assert_eq!(
            patch["metadata"]["resourceVersion"],
            json!("7"),
            "optimistic concurrency"
        );
    });
    reconcile(mi, ctx).await.expect("reconciles");
    server.await.expect("scenario ran");
}

#[tokio::test]
async fn issues_into_an_owned_tls_secret_and_reports_status() {
    let ca = Arc::new(LocalCa::new(false));
    let (ctx, mut handle) = ctx(ca.clone());
    let mi = Arc::new(identity(json!({"metadata": {"finalizers": [FINALIZER]}})));
    let base = (*mi).clone();
    let server =
        tokio::spawn(async move {
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/acme/secrets/coder-mic",
                |_| not_found(),
            )
            .await;
            let issuing = expect(
                &mut handle,
                "PATCH",
                "/apis/nexus.dev/v1alpha1/namespaces/acme/modelidentities/coder/status",
                |b| patched(&base, b),
            )
            .await;
            let conds = issuing["status"]["conditions"]
                .as_array()
                .expect("conditions")
                .clone();
            assert!(conds.iter().any(|c| c["type"] == "Issuing"
                && c["status"] == "True"
                && c["reason"] == "Initial"));
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/acme/secrets/coder-mic",
                |_| not_found(),
            )
            .await;
            let secret = expect(
                &mut handle,
                "POST",
                "/api/v1/namespaces/acme/secrets",
                |b| respond(StatusCode::CREATED, b.clone()),
            )
            .await;
            assert_eq!(secret["type"], "kubernetes.io/tls");
            let owner = &secret["metadata"]["ownerReferences"][0];
            assert_eq!(
                (
                    owner["kind"].as_str(),
                    owner["uid"].as_str(),
                    owner["controller"].as_bool()
                ),
                (Some("ModelIdentity"), Some("uid-1"), Some(true))
            );
            let data = secret["data"].as_object().expect("data");
            for k in ["tls.crt", "tls.key", "ca.crt", "attestation.json"] {
                assert!(data.contains_key(k), "Secret has {k}");
            }
            use base64::Engine;
            let b64 = |k: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(data[k].as_str().expect("string"))
                    .expect("base64")
            };
            let crt = String::from_utf8(b64("tls.crt")).expect("PEM");
            assert_eq!(
                crt.matches("BEGIN CERTIFICATE").count(),
                2,
                "tls.crt holds leaf and intermediate"
            );
            let key = String::from_utf8(b64("tls.key")).expect("PEM");
            assert!(nexus_controller::identity::key_matches_cert(&key, &crt));
            let mic = nexus_mic::Mic::from_pem(&crt).expect("a MIC");
            assert_eq!(mic.model.to_string(), "nexus://acme/coder-70b@2.1.0");
            assert_eq!(mic.attestation.capabilities.context_window, 131072);
            let att: Value = serde_json::from_slice(&b64("attestation.json")).expect("JSON");
            assert_eq!(att["provenance"]["publisher"], "Acme");
            let ready = expect(
                &mut handle,
                "PATCH",
                "/apis/nexus.dev/v1alpha1/namespaces/acme/modelidentities/coder/status",
                |b| patched(&base, b),
            )
            .await;
            let st = &ready["status"];
            assert_eq!(
                st["serial"].as_str(),
                Some(nexus_controller::identity::normalize_serial(&mic.serial).as_str())
            );
            assert_eq!(st["fingerprint"].as_str(), Some(mic.fingerprint.as_str()));
            assert!(st["renewalTime"].is_string() && st["notAfter"].is_string());
            let conds = st["conditions"].as_array().expect("conditions");
            assert!(
                conds
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            );
            assert!(
                conds
                    .iter()
                    .any(|c| c["type"] == "Issuing" && c["status"] == "False")
            );
            let event = expect(
                &mut handle,
                "POST",
                "/apis/events.k8s.io/v1/namespaces/acme/events",
                |b| respond(StatusCode::CREATED, b.clone()),
            )
            .await;
            assert_eq!(event["reason"], "Issued");
        });
    let action = reconcile(mi, ctx).await.expect("reconciles");
    server.await.expect("scenario ran");
    // Requeued for renewal, 16h out, capped at the hourly re-check.
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(3600))
    );
    assert!(ca.inner.revoked().is_empty());
}

#[tokio::test]
async fn failed_issuance_is_visible_in_status_and_backs_off() {
    let (ctx, mut handle) = ctx(Arc::new(LocalCa::new(true)));
    let mi = Arc::new(identity(json!({"metadata": {"finalizers": [FINALIZER]}})));
    let base = (*mi).clone();
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/acme/secrets/coder-mic",
            |_| not_found(),
        )
        .await;
        expect(
            &mut handle,
            "PATCH",
            "/apis/nexus.dev/v1alpha1/namespaces/acme/modelidentities/coder/status",
            |b| patched(&base, b),
        )
        .await;
        let failed = expect(
            &mut handle,
            "PATCH",
            "/apis/nexus.dev/v1alpha1/namespaces/acme/modelidentities/coder/status",
            |b| patched(&base, b),
        )
        .await;
        let st = &failed["status"];
        assert_eq!(st["failedIssuanceAttempts"], 1);
        let conds = st["conditions"].as_array().expect("conditions");
        assert!(conds.iter().any(|c| {
            c["type"] == "Failed"
                && c["status"] == "True"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("CA is down"))
        }));
        assert!(
            conds
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "False")
        );
        let event = expect(
            &mut handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/acme/events",
            |b| respond(StatusCode::CREATED, b.clone()),
        )
        .await;
        assert_eq!(event["type"], "Warning");
    });
    let err = reconcile(mi.clone(), ctx.clone())
        .await
        .expect_err("issuance fails");
    server.await.expect("scenario ran");
    assert_eq!(err.metric_label(), "issuer_unavailable");
    assert_eq!(
        error_policy(mi, &err, ctx),
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn deletion_revokes_then_removes_the_finalizer() {
    let ca = Arc::new(LocalCa::new(false));
    let (ctx, mut handle) = ctx(ca.clone());
    let mi = Arc::new(identity(json!({
        "metadata": {"finalizers": [FINALIZER, "other.example/keep"], "deletionTimestamp": "2026-11-25T10:00:00Z"},
        "status": {"serial": "0abc", "revoked": false}
    })));
    let server = tokio::spawn(async move {
        expect(
            &mut handle,
            "GET",
            "/api/v1/namespaces/acme/secrets/coder-mic",
            |_| not_found(),
        )
        .await;
        let event = expect(
            &mut handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/acme/events",
            |b| respond(StatusCode::CREATED, b.clone()),
        )
        .await;
        assert_eq!(event["reason"], "Revoked");
        let patch = expect(
            &mut handle,
            "PATCH",
            "/apis/nexus.dev/v1alpha1/namespaces/acme/modelidentities/coder",
            |_| not_found(),
        )
        .await;
        assert_eq!(
            patch["metadata"]["finalizers"],
            json!(["other.example/keep"]),
            "only our finalizer is removed"
        );
    });
    reconcile(mi, ctx)
        .await
        .expect("a 404 on finalizer removal is success");
    server.await.expect("scenario ran");
    assert_eq!(
        ca.inner.revoked(),
        vec![("0abc".to_owned(), RevokeReason::CessationOfOperation)]
    );
}

#[tokio::test]
async fn refuses_to_overwrite_a_secret_it_does_not_own() {
    let (ctx, mut handle) = ctx(Arc::new(LocalCa::new(false)));
    let mi = Arc::new(identity(json!({"metadata": {"finalizers": [FINALIZER]}})));
    let base = (*mi).clone();
    let server = tokio::spawn(async move {
        expect(&mut handle, "GET", "/api/v1/namespaces/acme/secrets/coder-mic", |_| {
            respond(StatusCode::OK, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "coder-mic", "namespace": "acme", "uid": "s1"}, "data": {}}))
        })
        .await;
        let failed = expect(
            &mut handle,
            "PATCH",
            "/apis/nexus.dev/v1alpha1/namespaces/acme/modelidentities/coder/status",
            |b| patched(&base, b),
        )
        .await;
        assert!(
            failed["status"]["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .any(|c| c["reason"] == "SecretNotOwned")
        );
        expect(
            &mut handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/acme/events",
            |b| respond(StatusCode::CREATED, b.clone()),
        )
        .await;
    });
    let err = reconcile(mi, ctx).await.expect_err("conflict");
    server.await.expect("scenario ran");
    assert_eq!(err.metric_label(), "secret_conflict");
}

#[tokio::test]
async fn a_replica_without_the_lease_changes_nothing() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context {
        client: kube::Client::new(svc, "acme"),
        issuer: Arc::new(LocalCa::new(false)),
        reporter: "nexus-controller".into(),
        metrics: Arc::new(Metrics::new(&mut registry)),
        now,
        leader: Some(Arc::new(std::sync::atomic::AtomicBool::new(false))),
    });
    let mi = Arc::new(identity(json!({})));
    let action = reconcile(mi, ctx)
        .await
        .expect("a follower succeeds without acting");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5))
    );
    // No request reached the API server.
    let next = tokio::time::timeout(Duration::from_millis(50), handle.next_request()).await;
    assert!(next.is_err() || matches!(next, Ok(None)), "no API call");
}
