//! Two real `nexus-ca` processes on one PostgreSQL database: one log writer at a time (the
//! advisory lock `LOG_WRITER_LOCK`, taken per batch transaction), the survivor carrying on when
//! the other is SIGKILLed in the middle of issuing, and the Merkle log consistent across it.
//!
//! The database is created here with a unique name and dropped at the end; the processes are
//! the binary Cargo built for this package (`CARGO_BIN_EXE_nexus-ca`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nexus_ca::merkle;
use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::certificate_authority_client::CertificateAuthorityClient;
use nexus_mic::{Attestation, ModelUri};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type AuthFn = fn(Request<()>) -> Result<Request<()>, Status>;
type Client = CertificateAuthorityClient<InterceptedService<Channel, AuthFn>>;

const TOKEN: &str = "replica-test-token-0123456789";
const KEK_HEX: &str = "2222222222222222222222222222222222222222222222222222222222222222";
/// Requests issued across the kill.
const REQUESTS: usize = 240;
/// The first replica is killed once this many have been answered.
const KILL_AFTER: usize = 80;
const WORKERS: usize = 24;

fn add_token(mut req: Request<()>) -> Result<Request<()>, Status> {
    let v = format!("Bearer {TOKEN}")
        .parse()
        .map_err(|_| Status::internal("token header"))?;
    req.metadata_mut().insert("authorization", v);
    Ok(req)
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A free loopback port (bound, read, released: the child binds it right after).
fn free_addr() -> Result<SocketAddr, std::io::Error> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A `nexus-ca` child process, SIGKILLed when dropped.
struct Replica {
    child: Child,
    grpc: SocketAddr,
}

impl Replica {
    fn spawn(db_url: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let (grpc, http) = (free_addr()?, free_addr()?);
        let child = Command::new(env!("CARGO_BIN_EXE_nexus-ca"))
            .arg("--database-url")
            .arg(db_url)
            .args(["--grpc-listen", &grpc.to_string()])
            .args(["--http-listen", &http.to_string()])
            .args(["--tenant", "acme", "--db-max-connections", "4"])
            .env("NEXUS_CA_KEK", KEK_HEX)
            .env("NEXUS_CA_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self { child, grpc })
    }

    /// Connects once the process serves (polled; generous bound for a loaded machine).
    async fn client(&mut self) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("nexus-ca exited during start: {status}").into());
            }
            if let Ok(ch) = Channel::from_shared(format!("http://{}", self.grpc))?
                .connect()
                .await
            {
                let mut c = CertificateAuthorityClient::with_interceptor(ch, add_token as AuthFn);
                if c.get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
                    .await
                    .is_ok()
                {
                    return Ok(c);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("nexus-ca on {} never became ready", self.grpc).into())
    }

    fn kill(&mut self) -> std::io::Result<()> {
        // std's Child::kill sends SIGKILL on Unix: no shutdown path runs.
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root_of(
    sth: &pb::SignedTreeHead,
) -> Result<merkle::Hash, Box<dyn std::error::Error + Send + Sync>> {
    Ok(sth.root_hash.as_slice().try_into()?)
}

fn verify_sth_signature(sth: &pb::SignedTreeHead) -> TestResult {
    if merkle::verify_tree_head_signature(
        &sth.log_public_key_der,
        sth.timestamp_ms,
        sth.tree_size,
        &root_of(sth)?,
        &sth.signature,
    ) {
        Ok(())
    } else {
        Err("STH signature does not verify".into())
    }
}

/// Issues request `i` (same id and CSR on every attempt), preferring replica `i % 2`, falling
/// back to the other on any failure, until one answers.
async fn issue_with_failover(
    clients: &[Arc<Mutex<Option<Client>>>; 2],
    i: usize,
    req: &pb::IssueRequest,
    failures_on_first: &AtomicUsize,
) -> Result<pb::Certificate, Box<dyn std::error::Error + Send + Sync>> {
    let mut last = String::new();
    for attempt in 0..200 {
        let which = (i + attempt) % 2;
        let client = clients[which].lock().await.clone();
        let Some(mut client) = client else {
            continue;
        };
        match client.issue(req.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) => {
                if which == 0 {
                    failures_on_first.fetch_add(1, Ordering::Relaxed);
                }
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Err(format!("request {i} never succeeded: {last}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivor_keeps_the_log_consistent_when_a_replica_is_killed_mid_issuance() -> TestResult {
    let url = database_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    let db = format!(
        "nexus_ca_replicas_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&admin)
        .await?;
    let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
    let db_url = {
        // Same server, the new database.
        let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
        format!("{base}/{db}")
    };
    let result = run(&db_url, opts.database(&db)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&admin)
    .await?;
    result
}

async fn run(db_url: &str, opts: sqlx::postgres::PgConnectOptions) -> TestResult {
    // Both start together on an empty database: one creates the keys, the other loads them.
    let mut a = Replica::spawn(db_url)?;
    let mut b = Replica::spawn(db_url)?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    let clients = [
        Arc::new(Mutex::new(Some(ca))),
        Arc::new(Mutex::new(Some(cb.clone()))),
    ];
    let model = ModelUri::new("acme", "coder", "1.0")?;
    let attestation = Attestation::example().to_der()?;
    let requests: Arc<Vec<pb::IssueRequest>> = Arc::new(
        (0..REQUESTS)
            .map(|i| {
                Ok(pb::IssueRequest {
                    tenant: "acme".into(),
                    request_id: format!("ha-{i}"),
                    csr_der: nexus_mic::generate_model_key(&model)?.csr_der,
                    model: "coder".into(),
                    version: "1.0".into(),
                    attestation_der: attestation.clone(),
                    validity_seconds: 0,
                })
            })
            .collect::<Result<_, nexus_mic::Error>>()?,
    );

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failures_on_a = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(HashMap::<String, pb::Certificate>::new()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (clients, requests, next, done, failures, answers) = (
                clients.clone(),
                Arc::clone(&requests),
                Arc::clone(&next),
                Arc::clone(&done),
                Arc::clone(&failures_on_a),
                Arc::clone(&answers),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= REQUESTS {
                        return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                    }
                    let cert = issue_with_failover(&clients, i, &requests[i], &failures).await?;
                    answers
                        .lock()
                        .await
                        .insert(requests[i].request_id.clone(), cert);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Wait until issuance is well under way on both, take the tree head, then SIGKILL A while
    // its workers still have requests in flight.
    while done.load(Ordering::Relaxed) < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut cb_head = cb.clone();
    let before = cb_head
        .get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
        .await?
        .into_inner();
    a.kill()?;
    let killed_at = done.load(Ordering::Relaxed);
    *clients[0].lock().await = None;
    for w in workers {
        w.await??;
    }
    assert!(
        killed_at < REQUESTS,
        "A was killed with requests outstanding ({killed_at} of {REQUESTS} answered)"
    );
    assert!(
        before.tree_size >= KILL_AFTER as u64 / 2,
        "{}",
        before.tree_size
    );

    // A restarted replica and the survivor agree on the log; it extends the head from before.
    let mut a2 = Replica::spawn(db_url)?;
    let mut ca2 = a2.client().await?;
    let after_b = cb_head
        .get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
        .await?
        .into_inner();
    let after_a = ca2
        .get_signed_tree_head(pb::GetSignedTreeHeadRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        after_b.tree_size, REQUESTS as u64,
        "every request logged once"
    );
    assert_eq!(
        (after_a.tree_size, &after_a.root_hash),
        (after_b.tree_size, &after_b.root_hash)
    );
    // One log key across replicas and restarts (pinned from the first head).
    assert_eq!(before.log_public_key_der, after_a.log_public_key_der);
    assert_eq!(before.log_public_key_der, after_b.log_public_key_der);
    verify_sth_signature(&before)?;
    verify_sth_signature(&after_a)?;
    verify_sth_signature(&after_b)?;
    for c in [&mut ca2, &mut cb_head] {
        let p = c
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                first: before.tree_size,
                second: after_b.tree_size,
            })
            .await?
            .into_inner();
        let proof: Vec<merkle::Hash> = p
            .proof
            .iter()
            .map(|h| h.as_slice().try_into())
            .collect::<Result<_, _>>()?;
        assert!(merkle::verify_consistency(
            before.tree_size,
            after_b.tree_size,
            &root_of(&before)?,
            &root_of(&after_b)?,
            &proof
        ));
    }

    // The database: one certificate per request id, distinct serials, log positions 0..n-1
    // without gaps, the root recomputed from the stored leaves equal to the signed one, and
    // every answer a client got is the stored certificate for its request id.
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await?;
    type Row = (String, String, i64, Vec<u8>, Vec<u8>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT serial, request_id, log_index, leaf_hash, der FROM certificates ORDER BY log_index",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(rows.len(), REQUESTS);
    let serials: HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let ids: HashSet<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!((serials.len(), ids.len()), (REQUESTS, REQUESTS));
    let mut leaves = Vec::with_capacity(rows.len());
    for (i, (serial, request_id, index, leaf, der)) in rows.iter().enumerate() {
        assert_eq!(*index, i as i64, "gap in the log at {i}");
        assert_eq!(leaf.as_slice(), merkle::leaf_hash(der));
        let answer = answers
            .lock()
            .await
            .get(request_id)
            .cloned()
            .ok_or("a request without an answer")?;
        assert_eq!((&answer.serial, answer.log_index), (serial, *index as u64));
        leaves.push(merkle::leaf_hash(der));
    }
    assert_eq!(merkle::naive::root(&leaves), root_of(&after_b)?);
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'issue'")
        .fetch_one(&pool)
        .await?;
    assert_eq!(audited, REQUESTS as i64);
    pool.close().await;
    println!(
        "killed A after {killed_at} answers; {} failed attempts on A retried on B; log {} → {}",
        failures_on_a.load(Ordering::Relaxed),
        before.tree_size,
        after_b.tree_size
    );
    drop(a2);
    drop(b);
    Ok(())
}
