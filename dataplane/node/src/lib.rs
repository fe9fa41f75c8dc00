//! The node's dataplane process: a NexStream endpoint serving NexAPI on a UDP port, with
//! `/healthz`, `/readyz` and `/metrics` on an HTTP port, draining on SIGTERM.
//!
//! Built to be supervised: every setting is a flag with an environment twin
//! (`NEXUS_DATAPLANE_*`), `/readyz` answers 200 only once the UDP socket is bound, the MIC is
//! loaded and the model (if any) is ready, and 503 from the moment draining starts; the
//! process exits 0 after a drain.
//!
//! Optional parts: the demo model (`--demo-model`), an OpenAI-compatible HTTP gateway on the
//! HTTP port (`--gateway`, [`gateway`]) and the reverse, an upstream adapter that serves an
//! existing OpenAI-compatible model server over NexAPI (`--upstream-openai URL`,
//! [`upstream`]).

pub mod gateway;
mod mic_watch;
pub mod routing;
pub mod upstream;
pub mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use nexus_api::server::{ApiMetrics, TokenSink};
use nexus_api::{ApiError, Capabilities, Model};
use nexus_stream::{Config, Congestion, Endpoint, Identity, Limits, Metrics};
use prometheus_client::registry::Registry;

/// Command-line flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "nexus-dataplane",
    version,
    about = "Nexus node dataplane (NexStream/NexAPI)"
)]
pub struct Args {
    /// UDP address NexStream listens on.
    #[arg(long, env = "NEXUS_DATAPLANE_LISTEN", default_value = "0.0.0.0:7700")]
    pub listen: SocketAddr,
    /// Secret-layout directory with this node's MIC (tls.crt, tls.key, ca.crt).
    #[arg(long, env = "NEXUS_DATAPLANE_MIC_DIR")]
    pub mic_dir: PathBuf,
    /// Seconds between checks of --mic-dir for a renewed MIC (0: never reload).
    #[arg(long, env = "NEXUS_DATAPLANE_MIC_RELOAD", default_value_t = 30)]
    pub mic_reload: u64,
    /// CRL to enforce: a file (PEM or DER, re-read every --crl-refresh seconds) or an
    /// http(s) URL (fetched at the same interval). Fail closed: a CRL that stops verifying
    /// keeps the last good one and makes /readyz report it.
    #[arg(long, env = "NEXUS_DATAPLANE_CRL")]
    pub crl: Option<String>,
    /// PEM roots an `https://` --crl URL must chain to (the Nexus CA's `ca.crt`); only these
    /// are trusted for it.
    #[arg(long, env = "NEXUS_DATAPLANE_CRL_CA", requires = "crl")]
    pub crl_ca: Option<PathBuf>,
    /// Seconds between CRL reloads.
    #[arg(long, env = "NEXUS_DATAPLANE_CRL_REFRESH", default_value_t = 60)]
    pub crl_refresh: u64,
    /// Requirement a peer MIC must meet (nexus-mic syntax, e.g. `tenant=acme,capability=chat`).
    #[arg(long, env = "NEXUS_DATAPLANE_REQUIREMENT", default_value = "")]
    pub requirement: String,
    /// Concurrent streams a peer may open, per kind (bidirectional, unidirectional).
    #[arg(long, env = "NEXUS_DATAPLANE_MAX_STREAMS", default_value_t = 256)]
    pub max_streams: u32,
    /// Largest message accepted, bytes.
    #[arg(long, env = "NEXUS_DATAPLANE_MAX_MESSAGE", default_value_t = 16 << 20)]
    pub max_message: u64,
    /// Bytes a peer may have buffered here per stream.
    #[arg(long, env = "NEXUS_DATAPLANE_STREAM_WINDOW", default_value_t = 8 << 20)]
    pub stream_window: u32,
    /// Bytes a peer may have buffered here per connection.
    #[arg(long, env = "NEXUS_DATAPLANE_CONNECTION_WINDOW", default_value_t = 64 << 20)]
    pub connection_window: u32,
    /// Seconds a reply or token write may make no progress (the peer stopped reading) before
    /// its stream is reset with STALLED.
    #[arg(
        long,
        env = "NEXUS_DATAPLANE_WRITE_STALL_SECONDS",
        default_value_t = 60
    )]
    pub write_stall_seconds: u64,
    /// Connections held at once.
    #[arg(long, env = "NEXUS_DATAPLANE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Largest tensor accepted, bytes.
    #[arg(long, env = "NEXUS_DATAPLANE_MAX_TENSOR", default_value_t = 256 << 20)]
    pub max_tensor: u64,
    /// Largest UDP payload path-MTU discovery may probe for (1452 suits the Internet; raise it
    /// on jumbo-frame fabrics).
    #[arg(long, env = "NEXUS_DATAPLANE_MTU_UPPER_BOUND", default_value_t = 1452)]
    pub mtu_upper_bound: u16,
    /// Accept 0-RTT for idempotent requests on resumed connections.
    #[arg(long, env = "NEXUS_DATAPLANE_ZERO_RTT")]
    pub zero_rtt: bool,
    /// Congestion controller of every session: `cubic` (the default; loss means congestion)
    /// or `bbr` (quinn's experimental BBRv1: keeps bulk transfers at the path's rate where loss
    /// is random rather than congestion, e.g. lossy long-haul or radio links).
    #[arg(long, env = "NEXUS_DATAPLANE_CONGESTION", default_value_t = Congestion::Cubic)]
    pub congestion: Congestion,
    /// Serve the deterministic demo model.
    #[arg(long, env = "NEXUS_DATAPLANE_DEMO_MODEL")]
    pub demo_model: bool,
    /// Pause between streamed demo tokens, milliseconds.
    #[arg(long, env = "NEXUS_DATAPLANE_DEMO_TOKEN_MS", default_value_t = 0)]
    pub demo_token_ms: u64,
    /// Serve an existing OpenAI-compatible server (base URL, e.g. http://127.0.0.1:8000)
    /// over NexAPI.
    #[arg(
        long,
        env = "NEXUS_DATAPLANE_UPSTREAM_OPENAI",
        conflicts_with = "demo_model"
    )]
    pub upstream_openai: Option<String>,
    /// Model name sent upstream.
    #[arg(
        long,
        env = "NEXUS_DATAPLANE_UPSTREAM_MODEL",
        default_value = "default"
    )]
    pub upstream_model: String,
    /// HTTP address for /healthz, /readyz, /metrics (and the gateway).
    #[arg(
        long,
        env = "NEXUS_DATAPLANE_HTTP_LISTEN",
        default_value = "127.0.0.1:7701"
    )]
    pub http_listen: SocketAddr,
    /// Serve `/v1/chat/completions` on the HTTP port, forwarding to this NexAPI address with
    /// this node's MIC; port 0 means this node's own UDP port (on loopback when --listen is
    /// a wildcard).
    #[arg(long, env = "NEXUS_DATAPLANE_GATEWAY")]
    pub gateway: Option<SocketAddr>,
    /// Seconds to let open connections finish after SIGTERM.
    #[arg(long, env = "NEXUS_DATAPLANE_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Serve the P4Runtime service of this node's software NexRoute pipeline here (TCP): the
    /// node agent loads the pipeline and writes the routing tables through it, as into a
    /// hardware switch; `POST /v1/resolve` on the HTTP port then answers which endpoint the
    /// tables pick for a capability.
    #[arg(long, env = "NEXUS_DATAPLANE_P4RUNTIME_LISTEN")]
    pub p4runtime_listen: Option<SocketAddr>,
    /// The address routing domains name this node by (default: the bound --listen
    /// address): a call sent here by capability whose pick is this address is served here,
    /// any other pick is relayed.
    #[arg(long, env = "NEXUS_DATAPLANE_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// Write a qlog trace (JSON-SEQ `.sqlog`) of every NexStream session into this directory
    /// (default: `$QLOGDIR`, if set; created if missing).
    #[arg(long, env = "NEXUS_DATAPLANE_QLOG_DIR")]
    pub qlog_dir: Option<PathBuf>,
    /// This node's name: usage events name it in their idempotency keys, so it must be unique
    /// among the dataplanes reporting to one cloud API (default: $HOSTNAME).
    #[arg(long, env = "NEXUS_DATAPLANE_NODE_NAME")]
    pub node_name: Option<String>,
    /// The cloud API (base URL) to bill served traffic to, per tenant, as `traffic_bytes`.
    #[arg(long, env = "NEXUS_DATAPLANE_USAGE_URL", requires_all = ["usage_token", "usage_spool"])]
    pub usage_url: Option<String>,
    /// The cloud API's usage token (`--usage-token` of nexus-cloud); prefer the environment.
    #[arg(long, env = "NEXUS_DATAPLANE_USAGE_TOKEN", hide_env_values = true)]
    pub usage_token: Option<String>,
    /// Durable directory for usage not yet acknowledged by the cloud API (survives restarts:
    /// put it on the node's disk, not in the container).
    #[arg(long, env = "NEXUS_DATAPLANE_USAGE_SPOOL")]
    pub usage_spool: Option<PathBuf>,
    /// Seconds between harvests of per-tenant traffic into the spool; a killed process loses
    /// at most this much unharvested traffic.
    #[arg(long, env = "NEXUS_DATAPLANE_USAGE_INTERVAL", default_value_t = 10)]
    pub usage_interval: u64,
}

