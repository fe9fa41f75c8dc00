//! Endpoints and sessions: quinn connections with MIC-verified handshakes, the four delivery
//! modes, limits and draining.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use nexus_mic::{Requirement, VerifiedMic};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{RecvStream, SendStream, VarInt};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Mutex, mpsc, watch};

use crate::frame::{self, FrameError, Mode, Preamble};
use crate::metrics::{Direction, Metrics, Tally};
use crate::partial::Expiry;
use crate::trust::{Identity, MicRefusal, SERVER_NAME, Trust, TrustError, refusal_label};
use crate::{ALPN, codes};

/// Send priority of bulk streams (quinn's default is 0; lower is sent later).
pub const BULK_PRIORITY: i32 = -1;

/// How long the peer may hold back an acknowledgement, requested of it with an ACK_FREQUENCY
/// frame (the QUIC acknowledgement-frequency extension, which quinn speaks on both ends).
///
/// QUIC's probe timeout is RTT + 4·RTT variance + the peer's `max_ack_delay`, 25 ms unless
/// asked otherwise. When the last packet of a response is lost and nothing follows it, only
/// that timeout finds the loss, so the default adds 25 ms to the call's tail on any path; on a
/// datacenter fabric, where RTT is tens of microseconds, it is nearly all of it. Asking for
/// 2 ms brings the timeout near TCP's tail-loss probe (2·RTT). The cost is an ACK for a lone
/// packet after 2 ms instead of 25; under steady traffic ACKs go every second packet either
/// way. quinn keeps the request at least the peer's `min_ack_delay` (its timer granularity).
/// Measured in the dataplane bench's head-of-line scenario (ARCHITECTURE.md).
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(2);

/// Limits that bound what one peer can make this endpoint hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent bidirectional streams a peer may open (reliable-ordered).
    pub max_bidi_streams: u32,
    /// Concurrent unidirectional streams a peer may open (one per unordered or partially
    /// reliable message, one per tensor shard).
    pub max_uni_streams: u32,
    /// Bytes a peer may have in flight (buffered here, unread) on one stream.
    pub stream_window: u32,
    /// Bytes a peer may have in flight on the whole connection.
    pub connection_window: u32,
    /// Largest message (length prefix) accepted.
    pub max_message: u64,
    /// Largest stream metadata accepted.
    pub max_meta: usize,
    /// Bytes of received datagrams buffered before older ones are dropped.
    pub datagram_buffer: usize,
    /// Time a new stream has to deliver its preamble before it is stopped (stalled peers).
    pub preamble_timeout: Duration,
    /// Time a message write may make no progress before the stream is reset (`STALLED`): a
    /// peer that stopped reading would otherwise hold the writer, and whatever it serves,
    /// for as long as the connection lives (keep-alives keep the idle timeout away). It
    /// measures the lack of progress, not the whole write, so slow readers are not cut off.
    pub write_stall_timeout: Duration,
    /// Idle timeout of a connection.
    pub idle_timeout: Duration,
    /// Connections a server holds at once; beyond it new ones are refused.
    pub max_connections: usize,
    /// Messages received but not yet taken by the application, per session.
    pub incoming_queue: usize,
    /// Largest UDP payload path-MTU discovery may probe for. quinn's default (1452) suits the
    /// Internet; on loopback or jumbo-frame fabrics a larger bound lets bulk transfers use
    /// fewer, larger packets (less per-packet crypto and syscall cost). Discovery validates
    /// every size before using it, so a too-high bound only costs a few lost probes.
    pub mtu_upper_bound: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bidi_streams: 256,
            max_uni_streams: 256,
            stream_window: 8 << 20,
            connection_window: 64 << 20,
            max_message: 16 << 20,
            max_meta: 4096,
            datagram_buffer: 1 << 20,
            preamble_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
            incoming_queue: 1024,
            mtu_upper_bound: 1452,
        }
    }
}

impl Limits {
    /// Refuses limits under which one stream could hold up the others.
    ///
    /// A stream's unread bytes count against both its own window and the connection's. With
    /// a connection window no larger than a stream window, one stalled stream (a reader that
    /// stopped reading, a tensor shard waiting for its control stream) can take all of the
    /// connection's credit, and every other stream of the session waits behind it: the
    /// head-of-line blocking NexStream exists to avoid.
    pub fn check(&self) -> Result<(), String> {
        if self.connection_window <= self.stream_window {
            return Err(format!(
                "the connection window ({} bytes) must be larger than the stream window ({} \
                 bytes), or one stalled stream can hold every other stream of its session",
                self.connection_window, self.stream_window
            ));
        }
        if self.max_bidi_streams == 0 {
            return Err("at least one bidirectional stream per peer is needed for calls".into());
        }
        Ok(())
    }
}

/// Endpoint configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Resource limits.
    pub limits: Limits,
    /// What a peer's MIC must satisfy.
    pub requirement: Requirement,
    /// Accept (server) and send (client) 0-RTT data on resumed connections; only streams
    /// marked idempotent are served from 0-RTT (see the crate docs on replay).
    pub zero_rtt: bool,
    /// The congestion controller of every connection this endpoint makes or accepts.
    pub congestion: Congestion,
}

/// Which congestion controller sessions run. One controller covers all of a session's
/// streams and datagrams, so the choice is per endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default: loss means congestion. Under random loss that is
    /// not congestion (lossy radio, long-haul links) it holds a bulk transfer near the Mathis
    /// bound, MSS/RTT × 1.22/√p: about 0.7 MB/s at 2% loss and a 15 ms round trip.
    #[default]
    Cubic,
    /// BBR (quinn's implementation of BBRv1, which quinn marks experimental): paces at the
    /// measured bottleneck rate and does not back off on loss alone, so bulk transfers keep
    /// their rate on randomly lossy paths (49 MB/s against CUBIC's 0.7 in the dataplane
    /// bench). BBRv1 is known to take more than its share beside loss-based flows and to
    /// overrun shallow buffers; opt in for paths whose loss is not congestion.
    Bbr,
}

impl Congestion {
    /// The name `FromStr` reads.
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Cubic => "cubic",
            Congestion::Bbr => "bbr",
        }
    }

    fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        match self {
            Congestion::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Congestion::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        }
    }
}

