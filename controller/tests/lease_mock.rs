//! Leader election against kube's mock API service: each scenario scripts the requests (method,
//! path, body) and the API server's answers.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use nexus_controller::rollout::lease::LeaseLock;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/nexus-system/leases/nexus-rollout";

fn lock() -> (LeaseLock, Handle) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "nexus-system");
    let l = LeaseLock::new(
        client,
        "nexus-system",
        "nexus-rollout",
        "ctl-a",
        Duration::from_secs(15),
    );
    (l, handle)
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_100, 0).unwrap()
}

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

fn lease(holder: &str, renew: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "nexus-rollout", "namespace": "nexus-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew,
                 "acquireTime": renew, "leaseTransitions": 3}
    })
}

fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn conflict() -> Response<Body> {
    respond(
        StatusCode::CONFLICT,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
    )
}

#[tokio::test]
async fn creates_a_missing_lease() {
    let (l, mut h) = lock();
    let server = tokio::spawn(async move {
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::GET, PATH));
        send.send_response(not_found());
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(
            req.uri().path(),
            "/apis/coordination.k8s.io/v1/namespaces/nexus-system/leases"
        );
        let body = body_json(req).await;
        assert_eq!(body["spec"]["holderIdentity"], "ctl-a");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        send.send_response(respond(StatusCode::CREATED, body));
    });
    assert!(l.try_acquire_or_renew(now()).await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn follows_a_fresh_holder_without_writing() {
    let (l, mut h) = lock();
    let server = tokio::spawn(async move {
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        send.send_response(respond(
            StatusCode::OK,
            lease("ctl-b", "2027-01-15T08:01:35.000000Z", "5"),
        ));
    });
    // 2027-01-15T08:01:35Z is 5 s before now(): ctl-b's 15 s lease still runs.
    assert!(!l.try_acquire_or_renew(now()).await.unwrap());
    server.await.unwrap();
}

#[tokio::test]
async fn takes_over_an_expired_lease_with_its_resource_version_and_loses_a_race() {
    let (l, mut h) = lock();
    let server = tokio::spawn(async move {
        // Expired (60 s old): take over, carrying resourceVersion 5.
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        send.send_response(respond(
            StatusCode::OK,
            lease("ctl-b", "2027-01-15T08:00:40.000000Z", "5"),
        ));
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!((req.method(), req.uri().path()), (&Method::PUT, PATH));
        let body = body_json(req).await;
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        assert_eq!(body["spec"]["holderIdentity"], "ctl-a");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
        send.send_response(respond(StatusCode::OK, body));
        // Next round: another replica got there first → 409 → follower.
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::GET);
        send.send_response(respond(
            StatusCode::OK,
            lease("ctl-b", "2027-01-15T08:00:40.000000Z", "6"),
        ));
        let (req, send) = h.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PUT);
        send.send_response(conflict());
    });
    assert!(l.try_acquire_or_renew(now()).await.unwrap());
    assert!(!l.try_acquire_or_renew(now()).await.unwrap());
    server.await.unwrap();
}
