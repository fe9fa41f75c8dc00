//! Zero-knowledge score-threshold claims for Model Identity Certificates.
//!
//! At issuance the CA binds a commitment `C = Poseidon(score, blinding)` into the model's
//! certificate (the model owner keeps `score` and `blinding`). Later the owner proves
//! "the score committed in `C` is at least `threshold`" with a Groth16 proof over BN254,
//! revealing nothing else about the score.
//!
//! # Example
//! ```
//! use nexus_zk::{commit, os_rng, prove, random_blinding, setup, verify};
//!
//! # fn main() -> Result<(), nexus_zk::ZkError> {
//! // Once, by the CA: keys for the fixed circuit; the verifying key is published.
//! let (pk, vk) = setup(&mut os_rng()?)?;
//! // At issuance: the CA binds `c` into the certificate, the owner keeps (score, r).
//! let r = random_blinding()?;
//! let c = commit(9731, &r); // score 0.9731
//! // Later, the owner proves "score >= 0.95" and anyone holding `vk` checks it.
//! let proof = prove(&pk, 9731, &r, 9500)?;
//! verify(&vk, &c, 9500, &proof)?;
//! assert!(verify(&vk, &c, 9800, &proof).is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Scores
//! Scores are fixed-point unsigned integers: `score × 10^4` as `u64`
//! ([`SCORE_SCALE`]; `0.9731` → `9731`, `97.31` → `973100`). [`parse_score`] and
//! [`format_score`] convert exactly, without floats. The circuit range-checks scores and
//! thresholds to 64 bits ([`circuit::SCORE_BITS`]).
//!
//! # Trust assumption of the setup
//! [`setup`] is a single-party trusted setup: whoever ran it (and anyone who obtained its
//! random "toxic waste", which arkworks drops but does not zeroise) can forge proofs for
//! any statement. The circuit is fixed, so keys are generated once and reused. Acceptable
//! for a CA that already is the root of trust for these certificates (the CA runs setup
//! and publishes the verifying key); a deployment where verifiers must not trust the CA
//! needs an MPC ceremony (Powers of Tau + circuit-specific phase 2) instead.
//!
//! # What a proof does and does not say
//! A proof is about `(C, threshold)` only. It is not bound to a presenter, session or claim
//! name and can be replayed (and, as Groth16 proofs are malleable, re-randomised) by anyone
//! who has seen it; presenter authentication comes from the certificate's key (mTLS). A
//! verifier must take `C` from the certificate it authenticated — see
//! [`ClaimProof::verify_against`].
//!
//! # Untrusted input
//! Every decoder (bytes, hex, base64, JSON, files) enforces a size limit first, uses
//! checked ark-serialize deserialisation (canonical scalars; points on the curve and in
//! the prime-order subgroup), rejects trailing bytes and keys whose shape is not this
//! circuit's, and returns a [`ZkError`]; none panics.

pub mod circuit;
mod claim;
#[cfg(feature = "cli")]
pub mod cli;
mod encoding;
mod error;
mod files;
pub mod poseidon;
mod score;
mod types;

use ark_bn254::{Bn254, Fr};
use ark_groth16::Groth16;
use ark_snark::SNARK;
use ark_std::rand::{CryptoRng, RngCore, SeedableRng, rngs::StdRng};
use rand::TryRngCore;

pub use ark_std::rand as ark_rand;
pub use claim::{CLAIM_NAME_MAX_LEN, CLAIM_PROOF_JSON_MAX_LEN, ClaimProof, Opening, SCHEME};
pub use error::ZkError;
pub use files::{
    KeyPaths, PROVING_KEY_FILE, VERIFYING_KEY_FILE, load_claim_proof, load_opening,
    load_proving_key, load_verifying_key, write_claim_proof, write_keys, write_opening,
};
pub use score::{SCORE_SCALE, format_score, parse_score};
pub use types::{
    BLINDING_LEN, Blinding, COMMITMENT_LEN, Commitment, PROOF_LEN, PROVING_KEY_MAX_LEN, Proof,
    ProvingKey, VERIFYING_KEY_MAX_LEN, VerifyingKey,
};

