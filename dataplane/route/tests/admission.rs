//! Admission with real parts: MICs issued by a real CA hierarchy (`nexus-mic`), revocation by a
//! signed CRL, and Groth16 proofs made and verified with `nexus-zk`.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use nexus_crds::routing::{EndpointAdvertisement, RoutingDomainSpec};
use nexus_mic::attestation::{Capabilities, Claim, Provenance, Score};
use nexus_mic::{
    Attestation, CertificateAuthority, ClaimValue, CrlSet, Csr, Digest32, MicRequest, ModelUri,
    NoRevocation, RevocationReason, RevokedEntry, Verifier, generate_model_key,
};
use nexus_route::admission::{self, Context, Decision, Evidence, Reason, TrustPolicy};
use nexus_route::id::claim_id;
use nexus_route::{Descriptor, SadView, TrustLevel};

const DAY: Duration = Duration::from_secs(86_400);

struct Pki {
    root: CertificateAuthority,
    ca: CertificateAuthority,
    rogue: CertificateAuthority,
    pk: nexus_zk::ProvingKey,
    vk: nexus_zk::VerifyingKey,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let now = SystemTime::now();
        let root =
            CertificateAuthority::new_root("Nexus Root CA", now - DAY, 3650 * DAY).expect("root");
        let ca = root
            .new_intermediate("Nexus Intermediate CA", now - DAY, 365 * DAY)
            .expect("intermediate");
        let rogue = root
            .new_intermediate("Shady Issuer", now - DAY, 365 * DAY)
            .expect("other intermediate");
        let (pk, vk) = nexus_zk::setup(&mut nexus_zk::os_rng().expect("rng")).expect("setup");
        Pki {
            root,
            ca,
            rogue,
            pk,
            vk,
        }
    })
}

/// A model's MIC and the secret opening of its committed safety score.
struct Model {
    chain: Vec<Vec<u8>>,
    safety_score: u64,
    blinding: nexus_zk::Blinding,
}

fn issue(
    ca: &CertificateAuthority,
    tenant: &str,
    capabilities: &[&str],
    context: u64,
    safety_score: u64,
    not_before: SystemTime,
    validity: Duration,
) -> Model {
    let model = ModelUri::new(tenant, "coder-70b", "2.1.0").expect("uri");
    let key = generate_model_key(&model).expect("key");
    let csr = Csr::from_pem(&key.csr_pem).expect("csr");
    let blinding = nexus_zk::random_blinding().expect("blinding");
    let commitment = nexus_zk::commit(safety_score, &blinding);
    let attestation = Attestation {
        architecture_hash: Digest32([7; 32]),
        provenance: Provenance {
            dataset_digests: vec![],
            publisher: "Acme AI Research".into(),
            parent_model: Some("coder-base-70b@1.0.0".into()),
        },
        capabilities: Capabilities {
            capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
            context_window: context,
            modalities: vec!["text".into()],
        },
        benchmarks: vec![Claim {
            name: "humaneval".into(),
            value: ClaimValue::Plain(Score(872_000)),
            threshold: None,
        }],
        safety_evaluations: vec![Claim {
            name: "safety-eval".into(),
            value: ClaimValue::Commitment(Digest32(commitment.to_bytes())),
            threshold: None,
        }],
        endorsements: vec![],
    };
    let mic = ca
        .issue_mic(&MicRequest {
            csr: &csr,
            model: &model,
            attestation: &attestation,
            not_before,
            validity,
        })
        .expect("issued");
    Model {
        chain: vec![mic.der, ca.cert_der().to_vec()],
        safety_score,
        blinding,
    }
}

fn good_model() -> Model {
    issue(
        &pki().ca,
        "acme",
        &["code-generation", "chat", "tool-use"],
        131_072,
        9_731,
        SystemTime::now() - Duration::from_secs(60),
        DAY,
    )
}

fn prove(m: &Model, threshold: u64) -> nexus_zk::ClaimProof {
    nexus_zk::ClaimProof::create(
        &pki().pk,
        "safety-eval",
        m.safety_score,
        &m.blinding,
        threshold,
    )
    .expect("proof")
}

