//! Prometheus metrics (prometheus-client), served as OpenMetrics text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the failures counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Operation: issue, renew, revoke, status, proof, zk_verify, ...
    pub op: &'static str,
    /// `Error::code()`.
    pub reason: &'static str,
}

/// Labels of the node-certificate counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeCertLabels {
    /// `join` (a one-time token) or `renew` (the node's current certificate).
    pub how: &'static str,
}

/// The CA's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// MICs issued (renewals included).
    pub issued: Counter,
    /// MICs revoked.
    pub revoked: Counter,
    /// Seconds from request to signed, logged MIC.
    pub issue_latency: Histogram,
    /// Failed requests by operation and reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Entries in the issuance log.
    pub log_size: Gauge,
    /// Certificates written per database batch.
    pub batch_size: Histogram,
    /// Seconds per database write batch (transaction, including the wait for the log-writer
    /// lock while another replica writes).
    pub batch_seconds: Histogram,
    /// Log entries this replica learned from the database (written by other replicas).
    pub log_synced: Counter,
    /// Usage events waiting in the spool (as of the reporter's last round).
    pub usage_pending: Gauge,
    /// Node certificates issued, by how the node authenticated.
    pub node_certs: Family<NodeCertLabels, Counter>,
    /// Joins refused (unknown, expired, used or misbound tokens).
    pub joins_refused: Counter,
    /// Client certificates published as Kubernetes Secrets.
    pub published: Counter,
    /// Failed Secret or ConfigMap writes (retried next round).
    pub publish_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `nexus_ca` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nexus_ca");
        let issued = Counter::default();
        let revoked = Counter::default();
        let issue_latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let failures = Family::<FailureLabels, Counter>::default();
        let log_size = Gauge::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let batch_seconds = Histogram::new(exponential_buckets(0.000_5, 2.0, 14));
        let log_synced = Counter::default();
        let usage_pending = Gauge::default();
        let node_certs = Family::<NodeCertLabels, Counter>::default();
        let joins_refused = Counter::default();
        let published = Counter::default();
        let publish_errors = Counter::default();
        registry.register(
            "published_client_certificates",
            "Client certificates (re-)issued into Kubernetes Secrets",
            published.clone(),
        );
        registry.register(
            "publish_errors",
            "Failed reads or writes of published Secrets and ConfigMaps",
            publish_errors.clone(),
        );
        registry.register(
            "node_certificates_issued",
            "Node certificates issued, by join token or renewal",
            node_certs.clone(),
        );
        registry.register(
            "joins_refused",
            "Node joins refused (unknown, expired, used or misbound join tokens)",
            joins_refused.clone(),
        );
        registry.register("issued", "MICs issued", issued.clone());
        registry.register("revoked", "MICs revoked", revoked.clone());
        registry.register(
            "issue_duration_seconds",
            "Issuance latency (policy, signing, logging)",
            issue_latency.clone(),
        );
        registry.register(
            "failures",
            "Failed requests by operation and reason",
            failures.clone(),
        );
        registry.register("log_size", "Entries in the issuance log", log_size.clone());
        registry.register(
            "write_batch_size",
            "Certificates per database write batch",
            batch_size.clone(),
        );
        registry.register(
            "write_batch_duration_seconds",
            "Duration of a database write batch",
            batch_seconds.clone(),
        );
        registry.register(
            "log_synced_entries",
            "Issuance log entries written by other replicas and synced from the database",
            log_synced.clone(),
        );
        registry.register(
            "usage_pending",
            "Usage events (issued MICs) not yet accepted by the cloud API",
            usage_pending.clone(),
        );
        Self {
            registry,
            issued,
            revoked,
            issue_latency,
            failures,
            log_size,
            batch_size,
            batch_seconds,
            log_synced,
            usage_pending,
            node_certs,
            joins_refused,
            published,
            publish_errors,
        }
    }

    /// Counts a node certificate issued by `how` (`join` or `renew`).
    pub fn node_cert_issued(&self, how: &'static str) {
        self.node_certs.get_or_create(&NodeCertLabels { how }).inc();
    }

    /// Counts a refused join.
    pub fn join_refused(&self) {
        self.joins_refused.inc();
    }

    /// Counts a failure.
    pub fn fail(&self, op: &'static str, e: &crate::Error) {
        self.failures
            .get_or_create(&FailureLabels {
                op,
                reason: e.code(),
            })
            .inc();
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