impl std::fmt::Display for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            other => Err(format!(
                "unknown congestion controller {other:?} (expected cubic or bbr)"
            )),
        }
    }
}

/// Errors of sessions and streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Loading identity or trust failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Socket error.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The peer's MIC was refused after the handshake (resumed sessions, revocation).
    #[error(transparent)]
    Refused(#[from] MicRefusal),
    /// Writing failed (peer stopped the stream, connection lost).
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading failed (peer reset the stream, connection lost).
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream was already finished or reset.
    #[error("stream closed")]
    Closed(#[from] quinn::ClosedStream),
    /// A datagram could not be sent.
    #[error("datagram: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
    /// The peer sent bytes that do not decode, or a local message breaks the format.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message")]
    Truncated,
    /// The operation needs a verified peer but the session is still in 0-RTT.
    #[error("operation not allowed before the handshake completes")]
    NotIdempotent,
    /// The endpoint's limits were refused ([`Limits::check`]).
    #[error("limits: {0}")]
    Limits(String),
    /// The peer read nothing of a message for [`Limits::write_stall_timeout`]; the stream was
    /// reset.
    #[error("the peer stopped reading; stream reset after {0:?} without progress")]
    WriteStalled(Duration),
}

impl StreamError {
    /// The MIC refusal label when the connection was closed by a MIC refusal, on either side.
    pub fn refusal_label(&self) -> Option<String> {
        match self {
            StreamError::Refused(r) => Some(r.0.metric_label().to_owned()),
            StreamError::Connection(e) => connection_refusal(e),
            _ => None,
        }
    }
}

fn connection_refusal(e: &quinn::ConnectionError) -> Option<String> {
    let reason = match e {
        quinn::ConnectionError::TransportError(t) => t.reason.clone(),
        quinn::ConnectionError::ConnectionClosed(c) => String::from_utf8_lossy(&c.reason).into(),
        quinn::ConnectionError::ApplicationClosed(c) => String::from_utf8_lossy(&c.reason).into(),
        _ => return None,
    };
    refusal_label(&reason).map(str::to_owned)
}

/// What one endpoint shares with its sessions.
#[derive(Debug)]
struct Shared {
    trust: Arc<Trust>,
    metrics: Arc<Metrics>,
    limits: Limits,
    zero_rtt: bool,
    certificate: Arc<nexus_tls::ReloadingCertificate>,
    live: AtomicUsize,
    /// Where sessions write qlog traces (`None`: not traced).
    qlog_dir: std::sync::RwLock<Option<std::path::PathBuf>>,
}

/// A NexStream endpoint: one UDP socket, serving and/or dialing.
#[derive(Debug, Clone)]
pub struct Endpoint {
    quinn: quinn::Endpoint,
    shared: Arc<Shared>,
    server_config: Option<quinn::ServerConfig>,
    shutdown: watch::Sender<bool>,
}

fn transport(l: &Limits, congestion: Congestion) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.congestion_controller_factory(congestion.factory());
    t.max_concurrent_bidi_streams(VarInt::from_u32(l.max_bidi_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(l.max_uni_streams));
    t.stream_receive_window(VarInt::from_u32(l.stream_window));
    t.receive_window(VarInt::from_u32(l.connection_window));
    t.send_window(u64::from(l.connection_window));
    t.datagram_receive_buffer_size(Some(l.datagram_buffer));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(l.idle_timeout).ok());
    t.keep_alive_interval(Some(l.idle_timeout / 3));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(l.mtu_upper_bound.max(1200));
    t.mtu_discovery_config(Some(mtu));
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.max_ack_delay(Some(MAX_ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

impl Endpoint {
    /// Binds `addr` and serves (and may also dial) with `identity`.
    pub fn server(
        addr: SocketAddr,
        identity: &Identity,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StreamError> {
        Self::build(addr, identity, config, metrics, true)
    }

    /// Binds `addr` (usually port 0) to dial only.
    pub fn client(
        addr: SocketAddr,
        identity: &Identity,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StreamError> {
        Self::build(addr, identity, config, metrics, false)
    }

    fn build(
        addr: SocketAddr,
        identity: &Identity,
        config: &Config,
        metrics: Arc<Metrics>,
        serve: bool,
    ) -> Result<Self, StreamError> {
        config.limits.check().map_err(StreamError::Limits)?;
        let trust = Arc::new(Trust::new(
            identity,
            config.requirement.clone(),
            Arc::clone(&metrics),
        )?);
        let provider = Arc::new(crate::trust::session_provider());
        let tls = |e: rustls::Error| StreamError::Tls(e.to_string());
        // The MIC both sides present, swappable: a renewed MIC is used by new handshakes
        // without rebinding the socket or dropping sessions (see `Endpoint::reload_identity`).
        let certificate = nexus_tls::ReloadingCertificate::from_der(
            identity.chain.clone(),
            identity.key.clone_key(),
        )
        .map_err(|e| StreamError::Tls(e.to_string()))?;

        let mut client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(&trust) as _)
            .with_client_cert_resolver(Arc::clone(&certificate) as _);
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.enable_early_data = config.zero_rtt;
        let client =
            QuicClientConfig::try_from(client).map_err(|e| StreamError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client));
        client.transport_config(transport(&config.limits, config.congestion));

        let server_config = if serve {
            let mut server = rustls::ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(tls)?
                .with_client_cert_verifier(Arc::clone(&trust) as _)
                .with_cert_resolver(Arc::clone(&certificate) as _);
            server.alpn_protocols = vec![ALPN.to_vec()];
            server.max_early_data_size = if config.zero_rtt { u32::MAX } else { 0 };
            let server =
                QuicServerConfig::try_from(server).map_err(|e| StreamError::Tls(e.to_string()))?;
            let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
            server.transport_config(transport(&config.limits, config.congestion));
            Some(server)
        } else {
            None
        };
        let mut quinn = match &server_config {
            Some(sc) => quinn::Endpoint::server(sc.clone(), addr)?,
            None => quinn::Endpoint::client(addr)?,
        };
        quinn.set_default_client_config(client);
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            quinn,
            server_config,
            shared: Arc::new(Shared {
                trust,
                metrics,
                limits: config.limits.clone(),
                zero_rtt: config.zero_rtt,
                certificate,
                live: AtomicUsize::new(0),
                qlog_dir: std::sync::RwLock::new(crate::qlog::dir_from_env()),
            }),
            shutdown,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, StreamError> {
        Ok(self.quinn.local_addr()?)
    }

    /// Presents `identity`'s MIC (chain and key) from the next handshake on, client and
    /// server side; open sessions keep theirs. For a renewed MIC: the key must match the
    /// chain, and the trust anchors stay those the endpoint was built with.
    pub fn reload_identity(&self, identity: &Identity) -> Result<(), StreamError> {
        self.shared
            .certificate
            .replace(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| StreamError::Tls(e.to_string()))
    }

    /// Writes a qlog trace of every session started from now on into `dir` (`None`: stops
    /// tracing new sessions). The default is the `QLOGDIR` environment variable's directory,
    /// if set. See [`crate::qlog`] for what is traced.
    pub fn set_qlog_dir(&self, dir: Option<std::path::PathBuf>) {
        *self
            .shared
            .qlog_dir
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = dir;
    }

    /// The verification policy (to load CRLs, change the requirement).
    pub fn trust(&self) -> &Arc<Trust> {
        &self.shared.trust
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Open sessions.
    pub fn live_sessions(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Dials `addr` with a full handshake (or a resumed one when a ticket is cached), and
    /// returns once the peer's MIC is verified.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Session, StreamError> {
        let connecting = self.quinn.connect(addr, SERVER_NAME)?;
        let conn = match connecting.await {
            Ok(c) => c,
            Err(e) => {
                self.shared.metrics.handshake(handshake_failure(&e));
                return Err(e.into());
            }
        };
        let peer = verify_peer(&self.shared, &conn)?;
        Ok(Session::start(
            conn,
            Some(peer),
            Arc::clone(&self.shared),
            self.shutdown.subscribe(),
            crate::qlog::Side::Client,
        ))
    }

    /// Dials `addr` and, when a resumption ticket allows it, returns before the handshake
    /// completes so that idempotent requests ride in 0-RTT. Without a ticket it behaves like
    /// [`Endpoint::connect`]. Non-idempotent streams wait for the handshake.
    pub async fn connect_early(&self, addr: SocketAddr) -> Result<Session, StreamError> {
        if !self.shared.zero_rtt {
            return self.connect(addr).await;
        }
        let connecting = self.quinn.connect(addr, SERVER_NAME)?;
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let session = Session::start(
                    conn,
                    None,
                    Arc::clone(&self.shared),
                    self.shutdown.subscribe(),
                    crate::qlog::Side::Client,
                );
                let s = session.clone();
                tokio::spawn(async move {
                    let _ = accepted.await;
                    s.complete_handshake();
                });
                Ok(session)
            }
            Err(connecting) => {
                let conn = match connecting.await {
                    Ok(c) => c,
                    Err(e) => {
                        self.shared.metrics.handshake(handshake_failure(&e));
                        return Err(e.into());
                    }
                };
                let peer = verify_peer(&self.shared, &conn)?;
                Ok(Session::start(
                    conn,
                    Some(peer),
                    Arc::clone(&self.shared),
                    self.shutdown.subscribe(),
                    crate::qlog::Side::Client,
                ))
            }
        }
    }

    /// The raw quinn connection of a 0-RTT attempt, without the client-side rule that only
    /// idempotent streams may be sent early (`None` when no ticket allows 0-RTT). For tests
    /// and tools that check the *server's* replay defence; applications use
    /// [`Endpoint::connect_early`].
    pub fn connect_0rtt_ungated(
        &self,
        addr: SocketAddr,
    ) -> Result<Option<quinn::Connection>, StreamError> {
        let connecting = self.quinn.connect(addr, SERVER_NAME)?;
        Ok(connecting.into_0rtt().ok().map(|(conn, _)| conn))
    }

    /// Waits for the next incoming connection attempt; `None` once the endpoint is closed or
    /// draining. Call [`Accepting::establish`] on it (in its own task).
    pub async fn accept(&self) -> Option<Accepting> {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if *shutdown.borrow() {
                return None;
            }
            tokio::select! {
                incoming = self.quinn.accept() => {
                    let incoming = incoming?;
                    if self.shared.live.load(Ordering::Relaxed) >= self.shared.limits.max_connections {
                        self.shared.metrics.refused_stream("connection_limit");
                        incoming.refuse();
                        continue;
                    }
                    return Some(Accepting {
                        incoming,
                        shared: Arc::clone(&self.shared),
                        shutdown: self.shutdown.subscribe(),
                    });
                }
                _ = shutdown.changed() => return None,
            }
        }
    }

    /// Drains: refuses new connections, tells sessions to stop (their `accept` returns
    /// `None`), waits up to `grace` for peers to finish, then closes what is left.
    pub async fn drain(&self, grace: Duration) {
        self.shutdown.send_replace(true);
        if self.server_config.is_some() {
            // Existing connections keep being served; new attempts are refused at once
            // (CONNECTION_REFUSED) instead of timing out.
            let quinn = self.quinn.clone();
            tokio::spawn(async move {
                while let Some(incoming) = quinn.accept().await {
                    incoming.refuse();
                }
            });
        }
        let live = Arc::clone(&self.shared);
        let _ = tokio::time::timeout(grace, async move {
            while live.live.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.quinn.close(codes::SHUTDOWN, b"draining");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.quinn.wait_idle()).await;
    }

    /// Closes at once.
    pub fn close(&self) {
        self.shutdown.send_replace(true);
        self.quinn.close(codes::SHUTDOWN, b"closed");
    }
}

fn handshake_failure(e: &quinn::ConnectionError) -> &'static str {
    if connection_refusal(e).is_some() {
        "refused"
    } else {
        "failed"
    }
}

fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|b| *b)
}

