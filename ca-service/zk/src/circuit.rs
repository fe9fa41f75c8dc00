//! The R1CS circuit: "I know `s`, `r` with `Poseidon(s, r) = C` and `s ≥ t`".
//!
//! Public inputs, in this order: the commitment `C`, the threshold `t`.
//! Witnesses: the score `s`, the blinding `r`.
//!
//! Constraints:
//! 1. `t` fits in [`SCORE_BITS`] bits, `s` fits in [`SCORE_BITS`] bits;
//! 2. `d = s − t` (computed in the field) fits in [`SCORE_BITS`] bits;
//! 3. `Poseidon(s, r) = C`.
//!
//! Soundness of the comparison: with `s, t < 2^n` and `n = 64 ≪ 254`, if `s ≥ t` then
//! `d = s − t < 2^n`; if `s < t` then `d = r_F − (t − s) > r_F − 2^n ≥ 2^n` (the field
//! wraps), so no assignment of `n` boolean bits can recompose to `d`. Each range check costs
//! `n` booleanity constraints plus one linear equality.

use ark_bn254::Fr;
use ark_ff::{BigInteger, PrimeField};
use ark_r1cs_std::{fields::fp::FpVar, prelude::*};
use ark_relations::gr1cs::{
    ConstraintSynthesizer, ConstraintSystem, ConstraintSystemRef, OptimizationGoal, SynthesisError,
    SynthesisMode,
};

use crate::poseidon::hash2_gadget;

/// Bit width of scores and thresholds (fixed-point `u64`, see [`crate::SCORE_SCALE`]).
pub const SCORE_BITS: usize = 64;

/// Number of public inputs (commitment, threshold).
pub const NUM_PUBLIC_INPUTS: usize = 2;

/// The threshold-claim circuit. All fields `None` for key generation; all `Some` to prove.
///
/// Fields are raw field elements so tests can build out-of-range witnesses; the safe API
/// ([`crate::prove`]) only ever fills them from `u64` values.
#[derive(Clone, Debug, Default)]
pub struct ThresholdCircuit {
    /// Public: the Poseidon commitment `C`.
    pub commitment: Option<Fr>,
    /// Public: the threshold `t`.
    pub threshold: Option<Fr>,
    /// Witness: the score `s`.
    pub score: Option<Fr>,
    /// Witness: the blinding `r`.
    pub blinding: Option<Fr>,
}

impl ThresholdCircuit {
    /// A circuit with a full assignment.
    pub fn with_witness(commitment: Fr, threshold: Fr, score: Fr, blinding: Fr) -> Self {
        Self {
            commitment: Some(commitment),
            threshold: Some(threshold),
            score: Some(score),
            blinding: Some(blinding),
        }
    }
}

fn assigned(v: Option<Fr>) -> Result<Fr, SynthesisError> {
    v.ok_or(SynthesisError::AssignmentMissing)
}

/// Enforce `0 ≤ x < 2^n` by bit decomposition: `n` boolean witnesses whose weighted sum
/// equals `x`.
fn enforce_bit_length(
    cs: &ConstraintSystemRef<Fr>,
    x: &FpVar<Fr>,
    n: usize,
) -> Result<(), SynthesisError> {
    let value = x.value();
    let bits = (0..n)
        .map(|i| Boolean::new_witness(cs.clone(), || value.map(|v| v.into_bigint().get_bit(i))))
        .collect::<Result<Vec<_>, _>>()?;
    Boolean::le_bits_to_fp(&bits)?.enforce_equal(x)
}

impl ConstraintSynthesizer<Fr> for ThresholdCircuit {
    fn generate_constraints(self, cs: ConstraintSystemRef<Fr>) -> Result<(), SynthesisError> {
        let commitment = FpVar::new_input(cs.clone(), || assigned(self.commitment))?;
        let threshold = FpVar::new_input(cs.clone(), || assigned(self.threshold))?;
        let score = FpVar::new_witness(cs.clone(), || assigned(self.score))?;
        let blinding = FpVar::new_witness(cs.clone(), || assigned(self.blinding))?;

        enforce_bit_length(&cs, &threshold, SCORE_BITS)?;
        enforce_bit_length(&cs, &score, SCORE_BITS)?;
        let difference = &score - &threshold;
        enforce_bit_length(&cs, &difference, SCORE_BITS)?;

        let hash = hash2_gadget(cs.clone(), &score, &blinding)?;
        hash.enforce_equal(&commitment)
    }
}

