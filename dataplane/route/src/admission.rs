//! Admission: which endpoints of a RoutingDomain may enter its routing table.
//!
//! Providers in LLM routers self-declare what their models do; here an endpoint is admitted
//! only on evidence. For each endpoint [`admit`] checks, in order:
//!
//! 1. its ModelIdentity has a MIC at all (`IdentityNotReady`);
//! 2. the MIC chain, with the `nexus-mic` verifier: structure and signatures to a trust anchor,
//!    validity at `now` (`Expired`, `NotYetValid`), revocation (`Revoked`,
//!    `RevocationUnknown` — fail closed), the domain's tenant (`WrongTenant`) and, when the
//!    policy names accepted issuers, that one of them is on the path (`UntrustedIssuer`);
//! 3. that the advertisement claims nothing the MIC does not attest — every advertised
//!    capability and modality, and no larger context window (`NotAttested`);
//! 4. the policy's required claims (`MissingClaim`), with `kind:name` meaning
//!    `capability:` an attested capability, `benchmark:`/`safety:` a benchmark or safety
//!    evaluation present (plain or committed), `provenance:` the publisher, the parent model
//!    (`name` or `name@version`) or a dataset digest (hex);
//! 5. the policy's required zero-knowledge proofs: the claim must be a *commitment* in the MIC
//!    (`MissingProof` otherwise, or when no proof is presented), and the presented Groth16
//!    proof must verify with `nexus-zk` against that commitment — taken from the verified
//!    certificate, never from the proof message — at no less than the required threshold
//!    (`ProofFailed`).
//!
//! Proofs presented beyond the required ones are verified too and, when valid, recorded (a
//! descriptor may ask for them); invalid extra proofs are ignored, not held against the endpoint.
//!
//! The admitted endpoint's [`TrustLevel`]: `Identified` under an empty trust policy, `Attested`
//! when the policy named issuers or claims, `Proven` when at least one proof verified. Its claim
//! set (matched by descriptors' required claims) holds `capability:`, `benchmark:`, `safety:`,
//! `provenance:<publisher>`, `issuer:<CN of the issuing CA>` and `proven:<claim>` entries.
//!
//! Pure: time, trust anchors, revocation data and the Groth16 verifying key are inputs.

use std::time::SystemTime;

use nexus_crds::routing::{
    AdmittedEndpoint, EndpointAdvertisement, RejectedEndpoint, RoutingDomainSpec, TrustRequirements,
};
use nexus_mic::{
    Attestation, ClaimValue, IssuerMatch, Rejection, Requirement, RevocationCheck, Verifier,
};

use crate::Error;
use crate::advert::Advertisement;
use crate::id::claim_id;
use crate::sad::{Modalities, ProofBound, TrustLevel};
use crate::spec::parse_score;

/// Why an endpoint was left out (the CamelCase `reason` in `RoutingDomain.status.rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Its ModelIdentity has no certificate yet.
    IdentityNotReady,
    /// The certificate or chain is malformed or structurally wrong, or is not a MIC.
    InvalidCertificate,
    /// No path to a trust anchor, or no accepted issuer on the path.
    UntrustedIssuer,
    /// A certificate on the path has expired.
    Expired,
    /// A certificate on the path is not valid yet.
    NotYetValid,
    /// A certificate on the path is revoked.
    Revoked,
    /// Revocation status unknown (stale CRL): refused, fail closed.
    RevocationUnknown,
    /// The model belongs to another tenant.
    WrongTenant,
    /// The advertisement claims something its MIC does not attest.
    NotAttested,
    /// A claim the domain requires is not in the MIC.
    MissingClaim,
    /// A proof the domain requires is missing, or the claim has no commitment to prove against.
    MissingProof,
    /// A presented proof does not verify.
    ProofFailed,
    /// The advertisement itself is malformed (e.g. a bad price).
    InvalidAdvertisement,
}

