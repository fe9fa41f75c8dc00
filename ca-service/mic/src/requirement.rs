//! What a peer demands of a model: the policy side of verification.
//!
//! # String syntax
//!
//! Used by `nexctl` flags, RoutingDomain policies and logs. Clauses separated by `,`,
//! surrounding whitespace ignored, every clause optional, repeatable ones are ANDed:
//!
//! | clause                  | meaning                                                        |
//! |-------------------------|----------------------------------------------------------------|
//! | `capability=NAME`       | the attestation lists capability NAME (repeatable)             |
//! | `modality=NAME`         | the attestation lists modality NAME (repeatable)               |
//! | `context>=N`            | context window of at least N tokens (decimal integer)          |
//! | `issuer=COMMON NAME`    | some CA on the verified path has this subject CN (repeatable: any of them) |
//! | `issuer=sha256:HEX`     | some CA on the path has this SPKI SHA-256 fingerprint (64 hex) |
//! | `benchmark=NAME`        | a benchmark claim NAME exists *as a commitment*, so the caller can check a ZK proof against it (repeatable) |
//! | `safety=NAME`           | the same for a safety evaluation (repeatable)                  |
//! | `tenant=NAME`           | the model belongs to tenant NAME                               |
//!
//! Example: `capability=code-generation,context>=128000,issuer=Nexus Intermediate CA,benchmark=humaneval`.
//! The empty string is the empty requirement (any MIC with a valid chain). `Display` prints the
//! canonical form, which parses back to the same value.

use std::fmt;
use std::str::FromStr;

use crate::attestation::is_valid_name;
use crate::{Attestation, ClaimValue, Digest32, Error, ModelUri, Rejection};

/// A CA the verified path must contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerMatch {
    /// Subject common name, exact match.
    CommonName(String),
    /// SHA-256 of the CA's SubjectPublicKeyInfo DER: survives re-issuing the CA certificate
    /// with the same key, unlike a certificate fingerprint.
    SpkiSha256(Digest32),
}

/// Requirements a verified MIC must meet; the default requires nothing beyond the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Required tenant.
    pub tenant: Option<String>,
    /// Capabilities that must all be listed.
    pub capabilities: Vec<String>,
    /// Modalities that must all be listed.
    pub modalities: Vec<String>,
    /// Minimum context window, tokens.
    pub min_context_window: Option<u64>,
    /// Accepted CAs; empty means any CA chaining to a trust anchor.
    pub issuers: Vec<IssuerMatch>,
    /// Benchmarks that must be present as commitments.
    pub benchmarks: Vec<String>,
    /// Safety evaluations that must be present as commitments.
    pub safety_evaluations: Vec<String>,
}

impl Requirement {
    /// Checks everything except the issuer clauses (which need the verified path): usable on
    /// an attestation alone, e.g. by the controller before requesting a MIC.
    pub fn check_attestation(&self, model: &ModelUri, a: &Attestation) -> Result<(), Rejection> {
        if let Some(t) = &self.tenant
            && model.tenant() != t
        {
            return Err(Rejection::WrongTenant {
                have: model.tenant().to_owned(),
                need: t.clone(),
            });
        }
        let caps = &a.capabilities;
        for need in &self.capabilities {
            if !caps.capabilities.iter().any(|c| c == need) {
                return Err(Rejection::MissingCapability(need.clone()));
            }
        }
        for need in &self.modalities {
            if !caps.modalities.iter().any(|m| m == need) {
                return Err(Rejection::MissingModality(need.clone()));
            }
        }
        if let Some(need) = self.min_context_window
            && caps.context_window < need
        {
            return Err(Rejection::ContextTooSmall {
                have: caps.context_window,
                need,
            });
        }
        for need in &self.benchmarks {
            match a.benchmark(need).map(|c| &c.value) {
                None => return Err(Rejection::MissingBenchmark(need.clone())),
                Some(ClaimValue::Plain(_)) => return Err(Rejection::MissingProof(need.clone())),
                Some(ClaimValue::Commitment(_)) => {}
            }
        }
        for need in &self.safety_evaluations {
            match a.safety_evaluation(need).map(|c| &c.value) {
                None => return Err(Rejection::MissingSafetyEvaluation(need.clone())),
                Some(ClaimValue::Plain(_)) => return Err(Rejection::MissingProof(need.clone())),
                Some(ClaimValue::Commitment(_)) => {}
            }
        }
        Ok(())
    }

    /// Whether a CA with this common name and SPKI hash satisfies the issuer clauses.
    pub(crate) fn issuer_matches(&self, common_name: &str, spki_sha256: &[u8; 32]) -> bool {
        self.issuers.iter().any(|m| match m {
            IssuerMatch::CommonName(cn) => cn == common_name,
            IssuerMatch::SpkiSha256(d) => &d.0 == spki_sha256,
        })
    }
}