fn domain() -> RoutingDomainSpec {
    serde_json::from_value(serde_json::json!({
        "tenant": "acme",
        "fabricRef": {"name": "gpu-east"},
        "endpoints": [{
            "name": "coder-a", "address": "10.20.0.17:7400",
            "capability": {"capabilities": ["code-generation", "chat"], "modelFamily": "llm",
                           "contextWindow": 131072, "modalities": ["text"], "latencySlaMs": 180,
                           "costPer1kTokens": "0.0020"},
            "modelIdentityRef": {"name": "coder-70b"}, "weight": 70
        }],
        "policy": {"trust": {
            "acceptedIssuers": ["Nexus Intermediate CA"],
            "requiredClaims": ["capability:code-generation", "benchmark:humaneval", "provenance:Acme AI Research"],
            "requiredProofs": [{"claim": "safety-eval", "threshold": "0.9"}]
        }}
    }))
    .expect("valid RoutingDomain spec")
}

fn endpoint(spec: &RoutingDomainSpec) -> &EndpointAdvertisement {
    &spec.endpoints[0]
}

fn verifier() -> Verifier {
    Verifier::new(&[pki().root.cert_der()]).expect("verifier")
}

fn decide(
    spec: &RoutingDomainSpec,
    m: Option<&Model>,
    proofs: &[nexus_zk::ClaimProof],
    revocation: &dyn nexus_mic::RevocationCheck,
    now: SystemTime,
) -> Decision {
    let policy = TrustPolicy::from_crd(
        &spec.tenant,
        spec.policy.as_ref().and_then(|p| p.trust.as_ref()),
    )
    .expect("policy");
    let v = verifier();
    let ctx = Context {
        verifier: &v,
        revocation,
        zk_key: Some(&pki().vk),
        now,
    };
    admission::admit(
        &policy,
        &ctx,
        endpoint(spec),
        &Evidence {
            chain: m.map(|m| m.chain.as_slice()),
            proofs,
        },
    )
}

fn reason(d: &Decision) -> Option<(Reason, String)> {
    match d {
        Decision::Rejected(r) => Some((r.reason, r.message.clone())),
        Decision::Admitted(_) => None,
    }
}

#[test]
fn a_mic_that_meets_the_policy_with_a_valid_proof_is_admitted_as_proven() {
    let spec = domain();
    let m = good_model();
    let d = decide(
        &spec,
        Some(&m),
        &[prove(&m, 9_000)],
        &NoRevocation,
        SystemTime::now(),
    );
    let Decision::Admitted(a) = d else {
        panic!("rejected: {d:?}");
    };
    assert_eq!(a.advertisement.trust, TrustLevel::Proven);
    assert_eq!(a.fingerprint, nexus_mic::fingerprint_sha256(&m.chain[0]));
    let ad = &a.advertisement;
    assert!(
        ad.claims
            .contains(&claim_id("issuer:Nexus Intermediate CA"))
    );
    assert!(ad.claims.contains(&claim_id("proven:safety-eval")));
    assert_eq!(ad.proofs.len(), 1);
    assert_eq!(ad.proofs[0].min_score, 9_000);

    // A descriptor asking for "safety proven ≥ 0.9 from the Nexus CA" matches it; ≥ 0.95 does not.
    let spec_json = |t: &str| {
        serde_json::json!({"capabilities": ["code-generation"], "minTrust": "proven",
            "requiredClaims": ["issuer:Nexus Intermediate CA"],
            "requiredProofs": [{"claim": "safety-eval", "threshold": t}]})
    };
    for (t, want) in [("0.9", true), ("0.95", false)] {
        let s: nexus_route::DescriptorSpec = serde_json::from_value(spec_json(t)).expect("spec");
        let b = s
            .to_descriptor()
            .and_then(|d: Descriptor| Ok(d.to_bytes()?))
            .expect("bytes");
        assert_eq!(
            ad.satisfies(&SadView::parse_exact(&b).expect("view")),
            want,
            "threshold {t}"
        );
    }
}

fn serial_bytes(s: &str) -> Vec<u8> {
    let h: String = s.chars().filter(char::is_ascii_hexdigit).collect();
    let h = if h.len() % 2 == 1 { format!("0{h}") } else { h };
    hex::decode(h).expect("hex serial")
}

