//! The contenders' servers and clients, and the scenarios.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::{BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use nexus_api::server::{ApiMetrics, TokenSink};
use nexus_api::{ApiError, Capabilities, Client, InferRequest, Model};
use nexus_firmware::header::{DType, DeliveryMode, Flags, Header};
use nexus_stream::linkem::{Impairment, UdpLink};
use nexus_stream::testing::{IssuedIdentity, TestPki};
use nexus_stream::{Config, Congestion, Delivery, Endpoint, Expiry, Limits, Metrics, Mode};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use crate::tunlink::{self, TunLinks};
use crate::{Args, Lat, Servers, closed_loop, hist, open_loop};

/// Request and response sizes of the unary scenario.
pub const REQ: usize = 1024;
/// Response size.
pub const RESP: usize = 4096;
/// Tensor size.
pub const TENSOR: usize = 64 << 20;
/// Tokens per stream.
pub const TOKENS: u32 = 1000;
/// Pause between generated tokens (both contenders).
pub const TOKEN_INTERVAL: Duration = Duration::from_millis(1);
const PLAIN_NAME: &str = "plain.example";
/// Path-MTU discovery bound for both QUIC contenders on loopback (TCP gets 64 KiB segments
/// from the kernel there anyway).
const LOOPBACK_MTU: u16 = 16_384;

/// Everything measured.
#[derive(Debug, Default)]
pub struct Results {
    pub unary: Vec<(String, Lat, f64)>,
    pub cold: Vec<(String, Lat)>,
    pub tokens: Vec<(String, Lat)>,
    pub tensor: Vec<(String, f64)>,
    pub loss: Vec<(String, f64, f64, f64)>,
    pub handshakes: Vec<(String, f64, f64)>,
    pub hol: Vec<(String, Lat)>,
    /// Per peer of the warm unary scenario: the median over rounds of Nexus p50 / its p50,
    /// and every round's ratio (sorted).
    pub unary_round_ratios: Vec<(String, f64, String)>,
    /// Per round of the head-of-line scenario: Nexus small-call p99 / gRPC's (sorted).
    pub hol_round_ratios: Vec<f64>,
    /// The head-of-line scenario's 16 MiB transfers, MB/s: Nexus (CUBIC), Nexus (BBR), gRPC.
    pub hol_bulk_mbps: [f64; 3],
    /// Packets the head-of-line paths carried and dropped (packet-level emulation only), in
    /// the order of `hol_bulk_mbps`.
    pub hol_packets: [(u64, u64); 3],
    /// Packets the TUN device itself dropped (its queue full: the emulator fell behind)
    /// during each contender's rounds, in the order of `hol_bulk_mbps`.
    pub hol_device_drops: Option<[u64; 3]>,
    /// TCP retransmission timeouts on this machine during gRPC's head-of-line rounds (the
    /// kernel's `TcpExt: TCPTimeouts`), when readable.
    pub hol_tcp_timeouts: Option<u64>,
    /// A tensor over a long path, MB/s per shard choice.
    pub far: Vec<(String, f64)>,
    /// Per round: MIC full-handshake CPU time / plain X.509's (sorted).
    pub handshake_round_ratios: Vec<f64>,
    /// CPU µs per handshake (both ends): MIC full, MIC resumed, plain full, plain resumed.
    pub handshake_cpu_us: [f64; 4],
    /// How the cold-call and head-of-line paths were emulated.
    pub emulation: Emulation,
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------- identities and TLS

struct Plain {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: rustls::RootCertStore,
    chain_pem: String,
    key_pem: String,
    ca_pem: String,
}

fn plain(pki: &TestPki) -> anyhow::Result<Plain> {
    let p: IssuedIdentity = pki.issue_plain(PLAIN_NAME)?;
    let id = p.identity()?;
    let mut roots = rustls::RootCertStore::empty();
    for a in &id.anchors {
        roots.add(CertificateDer::from(a.clone()))?;
    }
    // Intermediates must be presented by the server: the chain holds them.
    Ok(Plain {
        chain: id.chain.clone(),
        key: id.key.clone_key(),
        roots,
        chain_pem: p.chain_pem,
        key_pem: p.key_pem,
        ca_pem: p.ca_pem,
    })
}

/// Every TLS contender negotiates what Nexus does (AES-128-GCM, SHA-256), so the cipher
/// suite is not what the ratios measure.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(nexus_stream::trust::session_provider())
}

fn tls_server(p: &Plain, alpn: &[&[u8]], mtls: bool) -> anyhow::Result<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut c = if mtls {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(p.roots.clone()),
            provider(),
        )
        .build()?;
        b.with_client_cert_verifier(v)
            .with_single_cert(p.chain.clone(), p.key.clone_key())?
    } else {
        b.with_no_client_auth()
            .with_single_cert(p.chain.clone(), p.key.clone_key())?
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(c)
}

fn tls_client(p: &Plain, alpn: &[&[u8]], mtls: bool) -> anyhow::Result<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(p.roots.clone());
    let mut c = if mtls {
        b.with_client_auth_cert(p.chain.clone(), p.key.clone_key())?
    } else {
        b.with_no_client_auth()
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(c)
}

fn quinn_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(128 << 20));
    t.send_window(128 << 20);
    // The dataplane's default stream limits, as Nexus has them here: quinn sets up state for
    // every stream a peer may open when the connection starts, so unequal limits would show
    // up as handshake cost.
    let streams = Limits::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams.max_bidi_streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(streams.max_uni_streams));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(LOOPBACK_MTU);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

fn quinn_client(p: &Plain) -> anyhow::Result<quinn::Endpoint> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let c = quinn::crypto::rustls::QuicClientConfig::try_from(tls_client(p, &[b"bench"], true)?)?;
    let mut cc = quinn::ClientConfig::new(Arc::new(c));
    cc.transport_config(quinn_transport());
    ep.set_default_client_config(cc);
    Ok(ep)
}

fn nexus_config() -> Config {
    Config {
        limits: Limits {
            stream_window: 16 << 20,
            connection_window: 128 << 20,
            max_message: 128 << 20,
            mtu_upper_bound: LOOPBACK_MTU,
            ..Limits::default()
        },
        requirement: nexus_mic::Requirement::default(),
        zero_rtt: true,
        congestion: Congestion::Cubic,
    }
}

// ---------------------------------------------------------------- servers

/// The NexAPI model of the bench: fixed-size answers, paced tokens.
#[derive(Debug)]
struct BenchModel;

impl Model for BenchModel {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_tensor: 128 << 20,
            ..Capabilities::default()
        }
    }
    async fn infer(&self, _: Bytes) -> Result<Bytes, ApiError> {
        Ok(Bytes::from(vec![7u8; RESP]))
    }
    async fn generate(&self, req: Bytes, sink: &mut TokenSink<'_>) -> Result<(), ApiError> {
        let req: InferRequest = serde_json::from_slice(&req)?;
        for _ in 0..req.max_tokens {
            sink.send("tok ").await?;
            tokio::time::sleep(TOKEN_INTERVAL).await;
        }
        Ok(())
    }
}

