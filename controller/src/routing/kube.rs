//! Kube mode of the RoutingDomain controller (`nexus-controller rollout`): RoutingDomains in every
//! namespace, each endpoint's MIC from its ModelIdentity's Secret in the domain's namespace
//! (`spec.secretName`, the layout the ModelIdentity controller writes: `tls.crt` chain leaf
//! first, `ca.crt`, optional `proofs.json`), the Fabric's nodes from NexusNode `spec.fabric`.
//!
//! Each pass (every 5 s, sooner when an admitted MIC expires) admits, plans with
//! [`plan_fabric`] and:
//! - keeps the compiled tables by version in memory, served at `GET /v1/routing/{version}` as
//!   the fleet protocol's `RoutingTables` message ([`router`]);
//! - tells each node of the Fabric which version to run in `NexusNode.spec.routing` (server-side
//!   apply of that field alone, field manager [`MANAGER`]; the rollout never applies it);
//! - writes each RoutingDomain's status through the status subresource.
//!
//! Both writes happen only when the value differs from what the API holds, so the controller's
//! own writes coming back do not make it write again. Every replica compiles (the tables are a
//! pure function of what it reads, so any replica can serve a version the nodes were told);
//! only the Lease holder writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use nexus_crds::node::NodeRoutingSpec;
use nexus_crds::routing::{RoutingDomain, RoutingDomainStatus};
use nexus_crds::{ModelIdentity, NexusNode};
use nexus_fleet_api::v1 as pb;
use nexus_p4::p4info::{Schema, nexroute_p4info};
use prost::Message;
use tokio::sync::RwLock;
use tracing::{info, instrument, warn};

use super::core::{Domain, NodeRouting, plan_fabric};
use super::evidence::{Admitter, CaFeed, Loaded, TrustArgs, to_pb};
use crate::Error;
use crate::metrics::RoutingMetrics;
use crate::rollout::apply::apply_body;

/// Field manager of the RoutingDomain controller's writes (NexusNode `spec.routing`,
/// RoutingDomain status).
pub const MANAGER: &str = "nexus-routing-controller";

/// How often a pass runs when nothing is due sooner.
pub const PASS_INTERVAL: Duration = Duration::from_secs(5);

/// Compiled tables by version, shared with the HTTP endpoint.
#[derive(Debug, Clone, Default)]
pub struct Tables(Arc<RwLock<BTreeMap<String, Arc<pb::RoutingTables>>>>);

impl Tables {
    /// The tables of `version`, if this replica compiled them and still keeps them.
    pub async fn get(&self, version: &str) -> Option<Arc<pb::RoutingTables>> {
        self.0.read().await.get(version).cloned()
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Writes made (NexusNode specs and RoutingDomain statuses).
    pub writes: usize,
    /// The version each Fabric's nodes are told to run.
    pub versions: BTreeMap<String, String>,
    /// When to plan again at the latest.
    pub replan_at: Option<DateTime<Utc>>,
}

/// The kube-mode RoutingDomain controller.
pub struct KubeRouting {
    client: kube::Client,
    trust: TrustArgs,
    feed: CaFeed,
    schema: Schema,
    tables: Tables,
    leader: Arc<AtomicBool>,
    metrics: Arc<RoutingMetrics>,
}

impl std::fmt::Debug for KubeRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRouting")
            .field("trust", &self.trust)
            .field("feed", &self.feed)
            .finish_non_exhaustive()
    }
}

