//! Costs of the threshold-claim proof system, with a bare Poseidon hash and an ECDSA-P256
//! verification (ring) for scale.
//!
//! `cargo bench -p nexus-zk` (add `--features parallel` for the rayon build). Prints a
//! summary table (constraints, sizes, median times, ratios) before the criterion runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ark_bn254::Fr;
use criterion::{Criterion, criterion_group};
use nexus_zk::ark_rand::{SeedableRng, rngs::StdRng};
use nexus_zk::circuit::circuit_shape;
use nexus_zk::{Blinding, commit, poseidon, prove_with_rng, setup, verify};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};

struct Ecdsa {
    public_key: Vec<u8>,
    message: Vec<u8>,
    signature: Vec<u8>,
}

fn ecdsa_fixture() -> Ecdsa {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("keygen");
    let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
    let message = b"model identity certificate tbs bytes".to_vec();
    let signature = key.sign(&rng, &message).expect("sign").as_ref().to_vec();
    Ecdsa {
        public_key: key.public_key().as_ref().to_vec(),
        message,
        signature,
    }
}

fn ecdsa_verify(e: &Ecdsa) {
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &e.public_key)
        .verify(&e.message, &e.signature)
        .expect("valid signature");
}

/// Median wall time of `n` runs of `f`.
fn median<F: FnMut()>(n: usize, mut f: F) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn summary() {
    let mut rng = StdRng::seed_from_u64(42);
    let shape = circuit_shape().expect("synthesis");
    let t_setup = median(5, || {
        black_box(setup(&mut rng).expect("setup"));
    });
    let (pk, vk) = setup(&mut rng).expect("setup");
    let blinding = Blinding::from_uniform_bytes(&[7; 64]);
    let c = commit(9731, &blinding);
    let t_prove = median(11, || {
        black_box(prove_with_rng(&pk, 9731, &blinding, 9000, &mut rng).expect("prove"));
    });
    let proof = prove_with_rng(&pk, 9731, &blinding, 9000, &mut rng).expect("prove");
    let t_verify = median(101, || verify(&vk, &c, 9000, &proof).expect("verify"));
    let (a, b) = (Fr::from(9731u64), Fr::from(12345u64));
    let t_poseidon = median(1001, || {
        black_box(poseidon::hash2(black_box(a), black_box(b)));
    });
    let ecdsa = ecdsa_fixture();
    let t_ecdsa = median(1001, || ecdsa_verify(&ecdsa));

    println!(
        "== nexus-zk Groth16/BN254 threshold claim (parallel: {}) ==",
        cfg!(feature = "parallel")
    );
    println!("constraints           {}", shape.constraints);
    println!("witness variables     {}", shape.witness_variables);
    println!("proof bytes           {}", proof.to_bytes().len());
    println!("verifying key bytes   {}", vk.to_bytes().len());
    println!("proving key bytes     {}", pk.to_bytes().len());
    println!("setup                 {:>10.1} ms", ms(t_setup));
    println!(
        "prove (incl. self-check) {:>7.1} ms   (target < 1000 ms)",
        ms(t_prove)
    );
    println!(
        "verify                {:>10.3} ms   (target < 5 ms)",
        ms(t_verify)
    );
    println!("poseidon native hash  {:>10.2} us", us(t_poseidon));
    println!("ecdsa-p256 verify     {:>10.2} us", us(t_ecdsa));
    println!(
        "ratios: verify/ecdsa {:.1}x, verify/poseidon {:.0}x, prove/verify {:.0}x",
        t_verify.as_secs_f64() / t_ecdsa.as_secs_f64(),
        t_verify.as_secs_f64() / t_poseidon.as_secs_f64(),
        t_prove.as_secs_f64() / t_verify.as_secs_f64()
    );
}

fn benches(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(43);
    let (pk, vk) = setup(&mut rng).expect("setup");
    let blinding = Blinding::from_uniform_bytes(&[7; 64]);
    let commitment = commit(9731, &blinding);
    let proof = prove_with_rng(&pk, 9731, &blinding, 9000, &mut rng).expect("prove");

    let mut slow = c.benchmark_group("groth16-slow");
    slow.sample_size(10);
    slow.bench_function("setup", |bch| bch.iter(|| setup(&mut rng).expect("setup")));
    slow.bench_function("prove", |bch| {
        bch.iter(|| prove_with_rng(&pk, 9731, &blinding, 9000, &mut rng).expect("prove"))
    });
    slow.finish();

    c.bench_function("verify", |bch| {
        bch.iter(|| verify(&vk, &commitment, 9000, &proof).expect("verify"))
    });
    let (a, b) = (Fr::from(9731u64), Fr::from(12345u64));
    c.bench_function("poseidon_hash2", |bch| {
        bch.iter(|| poseidon::hash2(black_box(a), black_box(b)))
    });
    let ecdsa = ecdsa_fixture();
    c.bench_function("ecdsa_p256_verify_ring", |bch| {
        bch.iter(|| ecdsa_verify(&ecdsa))
    });
}

criterion_group! {
    name = groth16;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}

fn main() {
    summary();
    groth16();
    Criterion::default().configure_from_args().final_summary();
}
