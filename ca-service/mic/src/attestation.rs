//! The attestation carried in a MIC, and its DER codec.
//!
//! The attestation is what a peer learns about a model beyond its name: what it is built from,
//! what it claims to do, how it scored, and who vouches for it. It is signed as part of the
//! certificate, so a claim is exactly as trustworthy as the CA that issued the MIC; benchmark
//! and safety scores can instead be *committed to* (an opaque 32-byte Poseidon commitment made
//! by `nexus-zk`), so that a zero-knowledge proof can later show "score ≥ 0.9" without revealing
//! the score.
//!
//! # ASN.1 module
//!
//! ```text
//! NexusMicAttestation { iso(1) identified-organization(3) dod(6) internet(1) private(4)
//!     enterprise(1) 32473 nexus(1) module(0) }
//! DEFINITIONS IMPLICIT TAGS ::= BEGIN
//!
//! id-nexus-mic-attestation OBJECT IDENTIFIER ::= { 1 3 6 1 4 1 32473 1 1 }
//!     -- extnValue of a non-critical extension; 32473 is the RFC 5612 documentation PEN
//!
//! MicAttestation ::= SEQUENCE {
//!     version            INTEGER { v1(1) } (v1),
//!     architectureHash   OCTET STRING (SIZE (32)),  -- SHA-256 of the architecture description
//!     provenance         TrainingProvenance,
//!     capabilities       CapabilityClaims,
//!     benchmarks         SEQUENCE SIZE (0..64) OF Claim,
//!     safetyEvaluations  SEQUENCE SIZE (0..64) OF Claim,
//!     endorsements       SEQUENCE SIZE (0..16) OF Endorsement }
//!
//! TrainingProvenance ::= SEQUENCE {
//!     datasetDigests     SEQUENCE SIZE (0..64) OF OCTET STRING (SIZE (32)),  -- SHA-256
//!     publisher          Text,
//!     parentModel        Text OPTIONAL }    -- usually a model URI
//!
//! CapabilityClaims ::= SEQUENCE {
//!     capabilities       SEQUENCE SIZE (0..64) OF Name,
//!     contextWindow      INTEGER (0..18446744073709551615),  -- tokens
//!     modalities         SEQUENCE SIZE (0..16) OF Name }
//!
//! Claim ::= SEQUENCE {
//!     name               Name,
//!     value              ClaimValue,
//!     threshold          Threshold OPTIONAL }
//!
//! ClaimValue ::= CHOICE {
//!     plain              INTEGER,                   -- score in millionths (6 decimals)
//!     commitment         OCTET STRING (SIZE (32)) } -- opaque commitment to the score
//!
//! Threshold ::= SEQUENCE {                          -- what a proof about the score shows
//!     comparator         ENUMERATED { atLeast(0), atMost(1) },
//!     bound              INTEGER }                  -- millionths
//!
//! Endorsement ::= SEQUENCE {
//!     issuer             Text,
//!     signature          OCTET STRING (SIZE (1..512)) OPTIONAL }
//!
//! Name ::= UTF8String (SIZE (1..64))    -- characters A-Z a-z 0-9 . _ : / + -
//! Text ::= UTF8String (SIZE (1..256))   -- no control characters
//! END
//! ```
//!
//! The whole encoding is limited to [`MAX_ATTESTATION_LEN`] bytes. Limits are checked when
//! encoding, when decoding and when reading JSON, so a value that exists in memory always
//! encodes, and untrusted bytes cost bounded memory and time. Names are restricted so that they
//! can be written in a [`crate::Requirement`] string without escaping.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use yasna::tags::{TAG_INTEGER, TAG_OCTETSTRING};
use yasna::{ASN1Error, ASN1ErrorKind, ASN1Result, BERReader, DERWriter};

use crate::Error;

