//! Decode throughput of Semantic Address Descriptors, beside the floors a reader would compare
//! with, in the same run: a plain `memcpy` of the same bytes into a fixed buffer, and a serde
//! decode (CBOR via ciborium) of the same fields.
//!
//! Run: `cargo bench -p nexus-route --bench sad`. Criterion prints elements/s per group member;
//! compare `sad/parse` with `sad/memcpy` and `sad/serde_cbor`.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nexus_route::id::{capability_id, claim_id, family_id};
use nexus_route::{Descriptor, Modalities, ProofBound, SadView, TrustLevel};
use serde::{Deserialize, Serialize};

const BATCH: usize = 1024;

/// The same information as a serde struct: what a "just use serde" encoding would decode.
#[derive(Serialize, Deserialize)]
struct SerdeDescriptor {
    domain: u32,
    class: u32,
    extra_capabilities: Vec<u32>,
    model_family: u32,
    min_context: u32,
    max_latency_ms: u32,
    max_cost: u32,
    modalities: u8,
    min_trust: u8,
    fan_out: u8,
    required_claims: Vec<u32>,
    required_proofs: Vec<(u32, u32)>,
}

fn descriptors() -> Vec<Descriptor> {
    let caps = [
        "chat",
        "tool-use",
        "embedding",
        "vision",
        "reasoning",
        "sql",
    ];
    (0..BATCH)
        .map(|i| {
            let mut extra: Vec<u32> = (0..i % 3)
                .map(|k| capability_id(caps[(i + k) % caps.len()]))
                .collect();
            extra.sort_unstable();
            extra.dedup();
            let mut claims: Vec<u32> = (0..i % 2 + 1)
                .map(|k| claim_id(&format!("benchmark:b{}", (i + k) % 7)))
                .collect();
            claims.sort_unstable();
            claims.dedup();
            Descriptor {
                domain: i as u32 % 8,
                class: capability_id("code-generation"),
                extra_capabilities: extra,
                model_family: family_id("llm"),
                min_context: 128_000,
                max_latency_ms: 200,
                max_cost: 3_000,
                modalities: Modalities::TEXT,
                min_trust: TrustLevel::Attested,
                fan_out: 1 + (i % 2) as u8,
                required_claims: claims,
                required_proofs: if i % 4 == 0 {
                    vec![ProofBound {
                        claim: claim_id("safety-eval"),
                        min_score: 9_000,
                    }]
                } else {
                    vec![]
                },
            }
        })
        .collect()
}

fn sad(c: &mut Criterion) {
    let ds = descriptors();
    let encoded: Vec<Vec<u8>> = ds
        .iter()
        .map(|d| d.to_bytes().expect("valid by construction"))
        .collect();
    let cbor: Vec<Vec<u8>> = ds
        .iter()
        .map(|d| {
            let s = SerdeDescriptor {
                domain: d.domain,
                class: d.class,
                extra_capabilities: d.extra_capabilities.clone(),
                model_family: d.model_family,
                min_context: d.min_context,
                max_latency_ms: d.max_latency_ms,
                max_cost: d.max_cost,
                modalities: d.modalities.0,
                min_trust: d.min_trust as u8,
                fan_out: d.fan_out,
                required_claims: d.required_claims.clone(),
                required_proofs: d
                    .required_proofs
                    .iter()
                    .map(|p| (p.claim, p.min_score))
                    .collect(),
            };
            let mut out = Vec::new();
            ciborium::into_writer(&s, &mut out).expect("serialises");
            out
        })
        .collect();
    let mean = encoded.iter().map(Vec::len).sum::<usize>() / BATCH;
    println!(
        "mean descriptor size: {mean} bytes (CBOR: {} bytes)",
        cbor.iter().map(Vec::len).sum::<usize>() / BATCH
    );

    let mut g = c.benchmark_group("sad");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("parse", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for e in black_box(&encoded) {
                match SadView::parse(e) {
                    Ok((v, _)) => {
                        acc = acc.wrapping_add(v.class() ^ v.min_context() ^ u32::from(v.fan_out()))
                    }
                    Err(_) => acc = acc.wrapping_add(1),
                }
            }
            acc
        })
    });
    let mut dst = vec![[0u8; 256]; BATCH];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            for (d, e) in dst.iter_mut().zip(black_box(&encoded)) {
                d[..e.len()].copy_from_slice(e);
            }
            black_box(&dst);
        })
    });
    g.bench_function("serde_cbor", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for e in black_box(&cbor) {
                match ciborium::from_reader::<SerdeDescriptor, _>(e.as_slice()) {
                    Ok(s) => acc = acc.wrapping_add(s.class ^ s.min_context ^ u32::from(s.fan_out)),
                    Err(_) => acc = acc.wrapping_add(1),
                }
            }
            acc
        })
    });
    g.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            for d in black_box(&ds) {
                out.clear();
                let _ = d.encode(&mut out);
            }
            out.len()
        })
    });
    g.finish();

    // The same loops timed by this thread's CPU time: the per-core figure on a shared machine.
    let (wall, cpu) = nexus_route::cputime::rates(2_000, BATCH as u64, || {
        let mut acc = 0u32;
        for e in &encoded {
            if let Ok((v, _)) = SadView::parse(black_box(e)) {
                acc = acc.wrapping_add(v.class() ^ v.min_context());
            }
        }
        black_box(acc);
    });
    let (mwall, mcpu) = nexus_route::cputime::rates(2_000, BATCH as u64, || {
        for (d, e) in dst.iter_mut().zip(black_box(&encoded)) {
            d[..e.len()].copy_from_slice(e);
        }
        black_box(&dst);
    });
    let (swall, scpu) = nexus_route::cputime::rates(5, BATCH as u64, || {
        for e in &cbor {
            black_box(ciborium::from_reader::<SerdeDescriptor, _>(e.as_slice()).is_ok());
        }
    });
    let m = |x: Option<f64>| x.map_or("n/a".to_owned(), |v| format!("{:.1} M/s", v / 1e6));
    println!(
        "per CPU-second: parse {} (wall {:.1} M/s), memcpy {} (wall {:.1} M/s), serde_cbor {} (wall {:.2} M/s)",
        m(cpu),
        wall / 1e6,
        m(mcpu),
        mwall / 1e6,
        m(scpu),
        swall / 1e6
    );
    if let (Some(p), Some(c), Some(s)) = (cpu, mcpu, scpu) {
        println!(
            "ratios: parse/memcpy {:.2}, parse/serde_cbor {:.0}x",
            p / c,
            p / s
        );
    }
}

criterion_group!(benches, sad);
criterion_main!(benches);
