//! Usage reported by Nexus components (`POST /v1/system/usage-events`): only the usage and
//! operator tokens may, each event names its tenant, and a replayed batch is billed once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Api, OPERATOR, USAGE, now};
use serde_json::{Value, json};
use sqlx::PgPool;

fn ev(tenant: &str, key: &str, meter: &str, q: u64) -> Value {
    json!({"tenant": tenant, "meter": meter, "quantity": q, "timestamp": now(),
           "dimensions": {"domain": "prod", "delivery_mode": "stream"}, "idempotency_key": key})
}

#[sqlx::test]
async fn components_report_usage_for_tenants_once(pool: PgPool) {
    let api = Api::new(pool);
    let acme = api.tenant("acme").await;
    let beta = api.tenant("beta").await;
    let batch = json!({"events": [
        ev("acme", "dp:n1:1", "traffic_bytes", 1500),
        ev(&beta.tenant_id.to_string(), "dp:n1:1", "traffic_bytes", 700),
        ev("acme", "mic:0a0b", "mics_issued", 1),
        ev("nobody", "dp:n1:1", "traffic_bytes", 9),
        ev("beta", "fabric:gpu:0", "cluster_hours", 1),
    ]});
    let r = api
        .post("/v1/system/usage-events", USAGE, batch.clone())
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.body["accepted"].as_u64(), r.body["rejected"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(r.body["results"][3]["reason"], "unknown_tenant");
    assert_eq!(r.body["results"][3]["index"], 3);
    assert_eq!(r.body["results"][1]["outcome"], "accepted");

    // The same batch again (a lost acknowledgement), now with the operator token: all repeats.
    let r = api.post("/v1/system/usage-events", OPERATOR, batch).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["duplicates"], 4);
    assert_eq!(r.body["accepted"], 0);

    // Each tenant sees its own usage, once.
    let u = api
        .get(
            "/v1/usage?meter=traffic_bytes&group_by=domain",
            &acme.api_key,
        )
        .await;
    assert_eq!(u.body["buckets"][0]["quantity"], 1500, "{}", u.text);
    assert_eq!(u.body["buckets"][0]["domain"], "prod");
    let u = api.get("/v1/usage", &beta.api_key).await;
    let total: i64 = u.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 701, "{}", u.text);
}

#[sqlx::test]
async fn only_component_tokens_report_system_usage(pool: PgPool) {
    let api = Api::new(pool);
    let acme = api.tenant("acme").await;
    let batch = json!({"events": [ev("acme", "k", "traffic_bytes", 1)]});
    api.post("/v1/system/usage-events", &acme.api_key, batch.clone())
        .await
        .problem(403, "forbidden");
    api.post("/v1/system/usage-events", "wrong-token", batch)
        .await
        .problem(401, "unauthenticated");
    // The usage token can do nothing else.
    api.post(
        "/v1/tenants",
        USAGE,
        json!({"name": "x", "slug": "x", "owner_email": "o@x.example"}),
    )
    .await
    .problem(403, "forbidden");
    api.get("/v1/usage", USAGE).await.problem(403, "forbidden");
    // Field rules make the whole request invalid, as for tenant-reported usage.
    api.post(
        "/v1/system/usage-events",
        USAGE,
        json!({"events": [ev("acme", "", "traffic_bytes", 1)]}),
    )
    .await
    .problem(422, "validation_failed");
}