/// Largest accepted encoded attestation. Generous for real claims (a full attestation with
/// every list at half its limit is about 6 KiB) yet small enough to sit in a TLS certificate.
pub const MAX_ATTESTATION_LEN: usize = 16 * 1024;
/// Most dataset digests in the provenance.
pub const MAX_DATASETS: usize = 64;
/// Most capability names.
pub const MAX_CAPABILITIES: usize = 64;
/// Most modality names.
pub const MAX_MODALITIES: usize = 16;
/// Most benchmark claims, and separately most safety-evaluation claims.
pub const MAX_CLAIMS: usize = 64;
/// Most endorsements.
pub const MAX_ENDORSEMENTS: usize = 16;
/// Longest [`Name`](self#asn1-module) (capability, modality, claim name), in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest free text (publisher, parent model, endorsement issuer), in bytes.
pub const MAX_TEXT_LEN: usize = 256;
/// Longest endorsement signature, in bytes.
pub const MAX_SIGNATURE_LEN: usize = 512;

const VERSION: i64 = 1;

/// Everything a MIC attests about a model beyond its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// SHA-256 of the model's architecture description (layer graph, config file).
    pub architecture_hash: Digest32,
    /// Where the weights came from.
    pub provenance: Provenance,
    /// What the model claims to do.
    pub capabilities: Capabilities,
    /// Benchmark results, in issuance order.
    #[serde(default)]
    pub benchmarks: Vec<Claim>,
    /// Safety evaluation results, in issuance order.
    #[serde(default)]
    pub safety_evaluations: Vec<Claim>,
    /// Third parties vouching for the model.
    #[serde(default)]
    pub endorsements: Vec<Endorsement>,
}

/// Training provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// SHA-256 digests of the training data sets.
    #[serde(default)]
    pub dataset_digests: Vec<Digest32>,
    /// Who published the weights.
    pub publisher: String,
    /// The model this one was fine-tuned or distilled from, usually a model URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_model: Option<String>,
}

/// Capability claims, matched by [`crate::Requirement`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Capability names such as `code-generation`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Context window in tokens.
    pub context_window: u64,
    /// Input/output modalities such as `text`, `image`.
    #[serde(default)]
    pub modalities: Vec<String>,
}

/// A named score: a benchmark result or a safety evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Benchmark or evaluation name, e.g. `humaneval`.
    pub name: String,
    /// The score, in clear or committed.
    pub value: ClaimValue,
    /// For a committed score: the statement a proof is expected to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
}

/// A score in clear, or a commitment to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimValue {
    /// The score itself.
    Plain(Score),
    /// An opaque 32-byte commitment (Poseidon, made by `nexus-zk`) that a zero-knowledge proof
    /// can be checked against; this crate never opens it.
    Commitment(Digest32),
}

/// The public statement about a committed score, e.g. "≥ 0.9".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Direction of the bound.
    pub comparator: Comparator,
    /// The bound.
    pub bound: Score,
}

/// Direction of a [`Threshold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparator {
    /// score ≥ bound
    AtLeast,
    /// score ≤ bound
    AtMost,
}

/// A third party vouching for the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endorsement {
    /// Who endorses.
    pub issuer: String,
    /// The endorser's signature, opaque here (its scheme is the endorser's business).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<HexBytes>,
}

/// A 32-byte value (SHA-256 digest or commitment); hex in JSON and text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest32(pub [u8; 32]);

/// Opaque bytes; hex in JSON and text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HexBytes(pub Vec<u8>);

/// A fixed-point score with six decimals (`Score(900_000)` is 0.9).
///
/// Fixed point, not `f64`, so that encoding is exact, equality is meaningful and the value maps
/// directly onto the field elements a ZK circuit commits to. Text form: `-?digits(.digits{1,6})?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Score(pub i64);

impl Score {
    /// Units per 1.0.
    pub const SCALE: i64 = 1_000_000;

    /// The raw value in millionths.
    pub fn micros(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = Self::SCALE.unsigned_abs();
        let (int, frac) = (abs / scale, abs % scale);
        if frac == 0 {
            return write!(f, "{sign}{int}");
        }
        let digits = format!("{frac:06}");
        write!(f, "{sign}{int}.{}", digits.trim_end_matches('0'))
    }
}

impl FromStr for Score {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a decimal with at most 6 fractional digits");
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || (body.contains('.') && !digits(frac)) || frac.len() > 6 {
            return Err(bad());
        }
        let int: i64 = int.parse().map_err(|_| bad())?;
        let mut frac_val: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| bad())?
        };
        for _ in frac.len()..6 {
            frac_val *= 10;
        }
        // Built on the sign's side so that i64::MIN parses back too.
        let base = int.checked_mul(Self::SCALE).ok_or_else(bad)?;
        let value = if neg {
            (-base).checked_sub(frac_val)
        } else {
            base.checked_add(frac_val)
        };
        value.map(Score).ok_or_else(bad)
    }
}

