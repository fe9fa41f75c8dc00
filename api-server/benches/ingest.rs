//! Usage-ingestion throughput against a bare bulk insert of the same rows, in one run.
//!
//! `cargo bench -p nexus-cloud --bench ingest` (needs PostgreSQL at `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; makes and drops its own database).
//! `NEXUS_BENCH_EVENTS` (default 200000), `NEXUS_BENCH_CONCURRENCY` (default 4).
//!
//! Measured, for the same events (batches of 1,000):
//! 1. `metering::ingest` — validation, exactly-once insert, hourly rollup, one transaction a batch;
//! 2. the same through the HTTP router in process (JSON, auth, rate limit, metrics);
//! 3. a retry of every batch (all duplicates);
//! 4. baselines into a plain table without keys: multi-row `INSERT … UNNEST`, and `COPY`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, header};
use chrono::Utc;
use http_body_util::BodyExt as _;
use nexus_cloud::metering::{self, Meter, UsageEvent, Window};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgPool};
use tower::ServiceExt as _;
use uuid::Uuid;

fn events(n: usize, tag: &str) -> Vec<UsageEvent> {
    let now = Utc::now();
    (0..n)
        .map(|i| UsageEvent {
            meter: [Meter::TrafficBytes, Meter::MicsIssued, Meter::ClusterHours][i % 3],
            quantity: 1000 + i as u64,
            timestamp: now - chrono::Duration::seconds((i % 7200) as i64),
            dimensions: BTreeMap::from([
                ("domain".to_owned(), format!("d{}", i % 10)),
                ("delivery_mode".to_owned(), "stream".to_owned()),
            ]),
            idempotency_key: format!("{tag}-{i:09}"),
        })
        .collect()
}

