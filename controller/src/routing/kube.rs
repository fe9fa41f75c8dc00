//! Kube mode of the RoutingDomain controller (`nexus-controller rollout`): RoutingDomains in every
//! namespace, each endpoint's MIC from its ModelIdentity's Secret in the domain's namespace
//! (`spec.secretName`, the layout the ModelIdentity controller writes: `tls.crt` chain leaf
//! first, `ca.crt`, optional `proofs.json`), the Fabric's nodes from NexusNode `spec.fabric`.
//!
//! The controller reads nothing from the API server in a pass: four watches feed reflector
//! stores ([`Stores`]) — RoutingDomains, NexusNodes and ModelIdentities in every namespace, and
//! the Secrets the ModelIdentity controller writes (label
//! `app.kubernetes.io/managed-by=nexus-controller`; kept without their private keys, only
//! `tls.crt` and `proofs.json`). A pass runs when a watched object changes in a way that matters
//! to it (a burst of changes makes one pass, [`DEBOUNCE`] after the first), and at least every
//! [`PASS_INTERVAL`] (sooner when an admitted MIC expires; the CA's CRL is not an API object, so
//! revocations are found this way too). Each pass admits, plans with [`plan_fabric`] and:
//! - keeps the compiled tables by version in memory, served at `GET /v1/routing/{version}` as
//!   the fleet protocol's `RoutingTables` message ([`router`]);
//! - tells each node of the Fabric which version to run in `NexusNode.spec.routing` (server-side
//!   apply of that field alone, field manager [`MANAGER`]; the rollout never applies it);
//! - writes each RoutingDomain's status through the status subresource.
//!
//! Both writes happen only when the value differs from what the API holds (as the stores show
//! it, or as this controller last wrote it while the stores have not seen the write yet), so the
//! controller's own writes coming back do not make it write again; and a status write coming
//! back does not even trigger a pass (only a RoutingDomain's spec counts). Every replica
//! compiles (the tables are a pure function of what it reads, so any replica can serve a version
//! the nodes were told); only the Lease holder writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use nexus_crds::node::NodeRoutingSpec;
use nexus_crds::routing::{RoutingDomain, RoutingDomainStatus};
use nexus_crds::{ModelIdentity, NexusNode};
use nexus_fleet_api::v1 as pb;
use nexus_p4::p4info::{Schema, nexroute_p4info};
use prost::Message;
use tokio::sync::{RwLock, watch};
use tracing::{info, instrument, warn};

use super::core::{Domain, NodeRouting, plan_fabric};
use super::evidence::{Admitter, CaFeed, Loaded, TrustArgs, to_pb};
use crate::Error;
use crate::metrics::RoutingMetrics;
use crate::rollout::apply::apply_body;

/// Field manager of the RoutingDomain controller's writes (NexusNode `spec.routing`,
/// RoutingDomain status).
pub const MANAGER: &str = "nexus-routing-controller";

/// How often a pass runs when nothing is due sooner and nothing changed.
pub const PASS_INTERVAL: Duration = Duration::from_secs(5);

/// How long after the first change a pass waits, so that a burst of changes makes one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How long a pass waits for the watches' first lists before it gives up (and reads nothing:
/// a pass on empty stores would tell every node the empty table).
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The Secret layout's keys a pass reads; the rest (the private key) is not kept.
const EVIDENCE_KEYS: [&str; 2] = ["tls.crt", "proofs.json"];

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

