//! The Fabric rollout planner: fabric strategy + every node's observed state + `now` → the next
//! actions and the Fabric's status. Pure and deterministic; the adapter applies the actions
//! (cordon, drain, write `NexusNode.spec`) and calls the planner again on every change.
//!
//! # Waves
//! Nodes are ordered by name. Wave 0 (the canary wave) is the first `canary` nodes; every later
//! wave is the next `maxUnavailable` nodes. A wave starts only when the previous wave is done
//! (each node updated, failed within the threshold, or skipped because its drain timed out) and
//! has soaked for `soakTime` since its last node finished. Within a wave, nodes start while the
//! number of nodes out of service (draining, in progress, failed, in maintenance or not
//! heartbeating) stays within `maxUnavailable`. A node that was started and is still draining is
//! in progress: its slot of the budget was taken when it started, and its drain goes on (or
//! times out) whatever the budget says now — so a wave can always finish.
//!
//! Skipped nodes are tried again once every wave is done, no sooner than `retry_skipped_after`
//! after they were skipped.
//!
//! # Restart safety
//! Everything is derived from resources: which nodes were told to run the target
//! (`NexusNode.spec`), what they run and when they finished (`NexusNode.status`), and whether
//! this generation halted (`Fabric.status`). A restarted controller recomputes the same waves,
//! never restarts a node that was already told or already runs the target, and counts nodes in
//! progress against the budget.
//!
//! # Halt and rollback
//! More than `failureThreshold` failures for the target halts the rollout (sticky for the
//! Fabric's generation). With `autoRollback`, every node told to run the target is told to run
//! its previous version again — for a node that runs the target that is the version in its
//! inactive bank (an A/B switch, no download), for a node whose flash failed it is what it
//! still runs — again within `maxUnavailable`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nexus_crds::fabric::{FabricPhase, NodeCounts, VersionCount};
use nexus_crds::node::FlashOutcome;

/// The rollout strategy with budgets resolved against the fabric's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strategy {
    /// Target firmware version.
    pub target: String,
    /// Canary wave size.
    pub canary: u32,
    /// Most nodes out of service at once (resolved from int-or-string, ≥ 1).
    pub max_unavailable: u32,
    /// Wait after a wave finishes.
    pub soak: Duration,
    /// Failures tolerated.
    pub failure_threshold: u32,
    /// Roll back on halt.
    pub auto_rollback: bool,
    /// Start no new nodes.
    pub paused: bool,
    /// A node skipped because its drain timed out is tried again this long after (once every
    /// wave is done).
    pub retry_skipped_after: Duration,
}

/// What the planner knows of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Version `NexusNode.spec` currently tells the node to run.
    pub spec_target: Option<String>,
    /// `NexusNode.spec.maintenance`: cordoned and drained by us.
    pub maintenance: bool,
    /// Version its NICs run.
    pub running: Option<String>,
    /// Version in the inactive flash bank (what a rollback switches back to).
    pub previous: Option<String>,
    /// Last flash: version, outcome, finish time.
    pub last_flash: Option<(String, FlashOutcome, Option<DateTime<Utc>>)>,
    /// The agent heartbeat is fresh.
    pub heartbeat_fresh: bool,
    /// Being drained for a Start of the target (in maintenance, not yet told the target).
    pub draining: bool,
    /// Skipped in this rollout (its drain timed out) at this time.
    pub skipped_at: Option<DateTime<Utc>>,
}

/// Where a node stands relative to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeState {
    /// Not told to run the target yet.
    Pending,
    /// Told to run the target; not running it yet.
    InProgress,
    /// Runs the target and is healthy.
    Updated,
    /// Its flash of the target failed (it runs its previous version).
    Failed,
    /// Its drain timed out; tried again after every other node.
    Skipped,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// Cordon and drain the node, set maintenance, tell it to run `version`.
    Start {
        /// Node.
        node: String,
        /// Version.
        version: String,
    },
    /// The node runs the target and is healthy: clear maintenance and uncordon it.
    Finish {
        /// Node.
        node: String,
    },
    /// Tell the node to run `version` again. `flash` is false when it already runs it.
    Rollback {
        /// Node.
        node: String,
        /// Version to return to.
        version: String,
        /// Whether this needs an A/B switch (and so a drain and a slot of the budget).
        flash: bool,
    },
}

