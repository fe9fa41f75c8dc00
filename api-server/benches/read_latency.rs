//! API read latency under a fixed open-loop load (default 500 requests/s for 20 s) against a
//! real server on a TCP socket. Latency counts from each request's *scheduled* send time, so a
//! stalled server cannot hide its queueing (no coordinated omission).
//!
//! `cargo bench -p nexus-cloud --bench read_latency` (PostgreSQL at `DATABASE_URL`; makes and
//! drops its own database). `NEXUS_BENCH_RATE` (default 500), `NEXUS_BENCH_SECONDS` (default 20).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sqlx::{Executor as _, PgPool};

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rate: u64 = std::env::var("NEXUS_BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let secs: u64 = std::env::var("NEXUS_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let db = format!("nexus_bench_read_{}", std::process::id());
    let admin = PgPool::connect(&base)
        .await
        .expect("connect to DATABASE_URL");
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .unwrap();
    let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    let pool = nexus_cloud::connect(&url, 16).await.unwrap();
    nexus_cloud::migrate(&pool).await.unwrap();
    let t = nexus_cloud::create_tenant(&pool, "bench", "bench", "bench@example.com")
        .await
        .unwrap();

    // Data to read: 50 routing domains and 48 hours of hourly usage.
    for i in 0..50 {
        sqlx::query("INSERT INTO routing_domains (id, tenant_id, name) VALUES ($1, $2, $3)")
            .bind(uuid::Uuid::new_v4())
            .bind(t.tenant_id)
            .bind(format!("d{i}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let now = chrono::Utc::now();
    let events: Vec<_> = (0..2000)
        .map(|i| nexus_cloud::metering::UsageEvent {
            meter: nexus_cloud::metering::Meter::TrafficBytes,
            quantity: 1_000_000,
            timestamp: now - chrono::Duration::minutes(i % (47 * 60)),
            dimensions: Default::default(),
            idempotency_key: format!("e{i}"),
        })
        .collect();
    for b in events.chunks(1000) {
        nexus_cloud::metering::ingest(&pool, t.tenant_id, b, now, Default::default())
            .await
            .unwrap();
    }

    let config = nexus_cloud::Config {
        rate_per_sec: 0,
        ..nexus_cloud::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(nexus_cloud::serve(
        listener,
        nexus_cloud::AppState::new(pool.clone(), config),
        async move {
            let _ = stop_rx.await;
        },
    ));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let uris = [
        format!("http://{addr}/v1/routing-domains?limit=20"),
        format!("http://{addr}/v1/usage?meter=traffic_bytes&granularity=hour"),
        format!("http://{addr}/v1/tenant"),
    ];
    let auth = format!("Bearer {}", t.api_key);
    // Warm up (key verification cache, connections).
    for u in &uris {
        client
            .get(u)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
    }
    println!(
        "read latency: {rate} req/s open loop for {secs} s, GET {{routing-domains, usage, tenant}}"
    );
    let total = rate * secs;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, uri, auth) = (client.clone(), uris[(i % 3) as usize].clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(&uri).header("authorization", auth).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (scheduled.elapsed(), ok)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        let (d, ok) = t.await.unwrap();
        if !ok {
            errors += 1;
        }
        lat.push(d);
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "  {} requests in {wall:.1} s ({:.0} req/s), errors {errors}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        lat.len() as f64 / wall,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    pool.close().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .await
        .unwrap();
}