impl Reason {
    /// The CamelCase reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::IdentityNotReady => "IdentityNotReady",
            Reason::InvalidCertificate => "InvalidCertificate",
            Reason::UntrustedIssuer => "UntrustedIssuer",
            Reason::Expired => "Expired",
            Reason::NotYetValid => "NotYetValid",
            Reason::Revoked => "Revoked",
            Reason::RevocationUnknown => "RevocationUnknown",
            Reason::WrongTenant => "WrongTenant",
            Reason::NotAttested => "NotAttested",
            Reason::MissingClaim => "MissingClaim",
            Reason::MissingProof => "MissingProof",
            Reason::ProofFailed => "ProofFailed",
            Reason::InvalidAdvertisement => "InvalidAdvertisement",
        }
    }

    fn from_rejection(r: &Rejection) -> Reason {
        match r {
            Rejection::UntrustedIssuer { .. } | Rejection::IssuerNotAccepted { .. } => {
                Reason::UntrustedIssuer
            }
            Rejection::Expired { .. } => Reason::Expired,
            Rejection::NotYetValid { .. } => Reason::NotYetValid,
            Rejection::Revoked { .. } => Reason::Revoked,
            Rejection::RevocationUnknown { .. } => Reason::RevocationUnknown,
            Rejection::WrongTenant { .. } => Reason::WrongTenant,
            Rejection::MissingCapability(_)
            | Rejection::MissingModality(_)
            | Rejection::ContextTooSmall { .. }
            | Rejection::MissingBenchmark(_)
            | Rejection::MissingSafetyEvaluation(_) => Reason::MissingClaim,
            Rejection::MissingProof(_) => Reason::MissingProof,
            _ => Reason::InvalidCertificate,
        }
    }
}

/// One `kind:name` claim requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRequirement {
    /// `capability:NAME`
    Capability(String),
    /// `benchmark:NAME`
    Benchmark(String),
    /// `safety:NAME`
    Safety(String),
    /// `provenance:VALUE`
    Provenance(String),
}

impl ClaimRequirement {
    /// Parses `kind:name`.
    pub fn parse(s: &str) -> Result<ClaimRequirement, Error> {
        let (kind, name) = s
            .split_once(':')
            .filter(|(_, n)| !n.is_empty())
            .ok_or_else(|| Error::invalid("requiredClaims", format!("`{s}` is not kind:name")))?;
        let name = name.to_owned();
        Ok(match kind {
            "capability" => ClaimRequirement::Capability(name),
            "benchmark" => ClaimRequirement::Benchmark(name),
            "safety" => ClaimRequirement::Safety(name),
            "provenance" => ClaimRequirement::Provenance(name),
            _ => {
                return Err(Error::invalid(
                    "requiredClaims",
                    format!("`{s}`: kind must be capability, benchmark, safety or provenance"),
                ));
            }
        })
    }

    fn met_by(&self, a: &Attestation) -> bool {
        match self {
            ClaimRequirement::Capability(c) => a.capabilities.capabilities.iter().any(|x| x == c),
            ClaimRequirement::Benchmark(b) => a.benchmark(b).is_some(),
            ClaimRequirement::Safety(s) => a.safety_evaluation(s).is_some(),
            ClaimRequirement::Provenance(p) => {
                let prov = &a.provenance;
                prov.publisher == *p
                    || prov
                        .parent_model
                        .as_deref()
                        .is_some_and(|m| m == p || m.split_once('@').is_some_and(|(n, _)| n == p))
                    || prov.dataset_digests.iter().any(|d| d.to_string() == *p)
            }
        }
    }
}

/// A RoutingDomain's trust policy, parsed and checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    /// The domain's tenant: every MIC must name it.
    pub tenant: String,
    /// Accepted issuer common names; empty accepts any CA chaining to the trust anchors.
    pub accepted_issuers: Vec<String>,
    /// Claims every MIC must carry.
    pub required_claims: Vec<ClaimRequirement>,
    /// (claim name, threshold ×10⁴) proofs every endpoint must present.
    pub required_proofs: Vec<(String, u64)>,
}

impl TrustPolicy {
    /// From the CRD's `spec.tenant` and `spec.policy.trust`.
    pub fn from_crd(tenant: &str, trust: Option<&TrustRequirements>) -> Result<TrustPolicy, Error> {
        let empty = TrustRequirements::default();
        let t = trust.unwrap_or(&empty);
        let required_claims = t
            .required_claims
            .iter()
            .map(|c| ClaimRequirement::parse(c))
            .collect::<Result<_, _>>()?;
        let mut required_proofs = Vec::with_capacity(t.required_proofs.len());
        for p in &t.required_proofs {
            let th = parse_score(&p.threshold)
                .map_err(|m| Error::invalid(format!("requiredProofs[{}].threshold", p.claim), m))?;
            required_proofs.push((p.claim.clone(), u64::from(th)));
        }
        Ok(TrustPolicy {
            tenant: tenant.to_owned(),
            accepted_issuers: t.accepted_issuers.clone(),
            required_claims,
            required_proofs,
        })
    }

