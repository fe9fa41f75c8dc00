//! Local mode: the rollout controller without Kubernetes. Fabric manifests come from a directory
//! (as kubelet reads static pods: re-read periodically), node agents connect over gRPC, and the
//! current Fabric and NexusNode objects are served as JSON:
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/fabrics`, `/v1/fabrics/{name}` | Fabrics with status |
//! | GET | `/v1/nodes` | NexusNodes (spec and status) |
//! | POST | `/v1/fabrics/{name}/pause`, `/resume`, `/rollback` | in-memory edits |
//! | GET | `/metrics`, `/healthz` | |

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use nexus_crds::{Fabric, NexusNode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::fleet::{Fleet, NodeEntry, Timing};
use super::metrics::RolloutMetrics;
use super::server::{FleetServer, Shared};
use nexus_artifact::Fetcher;

/// Annotation carrying a node's flash progress in `/v1/nodes` (`stage bytes/total`).
pub const PROGRESS_ANNOTATION: &str = "nexus.dev/flash-progress";
/// Annotation carrying the last Nack reason.
pub const NACK_ANNOTATION: &str = "nexus.dev/last-nack";
/// Annotation: whether the agent's stream is open.
pub const CONNECTED_ANNOTATION: &str = "nexus.dev/connected";

/// `nexus-controller local` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Directory of Fabric manifests (YAML or JSON; other kinds are ignored).
    #[arg(long)]
    pub manifests: PathBuf,
    /// Address of the fleet gRPC endpoint the node agents dial.
    #[arg(long, default_value = "127.0.0.1:7600")]
    pub listen: SocketAddr,
    /// Address of the JSON status API and /metrics.
    #[arg(long, default_value = "127.0.0.1:7601")]
    pub status_listen: SocketAddr,
    /// A node whose agent has not reported for this long counts as unavailable.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// After start, wait this long for agents to re-register before starting any node.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub start_grace: Duration,
    /// How often the manifest directory is re-read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub rescan: Duration,
    /// RoutingDomains: where their endpoints' MICs and the CA are.
    #[command(flatten)]
    pub routing: crate::routing::local::RoutingArgs,
    /// Mutual TLS on the fleet endpoint (absent: plaintext, development only).
    #[command(flatten)]
    pub tls: FleetTlsArgs,
}

/// Mutual TLS of the fleet endpoint: the controller's server certificate, and the CA whose
/// node certificates (role `node`, the node's name as common name — `nexus-ca client-cert
/// --role node --name <node>`) agents must present. A node may register only under the name
/// its certificate carries.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FleetTlsArgs {
    /// PEM certificate chain of the fleet endpoint (re-read when it changes).
    #[arg(long = "tls-cert", requires_all = ["tls_key", "tls_client_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `--tls-cert`.
    #[arg(long = "tls-key")]
    pub tls_key: Option<PathBuf>,
    /// PEM roots node certificates must chain to.
    #[arg(long = "tls-client-ca")]
    pub tls_client_ca: Option<PathBuf>,
    /// CRL of that CA (PEM or DER file, re-read every 10 s): a revoked node certificate is
    /// refused at the next handshake.
    #[arg(long = "tls-crl")]
    pub tls_crl: Option<PathBuf>,
}

/// The role node certificates carry.
pub const NODE_ROLE: &str = "node";

/// Whether the verified client certificate of a fleet connection may act as node `name`:
/// only a certificate of role [`NODE_ROLE`] whose common name is `name`. `None` (no TLS on
/// this endpoint) admits anyone: plaintext development mode.
pub fn admit_node(peer: Option<&nexus_tls::TlsConnInfo>, name: &str) -> Result<(), String> {
    let Some(info) = peer else {
        return Ok(());
    };
    let Some(id) = info.peer.as_deref() else {
        return Err("no client certificate".into());
    };
    match (id.role(), id.common_name.as_deref()) {
        (Some(NODE_ROLE), Some(cn)) if cn == name => Ok(()),
        (Some(NODE_ROLE), Some(cn)) => Err(format!(
            "the certificate is node {cn}'s: it may not register as {name}"
        )),
        (role, _) => Err(format!(
            "the certificate's role is {}, not {NODE_ROLE}",
            role.unwrap_or("none")
        )),
    }
}

