//! The NexAPI client SDK.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nexus_api::ApiError> {
//! use nexus_api::{Client, InferRequest};
//! let addr = "127.0.0.1:7700".parse().unwrap();
//! let client = Client::connect_dir(std::path::Path::new("/etc/nexus/mic"), addr).await?;
//! let answer = client
//!     .infer(&InferRequest { model: String::new(), prompt: "hello".into(), max_tokens: 8 })
//!     .await?;
//! let mut tokens = client
//!     .stream_tokens(&InferRequest { model: String::new(), prompt: "hi".into(), max_tokens: 100 })
//!     .await?;
//! while let Some(token) = tokens.next().await {
//!     print!("{}", token?);
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use nexus_firmware::header::Header;
use nexus_stream::{Config, Endpoint, Identity, Metrics, OrderedStream, Session, codes};

use crate::meta::Meta;
use crate::{
    API_VERSION, ApiError, Binding, Capabilities, InferRequest, InferResponse, TensorAck,
    lift_jsonrpc, tensor,
};

pub use crate::tensor::DEFAULT_SHARD;

/// A connection to a NexAPI endpoint.
#[derive(Debug)]
pub struct Client {
    session: Session,
    _endpoint: Option<Endpoint>,
    peer: Capabilities,
    next_tensor: AtomicU64,
    domain: Option<String>,
    capability: Option<String>,
    /// The metadata of every unary call (`op=infer` with the domain and capability), encoded
    /// once: calls send it as is.
    infer_meta: bytes::Bytes,
}

fn my_capabilities() -> Capabilities {
    Capabilities {
        agent: "nexus-api-client".into(),
        api_version: API_VERSION,
        ops: ["infer", "tokens", "tensor", "jsonrpc"]
            .map(String::from)
            .to_vec(),
        models: vec![],
        jsonrpc: vec!["mcp".into(), "a2a".into()],
        max_tensor: u64::from(u32::MAX),
        // Nothing is sent to a client in bulk.
        stream_window: 0,
    }
}

/// Resets a tensor's control stream when dropped armed: how a cancelled `send_tensor` tells
/// the receiver (quinn would otherwise finish the dropped stream, which abandons nothing).
struct AbandonOnDrop<'a>(Option<&'a mut nexus_stream::OrderedSend>);

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(send) = self.0.take() {
            send.reset(codes::CANCELLED);
        }
    }
}

pub(crate) fn map_stream_error(e: nexus_stream::StreamError) -> ApiError {
    use nexus_stream::StreamError as S;
    let code = match &e {
        S::Read(quinn::ReadError::Reset(c)) => Some(c.into_inner()),
        S::Write(quinn::WriteError::Stopped(c)) => Some(c.into_inner()),
        _ => None,
    };
    match code {
        Some(c) if c == codes::REFUSED.into_inner() => ApiError::Refused("refused by peer".into()),
        Some(c) if c == codes::TOO_LARGE.into_inner() => {
            ApiError::TooLarge("refused by peer".into())
        }
        Some(c) if c == codes::BAD_FRAME.into_inner() => {
            ApiError::BadMessage("refused by peer as malformed".into())
        }
        Some(c) => ApiError::Cancelled(c),
        None => ApiError::Stream(e),
    }
}

/// The wildcard address of `addr`'s family, port 0: where a dial-only endpoint binds.
fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}

impl Client {
    /// Connects with an existing endpoint and exchanges capabilities.
    pub async fn connect(endpoint: &Endpoint, addr: SocketAddr) -> Result<Self, ApiError> {
        let session = endpoint.connect(addr).await?;
        Self::over(session, None, None).await
    }

    /// Connects sending before the handshake completes when a resumption ticket allows
    /// (0-RTT); the first call should then be idempotent ([`Client::infer`] is).
    pub async fn connect_early(endpoint: &Endpoint, addr: SocketAddr) -> Result<Self, ApiError> {
        let session = endpoint.connect_early(addr).await?;
        Ok(Self::without_hello(session))
    }

