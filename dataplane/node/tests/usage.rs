//! Every byte a dataplane serves is billed to the caller's tenant, once: the node's per-tenant
//! meter against the real cloud API (in process, over HTTP) and PostgreSQL — through a cloud
//! outage and a restart of the dataplane with usage still in its spool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use nexus_api::{Client, InferRequest};
use nexus_cloud::{AppState, Config};
use nexus_dataplane::{Args, start};
use nexus_stream::testing::TestPki;
use sqlx::PgPool;
use tokio::net::TcpListener;

const USAGE: &str = "usage-test-token-dataplane";

struct Cloud {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn cloud(pool: &PgPool) -> Cloud {
    let config = Config {
        usage_token: Some(USAGE.into()),
        console_dir: None,
        ..Config::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(nexus_cloud::serve(
        listener,
        AppState::new(pool.clone(), config),
        async move {
            let _ = rx.await;
        },
    ));
    Cloud { base, stop, task }
}

impl Cloud {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

fn node(mic: &Path, spool: &Path, name: &str, usage_url: &str) -> Args {
    Args::try_parse_from([
        "nexus-dataplane",
        "--listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0",
        &format!("--mic-dir={}", mic.display()),
        "--demo-model",
        &format!("--node-name={name}"),
        &format!("--usage-url={usage_url}"),
        &format!("--usage-token={USAGE}"),
        &format!("--usage-spool={}", spool.display()),
        "--usage-interval=1",
    ])
    .unwrap()
}

/// Sum of `nexus_dataplane_traffic_bytes` series matching every `want` label.
async fn metered(http: std::net::SocketAddr, want: &[&str]) -> u64 {
    support::sample(http, "nexus_dataplane_traffic_bytes_total", want).await as u64
}

/// (events, summed quantity) of `traffic_bytes` stored for a tenant slug.
async fn billed(pool: &PgPool, slug: &str) -> (i64, i64) {
    let (n, sum): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(quantity)::int8 FROM usage_events e JOIN tenants t ON t.id = e.tenant_id
          WHERE t.slug = $1 AND e.meter = 'traffic_bytes'",
    )
    .bind(slug)
    .fetch_one(pool)
    .await
    .unwrap();
    (n, sum.unwrap_or(0))
}

async fn wait_billed(pool: &PgPool, slug: &str, bytes: i64) -> (i64, i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let b = billed(pool, slug).await;
        if b.1 >= bytes || tokio::time::Instant::now() > deadline {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn call(client: &Client) {
    let r = client
        .infer(&InferRequest {
            model: String::new(),
            prompt: "write a function that adds two numbers".into(),
            max_tokens: 16,
        })
        .await
        .unwrap();
    assert!(!r.text.is_empty());
}

#[sqlx::test(migrator = "nexus_cloud::MIGRATOR")]
async fn served_traffic_is_billed_to_the_callers_tenant_once(pool: PgPool) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let acme = nexus_cloud::create_tenant(&pool, "acme", "acme", "owner@acme.example")
        .await
        .unwrap();
    nexus_cloud::create_tenant(&pool, "beta", "beta", "owner@beta.example")
        .await
        .unwrap();
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server_mic, acme_mic, beta_mic) = (
        dir.path().join("server"),
        dir.path().join("acme"),
        dir.path().join("beta"),
    );
    let spool = dir.path().join("spool");
    pki.issue("nexus://beta/coder@1.0.0")
        .unwrap()
        .write_dir(&server_mic)
        .unwrap();
    pki.issue("nexus://acme/caller@1.0.0")
        .unwrap()
        .write_dir(&acme_mic)
        .unwrap();
    pki.issue("nexus://beta/caller@1.0.0")
        .unwrap()
        .write_dir(&beta_mic)
        .unwrap();

    let api = cloud(&pool).await;
    let a = start(&node(&server_mic, &spool, "node-a", &api.base))
        .await
        .unwrap();

    // A routed call of acme and a direct one of beta, to a node whose own MIC is beta's: each
    // caller's tenant pays for its own traffic, under the domain it named.
    let acme_client = Client::connect_dir_in(&acme_mic, a.udp, "default/demo")
        .await
        .unwrap();
    call(&acme_client).await;
    let beta_client = Client::connect_dir(&beta_mic, a.udp).await.unwrap();
    call(&beta_client).await;

    let acme_bytes = metered(a.http, &["tenant=\"acme\""]).await;
    assert!(acme_bytes > 0);
    assert_eq!(
        acme_bytes,
        metered(a.http, &["tenant=\"acme\"", "domain=\"default/demo\""]).await,
        "acme's traffic is all under the domain it named"
    );
    assert!(
        metered(
            a.http,
            &[
                "tenant=\"acme\"",
                "mode=\"reliable_ordered\"",
                "direction=\"received\""
            ]
        )
        .await
            > 0
    );
    let beta_bytes = metered(a.http, &["tenant=\"beta\"", "domain=\"-\""]).await;
    assert!(beta_bytes > 0);

    // Billed within seconds, exactly what /metrics counted.
    let (_, acme_billed) = wait_billed(&pool, "acme", acme_bytes as i64).await;
    assert_eq!(acme_billed, acme_bytes as i64);
    let (_, beta_billed) = wait_billed(&pool, "beta", beta_bytes as i64).await;
    assert_eq!(beta_billed, beta_bytes as i64);

    // The cloud API goes away; acme calls again; the node stops (SIGTERM path) with that
    // usage undeliverable: it stays in the spool.
    api.stop().await;
    call(&acme_client).await;
    drop(acme_client);
    drop(beta_client);
    a.drain(Duration::from_millis(500)).await;
    let acme_total = metered(a.http, &["tenant=\"acme\""]).await;
    assert!(acme_total > acme_bytes);
    let pending = nexus_usage_client::Spool::open(&spool)
        .unwrap()
        .pending_events()
        .unwrap();
    assert!(pending > 0, "the outage's usage waits in the spool");
    assert_eq!(billed(&pool, "acme").await.1, acme_bytes as i64);

    // The cloud API is back and the node restarts on the same spool: the usage is sent,
    // once.
    let api = cloud(&pool).await;
    let b = start(&node(&server_mic, &spool, "node-a", &api.base))
        .await
        .unwrap();
    let (_, after) = wait_billed(&pool, "acme", acme_total as i64).await;
    assert_eq!(after, acme_total as i64, "billed once, nothing lost");
    assert_eq!(billed(&pool, "beta").await.1, beta_bytes as i64);

    // The tenant's draft invoice is rated from the same usage.
    let preview: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/invoices/preview", api.base))
        .bearer_auth(&acme.api_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let invoiced: i64 = preview["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["meter"] == "traffic_bytes")
        .map(|l| l["quantity"].as_i64().unwrap())
        .sum();
    assert_eq!(invoiced, acme_total as i64, "{preview}");

    b.drain(Duration::from_millis(200)).await;
    api.stop().await;
}
