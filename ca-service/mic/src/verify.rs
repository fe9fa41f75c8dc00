//! Verifying a MIC chain against trust anchors, revocation and a [`Requirement`].
//!
//! Runs in every dataplane handshake, so the expensive parts are done once: trust anchors are
//! parsed when the [`Verifier`] is built, and an intermediate whose signature chain to an anchor
//! has been checked is cached by subject (capped at [`MAX_CACHED_INTERMEDIATES`]). With a warm
//! cache a verification is: parse the leaf, one signature check, validity and revocation of
//! each certificate on the path, decode the attestation, check the requirement.
//!
//! A leaf seen before (same DER, by SHA-256) skips parsing and its signature check too: only
//! validity at `now`, revocation and the requirement are re-evaluated, since those change.
//!
//! What is checked: signatures (ECDSA P-256/P-384, Ed25519), validity of every certificate at
//! `now`, `basicConstraints` CA on every issuer and not on the leaf, `keyUsage` keyCertSign on
//! issuers and digitalSignature on the leaf when present, `pathLenConstraint`, issuer/subject
//! name chaining with AKI/SKI as a filter, no unsupported critical extension, revocation of the
//! leaf and of intermediates, and then the MIC contents. Not checked: name constraints (a CA
//! carrying them is refused as an unsupported critical extension), policies, and EKU (the TLS
//! layer enforces clientAuth/serverAuth for its role).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::mic::{MicContentError, mic_content, rfc3339, unix_seconds};
pub use crate::requirement::{IssuerMatch, Requirement};
pub use crate::revocation::RevocationReason;
use crate::revocation::normalize_serial;
use crate::sig::{self, KeyAlgorithm};
use crate::{Attestation, Error, ModelUri};

/// Most certificates accepted in a presented chain (leaf included).
pub const MAX_CHAIN_LEN: usize = 6;
/// Most intermediates kept in the warm cache; beyond it, new ones are verified but not kept.
pub const MAX_CACHED_INTERMEDIATES: usize = 1024;
/// Most verified leaves kept; the cache is emptied when full (MICs live a day, so entries
/// age out of use quickly anyway).
pub const MAX_CACHED_LEAVES: usize = 4096;
/// Most signature checks one verification may spend (bounds the cost of hostile chains full of
/// same-named certificates).
const SIGNATURE_BUDGET: u32 = 16;

/// Answer of a revocation source about one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationStatus {
    /// Not revoked.
    Good,
    /// Revoked.
    Revoked(RevocationReason),
    /// The source cannot tell (stale CRL, status service unreachable): the verifier fails
    /// closed with [`Rejection::RevocationUnknown`].
    Unknown,
}

/// A revocation source: a CRL set, a status-service answer cache, or [`NoRevocation`].
pub trait RevocationCheck {
    /// Status of the certificate with this serial (big-endian, without leading zero bytes)
    /// issued under this issuer name (DER of the issuer `Name`).
    fn status(&self, issuer_name_der: &[u8], serial: &[u8]) -> RevocationStatus;
}

/// Treats every certificate as not revoked: for tests and for callers that check revocation
/// elsewhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRevocation;

impl RevocationCheck for NoRevocation {
    fn status(&self, _: &[u8], _: &[u8]) -> RevocationStatus {
        RevocationStatus::Good
    }
}

/// Revoked serials by issuer, filled from verified CRLs or directly (e.g. from the CA
/// service's revocation feed).
#[derive(Debug, Clone, Default)]
pub struct CrlSet {
    revoked: HashMap<Vec<u8>, HashMap<Vec<u8>, RevocationReason>>,
}