/// The reflector stores a pass reads (kept by the watches [`KubeRouting`] starts).
#[derive(Clone)]
pub struct Stores {
    /// RoutingDomains, every namespace.
    pub domains: Store<RoutingDomain>,
    /// NexusNodes.
    pub nodes: Store<NexusNode>,
    /// ModelIdentities, every namespace.
    pub identities: Store<ModelIdentity>,
    /// The ModelIdentity controller's Secrets, every namespace: `tls.crt` and `proofs.json` only.
    pub secrets: Store<Secret>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("domains", &self.domains.len())
            .field("nodes", &self.nodes.len())
            .field("identities", &self.identities.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

/// The stores' writers, until the watches start.
struct Writers {
    domains: reflector::store::Writer<RoutingDomain>,
    nodes: reflector::store::Writer<NexusNode>,
    identities: reflector::store::Writer<ModelIdentity>,
    secrets: reflector::store::Writer<Secret>,
}

/// The watch tasks; stopped when the controller is dropped.
#[derive(Default)]
struct Watches(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A value this controller wrote that its stores may not have seen yet: the object's
/// `resourceVersion` when the pass read it, and what was written. While the store still holds
/// that `resourceVersion`, the written value is what the API holds.
#[derive(Debug, Clone)]
struct Pending<T> {
    read_at: Option<String>,
    value: T,
}

impl<T> Pending<T> {
    /// The written value, if the store has not seen anything newer than what the pass read.
    fn current(&self, meta: &kube::api::ObjectMeta) -> Option<&T> {
        (self.read_at == meta.resource_version).then_some(&self.value)
    }
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
    interval: Duration,
    stores: Stores,
    writers: Option<Writers>,
    watches: Watches,
    /// Bumped by the watches on every change that matters to a pass.
    changed: watch::Sender<u64>,
    /// Domain statuses written, by `namespace/name`.
    pending_status: BTreeMap<String, Pending<RoutingDomainStatus>>,
    /// `spec.routing.version` written, by node.
    pending_routing: BTreeMap<String, Pending<String>>,
}

impl std::fmt::Debug for KubeRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRouting")
            .field("trust", &self.trust)
            .field("feed", &self.feed)
            .field("stores", &self.stores)
            .finish_non_exhaustive()
    }
}

/// `namespace/name` of an object.
fn key_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A digest of the parts of an object a pass depends on.
fn digest(parts: &impl serde::Serialize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(parts).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// A RoutingDomain matters by its spec; its status is this controller's own write.
fn domain_digest(d: &RoutingDomain) -> u64 {
    digest(&(&d.metadata.uid, &d.spec))
}

/// A NexusNode matters by its Fabric, the version it is told and what it reports running.
fn node_digest(n: &NexusNode) -> u64 {
    let reported = n.status.as_ref().and_then(|s| s.routing.as_ref());
    digest(&(&n.metadata.uid, &n.spec.fabric, &n.spec.routing, reported))
}

/// A ModelIdentity matters by the Secret it names.
fn identity_digest(mi: &ModelIdentity) -> u64 {
    digest(&(&mi.metadata.uid, &mi.spec.secret_name))
}

/// A Secret matters by its (kept) evidence.
fn secret_digest(s: &Secret) -> u64 {
    digest(&(&s.metadata.uid, &s.data))
}

/// Keeps only the evidence of a Secret (not its private key).
fn strip_secret(s: &mut Secret) {
    if let Some(data) = s.data.as_mut() {
        data.retain(|k, _| EVIDENCE_KEYS.contains(&k.as_str()));
    }
    s.string_data = None;
}

/// Runs one watch into its store, bumping `changed` when an object changes in a way `relevant`
/// sees (and when a relist finds something different from what the store held).
fn spawn_watch<K, S>(
    kind: &'static str,
    events: S,
    writer: reflector::store::Writer<K>,
    relevant: fn(&K) -> u64,
    changed: watch::Sender<u64>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let key = |o: &K| key_of(&o.namespace().unwrap_or_default(), &o.name_any());
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut relist: Option<HashMap<String, u64>> = None;
        let stream = events
            .modify(|o: &mut K| o.meta_mut().managed_fields = None)
            .default_backoff()
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let bump = match event {
                Ok(watcher::Event::Apply(o)) => {
                    let d = relevant(&o);
                    seen.insert(key(&o), d) != Some(d)
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&key(&o));
                    true
                }
                Ok(watcher::Event::Init) => {
                    relist = Some(HashMap::new());
                    false
                }
                Ok(watcher::Event::InitApply(o)) => {
                    relist.get_or_insert_default().insert(key(&o), relevant(&o));
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    let fresh = relist.take().unwrap_or_default();
                    let differs = fresh != seen;
                    seen = fresh;
                    differs
                }
                Err(e) => {
                    warn!(kind, error = %e, "routing watch failed; retrying with back-off");
                    false
                }
            };
            if bump {
                changed.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        warn!(kind, "routing watch ended");
    })
}

impl KubeRouting {
    /// A controller acting (writing) while `leader` is true. The watches start with the first
    /// pass (or [`run`](Self::run)).
    pub fn new(
        client: kube::Client,
        trust: TrustArgs,
        leader: Arc<AtomicBool>,
    ) -> Result<Self, Error> {
        let schema = nexroute_p4info()
            .and_then(Schema::new)
            .map_err(|e| Error::field("p4info", e.to_string()))?;
        let (domains, domains_w) = reflector::store();
        let (nodes, nodes_w) = reflector::store();
        let (identities, identities_w) = reflector::store();
        let (secrets, secrets_w) = reflector::store();
        Ok(Self {
            client,
            feed: CaFeed::new(&trust),
            trust,
            schema,
            tables: Tables::default(),
            leader,
            metrics: Arc::new(RoutingMetrics::unregistered()),
            interval: PASS_INTERVAL,
            stores: Stores {
                domains,
                nodes,
                identities,
                secrets,
            },
            writers: Some(Writers {
                domains: domains_w,
                nodes: nodes_w,
                identities: identities_w,
                secrets: secrets_w,
            }),
            watches: Watches::default(),
            changed: watch::channel(0).0,
            pending_status: BTreeMap::new(),
            pending_routing: BTreeMap::new(),
        })
    }

