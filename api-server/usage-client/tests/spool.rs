//! The usage spool against the real cloud API and PostgreSQL: a batch whose acknowledgement is
//! lost is billed once; usage spooled by a process that is then SIGKILLed is sent after restart,
//! billed once, even when the process also died between the API's answer and the file's removal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;

use chrono::Utc;
use nexus_cloud::{AppState, Config};
use nexus_usage_client::{Meter, Reporter, Spool, UsageEvent};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "usage-test-token-0123";

struct Server {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn server(pool: &PgPool) -> Server {
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
    Server { base, stop, task }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// (events stored, their summed quantity) for a tenant slug, straight from the tables billing
/// reads: the raw events and the hourly rollup invoices are rated from.
async fn billed(pool: &PgPool, slug: &str) -> (i64, i64, i64) {
    let (events, sum): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(quantity)::int8 FROM usage_events e JOIN tenants t ON t.id = e.tenant_id
          WHERE t.slug = $1",
    )
    .bind(slug)
    .fetch_one(pool)
    .await
    .unwrap();
    let rolled: Option<i64> = sqlx::query_scalar(
        "SELECT sum(quantity)::int8 FROM usage_hourly h JOIN tenants t ON t.id = h.tenant_id
          WHERE t.slug = $1",
    )
    .bind(slug)
    .fetch_one(pool)
    .await
    .unwrap();
    (events, sum.unwrap_or(0), rolled.unwrap_or(0))
}

/// A TCP proxy in front of the API that forwards its first connection's request, waits for the
/// first byte of the answer (the usage is committed by then) and closes the connection without
/// passing the answer on: a lost acknowledgement. Later connections pass through.
async fn ack_losing_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = upstream.trim_start_matches("http://").to_owned();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let mut server = TcpStream::connect(&upstream).await.unwrap();
            if first {
                first = false;
                tokio::spawn(async move {
                    let (mut cr, _cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let forward = async {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = cr.read(&mut buf).await.unwrap_or(0);
                            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                    };
                    let answered = async {
                        let mut b = [0u8; 1];
                        let _ = sr.read(&mut b).await;
                    };
                    tokio::select! { _ = forward => {}, _ = answered => {} }
                    // Both sockets drop here: the client never sees the answer.
                });
            } else {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        }
    });
    format!("http://{addr}")
}

fn events(tenant: &str, n: usize, tag: &str) -> Vec<UsageEvent> {
    let now = Utc::now();
    (0..n)
        .map(|i| {
            UsageEvent::new(
                tenant,
                Meter::TrafficBytes,
                1000 + i as u64,
                now,
                format!("{tag}-{i}"),
            )
            .with_dimension("domain", "prod")
            .with_dimension("delivery_mode", "stream")
        })
        .collect()
}