impl CrlSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `serial` under `issuer_name_der` revoked.
    pub fn insert(&mut self, issuer_name_der: &[u8], serial: &[u8], reason: RevocationReason) {
        self.revoked
            .entry(issuer_name_der.to_vec())
            .or_default()
            .insert(normalize_serial(serial).to_vec(), reason);
    }

    /// Marks a certificate revoked, keyed by its issuer and serial.
    pub fn revoke_certificate(
        &mut self,
        cert_der: &[u8],
        reason: RevocationReason,
    ) -> Result<(), Error> {
        let cert = parse_exact(cert_der).map_err(Error::Certificate)?;
        self.insert(cert.issuer().as_raw(), cert.raw_serial(), reason);
        Ok(())
    }

    /// Adds every entry of a DER CRL after checking that it is signed by `issuer_cert_der`
    /// and names it as issuer. Returns the number of entries added. Freshness (`nextUpdate`)
    /// is the caller's policy: it knows how old a CRL it tolerates.
    pub fn add_crl(&mut self, crl_der: &[u8], issuer_cert_der: &[u8]) -> Result<usize, Error> {
        use x509_parser::revocation_list::CertificateRevocationList;
        let issuer = parse_exact(issuer_cert_der).map_err(Error::Certificate)?;
        let crl = match CertificateRevocationList::from_der(crl_der) {
            Ok(([], crl)) => crl,
            Ok(_) => return Err(Error::Crl("trailing bytes after the CRL".into())),
            Err(e) => return Err(Error::Crl(e.to_string())),
        };
        if crl.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(Error::Crl("CRL issuer is not the given CA".into()));
        }
        let key_alg = sig::key_algorithm(issuer.public_key()).map_err(Error::UnsupportedKey)?;
        let alg = sig::verifier(&crl.signature_algorithm, key_alg)
            .ok_or_else(|| Error::Crl("unsupported signature algorithm".into()))?;
        if !sig::verify(
            alg,
            &issuer.public_key().subject_public_key.data,
            crl.tbs_cert_list.as_ref(),
            &crl.signature_value.data,
        ) {
            return Err(Error::Crl(
                "signature does not verify with the CA key".into(),
            ));
        }
        let mut n = 0;
        for entry in crl.iter_revoked_certificates() {
            let reason = entry
                .reason_code()
                .and_then(|(_, code)| RevocationReason::from_code(code.0))
                .unwrap_or(RevocationReason::Unspecified);
            self.insert(crl.issuer().as_raw(), entry.raw_serial(), reason);
            n += 1;
        }
        Ok(n)
    }

    /// Number of revoked serials.
    pub fn len(&self) -> usize {
        self.revoked.values().map(HashMap::len).sum()
    }

    /// Whether no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RevocationCheck for CrlSet {
    fn status(&self, issuer_name_der: &[u8], serial: &[u8]) -> RevocationStatus {
        match self
            .revoked
            .get(issuer_name_der)
            .and_then(|m| m.get(normalize_serial(serial)))
        {
            Some(r) => RevocationStatus::Revoked(*r),
            None => RevocationStatus::Good,
        }
    }
}

/// Why a MIC was refused: each variant is a reason a peer can log and count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// No certificate was presented.
    #[error("no certificate presented")]
    EmptyChain,
    /// A certificate is not parseable X.509 DER.
    #[error("certificate {index} of the chain is malformed: {reason}")]
    Malformed {
        /// Position in the presented chain (0 = leaf).
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// The chain is structurally wrong: bad signature, issuer not a CA, path too long…
    #[error("bad chain: {0}")]
    BadChain(String),
    /// No path to a trust anchor.
    #[error("untrusted issuer `{issuer}`: no path to a trust anchor")]
    UntrustedIssuer {
        /// Issuer DN of the certificate whose issuer could not be found.
        issuer: String,
    },
    /// A certificate on the path has expired.
    #[error("certificate `{subject}` expired at {}", rfc3339(*not_after))]
    Expired {
        /// Its subject.
        subject: String,
        /// Its notAfter, Unix seconds.
        not_after: i64,
    },
    /// A certificate on the path is not valid yet.
    #[error("certificate `{subject}` is not valid before {}", rfc3339(*not_before))]
    NotYetValid {
        /// Its subject.
        subject: String,
        /// Its notBefore, Unix seconds.
        not_before: i64,
    },
    /// A certificate on the path is revoked.
    #[error("certificate `{subject}` (serial {serial}) is revoked: {reason}")]
    Revoked {
        /// Its subject.
        subject: String,
        /// Its serial, hex.
        serial: String,
        /// The CRL reason.
        reason: RevocationReason,
    },
    /// The revocation source could not answer; refused (fail closed).
    #[error("revocation status of `{subject}` is unknown")]
    RevocationUnknown {
        /// Its subject.
        subject: String,
    },
    /// The leaf chains fine but is not a MIC (no model URI, no attestation).
    #[error("not a MIC: {0}")]
    NotAMic(String),
    /// The attestation extension does not decode.
    #[error("malformed attestation: {0}")]
    MalformedAttestation(String),
    /// No CA on the path matches the requirement's issuer clauses.
    #[error("issuer `{issuer}` is not among the accepted issuers")]
    IssuerNotAccepted {
        /// Common name of the issuing CA.
        issuer: String,
    },
    /// The model belongs to another tenant.
    #[error("model belongs to tenant `{have}`, `{need}` required")]
    WrongTenant {
        /// The model's tenant.
        have: String,
        /// The required tenant.
        need: String,
    },
    /// A required capability is not claimed.
    #[error("missing capability `{0}`")]
    MissingCapability(String),
    /// A required modality is not claimed.
    #[error("missing modality `{0}`")]
    MissingModality(String),
    /// The context window is too small.
    #[error("context window {have} tokens, at least {need} required")]
    ContextTooSmall {
        /// Claimed.
        have: u64,
        /// Required.
        need: u64,
    },
    /// A required benchmark is not claimed at all.
    #[error("missing benchmark `{0}`")]
    MissingBenchmark(String),
    /// A required safety evaluation is not claimed at all.
    #[error("missing safety evaluation `{0}`")]
    MissingSafetyEvaluation(String),
    /// The claim exists but as a plain value, so no zero-knowledge proof can be checked.
    #[error("claim `{0}` has no commitment to check a proof against")]
    MissingProof(String),
}

