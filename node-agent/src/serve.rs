//! `nexus-agent serve`: keep the inventory fresh and expose it over HTTP.
//!
//! Deliberately tiny: `GET /healthz` (liveness) and `GET /status` (the same JSON as the status
//! file). Discovery runs on a blocking thread every `interval`; handlers only read a snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tokio::sync::RwLock;

use crate::AgentError;
use crate::status::AgentStatus;

type Shared = Arc<RwLock<AgentStatus>>;

/// The HTTP routes over a shared status snapshot.
pub fn router(status: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/status",
            get(|State(s): State<Shared>| async move { Json(s.read().await.clone()) }),
        )
        .with_state(status)
}

/// Serves `router` on `listen`, calling `refresh` (blocking) every `interval` to replace the
/// snapshot, until Ctrl-C or SIGTERM.
pub fn serve(
    listen: SocketAddr,
    interval: Duration,
    initial: AgentStatus,
    refresh: impl FnMut() -> Result<AgentStatus, AgentError> + Send + 'static,
) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(AgentError::io("start runtime", "tokio"))?;
    rt.block_on(async move {
        let shared: Shared = Arc::new(RwLock::new(initial));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(AgentError::io("bind", listen.to_string()))?;
        tracing::info!(%listen, "serving /healthz and /status");
        let refresher = tokio::spawn(refresh_loop(shared.clone(), interval, refresh));
        let result = axum::serve(listener, router(shared))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(AgentError::io("serve", listen.to_string()));
        refresher.abort();
        result
    })
}

/// Ctrl-C, or SIGTERM (what the kubelet sends a DaemonSet pod).
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
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

async fn refresh_loop<F>(shared: Shared, interval: Duration, mut refresh: F)
where
    F: FnMut() -> Result<AgentStatus, AgentError> + Send + 'static,
{
    let mut tick = tokio::time::interval(interval);
    tick.tick().await; // the first tick is immediate; the caller already has a fresh snapshot
    loop {
        tick.tick().await;
        // Discovery does blocking I/O (files, `devlink`): run it off the async workers, handing
        // the closure over and back so no lock is needed.
        let joined = tokio::task::spawn_blocking(move || {
            let result = refresh();
            (refresh, result)
        })
        .await;
        let Ok((f, result)) = joined else {
            tracing::error!("inventory refresh panicked; serving the last snapshot");
            return;
        };
        refresh = f;
        match result {
            Ok(st) => *shared.write().await = st,
            Err(e) => tracing::warn!(error = %e, "inventory refresh failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn status_and_health() {
        let st = AgentStatus {
            agent_version: "9.9.9".into(),
            ..AgentStatus::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router(Arc::new(RwLock::new(st))))
                .await
                .unwrap();
        });
        for (path, needle) in [
            ("/healthz", "ok"),
            ("/status", "\"agent_version\":\"9.9.9\""),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).await.unwrap();
            assert!(body.starts_with("HTTP/1.1 200"), "{body}");
            assert!(body.contains(needle), "{body}");
        }
    }
}
