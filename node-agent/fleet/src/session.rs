//! The agent's session with the controller: connect, register, apply desired states, report.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_fleet_api::v1::agent_message::Msg;
use nexus_fleet_api::v1::controller_message::Msg as CMsg;
use nexus_fleet_api::v1::fleet_client::FleetClient;
use nexus_fleet_api::v1::{
    Ack, AgentMessage, DesiredState, FlashOutcome, FlashResult, Nack, Progress, Register,
    RoutingStatus, RoutingTables, Status,
};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::{Backoff, FlashOutput, FlashTarget, RoutingTarget, running_version};

/// How the agent reaches the controller.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Controller URL, e.g. `http://127.0.0.1:7600`.
    pub endpoint: String,
    /// Kubernetes node name.
    pub node_name: String,
    /// Node labels (matched by Fabric node selectors in local mode).
    pub labels: HashMap<String, String>,
    /// Agent version reported in Register.
    pub agent_version: String,
    /// Status period (the heartbeat).
    pub heartbeat: Duration,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Mutual TLS towards an `https://` controller: the controller's CA and this node's
    /// certificate (role `node`, common name = `node_name`), re-read when the files change.
    pub tls: Option<nexus_tls::ClientTlsFiles>,
}

impl AgentConfig {
    /// Defaults: 5 s heartbeat, 200 ms–30 s backoff.
    pub fn new(endpoint: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            node_name: node_name.into(),
            labels: HashMap::new(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            heartbeat: Duration::from_secs(5),
            backoff: Backoff::default(),
            tls: None,
        }
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The endpoint URL is invalid.
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// The connection failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The stream failed.
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
    /// The controller closed the stream.
    #[error("closed by the controller")]
    Closed,
}

enum Event {
    Progress(Progress),
    Done {
        desired: Box<DesiredState>,
        result: FlashResult,
    },
    Programmed {
        version: String,
        result: Result<(), String>,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A node agent's fleet session, kept across reconnects.
pub struct Agent<T: FlashTarget> {
    cfg: AgentConfig,
    target: Arc<T>,
    /// Highest version applied.
    applied: u64,
    /// Highest version refused or failed.
    nacked: Option<(u64, String)>,
    /// Last desired state accepted (without bundle bytes).
    current: Option<DesiredState>,
    last_flash: Option<FlashResult>,
    flashing: Option<u64>,
    pending: Option<DesiredState>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// The current session's client, for FetchBundle.
    client: Option<FleetClient<Channel>>,
    /// Where routing tables are programmed (`None`: this node has no dataplane tables, and
    /// every push is refused with that reason).
    routing_target: Option<Arc<dyn RoutingTarget>>,
    /// What the dataplane runs, and the last version refused.
    routing: RoutingStatus,
    /// The version being programmed, and the newest one received meanwhile.
    programming: Option<String>,
    routing_pending: Option<RoutingTables>,
}

impl<T: FlashTarget> std::fmt::Debug for Agent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.cfg.node_name)
            .field("applied", &self.applied)
            .field("flashing", &self.flashing)
            .finish_non_exhaustive()
    }
}