impl Rejection {
    /// A short, fixed label for a `rejections{reason=...}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Rejection::EmptyChain => "empty_chain",
            Rejection::Malformed { .. } => "malformed",
            Rejection::BadChain(_) => "bad_chain",
            Rejection::UntrustedIssuer { .. } => "untrusted_issuer",
            Rejection::Expired { .. } => "expired",
            Rejection::NotYetValid { .. } => "not_yet_valid",
            Rejection::Revoked { .. } => "revoked",
            Rejection::RevocationUnknown { .. } => "revocation_unknown",
            Rejection::NotAMic(_) => "not_a_mic",
            Rejection::MalformedAttestation(_) => "malformed_attestation",
            Rejection::IssuerNotAccepted { .. } => "issuer_not_accepted",
            Rejection::WrongTenant { .. } => "wrong_tenant",
            Rejection::MissingCapability(_) => "missing_capability",
            Rejection::MissingModality(_) => "missing_modality",
            Rejection::ContextTooSmall { .. } => "context_too_small",
            Rejection::MissingBenchmark(_) => "missing_benchmark",
            Rejection::MissingSafetyEvaluation(_) => "missing_safety_evaluation",
            Rejection::MissingProof(_) => "missing_proof",
        }
    }
}

/// A MIC that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMic {
    /// The model.
    pub model: ModelUri,
    /// Its attestation.
    pub attestation: Attestation,
    /// Leaf serial, hex (what a revocation request names).
    pub serial: String,
    /// Leaf notAfter, Unix seconds (when to re-verify a long-lived connection).
    pub not_after: i64,
    /// Common name of the CA that issued the leaf.
    pub issuer: String,
    /// Common name of the trust anchor reached.
    pub anchor: String,
}

/// A CA certificate known to chain to an anchor (or to be one), pre-parsed.
#[derive(Debug)]
struct CaNode {
    subject_raw: Vec<u8>,
    subject: String,
    common_name: String,
    issuer_raw: Vec<u8>,
    serial: Vec<u8>,
    ski: Option<Vec<u8>>,
    key_alg: KeyAlgorithm,
    key: Vec<u8>,
    spki_sha256: [u8; 32],
    der_sha256: [u8; 32],
    not_before: i64,
    not_after: i64,
    /// How many more intermediates may appear below this CA (`None`: no limit).
    remaining_path: Option<u32>,
    /// The CA that signed this one; `None` for a trust anchor.
    parent: Option<Arc<CaNode>>,
}

