//! End-to-end tests of the public API: setup, commit, prove, verify, codecs, files.

use std::sync::OnceLock;

use ark_serialize::CanonicalSerialize;
use nexus_zk::ark_rand::{SeedableRng, rngs::StdRng};
use nexus_zk::*;
use proptest::prelude::*;

/// One deterministic setup shared by all tests (setup is the slow part).
fn keys() -> &'static (ProvingKey, VerifyingKey) {
    static KEYS: OnceLock<(ProvingKey, VerifyingKey)> = OnceLock::new();
    KEYS.get_or_init(|| setup(&mut StdRng::seed_from_u64(1)).expect("setup"))
}

fn blinding(n: u8) -> Blinding {
    Blinding::from_uniform_bytes(&[n; 64])
}

/// An honest statement: score 0.9731 committed, threshold 0.9000.
struct Honest {
    commitment: Commitment,
    threshold: u64,
    proof: Proof,
}

fn honest() -> &'static Honest {
    static HONEST: OnceLock<Honest> = OnceLock::new();
    HONEST.get_or_init(|| {
        let (pk, _) = keys();
        let b = blinding(7);
        Honest {
            commitment: commit(9731, &b),
            threshold: 9000,
            proof: prove(pk, 9731, &b, 9000).expect("honest proof"),
        }
    })
}

#[test]
fn honest_proof_verifies() {
    let h = honest();
    verify(&keys().1, &h.commitment, h.threshold, &h.proof).expect("verifies");
}

#[test]
fn boundary_score_equal_to_threshold_verifies() {
    let (pk, vk) = keys();
    let b = random_blinding().expect("rng");
    let proof = prove(pk, 5000, &b, 5000).expect("s == t is provable");
    verify(vk, &commit(5000, &b), 5000, &proof).expect("verifies");
}

#[test]
fn other_threshold_is_rejected() {
    let h = honest();
    let vk = &keys().1;
    for t in [h.threshold + 1, 9731, 9732, u64::MAX, h.threshold - 1, 0] {
        assert!(
            matches!(
                verify(vk, &h.commitment, t, &h.proof),
                Err(ZkError::ProofRejected)
            ),
            "threshold {t}"
        );
    }
}

#[test]
fn wrong_commitment_is_rejected() {
    let h = honest();
    let other = commit(9731, &blinding(8));
    assert!(matches!(
        verify(&keys().1, &other, h.threshold, &h.proof),
        Err(ZkError::ProofRejected)
    ));
}

#[test]
fn prove_refuses_score_below_threshold() {
    let (pk, _) = keys();
    assert!(matches!(
        prove(pk, 8999, &blinding(7), 9000),
        Err(ZkError::ScoreBelowThreshold)
    ));
    assert!(matches!(
        prove(pk, 0, &blinding(7), u64::MAX),
        Err(ZkError::ScoreBelowThreshold)
    ));
}

#[test]
fn tampered_proof_bytes_are_rejected() {
    let h = honest();
    let vk = &keys().1;
    let bytes = h.proof.to_bytes();
    assert_eq!(bytes.len(), PROOF_LEN);
    for i in 0..bytes.len() {
        for bit in [0u8, 7] {
            let mut t = bytes.clone();
            t[i] ^= 1 << bit;
            let outcome =
                Proof::from_bytes(&t).and_then(|p| verify(vk, &h.commitment, h.threshold, &p));
            assert!(outcome.is_err(), "byte {i} bit {bit} accepted");
        }
    }
}

#[test]
fn proof_from_another_setup_is_rejected() {
    let (_, other_vk) = setup(&mut StdRng::seed_from_u64(2)).expect("setup");
    let h = honest();
    assert!(verify(&other_vk, &h.commitment, h.threshold, &h.proof).is_err());
    assert_ne!(other_vk.fingerprint(), keys().1.fingerprint());
}

#[test]
fn codecs_round_trip() {
    let (pk, vk) = keys();
    let h = honest();
    assert_eq!(
        Proof::from_bytes(&h.proof.to_bytes()).expect("proof"),
        h.proof
    );
    assert_eq!(
        Proof::from_base64(&h.proof.to_base64()).expect("proof"),
        h.proof
    );
    assert_eq!(h.commitment.to_bytes().len(), COMMITMENT_LEN);
    assert_eq!(
        Commitment::from_bytes(&h.commitment.to_bytes()).expect("c"),
        h.commitment
    );
    assert_eq!(
        Commitment::from_hex(&h.commitment.to_hex()).expect("c"),
        h.commitment
    );
    let b = blinding(9);
    assert_eq!(Blinding::from_hex(&b.to_hex()).expect("b"), b);
    assert_eq!(VerifyingKey::from_bytes(&vk.to_bytes()).expect("vk"), *vk);
    assert_eq!(VerifyingKey::from_base64(&vk.to_base64()).expect("vk"), *vk);
    let pk2 = ProvingKey::from_bytes(&pk.to_bytes()).expect("pk");
    assert_eq!(pk2.verifying_key(), vk);
    assert!(
        !format!("{b:?}").contains(&b.to_hex()),
        "Debug leaks the blinding"
    );
}

