//! API tests on a real PostgreSQL: every test gets its own database (`#[sqlx::test]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use axum::http::Method;
use chrono::{Duration, Utc};
use common::{Api, OPERATOR, event, now};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Every row of every tenant-owned table that belongs to `tenant`, as JSON.
async fn snapshot(pool: &PgPool, tenant: Uuid) -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    for table in [
        "tenants",
        "users",
        "api_keys",
        "audit_log",
        "routing_domains",
        "endpoints",
        "model_identities",
        "clusters",
        "usage_events",
        "usage_hourly",
        "invoices",
        "invoice_lines",
        "price_plans",
        "mic_certificates",
        "cluster_rollouts",
        "usage_hourly_domain",
    ] {
        let col = if table == "tenants" {
            "id"
        } else {
            "tenant_id"
        };
        let v: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), '[]'::jsonb)
               FROM {table} t WHERE {col} = $1"
        )))
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap();
        out.insert(table, v);
    }
    out
}

struct Objects {
    domain: String,
    endpoint: String,
    model: String,
    cluster: String,
    user: String,
    key: String,
    invoice: String,
    plan: String,
}

/// Gives tenant `key` one object of every kind.
async fn populate(api: &Api, tenant: Uuid, key: &str) -> Objects {
    let id = |r: &common::Resp| {
        assert!(r.status.is_success(), "{}", r.text);
        r.body["id"].as_str().unwrap().to_owned()
    };
    let domain = id(&api
        .post("/v1/routing-domains", key, json!({"name": "prod"}))
        .await);
    let endpoint = id(&api
        .post(
            &format!("/v1/routing-domains/{domain}/endpoints"),
            key,
            json!({"name": "coder", "capabilities": ["code-generation"], "context_window": 131072,
                   "latency_sla_ms": 200, "cost_per_1k_tokens": "0.0025"}),
        )
        .await);
    let model = id(&api
        .post(
            "/v1/model-identities",
            key,
            json!({"name": "m1", "model_digest": "sha256:00112233445566778899aabbccddeeff"}),
        )
        .await);
    let cluster = id(&api
        .post(
            "/v1/clusters",
            key,
            json!({"name": "c1", "region": "eu-west"}),
        )
        .await);
    let user = id(&api
        .post(
            "/v1/users",
            key,
            json!({"email": "v@x.example", "role": "viewer"}),
        )
        .await);
    let k = api
        .post(
            "/v1/api-keys",
            key,
            json!({"name": "ci", "user_id": user, "scopes": ["read"]}),
        )
        .await;
    let key_id = id(&k);
    let r = api
        .post(
            "/v1/usage/events",
            key,
            json!({"events": [event("e1", "mics_issued", 3, &now())]}),
        )
        .await;
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    let period = Utc::now().format("%Y-%m").to_string();
    let invoice = id(&api
        .post("/v1/invoices/generate", key, json!({"period": period}))
        .await);
    let plan = id(&api
        .post(
            "/v1/price-plans",
            OPERATOR,
            json!({"name": "private", "tenant_id": tenant, "spec": {"meters": [
                {"meter": "mics_issued", "unit": "MIC", "unit_size": 1,
                 "tiers": [{"up_to": null, "unit_price_micros": 4000000}]}]}}),
        )
        .await);
    Objects {
        domain,
        endpoint,
        model,
        cluster,
        user,
        key: key_id,
        invoice,
        plan,
    }
}

