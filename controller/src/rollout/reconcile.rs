//! The kube driver of the rollout core (`nexus-controller rollout`): a Fabric reconciler that
//! gathers [`core::Input`] from informer stores, calls [`core::step`] and writes what it returns,
//! acting only while this replica holds the coordination Lease ([`super::lease`]).
//!
//! One reconcile of a Fabric: the selected Nodes and their NexusNodes (from the reflector
//! stores — no list of the cluster per reconcile) → pods of the nodes in maintenance (a
//! field-selected list, only for those) → the bundle (through the cache: fetched once per
//! digest, failures retried with back-off) → `step` → NexusNode specs by server-side apply,
//! cordons, evictions (without kube's 429 retries), released NexusNodes, the status when it
//! changed, Events → a timed requeue. A failed write does not stop the others or the status;
//! the first error is returned afterwards for the back-off.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use nexus_artifact::{Fetcher, Lookup, Source};
use nexus_crds::Fabric;
use nexus_crds::node::NexusNode;
use tokio::sync::Mutex;
use tracing::{info, instrument, warn};

use super::apply;
use super::core::{self, Bundle, CORDONED_BY, KubeNode, Member};
use super::drain::{self, Evicted};
use super::lease::LeaseLock;
use super::metrics::{ActionLabels, FabricStateLabels, RolloutMetrics};
use super::view::selector_matches;
use crate::Error;

pub use super::core::{IDLE_INTERVAL, PROGRESS_INTERVAL};

/// Requeue while another replica leads.
pub const FOLLOWER_INTERVAL: Duration = Duration::from_secs(5);

/// Shared state of the Fabric reconciler.
pub struct Context {
    /// Kubernetes client (kube's default retries).
    pub client: kube::Client,
    /// Client for evictions, without retries: a PodDisruptionBudget's 429 is an answer.
    pub eviction_client: kube::Client,
    /// Publishes Events (one recorder: repeats fold into a series).
    pub recorder: Recorder,
    /// Namespace of ConfigMap bundle sources that name none (the controller's).
    pub namespace: String,
    /// A node whose agent has not reported for this long counts as unavailable.
    pub heartbeat_timeout: Duration,
    /// Set while this replica holds the Lease.
    pub leader: Arc<AtomicBool>,
    /// Fetched bundles and failed fetches, by source and digest.
    pub bundles: Mutex<nexus_artifact::Cache>,
    /// Reads bundle sources (URLs and ConfigMaps in any namespace).
    pub fetcher: Fetcher,
    /// Pods whose last eviction a PodDisruptionBudget refused (shown in status).
    pub blocked: Mutex<BTreeSet<String>>,
    /// Informer stores.
    pub stores: Stores,
    /// Clock, injectable for tests.
    pub now: fn() -> DateTime<Utc>,
    /// Metrics (`nexus_rollout_*`), when registered.
    pub metrics: Option<Arc<RolloutMetrics>>,
}

/// The reflector stores the reconciler reads instead of listing.
#[derive(Clone)]
pub struct Stores {
    /// Fabrics.
    pub fabrics: Store<Fabric>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// NexusNodes.
    pub nexus_nodes: Store<NexusNode>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context that is not leading yet.
    pub fn new(
        client: kube::Client,
        eviction_client: kube::Client,
        namespace: &str,
        stores: Stores,
    ) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), apply::MANAGER.into()),
            fetcher: Fetcher::new().with_kube(client.clone()),
            client,
            eviction_client,
            namespace: namespace.into(),
            heartbeat_timeout: super::view::DEFAULT_HEARTBEAT_TIMEOUT,
            leader: Arc::new(AtomicBool::new(false)),
            bundles: Mutex::new(nexus_artifact::Cache::new()),
            blocked: Mutex::new(BTreeSet::new()),
            stores,
            now: Utc::now,
            metrics: None,
        }
    }
}

/// Names of the Nodes a selector picks, sorted.
pub fn selected_nodes(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    nodes: &[Arc<Node>],
) -> Vec<String> {
    let empty = BTreeMap::new();
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| selector_matches(selector, n.metadata.labels.as_ref().unwrap_or(&empty)))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    out.sort();
    out
}

