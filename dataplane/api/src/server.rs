//! The serving side of NexAPI: a [`Model`] behind [`serve`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nexus_firmware::header::Header;
use nexus_stream::{Direction, Endpoint, Incoming, Mode, OrderedStream, Session, Tally, codes};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use quinn::RecvStream;
use tokio::sync::{Mutex, mpsc};

use crate::meta::Meta;
use crate::{ApiError, Binding, Capabilities, TensorAck, fnv64, tensor};

/// Most tensors a session may have in assembly at once.
pub const MAX_PENDING_TENSORS: usize = 64;

/// What a NexAPI endpoint serves. Implementations must be cheap to call concurrently.
pub trait Model: Send + Sync + 'static {
    /// Advertised in `hello`.
    fn capabilities(&self) -> Capabilities;

    /// Unary inference: one request body, one response body.
    fn infer(&self, request: Bytes) -> impl Future<Output = Result<Bytes, ApiError>> + Send;

    /// Token generation: send each token through `sink` as soon as it exists. A failed
    /// `sink.send` means the caller cancelled: return at once, freeing the work.
    fn generate(
        &self,
        request: Bytes,
        sink: &mut TokenSink<'_>,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// A received tensor, reassembled.
    fn tensor(
        &self,
        header: Header,
        data: Bytes,
    ) -> impl Future<Output = Result<(), ApiError>> + Send {
        let _ = (header, data);
        async { Ok(()) }
    }

    /// One JSON-RPC message (MCP or A2A), unchanged; `Some` reply for requests.
    fn jsonrpc(
        &self,
        binding: Binding,
        method: &str,
        message: Bytes,
    ) -> impl Future<Output = Result<Option<Bytes>, ApiError>> + Send {
        let _ = (binding, method, message);
        async { Err(ApiError::Refused("no JSON-RPC binding".into())) }
    }
}

/// Where a generator writes tokens.
#[derive(Debug)]
pub struct TokenSink<'a> {
    stream: &'a mut nexus_stream::OrderedSend,
    sent: u64,
    metrics: Arc<ApiMetrics>,
}

impl TokenSink<'_> {
    /// Sends one token now. Fails when the caller cancelled (stopped the stream) or left.
    pub async fn send(&mut self, token: &str) -> Result<(), ApiError> {
        self.stream.send_msg(token.as_bytes()).await?;
        self.sent += 1;
        self.metrics.tokens.inc();
        Ok(())
    }

    /// Tokens sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// NexAPI server metrics.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    calls: Family<Vec<(&'static str, &'static str)>, Counter>,
    tokens: Counter,
    active_generations: Gauge,
    tensor_bytes: Counter,
}

impl ApiMetrics {
    /// Registers under `nexapi_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("nexapi");
        r.register("calls", "Calls by operation and result", self.calls.clone());
        r.register("tokens", "Tokens streamed", self.tokens.clone());
        r.register(
            "active_generations",
            "Token generations running now",
            self.active_generations.clone(),
        );
        r.register(
            "tensor_bytes",
            "Tensor bytes received",
            self.tensor_bytes.clone(),
        );
    }

    fn call(&self, op: &'static str, result: &'static str) {
        self.calls
            .get_or_create(&vec![("op", op), ("result", result)])
            .inc();
    }

    /// Calls counted for an operation and result.
    pub fn calls(&self, op: &'static str, result: &'static str) -> u64 {
        self.calls
            .get_or_create(&vec![("op", op), ("result", result)])
            .get()
    }

    /// Generations running now (drops to zero when cancelled calls free their work).
    pub fn active_generations(&self) -> i64 {
        self.active_generations.get()
    }

    /// Tokens streamed so far.
    pub fn tokens(&self) -> u64 {
        self.tokens.get()
    }
}

/// Where a capability-addressed stream goes, as the serving node's routing tables decide
/// ([`Router::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This node is the endpoint the tables picked: serve the call here.
    Here,
    /// Relay the call to the endpoint at this address.
    Relay(std::net::SocketAddr),
}

/// A decided stream: served here, or relayed over a session to the picked endpoint.
#[derive(Debug)]
pub enum Hop {
    /// Serve the call here.
    Here,
    /// Relay the call over this session (to the endpoint the tables picked).
    Relay(Session),
}

/// The account a relayed leg's session is given ([`Tally::set_account`]): its traffic was
/// billed to the caller by the relaying node, so the endpoint's meter may leave it out (it
/// decides whom it believes; see the dataplane's usage meter).
pub const RELAYED_ACCOUNT: &str = "relayed";