/// Walks every route of the OpenAPI document as tenant A against tenant B's objects: every route
/// that names an object answers 403/404, no answer mentions B's objects, and B is unchanged.
#[sqlx::test]
async fn isolation_every_route(pool: PgPool) {
    let api = Api::new(pool.clone());
    let a = api.tenant("a").await;
    let b = api.tenant("b").await;
    let bo = populate(&api, b.tenant_id, &b.api_key).await;
    let before = snapshot(&pool, b.tenant_id).await;
    let b_ids = [
        &bo.domain,
        &bo.endpoint,
        &bo.model,
        &bo.cluster,
        &bo.user,
        &bo.key,
        &bo.invoice,
        &bo.plan,
    ];

    let doc = api
        .raw(Method::GET, "/openapi.json", None, None, vec![])
        .await;
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    let mut walked = 0;
    for (template, item) in paths {
        for method in item.as_object().unwrap().keys() {
            // Fill path parameters with B's objects.
            let id_for = |t: &str| -> &str {
                let t = t.trim_start_matches("/v1/");
                match t.split('/').next().unwrap() {
                    "routing-domains" => &bo.domain,
                    "model-identities" => &bo.model,
                    "users" => &bo.user,
                    "api-keys" => &bo.key,
                    "invoices" => &bo.invoice,
                    "price-plans" => &bo.plan,
                    "clusters" | "rollouts" => &bo.cluster,
                    other => panic!("isolation walk does not know the objects of /v1/{other}"),
                }
            };
            let has_params = template.contains('{');
            let mut path = template
                .replace("{endpoint_id}", &bo.endpoint)
                .replace("{serial}", "abc123")
                .replace("{fabric}", "fab");
            if path.contains("{id}") {
                path = path.replace("{id}", id_for(template));
            }
            // A body that would be valid if the objects were A's, pointing at B's where it can.
            let body = match (method.as_str(), template.as_str()) {
                ("post", "/v1/routing-domains") => json!({"name": "x"}),
                ("post", "/v1/routing-domains/{id}/endpoints") => {
                    json!({"name": "e", "capabilities": [],
                    "context_window": 1, "latency_sla_ms": 1, "cost_per_1k_tokens": "1"})
                }
                ("post", "/v1/model-identities") => {
                    json!({"name": "m", "model_digest": "sha256:00112233445566778899"})
                }
                ("post", "/v1/clusters") => json!({"name": "c", "region": "r"}),
                ("post", "/v1/users") => json!({"email": "n@a.example", "role": "member"}),
                ("post", "/v1/api-keys") => {
                    json!({"name": "k", "user_id": bo.user, "scopes": ["read"]})
                }
                ("put", "/v1/tenant/plan") => json!({"plan_id": bo.plan}),
                ("post", "/v1/tenants") => {
                    json!({"name": "t", "slug": "t", "owner_email": "o@t.example"})
                }
                ("post", "/v1/price-plans") => {
                    json!({"name": "p", "tenant_id": b.tenant_id, "spec": {"meters": []}})
                }
                ("post", "/v1/usage/events") => {
                    json!({"events": [event("e1", "mics_issued", 1, &now())]})
                }
                // A tenant's key cannot report usage for B (or anyone) as a component.
                ("post", "/v1/system/usage-events") => {
                    let mut e = event("e1", "mics_issued", 1, &now());
                    e["tenant"] = json!(b.tenant_id);
                    json!({"events": [e]})
                }
                ("post", "/v1/invoices/generate") => {
                    json!({"period": Utc::now().format("%Y-%m").to_string()})
                }
                ("post", "/v1/invoices/{id}/finalize") => json!({}),
                ("post", "/v1/model-identities/{id}/certificates") => {
                    json!({"csr_der_base64": nexus_cloud::validate::EXAMPLE_CSR, "version": "1",
                        "attestation": {"architecture_hash": "00".repeat(32),
                        "provenance": {"publisher": "p"}, "capabilities": {"context_window": 1}}})
                }
                ("post", "/v1/model-identities/{id}/certificates/{serial}/revoke") => json!({}),
                ("patch", "/v1/routing-domains/{id}") => json!({"name": "x"}),
                ("patch", "/v1/users/{id}") => json!({"role": "viewer"}),
                ("put", "/v1/routing-domains/{id}/endpoints/{endpoint_id}/admission") => {
                    json!({"state": "admitted"})
                }
                ("put", "/v1/clusters/{id}/rollouts/{fabric}") => {
                    json!({"phase": "Progressing", "target_version": "2.0", "nodes_total": 1,
                        "nodes_updated": 0, "nodes_failed": 0})
                }
                ("post" | "put" | "patch", t) => {
                    panic!("isolation walk needs a request body for {method} {t}")
                }
                _ => Value::Null,
            };
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = if body.is_null() {
                api.call(m, &path, &a.api_key, None).await
            } else {
                api.call(m, &path, &a.api_key, Some(body)).await
            };
            let s = r.status.as_u16();
            let forced = matches!(
                (method.as_str(), template.as_str()),
                ("put", "/v1/tenant/plan")
                    | ("post", "/v1/api-keys")
                    | ("post", "/v1/tenants")
                    | ("post", "/v1/price-plans")
                    | ("post", "/v1/system/usage-events")
            );
            if has_params || forced {
                assert!(
                    s == 404 || s == 403,
                    "{method} {template} as A on B's objects gave {s}: {}",
                    r.text
                );
                assert_eq!(r.content_type, "application/problem+json");
            }
            for id in b_ids {
                assert!(
                    !r.text.contains(id.as_str()),
                    "{method} {template} leaked B's object {id}: {}",
                    r.text
                );
            }
            walked += 1;
        }
    }
    assert!(walked >= 30, "walked only {walked} routes");
    // A sees none of B's usage.
    let u = api.get("/v1/usage?meter=mics_issued", &a.api_key).await;
    let a_total: i64 = u.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(a_total, 1, "A sees only its own single event: {}", u.text);
    assert_eq!(
        snapshot(&pool, b.tenant_id).await,
        before,
        "tenant B changed"
    );
}