    fn requirement(&self) -> Requirement {
        Requirement {
            tenant: Some(self.tenant.clone()),
            issuers: self
                .accepted_issuers
                .iter()
                .map(|cn| IssuerMatch::CommonName(cn.clone()))
                .collect(),
            ..Requirement::default()
        }
    }

    fn base_trust(&self) -> TrustLevel {
        if self.accepted_issuers.is_empty() && self.required_claims.is_empty() {
            TrustLevel::Identified
        } else {
            TrustLevel::Attested
        }
    }
}

/// What an endpoint presents: its MIC chain (leaf first, DER) and its proofs.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The chain from its ModelIdentity's Secret (`tls.crt`); `None` while it has none.
    pub chain: Option<&'a [Vec<u8>]>,
    /// Claim proofs made with `nexctl zk prove` (or `nexus_zk::ClaimProof::create`).
    pub proofs: &'a [nexus_zk::ClaimProof],
}

/// What admission checks against; all inputs, no I/O.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// Trust anchors (the cluster's CA roots), warm.
    pub verifier: &'a Verifier,
    /// Revocation source (CRL set from the CA).
    pub revocation: &'a dyn RevocationCheck,
    /// The CA's published Groth16 verifying key; `None` fails every required proof.
    pub zk_key: Option<&'a nexus_zk::VerifyingKey>,
    /// The time to judge validity at.
    pub now: SystemTime,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("verifier", self.verifier)
            .field("zk_key", &self.zk_key.is_some())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// An endpoint admitted into the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The advertisement with trust, claims and proofs filled in.
    pub advertisement: Advertisement,
    /// SHA-256 of the leaf certificate (hex).
    pub fingerprint: String,
    /// Leaf serial (hex).
    pub serial: String,
    /// Leaf notAfter, Unix seconds: the endpoint must be re-admitted before then.
    pub not_after: i64,
}

/// An endpoint left out, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Endpoint name.
    pub name: String,
    /// Why.
    pub reason: Reason,
    /// Detail for humans.
    pub message: String,
}

/// The verdict on one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Into the table.
    Admitted(Box<Admitted>),
    /// Left out.
    Rejected(Rejected),
}

fn reject(ep: &EndpointAdvertisement, reason: Reason, message: impl Into<String>) -> Decision {
    Decision::Rejected(Rejected {
        name: ep.name.clone(),
        reason,
        message: message.into(),
    })
}

