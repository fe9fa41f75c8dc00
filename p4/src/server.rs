//! The P4Runtime v1 service (`p4.v1.P4Runtime`) over the software tables.
//!
//! [`Target`] is the device: its forwarding pipeline config, the published [`Snapshot`] the
//! pipeline reads, the counters, and controller arbitration. [`P4RuntimeService`] is the tonic
//! service around it. Behaviour follows the P4Runtime specification (v1.4):
//!
//! - **Arbitration** (StreamChannel): per role, the stream with the highest election id is the
//!   primary. Each arbitration message is answered; on every change of primary all streams of the
//!   role are told — OK to the primary, ALREADY_EXISTS to backups (NOT_FOUND while there is no
//!   primary), each with the primary's election id. A second stream with an election id already
//!   in use, a wrong device id or a role config this target does not implement ends that stream
//!   with an error. When the primary's stream ends, the next highest takes over.
//! - **Write** and **SetForwardingPipelineConfig** are accepted only from the primary of the
//!   role named in the request, with its current election id (PERMISSION_DENIED otherwise).
//!   Read, GetForwardingPipelineConfig and Capabilities are open to any client.
//! - **Write atomicity**: updates are validated against the loaded P4Info and applied in order
//!   to a copy of the tables, which is published in one step. CONTINUE_ON_ERROR publishes the
//!   updates that succeeded; ROLLBACK_ON_ERROR and DATAPLANE_ATOMIC publish nothing if any
//!   failed (the others are reported ABORTED). A failed batch returns UNKNOWN with one
//!   `p4.v1.Error` per update in `google.rpc.Status.details`, as the specification prescribes.
//! - **SetForwardingPipelineConfig**: VERIFY, VERIFY_AND_SAVE (later reads and writes go to the
//!   saved config's empty tables, not yet forwarding), COMMIT, VERIFY_AND_COMMIT (fresh empty
//!   tables) and RECONCILE_AND_COMMIT (keeps the tables when the P4Info is unchanged, else
//!   INVALID_ARGUMENT). Only P4Infos the NexRoute pipeline can run are accepted.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::error::{Code, P4Error};
use crate::p4info::Schema;
use crate::pipeline::{Bindings, Counters, Snapshot, Verdict};
use crate::proto::google::rpc as grpc_status;
use crate::proto::p4::v1 as pb;
use crate::proto::p4::v1::p4_runtime_server::{P4Runtime, P4RuntimeServer};
use crate::store::{self, Store};

/// The P4Runtime API version this target implements.
pub const API_VERSION: &str = "1.4.0";
/// Entities per ReadResponse message.
const READ_CHUNK: usize = 2_000;

/// Labels of the write counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Canonical code name.
    pub code: String,
}

/// Metrics of the service (register them on the dataplane's registry).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Write RPCs by resulting code.
    pub writes: Family<CodeLabel, Counter>,
    /// Updates applied.
    pub updates_applied: Counter,
    /// Updates refused, by code.
    pub updates_refused: Family<CodeLabel, Counter>,
    /// Primary changes.
    pub arbitration_changes: Counter,
    /// Connected controller streams.
    pub streams: Gauge,
    /// Table entries installed.
    pub entries: Gauge,
    /// Pipeline configs committed.
    pub pipeline_commits: Counter,
}

impl Metrics {
    /// Registers every metric under `p4runtime_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("p4runtime");
        r.register(
            "writes",
            "Write RPCs by resulting code",
            self.writes.clone(),
        );
        r.register(
            "updates_applied",
            "Updates applied to the tables",
            self.updates_applied.clone(),
        );
        r.register(
            "updates_refused",
            "Updates refused, by code",
            self.updates_refused.clone(),
        );
        r.register(
            "arbitration_changes",
            "Changes of primary controller",
            self.arbitration_changes.clone(),
        );
        r.register(
            "streams",
            "Connected controller streams",
            self.streams.clone(),
        );
        r.register(
            "table_entries",
            "Table entries installed",
            self.entries.clone(),
        );
        r.register(
            "pipeline_commits",
            "Forwarding pipeline configs committed",
            self.pipeline_commits.clone(),
        );
    }
}

type StreamTx = mpsc::Sender<Result<pb::StreamMessageResponse, Status>>;

#[derive(Debug)]
struct Client {
    stream: u64,
    role: String,
    election_id: Option<u128>,
    tx: StreamTx,
}

#[derive(Debug, Default)]
struct Arbitration {
    clients: Vec<Client>,
    /// Current primary election id per role.
    primary: Vec<(String, u128)>,
}