use circuit::ThresholdCircuit;

/// A cryptographically secure RNG for [`setup`]/[`prove_with_rng`], seeded from the
/// operating system (ChaCha12 `StdRng` of the `rand` 0.8 API arkworks uses).
pub fn os_rng() -> Result<StdRng, ZkError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| ZkError::Rng(e.to_string()))?;
    Ok(StdRng::from_seed(seed))
}

/// A fresh uniformly random blinding from the operating system's RNG.
pub fn random_blinding() -> Result<Blinding, ZkError> {
    let mut bytes = [0u8; 64];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ZkError::Rng(e.to_string()))?;
    Ok(Blinding::from_uniform_bytes(&bytes))
}

/// `C = Poseidon(score, blinding)` (see [`poseidon`] for the parameters).
pub fn commit(score: u64, blinding: &Blinding) -> Commitment {
    Commitment(poseidon::hash2(Fr::from(score), blinding.0))
}

/// Generate the Groth16 keys for the threshold circuit.
///
/// Single-party trusted setup: see the crate docs. Takes about 0.1–0.3 s.
pub fn setup<R: RngCore + CryptoRng>(rng: &mut R) -> Result<(ProvingKey, VerifyingKey), ZkError> {
    let (pk, _vk) = Groth16::<Bn254>::circuit_specific_setup(ThresholdCircuit::default(), rng)
        .map_err(|e| ZkError::ProofSystem(e.to_string()))?;
    let pk = ProvingKey::new(pk)?;
    let vk = pk.verifying_key().clone();
    Ok((pk, vk))
}

/// Prove that the score committed by `commit(score, blinding)` is at least `threshold`,
/// with randomness from the operating system.
pub fn prove(
    pk: &ProvingKey,
    score: u64,
    blinding: &Blinding,
    threshold: u64,
) -> Result<Proof, ZkError> {
    prove_with_rng(pk, score, blinding, threshold, &mut os_rng()?)
}

/// [`prove`] with a caller-supplied RNG.
///
/// Refuses ([`ZkError::ScoreBelowThreshold`]) when `score < threshold` instead of producing
/// a proof that cannot verify, and checks its own output against the key's verifying key
/// (so a proving key from another setup is reported, not silently used).
pub fn prove_with_rng<R: RngCore + CryptoRng>(
    pk: &ProvingKey,
    score: u64,
    blinding: &Blinding,
    threshold: u64,
    rng: &mut R,
) -> Result<Proof, ZkError> {
    if score < threshold {
        return Err(ZkError::ScoreBelowThreshold);
    }
    let commitment = commit(score, blinding);
    let circuit = ThresholdCircuit::with_witness(
        commitment.field(),
        Fr::from(threshold),
        Fr::from(score),
        blinding.0,
    );
    let proof = Groth16::<Bn254>::prove(&pk.pk, circuit, rng)
        .map_err(|e| ZkError::ProofSystem(e.to_string()))?;
    let proof = Proof(proof);
    verify(pk.verifying_key(), &commitment, threshold, &proof).map_err(|_| {
        ZkError::ProofSystem(
            "generated proof does not verify under the proving key's own VK".into(),
        )
    })?;
    Ok(proof)
}

/// Check a proof that the score committed in `commitment` is at least `threshold`.
///
/// `Ok(())` only if the proof verifies; [`ZkError::ProofRejected`] otherwise. About 1–2 ms.
pub fn verify(
    vk: &VerifyingKey,
    commitment: &Commitment,
    threshold: u64,
    proof: &Proof,
) -> Result<(), ZkError> {
    let inputs = [commitment.field(), Fr::from(threshold)];
    match Groth16::<Bn254>::verify_with_processed_vk(&vk.pvk, &inputs, &proof.0) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ZkError::ProofRejected),
        Err(e) => Err(ZkError::ProofSystem(e.to_string())),
    }
}
