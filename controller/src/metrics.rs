//! Prometheus metrics of the controllers (prometheus-client, OpenMetrics text).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

/// Label of the failures counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`Error::metric_label`].
    pub error: String,
}

/// Controller metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Failed reconciles by error kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// Certificates issued.
    pub issued: Counter,
    /// Certificates revoked.
    pub revoked: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under `nexus_controller_*`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            failures: Family::default(),
            issued: Counter::default(),
            revoked: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("nexus_controller");
        r.register(
            "reconcile_duration_seconds",
            "Time to reconcile one object",
            m.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_failures",
            "Failed reconciles by error",
            m.failures.clone(),
        );
        r.register(
            "certificates_issued",
            "Model Identity Certificates issued",
            m.issued.clone(),
        );
        r.register(
            "certificates_revoked",
            "Model Identity Certificates revoked",
            m.revoked.clone(),
        );
        m
    }

    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&Error>) {
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(e) = error {
            self.failures
                .get_or_create(&ErrorLabels {
                    error: e.metric_label().into(),
                })
                .inc();
        }
    }
}