/// Size of the circuit as synthesised for key generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitShape {
    /// R1CS constraints.
    pub constraints: usize,
    /// Instance variables, including the constant `1`.
    pub instance_variables: usize,
    /// Witness variables.
    pub witness_variables: usize,
}

/// Synthesise the circuit in setup mode (as Groth16 key generation does) and measure it.
pub fn circuit_shape() -> Result<CircuitShape, SynthesisError> {
    let cs = ConstraintSystem::<Fr>::new_ref();
    cs.set_optimization_goal(OptimizationGoal::Constraints);
    cs.set_mode(SynthesisMode::Setup);
    ThresholdCircuit::default().generate_constraints(cs.clone())?;
    cs.finalize();
    Ok(CircuitShape {
        constraints: cs.num_constraints(),
        instance_variables: cs.num_instance_variables(),
        witness_variables: cs.num_witness_variables(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poseidon::hash2;
    use ark_ff::{Field, One};

    fn satisfied(circuit: ThresholdCircuit) -> bool {
        let cs = ConstraintSystem::<Fr>::new_ref();
        circuit
            .generate_constraints(cs.clone())
            .expect("synthesis with a full assignment succeeds");
        cs.is_satisfied().expect("all variables assigned")
    }

    /// Builds a circuit whose commitment matches the (possibly out-of-range) witness, so
    /// only the range/comparison constraints can fail.
    fn honest_commitment(score: Fr, threshold: Fr) -> ThresholdCircuit {
        let blinding = Fr::from(0x5eed_u64);
        ThresholdCircuit::with_witness(hash2(score, blinding), threshold, score, blinding)
    }

    fn two_pow_64() -> Fr {
        Fr::from(2u64).pow([64u64])
    }

    #[test]
    fn honest_witnesses_satisfy() {
        for (s, t) in [
            (9731u64, 9000u64),
            (5, 5),
            (u64::MAX, 0),
            (u64::MAX, u64::MAX),
            (0, 0),
        ] {
            assert!(
                satisfied(honest_commitment(Fr::from(s), Fr::from(t))),
                "{s} >= {t}"
            );
        }
    }

    #[test]
    fn score_below_threshold_is_unsatisfiable() {
        for (s, t) in [
            (8999u64, 9000u64),
            (0, 1),
            (0, u64::MAX),
            (u64::MAX - 1, u64::MAX),
        ] {
            assert!(
                !satisfied(honest_commitment(Fr::from(s), Fr::from(t))),
                "{s} < {t}"
            );
        }
    }

    #[test]
    fn out_of_range_values_are_unsatisfiable() {
        let big = two_pow_64();
        // A score beyond 64 bits, with a matching commitment.
        assert!(!satisfied(honest_commitment(big, Fr::from(1u64))));
        // A "negative" score (field wrap-around).
        assert!(!satisfied(honest_commitment(-Fr::one(), Fr::from(1u64))));
        // A threshold beyond 64 bits (and the score too).
        assert!(!satisfied(honest_commitment(big + big, big)));
    }

    #[test]
    fn wrong_opening_is_unsatisfiable() {
        let (s, r) = (Fr::from(9731u64), Fr::from(7u64));
        let c = hash2(s, r);
        assert!(satisfied(ThresholdCircuit::with_witness(
            c,
            Fr::from(9000u64),
            s,
            r
        )));
        let wrong_r = ThresholdCircuit::with_witness(c, Fr::from(9000u64), s, r + Fr::one());
        assert!(!satisfied(wrong_r));
        let wrong_s = ThresholdCircuit::with_witness(c, Fr::from(9000u64), s + Fr::one(), r);
        assert!(!satisfied(wrong_s));
    }

    #[test]
    fn shape_is_stable() {
        let shape = circuit_shape().expect("synthesis");
        // 3 × (64 booleanity + 1 recomposition) + Poseidon (8·3 + 57 S-boxes × 3) + 1.
        assert_eq!(shape.instance_variables, 1 + NUM_PUBLIC_INPUTS);
        assert_eq!(shape.constraints, 436, "{shape:?}");
        assert_eq!(shape.witness_variables, 434, "{shape:?}");
    }
}