/// Decides one endpoint (see the module docs for the order of checks).
pub fn admit(
    policy: &TrustPolicy,
    ctx: &Context<'_>,
    ep: &EndpointAdvertisement,
    evidence: &Evidence<'_>,
) -> Decision {
    let mut advert = match Advertisement::from_crd(ep) {
        Ok(a) => a,
        Err(e) => return reject(ep, Reason::InvalidAdvertisement, e.to_string()),
    };
    let Some(chain) = evidence.chain.filter(|c| !c.is_empty()) else {
        return reject(
            ep,
            Reason::IdentityNotReady,
            format!(
                "ModelIdentity `{}` has no certificate yet",
                ep.model_identity_ref.name
            ),
        );
    };
    let verified = match ctx
        .verifier
        .verify(chain, ctx.now, ctx.revocation, &policy.requirement())
    {
        Ok(v) => v,
        Err(r) => return reject(ep, Reason::from_rejection(&r), r.to_string()),
    };
    let att = &verified.attestation;

    // 3. Nothing advertised beyond what the MIC attests.
    for c in &advert.capability_names {
        if !att.capabilities.capabilities.iter().any(|x| x == c) {
            return reject(
                ep,
                Reason::NotAttested,
                format!("advertises capability `{c}`, which its MIC does not attest"),
            );
        }
    }
    if u64::from(advert.context_window) > att.capabilities.context_window {
        return reject(
            ep,
            Reason::NotAttested,
            format!(
                "advertises a context window of {} tokens, its MIC attests {}",
                advert.context_window, att.capabilities.context_window
            ),
        );
    }
    let attested_modalities = att
        .capabilities
        .modalities
        .iter()
        .filter_map(|m| Modalities::from_name(m))
        .fold(Modalities::default(), Modalities::union);
    if !attested_modalities.contains(advert.modalities) {
        return reject(
            ep,
            Reason::NotAttested,
            format!(
                "advertises modalities {:?}, its MIC attests {:?}",
                advert.modalities.names(),
                att.capabilities.modalities
            ),
        );
    }

    // 4. Required claims.
    for (req, text) in policy
        .required_claims
        .iter()
        .zip(required_claim_texts(policy))
    {
        if !req.met_by(att) {
            return reject(
                ep,
                Reason::MissingClaim,
                format!("MIC lacks the required claim `{text}`"),
            );
        }
    }

    // 5. Proofs: required ones must verify; extra valid ones are recorded.
    let mut proven: Vec<ProofBound> = Vec::new();
    for (claim, threshold) in &policy.required_proofs {
        let digest = match committed(att, claim) {
            Committed::Commitment(d) => d,
            Committed::Plain => {
                return reject(
                    ep,
                    Reason::MissingProof,
                    format!("claim `{claim}` is in the MIC as a plain value, not a commitment"),
                );
            }
            Committed::Absent => {
                return reject(
                    ep,
                    Reason::MissingProof,
                    format!("claim `{claim}` is not in the MIC"),
                );
            }
        };
        let Some(proof) = evidence.proofs.iter().find(|p| &p.claim == claim) else {
            return reject(
                ep,
                Reason::MissingProof,
                format!("no proof presented for `{claim}`"),
            );
        };
        match check_proof(ctx, proof, &digest, *threshold) {
            Ok(()) => proven.push(ProofBound {
                claim: claim_id(claim),
                min_score: u32::try_from(proof.threshold).unwrap_or(u32::MAX),
            }),
            Err(m) => {
                return reject(ep, Reason::ProofFailed, format!("proof for `{claim}`: {m}"));
            }
        }
    }
    for proof in evidence.proofs {
        let id = claim_id(&proof.claim);
        if proven.iter().any(|p| p.claim == id) {
            continue;
        }
        if let Committed::Commitment(d) = committed(att, &proof.claim)
            && check_proof(ctx, proof, &d, 0).is_ok()
        {
            proven.push(ProofBound {
                claim: id,
                min_score: u32::try_from(proof.threshold).unwrap_or(u32::MAX),
            });
        }
    }
    proven.sort_unstable();
    proven.dedup_by_key(|p| p.claim);

    let mut claims: Vec<u32> = Vec::new();
    for c in &att.capabilities.capabilities {
        claims.push(claim_id(&format!("capability:{c}")));
    }
    for b in &att.benchmarks {
        claims.push(claim_id(&format!("benchmark:{}", b.name)));
    }
    for s in &att.safety_evaluations {
        claims.push(claim_id(&format!("safety:{}", s.name)));
    }
    claims.push(claim_id(&format!(
        "provenance:{}",
        att.provenance.publisher
    )));
    claims.push(claim_id(&format!("issuer:{}", verified.issuer)));
    for p in &policy.required_proofs {
        claims.push(claim_id(&format!("proven:{}", p.0)));
    }
    for p in evidence.proofs {
        if proven.iter().any(|b| b.claim == claim_id(&p.claim)) {
            claims.push(claim_id(&format!("proven:{}", p.claim)));
        }
    }
    claims.sort_unstable();
    claims.dedup();

    advert.trust = if proven.is_empty() {
        policy.base_trust()
    } else {
        TrustLevel::Proven
    };
    advert.claims = claims;
    advert.proofs = proven;
    Decision::Admitted(Box::new(Admitted {
        advertisement: advert,
        fingerprint: nexus_mic::fingerprint_sha256(&chain[0]),
        serial: verified.serial,
        not_after: verified.not_after,
    }))
}

fn required_claim_texts(policy: &TrustPolicy) -> impl Iterator<Item = String> + '_ {
    policy.required_claims.iter().map(|c| match c {
        ClaimRequirement::Capability(n) => format!("capability:{n}"),
        ClaimRequirement::Benchmark(n) => format!("benchmark:{n}"),
        ClaimRequirement::Safety(n) => format!("safety:{n}"),
        ClaimRequirement::Provenance(n) => format!("provenance:{n}"),
    })
}

