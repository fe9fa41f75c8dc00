//! Two cloud API replicas on one database: each key's rate limit holds across them, because the
//! limiter's state is a row in PostgreSQL (`nexus_cloud::ratelimit`), not process memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use nexus_cloud::ratelimit::{Gcra, RateLimiter};
use nexus_cloud::{AppState, Config};
use rand::{Rng as _, SeedableRng as _};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// One replica: its own pool on the shared database, its own listener, its own state.
struct Replica {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn replica(shared: &PgPool, config: Config) -> Replica {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with((*shared.connect_options()).clone())
        .await
        .unwrap();
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

#[sqlx::test]
async fn two_replicas_share_each_keys_limit(pool: PgPool) {
    const BURST: u32 = 20;
    let config = Config {
        rate_per_sec: 1,
        burst: BURST,
        ..common::config()
    };
    let t = nexus_cloud::create_tenant(&pool, "acme", "acme", "o@acme.example")
        .await
        .unwrap();
    let other = nexus_cloud::create_tenant(&pool, "other", "other", "o@other.example")
        .await
        .unwrap();
    let a = replica(&pool, config.clone()).await;
    let b = replica(&pool, config).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();

    // 2 × burst requests, alternating replicas. Two in-memory limiters would admit them all.
    let started = Instant::now();
    let mut admitted = 0u32;
    let mut refused = Vec::new();
    for i in 0..2 * BURST {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let r = http
            .get(format!("{base}/v1/tenant"))
            .bearer_auth(&t.api_key)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => refused.push(r),
            s => panic!("unexpected status {s}"),
        }
    }
    println!(
        "two replicas: admitted {admitted} of {} requests (burst {BURST}, rate 1/s) in {:?}",
        2 * BURST,
        started.elapsed()
    );
    // The only allowance beyond the burst is what the sustained rate (1/s) refilled meanwhile.
    let refills = u32::try_from(started.elapsed().as_secs()).unwrap() + 1;
    assert!(
        admitted >= BURST && admitted <= BURST + refills,
        "admitted {admitted} of {} (burst {BURST}, refills ≤ {refills})",
        2 * BURST
    );
    assert!(!refused.is_empty());
    for r in refused {
        let retry_after: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "rate_limited");
        assert_eq!(body["status"], 429);
    }
    // Each key has its own allowance: another tenant's key still passes on both replicas.
    for base in [&a.base, &b.base] {
        let r = http
            .get(format!("{base}/v1/tenant"))
            .bearer_auth(&other.api_key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for r in [a, b] {
        let _ = r.stop.send(());
        r.task.await.unwrap().unwrap();
    }
}

/// The SQL statement decides exactly as the pure GCRA model, on a random request sequence with
/// fixed times (the statement takes "now" as a parameter in tests).
#[sqlx::test]
async fn gcra_sql_matches_the_model(pool: PgPool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (rate, burst) in [(1, 1), (10, 3), (100, 200), (7, 5)] {
        let limiter = RateLimiter::new(pool.clone(), rate, burst);
        let g = Gcra::new(rate, burst).unwrap();
        let key = uuid::Uuid::new_v4();
        let mut tat = None;
        let mut now: i64 = 1_750_000_000_000_000;
        let (mut ok, mut no) = (0, 0);
        for _ in 0..400 {
            now += rng.random_range(0..=2 * g.interval_us / i64::from(burst.max(1)) + 1);
            let model = g.decide(tat, now);
            let sql = limiter.check_at_for_tests(key, now).await.unwrap();
            match model {
                Ok(next) => {
                    assert_eq!(sql, Ok(()), "rate {rate} burst {burst} at {now}");
                    tat = Some(next);
                    ok += 1;
                }
                Err(wait) => {
                    assert_eq!(sql, Err(wait), "rate {rate} burst {burst} at {now}");
                    no += 1;
                }
            }
        }
        assert!(ok > 0 && no > 0, "both outcomes exercised: {ok} {no}");
    }
}

/// A `nexus-cloud` process on `url`, killed on drop.
struct Process {
    child: std::process::Child,
    base: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn process(url: &str, rate: u32, burst: u32) -> Process {
    // A free port: bound, read, released for the child.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-cloud"))
        .args(["--database-url", url, "serve", "--no-console"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--rate-limit",
            &rate.to_string(),
            "--rate-burst",
            &burst.to_string(),
        ])
        .env("NEXUS_USAGE_TOKEN", common::USAGE)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let p = Process {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    // Ready within a minute, or the test fails (a bound, not a timing assertion).
    let http = reqwest::Client::new();
    for _ in 0..240 {
        if let Ok(r) = http.get(format!("{}/readyz", p.base)).send().await
            && r.status() == 200
        {
            return p;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("nexus-cloud at {} never became ready", p.base);
}

/// The same across two `nexus-cloud` processes (the binary, its flags and its migrations), with
/// usage reported to both by the usage token: one key's limit holds, each event is stored once.
#[sqlx::test]
async fn two_processes_share_limits_and_usage(pool: PgPool) {
    const BURST: u32 = 10;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = pool.connect_options();
    let url = format!(
        "postgres://{}@{}:{}/{}",
        opts.get_username(),
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap()
    );
    let a = process(&url, 1, BURST).await;
    let b = process(&url, 1, BURST).await;
    let t = nexus_cloud::create_tenant(&pool, "acme", "acme", "o@acme.example")
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut admitted = 0u32;
    for i in 0..2 * BURST {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let r = http
            .get(format!("{base}/v1/tenant"))
            .bearer_auth(&t.api_key)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => admitted += 1,
            429 => assert!(r.headers().contains_key("retry-after")),
            s => panic!("unexpected status {s}"),
        }
    }
    let refills = u32::try_from(started.elapsed().as_secs()).unwrap() + 1;
    assert!(
        admitted >= BURST && admitted <= BURST + refills,
        "two processes admitted {admitted} (burst {BURST}, refills ≤ {refills})"
    );
    // The same system batch to both processes: stored once.
    let batch = serde_json::json!({"events": [{"tenant": "acme", "meter": "traffic_bytes",
        "quantity": 777, "timestamp": common::now(), "idempotency_key": "dp:n1:0"}]});
    let mut accepted = 0;
    for base in [&a.base, &b.base] {
        let r = http
            .post(format!("{base}/v1/system/usage-events"))
            .bearer_auth(common::USAGE)
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let report: serde_json::Value = r.json().await.unwrap();
        accepted += report["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
}
