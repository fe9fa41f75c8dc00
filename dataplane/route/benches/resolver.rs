//! Picking endpoints among 10,000 advertisements: the capability index beside a linear scan of
//! every advertisement, in the same run, on the same descriptors and load.
//!
//! Run: `cargo bench -p nexus-route --bench resolver`. After one untimed warm-up pass over the
//! descriptors, per-call latency distributions are printed (each call timed on its own, 20,000
//! calls per contender, the two contenders interleaved): raw; then the same calls again less
//! those during which the thread was descheduled (the count is printed); then each call's
//! best of 5 runs. Then criterion's throughput for both.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nexus_route::id::{capability_id, claim_id, family_id};
use nexus_route::{
    Advertisement, Descriptor, LoadReport, Modalities, ProofBound, Resolver, ResolverConfig,
    SadView, Scratch, TrustLevel,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ADVERTS: usize = 10_000;
const CAPABILITIES: usize = 50;
const FAMILIES: [&str; 4] = ["llm", "diffusion", "asr", "embedding"];

fn cap(i: usize) -> u32 {
    capability_id(&format!("capability-{i}"))
}

fn adverts(rng: &mut StdRng) -> Vec<Advertisement> {
    (0..ADVERTS)
        .map(|i| {
            let n = rng.random_range(2..=5);
            let mut caps: Vec<u32> = (0..n)
                .map(|_| cap(rng.random_range(0..CAPABILITIES)))
                .collect();
            caps.sort_unstable();
            caps.dedup();
            let fam = FAMILIES[rng.random_range(0..FAMILIES.len())];
            Advertisement {
                name: format!("ep-{i}"),
                address: format!("10.{}.{}.{}:7400", i >> 16, (i >> 8) & 255, i & 255),
                capability_names: vec![],
                capabilities: caps,
                model_family_name: fam.into(),
                model_family: family_id(fam),
                context_window: [8_192, 32_768, 131_072, 1_000_000][rng.random_range(0..4)],
                modalities: Modalities::TEXT,
                latency_sla_ms: Some(rng.random_range(20..600)),
                cost_micros: Some(rng.random_range(100..10_000)),
                weight: rng.random_range(1..1000),
                max_in_flight: None,
                trust: TrustLevel::from_u8(rng.random_range(1..4)).unwrap_or_default(),
                claims: if rng.random_bool(0.5) {
                    vec![claim_id("benchmark:humaneval")]
                } else {
                    vec![]
                },
                proofs: if rng.random_bool(0.3) {
                    vec![ProofBound {
                        claim: claim_id("safety-eval"),
                        min_score: rng.random_range(8_000..10_000),
                    }]
                } else {
                    vec![]
                },
            }
        })
        .collect()
}

fn descriptors(rng: &mut StdRng) -> Vec<Vec<u8>> {
    (0..1_000)
        .map(|_| {
            let mut d = Descriptor::for_class(cap(rng.random_range(0..CAPABILITIES)));
            if rng.random_bool(0.3) {
                let e = cap(rng.random_range(0..CAPABILITIES));
                if e != d.class {
                    d.extra_capabilities = vec![e];
                }
            }
            if rng.random_bool(0.5) {
                d.model_family = family_id(FAMILIES[rng.random_range(0..FAMILIES.len())]);
            }
            d.min_context = [0, 32_000, 128_000][rng.random_range(0..3)];
            if rng.random_bool(0.7) {
                d.max_latency_ms = rng.random_range(100..500);
            }
            d.min_trust = TrustLevel::from_u8(rng.random_range(0..3)).unwrap_or_default();
            if rng.random_bool(0.2) {
                d.required_claims = vec![claim_id("benchmark:humaneval")];
            }
            if rng.random_bool(0.1) {
                d.required_proofs = vec![ProofBound {
                    claim: claim_id("safety-eval"),
                    min_score: 9_000,
                }];
            }
            d.fan_out = rng.random_range(1..=3);
            d.to_bytes().expect("valid by construction")
        })
        .collect()
}

/// How many times the calling thread has been put on a CPU (`/proc/thread-self/schedstat`, third
/// field): a call during which it changes was descheduled (preempted, or it slept) meanwhile.
fn timeslices() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(2)?.parse().ok()
}

