//! A test PKI built with `nexus_mic`'s real issuing API: a root and an intermediate CA in
//! process, MICs issued from CSRs exactly as the CA service does, written to Secret-layout
//! directories. For tests, demos and benches of the dataplane crates; the CA *service* is
//! `nexus-ca`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use nexus_mic::{
    Attestation, CertificateAuthority, Csr, MicRequest, ModelUri, RevokedEntry, generate_model_key,
};

use crate::trust::{Identity, TrustError};

const DAY: Duration = Duration::from_secs(86_400);

/// A root and an intermediate CA.
#[derive(Debug)]
pub struct TestPki {
    /// The root (the trust anchor in `ca.crt`).
    pub root: CertificateAuthority,
    /// The issuing intermediate.
    pub ca: CertificateAuthority,
    revoked: Vec<RevokedEntry>,
}

/// An issued MIC with its key, as PEM, ready to become a Secret or an [`Identity`].
#[derive(Debug, Clone)]
pub struct IssuedIdentity {
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
    /// PKCS#8 key, PEM.
    pub key_pem: String,
    /// Root, PEM.
    pub ca_pem: String,
    /// Leaf DER.
    pub leaf_der: Vec<u8>,
    /// Leaf serial (for revocation).
    pub serial: Vec<u8>,
}

impl IssuedIdentity {
    /// The identity.
    pub fn identity(&self) -> Result<Identity, TrustError> {
        Identity::from_pem(
            self.chain_pem.as_bytes(),
            self.key_pem.as_bytes(),
            self.ca_pem.as_bytes(),
        )
    }

    /// Writes `tls.crt`, `tls.key`, `ca.crt` into `dir`.
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("tls.crt"), &self.chain_pem)?;
        std::fs::write(dir.join("tls.key"), &self.key_pem)?;
        std::fs::write(dir.join("ca.crt"), &self.ca_pem)
    }
}

impl TestPki {
    /// A fresh root and intermediate, valid from 30 days ago for a year.
    pub fn new() -> Result<Self, nexus_mic::Error> {
        let start = SystemTime::now() - 30 * DAY;
        let root = CertificateAuthority::new_root("Nexus Test Root", start, 365 * DAY)?;
        let ca = root.new_intermediate("Nexus Test Intermediate", start, 300 * DAY)?;
        Ok(Self {
            root,
            ca,
            revoked: Vec::new(),
        })
    }

    /// Issues a MIC for `model` (e.g. `nexus://acme/coder@1.0.0`) with the example
    /// attestation (capabilities `code-generation`, `chat`; 128K context).
    pub fn issue(&self, model: &str) -> Result<IssuedIdentity, nexus_mic::Error> {
        self.issue_with(
            model,
            &Attestation::example(),
            SystemTime::now() - Duration::from_secs(60),
            DAY,
        )
    }

    /// Issues a MIC that expired an hour ago.
    pub fn issue_expired(&self, model: &str) -> Result<IssuedIdentity, nexus_mic::Error> {
        self.issue_with(
            model,
            &Attestation::example(),
            SystemTime::now() - 2 * DAY,
            DAY - Duration::from_secs(3600),
        )
    }

    /// Issues a MIC with an explicit attestation and validity.
    pub fn issue_with(
        &self,
        model: &str,
        attestation: &Attestation,
        not_before: SystemTime,
        validity: Duration,
    ) -> Result<IssuedIdentity, nexus_mic::Error> {
        let model: ModelUri = model.parse()?;
        let key = generate_model_key(&model)?;
        let csr = Csr::from_pem(&key.csr_pem)?;
        let mic = self.ca.issue_mic(&MicRequest {
            csr: &csr,
            model: &model,
            attestation,
            not_before,
            validity,
        })?;
        Ok(IssuedIdentity {
            chain_pem: format!("{}{}", mic.pem, self.ca.cert_pem()),
            key_pem: key.private_key_pem,
            ca_pem: self.root.cert_pem(),
            leaf_der: mic.der,
            serial: mic.serial,
        })
    }

    /// Issues an ordinary X.509 certificate (no model URI, no attestation) from the same
    /// intermediate: what a peer without a MIC presents.
    pub fn issue_plain(&self, common_name: &str) -> Result<IssuedIdentity, nexus_mic::Error> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let ca_key = rcgen::KeyPair::from_pem(&self.ca.key_pem())?;
        let issuer = rcgen::Issuer::from_ca_cert_pem(&self.ca.cert_pem(), ca_key)?;
        let mut params = rcgen::CertificateParams::new(vec![common_name.to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(1);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(IssuedIdentity {
            chain_pem: format!("{}{}", cert.pem(), self.ca.cert_pem()),
            key_pem: key.serialize_pem(),
            ca_pem: self.root.cert_pem(),
            leaf_der: cert.der().to_vec(),
            serial: Vec::new(),
        })
    }

    /// Adds a MIC to the revocation list.
    pub fn revoke(&mut self, issued: &IssuedIdentity) {
        self.revoked.push(RevokedEntry {
            serial: issued.serial.clone(),
            revoked_at: SystemTime::now() - Duration::from_secs(1),
            reason: nexus_mic::RevocationReason::KeyCompromise,
        });
    }

    /// The current CRL, DER, signed by the intermediate.
    pub fn crl_der(&self) -> Result<Vec<u8>, nexus_mic::Error> {
        let now = SystemTime::now();
        self.ca.sign_crl(&self.revoked, now, now + DAY, 1)
    }
}
