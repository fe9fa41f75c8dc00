//! Issuance building blocks: CAs, MICs from CSRs, model keys, CRLs.
//!
//! Pure functions of their inputs (plus the OS random generator for keys and serials): no
//! files, no network, no clock. The CA service adds storage, policy (who may get which model
//! URI, the maximum lifetime) and audit around these; the controller uses
//! [`generate_model_key`] so that a model's private key is created where the model runs and
//! never travels.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::mic::unix_seconds;
use crate::revocation::{RevocationReason, normalize_serial};
pub use crate::sig::KeyAlgorithm;
use crate::{ATTESTATION_OID, Attestation, Error, ModelUri, fingerprint_sha256, sig};

/// A CA certificate with its signing key: a root or an intermediate.
///
/// Keys are ECDSA P-256: small certificates, fast handshakes, supported by every TLS stack.
pub struct CertificateAuthority {
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    common_name: String,
    ski: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is left out on purpose: Debug output ends up in logs.
        f.debug_struct("CertificateAuthority")
            .field("common_name", &self.common_name)
            .field("fingerprint", &fingerprint_sha256(&self.cert_der))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What a MIC is issued from.
#[derive(Debug, Clone, Copy)]
pub struct MicRequest<'a> {
    /// The requester's verified CSR; only its public key (and requested URI, checked against
    /// `model`) is used: every other field of the MIC is the CA's decision.
    pub csr: &'a Csr,
    /// The model identity to certify (already authorised by the caller).
    pub model: &'a ModelUri,
    /// The attestation to embed.
    pub attestation: &'a Attestation,
    /// Start of validity; callers usually backdate a minute for clock skew.
    pub not_before: SystemTime,
    /// Lifetime from `not_before`; see [`crate::DEFAULT_MIC_VALIDITY`]. The maximum is the
    /// caller's policy; this crate only refuses zero and anything outliving the issuer.
    pub validity: Duration,
}

/// An issued MIC.
#[derive(Debug, Clone)]
pub struct IssuedMic {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate, PEM.
    pub pem: String,
    /// Serial number bytes, big-endian without leading zeros (the CRL key).
    pub serial: Vec<u8>,
    /// SHA-256 of the DER, lowercase hex (the audit log key).
    pub fingerprint: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// What a service (TLS) certificate is issued for; see
/// [`CertificateAuthority::issue_service_cert`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceCertRequest<'a> {
    /// Subject CN.
    pub common_name: &'a str,
    /// DNS SANs (a server's names).
    pub dns_names: &'a [&'a str],
    /// IP SANs.
    pub ip_addresses: &'a [std::net::IpAddr],
    /// URI SANs (e.g. a caller's role).
    pub uris: &'a [&'a str],
    /// extKeyUsage serverAuth.
    pub server_auth: bool,
    /// extKeyUsage clientAuth.
    pub client_auth: bool,
    /// Start of validity.
    pub not_before: SystemTime,
    /// Lifetime from `not_before`.
    pub validity: Duration,
}

/// A service certificate with the private key generated for it.
pub struct IssuedServiceCert {
    /// The certificate.
    pub cert: IssuedMic,
    /// PKCS#8 PEM; write it only where the service reads it.
    pub private_key_pem: String,
}

impl fmt::Debug for IssuedServiceCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedServiceCert")
            .field("cert", &self.cert)
            .field("private_key_pem", &"<redacted>")
            .finish()
    }
}

/// A revoked certificate to list in a CRL.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    /// Serial number bytes, as in [`IssuedMic::serial`].
    pub serial: Vec<u8>,
    /// When the CA processed the revocation.
    pub revoked_at: SystemTime,
    /// Why.
    pub reason: RevocationReason,
}

/// A freshly generated key pair with its CSR (a model's, or a service's).
pub struct ModelKey {
    /// PKCS#8 PEM of the private key; write it only to the model's own Secret.
    pub private_key_pem: String,
    /// The CSR, PEM, to send to the CA service.
    pub csr_pem: String,
    /// The CSR, DER.
    pub csr_der: Vec<u8>,
}