/// Serves the bench model on a new Nexus endpoint bound to `bind`; where clients dial it on
/// loopback.
fn serve_nexus(
    bind: SocketAddr,
    id: &nexus_stream::Identity,
    config: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    let ep = Endpoint::server(bind, id, config, metrics)?;
    let addr = on_loopback(ep.local_addr()?);
    tokio::spawn(nexus_api::serve(
        ep,
        Arc::new(BenchModel),
        Arc::new(ApiMetrics::default()),
    ));
    Ok(addr)
}

/// Starts every server on the current (server) runtime.
pub async fn start_servers(pki: &TestPki) -> anyhow::Result<Servers> {
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    // The servers the packet-level emulator reaches listen on every address: it delivers to
    // the TUN device's host address (`tunlink::HOST`), not to 127.0.0.1.
    let any: SocketAddr = "0.0.0.0:0".parse()?;
    // Nexus.
    let id = pki.issue("nexus://bench/server@1.0.0")?.identity()?;
    let metrics = Arc::new(Metrics::new());
    let nexus = serve_nexus(any, &id, &nexus_config(), Arc::clone(&metrics))?;
    // Nexus running BBR (`Congestion::Bbr`), for the head-of-line scenario's opt-in row.
    let bbr = Config {
        congestion: Congestion::Bbr,
        ..nexus_config()
    };
    let nexus_bbr = serve_nexus(any, &id, &bbr, Arc::new(Metrics::new()))?;
    // Nexus granting 1 MiB per stream, for the long-path tensor.
    let narrow = Config {
        limits: Limits {
            stream_window: 1 << 20,
            ..nexus_config().limits
        },
        ..nexus_config()
    };
    let nexus_narrow = serve_nexus(local, &id, &narrow, Arc::new(Metrics::new()))?;

    let p = plain(pki)?;
    // Raw quinn: one bidirectional stream per call. It accepts 0-RTT (quinn's rule: early data
    // up to u32::MAX, the limit being QUIC's flow control), and listens on every address so
    // that the cold-call path reaches it too.
    let mut tls = tls_server(&p, &[b"bench"], true)?;
    tls.max_early_data_size = u32::MAX;
    let sc = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(sc));
    sc.transport_config(quinn_transport());
    let qep = quinn::Endpoint::server(sc, any)?;
    let quinn_addr = SocketAddr::new(local.ip(), qep.local_addr()?.port());
    tokio::spawn(async move {
        while let Some(inc) = qep.accept().await {
            tokio::spawn(async move {
                // Streams sent in 0-RTT are served at once, as Nexus serves idempotent calls:
                // awaiting the handshake first would cost the round trip 0-RTT saves.
                let Ok(connecting) = inc.accept() else { return };
                let conn = match connecting.into_0rtt() {
                    Ok((conn, _)) => conn,
                    Err(connecting) => match connecting.await {
                        Ok(conn) => conn,
                        Err(_) => return,
                    },
                };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(req) = recv.read_to_end(128 << 20).await else {
                            return;
                        };
                        let n = if req.len() > REQ { 8 } else { RESP };
                        let _ = send.write_all(&vec![7u8; n]).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });

    // Plaintext TCP: length-prefixed request/response.
    let tl = TcpListener::bind(local).await?;
    let tcp = tl.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tl.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Ok(len) = s.read_u32_le().await else {
                        return;
                    };
                    buf.resize(len as usize, 0);
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let n = if buf.len() > REQ { 8 } else { RESP };
                    let mut out = Vec::with_capacity(4 + n);
                    out.put_u32_le(n as u32);
                    out.resize(4 + n, 7);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    // HTTP/1.1 + JSON + TLS (hyper).
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls_server(&p, &[b"http/1.1"], false)?));
    let hl = TcpListener::bind(any).await?;
    let https = on_loopback(hl.local_addr()?);
    tokio::spawn(async move {
        while let Ok((s, _)) = hl.accept().await {
            let _ = s.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let input: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let len = input["input"].as_str().map_or(0, str::len);
                        let out = serde_json::json!({"output": "x".repeat(if len > REQ { 8 } else { RESP })});
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(out.to_string())))
                                .unwrap_or_default(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });

    // gRPC + TLS (tonic), bytes codec, no code generation.
    let gl = TcpListener::bind(any).await?;
    let grpc = on_loopback(gl.local_addr()?);
    let identity = tonic::transport::Identity::from_pem(&p.chain_pem, &p.key_pem);
    let incoming = tokio_stream_from(gl);
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?
        .add_service(grpc::EchoServer);
    tokio::spawn(async move {
        let _ = router.serve_with_incoming(incoming).await;
    });
    Ok(Servers {
        nexus,
        nexus_bbr,
        nexus_narrow,
        nexus_metrics: metrics,
        quinn: quinn_addr,
        tcp,
        https,
        grpc,
    })
}

/// The loopback address of a server bound to every address: what unimpaired contenders dial.
fn on_loopback(bound: SocketAddr) -> SocketAddr {
    SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, bound.port()))
}

fn tokio_stream_from(l: TcpListener) -> impl futures::Stream<Item = std::io::Result<TcpStream>> {
    futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

mod grpc {
    //! A hand-written tonic service over raw bytes (no protobuf code generation needed).
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::{Buf, BufMut, Bytes};
    use futures::Stream;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::{Request, Response, Status};

    #[derive(Debug, Clone, Copy, Default)]
    pub struct BytesCodec;

    impl Codec for BytesCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = BytesCodec;
        type Decoder = BytesCodec;
        fn encoder(&mut self) -> Self::Encoder {
            BytesCodec
        }
        fn decoder(&mut self) -> Self::Decoder {
            BytesCodec
        }
    }
    impl Encoder for BytesCodec {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }
    impl Decoder for BytesCodec {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    struct Unary;
    impl tonic::server::UnaryService<Bytes> for Unary {
        type Response = Bytes;
        type Future = std::future::Ready<Result<Response<Bytes>, Status>>;
        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            let n = if req.get_ref().len() > super::REQ {
                8
            } else {
                super::RESP
            };
            std::future::ready(Ok(Response::new(Bytes::from(vec![7u8; n]))))
        }
    }

    type TokenStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;
    struct Tokens;
    impl tonic::server::ServerStreamingService<Bytes> for Tokens {
        type Response = Bytes;
        type ResponseStream = TokenStream;
        type Future = std::future::Ready<Result<Response<TokenStream>, Status>>;
        fn call(&mut self, req: Request<Bytes>) -> Self::Future {
            let n = u32::from_le_bytes(
                req.get_ref()
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 4]),
            );
            let s = futures::stream::unfold(0u32, move |i| async move {
                if i >= n {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(super::TOKEN_INTERVAL).await;
                }
                Some((Ok(Bytes::from_static(b"tok ")), i + 1))
            });
            std::future::ready(Ok(Response::new(Box::pin(s) as TokenStream)))
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub struct EchoServer;
    impl tonic::server::NamedService for EchoServer {
        const NAME: &'static str = "bench.Echo";
    }
    impl tower::Service<http::Request<tonic::body::Body>> for EchoServer {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future =
            Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                let mut g = tonic::server::Grpc::new(BytesCodec)
                    .max_decoding_message_size(128 << 20)
                    .max_encoding_message_size(128 << 20);
                Ok(match req.uri().path() {
                    "/bench.Echo/Unary" => g.unary(Unary, req).await,
                    "/bench.Echo/Tokens" => g.server_streaming(Tokens, req).await,
                    _ => Status::unimplemented("no such method").into_http(),
                })
            })
        }
    }

    pub async fn client(
        addr: std::net::SocketAddr,
        ca_pem: &str,
    ) -> anyhow::Result<tonic::client::Grpc<tonic::transport::Channel>> {
        let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", addr))?
            .tcp_nodelay(true)
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                    .domain_name(super::PLAIN_NAME),
            )?
            .connect()
            .await?;
        let _ = Duration::ZERO;
        Ok(tonic::client::Grpc::new(ch)
            .max_decoding_message_size(128 << 20)
            .max_encoding_message_size(128 << 20))
    }

    pub async fn unary(
        mut g: tonic::client::Grpc<tonic::transport::Channel>,
        body: Bytes,
    ) -> anyhow::Result<Bytes> {
        g.ready().await?;
        let r = g
            .unary(
                Request::new(body),
                http::uri::PathAndQuery::from_static("/bench.Echo/Unary"),
                BytesCodec,
            )
            .await?;
        Ok(r.into_inner())
    }

    pub async fn tokens(
        mut g: tonic::client::Grpc<tonic::transport::Channel>,
        n: u32,
    ) -> anyhow::Result<tonic::Streaming<Bytes>> {
        g.ready().await?;
        let mut b = bytes::BytesMut::new();
        b.put_u32_le(n);
        let r = g
            .server_streaming(
                Request::new(b.freeze()),
                http::uri::PathAndQuery::from_static("/bench.Echo/Tokens"),
                BytesCodec,
            )
            .await?;
        Ok(r.into_inner())
    }
}