/// The wave in progress, for `Fabric.status.currentBatch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wave {
    /// 0 = canary wave.
    pub index: u32,
    /// Its nodes.
    pub nodes: Vec<String>,
    /// When the previous wave's soak ends (if the wave is waiting for it).
    pub soak_until: Option<DateTime<Utc>>,
}

/// The planner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Actions, in order.
    pub actions: Vec<NodeAction>,
    /// Summary phase.
    pub phase: FabricPhase,
    /// Counts by state.
    pub counts: NodeCounts,
    /// Version histogram.
    pub versions: Vec<VersionCount>,
    /// Wave in progress.
    pub wave: Option<Wave>,
    /// The rollout is halted for this generation (persist it in status).
    pub halted: bool,
    /// Call again by then at the latest (soak ending), if nothing changes earlier.
    pub requeue_after: Option<Duration>,
}

/// Classifies a node against `target`. An interrupted flash (agent restarted mid-flash) is not
/// a failure: the node is still in progress and the agent tries again.
pub fn state(node: &NodeView, target: &str) -> NodeState {
    let failed = node.last_flash.as_ref().is_some_and(|(v, outcome, _)| {
        v == target
            && matches!(
                outcome,
                FlashOutcome::Failed | FlashOutcome::RolledBack | FlashOutcome::Refused
            )
    });
    if node.running.as_deref() == Some(target) && !failed {
        NodeState::Updated
    } else if failed && node.running.as_deref() != Some(target) {
        NodeState::Failed
    } else if node.spec_target.as_deref() == Some(target) || node.draining {
        NodeState::InProgress
    } else if node.skipped_at.is_some() {
        NodeState::Skipped
    } else {
        NodeState::Pending
    }
}

/// Whether the node is out of service for budget purposes: not heartbeating, in maintenance
/// (draining, flashing, or a failed flash not yet released), or being flashed. A node whose
/// flash failed and that was released runs its previous firmware and serves: it counts against
/// `failureThreshold`, not against `maxUnavailable` (or failures would eat the budget for good).
fn out_of_service(node: &NodeView, st: NodeState) -> bool {
    !node.heartbeat_fresh || node.maintenance || st == NodeState::InProgress
}

/// Splits ordered node indices into waves: `canary` first, then chunks of `max_unavailable`.
fn waves(n: usize, canary: u32, max_unavailable: u32) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let c = (canary as usize).min(n);
    if c > 0 {
        out.push(0..c);
    }
    let step = (max_unavailable as usize).max(1);
    let mut i = c;
    while i < n {
        out.push(i..(i + step).min(n));
        i += step;
    }
    out
}