#[test]
fn each_rejection_reason() {
    let spec = domain();
    let now = SystemTime::now();
    let m = good_model();
    let ok_proof = prove(&m, 9_000);

    // No certificate yet.
    let (r, msg) = reason(&decide(&spec, None, &[], &NoRevocation, now)).expect("rejected");
    assert_eq!(r, Reason::IdentityNotReady);
    assert!(msg.contains("coder-70b"), "{msg}");

    // Issued by a CA the domain does not accept (same root).
    let rogue = issue(
        &pki().rogue,
        "acme",
        &["code-generation", "chat"],
        131_072,
        9_731,
        now - Duration::from_secs(60),
        DAY,
    );
    let p = prove(&rogue, 9_000);
    assert_eq!(
        reason(&decide(&spec, Some(&rogue), &[p], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::UntrustedIssuer)
    );

    // Self-made chain: a root the verifier does not trust.
    let other_root =
        CertificateAuthority::new_root("Other Root", now - DAY, 10 * DAY).expect("root");
    let other_ca = other_root
        .new_intermediate("Nexus Intermediate CA", now - DAY, 5 * DAY)
        .expect("ca");
    let forged = issue(
        &other_ca,
        "acme",
        &["code-generation", "chat"],
        131_072,
        9_731,
        now - Duration::from_secs(60),
        DAY,
    );
    let p = prove(&forged, 9_000);
    assert_eq!(
        reason(&decide(&spec, Some(&forged), &[p], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::UntrustedIssuer)
    );

    // Expired (judged an hour after notAfter), and not yet valid.
    let (r, _) = reason(&decide(
        &spec,
        Some(&m),
        std::slice::from_ref(&ok_proof),
        &NoRevocation,
        now + DAY + Duration::from_secs(3600),
    ))
    .expect("rejected");
    assert_eq!(r, Reason::Expired);
    let (r, _) = reason(&decide(
        &spec,
        Some(&m),
        std::slice::from_ref(&ok_proof),
        &NoRevocation,
        now - Duration::from_secs(3600),
    ))
    .expect("rejected");
    assert_eq!(r, Reason::NotYetValid);

    // Revoked, through a CRL signed by the intermediate.
    let leaf = nexus_mic::Mic::from_der(&m.chain[0]).expect("mic");
    let crl = pki()
        .ca
        .sign_crl(
            &[RevokedEntry {
                serial: serial_bytes(&leaf.serial),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            }],
            now,
            now + DAY,
            1,
        )
        .expect("crl");
    let mut crls = CrlSet::new();
    crls.add_crl(&crl, pki().ca.cert_der())
        .expect("crl verifies");
    let (r, msg) = reason(&decide(
        &spec,
        Some(&m),
        std::slice::from_ref(&ok_proof),
        &crls,
        now,
    ))
    .expect("rejected");
    assert_eq!(r, Reason::Revoked, "{msg}");

    // Another tenant's model.
    let other = issue(
        &pki().ca,
        "globex",
        &["code-generation", "chat"],
        131_072,
        9_731,
        now - Duration::from_secs(60),
        DAY,
    );
    let p = prove(&other, 9_000);
    assert_eq!(
        reason(&decide(&spec, Some(&other), &[p], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::WrongTenant)
    );

    // Advertises more than attested: `chat` not in the MIC, or a bigger context window.
    let narrow = issue(
        &pki().ca,
        "acme",
        &["code-generation"],
        131_072,
        9_731,
        now - Duration::from_secs(60),
        DAY,
    );
    let p = prove(&narrow, 9_000);
    let (r, msg) =
        reason(&decide(&spec, Some(&narrow), &[p], &NoRevocation, now)).expect("rejected");
    assert_eq!(r, Reason::NotAttested);
    assert!(msg.contains("chat"), "{msg}");
    let short = issue(
        &pki().ca,
        "acme",
        &["code-generation", "chat"],
        32_000,
        9_731,
        now - Duration::from_secs(60),
        DAY,
    );
    let p = prove(&short, 9_000);
    assert_eq!(
        reason(&decide(&spec, Some(&short), &[p], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::NotAttested)
    );

    // A required claim the MIC lacks.
    let mut strict = domain();
    if let Some(t) = strict.policy.as_mut().and_then(|p| p.trust.as_mut()) {
        t.required_claims.push("benchmark:mbpp".into());
    }
    let (r, msg) = reason(&decide(
        &strict,
        Some(&m),
        std::slice::from_ref(&ok_proof),
        &NoRevocation,
        now,
    ))
    .expect("rejected");
    assert_eq!(
        (r, msg.contains("benchmark:mbpp")),
        (Reason::MissingClaim, true),
        "{msg}"
    );

    // No proof presented; a proof of a plain (uncommitted) claim is impossible.
    assert_eq!(
        reason(&decide(&spec, Some(&m), &[], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::MissingProof)
    );
    let mut plain = domain();
    if let Some(t) = plain.policy.as_mut().and_then(|p| p.trust.as_mut()) {
        t.required_proofs[0].claim = "humaneval".into();
    }
    assert_eq!(
        reason(&decide(&plain, Some(&m), &[], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::MissingProof)
    );

    // Proofs that do not hold: below the required threshold, about another model's
    // commitment, or tampered with.
    let low = prove(&m, 8_000);
    let (r, msg) = reason(&decide(&spec, Some(&m), &[low], &NoRevocation, now)).expect("rejected");
    assert_eq!(r, Reason::ProofFailed, "{msg}");
    let theirs = prove(&other, 9_000);
    assert_eq!(
        reason(&decide(&spec, Some(&m), &[theirs], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::ProofFailed)
    );
    let mut tampered = ok_proof.clone();
    tampered.threshold = 9_500; // claims more than the proof shows
    assert_eq!(
        reason(&decide(&spec, Some(&m), &[tampered], &NoRevocation, now)).map(|r| r.0),
        Some(Reason::ProofFailed)
    );
}

#[test]
fn a_domain_reports_admitted_and_rejected_with_camel_case_reasons() {
    let mut spec = domain();
    let mut second = spec.endpoints[0].clone();
    second.name = "coder-b".into();
    second.model_identity_ref.name = "coder-70b-b".into();
    spec.endpoints.push(second);
    let m = good_model();
    let proofs = vec![prove(&m, 9_000)];
    let v = verifier();
    let ctx = Context {
        verifier: &v,
        revocation: &NoRevocation,
        zk_key: Some(&pki().vk),
        now: SystemTime::now(),
    };
    let out = admission::admit_domain(&spec, &ctx, |ep| Evidence {
        chain: (ep.name == "coder-a").then_some(m.chain.as_slice()),
        proofs: &proofs,
    })
    .expect("policy parses");
    assert_eq!(out.status_admitted().len(), 1);
    let rejected = out.status_rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].name, "coder-b");
    assert_eq!(rejected[0].reason, "IdentityNotReady");
    // Re-run admission before the first MIC expires.
    let na = out.next_expiry().expect("one admitted");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    assert!(na > now && na <= now + 86_400, "{na} vs {now}");
}

#[test]
fn bad_policies_and_proof_files_are_refused() {
    let mut spec = domain();
    if let Some(t) = spec.policy.as_mut().and_then(|p| p.trust.as_mut()) {
        t.required_claims.push("vibes:good".into());
    }
    let v = verifier();
    let ctx = Context {
        verifier: &v,
        revocation: &NoRevocation,
        zk_key: None,
        now: SystemTime::now(),
    };
    assert!(
        admission::admit_domain(&spec, &ctx, |_| Evidence {
            chain: None,
            proofs: &[]
        })
        .is_err()
    );

    let m = good_model();
    let p = prove(&m, 9_000);
    let one = admission::parse_proofs_json(&p.to_json()).expect("one object");
    assert_eq!(one.len(), 1);
    let two =
        admission::parse_proofs_json(&format!("[{},{}]", p.to_json(), p.to_json())).expect("array");
    assert_eq!(two.len(), 2);
    assert!(admission::parse_proofs_json("42").is_err());
    assert!(admission::parse_proofs_json("[{\"scheme\": \"x\"}]").is_err());
}
