//! `nexus-controller`: runs the Nexus controllers against the cluster in KUBECONFIG or the
//! in-cluster service account.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use kube::{Api, Client};
use nexus_controller::ca_client::GrpcIssuer;
use nexus_controller::identity::reconcile::{self, Context, MANAGER};
use nexus_controller::metrics::Metrics;
use nexus_controller::rollout::lease::LeaseLock;
use nexus_controller::rollout::local::{LocalArgs, LocalController};
use nexus_controller::rollout::metrics::RolloutMetrics;
use nexus_controller::rollout::reconcile::{self as rollout, Context as RolloutContext};
use nexus_controller::routing::evidence::TrustArgs;
use nexus_controller::routing::kube::KubeRouting;
use nexus_crds::{Fabric, ModelIdentity};
use prometheus_client::registry::Registry;
use tracing::{info, warn};

/// Nexus controllers: ModelIdentity → renewed MICs in Secrets; Fabric rollouts (`rollout`
/// against the cluster, `local` without it).
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
    /// Bearer token for the CA (file content, trimmed): the fallback when no client
    /// certificate is given; never over plaintext in production.
    #[arg(long, env = "NEXUS_CA_TOKEN_FILE")]
    ca_token_file: Option<std::path::PathBuf>,
    /// PEM root the CA's server certificate must chain to (`https://` endpoints).
    #[arg(long, env = "NEXUS_CA_TLS_CA")]
    ca_tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate (role `controller`, from `nexus-ca client-cert`), re-read when it
    /// changes.
    #[arg(long, env = "NEXUS_CA_TLS_CERT", requires = "ca_tls_key")]
    ca_tls_cert: Option<std::path::PathBuf>,
    /// PEM key of `--ca-tls-cert`.
    #[arg(long, env = "NEXUS_CA_TLS_KEY", requires = "ca_tls_cert")]
    ca_tls_key: Option<std::path::PathBuf>,
    /// Name the CA's certificate must carry (default: the endpoint's host).
    #[arg(long, env = "NEXUS_CA_TLS_SERVER_NAME")]
    ca_tls_server_name: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    /// (Not 8080: that is the cloud API's port in `nexctl up`.)
    #[arg(long, env = "NEXUS_CONTROLLER_HTTP", default_value = "0.0.0.0:7602")]
    http_listen: SocketAddr,
    /// Emit logs as JSON.
    #[arg(long, env = "NEXUS_LOG_JSON")]
    log_json: bool,
    /// ModelIdentity controller: namespace of its coordination Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "nexus-system")]
    lease_namespace: String,
    /// ModelIdentity controller: act without holding a Lease (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Fabric rollouts without Kubernetes: Fabric manifests from a directory, node agents over
    /// the fleet gRPC endpoint, state as JSON over HTTP.
    Local(Box<LocalArgs>),
    /// Fabric rollouts and RoutingDomains against the cluster: NexusNode specs, cordon and
    /// drain, Fabric status, routing tables served to the agents, RoutingDomain status; acts
    /// only while holding the coordination Lease.
    Rollout(RolloutArgs),
}

