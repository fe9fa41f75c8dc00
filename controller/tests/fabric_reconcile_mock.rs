//! The kube-mode Fabric reconciler against kube's mock API service: every request is answered
//! by a small fake API server and recorded, then each scenario checks the conversation — a
//! canary started (maintenance, cordon, eviction, the target), a paused Fabric (a NexusNode
//! created, nothing started, status written), a halted generation rolled back, and a follower
//! that does nothing.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use chrono::Utc;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use nexus_controller::rollout::apply::MANAGER;
use nexus_controller::rollout::metrics::RolloutMetrics;
use nexus_controller::rollout::reconcile::{
    Context, FOLLOWER_INTERVAL, PROGRESS_INTERVAL, reconcile,
};
use nexus_crds::Fabric;
use serde_json::{Value, json};
use sha2::Digest;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One request the reconciler made.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

impl Call {
    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

/// What the fake API server holds.
#[derive(Clone, Default)]
struct World {
    nodes: Vec<Value>,
    nexus_nodes: Vec<Value>,
    /// Pod lists answered in turn (the last one repeats).
    pods: Vec<Vec<Value>>,
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn list(kind: &str, items: &[Value]) -> Value {
    json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// Answers requests until the client is dropped; returns them in order.
async fn serve(mut h: Handle, world: World) -> Vec<Call> {
    use http_body_util::BodyExt;
    let mut calls = Vec::new();
    let mut pod_lists = world.pods.clone();
    while let Some((req, send)) = h.next_request().await {
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reply = match (method.as_str(), path.as_str()) {
            ("GET", "/api/v1/nodes") => respond(StatusCode::OK, &list("NodeList", &world.nodes)),
            ("GET", "/apis/nexus.dev/v1alpha1/nexusnodes") => {
                respond(StatusCode::OK, &list("NexusNodeList", &world.nexus_nodes))
            }
            ("GET", "/api/v1/pods") => {
                let pods = if pod_lists.len() > 1 {
                    pod_lists.remove(0)
                } else {
                    pod_lists.first().cloned().unwrap_or_default()
                };
                respond(StatusCode::OK, &list("PodList", &pods))
            }
            ("GET", "/api/v1/namespaces/nexus-system/configmaps/fw") => respond(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fw"},
                        "binaryData": {"fw.bin": "bm90IHRoZSBmaXJtd2FyZQ=="}}),
            ),
            ("GET", "/api/v1/namespaces/nexus-system/configmaps/fw-ok") => respond(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fw-ok"},
                        "binaryData": {"fw.bin": "ZmlybXdhcmUgMi4w"}}),
            ),
            ("POST", p) if p.ends_with("/eviction") => respond(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            ("PATCH", p) if p.starts_with("/api/v1/nodes/") => {
                let name = p.trim_start_matches("/api/v1/nodes/");
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
                )
            }
            ("PATCH", p) if p.starts_with("/apis/nexus.dev/v1alpha1/") => {
                let mut b = body.clone();
                b["metadata"]["resourceVersion"] = json!("2");
                if p.ends_with("/status") {
                    b["spec"] = fabric(json!({}))["spec"].clone();
                }
                respond(StatusCode::OK, &b)
            }
            (_, p) if p.starts_with("/apis/events.k8s.io/v1/") => {
                let mut b = body.clone();
                b["metadata"]["name"] = json!("ev");
                respond(StatusCode::CREATED, &b)
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "not found", "reason": "NotFound", "code": 404}),
            ),
        };
        calls.push(Call {
            method,
            path,
            query,
            body,
        });
        send.send_response(reply);
    }
    calls
}

fn digest() -> String {
    hex::encode(sha2::Sha256::digest(b"firmware 2.0"))
}

/// A bundle file whose digest is [`digest`], written once (tests run concurrently).
fn bundle_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nexus-fabric-mock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fw-2.0.bin");
        std::fs::write(&path, b"firmware 2.0").unwrap();
        format!("file://{}", path.display())
    })
    .clone()
}

