//! Graceful shutdown: after the signal the server stops accepting but finishes what is in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use sqlx::PgPool;

#[sqlx::test]
async fn shutdown_finishes_in_flight_requests(pool: PgPool) {
    let t = nexus_cloud::create_tenant(&pool, "t", "t", "o@t.example")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nexus_cloud::serve(
        listener,
        nexus_cloud::AppState::new(pool.clone(), common::config()),
        async move {
            let _ = stopped.await;
        },
    ));

    // Hold the tenant row so the next request blocks inside the server.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(t.tenant_id)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let req = client
        .put(format!("http://{addr}/v1/tenant/plan"))
        .bearer_auth(&t.api_key)
        .header("content-type", "application/json")
        .body(r#"{"plan_id":"00000000-0000-4000-8000-000000000001"}"#)
        .send();
    let in_flight = tokio::spawn(req);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !in_flight.is_finished(),
        "the request should be blocked on the row lock"
    );

    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server.is_finished(),
        "the server must wait for the in-flight request"
    );

    blocker.rollback().await.unwrap();
    let resp = in_flight.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Stopped: no new connections.
    assert!(
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err()
    );
}