#[sqlx::test]
async fn malformed_requests_are_problems_and_write_nothing(pool: PgPool) {
    let api = Api::new(pool);
    let t = api.tenant("t").await;
    let k = t.api_key.as_str();
    let ev = |q: Value| json!({"events": [{"meter": "traffic_bytes", "quantity": q, "timestamp": now(), "idempotency_key": "x"}]});
    let cases: Vec<(Vec<u8>, Option<&str>, u16, &str)> = vec![
        (b"{\"events\": [".to_vec(), Some("application/json"), 400, "malformed_json"),
        (json!({"events": [], "extra": 1}).to_string().into_bytes(), Some("application/json"), 422, "invalid_body"),
        (ev(json!(-5)).to_string().into_bytes(), Some("application/json"), 422, "invalid_body"),
        (ev(json!("12")).to_string().into_bytes(), Some("application/json"), 422, "invalid_body"),
        (ev(json!(1.5)).to_string().into_bytes(), Some("application/json"), 422, "invalid_body"),
        (json!({"events": [{"meter": "gpu_seconds", "quantity": 1, "timestamp": now(), "idempotency_key": "x"}]}).to_string().into_bytes(), Some("application/json"), 422, "invalid_body"),
        (json!({"events": [{"meter": "traffic_bytes", "quantity": 1, "timestamp": now(), "idempotency_key": "x", "tenant_id": "other"}]}).to_string().into_bytes(), Some("application/json"), 422, "invalid_body"),
        (ev(json!(1)).to_string().into_bytes(), None, 415, "unsupported_media_type"),
        (vec![b' '; 2 * 1024 * 1024], Some("application/json"), 413, "body_too_large"),
        (json!({"events": []}).to_string().into_bytes(), Some("application/json"), 422, "validation_failed"),
    ];
    for (body, ct, status, code) in cases {
        let r = api
            .raw(Method::POST, "/v1/usage/events", Some(k), ct, body)
            .await;
        r.problem(status, code);
    }
    // Over 1,000 events.
    let many: Vec<Value> = (0..1001)
        .map(|i| event(&format!("k{i}"), "traffic_bytes", 1, &now()))
        .collect();
    api.post("/v1/usage/events", k, json!({"events": many}))
        .await
        .problem(422, "validation_failed");
    assert_eq!(api.count("usage_events").await, 0);
    assert_eq!(api.count("usage_hourly").await, 0);

    // Resource bodies.
    api.post(
        "/v1/routing-domains",
        k,
        json!({"name": "x", "color": "red"}),
    )
    .await
    .problem(422, "invalid_body");
    api.post("/v1/routing-domains", k, json!({"name": 5}))
        .await
        .problem(422, "invalid_body");
    api.post("/v1/routing-domains", k, json!({"name": ""}))
        .await
        .problem(422, "validation_failed");
    let d = api
        .post("/v1/routing-domains", k, json!({"name": "d"}))
        .await;
    let d = d.body["id"].as_str().unwrap().to_owned();
    for cost in [json!("1e-3"), json!(0.001), json!("-1"), json!("abc")] {
        let r = api
            .post(&format!("/v1/routing-domains/{d}/endpoints"), k,
                  json!({"name": "e", "capabilities": [], "context_window": 1, "latency_sla_ms": 1, "cost_per_1k_tokens": cost}))
            .await;
        assert!(r.status == 422, "{cost}: {}", r.text);
    }
    assert_eq!(api.count("endpoints").await, 0);
    assert_eq!(api.count("routing_domains").await, 1);

    // Cursors and limits.
    for uri in [
        "/v1/routing-domains?cursor=garbage",
        "/v1/invoices?cursor=YWJj",
        "/v1/clusters?cursor=",
    ] {
        api.get(uri, k).await.problem(400, "invalid_cursor");
    }
    api.get("/v1/routing-domains?limit=0", k)
        .await
        .problem(400, "invalid_limit");
    api.get("/v1/routing-domains?limit=abc", k)
        .await
        .problem(400, "invalid_query");
    api.get("/v1/routing-domains?bogus=1", k)
        .await
        .problem(400, "invalid_query");
    api.get("/v1/usage?meter=nope", k)
        .await
        .problem(400, "invalid_query");
    // A reversed range is empty, not an error (every schema-valid query is answered).
    let r = api
        .get(
            "/v1/usage?from=2026-01-01T00:00:00Z&to=2025-01-01T00:00:00Z",
            k,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["buckets"], json!([]));
    api.get("/v1/routing-domains/not-a-uuid", k)
        .await
        .problem(404, "not_found");
    api.get("/v1/nowhere", k).await.problem(404, "not_found");
    // Credentials.
    api.raw(Method::GET, "/v1/tenant", None, None, vec![])
        .await
        .problem(401, "unauthenticated");
    api.get("/v1/tenant", "nxk_0123456789abcdef_nope")
        .await
        .problem(401, "unauthenticated");
    let wrong_secret = format!("{}x", t.api_key);
    api.get("/v1/tenant", &wrong_secret)
        .await
        .problem(401, "unauthenticated");
}