/// Fabric `sim` (generation 2), canary 1, maxUnavailable 2; `extra` is merged at the top.
fn fabric(extra: Value) -> Value {
    let mut f = json!({
        "apiVersion": "nexus.dev/v1alpha1", "kind": "Fabric",
        "metadata": {"name": "sim", "generation": 2, "uid": "f-uid"},
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": "gpu"}},
            "nic": {"vendor": "nvidia", "pciVendorId": "15b3", "pciDeviceIds": ["101d"]},
            "firmware": {"version": "2.0", "bundle": {"url": bundle_url()}, "sha256": digest()},
            "rollout": {"canary": 1, "maxUnavailable": 2}
        }
    });
    if let (Some(o), Some(e)) = (f.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    f
}

fn k8s_node(name: &str, pool: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"pool": pool}}})
}

/// A NexusNode of `sim`: targeted at `target`, running `running` (the other bank holds
/// `previous`), with a fresh heartbeat.
fn nexus_node(
    name: &str,
    target: Option<&str>,
    running: &str,
    previous: Option<&str>,
    last_flash: Option<(&str, &str)>,
) -> Value {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut spec = json!({"fabric": "sim", "desiredVersion": 3, "maintenance": false});
    if let Some(t) = target {
        spec["firmware"] =
            json!({"version": t, "bundle": {"url": "https://fw/x"}, "sha256": "a".repeat(64)});
    }
    let mut banks =
        vec![json!({"bank": "A", "version": running, "sha256": "c".repeat(64), "bootable": true})];
    if let Some(p) = previous {
        banks.push(json!({"bank": "B", "version": p, "sha256": "b".repeat(64), "bootable": true}));
    }
    let mut status = json!({
        "heartbeat": now,
        "nics": [{"pciAddress": "0000:3b:00.0", "vendor": "nvidia", "model": "cx7",
                  "pciVendorId": "15b3", "pciDeviceId": "101d",
                  "runningFirmware": running, "activeBank": "A", "banks": banks}]
    });
    if let Some((v, r)) = last_flash {
        status["lastFlash"] = json!({"version": v, "result": r, "finishedAt": now});
    }
    json!({"apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode",
           "metadata": {"name": name, "resourceVersion": "1"}, "spec": spec, "status": status})
}

fn three_nodes() -> Vec<Value> {
    vec![
        k8s_node("gpu-1", "gpu"),
        k8s_node("gpu-2", "gpu"),
        k8s_node("gpu-3", "gpu"),
        k8s_node("cpu-1", "cpu"),
    ]
}

/// Runs one reconcile of `fabric` against `world`; returns the action and the conversation.
async fn run(
    fabric: Value,
    world: World,
    leader: bool,
) -> (kube::runtime::controller::Action, Vec<Call>) {
    let (svc, h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(h, world));
    let client = kube::Client::new(svc, "default");
    let mut ctx = Context::new(client, "nexus-system");
    let mut registry = prometheus_client::registry::Registry::default();
    ctx.metrics = Some(Arc::new(RolloutMetrics::new(&mut registry)));
    ctx.leader.store(leader, Ordering::SeqCst);
    let f: Fabric = serde_json::from_value(fabric).unwrap();
    let action = reconcile(Arc::new(f), Arc::new(ctx)).await.unwrap();
    let calls = server.await.unwrap();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    METRICS.with(|m| *m.borrow_mut() = text);
    (action, calls)
}