enum Committed {
    Commitment([u8; 32]),
    Plain,
    Absent,
}

fn committed(att: &Attestation, claim: &str) -> Committed {
    match att
        .benchmark(claim)
        .or_else(|| att.safety_evaluation(claim))
        .map(|c| &c.value)
    {
        Some(ClaimValue::Commitment(d)) => Committed::Commitment(d.0),
        Some(ClaimValue::Plain(_)) => Committed::Plain,
        None => Committed::Absent,
    }
}

fn check_proof(
    ctx: &Context<'_>,
    proof: &nexus_zk::ClaimProof,
    digest: &[u8; 32],
    min_threshold: u64,
) -> Result<(), String> {
    let vk = ctx.zk_key.ok_or("no Groth16 verifying key is configured")?;
    let commitment = nexus_zk::Commitment::from_bytes(digest)
        .map_err(|e| format!("the MIC's commitment is not a valid field element: {e}"))?;
    proof
        .verify_against(vk, &commitment, min_threshold)
        .map_err(|e| e.to_string())
}

/// The verdicts on a whole domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainAdmission {
    /// Admitted endpoints, in spec order.
    pub admitted: Vec<Admitted>,
    /// Rejected endpoints, in spec order.
    pub rejected: Vec<Rejected>,
}

impl DomainAdmission {
    /// The earliest leaf expiry among the admitted: when admission must run again so an
    /// expiring MIC withdraws its endpoint in the next push.
    pub fn next_expiry(&self) -> Option<i64> {
        self.admitted.iter().map(|a| a.not_after).min()
    }

    /// `status.admitted` entries.
    pub fn status_admitted(&self) -> Vec<AdmittedEndpoint> {
        self.admitted
            .iter()
            .map(|a| AdmittedEndpoint {
                name: a.advertisement.name.clone(),
                certificate_fingerprint: Some(a.fingerprint.clone()),
            })
            .collect()
    }

    /// `status.rejected` entries (message cut to the CRD's 1,024 characters).
    pub fn status_rejected(&self) -> Vec<RejectedEndpoint> {
        self.rejected
            .iter()
            .map(|r| RejectedEndpoint {
                name: r.name.clone(),
                reason: r.reason.as_str().to_owned(),
                message: r.message.chars().take(1024).collect(),
            })
            .collect()
    }
}

/// Decides every endpoint of a domain; `evidence` supplies each endpoint's MIC chain and proofs
/// (from its ModelIdentity's Secret). An unparseable policy rejects nothing and returns the error.
pub fn admit_domain<'e>(
    spec: &RoutingDomainSpec,
    ctx: &Context<'_>,
    mut evidence: impl FnMut(&EndpointAdvertisement) -> Evidence<'e>,
) -> Result<DomainAdmission, Error> {
    let policy = TrustPolicy::from_crd(
        &spec.tenant,
        spec.policy.as_ref().and_then(|p| p.trust.as_ref()),
    )?;
    let mut out = DomainAdmission::default();
    for ep in &spec.endpoints {
        match admit(&policy, ctx, ep, &evidence(ep)) {
            Decision::Admitted(a) => out.admitted.push(*a),
            Decision::Rejected(r) => out.rejected.push(r),
        }
    }
    Ok(out)
}

/// Parses the proofs an endpoint presents: a JSON array of `nexus-zk` claim proofs, as
/// `nexctl zk prove` writes them (one object) or several in an array.
pub fn parse_proofs_json(text: &str) -> Result<Vec<nexus_zk::ClaimProof>, Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let items = match value {
        serde_json::Value::Array(a) => a,
        v @ serde_json::Value::Object(_) => vec![v],
        _ => return Err(Error::invalid("proofs", "expected a JSON object or array")),
    };
    if items.len() > 16 {
        return Err(Error::invalid("proofs", "at most 16 proofs"));
    }
    items
        .into_iter()
        .map(|v| {
            nexus_zk::ClaimProof::from_json(&v.to_string())
                .map_err(|e| Error::invalid("proofs", e.to_string()))
        })
        .collect()
}