#[sqlx::test]
async fn cursor_pagination_walks_everything_once(pool: PgPool) {
    let api = Api::new(pool);
    let t = api.tenant("t").await;
    for i in 0..7 {
        let r = api
            .post(
                "/v1/clusters",
                &t.api_key,
                json!({"name": format!("c{i}"), "region": "r"}),
            )
            .await;
        assert_eq!(r.status, 201);
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/clusters?limit=3".to_owned();
    loop {
        let r = api.get(&uri, &t.api_key).await;
        assert_eq!(r.status, 200, "{}", r.text);
        for c in r.body["data"].as_array().unwrap() {
            seen.push(c["name"].as_str().unwrap().to_owned());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/clusters?limit=3&cursor={c}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, (0..7).map(|i| format!("c{i}")).collect::<Vec<_>>());
}

#[sqlx::test]
async fn ingestion_is_exactly_once_under_retries(pool: PgPool) {
    let api = Api::new(pool.clone());
    let t = api.tenant("t").await;
    let ts = now();
    let batch: Vec<Value> = (0..500)
        .map(|i| event(&format!("evt-{i}"), "traffic_bytes", 1000 + i, &ts))
        .collect();
    let expected: u64 = (0..500).map(|i| 1000 + i).sum();
    let body = json!({"events": batch});
    // The same batch five times, concurrently (a client retrying on timeouts), then once more.
    let mut handles = Vec::new();
    for _ in 0..5 {
        let app = api.app.clone();
        let body = body.clone();
        let key = t.api_key.clone();
        handles.push(tokio::spawn(async move {
            let api = Api {
                app,
                pool: sqlx::PgPool::connect_lazy("postgres://unused").unwrap(),
            };
            api.post("/v1/usage/events", &key, body).await.body
        }));
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for h in handles {
        let b = h.await.unwrap();
        accepted += b["accepted"].as_u64().unwrap();
        duplicates += b["duplicates"].as_u64().unwrap();
    }
    assert_eq!(accepted, 500);
    assert_eq!(duplicates, 2000);
    let again = api.post("/v1/usage/events", &t.api_key, body).await;
    assert_eq!(
        (
            again.body["accepted"].as_u64(),
            again.body["duplicates"].as_u64()
        ),
        (Some(0), Some(500))
    );
    assert_eq!(again.body["results"][0]["outcome"], "duplicate");
    // Duplicates inside one batch count once.
    let r = api
        .post("/v1/usage/events", &t.api_key, json!({"events": [event("dup", "mics_issued", 2, &ts), event("dup", "mics_issued", 2, &ts)]}))
        .await;
    assert_eq!(
        (r.body["accepted"].as_u64(), r.body["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    // Reusing a key for different content is a conflict: reported, not stored, not billed.
    let mut changed = event("evt-0", "traffic_bytes", 999_999, &ts);
    changed["dimensions"] = json!({"domain": "other"});
    let r = api
        .post("/v1/usage/events", &t.api_key, json!({"events": [changed]}))
        .await;
    assert_eq!(r.body["conflicts"], 1, "{}", r.text);
    assert_eq!(r.body["results"][0]["outcome"], "conflict");
    // The rollup agrees with the events, and the query API with both.
    let (events, rolled): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events WHERE meter = 'traffic_bytes'),
                (SELECT coalesce(sum(quantity), 0)::int8 FROM usage_hourly WHERE meter = 'traffic_bytes')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(u64::try_from(rolled).unwrap(), expected);
    assert_eq!(events, 500);
    let q = api.get("/v1/usage?meter=traffic_bytes", &t.api_key).await;
    let total: u64 = q.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["quantity"].as_u64().unwrap())
        .sum();
    assert_eq!(total, expected);
    let n: i64 = q.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["events"].as_i64().unwrap())
        .sum();
    assert_eq!(n, 500);
}

#[sqlx::test]
async fn late_and_future_events(pool: PgPool) {
    let api = Api::new(pool);
    let t = api.tenant("t").await;
    let at = |d: Duration| (Utc::now() + d).to_rfc3339();
    let r = api
        .post(
            "/v1/usage/events",
            &t.api_key,
            json!({"events": [
                event("late-ok", "cluster_hours", 1, &at(Duration::hours(-47))),
                event("too-old", "cluster_hours", 1, &at(Duration::hours(-49))),
                event("future", "cluster_hours", 1, &at(Duration::minutes(10))),
                event("now", "cluster_hours", 1, &at(Duration::zero())),
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.body["accepted"].as_u64(), r.body["rejected"].as_u64()),
        (Some(2), Some(2))
    );
    let res = &r.body["results"];
    assert_eq!(res[0]["outcome"], "accepted");
    assert_eq!(res[1]["reason"], "too_old");
    assert_eq!(res[2]["reason"], "in_future");
    assert_eq!(api.count("usage_events").await, 2);
    // An event that breaks the document's field rules makes the whole batch invalid.
    for bad in [
        event("", "cluster_hours", 1, &at(Duration::zero())),
        event("nul\u{0}", "cluster_hours", 1, &at(Duration::zero())),
        json!({"meter": "cluster_hours", "quantity": 9223372036854775808_u64,
               "timestamp": at(Duration::zero()), "idempotency_key": "big"}),
    ] {
        let r = api
            .post(
                "/v1/usage/events",
                &t.api_key,
                json!({"events": [event("fine", "cluster_hours", 1, &at(Duration::zero())), bad]}),
            )
            .await;
        assert_eq!(r.status, 422, "{}", r.text);
    }
    assert_eq!(api.count("usage_events").await, 2);
    // Integral numbers in any JSON form are integers, as JSON Schema counts them.
    let r = api
        .post(
            "/v1/usage/events",
            &t.api_key,
            json!({"events": [{"meter": "cluster_hours", "quantity": 3.0,
                   "timestamp": at(Duration::zero()), "idempotency_key": "float"}]}),
        )
        .await;
    assert_eq!(r.body["accepted"], 1, "{}", r.text);
    // Claims that PostgreSQL could not give back are refused up front (found by Schemathesis).
    api.post(
        "/v1/model-identities",
        &t.api_key,
        json!({"name": "m", "model_digest": "sha256:00112233445566778899",
               "claims": {"x": -1.7976931348623157e308}}),
    )
    .await
    .problem(422, "validation_failed");
    // A JSON array is not an object, even with the fields in order.
    api.post("/v1/routing-domains", &t.api_key, json!(["name", ""]))
        .await
        .problem(422, "invalid_body");
}

#[sqlx::test]
async fn invoices_add_up_and_never_change_once_finalized(pool: PgPool) {
    let api = Api::new(pool.clone());
    let t = api.tenant("t").await;
    let k = t.api_key.as_str();
    let ts = now();
    // 1,500 GB of traffic and 150 MICs under the standard plan:
    // traffic 1000 × $0.08 + 500 × $0.05 = $105; MICs 100 × $5 + 50 × $3.50 = $675.
    let r = api
        .post(
            "/v1/usage/events",
            k,
            json!({"events": [
                event("t1", "traffic_bytes", 1_000_000_000_000, &ts),
                event("t2", "traffic_bytes", 500_000_000_000, &ts),
                event("m1", "mics_issued", 150, &ts),
            ]}),
        )
        .await;
    assert_eq!(r.body["accepted"], 3, "{}", r.text);
    let period = Utc::now().format("%Y-%m").to_string();
    let d = api
        .post("/v1/invoices/generate", k, json!({"period": period}))
        .await;
    assert_eq!(d.status, 201, "{}", d.text);
    assert_eq!(d.body["status"], "draft");
    assert_eq!(d.body["total_micros"], 780_000_000);
    assert_eq!(d.body["total"], "780.000000");
    let lines = d.body["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 4);
    let sum: i64 = lines
        .iter()
        .map(|l| l["amount_micros"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 780_000_000);
    let id = d.body["id"].as_str().unwrap().to_owned();

    // More usage, redraft: the draft follows the usage.
    api.post(
        "/v1/usage/events",
        k,
        json!({"events": [event("m2", "mics_issued", 1, &ts)]}),
    )
    .await;
    let d2 = api
        .post("/v1/invoices/generate", k, json!({"period": period}))
        .await;
    assert_eq!(d2.body["id"], id.as_str());
    assert_eq!(d2.body["total_micros"], 783_500_000);

    let f = api
        .post(&format!("/v1/invoices/{id}/finalize"), k, json!({}))
        .await;
    assert_eq!(f.status, 200, "{}", f.text);
    assert_eq!(f.body["status"], "finalized");
    assert_eq!(f.body["total_micros"], 783_500_000);
    let frozen = api.get(&format!("/v1/invoices/{id}"), k).await.body;

    // The API refuses to change it.
    api.post(&format!("/v1/invoices/{id}/finalize"), k, json!({}))
        .await
        .problem(409, "invoice_finalized");
    api.post("/v1/invoices/generate", k, json!({"period": period}))
        .await
        .problem(409, "invoice_finalized");
    // Usage for the month is refused from now on, so the invoice stays equal to the rated usage.
    let late = api
        .post(
            "/v1/usage/events",
            k,
            json!({"events": [event("m3", "mics_issued", 1, &now())]}),
        )
        .await;
    assert_eq!(
        late.body["results"][0]["reason"], "period_closed",
        "{}",
        late.text
    );
    // The database refuses too, whoever asks.
    for sql in [
        "UPDATE invoices SET total_micros = 1",
        "DELETE FROM invoices",
        "UPDATE invoice_lines SET amount_micros = 1",
        "DELETE FROM invoice_lines",
    ] {
        assert!(
            sqlx::query(sql).execute(&pool).await.is_err(),
            "{sql} succeeded"
        );
    }
    let inv_id: Uuid = id.parse().unwrap();
    let ins = sqlx::query(
        "INSERT INTO invoice_lines (id, invoice_id, tenant_id, position, meter, description, quantity, unit, unit_price_micros, amount_micros)
         VALUES ($1, $2, $3, 99, 'mics_issued', 'x', 1, 'MIC', 1, 1)",
    )
    .bind(Uuid::new_v4())
    .bind(inv_id)
    .bind(t.tenant_id)
    .execute(&pool)
    .await;
    assert!(ins.is_err());
    assert_eq!(api.get(&format!("/v1/invoices/{id}"), k).await.body, frozen);
    let list = api.get("/v1/invoices", k).await;
    assert_eq!(list.body["data"][0]["status"], "finalized");
}

#[sqlx::test]
async fn roles_and_scopes_are_enforced(pool: PgPool) {
    let api = Api::new(pool);
    let t = api.tenant("t").await;
    let owner = t.api_key.as_str();
    let viewer = api
        .user_key(owner, "v@t.example", "viewer", &["read"])
        .await;
    let member = api
        .user_key(owner, "m@t.example", "member", &["read", "write"])
        .await;
    let admin = api
        .user_key(owner, "a@t.example", "admin", &["read", "write", "admin"])
        .await;
    let owner_ro = api
        .user_key(owner, "o2@t.example", "owner", &["read"])
        .await;

    // Viewer: reads, never writes.
    assert_eq!(api.get("/v1/routing-domains", &viewer).await.status, 200);
    api.post("/v1/routing-domains", &viewer, json!({"name": "x"}))
        .await
        .problem(403, "forbidden");
    api.post(
        "/v1/usage/events",
        &viewer,
        json!({"events": [event("a", "mics_issued", 1, &now())]}),
    )
    .await
    .problem(403, "forbidden");
    api.get("/v1/users", &viewer)
        .await
        .problem(403, "forbidden");
    // Member: writes resources, cannot manage users, invoices or see the audit log.
    assert_eq!(
        api.post("/v1/routing-domains", &member, json!({"name": "x"}))
            .await
            .status,
        201
    );
    api.post(
        "/v1/users",
        &member,
        json!({"email": "z@t.example", "role": "viewer"}),
    )
    .await
    .problem(403, "forbidden");
    api.post(
        "/v1/invoices/generate",
        &member,
        json!({"period": "2026-01"}),
    )
    .await
    .problem(403, "forbidden");
    api.get("/v1/audit-events", &member)
        .await
        .problem(403, "forbidden");
    // Admin: manages users but cannot mint an owner or change the plan.
    api.post(
        "/v1/users",
        &admin,
        json!({"email": "o3@t.example", "role": "owner"}),
    )
    .await
    .problem(403, "forbidden");
    assert_eq!(
        api.post(
            "/v1/users",
            &admin,
            json!({"email": "m2@t.example", "role": "member"})
        )
        .await
        .status,
        201
    );
    api.call(
        Method::PUT,
        "/v1/tenant/plan",
        &admin,
        Some(json!({"plan_id": "00000000-0000-4000-8000-000000000001"})),
    )
    .await
    .problem(403, "forbidden");
    // Owner with a read-only key: the scope limits it.
    api.post("/v1/routing-domains", &owner_ro, json!({"name": "y"}))
        .await
        .problem(403, "forbidden");
    // A key cannot grant scopes it lacks.
    api.post(
        "/v1/api-keys",
        &member,
        json!({"name": "k", "scopes": ["admin"]}),
    )
    .await
    .problem(403, "forbidden");
    // Tenant keys cannot use operator routes; the operator cannot act inside a tenant.
    api.post(
        "/v1/tenants",
        owner,
        json!({"name": "n", "slug": "n", "owner_email": "a@b.example"}),
    )
    .await
    .problem(403, "forbidden");
    api.get("/v1/routing-domains", OPERATOR)
        .await
        .problem(403, "forbidden");
    let created = api
        .post(
            "/v1/tenants",
            OPERATOR,
            json!({"name": "n", "slug": "n", "owner_email": "a@b.example"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(
        api.get("/v1/tenant", created.body["api_key"].as_str().unwrap())
            .await
            .status,
        200
    );
    // The owner changes the plan; the audit log has it all.
    let p = api
        .call(
            Method::PUT,
            "/v1/tenant/plan",
            owner,
            Some(json!({"plan_id": "00000000-0000-4000-8000-000000000001"})),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    let audit = api.get("/v1/audit-events?limit=100", &admin).await;
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "tenant.create",
        "user.create",
        "api_key.create",
        "routing_domain.create",
        "tenant.set_plan",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[sqlx::test]
async fn audit_log_is_append_only(pool: PgPool) {
    let api = Api::new(pool.clone());
    api.tenant("t").await;
    assert!(api.count("audit_log").await > 0);
    assert!(
        sqlx::query("UPDATE audit_log SET action = 'x'")
            .execute(&pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("TRUNCATE audit_log")
            .execute(&pool)
            .await
            .is_err()
    );
}

#[sqlx::test]
async fn keys_expire_and_revoke(pool: PgPool) {
    let api = Api::new(pool);
    let t = api.tenant("t").await;
    let owner = t.api_key.as_str();
    let k = api
        .post(
            "/v1/api-keys",
            owner,
            json!({"name": "short", "scopes": ["read"], "expires_in_seconds": 60}),
        )
        .await;
    assert_eq!(k.status, 201, "{}", k.text);
    let expires: chrono::DateTime<Utc> = k.body["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (expires - Utc::now() - Duration::seconds(60))
            .num_seconds()
            .abs()
            <= 5
    );
    let short = k.body["api_key"].as_str().unwrap().to_owned();
    // Stored as prefix + hash only: the secret is nowhere in the database.
    let listed = api.get("/v1/api-keys", owner).await;
    assert!(!listed.text.contains(&short));
    assert_eq!(api.get("/v1/tenant", &short).await.status, 200);
    // A minute later (moved in the database rather than waited for), the key is refused.
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(Uuid::parse_str(k.body["id"].as_str().unwrap()).unwrap())
        .execute(&api.pool)
        .await
        .unwrap();
    api.get("/v1/tenant", &short)
        .await
        .problem(401, "unauthenticated");

    let k = api
        .post(
            "/v1/api-keys",
            owner,
            json!({"name": "r", "scopes": ["read", "write"]}),
        )
        .await;
    let key = k.body["api_key"].as_str().unwrap().to_owned();
    let id = k.body["id"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/v1/tenant", &key).await.status, 200);
    let r = api
        .call(Method::DELETE, &format!("/v1/api-keys/{id}"), owner, None)
        .await;
    assert_eq!(r.status, 204);
    api.get("/v1/tenant", &key)
        .await
        .problem(401, "unauthenticated");
    api.post(
        "/v1/api-keys",
        owner,
        json!({"name": "p", "scopes": ["read"], "expires_in_seconds": 59}),
    )
    .await
    .problem(422, "validation_failed");
}

#[sqlx::test]
async fn per_key_rate_limit(pool: PgPool) {
    let config = nexus_cloud::Config {
        rate_per_sec: 1,
        burst: 2,
        ..common::config()
    };
    let api = Api::with_config(pool, config);
    let t = api.tenant("t").await;
    assert_eq!(api.get("/v1/tenant", &t.api_key).await.status, 200);
    assert_eq!(api.get("/v1/tenant", &t.api_key).await.status, 200);
    let r = api.get("/v1/tenant", &t.api_key).await;
    r.problem(429, "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
}

#[sqlx::test]
async fn service_endpoints(pool: PgPool) {
    let api = Api::new(pool);
    assert_eq!(
        api.raw(Method::GET, "/healthz", None, None, vec![])
            .await
            .status,
        200
    );
    assert_eq!(
        api.raw(Method::GET, "/readyz", None, None, vec![])
            .await
            .status,
        200
    );
    api.raw(Method::DELETE, "/v1/usage", None, None, vec![])
        .await
        .problem(405, "method_not_allowed");
    api.raw(Method::GET, "/v1/nope", None, None, vec![])
        .await
        .problem(404, "not_found");
    api.raw(Method::GET, "/nope", None, None, vec![])
        .await
        .problem(404, "not_found");
    let m = api.raw(Method::GET, "/metrics", None, None, vec![]).await;
    assert!(
        m.text.contains("nexus_cloud_http_requests_total")
            && m.text
                .contains("nexus_cloud_failures_total{error=\"not_found\"}"),
        "{}",
        m.text
    );
    let t = api.tenant("t").await;
    let mi = api
        .post(
            "/v1/model-identities",
            &t.api_key,
            json!({"name": "m", "model_digest": "sha256:00112233445566778899"}),
        )
        .await;
    let id = mi.body["id"].as_str().unwrap();
    api.post(
        &format!("/v1/model-identities/{id}/certificates"),
        &t.api_key,
        json!({"csr_der_base64": "MAEA", "version": "1", "attestation": {
            "architecture_hash": "00".repeat(32), "provenance": {"publisher": "p"},
            "capabilities": {"context_window": 1}}}),
    )
    .await
    .problem(503, "ca_not_configured");
}

#[sqlx::test]
async fn seed_demo_gives_a_working_key(pool: PgPool) {
    let demo = nexus_cloud::seed_demo(&pool).await.unwrap();
    let api = Api::new(pool);
    let r = api.get("/v1/routing-domains", &demo.api_key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["data"][0]["id"], demo.routing_domain_id.to_string());
}
