//! Semantic Address Descriptors (SADs): "an LLM that writes code, ≥128K context, <200 ms, MIC
//! from a trusted issuer, safety score proven ≥ 0.9" as a compact, versioned binary encoding.
//!
//! A SAD is what a capability-addressed frame carries instead of a host address, right after
//! its NexLink header. It is decoded per frame by the dataplane and matched in part by the P4
//! pipeline (domain and class at fixed offsets), so it is fixed-layout, little-endian like the
//! NexLink header, and decodes without copying: [`SadView::parse`] checks the bytes once and
//! the accessors read straight from the buffer.
//!
//! # Wire format, version 1
//!
//! | offset | size | field            | notes                                                          |
//! |-------:|-----:|------------------|----------------------------------------------------------------|
//! | 0      | 2    | magic            | `b"NR"`                                                         |
//! | 2      | 1    | version          | [`VERSION`] (= 1); other values are rejected                    |
//! | 3      | 1    | flags            | reserved, must be 0                                             |
//! | 4      | 2    | length           | total bytes of the descriptor, header included                 |
//! | 6      | 1    | modalities       | required modalities, bit set ([`Modalities`]); bits 5–7 must be 0 |
//! | 7      | 1    | min trust        | [`TrustLevel`] 0..=3                                            |
//! | 8      | 1    | fan-out          | endpoints to send to at once, 1..=[`MAX_FAN_OUT`]              |
//! | 9      | 1    | n_caps           | additional capabilities, 0..=[`MAX_EXTRA_CAPABILITIES`]        |
//! | 10     | 1    | n_claims         | required claims, 0..=[`MAX_CLAIMS`]                            |
//! | 11     | 1    | n_proofs         | required proofs, 0..=[`MAX_PROOFS`]                            |
//! | 12     | 4    | domain id        | routing domain ([`crate::id::domain_id`]); 0 = the tenant's default |
//! | 16     | 4    | class id         | primary capability ([`crate::id::capability_id`]); never 0: the P4 class key |
//! | 20     | 4    | model family     | [`crate::id::family_id`]; 0 = any                              |
//! | 24     | 4    | min context      | tokens; 0 = any                                                 |
//! | 28     | 4    | max latency      | milliseconds; `u32::MAX` = any                                  |
//! | 32     | 4    | max cost         | micro-USD per 1,000 tokens; `u32::MAX` = any                    |
//! | 36     | 4·n_caps   | capability ids | strictly ascending, none equal to the class id, none 0     |
//! | …      | 4·n_claims | claim ids      | strictly ascending, none 0                                  |
//! | …      | 8·n_proofs | proofs         | (claim id u32, minimum score u32 ×10⁴), claim ids strictly ascending, none 0 |
//!
//! `length` must equal `36 + 4·n_caps + 4·n_claims + 8·n_proofs` (at most
//! [`MAX_LEN`] = 224 bytes). Strict ordering makes the encoding canonical: one descriptor, one
//! byte string, so descriptors can be hashed and compared as bytes. Bytes after `length` are
//! not part of the descriptor (they are the frame's payload): [`SadView::parse`] returns how
//! many bytes it consumed.

use std::fmt;

use crate::SadError;

/// The two magic bytes at offset 0.
pub const MAGIC: [u8; 2] = *b"NR";
/// The only descriptor version this crate reads and writes.
pub const VERSION: u8 = 1;
/// Bytes of the fixed part.
pub const FIXED_LEN: usize = 36;
/// Most additional capabilities (besides the class).
pub const MAX_EXTRA_CAPABILITIES: usize = 15;
/// Most required claims.
pub const MAX_CLAIMS: usize = 16;
/// Most required proofs.
pub const MAX_PROOFS: usize = 8;
/// Largest fan-out a descriptor may ask for (the RoutingDomain CRD allows the same).
pub const MAX_FAN_OUT: u8 = 16;
/// Longest descriptor.
pub const MAX_LEN: usize = FIXED_LEN + 4 * MAX_EXTRA_CAPABILITIES + 4 * MAX_CLAIMS + 8 * MAX_PROOFS;
/// "No bound" for the latency and cost limits.
pub const ANY: u32 = u32::MAX;