/// Decides where streams whose metadata names a `capability` go ([`serve_routed`]). The
/// dataplane implements it with its NexRoute tables (the software P4 pipeline); NexAPI only
/// carries out the decision, so it knows nothing of tables.
///
/// The decision is synchronous (the tables are in memory, and it runs for every
/// capability-addressed stream); only a relay waits, for its session.
pub trait Router: Send + Sync + 'static {
    /// The route for a stream from a peer of `tenant` (its verified MIC's) with metadata
    /// `meta`; an error refuses the stream with its reason.
    fn route(&self, tenant: &str, meta: &Meta) -> Result<Route, ApiError>;

    /// The session to relay `tenant`'s stream over to the endpoint at `to`.
    fn relay_session<'a>(
        &'a self,
        tenant: &'a str,
        to: std::net::SocketAddr,
    ) -> Pin<Box<dyn Future<Output = Result<Session, ApiError>> + Send + 'a>>;
}

/// Accepts connections on `endpoint` until it drains, serving `model` on each.
pub async fn serve<M: Model>(endpoint: Endpoint, model: Arc<M>, metrics: Arc<ApiMetrics>) {
    serve_observed(endpoint, model, metrics, |_: &Session| {}).await;
}

/// Like [`serve`], showing each established session to `observe` before serving it: the
/// dataplane's usage meter tracks sessions this way to bill their traffic
/// ([`Session::tally`]) to the peer's tenant.
pub async fn serve_observed<M, F>(
    endpoint: Endpoint,
    model: Arc<M>,
    metrics: Arc<ApiMetrics>,
    observe: F,
) where
    M: Model,
    F: Fn(&Session) + Send + Sync + 'static,
{
    serve_routed(endpoint, model, metrics, observe, None).await;
}

/// Like [`serve_observed`], routing capability-addressed streams (metadata `capability=…`)
/// with `router`: served here or relayed to the endpoint it picks. Without a router such
/// streams are refused.
pub async fn serve_routed<M, F>(
    endpoint: Endpoint,
    model: Arc<M>,
    metrics: Arc<ApiMetrics>,
    observe: F,
    router: Option<Arc<dyn Router>>,
) where
    M: Model,
    F: Fn(&Session) + Send + Sync + 'static,
{
    let observe = Arc::new(observe);
    while let Some(accepting) = endpoint.accept().await {
        let model = Arc::clone(&model);
        let metrics = Arc::clone(&metrics);
        let observe = Arc::clone(&observe);
        let router = router.clone();
        tokio::spawn(async move {
            let remote = accepting.remote_address();
            match accepting.establish().await {
                Ok(session) => {
                    observe(&session);
                    serve_session_routed(session, model, metrics, router).await;
                }
                Err(e) => tracing::info!(%remote, error = %e, "connection refused or failed"),
            }
        });
    }
}

struct TensorSlot {
    tx: mpsc::Sender<(u32, RecvStream)>,
    /// Until a control stream claims the tensor.
    rx: Option<mpsc::Receiver<(u32, RecvStream)>>,
    /// Which slot of this id this is: an unclaimed slot's deadline must not end a later
    /// slot that reuses the id.
    serial: u64,
}

/// Ids of failed or refused tensors a session remembers, so that their late shards are
/// stopped on arrival rather than opening a slot no control stream will claim. Shards trail
/// their control stream by about a round trip, so the latest few suffice; a late shard whose
/// id was forgotten waits in a slot like any shard that comes first.
const REFUSED_TENSORS_KEPT: usize = 1024;

/// A session's tensors in assembly, and the latest that failed.
#[derive(Default)]
struct TensorTable {
    /// Tensors being received, or whose shards came before their control stream: at most
    /// [`MAX_PENDING_TENSORS`].
    pending: HashMap<u64, TensorSlot>,
    /// Failed or refused: not counted as pending, so failures do not use the session up
    /// (a relay's upstream session carries the failures of all its tenant's callers).
    refused: std::collections::HashSet<u64>,
    refused_order: std::collections::VecDeque<u64>,
    /// Serial of the next slot.
    next_serial: u64,
}

impl TensorTable {
    /// Forgets tensor `id`'s slot and remembers it as refused.
    fn refuse(&mut self, id: u64) {
        self.pending.remove(&id);
        if self.refused.insert(id) {
            self.refused_order.push_back(id);
            if self.refused_order.len() > REFUSED_TENSORS_KEPT
                && let Some(old) = self.refused_order.pop_front()
            {
                self.refused.remove(&old);
            }
        }
    }
}

