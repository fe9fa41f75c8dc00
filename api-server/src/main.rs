//! `nexus-cloud`: serve the Nexus Cloud API, run migrations, or seed a demo tenant.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nexus_cloud::{AppState, Config, metering::Window};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "nexus-cloud", version, about = "Nexus Cloud API server")]
struct Cli {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Log as JSON lines.
    #[arg(long, env = "NEXUS_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run migrations and serve the API (the default).
    Serve(Box<ServeArgs>),
    /// Run migrations and exit.
    Migrate,
    /// Create a demo tenant and print its owner API key (JSON).
    SeedDemo,
    /// Print the OpenAPI document (what `/openapi.json` serves) and exit.
    Openapi,
}

#[derive(Debug, Parser)]
struct ServeArgs {
    #[arg(long, env = "NEXUS_CLOUD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Operator token: may create tenants and price plans. Unset: no operator access.
    #[arg(long, env = "NEXUS_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Usage token: lets dataplanes, the CA and the controller report usage for any tenant
    /// (and nothing else). Unset: only the operator token may.
    #[arg(long, env = "NEXUS_USAGE_TOKEN", hide_env_values = true)]
    usage_token: Option<String>,
    /// How late a usage event may arrive, in hours.
    #[arg(long, env = "NEXUS_LATE_WINDOW_HOURS", default_value_t = 48)]
    late_window_hours: i64,
    /// Sustained requests per second per API key (0 disables).
    #[arg(long, env = "NEXUS_RATE_LIMIT", default_value_t = 100)]
    rate_limit: u32,
    /// Burst size per API key.
    #[arg(long, env = "NEXUS_RATE_BURST", default_value_t = 200)]
    rate_burst: u32,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    body_limit: usize,
    /// CA gRPC endpoint for MIC issuance; unset makes issuance answer 503.
    #[arg(long, env = "NEXUS_CA_ENDPOINT")]
    ca_endpoint: Option<String>,
    /// Bearer token for the CA: the fallback when no client certificate is given; never over
    /// plaintext in production.
    #[arg(long, env = "NEXUS_CA_TOKEN", hide_env_values = true)]
    ca_token: Option<String>,
    /// PEM root the CA's server certificate must chain to (`https://` endpoints).
    #[arg(long, env = "NEXUS_CA_TLS_CA")]
    ca_tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate (role `cloud-api`, from `nexus-ca client-cert`), re-read when it
    /// changes.
    #[arg(long, env = "NEXUS_CA_TLS_CERT", requires = "ca_tls_key")]
    ca_tls_cert: Option<std::path::PathBuf>,
    /// PEM key of `--ca-tls-cert`.
    #[arg(long, env = "NEXUS_CA_TLS_KEY", requires = "ca_tls_cert")]
    ca_tls_key: Option<std::path::PathBuf>,
    /// Name the CA's certificate must carry (default: the endpoint's host).
    #[arg(long, env = "NEXUS_CA_TLS_SERVER_NAME")]
    ca_tls_server_name: Option<String>,
    #[arg(long, default_value_t = 16)]
    max_connections: u32,
    /// The built console (`npm run build` in web/), served at `/`. Default `web/dist`.
    #[arg(long, env = "NEXUS_CONSOLE_DIR")]
    console_dir: Option<std::path::PathBuf>,
    /// Serve no console, only the API.
    #[arg(long)]
    no_console: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command {
        Some(Command::Openapi) => {
            println!("{}", serde_json::to_string_pretty(&nexus_cloud::openapi())?);
        }
        Some(Command::Migrate) => {
            let pool = nexus_cloud::connect(&cli.database_url, 2)
                .await
                .context("connect")?;
            nexus_cloud::migrate(&pool).await.context("migrate")?;
            println!("migrations applied");
        }
        Some(Command::SeedDemo) => {
            let pool = nexus_cloud::connect(&cli.database_url, 2)
                .await
                .context("connect")?;
            let demo = nexus_cloud::seed_demo(&pool)
                .await
                .context("seed demo tenant")?;
            println!("{}", serde_json::to_string_pretty(&demo)?);
        }
        Some(Command::Serve(args)) => serve(&cli.database_url, *args).await?,
        None => serve(&cli.database_url, ServeArgs::parse_from(["serve"])).await?,
    }
    Ok(())
}

async fn serve(url: &str, a: ServeArgs) -> anyhow::Result<()> {
    let pool = nexus_cloud::connect(url, a.max_connections)
        .await
        .context("connect to PostgreSQL")?;
    nexus_cloud::migrate(&pool).await.context("migrate")?;
    let config = Config {
        window: Window {
            late: chrono::Duration::hours(a.late_window_hours),
            ..Window::default()
        },
        rate_per_sec: a.rate_limit,
        burst: a.rate_burst,
        body_limit: a.body_limit,
        admin_token: a.admin_token,
        usage_token: a.usage_token,
        ca_endpoint: a.ca_endpoint,
        ca_tls: nexus_tls::client_files(
            a.ca_tls_ca,
            a.ca_tls_cert,
            a.ca_tls_key,
            a.ca_tls_server_name,
        )
        .context("CA TLS flags")?,
        ca_token: a.ca_token,
        console_dir: (!a.no_console).then(|| {
            a.console_dir
                .unwrap_or_else(nexus_cloud::default_console_dir)
        }),
    };
    if let Some(url) = &config.ca_endpoint {
        nexus_cloud::ca_channel(url, config.ca_tls.as_ref()).context("--ca-endpoint")?;
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .context("bind")?;
    tracing::info!(addr = %a.listen, "nexus-cloud listening");
    nexus_cloud::serve(listener, AppState::new(pool, config), shutdown_signal()).await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal: finishing in-flight requests");
}