/// Re-verifies the peer's MIC after the handshake: for a resumed session the TLS hooks did
/// not run, and the MIC may have been revoked or have expired since the ticket was issued.
fn verify_peer(shared: &Shared, conn: &quinn::Connection) -> Result<VerifiedMic, StreamError> {
    let Some(chain) = peer_chain(conn) else {
        let r = MicRefusal(nexus_mic::Rejection::EmptyChain);
        conn.close(codes::MIC_REFUSED, r.to_string().as_bytes());
        return Err(r.into());
    };
    let chain: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
    match shared.trust.verify_chain(&chain, SystemTime::now()) {
        Ok(v) => {
            shared.metrics.handshake("accepted");
            Ok(v)
        }
        Err(r) => {
            shared.metrics.handshake("refused");
            conn.close(codes::MIC_REFUSED, r.to_string().as_bytes());
            Err(r.into())
        }
    }
}

/// An incoming connection attempt.
#[derive(Debug)]
pub struct Accepting {
    incoming: quinn::Incoming,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
}

impl Accepting {
    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Completes the handshake and verifies the peer. With 0-RTT enabled and a resumed
    /// client, the session is returned at once (0.5-RTT) after checking the identity the
    /// resumption ticket carries, so the client's 0-RTT request is answered in the first
    /// flight; only idempotent streams are served from 0-RTT data.
    pub async fn establish(self) -> Result<Session, StreamError> {
        let shared = self.shared;
        let connecting = match self.incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                shared.metrics.handshake(handshake_failure(&e));
                return Err(e.into());
            }
        };
        let conn = if shared.zero_rtt {
            match connecting.into_0rtt() {
                Ok((conn, accepted)) => {
                    if peer_chain(&conn).is_some() {
                        conn
                    } else {
                        // 0.5-RTT: the session starts before the client's Finished so that
                        // an idempotent 0-RTT request is answered in the first flight. Such a
                        // request is authorised by the resumption PSK, which this server
                        // issued only to a MIC it verified; the MIC itself is verified again
                        // when the handshake completes (and the session closed if refused).
                        // Until then only 0-RTT idempotent streams are served.
                        let session = Session::start(
                            conn,
                            None,
                            Arc::clone(&shared),
                            self.shutdown,
                            crate::qlog::Side::Server,
                        );
                        let s = session.clone();
                        tokio::spawn(async move {
                            let _ = accepted.await;
                            s.complete_handshake();
                        });
                        return Ok(session);
                    }
                }
                Err(connecting) => connecting.await?,
            }
        } else {
            match connecting.await {
                Ok(c) => c,
                Err(e) => {
                    shared.metrics.handshake(handshake_failure(&e));
                    return Err(e.into());
                }
            }
        };
        let peer = verify_peer(&shared, &conn)?;
        Ok(Session::start(
            conn,
            Some(peer),
            shared,
            self.shutdown,
            crate::qlog::Side::Server,
        ))
    }
}

