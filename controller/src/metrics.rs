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

/// Labels of the per-domain endpoint gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `namespace/name` of the RoutingDomain.
    pub domain: String,
    /// `admitted` or `rejected`.
    pub state: &'static str,
}

/// Labels of the routing pass counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Metrics of the RoutingDomain controller (`nexus_routing_*`): whether its passes run and
/// succeed, what they write, and how many endpoints each domain admits and rejects — an
/// operator's first look when a call is not routed.
#[derive(Debug)]
pub struct RoutingMetrics {
    /// Passes by result.
    pub passes: Family<PassLabels, Counter>,
    /// Pass duration in seconds (reads, admission, compilation, writes).
    pub pass_duration: Histogram,
    /// Writes made (NexusNode `spec.routing`, RoutingDomain status).
    pub writes: Counter,
    /// Endpoints per domain and state, as last planned.
    pub endpoints: Family<EndpointLabels, prometheus_client::metrics::gauge::Gauge>,
    /// Compiled table versions this replica keeps (and serves).
    pub tables_kept: prometheus_client::metrics::gauge::Gauge,
    /// Domains with endpoint gauges, so those of deleted domains can be removed.
    labelled: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl RoutingMetrics {
    /// Creates the metrics and registers them under `nexus_routing_*`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        let r = registry.sub_registry_with_prefix("nexus_routing");
        r.register("passes", "Routing passes by result", m.passes.clone());
        r.register(
            "pass_duration_seconds",
            "Time of one routing pass",
            m.pass_duration.clone(),
        );
        r.register(
            "writes",
            "NexusNode spec.routing and RoutingDomain status writes",
            m.writes.clone(),
        );
        r.register(
            "endpoints",
            "Endpoints of each RoutingDomain by state (admitted, rejected)",
            m.endpoints.clone(),
        );
        r.register(
            "tables_kept",
            "Compiled routing table versions kept and served",
            m.tables_kept.clone(),
        );
        m
    }

    /// Metrics nobody scrapes (a controller built without a registry).
    pub fn unregistered() -> Self {
        Self {
            passes: Family::default(),
            pass_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            writes: Counter::default(),
            endpoints: Family::default(),
            tables_kept: prometheus_client::metrics::gauge::Gauge::default(),
            labelled: std::sync::Mutex::default(),
        }
    }

    /// Records one pass.
    pub fn observe_pass(&self, took: Duration, ok: bool) {
        self.pass_duration.observe(took.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.passes.get_or_create(&PassLabels { result }).inc();
    }

    /// Passes counted with `result` (`ok`, `error`).
    pub fn pass_count(&self, result: &'static str) -> u64 {
        self.passes.get_or_create(&PassLabels { result }).get()
    }

    /// Forgets the endpoint counts of domains that are gone.
    pub fn retain_domains(&self, domains: &std::collections::BTreeSet<String>) {
        for domain in self.labelled.lock().map(|l| l.clone()).unwrap_or_default() {
            if !domains.contains(&domain) {
                for state in ["admitted", "rejected"] {
                    self.endpoints.remove(&EndpointLabels {
                        domain: domain.clone(),
                        state,
                    });
                }
            }
        }
        if let Ok(mut l) = self.labelled.lock() {
            l.retain(|d| domains.contains(d));
        }
    }

    /// Sets a domain's endpoint counts.
    pub fn set_endpoints(&self, domain: &str, admitted: u32, rejected: u32) {
        if let Ok(mut l) = self.labelled.lock() {
            l.insert(domain.to_owned());
        }
        for (state, n) in [("admitted", admitted), ("rejected", rejected)] {
            self.endpoints
                .get_or_create(&EndpointLabels {
                    domain: domain.to_owned(),
                    state,
                })
                .set(i64::from(n));
        }
    }

    /// Endpoints of `domain` in `state` (`admitted`, `rejected`), as last set.
    pub fn endpoint_count(&self, domain: &str, state: &'static str) -> i64 {
        self.endpoints
            .get_or_create(&EndpointLabels {
                domain: domain.to_owned(),
                state,
            })
            .get()
    }
}
