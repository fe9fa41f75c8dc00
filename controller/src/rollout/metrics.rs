//! Prometheus metrics of the rollout controller (`nexus_rollout_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::fleet::{Applied, Fleet};

/// Label: an action kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `start`, `finish`, `rollback`, `push`.
    pub action: String,
}

/// Label: a fabric and a node state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FabricStateLabels {
    /// Fabric name.
    pub fabric: String,
    /// `total`, `updated`, `updating`, `pending`, `failed`, `unavailable`, `rolled_back`.
    pub state: String,
}

/// Rollout metrics.
#[derive(Debug)]
pub struct RolloutMetrics {
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// Actions applied and desired states pushed.
    pub actions: Family<ActionLabels, Counter>,
    /// Connected agents.
    pub agents_connected: Gauge,
    /// Nacks received.
    pub nacks: Counter,
    /// Registrations refused (a node certificate presented for another node's name).
    pub refused_registrations: Counter,
    /// Node counts per fabric and state.
    pub fabric_nodes: Family<FabricStateLabels, Gauge>,
}

impl RolloutMetrics {
    /// Creates the metrics and registers them under `nexus_rollout_*`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            actions: Family::default(),
            agents_connected: Gauge::default(),
            nacks: Counter::default(),
            refused_registrations: Counter::default(),
            fabric_nodes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("nexus_rollout");
        r.register(
            "reconcile_duration_seconds",
            "Time to reconcile every fabric once",
            m.reconcile_duration.clone(),
        );
        r.register(
            "actions",
            "Rollout actions applied, by kind",
            m.actions.clone(),
        );
        r.register(
            "agents_connected",
            "Node agents with an open stream",
            m.agents_connected.clone(),
        );
        r.register(
            "nacks",
            "Desired states refused or failed by agents",
            m.nacks.clone(),
        );
        r.register(
            "refused_registrations",
            "Agent registrations refused: the node certificate names another node or has no node role",
            m.refused_registrations.clone(),
        );
        r.register(
            "fabric_nodes",
            "Nodes per fabric by rollout state",
            m.fabric_nodes.clone(),
        );
        m
    }

    /// Records one reconcile.
    pub fn observe(&self, fleet: &Fleet, applied: Applied, secs: f64) {
        self.reconcile_duration.observe(secs);
        for (action, n) in [
            ("start", applied.starts),
            ("finish", applied.finishes),
            ("rollback", applied.rollbacks),
            ("push", applied.pushes),
        ] {
            if n > 0 {
                self.actions
                    .get_or_create(&ActionLabels {
                        action: action.into(),
                    })
                    .inc_by(u64::from(n));
            }
        }
        let connected = fleet.nodes.values().filter(|n| n.session.is_some()).count();
        self.agents_connected
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
        for (name, f) in &fleet.fabrics {
            let Some(c) = f.fabric.status.as_ref().map(|s| &s.nodes) else {
                continue;
            };
            for (state, v) in [
                ("total", c.total),
                ("updated", c.updated),
                ("updating", c.updating),
                ("pending", c.pending),
                ("failed", c.failed),
                ("unavailable", c.unavailable),
                ("rolled_back", c.rolled_back),
            ] {
                self.fabric_nodes
                    .get_or_create(&FabricStateLabels {
                        fabric: name.clone(),
                        state: state.into(),
                    })
                    .set(i64::from(v));
            }
        }
    }
}
