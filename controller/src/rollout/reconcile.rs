//! The kube mode of the rollout: a Fabric reconciler that drives [`plan`] through
//! [`apply`], acting only while this replica holds the coordination Lease
//! ([`super::lease`]).
//!
//! One reconcile of a Fabric: the selected Nodes (its `nodeSelector`) → one NexusNode each
//! (created with the controller's field manager when missing) → the bundle (fetched and verified
//! once per digest) → [`view::node_view`] → [`plan::plan`] → every action through
//! [`apply::apply_action`] (no Start before the bundle is Verified) → `Fabric.status` by
//! server-side apply on the status subresource → Events on transitions → a timed requeue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource};
use nexus_crds::Fabric;
use nexus_crds::common::ArtifactSource;
use nexus_crds::fabric::{BundleState, BundleStatus, FabricPhase};
use nexus_crds::node::{NexusNode, NexusNodeSpec};
use tokio::sync::Mutex;
use tracing::{info, instrument, warn};

use super::apply::{self, Applied, Drains};
use super::bundle;
use super::fleet::selector_matches;
use super::lease::LeaseLock;
use super::metrics::{ActionLabels, FabricStateLabels, RolloutMetrics};
use super::plan::{self, NodeAction, Plan};
use super::view;
use crate::Error;

/// Requeue while a rollout moves and the planner named no time.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);
/// Requeue of a settled Fabric (watches wake it sooner).
pub const IDLE_INTERVAL: Duration = Duration::from_secs(300);
/// Requeue while another replica leads.
pub const FOLLOWER_INTERVAL: Duration = Duration::from_secs(5);

/// Shared state of the Fabric reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Event reporter identity.
    pub reporter: Reporter,
    /// Namespace of ConfigMap bundle sources (the controller's).
    pub namespace: String,
    /// A node whose agent has not reported for this long counts as unavailable.
    pub heartbeat_timeout: Duration,
    /// Set while this replica holds the Lease.
    pub leader: Arc<AtomicBool>,
    /// Verified bundles by sha256.
    pub bundles: Mutex<BTreeMap<String, BundleStatus>>,
    /// Drains under way.
    pub drains: Mutex<Drains>,
    /// Clock, injectable for tests.
    pub now: fn() -> DateTime<Utc>,
    /// Metrics (`nexus_rollout_*`), when registered.
    pub metrics: Option<Arc<RolloutMetrics>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("reporter", &self.reporter)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context that is not leading yet.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            client,
            reporter: apply::MANAGER.into(),
            namespace: namespace.into(),
            heartbeat_timeout: view::DEFAULT_HEARTBEAT_TIMEOUT,
            leader: Arc::new(AtomicBool::new(false)),
            bundles: Mutex::new(BTreeMap::new()),
            drains: Mutex::new(Drains::default()),
            now: Utc::now,
            metrics: None,
        }
    }
}

/// Names of the Nodes a selector selects, sorted.
pub fn selected_nodes(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    nodes: &[Node],
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

/// The spec of a NexusNode the controller creates for a newly selected node.
pub fn new_node_spec(fabric: &Fabric) -> NexusNodeSpec {
    NexusNodeSpec {
        fabric: fabric.metadata.name.clone().unwrap_or_default(),
        desired_version: 0,
        firmware: None,
        pipeline: fabric.spec.pipeline.clone(),
        dataplane: fabric.spec.dataplane.clone(),
        maintenance: false,
    }
}

/// Which kind of source a bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `url`.
    Url(String),
    /// `configMap`: name and key.
    ConfigMap(String, String),
    /// `oci`: not supported yet.
    Oci,
    /// Nothing set.
    None,
}

/// Classifies an artifact source (URL first, then ConfigMap, then OCI).
pub fn source(s: &ArtifactSource) -> Source {
    if let Some(u) = &s.url {
        Source::Url(u.clone())
    } else if let Some(c) = &s.config_map {
        Source::ConfigMap(c.name.clone(), c.key.clone())
    } else if s.oci.is_some() {
        Source::Oci
    } else {
        Source::None
    }
}

