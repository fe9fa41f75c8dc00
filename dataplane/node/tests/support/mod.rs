//! What the dataplane's routing tests and the routed-call bench share: nodes with the demo
//! model and a P4Runtime target, their tables programmed as the node agent does, and reading
//! their `/metrics`. (The bench includes this file by path.)
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use clap::Parser;
use nexus_dataplane::{Args, Running};
use nexus_p4::client::Controller;
use nexus_p4::compile::{DomainInput, compile};
use nexus_p4::p4info::nexroute_p4info;
use nexus_route::id::{capability_id, domain_id, family_id, tenant_id};
use nexus_route::{Advertisement, Modalities, TrustLevel};

/// The routing domain the tables are compiled for.
pub const DOMAIN: &str = "default/demo";

/// A node on loopback with the demo model and a P4Runtime target, plus `extra` flags.
pub fn node(mic: &Path, extra: &[&str]) -> Args {
    let mic = format!("--mic-dir={}", mic.display());
    let mut argv = vec![
        "nexus-dataplane",
        "--listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0",
        "--p4runtime-listen=127.0.0.1:0",
        &mic,
        "--demo-model",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap()
}

/// An `llm` endpoint at `at` offering `capability`.
pub fn advert(name: &str, at: SocketAddr, capability: &str) -> Advertisement {
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

/// Programs `node`'s tables the way its node agent does: primary controller, pipeline, one
/// atomic batch; [`DOMAIN`] of tenant `acme`.
pub async fn program(node: &Running, endpoints: Vec<Advertisement>) {
    program_domains(node, vec![("acme", DOMAIN, endpoints)]).await;
}

/// [`program`] with several domains, each `(tenant, namespace/name, endpoints)` and its
/// tenant's default domain.
pub async fn program_domains(node: &Running, domains: Vec<(&str, &str, Vec<Advertisement>)>) {
    let url = format!("http://{}", node.p4runtime.unwrap());
    let mut c = Controller::connect(url, 1, 1).await.unwrap();
    c.set_pipeline(nexroute_p4info().unwrap(), 1).await.unwrap();
    let schema = nexus_p4::Schema::new(nexroute_p4info().unwrap()).unwrap();
    let inputs: Vec<DomainInput> = domains
        .into_iter()
        .map(|(tenant, domain, endpoints)| {
            let (ns, name) = domain.split_once('/').unwrap();
            DomainInput {
                name: domain.into(),
                tenant_id: tenant_id(tenant),
                domain_id: domain_id(ns, name),
                default_for_tenant: true,
                endpoints,
            }
        })
        .collect();
    let tables = compile(&schema, &inputs).unwrap();
    c.apply(&tables).await.unwrap();
}

/// The sum of the `/metrics` samples named `name` that carry every label in `want` (0 when
/// none does).
pub async fn sample(http: SocketAddr, name: &str, want: &[&str]) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|l| want.iter().all(|w| l.contains(w)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Packets counted so far in every cell of the pipeline's `tenant_traffic` counter, read over
/// P4Runtime as a controller reads it.
pub async fn tenant_packets(node: &Running) -> i64 {
    use nexus_p4::proto::p4::v1 as pb;
    let url = format!("http://{}", node.p4runtime.unwrap());
    let mut c = Controller::connect(url, 1, 1).await.unwrap();
    let schema = nexus_p4::Schema::new(nexroute_p4info().unwrap()).unwrap();
    let cells = c
        .read(vec![pb::Entity {
            entity: Some(pb::entity::Entity::CounterEntry(pb::CounterEntry {
                counter_id: schema.id("tenant_traffic").unwrap(),
                index: None,
                data: None,
            })),
        }])
        .await
        .unwrap();
    cells
        .iter()
        .map(|e| match &e.entity {
            Some(pb::entity::Entity::CounterEntry(e)) => e.data.map_or(0, |d| d.packet_count),
            _ => 0,
        })
        .sum()
}
