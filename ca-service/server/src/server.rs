//! Wiring: migrations, keys, the CA core, the gRPC and HTTP listeners, background CRL
//! refresh, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use nexus_tls::{TlsConnInfo, TlsListener};

use crate::auth::Access;
use crate::ca::Ca;
use crate::metrics::Metrics;
use crate::tls::{self, TlsOptions};
use crate::{Error, Settings, grpc, http, keys};

/// How often a replica checks for revocations recorded by another one.
const CRL_SYNC: std::time::Duration = std::time::Duration::from_secs(10);

/// A started server.
#[derive(Debug)]
pub struct RunningServer {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    ca: Arc<Ca>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), Error>>>,
}

impl RunningServer {
    /// The CA core (for tests and in-process callers).
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the listeners.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the listeners end (after [`RunningServer::stop_handle`] fired).
    pub async fn wait(self) -> Result<(), Error> {
        for t in self.tasks {
            t.await
                .map_err(|e| Error::State(format!("server task: {e}")))??;
        }
        Ok(())
    }

    /// A handle that starts the shutdown when sent `true`.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Migrates the database, loads or creates the CA keys and starts the CA core (no listeners):
/// for the server and for administrative commands (issuing a client certificate).
pub async fn open(pool: PgPool, settings: &Settings) -> Result<Arc<Ca>, Error> {
    sqlx::migrate!("./migrations").run(&pool).await?;
    let keys = keys::load_or_create(&pool, &settings.kek).await?;
    let metrics = Arc::new(Metrics::new());
    let ca = Ca::start(pool, keys, settings, metrics).await?;
    ca.seed_tenants(&settings.tenants).await?;
    Ok(ca)
}

/// Starts serving in **plaintext** with bearer-token authentication: for development and
/// in-process use (`nexctl up`, tests). The token crosses the network in clear; production
/// runs [`start_tls`].
pub async fn start(pool: PgPool, settings: Settings) -> Result<RunningServer, Error> {
    tracing::warn!(
        "nexus-ca serving in plaintext: bearer tokens cross the network in clear (use TLS)"
    );
    start_inner(pool, settings, None).await
}

/// Starts serving gRPC and REST over TLS with a server certificate this CA issues itself;
/// callers authenticate with client certificates (role in a URI SAN) or, if
/// `tls.allow_token`, the bearer token.
pub async fn start_tls(
    pool: PgPool,
    settings: Settings,
    tls: TlsOptions,
) -> Result<RunningServer, Error> {
    start_inner(pool, settings, Some(tls)).await
}

async fn start_inner(
    pool: PgPool,
    settings: Settings,
    tls_opts: Option<TlsOptions>,
) -> Result<RunningServer, Error> {
    let ca = open(pool, &settings).await?;

    let grpc_listener = tokio::net::TcpListener::bind(settings.grpc_listen).await?;
    let http_listener = tokio::net::TcpListener::bind(settings.http_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let (access, tls) = match &tls_opts {
        None => (Access::token_only(&settings.auth_token), None),
        Some(o) => {
            let token = o.allow_token.then_some(settings.auth_token.as_str());
            (
                Access::new(token, &o.client_roles),
                Some(tls::bootstrap(&ca, o).await?),
            )
        }
    };
    let access = Arc::new(access);

    let grpc_task = {
        let svc = grpc::service(Arc::clone(&ca), Arc::clone(&access));
        let enrollment = grpc::enrollment_service(Arc::clone(&ca));
        let rx = stop_rx.clone();
        let config = tls.as_ref().map(|t| Arc::clone(&t.config));
        tokio::spawn(async move {
            let server = tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(enrollment);
            let served = match config {
                None => {
                    server
                        .serve_with_incoming_shutdown(
                            tonic::transport::server::TcpIncoming::from(grpc_listener)
                                .with_nodelay(Some(true)),
                            stopped(rx),
                        )
                        .await
                }
                Some(config) => {
                    server
                        .serve_with_incoming_shutdown(
                            TlsListener::new(grpc_listener, config)?.into_stream(),
                            stopped(rx),
                        )
                        .await
                }
            };
            served.map_err(|e| Error::State(format!("gRPC server: {e}")))
        })
    };
    let http_task = {
        let router = http::router(Arc::clone(&ca), access);
        let rx = stop_rx.clone();
        let config = tls.as_ref().map(|t| Arc::clone(&t.config));
        tokio::spawn(async move {
            match config {
                None => {
                    axum::serve(http_listener, router)
                        .with_graceful_shutdown(stopped(rx))
                        .await
                }
                Some(config) => {
                    axum::serve(
                        TlsListener::new(http_listener, config)?,
                        router.into_make_service_with_connect_info::<TlsConnInfo>(),
                    )
                    .with_graceful_shutdown(stopped(rx))
                    .await
                }
            }
            .map_err(Error::Io)
        })
    };
    let crl_task = {
        let ca = Arc::clone(&ca);
        let rx = stop_rx;
        let every = settings.crl_refresh;
        let renewal = tls.map(|t| t.renewal);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            // Another replica's revocation changes the revocation count: `crl()` re-signs
            // then (and feeds the TLS verifier). One count query per interval.
            let mut sync = tokio::time::interval(CRL_SYNC);
            sync.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = ca.refresh_crl().await {
                            tracing::error!(error = %e, "periodic CRL refresh failed");
                        }
                    }
                    _ = sync.tick() => {
                        if let Err(e) = ca.crl().await {
                            tracing::warn!(error = %e, "CRL sync failed");
                        }
                    }
                    _ = stopped(rx.clone()) => {
                        if let Some(r) = &renewal {
                            r.abort();
                        }
                        return Ok(());
                    }
                }
            }
        })
    };
    tracing::info!(%grpc_addr, %http_addr, "nexus-ca serving");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        ca,
        stop,
        tasks: vec![grpc_task, http_task, crl_task],
    })
}
