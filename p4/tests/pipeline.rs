//! The software pipeline programmed through P4Runtime over real gRPC: capability-addressed
//! packets go to admitted endpoints in proportion to their weights, counters count per tenant,
//! and every drop has its reason.

mod common;

use std::collections::HashMap;

use common::*;
use nexus_p4::client::Controller;
use nexus_p4::compile::compile;
use nexus_p4::p4info::nexroute_p4info;
use nexus_p4::proto::p4::v1 as pb;
use nexus_p4::{DropReason, Schema, Target, Verdict};

fn schema() -> Schema {
    Schema::new(nexroute_p4info().expect("parses")).expect("consistent")
}

async fn programmed(
    endpoints: Vec<nexus_route::Advertisement>,
) -> (
    std::sync::Arc<Target>,
    Controller,
    nexus_p4::compile::CompiledTables,
) {
    let target = Target::new(1);
    let url = serve(target.clone()).await;
    let mut c = Controller::connect(url, 1, 1).await.expect("connects");
    assert!(c.is_primary());
    c.set_pipeline(nexroute_p4info().expect("parses"), 42)
        .await
        .expect("pipeline loads");
    let compiled = compile(&schema(), &[demo_domain(endpoints)]).expect("compiles");
    let report = c.apply(&compiled).await.expect("programs");
    assert_eq!(report.updates, compiled.entities.len());
    (target, c, compiled)
}

fn shares(
    target: &Target,
    class: &str,
    domain: u32,
    n: u32,
) -> HashMap<std::net::SocketAddrV4, u32> {
    let loaded = target.loaded().expect("pipeline loaded");
    let mut out = HashMap::new();
    for stream in 0..n {
        let mut p = routed_packet(TENANT, stream, class, domain);
        assert_eq!(
            loaded.process(&mut p),
            Verdict::Routed { port: 0 },
            "stream {stream}"
        );
        assert!(nexus_p4::packet::ipv4_checksum_ok(&p), "checksum rewritten");
        assert_eq!(p[14 + 8], 63, "TTL decremented");
        *out.entry(dst_of(&p)).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn capability_addressed_packets_follow_the_weights() {
    let (target, _c, compiled) = programmed(demo_endpoints()).await;
    assert!(
        compiled.notes.iter().any(|n| n.contains("v6-only")),
        "{:?}",
        compiled.notes
    );
    let domain = nexus_route::id::domain_id("acme", "code-assistants");
    let s = shares(&target, "code-generation", domain, 4000);
    let a = s
        .get(&"10.20.0.17:7400".parse().expect("addr"))
        .copied()
        .unwrap_or(0);
    let b = s
        .get(&"10.20.0.18:7400".parse().expect("addr"))
        .copied()
        .unwrap_or(0);
    assert_eq!(
        a + b,
        4000,
        "only the two code-generation endpoints with weight > 0: {s:?}"
    );
    let share = f64::from(a) / 4000.0;
    assert!((share - 0.7).abs() < 0.04, "weights 70:30, got {share}");
    // chat: coder-a (70) and chat-c (100); the default domain (0) is the same domain.
    let s = shares(&target, "chat", 0, 3400);
    let c = s
        .get(&"10.20.0.19:7400".parse().expect("addr"))
        .copied()
        .unwrap_or(0);
    assert!(
        (f64::from(c) / 3400.0 - 100.0 / 170.0).abs() < 0.04,
        "{s:?}"
    );
}

#[tokio::test]
async fn counters_and_drops() {
    let (target, mut c, _) = programmed(demo_endpoints()).await;
    let loaded = target.loaded().expect("loaded");
    let mut p = direct_packet(TENANT);
    let len = p.len();
    assert_eq!(loaded.process(&mut p), Verdict::Delivered);
    let mut p = direct_packet(99);
    assert_eq!(
        loaded.process(&mut p),
        Verdict::Dropped(DropReason::UnknownTenant)
    );
    let mut p = routed_packet(TENANT, 1, "teleportation", 0);
    assert_eq!(
        loaded.process(&mut p),
        Verdict::Dropped(DropReason::NoRoute)
    );
    let mut p = routed_packet(TENANT, 1, "chat", 12345);
    assert_eq!(
        loaded.process(&mut p),
        Verdict::Dropped(DropReason::NoRoute),
        "unknown domain"
    );
    let mut p = routed_packet(TENANT, 1, "chat", 0);
    p[14 + 8] = 1;
    assert_eq!(
        loaded.process(&mut p),
        Verdict::Dropped(DropReason::TtlExpired)
    );
    let mut p = routed_packet(TENANT, 1, "chat", 0);
    p[42 + 20] ^= 0xff; // corrupt the NexLink header: its checksum catches it
    assert_eq!(
        loaded.process(&mut p),
        Verdict::Dropped(DropReason::Malformed)
    );
    let mut p = vec![0u8; 60];
    assert_eq!(loaded.process(&mut p), Verdict::Passed, "not IPv4");

    // Counters, read through P4Runtime.
    let schema = schema();
    let read = |name: &str| pb::Entity {
        entity: Some(pb::entity::Entity::CounterEntry(pb::CounterEntry {
            counter_id: schema.id(name).expect("counter"),
            index: None,
            data: None,
        })),
    };
    let cells = c.read(vec![read("tenant_traffic")]).await.expect("reads");
    assert_eq!(cells.len(), 1024);
    let cell0 = match &cells[0].entity {
        Some(pb::entity::Entity::CounterEntry(e)) => e.data.expect("data"),
        _ => panic!("not a counter"),
    };
    // Tenant 7 is tenant index 0: one direct packet plus the three routed ones that got past
    // the tenant table (the malformed one never reached it, tenant 99 has no cell).
    assert_eq!(cell0.packet_count, 1 + 3);
    assert!(cell0.byte_count as usize > len);
    let drops = c.read(vec![read("drops")]).await.expect("reads");
    let count = |i: usize| match &drops[i].entity {
        Some(pb::entity::Entity::CounterEntry(e)) => e.data.expect("data").packet_count,
        _ => -1,
    };
    assert_eq!((count(0), count(1), count(2), count(3)), (1, 1, 2, 1));
}

#[tokio::test]
async fn reapplying_is_a_no_op_and_a_new_version_withdraws_an_endpoint() {
    let (target, mut c, v1) = programmed(demo_endpoints()).await;
    assert_eq!(
        c.programmed_version().await.expect("reads").as_deref(),
        Some(v1.version.as_str())
    );
    let again = c.apply(&v1).await.expect("idempotent");
    assert_eq!(again.updates, 0);

    // coder-b's MIC was revoked: the controller recompiles without it.
    let without_b: Vec<_> = demo_endpoints()
        .into_iter()
        .filter(|e| e.name != "coder-b")
        .collect();
    let v2 = compile(&schema(), &[demo_domain(without_b)]).expect("compiles");
    assert_ne!(v1.version, v2.version);
    let r = c.apply(&v2).await.expect("programs");
    assert!(r.updates > 0);
    assert_eq!(
        c.programmed_version().await.expect("reads").as_deref(),
        Some(v2.version.as_str())
    );
    let s = shares(&target, "code-generation", 0, 500);
    assert_eq!(
        s.keys().copied().collect::<Vec<_>>(),
        vec!["10.20.0.17:7400".parse().expect("addr")]
    );
}
