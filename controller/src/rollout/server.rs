//! The fleet gRPC endpoint: one `Connect` stream per node agent, feeding [`Fleet`].

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use futures::Stream;
use nexus_fleet_api::v1 as pb;
use pb::agent_message::Msg;
use pb::fleet_server::Fleet as FleetService;
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::fleet::{Fleet, Timing};
use super::metrics::RolloutMetrics;

/// State shared by the gRPC endpoint, the reconcile loop and the HTTP API.
#[derive(Debug)]
pub struct Shared {
    /// The fleet.
    pub fleet: Mutex<Fleet>,
    /// Signalled on every change that may let a rollout move.
    pub changed: Notify,
    /// Timeouts.
    pub timing: Timing,
    /// Metrics.
    pub metrics: RolloutMetrics,
    /// Becomes true on shutdown: sessions end.
    pub shutdown: watch::Receiver<bool>,
    /// RoutingDomains (local mode) with the status the routing controller computed.
    pub routing: Mutex<crate::routing::local::Domains>,
}

/// The tonic service.
#[derive(Debug, Clone)]
pub struct FleetServer {
    shared: Arc<Shared>,
}

impl FleetServer {
    /// A service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The tonic server wrapper.
    pub fn into_service(self) -> pb::fleet_server::FleetServer<Self> {
        pb::fleet_server::FleetServer::new(self)
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;
type Chunks = Pin<Box<dyn Stream<Item = Result<pb::BundleChunk, Status>> + Send>>;

/// Size of one FetchBundle chunk.
pub const CHUNK: usize = 1024 * 1024;

#[tonic::async_trait]
impl FleetService for FleetServer {
    type ConnectStream = Outbound;
    type FetchBundleStream = Chunks;

    async fn fetch_bundle(
        &self,
        request: Request<pb::BundleRequest>,
    ) -> Result<Response<Self::FetchBundleStream>, Status> {
        let sha = request.into_inner().sha256;
        let bytes = self
            .shared
            .fleet
            .lock()
            .await
            .verified_bundle(&sha)
            .ok_or_else(|| Status::not_found(format!("no verified bundle with sha256 {sha}")))?;
        let total = bytes.len() as u64;
        let chunks =
            futures::stream::iter((0..bytes.len().max(1)).step_by(CHUNK).map(move |start| {
                let end = (start + CHUNK).min(bytes.len());
                Ok(pb::BundleChunk {
                    offset: start as u64,
                    total,
                    data: bytes.get(start..end).unwrap_or_default().to_vec(),
                })
            }));
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let tls = request
            .extensions()
            .get::<nexus_tls::TlsConnInfo>()
            .cloned();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before Register"))?;
        let Some(Msg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message must be Register",
            ));
        };
        let name = reg.node_name.clone();
        if name.is_empty() || name.len() > 253 {
            return Err(Status::invalid_argument(
                "Register.node_name must be 1–253 characters",
            ));
        }
        if let Err(why) = super::local::admit_node(tls.as_ref(), &name) {
            warn!(node = %name, reason = %why, "registration refused");
            self.shared.metrics.refused_registrations.inc();
            return Err(Status::permission_denied(why));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.shared.fleet.lock().await.register(reg, tx, Utc::now());
        debug!(node = %name, session = id, "agent registered");
        self.shared.changed.notify_one();
        let shared = self.shared.clone();
        let mut shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = inbound.message() => match m {
                        Ok(Some(pb::AgentMessage { msg: Some(msg) })) => {
                            if matches!(msg, Msg::Nack(_)) {
                                shared.metrics.nacks.inc();
                            }
                            let changed = shared.fleet.lock().await.on_message(&name, id, msg, Utc::now());
                            if changed {
                                shared.changed.notify_one();
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                    _ = shutdown.changed() => break,
                }
            }
            shared.fleet.lock().await.disconnect(&name, id);
            shared.changed.notify_one();
            info!(node = %name, session = id, "agent disconnected");
        });
        let out =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (Ok(*m), rx)) },
            );
        Ok(Response::new(Box::pin(out)))
    }
}
