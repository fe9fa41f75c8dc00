//! rustls for Nexus services, in one place: the CA, the controller, the node agent and the
//! cloud API build their TLS from this crate rather than each its own.
//!
//! * [`ServerTls`] / [`client_config`]: configs from PEM files (certificate chain, key,
//!   trusted roots), ring as the only crypto provider.
//! * [`ReloadingCertificate`]: the certificate and key re-loaded when their files change (a
//!   cert-manager or kubelet Secret rotation, or the CA re-issuing its own), checked by
//!   [`ReloadingCertificate::reload_if_changed`] — call it from a timer
//!   ([`ReloadingCertificate::spawn_watch`]); handshakes never touch the file system.
//! * [`ClientVerifier`]: client certificates verified against roots and CRLs, the CRLs
//!   swapped in place when the issuer publishes a new one.
//! * [`PeerIdentity`]: who the verified client certificate names — its serial, CN, URIs and
//!   the *role* carried as the URI SAN `spiffe://nexus/role/<role>` ([`ROLE_URI_PREFIX`]).
//! * [`TlsListener`]: accepts TCP, handshakes off the accept path, and yields [`TlsConn`]s
//!   that tonic (`serve_with_incoming`, via [`TlsListener::into_stream`]) and axum
//!   (`axum::serve`, as a `Listener`) both take; each connection carries a [`TlsConnInfo`]
//!   with the peer identity for authorisation.
//! * [`renew_at`] / [`renewal_due`]: the one rotation rule (after two thirds of a
//!   certificate's life) for every certificate Nexus renews.
//! * [`GrpcConnector`]: the client side for tonic channels
//!   (`Endpoint::connect_with_connector`); [`grpc_channel`] builds the whole channel from a
//!   URL and [`ClientTlsFiles`], the one way callers dial the CA.
//!
//! Decisions (which role may call what) stay with each service; this crate only says who the
//! peer is, and only after rustls verified the chain, validity and revocation.

mod channel;
mod conn;
mod identity;
mod pem;
mod reload;
mod renewal;

use std::sync::Arc;

pub use channel::{CLIENT_CERT_RELOAD, ClientTlsFiles, client_files, grpc_channel};
pub use conn::{GrpcConnector, TlsConn, TlsConnInfo, TlsListener};
pub use identity::{PeerIdentity, ROLE_URI_PREFIX, role_uri};
pub use pem::{read_certs, read_crls, read_key};
pub use reload::{ClientVerifier, ReloadingCertificate};
pub use renewal::{renew_at, renewal_due};
pub use rustls;
pub use rustls_pki_types as pki_types;

/// Errors building TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file held no usable PEM of the expected kind.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (no roots, bad CRL).
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// The crypto provider of the whole workspace (ring; see the crates notes).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds server configs.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate and key.
    pub certificate: Arc<ReloadingCertificate>,
    /// Client certificate verification; `None` accepts no client certificates at all.
    pub client_verifier: Option<Arc<ClientVerifier>>,
}

impl ServerTls {
    /// A rustls server config offering HTTP/2 and HTTP/1.1 (ALPN), TLS 1.2 and 1.3.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_verifier {
            Some(v) => builder.with_client_cert_verifier(Arc::clone(v) as _),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&self.certificate) as _);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client config trusting `roots` (DER), presenting `identity` if given, offering `alpn`.
pub fn client_config(
    roots: &[rustls_pki_types::CertificateDer<'static>],
    identity: Option<Arc<ReloadingCertificate>>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store);
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(id as _),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
