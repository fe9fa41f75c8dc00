//! The Poseidon hash used for score commitments: one fixed parameter set, a native
//! implementation and an R1CS gadget that computes exactly the same function.
//!
//! # Parameters (fixed: changing any of them invalidates every issued commitment and key)
//!
//! | parameter | value |
//! |---|---|
//! | field | BN254 scalar field `Fr` (254-bit prime `r`) |
//! | state width `t` | 3 = rate 2 + capacity 1 |
//! | S-box | `x^5` (`alpha = 5`; `gcd(5, r - 1) = 1`) |
//! | full rounds `R_F` | 8 |
//! | partial rounds `R_P` | 57 (the Poseidon paper's choice for `t = 3`, `x^5`, 128-bit security over a 254-bit field; also circomlib's) |
//! | round constants, MDS | Grain LFSR as in the Poseidon reference script, via arkworks' `find_poseidon_ark_and_mds(254, 2, 8, 57, skip_matrices = 0)`; the MDS is the Cauchy matrix `1/(x_i + y_j)` |
//!
//! The constants are regenerated deterministically (once, cached) rather than shipped as a
//! table; the unit tests pin known-answer vectors so an arkworks upgrade that changed
//! the generator would be caught. They are *not* the circomlib constants: commitments are
//! not interoperable with circom/iden3 Poseidon.
//!
//! # Hash of two elements
//!
//! `H(a, b)` = arkworks duplex sponge: state `[0, 0, 0]` (capacity element first), absorb
//! `a` into lane 1 and `b` into lane 2, permute, output lane 1. The input length is fixed
//! (always exactly two elements), so no padding or length encoding is needed. The parameter
//! set is used for nothing but this commitment, which gives it its own domain.

use std::sync::OnceLock;

use ark_bn254::Fr;
use ark_crypto_primitives::sponge::{
    CryptographicSponge, FieldBasedCryptographicSponge,
    constraints::CryptographicSpongeVar,
    poseidon::{
        PoseidonConfig, PoseidonSponge, constraints::PoseidonSpongeVar, find_poseidon_ark_and_mds,
    },
};
use ark_ff::PrimeField;
use ark_r1cs_std::fields::fp::FpVar;
use ark_relations::gr1cs::{ConstraintSystemRef, SynthesisError};

/// Sponge rate (field elements absorbed per permutation).
pub const POSEIDON_RATE: usize = 2;
/// Sponge capacity.
pub const POSEIDON_CAPACITY: usize = 1;
/// S-box exponent.
pub const POSEIDON_ALPHA: u64 = 5;
/// Number of full rounds.
pub const POSEIDON_FULL_ROUNDS: usize = 8;
/// Number of partial rounds.
pub const POSEIDON_PARTIAL_ROUNDS: usize = 57;
/// Candidate MDS matrices skipped by the Grain LFSR generator.
pub const POSEIDON_SKIP_MATRICES: u64 = 0;

/// The fixed Poseidon parameters (generated on first use, then cached).
pub fn poseidon_config() -> &'static PoseidonConfig<Fr> {
    static CONFIG: OnceLock<PoseidonConfig<Fr>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let (ark, mds) = find_poseidon_ark_and_mds::<Fr>(
            u64::from(Fr::MODULUS_BIT_SIZE),
            POSEIDON_RATE,
            POSEIDON_FULL_ROUNDS as u64,
            POSEIDON_PARTIAL_ROUNDS as u64,
            POSEIDON_SKIP_MATRICES,
        );
        PoseidonConfig::new(
            POSEIDON_FULL_ROUNDS,
            POSEIDON_PARTIAL_ROUNDS,
            POSEIDON_ALPHA,
            mds,
            ark,
            POSEIDON_RATE,
            POSEIDON_CAPACITY,
        )
    })
}

/// Native `H(a, b)`.
pub fn hash2(a: Fr, b: Fr) -> Fr {
    let mut sponge = PoseidonSponge::new(poseidon_config());
    sponge.absorb(&a);
    sponge.absorb(&b);
    sponge
        .squeeze_native_field_elements(1)
        .pop()
        .expect("squeezing one element yields one element")
}

/// In-circuit `H(a, b)`; same function as [`hash2`].
pub fn hash2_gadget(
    cs: ConstraintSystemRef<Fr>,
    a: &FpVar<Fr>,
    b: &FpVar<Fr>,
) -> Result<FpVar<Fr>, SynthesisError> {
    let mut sponge = PoseidonSpongeVar::new(cs, poseidon_config());
    sponge.absorb(a)?;
    sponge.absorb(b)?;
    sponge
        .squeeze_field_elements(1)?
        .pop()
        .ok_or(SynthesisError::Unsatisfiable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ark_ff::{BigInteger, UniformRand};
    use ark_r1cs_std::{GR1CSVar, alloc::AllocVar};
    use ark_relations::gr1cs::ConstraintSystem;
    use ark_std::rand::{SeedableRng, rngs::StdRng};
    use proptest::prelude::*;

    fn hex_of(x: Fr) -> String {
        hex::encode(x.into_bigint().to_bytes_be())
    }

    fn gadget_hash(a: Fr, b: Fr) -> (Fr, bool) {
        let cs = ConstraintSystem::<Fr>::new_ref();
        let a = FpVar::new_witness(cs.clone(), || Ok(a)).expect("alloc");
        let b = FpVar::new_witness(cs.clone(), || Ok(b)).expect("alloc");
        let h = hash2_gadget(cs.clone(), &a, &b).expect("gadget");
        (
            h.value().expect("value"),
            cs.is_satisfied().expect("satisfiable"),
        )
    }

    /// Known-answer vectors (big-endian hex). A change means the parameters changed and
    /// every issued commitment and key is invalid.
    #[test]
    fn known_answers() {
        let cfg = poseidon_config();
        assert_eq!((cfg.rate, cfg.capacity, cfg.alpha), (2, 1, 5));
        assert_eq!((cfg.full_rounds, cfg.partial_rounds), (8, 57));
        assert_eq!(cfg.ark.len(), 65);
        assert_eq!(
            hex_of(hash2(Fr::from(0u64), Fr::from(0u64))),
            "13a545a13f1d91dddb87f46679dfaec0900ce24791a924bee7fa4d69a9569d85"
        );
        assert_eq!(
            hex_of(hash2(Fr::from(1u64), Fr::from(2u64))),
            "0fca49b798923ab0239de1c9e7a4a9a2210312b6a2f616d18b5a87f9b628ae29"
        );
    }

    #[test]
    fn native_hash_is_not_symmetric() {
        let (a, b) = (Fr::from(1u64), Fr::from(2u64));
        assert_ne!(hash2(a, b), hash2(b, a));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn native_and_gadget_agree(seed in any::<u64>(), score in any::<u64>()) {
            let mut rng = StdRng::seed_from_u64(seed);
            let r = Fr::rand(&mut rng);
            for (a, b) in [(Fr::from(score), r), (Fr::rand(&mut rng), Fr::rand(&mut rng))] {
                let (in_circuit, satisfied) = gadget_hash(a, b);
                prop_assert!(satisfied);
                prop_assert_eq!(in_circuit, hash2(a, b));
            }
        }
    }
}
