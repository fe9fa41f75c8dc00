//! Endpoint advertisements as the resolver sees them, and descriptors written with names.
//!
//! The CRD types (`nexus_crds::routing`) are the user-facing contract; these are the checked
//! domain types the resolver and the table compiler work on: names turned into ids, prices into
//! integer micro-dollars, and the trust an endpoint earned at admission.

#[cfg(feature = "control-plane")]
use crate::Error;
#[cfg(feature = "control-plane")]
use crate::id::{capability_id, family_id};
use crate::sad::{ANY, Modalities, ProofBound, TrustLevel};

/// Parses a price such as `"0.0020"` (US dollars per 1,000 tokens, up to six decimals) into
/// micro-dollars. No floats: `0.1 + 0.2` never enters a bill or a routing decision.
pub fn parse_cost_micros(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a price like 0.0020 (at most 6 decimals)");
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 9 || !digits(int) || !digits(frac) || frac.len() > 6 {
        return Err(bad());
    }
    if text.contains('.') && frac.is_empty() {
        return Err(bad());
    }
    let int: u64 = int.parse().map_err(|_| bad())?;
    let mut f: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| bad())?
    };
    for _ in frac.len()..6 {
        f *= 10;
    }
    int.checked_mul(1_000_000)
        .and_then(|v| v.checked_add(f))
        .ok_or_else(bad)
}

/// Formats micro-dollars as a decimal price (`2000` → `"0.002"`).
pub fn format_cost_micros(micros: u64) -> String {
    let (int, frac) = (micros / 1_000_000, micros % 1_000_000);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:06}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

/// One endpoint of a domain, ready for the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Endpoint name, unique in the domain.
    pub name: String,
    /// `host:port` of its NexLink overlay.
    pub address: String,
    /// Capability names, as advertised.
    pub capability_names: Vec<String>,
    /// Their ids, sorted and unique.
    pub capabilities: Vec<u32>,
    /// Model family name.
    pub model_family_name: String,
    /// Its id.
    pub model_family: u32,
    /// Context window in tokens (0: not stated).
    pub context_window: u32,
    /// Modalities supported.
    pub modalities: Modalities,
    /// Latency the endpoint commits to, ms.
    pub latency_sla_ms: Option<u32>,
    /// Price in micro-USD per 1,000 tokens.
    pub cost_micros: Option<u64>,
    /// Relative share of traffic; 0 drains the endpoint (never picked).
    pub weight: u32,
    /// Concurrent calls the endpoint takes before it counts as saturated (`None`: the resolver's
    /// default).
    pub max_in_flight: Option<u32>,
    /// Trust established at admission.
    pub trust: TrustLevel,
    /// Claim ids its verified MIC carries, sorted and unique (filled in by admission).
    pub claims: Vec<u32>,
    /// Proofs verified at admission: claim id and the proven minimum score, sorted by claim.
    pub proofs: Vec<ProofBound>,
}

#[cfg(feature = "control-plane")]
impl Advertisement {
    /// From the CRD form, before admission (trust `None`, no claims or proofs).
    pub fn from_crd(ep: &nexus_crds::routing::EndpointAdvertisement) -> Result<Self, Error> {
        let c = &ep.capability;
        let field = |f: &str| format!("endpoints[{}].capability.{f}", ep.name);
        if c.capabilities.is_empty() {
            return Err(Error::invalid(
                field("capabilities"),
                "at least one capability",
            ));
        }
        let mut caps: Vec<u32> = c.capabilities.iter().map(|n| capability_id(n)).collect();
        caps.sort_unstable();
        caps.dedup();
        let cost_micros = c
            .cost_per_1k_tokens
            .as_deref()
            .map(parse_cost_micros)
            .transpose()
            .map_err(|m| Error::invalid(field("costPer1kTokens"), m))?;
        let modalities = c.modalities.iter().fold(Modalities::default(), |m, x| {
            m.union(Modalities::from_crd(*x))
        });
        Ok(Advertisement {
            name: ep.name.clone(),
            address: ep.address.clone(),
            capability_names: c.capabilities.clone(),
            capabilities: caps,
            model_family_name: c.model_family.clone(),
            model_family: family_id(&c.model_family),
            context_window: c.context_window.unwrap_or(0),
            modalities,
            latency_sla_ms: c.latency_sla_ms,
            cost_micros,
            weight: ep.weight,
            max_in_flight: None,
            trust: TrustLevel::None,
            claims: Vec::new(),
            proofs: Vec::new(),
        })
    }
}

impl Advertisement {
    /// The list constraints of `d` only (additional capabilities, claims, proofs; not the
    /// class).
    pub fn satisfies_lists(&self, d: &crate::SadView<'_>) -> bool {
        d.extra_capabilities()
            .all(|id| self.capabilities.binary_search(&id).is_ok())
            && d.required_claims()
                .all(|c| self.claims.binary_search(&c).is_ok())
            && d.required_proofs().all(|need| {
                self.proofs
                    .binary_search_by_key(&need.claim, |p| p.claim)
                    .is_ok_and(|i| self.proofs[i].min_score >= need.min_score)
            })
    }

