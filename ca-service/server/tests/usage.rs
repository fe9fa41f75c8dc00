//! Usage reporting to the real cloud API (`nexus-cloud`, in process on a loopback port, on a
//! database of its own): MICs issued while the cloud API is down stay in the CA's spool and
//! arrive once it is up; a resend after a lost acknowledgement is counted once; a tenant
//! without a key waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use nexus_ca::Settings;
use nexus_ca::kek::Kek;
use nexus_ca::usage::{RoundReport, UsageConfig, report_once};
use nexus_ca_api::v1 as pb;
use nexus_ca_api::v1::certificate_authority_client::CertificateAuthorityClient;
use nexus_mic::{Attestation, ModelUri};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tonic::Request;
use tonic::transport::Channel;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TOKEN: &str = "usage-test-token-0123456789abc";
const KEK_HEX: &str = "4444444444444444444444444444444444444444444444444444444444444444";

/// The cloud API's database, created here and dropped at the end.
struct CloudDb {
    admin: PgPool,
    name: String,
    pool: PgPool,
}

impl CloudDb {
    async fn create() -> Result<Self, Box<dyn std::error::Error>> {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        let name = format!(
            "nexus_cloud_usage_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts.database(&name))
            .await?;
        nexus_cloud::migrate(&pool).await?;
        Ok(Self { admin, name, pool })
    }

    async fn drop_db(self) -> Result<(), sqlx::Error> {
        self.pool.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await
        .map(|_| ())
    }
}

type AuthFn = fn(Request<()>) -> Result<Request<()>, tonic::Status>;
type Client =
    CertificateAuthorityClient<tonic::service::interceptor::InterceptedService<Channel, AuthFn>>;

async fn issue(
    c: &mut Client,
    tenant: &str,
    id: &str,
) -> Result<pb::Certificate, Box<dyn std::error::Error>> {
    let key = nexus_mic::generate_model_key(&ModelUri::new(tenant, "coder", "1.0")?)?;
    Ok(c.issue(pb::IssueRequest {
        tenant: tenant.into(),
        request_id: id.into(),
        csr_der: key.csr_der,
        model: "coder".into(),
        version: "1.0".into(),
        attestation_der: Attestation::example().to_der()?,
        validity_seconds: 0,
    })
    .await?
    .into_inner())
}

fn add_token(mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
    let v = format!("Bearer {TOKEN}")
        .parse()
        .map_err(|_| tonic::Status::internal("token header"))?;
    req.metadata_mut().insert("authorization", v);
    Ok(req)
}

#[sqlx::test(migrations = "./migrations")]
async fn issued_mics_reach_the_cloud_api_exactly_once_across_an_outage(pool: PgPool) -> TestResult {
    let kek = Arc::new(Kek::parse(KEK_HEX)?);
    let ca_server = nexus_ca::start(
        pool.clone(),
        Settings::for_tests(kek, TOKEN, &["acme", "globex"]),
    )
    .await?;
    let ch = Channel::from_shared(format!("http://{}", ca_server.grpc_addr))?
        .connect()
        .await?;
    let mut c = CertificateAuthorityClient::with_interceptor(ch, add_token as AuthFn);
    let ca = Arc::clone(ca_server.ca());

    // The cloud API's tenant and its key; its port reserved, nothing listening yet.
    let cloud = CloudDb::create().await?;
    let tenant =
        nexus_cloud::create_tenant(&cloud.pool, "Acme", "acme", "owner@acme.example").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cloud_addr = listener.local_addr()?;
    drop(listener);
    let cfg = UsageConfig {
        url: format!("http://{cloud_addr}"),
        token: None,
        keys: HashMap::from([("acme".to_owned(), tenant.api_key.clone())]),
        every: Duration::from_secs(1),
    };
    let http = nexus_ca::usage::http_client()?;

    // Issued while the cloud API is down: spooled with the certificates, nothing lost.
    let a1 = issue(&mut c, "acme", "u-1").await?;
    let a2 = issue(&mut c, "acme", "u-2").await?;
    let g1 = issue(&mut c, "globex", "u-3").await?; // globex has no key
    let r = report_once(&ca, &http, &cfg, Utc::now()).await?;
    assert_eq!(
        r,
        RoundReport {
            delivered: 0,
            rejected: 0,
            deferred: 3
        }
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_outbox WHERE sent_at IS NULL")
            .fetch_one(&pool)
            .await?;
    assert_eq!(pending, 3);

    // The cloud API comes up on that port; the next round (past the back-off) delivers acme's.
    let listener = tokio::net::TcpListener::bind(cloud_addr).await?;
    let app = nexus_cloud::app(nexus_cloud::AppState::new(
        cloud.pool.clone(),
        nexus_cloud::Config {
            rate_per_sec: 0,
            console_dir: None,
            ..nexus_cloud::Config::default()
        },
    ));
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let later = Utc::now() + chrono::Duration::minutes(10);
    let r = report_once(&ca, &http, &cfg, later).await?;
    assert_eq!((r.delivered, r.deferred), (2, 1));
    let stored: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT idempotency_key, meter, quantity FROM usage_events ORDER BY idempotency_key",
    )
    .fetch_all(&cloud.pool)
    .await?;
    let mut expected = vec![
        (format!("mic:{}", a1.serial), "mics_issued".to_owned(), 1),
        (format!("mic:{}", a2.serial), "mics_issued".to_owned(), 1),
    ];
    expected.sort();
    assert_eq!(stored, expected);

    // The CA crashed after sending but before marking: the resend is a duplicate there.
    sqlx::query("UPDATE usage_outbox SET sent_at = NULL WHERE serial = $1")
        .bind(&a1.serial)
        .execute(&pool)
        .await?;
    let r = report_once(&ca, &http, &cfg, later).await?;
    assert_eq!(r.delivered, 1);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&cloud.pool)
        .await?;
    assert_eq!(count, 2, "billed once");
    let billed: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(quantity), 0)::bigint FROM usage_hourly WHERE meter = 'mics_issued'",
    )
    .fetch_one(&cloud.pool)
    .await?;
    assert_eq!(billed, 2);

    // globex's event still waits (no key), with the reason recorded.
    let (sent, err): (Option<chrono::DateTime<Utc>>, Option<String>) =
        sqlx::query_as("SELECT sent_at, last_error FROM usage_outbox WHERE serial = $1")
            .bind(&g1.serial)
            .fetch_one(&pool)
            .await?;
    assert!(sent.is_none());
    assert_eq!(err.as_deref(), Some("no API key for the tenant"));
    assert!(
        ca.metrics()
            .encode()
            .lines()
            .any(|l| l == "nexus_ca_usage_pending 1")
    );

    served.abort();
    ca_server.shutdown().await?;
    cloud.drop_db().await?;
    Ok(())
}

