//! The kube adapter of the rollout against kube's mock API service: a Start (maintenance,
//! cordon, drain, then the target, all by server-side apply with the controller's field manager),
//! a Finish, and the Fabric status.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use nexus_controller::rollout::apply::{
    Applied, Drains, MANAGER, apply_action, apply_fabric_status,
};
use nexus_controller::rollout::plan::NodeAction;
use nexus_crds::node::NexusNode;
use nexus_crds::{Fabric, FabricStatus};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

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

fn fabric() -> Fabric {
    serde_json::from_value(json!({
        "apiVersion": "nexus.dev/v1alpha1", "kind": "Fabric",
        "metadata": {"name": "sim", "generation": 2},
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": "gpu"}},
            "nic": {"vendor": "nvidia", "pciVendorId": "15b3", "pciDeviceIds": ["101d"]},
            "firmware": {"version": "2.0", "bundle": {"url": "https://fw.example/2.0"}, "sha256": "a".repeat(64)},
            "rollout": {"canary": 1, "maxUnavailable": 2}
        }
    }))
    .unwrap()
}

fn node(maintenance: bool, target: Option<&str>) -> NexusNode {
    let mut spec = json!({"fabric": "sim", "desiredVersion": 4, "maintenance": maintenance});
    if let Some(t) = target {
        spec["firmware"] = json!({"version": t, "bundle": {"url": "https://fw.example/2.0"}, "sha256": "a".repeat(64)});
    }
    serde_json::from_value(json!({
        "apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode",
        "metadata": {"name": "gpu-1"}, "spec": spec
    }))
    .unwrap()
}

/// Expects a server-side apply of NexusNode gpu-1 and returns its body.
async fn expect_node_apply(h: &mut Handle) -> Value {
    let (req, send) = h.next_request().await.unwrap();
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::PATCH, "/apis/nexus.dev/v1alpha1/nexusnodes/gpu-1")
    );
    let q = req.uri().query().unwrap_or_default().to_owned();
    assert!(
        q.contains(&format!("fieldManager={MANAGER}")) && q.contains("force=true"),
        "{q}"
    );
    assert_eq!(
        req.headers()["content-type"],
        "application/apply-patch+yaml"
    );
    let body = body_json(req).await;
    send.send_response(respond(StatusCode::OK, body.clone()));
    body
}

async fn expect_cordon(h: &mut Handle, on: bool) {
    let (req, send) = h.next_request().await.unwrap();
    assert_eq!(
        (req.method(), req.uri().path()),
        (&Method::PATCH, "/api/v1/nodes/gpu-1")
    );
    assert_eq!(body_json(req).await, json!({"spec": {"unschedulable": on}}));
    send.send_response(respond(
        StatusCode::OK,
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-1"}}),
    ));
}

#[tokio::test]
async fn start_drains_before_pointing_at_the_target_then_finish_uncordons() {
    let (svc, mut h) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server =
        tokio::spawn(async move {
            // Start: maintenance first (counts against the budget), cordon, drain, then the target.
            let b = expect_node_apply(&mut h).await;
            assert_eq!(b["spec"]["maintenance"], true);
            assert_eq!(b["spec"]["desiredVersion"], 5);
            assert_eq!(
                b["spec"]["firmware"]["version"], "1.0",
                "not pointed at the target before the drain"
            );
            expect_cordon(&mut h, true).await;
            let (req, send) = h.next_request().await.unwrap();
            assert_eq!(
                (req.method(), req.uri().path()),
                (&Method::GET, "/api/v1/pods")
            );
            send.send_response(respond(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
            ));
            let b = expect_node_apply(&mut h).await;
            assert_eq!(b["spec"]["firmware"]["version"], "2.0");
            assert_eq!(b["spec"]["desiredVersion"], 6);
            // Finish: maintenance off, uncordon.
            let b = expect_node_apply(&mut h).await;
            assert_eq!(b["spec"]["maintenance"], false);
            expect_cordon(&mut h, false).await;
            // Status through the status subresource.
            let (req, send) = h.next_request().await.unwrap();
            assert_eq!(
                (req.method(), req.uri().path()),
                (
                    &Method::PATCH,
                    "/apis/nexus.dev/v1alpha1/fabrics/sim/status"
                )
            );
            let b = body_json(req).await;
            assert_eq!(b["status"]["phase"], "Progressing");
            send.send_response(respond(StatusCode::OK, json!({
            "apiVersion": "nexus.dev/v1alpha1", "kind": "Fabric", "metadata": {"name": "sim"},
            "spec": serde_json::to_value(fabric().spec).unwrap(), "status": b["status"].clone()
        })));
        });
    let f = fabric();
    let mut drains = Drains::default();
    let start = NodeAction::Start {
        node: "gpu-1".into(),
        version: "2.0".into(),
    };
    let r = apply_action(
        &client,
        &f,
        &node(false, Some("1.0")),
        &start,
        &mut drains,
        Duration::from_secs(600),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(r, Applied::Written);
    let mut n = node(true, Some("2.0"));
    n.spec.desired_version = 6;
    let finish = NodeAction::Finish {
        node: "gpu-1".into(),
    };
    let r = apply_action(
        &client,
        &f,
        &n,
        &finish,
        &mut drains,
        Duration::from_secs(600),
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(r, Applied::Written);
    let status = FabricStatus {
        phase: Some(nexus_crds::fabric::FabricPhase::Progressing),
        ..FabricStatus::default()
    };
    apply_fabric_status(&client, "sim", &status).await.unwrap();
    server.await.unwrap();
}
