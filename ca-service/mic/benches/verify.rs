//! Cost of MIC verification and issuance, each next to the bare ECDSA P-256 operation it is
//! built on, measured in the same run:
//!
//! * `verify/first_seen_leaf`: leaf + intermediate presented, intermediate already cached,
//!   leaf new: parse the leaf, one signature check, attestation decode, validity, revocation,
//!   requirement check (the cost of a handshake with a peer not seen before);
//! * `verify/repeat_leaf`: the same leaf again: validity, revocation and requirement only;
//! * `verify/ring_ecdsa_p256_verify`: one bare `ring` signature verification over a message of
//!   the leaf's TBS size — the floor for `verify/*`;
//! * `issue/mic`: build, encode and sign a MIC from a parsed CSR (no storage);
//! * `issue/ring_ecdsa_p256_sign`: one bare `ring` signature — the floor for `issue/mic`;
//! * `attestation/decode`: the attestation codec alone.
//!
//! Run: `cargo bench -p nexus-mic --bench verify` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use nexus_mic::{
    Attestation, CertificateAuthority, Csr, MicRequest, ModelUri, NoRevocation, Requirement,
    Verifier, generate_model_key,
};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};

fn benches(c: &mut Criterion) {
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let root = CertificateAuthority::new_root("Nexus Root CA", now - hour, hour * 24 * 3650)
        .expect("root CA generation has no failure mode with valid inputs");
    let inter = root
        .new_intermediate("Nexus Intermediate CA", now - hour, hour * 24 * 365)
        .expect("intermediate inside the root's validity");
    let model: ModelUri = "nexus://acme/coder@1.0.0"
        .parse()
        .expect("constant model URI is valid");
    let key = generate_model_key(&model).expect("key generation");
    let csr = Csr::from_pem(&key.csr_pem).expect("our own CSR parses");
    let attestation = Attestation::example();
    let request = MicRequest {
        csr: &csr,
        model: &model,
        attestation: &attestation,
        not_before: now - Duration::from_secs(60),
        validity: nexus_mic::DEFAULT_MIC_VALIDITY,
    };
    let leaf = inter.issue_mic(&request).expect("issuance").der;
    let chain = [leaf.as_slice(), inter.cert_der()];
    let verifier = Verifier::new(&[root.cert_der()]).expect("root is a valid anchor");
    let requirement: Requirement = "capability=code-generation,context>=128000,issuer=Nexus Intermediate CA,benchmark=humaneval"
        .parse()
        .expect("constant requirement parses");
    verifier
        .verify(&chain, now, &NoRevocation, &requirement)
        .expect("warm-up verification succeeds (and caches the intermediate)");

    let mut g = c.benchmark_group("verify");
    g.bench_function("first_seen_leaf", |b| {
        b.iter_batched(
            || {
                let v = Verifier::new(&[root.cert_der()]).expect("root is a valid anchor");
                v.add_intermediate(inter.cert_der(), now)
                    .expect("intermediate chains to the root");
                v
            },
            |v| {
                v.verify(black_box(&chain), now, &NoRevocation, &requirement)
                    .is_ok()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("repeat_leaf", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&chain), now, &NoRevocation, &requirement)
                .is_ok()
        })
    });
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .expect("ring key generation");
    let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("ring parses its own PKCS#8");
    let msg = vec![0x5Au8; leaf.len() - 80];
    let sig = key_pair.sign(&rng, &msg).expect("ring signing");
    let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key_pair.public_key().as_ref());
    g.bench_function("ring_ecdsa_p256_verify", |b| {
        b.iter(|| public.verify(black_box(&msg), sig.as_ref()).is_ok())
    });
    g.finish();

    let mut g = c.benchmark_group("issue");
    g.bench_function("mic", |b| {
        b.iter(|| inter.issue_mic(black_box(&request)).is_ok())
    });
    g.bench_function("ring_ecdsa_p256_sign", |b| {
        b.iter(|| key_pair.sign(&rng, black_box(&msg)).is_ok())
    });
    g.finish();

    let der = attestation.to_der().expect("example encodes");
    c.bench_function("attestation/decode", |b| {
        b.iter(|| Attestation::from_der(black_box(&der)).is_ok())
    });
}

criterion_group! {
    name = mic;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(mic);