type Tensors = Arc<Mutex<TensorTable>>;

/// Where a shard or control stream of a tensor goes.
enum TensorQueue {
    /// The tensor's queue, created when the first of its streams arrives.
    Open(TensorSlotHandle),
    /// The tensor failed or was refused.
    Refused,
    /// [`MAX_PENDING_TENSORS`] others are in assembly.
    Full,
}

/// The queue for shards of tensor `id`, with its receiver if `take_receiver` and nobody took
/// it yet.
async fn tensor_channel(tensors: &Tensors, id: u64, take_receiver: bool) -> TensorQueue {
    let mut table = tensors.lock().await;
    if table.refused.contains(&id) {
        return TensorQueue::Refused;
    }
    if !table.pending.contains_key(&id) && table.pending.len() >= MAX_PENDING_TENSORS {
        return TensorQueue::Full;
    }
    let serial = table.next_serial;
    let slot = table.pending.entry(id).or_insert_with(|| {
        let (tx, rx) = mpsc::channel(tensor::MAX_SHARDS as usize);
        TensorSlot {
            tx,
            rx: Some(rx),
            serial,
        }
    });
    let created = slot.serial == serial;
    let handle = TensorSlotHandle {
        tx: slot.tx.clone(),
        rx: if take_receiver { slot.rx.take() } else { None },
        unclaimed: (created && !take_receiver).then_some(serial),
    };
    if created {
        table.next_serial += 1;
    }
    TensorQueue::Open(handle)
}

struct TensorSlotHandle {
    tx: mpsc::Sender<(u32, RecvStream)>,
    rx: Option<mpsc::Receiver<(u32, RecvStream)>>,
    /// Set when a shard opened this slot (its serial): no control stream has claimed it yet.
    unclaimed: Option<u64>,
}

/// Gives up tensor `id`'s slot `serial` if no control stream has claimed it by `deadline`,
/// stopping its queued shards.
///
/// Shards whose control stream never comes (a sender that failed between opening the
/// shards and the control stream, or a control stream reset before this side even accepted
/// it, so that its tensor id was never read) would otherwise hold the slot, and the unread
/// bytes of their streams the session's receive window, until the session ends. The
/// deadline is the session's preamble timeout: the time any stream has to say what it is.
async fn expire_unclaimed(tensors: Tensors, id: u64, serial: u64, deadline: Duration) -> bool {
    tokio::time::sleep(deadline).await;
    let mut table = tensors.lock().await;
    let queued = match table.pending.get_mut(&id) {
        Some(slot) if slot.serial == serial => slot.rx.take(),
        _ => None,
    };
    let Some(rx) = queued else {
        return false;
    };
    table.refuse(id);
    drop(table);
    stop_queued(rx);
    true
}

/// Serves one established session until it closes.
///
/// The session's traffic is accounted to the routing domain named by the `domain` metadata
/// of its first stream that has one ([`Tally::set_account`]): a client routed in one domain
/// declares it on every stream, and a client that calls in two domains uses two sessions.
pub async fn serve_session<M: Model>(session: Session, model: Arc<M>, metrics: Arc<ApiMetrics>) {
    serve_session_routed(session, model, metrics, None).await;
}