/// The fleet endpoint's rustls config, when TLS is configured; the CRL file is re-read every
/// 10 s into the client verifier.
fn fleet_tls(t: &FleetTlsArgs) -> Result<Option<Arc<nexus_tls::rustls::ServerConfig>>, LocalError> {
    let (Some(cert), Some(key), Some(ca)) = (&t.tls_cert, &t.tls_key, &t.tls_client_ca) else {
        return Ok(None);
    };
    let err = |message: String| LocalError::Tls { message };
    let certificate =
        nexus_tls::ReloadingCertificate::from_files(cert, key).map_err(|e| err(e.to_string()))?;
    certificate.spawn_watch(Duration::from_secs(30));
    let roots = nexus_tls::read_certs(ca).map_err(|e| err(e.to_string()))?;
    let crls = match &t.tls_crl {
        Some(p) => nexus_tls::read_crls(p).map_err(|e| err(e.to_string()))?,
        None => Vec::new(),
    };
    let verifier =
        nexus_tls::ClientVerifier::new(&roots, crls, true).map_err(|e| err(e.to_string()))?;
    let config = nexus_tls::ServerTls {
        certificate,
        client_verifier: Some(Arc::clone(&verifier)),
    }
    .server_config()
    .map_err(|e| err(e.to_string()))?;
    if let Some(p) = t.tls_crl.clone() {
        tokio::spawn(async move {
            let mut last = std::fs::read(&p).ok();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = std::fs::read(&p).ok();
                if now.is_some() && now != last {
                    match nexus_tls::read_crls(&p).map(|c| verifier.set_crls(c)) {
                        Ok(Ok(())) => last = now,
                        Ok(Err(e)) => warn!(error = %e, "fleet CRL refused; keeping the last one"),
                        Err(e) => warn!(error = %e, "fleet CRL unreadable; keeping the last one"),
                    }
                }
            }
        });
    }
    Ok(Some(config))
}

use nexus_crds::common::parse_duration_arg as parse_duration;

/// Errors of local mode.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The manifest directory cannot be read.
    #[error("reading manifests in {path}: {message}")]
    Manifests {
        /// Directory.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// The fleet endpoint's TLS files are unusable.
    #[error("fleet TLS: {message}")]
    Tls {
        /// Cause.
        message: String,
    },
}

/// A running local controller.
#[derive(Debug)]
pub struct LocalController {
    /// Where the fleet gRPC endpoint listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The state (for tests and benches).
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Reads every Fabric in `dir` (`*.yaml`, `*.yml`, `*.json`, several documents per file).
pub fn read_manifests(dir: &Path) -> Result<Vec<Fabric>, LocalError> {
    read_kind::<Fabric>(dir, "Fabric")
}

/// Reads every object of `kind` in `dir` (other kinds are skipped; invalid ones are logged and
/// skipped, so one bad file does not stop the others).
pub fn read_kind<T>(dir: &Path, kind: &str) -> Result<Vec<T>, LocalError>
where
    T: serde::de::DeserializeOwned + kube::Resource,
{
    let err = |message: String| LocalError::Manifests {
        path: dir.to_owned(),
        message,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                warn!(file = %f.display(), error = %e, "skipping manifest");
                continue;
            }
        };
        let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple(&text) {
            Ok(d) => d,
            Err(e) => {
                warn!(file = %f.display(), error = %e, "skipping unparsable manifest");
                continue;
            }
        };
        for d in docs {
            if d.get("kind").and_then(|k| k.as_str()) != Some(kind) {
                continue;
            }
            match serde_json::from_value::<T>(d) {
                Ok(obj) if obj.meta().name.is_some() => out.push(obj),
                Ok(_) => warn!(file = %f.display(), kind, "skipping an object without a name"),
                Err(e) => {
                    warn!(file = %f.display(), kind, error = %e, "skipping an invalid object")
                }
            }
        }
    }
    Ok(out)
}