// ---------------------------------------------------------------- link emulators

/// Emulated links.
#[derive(Debug)]
pub struct Links {
    /// 10 ms each way, to the Nexus server (UDP) and the HTTPS server (TCP).
    pub udp_rtt20: SocketAddr,
    pub tcp_rtt20: SocketAddr,
    /// The same path to the raw quinn server.
    pub quinn_rtt20: SocketAddr,
    pub udp_loss: Vec<(f64, SocketAddr)>,
    /// 2% loss, 7.5 ms each way, to the Nexus server (UDP), the Nexus server running BBR and
    /// the gRPC server (TCP).
    pub udp_hol: SocketAddr,
    pub udp_hol_bbr: SocketAddr,
    pub tcp_hol: SocketAddr,
    /// 100 ms round trip to the Nexus server that grants 1 MiB per stream.
    pub udp_far: SocketAddr,
    /// How the cold-call and head-of-line paths above (crossed by UDP and TCP contenders
    /// alike) were emulated.
    pub emulation: Emulation,
    /// The packet-level emulator, when there is one.
    pub tun: Option<TunLinks>,
    _keep: Vec<UdpLink>,
}

/// The TUN paths of the head-of-line scenario: Nexus's (CUBIC), Nexus's (BBR), gRPC's.
const HOL_PATHS: [usize; 3] = [0, 1, 2];
/// The TUN path of the cold calls.
const COLD_PATH: usize = 3;

/// How the paths shared by UDP and TCP contenders (cold calls, head-of-line) were emulated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Emulation {
    /// Packet by packet on a TUN device (`tunlink`): kernel TCP meets real loss and delay,
    /// and answers it with the kernel's congestion controller (`tcp_congestion`).
    Packets {
        device: String,
        tcp_congestion: String,
    },
    /// UDP through `linkem::UdpLink`, TCP through `tcp_delay_proxy`'s model of loss (no TUN
    /// device could be made).
    #[default]
    Proxies,
}