/// [`serve_session`] with a [`Router`] for capability-addressed streams.
pub async fn serve_session_routed<M: Model>(
    session: Session,
    model: Arc<M>,
    metrics: Arc<ApiMetrics>,
    router: Option<Arc<dyn Router>>,
) {
    let tensors: Tensors = Arc::default();
    while let Some(incoming) = session.accept().await {
        match incoming {
            Incoming::Ordered(stream) => {
                let ctx = Ctx {
                    model: Arc::clone(&model),
                    metrics: Arc::clone(&metrics),
                    tensors: Arc::clone(&tensors),
                    session: session.clone(),
                    router: router.clone(),
                };
                tokio::spawn(async move { handle(stream, ctx).await });
            }
            Incoming::Bulk { preamble, mut recv } => {
                let routed = Meta::parse(&preamble.meta).ok().and_then(|m| {
                    let id = m.get("tensor")?.parse::<u64>().ok()?;
                    let index = m.get("index")?.parse::<u32>().ok()?;
                    (m.get("op") == Some("shard")).then_some((id, index))
                });
                let Some((id, index)) = routed else {
                    metrics.call("shard", "bad_meta");
                    let _ = recv.stop(codes::BAD_FRAME);
                    continue;
                };
                match tensor_channel(&tensors, id, false).await {
                    TensorQueue::Open(h) => {
                        if let Some(serial) = h.unclaimed {
                            let (tensors, metrics) = (Arc::clone(&tensors), Arc::clone(&metrics));
                            let deadline = session.limits().preamble_timeout;
                            tokio::spawn(async move {
                                if expire_unclaimed(tensors, id, serial, deadline).await {
                                    metrics.call("shard", "unclaimed");
                                }
                            });
                        }
                        // Closed: the tensor is failing at this moment.
                        if let Err(e) = h.tx.try_send((index, recv)) {
                            metrics.call("shard", "refused");
                            let (_, mut recv) = e.into_inner();
                            let _ = recv.stop(codes::REFUSED);
                        }
                    }
                    TensorQueue::Refused => {
                        metrics.call("shard", "refused");
                        let _ = recv.stop(codes::REFUSED);
                    }
                    TensorQueue::Full => {
                        metrics.call("shard", "too_many_tensors");
                        let _ = recv.stop(codes::TOO_LARGE);
                    }
                }
            }
            Incoming::Message(_) | Incoming::Datagram { .. } => metrics.call("message", "ignored"),
        }
    }
}

fn op_label(op: &str) -> &'static str {
    match op {
        "hello" => "hello",
        "infer" => "infer",
        "tokens" => "tokens",
        "tensor" => "tensor",
        "jsonrpc" => "jsonrpc",
        _ => "unknown",
    }
}

/// What a stream's handler needs of its session.
struct Ctx<M> {
    model: Arc<M>,
    metrics: Arc<ApiMetrics>,
    tensors: Tensors,
    session: Session,
    router: Option<Arc<dyn Router>>,
}

async fn handle<M: Model>(mut stream: OrderedStream, ctx: Ctx<M>) {
    let Ctx {
        model,
        metrics,
        tensors,
        session,
        router,
    } = ctx;
    let tally = session.tally();
    let meta = match Meta::parse(&stream.preamble.meta) {
        Ok(m) => m,
        Err(e) => {
            metrics.call("unknown", "bad_meta");
            tracing::debug!(error = %e, "bad stream metadata");
            stream.recv.stop(codes::BAD_FRAME);
            stream.send.reset(codes::BAD_FRAME);
            return;
        }
    };
    if meta.get("relay").is_some() {
        tally.set_account(RELAYED_ACCOUNT);
    } else if let Some(domain) = meta.get("domain") {
        tally.set_account(domain);
    }
    let op = op_label(meta.get("op").unwrap_or(""));
    let hop = match (meta.get("capability"), &router) {
        (None, _) => Ok(Hop::Here),
        (Some(_), None) => Err(ApiError::Refused(
            "this node does not route by capability".into(),
        )),
        (Some(_), Some(router)) => match session.peer().await {
            Ok(peer) => {
                let tenant = peer.model.tenant();
                match router.route(tenant, &meta) {
                    Ok(Route::Here) => Ok(Hop::Here),
                    Ok(Route::Relay(to)) => router.relay_session(tenant, to).await.map(Hop::Relay),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e.into()),
        },
    };
    if op == "tensor" && hop.is_err() {
        // Not received here: its shards, already on their way, are stopped rather than left
        // holding flow-control credit and a pending-tensor slot.
        refuse_tensor(&meta, &tensors).await;
    }
    let relayed = matches!(hop, Ok(Hop::Relay(_)));
    let result = match hop {
        Ok(Hop::Here) => match op {
            "hello" => hello(&mut stream, &*model, &session).await,
            "infer" => infer(&mut stream, &*model).await,
            "tokens" => tokens(&mut stream, &*model, &metrics).await,
            "tensor" => {
                receive_tensor(&mut stream, &*model, &meta, &tensors, &metrics, tally).await
            }
            "jsonrpc" => jsonrpc(&mut stream, &*model, &meta).await,
            _ => Err(ApiError::Refused("unknown operation".into())),
        },
        Ok(Hop::Relay(upstream)) if op == "tensor" => {
            relay_tensor(&mut stream, &session, &upstream, &meta, &tensors)
                .await
                .map(|bytes| {
                    // Shards travel raw on bulk streams: the caller's bytes are billed here.
                    tally.record(Direction::Received, Mode::ReliableUnordered, bytes as usize);
                })
        }
        Ok(Hop::Relay(upstream)) => relay(&mut stream, &session, &upstream, op, meta).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            metrics.call(op, if relayed { "relayed" } else { "ok" });
            let _ = stream.send.finish();
        }
        Err(e) => {
            let (label, code) = match &e {
                ApiError::TooLarge(_) => ("too_large", codes::TOO_LARGE),
                ApiError::Cancelled(_) | ApiError::Stream(_) => ("cancelled", codes::CANCELLED),
                ApiError::BadMessage(_) | ApiError::Header(_) | ApiError::Meta(_) => {
                    ("bad_message", codes::BAD_FRAME)
                }
                _ => ("refused", codes::REFUSED),
            };
            metrics.call(op, label);
            tracing::debug!(op, error = %e, "call failed");
            stream.recv.stop(code);
            stream.send.reset(code);
        }
    }
}