#[test]
fn malformed_bytes_are_rejected() {
    let h = honest();
    let (pk, vk) = keys();
    // Wrong lengths.
    for len in [0usize, 1, 31, 33, 64] {
        assert!(matches!(
            Commitment::from_bytes(&vec![0; len]),
            Err(ZkError::WrongLength { .. })
        ));
    }
    for len in [0usize, 1, 127, 129, 256] {
        assert!(matches!(
            Proof::from_bytes(&vec![0; len]),
            Err(ZkError::WrongLength { .. })
        ));
    }
    // Non-canonical scalar: the modulus itself, and all-ones.
    let mut modulus = [0u8; 32];
    modulus.copy_from_slice(
        &hex::decode("010000f093f5e1439170b97948e833285d588181b64550b829a031e1724e6430")
            .expect("hex"),
    );
    assert!(Commitment::from_bytes(&modulus).is_err());
    assert!(Commitment::from_bytes(&[0xff; 32]).is_err());
    assert!(Blinding::from_bytes(&[0; 32]).is_err(), "zero blinding");
    // Points not on the curve / garbage.
    assert!(Proof::from_bytes(&[0xff; PROOF_LEN]).is_err());
    assert!(Proof::from_bytes(&[0x42; PROOF_LEN]).is_err());
    // Trailing bytes.
    let mut vk_bytes = vk.to_bytes();
    vk_bytes.push(0);
    assert!(VerifyingKey::from_bytes(&vk_bytes).is_err());
    // Truncation at every length.
    let vk_bytes = vk.to_bytes();
    for len in 0..vk_bytes.len() {
        assert!(
            VerifyingKey::from_bytes(&vk_bytes[..len]).is_err(),
            "vk prefix {len}"
        );
    }
    let pk_bytes = pk.to_bytes();
    for len in [0, 1, 100, pk_bytes.len() / 2, pk_bytes.len() - 1] {
        assert!(
            ProvingKey::from_bytes(&pk_bytes[..len]).is_err(),
            "pk prefix {len}"
        );
    }
    // Oversized input is refused before decoding.
    assert!(matches!(
        VerifyingKey::from_bytes(&vec![0; VERIFYING_KEY_MAX_LEN + 1]),
        Err(ZkError::TooLarge { .. })
    ));
    assert!(matches!(
        Proof::from_base64(&"A".repeat(10_000)),
        Err(ZkError::TooLarge { .. })
    ));
    // Bad text.
    assert!(matches!(
        Commitment::from_hex("zz"),
        Err(ZkError::Encoding { .. })
    ));
    assert!(matches!(
        Proof::from_base64("!!!!"),
        Err(ZkError::Encoding { .. })
    ));
    // Proof base64 of a valid proof still verifies only with its statement.
    assert!(Proof::from_base64(&h.proof.to_base64()).is_ok());
}

#[test]
fn verifying_key_for_another_circuit_shape_is_rejected() {
    let vk = keys().1.to_bytes();
    // Re-encode the VK with an extra input base: well-formed points, wrong circuit.
    let mut raw: ark_groth16::VerifyingKey<ark_bn254::Bn254> =
        ark_serialize::CanonicalDeserialize::deserialize_compressed(&vk[..]).expect("vk");
    raw.gamma_abc_g1.push(raw.gamma_abc_g1[0]);
    let mut bytes = Vec::new();
    raw.serialize_compressed(&mut bytes).expect("vec");
    assert!(matches!(
        VerifyingKey::from_bytes(&bytes),
        Err(ZkError::Malformed { .. })
    ));
    raw.gamma_abc_g1.clear();
    let mut bytes = Vec::new();
    raw.serialize_compressed(&mut bytes).expect("vec");
    assert!(matches!(
        VerifyingKey::from_bytes(&bytes),
        Err(ZkError::Malformed { .. })
    ));
}

#[test]
fn degenerate_keys_and_proofs_are_rejected() {
    // All-identity proof: well-formed encoding, refused.
    let mut bytes = Vec::new();
    ark_groth16::Proof::<ark_bn254::Bn254>::default()
        .serialize_compressed(&mut bytes)
        .expect("vec");
    assert_eq!(bytes.len(), PROOF_LEN);
    assert!(matches!(
        Proof::from_bytes(&bytes),
        Err(ZkError::Malformed { .. })
    ));
    // All-identity verifying key of the right shape: would accept forged proofs; refused.
    let vk = ark_groth16::VerifyingKey::<ark_bn254::Bn254> {
        gamma_abc_g1: vec![Default::default(); 3],
        ..Default::default()
    };
    let mut bytes = Vec::new();
    vk.serialize_compressed(&mut bytes).expect("vec");
    assert!(matches!(
        VerifyingKey::from_bytes(&bytes),
        Err(ZkError::Malformed { .. })
    ));
}

