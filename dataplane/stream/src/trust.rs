//! NexTrust in the handshake: both peers present MICs and verify each other with
//! [`nexus_mic::Verifier`] inside rustls' certificate-verifier hooks, so a refused peer never
//! completes the TLS handshake. The refusal travels to the peer as the QUIC `CONNECTION_CLOSE`
//! reason (`mic refused (<label>): <detail>`), and is logged and counted here.
//!
//! Hostnames play no part: a MIC names a model (`nexus://tenant/model@version`), not a host,
//! and the [`Requirement`] (tenant, capabilities, issuer…) is what authorises a peer. The TLS
//! `server_name` is the fixed [`SERVER_NAME`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexus_mic::{CrlSet, Rejection, Requirement, VerifiedMic, Verifier};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::metrics::Metrics;

/// TLS server name used by every client (MICs carry no DNS names; see the module docs).
pub const SERVER_NAME: &str = "nexus";

/// Errors loading an identity or trust configuration.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A file of the Secret directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{0}")]
    Pem(String),
    /// The MIC library refused a certificate or CRL.
    #[error(transparent)]
    Mic(#[from] nexus_mic::Error),
    /// rustls refused the key or certificate.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

/// This node's MIC, its key and the trust anchors: the Secret the ModelIdentity controller
/// writes (`tls.crt` leaf first then intermediates, `tls.key` PKCS#8, `ca.crt` anchors).
#[derive(Debug)]
pub struct Identity {
    /// Presented chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The MIC's private key.
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors (DER) for verifying peers.
    pub anchors: Vec<Vec<u8>>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            anchors: self.anchors.clone(),
        }
    }
}