/// Relays a capability-addressed stream to the endpoint the tables picked: opens the same
/// operation there (metadata without `capability`, so the endpoint serves it rather than
/// routing it again, plus `relay=1`) and copies messages both ways until the endpoint
/// finishes. Cancellation crosses the relay: a caller that stops reading or resets makes the
/// relay drop the upstream stream, which stops the endpoint's work; an upstream reset comes
/// back as the error its code names. The caller's session is billed here, by the relay.
async fn relay(
    stream: &mut OrderedStream,
    caller: &Session,
    upstream: &Session,
    op: &'static str,
    meta: Meta,
) -> Result<(), ApiError> {
    use crate::client::map_stream_error;
    if !matches!(op, "hello" | "infer" | "tokens" | "jsonrpc") {
        return Err(ApiError::Refused(format!("{op} is not relayed")));
    }
    let forwarded = forwarded(meta);
    let idempotent = stream.preamble.flags & nexus_stream::frame::FLAG_IDEMPOTENT != 0;
    // The caller's first message (its request) goes upstream with the preamble, in one write.
    let first = stream.recv.recv_msg().await.map_err(map_stream_error)?;
    let up = upstream
        .open_ordered_with(forwarded.encode(), idempotent, first.as_deref())
        .await
        .map_err(map_stream_error)?;
    let caller_done = first.is_none();
    let OrderedStream {
        send: mut up_send,
        recv: mut up_recv,
        ..
    } = up;
    let (down_send, down_recv) = (&mut stream.send, &mut stream.recv);
    // Caller → endpoint. Its end (FIN) is passed on and then waits: the exchange ends when
    // the endpoint finishes. Its error (the caller reset) ends the relay.
    let forward = async {
        if caller_done {
            up_send.finish().map_err(map_stream_error)?;
            return std::future::pending::<Result<(), ApiError>>().await;
        }
        loop {
            match down_recv.recv_msg().await {
                Ok(Some(m)) => up_send.send_msg(&m).await.map_err(map_stream_error)?,
                Ok(None) => {
                    up_send.finish().map_err(map_stream_error)?;
                    return std::future::pending::<Result<(), ApiError>>().await;
                }
                Err(e) => {
                    up_send.reset(codes::CANCELLED);
                    return Err(map_stream_error(e));
                }
            }
        }
    };
    // Endpoint → caller, to the endpoint's FIN (read, so quinn sends no STOP_SENDING).
    let back = async {
        while let Some(m) = up_recv.recv_msg().await.map_err(map_stream_error)? {
            down_send.send_msg(&m).await?;
        }
        Ok(())
    };
    // A caller that goes away ends the relay at once, whether or not the endpoint is
    // sending (dropping the upstream halves stops and resets its stream).
    tokio::select! {
        r = back => r,
        r = forward => r,
        () = caller_gone(caller) => Err(ApiError::Cancelled(codes::CANCELLED.into_inner())),
    }
}

/// What a relay sends upstream of a stream's metadata `meta`, for calls and tensors alike:
/// the routing inputs (`capability`, `flow`) were used here, so the endpoint serves rather
/// than routes again, and `relay=1` tells it the caller is billed by the relay.
fn forwarded(meta: Meta) -> Meta {
    meta.without("capability")
        .without("flow")
        .with("relay", "1")
}

async fn caller_gone(caller: &Session) {
    caller.closed().await;
}

