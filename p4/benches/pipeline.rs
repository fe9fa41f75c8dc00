//! Software pipeline throughput, fed from memory (no sockets), beside a plain HashMap lookup
//! loop over the same packets in the same run.
//!
//! Run: `cargo bench -p nexus-p4 --bench pipeline`. Each iteration copies 1,024 overlay frames
//! from templates into receive buffers (as a NIC's DMA would) and processes them: 60% are
//! capability-addressed (NexLink header + descriptor → tenant, domain, class, weighted next
//! hop, rewrite, IPv4 checksum), 40% host-addressed (tenant lookup and counting). The peer does
//! the same copy and one `HashMap<u32, u32>` lookup of the tenant id per frame.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddrV4;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nexus_firmware::Header;
use nexus_p4::client::Controller;
use nexus_p4::compile::{DomainInput, compile};
use nexus_p4::p4info::nexroute_p4info;
use nexus_p4::server::P4RuntimeService;
use nexus_p4::{Schema, Target, Verdict};
use nexus_route::Advertisement;

const BATCH: usize = 1024;
const TENANT: u32 = 7;

fn endpoint(i: usize, caps: &[&str]) -> Advertisement {
    let ep: nexus_crds::routing::EndpointAdvertisement =
        serde_json::from_value(serde_json::json!({
            "name": format!("ep-{i}"), "address": format!("10.20.{}.{}:7400", i / 200, i % 200 + 1),
            "capability": {"capabilities": caps, "modelFamily": "llm"},
            "modelIdentityRef": {"name": "m"}, "weight": 10 + i as u32 % 90
        }))
        .expect("valid endpoint json");
    Advertisement::from_crd(&ep).expect("valid advertisement")
}

fn frames() -> Vec<Vec<u8>> {
    let classes = ["code-generation", "chat", "embedding"];
    (0..BATCH)
        .map(|i| {
            let payload = [0u8; 256];
            let mut h = Header::opaque(i as u32, i as u64, payload.len() as u32);
            h.tenant_id = TENANT;
            let src: SocketAddrV4 = format!("10.0.{}.{}:{}", i / 250, i % 250 + 1, 40_000 + i)
                .parse()
                .expect("addr");
            if i % 5 < 3 {
                let d = nexus_route::Descriptor::for_class(nexus_route::id::capability_id(
                    classes[i % 3],
                ));
                let sad = d.to_bytes().expect("valid");
                nexus_p4::packet::build(
                    src,
                    "10.255.255.1:7401".parse().expect("addr"),
                    &h,
                    Some(&sad),
                    &payload,
                )
            } else {
                nexus_p4::packet::build(
                    src,
                    "10.20.0.1:7400".parse().expect("addr"),
                    &h,
                    None,
                    &payload,
                )
            }
            .expect("valid frame")
        })
        .collect()
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let target = Target::new(1);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(P4RuntimeService::server(target.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut ctl = Controller::connect(format!("http://{addr}"), 1, 1)
            .await
            .expect("connects");
        ctl.set_pipeline(nexroute_p4info().expect("p4info"), 1)
            .await
            .expect("pipeline");
        let eps: Vec<Advertisement> = (0..300)
            .map(|i| {
                endpoint(
                    i,
                    &[["code-generation", "chat", "embedding"][i % 3], "tool-use"],
                )
            })
            .collect();
        let schema = Schema::new(nexroute_p4info().expect("p4info")).expect("schema");
        let domain = DomainInput {
            name: "acme/bench".into(),
            tenant_id: TENANT,
            domain_id: nexus_route::id::domain_id("acme", "bench"),
            default_for_tenant: true,
            endpoints: eps,
        };
        let compiled = compile(&schema, &[domain]).expect("compiles");
        ctl.apply(&compiled).await.expect("programs");
    });
    let loaded = target.loaded().expect("loaded");
    let templates = frames();
    let mut bufs: Vec<[u8; 512]> = vec![[0u8; 512]; BATCH];
    // Sanity: every frame is routed or delivered.
    for (t, b) in templates.iter().zip(bufs.iter_mut()) {
        b[..t.len()].copy_from_slice(t);
        let v = loaded.process(&mut b[..t.len()]);
        assert!(
            matches!(v, Verdict::Routed { .. } | Verdict::Delivered),
            "{v:?}"
        );
    }

    let mut g = c.benchmark_group("overlay_packets");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("nexroute_pipeline", |b| {
        b.iter(|| {
            let snap = target.loaded().expect("loaded"); // once per batch, as the dataplane does
            let mut routed = 0u32;
            for (t, buf) in templates.iter().zip(bufs.iter_mut()) {
                let n = t.len();
                buf[..n].copy_from_slice(t);
                if let Verdict::Routed { .. } = snap.process(&mut buf[..n]) {
                    routed += 1;
                }
            }
            black_box(routed)
        })
    });
    let map: HashMap<u32, u32> = (0..1024u32).map(|i| (i, i * 3)).collect();
    g.bench_function("hashmap_lookup_baseline", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for (t, buf) in templates.iter().zip(bufs.iter_mut()) {
                let n = t.len();
                buf[..n].copy_from_slice(t);
                let tenant = u32::from_le_bytes([buf[54], buf[55], buf[56], buf[57]]);
                acc = acc.wrapping_add(map.get(&tenant).copied().unwrap_or(0));
            }
            black_box(acc)
        })
    });
    g.finish();

    // The same loops timed by this thread's CPU time: the per-core rate on a shared machine.
    let (wall, cpu) = nexus_route::cputime::rates(2_000, BATCH as u64, || {
        let snap = target.loaded().expect("loaded");
        for (t, buf) in templates.iter().zip(bufs.iter_mut()) {
            let n = t.len();
            buf[..n].copy_from_slice(t);
            black_box(snap.process(&mut buf[..n]));
        }
    });
    let (bwall, bcpu) = nexus_route::cputime::rates(2_000, BATCH as u64, || {
        for (t, buf) in templates.iter().zip(bufs.iter_mut()) {
            let n = t.len();
            buf[..n].copy_from_slice(t);
            let tenant = u32::from_le_bytes([buf[54], buf[55], buf[56], buf[57]]);
            black_box(map.get(&tenant));
        }
    });
    let m = |x: Option<f64>| x.map_or("n/a".to_owned(), |v| format!("{:.2} M packets/s", v / 1e6));
    println!(
        "per CPU-second: pipeline {} (wall {:.2} M/s), HashMap baseline {} (wall {:.2} M/s)",
        m(cpu),
        wall / 1e6,
        m(bcpu),
        bwall / 1e6
    );
    if let (Some(p), Some(b)) = (cpu, bcpu) {
        println!("ratio pipeline/baseline: {:.2}", p / b);
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