impl FromStr for Requirement {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let mut req = Requirement::default();
        if s.trim().is_empty() {
            return Ok(req);
        }
        for raw in s.split(',') {
            let clause = raw.trim();
            let err = |reason: &str| Error::Requirement {
                clause: clause.to_owned(),
                reason: reason.to_owned(),
            };
            let name = |v: &str| -> Result<String, Error> {
                let v = v.trim();
                if is_valid_name(v) {
                    Ok(v.to_owned())
                } else {
                    Err(err(
                        "names are 1..=64 characters of A-Z a-z 0-9 . _ : / + -",
                    ))
                }
            };
            if let Some(v) = clause.strip_prefix("context>=") {
                let n = v.trim().parse::<u64>().map_err(|_| {
                    err("context>= takes a whole number of tokens, e.g. context>=128000")
                })?;
                req.min_context_window = Some(n);
                continue;
            }
            let (key, value) = clause.split_once('=').ok_or_else(|| {
                err("expected KEY=VALUE or context>=N; keys: capability, modality, issuer, benchmark, safety, tenant")
            })?;
            match key.trim() {
                "capability" => req.capabilities.push(name(value)?),
                "modality" => req.modalities.push(name(value)?),
                "benchmark" => req.benchmarks.push(name(value)?),
                "safety" => req.safety_evaluations.push(name(value)?),
                "tenant" => {
                    let t = value.trim();
                    if t.is_empty() {
                        return Err(err("tenant needs a value"));
                    }
                    req.tenant = Some(t.to_owned());
                }
                "issuer" => {
                    let v = value.trim();
                    if let Some(hex) = v.strip_prefix("sha256:") {
                        let d: Digest32 = hex.parse().map_err(|e: String| err(&e))?;
                        req.issuers.push(IssuerMatch::SpkiSha256(d));
                    } else if v.is_empty() {
                        return Err(err("issuer needs a common name or sha256:<SPKI hash>"));
                    } else {
                        req.issuers.push(IssuerMatch::CommonName(v.to_owned()));
                    }
                }
                other => {
                    return Err(err(&format!(
                        "unknown key `{other}`; keys: capability, modality, context>=, issuer, benchmark, safety, tenant"
                    )));
                }
            }
        }
        Ok(req)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(t) = &self.tenant {
            parts.push(format!("tenant={t}"));
        }
        parts.extend(self.capabilities.iter().map(|c| format!("capability={c}")));
        parts.extend(self.modalities.iter().map(|m| format!("modality={m}")));
        if let Some(n) = self.min_context_window {
            parts.push(format!("context>={n}"));
        }
        parts.extend(self.issuers.iter().map(|i| match i {
            IssuerMatch::CommonName(cn) => format!("issuer={cn}"),
            IssuerMatch::SpkiSha256(d) => format!("issuer=sha256:{d}"),
        }));
        parts.extend(self.benchmarks.iter().map(|b| format!("benchmark={b}")));
        parts.extend(
            self.safety_evaluations
                .iter()
                .map(|s| format!("safety={s}")),
        );
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() -> Result<(), Error> {
        let r: Requirement = "capability=code-generation, context>=128000,issuer=Nexus Intermediate CA,benchmark=humaneval"
            .parse()?;
        assert_eq!(r.capabilities, ["code-generation"]);
        assert_eq!(r.min_context_window, Some(128_000));
        assert_eq!(
            r.issuers,
            [IssuerMatch::CommonName("Nexus Intermediate CA".into())]
        );
        assert_eq!(r.benchmarks, ["humaneval"]);
        assert_eq!(r.to_string().parse::<Requirement>()?, r);
        Ok(())
    }

    #[test]
    fn canonical_form_round_trips() -> Result<(), Error> {
        let text = format!(
            "tenant=acme,capability=chat,modality=text,context>=8192,issuer=sha256:{},benchmark=mmlu,safety=toxicity",
            "ab".repeat(32)
        );
        let r: Requirement = text.parse()?;
        assert_eq!(r.to_string(), text);
        assert_eq!("".parse::<Requirement>()?, Requirement::default());
        Ok(())
    }

    #[test]
    fn rejects_bad_clauses_with_the_clause() {
        for bad in [
            "capability",
            "context>=lots",
            "color=blue",
            "capability=has space",
            "issuer=sha256:1234",
            "issuer=",
            "capability=a,,capability=b",
        ] {
            match bad.parse::<Requirement>() {
                Err(Error::Requirement { .. }) => {}
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back(
            tenant in proptest::option::of("[a-z0-9]{1,10}"),
            caps in proptest::collection::vec("[A-Za-z0-9._:/+-]{1,20}", 0..4),
            mods in proptest::collection::vec("[a-z]{1,8}", 0..3),
            ctx in proptest::option::of(proptest::prelude::any::<u64>()),
            cns in proptest::collection::vec("[A-Za-z0-9][A-Za-z0-9 ]{0,20}[A-Za-z0-9]", 0..3),
            benches in proptest::collection::vec("[a-z0-9-]{1,12}", 0..3),
        ) {
            let r = Requirement {
                tenant,
                capabilities: caps,
                modalities: mods,
                min_context_window: ctx,
                issuers: cns.into_iter().map(IssuerMatch::CommonName).collect(),
                benchmarks: benches.clone(),
                safety_evaluations: benches,
            };
            let text = r.to_string();
            let back: Requirement = text.parse().map_err(|e: Error| {
                proptest::test_runner::TestCaseError::fail(e.to_string())
            })?;
            proptest::prop_assert_eq!(back, r);
        }
    }
}
