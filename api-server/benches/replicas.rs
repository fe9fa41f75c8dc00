//! Usage ingestion over real TCP with one and with two cloud API replicas on one database.
//!
//! `cargo bench -p nexus-cloud --bench replicas` (needs PostgreSQL at `DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; makes and drops its own database).
//! `NEXUS_BENCH_EVENTS` (default 100000 per run), `NEXUS_BENCH_CONCURRENCY` (default 8 clients),
//! `NEXUS_BENCH_TENANTS` (default 4), `NEXUS_BENCH_ROUNDS` (default 3).
//!
//! Each replica is a full server (its own pool of 16 connections, listener, state) with the
//! per-key rate limit on (a high limit, so the shared GCRA UPSERT runs on every request without
//! refusing any). Clients post batches of 1,000 events round-robin over the replicas, as a
//! Service would spread them; half the runs use tenant keys (`POST /v1/usage/events`), half the
//! usage token with events naming their tenants (`POST /v1/system/usage-events`). Every run ends
//! by checking that each event was stored exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use nexus_cloud::{AppState, Config};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor as _, PgPool};

const USAGE_TOKEN: &str = "bench-usage-token";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Replica {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn replica(url: &str) -> Replica {
    let pool = nexus_cloud::connect(url, 16).await.unwrap();
    let config = Config {
        rate_per_sec: 100_000,
        burst: 100_000,
        usage_token: Some(USAGE_TOKEN.into()),
        console_dir: None,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(nexus_cloud::serve(
        listener,
        AppState::new(pool, config),
        async move {
            let _ = rx.await;
        },
    ));
    Replica { base, stop, task }
}

fn event(key: String, tenant: Option<&str>) -> Value {
    let mut e = json!({
        "meter": "traffic_bytes", "quantity": 1500, "timestamp": Utc::now().to_rfc3339(),
        "dimensions": {"domain": "prod", "delivery_mode": "stream"}, "idempotency_key": key,
    });
    if let Some(t) = tenant {
        e["tenant"] = json!(t);
    }
    e
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Posts `n` events in batches of 1,000 from `conc` clients, round-robin over `bases`.
async fn run(
    bases: &[String],
    tenants: &[(String, String)],
    n: usize,
    conc: usize,
    system: bool,
    tag: &str,
) -> Run {
    let http = reqwest::Client::new();
    let batches = n.div_ceil(1000);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (http, next) = (http.clone(), next.clone());
        let (bases, tenants, tag) = (bases.to_vec(), tenants.to_vec(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if b >= batches {
                    return lat;
                }
                let (slug, key) = &tenants[b % tenants.len()];
                let base = &bases[b % bases.len()];
                let events: Vec<Value> = (0..1000)
                    .map(|i| event(format!("{tag}-{b}-{i}"), system.then_some(slug.as_str())))
                    .collect();
                let (path, token) = if system {
                    ("/v1/system/usage-events", USAGE_TOKEN)
                } else {
                    ("/v1/usage/events", key.as_str())
                };
                let t = Instant::now();
                let r = http
                    .post(format!("{base}{path}"))
                    .bearer_auth(token)
                    .json(&json!({ "events": events }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let report: Value = r.json().await.unwrap();
                assert_eq!(report["accepted"], 1000, "{report}");
                lat.push(t.elapsed());
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Run {
        rate: (batches * 1000) as f64 / secs,
        p50: q(0.50),
        p99: q(0.99),
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = env("NEXUS_BENCH_EVENTS", 100_000);
    let conc = env("NEXUS_BENCH_CONCURRENCY", 8);
    let n_tenants = env("NEXUS_BENCH_TENANTS", 4).max(1);
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let db = format!("nexus_bench_replicas_{}", std::process::id());
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
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    nexus_cloud::migrate(&pool).await.unwrap();
    let mut tenants = Vec::new();
    for i in 0..n_tenants {
        let slug = format!("bench{i}");
        let t = nexus_cloud::create_tenant(&pool, &slug, &slug, &format!("o@{slug}.example"))
            .await
            .unwrap();
        tenants.push((slug, t.api_key));
    }
    println!(
        "replica bench: {n} events per run, batches of 1000, {conc} clients, {n_tenants} tenants, \
         {} CPUs",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    // Both replicas run throughout; a one-replica run sends to the first only. Runs alternate
    // (1, 2, 1, 2, …) for NEXUS_BENCH_ROUNDS rounds and each figure is the median, so load from
    // elsewhere on a shared machine falls on both configurations alike.
    let rounds = env("NEXUS_BENCH_ROUNDS", 3).max(1);
    let rs = [replica(&url).await, replica(&url).await];
    let bases: Vec<String> = rs.iter().map(|r| r.base.clone()).collect();
    // Warm up: the first request of each key pays argon2 once per replica.
    let warm = 1000 * 2 * n_tenants;
    let _ = run(&bases, &tenants, warm, conc, false, "warm").await;
    let mut stored = warm;
    let mut results: BTreeMap<(usize, bool), Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for replicas in [1usize, 2] {
            for system in [false, true] {
                let tag = format!("r{round}-{replicas}-{system}");
                let r = run(&bases[..replicas], &tenants, n, conc, system, &tag).await;
                stored += n.div_ceil(1000) * 1000;
                results.entry((replicas, system)).or_default().push(r);
            }
        }
    }
    for ((replicas, system), mut runs) in results {
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let mid = &runs[runs.len() / 2];
        println!(
            "  {replicas} replica{}  {:<28}: median {:>7.0} events/s (min {:>7.0}, max {:>7.0})  \
             batch p50 {:>6.1} ms  p99 {:>6.1} ms",
            if replicas == 1 { " " } else { "s" },
            if system {
                "POST /v1/system/usage-events"
            } else {
                "POST /v1/usage/events"
            },
            mid.rate,
            runs[0].rate,
            runs[runs.len() - 1].rate,
            mid.p50.as_secs_f64() * 1e3,
            mid.p99.as_secs_f64() * 1e3,
        );
    }
    for r in rs {
        let _ = r.stop.send(());
        r.task.await.unwrap().unwrap();
    }
    let (rows, rolled): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM usage_events), (SELECT sum(events)::int8 FROM usage_hourly)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (rows as usize, rolled as usize),
        (stored, stored),
        "exactly once"
    );
    println!("  stored exactly once: {rows} events");
    pool.close().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .await
        .unwrap();
}