fn percentiles(name: &str, mut ns: Vec<u64>) -> u64 {
    ns.sort_unstable();
    let p = |q: f64| ns[((ns.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:>8}: p50 {:>7} ns  p90 {:>7} ns  p99 {:>7} ns  p99.9 {:>7} ns  max {:>7} ns",
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
        ns[ns.len() - 1]
    );
    p(0.99)
}

fn resolver(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let r = Resolver::new(adverts(&mut rng), ResolverConfig::default());
    let load = r.new_load_table();
    for i in 0..ADVERTS as u32 {
        load.report(
            i,
            LoadReport {
                in_flight: rng.random_range(0..70),
                queue_depth: 0,
                latency_us: rng.random_range(0..300_000),
            },
        );
    }
    let sads = descriptors(&mut rng);
    let views: Vec<SadView<'_>> = sads
        .iter()
        .map(|b| SadView::parse_exact(b).expect("valid"))
        .collect();

    // Per-call distribution, each call timed alone, after one untimed pass over every
    // descriptor (first-use effects such as the scratch buffers growing).
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    for (i, v) in views.iter().enumerate() {
        let _ = black_box(r.resolve(v, &load, i as u64, &mut scratch, &mut out));
        let _ = black_box(r.resolve_linear(v, &load, i as u64, &mut out));
    }
    let mut routed = 0usize;
    let mut idx_ns = Vec::with_capacity(20_000);
    let mut lin_ns = Vec::with_capacity(20_000);
    for i in 0..20_000usize {
        let v = &views[i % views.len()];
        let t = Instant::now();
        let ok = r
            .resolve(v, &load, i as u64, &mut scratch, &mut out)
            .is_ok();
        idx_ns.push(t.elapsed().as_nanos() as u64);
        routed += usize::from(ok);
        let t = Instant::now();
        let _ = black_box(r.resolve_linear(v, &load, i as u64, &mut out));
        lin_ns.push(t.elapsed().as_nanos() as u64);
    }
    println!(
        "resolver over {ADVERTS} advertisements, {CAPABILITIES} capabilities; {routed}/20000 calls routed"
    );
    println!("each call timed once (includes any preemption by other work on the machine):");
    let a = percentiles("indexed", idx_ns);
    let b = percentiles("linear", lin_ns);
    println!("p99 ratio linear/indexed: {:.1}x", b as f64 / a as f64);
    // The same again, keeping only the calls during which the thread stayed on its CPU (the
    // scheduler's share of the tail; a hypervisor's is not visible from inside the VM).
    if timeslices().is_some() {
        let mut idx_ns = Vec::with_capacity(20_000);
        let mut lin_ns = Vec::with_capacity(20_000);
        let (mut idx_out, mut lin_out) = (0usize, 0usize);
        for i in 0..20_000usize {
            let v = &views[i % views.len()];
            let before = timeslices();
            let t = Instant::now();
            let _ = black_box(r.resolve(v, &load, i as u64, &mut scratch, &mut out));
            let ns = t.elapsed().as_nanos() as u64;
            if timeslices() == before {
                idx_ns.push(ns);
            } else {
                idx_out += 1;
            }
            let before = timeslices();
            let t = Instant::now();
            let _ = black_box(r.resolve_linear(v, &load, i as u64, &mut out));
            let ns = t.elapsed().as_nanos() as u64;
            if timeslices() == before {
                lin_ns.push(ns);
            } else {
                lin_out += 1;
            }
        }
        println!(
            "each call timed once, calls during which the thread was descheduled left out \
             (indexed {idx_out}, linear {lin_out} of 20000):"
        );
        let a = percentiles("indexed", idx_ns);
        let b = percentiles("linear", lin_ns);
        println!("p99 ratio linear/indexed: {:.1}x", b as f64 / a as f64);
    }
    // Each call repeated 5 times back to back and its fastest run kept: the call's own cost
    // without preemption (and with warm caches, so a lower bound).
    let mut idx_min = Vec::with_capacity(5_000);
    let mut lin_min = Vec::with_capacity(5_000);
    for i in 0..5_000usize {
        let v = &views[i % views.len()];
        let (mut a, mut b) = (u64::MAX, u64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            let _ = black_box(r.resolve(v, &load, i as u64, &mut scratch, &mut out));
            a = a.min(t.elapsed().as_nanos() as u64);
            let t = Instant::now();
            let _ = black_box(r.resolve_linear(v, &load, i as u64, &mut out));
            b = b.min(t.elapsed().as_nanos() as u64);
        }
        idx_min.push(a);
        lin_min.push(b);
    }
    println!("best of 5 per call:");
    let a = percentiles("indexed", idx_min);
    let b = percentiles("linear", lin_min);
    println!("p99 ratio linear/indexed: {:.1}x", b as f64 / a as f64);

    let mut g = c.benchmark_group("resolve_10k");
    g.throughput(Throughput::Elements(views.len() as u64));
    g.bench_function("indexed", |bch| {
        bch.iter(|| {
            for (i, v) in views.iter().enumerate() {
                let _ = r.resolve(v, &load, i as u64, &mut scratch, &mut out);
            }
            out.len()
        })
    });
    g.sample_size(10);
    g.bench_function("linear", |bch| {
        bch.iter(|| {
            for (i, v) in views.iter().enumerate() {
                let _ = r.resolve_linear(v, &load, i as u64, &mut out);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, resolver);
criterion_main!(benches);