/// Serves nothing: every operation but `hello` is refused (a relay-only node).
#[derive(Debug)]
pub struct NoModel;

impl Model for NoModel {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            agent: "nexus-dataplane".into(),
            api_version: nexus_api::API_VERSION,
            ..Capabilities::default()
        }
    }
    async fn infer(&self, _: Bytes) -> Result<Bytes, ApiError> {
        Err(ApiError::Refused("no model on this node".into()))
    }
    async fn generate(&self, _: Bytes, _: &mut TokenSink<'_>) -> Result<(), ApiError> {
        Err(ApiError::Refused("no model on this node".into()))
    }
}

/// Health state shared with the HTTP handlers.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
    crl_failed: AtomicBool,
}

#[derive(Clone)]
struct HttpState {
    health: Arc<Health>,
    registry: Arc<Registry>,
    p4: Option<Arc<nexus_p4::Target>>,
    usage: Arc<usage::UsageMeter>,
}

/// `POST /v1/resolve`: a capability-addressed call, resolved by this node's NexRoute tables.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveRequest {
    /// The caller's tenant (name or slug, as in its MIC).
    tenant: String,
    /// The capability asked for, e.g. `code-generation`.
    capability: String,
    /// The routing domain as `namespace/name`; absent: the tenant's default domain.
    #[serde(default)]
    domain: Option<String>,
    /// Flow id: calls of one flow go to one endpoint (the selector hashes it).
    #[serde(default)]
    flow: u32,
}