fn parse_exact(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

fn common_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn key_id(cert: &X509Certificate<'_>, authority: bool) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) if !authority => Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) if authority => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// Checks common to every certificate: v3, consistent signature algorithm, no critical
/// extension we do not understand.
fn check_structure(cert: &X509Certificate<'_>) -> Result<(), String> {
    if cert.version().0 != 2 {
        return Err(format!(
            "`{}` is not an X.509 v3 certificate",
            cert.subject()
        ));
    }
    if cert.tbs_certificate.signature.algorithm != cert.signature_algorithm.algorithm {
        return Err(format!(
            "`{}` has mismatched signature algorithms",
            cert.subject()
        ));
    }
    for ext in cert.extensions() {
        if ext.critical {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(_)
                | ParsedExtension::KeyUsage(_)
                | ParsedExtension::ExtendedKeyUsage(_)
                | ParsedExtension::SubjectAlternativeName(_) => {}
                _ => {
                    return Err(format!(
                        "`{}` has an unsupported critical extension {}",
                        cert.subject(),
                        ext.oid
                    ));
                }
            }
        }
    }
    Ok(())
}

impl CaNode {
    fn new(
        cert: &X509Certificate<'_>,
        der: &[u8],
        parent: Option<Arc<CaNode>>,
    ) -> Result<Self, String> {
        check_structure(cert)?;
        let subject = cert.subject().to_string();
        let bc = cert
            .basic_constraints()
            .map_err(|e| format!("`{subject}`: {e}"))?
            .ok_or_else(|| format!("`{subject}` has no basicConstraints: not a CA"))?;
        if !bc.value.ca {
            return Err(format!(
                "`{subject}` is not a CA (basicConstraints CA:FALSE)"
            ));
        }
        if let Some(ku) = cert.key_usage().map_err(|e| format!("`{subject}`: {e}"))?
            && !ku.value.key_cert_sign()
        {
            return Err(format!("`{subject}` may not sign certificates (keyUsage)"));
        }
        let key_alg = sig::key_algorithm(cert.public_key())
            .map_err(|k| format!("`{subject}` has an unsupported key type ({k})"))?;
        let own = bc.value.path_len_constraint;
        let remaining_path = match &parent {
            None => own,
            Some(p) => {
                let inherited = match p.remaining_path {
                    Some(0) => {
                        return Err(format!(
                            "`{}` may not have intermediate CAs below it (pathLenConstraint)",
                            p.subject
                        ));
                    }
                    Some(n) => Some(n - 1),
                    None => None,
                };
                match (inherited, own) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        };
        Ok(Self {
            subject_raw: cert.subject().as_raw().to_vec(),
            common_name: common_name(cert),
            subject,
            issuer_raw: cert.issuer().as_raw().to_vec(),
            serial: normalize_serial(cert.raw_serial()).to_vec(),
            ski: key_id(cert, false),
            key_alg,
            key: cert.public_key().subject_public_key.data.to_vec(),
            spki_sha256: sha256(cert.public_key().raw),
            der_sha256: sha256(der),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            remaining_path,
            parent,
        })
    }

    /// Whether this CA's key signed `cert`.
    fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        match sig::verifier(&cert.signature_algorithm, self.key_alg) {
            Some(alg) => sig::verify(
                alg,
                &self.key,
                cert.tbs_certificate.as_ref(),
                &cert.signature_value.data,
            ),
            None => false,
        }
    }

    /// AKI/SKI pre-filter: only rules a candidate out when both identifiers are present.
    fn may_have_signed(&self, aki: Option<&[u8]>) -> bool {
        match (aki, &self.ski) {
            (Some(a), Some(s)) => a == s.as_slice(),
            _ => true,
        }
    }

    fn path(self: &Arc<Self>) -> impl Iterator<Item = &CaNode> {
        std::iter::successors(Some(self.as_ref()), |n| n.parent.as_deref())
    }
}

fn check_time(subject: &str, not_before: i64, not_after: i64, now: i64) -> Result<(), Rejection> {
    if now < not_before {
        return Err(Rejection::NotYetValid {
            subject: subject.to_owned(),
            not_before,
        });
    }
    if now > not_after {
        return Err(Rejection::Expired {
            subject: subject.to_owned(),
            not_after,
        });
    }
    Ok(())
}

fn check_revocation(
    revocation: &dyn RevocationCheck,
    subject: &str,
    issuer_raw: &[u8],
    serial: &[u8],
) -> Result<(), Rejection> {
    match revocation.status(issuer_raw, serial) {
        RevocationStatus::Good => Ok(()),
        RevocationStatus::Revoked(reason) => Err(Rejection::Revoked {
            subject: subject.to_owned(),
            serial: hex::encode(serial),
            reason,
        }),
        RevocationStatus::Unknown => Err(Rejection::RevocationUnknown {
            subject: subject.to_owned(),
        }),
    }
}

type BySubject = HashMap<Vec<u8>, Vec<Arc<CaNode>>>;

/// The time-independent outcome of verifying a leaf: everything but validity at `now`,
/// revocation and the requirement, which are re-checked on every call.
#[derive(Debug)]
struct LeafEntry {
    subject: String,
    not_before: i64,
    not_after: i64,
    issuer_raw: Vec<u8>,
    serial: Vec<u8>,
    issuer: Arc<CaNode>,
    model: ModelUri,
    attestation: Attestation,
}

/// A warm trust store that verifies MIC chains. Cheap to share (`Arc<Verifier>`); `verify`
/// takes `&self` and may be called from many threads.
pub struct Verifier {
    anchors: BySubject,
    intermediates: RwLock<BySubject>,
    /// Leaves whose signature chain and contents were verified, by SHA-256 of their DER.
    leaves: RwLock<HashMap<[u8; 32], Arc<LeafEntry>>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "anchors",
                &self.anchors.values().map(Vec::len).sum::<usize>(),
            )
            .field("cached_intermediates", &self.cached_intermediates())
            .field(
                "cached_leaves",
                &self
                    .leaves
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len(),
            )
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier trusting these CA certificates (DER). Each must be a v3 CA
    /// certificate with a supported key; self-signed roots and intermediates alike may be
    /// anchors. Their signatures are not checked: they are trusted by configuration.
    pub fn new<C: AsRef<[u8]>>(trust_anchors: &[C]) -> Result<Self, Error> {
        if trust_anchors.is_empty() {
            return Err(Error::Certificate("no trust anchors given".into()));
        }
        let mut anchors = BySubject::new();
        for (i, der) in trust_anchors.iter().enumerate() {
            let der = der.as_ref();
            let node = parse_exact(der)
                .and_then(|cert| CaNode::new(&cert, der, None))
                .map_err(|e| Error::Certificate(format!("trust anchor {i}: {e}")))?;
            anchors
                .entry(node.subject_raw.clone())
                .or_default()
                .push(Arc::new(node));
        }
        Ok(Self {
            anchors,
            intermediates: RwLock::new(BySubject::new()),
            leaves: RwLock::new(HashMap::new()),
        })
    }

    /// Builds a verifier from a PEM bundle of anchors.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        Self::new(&crate::pem_to_der_chain(pem)?)
    }

    /// Verifies and caches an intermediate ahead of time, so peers may send only their leaf.
    pub fn add_intermediate(&self, der: &[u8], now: SystemTime) -> Result<(), Rejection> {
        let cert = parse_exact(der).map_err(|reason| Rejection::Malformed { index: 0, reason })?;
        let mut budget = SIGNATURE_BUDGET;
        let parent = self.find_issuer(&cert, &[] as &[&[u8]], 0, 0, &mut budget)?;
        let node = Arc::new(CaNode::new(&cert, der, Some(parent)).map_err(Rejection::BadChain)?);
        let now = unix_seconds(now);
        for n in node.path() {
            check_time(&n.subject, n.not_before, n.not_after, now)?;
        }
        self.cache(&node);
        Ok(())
    }

    /// Number of intermediates in the warm cache.
    pub fn cached_intermediates(&self) -> usize {
        self.read_cache().values().map(Vec::len).sum()
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, BySubject> {
        // A panic while holding the lock cannot leave the map half-updated (push is the only
        // mutation), so a poisoned lock is still consistent.
        self.intermediates
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cache(&self, node: &Arc<CaNode>) {
        let mut map = self
            .intermediates
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = map.values().map(Vec::len).sum();
        if total >= MAX_CACHED_INTERMEDIATES {
            return;
        }
        let list = map.entry(node.subject_raw.clone()).or_default();
        if !list.iter().any(|n| n.der_sha256 == node.der_sha256) {
            list.push(Arc::clone(node));
        }
    }

    /// Verifies a presented chain (leaf first, then intermediates in any order; a trust anchor
    /// may be included or left out) at `now`, checks revocation, decodes the MIC and checks
    /// `requirement`.
    pub fn verify<C: AsRef<[u8]>>(
        &self,
        chain: &[C],
        now: SystemTime,
        revocation: &dyn RevocationCheck,
        requirement: &Requirement,
    ) -> Result<VerifiedMic, Rejection> {
        let leaf_der = chain.first().ok_or(Rejection::EmptyChain)?.as_ref();
        if chain.len() > MAX_CHAIN_LEN {
            return Err(Rejection::BadChain(format!(
                "{} certificates presented, at most {MAX_CHAIN_LEN} accepted",
                chain.len()
            )));
        }
        let now = unix_seconds(now);
        let digest = sha256(leaf_der);
        let cached = self
            .leaves
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&digest)
            .cloned();
        let leaf = match cached {
            Some(leaf) => leaf,
            None => {
                let leaf = Arc::new(self.verify_leaf(leaf_der, &chain[1..], now)?);
                let mut leaves = self
                    .leaves
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if leaves.len() >= MAX_CACHED_LEAVES {
                    leaves.clear();
                }
                leaves.insert(digest, Arc::clone(&leaf));
                leaf
            }
        };
        Self::finish(&leaf, now, revocation, requirement)
    }

    /// Time-independent work on a leaf: parse, structure, signature chain to an anchor, MIC
    /// contents. Its result depends only on the leaf bytes, so it is cached by their digest.
    fn verify_leaf<C: AsRef<[u8]>>(
        &self,
        leaf_der: &[u8],
        pool: &[C],
        now: i64,
    ) -> Result<LeafEntry, Rejection> {
        let leaf =
            parse_exact(leaf_der).map_err(|reason| Rejection::Malformed { index: 0, reason })?;
        let subject = leaf.subject().to_string();
        let (not_before, not_after) = (
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
        );
        // Cheap refusals before any signature work.
        check_time(&subject, not_before, not_after, now)?;
        check_structure(&leaf).map_err(Rejection::BadChain)?;
        let malformed = |e: x509_parser::error::X509Error| Rejection::Malformed {
            index: 0,
            reason: e.to_string(),
        };
        if let Some(bc) = leaf.basic_constraints().map_err(malformed)?
            && bc.value.ca
        {
            return Err(Rejection::BadChain(format!(
                "leaf `{subject}` is a CA certificate"
            )));
        }
        if let Some(ku) = leaf.key_usage().map_err(malformed)?
            && !ku.value.digital_signature()
        {
            return Err(Rejection::BadChain(format!(
                "leaf `{subject}` lacks keyUsage digitalSignature"
            )));
        }

        let mut budget = SIGNATURE_BUDGET;
        let issuer = self.find_issuer(&leaf, pool, 0, 0, &mut budget)?;
        let (model, attestation) = mic_content(&leaf).map_err(|e| match e {
            MicContentError::NotAMic(m) => Rejection::NotAMic(m),
            MicContentError::Attestation(e) => Rejection::MalformedAttestation(e.to_string()),
        })?;
        Ok(LeafEntry {
            subject,
            not_before,
            not_after,
            issuer_raw: leaf.issuer().as_raw().to_vec(),
            serial: normalize_serial(leaf.raw_serial()).to_vec(),
            issuer,
            model,
            attestation,
        })
    }

    /// Time-, revocation- and requirement-dependent checks, run on every call.
    fn finish(
        leaf: &LeafEntry,
        now: i64,
        revocation: &dyn RevocationCheck,
        requirement: &Requirement,
    ) -> Result<VerifiedMic, Rejection> {
        check_time(&leaf.subject, leaf.not_before, leaf.not_after, now)?;
        for ca in leaf.issuer.path() {
            check_time(&ca.subject, ca.not_before, ca.not_after, now)?;
            if ca.parent.is_some() {
                check_revocation(revocation, &ca.subject, &ca.issuer_raw, &ca.serial)?;
            }
        }
        check_revocation(revocation, &leaf.subject, &leaf.issuer_raw, &leaf.serial)?;
        if !requirement.issuers.is_empty()
            && !leaf
                .issuer
                .path()
                .any(|ca| requirement.issuer_matches(&ca.common_name, &ca.spki_sha256))
        {
            return Err(Rejection::IssuerNotAccepted {
                issuer: leaf.issuer.common_name.clone(),
            });
        }
        requirement.check_attestation(&leaf.model, &leaf.attestation)?;
        let anchor = leaf
            .issuer
            .path()
            .last()
            .map(|a| a.common_name.clone())
            .unwrap_or_default();
        Ok(VerifiedMic {
            model: leaf.model.clone(),
            attestation: leaf.attestation.clone(),
            serial: hex::encode(&leaf.serial),
            not_after: leaf.not_after,
            issuer: leaf.issuer.common_name.clone(),
            anchor,
        })
    }

    /// Finds the verified CA that signed `cert`: a trust anchor, a cached intermediate, or a
    /// presented certificate (verified recursively, then cached). `used` marks pool entries
    /// already on the path being built, so a hostile pool cannot loop.
    fn find_issuer<C: AsRef<[u8]>>(
        &self,
        cert: &X509Certificate<'_>,
        pool: &[C],
        used: u32,
        depth: usize,
        budget: &mut u32,
    ) -> Result<Arc<CaNode>, Rejection> {
        let issuer_raw = cert.issuer().as_raw();
        let aki = key_id(cert, true);
        let aki = aki.as_deref();
        let mut saw_candidate = false;
        let mut first_failure: Option<Rejection> = None;

        let mut try_node = |node: &Arc<CaNode>, budget: &mut u32| -> Result<bool, Rejection> {
            if !node.may_have_signed(aki) {
                return Ok(false);
            }
            saw_candidate = true;
            spend(budget)?;
            Ok(node.signed(cert))
        };

        if let Some(list) = self.anchors.get(issuer_raw) {
            for node in list {
                if try_node(node, budget)? {
                    return Ok(Arc::clone(node));
                }
            }
        }
        let cached: Vec<Arc<CaNode>> = self
            .read_cache()
            .get(issuer_raw)
            .cloned()
            .unwrap_or_default();
        for node in &cached {
            if try_node(node, budget)? {
                return Ok(Arc::clone(node));
            }
        }

        if depth + 1 < MAX_CHAIN_LEN {
            for (i, der) in pool.iter().enumerate() {
                if used & (1 << i) != 0 {
                    continue;
                }
                let der = der.as_ref();
                let candidate = parse_exact(der).map_err(|reason| Rejection::Malformed {
                    index: i + 1,
                    reason,
                })?;
                let subject_raw = candidate.subject().as_raw();
                // A self-issued certificate can only be trusted as an anchor, which it is not.
                if subject_raw != issuer_raw || candidate.issuer().as_raw() == subject_raw {
                    continue;
                }
                if let (Some(a), Some(s)) = (aki, key_id(&candidate, false).as_deref())
                    && a != s
                {
                    continue;
                }
                saw_candidate = true;
                // A candidate that fails (no path, not a CA, path too long) does not end the
                // search: another presented certificate may still be the right issuer. The
                // first failure is reported if none is.
                let node = self
                    .find_issuer(&candidate, pool, used | (1 << i), depth + 1, budget)
                    .and_then(|parent| {
                        CaNode::new(&candidate, der, Some(parent)).map_err(Rejection::BadChain)
                    });
                match node {
                    Ok(node) => {
                        spend(budget)?;
                        let node = Arc::new(node);
                        if node.signed(cert) {
                            self.cache(&node);
                            return Ok(node);
                        }
                    }
                    Err(e) => {
                        first_failure.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(e) = first_failure {
            return Err(e);
        }

        if saw_candidate {
            Err(Rejection::BadChain(format!(
                "signature of `{}` does not verify with any key of issuer `{}`",
                cert.subject(),
                cert.issuer()
            )))
        } else {
            Err(Rejection::UntrustedIssuer {
                issuer: cert.issuer().to_string(),
            })
        }
    }
}

fn spend(budget: &mut u32) -> Result<(), Rejection> {
    if *budget == 0 {
        return Err(Rejection::BadChain(
            "too many candidate issuers (signature budget exhausted)".into(),
        ));
    }
    *budget -= 1;
    Ok(())
}