impl fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelKey")
            .field("private_key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// A parsed CSR whose self-signature has been verified and whose key type is supported.
#[derive(Debug, Clone)]
pub struct Csr {
    der: Vec<u8>,
    spki_der: Vec<u8>,
    key_algorithm: KeyAlgorithm,
    requested_uris: Vec<String>,
}

fn to_offset(t: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp(t)
        .map_err(|e| Error::Validity(format!("time {t} out of range: {e}")))
}

fn window(not_before: SystemTime, validity: Duration) -> Result<(i64, i64), Error> {
    if validity.as_secs() == 0 {
        return Err(Error::Validity(
            "validity must be at least one second".into(),
        ));
    }
    let nb = unix_seconds(not_before);
    let secs = i64::try_from(validity.as_secs())
        .map_err(|_| Error::Validity("validity too long".into()))?;
    let na = nb
        .checked_add(secs)
        .ok_or_else(|| Error::Validity("validity too long".into()))?;
    Ok((nb, na))
}

/// 16 random bytes with the top bit cleared: a positive INTEGER with ≥ 64 bits of entropy
/// (CA/Browser Forum rule), unpredictable so that chosen-prefix collisions cannot be aimed.
fn random_serial() -> Result<Vec<u8>, Error> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    bytes[0] &= 0x7F;
    bytes[15] |= 1; // never zero, whatever the rest
    Ok(bytes.to_vec())
}