    /// Connects with the MIC in a Secret-layout directory (`tls.crt`, `tls.key`, `ca.crt`),
    /// default limits and no requirement on the peer beyond a valid MIC chain.
    pub async fn connect_dir(mic_dir: &Path, addr: SocketAddr) -> Result<Self, ApiError> {
        let identity = Identity::from_dir(mic_dir).map_err(nexus_stream::StreamError::from)?;
        let endpoint = Endpoint::client(
            unspecified_for(addr),
            &identity,
            &Config::default(),
            Arc::new(Metrics::new()),
        )?;
        let session = endpoint.connect(addr).await?;
        Self::over(session, Some(endpoint), None).await
    }

    /// Like [`Client::connect_dir`] for a call routed in a routing domain (`namespace/name`):
    /// every stream names the domain (`domain` metadata), and the serving node bills this
    /// session's traffic to the caller's tenant under it.
    pub async fn connect_dir_in(
        mic_dir: &Path,
        addr: SocketAddr,
        domain: &str,
    ) -> Result<Self, ApiError> {
        let identity = Identity::from_dir(mic_dir).map_err(nexus_stream::StreamError::from)?;
        let endpoint = Endpoint::client(
            unspecified_for(addr),
            &identity,
            &Config::default(),
            Arc::new(Metrics::new()),
        )?;
        let session = endpoint.connect(addr).await?;
        Self::over(session, Some(endpoint), Some(domain.to_owned())).await
    }

    async fn over(
        session: Session,
        endpoint: Option<Endpoint>,
        domain: Option<String>,
    ) -> Result<Self, ApiError> {
        let mut c = Self::without_hello(session);
        c._endpoint = endpoint;
        c.domain = domain;
        c.refresh_meta();
        let mut s = c.open("hello", Meta::op("hello"), false).await?;
        s.send_msg(&serde_json::to_vec(&my_capabilities())?)
            .await
            .map_err(map_stream_error)?;
        s.send.finish().map_err(map_stream_error)?;
        let reply = s
            .recv_msg()
            .await
            .map_err(map_stream_error)?
            .ok_or(ApiError::Ended)?;
        s.recv.take_end_now();
        c.peer = serde_json::from_slice(&reply)?;
        Ok(c)
    }

    /// Wraps a session without a `hello` exchange (benches, 0-RTT).
    pub fn without_hello(session: Session) -> Self {
        Self {
            session,
            _endpoint: None,
            peer: Capabilities::default(),
            next_tensor: AtomicU64::new(1),
            domain: None,
            capability: None,
            infer_meta: bytes::Bytes::from(Meta::op("infer").encode()),
        }
    }

    /// `meta` with what every stream of `op` from this client carries: the domain, and the
    /// capability it is addressed by (not on `hello`, which the connected node answers).
    fn decorate(&self, op: &str, meta: Meta) -> Meta {
        let meta = match &self.domain {
            Some(d) => meta.with("domain", d),
            None => meta,
        };
        match &self.capability {
            Some(c) if op != "hello" => meta.with("capability", c),
            _ => meta,
        }
    }

    /// Encodes the unary calls' metadata again after the domain or capability changed.
    fn refresh_meta(&mut self) {
        self.infer_meta = bytes::Bytes::from(self.decorate("infer", Meta::op("infer")).encode());
    }

    /// The peer's advertised capabilities (empty without `hello`).
    pub fn peer_capabilities(&self) -> &Capabilities {
        &self.peer
    }

