//! TLS connections for tonic and axum servers, and a TLS connector for tonic clients.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::PeerIdentity;

/// A handshake that has not finished by then is dropped (slow-loris clients).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a server knows about a TLS connection: put into every request's extensions (tonic:
/// `request.extensions().get::<TlsConnInfo>()`; axum: `ConnectInfo<TlsConnInfo>`).
#[derive(Debug, Clone)]
pub struct TlsConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The verified client certificate's identity, if the client presented one.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// A server-side TLS connection with its [`TlsConnInfo`].
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnInfo,
}

impl TlsConn {
    /// The connection's info.
    pub fn info(&self) -> &TlsConnInfo {
        &self.info
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnInfo;

    fn connect_info(&self) -> TlsConnInfo {
        self.info.clone()
    }
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop (each in its own
/// task, bounded by a timeout), yielding only connections whose handshake succeeded.
/// Dropping the listener stops accepting.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<TlsConn>,
    local: SocketAddr,
    accept_task: AbortOnDrop,
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, remote) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let peer = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|leaf| PeerIdentity::from_der(leaf))
                                .map(Arc::new);
                            let conn = TlsConn {
                                inner: tls,
                                info: TlsConnInfo { remote, peer },
                            };
                            let _ = tx.send(conn).await;
                        }
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "TLS handshake refused");
                        }
                        Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            rx,
            local,
            accept_task: AbortOnDrop(accept_task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connections as a stream, for tonic's `serve_with_incoming(_shutdown)`.
    pub fn into_stream(self) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
        use tokio_stream::StreamExt;
        // The stream owns the accept task: dropping it stops accepting.
        let TlsListener {
            rx, accept_task, ..
        } = self;
        ReceiverStream::new(rx).map(move |c| {
            let _ = &accept_task;
            Ok(c)
        })
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = TlsConnInfo;

    async fn accept(&mut self) -> (TlsConn, TlsConnInfo) {
        match self.rx.recv().await {
            Some(conn) => {
                let info = conn.info.clone();
                (conn, info)
            }
            // The accept task ended (it only does when aborted): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<TlsConnInfo> {
        Ok(TlsConnInfo {
            remote: self.local,
            peer: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for TlsConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A tonic connector speaking TLS with a rustls client config, for
/// `Endpoint::connect_with_connector`. Give the endpoint an `http://host:port` URI: the
/// connector, not tonic, does TLS (tonic refuses `https://` without its own TLS feature).
#[derive(Debug, Clone)]
pub struct GrpcConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl GrpcConnector {
    /// Verifies the server as `server_name` (a DNS name or an IP address in its certificate).
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<Self, crate::Error> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| crate::Error::Verifier(format!("server name `{server_name}`: {e}")))?;
        Ok(Self {
            config,
            server_name,
        })
    }
}

type ConnectFuture = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl tower::Service<tonic::codegen::http::Uri> for GrpcConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let connector = TlsConnector::from(Arc::clone(&self.config));
        let name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI without host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