/// Something the peer sent.
#[derive(Debug)]
pub enum Incoming {
    /// A reliable-ordered bidirectional stream the peer opened.
    Ordered(OrderedStream),
    /// A whole message from a unidirectional stream (reliable-unordered or partially
    /// reliable).
    Message(Message),
    /// A bulk stream (raw bytes after the preamble), handed over unread so the application
    /// can read it straight into place.
    Bulk {
        /// Its preamble.
        preamble: Preamble,
        /// The stream, positioned after the preamble.
        recv: RecvStream,
    },
    /// A best-effort datagram.
    Datagram {
        /// Channel.
        channel: u16,
        /// Payload.
        payload: Bytes,
    },
}

/// A complete message received on a unidirectional stream.
#[derive(Debug, Clone)]
pub struct Message {
    /// Delivery mode.
    pub mode: Mode,
    /// The stream's metadata.
    pub meta: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// Whether it arrived as 0-RTT data (then it is idempotent).
    pub zero_rtt: bool,
}

/// The outcome of a partially reliable send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every byte acknowledged by the peer before the deadline.
    Delivered,
    /// Deadline passed: the stream was reset and the message dropped (counted).
    Expired,
    /// The receiver stopped the stream (its own deadline or a refusal) with this code.
    Stopped(u64),
}

struct SessionInner {
    conn: quinn::Connection,
    shared: Arc<Shared>,
    peer: watch::Sender<Option<Result<Arc<VerifiedMic>, String>>>,
    incoming: Mutex<mpsc::Receiver<Incoming>>,
    tally: Arc<Tally>,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.conn.close(codes::OK, b"");
    }
}