/// The bundle of a Fabric through the cache: fetched (and verified) at most once per digest;
/// a failure is kept, with its back-off, instead of fetching on every reconcile.
async fn bundle(ctx: &Context, fabric: &Fabric, now: DateTime<Utc>) -> Bundle {
    let fw = &fabric.spec.firmware;
    let src = match Source::from_crd(&fw.bundle, &ctx.namespace) {
        Ok(s) => s,
        Err(e) => {
            return Bundle::Failed {
                message: e.to_string(),
                retry_at: now + chrono::Duration::hours(1),
            };
        }
    };
    let claimed = {
        let mut cache = ctx.bundles.lock().await;
        match cache.lookup(&src, &fw.sha256, now) {
            Lookup::Verified(_) => return Bundle::Verified,
            Lookup::InFlight => return Bundle::Fetching,
            Lookup::Failed {
                error, retry_at, ..
            } => {
                return Bundle::Failed {
                    message: error.to_string(),
                    retry_at,
                };
            }
            Lookup::Fetch => true,
        }
    };
    debug_assert!(claimed);
    info!(source = %src, "fetching bundle");
    let result = ctx.fetcher.fetch_verified(&src, &fw.sha256).await;
    if let Err(e) = &result {
        warn!(source = %src, error = %e, "bundle fetch failed");
    }
    match ctx
        .bundles
        .lock()
        .await
        .record(&src, &fw.sha256, result, (ctx.now)())
    {
        Lookup::Verified(_) => Bundle::Verified,
        Lookup::Failed {
            error, retry_at, ..
        } => Bundle::Failed {
            message: error.to_string(),
            retry_at,
        },
        Lookup::InFlight | Lookup::Fetch => Bundle::Fetching,
    }
}

fn leading(ctx: &Context) -> bool {
    ctx.leader.load(Ordering::SeqCst)
}

/// Reconciles one Fabric.
#[instrument(skip_all, fields(fabric = fabric.metadata.name.as_deref().unwrap_or_default()))]
pub async fn reconcile(fabric: Arc<Fabric>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !leading(&ctx) {
        return Ok(Action::requeue(FOLLOWER_INTERVAL));
    }
    let started = std::time::Instant::now();
    let name = fabric.metadata.name.clone().ok_or(Error::MissingField {
        kind: "Fabric",
        field: "metadata.name",
    })?;
    let now = (ctx.now)();

    // Membership, from the stores.
    let selected = selected_nodes(&fabric.spec.node_selector, &ctx.stores.nodes.state());
    let nexus_nodes: BTreeMap<String, Arc<NexusNode>> = ctx
        .stores
        .nexus_nodes
        .state()
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, n)))
        .collect();
    let fabrics: BTreeMap<String, Arc<Fabric>> = ctx
        .stores
        .fabrics
        .state()
        .into_iter()
        .filter_map(|f| Some((f.metadata.name.clone()?, f)))
        .collect();
    let node_objs: BTreeMap<String, Arc<Node>> = ctx
        .stores
        .nodes
        .state()
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, n)))
        .collect();
    let mut member_names = Vec::new();
    let mut conflicting = Vec::new();
    for node in &selected {
        match nexus_nodes.get(node) {
            // Managed by another Fabric that still exists and still selects it: never steal.
            Some(n)
                if !n.spec.fabric.is_empty()
                    && n.spec.fabric != name
                    && fabrics.get(&n.spec.fabric).is_some_and(|other| {
                        selector_matches(
                            &other.spec.node_selector,
                            node_objs
                                .get(node)
                                .and_then(|o| o.metadata.labels.as_ref())
                                .unwrap_or(&BTreeMap::new()),
                        )
                    }) =>
            {
                conflicting.push(node.clone());
            }
            _ => member_names.push(node.clone()),
        }
    }
    let former: Vec<&NexusNode> = nexus_nodes
        .values()
        .filter(|n| n.spec.fabric == name)
        .filter(|n| {
            n.metadata
                .name
                .as_ref()
                .is_some_and(|x| !selected.contains(x))
        })
        .map(|n| n.as_ref())
        .collect();

    // Pods, only for nodes in maintenance.
    let blocked = ctx.blocked.lock().await.clone();
    let mut members = Vec::new();
    for m in &member_names {
        let nn = nexus_nodes.get(m).map(|n| n.as_ref());
        let k8s = node_objs.get(m);
        let maintenance = nn.is_some_and(|n| n.spec.maintenance);
        let pods = if maintenance {
            Some(drain::pods_to_drain(&ctx.client, m, &blocked).await?)
        } else {
            None
        };
        members.push(Member {
            name: m.clone(),
            nexus_node: nn,
            kube: Some(KubeNode {
                unschedulable: k8s
                    .and_then(|n| n.spec.as_ref())
                    .and_then(|s| s.unschedulable)
                    .unwrap_or(false),
                cordoned_by_us: k8s
                    .and_then(|n| n.metadata.annotations.as_ref())
                    .is_some_and(|a| a.contains_key(CORDONED_BY)),
                pods,
            }),
        });
    }

    let bundle = bundle(&ctx, &fabric, now).await;
    let input = core::Input {
        fabric: &fabric,
        members,
        former,
        conflicting,
        bundle,
        now,
        heartbeat_timeout: ctx.heartbeat_timeout,
        hold_starts: false,
        rollback_requested: false,
    };
    let step = core::step(&input)?;

    // Writes. The Lease is checked before each; a failed write does not stop the others.
    let mut first_error: Option<Error> = None;
    let mut keep = |r: Result<(), Error>| {
        if let Err(e) = r {
            warn!(error = %e, "write failed");
            if first_error.is_none() {
                first_error = Some(e);
            }
        }
    };
    let owner = apply::owner(&fabric);
    for (node, spec) in &step.node_specs {
        if !leading(&ctx) {
            warn!("lease lost; stopping");
            return Ok(Action::requeue(FOLLOWER_INTERVAL));
        }
        keep(apply::apply_node_spec(&ctx.client, node, spec, owner.as_ref()).await);
    }
    for (node, on) in &step.cordons {
        if !leading(&ctx) {
            return Ok(Action::requeue(FOLLOWER_INTERVAL));
        }
        keep(drain::cordon(&ctx.client, node, *on, &name, apply::MANAGER).await);
    }
    let mut refused = BTreeSet::new();
    for pod in &step.evictions {
        if !leading(&ctx) {
            return Ok(Action::requeue(FOLLOWER_INTERVAL));
        }
        match drain::evict(&ctx.eviction_client, pod).await {
            Ok(Evicted::Blocked) => {
                refused.insert(pod.key());
            }
            Ok(Evicted::Yes | Evicted::Gone) => {}
            Err(e) => keep(Err(e)),
        }
    }
    {
        let mut b = ctx.blocked.lock().await;
        for pod in &step.evictions {
            b.remove(&pod.key());
        }
        b.extend(refused);
    }
    for node in &step.release {
        keep(apply::release(&ctx.client, node).await);
    }
    if core::status_changed(fabric.status.as_ref(), &step.status) && leading(&ctx) {
        keep(apply::apply_fabric_status(&ctx.client, &name, &step.status).await);
    }
    for n in &step.notes {
        publish(&ctx, &fabric, n).await;
    }
    if let Some(m) = &ctx.metrics {
        record(m, &name, &step, started.elapsed());
    }
    info!(
        phase = ?step.status.phase,
        specs = step.node_specs.len(),
        cordons = step.cordons.len(),
        evictions = step.evictions.len(),
        "reconciled"
    );
    match first_error {
        Some(e) => Err(e),
        None => Ok(Action::requeue(step.requeue)),
    }
}