impl Arbitration {
    fn primary_of(&self, role: &str) -> Option<u128> {
        self.primary
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, e)| *e)
    }

    fn elect(&mut self, role: &str) -> (Option<u128>, bool) {
        let best = self
            .clients
            .iter()
            .filter(|c| c.role == role)
            .filter_map(|c| c.election_id)
            .max();
        let old = self.primary_of(role);
        self.primary.retain(|(r, _)| r != role);
        if let Some(b) = best {
            self.primary.push((role.to_owned(), b));
        }
        (best, best != old)
    }
}

fn u128_of(e: &Option<pb::Uint128>) -> Option<u128> {
    e.as_ref()
        .map(|e| (u128::from(e.high) << 64) | u128::from(e.low))
}

fn pb_u128(v: u128) -> pb::Uint128 {
    pb::Uint128 {
        high: (v >> 64) as u64,
        low: v as u64,
    }
}

/// A published pipeline: tables plus the counters they count into.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The tables and ids.
    pub snapshot: Arc<Snapshot>,
    /// The counters.
    pub counters: Arc<Counters>,
}

impl Loaded {
    /// Runs one packet through the pipeline.
    pub fn process(&self, pkt: &mut [u8]) -> Verdict {
        self.snapshot.process(&self.counters, pkt)
    }
}

#[derive(Debug, Default)]
struct Control {
    /// The committed config (what Get returns).
    config: Option<pb::ForwardingPipelineConfig>,
    /// A config saved by VERIFY_AND_SAVE, with its own (not forwarding) tables.
    saved: Option<(pb::ForwardingPipelineConfig, Snapshot)>,
    arbitration: Arbitration,
}

/// The software P4Runtime target (one device).
#[derive(Debug)]
pub struct Target {
    device_id: u64,
    published: RwLock<Option<Loaded>>,
    control: Mutex<Control>,
    next_stream: AtomicU64,
    metrics: Metrics,
}

impl Target {
    /// A device with no pipeline loaded.
    pub fn new(device_id: u64) -> Arc<Target> {
        Arc::new(Target {
            device_id,
            published: RwLock::new(None),
            control: Mutex::new(Control::default()),
            next_stream: AtomicU64::new(1),
            metrics: Metrics::default(),
        })
    }

