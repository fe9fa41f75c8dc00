//! The RoutingDomain controller in kube mode against the fake API server (`nexus-kube-fake`),
//! over real parts: MICs issued by the real NexTrust CA (`nexus-ca` on PostgreSQL) in
//! ModelIdentity Secrets, the CA's CRL over its REST API, real kube-mode node agents
//! (`nexus_agent::kube_mode::KubeAgent`) fetching the tables from the controller's
//! `/v1/routing/{version}` and writing them through the real P4Runtime service (nexus-p4's
//! software target, the one the dataplane embeds) — read back over P4Runtime.
//!
//! Most tests drive the controller's passes themselves (over the stores its watches keep), so
//! "within one pass" is checked exactly; one runs it as `nexus-controller rollout` does, to see
//! a watched change make a pass on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod real_ca;
mod routing_common;
mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;
use nexus_agent::kube_mode::KubeAgent;
use nexus_agent::sim::SimNic;
use nexus_controller::ca_client::GrpcIssuer;
use nexus_controller::identity::IssuedCertificate;
use nexus_controller::identity::reconcile::{Issuer, RevokeReason};
use nexus_controller::metrics::RoutingMetrics;
use nexus_controller::routing::evidence::TrustArgs;
use nexus_controller::routing::kube::{KubeRouting, MANAGER, PassOutcome, router};
use nexus_crds::NexusNode;
use nexus_crds::routing::{RoutingDomain, RoutingDomainStatus};
use nexus_fleet_api::v1 as pb;
use nexus_kube_fake::FakeApiServer;
use prometheus_client::registry::Registry;
use prost::Message;
use routing_common::{cond, names, programmed, ready, ready_message};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::oneshot;

const FABRIC: &str = "edge";
const NS: &str = "acme";

/// Issues `name`'s MIC through the real CA and stores its ModelIdentity and Secret (the layout
/// the ModelIdentity controller writes) in the fake API server.
async fn issue(fake: &FakeApiServer, issuer: &GrpcIssuer, name: &str) -> IssuedCertificate {
    issue_as(fake, issuer, name, &format!("routing-kube-test:{name}")).await
}

/// [`issue`] with its own CA request id (a renewal is a new request).
async fn issue_as(
    fake: &FakeApiServer,
    issuer: &GrpcIssuer,
    name: &str,
    request_id: &str,
) -> IssuedCertificate {
    let mi = real_ca::model_identity(name);
    let (issued, data) = real_ca::issue_mic(issuer, &mi, request_id).await;
    fake.apply(&mi);
    fake.apply(&mic_secret(&mi.spec.secret_name, data));
    issued
}