/// One connection to a verified peer. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.inner.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl Session {
    fn start(
        conn: quinn::Connection,
        peer: Option<VerifiedMic>,
        shared: Arc<Shared>,
        shutdown: watch::Receiver<bool>,
        side: crate::qlog::Side,
    ) -> Self {
        let (tx, rx) = mpsc::channel(shared.limits.incoming_queue.max(1));
        let (peer_tx, _) = watch::channel(peer.map(|p| Ok(Arc::new(p))));
        shared.live.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connection_opened();
        let tally = Arc::new(Tally::default());
        let session = Session {
            inner: Arc::new(SessionInner {
                conn: conn.clone(),
                shared: Arc::clone(&shared),
                peer: peer_tx,
                incoming: Mutex::new(rx),
                tally: Arc::clone(&tally),
            }),
        };
        let qlog_dir = shared
            .qlog_dir
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(dir) = qlog_dir {
            crate::qlog::spawn(conn.clone(), session.inner.peer.subscribe(), &dir, side);
        }
        tokio::spawn(dispatch(
            conn,
            Counting { shared, tally },
            tx,
            shutdown,
            session.inner.peer.subscribe(),
        ));
        session
    }

    fn complete_handshake(&self) {
        let r = match self.inner.conn.close_reason() {
            Some(e) => Err(e.to_string()),
            None => verify_peer(&self.inner.shared, &self.inner.conn)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
        };
        self.inner.peer.send_replace(Some(r));
    }

    /// The verified peer MIC, waiting for the handshake when the session started in 0-RTT.
    pub async fn peer(&self) -> Result<Arc<VerifiedMic>, StreamError> {
        // Verified already (every stream after the handshake): no subscription to wait on.
        if let Some(Ok(p)) = &*self.inner.peer.borrow() {
            return Ok(Arc::clone(p));
        }
        let mut rx = self.inner.peer.subscribe();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StreamError::NotIdempotent)?
            .clone();
        match r {
            Some(Ok(p)) => Ok(p),
            _ => Err(self
                .inner
                .conn
                .close_reason()
                .map_or(StreamError::NotIdempotent, StreamError::Connection)),
        }
    }

    /// This session's traffic by direction and mode, for per-tenant accounting.
    pub fn tally(&self) -> &Arc<Tally> {
        &self.inner.tally
    }

    /// Whether the peer is verified already (false while in 0-RTT).
    pub fn is_verified(&self) -> bool {
        matches!(*self.inner.peer.borrow(), Some(Ok(_)))
    }

    /// The underlying quinn connection (stats, RTT).
    pub fn connection(&self) -> &quinn::Connection {
        &self.inner.conn
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        self.inner.conn.rtt()
    }

    /// The limits this end enforces on the session (what it grants the peer).
    pub fn limits(&self) -> &Limits {
        &self.inner.shared.limits
    }

    /// Writes all of `buf` to `send`, a raw stream of this session (a bulk stream, a tensor
    /// shard), under the same rule as every message write: a peer that lets no byte through
    /// for [`Limits::write_stall_timeout`] gets the stream reset with `STALLED`, counted, and
    /// the write fails with [`StreamError::WriteStalled`].
    pub async fn write_progressing(
        &self,
        send: &mut SendStream,
        buf: &[u8],
    ) -> Result<(), StreamError> {
        write_progressing(&self.inner.shared, send, buf).await
    }

    fn counting(&self) -> Counting {
        Counting {
            shared: Arc::clone(&self.inner.shared),
            tally: Arc::clone(&self.inner.tally),
        }
    }

    fn count_sent(&self, mode: Mode, bytes: usize) {
        self.inner.shared.metrics.sent(mode, bytes);
        self.inner.tally.record(Direction::Sent, mode, bytes);
    }

    async fn gate(&self, idempotent: bool) -> Result<(), StreamError> {
        if !idempotent && !self.is_verified() {
            self.peer().await?;
        }
        Ok(())
    }

    /// Opens a reliable-ordered stream (one bidirectional QUIC stream). `idempotent` marks
    /// requests that may travel in 0-RTT and be replayed.
    pub async fn open_ordered(
        &self,
        meta: impl Into<Bytes>,
        idempotent: bool,
    ) -> Result<OrderedStream, StreamError> {
        self.open_ordered_with(meta, idempotent, None).await
    }

    /// [`Session::open_ordered`], sending `first` as the stream's first message in the same
    /// write as the preamble: a request goes out as one STREAM frame, and the connection's
    /// driver is woken once for it rather than once per write (on a multi-threaded runtime
    /// it may otherwise send the preamble alone before the message is written).
    pub async fn open_ordered_with(
        &self,
        meta: impl Into<Bytes>,
        idempotent: bool,
        first: Option<&[u8]>,
    ) -> Result<OrderedStream, StreamError> {
        self.gate(idempotent).await?;
        let mut preamble = Preamble::new(Mode::ReliableOrdered, meta);
        if idempotent {
            preamble.flags |= frame::FLAG_IDEMPOTENT;
        }
        let max = self.limits().max_message;
        let first_len = match first {
            Some(m) if m.len() as u64 > max => {
                return Err(FrameError::MessageTooLarge {
                    len: m.len() as u64,
                    max,
                }
                .into());
            }
            Some(m) => frame::LEN_PREFIX + m.len(),
            None => 0,
        };
        let mut buf = BytesMut::with_capacity(preamble.encoded_len() + first_len);
        preamble.encode(&mut buf, self.limits().max_meta)?;
        if let Some(m) = first {
            frame::encode_message(m, &mut buf, max)?;
        }
        let (mut send, recv) = self.inner.conn.open_bi().await?;
        send.write_all(&buf).await?;
        let stream = OrderedStream::new(send, recv, preamble, self.counting(), false);
        if let Some(m) = first {
            stream.send.counting.sent(Mode::ReliableOrdered, m.len());
        }
        Ok(stream)
    }

    /// Sends one message on its own unidirectional stream (reliable-unordered): it is
    /// delivered when complete, independent of every other message.
    pub async fn send_unordered(
        &self,
        meta: impl Into<Bytes>,
        payload: &[u8],
    ) -> Result<(), StreamError> {
        self.gate(false).await?;
        let preamble = Preamble::new(Mode::ReliableUnordered, meta);
        let mut send = self.inner.conn.open_uni().await?;
        self.write_uni(&mut send, &preamble, payload).await?;
        send.finish()?;
        self.count_sent(Mode::ReliableUnordered, payload.len());
        Ok(())
    }

    async fn write_uni(
        &self,
        send: &mut SendStream,
        preamble: &Preamble,
        payload: &[u8],
    ) -> Result<(), StreamError> {
        let max = self.limits().max_message;
        let mut buf = BytesMut::with_capacity(preamble.encoded_len() + frame::LEN_PREFIX);
        preamble.encode(&mut buf, self.limits().max_meta)?;
        if payload.len() as u64 > max {
            return Err(FrameError::MessageTooLarge {
                len: payload.len() as u64,
                max,
            }
            .into());
        }
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        send.write_all(&buf).await?;
        send.write_all(payload).await?;
        Ok(())
    }

    /// Sends one message partially reliably: retransmitted until `expiry`, then the stream
    /// is reset (the peer discards what it has) and the drop is counted. Never affects
    /// other streams or the connection.
    pub async fn send_partial(
        &self,
        meta: impl Into<Bytes>,
        payload: &[u8],
        expiry: Expiry,
    ) -> Result<Delivery, StreamError> {
        self.gate(false).await?;
        let deadline = expiry.deadline(self.rtt());
        let mut preamble = Preamble::new(Mode::PartiallyReliable, meta);
        preamble.deadline_ms = crate::partial::wire_deadline_ms(deadline);
        let mut slot: Option<SendStream> = None;
        let attempt = async {
            let send = slot.insert(self.inner.conn.open_uni().await?);
            self.write_uni(send, &preamble, payload).await?;
            send.finish()?;
            Ok::<_, StreamError>(send.stopped().await)
        };
        let outcome = tokio::time::timeout(deadline, attempt).await;
        let metrics = &self.inner.shared.metrics;
        match outcome {
            Ok(Ok(Ok(None))) => {
                self.count_sent(Mode::PartiallyReliable, payload.len());
                Ok(Delivery::Delivered)
            }
            Ok(Ok(Ok(Some(code)))) => Ok(Delivery::Stopped(code.into_inner())),
            Ok(Ok(Err(quinn::StoppedError::ConnectionLost(e)))) => Err(e.into()),
            Ok(Ok(Err(quinn::StoppedError::ZeroRttRejected))) => Err(StreamError::NotIdempotent),
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => {
                if let Some(send) = slot.as_mut() {
                    let _ = send.reset(codes::EXPIRED);
                }
                metrics.expired("sender");
                Ok(Delivery::Expired)
            }
        }
    }

    /// Sends a best-effort datagram (RFC 9221): never retransmitted, dropped under loss or
    /// when larger than the path allows ([`Session::max_datagram`]).
    pub fn send_datagram(&self, channel: u16, payload: &[u8]) -> Result<(), StreamError> {
        self.inner
            .conn
            .send_datagram(frame::encode_datagram(channel, payload))?;
        self.count_sent(Mode::BestEffort, payload.len());
        Ok(())
    }

    /// Largest datagram payload the path takes now, if datagrams are supported.
    pub fn max_datagram(&self) -> Option<usize> {
        self.inner
            .conn
            .max_datagram_size()
            .map(|n| n.saturating_sub(frame::DATAGRAM_HEADER))
    }

    /// Opens a bulk stream (raw bytes after the preamble) for tensor shards.
    pub async fn open_bulk(&self, meta: impl Into<Bytes>) -> Result<SendStream, StreamError> {
        self.gate(false).await?;
        let mut preamble = Preamble::new(Mode::ReliableUnordered, meta);
        preamble.flags |= frame::FLAG_BULK;
        let mut buf = BytesMut::new();
        preamble.encode(&mut buf, self.limits().max_meta)?;
        let mut send = self.inner.conn.open_uni().await?;
        // Bulk yields to everything else inside the shared congestion window, so a small
        // call beside a tensor transfer is not queued behind its bytes.
        let _ = send.set_priority(BULK_PRIORITY);
        send.write_all(&buf).await?;
        Ok(send)
    }

    /// The next thing the peer sent; `None` when the connection is closed or the endpoint
    /// drains.
    pub async fn accept(&self) -> Option<Incoming> {
        self.inner.incoming.lock().await.recv().await
    }

    /// Closes the connection with an application code and reason.
    pub fn close(&self, code: VarInt, reason: &str) {
        self.inner.conn.close(code, reason.as_bytes());
    }

    /// Waits until the connection is closed and returns why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.inner.conn.closed().await
    }
}