/// A TCP proxy adding `one_way` delay to every chunk in each direction, order kept.
///
/// Loss cannot be injected into a kernel TCP connection from user space, so `loss` is
/// modelled: each 1448-byte segment of a chunk is lost with probability `loss`, and a chunk
/// with a lost segment is delivered one RTT late (fast retransmit, the optimistic case: no
/// retransmission timeout), delaying every byte behind it as TCP's in-order delivery does.
async fn tcp_delay_proxy(
    upstream: SocketAddr,
    one_way: Duration,
    loss: f64,
) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                // The proxy accepts at once, so the client's SYN/SYN-ACK round trip is not on the
                // emulated path: the first client bytes wait one extra RTT instead.
                tokio::spawn(pump(dr, uw, one_way, 2 * one_way, loss));
                tokio::spawn(pump(ur, dw, one_way, Duration::ZERO, loss));
            });
        }
    });
    Ok(addr)
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    first_extra: Duration,
    loss: f64,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&data).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    let mut handshake_done = tokio::time::Instant::now();
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let now = tokio::time::Instant::now();
                let due = if first {
                    first = false;
                    handshake_done = now + first_extra;
                    handshake_done + delay
                } else {
                    (now + delay).max(handshake_done + delay)
                };
                let segments = n.div_ceil(1448) as i32;
                let lost = loss > 0.0 && rng.random_bool(1.0 - (1.0 - loss).powi(segments));
                let due = if lost { due + 2 * delay } else { due };
                if tx.send((due, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Where clients dial the paths that UDP and TCP contenders both cross.
struct Fronts {
    udp_hol: SocketAddr,
    udp_hol_bbr: SocketAddr,
    tcp_hol: SocketAddr,
    udp_rtt20: SocketAddr,
    tcp_rtt20: SocketAddr,
    quinn_rtt20: SocketAddr,
}

/// Starts the link emulators (on the link runtime). The paths both UDP and TCP contenders
/// cross go through a TUN device where one can be made, else through the user-space proxies.
pub async fn start_links(s: &Servers) -> anyhow::Result<Links> {
    let ten = Duration::from_millis(10);
    let hol_delay = Duration::from_micros(7500);
    let mut keep = Vec::new();
    let lossy = tunlink::Path {
        loss: 0.02,
        one_way: hol_delay,
    };
    // The head-of-line paths (`HOL_PATHS`) are alike, one per contender so that each is
    // counted apart.
    let tun_paths = [
        lossy,
        lossy,
        lossy,
        tunlink::Path {
            loss: 0.0,
            one_way: ten,
        },
    ];
    let (fronts, emulation, tun) = match TunLinks::start(&tun_paths, 77) {
        Ok(tun) => {
            let fronts = Fronts {
                udp_hol: TunLinks::front(HOL_PATHS[0], s.nexus.port()),
                udp_hol_bbr: TunLinks::front(HOL_PATHS[1], s.nexus_bbr.port()),
                tcp_hol: TunLinks::front(HOL_PATHS[2], s.grpc.port()),
                udp_rtt20: TunLinks::front(COLD_PATH, s.nexus.port()),
                tcp_rtt20: TunLinks::front(COLD_PATH, s.https.port()),
                quinn_rtt20: TunLinks::front(COLD_PATH, s.quinn.port()),
            };
            let emulation = Emulation::Packets {
                device: tun.name().to_owned(),
                tcp_congestion: std::fs::read_to_string(
                    "/proc/sys/net/ipv4/tcp_congestion_control",
                )
                .map_or_else(|_| "unknown".into(), |c| c.trim().to_owned()),
            };
            (fronts, emulation, Some(tun))
        }
        Err(e) => {
            eprintln!(
                "no TUN device ({e}): TCP contenders cross modelled links (run as root for packet-level emulation)"
            );
            let udp = |upstream, loss, delay, seed| {
                UdpLink::start(
                    upstream,
                    Impairment {
                        loss,
                        delay,
                        ..Impairment::default()
                    },
                    seed,
                )
            };
            let hol = udp(s.nexus, 0.02, hol_delay, 77).await?;
            let hol_bbr = udp(s.nexus_bbr, 0.02, hol_delay, 78).await?;
            let rtt = udp(s.nexus, 0.0, ten, 1).await?;
            let quinn_rtt = udp(s.quinn, 0.0, ten, 2).await?;
            let fronts = Fronts {
                udp_hol: hol.addr(),
                udp_hol_bbr: hol_bbr.addr(),
                tcp_hol: tcp_delay_proxy(s.grpc, hol_delay, 0.02).await?,
                udp_rtt20: rtt.addr(),
                tcp_rtt20: tcp_delay_proxy(s.https, ten, 0.0).await?,
                quinn_rtt20: quinn_rtt.addr(),
            };
            keep.extend([hol, hol_bbr, rtt, quinn_rtt]);
            (fronts, Emulation::Proxies, None)
        }
    };
    let mut udp_loss = Vec::new();
    for (i, loss) in [0.01, 0.05].into_iter().enumerate() {
        let l = UdpLink::start(
            s.nexus,
            Impairment {
                loss,
                delay: Duration::from_millis(1),
                ..Impairment::default()
            },
            10 + i as u64,
        )
        .await?;
        udp_loss.push((loss, l.addr()));
        keep.push(l);
    }
    let far = UdpLink::start(
        s.nexus_narrow,
        Impairment {
            delay: Duration::from_millis(50),
            ..Impairment::default()
        },
        21,
    )
    .await?;
    let udp_far = far.addr();
    keep.push(far);
    Ok(Links {
        udp_rtt20: fronts.udp_rtt20,
        tcp_rtt20: fronts.tcp_rtt20,
        quinn_rtt20: fronts.quinn_rtt20,
        udp_loss,
        udp_hol: fronts.udp_hol,
        udp_hol_bbr: fronts.udp_hol_bbr,
        tcp_hol: fronts.tcp_hol,
        udp_far,
        emulation,
        tun,
        _keep: keep,
    })
}

// ---------------------------------------------------------------- clients

async fn https_conn(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from(PLAIN_NAME)?.to_owned(), tcp)
        .await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn https_call(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: Bytes,
) -> anyhow::Result<usize> {
    send.ready().await?;
    let req = hyper::Request::post("/infer")
        .header("host", PLAIN_NAME)
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let resp = send.send_request(req).await?;
    let b = resp.into_body().collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&b)?;
    Ok(v["output"].as_str().map_or(0, str::len))
}

type Pool<T> = Arc<Mutex<Vec<T>>>;

async fn tcp_call(s: &mut TcpStream, body: &[u8]) -> anyhow::Result<usize> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.put_u32_le(body.len() as u32);
    out.extend_from_slice(body);
    s.write_all(&out).await?;
    let n = s.read_u32_le().await? as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    Ok(n)
}

async fn quinn_call(c: &quinn::Connection, body: &[u8]) -> anyhow::Result<usize> {
    let (mut send, mut recv) = c.open_bi().await?;
    send.write_all(body).await?;
    send.finish()?;
    Ok(recv.read_to_end(1 << 20).await?.len())
}

fn json_body() -> Bytes {
    Bytes::from(serde_json::json!({"input": "x".repeat(REQ - 12)}).to_string())
}