impl<T: FlashTarget> Agent<T> {
    /// A fresh agent (as after a boot: it remembers nothing but what its NICs hold).
    pub fn new(cfg: AgentConfig, target: Arc<T>) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            cfg,
            target,
            applied: 0,
            nacked: None,
            current: None,
            last_flash: None,
            flashing: None,
            pending: None,
            events_tx,
            events_rx,
            client: None,
            routing_target: None,
            routing: RoutingStatus::default(),
            programming: None,
            routing_pending: None,
        }
    }

    /// Programs pushed routing tables through `target`.
    pub fn with_routing(mut self, target: Arc<dyn RoutingTarget>) -> Self {
        self.routing_target = Some(target);
        self
    }

    /// Runs forever: a session, then a backoff delay, then another session.
    pub async fn run(mut self) {
        let mut backoff = self.cfg.backoff.clone();
        loop {
            let mut registered = false;
            match self.session(&mut registered).await {
                Ok(()) => info!(node = %self.cfg.node_name, "session ended"),
                Err(e) => debug!(node = %self.cfg.node_name, error = %e, "session failed"),
            }
            if registered {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            // Flashes finishing while disconnected are recorded, reported on the next Register.
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    Some(ev) = self.events_rx.recv() => { let _ = self.on_event(ev, None).await; }
                }
            }
        }
    }

    fn status(&self) -> Status {
        Status {
            nics: self.target.inventory(),
            last_flash: self.last_flash.clone(),
            heartbeat_ms: now_ms(),
            applied_version: self.applied,
            busy: self.flashing.is_some(),
            routing: Some(self.routing.clone()),
        }
    }

    fn register(&self) -> Register {
        Register {
            node_name: self.cfg.node_name.clone(),
            agent_version: self.cfg.agent_version.clone(),
            nics: self.target.inventory(),
            labels: self.cfg.labels.clone(),
            current: self.current.clone(),
            last_flash: self.last_flash.clone(),
            routing: Some(self.routing.clone()),
        }
    }

    async fn session(&mut self, registered: &mut bool) -> Result<(), SessionError> {
        let channel = match &self.cfg.tls {
            // TLS (and the client certificate) through the workspace's one dialer.
            Some(tls) => nexus_tls::grpc_channel(
                &self.cfg.endpoint,
                Some(tls),
                Duration::from_secs(5),
                Duration::from_secs(3600),
            )
            .map_err(|e| SessionError::Endpoint(e.to_string()))?,
            None => {
                Endpoint::from_shared(self.cfg.endpoint.clone())
                    .map_err(|e| SessionError::Endpoint(e.to_string()))?
                    .connect_timeout(Duration::from_secs(5))
                    .tcp_nodelay(true)
                    .connect()
                    .await?
            }
        };
        let mut client = FleetClient::new(channel);
        self.client = Some(client.clone());
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        tx.send(AgentMessage::of(Msg::Register(self.register())))
            .await
            .map_err(|_| SessionError::Closed)?;
        let outbound =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut inbound = client.connect(outbound).await?.into_inner();
        *registered = true;
        debug!(node = %self.cfg.node_name, "registered");
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg? {
                    Some(m) => {
                        match m.msg {
                            Some(CMsg::Desired(d)) => self.on_desired(d, &tx).await?,
                            Some(CMsg::Routing(t)) => self.on_routing(t, &tx).await?,
                            None => {}
                        }
                    }
                    None => return Err(SessionError::Closed),
                },
                Some(ev) = self.events_rx.recv() => self.on_event(ev, Some(&tx)).await?,
                _ = heartbeat.tick() => send(&tx, Msg::Status(self.status())).await?,
            }
        }
    }

    async fn on_desired(
        &mut self,
        d: DesiredState,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), SessionError> {
        if let Some(v) = self.flashing {
            if d.version > v {
                self.pending = Some(d);
            }
            return Ok(());
        }
        if d.version <= self.applied {
            return send(tx, Msg::Ack(Ack { version: d.version })).await;
        }
        if let Some((v, reason)) = &self.nacked
            && *v == d.version
        {
            let nack = Nack {
                version: *v,
                reason: reason.clone(),
            };
            return send(tx, Msg::Nack(nack)).await;
        }
        let mut accepted = d.clone();
        if let Some(fw) = accepted.firmware.as_mut() {
            fw.bundle = Vec::new();
        }
        self.current = Some(accepted);
        let needs_flash = d.firmware.as_ref().is_some_and(|fw| {
            running_version(&self.target.inventory(), &fw.pci_addresses).as_deref()
                != Some(fw.version.as_str())
        });
        if !needs_flash {
            self.applied = d.version;
            send(tx, Msg::Status(self.status())).await?;
            return send(tx, Msg::Ack(Ack { version: d.version })).await;
        }
        self.flashing = Some(d.version);
        let target = self.target.clone();
        let events = self.events_tx.clone();
        let node = self.cfg.node_name.clone();
        let fetch = d.firmware.as_ref().is_some_and(|fw| {
            fw.bundle.is_empty()
                && !fw.sha256.is_empty()
                && !inactive_holds(&self.target.inventory(), fw)
        });
        let client = self.client.clone();
        tokio::spawn(async move {
            let Some(mut fw) = d.firmware.clone() else {
                return;
            };
            let started = now_ms();
            let version = d.version;
            let progress_tx = events.clone();
            let progress = move |stage: &str, bytes: u64, total: u64| {
                let _ = progress_tx.send(Event::Progress(Progress {
                    version,
                    stage: stage.into(),
                    bytes,
                    total,
                }));
            };
            let mut fetched = Ok(());
            if fetch {
                fetched = match client {
                    Some(c) => fetch_bundle(c, &fw.sha256, &progress)
                        .await
                        .map(|b| fw.bundle = b),
                    None => Err("no session to fetch the bundle over".into()),
                };
            }
            let out: FlashOutput = match fetched {
                Ok(()) => {
                    info!(%node, version = %fw.version, "flashing");
                    target.apply(&fw, &progress).await
                }
                Err(e) => FlashOutput::err(FlashOutcome::Failed, "Download", e),
            };
            let result = FlashResult {
                version: fw.version.clone(),
                outcome: out.outcome as i32,
                stage: out.stage,
                message: out.message,
                started_at_ms: started,
                finished_at_ms: now_ms(),
            };
            let _ = events.send(Event::Done {
                desired: Box::new(d),
                result,
            });
        });
        send(tx, Msg::Status(self.status())).await
    }

    /// Programs pushed tables, one version at a time; a version already running or already
    /// refused is answered with the status alone.
    async fn on_routing(
        &mut self,
        t: RoutingTables,
        tx: &mpsc::Sender<AgentMessage>,
    ) -> Result<(), SessionError> {
        if self.programming.is_some() {
            self.routing_pending = Some(t);
            return Ok(());
        }
        if t.version == self.routing.programmed_version || t.version == self.routing.refused_version
        {
            return send(tx, Msg::Status(self.status())).await;
        }
        let Some(target) = self.routing_target.clone() else {
            self.routing.refused_version = t.version;
            self.routing.refused_reason =
                "this node's agent programs no dataplane tables (no P4Runtime target configured)"
                    .into();
            return send(tx, Msg::Status(self.status())).await;
        };
        self.programming = Some(t.version.clone());
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let result = target.program(&t).await;
            let _ = events.send(Event::Programmed {
                version: t.version,
                result,
            });
        });
        Ok(())
    }

    async fn on_event(
        &mut self,
        ev: Event,
        tx: Option<&mpsc::Sender<AgentMessage>>,
    ) -> Result<(), SessionError> {
        match ev {
            Event::Programmed { version, result } => {
                self.programming = None;
                match result {
                    Ok(()) => {
                        info!(node = %self.cfg.node_name, %version, "routing tables programmed");
                        self.routing.programmed_version = version;
                    }
                    Err(reason) => {
                        warn!(node = %self.cfg.node_name, %version, %reason, "routing tables refused");
                        self.routing.refused_version = version;
                        self.routing.refused_reason = reason;
                    }
                }
                if let Some(tx) = tx {
                    send(tx, Msg::Status(self.status())).await?;
                    if let Some(next) = self.routing_pending.take() {
                        Box::pin(self.on_routing(next, tx)).await?;
                    }
                }
            }
            Event::Progress(p) => {
                if let Some(tx) = tx {
                    send(tx, Msg::Progress(p)).await?;
                }
            }
            Event::Done { desired, result } => {
                self.flashing = None;
                let ok = result.outcome == FlashOutcome::Succeeded as i32;
                let reason = format!("{}: {}", result.stage, result.message);
                if ok {
                    self.applied = self.applied.max(desired.version);
                } else {
                    warn!(node = %self.cfg.node_name, %reason, "flash failed");
                    self.nacked = Some((desired.version, reason.clone()));
                }
                self.last_flash = Some(result);
                if let Some(tx) = tx {
                    send(tx, Msg::Status(self.status())).await?;
                    let answer = if ok {
                        Msg::Ack(Ack {
                            version: desired.version,
                        })
                    } else {
                        Msg::Nack(Nack {
                            version: desired.version,
                            reason,
                        })
                    };
                    send(tx, answer).await?;
                    if let Some(next) = self.pending.take() {
                        Box::pin(self.on_desired(next, tx)).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether every selected NIC holds `fw.version`, bootable, in its inactive bank (a rollback is
/// then an A/B switch and needs no bundle).
fn inactive_holds(
    nics: &[nexus_fleet_api::v1::Nic],
    fw: &nexus_fleet_api::v1::FirmwareTarget,
) -> bool {
    let mut selected = nics
        .iter()
        .filter(|n| fw.pci_addresses.is_empty() || fw.pci_addresses.contains(&n.pci_address))
        .peekable();
    selected.peek().is_some()
        && selected.all(|n| {
            n.inactive_bank()
                .is_some_and(|b| b.version == fw.version && b.bootable)
        })
}

/// Largest bundle the agent accepts over FetchBundle.
const MAX_BUNDLE: u64 = 1 << 30;

/// Fetches a bundle by sha256, retrying transient failures a few times.
async fn fetch_bundle(
    client: FleetClient<Channel>,
    sha256: &str,
    progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
) -> Result<Vec<u8>, String> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut last = String::new();
    for _ in 0..6 {
        match fetch_once(client.clone(), sha256, progress).await {
            Ok(b) => return Ok(b),
            Err(e) => last = e,
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
    Err(format!("fetching bundle {sha256}: {last}"))
}

async fn fetch_once(
    mut client: FleetClient<Channel>,
    sha256: &str,
    progress: &(dyn Fn(&str, u64, u64) + Send + Sync),
) -> Result<Vec<u8>, String> {
    let req = nexus_fleet_api::v1::BundleRequest {
        sha256: sha256.to_owned(),
    };
    let mut stream = client
        .fetch_bundle(req)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut buf = Vec::new();
    while let Some(c) = stream.message().await.map_err(|e| e.to_string())? {
        if c.offset != buf.len() as u64 || c.total > MAX_BUNDLE {
            return Err("malformed bundle stream".into());
        }
        buf.extend_from_slice(&c.data);
        progress("Download", buf.len() as u64, c.total);
    }
    Ok(buf)
}

async fn send(tx: &mpsc::Sender<AgentMessage>, msg: Msg) -> Result<(), SessionError> {
    tx.send(AgentMessage::of(msg))
        .await
        .map_err(|_| SessionError::Closed)
}
