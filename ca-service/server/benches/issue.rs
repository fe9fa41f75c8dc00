//! Issuance throughput through the gRPC API with PostgreSQL, against a bare ECDSA P-256
//! signature (ring) as the named peer.
//!
//! ```sh
//! cargo bench -p nexus-ca --bench issue            # DATABASE_URL defaults to the local server
//! NEXUS_CA_BENCH_N=20000 NEXUS_CA_BENCH_CONCURRENCY=256 cargo bench -p nexus-ca --bench issue
//! NEXUS_CA_BENCH_REPLICAS=2 cargo bench -p nexus-ca --bench issue   # two replicas, one database
//! ```
//!
//! With `NEXUS_CA_BENCH_REPLICAS=2` two CA servers (each with its own pool and log writer)
//! share the database, and the clients' connections alternate between them: the log-writer
//! advisory lock serialises their batches.
//!
//! The bench creates a scratch database (`nexus_ca_bench_<pid>`), starts the server in process
//! on 127.0.0.1:0, pre-generates the CSRs, then issues them from concurrent tonic clients
//! (several HTTP/2 connections) and drops the database. Clients, server and PostgreSQL share
//! the machine, so the figure is end-to-end on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nexus_ca::Settings;
use nexus_ca::kek::Kek;
use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::certificate_authority_client::CertificateAuthorityClient;
use nexus_mic::{Attestation, ModelUri};
use sqlx::postgres::PgPoolOptions;
use tonic::Request;
use tonic::transport::Channel;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bare ECDSA P-256 signatures per second over a certificate-sized message on `threads` threads.
fn ecdsa_rate(threads: usize, dur: Duration) -> Result<f64, Box<dyn std::error::Error>> {
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "keygen")?;
    let pkcs8 = Arc::new(pkcs8.as_ref().to_vec());
    let msg = Arc::new(vec![0x5au8; 900]);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (pkcs8, msg) = (Arc::clone(&pkcs8), Arc::clone(&msg));
            std::thread::spawn(move || -> Result<u64, String> {
                let rng = ring::rand::SystemRandom::new();
                let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
                    .map_err(|e| e.to_string())?;
                let start = Instant::now();
                let mut n = 0u64;
                while start.elapsed() < dur {
                    for _ in 0..64 {
                        key.sign(&rng, &msg).map_err(|e| e.to_string())?;
                    }
                    n += 64;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "thread panicked")??;
    }
    Ok(total as f64 / dur.as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects speed.
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = env_usize("NEXUS_CA_BENCH_N", if quick { 200 } else { 20_000 });
    let concurrency = env_usize("NEXUS_CA_BENCH_CONCURRENCY", 256);
    let connections = env_usize("NEXUS_CA_BENCH_CONNECTIONS", 4);
    let replicas = env_usize("NEXUS_CA_BENCH_REPLICAS", 1).max(1);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());

    let db = format!("nexus_ca_bench_{}", std::process::id());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await?;
    let result = run(&url, &db, n, concurrency, connections, replicas, quick).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    result
}