/// Runs every scenario.
pub async fn run_all(
    pki: &TestPki,
    s: &Servers,
    links: &Links,
    args: &Args,
) -> anyhow::Result<Results> {
    let mut r = Results {
        emulation: links.emulation.clone(),
        ..Results::default()
    };
    let cid = pki.issue("nexus://bench/client@1.0.0")?.identity()?;
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    let p = plain(pki)?;
    let req = Bytes::from(vec![1u8; REQ]);

    // ---- warm unary
    let mut warm: Vec<(&str, CallFn)> = Vec::new();
    let nep = Endpoint::client(local, &cid, &nexus_config(), Arc::new(Metrics::new()))?;
    let nexus = Arc::new(Client::without_hello(nep.connect(s.nexus).await?));
    warm.push(("Nexus (NexAPI over NexStream)", nexus_unary(&nexus, &req)));

    let qep = quinn_client(&p)?;
    let qc = qep.connect(s.quinn, PLAIN_NAME)?.await?;
    let f = {
        let req = req.clone();
        move || {
            let (c, req) = (qc.clone(), req.clone());
            async move {
                ensure!(quinn_call(&c, &req).await? == RESP);
                Ok(())
            }
        }
    };
    warm.push(("raw quinn (QUIC stream per call)", boxed(f)));

    let g = grpc::client(s.grpc, &p.ca_pem).await?;
    warm.push(("gRPC + TLS (tonic, HTTP/2)", grpc_unary(&g, &req)));

    let hcfg = Arc::new(tls_client(&p, &[b"http/1.1"], false)?);
    let pool: Pool<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = Arc::default();
    let f = {
        let (addr, hcfg, pool) = (s.https, hcfg.clone(), pool.clone());
        move || {
            let (hcfg, pool) = (hcfg.clone(), pool.clone());
            async move {
                let conn = pool.lock().await.pop();
                let mut conn = match conn {
                    Some(c) => c,
                    None => https_conn(addr, hcfg).await?,
                };
                ensure!(https_call(&mut conn, json_body()).await? == RESP);
                pool.lock().await.push(conn);
                Ok(())
            }
        }
    };
    warm.push(("HTTP/1.1 + JSON + TLS (hyper)", boxed(f)));

    let tpool: Pool<TcpStream> = Arc::default();
    let f = {
        let (addr, tpool, req) = (s.tcp, tpool.clone(), req.clone());
        move || {
            let (tpool, req) = (tpool.clone(), req.clone());
            async move {
                let conn = tpool.lock().await.pop();
                let mut conn = match conn {
                    Some(c) => c,
                    None => {
                        let c = TcpStream::connect(addr).await?;
                        c.set_nodelay(true)?;
                        c
                    }
                };
                ensure!(tcp_call(&mut conn, &req).await? == RESP);
                tpool.lock().await.push(conn);
                Ok(())
            }
        }
    };
    warm.push(("plaintext TCP (length-prefixed)", boxed(f)));
    if args.wants("unary") {
        eprintln!("warm unary");
        warm_rounds(&mut r, args, &warm).await?;
    }

    // ---- cold calls over a 20 ms RTT
    if args.wants("cold") {
        eprintln!("cold calls");
        r.cold = cold_calls(
            &cid,
            &p,
            &req,
            ColdPaths {
                nexus: links.udp_rtt20,
                quinn: links.quinn_rtt20,
                https: links.tcp_rtt20,
            },
        )
        .await?;
        // The same straight to the servers: the fixed processing cost inside each row above
        // (handshake cryptography, certificate checks, the call), apart from round trips.
        let direct = cold_calls(
            &cid,
            &p,
            &req,
            ColdPaths {
                nexus: s.nexus,
                quinn: s.quinn,
                https: s.https,
            },
        )
        .await?;
        let shown: Vec<String> = direct
            .iter()
            .map(|(n, l)| format!("{n} {:.2} ms", l.p50 / 1000.0))
            .collect();
        r.notes.push(format!(
            "Cold calls without the emulated link (p50, processing only): {}.",
            shown.join("; ")
        ));
    }

    // ---- token streams
    if args.wants("tokens") {
        eprintln!("token streams");
        let mut h = hist();
        let mut ts = nexus
            .stream_tokens(&InferRequest {
                model: String::new(),
                prompt: String::new(),
                max_tokens: TOKENS,
            })
            .await?;
        let mut last: Option<Instant> = None;
        while let Some(t) = ts.next().await {
            t?;
            let now = Instant::now();
            if let Some(l) = last {
                h.record((now - l).as_micros() as u64)?;
            }
            last = Some(now);
        }
        r.tokens.push(("Nexus token stream".into(), Lat::of(&h)));
        let g = grpc::client(s.grpc, &p.ca_pem).await?;
        let mut st = grpc::tokens(g.clone(), TOKENS).await?;
        let mut h = hist();
        let mut last: Option<Instant> = None;
        while let Some(t) = st.message().await? {
            let _ = t;
            let now = Instant::now();
            if let Some(l) = last {
                h.record((now - l).as_micros() as u64)?;
            }
            last = Some(now);
        }
        r.tokens.push(("gRPC server streaming".into(), Lat::of(&h)));
    }

    // ---- head-of-line blocking: small calls beside a bulk transfer, 2% loss, 15 ms RTT
    if args.wants("hol") {
        eprintln!("head-of-line blocking");
        hol(&mut r, args, links, &cid, &p, &req).await?;
    }

    // ---- 64 MiB tensor
    if args.wants("tensor") {
        eprintln!("tensor");
        tensor(&mut r, s, &nexus, &qep, &p).await?;
    }

    // ---- a tensor over a long path, where one stream's window bounds it
    if args.wants("far") {
        eprintln!("tensor over a long path");
        far_tensor(&mut r, links, &cid).await?;
    }

    // ---- loss: goodput per mode
    if args.wants("loss") {
        eprintln!("loss");
        for (loss, addr) in &links.udp_loss {
            let m = Arc::new(Metrics::new());
            let ep = Endpoint::client(local, &cid, &nexus_config(), Arc::clone(&m))?;
            let sess = ep.connect(*addr).await?;
            let c = Client::without_hello(sess.clone());
            let n = 500usize;
            let msg = vec![5u8; REQ];
            // Reliable-ordered: request/response calls, all must succeed.
            let t = Instant::now();
            let mut ok = 0;
            for _ in 0..n {
                if c.infer_raw(&msg, false).await.is_ok() {
                    ok += 1;
                }
            }
            r.loss.push((
                "reliable-ordered (calls)".into(),
                *loss,
                ok as f64 / n as f64,
                (n * (REQ + RESP)) as f64 / t.elapsed().as_secs_f64() / 1e6,
            ));
            // Reliable-unordered: every message delivered (the sender sees each stream finish).
            let t = Instant::now();
            let mut ok = 0;
            let sends = (0..n).map(|_| sess.send_unordered(Bytes::new(), &msg));
            for res in futures::future::join_all(sends).await {
                if res.is_ok() {
                    ok += 1;
                }
            }
            // Round trip to make sure the last ones arrived.
            let _ = c.infer_raw(&msg, false).await;
            r.loss.push((
                "reliable-unordered".into(),
                *loss,
                ok as f64 / n as f64,
                (ok * REQ) as f64 / t.elapsed().as_secs_f64() / 1e6,
            ));
            // Partially reliable with a 50 ms deadline (1 ms one-way link delay).
            let t = Instant::now();
            let sends = (0..n).map(|_| {
                sess.send_partial(
                    Bytes::new(),
                    &msg,
                    Expiry::Within(Duration::from_millis(50)),
                )
            });
            let mut ok = 0;
            // At most 32 in flight, so the deadline measures the link, not a self-made queue.
            let results: Vec<_> = futures::StreamExt::collect(
                futures::StreamExt::buffer_unordered(futures::stream::iter(sends), 32),
            )
            .await;
            for res in results {
                if matches!(res, Ok(Delivery::Delivered)) {
                    ok += 1;
                }
            }
            r.loss.push((
                "partially reliable (50 ms deadline)".into(),
                *loss,
                ok as f64 / n as f64,
                (ok * REQ) as f64 / t.elapsed().as_secs_f64() / 1e6,
            ));
            // Best-effort: datagrams are never acknowledged, so delivery is what the server's
            // endpoint counted as received. The sender paces itself (16 datagrams per
            // millisecond, well inside the link) so that the loss measured is the link's, not
            // datagrams QUIC drops locally beyond its congestion window.
            let received = || s.nexus_metrics.messages(Mode::BestEffort, "received");
            let before = received();
            let t = Instant::now();
            for i in 0..n {
                let _ = sess.send_datagram(i as u16, &msg);
                if i % 16 == 15 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // Datagrams wait for the congestion window, which loss shrinks: read the server's
            // counter until it stops moving (200 ms without an arrival, 10 s at most); goodput
            // runs to the last arrival.
            let (mut got, mut last_change) = (received(), t.elapsed());
            let mut quiet = Duration::ZERO;
            while quiet < Duration::from_millis(200) && t.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = received();
                if now == got {
                    quiet += Duration::from_millis(20);
                } else {
                    (got, last_change, quiet) = (now, t.elapsed(), Duration::ZERO);
                }
            }
            let got = got.saturating_sub(before);
            let elapsed = last_change.as_secs_f64();
            r.loss.push((
                "best-effort (datagrams, received by the server)".into(),
                *loss,
                got as f64 / n as f64,
                (got as usize * REQ) as f64 / elapsed / 1e6,
            ));
        }
    }

    // ---- handshakes per second: MIC vs plain X.509 (both mutual TLS over quinn)
    if args.wants("handshakes") {
        eprintln!("handshakes");
        handshakes(&mut r, args, s, &cid, &p).await?;
    }
    Ok(r)
}