fn failed(message: &str) -> BundleStatus {
    BundleStatus {
        state: BundleState::Failed,
        sha256: None,
        message: Some(message.into()),
    }
}

/// Fetches and verifies the Fabric's bundle, once per digest.
async fn resolve_bundle(ctx: &Context, fabric: &Fabric) -> Result<BundleStatus, Error> {
    let fw = &fabric.spec.firmware;
    if let Some(st) = ctx.bundles.lock().await.get(&fw.sha256) {
        return Ok(st.clone());
    }
    let fetched = match source(&fw.bundle) {
        Source::Url(url) => bundle::fetch(&url, &fw.sha256, None).await.status,
        Source::ConfigMap(name, key) => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
            match api.get_opt(&name).await? {
                None => failed(&format!(
                    "ConfigMap {}/{name} does not exist",
                    ctx.namespace
                )),
                Some(cm) => match cm.binary_data.as_ref().and_then(|d| d.get(&key)) {
                    Some(bytes) => bundle::verify(bytes.0.clone(), &fw.sha256).status,
                    None => failed(&format!(
                        "ConfigMap {}/{name} has no binaryData key {key}",
                        ctx.namespace
                    )),
                },
            }
        }
        Source::Oci => failed("OCI sources are not supported yet"),
        Source::None => failed("the Fabric names no bundle source"),
    };
    if fetched.state == BundleState::Verified {
        ctx.bundles
            .lock()
            .await
            .insert(fw.sha256.clone(), fetched.clone());
    }
    Ok(fetched)
}

/// Whether the bundle allows starting nodes.
fn verified(b: &BundleStatus) -> bool {
    b.state == BundleState::Verified
}

/// The actions to apply: no Start before the bundle is verified.
pub fn allowed_actions(plan: &Plan, bundle_verified: bool) -> Vec<NodeAction> {
    plan.actions
        .iter()
        .filter(|a| bundle_verified || !matches!(a, NodeAction::Start { .. }))
        .cloned()
        .collect()
}

/// When to look again.
pub fn requeue(plan: &Plan, phase: FabricPhase) -> Duration {
    let busy = matches!(
        phase,
        FabricPhase::Progressing | FabricPhase::RollingBack | FabricPhase::Pending
    ) || !plan.actions.is_empty();
    match plan.requeue_after {
        Some(d) => d.min(if busy {
            PROGRESS_INTERVAL
        } else {
            IDLE_INTERVAL
        }),
        None if busy => PROGRESS_INTERVAL,
        None => IDLE_INTERVAL,
    }
}

async fn publish(ctx: &Context, fabric: &Fabric, type_: EventType, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Rollout".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &fabric.object_ref(&())).await {
        warn!(error = %e, "could not publish event");
    }
}