#[derive(Debug, clap::Args)]
struct RolloutArgs {
    /// Namespace of the Lease and of ConfigMap bundle sources.
    #[arg(long, env = "POD_NAMESPACE", default_value = "nexus-system")]
    namespace: String,
    /// Name of the coordination Lease.
    #[arg(long, default_value = "nexus-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease holder's claim lasts without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// A node whose agent has not reported for this long counts as unavailable, in seconds.
    #[arg(long, default_value_t = 30)]
    heartbeat_timeout_secs: u64,
    /// RoutingDomains: the trust anchors MICs must chain to and the CA's CRL feed (the same
    /// flags as local mode). Without `--trust-anchors` no endpoint is admitted.
    #[command(flatten)]
    routing: TrustArgs,
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
        LocalController::start(*local)
            .await?
            .run_until_signal()
            .await;
        return Ok(());
    }
    if let Some(Command::Rollout(rollout)) = args.command {
        return run_rollout(rollout, args.http_listen).await;
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
    let ca_tls = nexus_tls::client_files(
        args.ca_tls_ca.clone(),
        args.ca_tls_cert.clone(),
        args.ca_tls_key.clone(),
        args.ca_tls_server_name.clone(),
    )
    .context("CA TLS flags")?;
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let leader = if args.no_leader_election {
        None
    } else {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let identity = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("nexus-identity-controller-{}", std::process::id()));
        let lock = nexus_controller::rollout::lease::LeaseLock::new(
            client.clone(),
            &args.lease_namespace,
            "nexus-identity-controller",
            &identity,
            Duration::from_secs(15),
        );
        info!(namespace = %args.lease_namespace, %identity, "ModelIdentity controller: leader election on");
        tokio::spawn(rollout::hold_lease(lock, flag.clone()));
        Some(flag)
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        issuer: Arc::new(GrpcIssuer::new(&args.ca_endpoint, token, ca_tls.as_ref())?),
        recorder: kube::runtime::events::Recorder::new(client.clone(), MANAGER.into()),
        metrics,
        now: chrono::Utc::now,
        leader,
    });

    serve_http(Arc::new(registry), args.http_listen).await?;

    let identities: Api<ModelIdentity> = Api::all(client);
    identities
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("the ModelIdentity CRD is not installed: kubectl apply --server-side -f crds/")?;
    info!("ModelIdentity controller starting");
    reconcile::run(ctx, shutdown_signal()).await;
    info!("controller stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
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
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Serves /metrics, /healthz and /readyz in the background.
async fn serve_http(registry: Arc<Registry>, addr: SocketAddr) -> anyhow::Result<()> {
    serve_http_with(registry, addr, Router::new()).await
}

/// Serves /metrics, /healthz, /readyz and `extra` in the background.
async fn serve_http_with(
    registry: Arc<Registry>,
    addr: SocketAddr,
    extra: Router,
) -> anyhow::Result<()> {
    let app = extra
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
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {}", addr))?;
    info!(addr = %addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });

    Ok(())
}

/// The Fabric rollout controller against the cluster, leader-elected.
async fn run_rollout(args: RolloutArgs, http_listen: SocketAddr) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let identity = args
        .identity
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("nexus-controller-{}", std::process::id()));
    let mut registry = Registry::default();
    let metrics = Arc::new(RolloutMetrics::new(&mut registry));
    let routing_metrics = Arc::new(nexus_controller::metrics::RoutingMetrics::new(
        &mut registry,
    ));
    let registry = Arc::new(registry);

    let fabrics: Api<Fabric> = Api::all(client.clone());
    fabrics
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("the Fabric CRD is not installed: kubectl apply --server-side -f crds/")?;
    // Evictions go through a client without kube's default retries: a PodDisruptionBudget's
    // 429 is an answer ("not yet"), and retrying it 15 times would hold the reconcile for minutes.
    let mut config = kube::Config::infer()
        .await
        .context("Kubernetes client configuration")?;
    config.default_retry = false;
    let eviction_client = Client::try_from(config).context("building the eviction client")?;
    let leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lock = LeaseLock::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_duration_secs.max(3)),
    );
    info!(lease = %args.lease_name, namespace = %args.namespace, %identity, "rollout controller starting");
    let lease = tokio::spawn(rollout::hold_lease(lock, leader.clone()));
    // RoutingDomains: every replica compiles and serves the tables, the Lease holder writes.
    let routing = KubeRouting::new(client.clone(), args.routing.clone(), leader.clone())
        .context("the RoutingDomain controller")?
        .with_metrics(routing_metrics);
    let routing_tables = routing.tables();
    let routing_task = tokio::spawn(routing.run(shutdown_signal()));
    let heartbeat_timeout = Duration::from_secs(args.heartbeat_timeout_secs);
    let namespace = args.namespace.clone();
    let ctx_client = client.clone();
    rollout::run(
        client,
        move |stores| {
            let mut ctx = RolloutContext::new(ctx_client, eviction_client, &namespace, stores);
            ctx.heartbeat_timeout = heartbeat_timeout;
            ctx.metrics = Some(metrics);
            ctx.leader = leader;
            let ctx = Arc::new(ctx);
            // /metrics, health, and verified bundles for the node agents.
            let extra = rollout::bundle_router(ctx.clone())
                .merge(nexus_controller::routing::kube::router(routing_tables));
            tokio::spawn(async move {
                if let Err(e) = serve_http_with(registry, http_listen, extra).await {
                    warn!(error = %e, "HTTP endpoint failed");
                }
            });
            ctx
        },
        shutdown_signal(),
    )
    .await;
    routing_task.abort();
    lease.abort();
    info!("rollout controller stopped");
    Ok(())
}