fn node_json(e: &NodeEntry) -> NexusNode {
    let mut n = e.node.clone();
    let ann = n.metadata.annotations.get_or_insert_with(Default::default);
    ann.insert(CONNECTED_ANNOTATION.into(), e.session.is_some().to_string());
    if let Some(p) = &e.progress {
        ann.insert(
            PROGRESS_ANNOTATION.into(),
            format!("{} {}/{}", p.stage, p.bytes, p.total),
        );
    }
    if let Some((v, reason)) = &e.nack {
        ann.insert(NACK_ANNOTATION.into(), format!("{v}: {reason}"));
    }
    n
}

async fn list_fabrics(State(s): State<Arc<Shared>>) -> Response {
    let f = s.fleet.lock().await;
    let items: Vec<Fabric> = f.fabrics.values().map(Fleet::fabric_view).collect();
    axum::Json(serde_json::json!({ "items": items })).into_response()
}

async fn get_fabric(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    let f = s.fleet.lock().await;
    match f.fabrics.get(&name) {
        Some(e) => axum::Json(Fleet::fabric_view(e)).into_response(),
        None => (StatusCode::NOT_FOUND, format!("fabric {name} not found\n")).into_response(),
    }
}

async fn list_domains(State(s): State<Arc<Shared>>) -> Response {
    let d = s.routing.lock().await;
    let items: Vec<&nexus_crds::routing::RoutingDomain> = d.values().collect();
    axum::Json(serde_json::json!({ "items": items })).into_response()
}

async fn list_nodes(State(s): State<Arc<Shared>>) -> Response {
    let f = s.fleet.lock().await;
    let items: Vec<NexusNode> = f.nodes.values().map(node_json).collect();
    axum::Json(serde_json::json!({ "items": items })).into_response()
}

async fn edit(
    s: &Shared,
    name: &str,
    edit: impl FnOnce(&mut super::fleet::FabricEntry),
) -> Response {
    let mut f = s.fleet.lock().await;
    let Some(e) = f.fabrics.get_mut(name) else {
        return (StatusCode::NOT_FOUND, format!("fabric {name} not found\n")).into_response();
    };
    edit(e);
    let view = Fleet::fabric_view(e);
    drop(f);
    s.changed.notify_one();
    axum::Json(view).into_response()
}

async fn pause(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    edit(&s, &name, |e| e.paused = Some(true)).await
}

async fn resume(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    edit(&s, &name, |e| e.paused = Some(false)).await
}

async fn rollback(State(s): State<Arc<Shared>>, UrlPath(name): UrlPath<String>) -> Response {
    edit(&s, &name, |e| {
        e.rollback_generation = e.fabric.metadata.generation
    })
    .await
}

/// The HTTP API router.
pub fn router(shared: Arc<Shared>, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
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
        )
        .route("/v1/fabrics", get(list_fabrics))
        .route("/v1/fabrics/{name}", get(get_fabric))
        .route("/v1/fabrics/{name}/pause", post(pause))
        .route("/v1/fabrics/{name}/resume", post(resume))
        .route("/v1/fabrics/{name}/rollback", post(rollback))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/routing-domains", get(list_domains))
        .with_state(shared)
}

