//! Certificates and client verification that change without a restart.
//!
//! Handshake callbacks in rustls are synchronous, so the current values sit behind a
//! `std::sync::RwLock` held only to clone an `Arc` — never across I/O or an await.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::{Error, provider, read_certs, read_key};

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, Error> {
    let signing = provider().key_provider.load_private_key(key)?;
    let ck = CertifiedKey::new(chain, signing);
    // Refuse a key that does not belong to the certificate (a half-written rotation).
    ck.keys_match()?;
    Ok(Arc::new(ck))
}

/// The files' bytes: what a reload compares (more reliable than modification times, which
/// may not change within a timestamp tick or across a Secret's symlink swap).
type Contents = (Option<Vec<u8>>, Option<Vec<u8>>);

fn contents(cert: &Path, key: &Path) -> Contents {
    (std::fs::read(cert).ok(), std::fs::read(key).ok())
}

/// A certificate chain and key, for a server or a client, re-read when its files change.
pub struct ReloadingCertificate {
    files: Option<(PathBuf, PathBuf)>,
    current: RwLock<Arc<CertifiedKey>>,
    loaded: Mutex<Contents>,
}

impl std::fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCertificate")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingCertificate {
    /// From a PEM chain (leaf first) and a PEM key file.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<Self>, Error> {
        let loaded = contents(cert, key);
        let ck = certified_key(read_certs(cert)?, read_key(key)?)?;
        Ok(Arc::new(Self {
            files: Some((cert.to_owned(), key.to_owned())),
            current: RwLock::new(ck),
            loaded: Mutex::new(loaded),
        }))
    }

    /// From DER in memory (fixed unless [`ReloadingCertificate::replace`] is called).
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            files: None,
            current: RwLock::new(certified_key(chain, key)?),
            loaded: Mutex::new((None, None)),
        }))
    }

    /// Swaps in another chain and key (new handshakes use it; open connections keep theirs).
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), Error> {
        let ck = certified_key(chain, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }

    /// Re-reads the files if either changed since the last load. A failed read (say, the key
    /// written but not yet the certificate) keeps the current pair and is retried next time.
    pub fn reload_if_changed(&self) -> Result<bool, Error> {
        let Some((cert, key)) = &self.files else {
            return Ok(false);
        };
        let now = contents(cert, key);
        {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if *loaded == now {
                return Ok(false);
            }
        }
        self.replace(read_certs(cert)?, read_key(key)?)?;
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = now;
        tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
        Ok(true)
    }

    /// Checks the files every `every` until the returned task is aborted.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = this.reload_if_changed() {
                    tracing::warn!(error = %e, "TLS certificate reload failed; keeping the current one");
                }
            }
        })
    }

    /// The pair handshakes use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Client-certificate verification against fixed roots and replaceable CRLs.
///
/// `mandatory == false` lets a client connect without a certificate (the server then decides
/// per request: public endpoints, or a bearer-token fallback); a certificate that *is*
/// presented must verify — wrong issuer, expired or revoked ends the handshake.
pub struct ClientVerifier {
    roots: Arc<rustls::RootCertStore>,
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    inner: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("roots", &self.roots.len())
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ClientVerifier {
    /// Trusts `roots`; checks end-entity certificates against `crls` (revocation status of a
    /// leaf whose issuer published no CRL here is unknown, and refused, once any CRL is set).
    pub fn new(
        roots: &[CertificateDer<'static>],
        crls: Vec<CertificateRevocationListDer<'static>>,
        mandatory: bool,
    ) -> Result<Arc<Self>, Error> {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.clone())?;
        }
        let roots = Arc::new(store);
        let inner = Self::build(&roots, crls, mandatory)?;
        Ok(Arc::new(Self {
            hints: inner.root_hint_subjects().to_vec(),
            roots,
            mandatory,
            inner: RwLock::new(inner),
        }))
    }

    fn build(
        roots: &Arc<rustls::RootCertStore>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        mandatory: bool,
    ) -> Result<Arc<dyn ClientCertVerifier>, Error> {
        let mut b = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider())
            .with_crls(crls)
            .only_check_end_entity_revocation();
        if !mandatory {
            b = b.allow_unauthenticated();
        }
        b.build().map_err(|e| Error::Verifier(e.to_string()))
    }

    /// Replaces the CRLs (e.g. each time the issuing CA signs a new one).
    pub fn set_crls(&self, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<(), Error> {
        let v = Self::build(&self.roots, crls, self.mandatory)?;
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.inner.read().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}