/// Full and resumed handshakes per second, MIC against plain X.509, in `args.rounds` rounds
/// of the four measurements in a fresh random order; rates pooled over rounds. The cost
/// compared is CPU time (both ends and the client's setup, summed over the process's
/// threads), which the shared machine's other work does not inflate as it does wall time;
/// its per-round ratios give the median.
async fn handshakes(
    r: &mut Results,
    args: &Args,
    s: &Servers,
    cid: &nexus_stream::Identity,
    p: &Plain,
) -> anyhow::Result<()> {
    use nexus_route::cputime::process_cpu_ns;
    use rand::seq::SliceRandom;
    let n = 100;
    let local: SocketAddr = "127.0.0.1:0".parse()?;
    // Resumption needs a ticket: one connection each first.
    let nep = Endpoint::client(local, cid, &nexus_config(), Arc::new(Metrics::new()))?;
    nep.connect(s.nexus).await?;
    let qep = quinn_client(p)?;
    qep.connect(s.quinn, PLAIN_NAME)?.await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Wall seconds and CPU nanoseconds spent, per measurement: MIC full, MIC resumed, plain
    // full, plain resumed.
    let mut spent = [0f64; 4];
    let mut cpu = [0u64; 4];
    let mut ratios = Vec::new();
    let mut order = [0usize, 1, 2, 3];
    let mut rng = rand::rng();
    for _ in 0..args.rounds.max(1) {
        order.shuffle(&mut rng);
        let mut this_cpu = [0u64; 4];
        for &k in &order {
            let (t, c0) = (Instant::now(), process_cpu_ns());
            for _ in 0..n {
                match k {
                    0 => {
                        let ep = Endpoint::client(
                            local,
                            cid,
                            &nexus_config(),
                            Arc::new(Metrics::new()),
                        )?;
                        ep.connect(s.nexus)
                            .await?
                            .close(quinn::VarInt::from_u32(0), "");
                    }
                    1 => nep
                        .connect(s.nexus)
                        .await?
                        .close(quinn::VarInt::from_u32(0), ""),
                    2 => {
                        let ep = quinn_client(p)?;
                        ep.connect(s.quinn, PLAIN_NAME)?
                            .await?
                            .close(quinn::VarInt::from_u32(0), b"");
                    }
                    _ => qep
                        .connect(s.quinn, PLAIN_NAME)?
                        .await?
                        .close(quinn::VarInt::from_u32(0), b""),
                }
            }
            spent[k] += t.elapsed().as_secs_f64();
            this_cpu[k] = match (c0, process_cpu_ns()) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            };
            cpu[k] += this_cpu[k];
        }
        if this_cpu[2] > 0 {
            ratios.push(this_cpu[0] as f64 / this_cpu[2] as f64);
        }
    }
    let total = f64::from(n * args.rounds.max(1));
    let per = |k: usize| cpu[k] as f64 / total / 1e3;
    r.handshakes.push((
        "MIC (nexus-mic verifier)".into(),
        total / spent[0],
        total / spent[1],
    ));
    r.handshakes.push((
        "plain X.509 (webpki verifier)".into(),
        total / spent[2],
        total / spent[3],
    ));
    r.handshake_cpu_us = [per(0), per(1), per(2), per(3)];
    ratios.sort_by(f64::total_cmp);
    r.handshake_round_ratios = ratios;
    Ok(())
}

/// Where the cold calls dial: over the emulated path, or straight to the servers.
struct ColdPaths {
    nexus: SocketAddr,
    quinn: SocketAddr,
    https: SocketAddr,
}

/// New connection to first response, `samples` times per variant: Nexus full and resumed
/// (request in 0-RTT), raw quinn resumed (request in 0-RTT), HTTPS full and resumed.
async fn cold_calls(
    cid: &nexus_stream::Identity,
    p: &Plain,
    req: &Bytes,
    to: ColdPaths,
) -> anyhow::Result<Vec<(String, Lat)>> {
    let samples = 40;
    // Any address: a socket bound to 127.0.0.1 cannot reach the TUN device's paths.
    let local: SocketAddr = "0.0.0.0:0".parse()?;
    let mut out = Vec::new();
    let mut h = hist();
    for _ in 0..samples {
        let ep = Endpoint::client(local, cid, &nexus_config(), Arc::new(Metrics::new()))?;
        let t = Instant::now();
        let c = Client::without_hello(ep.connect(to.nexus).await?);
        ensure!(c.infer_raw(req, true).await?.len() == RESP);
        h.record(t.elapsed().as_micros() as u64)?;
        close_untimed(c.session().connection()).await;
        ep.close();
    }
    out.push(("Nexus, full handshake (QUIC 1-RTT)".into(), Lat::of(&h)));
    let ep = Endpoint::client(local, cid, &nexus_config(), Arc::new(Metrics::new()))?;
    {
        let c = Client::without_hello(ep.connect(to.nexus).await?);
        c.infer_raw(req, true).await?;
    }
    let mut h = hist();
    for _ in 0..samples {
        let t = Instant::now();
        let c = Client::without_hello(ep.connect_early(to.nexus).await?);
        ensure!(c.infer_raw(req, true).await?.len() == RESP);
        h.record(t.elapsed().as_micros() as u64)?;
        // Let the new ticket arrive before the next sample.
        let _ = c.session().peer().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        close_untimed(c.session().connection()).await;
    }
    out.push(("Nexus, resumed, request in 0-RTT".into(), Lat::of(&h)));
    // The engine's own bound: raw quinn with the same TLS (mutual, a resumption ticket) and
    // the request in 0-RTT on one stream.
    let mut tls = tls_client(p, &[b"bench"], true)?;
    tls.enable_early_data = true;
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    cc.transport_config(quinn_transport());
    let mut qep = quinn::Endpoint::client(local)?;
    qep.set_default_client_config(cc);
    let warm = qep.connect(to.quinn, PLAIN_NAME)?.await?;
    quinn_call(&warm, req).await?;
    tokio::time::sleep(Duration::from_millis(30)).await;
    warm.close(quinn::VarInt::from_u32(0), b"");
    let mut h = hist();
    for _ in 0..samples {
        let t = Instant::now();
        let c = match qep.connect(to.quinn, PLAIN_NAME)?.into_0rtt() {
            Ok((c, _accepted)) => c,
            Err(_) => anyhow::bail!("raw quinn: no 0-RTT (no resumption ticket)"),
        };
        ensure!(quinn_call(&c, req).await? == RESP);
        h.record(t.elapsed().as_micros() as u64)?;
        // Let the new ticket arrive, then close outside the timed region, as for Nexus.
        tokio::time::sleep(Duration::from_millis(30)).await;
        close_untimed(&c).await;
    }
    out.push(("raw quinn, resumed, request in 0-RTT".into(), Lat::of(&h)));
    for (name, shared) in [
        ("HTTPS (TCP + TLS 1.3 full)", false),
        ("HTTPS (TCP + TLS 1.3 resumed)", true),
    ] {
        let cfg = Arc::new(tls_client(p, &[b"http/1.1"], false)?);
        if shared {
            let mut c = https_conn(to.https, cfg.clone()).await?;
            https_call(&mut c, json_body()).await?;
        }
        let mut h = hist();
        for _ in 0..samples {
            let cfg = if shared {
                cfg.clone()
            } else {
                Arc::new(tls_client(p, &[b"http/1.1"], false)?)
            };
            let t = Instant::now();
            let mut c = https_conn(to.https, cfg).await?;
            ensure!(https_call(&mut c, json_body()).await? == RESP);
            h.record(t.elapsed().as_micros() as u64)?;
        }
        out.push((name.into(), Lat::of(&h)));
    }
    Ok(out)
}

