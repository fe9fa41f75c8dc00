//! Descriptors written with names: the JSON/YAML form `nexctl` and SDKs accept and print.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::advert::parse_cost_micros;
use crate::id::{capability_id, claim_id, family_id};
use crate::sad::{ANY, Descriptor, MAX_FAN_OUT, Modalities, ProofBound, TrustLevel};

/// A descriptor written with names: the JSON/YAML form `nexctl` and SDKs accept and print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DescriptorSpec {
    /// Routing domain as `namespace/name`; omitted for the tenant's default domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Capabilities; the first is the class (what the P4 pipeline routes on).
    pub capabilities: Vec<String>,
    /// Model family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_family: Option<String>,
    /// Least context window, tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_context_window: Option<u32>,
    /// Latency bound, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<u32>,
    /// Price bound per 1,000 tokens, decimal US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_per_1k_tokens: Option<String>,
    /// Modalities required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modalities: Vec<nexus_crds::routing::Modality>,
    /// Least trust level.
    #[serde(default)]
    pub min_trust: TrustLevel,
    /// Endpoints per call (multipath).
    #[serde(default = "one")]
    pub fan_out: u8,
    /// Claims the MIC must carry (`benchmark:humaneval`, `issuer:Nexus Intermediate CA`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// Proofs shown at admission.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_proofs: Vec<ProofSpec>,
}

fn one() -> u8 {
    1
}

/// A proof requirement with a claim name and a decimal score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProofSpec {
    /// Claim name, e.g. `safety-eval`.
    pub claim: String,
    /// Minimum score, decimal with up to four fractional digits.
    pub threshold: String,
}

/// Parses a score with up to four decimals into the ×10⁴ fixed point `nexus-zk` proves over.
pub fn parse_score(text: &str) -> Result<u32, String> {
    let v = nexus_zk::parse_score(text).map_err(|e| e.to_string())?;
    u32::try_from(v).map_err(|_| format!("score `{text}` is too large"))
}

impl DescriptorSpec {
    /// The binary descriptor: names hashed to ids, lists sorted, bounds checked.
    pub fn to_descriptor(&self) -> Result<Descriptor, Error> {
        let (class, extra) = self
            .capabilities
            .split_first()
            .ok_or_else(|| Error::invalid("capabilities", "at least one capability"))?;
        let class = capability_id(class);
        let mut extra: Vec<u32> = extra
            .iter()
            .map(|n| capability_id(n))
            .filter(|&c| c != class)
            .collect();
        extra.sort_unstable();
        extra.dedup();
        let mut claims: Vec<u32> = self.required_claims.iter().map(|c| claim_id(c)).collect();
        claims.sort_unstable();
        claims.dedup();
        let mut proofs = Vec::with_capacity(self.required_proofs.len());
        for p in &self.required_proofs {
            let min_score = parse_score(&p.threshold)
                .map_err(|m| Error::invalid(format!("requiredProofs[{}]", p.claim), m))?;
            proofs.push(ProofBound {
                claim: claim_id(&p.claim),
                min_score,
            });
        }
        proofs.sort_unstable();
        proofs.dedup_by_key(|p| p.claim);
        let max_cost = match &self.max_cost_per_1k_tokens {
            None => ANY,
            Some(c) => {
                let m =
                    parse_cost_micros(c).map_err(|m| Error::invalid("maxCostPer1kTokens", m))?;
                u32::try_from(m).ok().filter(|&m| m != ANY).ok_or_else(|| {
                    Error::invalid("maxCostPer1kTokens", "at most 4294.967294 per 1k tokens")
                })?
            }
        };
        if self.fan_out == 0 || self.fan_out > MAX_FAN_OUT {
            return Err(Error::invalid("fanOut", "between 1 and 16"));
        }
        let domain = match &self.domain {
            None => 0,
            Some(d) => {
                let (ns, name) = d
                    .split_once('/')
                    .ok_or_else(|| Error::invalid("domain", "expected namespace/name"))?;
                crate::id::domain_id(ns, name)
            }
        };
        let d = Descriptor {
            domain,
            class,
            extra_capabilities: extra,
            model_family: self.model_family.as_deref().map_or(0, family_id),
            min_context: self.min_context_window.unwrap_or(0),
            max_latency_ms: self.max_latency_ms.map_or(Ok(ANY), |l| {
                if l == ANY {
                    Err(Error::invalid("maxLatencyMs", "too large"))
                } else {
                    Ok(l)
                }
            })?,
            max_cost,
            modalities: self.modalities.iter().fold(Modalities::default(), |m, x| {
                m.union(Modalities::from_crd(*x))
            }),
            min_trust: self.min_trust,
            fan_out: self.fan_out,
            required_claims: claims,
            required_proofs: proofs,
        };
        d.validate()?;
        Ok(d)
    }
}