/// Plans one step. `nodes` may come in any order; `halted` is whether status already records a
/// halt for this generation.
pub fn plan(strategy: &Strategy, nodes: &[NodeView], halted: bool, now: DateTime<Utc>) -> Plan {
    let mut order: Vec<&NodeView> = nodes.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let target = strategy.target.as_str();
    let states: Vec<NodeState> = order.iter().map(|n| state(n, target)).collect();

    let mut counts = NodeCounts {
        total: u32::try_from(order.len()).unwrap_or(u32::MAX),
        ..NodeCounts::default()
    };
    let mut histogram: BTreeMap<String, u32> = BTreeMap::new();
    for (n, st) in order.iter().zip(&states) {
        match st {
            NodeState::Pending => counts.pending += 1,
            NodeState::InProgress => counts.updating += 1,
            NodeState::Updated => counts.updated += 1,
            NodeState::Failed => counts.failed += 1,
            NodeState::Skipped => counts.skipped += 1,
        }
        if out_of_service(n, *st) {
            counts.unavailable += 1;
        }
        if let Some(v) = &n.running {
            *histogram.entry(v.clone()).or_default() += 1;
        }
    }
    let versions = histogram
        .into_iter()
        .map(|(version, count)| VersionCount { version, count })
        .collect();

    let mut actions = Vec::new();
    // Nodes that are done with their flash leave maintenance (uncordon) whatever else happens:
    // updated ones, and failed ones (their NICs fell back to the previous image, which serves).
    for (n, st) in order.iter().zip(&states) {
        let done = match st {
            NodeState::Updated => n.spec_target.as_deref() == Some(target),
            NodeState::Failed => !n.draining,
            _ => false,
        };
        if n.maintenance && n.heartbeat_fresh && done {
            actions.push(NodeAction::Finish {
                node: n.name.clone(),
            });
        }
    }
    let mut unavailable = counts.unavailable;
    // A Finish frees its slot now.
    unavailable = unavailable.saturating_sub(u32::try_from(actions.len()).unwrap_or(u32::MAX));
    let mut budget = strategy.max_unavailable.saturating_sub(unavailable);

    let halted = halted || counts.failed > strategy.failure_threshold;
    if halted {
        return plan_rollback(strategy, &order, &states, counts, versions, actions, budget);
    }

    let all_waves = waves(order.len(), strategy.canary, strategy.max_unavailable);
    let first_canary = strategy.canary > 0 && !all_waves.is_empty();
    let mut wave_info = None;
    let mut requeue_after = None;
    let mut prev_done_at: Option<DateTime<Utc>> = None;
    let mut prev_exists = false;
    for (idx, range) in all_waves.iter().enumerate() {
        // A skipped node is done for its wave, also while it is being tried again (retries run
        // after the waves, out of band, and must not hold later waves back).
        let done = range.clone().all(|i| match states[i] {
            NodeState::Updated | NodeState::Failed => order[i].heartbeat_fresh,
            NodeState::Skipped => true,
            NodeState::Pending | NodeState::InProgress => order[i].skipped_at.is_some(),
        });
        let index = if first_canary { idx } else { idx + 1 };
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if done {
            let finished = range
                .clone()
                .filter_map(|i| order[i].last_flash.as_ref())
                .filter(|(v, _, _)| v == target)
                .filter_map(|(_, _, t)| *t)
                .max();
            prev_done_at = finished.max(prev_done_at);
            prev_exists = true;
            continue;
        }
        let nodes_in_wave: Vec<String> = range.clone().map(|i| order[i].name.clone()).collect();
        // Soak: the previous wave must have finished `soak` ago.
        let soak_until = if prev_exists {
            prev_done_at.map(|t| t + chrono::Duration::from_std(strategy.soak).unwrap_or_default())
        } else {
            None
        };
        if let Some(until) = soak_until
            && now < until
        {
            let started_any = range.clone().any(|i| states[i] != NodeState::Pending);
            if !started_any {
                requeue_after = (until - now).to_std().ok();
                wave_info = Some(Wave {
                    index,
                    nodes: nodes_in_wave,
                    soak_until: Some(until),
                });
                break;
            }
        }
        if !strategy.paused {
            for i in range.clone() {
                if budget == 0 {
                    break;
                }
                if states[i] == NodeState::Pending && order[i].heartbeat_fresh {
                    actions.push(NodeAction::Start {
                        node: order[i].name.clone(),
                        version: strategy.target.clone(),
                    });
                    budget -= 1;
                }
            }
        }
        wave_info = Some(Wave {
            index,
            nodes: nodes_in_wave,
            soak_until: None,
        });
        break;
    }

    // Every wave done: skipped nodes get another try, one at a time (drains that run together
    // push pods onto each other and can keep each other from finishing), each once its retry
    // time has come, the longest-waiting first (so nodes that keep timing out cannot starve
    // another).
    let retrying = order
        .iter()
        .zip(&states)
        .any(|(n, st)| n.skipped_at.is_some() && *st == NodeState::InProgress);
    if wave_info.is_none() && !strategy.paused && !retrying {
        let retry = chrono::Duration::from_std(strategy.retry_skipped_after).unwrap_or_default();
        let mut waiting: Vec<&&NodeView> = order
            .iter()
            .zip(&states)
            .filter(|(n, st)| **st == NodeState::Skipped && n.heartbeat_fresh)
            .map(|(n, _)| n)
            .collect();
        waiting.sort_by_key(|n| (n.skipped_at, n.name.clone()));
        for n in waiting {
            let Some(at) = n.skipped_at else { continue };
            let due = at + retry;
            if now < due {
                let wait = (due - now).to_std().ok();
                requeue_after = match (requeue_after, wait) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                continue;
            }
            if budget > 0 {
                actions.push(NodeAction::Start {
                    node: n.name.clone(),
                    version: strategy.target.clone(),
                });
                break;
            }
        }
    }

    let finished_with_failures =
        wave_info.is_none() && counts.failed > 0 && counts.updated + counts.failed == counts.total;
    let phase = if counts.updated == counts.total {
        FabricPhase::Ready
    } else if strategy.paused {
        FabricPhase::Paused
    } else if finished_with_failures {
        FabricPhase::Degraded
    } else {
        FabricPhase::Progressing
    };
    Plan {
        actions,
        phase,
        counts,
        versions,
        wave: wave_info,
        halted: false,
        requeue_after,
    }
}

