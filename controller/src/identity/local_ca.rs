//! An [`Issuer`] that signs in-process with a CA key pair the controller holds — cert-manager's
//! "CA issuer". For single-machine stacks, demos and tests where running the CA service is not
//! wanted; it keeps no issuance log and its revocations live in memory only.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use nexus_mic::{CertificateAuthority, Csr, MicRequest};

use super::IssuedCertificate;
use super::reconcile::{IssueRequest, Issuer, RevokeReason};
use crate::Error;

/// Signs MICs with an intermediate CA held in memory.
pub struct LocalIssuer {
    root: CertificateAuthority,
    intermediate: CertificateAuthority,
    revoked: Mutex<Vec<(String, RevokeReason)>>,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIssuer")
            .field("intermediate", &self.intermediate.common_name())
            .finish_non_exhaustive()
    }
}

impl LocalIssuer {
    /// Uses an existing root and intermediate.
    pub fn new(root: CertificateAuthority, intermediate: CertificateAuthority) -> Self {
        Self {
            root,
            intermediate,
            revoked: Mutex::new(Vec::new()),
        }
    }

    /// Creates a fresh root and intermediate valid for a year (for demos and tests).
    pub fn ephemeral() -> Result<Self, Error> {
        let nb = SystemTime::now() - Duration::from_secs(3600);
        let year = Duration::from_secs(365 * 86400);
        let root = CertificateAuthority::new_root("Nexus Local Root CA", nb, year)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let intermediate = root
            .new_intermediate(
                "Nexus Local Intermediate CA",
                nb,
                year - Duration::from_secs(86400),
            )
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Self::new(root, intermediate))
    }

    /// Serials revoked so far, with reasons.
    pub fn revoked(&self) -> Vec<(String, RevokeReason)> {
        self.revoked.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Issuer for LocalIssuer {
    async fn issue(&self, req: IssueRequest) -> Result<IssuedCertificate, Error> {
        let csr = Csr::from_der(&req.csr_der).map_err(|e| Error::Issuer(e.to_string()))?;
        let attestation = nexus_mic::Attestation::from_der(&req.attestation_der)
            .map_err(|e| Error::Issuer(e.to_string()))?;
        let mic = self
            .intermediate
            .issue_mic(&MicRequest {
                csr: &csr,
                model: &req.model,
                attestation: &attestation,
                not_before: SystemTime::now() - Duration::from_secs(60),
                validity: req.validity,
            })
            .map_err(|e| Error::Issuer(e.to_string()))?;
        IssuedCertificate::from_pem(
            format!("{}{}", mic.pem, self.intermediate.cert_pem()),
            self.root.cert_pem(),
        )
    }

    async fn revoke(&self, _tenant: &str, serial: &str, reason: RevokeReason) -> Result<(), Error> {
        self.revoked
            .lock()
            .map_err(|_| Error::Internal("revocation list lock poisoned".into()))?
            .push((serial.to_owned(), reason));
        Ok(())
    }
}