impl Serialize for Score {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Digest32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest32({self})")
    }
}

impl FromStr for Digest32 {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| format!("expected 64 hex digits (32 bytes): {e}"))?;
        Ok(Digest32(out))
    }
}

impl Serialize for Digest32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexBytes({self})")
    }
}

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s)
            .map(HexBytes)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Comparator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparator::AtLeast => ">=",
            Comparator::AtMost => "<=",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

fn field_err(field: &'static str, reason: String) -> Error {
    Error::AttestationField { field, reason }
}

fn check_len<T>(field: &'static str, list: &[T], max: usize) -> Result<(), Error> {
    if list.len() > max {
        return Err(field_err(
            field,
            format!("{} entries, at most {max} allowed", list.len()),
        ));
    }
    Ok(())
}

/// Whether `s` is a valid claim/capability/modality name (see the ASN.1 `Name` type).
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/+-".contains(&b))
}

fn check_name(field: &'static str, s: &str) -> Result<(), Error> {
    if !is_valid_name(s) {
        return Err(field_err(
            field,
            format!(
                "`{}` must be 1..={MAX_NAME_LEN} bytes of A-Z a-z 0-9 . _ : / + -",
                s.escape_debug()
            ),
        ));
    }
    Ok(())
}

fn check_text(field: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > MAX_TEXT_LEN || s.chars().any(char::is_control) {
        return Err(field_err(
            field,
            format!("must be 1..={MAX_TEXT_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

fn check_claims(field: &'static str, claims: &[Claim]) -> Result<(), Error> {
    check_len(field, claims, MAX_CLAIMS)?;
    claims.iter().try_for_each(|c| check_name(field, &c.name))
}

impl Attestation {
    /// Checks every limit and syntax rule of the ASN.1 module (not the total size, which only
    /// the encoding knows).
    pub fn validate(&self) -> Result<(), Error> {
        let p = &self.provenance;
        check_len(
            "provenance.dataset_digests",
            &p.dataset_digests,
            MAX_DATASETS,
        )?;
        check_text("provenance.publisher", &p.publisher)?;
        if let Some(parent) = &p.parent_model {
            check_text("provenance.parent_model", parent)?;
        }
        let c = &self.capabilities;
        check_len(
            "capabilities.capabilities",
            &c.capabilities,
            MAX_CAPABILITIES,
        )?;
        for name in &c.capabilities {
            check_name("capabilities.capabilities", name)?;
        }
        check_len("capabilities.modalities", &c.modalities, MAX_MODALITIES)?;
        for name in &c.modalities {
            check_name("capabilities.modalities", name)?;
        }
        check_claims("benchmarks", &self.benchmarks)?;
        check_claims("safety_evaluations", &self.safety_evaluations)?;
        check_len("endorsements", &self.endorsements, MAX_ENDORSEMENTS)?;
        for e in &self.endorsements {
            check_text("endorsements.issuer", &e.issuer)?;
            if let Some(sig) = &e.signature
                && (sig.0.is_empty() || sig.0.len() > MAX_SIGNATURE_LEN)
            {
                return Err(field_err(
                    "endorsements.signature",
                    format!("must be 1..={MAX_SIGNATURE_LEN} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// The benchmark claim called `name`, if any.
    pub fn benchmark(&self, name: &str) -> Option<&Claim> {
        self.benchmarks.iter().find(|c| c.name == name)
    }

    /// The safety-evaluation claim called `name`, if any.
    pub fn safety_evaluation(&self, name: &str) -> Option<&Claim> {
        self.safety_evaluations.iter().find(|c| c.name == name)
    }

    /// Encodes to DER (the extension value), after validating.
    pub fn to_der(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        let der = yasna::construct_der(|w| self.write(w));
        if der.len() > MAX_ATTESTATION_LEN {
            return Err(Error::AttestationTooLarge {
                size: der.len(),
                max: MAX_ATTESTATION_LEN,
            });
        }
        Ok(der)
    }

    /// Decodes untrusted DER. Never panics; rejects inputs over [`MAX_ATTESTATION_LEN`] before
    /// looking at them, trailing bytes, non-DER encodings and values breaking any limit.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        if der.len() > MAX_ATTESTATION_LEN {
            return Err(Error::AttestationTooLarge {
                size: der.len(),
                max: MAX_ATTESTATION_LEN,
            });
        }
        let at = Cell::new("attestation");
        let version = Cell::new(VERSION);
        let parsed = yasna::parse_der(der, |r| read_attestation(r, &at, &version));
        if version.get() != VERSION {
            return Err(Error::AttestationVersion(version.get()));
        }
        let attestation = parsed.map_err(|e| {
            Error::AttestationDer(format!("{} at `{}`", describe(e.kind()), at.get()))
        })?;
        attestation.validate()?;
        Ok(attestation)
    }

    /// Reads the JSON form (as written by [`Attestation::to_json`]), then validates it.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let a: Attestation = serde_json::from_str(json)?;
        a.validate()?;
        Ok(a)
    }

    /// Pretty JSON, as the controller stores it next to the MIC in the model's Secret.
    pub fn to_json(&self) -> Result<String, Error> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// An illustrative attestation (a code model with one committed benchmark, one plain
    /// benchmark, one committed safety evaluation and two endorsements), for docs, `nexctl up`
    /// demos, tests, benches and fuzz seeds.
    pub fn example() -> Attestation {
        Attestation {
            architecture_hash: Digest32([7; 32]),
            provenance: Provenance {
                dataset_digests: vec![Digest32([1; 32]), Digest32([2; 32])],
                publisher: "Acme AI Labs".into(),
                parent_model: Some("nexus://acme/base-7b@1.0.0".into()),
            },
            capabilities: Capabilities {
                capabilities: vec!["code-generation".into(), "chat".into()],
                context_window: 128_000,
                modalities: vec!["text".into()],
            },
            benchmarks: vec![
                Claim {
                    name: "humaneval".into(),
                    value: ClaimValue::Commitment(Digest32([9; 32])),
                    threshold: Some(Threshold {
                        comparator: Comparator::AtLeast,
                        bound: Score(800_000),
                    }),
                },
                Claim {
                    name: "mmlu".into(),
                    value: ClaimValue::Plain(Score(712_500)),
                    threshold: None,
                },
            ],
            safety_evaluations: vec![Claim {
                name: "toxicity".into(),
                value: ClaimValue::Commitment(Digest32([3; 32])),
                threshold: Some(Threshold {
                    comparator: Comparator::AtMost,
                    bound: Score(10_000),
                }),
            }],
            endorsements: vec![
                Endorsement {
                    issuer: "Nexus Safety Board".into(),
                    signature: Some(HexBytes(vec![0xAB; 64])),
                },
                Endorsement {
                    issuer: "Acme Red Team".into(),
                    signature: None,
                },
            ],
        }
    }

    fn write(&self, w: DERWriter<'_>) {
        w.write_sequence(|w| {
            w.next().write_i64(VERSION);
            w.next().write_bytes(&self.architecture_hash.0);
            w.next().write_sequence(|w| {
                let p = &self.provenance;
                w.next().write_sequence_of(|w| {
                    for d in &p.dataset_digests {
                        w.next().write_bytes(&d.0);
                    }
                });
                w.next().write_utf8_string(&p.publisher);
                if let Some(parent) = &p.parent_model {
                    w.next().write_utf8_string(parent);
                }
            });
            w.next().write_sequence(|w| {
                let c = &self.capabilities;
                write_names(w.next(), &c.capabilities);
                w.next().write_u64(c.context_window);
                write_names(w.next(), &c.modalities);
            });
            write_claims(w.next(), &self.benchmarks);
            write_claims(w.next(), &self.safety_evaluations);
            w.next().write_sequence_of(|w| {
                for e in &self.endorsements {
                    w.next().write_sequence(|w| {
                        w.next().write_utf8_string(&e.issuer);
                        if let Some(sig) = &e.signature {
                            w.next().write_bytes(&sig.0);
                        }
                    });
                }
            });
        });
    }
}

fn describe(kind: ASN1ErrorKind) -> &'static str {
    match kind {
        ASN1ErrorKind::Eof => "unexpected end of input",
        ASN1ErrorKind::Extra => "unexpected extra data",
        ASN1ErrorKind::IntegerOverflow => "integer out of range",
        ASN1ErrorKind::StackOverflow => "nesting too deep",
        ASN1ErrorKind::Invalid => "invalid or unexpected element",
    }
}

fn write_names(w: DERWriter<'_>, names: &[String]) {
    w.write_sequence_of(|w| {
        for n in names {
            w.next().write_utf8_string(n);
        }
    });
}

fn write_claims(w: DERWriter<'_>, claims: &[Claim]) {
    w.write_sequence_of(|w| {
        for c in claims {
            w.next().write_sequence(|w| {
                w.next().write_utf8_string(&c.name);
                match &c.value {
                    ClaimValue::Plain(s) => w.next().write_i64(s.0),
                    ClaimValue::Commitment(d) => w.next().write_bytes(&d.0),
                }
                if let Some(t) = &c.threshold {
                    w.next().write_sequence(|w| {
                        w.next().write_enum(match t.comparator {
                            Comparator::AtLeast => 0,
                            Comparator::AtMost => 1,
                        });
                        w.next().write_i64(t.bound.0);
                    });
                }
            });
        }
    });
}

fn invalid() -> ASN1Error {
    ASN1Error::new(ASN1ErrorKind::Invalid)
}

fn read_digest(r: BERReader<'_, '_>) -> ASN1Result<Digest32> {
    let bytes = r.read_bytes()?;
    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| invalid())?;
    Ok(Digest32(arr))
}

fn read_attestation(
    r: BERReader<'_, '_>,
    at: &Cell<&'static str>,
    version: &Cell<i64>,
) -> ASN1Result<Attestation> {
    r.read_sequence(|r| {
        at.set("version");
        let v = r.next().read_i64()?;
        if v != VERSION {
            version.set(v);
            return Err(invalid());
        }
        at.set("architecture_hash");
        let architecture_hash = read_digest(r.next())?;
        at.set("provenance");
        let provenance = r.next().read_sequence(|r| {
            at.set("provenance.dataset_digests");
            let dataset_digests = r.next().collect_sequence_of(read_digest)?;
            at.set("provenance.publisher");
            let publisher = r.next().read_utf8string()?;
            at.set("provenance.parent_model");
            let parent_model = r.read_optional(|r| r.read_utf8string())?;
            Ok(Provenance {
                dataset_digests,
                publisher,
                parent_model,
            })
        })?;
        at.set("capabilities");
        let capabilities = r.next().read_sequence(|r| {
            at.set("capabilities.capabilities");
            let capabilities = r.next().collect_sequence_of(|r| r.read_utf8string())?;
            at.set("capabilities.context_window");
            let context_window = r.next().read_u64()?;
            at.set("capabilities.modalities");
            let modalities = r.next().collect_sequence_of(|r| r.read_utf8string())?;
            Ok(Capabilities {
                capabilities,
                context_window,
                modalities,
            })
        })?;
        at.set("benchmarks");
        let benchmarks = r.next().collect_sequence_of(read_claim)?;
        at.set("safety_evaluations");
        let safety_evaluations = r.next().collect_sequence_of(read_claim)?;
        at.set("endorsements");
        let endorsements = r.next().collect_sequence_of(|r| {
            r.read_sequence(|r| {
                let issuer = r.next().read_utf8string()?;
                let signature = r.read_optional(|r| r.read_bytes())?.map(HexBytes);
                Ok(Endorsement { issuer, signature })
            })
        })?;
        at.set("attestation");
        Ok(Attestation {
            architecture_hash,
            provenance,
            capabilities,
            benchmarks,
            safety_evaluations,
            endorsements,
        })
    })
}

fn read_claim(r: BERReader<'_, '_>) -> ASN1Result<Claim> {
    r.read_sequence(|r| {
        let name = r.next().read_utf8string()?;
        let value = {
            let r = r.next();
            let tag = r.lookahead_tag()?;
            if tag == TAG_INTEGER {
                ClaimValue::Plain(Score(r.read_i64()?))
            } else if tag == TAG_OCTETSTRING {
                ClaimValue::Commitment(read_digest(r)?)
            } else {
                return Err(invalid());
            }
        };
        let threshold = r.read_optional(|r| {
            r.read_sequence(|r| {
                let comparator = match r.next().read_enum()? {
                    0 => Comparator::AtLeast,
                    1 => Comparator::AtMost,
                    _ => return Err(invalid()),
                };
                let bound = Score(r.next().read_i64()?);
                Ok(Threshold { comparator, bound })
            })
        })?;
        Ok(Claim {
            name,
            value,
            threshold,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Human-readable form, for `nexctl mic inspect`.

fn write_claims_text(f: &mut fmt::Formatter<'_>, title: &str, claims: &[Claim]) -> fmt::Result {
    if claims.is_empty() {
        return writeln!(f, "{title}: none");
    }
    writeln!(f, "{title}:")?;
    for c in claims {
        match &c.value {
            ClaimValue::Plain(s) => write!(f, "  {:<24} {s}", c.name)?,
            ClaimValue::Commitment(d) => write!(f, "  {:<24} committed {d}", c.name)?,
        }
        if let Some(t) = &c.threshold {
            write!(f, " (proves score {} {})", t.comparator, t.bound)?;
        }
        writeln!(f)?;
    }
    Ok(())
}

fn join(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_owned()
    } else {
        list.join(", ")
    }
}

impl fmt::Display for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.capabilities;
        let p = &self.provenance;
        writeln!(f, "Architecture hash: {}", self.architecture_hash)?;
        writeln!(f, "Capabilities:      {}", join(&c.capabilities))?;
        writeln!(f, "Context window:    {} tokens", c.context_window)?;
        writeln!(f, "Modalities:        {}", join(&c.modalities))?;
        writeln!(f, "Publisher:         {}", p.publisher)?;
        if let Some(parent) = &p.parent_model {
            writeln!(f, "Parent model:      {parent}")?;
        }
        if p.dataset_digests.is_empty() {
            writeln!(f, "Datasets:          none declared")?;
        } else {
            writeln!(f, "Datasets:")?;
            for d in &p.dataset_digests {
                writeln!(f, "  sha256:{d}")?;
            }
        }
        write_claims_text(f, "Benchmarks", &self.benchmarks)?;
        write_claims_text(f, "Safety evaluations", &self.safety_evaluations)?;
        if self.endorsements.is_empty() {
            writeln!(f, "Endorsements: none")?;
        } else {
            writeln!(f, "Endorsements:")?;
            for e in &self.endorsements {
                match &e.signature {
                    Some(sig) => writeln!(f, "  {} (signature, {} bytes)", e.issuer, sig.0.len())?,
                    None => writeln!(f, "  {} (unsigned)", e.issuer)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample() -> Attestation {
        Attestation::example()
    }

    #[test]
    fn sample_round_trips_der_and_json() -> Result<(), Error> {
        let a = sample();
        let der = a.to_der()?;
        assert_eq!(Attestation::from_der(&der)?, a);
        let json = a.to_json()?;
        assert_eq!(Attestation::from_json(&json)?, a);
        assert!(json.contains("\"commitment\""), "{json}");
        assert!(a.to_string().contains("humaneval"));
        Ok(())
    }

    #[test]
    fn score_text_round_trips() {
        for (text, micros) in [
            ("0.9", 900_000),
            ("1", 1_000_000),
            ("-0.000001", -1),
            ("128000", 128_000_000_000),
            ("0.123456", 123_456),
        ] {
            assert_eq!(text.parse::<Score>(), Ok(Score(micros)));
            assert_eq!(Score(micros).to_string(), text);
        }
        for bad in [
            "",
            ".5",
            "1.",
            "1.1234567",
            "abc",
            "--1",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<Score>().is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_are_enforced_on_encode_and_decode() {
        let mut a = sample();
        a.capabilities.capabilities = vec!["x".into(); MAX_CAPABILITIES + 1];
        assert!(matches!(a.to_der(), Err(Error::AttestationField { .. })));

        let mut a = sample();
        a.capabilities.modalities = vec!["bad name".into()];
        assert!(matches!(a.to_der(), Err(Error::AttestationField { .. })));

        let big = vec![0u8; MAX_ATTESTATION_LEN + 1];
        assert!(matches!(
            Attestation::from_der(&big),
            Err(Error::AttestationTooLarge { .. })
        ));
    }

    #[test]
    fn malformed_bytes_are_typed_errors() -> Result<(), Error> {
        let der = sample().to_der()?;
        // Truncations, trailing garbage, flipped bytes: never a panic, always an error.
        for cut in 0..der.len() {
            assert!(Attestation::from_der(&der[..cut]).is_err());
        }
        let mut extra = der.clone();
        extra.push(0);
        assert!(matches!(
            Attestation::from_der(&extra),
            Err(Error::AttestationDer(_))
        ));
        for i in 0..der.len() {
            let mut flipped = der.clone();
            flipped[i] ^= 0xFF;
            let _ = Attestation::from_der(&flipped);
        }
        // Version 2 is refused with its own error.
        let mut v2 = der.clone();
        let pos = v2
            .windows(3)
            .position(|w| w == [0x02, 0x01, 0x01])
            .expect("the version INTEGER 1 is in the encoding");
        v2[pos + 2] = 2;
        assert!(matches!(
            Attestation::from_der(&v2),
            Err(Error::AttestationVersion(2))
        ));
        Ok(())
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._:/+-]{1,64}"
    }

    fn text() -> impl Strategy<Value = String> {
        // Any non-control characters, multi-byte included, kept under the byte limit.
        "[^\\p{Cc}]{1,60}"
    }

    fn digest() -> impl Strategy<Value = Digest32> {
        any::<[u8; 32]>().prop_map(Digest32)
    }

    fn claim() -> impl Strategy<Value = Claim> {
        let value = prop_oneof![
            any::<i64>().prop_map(|v| ClaimValue::Plain(Score(v))),
            digest().prop_map(ClaimValue::Commitment),
        ];
        let threshold =
            proptest::option::of((any::<bool>(), any::<i64>()).prop_map(|(ge, b)| Threshold {
                comparator: if ge {
                    Comparator::AtLeast
                } else {
                    Comparator::AtMost
                },
                bound: Score(b),
            }));
        (name(), value, threshold).prop_map(|(name, value, threshold)| Claim {
            name,
            value,
            threshold,
        })
    }

    prop_compose! {
        pub(crate) fn attestation()(
            architecture_hash in digest(),
            dataset_digests in proptest::collection::vec(digest(), 0..8),
            publisher in text(),
            parent_model in proptest::option::of(text()),
            capabilities in proptest::collection::vec(name(), 0..8),
            context_window in any::<u64>(),
            modalities in proptest::collection::vec(name(), 0..4),
            benchmarks in proptest::collection::vec(claim(), 0..6),
            safety_evaluations in proptest::collection::vec(claim(), 0..6),
            endorsements in proptest::collection::vec(
                (text(), proptest::option::of(proptest::collection::vec(any::<u8>(), 1..80))),
                0..4,
            ),
        ) -> Attestation {
            Attestation {
                architecture_hash,
                provenance: Provenance { dataset_digests, publisher, parent_model },
                capabilities: Capabilities { capabilities, context_window, modalities },
                benchmarks,
                safety_evaluations,
                endorsements: endorsements
                    .into_iter()
                    .map(|(issuer, sig)| Endorsement { issuer, signature: sig.map(HexBytes) })
                    .collect(),
            }
        }
    }

    proptest! {
        #[test]
        fn der_round_trip_is_exact(a in attestation()) {
            let der = a.to_der().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = Attestation::from_der(&der).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&back, &a);
            // DER is canonical: re-encoding the decoded value gives the same bytes.
            prop_assert_eq!(back.to_der().map_err(|e| TestCaseError::fail(e.to_string()))?, der);
        }

        #[test]
        fn json_round_trip_is_exact(a in attestation()) {
            let json = a.to_json().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let back = Attestation::from_json(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back, a);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Attestation::from_der(&bytes);
        }

        #[test]
        fn score_display_parses_back(v in any::<i64>()) {
            prop_assert_eq!(Score(v).to_string().parse::<Score>(), Ok(Score(v)));
        }
    }
}