async fn publish(ctx: &Context, fabric: &Fabric, n: &core::Note) {
    let ev = Event {
        type_: if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: n.reason.clone(),
        note: Some(n.message.chars().take(1000).collect()),
        action: "Rollout".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &fabric.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

fn record(m: &RolloutMetrics, fabric: &str, step: &core::Step, took: Duration) {
    m.reconcile_duration.observe(took.as_secs_f64());
    for (action, n) in [
        ("spec", step.node_specs.len()),
        ("cordon", step.cordons.len()),
        ("evict", step.evictions.len()),
    ] {
        if n > 0 {
            m.actions
                .get_or_create(&ActionLabels {
                    action: action.into(),
                })
                .inc_by(n as u64);
        }
    }
    let c = &step.status.nodes;
    for (state, v) in [
        ("total", c.total),
        ("updated", c.updated),
        ("updating", c.updating),
        ("pending", c.pending),
        ("failed", c.failed),
        ("unavailable", c.unavailable),
        ("rolled_back", c.rolled_back),
        ("skipped", c.skipped),
    ] {
        m.fabric_nodes
            .get_or_create(&FabricStateLabels {
                fabric: fabric.into(),
                state: state.into(),
            })
            .set(i64::from(v));
    }
}

/// Back-off for failed reconciles.
pub fn error_policy(_fabric: Arc<Fabric>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %error, "fabric reconcile failed");
    if leading(&ctx) {
        Action::requeue(PROGRESS_INTERVAL)
    } else {
        Action::requeue(FOLLOWER_INTERVAL)
    }
}

/// One election round: acquires or renews the Lease and stores the outcome in `leader` (an
/// error or a lost race clears it at once, so the reconciler stops acting). Returns it.
pub async fn lease_step(lock: &LeaseLock, leader: &AtomicBool, now: DateTime<Utc>) -> bool {
    let was = leader.load(Ordering::SeqCst);
    let is = match lock.try_acquire_or_renew(now).await {
        Ok(held) => held,
        Err(e) => {
            warn!(error = %e, "lease renewal failed");
            false
        }
    };
    leader.store(is, Ordering::SeqCst);
    if is != was {
        info!(
            lease = %lock.name,
            identity = %lock.identity,
            leader = is,
            "leadership changed"
        );
    }
    is
}

/// Holds the Lease: an election round every third of its duration, forever.
pub async fn hold_lease(lock: LeaseLock, leader: Arc<AtomicBool>) {
    let period = (lock.duration / 3).max(Duration::from_secs(1));
    loop {
        lease_step(&lock, &leader, Utc::now()).await;
        tokio::time::sleep(period).await;
    }
}

/// The Fabric a NexusNode belongs to.
pub fn fabric_of(node: &NexusNode) -> Option<ObjectRef<Fabric>> {
    (!node.spec.fabric.is_empty()).then(|| ObjectRef::new(&node.spec.fabric))
}

/// What in a NexusNode is worth a Fabric reconcile: its spec and what its agent reports, but not
/// the heartbeat alone (every agent heartbeats every few seconds; a stale heartbeat is noticed
/// by the timed requeue instead).
pub fn nexus_node_changes(n: &NexusNode) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&n.spec)
        .unwrap_or_default()
        .hash(&mut h);
    if let Some(s) = &n.status {
        let mut s = s.clone();
        s.heartbeat = None;
        // Conditions carry transition times; what they say is reason and status.
        let conditions: Vec<(String, String, String)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        s.conditions.clear();
        serde_json::to_string(&s).unwrap_or_default().hash(&mut h);
        conditions.hash(&mut h);
    }
    Some(h.finish())
}