fn ca_params(
    common_name: &str,
    nb: i64,
    na: i64,
    path_len: Option<u8>,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Nexus");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_offset(nb)?;
    params.not_after = to_offset(na)?;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, Error> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(Error::Certificate(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(Error::Certificate(e.to_string())),
    }
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

impl CertificateAuthority {
    /// Creates a self-signed root CA (no path length limit, so it can sign intermediates).
    pub fn new_root(
        common_name: &str,
        not_before: SystemTime,
        validity: Duration,
    ) -> Result<Self, Error> {
        let (nb, na) = window(not_before, validity)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(common_name, nb, na, None)?;
        let cert = params.self_signed(&key)?;
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// Creates an intermediate CA signed by `self`, allowed to sign only end-entity
    /// certificates (`pathLenConstraint` 0): the online CA service holds this one, the root
    /// stays offline.
    pub fn new_intermediate(
        &self,
        common_name: &str,
        not_before: SystemTime,
        validity: Duration,
    ) -> Result<Self, Error> {
        let (nb, na) = window(not_before, validity)?;
        self.check_within(nb, na)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(common_name, nb, na, Some(0))?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Self::from_parts(cert.der().to_vec(), key)
    }

    /// Loads a CA from its certificate and PKCS#8 private key (PEM), e.g. from a Secret.
    /// Checks that the certificate is a CA and that the key is the certificate's.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let mut chain = crate::pem_to_der_chain(cert_pem)?;
        if chain.len() != 1 {
            return Err(Error::Pem(format!(
                "expected one CA certificate, found {}",
                chain.len()
            )));
        }
        let der = chain.remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Key(e.to_string()))?;
        Self::from_parts(der, key)
    }

    fn from_parts(cert_der: Vec<u8>, key: KeyPair) -> Result<Self, Error> {
        let cert = parse_cert(&cert_der)?;
        if !cert.is_ca() {
            return Err(Error::Certificate("not a CA certificate".into()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::Key(
                "private key does not match the CA certificate".into(),
            ));
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let ski = subject_key_id(&cert).ok_or_else(|| {
            Error::Certificate("CA certificate has no subjectKeyIdentifier".into())
        })?;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)?;
        Ok(Self {
            cert_der,
            issuer,
            common_name,
            ski,
            not_before,
            not_after,
        })
    }

    fn check_within(&self, nb: i64, na: i64) -> Result<(), Error> {
        if nb < self.not_before || na > self.not_after {
            return Err(Error::Validity(format!(
                "requested window {nb}..{na} is outside the issuer's {}..{} (Unix seconds)",
                self.not_before, self.not_after
            )));
        }
        Ok(())
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        der_to_pem("CERTIFICATE", &self.cert_der)
    }

    /// The private key, PKCS#8 PEM. Handle as a secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The subject common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// Issues a MIC for `req.model` to the key in `req.csr`.
    ///
    /// The certificate gets: a random 127-bit serial; subject `CN=<model>@<version>` (when it
    /// fits the 64-byte limit), `O=<tenant>`; the model URI as its only SAN; keyUsage
    /// digitalSignature; extKeyUsage clientAuth + serverAuth (a model is both a caller and a
    /// callee); basicConstraints CA:FALSE; SKI and AKI; the attestation extension.
    pub fn issue_mic(&self, req: &MicRequest<'_>) -> Result<IssuedMic, Error> {
        let uri = req.model.to_string();
        if !req.csr.requested_uris.is_empty() && req.csr.requested_uris != [uri.as_str()] {
            return Err(Error::CsrMismatch {
                requested: req.csr.requested_uris.join(", "),
                expected: uri,
            });
        }
        let attestation = req.attestation.to_der()?;
        let (nb, na) = window(req.not_before, req.validity)?;
        self.check_within(nb, na)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = leaf_dn(req.model);
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(uri.as_str())?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = to_offset(nb)?;
        params.not_after = to_offset(na)?;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            ATTESTATION_OID,
            attestation,
        )];

        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&req.csr.spki_der)?;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        let der = cert.der().to_vec();

        // Belt and braces: the certified key must be byte-for-byte the requester's.
        let parsed = parse_cert(&der)?;
        if parsed.public_key().raw != req.csr.spki_der.as_slice() {
            return Err(Error::Certificate(
                "issued certificate does not carry the CSR's public key".into(),
            ));
        }
        let serial = normalize_serial(parsed.raw_serial()).to_vec();
        Ok(IssuedMic {
            pem: der_to_pem("CERTIFICATE", &der),
            fingerprint: fingerprint_sha256(&der),
            serial,
            not_after: na,
            der,
        })
    }

    /// Issues a TLS certificate for a Nexus service (the CA's own server certificate, a
    /// caller's client certificate) with a fresh ECDSA P-256 key generated here.
    ///
    /// Subject `CN=<common_name>`; SANs: the DNS names, IP addresses and URIs given (a caller's
    /// role travels as a URI, see `nexus-tls`); keyUsage digitalSignature; extKeyUsage
    /// serverAuth and/or clientAuth as asked; CA:FALSE; SKI and AKI; a random serial. No
    /// attestation: these are not MICs.
    pub fn issue_service_cert(
        &self,
        req: &ServiceCertRequest<'_>,
    ) -> Result<IssuedServiceCert, Error> {
        let params = self.service_cert_params(req)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedServiceCert {
            cert: issued(cert.der().to_vec())?,
            private_key_pem: key.serialize_pem(),
        })
    }

    /// Issues a service certificate like [`CertificateAuthority::issue_service_cert`], but to
    /// the key of `csr`: the requester (a node enrolling with a join token, or renewing) keeps
    /// its private key and the CA never sees it. Only the CSR's key is used; its subject and
    /// extensions are ignored — the CA decides the names from what authenticated the request.
    pub fn issue_service_cert_for(
        &self,
        req: &ServiceCertRequest<'_>,
        csr: &Csr,
    ) -> Result<IssuedMic, Error> {
        let params = self.service_cert_params(req)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)?;
        let cert = params.signed_by(&public_key, &self.issuer)?;
        let out = issued(cert.der().to_vec())?;
        let parsed = parse_cert(&out.der)?;
        if parsed.public_key().raw != csr.spki_der.as_slice() {
            return Err(Error::Certificate(
                "issued certificate does not carry the CSR's public key".into(),
            ));
        }
        Ok(out)
    }

    fn service_cert_params(
        &self,
        req: &ServiceCertRequest<'_>,
    ) -> Result<CertificateParams, Error> {
        if !req.server_auth && !req.client_auth {
            return Err(Error::Certificate(
                "a service certificate needs serverAuth, clientAuth or both".into(),
            ));
        }
        let (nb, na) = window(req.not_before, req.validity)?;
        self.check_within(nb, na)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.common_name);
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for d in req.dns_names {
            sans.push(SanType::DnsName(Ia5String::try_from(*d)?));
        }
        for ip in req.ip_addresses {
            sans.push(SanType::IpAddress(*ip));
        }
        for u in req.uris {
            sans.push(SanType::URI(Ia5String::try_from(*u)?));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = [
            (req.server_auth, ExtendedKeyUsagePurpose::ServerAuth),
            (req.client_auth, ExtendedKeyUsagePurpose::ClientAuth),
        ]
        .into_iter()
        .filter_map(|(on, p)| on.then_some(p))
        .collect();
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.not_before = to_offset(nb)?;
        params.not_after = to_offset(na)?;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        Ok(params)
    }

    /// Signs a CRL (v2, with AKI and CRL number) listing `revoked`.
    pub fn sign_crl(
        &self,
        revoked: &[RevokedEntry],
        this_update: SystemTime,
        next_update: SystemTime,
        crl_number: u64,
    ) -> Result<Vec<u8>, Error> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(normalize_serial(&r.serial)),
                    revocation_time: to_offset(unix_seconds(r.revoked_at))?,
                    reason_code: Some(r.reason.into()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let params = CertificateRevocationListParams {
            this_update: to_offset(unix_seconds(this_update))?,
            next_update: to_offset(unix_seconds(next_update))?,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(self.ski.clone()),
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }
}

