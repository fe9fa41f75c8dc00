//! The RoutingDomain controller in local mode, end to end over real parts: MICs issued by the
//! real NexTrust CA (`nexus-ca` on PostgreSQL), the controller admitting endpoints against the
//! CA's root and CRL, compiling the Fabric's NexRoute tables and pushing them over the fleet
//! protocol, and node agents writing them through the real P4Runtime service (nexus-p4's
//! software target, the one the dataplane embeds) — read back over P4Runtime.

#![allow(clippy::unwrap_used)]

mod real_ca;
mod routing_common;
mod support;

use std::path::Path;
use std::time::Duration;

use nexus_controller::ca_client::GrpcIssuer;
use nexus_controller::identity::IssuedCertificate;
use nexus_controller::identity::reconcile::{Issuer, RevokeReason};
use nexus_controller::routing::evidence::TrustArgs;
use nexus_controller::routing::local::RoutingArgs;
use nexus_crds::routing::RoutingDomainStatus;
use routing_common::{names, programmed, ready, ready_message};
use serde_json::Value;
use sqlx::PgPool;
use support::{FABRIC, Opts, Sim};

/// Issues `name`'s MIC through the real CA and writes it in the Secret layout under `dir`.
async fn issue(issuer: &GrpcIssuer, name: &str, dir: &Path) -> IssuedCertificate {
    let mi = real_ca::model_identity(name);
    let (issued, data) = real_ca::issue_mic(issuer, &mi, &format!("routing-test:{name}")).await;
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (file, data) in data {
        std::fs::write(d.join(file), data.0).unwrap();
    }
    issued
}

fn domain_manifest(endpoints: &[(&str, &str, &str)]) -> String {
    routing_common::domain(FABRIC, endpoints).to_string()
}

async fn status(sim: &Sim) -> Option<RoutingDomainStatus> {
    let v: Value = reqwest::get(format!("{}/v1/routing-domains", sim.http()))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let d = v["items"].as_array()?.first()?.clone();
    serde_json::from_value(d.get("status")?.clone()).ok()
}