/// Accepts everything the peer opens, decodes preambles (with a timeout, so a stalled peer
/// cannot pin streams), enforces limits and hands results to the session queue. Each stream
/// is read in its own task: one slow or lossy stream never delays another.
async fn dispatch(
    conn: quinn::Connection,
    counting: Counting,
    tx: mpsc::Sender<Incoming>,
    mut shutdown: watch::Receiver<bool>,
    peer: PeerWatch,
) {
    let shared = Arc::clone(&counting.shared);
    let mut watching_shutdown = true;
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    // The preamble (and usually the whole request) arrives with the stream's
                    // first packet: read it here, and only a stream that must wait for more
                    // gets a task of its own (a spawn and a wake-up less per call).
                    let mut read =
                        Box::pin(read_bi(send, recv, counting.clone(), tx.clone(), peer.clone()));
                    if futures::poll!(read.as_mut()).is_pending() {
                        tokio::spawn(read);
                    }
                }
                Err(_) => break,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(read_uni(recv, counting.clone(), tx.clone(), peer.clone()));
                }
                Err(_) => break,
            },
            d = conn.read_datagram() => match d {
                Ok(d) => match frame::decode_datagram(&d) {
                    Ok(_) if !matches!(*peer.borrow(), Some(Ok(_))) => {
                        shared.metrics.refused_stream("unverified_datagram");
                    }
                    Ok((channel, payload)) => {
                        counting.received(Mode::BestEffort, payload.len());
                        // Best effort end to end: a full queue drops, it never blocks.
                        if tx.try_send(Incoming::Datagram { channel, payload }).is_err() {
                            shared.metrics.refused_stream("datagram_queue_full");
                        }
                    }
                    Err(e) => shared.metrics.refused_stream(e.metric_label()),
                },
                Err(_) => break,
            },
            changed = shutdown.changed(), if watching_shutdown => match changed {
                Ok(()) => if *shutdown.borrow() { break; },
                // Every `Endpoint` handle is gone: no drain can come any more, and the session
                // lives on until its connection closes (as quinn's connections outlive their
                // endpoint handle). `changed` would now return at once on every poll, turning
                // this loop into a busy spin, so stop watching.
                Err(_) => watching_shutdown = false,
            },
        }
    }
    // Dropping `tx` ends `Session::accept` once queued items are taken.
    drop(tx);
    let _ = conn.closed().await;
    shared.live.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.connection_closed();
}

type PeerWatch = watch::Receiver<Option<Result<Arc<VerifiedMic>, String>>>;

/// Whether the peer is (or becomes) verified; false if the handshake or MIC check failed.
async fn verified(peer: &mut PeerWatch) -> bool {
    matches!(
        peer.wait_for(Option::is_some).await.as_deref(),
        Ok(Some(Ok(_)))
    )
}

async fn read_preamble(
    recv: &mut RecvStream,
    shared: &Shared,
) -> Result<Preamble, (VarInt, &'static str)> {
    let limits = &shared.limits;
    let read = async {
        let mut fixed = [0u8; frame::PREAMBLE_FIXED];
        recv.read_exact(&mut fixed)
            .await
            .map_err(|_| (codes::BAD_FRAME, "truncated"))?;
        let (mut p, meta_len) = Preamble::decode_fixed(&fixed, limits.max_meta).map_err(|e| {
            let code = match e {
                FrameError::UnknownMode(_) | FrameError::ModeNotOnStream(_) => codes::UNKNOWN_MODE,
                FrameError::MetadataTooLarge { .. } => codes::TOO_LARGE,
                _ => codes::BAD_FRAME,
            };
            (code, e.metric_label())
        })?;
        let mut meta = vec![0u8; meta_len];
        recv.read_exact(&mut meta)
            .await
            .map_err(|_| (codes::BAD_FRAME, "truncated"))?;
        p.meta = meta.into();
        Ok(p)
    };
    match tokio::time::timeout(limits.preamble_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err((codes::STALLED, "preamble_timeout")),
    }
}