/// The [`IssuedMic`] view of a freshly signed certificate.
fn issued(der: Vec<u8>) -> Result<IssuedMic, Error> {
    let parsed = parse_cert(&der)?;
    let serial = normalize_serial(parsed.raw_serial()).to_vec();
    let not_after = parsed.validity().not_after.timestamp();
    Ok(IssuedMic {
        pem: der_to_pem("CERTIFICATE", &der),
        fingerprint: fingerprint_sha256(&der),
        serial,
        not_after,
        der,
    })
}

fn leaf_dn(model: &ModelUri) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    let cn = format!("{}@{}", model.model(), model.version());
    if cn.len() <= 64 {
        dn.push(DnType::CommonName, cn);
    }
    dn.push(DnType::OrganizationName, model.tenant());
    dn
}

/// PEM-encodes DER with the given label (`CERTIFICATE`, `X509 CRL`, ...).
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Csr {
    /// Parses a PEM CSR (`CERTIFICATE REQUEST`), see [`Csr::from_der`].
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| Error::Pem(e.to_string()))?;
        if parsed.label != "CERTIFICATE REQUEST" && parsed.label != "NEW CERTIFICATE REQUEST" {
            return Err(Error::Pem(format!(
                "expected CERTIFICATE REQUEST, found {}",
                parsed.label
            )));
        }
        Self::from_der(&parsed.contents)
    }

    /// Parses a DER CSR, checks that its key type is supported and that its self-signature
    /// verifies (proof that the requester holds the private key). Its other contents are only
    /// recorded: the requested URI SANs, which [`CertificateAuthority::issue_mic`] compares
    /// with the model being issued for.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let csr = match X509CertificationRequest::from_der(der) {
            Ok(([], csr)) => csr,
            Ok(_) => return Err(Error::Csr("trailing bytes after the CSR".into())),
            Err(e) => return Err(Error::Csr(format!("not a PKCS#10 request: {e}"))),
        };
        let info = &csr.certification_request_info;
        let key_algorithm = sig::key_algorithm(&info.subject_pki).map_err(Error::UnsupportedKey)?;
        let alg = sig::verifier(&csr.signature_algorithm, key_algorithm).ok_or_else(|| {
            Error::Csr(format!(
                "signature algorithm {} does not fit a {key_algorithm} key",
                csr.signature_algorithm.algorithm
            ))
        })?;
        if !sig::verify(
            alg,
            &info.subject_pki.subject_public_key.data,
            info.raw,
            &csr.signature_value.data,
        ) {
            return Err(Error::Csr("self-signature does not verify".into()));
        }
        let mut requested_uris = Vec::new();
        if let Some(exts) = csr.requested_extensions() {
            for ext in exts {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        if let GeneralName::URI(u) = name {
                            requested_uris.push((*u).to_owned());
                        }
                    }
                }
            }
        }
        Ok(Self {
            der: der.to_vec(),
            spki_der: info.subject_pki.raw.to_vec(),
            key_algorithm,
            requested_uris,
        })
    }

    /// The CSR, DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The requester's SubjectPublicKeyInfo, DER (what a certificate for it will carry).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The requester's public key type.
    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// URI SANs the requester asked for (normally exactly its model URI).
    pub fn requested_uris(&self) -> &[String] {
        &self.requested_uris
    }
}

/// Generates an ECDSA P-256 key pair and a CSR with subject `CN=<common_name>`, for a service
/// that asks for its own certificate (a node agent enrolling or renewing): the key stays with
/// it, only the CSR goes to the CA.
pub fn generate_service_key(common_name: &str) -> Result<ModelKey, Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok(ModelKey {
        private_key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
        csr_der: csr.der().to_vec(),
    })
}

/// Generates an ECDSA P-256 key pair for `model` and a CSR naming it (URI SAN, CN, O), for
/// the controller: the key is written to the model's Secret, only the CSR goes to the CA.
pub fn generate_model_key(model: &ModelUri) -> Result<ModelKey, Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = leaf_dn(model);
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(model.to_string())?)];
    let csr = params.serialize_request(&key)?;
    Ok(ModelKey {
        private_key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
        csr_der: csr.der().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_16_bytes() -> Result<(), Error> {
        for _ in 0..64 {
            let s = random_serial()?;
            assert_eq!(s.len(), 16);
            assert_eq!(s[0] & 0x80, 0);
        }
        assert_eq!(normalize_serial(&[0, 0, 5, 0]), &[5, 0]);
        Ok(())
    }
}