    /// Whether this endpoint satisfies every constraint of `d` (load aside).
    ///
    /// This is the reference semantics: the resolver's index must agree with it, and the
    /// property tests check that it does.
    pub fn satisfies(&self, d: &crate::SadView<'_>) -> bool {
        let has_cap = |id: u32| self.capabilities.binary_search(&id).is_ok();
        has_cap(d.class())
            && d.extra_capabilities().all(has_cap)
            && (d.model_family() == 0 || d.model_family() == self.model_family)
            && self.context_window >= d.min_context()
            && (d.max_latency_ms() == ANY
                || self.latency_sla_ms.is_some_and(|l| l <= d.max_latency_ms()))
            && (d.max_cost() == ANY
                || self
                    .cost_micros
                    .is_some_and(|c| c <= u64::from(d.max_cost())))
            && self.modalities.contains(d.modalities())
            && self.trust >= d.min_trust()
            && d.required_claims()
                .all(|c| self.claims.binary_search(&c).is_ok())
            && d.required_proofs().all(|need| {
                self.proofs
                    .binary_search_by_key(&need.claim, |p| p.claim)
                    .is_ok_and(|i| self.proofs[i].min_score >= need.min_score)
            })
    }
}

#[cfg(all(test, feature = "control-plane"))]
mod tests {
    use super::*;
    use crate::SadView;
    use crate::id::claim_id;
    use crate::spec::{DescriptorSpec, ProofSpec};

    #[test]
    fn prices_are_exact() {
        assert_eq!(parse_cost_micros("0.0020"), Ok(2_000));
        assert_eq!(parse_cost_micros("12"), Ok(12_000_000));
        assert_eq!(parse_cost_micros("0.000001"), Ok(1));
        assert!(parse_cost_micros("0.0000001").is_err());
        assert!(parse_cost_micros("1.").is_err());
        assert!(parse_cost_micros("-1").is_err());
        assert!(parse_cost_micros("").is_err());
        assert_eq!(format_cost_micros(2_000), "0.002");
        assert_eq!(format_cost_micros(12_000_000), "12");
    }

    fn crd(name: &str, caps: &[&str], ctx: u32, lat: u32, cost: &str) -> Advertisement {
        let ep: nexus_crds::routing::EndpointAdvertisement =
            serde_json::from_value(serde_json::json!({
                "name": name, "address": "10.0.0.1:7400",
                "capability": {"capabilities": caps, "modelFamily": "llm",
                    "contextWindow": ctx, "modalities": ["text"], "latencySlaMs": lat,
                    "costPer1kTokens": cost},
                "modelIdentityRef": {"name": name}, "weight": 50
            }))
            .expect("valid CRD json");
        Advertisement::from_crd(&ep).expect("valid")
    }

    #[test]
    fn descriptor_spec_matches_the_issue_example() {
        let spec: DescriptorSpec = serde_json::from_value(serde_json::json!({
            "capabilities": ["code-generation"], "modelFamily": "llm",
            "minContextWindow": 128000, "maxLatencyMs": 200, "modalities": ["text"]
        }))
        .expect("spec json");
        let bytes = spec
            .to_descriptor()
            .expect("valid")
            .to_bytes()
            .expect("encodes");
        let view = SadView::parse_exact(&bytes).expect("decodes");
        let fits = crd("a", &["code-generation", "chat"], 131_072, 180, "0.002");
        let slow = crd("b", &["code-generation"], 131_072, 250, "0.002");
        let small = crd("c", &["code-generation"], 32_000, 100, "0.002");
        let other = crd("d", &["chat"], 131_072, 100, "0.002");
        assert!(fits.satisfies(&view));
        assert!(!slow.satisfies(&view));
        assert!(!small.satisfies(&view));
        assert!(!other.satisfies(&view));
    }

    #[test]
    fn trust_claims_and_proofs_are_checked() {
        let spec = DescriptorSpec {
            capabilities: vec!["code-generation".into()],
            min_trust: TrustLevel::Proven,
            fan_out: 1,
            required_claims: vec!["benchmark:humaneval".into()],
            required_proofs: vec![ProofSpec {
                claim: "safety-eval".into(),
                threshold: "0.9".into(),
            }],
            ..Default::default()
        };
        let bytes = spec
            .to_descriptor()
            .expect("valid")
            .to_bytes()
            .expect("encodes");
        let view = SadView::parse_exact(&bytes).expect("decodes");
        let mut a = crd("a", &["code-generation"], 1, 1, "1");
        assert!(!a.satisfies(&view));
        a.trust = TrustLevel::Proven;
        a.claims = vec![claim_id("benchmark:humaneval")];
        assert!(!a.satisfies(&view), "no proof yet");
        a.proofs = vec![ProofBound {
            claim: claim_id("safety-eval"),
            min_score: 8_500,
        }];
        assert!(!a.satisfies(&view), "proof of a lower bound");
        a.proofs[0].min_score = 9_000;
        assert!(a.satisfies(&view));
    }

    #[test]
    fn bad_specs_are_refused() {
        let base = DescriptorSpec {
            capabilities: vec!["x".into()],
            fan_out: 1,
            ..Default::default()
        };
        let mut s = base.clone();
        s.capabilities.clear();
        assert!(s.to_descriptor().is_err());
        let mut s = base.clone();
        s.fan_out = 17;
        assert!(s.to_descriptor().is_err());
        let mut s = base.clone();
        s.max_cost_per_1k_tokens = Some("5000".into());
        assert!(s.to_descriptor().is_err());
        let mut s = base.clone();
        s.domain = Some("no-slash".into());
        assert!(s.to_descriptor().is_err());
        let mut s = base;
        s.required_proofs = vec![ProofSpec {
            claim: "x".into(),
            threshold: "0.12345".into(),
        }];
        assert!(s.to_descriptor().is_err());
    }
}