#[sqlx::test(migrator = "nexus_cloud::MIGRATOR")]
async fn lost_acknowledgement_is_billed_once(pool: PgPool) {
    nexus_cloud::create_tenant(&pool, "Acme", "acme", "o@acme.example")
        .await
        .unwrap();
    let api = server(&pool).await;
    let proxy = ack_losing_proxy(api.base.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let batch = events("acme", 3, "lost-ack");
    let expected: i64 = batch.iter().map(|e| e.quantity as i64).sum();
    spool.append(&batch).unwrap();

    let reporter = Reporter::new(
        spool.clone(),
        nexus_usage_client::Config::new(&proxy, USAGE),
    )
    .unwrap();
    // The API stored the batch, but the answer never arrives: the batch stays spooled.
    let err = reporter.send_pending().await.unwrap_err();
    assert_eq!(err.metric_label(), "transport", "{err}");
    assert_eq!(billed(&pool, "acme").await, (3, expected, expected));
    assert_eq!(spool.pending_events().unwrap(), 3);

    // The retry is acknowledged as duplicates: stored and billed once.
    let r = reporter.send_pending().await.unwrap();
    assert_eq!((r.accepted, r.duplicates), (0, 3));
    assert_eq!(billed(&pool, "acme").await, (3, expected, expected));
    assert!(spool.pending().unwrap().is_empty());
    api.stop().await;
}

/// Runs the reporter on `dir` until its spool is empty, off the runtime the API serves on.
async fn restart(dir: &std::path::Path, base: &str) -> std::process::Output {
    let (dir, base) = (dir.to_owned(), base.to_owned());
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_nexus-usage-report"))
            .args(["--spool", dir.to_str().unwrap(), "--endpoint", &base])
            .args(["--token", USAGE, "--no-stdin", "--until-empty"])
            .stderr(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[sqlx::test(migrator = "nexus_cloud::MIGRATOR")]
async fn usage_of_a_killed_process_is_sent_after_restart_once(pool: PgPool) {
    nexus_cloud::create_tenant(&pool, "Acme", "acme", "o@acme.example")
        .await
        .unwrap();
    nexus_cloud::create_tenant(&pool, "Beta", "beta", "o@beta.example")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_nexus-usage-report");
    // The cloud is down: nothing listens on this port.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut batch = events("acme", 5, "killed");
    batch.extend(events("beta", 2, "killed"));
    batch.push(UsageEvent::mic_issued("acme", "0a0b0c", Utc::now()));
    let mut child = Command::new(bin)
        .args(["--spool", dir.path().to_str().unwrap(), "--endpoint", &down])
        .args(["--token", USAGE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for e in &batch {
            writeln!(stdin, "{}", serde_json::to_string(e).unwrap()).unwrap();
        }
    }
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "spooled 8");
    // SIGKILL while it retries the unreachable API: no chance to clean up or flush anything.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(billed(&pool, "acme").await.0, 0);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.pending_events().unwrap(), 8);
    // Keep a copy of the spooled file, to replay a death between the API's answer and unlink.
    let files = spool.pending().unwrap();
    let copies: Vec<(std::path::PathBuf, Vec<u8>)> = files
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();

    // Restarted with the cloud up: it sends what the killed process spooled, then exits.
    let api = server(&pool).await;
    let out = restart(dir.path(), &api.base).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sent: 8 accepted, 0 duplicates, 0 conflicts, 0 rejected"
    );
    let acme_bytes: i64 = (0..5).map(|i| 1000 + i).sum();
    let beta_bytes: i64 = (0..2).map(|i| 1000 + i).sum();
    assert_eq!(
        billed(&pool, "acme").await,
        (6, acme_bytes + 1, acme_bytes + 1)
    );
    assert_eq!(billed(&pool, "beta").await, (2, beta_bytes, beta_bytes));
    assert!(spool.pending().unwrap().is_empty());

    // As if it had died after the API answered but before the file was removed: the file is
    // back, is sent again on the next start, and bills nothing more.
    for (p, bytes) in &copies {
        std::fs::write(p, bytes).unwrap();
    }
    let out = restart(dir.path(), &api.base).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sent: 0 accepted, 8 duplicates, 0 conflicts, 0 rejected"
    );
    assert_eq!(
        billed(&pool, "acme").await,
        (6, acme_bytes + 1, acme_bytes + 1)
    );
    assert_eq!(billed(&pool, "beta").await, (2, beta_bytes, beta_bytes));
    api.stop().await;
}

/// The long-running reporter a component embeds: it sends what is appended while it runs
/// (woken by the append, not by its poll interval, which is an hour here).
#[sqlx::test(migrator = "nexus_cloud::MIGRATOR")]
async fn running_reporter_sends_appends(pool: PgPool) {
    nexus_cloud::create_tenant(&pool, "Acme", "acme", "o@acme.example")
        .await
        .unwrap();
    let api = server(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path()).unwrap());
    let reporter = Reporter::new(
        spool.clone(),
        nexus_usage_client::Config::new(&api.base, USAGE),
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reporter.clone().run(
        std::time::Duration::from_secs(3600),
        async move {
            let _ = stopped.await;
        },
    ));
    let t = Utc::now() - chrono::Duration::minutes(1);
    let batch = vec![
        UsageEvent::traffic("acme", "node-1", "prod", "stream", t, 4096),
        UsageEvent::cluster_hours("acme", "gpu-east", t, 1),
    ];
    let s = spool.clone();
    tokio::task::spawn_blocking(move || s.append(&batch))
        .await
        .unwrap()
        .unwrap();
    // Wait for delivery (bounded: a hang fails the test rather than blocking CI).
    let mut delivered = false;
    for _ in 0..240 {
        if billed(&pool, "acme").await.0 == 2 {
            delivered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        delivered,
        "the running reporter delivered the appended usage"
    );
    assert_eq!(billed(&pool, "acme").await, (2, 4097, 4097));
    assert_eq!(reporter.totals().accepted, 2);
    let _ = stop.send(());
    task.await.unwrap();
    assert!(spool.pending().unwrap().is_empty());
    api.stop().await;
}
