//! Nexus Cloud API (`nexus-cloud`): tenants, API keys and roles, tenant resources, usage metering
//! and billing, over PostgreSQL.
//!
//! Pure cores make the decisions — [`rating`] (tiered prices → invoice lines), [`metering`]
//! (event acceptance, duplicate classification), [`ratelimit`] (GCRA, applied in PostgreSQL so
//! replicas share it), [`pagination`] (cursors) — and the [`routes`] are the I/O edge around them.

pub mod auth;
pub mod console;
pub mod doc;
pub mod error;
pub mod extract;
pub mod metering;
pub mod metrics;
pub mod num;
pub mod pagination;
pub mod ratelimit;
pub mod rating;
pub mod routes;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::IntoResponse;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

pub use error::{Error, Result};

/// Embedded migrations (`api-server/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Usage-event timestamp window.
    pub window: metering::Window,
    /// Sustained requests per second per API key (0 disables the limit), shared by every
    /// replica on the database (see [`ratelimit`]).
    pub rate_per_sec: u32,
    /// Requests a key may make at once after a pause.
    pub burst: u32,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// Operator bootstrap token: may create tenants and price plans.
    pub admin_token: Option<String>,
    /// Usage token: Nexus components (dataplanes, the CA, the controller) report usage for any
    /// tenant with it (`POST /v1/system/usage-events`), and may do nothing else.
    pub usage_token: Option<String>,
    /// gRPC endpoint of the CA service (`https://nexus-ca:9443`, or plaintext
    /// `http://127.0.0.1:50051` in development); `None` makes MIC issuance answer 503.
    pub ca_endpoint: Option<String>,
    /// TLS towards the CA for `https://` endpoints: its root and this service's client
    /// certificate (role `cloud-api`).
    pub ca_tls: Option<nexus_tls::ClientTlsFiles>,
    /// Bearer token the CA expects from the cloud API: the fallback when no client
    /// certificate is given.
    pub ca_token: Option<String>,
    /// The built console (`web/dist`), served at `/`; `None` serves no console.
    pub console_dir: Option<PathBuf>,
}

/// Where the console build is looked for unless configured: `NEXUS_CONSOLE_DIR`, else `web/dist`
/// relative to the working directory (the repository root for `scripts/quickstart`).
pub fn default_console_dir() -> PathBuf {
    std::env::var_os("NEXUS_CONSOLE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("web/dist"))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: metering::Window::default(),
            rate_per_sec: 100,
            burst: 200,
            body_limit: 1024 * 1024,
            admin_token: None,
            usage_token: None,
            ca_endpoint: None,
            ca_tls: None,
            ca_token: None,
            console_dir: Some(default_console_dir()),
        }
    }
}

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub config: Arc<Config>,
    pub metrics: Arc<metrics::Metrics>,
    pub limiter: Arc<ratelimit::RateLimiter>,
    pub verified: Arc<auth::VerifiedKeys>,
    /// Lazily connected channel to the CA, when one is configured.
    pub ca: Option<tonic::transport::Channel>,
}

impl AppState {
    /// Builds the state. Call inside a Tokio runtime (the CA channel spawns its worker there).
    pub fn new(pool: PgPool, config: Config) -> AppState {
        let ca = config.ca_endpoint.as_deref().and_then(|url| {
            match ca_channel(url, config.ca_tls.as_ref()) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(url, error = %e, "invalid CA endpoint: MIC issuance disabled");
                    None
                }
            }
        });
        AppState {
            ca,
            limiter: Arc::new(ratelimit::RateLimiter::new(
                pool.clone(),
                config.rate_per_sec,
                config.burst,
            )),
            config: Arc::new(config),
            metrics: Arc::new(metrics::Metrics::default()),
            verified: Arc::new(auth::VerifiedKeys::default()),
            pool,
        }
    }
}

/// A lazily connected gRPC channel to the CA (connects on first use, reconnects after
/// failures): `https://` with the client certificate of `tls` (role `cloud-api`), or plaintext
/// `http://` in development.
pub fn ca_channel(
    url: &str,
    tls: Option<&nexus_tls::ClientTlsFiles>,
) -> Result<tonic::transport::Channel> {
    nexus_tls::grpc_channel(url, tls, Duration::from_secs(3), Duration::from_secs(15))
        .map_err(|e| Error::Internal(format!("CA endpoint {url:?}: {e}")))
}

/// A pool that survives a PostgreSQL restart: connections are tested before use and replaced
/// when broken, acquisition gives up after a few seconds (503) rather than hanging.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(true)
        .idle_timeout(Duration::from_secs(300))
        .connect(url)
        .await?;
    Ok(pool)
}

pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Nexus Cloud API",
        version = "0.1.0",
        description = "Tenants, keys, resources, usage metering and billing.\n\nEvery error is an RFC 9457 problem document (`application/problem+json`) with a stable `code`; each operation lists the codes it can answer. An unknown route answers 404 `not_found` and a known route with another method 405 `method_not_allowed`, also as problem documents. Lists are newest first with `cursor` pagination. Money is in exact decimal strings (and integer micro-units), never floats."
    ),
    components(schemas(error::Problem))
)]
struct ApiDoc;

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(routes::router())
}