    /// Counts into `metrics` (registered on the controller's `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<RoutingMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Passes at least every `interval` when nothing changes (default [`PASS_INTERVAL`]).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The tables this controller compiled, for [`router`].
    pub fn tables(&self) -> Tables {
        self.tables.clone()
    }

    /// The stores passes read (empty until the watches start and list).
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    fn leading(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Starts the watches, once.
    fn start_watches(&mut self) {
        let Some(w) = self.writers.take() else {
            return;
        };
        let config = || watcher::Config::default().any_semantic();
        let secrets = config().labels(&format!(
            "app.kubernetes.io/managed-by={}",
            crate::identity::reconcile::MANAGER
        ));
        let c = &self.client;
        self.watches.0 = vec![
            spawn_watch(
                "RoutingDomain",
                watcher(Api::<RoutingDomain>::all(c.clone()), config()),
                w.domains,
                domain_digest,
                self.changed.clone(),
            ),
            spawn_watch(
                "NexusNode",
                watcher(Api::<NexusNode>::all(c.clone()), config()),
                w.nodes,
                node_digest,
                self.changed.clone(),
            ),
            spawn_watch(
                "ModelIdentity",
                watcher(Api::<ModelIdentity>::all(c.clone()), config()),
                w.identities,
                identity_digest,
                self.changed.clone(),
            ),
            spawn_watch(
                "Secret",
                watcher(Api::<Secret>::all(c.clone()), secrets).modify(strip_secret),
                w.secrets,
                secret_digest,
                self.changed.clone(),
            ),
        ];
    }

    /// Starts the watches if they have not started, and waits until each has listed once.
    pub async fn sync(&mut self) -> Result<(), Error> {
        self.start_watches();
        let s = &self.stores;
        let ready = async {
            s.domains.wait_until_ready().await?;
            s.nodes.wait_until_ready().await?;
            s.identities.wait_until_ready().await?;
            s.secrets.wait_until_ready().await
        };
        match tokio::time::timeout(SYNC_TIMEOUT, ready).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::field("routing watches", e.to_string())),
            Err(_) => Err(Error::field(
                "routing watches",
                "no first list of RoutingDomains, NexusNodes, ModelIdentities and Secrets yet",
            )),
        }
    }

    /// Each endpoint's evidence from the stores: by `namespace/identity`.
    fn evidence(&self, domains: &[Arc<RoutingDomain>]) -> BTreeMap<String, Loaded> {
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
        for (ns, name) in wanted {
            // No ModelIdentity, or no Secret yet: no evidence (the endpoint is not ready).
            let Some(mi) = self
                .stores
                .identities
                .get(&ObjectRef::new(&name).within(&ns))
            else {
                continue;
            };
            let Some(secret) = self
                .stores
                .secrets
                .get(&ObjectRef::new(&mi.spec.secret_name).within(&ns))
            else {
                continue;
            };
            let text = |k: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .and_then(|b| std::str::from_utf8(&b.0).ok())
            };
            let key = key_of(&ns, &name);
            let loaded = Loaded::parse(&key, text("tls.crt"), text("proofs.json"));
            out.insert(key, loaded);
        }
        out
    }

    /// One pass: read the stores (waiting for the watches' first lists), admit, plan, keep the
    /// tables, write what changed (when leading).
    #[instrument(skip_all)]
    pub async fn pass(&mut self, now: DateTime<Utc>) -> Result<PassOutcome, Error> {
        self.sync().await?;
        self.feed.refresh().await;
        let mut domains = self.stores.domains.state();
        domains.sort_by_key(|d| (d.namespace(), d.name_any()));
        let mut nodes = self.stores.nodes.state();
        nodes.sort_by_key(|n| n.name_any());
        let evidence = self.evidence(&domains);
        let admitter = Admitter::new(&self.trust, &self.feed, evidence.values());
        let system_now = SystemTime::from(now);

        // What this controller wrote and the stores have not seen yet counts as what the API
        // holds; once the stores move past it, they are the truth again.
        let mut pending_status = std::mem::take(&mut self.pending_status);
        let mut pending_routing = std::mem::take(&mut self.pending_routing);
        pending_status.retain(|k, p| {
            domains.iter().any(|d| {
                key_of(&d.namespace().unwrap_or_default(), &d.name_any()) == *k
                    && p.current(&d.metadata).is_some()
            })
        });
        pending_routing.retain(|k, p| {
            nodes
                .iter()
                .any(|n| n.name_any() == *k && p.current(&n.metadata).is_some())
        });
        let status_of = |d: &RoutingDomain| -> Option<RoutingDomainStatus> {
            let k = key_of(
                d.metadata.namespace.as_deref()?,
                d.metadata.name.as_deref()?,
            );
            match pending_status.get(&k).and_then(|p| p.current(&d.metadata)) {
                Some(st) => Some(st.clone()),
                None => d.status.clone(),
            }
        };
        let routing_of = |n: &NexusNode| -> Option<String> {
            let name = n.metadata.name.as_deref()?;
            match pending_routing
                .get(name)
                .and_then(|p| p.current(&n.metadata))
            {
                Some(v) => Some(v.clone()),
                None => n.spec.routing.as_ref().map(|r| r.version.clone()),
            }
        };
        let node_versions: BTreeMap<String, Option<String>> = nodes
            .iter()
            .map(|n| (n.name_any(), routing_of(n)))
            .collect();
        let domain_statuses: BTreeMap<String, Option<RoutingDomainStatus>> = domains
            .iter()
            .map(|d| {
                (
                    key_of(&d.namespace().unwrap_or_default(), &d.name_any()),
                    status_of(d),
                )
            })
            .collect();

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
            let told = node_versions
                .get(&n.name_any())
                .is_some_and(Option::is_some);
            if told || fabrics.contains_key(n.spec.fabric.as_str()) {
                fabrics.entry(n.spec.fabric.as_str()).or_default().1.push(n);
            }
        }

        let mut out = PassOutcome::default();
        let mut first_error: Option<Error> = None;
        let mut keep: BTreeSet<String> = node_versions.values().flatten().cloned().collect();
        let nodes_api: Api<NexusNode> = Api::all(self.client.clone());
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
                    let st = domain_statuses.get(&k)?.clone()?;
                    Some((k, st))
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
                    if node_versions.get(name).and_then(Option::as_deref) == Some(&t.version) {
                        continue;
                    }
                    match apply_node_routing(&nodes_api, name, &t.version).await {
                        Ok(()) => {
                            out.writes += 1;
                            self.metrics.writes.inc();
                            pending_routing.insert(
                                name.to_owned(),
                                Pending {
                                    read_at: n.metadata.resource_version.clone(),
                                    value: t.version.clone(),
                                },
                            );
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
                let key = key_of(ns, name);
                let Some(st) = plan.statuses.get(&key) else {
                    continue;
                };
                if domain_statuses.get(&key).and_then(Option::as_ref) == Some(st) {
                    continue;
                }
                let api: Api<RoutingDomain> = Api::namespaced(self.client.clone(), ns);
                match apply_domain_status(&api, name, st).await {
                    Ok(()) => {
                        out.writes += 1;
                        self.metrics.writes.inc();
                        pending_status.insert(
                            key,
                            Pending {
                                read_at: d.metadata.resource_version.clone(),
                                value: st.clone(),
                            },
                        );
                    }
                    Err(e) => {
                        warn!(domain = %key, error = %e, "writing status failed");
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        self.pending_status = pending_status;
        self.pending_routing = pending_routing;
        // Tables no node is told to run and no Fabric plans any more are dropped.
        let kept = {
            let mut tables = self.tables.0.write().await;
            tables.retain(|v, _| keep.contains(v));
            tables.len()
        };
        self.metrics
            .tables_kept
            .set(i64::try_from(kept).unwrap_or(i64::MAX));
        self.metrics
            .retain_domains(&domain_statuses.keys().cloned().collect());
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Runs passes until `shutdown`: one [`DEBOUNCE`] after a watched object changed, and at
    /// least every [`PASS_INTERVAL`] (or [`with_interval`](Self::with_interval)), sooner when an
    /// admitted MIC expires.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut changed = self.changed.subscribe();
        loop {
            // This pass reads every change reported so far; later ones make the next pass.
            changed.mark_unchanged();
            let now = Utc::now();
            let started = std::time::Instant::now();
            let result = tokio::select! {
                r = self.pass(now) => r,
                () = &mut shutdown => return,
            };
            self.metrics.observe_pass(started.elapsed(), result.is_ok());
            let interval = self.interval;
            let wait = match result {
                Ok(o) => o
                    .replan_at
                    .and_then(|at| (at - now).to_std().ok())
                    .map_or(interval, |d| {
                        d.clamp(Duration::from_millis(200).min(interval), interval)
                    }),
                Err(e) => {
                    warn!(error = %e, "routing pass failed");
                    interval.min(PASS_INTERVAL)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                r = changed.changed() => {
                    // The sender lives in `self`, so `changed` cannot close; if it did, wait
                    // for the timer alone.
                    let pause = if r.is_ok() { DEBOUNCE } else { wait };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = &mut shutdown => return,
                    }
                }
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