fn refuse(recv: &mut RecvStream, shared: &Shared, code: VarInt, label: &'static str) {
    shared.metrics.refused_stream(label);
    tracing::debug!(reason = label, "stream refused");
    let _ = recv.stop(code);
}

async fn read_bi(
    mut send: SendStream,
    mut recv: RecvStream,
    counting: Counting,
    tx: mpsc::Sender<Incoming>,
    mut peer: PeerWatch,
) {
    let shared = Arc::clone(&counting.shared);
    let p = match read_preamble(&mut recv, &shared).await {
        Ok(p) => p,
        Err((code, label)) => {
            refuse(&mut recv, &shared, code, label);
            let _ = send.reset(code);
            return;
        }
    };
    if p.mode != Mode::ReliableOrdered || p.bulk() {
        refuse(
            &mut recv,
            &shared,
            codes::UNKNOWN_MODE,
            "mode_on_wrong_stream",
        );
        let _ = send.reset(codes::UNKNOWN_MODE);
        return;
    }
    let zero_rtt = recv.is_0rtt();
    if zero_rtt && !p.idempotent() {
        refuse(
            &mut recv,
            &shared,
            codes::REFUSED_0RTT,
            "non_idempotent_0rtt",
        );
        let _ = send.reset(codes::REFUSED_0RTT);
        return;
    }
    if !zero_rtt && !verified(&mut peer).await {
        let _ = recv.stop(codes::MIC_REFUSED);
        let _ = send.reset(codes::MIC_REFUSED);
        return;
    }
    let _ = tx
        .send(Incoming::Ordered(OrderedStream::new(
            send, recv, p, counting, zero_rtt,
        )))
        .await;
}

async fn read_uni(
    mut recv: RecvStream,
    counting: Counting,
    tx: mpsc::Sender<Incoming>,
    mut peer: PeerWatch,
) {
    let shared = Arc::clone(&counting.shared);
    let started = tokio::time::Instant::now();
    let p = match read_preamble(&mut recv, &shared).await {
        Ok(p) => p,
        Err((code, label)) => return refuse(&mut recv, &shared, code, label),
    };
    let zero_rtt = recv.is_0rtt();
    if zero_rtt && !p.idempotent() {
        return refuse(
            &mut recv,
            &shared,
            codes::REFUSED_0RTT,
            "non_idempotent_0rtt",
        );
    }
    if !zero_rtt && !verified(&mut peer).await {
        let _ = recv.stop(codes::MIC_REFUSED);
        return;
    }
    if p.mode == Mode::ReliableOrdered {
        return refuse(
            &mut recv,
            &shared,
            codes::UNKNOWN_MODE,
            "mode_on_wrong_stream",
        );
    }
    if p.bulk() {
        let _ = tx.send(Incoming::Bulk { preamble: p, recv }).await;
        return;
    }
    let max = shared.limits.max_message;
    let read = async {
        let mut prefix = [0u8; frame::LEN_PREFIX];
        recv.read_exact(&mut prefix)
            .await
            .map_err(|_| (codes::BAD_FRAME, "truncated"))?;
        let len = frame::check_message_len(prefix, max)
            .map_err(|e| (codes::TOO_LARGE, e.metric_label()))?;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body)
            .await
            .map_err(|_| (codes::BAD_FRAME, "truncated"))?;
        // One message per stream: wait for the FIN, so the stream ends cleanly (dropping it
        // earlier would send STOP_SENDING and the sender could not tell delivery apart).
        match recv.read(&mut [0u8; 1]).await {
            Ok(None) => Ok::<_, (VarInt, &'static str)>(body),
            Ok(Some(_)) => Err((codes::BAD_FRAME, "trailing_bytes")),
            Err(_) => Err((codes::BAD_FRAME, "truncated")),
        }
    };
    let body = if p.mode == Mode::PartiallyReliable {
        let deadline = started + Duration::from_millis(u64::from(p.deadline_ms));
        match tokio::time::timeout_at(deadline, read).await {
            Ok(r) => r,
            Err(_) => {
                shared.metrics.expired("receiver");
                let _ = recv.stop(codes::EXPIRED);
                return;
            }
        }
    } else {
        read.await
    };
    match body {
        Ok(body) => {
            counting.received(p.mode, body.len());
            let _ = tx
                .send(Incoming::Message(Message {
                    mode: p.mode,
                    meta: p.meta,
                    payload: body.into(),
                    zero_rtt,
                }))
                .await;
        }
        Err((code, label)) => {
            // A reset by the sender (expiry, cancel) is not bad input.
            if label == "truncated" && p.mode == Mode::PartiallyReliable {
                shared.metrics.expired("receiver");
            } else {
                refuse(&mut recv, &shared, code, label);
            }
        }
    }
}

/// Where a session's streams count what they carry: the endpoint's metrics and the session's
/// [`Tally`].
#[derive(Debug, Clone)]
struct Counting {
    shared: Arc<Shared>,
    tally: Arc<Tally>,
}

impl Counting {
    fn sent(&self, mode: Mode, bytes: usize) {
        self.shared.metrics.sent(mode, bytes);
        self.tally.record(Direction::Sent, mode, bytes);
    }

    fn received(&self, mode: Mode, bytes: usize) {
        self.shared.metrics.received(mode, bytes);
        self.tally.record(Direction::Received, mode, bytes);
    }
}

/// A reliable-ordered stream: length-prefixed messages in both directions.
#[derive(Debug)]
pub struct OrderedStream {
    /// Sending half.
    pub send: OrderedSend,
    /// Receiving half.
    pub recv: OrderedRecv,
    /// The preamble the initiator sent.
    pub preamble: Preamble,
    /// Whether the stream arrived in 0-RTT (then it is idempotent).
    pub zero_rtt: bool,
}

impl OrderedStream {
    fn new(
        send: SendStream,
        recv: RecvStream,
        preamble: Preamble,
        counting: Counting,
        zero_rtt: bool,
    ) -> Self {
        Self {
            send: OrderedSend {
                inner: send,
                counting: counting.clone(),
            },
            recv: OrderedRecv {
                inner: recv,
                counting,
            },
            preamble,
            zero_rtt,
        }
    }