const OFF_VERSION: usize = 2;
const OFF_FLAGS: usize = 3;
const OFF_LEN: usize = 4;
const OFF_MODALITIES: usize = 6;
const OFF_TRUST: usize = 7;
const OFF_FAN_OUT: usize = 8;
const OFF_N_CAPS: usize = 9;
const OFF_N_CLAIMS: usize = 10;
const OFF_N_PROOFS: usize = 11;
/// Offset of the domain id (the P4 parser extracts it from here).
pub const OFF_DOMAIN: usize = 12;
/// Offset of the class id (the P4 parser extracts it from here).
pub const OFF_CLASS: usize = 16;
const OFF_FAMILY: usize = 20;
const OFF_CONTEXT: usize = 24;
const OFF_LATENCY: usize = 28;
const OFF_COST: usize = 32;

/// Required modalities, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Modalities(pub u8);

impl Modalities {
    /// Text.
    pub const TEXT: Modalities = Modalities(1);
    /// Images.
    pub const IMAGE: Modalities = Modalities(1 << 1);
    /// Audio.
    pub const AUDIO: Modalities = Modalities(1 << 2);
    /// Video.
    pub const VIDEO: Modalities = Modalities(1 << 3);
    /// Raw tensors.
    pub const TENSOR: Modalities = Modalities(1 << 4);
    /// Every bit version 1 defines.
    pub const KNOWN: Modalities = Modalities(0b1_1111);

    /// Whether every modality in `other` is in `self`.
    #[inline]
    pub const fn contains(self, other: Modalities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bit of a CRD modality.
    #[cfg(feature = "control-plane")]
    pub const fn from_crd(m: nexus_crds::routing::Modality) -> Modalities {
        use nexus_crds::routing::Modality as M;
        match m {
            M::Text => Self::TEXT,
            M::Image => Self::IMAGE,
            M::Audio => Self::AUDIO,
            M::Video => Self::VIDEO,
            M::Tensor => Self::TENSOR,
        }
    }

    /// The bit of a modality name as MICs attest it (`text`, `image`, …); `None` if unknown.
    pub fn from_name(name: &str) -> Option<Modalities> {
        Some(match name {
            "text" => Self::TEXT,
            "image" => Self::IMAGE,
            "audio" => Self::AUDIO,
            "video" => Self::VIDEO,
            "tensor" => Self::TENSOR,
            _ => return None,
        })
    }

    /// Union.
    #[must_use]
    pub const fn union(self, other: Modalities) -> Modalities {
        Modalities(self.0 | other.0)
    }

    /// Names of the set bits.
    pub fn names(self) -> Vec<&'static str> {
        let all = [
            (Self::TEXT, "text"),
            (Self::IMAGE, "image"),
            (Self::AUDIO, "audio"),
            (Self::VIDEO, "video"),
            (Self::TENSOR, "tensor"),
        ];
        all.iter()
            .filter(|(m, _)| self.contains(*m))
            .map(|(_, n)| *n)
            .collect()
    }
}

/// How much an endpoint's identity has been established at admission.
///
/// Ordered: a descriptor's `min_trust` accepts that level and every higher one.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "camelCase")]
#[repr(u8)]
pub enum TrustLevel {
    /// Nothing required (a descriptor) / nothing established (never admitted).
    #[default]
    None = 0,
    /// A valid MIC chain to a trust anchor of the domain.
    Identified = 1,
    /// In addition, issued by an accepted issuer and carrying every claim the domain requires.
    Attested = 2,
    /// In addition, at least one zero-knowledge proof verified against the MIC's commitment.
    Proven = 3,
}

impl TrustLevel {
    /// Decodes the wire value.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<TrustLevel> {
        Some(match v {
            0 => Self::None,
            1 => Self::Identified,
            2 => Self::Attested,
            3 => Self::Proven,
            _ => return None,
        })
    }
}