thread_local! {
    /// The metrics text of the last [`run`] on this thread.
    static METRICS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn metrics_text() -> String {
    METRICS.with(|m| m.borrow().clone())
}

fn assert_manager(c: &Call) {
    assert!(
        c.query.contains(&format!("fieldManager={MANAGER}")) && c.query.contains("force=true"),
        "{c:?}"
    );
}

fn events(calls: &[Call]) -> BTreeMap<String, String> {
    calls
        .iter()
        .filter(|c| c.path.starts_with("/apis/events.k8s.io/"))
        .map(|c| {
            (
                c.body["reason"].as_str().unwrap_or_default().to_owned(),
                c.body["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The conversation without Events (they are checked apart).
fn api_calls(calls: &[Call]) -> Vec<(String, String)> {
    calls
        .iter()
        .filter(|c| !c.path.starts_with("/apis/events.k8s.io/"))
        .map(|c| (c.method.clone(), c.path.clone()))
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect()
}

#[tokio::test]
async fn canary_is_started_and_status_applied() {
    let mut nodes = three_nodes();
    nodes.push(k8s_node("gpu-4", "gpu"));
    let world = World {
        nodes,
        nexus_nodes: vec![
            nexus_node("gpu-1", Some("1.0"), "1.0", None, None),
            nexus_node("gpu-2", Some("1.0"), "1.0", None, None),
            nexus_node("gpu-3", Some("1.0"), "1.0", None, None),
            // Selected too, but another Fabric's: never taken over.
            {
                let mut n = nexus_node("gpu-4", Some("1.0"), "1.0", None, None);
                n["spec"]["fabric"] = json!("other");
                n
            },
        ],
        pods: vec![
            vec![json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "web", "namespace": "app"},
                        "status": {"phase": "Running"}})],
            vec![],
        ],
    };
    // First pass: maintenance, cordon, one eviction; the pod is still terminating.
    let (action, calls) = run(fabric(json!({})), world.clone(), true).await;
    assert_eq!(
        api_calls(&calls),
        pairs(&[
            ("GET", "/api/v1/nodes"),
            ("GET", "/apis/nexus.dev/v1alpha1/nexusnodes"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-1"),
            ("PATCH", "/api/v1/nodes/gpu-1"),
            ("GET", "/api/v1/pods"),
            ("POST", "/api/v1/namespaces/app/pods/web/eviction"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/fabrics/sim/status"),
        ])
    );
    let maint = &calls[2];
    assert_manager(maint);
    assert_eq!(maint.body["spec"]["maintenance"], true);
    assert_eq!(maint.body["spec"]["firmware"]["version"], "1.0");
    assert_eq!(calls[3].body, json!({"spec": {"unschedulable": true}}));
    assert!(
        calls[4].query.contains("spec.nodeName%3Dgpu-1")
            || calls[4].query.contains("spec.nodeName=gpu-1"),
        "{:?}",
        calls[4]
    );
    let status = calls
        .iter()
        .find(|c| c.path.ends_with("/fabrics/sim/status"))
        .unwrap();
    assert_manager(status);
    assert_eq!(status.body["status"]["phase"], "Progressing");
    assert_eq!(status.body["status"]["bundle"]["state"], "Verified");
    assert_eq!(status.body["status"]["nodes"]["total"], 3);
    assert_eq!(
        status.body["status"]["currentBatch"]["nodes"],
        json!(["gpu-1"])
    );
    let ev = events(&calls);
    assert_eq!(ev.get("Progressing").map(String::as_str), Some("Normal"));
    assert_eq!(ev.get("WaveStarted").map(String::as_str), Some("Normal"));
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(PROGRESS_INTERVAL)
    );
    let text = metrics_text();
    assert!(
        text.contains(r#"nexus_rollout_actions_total{action="start"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"nexus_rollout_fabric_nodes{fabric="sim",state="total"} 3"#),
        "{text}"
    );

    // Second pass: gpu-1 is in maintenance and drained → pointed at the target.
    let mut world = world;
    let mut n1 = nexus_node("gpu-1", Some("1.0"), "1.0", None, None);
    n1["spec"]["maintenance"] = json!(true);
    n1["spec"]["desiredVersion"] = json!(4);
    world.nexus_nodes[0] = n1;
    world.pods = vec![vec![]];
    let mut f = fabric(json!({}));
    f["status"] = status.body["status"].clone();
    f["status"]["observedGeneration"] = json!(2);
    let (_, calls) = run(f, world, true).await;
    assert_eq!(
        api_calls(&calls),
        pairs(&[
            ("GET", "/api/v1/nodes"),
            ("GET", "/apis/nexus.dev/v1alpha1/nexusnodes"),
            ("PATCH", "/api/v1/nodes/gpu-1"),
            ("GET", "/api/v1/pods"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-1"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/fabrics/sim/status"),
        ])
    );
    let target = &calls[4];
    assert_manager(target);
    assert_eq!(target.body["spec"]["firmware"]["version"], "2.0");
    assert_eq!(target.body["spec"]["firmware"]["sha256"], digest());
    assert_eq!(target.body["spec"]["desiredVersion"], 5);
    // No phase change: only the wave event.
    let ev = events(&calls);
    assert!(!ev.contains_key("Progressing"), "{ev:?}");
    assert!(ev.contains_key("WaveStarted"), "{ev:?}");
}

#[tokio::test]
async fn paused_fabric_creates_missing_nexus_nodes_starts_nothing_writes_status() {
    let world = World {
        nodes: three_nodes(),
        nexus_nodes: vec![
            nexus_node("gpu-1", Some("1.0"), "1.0", None, None),
            nexus_node("gpu-2", Some("1.0"), "1.0", None, None),
        ],
        pods: vec![vec![]],
    };
    let mut f = fabric(json!({}));
    f["spec"]["rollout"]["paused"] = json!(true);
    let (_, calls) = run(f, world, true).await;
    assert_eq!(
        api_calls(&calls),
        pairs(&[
            ("GET", "/api/v1/nodes"),
            ("GET", "/apis/nexus.dev/v1alpha1/nexusnodes"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-3"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/fabrics/sim/status"),
        ])
    );
    let created = &calls[2];
    assert_manager(created);
    assert_eq!(created.body["spec"]["fabric"], "sim");
    assert!(created.body["spec"].get("firmware").is_none());
    let status = &calls[3];
    assert_eq!(status.body["status"]["phase"], "Paused");
    assert_eq!(status.body["status"]["nodes"]["total"], 3);
    assert!(events(&calls).contains_key("Paused"));
}

#[tokio::test]
async fn halted_generation_rolls_back() {
    let world = World {
        nodes: three_nodes(),
        nexus_nodes: vec![
            // Flashed the target: flash back to the previous bank.
            nexus_node(
                "gpu-1",
                Some("2.0"),
                "2.0",
                Some("1.0"),
                Some(("2.0", "Succeeded")),
            ),
            // Failed the target: pointed back at what it runs.
            nexus_node("gpu-2", Some("2.0"), "1.0", None, Some(("2.0", "Failed"))),
            nexus_node("gpu-3", Some("1.0"), "1.0", None, None),
        ],
        pods: vec![vec![]],
    };
    let f = fabric(json!({"status": {"observedGeneration": 2, "phase": "Halted"}}));
    let (_, calls) = run(f, world, true).await;
    let api = api_calls(&calls);
    assert_eq!(
        api,
        pairs(&[
            ("GET", "/api/v1/nodes"),
            ("GET", "/apis/nexus.dev/v1alpha1/nexusnodes"),
            ("PATCH", "/api/v1/nodes/gpu-1"),
            ("GET", "/api/v1/pods"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-1"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-2"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/fabrics/sim/status"),
        ])
    );
    let back1 = &calls
        .iter()
        .find(|c| c.is("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-1"))
        .unwrap()
        .body;
    assert_eq!(back1["spec"]["firmware"]["version"], "1.0");
    assert_eq!(back1["spec"]["firmware"]["sha256"], "b".repeat(64));
    assert_eq!(back1["spec"]["maintenance"], true);
    let back2 = &calls
        .iter()
        .find(|c| c.is("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-2"))
        .unwrap()
        .body;
    assert_eq!(back2["spec"]["firmware"]["version"], "1.0");
    assert_eq!(back2["spec"]["maintenance"], false);
    let status = calls.last().filter(|c| c.path.ends_with("/status"));
    let status = status
        .or_else(|| calls.iter().find(|c| c.path.ends_with("/status")))
        .unwrap();
    assert_eq!(status.body["status"]["phase"], "RollingBack");
    let ev = events(&calls);
    assert_eq!(ev.get("RollingBack").map(String::as_str), Some("Warning"));
}

#[tokio::test]
async fn a_follower_does_nothing() {
    let (action, calls) = run(fabric(json!({})), World::default(), false).await;
    assert!(calls.is_empty(), "{calls:?}");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(FOLLOWER_INTERVAL)
    );
}

#[tokio::test]
async fn nothing_starts_before_the_bundle_is_verified() {
    let world = World {
        nodes: three_nodes(),
        nexus_nodes: vec![
            nexus_node("gpu-1", Some("1.0"), "1.0", None, None),
            nexus_node("gpu-2", Some("1.0"), "1.0", None, None),
            nexus_node("gpu-3", Some("1.0"), "1.0", None, None),
        ],
        pods: vec![vec![]],
    };
    let mut oci = fabric(json!({}));
    oci["spec"]["firmware"]["bundle"] = json!({"oci": "registry.example/fw/cx7:2.0"});
    let (action, calls) = run(oci, world.clone(), true).await;
    assert_eq!(
        api_calls(&calls),
        pairs(&[
            ("GET", "/api/v1/nodes"),
            ("GET", "/apis/nexus.dev/v1alpha1/nexusnodes"),
            ("PATCH", "/apis/nexus.dev/v1alpha1/fabrics/sim/status"),
        ])
    );
    let status = &calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["phase"], "Pending");
    assert_eq!(status["bundle"]["state"], "Failed");
    assert!(
        status["bundle"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("OCI sources are not supported yet")
    );
    assert!(events(&calls).contains_key("Pending"));
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(PROGRESS_INTERVAL)
    );

    // A ConfigMap whose bytes do not match the digest: Failed, nothing started.
    let mut cm = fabric(json!({}));
    cm["spec"]["firmware"]["bundle"] = json!({"configMap": {"name": "fw", "key": "fw.bin"}});
    let (_, calls) = run(cm, world, true).await;
    let cm_get = calls
        .iter()
        .find(|c| c.is("GET", "/api/v1/namespaces/nexus-system/configmaps/fw"));
    assert!(cm_get.is_some(), "{calls:?}");
    assert!(
        !calls
            .iter()
            .any(|c| c.path.starts_with("/apis/nexus.dev/v1alpha1/nexusnodes/")),
        "nothing started: {calls:?}"
    );
    let status = &calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["bundle"]["state"], "Failed");
}

#[tokio::test]
async fn leadership_follows_the_lease_and_is_dropped_on_errors() {
    use http::Method;
    use nexus_controller::rollout::lease::LeaseLock;
    use nexus_controller::rollout::reconcile::lease_step;
    use std::sync::atomic::AtomicBool;

    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "nexus-system");
    let lock = LeaseLock::new(
        client,
        "nexus-system",
        "nexus-controller",
        "ctl-a",
        std::time::Duration::from_secs(15),
    );
    let path = "/apis/coordination.k8s.io/v1/namespaces/nexus-system/leases/nexus-controller";
    let server = tokio::spawn(async move {
        // Round 1: no Lease → created → leader.
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::GET, path));
        send.send_response(respond(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "not found"}),
        ));
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::POST);
        use http_body_util::BodyExt;
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["spec"]["holderIdentity"], "ctl-a");
        send.send_response(respond(StatusCode::CREATED, &body));
        // Round 2: the API server fails → not leader any more.
        let (_, send) = h.next_request().await.unwrap();
        send.send_response(respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "InternalError", "code": 500, "message": "etcd down"}),
        ));
        // Round 3: another replica holds a fresh Lease → follower.
        let (_, send) = h.next_request().await.unwrap();
        let renew = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        send.send_response(respond(
            StatusCode::OK,
            &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "nexus-controller", "namespace": "nexus-system",
                                 "resourceVersion": "7"},
                    "spec": {"holderIdentity": "ctl-b", "leaseDurationSeconds": 15,
                             "renewTime": renew}}),
        ));
    });
    let leader = AtomicBool::new(false);
    assert!(lease_step(&lock, &leader, Utc::now()).await);
    assert!(leader.load(Ordering::SeqCst));
    assert!(!lease_step(&lock, &leader, Utc::now()).await);
    assert!(!leader.load(Ordering::SeqCst));
    leader.store(true, Ordering::SeqCst);
    assert!(!lease_step(&lock, &leader, Utc::now()).await);
    assert!(!leader.load(Ordering::SeqCst));
    server.await.unwrap();
}

#[tokio::test]
async fn a_config_map_bundle_is_verified_and_the_canary_starts() {
    let world = World {
        nodes: three_nodes(),
        nexus_nodes: vec![
            nexus_node("gpu-1", Some("1.0"), "1.0", None, None),
            nexus_node("gpu-2", Some("1.0"), "1.0", None, None),
            nexus_node("gpu-3", Some("1.0"), "1.0", None, None),
        ],
        pods: vec![vec![]],
    };
    let mut f = fabric(json!({}));
    f["spec"]["firmware"]["bundle"] = json!({"configMap": {"name": "fw-ok", "key": "fw.bin"}});
    let (_, calls) = run(f, world, true).await;
    let target = calls
        .iter()
        .rev()
        .find(|c| c.is("PATCH", "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-1"))
        .unwrap();
    assert_eq!(target.body["spec"]["firmware"]["version"], "2.0");
    assert_eq!(
        target.body["spec"]["firmware"]["bundle"]["configMap"]["name"],
        "fw-ok"
    );
    let status = &calls
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["bundle"]["state"], "Verified");
    assert_eq!(status["bundle"]["sha256"], digest());
}
