//! Transport types: commitments, blindings, proofs and keys, each with checked
//! byte/text (de)serialisation and a size limit.

use std::fmt;
use std::sync::OnceLock;

use ark_bn254::{Bn254, Fr};
use ark_ec::AffineRepr;
use ark_ff::{PrimeField, Zero};
use ark_groth16::PreparedVerifyingKey;
use ark_groth16::prepare_verifying_key;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ZkError;
use crate::circuit::{NUM_PUBLIC_INPUTS, circuit_shape};
use crate::encoding::{decode_base64, decode_hex, encode_base64, from_bytes, to_bytes};

/// Bytes in a serialised [`Commitment`] (one BN254 scalar, little-endian, canonical).
pub const COMMITMENT_LEN: usize = 32;
/// Bytes in a serialised [`Blinding`].
pub const BLINDING_LEN: usize = 32;
/// Bytes in a serialised [`Proof`]: compressed `A ∈ G1` (32), `B ∈ G2` (64), `C ∈ G1` (32).
pub const PROOF_LEN: usize = 128;
/// Largest accepted serialised [`VerifyingKey`] (the real one is 328 bytes).
pub const VERIFYING_KEY_MAX_LEN: usize = 4 * 1024;
/// Largest accepted serialised [`ProvingKey`] (the real one is 86,608 bytes).
pub const PROVING_KEY_MAX_LEN: usize = 16 * 1024 * 1024;

fn decode_field(what: &'static str, bytes: &[u8]) -> Result<Fr, ZkError> {
    if bytes.len() != 32 {
        return Err(ZkError::WrongLength {
            what,
            expected: 32,
            got: bytes.len(),
        });
    }
    from_bytes::<Fr>(what, bytes, 32)
}

fn field_bytes(value: &Fr) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&to_bytes(value));
    out
}

// ---------------------------------------------------------------------------------------

/// A hiding, binding commitment `C = Poseidon(score, blinding)` to a fixed-point score.
///
/// This is what the CA binds into a Model Identity Certificate at issuance. Serialised as
/// 32 bytes (canonical little-endian BN254 scalar); text form is lowercase hex; serde uses
/// the hex form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Commitment(pub(crate) Fr);

impl Commitment {
    /// The 32-byte canonical encoding.
    pub fn to_bytes(&self) -> [u8; COMMITMENT_LEN] {
        field_bytes(&self.0)
    }

    /// Parse 32 bytes; rejects a value that is not a canonical field element.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        decode_field("commitment", bytes).map(Self)
    }

    /// Lowercase hex of [`Self::to_bytes`].
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Parse hex text.
    pub fn from_hex(text: &str) -> Result<Self, ZkError> {
        Self::from_bytes(&decode_hex("commitment", text, COMMITMENT_LEN)?)
    }

    pub(crate) fn field(&self) -> Fr {
        self.0
    }
}

impl fmt::Display for Commitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Commitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Commitment({})", self.to_hex())
    }
}

impl Serialize for Commitment {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Commitment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------

/// The secret blinding factor `r` of a commitment: a uniformly random BN254 scalar.
///
/// Whoever holds `(score, blinding)` can open the commitment and prove claims about it;
/// keep it with the model's private key material. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Blinding(pub(crate) Fr);

impl Blinding {
    /// The 32-byte canonical encoding.
    pub fn to_bytes(&self) -> [u8; BLINDING_LEN] {
        field_bytes(&self.0)
    }

    /// Parse 32 bytes; rejects non-canonical values and zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        let value = decode_field("blinding", bytes)?;
        if value.is_zero() {
            return Err(ZkError::malformed("blinding", "zero blinding"));
        }
        Ok(Self(value))
    }

    /// Lowercase hex of [`Self::to_bytes`].
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Parse hex text.
    pub fn from_hex(text: &str) -> Result<Self, ZkError> {
        Self::from_bytes(&decode_hex("blinding", text, BLINDING_LEN)?)
    }

    /// A blinding derived from 64 uniformly random bytes (reduced mod `r`; bias ≤ 2^-254).
    pub fn from_uniform_bytes(bytes: &[u8; 64]) -> Self {
        Self(Fr::from_le_bytes_mod_order(bytes))
    }
}

impl fmt::Debug for Blinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Blinding(<redacted>)")
    }
}

impl Serialize for Blinding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Blinding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------

/// A Groth16 proof (128 bytes compressed; text form standard base64; serde uses base64).
#[derive(Clone, PartialEq)]
pub struct Proof(pub(crate) ark_groth16::Proof<Bn254>);

// Equality of group elements is an equivalence relation.
impl Eq for Proof {}

impl Proof {
    /// Compressed canonical encoding ([`PROOF_LEN`] bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        to_bytes(&self.0)
    }

    /// Parse exactly [`PROOF_LEN`] bytes; checks every point is on the curve, in the
    /// prime-order subgroup and not the identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        if bytes.len() != PROOF_LEN {
            return Err(ZkError::WrongLength {
                what: "proof",
                expected: PROOF_LEN,
                got: bytes.len(),
            });
        }
        let proof: ark_groth16::Proof<Bn254> = from_bytes("proof", bytes, PROOF_LEN)?;
        // Honest proofs have identity elements with negligible probability.
        if proof.a.is_zero() || proof.b.is_zero() || proof.c.is_zero() {
            return Err(ZkError::malformed("proof", "identity element in proof"));
        }
        Ok(Self(proof))
    }

    /// Standard base64 of [`Self::to_bytes`].
    pub fn to_base64(&self) -> String {
        encode_base64(&self.to_bytes())
    }

    /// Parse base64 text.
    pub fn from_base64(text: &str) -> Result<Self, ZkError> {
        Self::from_bytes(&decode_base64("proof", text, PROOF_LEN)?)
    }
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proof({})", self.to_base64())
    }
}