/// "Prove that committed score `claim` is at least `min_score`", as ids and fixed-point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProofBound {
    /// [`crate::id::claim_id`] of the claim name (e.g. `safety-eval`).
    pub claim: u32,
    /// Minimum proven score ×10⁴ (the `nexus-zk` scale).
    pub min_score: u32,
}

/// An owned descriptor: what an encoder fills in (and [`SadView::to_descriptor`] returns).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Descriptor {
    /// Routing domain id; 0 for the tenant's default domain.
    pub domain: u32,
    /// Primary capability id (the class the P4 pipeline matches); never 0.
    pub class: u32,
    /// Further capabilities that must all be advertised (strictly ascending, excluding `class`).
    pub extra_capabilities: Vec<u32>,
    /// Model family id; 0 = any.
    pub model_family: u32,
    /// Minimum context window in tokens; 0 = any.
    pub min_context: u32,
    /// Latency bound in milliseconds; [`ANY`] = none.
    pub max_latency_ms: u32,
    /// Cost bound in micro-USD per 1,000 tokens; [`ANY`] = none.
    pub max_cost: u32,
    /// Modalities that must all be supported.
    pub modalities: Modalities,
    /// Least trust level accepted.
    pub min_trust: TrustLevel,
    /// Endpoints to send to at once (the first answer wins).
    pub fan_out: u8,
    /// Claim ids the endpoint's MIC must carry (strictly ascending).
    pub required_claims: Vec<u32>,
    /// Proofs the endpoint must have shown at admission (claims strictly ascending).
    pub required_proofs: Vec<ProofBound>,
}

impl Descriptor {
    /// A descriptor asking only for capability `class`, with no other constraint.
    pub fn for_class(class: u32) -> Descriptor {
        Descriptor {
            domain: 0,
            class,
            extra_capabilities: Vec::new(),
            model_family: 0,
            min_context: 0,
            max_latency_ms: ANY,
            max_cost: ANY,
            modalities: Modalities::default(),
            min_trust: TrustLevel::None,
            fan_out: 1,
            required_claims: Vec::new(),
            required_proofs: Vec::new(),
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN
            + 4 * self.extra_capabilities.len()
            + 4 * self.required_claims.len()
            + 8 * self.required_proofs.len()
    }

    /// Checks everything the decoder checks, so an encoder never emits bytes its peer rejects.
    pub fn validate(&self) -> Result<(), SadError> {
        if self.extra_capabilities.len() > MAX_EXTRA_CAPABILITIES {
            return Err(SadError::TooMany {
                field: Field::Capabilities,
                count: self.extra_capabilities.len(),
            });
        }
        if self.required_claims.len() > MAX_CLAIMS {
            return Err(SadError::TooMany {
                field: Field::Claims,
                count: self.required_claims.len(),
            });
        }
        if self.required_proofs.len() > MAX_PROOFS {
            return Err(SadError::TooMany {
                field: Field::Proofs,
                count: self.required_proofs.len(),
            });
        }
        if self.modalities.0 & !Modalities::KNOWN.0 != 0 {
            return Err(SadError::UnknownModalities(
                self.modalities.0 & !Modalities::KNOWN.0,
            ));
        }
        if self.fan_out == 0 || self.fan_out > MAX_FAN_OUT {
            return Err(SadError::BadFanOut(self.fan_out));
        }
        if self.class == 0 {
            return Err(SadError::ZeroId {
                field: Field::Class,
            });
        }
        check_ascending(Field::Capabilities, self.extra_capabilities.iter().copied())?;
        if self.extra_capabilities.contains(&self.class) {
            return Err(SadError::ClassRepeated);
        }
        check_ascending(Field::Claims, self.required_claims.iter().copied())?;
        check_ascending(Field::Proofs, self.required_proofs.iter().map(|p| p.claim))?;
        Ok(())
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SadError> {
        self.validate()?;
        let len = self.encoded_len();
        out.reserve(len);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(0);
        // ≤ MAX_LEN (224), checked by validate() through the list limits.
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.push(self.modalities.0);
        out.push(self.min_trust as u8);
        out.push(self.fan_out);
        out.push(self.extra_capabilities.len() as u8);
        out.push(self.required_claims.len() as u8);
        out.push(self.required_proofs.len() as u8);
        for v in [
            self.domain,
            self.class,
            self.model_family,
            self.min_context,
            self.max_latency_ms,
            self.max_cost,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.extra_capabilities.iter().chain(&self.required_claims) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for p in &self.required_proofs {
            out.extend_from_slice(&p.claim.to_le_bytes());
            out.extend_from_slice(&p.min_score.to_le_bytes());
        }
        Ok(())
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, SadError> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v)?;
        Ok(v)
    }
}

/// Which list or field a [`SadError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The class id.
    Class,
    /// The additional capability ids.
    Capabilities,
    /// The required claim ids.
    Claims,
    /// The required proofs.
    Proofs,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Class => "class id",
            Field::Capabilities => "capabilities",
            Field::Claims => "claims",
            Field::Proofs => "proofs",
        })
    }
}