async fn wait_status(
    sim: &Sim,
    what: &str,
    ok: impl Fn(&RoutingDomainStatus) -> bool,
) -> RoutingDomainStatus {
    let mut last = None;
    for _ in 0..300 {
        if let Some(st) = status(sim).await {
            if ok(&st) {
                return st;
            }
            last = Some(st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last status: {last:#?}");
}

fn setup(dir: &Path, ca: &nexus_ca::RunningServer, ca_pem: &str, p4_nodes: Vec<usize>) -> Opts {
    let anchors = dir.join("anchors.pem");
    std::fs::write(&anchors, ca_pem).unwrap();
    Opts {
        nodes: 3,
        p4_nodes,
        routing: RoutingArgs {
            identities: Some(dir.join("identities")),
            trust: TrustArgs {
                trust_anchors: Some(anchors),
                ca_url: Some(format!("http://{}", ca.http_addr)),
                ca_tls_ca: None,
            },
        },
        ..Opts::default()
    }
}

#[sqlx::test(migrations = false)]
async fn endpoints_are_admitted_programmed_on_every_node_and_a_revoked_mic_is_withdrawn(
    pool: PgPool,
) {
    let (ca, issuer) = real_ca::start(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("identities");
    let a = issue(&issuer, "coder-a", &ids).await;
    let b = issue(&issuer, "coder-b", &ids).await;
    let sim = Sim::start(setup(dir.path(), &ca, &a.ca_pem, vec![0, 1, 2])).await;
    std::fs::write(
        sim.dir.join("manifests/domain.yaml"),
        domain_manifest(&[
            ("coder-a", "127.0.0.1:7401", "coder-a"),
            ("coder-b", "127.0.0.1:7402", "coder-b"),
            ("coder-c", "127.0.0.1:7403", "coder-c"),
        ]),
    )
    .unwrap();

    let st = wait_status(&sim, "Ready on every node", |s| {
        ready(s) == Some(("True", "Programmed"))
    })
    .await;
    assert_eq!(names(&st.admitted), ["coder-a", "coder-b"]);
    assert_eq!(st.rejected.len(), 1, "{st:#?}");
    assert_eq!(st.rejected[0].name, "coder-c");
    assert_eq!(st.rejected[0].reason, "IdentityNotReady");
    assert_eq!(
        st.admitted[0].certificate_fingerprint.as_deref(),
        Some(a.fingerprint.as_str())
    );
    assert_eq!(st.nodes_programmed, 3);
    let v1 = st.routing_table_version.clone().unwrap();
    for (_, url) in sim.p4.iter().flatten() {
        assert_eq!(programmed(url).await.as_deref(), Some(v1.as_str()));
    }
    // Degraded: one endpoint was rejected.
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True"),
        "{st:#?}"
    );

    // Revoke coder-b at the CA: the next CRL withdraws it, on every node.
    issuer
        .revoke("acme", &b.serial, RevokeReason::CessationOfOperation)
        .await
        .unwrap();
    let st = wait_status(
        &sim,
        "coder-b withdrawn and the new table programmed",
        |s| {
            names(&s.admitted) == ["coder-a"]
                && s.routing_table_version.as_deref() != Some(v1.as_str())
                && ready(s) == Some(("True", "Programmed"))
        },
    )
    .await;
    let revoked = st.rejected.iter().find(|r| r.name == "coder-b").unwrap();
    assert_eq!(revoked.reason, "Revoked", "{revoked:?}");
    let v2 = st.routing_table_version.unwrap();
    for (_, url) in sim.p4.iter().flatten() {
        assert_eq!(programmed(url).await.as_deref(), Some(v2.as_str()));
    }
    sim.shutdown().await;
    ca.shutdown().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_node_that_cannot_program_the_table_is_reported_and_the_others_run_it(pool: PgPool) {
    let (ca, issuer) = real_ca::start(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let a = issue(&issuer, "coder-a", &dir.path().join("identities")).await;
    // Node 2's agent has no dataplane to program.
    let sim = Sim::start(setup(dir.path(), &ca, &a.ca_pem, vec![0, 1])).await;
    std::fs::write(
        sim.dir.join("manifests/domain.yaml"),
        domain_manifest(&[("coder-a", "127.0.0.1:7401", "coder-a")]),
    )
    .unwrap();
    let st = wait_status(&sim, "the refusal reported", |s| {
        ready(s) == Some(("False", "TableRefused")) && s.nodes_programmed == 2
    })
    .await;
    let msg = ready_message(&st);
    assert!(
        msg.contains(&support::node_name(2)) && msg.contains("P4Runtime"),
        "{msg}"
    );
    let v = st.routing_table_version.unwrap();
    for (_, url) in sim.p4.iter().flatten() {
        assert_eq!(programmed(url).await.as_deref(), Some(v.as_str()));
    }
    sim.shutdown().await;
    ca.shutdown().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn without_trust_anchors_nothing_is_admitted_and_the_status_says_why(pool: PgPool) {
    let (ca, issuer) = real_ca::start(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let a = issue(&issuer, "coder-a", &dir.path().join("identities")).await;
    let mut opts = setup(dir.path(), &ca, &a.ca_pem, vec![0, 1, 2]);
    opts.routing.trust.trust_anchors = None;
    let sim = Sim::start(opts).await;
    std::fs::write(
        sim.dir.join("manifests/domain.yaml"),
        domain_manifest(&[("coder-a", "127.0.0.1:7401", "coder-a")]),
    )
    .unwrap();
    let st = wait_status(&sim, "NoTrustAnchors", |s| {
        ready(s) == Some(("False", "NoTrustAnchors"))
    })
    .await;
    assert!(st.admitted.is_empty());
    sim.shutdown().await;
    ca.shutdown().await.unwrap();
}