    /// Its device id.
    pub fn device_id(&self) -> u64 {
        self.device_id
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The pipeline the dataplane runs (None until a config is committed). Cheap: clone it once
    /// per batch of packets.
    pub fn loaded(&self) -> Option<Loaded> {
        self.published
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs `f` on the pipeline the dataplane runs (None until a config is committed) without
    /// cloning it: for one lookup, where the clone's reference-count traffic would cost more
    /// than the lookup.
    pub fn with_loaded<R>(&self, f: impl FnOnce(&Loaded) -> R) -> Option<R> {
        self.published
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(f)
    }

    fn publish(&self, l: Option<Loaded>) {
        if let Some(l) = &l {
            self.metrics
                .entries
                .set(l.snapshot.store.entry_count() as i64);
        }
        *self
            .published
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = l;
    }

    /// Verifies that the NexRoute pipeline can run `config`.
    fn verify(config: &pb::ForwardingPipelineConfig) -> Result<Snapshot, Status> {
        let p4info = config
            .p4info
            .clone()
            .ok_or_else(|| Status::invalid_argument("config without a P4Info"))?;
        let schema = Schema::new(p4info).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let bindings =
            Bindings::new(&schema).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = Store::new(&schema);
        Ok(Snapshot {
            schema: Arc::new(schema),
            bindings,
            store,
        })
    }

    /// Loads the committed NexRoute P4Info directly, as a node does before any controller
    /// connects (or a test or bench that needs a pipeline).
    pub async fn load_nexroute(&self) -> Result<(), crate::Error> {
        let p4info = crate::p4info::nexroute_p4info()?;
        let config = pb::ForwardingPipelineConfig {
            p4info: Some(p4info),
            p4_device_config: Vec::new(),
            cookie: None,
        };
        let snap =
            Self::verify(&config).map_err(|s| crate::Error::P4Info(s.message().to_owned()))?;
        let mut c = self.control.lock().await;
        self.commit(&mut c, config, snap);
        Ok(())
    }

    fn commit(&self, c: &mut Control, config: pb::ForwardingPipelineConfig, snap: Snapshot) {
        let counters = Arc::new(Counters::new(&snap.schema));
        c.config = Some(config);
        c.saved = None;
        self.publish(Some(Loaded {
            snapshot: Arc::new(snap),
            counters,
        }));
        self.metrics.pipeline_commits.inc();
    }

    fn check_device(&self, device_id: u64) -> Result<(), Status> {
        if device_id != self.device_id {
            return Err(Status::not_found(format!(
                "unknown device id {device_id} (this is device {})",
                self.device_id
            )));
        }
        Ok(())
    }

    fn check_primary(c: &Control, role: &str, election_id: Option<u128>) -> Result<(), Status> {
        match (c.arbitration.primary_of(role), election_id) {
            (Some(p), Some(e)) if p == e => Ok(()),
            (Some(p), Some(e)) => Err(Status::permission_denied(format!(
                "election id {e} is not the primary's ({p}) for role `{role}`"
            ))),
            (None, _) => Err(Status::permission_denied(format!(
                "no primary controller for role `{role}`: arbitrate on StreamChannel first"
            ))),
            (Some(_), None) => Err(Status::permission_denied("election id missing")),
        }
    }

    async fn write(&self, req: pb::WriteRequest) -> Result<(), Status> {
        self.check_device(req.device_id)?;
        let mut c = self.control.lock().await;
        Self::check_primary(&c, &req.role, u128_of(&req.election_id))?;
        use pb::write_request::Atomicity;
        let atomicity = Atomicity::try_from(req.atomicity).map_err(|_| {
            Status::invalid_argument(format!("unknown atomicity {}", req.atomicity))
        })?;
        // Writes go to the saved config's tables while one is pending (VERIFY_AND_SAVE).
        let base: Snapshot = match (&c.saved, self.loaded()) {
            (Some((_, s)), _) => s.clone(),
            (None, Some(l)) => (*l.snapshot).clone(),
            (None, None) => {
                return Err(Status::failed_precondition(
                    "no forwarding pipeline config is loaded",
                ));
            }
        };
        let mut work = base;
        work.store.counter_sets.clear();
        let mut results: Vec<Result<(), P4Error>> = Vec::with_capacity(req.updates.len());
        for u in &req.updates {
            let r = work.store.apply(&work.schema, u);
            if let Err(e) = &r {
                self.metrics
                    .updates_refused
                    .get_or_create(&CodeLabel {
                        code: format!("{:?}", e.code),
                    })
                    .inc();
                debug!(code = ?e.code, message = %e.message, "update refused");
            }
            results.push(r);
            if atomicity != Atomicity::ContinueOnError && results.last().is_some_and(Result::is_err)
            {
                break;
            }
        }
        let failed = results.iter().any(Result::is_err);
        let publish = !failed || atomicity == Atomicity::ContinueOnError;
        if publish {
            let applied = results.iter().filter(|r| r.is_ok()).count();
            self.metrics.updates_applied.inc_by(applied as u64);
            let sets = std::mem::take(&mut work.store.counter_sets);
            if let Some((cfg, _)) = c.saved.take() {
                c.saved = Some((cfg, work));
            } else if let Some(old) = self.loaded() {
                for s in &sets {
                    old.counters.set(s.counter_id, s.index, s.bytes, s.packets);
                }
                self.publish(Some(Loaded {
                    snapshot: Arc::new(work),
                    counters: old.counters,
                }));
            }
        }
        drop(c);
        if !failed {
            self.metrics
                .writes
                .get_or_create(&CodeLabel { code: "Ok".into() })
                .inc();
            return Ok(());
        }
        self.metrics
            .writes
            .get_or_create(&CodeLabel {
                code: "Unknown".into(),
            })
            .inc();
        let errors: Vec<pb::Error> = (0..req.updates.len())
            .map(|i| match results.get(i) {
                Some(Ok(())) if publish => pb::Error {
                    canonical_code: Code::Ok as i32,
                    ..Default::default()
                },
                Some(Ok(())) | None => pb::Error {
                    canonical_code: Code::Aborted as i32,
                    message: "not applied: another update of this all-or-nothing batch failed"
                        .into(),
                    ..Default::default()
                },
                Some(Err(e)) => pb::Error {
                    canonical_code: e.code as i32,
                    message: e.message.clone(),
                    ..Default::default()
                },
            })
            .collect();
        let n_failed = results.iter().filter(|r| r.is_err()).count();
        let first = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(|e| e.message.clone())
            .unwrap_or_default();
        let message = format!(
            "{n_failed} of {} updates failed; first: {first}",
            req.updates.len()
        );
        Err(batch_status(message, errors))
    }

    async fn read(&self, req: &pb::ReadRequest) -> Result<Vec<pb::Entity>, Status> {
        self.check_device(req.device_id)?;
        let snap: Snapshot;
        let counters: Option<Arc<Counters>>;
        {
            let c = self.control.lock().await;
            match (&c.saved, self.loaded()) {
                (Some((_, s)), _) => {
                    snap = s.clone();
                    counters = None;
                }
                (None, Some(l)) => {
                    snap = (*l.snapshot).clone();
                    counters = Some(l.counters);
                }
                (None, None) => {
                    return Err(Status::failed_precondition(
                        "no forwarding pipeline config is loaded",
                    ));
                }
            }
        }
        let mut out = Vec::new();
        for e in &req.entities {
            if let Some(pb::entity::Entity::CounterEntry(ce)) = &e.entity {
                read_counters(&snap.schema, counters.as_deref(), ce, &mut out)
                    .map_err(to_status)?;
            } else {
                store::read(&snap.store, &snap.schema, e, &mut out).map_err(to_status)?;
            }
        }
        Ok(out)
    }
}

fn read_counters(
    schema: &Schema,
    counters: Option<&Counters>,
    ce: &pb::CounterEntry,
    out: &mut Vec<pb::Entity>,
) -> Result<(), P4Error> {
    let infos: Vec<_> = if ce.counter_id == 0 {
        let mut v: Vec<_> = schema.counters().collect();
        v.sort_by_key(|c| c.id);
        v
    } else {
        vec![schema.counter(ce.counter_id).ok_or_else(|| {
            P4Error::new(
                Code::NotFound,
                format!("unknown counter {:#010x}", ce.counter_id),
            )
        })?]
    };
    for info in infos {
        let cells = counters.and_then(|c| c.cells(info.id));
        let range = match &ce.index {
            None => 0..info.size,
            Some(i) if i.index >= 0 && (i.index as usize) < info.size => {
                i.index as usize..i.index as usize + 1
            }
            Some(i) => {
                return Err(P4Error::new(
                    Code::OutOfRange,
                    format!("index {} outside `{}`", i.index, info.name),
                ));
            }
        };
        for i in range {
            let (bytes, packets) = cells
                .and_then(|c| c.get(i))
                .map(|c| {
                    (
                        c.bytes.load(Ordering::Relaxed),
                        c.packets.load(Ordering::Relaxed),
                    )
                })
                .unwrap_or((0, 0));
            out.push(pb::Entity {
                entity: Some(pb::entity::Entity::CounterEntry(pb::CounterEntry {
                    counter_id: info.id,
                    index: Some(pb::Index { index: i as i64 }),
                    data: Some(pb::CounterData {
                        byte_count: if info.bytes { bytes as i64 } else { 0 },
                        packet_count: if info.packets { packets as i64 } else { 0 },
                    }),
                })),
            });
        }
    }
    Ok(())
}

fn to_status(e: P4Error) -> Status {
    Status::new(e.code.to_tonic(), e.message)
}

/// The UNKNOWN status of a failed batch, with one `p4.v1.Error` per update in its details.
fn batch_status(message: String, errors: Vec<pb::Error>) -> Status {
    let details = grpc_status::Status {
        code: Code::Unknown as i32,
        message: message.clone(),
        details: errors
            .iter()
            .map(|e| prost_types::Any {
                type_url: "type.googleapis.com/p4.v1.Error".into(),
                value: e.encode_to_vec(),
            })
            .collect(),
    };
    Status::with_details(
        tonic::Code::Unknown,
        message,
        details.encode_to_vec().into(),
    )
}

/// Decodes the per-update errors of a failed Write (empty if the status carries none).
pub fn write_errors(status: &Status) -> Vec<pb::Error> {
    match grpc_status::Status::decode(status.details()) {
        Ok(s) => s
            .details
            .iter()
            .filter(|a| a.type_url.ends_with("p4.v1.Error"))
            .filter_map(|a| pb::Error::decode(a.value.as_slice()).ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The tonic service.
#[derive(Debug, Clone)]
pub struct P4RuntimeService {
    target: Arc<Target>,
}

impl P4RuntimeService {
    /// A service for `target`.
    pub fn new(target: Arc<Target>) -> Self {
        P4RuntimeService { target }
    }

    /// The tonic server, ready to add to a router.
    pub fn server(target: Arc<Target>) -> P4RuntimeServer<P4RuntimeService> {
        P4RuntimeServer::new(Self::new(target))
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Sends each arbitration outcome of `role` to its clients.
fn notify(arb: &mut Arbitration, role: &str, primary: Option<u128>, only: Option<u64>) {
    arb.clients.retain(|c| !c.tx.is_closed());
    for c in arb.clients.iter().filter(|c| c.role == role) {
        if only.is_some_and(|s| s != c.stream) {
            continue;
        }
        let is_primary = primary.is_some() && c.election_id == primary;
        let (code, message) = match (is_primary, primary) {
            (true, _) => (Code::Ok, "you are the primary".to_owned()),
            (false, Some(_)) => (
                Code::AlreadyExists,
                "a primary with a higher election id exists".to_owned(),
            ),
            (false, None) => (Code::NotFound, "there is no primary".to_owned()),
        };
        let msg = pb::StreamMessageResponse {
            update: Some(pb::stream_message_response::Update::Arbitration(
                pb::MasterArbitrationUpdate {
                    device_id: 0,
                    role: (!role.is_empty()).then(|| pb::Role {
                        name: role.to_owned(),
                        ..Default::default()
                    }),
                    election_id: primary.or(c.election_id).map(pb_u128),
                    status: Some(grpc_status::Status {
                        code: code as i32,
                        message,
                        details: vec![],
                    }),
                },
            )),
        };
        // A full or closed channel means that client is gone or not reading; it will be
        // dropped on its stream's end.
        let _ = c.tx.try_send(Ok(msg));
    }
}

#[tonic::async_trait]
impl P4Runtime for P4RuntimeService {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.target.write(request.into_inner()).await?;
        Ok(Response::new(pb::WriteResponse {}))
    }

    type ReadStream = BoxStream<pb::ReadResponse>;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let entities = self.target.read(request.get_ref()).await?;
        let chunks: Vec<Result<pb::ReadResponse, Status>> = if entities.is_empty() {
            vec![Ok(pb::ReadResponse { entities: vec![] })]
        } else {
            entities
                .chunks(READ_CHUNK)
                .map(|c| {
                    Ok(pb::ReadResponse {
                        entities: c.to_vec(),
                    })
                })
                .collect()
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn set_forwarding_pipeline_config(
        &self,
        request: Request<pb::SetForwardingPipelineConfigRequest>,
    ) -> Result<Response<pb::SetForwardingPipelineConfigResponse>, Status> {
        use pb::set_forwarding_pipeline_config_request::Action;
        let req = request.into_inner();
        let t = &self.target;
        t.check_device(req.device_id)?;
        let mut c = t.control.lock().await;
        Target::check_primary(&c, &req.role, u128_of(&req.election_id))?;
        let action = Action::try_from(req.action).unwrap_or(Action::Unspecified);
        match action {
            Action::Unspecified => return Err(Status::invalid_argument("action UNSPECIFIED")),
            Action::Commit => {
                if req.config.is_some() {
                    return Err(Status::invalid_argument("COMMIT takes no config"));
                }
                let (cfg, snap) = c
                    .saved
                    .take()
                    .ok_or_else(|| Status::failed_precondition("no saved config to commit"))?;
                t.commit(&mut c, cfg, snap);
            }
            Action::Verify
            | Action::VerifyAndSave
            | Action::VerifyAndCommit
            | Action::ReconcileAndCommit => {
                let cfg = req
                    .config
                    .ok_or_else(|| Status::invalid_argument("config missing"))?;
                let snap = Target::verify(&cfg)?;
                match action {
                    Action::VerifyAndSave => c.saved = Some((cfg, snap)),
                    Action::VerifyAndCommit => t.commit(&mut c, cfg, snap),
                    Action::ReconcileAndCommit => {
                        let same = c
                            .config
                            .as_ref()
                            .is_some_and(|old| old.p4info == cfg.p4info);
                        if !same {
                            return Err(Status::invalid_argument(
                                "RECONCILE_AND_COMMIT: the forwarding state cannot be preserved across a different P4Info",
                            ));
                        }
                        c.config = Some(cfg);
                    }
                    _ => {}
                }
            }
        }
        info!(device = t.device_id, ?action, "forwarding pipeline config");
        Ok(Response::new(pb::SetForwardingPipelineConfigResponse {}))
    }

    async fn get_forwarding_pipeline_config(
        &self,
        request: Request<pb::GetForwardingPipelineConfigRequest>,
    ) -> Result<Response<pb::GetForwardingPipelineConfigResponse>, Status> {
        use pb::get_forwarding_pipeline_config_request::ResponseType as R;
        let req = request.into_inner();
        self.target.check_device(req.device_id)?;
        let c = self.target.control.lock().await;
        let mut cfg = c.config.clone().unwrap_or_default();
        match R::try_from(req.response_type).unwrap_or(R::All) {
            R::All => {}
            R::CookieOnly => {
                cfg.p4info = None;
                cfg.p4_device_config.clear();
            }
            R::P4infoAndCookie => cfg.p4_device_config.clear(),
            R::DeviceConfigAndCookie => cfg.p4info = None,
        }
        Ok(Response::new(pb::GetForwardingPipelineConfigResponse {
            config: Some(cfg),
        }))
    }

    type StreamChannelStream = BoxStream<pb::StreamMessageResponse>;

    async fn stream_channel(
        &self,
        request: Request<Streaming<pb::StreamMessageRequest>>,
    ) -> Result<Response<Self::StreamChannelStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let target = Arc::clone(&self.target);
        let stream = target.next_stream.fetch_add(1, Ordering::Relaxed);
        target.metrics.streams.inc();
        tokio::spawn(async move {
            let mut role: Option<String> = None;
            loop {
                let msg = match inbound.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        debug!(stream, error = %e, "stream ended with an error");
                        break;
                    }
                    None => break,
                };
                match msg.update {
                    Some(pb::stream_message_request::Update::Arbitration(a)) => {
                        if let Err(s) = arbitrate(&target, stream, &tx, &mut role, a).await {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                    }
                    Some(pb::stream_message_request::Update::Packet(_))
                    | Some(pb::stream_message_request::Update::Other(_)) => {
                        let err = pb::StreamMessageResponse {
                            update: Some(pb::stream_message_response::Update::Error(pb::StreamError {
                                canonical_code: Code::Unimplemented as i32,
                                message: "packet I/O and other stream messages are not implemented by this target".into(),
                                ..Default::default()
                            })),
                        };
                        let _ = tx.send(Ok(err)).await;
                    }
                    None => {}
                }
            }
            // The stream is gone: drop the client and re-elect.
            let mut c = target.control.lock().await;
            c.arbitration.clients.retain(|x| x.stream != stream);
            if let Some(role) = role {
                let (primary, changed) = c.arbitration.elect(&role);
                if changed {
                    target.metrics.arbitration_changes.inc();
                    info!(role = %role, ?primary, "primary controller left; re-elected");
                    notify(&mut c.arbitration, &role, primary, None);
                }
            }
            target.metrics.streams.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn capabilities(
        &self,
        _: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        Ok(Response::new(pb::CapabilitiesResponse {
            p4runtime_api_version: API_VERSION.into(),
        }))
    }
}

async fn arbitrate(
    target: &Arc<Target>,
    stream: u64,
    tx: &StreamTx,
    role: &mut Option<String>,
    a: pb::MasterArbitrationUpdate,
) -> Result<(), Status> {
    target.check_device(a.device_id)?;
    if a.role.as_ref().is_some_and(|r| r.config.is_some()) {
        return Err(Status::unimplemented(
            "role configs are not implemented by this target",
        ));
    }
    let name = a.role.map(|r| r.name).unwrap_or_default();
    if role.as_ref().is_some_and(|r| *r != name) {
        return Err(Status::invalid_argument("a stream cannot change its role"));
    }
    let election_id = u128_of(&a.election_id);
    let mut c = target.control.lock().await;
    if let Some(e) = election_id
        && c.arbitration.clients.iter().any(|x| {
            x.stream != stream && x.role == name && x.election_id == Some(e) && !x.tx.is_closed()
        })
    {
        return Err(Status::invalid_argument(format!(
            "election id {e} is already used by another controller"
        )));
    }
    match c
        .arbitration
        .clients
        .iter_mut()
        .find(|x| x.stream == stream)
    {
        Some(x) => x.election_id = election_id,
        None => c.arbitration.clients.push(Client {
            stream,
            role: name.clone(),
            election_id,
            tx: tx.clone(),
        }),
    }
    *role = Some(name.clone());
    let (primary, changed) = c.arbitration.elect(&name);
    if changed {
        target.metrics.arbitration_changes.inc();
        info!(role = %name, ?primary, "new primary controller");
        notify(&mut c.arbitration, &name, primary, None);
    } else {
        notify(&mut c.arbitration, &name, primary, Some(stream));
    }
    if election_id.is_none() {
        warn!(
            stream,
            "controller without an election id: it can only be a backup"
        );
    }
    Ok(())
}
