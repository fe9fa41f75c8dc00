//! Cordon and drain against kube's mock API service: the exact requests, a PDB's 429 taken as
//! "retry later", DaemonSet and mirror pods left alone.

#![allow(clippy::unwrap_used)]

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use nexus_controller::rollout::drain::{cordon, drain_step};
use serde_json::{Value, json};

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

async fn body_json(req: Request<Body>) -> Value {
    use http_body_util::BodyExt;
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn pod(name: &str, extra: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": {"nodeName": "gpu-1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running"}
    });
    if let (Some(m), Some(e)) = (p["metadata"].as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    p
}

#[tokio::test]
async fn cordons_then_evicts_respecting_pdbs() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(
            (req.method(), req.uri().path()),
            (&Method::PATCH, "/api/v1/nodes/gpu-1")
        );
        assert_eq!(
            body_json(req).await,
            json!({"spec": {"unschedulable": true}})
        );
        send.send_response(respond(StatusCode::OK, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}, "spec": {"unschedulable": true}})));

        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(
            (req.method(), req.uri().path()),
            (&Method::GET, "/api/v1/pods")
        );
        assert!(
            req.uri()
                .query()
                .unwrap_or_default()
                .contains("fieldSelector=spec.nodeName%3Dgpu-1"),
            "{:?}",
            req.uri()
        );
        send.send_response(respond(StatusCode::OK, json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [
                pod("agent-x", json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent", "uid": "u", "controller": true}]})),
                pod("web-a", json!({})),
                pod("web-b", json!({})),
                pod("static-y", json!({"annotations": {"kubernetes.io/config.mirror": "abc"}})),
            ]
        })));

        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(
            (req.method(), req.uri().path()),
            (&Method::POST, "/api/v1/namespaces/apps/pods/web-a/eviction")
        );
        let body = body_json(req).await;
        assert_eq!(body["metadata"]["name"], "web-a");
        send.send_response(respond(
            StatusCode::CREATED,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}),
        ));

        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(
            req.uri().path(),
            "/api/v1/namespaces/apps/pods/web-b/eviction"
        );
        send.send_response(respond(StatusCode::TOO_MANY_REQUESTS, json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "TooManyRequests", "code": 429,
            "message": "Cannot evict pod as it would violate the pod's disruption budget."
        })));
    });
    cordon(&client, "gpu-1", true).await.unwrap();
    let st = drain_step(&client, "gpu-1").await.unwrap();
    assert_eq!(st.evicted, 1);
    assert_eq!(st.blocked, vec!["apps/web-b".to_owned()]);
    assert_eq!(
        st.remaining, 2,
        "both still on the node: one terminating, one blocked"
    );
    assert!(!st.done());
    server.await.unwrap();
}