async fn reconcile_loop(shared: Arc<Shared>, base: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let tick = Duration::from_millis(250);
    loop {
        let started = Instant::now();
        let (applied, requeue, fetches) = {
            let mut f = shared.fleet.lock().await;
            let fetches = f.bundles_to_fetch(Utc::now());
            let (applied, requeue) = f.reconcile(Utc::now(), &shared.timing);
            shared
                .metrics
                .observe(&f, applied, started.elapsed().as_secs_f64());
            (applied, requeue, fetches)
        };
        for (source, sha) in fetches {
            let shared = shared.clone();
            let fetcher = Fetcher::new().with_base_dir(base.clone());
            tokio::spawn(async move {
                info!(%source, "fetching bundle");
                let fetched = fetcher.fetch_verified(&source, &sha).await;
                match &fetched {
                    Ok(_) => info!(%source, "bundle verified"),
                    Err(e) => warn!(%source, error = %e, "bundle fetch failed"),
                }
                shared
                    .fleet
                    .lock()
                    .await
                    .bundle_fetched(&source, &sha, fetched, Utc::now());
                shared.changed.notify_one();
            });
        }
        if applied.starts + applied.finishes + applied.rollbacks > 0 {
            tracing::debug!(?applied, "reconciled");
        }
        let wait = requeue.map_or(tick, |r| r.min(tick));
        tokio::select! {
            () = shared.changed.notified() => {
                // Let a burst of reports (a wave finishing) land before planning once for all.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn manifest_loop(
    shared: Arc<Shared>,
    dir: PathBuf,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match read_manifests(&dir) {
            Ok(fabrics) => {
                let names: BTreeSet<String> = fabrics
                    .iter()
                    .filter_map(|f| f.metadata.name.clone())
                    .collect();
                let mut f = shared.fleet.lock().await;
                for fab in fabrics {
                    f.upsert_fabric(fab);
                }
                f.retain_fabrics(&names);
                drop(f);
                shared.changed.notify_one();
            }
            Err(e) => warn!(error = %e, "manifests"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

impl Shared {
    /// Every Fabric with the status the controller computed, as `GET /v1/fabrics` shows them.
    pub async fn fabrics(&self) -> Vec<Fabric> {
        let f = self.fleet.lock().await;
        f.fabrics.values().map(Fleet::fabric_view).collect()
    }
}

impl LocalController {
    /// Binds both listeners and starts serving. Port 0 picks free ports (see `grpc_addr`).
    pub async fn start(args: LocalArgs) -> Result<Self, LocalError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| LocalError::Bind { addr, source })
        };
        let grpc = bind(args.listen).await?;
        let http = bind(args.status_listen).await?;
        let grpc_addr = grpc.local_addr().map_err(|source| LocalError::Bind {
            addr: args.listen,
            source,
        })?;
        let http_addr = http.local_addr().map_err(|source| LocalError::Bind {
            addr: args.status_listen,
            source,
        })?;
        // Fail early on an unreadable directory.
        read_manifests(&args.manifests)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut registry = Registry::default();
        let metrics = RolloutMetrics::new(&mut registry);
        let shared = Arc::new(Shared {
            fleet: Mutex::new(Fleet::new(Utc::now())),
            changed: Notify::new(),
            timing: Timing {
                heartbeat_timeout: args.heartbeat_timeout,
                start_grace: args.start_grace,
            },
            metrics,
            shutdown: shutdown_rx.clone(),
            routing: Default::default(),
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(manifest_loop(
            shared.clone(),
            args.manifests.clone(),
            args.rescan,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(reconcile_loop(
            shared.clone(),
            args.manifests.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::routing::local::run(
            shared.clone(),
            args.manifests.clone(),
            args.routing.clone(),
            args.rescan,
            shutdown_rx.clone(),
        )));
        let app = router(shared.clone(), Arc::new(registry));
        let mut sd = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = axum::serve(http, app)
                .with_graceful_shutdown(async move {
                    let _ = sd.changed().await;
                })
                .await;
            if let Err(e) = r {
                warn!(error = %e, "HTTP API stopped");
            }
        }));
        let svc = FleetServer::new(shared.clone()).into_service();
        let mut sd = shutdown_rx;
        let tls = fleet_tls(&args.tls)?;
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = sd.changed().await;
            };
            let server = tonic::transport::Server::builder().add_service(svc);
            let r = match tls {
                Some(config) => match nexus_tls::TlsListener::new(grpc, config) {
                    Ok(l) => {
                        server
                            .serve_with_incoming_shutdown(l.into_stream(), stop)
                            .await
                    }
                    Err(e) => {
                        warn!(error = %e, "fleet TLS listener");
                        return;
                    }
                },
                None => {
                    let incoming =
                        tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
                    server.serve_with_incoming_shutdown(incoming, stop).await
                }
            };
            if let Err(e) = r {
                warn!(error = %e, "fleet gRPC endpoint stopped");
            }
        }));
        info!(grpc = %grpc_addr, http = %http_addr, manifests = %args.manifests.display(), "local rollout controller started");
        Ok(Self {
            grpc_addr,
            http_addr,
            shared,
            shutdown,
            tasks,
        })
    }

    /// Stops everything: sessions end (agents see their streams close), listeners close.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.shared.fleet.lock().await.disconnect_all();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// Runs until ctrl-c.
    pub async fn run_until_signal(self) {
        let _ = tokio::signal::ctrl_c().await;
        info!("shutting down");
        self.stop().await;
    }
}