/// Closes a cold-call sample's connection (Nexus's or raw quinn's) and lets the close go out,
/// so that its teardown (a CONNECTION_CLOSE the connection's driver would otherwise send when
/// next polled, inside the next sample's time) is not counted; an HTTPS sample's socket closes
/// when it is dropped.
async fn close_untimed(c: &quinn::Connection) {
    c.close(quinn::VarInt::from_u32(0), b"");
    let _ = tokio::time::timeout(Duration::from_millis(100), c.closed()).await;
    tokio::task::yield_now().await;
}

/// Small calls beside a 16 MiB transfer on the same connection, over the lossy 15 ms link:
/// `args.rounds` rounds, Nexus and gRPC in alternating order, 50 calls per second for one
/// second each; latencies pooled per contender (a single second gives 50 samples, too few
/// for a p99).
async fn hol(
    r: &mut Results,
    args: &Args,
    links: &Links,
    cid: &nexus_stream::Identity,
    p: &Plain,
    req: &Bytes,
) -> anyhow::Result<()> {
    let bulk_len = 16usize << 20;
    let hol_header = f32_tensor(bulk_len, 2);
    // Any address: a socket bound to 127.0.0.1 cannot reach the TUN device's paths.
    let local: SocketAddr = "0.0.0.0:0".parse()?;
    let mut nexus_clients = Vec::new();
    for (congestion, addr) in [
        (Congestion::Cubic, links.udp_hol),
        (Congestion::Bbr, links.udp_hol_bbr),
    ] {
        let config = Config {
            congestion,
            ..nexus_config()
        };
        let ep = Endpoint::client(local, cid, &config, Arc::new(Metrics::new()))?;
        nexus_clients.push(Arc::new(Client::without_hello(ep.connect(addr).await?)));
    }
    let hg = grpc::client(links.tcp_hol, &p.ca_pem).await?;
    // Per contender (Nexus CUBIC, Nexus BBR, gRPC): pooled latencies, each round's p99, and
    // how long its transfers took (what the calls shared the connection with).
    const GRPC: usize = 2;
    let mut h = [hist(), hist(), hist()];
    let mut ratios = Vec::new();
    let mut bulk_time = [Duration::ZERO; 3];
    for round in 0..args.rounds.max(1) as usize {
        let mut p99 = [0f64; 3];
        for k in (0..3).map(|i| (i + round) % 3) {
            let (bulk, calls) = if let Some(c) = nexus_clients.get(k) {
                let bulk_client = Arc::clone(c);
                let bulk = tokio::spawn(async move {
                    let t = Instant::now();
                    bulk_client
                        .send_tensor(&hol_header, &vec![3u8; bulk_len])
                        .await
                        .map(|_| t.elapsed())
                        .map_err(anyhow::Error::from)
                });
                (bulk, nexus_unary(c, req))
            } else {
                let bulk_g = hg.clone();
                let bulk = tokio::spawn(async move {
                    let t = Instant::now();
                    grpc::unary(bulk_g, Bytes::from(vec![3u8; bulk_len]))
                        .await
                        .map(|_| t.elapsed())
                });
                (bulk, grpc_unary(&hg, req))
            };
            let timeouts_before = (k == GRPC).then(tcp_timeouts).flatten();
            let device_drops = || links.tun.as_ref().and_then(TunLinks::device_drops);
            let drops_before = device_drops();
            tokio::time::sleep(Duration::from_millis(30)).await;
            let round_h = open_loop(50, 1.0, move || calls()).await?;
            bulk_time[k] += bulk.await??;
            if let (Some(before), Some(after)) = (timeouts_before, tcp_timeouts()) {
                *r.hol_tcp_timeouts.get_or_insert(0) += after.saturating_sub(before);
            }
            if let (Some(before), Some(after)) = (drops_before, device_drops()) {
                r.hol_device_drops.get_or_insert([0; 3])[k] += after.saturating_sub(before);
            }
            p99[k] = round_h.value_at_quantile(0.99) as f64;
            h[k].add(&round_h)?;
        }
        ratios.push(p99[0] / p99[GRPC].max(1.0));
    }
    let grpc_label = match links.emulation {
        Emulation::Packets { .. } => "gRPC + TLS (one HTTP/2 connection)",
        Emulation::Proxies => "gRPC + TLS (one HTTP/2 connection, modelled TCP loss)",
    };
    for (name, l) in [
        "Nexus (tensor on its own streams)",
        "Nexus with --congestion bbr (opt-in)",
        grpc_label,
    ]
    .into_iter()
    .zip(&h)
    {
        r.hol.push((name.into(), Lat::of(l)));
    }
    ratios.sort_by(f64::total_cmp);
    r.hol_round_ratios = ratios;
    if let Some(tun) = &links.tun {
        r.hol_packets = HOL_PATHS.map(|p| {
            tun.stats(p).map_or((0, 0), |st| {
                (
                    st.seen.load(Ordering::Relaxed),
                    st.dropped.load(Ordering::Relaxed),
                )
            })
        });
    }
    let rounds = args.rounds.max(1) as f64;
    r.hol_bulk_mbps = bulk_time.map(|t| bulk_len as f64 * rounds / t.as_secs_f64().max(1e-9) / 1e6);
    Ok(())
}

/// The kernel's count of TCP retransmission timeouts (`TcpExt: TCPTimeouts` in
/// `/proc/net/netstat`), machine-wide.
fn tcp_timeouts() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPTimeouts")
        .and_then(|(_, v)| v.parse().ok())
}