    /// What both sides support.
    pub fn negotiated(&self) -> Capabilities {
        my_capabilities().negotiate(&self.peer)
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Addresses every later call (not `hello`, which the connected node answers itself) by
    /// `capability` instead of to the connected node: the node looks the capability up in
    /// its NexRoute tables (for this client's tenant, in its domain, if
    /// [`Client::connect_dir_in`] named one) and serves the call itself or relays it to the
    /// endpoint the tables pick. A relayed tensor passes through cut-through, shard by shard
    /// as it arrives; the endpoint's limit and acknowledgement (checksum included) are the
    /// ones the caller gets.
    pub fn route_by(mut self, capability: &str) -> Self {
        self.capability = Some(capability.to_owned());
        self.refresh_meta();
        self
    }

    async fn open(
        &self,
        op: &str,
        meta: Meta,
        idempotent: bool,
    ) -> Result<OrderedStream, ApiError> {
        self.open_with(op, meta, idempotent, None).await
    }

    /// [`Client::open`] with the stream's first message written together with its preamble.
    async fn open_with(
        &self,
        op: &str,
        meta: Meta,
        idempotent: bool,
        first: Option<&[u8]>,
    ) -> Result<OrderedStream, ApiError> {
        Ok(self
            .session
            .open_ordered_with(self.decorate(op, meta).encode(), idempotent, first)
            .await?)
    }

    /// Unary inference with a JSON request.
    pub async fn infer(&self, req: &InferRequest) -> Result<InferResponse, ApiError> {
        let body = self.infer_raw(&serde_json::to_vec(req)?, true).await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// Unary inference with an opaque body. `idempotent` lets it ride 0-RTT.
    pub async fn infer_raw(&self, body: &[u8], idempotent: bool) -> Result<Bytes, ApiError> {
        let mut s = self
            .session
            .open_ordered_with(self.infer_meta.clone(), idempotent, Some(body))
            .await?;
        s.send.finish().map_err(map_stream_error)?;
        let reply = s
            .recv_msg()
            .await
            .map_err(map_stream_error)?
            .ok_or(ApiError::Ended)?;
        // The server finished with its reply: take the FIN (no STOP_SENDING on drop).
        s.recv.take_end_now();
        Ok(reply)
    }

    /// Opens a token stream: tokens arrive as the model produces them.
    pub async fn stream_tokens(&self, req: &InferRequest) -> Result<TokenStream, ApiError> {
        let mut s = self
            .open_with(
                "tokens",
                Meta::op("tokens"),
                false,
                Some(&serde_json::to_vec(req)?),
            )
            .await?;
        // Nothing follows the request: finish now, so the server takes the FIN with it rather
        // than stopping an open stream (a STOP_SENDING and our RESET_STREAM per generation).
        // Cancelling later needs only the receive half ([`TokenStream::cancel`]).
        s.send.finish().map_err(map_stream_error)?;
        Ok(TokenStream { stream: s })
    }

    /// Sends a tensor described by `header` (its `payload_len` must be `data.len()`), split
    /// into shards on parallel streams: [`DEFAULT_SHARD`] bytes each, or one of the peer's
    /// stream windows each where a single stream could not keep up with the path (a long
    /// round trip; [`tensor::shard_size`]). The window is what the peer said in `hello`.
    pub async fn send_tensor(&self, header: &Header, data: &[u8]) -> Result<TensorAck, ApiError> {
        let shard = self.shard_size(data.len() as u64);
        self.send_tensor_sharded(header, data, shard).await
    }

    /// The shard size [`Client::send_tensor`] picks for a tensor of `len` bytes to this peer
    /// ([`tensor::shard_size`] with the window it stated and the session's round trip), for
    /// the calls that take an explicit one.
    pub fn shard_size(&self, len: u64) -> u32 {
        tensor::shard_size(len, self.peer.stream_window, self.session.rtt())
    }

    /// [`Client::send_tensor`] with an explicit shard size.
    pub async fn send_tensor_sharded(
        &self,
        header: &Header,
        data: &[u8],
        shard: u32,
    ) -> Result<TensorAck, ApiError> {
        self.send_tensor_with(header, data, shard, false).await
    }

    /// [`Client::send_tensor_sharded`], and the receiver checksums what it reassembled
    /// (FNV-1a 64 in the ack), compared here with the data sent: an end-to-end check of the
    /// reassembly on top of QUIC's per-packet integrity. It costs both sides a pass over the
    /// data (a serial hash, ~3 cycles per byte), so plain transfers do without it.
    pub async fn send_tensor_checked(
        &self,
        header: &Header,
        data: &[u8],
        shard: u32,
    ) -> Result<TensorAck, ApiError> {
        let ack = self.send_tensor_with(header, data, shard, true).await?;
        if ack.fnv64 != crate::fnv64(data) {
            return Err(ApiError::BadMessage(format!(
                "the receiver's checksum {:#x} differs from the data sent",
                ack.fnv64
            )));
        }
        Ok(ack)
    }

    async fn send_tensor_with(
        &self,
        header: &Header,
        data: &[u8],
        shard: u32,
        checked: bool,
    ) -> Result<TensorAck, ApiError> {
        if u64::from(header.payload_len) != data.len() as u64 {
            return Err(ApiError::BadMessage(
                "header payload_len differs from the data length".into(),
            ));
        }
        let id = self.next_tensor.fetch_add(1, Ordering::Relaxed);
        let mut control = self
            .open(
                "tensor",
                {
                    let meta = Meta::op("tensor").with("id", &id.to_string());
                    if checked {
                        meta.with("checksum", "fnv64")
                    } else {
                        meta
                    }
                },
                false,
            )
            .await?;
        control
            .send_msg(&tensor::encode_control(header, shard)?)
            .await
            .map_err(map_stream_error)?;
        let shards = data
            .chunks(shard.max(1) as usize)
            .enumerate()
            .map(|(i, chunk)| {
                let meta = tensor::shard_meta(id, i as u32);
                async move {
                    let mut s =
                        tensor::ShardSend::new(self.session.open_bulk(meta.encode()).await?);
                    self.session.write_progressing(&mut s.stream, chunk).await?;
                    s.finish().map_err(nexus_stream::StreamError::from)?;
                    Ok::<_, nexus_stream::StreamError>(())
                }
            });
        let sending = async {
            futures::future::try_join_all(shards)
                .await
                .map_err(map_stream_error)
        };
        // Dropped before the acknowledgement (the caller cancelled): the receiver, which
        // watches the control stream, gives the transfer up.
        let mut abandon = AbandonOnDrop(Some(&mut control.send));
        let ack = async {
            control
                .recv
                .recv_msg()
                .await
                .map_err(map_stream_error)?
                .ok_or(ApiError::Ended)
        };
        tokio::pin!(sending);
        tokio::pin!(ack);
        // A refusal of the whole tensor (its header) arrives on the control stream; report
        // that rather than the shard streams it stopped, and never wait for shards the
        // receiver will not read.
        let ack = tokio::select! {
            a = &mut ack => {
                let a = a?;
                sending.await?;
                a
            }
            s = &mut sending => match s {
                Ok(_) => ack.await?,
                // The receiver read nothing for the stall timeout: it would not answer either.
                Err(e @ ApiError::Stream(nexus_stream::StreamError::WriteStalled(_))) => {
                    return Err(e);
                }
                Err(e) => return Err(ack.await.err().unwrap_or(e)),
            },
        };
        abandon.0 = None;
        Ok(serde_json::from_slice(&ack)?)
    }

    /// Carries one JSON-RPC message (MCP or A2A) unchanged; `method` and the tool or skill
    /// name are lifted into the stream metadata for routing. Returns the reply to a request,
    /// `None` for a notification.
    pub async fn jsonrpc(
        &self,
        binding: Binding,
        message: &[u8],
    ) -> Result<Option<Bytes>, ApiError> {
        let (method, name, expects_reply) = lift_jsonrpc(message)?;
        let mut meta = Meta::op("jsonrpc")
            .with("proto", binding.as_str())
            .with("method", &method);
        if let Some(name) = &name {
            meta = meta.with("name", name);
        }
        let mut s = self.open("jsonrpc", meta, false).await?;
        s.send_msg(message).await.map_err(map_stream_error)?;
        s.send.finish().map_err(map_stream_error)?;
        let reply = s.recv_msg().await.map_err(map_stream_error)?;
        if reply.is_some() {
            s.recv.take_end_now();
        }
        if expects_reply && reply.is_none() {
            return Err(ApiError::Ended);
        }
        Ok(reply)
    }
}

/// Tokens of one generation, in order, as they are produced.
#[derive(Debug)]
pub struct TokenStream {
    stream: OrderedStream,
}

impl TokenStream {
    /// The next token; `None` when the generation is complete.
    pub async fn next(&mut self) -> Option<Result<String, ApiError>> {
        match self.stream.recv_msg().await {
            Ok(Some(b)) => Some(
                String::from_utf8(b.to_vec())
                    .map_err(|_| ApiError::BadMessage("token is not UTF-8".into())),
            ),
            Ok(None) => None,
            Err(e) => Some(Err(map_stream_error(e))),
        }
    }

    /// Cancels the generation: the server's next token write fails and its work stops.
    pub fn cancel(mut self) {
        self.stream.recv.stop(codes::CANCELLED);
        self.stream.send.reset(codes::CANCELLED);
    }
}