/// `namespace/name` of an object.
fn key_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl KubeRouting {
    /// A controller acting (writing) while `leader` is true.
    pub fn new(
        client: kube::Client,
        trust: TrustArgs,
        leader: Arc<AtomicBool>,
    ) -> Result<Self, Error> {
        let schema = nexroute_p4info()
            .and_then(Schema::new)
            .map_err(|e| Error::field("p4info", e.to_string()))?;
        Ok(Self {
            client,
            feed: CaFeed::new(&trust),
            trust,
            schema,
            tables: Tables::default(),
            leader,
            metrics: Arc::new(RoutingMetrics::unregistered()),
        })
    }

    /// Counts into `metrics` (registered on the controller's `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<RoutingMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The tables this controller compiled, for [`router`].
    pub fn tables(&self) -> Tables {
        self.tables.clone()
    }

    fn leading(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Reads each endpoint's Secret: by `namespace/identity`.
    async fn evidence(&self, domains: &[RoutingDomain]) -> Result<BTreeMap<String, Loaded>, Error> {
        let wanted: BTreeSet<(String, String)> = domains
            .iter()
            .flat_map(|d| {
                let ns = d.metadata.namespace.clone().unwrap_or_default();
                d.spec
                    .endpoints
                    .iter()
                    .map(move |ep| (ns.clone(), ep.model_identity_ref.name.clone()))
            })
            .collect();
        let mut out = BTreeMap::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        let identities: Api<ModelIdentity> = Api::all(self.client.clone());
        let secret_names: BTreeMap<String, String> = identities
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|mi| {
                let k = key_of(
                    mi.metadata.namespace.as_deref()?,
                    mi.metadata.name.as_deref()?,
                );
                Some((k, mi.spec.secret_name))
            })
            .collect();
        for (ns, name) in wanted {
            let key = key_of(&ns, &name);
            // No ModelIdentity, or no Secret yet: no evidence (the endpoint is not ready).
            let Some(secret_name) = secret_names.get(&key) else {
                continue;
            };
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let Some(secret) = secrets.get_opt(secret_name).await? else {
                continue;
            };
            let data = secret.data.unwrap_or_default();
            let text = |k: &str| {
                data.get(k)
                    .and_then(|b| std::str::from_utf8(&b.0).ok())
                    .map(str::to_owned)
            };
            let loaded = Loaded::parse(
                &key,
                text("tls.crt").as_deref(),
                text("proofs.json").as_deref(),
            );
            out.insert(key, loaded);
        }
        Ok(out)
    }

    /// One pass: read, admit, plan, keep the tables, write what changed (when leading).
    #[instrument(skip_all)]
    pub async fn pass(&mut self, now: DateTime<Utc>) -> Result<PassOutcome, Error> {
        self.feed.refresh().await;
        let domains_api: Api<RoutingDomain> = Api::all(self.client.clone());
        let nodes_api: Api<NexusNode> = Api::all(self.client.clone());
        let domains = domains_api.list(&ListParams::default()).await?.items;
        let nodes = nodes_api.list(&ListParams::default()).await?.items;
        let evidence = self.evidence(&domains).await?;
        let admitter = Admitter::new(&self.trust, &self.feed, evidence.values());
        let system_now = SystemTime::from(now);

        // Fabrics to plan: every one a domain names, and every one whose nodes were told a
        // version (its last domain went: the nodes get the empty table).
        let mut fabrics: BTreeMap<&str, (Vec<&RoutingDomain>, Vec<&NexusNode>)> = BTreeMap::new();
        for d in &domains {
            fabrics
                .entry(d.spec.fabric_ref.name.as_str())
                .or_default()
                .0
                .push(d);
        }
        for n in &nodes {
            if n.spec.routing.is_some() || fabrics.contains_key(n.spec.fabric.as_str()) {
                fabrics.entry(n.spec.fabric.as_str()).or_default().1.push(n);
            }
        }

        let mut out = PassOutcome::default();
        let mut first_error: Option<Error> = None;
        let mut keep: BTreeSet<String> = nodes
            .iter()
            .filter_map(|n| n.spec.routing.as_ref().map(|r| r.version.clone()))
            .collect();
        for (fabric, (fabric_domains, fabric_nodes)) in &fabrics {
            if fabric.is_empty() {
                continue;
            }
            let inputs: Vec<_> = fabric_domains
                .iter()
                .filter_map(|d| {
                    let ns = d.metadata.namespace.as_deref()?;
                    let name = d.metadata.name.as_deref()?;
                    let admission = admitter.admit(&d.spec, system_now, |identity| {
                        evidence.get(&key_of(ns, identity))
                    });
                    Some((
                        Domain {
                            namespace: ns,
                            name,
                            generation: d.metadata.generation,
                            spec: &d.spec,
                        },
                        admission,
                    ))
                })
                .collect();
            let previous: BTreeMap<String, RoutingDomainStatus> = fabric_domains
                .iter()
                .filter_map(|d| {
                    let k = key_of(
                        d.metadata.namespace.as_deref()?,
                        d.metadata.name.as_deref()?,
                    );
                    Some((k, d.status.clone()?))
                })
                .collect();
            let reports: Vec<NodeRouting> = fabric_nodes
                .iter()
                .filter_map(|n| {
                    let r = n.status.as_ref().and_then(|s| s.routing.as_ref());
                    Some(NodeRouting {
                        node: n.metadata.name.clone()?,
                        programmed: r.and_then(|r| r.programmed_version.clone()),
                        refused: r.and_then(|r| {
                            Some((
                                r.refused_version.clone()?,
                                r.refused_reason.clone().unwrap_or_default(),
                            ))
                        }),
                    })
                })
                .collect();
            let plan = plan_fabric(&self.schema, &inputs, &reports, &previous, now);
            for (domain, st) in &plan.statuses {
                self.metrics
                    .set_endpoints(domain, st.admitted_count, st.rejected_count);
            }
            if let Some(at) = plan.replan_at {
                out.replan_at = Some(out.replan_at.map_or(at, |r| r.min(at)));
            }
            if let Some(t) = &plan.tables {
                keep.insert(t.version.clone());
                out.versions.insert((*fabric).to_owned(), t.version.clone());
                let mut tables = self.tables.0.write().await;
                if !tables.contains_key(&t.version) {
                    info!(%fabric, version = %t.version, entities = t.entities.len(), "routing tables compiled");
                    tables.insert(t.version.clone(), Arc::new(to_pb(fabric, t)));
                }
            }
            if !self.leading() {
                continue;
            }
            // Nodes: the version to run, where it differs.
            if let Some(t) = &plan.tables {
                for n in fabric_nodes {
                    let Some(name) = n.metadata.name.as_deref() else {
                        continue;
                    };
                    if n.spec.routing.as_ref().map(|r| r.version.as_str()) == Some(&t.version) {
                        continue;
                    }
                    match apply_node_routing(&nodes_api, name, &t.version).await {
                        Ok(()) => {
                            out.writes += 1;
                            self.metrics.writes.inc();
                        }
                        Err(e) => {
                            warn!(node = name, error = %e, "writing spec.routing failed");
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            // Domains: their status, where it differs.
            for d in fabric_domains {
                let (Some(ns), Some(name)) =
                    (d.metadata.namespace.as_deref(), d.metadata.name.as_deref())
                else {
                    continue;
                };
                let Some(st) = plan.statuses.get(&key_of(ns, name)) else {
                    continue;
                };
                if d.status.as_ref() == Some(st) {
                    continue;
                }
                let api: Api<RoutingDomain> = Api::namespaced(self.client.clone(), ns);
                match apply_domain_status(&api, name, st).await {
                    Ok(()) => {
                        out.writes += 1;
                        self.metrics.writes.inc();
                    }
                    Err(e) => {
                        warn!(domain = %key_of(ns, name), error = %e, "writing status failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        // Tables no node is told to run and no Fabric plans any more are dropped.
        let kept = {
            let mut tables = self.tables.0.write().await;
            tables.retain(|v, _| keep.contains(v));
            tables.len()
        };
        self.metrics
            .tables_kept
            .set(i64::try_from(kept).unwrap_or(i64::MAX));
        self.metrics.retain_domains(
            &domains
                .iter()
                .filter_map(|d| {
                    Some(key_of(
                        d.metadata.namespace.as_deref()?,
                        d.metadata.name.as_deref()?,
                    ))
                })
                .collect(),
        );
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Runs passes until `shutdown`: every [`PASS_INTERVAL`], sooner when a MIC expires.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = Utc::now();
            let started = std::time::Instant::now();
            let result = self.pass(now).await;
            self.metrics.observe_pass(started.elapsed(), result.is_ok());
            let wait = match result {
                Ok(o) => o
                    .replan_at
                    .and_then(|at| (at - now).to_std().ok())
                    .map_or(PASS_INTERVAL, |d| {
                        d.clamp(Duration::from_millis(200), PASS_INTERVAL)
                    }),
                Err(e) => {
                    warn!(error = %e, "routing pass failed");
                    PASS_INTERVAL
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => return,
            }
        }
    }
}

/// Server-side applies `spec.routing` alone to NexusNode `name`.
async fn apply_node_routing(api: &Api<NexusNode>, name: &str, version: &str) -> Result<(), Error> {
    let routing = NodeRoutingSpec {
        version: version.to_owned(),
    };
    let body = apply_body::<NexusNode>(name, "spec", serde_json::json!({ "routing": routing }));
    let params = PatchParams::apply(MANAGER).force();
    api.patch(name, &params, &Patch::Apply(&body)).await?;
    Ok(())
}

/// Server-side applies a RoutingDomain's status.
async fn apply_domain_status(
    api: &Api<RoutingDomain>,
    name: &str,
    status: &RoutingDomainStatus,
) -> Result<(), Error> {
    let body = apply_body::<RoutingDomain>(name, "status", status);
    let params = PatchParams::apply(MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// `GET /v1/routing/{version}`: the compiled tables of that version as the fleet protocol's
/// `RoutingTables` message (protobuf, `application/x-protobuf`); 404 for a version this replica
/// does not hold.
pub fn router(tables: Tables) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    async fn get_tables(
        State(tables): State<Tables>,
        Path(version): Path<String>,
    ) -> axum::response::Response {
        match tables.get(&version).await {
            Some(t) => (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                t.encode_to_vec(),
            )
                .into_response(),
            None => (
                StatusCode::NOT_FOUND,
                "no routing tables of that version here\n",
            )
                .into_response(),
        }
    }

    axum::Router::new()
        .route("/v1/routing/{version}", axum::routing::get(get_tables))
        .with_state(tables)
}