async fn resolve(
    State(s): State<HttpState>,
    body: Result<axum::Json<ResolveRequest>, axum::extract::rejection::JsonRejection>,
) -> axum::response::Response {
    let err = |code: StatusCode, msg: String| {
        (code, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    };
    let axum::Json(req) = match body {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(target) = s.p4.as_ref() else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            routing::LookupError::NoTables.to_string(),
        );
    };
    match routing::lookup(
        target,
        &req.tenant,
        &req.capability,
        req.domain.as_deref(),
        req.flow,
    ) {
        Ok(hop) => axum::Json(serde_json::json!({ "next_hop": hop.to_string() })).into_response(),
        Err(e @ routing::LookupError::NoTables) => {
            err(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(e @ routing::LookupError::BadDomain) => err(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ routing::LookupError::NoRoute { .. }) => err(StatusCode::NOT_FOUND, e.to_string()),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let h = &s.health;
    if h.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if h.crl_failed.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "crl not loaded")
    } else if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    // Per-tenant traffic is harvested from the sessions on demand, so a scrape sees it now.
    s.usage.flush_async().await;
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

impl Args {
    /// NexStream configuration from the flags.
    pub fn config(&self) -> anyhow::Result<Config> {
        let limits = Limits {
            max_bidi_streams: self.max_streams,
            max_uni_streams: self.max_streams,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            max_message: self.max_message,
            max_connections: self.max_connections,
            mtu_upper_bound: self.mtu_upper_bound,
            write_stall_timeout: Duration::from_secs(self.write_stall_seconds.max(1)),
            ..Limits::default()
        };
        limits.check().map_err(|why| {
            anyhow::anyhow!("--stream-window, --connection-window, --max-streams: {why}")
        })?;
        Ok(Config {
            limits,
            requirement: self.requirement.parse().context("parsing --requirement")?,
            zero_rtt: self.zero_rtt,
            congestion: self.congestion,
        })
    }
}

async fn load_crl(
    endpoint: &Endpoint,
    http: &reqwest::Client,
    source: &str,
) -> anyhow::Result<usize> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let bytes = http
            .get(source)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok(endpoint.trust().set_crl_bytes(&bytes)?)
    } else {
        Ok(endpoint
            .trust()
            .load_crl_file(std::path::Path::new(source))?)
    }
}