/// A Secret as the ModelIdentity controller writes it: labelled as its own (the routing
/// controller watches only those).
fn mic_secret(
    name: &str,
    data: std::collections::BTreeMap<String, k8s_openapi::ByteString>,
) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NS.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    nexus_controller::identity::reconcile::MANAGER.to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// Waits (generously) until `ok` holds of the domain's status in the API.
async fn wait_status(
    fake: &FakeApiServer,
    what: &str,
    ok: impl Fn(&RoutingDomainStatus) -> bool,
) -> RoutingDomainStatus {
    let mut last = None;
    for _ in 0..1200 {
        let st = fake
            .get::<RoutingDomain>(Some(NS), "code")
            .and_then(|d| d.status);
        if let Some(st) = st {
            if ok(&st) {
                return st;
            }
            last = Some(st);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}; last status: {last:#?}");
}

fn domain(endpoints: &[(&str, &str, &str)]) -> Value {
    routing_common::domain(FABRIC, endpoints)
}

struct World {
    fake: FakeApiServer,
    routing: KubeRouting,
    /// What the controller counts on its `/metrics`.
    metrics: Arc<RoutingMetrics>,
    /// `http://…` of the controller's HTTP endpoint serving `/v1/routing/{version}`.
    http: String,
    /// Per node: its dataplane's P4Runtime URL, if it has one.
    p4: Vec<Option<String>>,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl World {
    /// The fake API server, `nodes` NexusNodes of the Fabric with a kube-mode agent each (the
    /// ones in `p4_nodes` programming a real P4Runtime target), and the routing controller
    /// trusting `ca_pem` and reading the CA's CRL.
    async fn start(
        fake: FakeApiServer,
        ca: &nexus_ca::RunningServer,
        ca_pem: &str,
        dir: &std::path::Path,
        nodes: usize,
        p4_nodes: &[usize],
    ) -> Self {
        // As the binaries do at start.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let anchors = dir.join("anchors.pem");
        std::fs::write(&anchors, ca_pem).unwrap();
        let trust = TrustArgs {
            trust_anchors: Some(anchors),
            ca_url: Some(format!("http://{}", ca.http_addr)),
            ca_tls_ca: None,
        };
        let metrics = Arc::new(RoutingMetrics::new(&mut Registry::default()));
        let routing = KubeRouting::new(fake.client(), trust, Arc::new(AtomicBool::new(true)))
            .unwrap()
            .with_metrics(Arc::clone(&metrics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = format!("http://{}", listener.local_addr().unwrap());
        let app = router(routing.tables());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let (_, firmware_trust) = nexus_firmware::bundle::testing::key("release", 7);
        let mut w = Self {
            fake,
            routing,
            metrics,
            http,
            p4: Vec::new(),
            stop: Vec::new(),
            tasks: Vec::new(),
            _dirs: Vec::new(),
        };
        for i in 0..nodes {
            let name = support::node_name(i);
            w.fake.apply_value(json!({
                "apiVersion": "nexus.dev/v1alpha1",
                "kind": "NexusNode",
                "metadata": { "name": name },
                "spec": { "fabric": FABRIC },
            }));
            let url = if p4_nodes.contains(&i) {
                Some(support::serve_p4runtime(nexus_p4::Target::new(1)).await)
            } else {
                None
            };
            let d = tempfile::tempdir().unwrap();
            SimNic::create(
                &d.path().join("nic0"),
                0x15b3,
                0x101d,
                "SIM",
                "0.1.0",
                &[7; 4096],
            )
            .unwrap();
            let target = url.clone().map(|u| {
                Arc::new(nexus_agent::routing::P4RuntimeTables::new(u, 1))
                    as Arc<dyn nexus_fleet_agent::RoutingTarget>
            });
            // The routing endpoint derived from the bundle endpoint, as `nexus-agent kube` does.
            let server = nexus_agent::kube_mode::routing_server_from_bundles(&format!(
                "{}/v1/bundles",
                w.http
            ));
            let mut agent = KubeAgent::new(w.fake.client(), name, d.path(), firmware_trust.clone())
                .with_routing(server, target);
            w._dirs.push(d);
            w.p4.push(url);
            let (tx, mut rx) = oneshot::channel::<()>();
            w.stop.push(tx);
            w.tasks.push(tokio::spawn(async move {
                let _ = agent.recover(chrono::Utc::now());
                loop {
                    let _ = agent.step(chrono::Utc::now()).await;
                    tokio::select! {
                        _ = &mut rx => return,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }));
        }
        w
    }

    async fn pass(&mut self) -> PassOutcome {
        self.routing.pass(chrono::Utc::now()).await.unwrap()
    }

    fn status(&self) -> Option<RoutingDomainStatus> {
        self.fake
            .get::<RoutingDomain>(Some(NS), "code")
            .and_then(|d| d.status)
    }

    /// Runs passes until the domain's status satisfies `ok`.
    async fn until(
        &mut self,
        what: &str,
        ok: impl Fn(&RoutingDomainStatus) -> bool,
    ) -> RoutingDomainStatus {
        let mut last = None;
        for _ in 0..150 {
            self.pass().await;
            if let Some(st) = self.status() {
                if ok(&st) {
                    return st;
                }
                last = Some(st);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}; last status: {last:#?}");
    }

    fn node_versions(&self) -> Vec<Option<String>> {
        let mut nodes = self.fake.list::<NexusNode>();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        nodes
            .into_iter()
            .map(|n| n.spec.routing.map(|r| r.version))
            .collect()
    }

    async fn stop(self) {
        for s in self.stop {
            let _ = s.send(());
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[sqlx::test(migrations = false)]
async fn endpoints_are_admitted_served_programmed_and_withdrawn_when_revoked_or_gone(pool: PgPool) {
    let (ca, issuer) = real_ca::start(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApiServer::new();
    let a = issue(&fake, &issuer, "coder-a").await;
    let b = issue(&fake, &issuer, "coder-b").await;
    let c = issue(&fake, &issuer, "coder-c").await;
    fake.apply_value(domain(&[
        ("coder-a", "127.0.0.1:7401", "coder-a"),
        ("coder-b", "127.0.0.1:7402", "coder-b"),
        ("coder-c", "127.0.0.1:7403", "coder-c"),
        ("coder-d", "127.0.0.1:7404", "coder-d"),
    ]));
    let mut w = World::start(fake, &ca, &a.ca_pem, dir.path(), 2, &[0, 1]).await;

    let st = w
        .until("Ready on every node", |s| {
            ready(s) == Some(("True", "Programmed"))
        })
        .await;
    assert_eq!(names(&st.admitted), ["coder-a", "coder-b", "coder-c"]);
    assert_eq!(st.rejected.len(), 1, "{st:#?}");
    assert_eq!(st.rejected[0].name, "coder-d");
    assert_eq!(st.rejected[0].reason, "IdentityNotReady");
    assert_eq!(
        st.admitted[0].certificate_fingerprint.as_deref(),
        Some(a.fingerprint.as_str())
    );
    assert_eq!(st.nodes_programmed, 2);
    assert_eq!(cond(&st, "Degraded"), Some(("True", "EndpointsRejected")));
    let v1 = st.routing_table_version.clone().unwrap();
    // Every node was told the version, and runs it.
    assert_eq!(w.node_versions(), [Some(v1.clone()), Some(v1.clone())]);
    for url in w.p4.iter().flatten() {
        assert_eq!(programmed(url).await.as_deref(), Some(v1.as_str()));
    }
    // Node 0's dataplane restarts: no pipeline, empty tables (here: another controller loads
    // a fresh pipeline, which clears them). Its agent notices the pipeline it loaded is gone
    // and programs the same version again — the spec did not change.
    {
        let url = w.p4[0].clone().unwrap();
        let mut c = nexus_p4::client::Controller::connect(url.clone(), 1, 99)
            .await
            .unwrap();
        c.set_pipeline(nexus_p4::p4info::nexroute_p4info().unwrap(), 7)
            .await
            .unwrap();
        assert_eq!(
            c.programmed_version().await.unwrap(),
            None,
            "no tables left"
        );
        drop(c);
        // Read with election id 0, below the agent's: never in its way.
        let mut again = None;
        for _ in 0..100 {
            let mut r = nexus_p4::client::Controller::connect(url.clone(), 1, 0)
                .await
                .unwrap();
            again = r.programmed_version().await.unwrap();
            if again.is_some() {
                break;
            }
            drop(r);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(again.as_deref(), Some(v1.as_str()), "programmed again");
    }
    for n in w.fake.list::<NexusNode>() {
        let r = n.status.unwrap().routing.unwrap();
        assert_eq!(r.programmed_version.as_deref(), Some(v1.as_str()));
    }
    // The controller serves the tables, in the fleet protocol's message; 404 for others.
    let r = reqwest::get(format!("{}/v1/routing/{v1}", w.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tables = pb::RoutingTables::decode(r.bytes().await.unwrap()).unwrap();
    assert_eq!(tables.version, v1);
    assert_eq!(tables.fabric, FABRIC);
    assert!(!tables.entities.is_empty());
    let r = reqwest::get(format!("{}/v1/routing/no-such-version", w.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The routing controller's writes carry its field manager, and the spec's other fields
    // (the rollout's) are untouched.
    let routing_writes: Vec<_> = w
        .fake
        .writes()
        .into_iter()
        .filter(|x| x.manager == MANAGER)
        .collect();
    assert!(
        routing_writes
            .iter()
            .any(|x| x.path.contains("/routingdomains/code/status")),
        "{routing_writes:?}"
    );
    for n in w.fake.list::<NexusNode>() {
        assert_eq!(n.spec.fabric, FABRIC);
    }

    // Nothing changed: a pass writes nothing.
    w.fake.clear_log();
    let out = w.pass().await;
    assert_eq!(out.writes, 0, "{out:?}");
    let again: Vec<_> = w
        .fake
        .writes()
        .into_iter()
        .filter(|x| x.manager == MANAGER)
        .collect();
    assert!(again.is_empty(), "{again:?}");

    // A deleted Secret withdraws its endpoint in the very next pass (once the controller's
    // Secret watch has delivered the deletion to its store).
    w.fake.delete("Secret", Some(NS), "coder-c-mic").unwrap();
    let gone = ObjectRef::new("coder-c-mic").within(NS);
    for _ in 0..600 {
        if w.routing.stores().secrets.get(&gone).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(w.routing.stores().secrets.get(&gone).is_none());
    let out = w.pass().await;
    let st = w.status().unwrap();
    assert_eq!(names(&st.admitted), ["coder-a", "coder-b"], "{st:#?}");
    let v2 = st.routing_table_version.clone().unwrap();
    assert_ne!(v2, v1);
    // The controller's metrics say the same as the status.
    let key = format!("{NS}/code");
    assert_eq!(w.metrics.endpoint_count(&key, "admitted"), 2);
    assert_eq!(
        w.metrics.endpoint_count(&key, "rejected"),
        i64::try_from(st.rejected.len()).unwrap()
    );
    assert!(w.metrics.writes.get() > 0);
    assert_eq!(out.versions.get(FABRIC), Some(&v2));
    assert_eq!(w.node_versions(), [Some(v2.clone()), Some(v2.clone())]);
    let st = w
        .until("v2 programmed", |s| {
            ready(s) == Some(("True", "Programmed"))
        })
        .await;
    assert_eq!(st.routing_table_version.as_deref(), Some(v2.as_str()));
    for url in w.p4.iter().flatten() {
        assert_eq!(programmed(url).await.as_deref(), Some(v2.as_str()));
    }
    // Only the version in use is kept.
    let r = reqwest::get(format!("{}/v1/routing/{v1}", w.http))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Revoke coder-b at the CA: the first pass after the CRL lists it withdraws it.
    issuer
        .revoke("acme", &b.serial, RevokeReason::CessationOfOperation)
        .await
        .unwrap();
    let st = w
        .until("coder-b withdrawn and programmed", |s| {
            names(&s.admitted) == ["coder-a"] && ready(s) == Some(("True", "Programmed"))
        })
        .await;
    let revoked = st.rejected.iter().find(|r| r.name == "coder-b").unwrap();
    assert_eq!(revoked.reason, "Revoked", "{revoked:?}");
    let v3 = st.routing_table_version.unwrap();
    assert_ne!(v3, v2);
    assert_eq!(w.metrics.endpoint_count(&key, "admitted"), 1);
    assert_eq!(w.metrics.tables_kept.get(), 1);
    for url in w.p4.iter().flatten() {
        assert_eq!(programmed(url).await.as_deref(), Some(v3.as_str()));
    }
    drop(c);
    w.stop().await;
    ca.shutdown().await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_node_that_refuses_the_table_degrades_the_domain_and_keeps_its_old_one(pool: PgPool) {
    let (ca, issuer) = real_ca::start(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApiServer::new();
    let a = issue(&fake, &issuer, "coder-a").await;
    fake.apply_value(domain(&[("coder-a", "127.0.0.1:7401", "coder-a")]));
    // Node 1's agent has no dataplane to program.
    let mut w = World::start(fake, &ca, &a.ca_pem, dir.path(), 2, &[0]).await;
    let st = w
        .until("the refusal reported", |s| {
            ready(s) == Some(("False", "TableRefused")) && s.nodes_programmed == 1
        })
        .await;
    let (_, reason) = cond(&st, "Degraded").unwrap();
    assert_eq!(reason, "TableRefused", "{st:#?}");
    let msg = ready_message(&st);
    assert!(
        msg.contains(&support::node_name(1)) && msg.contains("P4Runtime"),
        "{msg}"
    );
    let v = st.routing_table_version.unwrap();
    assert_eq!(
        programmed(w.p4[0].as_deref().unwrap()).await.as_deref(),
        Some(v.as_str())
    );
    let refusing = w
        .fake
        .get::<NexusNode>(None, &support::node_name(1))
        .unwrap()
        .status
        .unwrap()
        .routing
        .unwrap();
    assert_eq!(refusing.refused_version.as_deref(), Some(v.as_str()));
    assert_eq!(refusing.programmed_version, None);
    w.stop().await;
    ca.shutdown().await.unwrap();
}

/// The rollout and the routing controller write the same NexusNode spec under their own field
/// managers: neither removes nor reverts the other's fields, and a rollout holding a stale
/// `spec.routing` in its store does not write it back.
#[tokio::test]
async fn the_rollout_and_the_routing_controller_share_the_node_spec() {
    let fake = FakeApiServer::new();
    fake.apply_value(json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "NexusNode",
        "metadata": { "name": "n1" },
        "spec": { "fabric": FABRIC },
    }));
    fake.apply_value(domain(&[("coder-a", "127.0.0.1:7401", "coder-a")]));
    // No trust anchors: nothing is admitted, and the node is told the (empty) table.
    let mut routing = KubeRouting::new(
        fake.client(),
        TrustArgs::default(),
        Arc::new(AtomicBool::new(true)),
    )
    .unwrap();
    let out = routing.pass(chrono::Utc::now()).await.unwrap();
    let version = out.versions.get(FABRIC).cloned().unwrap();
    let node = || fake.get::<NexusNode>(None, "n1").unwrap();
    assert_eq!(node().spec.routing.unwrap().version, version);
    let st = fake
        .get::<RoutingDomain>(Some(NS), "code")
        .unwrap()
        .status
        .unwrap();
    assert_eq!(ready(&st), Some(("False", "NoTrustAnchors")));

    // The rollout writes its half from a store that holds a stale routing version.
    let mut spec = node().spec;
    spec.maintenance = true;
    spec.desired_version = 3;
    spec.routing = Some(nexus_crds::node::NodeRoutingSpec {
        version: "stale".into(),
    });
    nexus_controller::rollout::apply::apply_node_spec(&fake.client(), "n1", &spec, None)
        .await
        .unwrap();
    let n = node();
    assert!(n.spec.maintenance);
    assert_eq!(n.spec.desired_version, 3);
    assert_eq!(n.spec.routing.unwrap().version, version, "not reverted");
    // And the routing controller's next pass leaves the rollout's fields alone (nothing to do).
    let out = routing.pass(chrono::Utc::now()).await.unwrap();
    assert_eq!(out.writes, 0, "{out:?}");
    assert!(node().spec.maintenance);
    // Nor does the rollout's next write remove spec.routing.
    spec.maintenance = false;
    spec.routing = None;
    nexus_controller::rollout::apply::apply_node_spec(&fake.client(), "n1", &spec, None)
        .await
        .unwrap();
    assert_eq!(node().spec.routing.unwrap().version, version);
    assert!(!node().spec.maintenance);
}

/// Passes read the watches' stores, not the API: once the stores have listed, a pass that has
/// nothing to write makes no request at all, however many endpoints the domains name (the
/// driver used to list every kind and get each endpoint's Secret on every pass).
#[tokio::test]
async fn passes_read_the_stores_and_make_no_requests_whatever_the_endpoints() {
    const PASSES: usize = 5;
    let mut reads_per_size = Vec::new();
    for endpoints in [1_usize, 12] {
        let fake = FakeApiServer::new();
        fake.apply_value(json!({
            "apiVersion": "nexus.dev/v1alpha1",
            "kind": "NexusNode",
            "metadata": { "name": "n1" },
            "spec": { "fabric": FABRIC },
        }));
        let names: Vec<String> = (0..endpoints).map(|i| format!("coder-{i}")).collect();
        for n in &names {
            let mi = real_ca::model_identity(n);
            fake.apply(&mi);
            let data = [(
                "tls.crt".to_owned(),
                k8s_openapi::ByteString(b"not a certificate".to_vec()),
            )]
            .into();
            fake.apply(&mic_secret(&mi.spec.secret_name, data));
        }
        let eps: Vec<(&str, String, &str)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), format!("127.0.0.1:{}", 7400 + i), n.as_str()))
            .collect();
        let eps: Vec<(&str, &str, &str)> =
            eps.iter().map(|(a, b, c)| (*a, b.as_str(), *c)).collect();
        fake.apply_value(domain(&eps));
        let mut routing = KubeRouting::new(
            fake.client(),
            TrustArgs::default(),
            Arc::new(AtomicBool::new(true)),
        )
        .unwrap();
        // The first pass waits for the watches' lists and writes the node's version and the
        // domain's status.
        let first = routing.pass(chrono::Utc::now()).await.unwrap();
        assert!(first.writes > 0, "{first:?}");
        assert_eq!(routing.stores().secrets.len(), endpoints);
        assert_eq!(routing.stores().identities.len(), endpoints);
        fake.clear_log();
        for _ in 0..PASSES {
            let out = routing.pass(chrono::Utc::now()).await.unwrap();
            assert_eq!(out.writes, 0, "{out:?}");
        }
        // Watches (re)opened in between are not per pass; everything else is.
        let requests: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|(_, path, _)| !path.contains("watch=true") && !path.contains("watch=1"))
            .collect();
        reads_per_size.push((endpoints, requests.len()));
        assert!(
            requests.is_empty(),
            "{PASSES} passes over {endpoints} endpoints made requests: {requests:?}"
        );
    }
    assert_eq!(reads_per_size, [(1, 0), (12, 0)]);
}

/// Under `run`, a Secret deleted or renewed withdraws or re-admits its endpoint through the
/// Secret watch, without the periodic pass (an hour here); and the controller's own writes
/// coming back do not keep it passing.
#[sqlx::test(migrations = false)]
async fn a_secret_change_makes_a_pass_without_waiting_for_the_timer(pool: PgPool) {
    let (ca, issuer) = real_ca::start(&pool).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeApiServer::new();
    let a = issue(&fake, &issuer, "coder-a").await;
    let b = issue(&fake, &issuer, "coder-b").await;
    fake.apply_value(json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "NexusNode",
        "metadata": { "name": "n1" },
        "spec": { "fabric": FABRIC },
    }));
    fake.apply_value(domain(&[
        ("coder-a", "127.0.0.1:7401", "coder-a"),
        ("coder-b", "127.0.0.1:7402", "coder-b"),
    ]));
    let anchors = dir.path().join("anchors.pem");
    std::fs::write(&anchors, &a.ca_pem).unwrap();
    let trust = TrustArgs {
        trust_anchors: Some(anchors),
        ca_url: Some(format!("http://{}", ca.http_addr)),
        ca_tls_ca: None,
    };
    let metrics = Arc::new(RoutingMetrics::new(&mut Registry::default()));
    let routing = KubeRouting::new(fake.client(), trust, Arc::new(AtomicBool::new(true)))
        .unwrap()
        .with_metrics(Arc::clone(&metrics))
        .with_interval(Duration::from_secs(3600));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(routing.run(async move {
        let _ = stopped.await;
    }));

    let st = wait_status(&fake, "both admitted", |s| {
        names(&s.admitted) == ["coder-a", "coder-b"]
    })
    .await;
    let fingerprint_b = |s: &RoutingDomainStatus| {
        s.admitted
            .iter()
            .find(|e| e.name == "coder-b")
            .and_then(|e| e.certificate_fingerprint.clone())
    };
    assert_eq!(fingerprint_b(&st).as_deref(), Some(b.fingerprint.as_str()));
    let v1 = st.routing_table_version.clone().unwrap();

    // Deleted: withdrawn by the pass the deletion triggers.
    fake.delete("Secret", Some(NS), "coder-b-mic").unwrap();
    let st = wait_status(&fake, "coder-b withdrawn", |s| {
        names(&s.admitted) == ["coder-a"]
    })
    .await;
    let gone = st.rejected.iter().find(|r| r.name == "coder-b").unwrap();
    assert_eq!(gone.reason, "IdentityNotReady", "{gone:?}");
    let v2 = st.routing_table_version.clone().unwrap();
    assert_ne!(v2, v1);

    // Renewed (a new MIC in the Secret): re-admitted with the new certificate.
    let renewed = issue_as(
        &fake,
        &issuer,
        "coder-b",
        "routing-kube-test:coder-b:renewed",
    )
    .await;
    assert_ne!(renewed.fingerprint, b.fingerprint);
    let st = wait_status(&fake, "coder-b re-admitted with its new MIC", |s| {
        fingerprint_b(s).as_deref() == Some(renewed.fingerprint.as_str())
    })
    .await;
    assert_eq!(names(&st.admitted), ["coder-a", "coder-b"]);
    let node = fake.get::<NexusNode>(None, "n1").unwrap();
    assert_eq!(
        node.spec.routing.map(|r| r.version),
        st.routing_table_version
    );

    // Settled: the controller's own writes coming back make no further passes (at most the
    // one already triggered).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = metrics.pass_count("ok");
    fake.clear_log();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        metrics.pass_count("ok") <= settled + 1,
        "passes went on at idle: {settled} → {}",
        metrics.pass_count("ok")
    );
    let writes: Vec<_> = fake
        .writes()
        .into_iter()
        .filter(|x| x.manager == MANAGER)
        .collect();
    assert!(writes.is_empty(), "{writes:?}");

    let _ = stop.send(());
    task.await.unwrap();
    ca.shutdown().await.unwrap();
}