async fn run(
    url: &str,
    db: &str,
    n: usize,
    concurrency: usize,
    connections: usize,
    replicas: usize,
    quick: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
    let kek = Arc::new(Kek::generate()?);
    let mut servers = Vec::new();
    for _ in 0..replicas {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(opts.clone().database(db))
            .await?;
        let settings = Settings::for_tests(Arc::clone(&kek), TOKEN, &["bench"]);
        servers.push(nexus_ca::start(pool, settings).await?);
    }

    let model = ModelUri::new("bench", "coder", "1.0")?;
    let t = Instant::now();
    let csrs: Vec<Vec<u8>> = (0..n + 200)
        .map(|_| nexus_mic::generate_model_key(&model).map(|k| k.csr_der))
        .collect::<Result<_, _>>()?;
    let attestation = Attestation::example().to_der()?;
    eprintln!(
        "pre-generated {} CSRs in {:.1}s",
        csrs.len(),
        t.elapsed().as_secs_f64()
    );

    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let mut clients = Vec::new();
    for i in 0..connections.max(replicas) {
        let ch = Channel::from_shared(format!("http://{}", servers[i % replicas].grpc_addr))?
            .connect()
            .await?;
        let auth = auth.clone();
        clients.push(CertificateAuthorityClient::with_interceptor(
            ch,
            move |mut r: Request<()>| {
                r.metadata_mut().insert("authorization", auth.clone());
                Ok(r)
            },
        ));
    }
    let csrs = Arc::new(csrs);
    let attestation = Arc::new(attestation);
    let next = Arc::new(AtomicUsize::new(0));

    let phase = |count: usize, offset: usize| {
        let next = Arc::clone(&next);
        next.store(0, Ordering::SeqCst);
        let tasks: Vec<_> = (0..concurrency.max(1))
            .map(|i| {
                let mut client = clients[i % clients.len()].clone();
                let (csrs, attestation, next) = (
                    Arc::clone(&csrs),
                    Arc::clone(&attestation),
                    Arc::clone(&next),
                );
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= count {
                            return Ok::<_, tonic::Status>(lat);
                        }
                        let req = pb::IssueRequest {
                            tenant: "bench".into(),
                            request_id: format!("bench-{}", offset + k),
                            csr_der: csrs[offset + k].clone(),
                            model: "coder".into(),
                            version: "1.0".into(),
                            attestation_der: attestation.to_vec(),
                            validity_seconds: 0,
                        };
                        let t = Instant::now();
                        client.issue(req).await?;
                        lat.push(t.elapsed());
                    }
                })
            })
            .collect();
        tasks
    };

    // Warm-up (connections, caches, prepared statements).
    for t in phase(200, 0) {
        t.await??;
    }
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut lat = Vec::with_capacity(n);
    for t in phase(n, 200) {
        lat.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds() - cpu0;
    lat.sort();
    let rate = n as f64 / elapsed.as_secs_f64();

    let sth = servers[0].ca().signed_tree_head().await?;
    assert_eq!(sth.tree_size as usize, n + 200, "every MIC is in the log");
    let metrics = servers[0].ca().metrics().encode();
    for server in servers {
        server.shutdown().await?;
    }

    let dur = Duration::from_millis(if quick { 200 } else { 2000 });
    let sign1 = ecdsa_rate(1, dur)?;
    let sign2 = ecdsa_rate(2, dur)?;
    let mean = |name: &str| {
        let get = |suffix: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("{name}_{suffix} ")))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let count = get("count");
        if count > 0.0 { get("sum") / count } else { 0.0 }
    };
    let mean_batch = mean("nexus_ca_write_batch_size");
    let mean_batch_ms = mean("nexus_ca_write_batch_duration_seconds") * 1e3;
    println!(
        "nexus-ca issuance through gRPC + PostgreSQL ({} cores)",
        num_cpus()
    );
    println!(
        "  MICs issued:        {n} ({concurrency} concurrent clients, {connections} connections, {replicas} replica(s))"
    );
    println!("  wall time:          {:.2} s", elapsed.as_secs_f64());
    println!(
        "  CPU of CA + clients: {:.0} µs per MIC ({:.2} cores busy; PostgreSQL not included)",
        cpu / n as f64 * 1e6,
        cpu / elapsed.as_secs_f64()
    );
    println!("  throughput:         {rate:.0} MICs/s");
    println!(
        "  latency p50/p99:    {:.1} / {:.1} ms",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99)
    );
    println!(
        "  mean DB batch:      {mean_batch:.1} certificates/transaction, {mean_batch_ms:.1} ms (replica 0)"
    );
    println!("  bare ECDSA P-256 sign (ring): {sign1:.0}/s on 1 thread, {sign2:.0}/s on 2");
    println!(
        "  ratio issuance / bare signature: {:.3} (1 thread), {:.3} (2 threads)",
        rate / sign1,
        rate / sign2
    );
    Ok(())
}

/// CPU seconds (user + system) this process has used, from /proc (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