/// Reconciles one Fabric.
#[instrument(skip_all, fields(fabric = fabric.metadata.name.as_deref().unwrap_or_default()))]
pub async fn reconcile(fabric: Arc<Fabric>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.load(Ordering::SeqCst) {
        return Ok(Action::requeue(FOLLOWER_INTERVAL));
    }
    let name = fabric.metadata.name.clone().ok_or(Error::MissingField {
        kind: "Fabric",
        field: "metadata.name",
    })?;
    let now = (ctx.now)();

    // The selected nodes and their NexusNodes.
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let selected = selected_nodes(
        &fabric.spec.node_selector,
        &nodes.list(&ListParams::default()).await?.items,
    );
    let nexus: Api<NexusNode> = Api::all(ctx.client.clone());
    let all: BTreeMap<String, NexusNode> = nexus
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, n)))
        .collect();
    let mut existing = BTreeMap::new();
    for node in &selected {
        match all.get(node) {
            Some(n) if n.spec.fabric == name => {
                existing.insert(node.clone(), n.clone());
            }
            Some(n) => {
                // Selected by two Fabrics: the first one keeps it; never steal a node.
                warn!(node = %node, owner = %n.spec.fabric, "node belongs to another Fabric; skipped");
            }
            None => {
                let spec = new_node_spec(&fabric);
                apply::apply_node_spec(&ctx.client, node, &spec).await?;
                existing.insert(node.clone(), NexusNode::new(node, spec));
            }
        }
    }
    let members: Vec<&NexusNode> = selected.iter().filter_map(|n| existing.get(n)).collect();

    // Bundle, views, plan.
    let bundle = resolve_bundle(&ctx, &fabric).await?;
    let views: Vec<_> = members
        .iter()
        .map(|n| view::node_view(n, now, ctx.heartbeat_timeout))
        .collect();
    let population = u32::try_from(views.len()).unwrap_or(u32::MAX);
    let strategy = view::strategy(&fabric, population)?;
    let drain_timeout = nexus_crds::common::parse_duration(&fabric.spec.rollout.drain_timeout)?;
    let plan = plan::plan(&strategy, &views, view::halted(&fabric), now);

    // Actions.
    let actions = allowed_actions(&plan, verified(&bundle));
    let mut started = Vec::new();
    let mut rolled_back = Vec::new();
    for action in &actions {
        let node_name = match action {
            NodeAction::Start { node, .. }
            | NodeAction::Finish { node }
            | NodeAction::Rollback { node, .. } => node,
        };
        if !ctx.leader.load(Ordering::SeqCst) {
            // Lost the Lease mid-reconcile: stop acting; the new leader carries on.
            warn!("lease lost; stopping");
            return Ok(Action::requeue(FOLLOWER_INTERVAL));
        }
        let Some(node) = existing.get(node_name) else {
            continue;
        };
        let mut drains = ctx.drains.lock().await;
        let applied = apply::apply_action(
            &ctx.client,
            &fabric,
            node,
            action,
            &mut drains,
            drain_timeout,
            now,
        )
        .await?;
        drop(drains);
        match (action, applied) {
            (NodeAction::Start { .. }, Applied::DrainTimedOut) => {
                publish(
                    &ctx,
                    &fabric,
                    EventType::Warning,
                    "DrainTimedOut",
                    format!("draining {node_name} took longer than the drainTimeout"),
                )
                .await;
            }
            (NodeAction::Start { .. }, _) => started.push(node_name.clone()),
            (NodeAction::Rollback { .. }, _) => rolled_back.push(node_name.clone()),
            (NodeAction::Finish { .. }, _) => {}
        }
    }

    // Status.
    let old_phase = fabric.status.as_ref().and_then(|s| s.phase);
    let status = view::fabric_status(&fabric, &plan, Some(bundle.clone()), now);
    let phase = status.phase.unwrap_or(FabricPhase::Pending);
    apply::apply_fabric_status(&ctx.client, &name, &status).await?;

    // Events.
    if old_phase != Some(phase) {
        let type_ = if matches!(phase, FabricPhase::Halted | FabricPhase::RollingBack) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = match (phase, &bundle.message) {
            (FabricPhase::Pending, Some(m)) => format!("phase {phase:?}: bundle: {m}"),
            _ => format!(
                "phase {phase:?}: {}/{} nodes run {}",
                plan.counts.updated, plan.counts.total, strategy.target
            ),
        };
        publish(&ctx, &fabric, type_, &format!("{phase:?}"), note).await;
    }
    if !started.is_empty() {
        let wave = plan.wave.as_ref().map_or(0, |w| w.index);
        publish(
            &ctx,
            &fabric,
            EventType::Normal,
            "WaveStarted",
            format!("wave {wave}: {} → {}", started.join(", "), strategy.target),
        )
        .await;
    }
    if !rolled_back.is_empty() {
        publish(
            &ctx,
            &fabric,
            EventType::Warning,
            "RollingBack",
            format!("rolling back {}", rolled_back.join(", ")),
        )
        .await;
    }
    if let Some(m) = &ctx.metrics {
        record(m, &name, &actions, &status.nodes, (ctx.now)() - now);
    }
    info!(?phase, actions = actions.len(), "reconciled");
    Ok(Action::requeue(requeue(&plan, phase)))
}