/// Ids of the tensors this node relays, unique in the process and so on every upstream
/// session (only relays send tensors on those): callers' own ids may collide there.
static RELAYED_TENSOR_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Relays a capability-addressed tensor to the endpoint the tables picked, cut-through: the
/// control message goes upstream with the stream's preamble (metadata as [`relay`] forwards
/// it, under a tensor id of this node's), each shard is passed on as it arrives
/// ([`tensor::forward`]), and the endpoint's acknowledgement — its checksum, when the caller
/// asked for one, so the check stays end to end — comes back unchanged. The endpoint's limit
/// is the one that applies; its refusal reaches the caller as the code it sent. Returns the
/// tensor's bytes, for billing.
async fn relay_tensor(
    stream: &mut OrderedStream,
    caller: &Session,
    upstream: &Session,
    meta: &Meta,
    tensors: &Tensors,
) -> Result<u64, ApiError> {
    use crate::client::map_stream_error;
    let (id, mut rx) = take_tensor_slot(meta, tensors).await?;
    let result = async {
        let control = request(stream).await?;
        // No limit here: the relay holds no buffer for the tensor, and the endpoint checks
        // the size against its own.
        let plan = tensor::decode_control(&control, u64::MAX)?;
        let up_id = RELAYED_TENSOR_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let forwarded = forwarded(meta.clone()).with("id", &up_id.to_string());
        let mut up = upstream
            .open_ordered_with(forwarded.encode(), false, Some(&control))
            .await
            .map_err(map_stream_error)?;
        let answered = {
            let shards = tensor::forward(plan, &mut rx, upstream, up_id);
            let ack = async {
                up.recv
                    .recv_msg()
                    .await
                    .map_err(map_stream_error)?
                    .ok_or(ApiError::Ended)
            };
            tokio::pin!(shards);
            tokio::pin!(ack);
            tokio::select! {
                // An early answer is a refusal: it wins over the shards it stopped.
                a = &mut ack => match a {
                    Ok(a) => shards.await.map(|bytes| (bytes, a)).map_err(|e| e.error),
                    Err(e) => Err(e),
                },
                s = &mut shards => match s {
                    Ok(bytes) => ack.await.map(|a| (bytes, a)),
                    // The endpoint refused: its reason is on the control stream.
                    Err(e) if e.by_endpoint => Err(ack.await.err().unwrap_or(e.error)),
                    Err(e) => Err(e.error),
                },
                e = abandoned(&mut stream.recv) => Err(e),
                () = caller_gone(caller) => Err(ApiError::Cancelled(codes::CANCELLED.into_inner())),
            }
        };
        if answered.is_ok() {
            up.recv.take_end_now();
        } else {
            // The endpoint stops assembling (it watches its control stream).
            up.send.reset(codes::CANCELLED);
            up.recv.stop(codes::CANCELLED);
        }
        answered
    }
    .await;
    release_tensor_slot(id, rx, tensors, result.is_ok()).await;
    let (bytes, ack) = result?;
    stream.send_msg(&ack).await?;
    Ok(bytes)
}

/// Refuses a tensor this node will not receive (see [`receive_tensor`]): shards already
/// queued are stopped, and late ones are refused when they arrive. (A tensor whose queue
/// another control stream holds is that stream's to end.)
async fn refuse_tensor(meta: &Meta, tensors: &Tensors) {
    let Some(id) = meta.get("id").and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    let mut table = tensors.lock().await;
    let queued = match table.pending.get_mut(&id) {
        Some(slot) => match slot.rx.take() {
            Some(rx) => Some(rx),
            None => return,
        },
        None => None,
    };
    table.refuse(id);
    drop(table);
    if let Some(rx) = queued {
        stop_queued(rx);
    }
}

/// Closes a tensor's shard queue and stops the shards in it.
fn stop_queued(mut rx: mpsc::Receiver<(u32, RecvStream)>) {
    rx.close();
    while let Ok((_, mut recv)) = rx.try_recv() {
        let _ = recv.stop(codes::REFUSED);
    }
}

/// The one request message of a unary exchange (hello, infer, JSON-RPC).
async fn request(stream: &mut OrderedStream) -> Result<Bytes, ApiError> {
    let req = stream.recv_msg().await?.ok_or(ApiError::Ended)?;
    // The caller finished its side with the request: take the FIN now, so that dropping
    // the stream later does not send a spurious STOP_SENDING.
    stream.recv.take_end_now();
    Ok(req)
}

