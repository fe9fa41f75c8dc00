//! `nexus-controller`: runs the Nexus controllers against the cluster in KUBECONFIG or the
//! in-cluster service account.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use nexus_controller::ca_client::GrpcIssuer;
use nexus_controller::identity::reconcile::{self, Context, MANAGER};
use nexus_controller::metrics::Metrics;
use nexus_controller::rollout::local::{LocalArgs, LocalController};
use nexus_crds::ModelIdentity;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Nexus controllers: ModelIdentity → renewed MICs in Secrets; Fabric rollouts (`local` mode).
#[derive(Debug, Parser)]
#[command(name = "nexus-controller", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// gRPC endpoint of the NexTrust CA.
    #[arg(
        long,
        env = "NEXUS_CA_ENDPOINT",
        default_value = "http://127.0.0.1:8443"
    )]
    ca_endpoint: String,
    /// Bearer token for the CA (file content, trimmed).
    #[arg(long, env = "NEXUS_CA_TOKEN_FILE")]
    ca_token_file: Option<std::path::PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "NEXUS_CONTROLLER_HTTP", default_value = "0.0.0.0:8080")]
    http_listen: SocketAddr,
    /// Emit logs as JSON.
    #[arg(long, env = "NEXUS_LOG_JSON")]
    log_json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Fabric rollouts without Kubernetes: Fabric manifests from a directory, node agents over
    /// the fleet gRPC endpoint, state as JSON over HTTP.
    Local(LocalArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    if let Some(Command::Local(local)) = args.command {
        LocalController::start(local)
            .await?
            .run_until_signal()
            .await;
        return Ok(());
    }

    let token = match &args.ca_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading CA token {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let ctx = Arc::new(Context {
        client: client.clone(),
        issuer: Arc::new(GrpcIssuer::new(&args.ca_endpoint, token)?),
        reporter: MANAGER.into(),
        metrics,
        now: chrono::Utc::now,
    });

    let registry = Arc::new(registry);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    info!(addr = %args.http_listen, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });

    let identities: Api<ModelIdentity> = Api::all(client.clone());
    identities
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("the ModelIdentity CRD is not installed: kubectl apply --server-side -f crds/")?;
    let secrets: Api<Secret> = Api::all(client);
    info!("ModelIdentity controller starting");
    Controller::new(identities, watcher::Config::default().any_semantic())
        .owns(
            secrets,
            watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}")),
        )
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile error");
            }
        })
        .await;
    info!("controller stopped");
    Ok(())
}