#[test]
fn claim_proof_json_round_trip_and_checks() {
    let (pk, vk) = keys();
    let b = blinding(3);
    let c = commit(9731, &b);
    let claim = ClaimProof::create(pk, "accuracy", 9731, &b, 9500).expect("claim");
    let json = claim.to_json();
    let back = ClaimProof::from_json(&json).expect("parse");
    assert_eq!(back, claim);
    back.verify(vk).expect("verifies");
    back.verify_against(vk, &c, 9500)
        .expect("verifies against cert commitment");
    back.verify_against(vk, &c, 9000)
        .expect("a higher proven threshold suffices");
    assert!(matches!(
        back.verify_against(vk, &c, 9600),
        Err(ZkError::InvalidClaim(_))
    ));
    let other = commit(9731, &blinding(4));
    assert!(matches!(
        back.verify_against(vk, &other, 9500),
        Err(ZkError::InvalidClaim(_))
    ));

    // A raised threshold in the JSON does not verify.
    let mut raised = back.clone();
    raised.threshold = 9700;
    assert!(matches!(raised.verify(vk), Err(ZkError::ProofRejected)));
    let mut scheme = back.clone();
    scheme.scheme = "other".into();
    assert!(matches!(scheme.verify(vk), Err(ZkError::InvalidClaim(_))));

    assert!(ClaimProof::create(pk, "", 9731, &b, 9500).is_err());
    assert!(ClaimProof::create(pk, "bad name!", 9731, &b, 9500).is_err());
    assert!(matches!(
        ClaimProof::create(pk, "accuracy", 9731, &b, 9800),
        Err(ZkError::ScoreBelowThreshold)
    ));

    let extra = json.replacen('{', r#"{"extra":1,"#, 1);
    assert!(matches!(
        ClaimProof::from_json(&extra),
        Err(ZkError::Json { .. })
    ));
    assert!(matches!(
        ClaimProof::from_json(&" ".repeat(5000)),
        Err(ZkError::TooLarge { .. })
    ));
    assert!(ClaimProof::from_json("{}").is_err());
    assert!(ClaimProof::from_json("not json").is_err());
}

#[test]
fn opening_json_is_checked() {
    let opening = Opening::new(9731, blinding(5));
    let back = Opening::from_json(&opening.to_json()).expect("opening");
    assert_eq!(back, opening);
    let mut lie = opening.clone();
    lie.score = 9999;
    assert!(matches!(
        Opening::from_json(&lie.to_json()),
        Err(ZkError::OpeningMismatch)
    ));
}

#[test]
fn files_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pk, vk) = keys();
    let paths = write_keys(&dir.path().join("keys"), pk, vk).expect("write");
    let pk2 = load_proving_key(&paths.proving_key).expect("load pk");
    let vk2 = load_verifying_key(&paths.verifying_key).expect("load vk");
    assert_eq!(&vk2, vk);
    assert_eq!(pk2.verifying_key(), vk);

    // The base64 form of the VK is accepted too.
    let b64 = dir.path().join("vk.b64");
    std::fs::write(&b64, format!("{}\n", vk.to_base64())).expect("write");
    assert_eq!(&load_verifying_key(&b64).expect("b64 vk"), vk);

    let opening = Opening::new(9731, blinding(6));
    let op_path = dir.path().join("opening.json");
    write_opening(&op_path, &opening).expect("write opening");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&op_path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(load_opening(&op_path).expect("load opening"), opening);

    let claim = ClaimProof::create(&pk2, "accuracy", opening.score, &opening.blinding, 9000)
        .expect("claim");
    let claim_path = dir.path().join("claim.json");
    write_claim_proof(&claim_path, &claim).expect("write claim");
    load_claim_proof(&claim_path)
        .expect("load claim")
        .verify_against(&vk2, &opening.commitment, 9000)
        .expect("verifies");

    // Oversized and missing files.
    let big = dir.path().join("big");
    std::fs::write(&big, vec![0u8; VERIFYING_KEY_MAX_LEN * 2 + 1]).expect("write");
    assert!(matches!(
        load_verifying_key(&big),
        Err(ZkError::TooLarge { .. })
    ));
    assert!(matches!(
        load_proving_key(&dir.path().join("missing")),
        Err(ZkError::Io { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Arbitrary bytes never panic any decoder.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Proof::from_bytes(&bytes);
        let _ = Commitment::from_bytes(&bytes);
        let _ = Blinding::from_bytes(&bytes);
        let _ = VerifyingKey::from_bytes(&bytes);
        let _ = ProvingKey::from_bytes(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = ClaimProof::from_json(&text);
        let _ = Opening::from_json(&text);
        let _ = Proof::from_base64(&text);
        let _ = Commitment::from_hex(&text);
        let _ = parse_score(&text);
    }

    /// Proof-sized random bytes never verify.
    #[test]
    fn random_proofs_never_verify(bytes in proptest::collection::vec(any::<u8>(), PROOF_LEN)) {
        let h = honest();
        if let Ok(p) = Proof::from_bytes(&bytes) {
            prop_assert!(verify(&keys().1, &h.commitment, h.threshold, &p).is_err());
        }
    }
}