    /// Sends one message.
    pub async fn send_msg(&mut self, msg: &[u8]) -> Result<(), StreamError> {
        self.send.send_msg(msg).await
    }

    /// Receives one message; `None` at the end of the stream.
    pub async fn recv_msg(&mut self) -> Result<Option<Bytes>, StreamError> {
        self.recv.recv_msg().await
    }
}

/// Sending half of an ordered stream.
#[derive(Debug)]
pub struct OrderedSend {
    inner: SendStream,
    counting: Counting,
}

impl OrderedSend {
    /// Sends one message.
    pub async fn send_msg(&mut self, msg: &[u8]) -> Result<(), StreamError> {
        let max = self.counting.shared.limits.max_message;
        if msg.len() as u64 > max {
            return Err(FrameError::MessageTooLarge {
                len: msg.len() as u64,
                max,
            }
            .into());
        }
        // One write for small messages (one STREAM frame, no Nagle-like wait in QUIC).
        if msg.len() <= 16 * 1024 {
            let mut b = BytesMut::with_capacity(frame::LEN_PREFIX + msg.len());
            frame::encode_message(msg, &mut b, max)?;
            self.write_progressing(&b).await?;
        } else {
            self.write_progressing(&(msg.len() as u32).to_le_bytes())
                .await?;
            self.write_progressing(msg).await?;
        }
        self.counting.sent(Mode::ReliableOrdered, msg.len());
        Ok(())
    }

    async fn write_progressing(&mut self, buf: &[u8]) -> Result<(), StreamError> {
        write_progressing(&self.counting.shared, &mut self.inner, buf).await
    }

    /// Ends the stream cleanly.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        Ok(self.inner.finish()?)
    }

    /// Sends `msg` and ends the stream right after it, so the FIN usually shares the
    /// message's packet (a reply, or a request nothing follows).
    pub async fn send_last(&mut self, msg: &[u8]) -> Result<(), StreamError> {
        self.send_msg(msg).await?;
        self.finish()
    }

    /// Abandons the stream (cancellation): the peer's reads fail with `code`.
    pub fn reset(&mut self, code: VarInt) {
        let _ = self.inner.reset(code);
    }

    /// Completes when the peer stops reading (cancellation from the receiver) with its code,
    /// or `None` once everything sent was acknowledged after `finish`.
    pub async fn stopped(&mut self) -> Option<u64> {
        match self.inner.stopped().await {
            Ok(Some(code)) => Some(code.into_inner()),
            Ok(None) => None,
            Err(_) => Some(codes::CANCELLED.into_inner()),
        }
    }

    /// The raw QUIC stream (bulk writes).
    pub fn raw(&mut self) -> &mut SendStream {
        &mut self.inner
    }
}

/// Writes all of `buf` to `send`, resetting the stream with `STALLED` (and failing with
/// [`StreamError::WriteStalled`]) when the peer's flow control lets no byte through for the
/// endpoint's [`Limits::write_stall_timeout`], and counting it
/// (`nexstream_refused_streams_total{reason="write_stalled"}`). For messages and raw bulk
/// streams alike: a peer that stops reading would otherwise hold the writer for the
/// connection's life.
async fn write_progressing(
    shared: &Shared,
    send: &mut SendStream,
    mut buf: &[u8],
) -> Result<(), StreamError> {
    let stall = shared.limits.write_stall_timeout;
    while !buf.is_empty() {
        // A write that completes at once (the usual case) never registers the timer.
        match tokio::time::timeout(stall, send.write(buf)).await {
            Ok(written) => buf = buf.get(written?..).unwrap_or_default(),
            Err(_) => {
                let _ = send.reset(codes::STALLED);
                shared.metrics.refused_stream("write_stalled");
                return Err(StreamError::WriteStalled(stall));
            }
        }
    }
    Ok(())
}

/// Receiving half of an ordered stream.
#[derive(Debug)]
pub struct OrderedRecv {
    inner: RecvStream,
    counting: Counting,
}

impl OrderedRecv {
    /// Receives one message; `None` at a clean end of stream between messages.
    pub async fn recv_msg(&mut self) -> Result<Option<Bytes>, StreamError> {
        let mut prefix = [0u8; frame::LEN_PREFIX];
        let mut have = 0;
        while have < prefix.len() {
            match self.inner.read(&mut prefix[have..]).await? {
                Some(n) => have += n,
                None if have == 0 => return Ok(None),
                None => return Err(StreamError::Truncated),
            }
        }
        let len = match frame::check_message_len(prefix, self.counting.shared.limits.max_message) {
            Ok(len) => len,
            Err(e) => {
                self.counting
                    .shared
                    .metrics
                    .refused_stream(e.metric_label());
                let _ = self.inner.stop(codes::TOO_LARGE);
                return Err(e.into());
            }
        };
        let mut body = vec![0u8; len];
        self.inner
            .read_exact(&mut body)
            .await
            .map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => StreamError::Truncated,
                quinn::ReadExactError::ReadError(e) => StreamError::Read(e),
            })?;
        self.counting.received(Mode::ReliableOrdered, len);
        Ok(Some(body.into()))
    }

    /// Takes the end of the stream if it has already arrived, without waiting; returns
    /// whether it had. For one-message exchanges (a unary request or reply), where nothing
    /// may follow the message: quinn answers a receive stream dropped before its FIN was
    /// read with a STOP_SENDING, and the peer then resets its finished send stream — frames,
    /// packets and acknowledgements per call for nothing. The FIN usually shares the
    /// message's packet. (A byte found instead of the end breaks the exchange's protocol:
    /// it is read and dropped, and so is the stream.)
    pub fn take_end_now(&mut self) -> bool {
        use futures::FutureExt;
        let mut probe = [0u8; 1];
        matches!(self.inner.read(&mut probe).now_or_never(), Some(Ok(None)))
    }

    /// Stops reading (cancellation from the receiver): the peer's writes fail with `code`.
    pub fn stop(&mut self, code: VarInt) {
        let _ = self.inner.stop(code);
    }

    /// The raw QUIC stream (bulk reads into place).
    pub fn raw(&mut self) -> &mut RecvStream {
        &mut self.inner
    }
}
