//! What routing by capability adds to a call, in one run on loopback: the same warm unary
//! NexAPI call (1 KiB request) sent
//! - **direct** to node B;
//! - (direct and routed share one connection to B);
//! - **routed** to B by capability, where B's NexRoute tables pick B itself: the cost of the
//!   routing decision on the call path (metadata, the software P4 pipeline's lookup);
//! - **relayed**: to node A by capability, whose tables pick B, so A relays the call — the
//!   routing decision plus one more NexStream hop.
//!
//! - a 64 MiB tensor, direct to B and relayed through A (cut-through), alternating.
//!
//! The three calls are interleaved call by call, so the machine's noise falls on all alike. Run:
//! `cargo bench -p nexus-dataplane --bench routed_call` (set `ROUTED_CALLS` for more or fewer
//! calls per contender, default 20,000).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use nexus_api::{Client, InferRequest};
use nexus_dataplane::start;
use nexus_stream::testing::TestPki;
use support::{DOMAIN, advert, node, program};

fn pct(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q) as usize] as f64 / 1000.0
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let calls: usize = std::env::var("ROUTED_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pki = TestPki::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (fabric, caller) = (dir.path().join("fabric"), dir.path().join("caller"));
        pki.issue("nexus://acme/coder@1.0.0")
            .unwrap()
            .write_dir(&fabric)
            .unwrap();
        pki.issue("nexus://acme/caller@1.0.0")
            .unwrap()
            .write_dir(&caller)
            .unwrap();
        let a = start(&node(&fabric, &["--mic-reload=0"])).await.unwrap();
        let b = start(&node(&fabric, &["--mic-reload=0"])).await.unwrap();
        // code-generation lives on B only: B's tables pick B, A's pick B too.
        let tables = vec![advert("on-b", b.udp, "code-generation")];
        program(&a, tables.clone()).await;
        program(&b, tables).await;

        // Direct and routed calls share one connection to B, so they differ only in the
        // routing (the capability in the metadata and B's table lookup).
        let to_b = Client::connect_dir_in(&caller, b.udp, DOMAIN).await.unwrap();
        let direct = Client::without_hello(to_b.session().clone());
        let routed = Client::without_hello(to_b.session().clone()).route_by("code-generation");
        let relayed = Client::connect_dir_in(&caller, a.udp, DOMAIN)
            .await
            .unwrap()
            .route_by("code-generation");
        let body = serde_json::to_vec(&InferRequest {
            model: String::new(),
            prompt: "x".repeat(1000),
            max_tokens: 1,
        })
        .unwrap();
        // "direct, again" is the same call as "direct": the difference between the two is
        // the noise floor of this comparison on this machine.
        let contenders = [
            ("direct", &direct),
            ("direct, again", &direct),
            ("routed", &routed),
            ("relayed", &relayed),
            ("direct + pad meta", &direct),
        ];
        let n = contenders.len();
        let pad_meta = bytes::Bytes::from(
            nexus_api::Meta::op("infer")
                .with("padding", "code-generation")
                .encode(),
        );
        for (_, c) in &contenders {
            for _ in 0..1_000 {
                c.infer_raw(&body, true).await.unwrap();
            }
        }
        // One round = one call of each contender, in a fresh random order (a fixed order
        // would let a call inherit the previous one's warm or cold state); times kept per
        // round so differences can be taken call against call.
        let mut rounds = vec![[0u64; 5]; calls];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut order: Vec<usize> = (0..n).collect();
        for round in rounds.iter_mut() {
            for i in (1..n).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                order.swap(i, (seed % (i as u64 + 1)) as usize);
            }
            for &k in &order {
                let t = Instant::now();
                if k == 4 {
                    // What `infer_raw` does (metadata encoded once), with the capability's
                    // bytes under another key.
                    let mut st = direct
                        .session()
                        .open_ordered_with(pad_meta.clone(), true, Some(&body))
                        .await
                        .unwrap();
                    st.send.finish().unwrap();
                    st.recv_msg().await.unwrap().unwrap();
                    st.recv.take_end_now();
                } else {
                    contenders[k].1.infer_raw(&body, true).await.unwrap();
                }
                round[k] = t.elapsed().as_nanos() as u64;
            }
        }
        let sorted = |k: usize| {
            let mut v: Vec<u64> = rounds.iter().map(|r| r[k]).collect();
            v.sort_unstable();
            v
        };
        // Median over rounds of (contender − direct) in the same round, µs.
        let paired = |k: usize| {
            let mut d: Vec<i64> = rounds.iter().map(|r| r[k] as i64 - r[0] as i64).collect();
            d.sort_unstable();
            d[d.len() / 2] as f64 / 1000.0
        };
        let direct_p50 = pct(&sorted(0), 0.5);
        println!(
            "routed call vs direct, warm unary 1 KiB request, {calls} rounds of one call each, random order (loopback)"
        );
        println!(
            "| call | p50 µs | p99 µs | p50 − direct p50, µs | median of paired (call − direct), µs |"
        );
        println!("|---|---:|---:|---:|---:|");
        for (k, (name, _)) in contenders.iter().enumerate() {
            let v = sorted(k);
            let p50 = pct(&v, 0.5);
            println!(
                "| {name} | {p50:.1} | {:.1} | {:+.1} | {:+.1} |",
                pct(&v, 0.99),
                p50 - direct_p50,
                paired(k)
            );
        }

        // The routing decision alone, as the node makes it per call.
        let mut lookups = Vec::with_capacity(100_000);
        let router_target = b.p4_target().unwrap();
        for flow in 0..100_000u32 {
            let t = Instant::now();
            let hop = nexus_dataplane::routing::lookup(
                &router_target,
                "acme",
                "code-generation",
                Some(DOMAIN),
                flow,
            );
            lookups.push(t.elapsed().as_nanos() as u64);
            assert!(hop.is_ok());
        }
        lookups.sort_unstable();
        // The whole routing step as the server takes it per stream (the router's future).
        let router = nexus_dataplane::routing::TableRouter::new(
            b.p4_target().unwrap(),
            b.udp,
            b.endpoint.clone(),
        );
        let meta = nexus_api::Meta::op("infer").with("capability", "code-generation");
        let mut hops = Vec::with_capacity(100_000);
        for _ in 0..100_000u32 {
            let t = Instant::now();
            let route = nexus_api::Router::route(&router, "acme", &meta);
            hops.push(t.elapsed().as_nanos() as u64);
            assert!(matches!(route, Ok(nexus_api::Route::Here)));
        }
        hops.sort_unstable();
        // The same with the caches as a call leaves them: 8 MiB touched between decisions.
        let mut thrash = vec![0u8; 8 << 20];
        let mut cold = Vec::with_capacity(5_000);
        for i in 0..5_000u32 {
            for b in thrash.iter_mut().step_by(64) {
                *b = b.wrapping_add(i as u8);
            }
            let t = Instant::now();
            let route = nexus_api::Router::route(&router, "acme", &meta);
            cold.push(t.elapsed().as_nanos() as u64);
            assert!(route.is_ok());
        }
        std::hint::black_box(&thrash);
        cold.sort_unstable();
        println!(
            "the router's decision, cold caches: p50 {:.2} µs, p99 {:.2} µs",
            pct(&cold, 0.5),
            pct(&cold, 0.99)
        );
        let mut peers = Vec::with_capacity(100_000);
        for _ in 0..100_000u32 {
            let t = Instant::now();
            let p = to_b.session().peer().await;
            peers.push(t.elapsed().as_nanos() as u64);
            assert!(p.is_ok());
        }
        peers.sort_unstable();
        println!(
            "the verified peer (Session::peer): p50 {:.2} µs, p99 {:.2} µs",
            pct(&peers, 0.5),
            pct(&peers, 0.99)
        );
        println!(
            "the router's decision (lookup + hop): p50 {:.2} µs, p99 {:.2} µs",
            pct(&hops, 0.5),
            pct(&hops, 0.99)
        );
        println!(
            "the table lookup alone (software pipeline, one probe frame): p50 {:.2} µs, p99 {:.2} µs",
            pct(&lookups, 0.5),
            pct(&lookups, 0.99)
        );

        // A 64 MiB tensor, direct to B and relayed through A (cut-through, shard by shard),
        // alternating: the relay's throughput against the direct path's.
        let tensors: usize = std::env::var("ROUTED_TENSORS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(12);
        let data = vec![0x5au8; 64 << 20];
        let header = nexus_api::Header::opaque(1, 0, data.len() as u32);
        let mut rates = [Vec::new(), Vec::new()];
        for round in 0..tensors + 2 {
            for (k, c) in [&direct, &relayed].into_iter().enumerate() {
                let t = Instant::now();
                let ack = c.send_tensor(&header, &data).await.unwrap();
                assert_eq!(ack.bytes, data.len() as u64);
                // The first two rounds warm both paths (congestion windows, buffers).
                if round >= 2 {
                    rates[k].push(data.len() as f64 / t.elapsed().as_secs_f64() / 1e6);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (d, r) = (median(&mut rates[0]), median(&mut rates[1]));
        println!(
            "64 MiB tensor, {tensors} each, alternating: direct {d:.0} MB/s, relayed {r:.0} MB/s (median), relayed / direct {:.2}",
            r / d
        );
        a.drain(Duration::from_millis(100)).await;
        b.drain(Duration::from_millis(100)).await;
    });
}