async fn hello<M: Model>(
    stream: &mut OrderedStream,
    model: &M,
    session: &Session,
) -> Result<(), ApiError> {
    let theirs: Capabilities = serde_json::from_slice(&request(stream).await?)?;
    tracing::debug!(agent = %theirs.agent, "hello");
    let mut ours = model.capabilities();
    ours.stream_window = u64::from(session.limits().stream_window);
    stream.send_msg(&serde_json::to_vec(&ours)?).await?;
    Ok(())
}

async fn infer<M: Model>(stream: &mut OrderedStream, model: &M) -> Result<(), ApiError> {
    let req = request(stream).await?;
    let resp = model.infer(req).await?;
    stream.send.send_last(&resp).await?;
    Ok(())
}

async fn tokens<M: Model>(
    stream: &mut OrderedStream,
    model: &M,
    metrics: &Arc<ApiMetrics>,
) -> Result<(), ApiError> {
    let req = request(stream).await?;
    let mut sink = TokenSink {
        stream: &mut stream.send,
        sent: 0,
        metrics: Arc::clone(metrics),
    };
    metrics.active_generations.inc();
    let r = model.generate(req, &mut sink).await;
    metrics.active_generations.dec();
    r
}

/// Waits on a tensor's control stream while its shards move, for the sender to abandon the
/// transfer: a reset (a cancelling caller — the client resets when its `send_tensor` is
/// dropped — or a relay whose caller failed) or a second message (a protocol error). An end
/// (FIN) abandons nothing: a sender may finish its side once it has said everything. Without
/// this, a sender that stops sending shards would hold a pending-tensor slot for the
/// session's life.
async fn abandoned(control: &mut nexus_stream::OrderedRecv) -> ApiError {
    use crate::client::map_stream_error;
    match control.recv_msg().await {
        Ok(None) => std::future::pending().await,
        Ok(Some(_)) => ApiError::BadMessage("a second tensor control message".into()),
        Err(e) => map_stream_error(e),
    }
}

/// The shards' queue of the tensor a control stream with metadata `meta` announces (its
/// `id`), taken by the one stream that receives or relays them.
async fn take_tensor_slot(
    meta: &Meta,
    tensors: &Tensors,
) -> Result<(u64, mpsc::Receiver<(u32, RecvStream)>), ApiError> {
    let id: u64 = meta
        .get("id")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::BadMessage("tensor without id".into()))?;
    match tensor_channel(tensors, id, true).await {
        TensorQueue::Open(TensorSlotHandle { rx: Some(rx), .. }) => Ok((id, rx)),
        TensorQueue::Open(_) | TensorQueue::Refused => {
            Err(ApiError::BadMessage(format!("tensor id {id} reused")))
        }
        TensorQueue::Full => Err(ApiError::TooLarge("too many tensors in flight".into())),
    }
}

/// Ends the shards' queue of tensor `id` and frees its slot. On failure the id is
/// remembered as refused: queued and late shards of it are stopped instead of holding
/// flow-control credit. On success every shard arrived, so there are no late ones.
async fn release_tensor_slot(
    id: u64,
    rx: mpsc::Receiver<(u32, RecvStream)>,
    tensors: &Tensors,
    complete: bool,
) {
    stop_queued(rx);
    let mut table = tensors.lock().await;
    if complete {
        table.pending.remove(&id);
    } else {
        table.refuse(id);
    }
}

async fn receive_tensor<M: Model>(
    stream: &mut OrderedStream,
    model: &M,
    meta: &Meta,
    tensors: &Tensors,
    metrics: &ApiMetrics,
    tally: &Tally,
) -> Result<(), ApiError> {
    let (id, mut rx) = take_tensor_slot(meta, tensors).await?;
    let result = async {
        let control = request(stream).await?;
        let plan = tensor::decode_control(&control, model.capabilities().max_tensor)?;
        tokio::select! {
            data = tensor::assemble(plan, &mut rx) => Ok((plan, data?)),
            e = abandoned(&mut stream.recv) => Err(e),
        }
    }
    .await;
    release_tensor_slot(id, rx, tensors, result.is_ok()).await;
    let (plan, data) = result?;
    metrics.tensor_bytes.inc_by(data.len() as u64);
    // Shards travel on bulk streams (reliable-unordered), which NexStream hands over raw.
    tally.record(Direction::Received, Mode::ReliableUnordered, data.len());
    let ack = TensorAck {
        bytes: data.len() as u64,
        shards: plan.shards,
        // Only on request: a serial pass over every byte, on the transfer's critical path.
        fnv64: if meta.get("checksum") == Some("fnv64") {
            fnv64(&data)
        } else {
            0
        },
    };
    model.tensor(plan.header, data).await?;
    stream.send_msg(&serde_json::to_vec(&ack)?).await?;
    Ok(())
}