/// A running dataplane (for tests and embedding): addresses and a drain handle.
#[derive(Debug, Clone)]
pub struct Running {
    /// Bound UDP address.
    pub udp: SocketAddr,
    /// Bound HTTP address.
    pub http: SocketAddr,
    /// Bound P4Runtime address, when serving one.
    pub p4runtime: Option<SocketAddr>,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Per-tenant traffic meter.
    pub usage: Arc<usage::UsageMeter>,
    p4: Option<Arc<nexus_p4::Target>>,
    health: Arc<Health>,
    reporter: Option<nexus_usage_client::Reporter>,
    stop_reporter: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Running {
    /// The node's P4Runtime target (its NexRoute tables), when serving one.
    pub fn p4_target(&self) -> Option<Arc<nexus_p4::Target>> {
        self.p4.clone()
    }

    /// Drains and stops: lets connections finish, spools their traffic and tries to deliver
    /// the spool within the same grace (what is left is sent by the next start).
    pub async fn drain(&self, grace: Duration) {
        self.health.draining.store(true, Ordering::Relaxed);
        self.endpoint.drain(grace).await;
        self.usage.flush_async().await;
        self.stop_reporter.send_replace(true);
        if let Some(r) = &self.reporter {
            match tokio::time::timeout(grace, r.send_pending()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "usage left in the spool for the next start")
                }
                Err(_) => tracing::warn!("usage delivery timed out; left in the spool"),
            }
        }
    }
}

/// The usage meter and, with `--usage-url`, its spool and reporter.
fn usage_meter(
    args: &Args,
) -> anyhow::Result<(Arc<usage::UsageMeter>, Option<nexus_usage_client::Reporter>)> {
    let node = args
        .node_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "dataplane".to_owned());
    let (Some(url), Some(token), Some(dir)) =
        (&args.usage_url, &args.usage_token, &args.usage_spool)
    else {
        return Ok((Arc::new(usage::UsageMeter::new(node, None)), None));
    };
    let spool = Arc::new(
        nexus_usage_client::Spool::open(dir)
            .with_context(|| format!("opening the usage spool {}", dir.display()))?,
    );
    let reporter = nexus_usage_client::Reporter::new(
        Arc::clone(&spool),
        nexus_usage_client::Config::new(url.clone(), token.clone()),
    )?;
    Ok((
        Arc::new(usage::UsageMeter::new(node, Some(spool))),
        Some(reporter),
    ))
}