/// 64 MiB in one call, best of three rounds per contender, each round running every
/// contender once in a fresh random order.
async fn tensor(
    r: &mut Results,
    s: &Servers,
    nexus: &Client,
    qep: &quinn::Endpoint,
    p: &Plain,
) -> anyhow::Result<()> {
    use rand::seq::SliceRandom;
    let data = vec![3u8; TENSOR];
    let header = f32_tensor(TENSOR, 1);
    let mbps = |d: Duration| TENSOR as f64 / d.as_secs_f64() / 1e6;
    // The default shard size, then smaller shards on more parallel streams: how much the
    // parallel streams cost or gain over loopback.
    let shards = [nexus_api::client::DEFAULT_SHARD, 4 << 20, 16 << 20];
    let labels = [
        format!(
            "Nexus (the default: {} shard(s) of {} MiB)",
            (TENSOR as u32).div_ceil(nexus_api::client::DEFAULT_SHARD),
            nexus_api::client::DEFAULT_SHARD >> 20
        ),
        "Nexus (16 × 4 MiB shards on parallel streams)".to_owned(),
        "Nexus (4 × 16 MiB shards)".to_owned(),
        "raw quinn (one stream)".to_owned(),
        "gRPC + TLS (one message)".to_owned(),
        "plaintext TCP".to_owned(),
    ];
    let qc = qep.connect(s.quinn, PLAIN_NAME)?.await?;
    let g = grpc::client(s.grpc, &p.ca_pem).await?;
    let body = Bytes::from(data.clone());
    let mut tc = TcpStream::connect(s.tcp).await?;
    tc.set_nodelay(true)?;
    let mut best = [0f64; 6];
    let mut order: Vec<usize> = (0..labels.len()).collect();
    let mut rng = rand::rng();
    for _ in 0..3 {
        order.shuffle(&mut rng);
        for &k in &order {
            let t = Instant::now();
            match k {
                0..=2 => {
                    let ack = nexus.send_tensor_sharded(&header, &data, shards[k]).await?;
                    ensure!(ack.bytes == TENSOR as u64);
                }
                3 => {
                    quinn_call(&qc, &data).await?;
                }
                4 => {
                    grpc::unary(g.clone(), body.clone()).await?;
                }
                _ => {
                    tcp_call(&mut tc, &data).await?;
                }
            }
            best[k] = best[k].max(mbps(t.elapsed()));
        }
    }
    for (label, mbps) in labels.into_iter().zip(best) {
        r.tensor.push((label, mbps));
    }
    Ok(())
}

/// A 16 MiB tensor to a receiver granting 1 MiB per stream, over a 100 ms round trip: one
/// 64 MiB shard (the loopback default) against the shards `send_tensor` sizes from the window
/// the receiver states in `hello`. One stream moves at most its window per round trip (10 MB/s
/// here); a real 8 MiB window meets the same bound on a path 8× longer. Best of two rounds,
/// alternating.
async fn far_tensor(
    r: &mut Results,
    links: &Links,
    cid: &nexus_stream::Identity,
) -> anyhow::Result<()> {
    const LEN: usize = 16 << 20;
    let header = f32_tensor(LEN, 3);
    let ep = Endpoint::client(
        "127.0.0.1:0".parse()?,
        cid,
        &nexus_config(),
        Arc::new(Metrics::new()),
    )?;
    let c = Client::connect(&ep, links.udp_far).await?;
    let data = vec![3u8; LEN];
    // The shards `send_tensor` chose, as the receiver counted them.
    let mut auto_shards = 0;
    let mut best = [0f64; 2];
    for round in 0..2 {
        for k in [round % 2, 1 - round % 2] {
            let t = Instant::now();
            let ack = if k == 0 {
                c.send_tensor_sharded(&header, &data, nexus_api::client::DEFAULT_SHARD)
                    .await?
            } else {
                let ack = c.send_tensor(&header, &data).await?;
                auto_shards = ack.shards;
                ack
            };
            ensure!(ack.bytes == LEN as u64);
            best[k] = best[k].max(LEN as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
    }
    r.far
        .push(("one 64 MiB shard (one stream)".into(), best[0]));
    r.far.push((
        format!(
            "{auto_shards} shards of {} KiB (`send_tensor`: one window each)",
            (LEN as u32).div_ceil(auto_shards.max(1)) >> 10
        ),
        best[1],
    ));
    Ok(())
}

/// The NexLink header of a `len`-byte f32 tensor of rows of 1,024 (the bench's tensors).
fn f32_tensor(len: usize, stream_id: u32) -> Header {
    Header {
        mode: DeliveryMode::ReliableUnordered,
        flags: Flags(0),
        dtype: DType::F32,
        rank: 2,
        stream_id,
        tenant_id: 1,
        sequence: 0,
        shape: [(len / 4 / 1024) as u32, 1024, 0, 0],
        payload_len: len as u32,
        trace_id: 0,
    }
}

/// A unary Nexus call of `req` on `c` (the warm-unary and head-of-line scenarios' call).
fn nexus_unary(c: &Arc<Client>, req: &Bytes) -> CallFn {
    let (c, req) = (Arc::clone(c), req.clone());
    boxed(move || {
        let (c, req) = (Arc::clone(&c), req.clone());
        async move {
            ensure!(c.infer_raw(&req, false).await?.len() == RESP);
            Ok(())
        }
    })
}

/// The same call over gRPC.
fn grpc_unary(g: &tonic::client::Grpc<tonic::transport::Channel>, req: &Bytes) -> CallFn {
    let (g, req) = (g.clone(), req.clone());
    boxed(move || {
        let (g, req) = (g.clone(), req.clone());
        async move {
            ensure!(grpc::unary(g, req).await?.len() == RESP);
            Ok(())
        }
    })
}

/// One call of a warm-unary contender.
type CallFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + Send
        + Sync,
>;

fn boxed<F, Fut>(f: F) -> CallFn
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// The warm unary scenario: every contender warmed up, then `args.rounds` rounds of
/// open-loop load, each running every contender once in a fresh random order (so drifting
/// background load on a shared machine falls on all alike); latencies pooled per contender,
/// the per-round p50 ratios of Nexus to each peer kept for their median. Then closed-loop
/// throughput.
async fn warm_rounds(
    r: &mut Results,
    args: &Args,
    contenders: &[(&str, CallFn)],
) -> anyhow::Result<()> {
    use rand::seq::SliceRandom;
    for (name, f) in contenders {
        for _ in 0..200 {
            f().await.context(name.to_string())?;
        }
    }
    let mut pooled: Vec<_> = contenders.iter().map(|_| hist()).collect();
    let mut per_round: Vec<Vec<f64>> = contenders.iter().map(|_| Vec::new()).collect();
    let mut order: Vec<usize> = (0..contenders.len()).collect();
    let mut rng = rand::rng();
    for round in 0..args.rounds.max(1) {
        order.shuffle(&mut rng);
        for &i in &order {
            let (name, f) = &contenders[i];
            let f = Arc::clone(f);
            let h = open_loop(args.rate, args.seconds, move || f())
                .await
                .context(name.to_string())?;
            pooled[i].add(&h)?;
            per_round[i].push(h.value_at_quantile(0.5) as f64);
        }
        eprintln!("  round {} of {}", round + 1, args.rounds.max(1));
    }
    for (i, (name, f)) in contenders.iter().enumerate() {
        let f = Arc::clone(f);
        let tput = closed_loop(16, 1.0, move || f())
            .await
            .context(name.to_string())?;
        let lat = Lat::of(&pooled[i]);
        eprintln!(
            "  {name}: p50 {:.0} µs p99 {:.0} µs, {tput:.0} calls/s",
            lat.p50, lat.p99
        );
        r.unary.push(((*name).into(), lat, tput));
    }
    // Median over rounds of (Nexus p50 / peer p50), Nexus being the first contender.
    for (i, (name, _)) in contenders.iter().enumerate().skip(1) {
        let mut ratios: Vec<f64> = per_round[0]
            .iter()
            .zip(&per_round[i])
            .map(|(n, p)| n / p.max(1.0))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let shown: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
        r.unary_round_ratios
            .push(((*name).into(), ratios[ratios.len() / 2], shown.join(", ")));
    }
    Ok(())
}