/// With the cloud API's usage token, one batch reports every tenant's MICs through the system
/// endpoint — no per-tenant keys to distribute — and a resend is billed once.
#[sqlx::test(migrations = "./migrations")]
async fn the_usage_token_reports_every_tenant_in_one_batch(pool: PgPool) -> TestResult {
    let kek = Arc::new(Kek::parse(KEK_HEX)?);
    let ca_server = nexus_ca::start(
        pool.clone(),
        Settings::for_tests(kek, TOKEN, &["acme", "globex"]),
    )
    .await?;
    let ch = Channel::from_shared(format!("http://{}", ca_server.grpc_addr))?
        .connect()
        .await?;
    let mut c = CertificateAuthorityClient::with_interceptor(ch, add_token as AuthFn);
    let ca = Arc::clone(ca_server.ca());
    let cloud = CloudDb::create().await?;
    nexus_cloud::create_tenant(&cloud.pool, "Acme", "acme", "owner@acme.example").await?;
    nexus_cloud::create_tenant(&cloud.pool, "Globex", "globex", "owner@globex.example").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cloud_addr = listener.local_addr()?;
    let app = nexus_cloud::app(nexus_cloud::AppState::new(
        cloud.pool.clone(),
        nexus_cloud::Config {
            rate_per_sec: 0,
            console_dir: None,
            usage_token: Some("system-usage-token-0123456789".into()),
            ..nexus_cloud::Config::default()
        },
    ));
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = UsageConfig::with_token(
        &format!("http://{cloud_addr}"),
        "system-usage-token-0123456789",
    );
    let http = nexus_ca::usage::http_client()?;

    let a = issue(&mut c, "acme", "t-1").await?;
    let g = issue(&mut c, "globex", "t-2").await?;
    let r = report_once(&ca, &http, &cfg, Utc::now()).await?;
    assert_eq!(
        r,
        RoundReport {
            delivered: 2,
            rejected: 0,
            deferred: 0
        }
    );
    // Resent after a crash between sending and marking: billed once.
    sqlx::query("UPDATE usage_outbox SET sent_at = NULL")
        .execute(&pool)
        .await?;
    let r = report_once(&ca, &http, &cfg, Utc::now()).await?;
    assert_eq!(r.delivered, 2);
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT t.slug, e.idempotency_key FROM usage_events e JOIN tenants t ON t.id = e.tenant_id
          WHERE e.meter = 'mics_issued' ORDER BY t.slug",
    )
    .fetch_all(&cloud.pool)
    .await?;
    assert_eq!(
        stored,
        vec![
            ("acme".to_owned(), format!("mic:{}", a.serial)),
            ("globex".to_owned(), format!("mic:{}", g.serial)),
        ]
    );

    served.abort();
    ca_server.shutdown().await?;
    cloud.drop_db().await?;
    Ok(())
}