impl Identity {
    /// Reads a Secret-layout directory.
    pub fn from_dir(dir: &Path) -> Result<Self, TrustError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TrustError::Read { path, source })
        };
        Self::from_pem(&read("tls.crt")?, &read("tls.key")?, &read("ca.crt")?)
    }

    /// Builds an identity from PEM bytes.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<Self, TrustError> {
        let text = |b: &[u8], what: &str| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| TrustError::Pem(format!("{what} is not UTF-8 PEM")))
        };
        let chain: Vec<CertificateDer<'static>> =
            nexus_mic::pem_to_der_chain(&text(chain_pem, "tls.crt")?)?
                .into_iter()
                .map(CertificateDer::from)
                .collect();
        if chain.is_empty() {
            return Err(TrustError::Pem("tls.crt holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TrustError::Pem(format!("tls.key: {e}")))?;
        let anchors = nexus_mic::pem_to_der_chain(&text(ca_pem, "ca.crt")?)?;
        if anchors.is_empty() {
            return Err(TrustError::Pem("ca.crt holds no certificate".into()));
        }
        Ok(Self {
            chain,
            key,
            anchors,
        })
    }
}

/// Why a peer was refused: the MIC rejection, carried through rustls as its error source.
/// rustls prints the source with `Debug` into the TLS error that becomes the QUIC close
/// reason, so `Debug` prints the same text as `Display`: the label the peer parses.
#[derive(Clone, thiserror::Error)]
#[error("mic refused ({label}): {rejection}", label = .0.metric_label(), rejection = .0)]
pub struct MicRefusal(pub Rejection);

impl std::fmt::Debug for MicRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Extracts the refusal label from a QUIC close reason sent by a peer that refused us (or
/// that we refused), e.g. `revoked` from `invalid peer certificate: mic refused (revoked): …`.
pub fn refusal_label(reason: &str) -> Option<&str> {
    let rest = &reason[reason.find("mic refused (")? + "mic refused (".len()..];
    Some(&rest[..rest.find(')')?])
}

/// The verification policy of one endpoint: trust anchors, the routing domain's requirement
/// and the current CRL. Shared by the TLS hooks and the post-handshake check.
#[derive(Debug)]
pub struct Trust {
    verifier: Verifier,
    /// CA certificates a CRL may be signed by (anchors and our own chain's intermediates).
    crl_issuers: Vec<Vec<u8>>,
    requirement: RwLock<Requirement>,
    crl: RwLock<CrlSet>,
    algorithms: WebPkiSupportedAlgorithms,
    metrics: Arc<Metrics>,
}

impl Trust {
    /// Builds the policy for `identity`'s anchors.
    pub fn new(
        identity: &Identity,
        requirement: Requirement,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TrustError> {
        let verifier = Verifier::new(&identity.anchors)?;
        let mut crl_issuers = identity.anchors.clone();
        crl_issuers.extend(identity.chain.iter().skip(1).map(|c| c.to_vec()));
        Ok(Self {
            verifier,
            crl_issuers,
            requirement: RwLock::new(requirement),
            crl: RwLock::new(CrlSet::new()),
            algorithms: provider().signature_verification_algorithms,
            metrics,
        })
    }

    /// Replaces the requirement (a RoutingDomain policy change); applies to new handshakes.
    pub fn set_requirement(&self, r: Requirement) {
        *self
            .requirement
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = r;
    }

    /// Replaces the revocation list with a DER CRL signed by one of the known CAs.
    /// Returns the number of revoked serials.
    pub fn set_crl_der(&self, der: &[u8]) -> Result<usize, TrustError> {
        let mut last = None;
        for issuer in &self.crl_issuers {
            let mut set = CrlSet::new();
            match set.add_crl(der, issuer) {
                Ok(n) => {
                    *self
                        .crl
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
                    return Ok(n);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || TrustError::Pem("no CA certificate to check the CRL against".into()),
            TrustError::Mic,
        ))
    }

    /// Reads a CRL file, PEM (`X509 CRL`) or DER.
    pub fn load_crl_file(&self, path: &Path) -> Result<usize, TrustError> {
        let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.set_crl_bytes(&bytes)
    }

    /// Accepts a CRL as PEM or DER.
    pub fn set_crl_bytes(&self, bytes: &[u8]) -> Result<usize, TrustError> {
        if bytes.starts_with(b"-----BEGIN") {
            let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(bytes)
                .map_err(|e| TrustError::Pem(format!("CRL: {e}")))?;
            self.set_crl_der(&der)
        } else {
            self.set_crl_der(bytes)
        }
    }

    /// Marks one certificate revoked directly (the CA's revocation feed, tests).
    pub fn revoke(&self, cert_der: &[u8]) -> Result<(), TrustError> {
        self.crl
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .revoke_certificate(cert_der, nexus_mic::RevocationReason::KeyCompromise)?;
        Ok(())
    }

    /// Verifies a presented chain now; counts and logs a refusal.
    pub fn verify_chain(
        &self,
        chain: &[&[u8]],
        now: SystemTime,
    ) -> Result<VerifiedMic, MicRefusal> {
        let crl = self
            .crl
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let req = self
            .requirement
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.verifier.verify(chain, now, &*crl, &req) {
            Ok(v) => Ok(v),
            Err(rejection) => {
                self.metrics.refusal(rejection.metric_label());
                tracing::warn!(reason = rejection.metric_label(), %rejection, "peer MIC refused");
                Err(MicRefusal(rejection))
            }
        }
    }

    fn verify_rustls(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut chain: Vec<&[u8]> = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.as_ref());
        chain.extend(intermediates.iter().map(|c| c.as_ref()));
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        self.verify_chain(&chain, now)
            .map(|_| ())
            .map_err(|refusal| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(refusal)),
                ))
            })
    }
}

/// The one crypto provider of the workspace.
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The TLS provider of NexStream sessions: [`provider`], preferring AES-128-GCM with SHA-256
/// (rustls prefers AES-256-GCM with SHA-384). Every packet is sealed and opened with the
/// negotiated AEAD, and AES-128 runs 10 rounds to AES-256's 14; the handshake's key schedule
/// hashes with SHA-256, which CPUs accelerate (SHA-NI), where SHA-384 runs in software.
/// AES-128-GCM is TLS 1.3's mandatory suite and the one QUIC's Initial packets use. Both ends
/// are NexStream, so this order decides. (`dataplane-bench`: 64 MiB tensor +12%, handshake
/// CPU about −10%.)
pub fn session_provider() -> CryptoProvider {
    let mut p = provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    p
}

impl ServerCertVerifier for Trust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify_rustls(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Trust {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify_rustls(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_prefer_aes_128_gcm_and_keep_every_suite() {
        let suites = |p: CryptoProvider| -> Vec<rustls::CipherSuite> {
            p.cipher_suites.iter().map(|s| s.suite()).collect()
        };
        let (mut ours, mut all) = (suites(session_provider()), suites(provider()));
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        ours.sort_by_key(|s| u16::from(*s));
        all.sort_by_key(|s| u16::from(*s));
        assert_eq!(ours, all, "only the order changes");
    }

    #[test]
    fn refusal_labels_are_found_in_close_reasons() {
        assert_eq!(
            refusal_label("invalid peer certificate: mic refused (revoked): x"),
            Some("revoked")
        );
        assert_eq!(refusal_label("timed out"), None);
    }
}