/// Starts everything and returns once it serves.
pub async fn start(args: &Args) -> anyhow::Result<Running> {
    let identity = Identity::from_dir(&args.mic_dir)
        .with_context(|| format!("loading the MIC from {}", args.mic_dir.display()))?;
    let config = args.config()?;
    let mut registry = Registry::default();
    let stream_metrics = Arc::new(Metrics::new());
    stream_metrics.register(&mut registry);
    let api_metrics = Arc::new(ApiMetrics::default());
    api_metrics.register(&mut registry);
    let (usage, reporter) = usage_meter(args)?;
    usage.register(&mut registry);
    let endpoint = Endpoint::server(args.listen, &identity, &config, Arc::clone(&stream_metrics))
        .with_context(|| format!("binding {}", args.listen))?;
    let health = Arc::new(Health::default());
    if let Some(dir) = &args.qlog_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the qlog directory {}", dir.display()))?;
        endpoint.set_qlog_dir(Some(dir.clone()));
    }

    if let Some(source) = &args.crl {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(root) = &args.crl_ca {
            let pem = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not PEM certificates", root.display()))?;
            http = http.tls_certs_only(roots);
        }
        let http = http.build().context("the CRL client")?;
        let n = load_crl(&endpoint, &http, source)
            .await
            .with_context(|| format!("loading the CRL from {source}"))?;
        tracing::info!(revoked = n, source, "CRL loaded");
        let (endpoint, source, health) = (endpoint.clone(), source.clone(), Arc::clone(&health));
        let http = http.clone();
        let every = Duration::from_secs(args.crl_refresh.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match load_crl(&endpoint, &http, &source).await {
                    Ok(_) => health.crl_failed.store(false, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(error = %e, "CRL reload failed; keeping the last one");
                        health.crl_failed.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    let mut p4runtime = None;
    let p4 = match args.p4runtime_listen {
        Some(addr) => {
            let target = nexus_p4::Target::new(1);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the P4Runtime service to {addr}"))?;
            p4runtime = Some(listener.local_addr()?);
            let svc = nexus_p4::server::P4RuntimeService::server(Arc::clone(&target));
            tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                if let Err(e) = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await
                {
                    tracing::error!(error = %e, "P4Runtime service stopped");
                }
            });
            Some(target)
        }
        None => None,
    };
    if let Some(own) = identity.chain.first() {
        match nexus_mic::Mic::from_der(own) {
            Ok(mic) => usage.set_own_model(&mic.model.to_string()),
            Err(e) => tracing::warn!(error = %e, "this node's certificate is not a MIC"),
        }
    }
    let udp = endpoint.local_addr()?;
    let router: Option<Arc<dyn nexus_api::Router>> = p4.as_ref().map(|target| {
        Arc::new(routing::TableRouter::new(
            Arc::clone(target),
            args.advertise.unwrap_or(udp),
            endpoint.clone(),
        )) as Arc<dyn nexus_api::Router>
    });
    let ep = endpoint.clone();
    let meter = Arc::clone(&usage);
    let observe = move |s: &nexus_stream::Session| meter.track(s);
    if args.demo_model {
        let model = nexus_api::demo::DemoModel {
            token_interval: Duration::from_millis(args.demo_token_ms),
            max_tensor: args.max_tensor,
            ..Default::default()
        };
        tokio::spawn(nexus_api::server::serve_routed(
            ep,
            Arc::new(model),
            api_metrics,
            observe,
            router,
        ));
    } else if let Some(url) = &args.upstream_openai {
        let model = upstream::OpenAiUpstream::new(url, &args.upstream_model)?;
        tokio::spawn(nexus_api::server::serve_routed(
            ep,
            Arc::new(model),
            api_metrics,
            observe,
            router,
        ));
    } else {
        tokio::spawn(nexus_api::server::serve_routed(
            ep,
            Arc::new(NoModel),
            api_metrics,
            observe,
            router,
        ));
    }
    let (stop_reporter, stop_rx) = tokio::sync::watch::channel(false);
    {
        let meter = Arc::clone(&usage);
        let every = Duration::from_secs(args.usage_interval.max(1));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopped = tokio::select! {
                    _ = tick.tick() => false,
                    r = stop.wait_for(|s| *s) => { drop(r); true }
                };
                if stopped {
                    return;
                }
                meter.flush_async().await;
            }
        });
    }
    if let Some(r) = &reporter {
        let r = r.clone();
        let mut stop = stop_rx;
        tokio::spawn(async move {
            r.run(Duration::from_secs(5), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        });
    }

    let state = HttpState {
        health: Arc::clone(&health),
        registry: Arc::new(registry),
        p4: p4.clone(),
        usage: Arc::clone(&usage),
    };
    let mut app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/resolve", axum::routing::post(resolve))
        .with_state(state);
    let mut reloadable = vec![endpoint.clone()];
    if let Some(mut target) = args.gateway {
        if target.port() == 0 {
            target.set_port(udp.port());
            if target.ip().is_unspecified() {
                target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
        }
        let gw = gateway::Gateway::new(&identity, target)?;
        reloadable.push(gw.endpoint().clone());
        app = app.merge(gateway::router(gw));
    }
    let listener = tokio::net::TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    let http = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    if args.mic_reload > 0 {
        mic_watch::spawn(
            args.mic_dir.clone(),
            Duration::from_secs(args.mic_reload),
            reloadable,
        );
    }
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(%udp, %http, "dataplane ready");
    Ok(Running {
        udp,
        http,
        p4runtime,
        endpoint,
        usage,
        p4,
        health,
        reporter,
        stop_reporter: Arc::new(stop_reporter),
    })
}

/// Runs until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let running = start(&args).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("draining");
    running.drain(Duration::from_secs(args.drain_seconds)).await;
    Ok(())
}