async fn jsonrpc<M: Model>(
    stream: &mut OrderedStream,
    model: &M,
    meta: &Meta,
) -> Result<(), ApiError> {
    let binding = meta
        .get("proto")
        .and_then(Binding::parse)
        .ok_or_else(|| ApiError::BadMessage("jsonrpc without a known proto".into()))?;
    let method = meta.get("method").unwrap_or("").to_owned();
    let msg = request(stream).await?;
    if let Some(reply) = model.jsonrpc(binding, &method, msg).await? {
        stream.send_msg(&reply).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot a shard opened is given up at its deadline unless a control stream claimed
    /// it; the deadline of an earlier slot of the same id ends nothing.
    #[tokio::test(start_paused = true)]
    async fn a_slot_no_control_stream_claims_is_given_up_at_its_deadline() {
        let tensors: Tensors = Arc::default();
        let deadline = Duration::from_secs(10);
        let opened = |q: TensorQueue| match q {
            TensorQueue::Open(h) => h.unclaimed,
            _ => panic!("not open"),
        };
        // Opened by a shard, never claimed.
        let orphan = opened(tensor_channel(&tensors, 1, false).await).expect("a new slot");
        // A second shard of it opens nothing new.
        assert_eq!(opened(tensor_channel(&tensors, 1, false).await), None);
        // Opened by a shard, then claimed by its control stream.
        let claimed = opened(tensor_channel(&tensors, 2, false).await).expect("a new slot");
        assert!(matches!(
            tensor_channel(&tensors, 2, true).await,
            TensorQueue::Open(TensorSlotHandle { rx: Some(_), .. })
        ));
        // Opened by a shard, completed, and its id opened again by another shard.
        let first = opened(tensor_channel(&tensors, 3, false).await).expect("a new slot");
        let TensorQueue::Open(TensorSlotHandle { rx: Some(rx), .. }) =
            tensor_channel(&tensors, 3, true).await
        else {
            panic!("claimable");
        };
        release_tensor_slot(3, rx, &tensors, true).await;
        let second = opened(tensor_channel(&tensors, 3, false).await).expect("a new slot");
        assert_ne!(first, second);

        assert!(expire_unclaimed(Arc::clone(&tensors), 1, orphan, deadline).await);
        assert!(!expire_unclaimed(Arc::clone(&tensors), 2, claimed, deadline).await);
        assert!(!expire_unclaimed(Arc::clone(&tensors), 3, first, deadline).await);
        assert!(matches!(
            tensor_channel(&tensors, 1, false).await,
            TensorQueue::Refused
        ));
        let table = tensors.lock().await;
        assert!(!table.pending.contains_key(&1));
        assert!(table.pending.contains_key(&2) && table.pending.contains_key(&3));
    }

    /// Refusals are remembered up to a bound, oldest forgotten first, and never count
    /// against the tensors a session may have in assembly.
    #[tokio::test]
    async fn refused_tensors_are_remembered_up_to_a_bound_and_take_no_slot() {
        let tensors: Tensors = Arc::default();
        for id in 0..MAX_PENDING_TENSORS as u64 {
            assert!(matches!(
                tensor_channel(&tensors, id, false).await,
                TensorQueue::Open(_)
            ));
        }
        assert!(matches!(
            tensor_channel(&tensors, 1 << 32, false).await,
            TensorQueue::Full
        ));
        {
            let mut table = tensors.lock().await;
            for id in 0..(REFUSED_TENSORS_KEPT + 5) as u64 {
                table.refuse(id);
            }
            assert_eq!(table.pending.len(), 0);
            assert_eq!(table.refused.len(), REFUSED_TENSORS_KEPT);
            assert_eq!(table.refused_order.len(), REFUSED_TENSORS_KEPT);
        }
        // The oldest five are forgotten; the latest refused.
        assert!(matches!(
            tensor_channel(&tensors, 0, false).await,
            TensorQueue::Open(_)
        ));
        assert!(matches!(
            tensor_channel(&tensors, REFUSED_TENSORS_KEPT as u64, false).await,
            TensorQueue::Refused
        ));
        assert!(matches!(
            tensor_channel(&tensors, 1 << 32, true).await,
            TensorQueue::Open(TensorSlotHandle { rx: Some(_), .. })
        ));
    }
}