fn check_ascending(field: Field, ids: impl Iterator<Item = u32>) -> Result<(), SadError> {
    let mut prev = 0u32;
    for (index, id) in ids.enumerate() {
        if id == 0 {
            return Err(SadError::ZeroId { field });
        }
        if id <= prev {
            return Err(SadError::NotAscending { field, index });
        }
        prev = id;
    }
    Ok(())
}

#[inline(always)]
fn rd_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// A validated descriptor borrowed from a receive buffer: parsing copies nothing, and the
/// accessors read straight from the buffer.
///
/// Only [`SadView::parse`] builds one, so accessors rely on the bytes having passed every check.
/// Equality is byte equality, which the canonical encoding makes descriptor equality.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SadView<'a> {
    /// Exactly the descriptor's bytes (`length` of them).
    bytes: &'a [u8],
}

impl fmt::Debug for SadView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_descriptor(), f)
    }
}

impl<'a> SadView<'a> {
    /// Parses and validates the descriptor at the start of `buf`; returns it and the number of
    /// bytes it occupies (what follows is the frame's payload).
    ///
    /// Checks run cheapest-first: length of the fixed part, magic, version, flags, the declared
    /// length against the counts and the buffer, then field values and list order.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<(SadView<'a>, usize), SadError> {
        let fixed: &[u8; FIXED_LEN] =
            buf.get(..FIXED_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(SadError::TooShort {
                    need: FIXED_LEN,
                    have: buf.len(),
                })?;
        if fixed[0..2] != MAGIC {
            return Err(SadError::BadMagic([fixed[0], fixed[1]]));
        }
        if fixed[OFF_VERSION] != VERSION {
            return Err(SadError::UnsupportedVersion(fixed[OFF_VERSION]));
        }
        if fixed[OFF_FLAGS] != 0 {
            return Err(SadError::ReservedFlags(fixed[OFF_FLAGS]));
        }
        let n_caps = fixed[OFF_N_CAPS] as usize;
        let n_claims = fixed[OFF_N_CLAIMS] as usize;
        let n_proofs = fixed[OFF_N_PROOFS] as usize;
        if n_caps > MAX_EXTRA_CAPABILITIES {
            return Err(SadError::TooMany {
                field: Field::Capabilities,
                count: n_caps,
            });
        }
        if n_claims > MAX_CLAIMS {
            return Err(SadError::TooMany {
                field: Field::Claims,
                count: n_claims,
            });
        }
        if n_proofs > MAX_PROOFS {
            return Err(SadError::TooMany {
                field: Field::Proofs,
                count: n_proofs,
            });
        }
        let declared = u16::from_le_bytes([fixed[OFF_LEN], fixed[OFF_LEN + 1]]) as usize;
        let computed = FIXED_LEN + 4 * (n_caps + n_claims) + 8 * n_proofs;
        if declared != computed {
            return Err(SadError::LengthMismatch { declared, computed });
        }
        let bytes = buf.get(..declared).ok_or(SadError::TooShort {
            need: declared,
            have: buf.len(),
        })?;
        let modalities = fixed[OFF_MODALITIES];
        if modalities & !Modalities::KNOWN.0 != 0 {
            return Err(SadError::UnknownModalities(
                modalities & !Modalities::KNOWN.0,
            ));
        }
        if fixed[OFF_TRUST] > TrustLevel::Proven as u8 {
            return Err(SadError::BadTrustLevel(fixed[OFF_TRUST]));
        }
        let fan_out = fixed[OFF_FAN_OUT];
        if fan_out == 0 || fan_out > MAX_FAN_OUT {
            return Err(SadError::BadFanOut(fan_out));
        }
        let class = rd_u32(bytes, OFF_CLASS);
        if class == 0 {
            return Err(SadError::ZeroId {
                field: Field::Class,
            });
        }
        let caps_end = FIXED_LEN + 4 * n_caps;
        let claims_end = caps_end + 4 * n_claims;
        let mut prev = 0u32;
        for (index, c) in bytes[FIXED_LEN..caps_end].chunks_exact(4).enumerate() {
            let id = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if id <= prev {
                return Err(if id == 0 {
                    SadError::ZeroId {
                        field: Field::Capabilities,
                    }
                } else {
                    SadError::NotAscending {
                        field: Field::Capabilities,
                        index,
                    }
                });
            }
            if id == class {
                return Err(SadError::ClassRepeated);
            }
            prev = id;
        }
        check_ascending(
            Field::Claims,
            bytes[caps_end..claims_end]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        )?;
        check_ascending(
            Field::Proofs,
            bytes[claims_end..]
                .chunks_exact(8)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        )?;
        Ok((SadView { bytes }, declared))
    }

