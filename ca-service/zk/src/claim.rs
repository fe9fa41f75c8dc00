//! JSON transport objects: a [`ClaimProof`] (public) and an [`Opening`] (secret).

use serde::{Deserialize, Serialize};

use crate::{
    Blinding, Commitment, Proof, ProvingKey, VerifyingKey, ZkError, commit, prove, verify,
};

/// Identifies the statement, proof system, curve and commitment scheme.
pub const SCHEME: &str = "nexus-zk/groth16-bn254-poseidon-threshold/v1";
/// Longest accepted claim name.
pub const CLAIM_NAME_MAX_LEN: usize = 128;
/// Largest accepted JSON text for a [`ClaimProof`] or an [`Opening`].
pub const CLAIM_PROOF_JSON_MAX_LEN: usize = 4 * 1024;

/// A proof that the score committed in `commitment` is at least `threshold`, labelled with
/// the claim (metric) it is about, for JSON/HTTP/CLI transport.
///
/// The claim name is a label, not part of the proven statement: a verifier must compare
/// `commitment` with the commitment the certificate binds for that claim
/// ([`Self::verify_against`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimProof {
    /// Always [`SCHEME`].
    pub scheme: String,
    /// What the score measures, e.g. `"accuracy"`: 1–128 characters of `[A-Za-z0-9._:/-]`.
    pub claim: String,
    /// Fixed-point threshold (`× 10^4`).
    pub threshold: u64,
    /// The commitment from the certificate (hex).
    pub commitment: Commitment,
    /// The Groth16 proof (base64).
    pub proof: Proof,
}

fn check_claim_name(name: &str) -> Result<(), ZkError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-');
    if name.is_empty() || name.len() > CLAIM_NAME_MAX_LEN || !name.chars().all(ok_char) {
        return Err(ZkError::InvalidClaim(format!(
            "claim name must be 1-{CLAIM_NAME_MAX_LEN} characters of [A-Za-z0-9._:/-]"
        )));
    }
    Ok(())
}

impl ClaimProof {
    /// Prove `score ≥ threshold` for the commitment `commit(score, blinding)`.
    pub fn create(
        pk: &ProvingKey,
        claim: &str,
        score: u64,
        blinding: &Blinding,
        threshold: u64,
    ) -> Result<Self, ZkError> {
        check_claim_name(claim)?;
        let proof = prove(pk, score, blinding, threshold)?;
        Ok(Self {
            scheme: SCHEME.to_owned(),
            claim: claim.to_owned(),
            threshold,
            commitment: commit(score, blinding),
            proof,
        })
    }

    /// Check the scheme, the claim name and the proof (against the commitment carried in
    /// the message). Prefer [`Self::verify_against`] with the certificate's commitment.
    pub fn verify(&self, vk: &VerifyingKey) -> Result<(), ZkError> {
        if self.scheme != SCHEME {
            return Err(ZkError::InvalidClaim("unknown scheme".into()));
        }
        check_claim_name(&self.claim)?;
        verify(vk, &self.commitment, self.threshold, &self.proof)
    }

    /// [`Self::verify`], and also require that the proof is about `expected` (the commitment
    /// the authenticated certificate binds for this claim) and proves at least
    /// `min_threshold` (a proof of `score ≥ t` implies `score ≥ t'` for all `t' ≤ t`).
    pub fn verify_against(
        &self,
        vk: &VerifyingKey,
        expected: &Commitment,
        min_threshold: u64,
    ) -> Result<(), ZkError> {
        if &self.commitment != expected {
            return Err(ZkError::InvalidClaim(
                "proof is about another commitment".into(),
            ));
        }
        if self.threshold < min_threshold {
            return Err(ZkError::InvalidClaim(format!(
                "proven threshold {} is below the required {}",
                crate::format_score(self.threshold),
                crate::format_score(min_threshold)
            )));
        }
        self.verify(vk)
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ClaimProof has only string and integer fields")
    }

    /// Parse JSON (at most [`CLAIM_PROOF_JSON_MAX_LEN`] bytes; unknown fields rejected;
    /// commitment and proof decoded checked). Does not verify the proof.
    pub fn from_json(text: &str) -> Result<Self, ZkError> {
        parse_json("claim proof", text)
    }
}

/// The secret opening of a commitment, kept by the model owner: score and blinding (plus
/// the commitment, for convenience and as a consistency check).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opening {
    /// Fixed-point score (`× 10^4`).
    pub score: u64,
    /// Secret blinding (hex).
    pub blinding: Blinding,
    /// `commit(score, blinding)` (hex).
    pub commitment: Commitment,
}

impl Opening {
    /// Commit to `score` with `blinding`.
    pub fn new(score: u64, blinding: Blinding) -> Self {
        let commitment = commit(score, &blinding);
        Self {
            score,
            blinding,
            commitment,
        }
    }

    /// Check that `commitment` really is `commit(score, blinding)`.
    pub fn check(&self) -> Result<(), ZkError> {
        if commit(self.score, &self.blinding) != self.commitment {
            return Err(ZkError::OpeningMismatch);
        }
        Ok(())
    }

    /// Pretty JSON (contains the secret blinding).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("Opening has only string and integer fields")
    }

    /// Parse JSON and [`Self::check`] it.
    pub fn from_json(text: &str) -> Result<Self, ZkError> {
        let opening: Self = parse_json("opening", text)?;
        opening.check()?;
        Ok(opening)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    text: &str,
) -> Result<T, ZkError> {
    if text.len() > CLAIM_PROOF_JSON_MAX_LEN {
        return Err(ZkError::TooLarge {
            what,
            len: text.len(),
            max: CLAIM_PROOF_JSON_MAX_LEN,
        });
    }
    serde_json::from_str(text).map_err(|e| ZkError::Json {
        what,
        reason: e.to_string(),
    })
}