/// What in a Node is worth a Fabric reconcile: labels (selection) and the cordon.
pub fn node_changes(n: &Node) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.metadata.labels.hash(&mut h);
    n.spec.as_ref().and_then(|s| s.unschedulable).hash(&mut h);
    n.annotations().get(CORDONED_BY).hash(&mut h);
    Some(h.finish())
}

/// What in a Fabric is worth a reconcile: its spec (generation). Its status is ours.
pub fn fabric_changes(f: &Fabric) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    f.metadata.generation.hash(&mut h);
    f.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Runs the Fabric reconciler until `shutdown` resolves: Fabrics (by generation), NexusNodes
/// (by spec and reported state, not heartbeats) and Nodes (by labels and cordon) through
/// reflector stores that the reconciler reads. The Lease must be held separately
/// ([`hold_lease`] on `ctx.leader`).
pub async fn run(
    client: kube::Client,
    make_ctx: impl FnOnce(Stores) -> Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::StreamExt;
    use kube::Api;
    use kube::runtime::controller::Config as ControllerConfig;
    use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};

    let (fabric_reader, fabric_writer) = reflector::store::<Fabric>();
    let (node_reader, node_writer) = reflector::store::<Node>();
    let (nn_reader, nn_writer) = reflector::store::<NexusNode>();
    let fabric_stream = watcher(
        Api::<Fabric>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(fabric_writer)
    .applied_objects()
    .predicate_filter(fabric_changes, Default::default());
    let nn_stream = watcher(
        Api::<NexusNode>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(nn_writer)
    .applied_objects()
    .predicate_filter(nexus_node_changes, Default::default());
    let node_stream = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .applied_objects()
        .predicate_filter(node_changes, Default::default());
    let stores = Stores {
        fabrics: fabric_reader.clone(),
        nodes: node_reader,
        nexus_nodes: nn_reader,
    };
    let ctx = make_ctx(stores.clone());
    let fabrics_for_nodes = fabric_reader.clone();
    Controller::for_stream(fabric_stream, fabric_reader)
        .with_config(ControllerConfig::default().debounce(Duration::from_secs(1)))
        .watches_stream(nn_stream, |n| fabric_of(&n))
        .watches_stream(node_stream, move |node| {
            let labels = node.metadata.labels.clone().unwrap_or_default();
            fabrics_for_nodes
                .state()
                .into_iter()
                .filter(|f| selector_matches(&f.spec.node_selector, &labels))
                .map(|f| ObjectRef::from_obj(&*f))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "fabric reconcile error");
            }
        })
        .await;
}