fn plan_rollback(
    strategy: &Strategy,
    order: &[&NodeView],
    states: &[NodeState],
    counts: NodeCounts,
    versions: Vec<VersionCount>,
    mut actions: Vec<NodeAction>,
    mut budget: u32,
) -> Plan {
    let target = strategy.target.as_str();
    let mut remaining = 0u32;
    let mut rolled_back = 0u32;
    if strategy.auto_rollback {
        for (n, st) in order.iter().zip(states) {
            let told_target = n.spec_target.as_deref() == Some(target);
            if !told_target {
                if n.last_flash.as_ref().is_some_and(|(v, _, _)| v != target)
                    && n.previous.as_deref() == Some(target)
                {
                    rolled_back += 1;
                }
                // Told to go back but not there yet (the A/B switch is under way): the
                // rollback is not finished.
                if n.running.as_deref() == Some(target) && n.spec_target.is_some() {
                    remaining += 1;
                }
                continue;
            }
            remaining += 1;
            match st {
                // Never got the target (failed, or not flashed yet): point it back at what it runs.
                NodeState::Failed
                | NodeState::InProgress
                | NodeState::Pending
                | NodeState::Skipped => {
                    if let Some(v) = n.running.clone()
                        && v != target
                    {
                        actions.push(NodeAction::Rollback {
                            node: n.name.clone(),
                            version: v,
                            flash: false,
                        });
                    }
                }
                NodeState::Updated => {
                    if budget > 0
                        && let Some(prev) = n.previous.clone()
                    {
                        actions.push(NodeAction::Rollback {
                            node: n.name.clone(),
                            version: prev,
                            flash: true,
                        });
                        budget -= 1;
                    }
                }
            }
        }
    }
    let phase = if !strategy.auto_rollback {
        FabricPhase::Halted
    } else if remaining == 0 {
        FabricPhase::RolledBack
    } else {
        FabricPhase::RollingBack
    };
    Plan {
        actions,
        phase,
        counts: NodeCounts {
            rolled_back,
            ..counts
        },
        versions,
        wave: None,
        halted: true,
        requeue_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Strategy, *};
    use chrono::TimeZone;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("valid")
    }

    fn strategy() -> Strategy {
        Strategy {
            target: "2.0".into(),
            canary: 1,
            max_unavailable: 2,
            soak: Duration::from_secs(60),
            failure_threshold: 0,
            auto_rollback: true,
            paused: false,
            retry_skipped_after: Duration::from_secs(600),
        }
    }

    fn node(i: usize) -> NodeView {
        NodeView {
            name: format!("node-{i:03}"),
            spec_target: Some("1.0".into()),
            maintenance: false,
            running: Some("1.0".into()),
            previous: None,
            last_flash: None,
            heartbeat_fresh: true,
            draining: false,
            skipped_at: None,
        }
    }

    fn fleet(n: usize) -> Vec<NodeView> {
        (0..n).map(node).collect()
    }

    /// Applies a plan the way the adapter and agents would: Start → told the target; then
    /// (with `finish_at`) every in-progress node runs the target, finished at that time.
    fn apply(nodes: &mut [NodeView], plan: &Plan) {
        for a in &plan.actions {
            match a {
                NodeAction::Start { node, version } => {
                    let n = nodes
                        .iter_mut()
                        .find(|n| &n.name == node)
                        .expect("known node");
                    n.spec_target = Some(version.clone());
                    n.maintenance = true;
                }
                NodeAction::Finish { node } => {
                    let n = nodes
                        .iter_mut()
                        .find(|n| &n.name == node)
                        .expect("known node");
                    n.maintenance = false;
                }
                NodeAction::Rollback { node, version, .. } => {
                    let n = nodes
                        .iter_mut()
                        .find(|n| &n.name == node)
                        .expect("known node");
                    n.spec_target = Some(version.clone());
                    n.maintenance = true;
                }
            }
        }
    }

    fn flash_all(nodes: &mut [NodeView], at: DateTime<Utc>, fail: &[&str]) {
        for n in nodes.iter_mut() {
            let Some(target) = n.spec_target.clone() else {
                continue;
            };
            if n.running.as_deref() != Some(target.as_str()) {
                if fail.contains(&n.name.as_str()) {
                    n.last_flash = Some((target, FlashOutcome::Failed, Some(at)));
                } else {
                    n.previous = n.running.replace(target.clone());
                    n.last_flash = Some((target, FlashOutcome::Succeeded, Some(at)));
                }
            }
        }
    }

    fn starts(p: &Plan) -> Vec<&str> {
        p.actions
            .iter()
            .filter_map(|a| match a {
                NodeAction::Start { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn canary_first_then_soak_then_batches() {
        let s = strategy();
        let mut nodes = fleet(5);
        let p = plan(&s, &nodes, false, t(0));
        assert_eq!(starts(&p), ["node-000"], "the canary alone");
        assert_eq!(p.wave.as_ref().map(|w| w.index), Some(0));
        apply(&mut nodes, &p);
        // Nothing more while the canary flashes.
        assert!(starts(&plan(&s, &nodes, false, t(1))).is_empty());
        flash_all(&mut nodes, t(10), &[]);
        let p = plan(&s, &nodes, false, t(11));
        assert_eq!(
            p.actions,
            vec![NodeAction::Finish {
                node: "node-000".into()
            }]
        );
        apply(&mut nodes, &p);
        let p = plan(&s, &nodes, false, t(30));
        assert!(starts(&p).is_empty(), "soaking");
        assert_eq!(p.requeue_after, Some(Duration::from_secs(40)));
        let p = plan(&s, &nodes, false, t(70));
        assert_eq!(
            starts(&p),
            ["node-001", "node-002"],
            "a batch of maxUnavailable"
        );
        assert_eq!(p.wave.as_ref().map(|w| w.index), Some(1));
    }

    #[test]
    fn an_interrupted_flash_is_in_progress_not_failed() {
        let mut n = node(0);
        n.spec_target = Some("2.0".into());
        n.last_flash = Some(("2.0".into(), FlashOutcome::Interrupted, Some(t(1))));
        assert_eq!(state(&n, "2.0"), NodeState::InProgress);
        let mut s = strategy();
        s.failure_threshold = 0;
        let p = plan(&s, &[n], false, t(2));
        assert!(!p.halted, "a restart mid-flash does not halt the rollout");
    }

    #[test]
    fn a_draining_node_holds_its_slot_and_a_skipped_one_waits_for_the_end() {
        let mut s = strategy();
        s.canary = 0;
        s.max_unavailable = 2;
        let mut nodes = fleet(4);
        // node-000 and node-001 drain (maintenance, not yet told the target).
        for n in nodes.iter_mut().take(2) {
            n.maintenance = true;
            n.draining = true;
        }
        let p = plan(&s, &nodes, false, t(0));
        assert!(starts(&p).is_empty(), "both slots are taken by the drains");
        assert_eq!(p.counts.updating, 2);
        // node-000's drain timed out: skipped, uncordoned; the wave is done with it.
        nodes[0].maintenance = false;
        nodes[0].draining = false;
        nodes[0].skipped_at = Some(t(10));
        nodes[1].draining = false;
        nodes[1].spec_target = Some("2.0".into());
        nodes[1].running = Some("2.0".into());
        nodes[1].maintenance = false;
        nodes[1].last_flash = Some(("2.0".into(), FlashOutcome::Succeeded, Some(t(20))));
        let p = plan(&s, &nodes, false, t(100));
        assert_eq!(starts(&p), ["node-002", "node-003"], "the next wave");
        assert_eq!(p.counts.skipped, 1);
        // Every other node done: the skipped one is retried after retry_skipped_after.
        for n in nodes.iter_mut().skip(2) {
            n.spec_target = Some("2.0".into());
            n.running = Some("2.0".into());
            n.last_flash = Some(("2.0".into(), FlashOutcome::Succeeded, Some(t(200))));
        }
        let p = plan(&s, &nodes, false, t(300));
        assert!(starts(&p).is_empty(), "not before its retry time");
        assert_eq!(p.phase, FabricPhase::Progressing);
        assert!(p.requeue_after.is_some());
        let p = plan(&s, &nodes, false, t(10 + 600));
        assert_eq!(starts(&p), ["node-000"]);
    }

    #[test]
    fn paused_starts_nothing() {
        let mut s = strategy();
        s.paused = true;
        let p = plan(&s, &fleet(5), false, t(0));
        assert!(starts(&p).is_empty());
        assert_eq!(p.phase, FabricPhase::Paused);
    }

    #[test]
    fn stale_heartbeats_eat_the_budget() {
        let mut s = strategy();
        s.canary = 0;
        let mut nodes = fleet(6);
        nodes[4].heartbeat_fresh = false;
        let p = plan(&s, &nodes, false, t(0));
        assert_eq!(starts(&p), ["node-000"], "one slot left of two");
        assert_eq!(p.counts.unavailable, 1);
    }

    #[test]
    fn failure_past_threshold_halts_and_rolls_back() {
        let mut s = strategy();
        s.canary = 0;
        s.max_unavailable = 3;
        let mut nodes = fleet(6);
        let p = plan(&s, &nodes, false, t(0));
        apply(&mut nodes, &p);
        flash_all(&mut nodes, t(10), &["node-001"]);
        let p = plan(&s, &nodes, false, t(11));
        assert!(p.halted);
        assert_eq!(p.phase, FabricPhase::RollingBack);
        let rollbacks: Vec<_> = p
            .actions
            .iter()
            .filter(|a| matches!(a, NodeAction::Rollback { .. }))
            .collect();
        assert_eq!(
            rollbacks.len(),
            3,
            "the two updated nodes flash back, the failed one is re-pointed"
        );
        assert!(p.actions.contains(&NodeAction::Rollback {
            node: "node-001".into(),
            version: "1.0".into(),
            flash: false
        }));
        assert!(p.actions.contains(&NodeAction::Rollback {
            node: "node-000".into(),
            version: "1.0".into(),
            flash: true
        }));
        apply(&mut nodes, &p);
        for n in nodes.iter_mut() {
            if n.spec_target.as_deref() == Some("1.0") && n.running.as_deref() == Some("2.0") {
                n.previous = n.running.replace("1.0".into());
                n.last_flash = Some(("1.0".into(), FlashOutcome::Succeeded, Some(t(20))));
                n.maintenance = false;
            }
        }
        let p = plan(&s, &nodes, true, t(21));
        assert_eq!(p.phase, FabricPhase::RolledBack);
        assert!(starts(&p).is_empty());
        assert!(
            nodes.iter().all(|n| n.running.as_deref() == Some("1.0")),
            "every node bootable on 1.0"
        );
    }

    #[test]
    fn full_rollout_reaches_ready() {
        let s = strategy();
        let mut nodes = fleet(7);
        let mut now = 0;
        for _ in 0..50 {
            let p = plan(&s, &nodes, false, t(now));
            if p.phase == FabricPhase::Ready {
                return;
            }
            apply(&mut nodes, &p);
            now += 30;
            flash_all(&mut nodes, t(now), &[]);
        }
        panic!("rollout did not finish");
    }

    proptest! {
        /// In any reachable state, the plan never takes more nodes out of service than the
        /// budget allows, never starts a node that was already told or already runs the target,
        /// starts nothing when paused or halted, and is deterministic (a restarted controller
        /// computes the same plan).
        #[test]
        fn invariants(
            n in 1usize..40,
            canary in 0u32..5,
            max_unavailable in 1u32..6,
            threshold in 0u32..3,
            paused: bool,
            steps in 0usize..12,
            fail_mask in proptest::collection::vec(any::<bool>(), 40),
            stale_mask in proptest::collection::vec(proptest::bool::weighted(0.1), 40),
        ) {
            let s = Strategy { target: "2.0".into(), canary, max_unavailable, soak: Duration::from_secs(30), failure_threshold: threshold, auto_rollback: true, paused, retry_skipped_after: Duration::from_secs(600) };
            let mut nodes = fleet(n);
            let fail: Vec<String> = (0..n).filter(|i| fail_mask[*i] && *i % 7 == 3).map(|i| format!("node-{i:03}")).collect();
            let fail: Vec<&str> = fail.iter().map(String::as_str).collect();
            let mut halted = false;
            for step in 0..steps {
                let now = t(step as i64 * 40);
                let p = plan(&s, &nodes, halted, now);
                prop_assert_eq!(&p, &plan(&s, &nodes, halted, now), "deterministic");
                let mut rev = nodes.clone();
                rev.reverse();
                prop_assert_eq!(&p, &plan(&s, &rev, halted, now), "independent of input order");
                let before_out = nodes.iter().filter(|v| out_of_service(v, state(v, "2.0"))).count() as u32;
                let finishes = p.actions.iter().filter(|a| matches!(a, NodeAction::Finish { .. })).count() as u32;
                let new_out = p.actions.iter().filter(|a| matches!(a, NodeAction::Start { .. } | NodeAction::Rollback { flash: true, .. })).count() as u32;
                prop_assert!(new_out == 0 || before_out.saturating_sub(finishes) + new_out <= max_unavailable,
                    "budget: {} out, {} finishing, {} new, max {}", before_out, finishes, new_out, max_unavailable);
                for a in &p.actions {
                    if let NodeAction::Start { node, .. } = a {
                        let v = nodes.iter().find(|x| &x.name == node).expect("node");
                        prop_assert!(v.spec_target.as_deref() != Some("2.0") && v.running.as_deref() != Some("2.0"));
                        prop_assert!(!paused && !p.halted);
                    }
                }
                halted |= p.halted;
                apply(&mut nodes, &p);
                flash_all(&mut nodes, now + chrono::Duration::seconds(20), &fail);
                for (i, v) in nodes.iter_mut().enumerate() { v.heartbeat_fresh = !stale_mask[(i + step) % 40]; }
            }
            // Whatever happened, every node runs a version that booted (the A/B invariant as the planner sees it).
            prop_assert!(nodes.iter().all(|v| v.running.is_some()));
        }
    }
}