async fn run_concurrent<F, Fut>(batches: &[Vec<UsageEvent>], conc: usize, f: F) -> f64
where
    F: Fn(Vec<UsageEvent>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(batches.to_vec()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let q = queue.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = q.lock().await.pop();
                match next {
                    Some(b) => f(b).await,
                    None => break,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed().as_secs_f64()
}

async fn plain_table(pool: &PgPool) {
    pool.execute(
        "DROP TABLE IF EXISTS bench_plain;
         CREATE TABLE bench_plain (tenant_id uuid, idempotency_key text, meter text, quantity int8,
                                   ts timestamptz, dimensions jsonb)",
    )
    .await
    .unwrap();
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = std::env::var("NEXUS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let conc: usize = std::env::var("NEXUS_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let db = format!("nexus_bench_{}", std::process::id());
    let admin = PgPool::connect(&base)
        .await
        .expect("connect to DATABASE_URL");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .unwrap();
    let url = match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{db}"),
        None => panic!("DATABASE_URL has no database path"),
    };
    let pool = PgPoolOptions::new()
        .max_connections(conc as u32 + 2)
        .connect(&url)
        .await
        .unwrap();
    nexus_cloud::migrate(&pool).await.unwrap();
    let tenant = nexus_cloud::create_tenant(&pool, "bench", "bench", "bench@example.com")
        .await
        .unwrap();
    println!("ingest bench: {n} events, batches of 1000, {conc} concurrent writers");

    // 1. Library path.
    let evs = events(n, "lib");
    let batches: Vec<Vec<UsageEvent>> = evs.chunks(1000).map(<[_]>::to_vec).collect();
    let (p, t) = (pool.clone(), tenant.tenant_id);
    let secs = run_concurrent(&batches, conc, move |b| {
        let p = p.clone();
        async move {
            let r = metering::ingest(&p, t, &b, Utc::now(), Window::default())
                .await
                .unwrap();
            assert_eq!(r.accepted, b.len());
        }
    })
    .await;
    let ingest_rate = n as f64 / secs;
    println!(
        "  metering::ingest (exactly-once + rollup) : {:>9.0} events/s  ({secs:.2} s)",
        ingest_rate
    );

    // 3. Retry of everything: all duplicates, nothing billed twice.
    let (p, t) = (pool.clone(), tenant.tenant_id);
    let secs = run_concurrent(&batches, conc, move |b| {
        let p = p.clone();
        async move {
            let r = metering::ingest(&p, t, &b, Utc::now(), Window::default())
                .await
                .unwrap();
            assert_eq!(r.duplicates, b.len());
        }
    })
    .await;
    println!(
        "  retried batches (all duplicates)         : {:>9.0} events/s  ({secs:.2} s)",
        n as f64 / secs
    );
    let (rows, rolled): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events), (SELECT sum(events)::int8 FROM usage_hourly)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((rows as usize, rolled as usize), (n, n), "exactly once");

    // 2. Through the HTTP router (in process, no socket).
    let state = nexus_cloud::AppState::new(
        pool.clone(),
        nexus_cloud::Config {
            rate_per_sec: 0,
            ..nexus_cloud::Config::default()
        },
    );
    let app = nexus_cloud::app(state);
    let http_evs = events(n, "http");
    let http_batches: Vec<Vec<UsageEvent>> = http_evs.chunks(1000).map(<[_]>::to_vec).collect();
    let key = tenant.api_key.clone();
    let secs = run_concurrent(&http_batches, conc, move |b| {
        let app = app.clone();
        let key = key.clone();
        async move {
            let body = serde_json::to_vec(&serde_json::json!({ "events": b })).unwrap();
            let req = Request::post("/v1/usage/events")
                .header(header::AUTHORIZATION, format!("Bearer {key}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let _ = resp.into_body().collect().await.unwrap();
        }
    })
    .await;
    let http_rate = n as f64 / secs;
    println!(
        "  POST /v1/usage/events (in-process HTTP)  : {:>9.0} events/s  ({secs:.2} s)",
        http_rate
    );

    // 4a. Baseline: multi-row INSERT of the same rows into a plain table, same concurrency.
    plain_table(&pool).await;
    let (p, t) = (pool.clone(), tenant.tenant_id);
    let secs = run_concurrent(&batches, conc, move |b| {
        let p = p.clone();
        async move {
            let keys: Vec<&str> = b.iter().map(|e| e.idempotency_key.as_str()).collect();
            let meters: Vec<&str> = b.iter().map(|e| e.meter.as_str()).collect();
            let qty: Vec<i64> = b.iter().map(|e| e.quantity as i64).collect();
            let ts: Vec<_> = b.iter().map(|e| e.timestamp).collect();
            let dims: Vec<String> = b.iter().map(|e| serde_json::to_string(&e.dimensions).unwrap()).collect();
            sqlx::query(
                "INSERT INTO bench_plain SELECT $1, k, m, q, t, d::jsonb
                   FROM UNNEST($2::text[], $3::text[], $4::int8[], $5::timestamptz[], $6::text[]) AS u(k, m, q, t, d)",
            )
            .bind(t)
            .bind(&keys)
            .bind(&meters)
            .bind(&qty)
            .bind(&ts)
            .bind(&dims)
            .execute(&p)
            .await
            .unwrap();
        }
    })
    .await;
    let insert_rate = n as f64 / secs;
    println!(
        "  baseline: plain multi-row INSERT         : {:>9.0} events/s  ({secs:.2} s)",
        insert_rate
    );

    // 4b. Baseline: COPY of the same rows into a plain table (one stream).
    plain_table(&pool).await;
    let mut text = String::with_capacity(n * 120);
    for e in &evs {
        let dims = serde_json::to_string(&e.dimensions)
            .unwrap()
            .replace('\\', "\\\\");
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            tenant.tenant_id,
            e.idempotency_key,
            e.meter.as_str(),
            e.quantity,
            e.timestamp.to_rfc3339(),
            dims
        ));
    }
    let start = Instant::now();
    let mut conn = pool.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw("COPY bench_plain FROM STDIN")
        .await
        .unwrap();
    for chunk in text.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await.unwrap();
    }
    let copied = copy.finish().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(copied as usize, n);
    let copy_rate = n as f64 / secs;
    println!(
        "  baseline: plain COPY                     : {:>9.0} events/s  ({secs:.2} s)",
        copy_rate
    );
    drop(conn);

    println!(
        "  ratio ingest/INSERT = {:.2}, ingest/COPY = {:.2}, HTTP/COPY = {:.2}",
        ingest_rate / insert_rate,
        ingest_rate / copy_rate,
        http_rate / copy_rate
    );
    let _ = Uuid::nil();
    pool.close().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .await
        .unwrap();
}
