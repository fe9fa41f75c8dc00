//! Wiring: migrations, keys, the CA core, the gRPC and HTTP listeners, background CRL
//! refresh, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::Ca;
use crate::metrics::Metrics;
use crate::{Error, Settings, grpc, http, keys};

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

/// Migrates the database, loads or creates the CA keys and starts serving.
pub async fn start(pool: PgPool, settings: Settings) -> Result<RunningServer, Error> {
    sqlx::migrate!("./migrations").run(&pool).await?;
    let keys = keys::load_or_create(&pool, &settings.kek).await?;
    let metrics = Arc::new(Metrics::new());
    let ca = Ca::start(pool, keys, &settings, metrics).await?;
    ca.seed_tenants(&settings.tenants).await?;

    let grpc_listener = tokio::net::TcpListener::bind(settings.grpc_listen).await?;
    let http_listener = tokio::net::TcpListener::bind(settings.http_listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let token = Arc::new(http::TokenCheck::new(&settings.auth_token));

    let grpc_task = {
        let svc = grpc::service(Arc::clone(&ca), Arc::clone(&token));
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true)),
                    stopped(rx),
                )
                .await
                .map_err(|e| Error::State(format!("gRPC server: {e}")))
        })
    };
    let http_task = {
        let router = http::router(Arc::clone(&ca), token);
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            axum::serve(http_listener, router)
                .with_graceful_shutdown(stopped(rx))
                .await
                .map_err(Error::Io)
        })
    };
    let crl_task = {
        let ca = Arc::clone(&ca);
        let rx = stop_rx;
        let every = settings.crl_refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = ca.refresh_crl().await {
                            tracing::error!(error = %e, "periodic CRL refresh failed");
                        }
                    }
                    _ = stopped(rx.clone()) => return Ok(()),
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