    /// Parses a buffer that must hold exactly one descriptor and nothing else.
    pub fn parse_exact(buf: &'a [u8]) -> Result<SadView<'a>, SadError> {
        let (view, used) = Self::parse(buf)?;
        if used != buf.len() {
            return Err(SadError::TrailingBytes(buf.len() - used));
        }
        Ok(view)
    }

    /// The descriptor's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Routing domain id (0: the tenant's default domain).
    #[inline]
    pub fn domain(&self) -> u32 {
        rd_u32(self.bytes, OFF_DOMAIN)
    }
    /// Primary capability id.
    #[inline]
    pub fn class(&self) -> u32 {
        rd_u32(self.bytes, OFF_CLASS)
    }
    /// Model family id (0: any).
    #[inline]
    pub fn model_family(&self) -> u32 {
        rd_u32(self.bytes, OFF_FAMILY)
    }
    /// Minimum context window (0: any).
    #[inline]
    pub fn min_context(&self) -> u32 {
        rd_u32(self.bytes, OFF_CONTEXT)
    }
    /// Latency bound in ms ([`ANY`]: none).
    #[inline]
    pub fn max_latency_ms(&self) -> u32 {
        rd_u32(self.bytes, OFF_LATENCY)
    }
    /// Cost bound in micro-USD per 1,000 tokens ([`ANY`]: none).
    #[inline]
    pub fn max_cost(&self) -> u32 {
        rd_u32(self.bytes, OFF_COST)
    }
    /// Required modalities.
    #[inline]
    pub fn modalities(&self) -> Modalities {
        Modalities(self.bytes[OFF_MODALITIES])
    }
    /// Least trust level accepted.
    #[inline]
    pub fn min_trust(&self) -> TrustLevel {
        // Checked in parse().
        TrustLevel::from_u8(self.bytes[OFF_TRUST]).unwrap_or(TrustLevel::Proven)
    }
    /// Endpoints to send to at once.
    #[inline]
    pub fn fan_out(&self) -> u8 {
        self.bytes[OFF_FAN_OUT]
    }
    fn n(&self, off: usize) -> usize {
        self.bytes[off] as usize
    }
    /// Additional capability ids, ascending.
    #[inline]
    pub fn extra_capabilities(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        let end = FIXED_LEN + 4 * self.n(OFF_N_CAPS);
        self.bytes[FIXED_LEN..end]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
    /// Required claim ids, ascending.
    #[inline]
    pub fn required_claims(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        let start = FIXED_LEN + 4 * self.n(OFF_N_CAPS);
        let end = start + 4 * self.n(OFF_N_CLAIMS);
        self.bytes[start..end]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
    /// Required proofs, by ascending claim id.
    #[inline]
    pub fn required_proofs(&self) -> impl ExactSizeIterator<Item = ProofBound> + 'a {
        let start = FIXED_LEN + 4 * (self.n(OFF_N_CAPS) + self.n(OFF_N_CLAIMS));
        self.bytes[start..].chunks_exact(8).map(|c| ProofBound {
            claim: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            min_score: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
    }

    /// An owned copy.
    pub fn to_descriptor(&self) -> Descriptor {
        Descriptor {
            domain: self.domain(),
            class: self.class(),
            extra_capabilities: self.extra_capabilities().collect(),
            model_family: self.model_family(),
            min_context: self.min_context(),
            max_latency_ms: self.max_latency_ms(),
            max_cost: self.max_cost(),
            modalities: self.modalities(),
            min_trust: self.min_trust(),
            fan_out: self.fan_out(),
            required_claims: self.required_claims().collect(),
            required_proofs: self.required_proofs().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{capability_id, claim_id, family_id};
    use proptest::prelude::*;

    fn example() -> Descriptor {
        let mut extra = vec![capability_id("chat"), capability_id("tool-use")];
        extra.sort_unstable();
        let mut claims = vec![
            claim_id("issuer:Nexus Intermediate CA"),
            claim_id("benchmark:humaneval"),
        ];
        claims.sort_unstable();
        Descriptor {
            domain: crate::id::domain_id("acme", "code-assistants"),
            class: capability_id("code-generation"),
            extra_capabilities: extra,
            model_family: family_id("llm"),
            min_context: 128_000,
            max_latency_ms: 200,
            max_cost: 3_000,
            modalities: Modalities::TEXT,
            min_trust: TrustLevel::Proven,
            fan_out: 2,
            required_claims: claims,
            required_proofs: vec![ProofBound {
                claim: claim_id("safety-eval"),
                min_score: 9_000,
            }],
        }
    }

    #[test]
    fn round_trip_example() {
        let d = example();
        let mut bytes = d.to_bytes().expect("valid");
        assert_eq!(bytes.len(), d.encoded_len());
        bytes.extend_from_slice(b"payload");
        let (view, used) = SadView::parse(&bytes).expect("parses");
        assert_eq!(used, d.encoded_len());
        assert_eq!(view.to_descriptor(), d);
        assert_eq!(
            SadView::parse_exact(&bytes),
            Err(SadError::TrailingBytes(7))
        );
    }

    #[test]
    fn layout_is_as_documented() {
        let d = example();
        let b = d.to_bytes().expect("valid");
        assert_eq!(&b[0..2], b"NR");
        assert_eq!(b[2], 1);
        assert_eq!(u16::from_le_bytes([b[4], b[5]]) as usize, b.len());
        assert_eq!(rd_u32(&b, OFF_DOMAIN), d.domain);
        assert_eq!(rd_u32(&b, OFF_CLASS), d.class);
        assert_eq!(b.len(), 36 + 8 + 8 + 8);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let b = example().to_bytes().expect("valid");
        for n in 0..b.len() {
            assert!(
                matches!(SadView::parse(&b[..n]), Err(SadError::TooShort { .. })),
                "prefix of {n} bytes"
            );
        }
    }

    #[test]
    fn typed_errors() {
        let good = example().to_bytes().expect("valid");
        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            SadView::parse(&b).err()
        };
        assert_eq!(
            bad(&|b| b[0] = b'X'),
            Some(SadError::BadMagic([b'X', b'R']))
        );
        assert_eq!(bad(&|b| b[2] = 2), Some(SadError::UnsupportedVersion(2)));
        assert_eq!(bad(&|b| b[3] = 1), Some(SadError::ReservedFlags(1)));
        assert_eq!(
            bad(&|b| b[4] = 37),
            Some(SadError::LengthMismatch {
                declared: 37,
                computed: 60
            })
        );
        assert_eq!(
            bad(&|b| b[6] = 0x80),
            Some(SadError::UnknownModalities(0x80))
        );
        assert_eq!(bad(&|b| b[7] = 4), Some(SadError::BadTrustLevel(4)));
        assert_eq!(bad(&|b| b[8] = 0), Some(SadError::BadFanOut(0)));
        assert_eq!(bad(&|b| b[8] = 17), Some(SadError::BadFanOut(17)));
        assert_eq!(
            bad(&|b| b[9] = 16),
            Some(SadError::TooMany {
                field: Field::Capabilities,
                count: 16
            })
        );
        assert_eq!(
            bad(&|b| b[16..20].copy_from_slice(&[0; 4])),
            Some(SadError::ZeroId {
                field: Field::Class
            })
        );
        // Swap the two capabilities: no longer ascending.
        assert_eq!(
            bad(&|b| {
                let (x, y) = (b[36..40].to_vec(), b[40..44].to_vec());
                b[36..40].copy_from_slice(&y);
                b[40..44].copy_from_slice(&x);
            }),
            Some(SadError::NotAscending {
                field: Field::Capabilities,
                index: 1
            })
        );
        // The class repeated among the extras.
        assert_eq!(
            bad(&|b| {
                let class = b[16..20].to_vec();
                let hi = rd_u32(b, 40);
                if rd_u32(&class, 0) < hi {
                    b[36..40].copy_from_slice(&class);
                } else {
                    b[40..44].copy_from_slice(&class);
                }
            }),
            Some(SadError::ClassRepeated)
        );
    }

    #[test]
    fn encoder_refuses_what_decoder_refuses() {
        let mut d = example();
        d.fan_out = 0;
        assert_eq!(d.to_bytes(), Err(SadError::BadFanOut(0)));
        let mut d = example();
        d.required_claims.reverse();
        assert!(matches!(d.to_bytes(), Err(SadError::NotAscending { .. })));
        let mut d = example();
        d.extra_capabilities = (1..=16).collect();
        assert!(matches!(d.to_bytes(), Err(SadError::TooMany { .. })));
    }

    fn arb_ids(max: usize) -> impl Strategy<Value = Vec<u32>> {
        proptest::collection::btree_set(1u32.., 0..=max).prop_map(|s| s.into_iter().collect())
    }

    prop_compose! {
        fn arb_descriptor()(
            domain in any::<u32>(),
            class in 1u32..,
            extra in arb_ids(MAX_EXTRA_CAPABILITIES),
            family in any::<u32>(),
            ctx in any::<u32>(),
            lat in any::<u32>(),
            cost in any::<u32>(),
            modalities in 0u8..32,
            trust in 0u8..4,
            fan_out in 1u8..=MAX_FAN_OUT,
            claims in arb_ids(MAX_CLAIMS),
            proofs in arb_ids(MAX_PROOFS),
            scores in proptest::collection::vec(any::<u32>(), MAX_PROOFS),
        ) -> Descriptor {
            Descriptor {
                domain, class,
                extra_capabilities: extra.into_iter().filter(|&c| c != class).collect(),
                model_family: family, min_context: ctx, max_latency_ms: lat, max_cost: cost,
                modalities: Modalities(modalities),
                min_trust: TrustLevel::from_u8(trust).unwrap_or_default(),
                fan_out,
                required_claims: claims,
                required_proofs: proofs.into_iter().zip(scores)
                    .map(|(claim, min_score)| ProofBound { claim, min_score }).collect(),
            }
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(d in arb_descriptor()) {
            let b = d.to_bytes().expect("generated descriptors are valid");
            let view = SadView::parse_exact(&b).expect("decodes");
            prop_assert_eq!(view.to_descriptor(), d);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_accepted_ones_are_canonical(
            bytes in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            if let Ok((view, used)) = SadView::parse(&bytes) {
                // Whatever decodes re-encodes to exactly the same bytes.
                let again = view.to_descriptor().to_bytes().expect("decoded descriptors are valid");
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
        }
    }
}