fn record(
    m: &RolloutMetrics,
    fabric: &str,
    actions: &[NodeAction],
    c: &nexus_crds::fabric::NodeCounts,
    took: chrono::Duration,
) {
    m.reconcile_duration
        .observe(took.to_std().unwrap_or_default().as_secs_f64());
    for a in actions {
        let action = match a {
            NodeAction::Start { .. } => "start",
            NodeAction::Finish { .. } => "finish",
            NodeAction::Rollback { .. } => "rollback",
        };
        m.actions
            .get_or_create(&ActionLabels {
                action: action.into(),
            })
            .inc();
    }
    for (state, v) in [
        ("total", c.total),
        ("updated", c.updated),
        ("updating", c.updating),
        ("pending", c.pending),
        ("failed", c.failed),
        ("unavailable", c.unavailable),
        ("rolled_back", c.rolled_back),
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
    if ctx.leader.load(Ordering::SeqCst) {
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

/// The Fabrics a NexusNode belongs to.
pub fn fabric_of(node: &NexusNode) -> Option<kube::runtime::reflector::ObjectRef<Fabric>> {
    (!node.spec.fabric.is_empty())
        .then(|| kube::runtime::reflector::ObjectRef::new(&node.spec.fabric))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use kube::api::ObjectMeta;

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn selects_nodes_by_labels_and_expressions() {
        let nodes = vec![
            node("c", &[("pool", "gpu"), ("zone", "a")]),
            node("a", &[("pool", "gpu"), ("zone", "b")]),
            node("b", &[("pool", "cpu")]),
            node("d", &[("pool", "gpu"), ("zone", "a"), ("drain", "x")]),
        ];
        let sel = LabelSelector {
            match_labels: Some([("pool".to_owned(), "gpu".to_owned())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "drain".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(selected_nodes(&sel, &nodes), vec!["a", "c"]);
        assert_eq!(
            selected_nodes(&LabelSelector::default(), &nodes),
            vec!["a", "b", "c", "d"]
        );
    }

    #[test]
    fn sources_and_gating() {
        let url = ArtifactSource {
            url: Some("https://x/b".into()),
            ..ArtifactSource::default()
        };
        assert_eq!(source(&url), Source::Url("https://x/b".into()));
        let oci = ArtifactSource {
            oci: Some("r.io/fw:1".into()),
            ..ArtifactSource::default()
        };
        assert_eq!(source(&oci), Source::Oci);
        assert_eq!(source(&ArtifactSource::default()), Source::None);

        let plan = Plan {
            actions: vec![
                NodeAction::Start {
                    node: "a".into(),
                    version: "2".into(),
                },
                NodeAction::Finish { node: "b".into() },
            ],
            phase: FabricPhase::Progressing,
            counts: Default::default(),
            versions: vec![],
            wave: None,
            halted: false,
            requeue_after: None,
        };
        assert_eq!(allowed_actions(&plan, true).len(), 2);
        assert_eq!(
            allowed_actions(&plan, false),
            vec![NodeAction::Finish { node: "b".into() }]
        );
        assert_eq!(requeue(&plan, FabricPhase::Progressing), PROGRESS_INTERVAL);
        let idle = Plan {
            actions: vec![],
            ..plan.clone()
        };
        assert_eq!(requeue(&idle, FabricPhase::Ready), IDLE_INTERVAL);
        let soaking = Plan {
            requeue_after: Some(Duration::from_secs(3)),
            ..idle
        };
        assert_eq!(
            requeue(&soaking, FabricPhase::Progressing),
            Duration::from_secs(3)
        );
    }
}
