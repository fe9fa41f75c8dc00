//! What routing by capability adds to a call, in one run on loopback: the same warm unary
//! NexAPI call (1 KiB request) sent
//! - **direct** to node B;
//! - **routed** to B by capability, where B's NexRoute tables pick B itself: the cost of the
//!   routing decision on the call path (metadata, the software P4 pipeline's lookup);
//! - **relayed**: to node A by capability, whose tables pick B, so A relays the call — the
//!   routing decision plus one more NexStream hop.
//!
//! The three are interleaved call by call, so the machine's noise falls on all alike. Run:
//! `cargo bench -p nexus-dataplane --bench routed_call` (set `ROUTED_CALLS` for more or fewer
//! calls per contender, default 20,000).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use nexus_api::{Client, InferRequest};
use nexus_dataplane::{Args, Running, start};
use nexus_p4::client::Controller;
use nexus_p4::compile::{DomainInput, compile};
use nexus_p4::p4info::nexroute_p4info;
use nexus_route::id::{capability_id, domain_id, family_id, tenant_id};
use nexus_route::{Advertisement, Modalities, TrustLevel};
use nexus_stream::testing::TestPki;

const DOMAIN: &str = "default/demo";

fn node(mic: &std::path::Path) -> Args {
    Args::try_parse_from([
        "nexus-dataplane",
        "--listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0",
        "--p4runtime-listen=127.0.0.1:0",
        &format!("--mic-dir={}", mic.display()),
        "--demo-model",
        "--mic-reload=0",
    ])
    .unwrap()
}

fn advert(name: &str, at: SocketAddr, capability: &str) -> Advertisement {
    Advertisement {
        name: name.into(),
        address: at.to_string(),
        capability_names: vec![capability.into()],
        capabilities: vec![capability_id(capability)],
        model_family_name: "llm".into(),
        model_family: family_id("llm"),
        context_window: 131_072,
        modalities: Modalities::TEXT,
        latency_sla_ms: Some(150),
        cost_micros: None,
        weight: 100,
        max_in_flight: None,
        trust: TrustLevel::from_u8(1).unwrap(),
        claims: vec![],
        proofs: vec![],
    }
}

async fn program(node: &Running, endpoints: Vec<Advertisement>) {
    let url = format!("http://{}", node.p4runtime.unwrap());
    let mut c = Controller::connect(url, 1, 1).await.unwrap();
    c.set_pipeline(nexroute_p4info().unwrap(), 1).await.unwrap();
    let schema = nexus_p4::Schema::new(nexroute_p4info().unwrap()).unwrap();
    let (ns, name) = DOMAIN.split_once('/').unwrap();
    let tables = compile(
        &schema,
        &[DomainInput {
            name: DOMAIN.into(),
            tenant_id: tenant_id("acme"),
            domain_id: domain_id(ns, name),
            default_for_tenant: true,
            endpoints,
        }],
    )
    .unwrap();
    c.apply(&tables).await.unwrap();
}

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
        let a = start(&node(&fabric)).await.unwrap();
        let b = start(&node(&fabric)).await.unwrap();
        // code-generation lives on B only: B's tables pick B, A's pick B too.
        let tables = vec![advert("on-b", b.udp, "code-generation")];
        program(&a, tables.clone()).await;
        program(&b, tables).await;

        let direct = Client::connect_dir_in(&caller, b.udp, DOMAIN).await.unwrap();
        let routed = Client::connect_dir_in(&caller, b.udp, DOMAIN)
            .await
            .unwrap()
            .route_by("code-generation");
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
        let contenders = [("direct", &direct), ("routed", &routed), ("relayed", &relayed)];
        for (_, c) in &contenders {
            for _ in 0..1_000 {
                c.infer_raw(&body, true).await.unwrap();
            }
        }
        let mut ns = [
            Vec::with_capacity(calls),
            Vec::with_capacity(calls),
            Vec::with_capacity(calls),
        ];
        for i in 0..calls * 3 {
            // Rotate the order too, so no contender always follows the same one.
            let k = (i + i / 3) % 3;
            let t = Instant::now();
            contenders[k].1.infer_raw(&body, true).await.unwrap();
            ns[k].push(t.elapsed().as_nanos() as u64);
        }
        for v in &mut ns {
            v.sort_unstable();
        }
        let direct_p50 = pct(&ns[0], 0.5);
        println!(
            "routed call vs direct, warm unary 1 KiB request, {calls} calls each, interleaved (loopback)"
        );
        println!("| call | p50 µs | p99 µs | p50 added over direct µs |");
        println!("|---|---:|---:|---:|");
        for (k, (name, _)) in contenders.iter().enumerate() {
            let p50 = pct(&ns[k], 0.5);
            println!(
                "| {name} | {p50:.1} | {:.1} | {:+.1} |",
                pct(&ns[k], 0.99),
                p50 - direct_p50
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
        println!(
            "the table lookup alone (software pipeline, one probe frame): p50 {:.2} µs, p99 {:.2} µs",
            pct(&lookups, 0.5),
            pct(&lookups, 0.99)
        );
        a.drain(Duration::from_millis(100)).await;
        b.drain(Duration::from_millis(100)).await;
    });
}