impl Serialize for Proof {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Proof {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------

fn check_vk_shape(vk: &ark_groth16::VerifyingKey<Bn254>) -> Result<(), ZkError> {
    // A key with an identity element is degenerate (with all of them at infinity every
    // proof whose `A` is the identity verifies): refuse it.
    if vk.alpha_g1.is_zero()
        || vk.beta_g2.is_zero()
        || vk.gamma_g2.is_zero()
        || vk.delta_g2.is_zero()
    {
        return Err(ZkError::malformed(
            "verifying key",
            "identity element in key",
        ));
    }
    let n = vk.gamma_abc_g1.len();
    if n != NUM_PUBLIC_INPUTS + 1 {
        return Err(ZkError::malformed(
            "verifying key",
            format!(
                "{n} input bases, this circuit needs {}",
                NUM_PUBLIC_INPUTS + 1
            ),
        ));
    }
    Ok(())
}

fn fingerprint(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A Groth16 verifying key for the threshold circuit, with its pairing-prepared form cached.
///
/// Public: the CA publishes it (e.g. in a ConfigMap) next to its CA certificate.
#[derive(Clone)]
pub struct VerifyingKey {
    pub(crate) pvk: PreparedVerifyingKey<Bn254>,
}

impl VerifyingKey {
    pub(crate) fn new(vk: ark_groth16::VerifyingKey<Bn254>) -> Result<Self, ZkError> {
        check_vk_shape(&vk)?;
        Ok(Self {
            pvk: prepare_verifying_key(&vk),
        })
    }

    /// Compressed canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        to_bytes(&self.pvk.vk)
    }

    /// Parse (checked) and prepare a verifying key; rejects keys for another circuit shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        Self::new(from_bytes("verifying key", bytes, VERIFYING_KEY_MAX_LEN)?)
    }

    /// Standard base64 of [`Self::to_bytes`].
    pub fn to_base64(&self) -> String {
        encode_base64(&self.to_bytes())
    }

    /// Parse base64 text.
    pub fn from_base64(text: &str) -> Result<Self, ZkError> {
        Self::from_bytes(&decode_base64(
            "verifying key",
            text,
            VERIFYING_KEY_MAX_LEN,
        )?)
    }

    /// Hex SHA-256 of [`Self::to_bytes`], to name the key in logs and certificates.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.to_bytes())
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.pvk.vk == other.pvk.vk
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey(sha256:{})", self.fingerprint())
    }
}

/// Vector lengths a proving key for this circuit must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PkShape {
    pub(crate) query: usize,
    pub(crate) h_query: usize,
    pub(crate) l_query: usize,
}

pub(crate) fn expected_pk_shape() -> Result<PkShape, ZkError> {
    static SHAPE: OnceLock<Option<PkShape>> = OnceLock::new();
    SHAPE
        .get_or_init(|| {
            let shape = circuit_shape().ok()?;
            // Groth16 (libsnark reduction) evaluates over a radix-2 domain of at least
            // constraints + instance variables points; h has one fewer coefficient.
            let domain = (shape.constraints + shape.instance_variables).next_power_of_two();
            Some(PkShape {
                query: shape.instance_variables + shape.witness_variables,
                h_query: domain - 1,
                l_query: shape.witness_variables,
            })
        })
        .ok_or_else(|| ZkError::ProofSystem("circuit synthesis failed".into()))
}

fn check_pk_shape(pk: &ark_groth16::ProvingKey<Bn254>) -> Result<(), ZkError> {
    check_vk_shape(&pk.vk)?;
    let want = expected_pk_shape()?;
    let got = PkShape {
        query: pk.a_query.len(),
        h_query: pk.h_query.len(),
        l_query: pk.l_query.len(),
    };
    if got != want || pk.b_g1_query.len() != want.query || pk.b_g2_query.len() != want.query {
        return Err(ZkError::malformed(
            "proving key",
            "vector lengths do not match this circuit",
        ));
    }
    Ok(())
}

/// A Groth16 proving key for the threshold circuit (public, but large: about 85 KiB).
///
/// Holds its verifying key (prepared) so [`crate::prove`] can check its own output.
#[derive(Clone)]
pub struct ProvingKey {
    pub(crate) pk: ark_groth16::ProvingKey<Bn254>,
    pub(crate) vk: VerifyingKey,
}

impl ProvingKey {
    pub(crate) fn new(pk: ark_groth16::ProvingKey<Bn254>) -> Result<Self, ZkError> {
        check_pk_shape(&pk)?;
        let vk = VerifyingKey::new(pk.vk.clone())?;
        Ok(Self { pk, vk })
    }

    /// The matching verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.vk
    }

    /// Compressed canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        to_bytes(&self.pk)
    }

    /// Parse (checked: every point on the curve and in its subgroup) and check the vector
    /// lengths match this circuit.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ZkError> {
        Self::new(from_bytes("proving key", bytes, PROVING_KEY_MAX_LEN)?)
    }
}

impl fmt::Debug for ProvingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProvingKey(vk sha256:{})", self.vk.fingerprint())
    }
}