/// The OpenAPI 3.1 document of every `/v1` route, complete with per-operation security and
/// every error response (see [`doc`]). This is what `/openapi.json` serves.
pub fn openapi() -> serde_json::Value {
    let mut doc = serde_json::to_value(api().into_openapi()).unwrap_or_default();
    doc::finish(&mut doc);
    doc
}

/// The whole HTTP application: the API under `/v1`, the console everywhere else.
pub fn app(state: AppState) -> Router {
    let (router, _) = api().split_for_parts();
    let doc = Arc::new(openapi());
    let body_limit = state.config.body_limit;
    let console = state.config.console_dir.clone().map(console::Console::new);
    if let Some(c) = &console
        && !c.is_built()
    {
        tracing::warn!(
            dir = ?state.config.console_dir,
            "no console build found: / answers a page saying how to build it"
        );
    }
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route("/metrics", axum::routing::get(metrics_handler))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(readyz))
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .fallback(move |method: Method, uri: Uri| {
            let console = console.clone();
            async move {
                let path = uri.path();
                let api_path = path == "/v1" || path.starts_with("/v1/");
                match console {
                    Some(c) if !api_path => c.serve(&method, &uri).await,
                    _ => Error::NotFound("route").into_response(),
                }
            }
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str> {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok("ready"),
        _ => Err(Error::Unavailable {
            code: "database_unavailable",
            detail: "database ping failed".into(),
        }),
    }
}

/// Serves until `shutdown` resolves, then finishes in-flight requests before returning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A tenant created with its owner user and owner key (the key text is shown only here).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NewTenant {
    pub tenant_id: Uuid,
    pub owner_user_id: Uuid,
    pub api_key_id: Uuid,
    /// The owner's API key. Shown once: it is stored only as a prefix and an argon2id hash.
    pub api_key: String,
}

/// Creates a tenant, its owner user and an owner key with every scope, and audits it.
/// `slug` names the tenant in model URIs and to the CA; 409 `already_exists` when taken.
pub async fn create_tenant(
    pool: &PgPool,
    name: &str,
    slug: &str,
    owner_email: &str,
) -> Result<NewTenant> {
    let mut tx = pool.begin().await?;
    let tenant_id = Uuid::new_v4();
    let owner_user_id = Uuid::new_v4();
    sqlx::query("INSERT INTO tenants (id, name, slug) VALUES ($1, $2, $3)")
        .bind(tenant_id)
        .bind(name)
        .bind(slug)
        .execute(&mut *tx)
        .await
        .map_err(routes::unique_to_conflict("a tenant with this slug"))?;
    sqlx::query("INSERT INTO users (id, tenant_id, email, role) VALUES ($1, $2, $3, 'owner')")
        .bind(owner_user_id)
        .bind(tenant_id)
        .bind(owner_email)
        .execute(&mut *tx)
        .await?;
    let (api_key_id, api_key, _) = auth::insert_key(
        &mut tx,
        tenant_id,
        owner_user_id,
        "owner",
        &[auth::Scope::Read, auth::Scope::Write, auth::Scope::Admin],
        None,
    )
    .await?;
    routes::audit(
        &mut tx,
        tenant_id,
        "operator",
        "tenant.create",
        "tenant",
        &tenant_id.to_string(),
        serde_json::json!({"name": name, "slug": slug, "owner": owner_email}),
    )
    .await?;
    tx.commit().await?;
    Ok(NewTenant {
        tenant_id,
        owner_user_id,
        api_key_id,
        api_key,
    })
}

/// What `seed_demo` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoTenant {
    pub tenant_id: Uuid,
    pub user_id: Uuid,
    pub api_key: String,
    pub routing_domain_id: Uuid,
}

/// Creates a demo tenant (slug `demo` when free, owner `demo@nexus.local`, a routing domain
/// `demo`) and returns an owner API key. Runs the migrations first, so it works on an empty
/// database. `nexctl up` calls this (and seeds the CA with tenant `demo`).
pub async fn seed_demo(pool: &PgPool) -> Result<DemoTenant> {
    migrate(pool).await?;
    let taken: bool =
        sqlx::query_scalar("SELECT exists(SELECT 1 FROM tenants WHERE slug = 'demo')")
            .fetch_one(pool)
            .await?;
    let slug = if taken {
        format!("demo-{}", &Uuid::new_v4().simple().to_string()[..8])
    } else {
        "demo".to_owned()
    };
    let t = create_tenant(pool, "demo", &slug, "demo@nexus.local").await?;
    let routing_domain_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO routing_domains (id, tenant_id, name, description) VALUES ($1, $2, 'demo', 'Demo routing domain')",
    )
    .bind(routing_domain_id)
    .bind(t.tenant_id)
    .execute(pool)
    .await?;
    Ok(DemoTenant {
        tenant_id: t.tenant_id,
        user_id: t.owner_user_id,
        api_key: t.api_key,
        routing_domain_id,
    })
}

/// Status of a successful create.
pub(crate) const CREATED: StatusCode = StatusCode::CREATED;
