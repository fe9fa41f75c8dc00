//! Reports what a cluster does to the Nexus Cloud API: each Fabric's rollout (shown on the
//! tenant console's overview) and the cluster hours each Fabric was connected (the
//! `cluster_hours` meter on the tenant's bill).
//!
//! The decisions are pure ([`rollout_report`], [`ClusterHours::due`]); [`CloudClient`] is the
//! only I/O. Nothing needs a spool: a rollout report is a whole-state upsert (the newest one
//! wins), and a cluster hour's idempotency key is derived from the cluster, the Fabric and the
//! hour, so a restarted controller re-sends the same keys and the cloud bills each hour once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use nexus_crds::Fabric;
use nexus_crds::fabric::FabricPhase;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// A rollout as the cloud API's `PUT /v1/clusters/{id}/rollouts/{fabric}` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutReport {
    /// `Pending`, `Progressing`, … (the Fabric's phase, as the CRD names it).
    pub phase: &'static str,
    /// The firmware version the Fabric rolls to.
    pub target_version: String,
    /// Nodes selected.
    pub nodes_total: u32,
    /// Nodes on the target and healthy.
    pub nodes_updated: u32,
    /// Nodes whose flash or health check failed.
    pub nodes_failed: u32,
    /// The Ready condition's message, or the phase in words.
    pub message: String,
}

fn phase_name(p: &FabricPhase) -> &'static str {
    match p {
        FabricPhase::Pending => "Pending",
        FabricPhase::Progressing => "Progressing",
        FabricPhase::Paused => "Paused",
        FabricPhase::Ready => "Ready",
        FabricPhase::Degraded => "Degraded",
        FabricPhase::Halted => "Halted",
        FabricPhase::RollingBack => "RollingBack",
        FabricPhase::RolledBack => "RolledBack",
    }
}

/// Longest message the cloud API stores.
const MESSAGE_MAX: usize = 1000;

/// What to report for one Fabric; `None` until the controller has given it a status.
pub fn rollout_report(fabric: &Fabric) -> Option<(String, RolloutReport)> {
    let name = fabric.metadata.name.clone()?;
    let status = fabric.status.as_ref()?;
    let phase = status.phase.as_ref()?;
    let mut message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    if message.chars().count() > MESSAGE_MAX {
        message = message.chars().take(MESSAGE_MAX).collect();
    }
    Some((
        name,
        RolloutReport {
            phase: phase_name(phase),
            target_version: fabric.spec.firmware.version.clone(),
            nodes_total: status.nodes.total,
            nodes_updated: status.nodes.updated,
            nodes_failed: status.nodes.failed,
            message,
        },
    ))
}

/// One usage event as the cloud API's `POST /v1/usage/events` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    /// The meter (`cluster_hours`).
    pub meter: &'static str,
    /// In the meter's unit.
    pub quantity: u64,
    /// When the usage happened.
    pub timestamp: DateTime<Utc>,
    /// `fabric`, `cluster`.
    pub dimensions: BTreeMap<String, String>,
    /// Unique per tenant; derived from what is counted so a re-send is billed once.
    pub idempotency_key: String,
}

/// Which (Fabric, hour) pairs have been billed as cluster hours.
///
/// A Fabric connected at any time during an hour counts that hour once. The key is
/// `cluster-hours:<cluster id>:<fabric>:<hour>`, so the cloud API drops re-sends after a restart.
#[derive(Debug, Default)]
pub struct ClusterHours {
    sent: BTreeSet<(String, DateTime<Utc>)>,
}

impl ClusterHours {
    /// The events still to send for `fabrics` connected at `now`.
    pub fn due(&self, cluster_id: &str, fabrics: &[String], now: DateTime<Utc>) -> Vec<UsageEvent> {
        let Ok(hour) = now.duration_trunc(TimeDelta::hours(1)) else {
            return Vec::new();
        };
        fabrics
            .iter()
            .filter(|f| !self.sent.contains(&((*f).clone(), hour)))
            .map(|f| UsageEvent {
                meter: "cluster_hours",
                quantity: 1,
                timestamp: hour,
                dimensions: BTreeMap::from([
                    ("fabric".to_owned(), f.clone()),
                    ("cluster".to_owned(), cluster_id.to_owned()),
                ]),
                idempotency_key: format!(
                    "cluster-hours:{cluster_id}:{f}:{}",
                    hour.format("%Y-%m-%dT%H")
                ),
            })
            .collect()
    }

    /// Records that the cloud API acknowledged `events`.
    pub fn acknowledged(&mut self, events: &[UsageEvent]) {
        for e in events {
            if let Some(f) = e.dimensions.get("fabric") {
                self.sent.insert((f.clone(), e.timestamp));
            }
        }
        // Only the current and the previous hour can still be due.
        if let Some(latest) = self.sent.iter().map(|(_, h)| *h).max() {
            self.sent
                .retain(|(_, h)| latest - *h <= TimeDelta::hours(1));
        }
    }
}

/// Errors talking to the cloud API.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// Connection or protocol failure; worth retrying.
    #[error("cloud API unreachable: {0}")]
    Unreachable(String),
    /// The API refused the request (problem+json detail included).
    #[error("cloud API refused {what}: HTTP {status}: {detail}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// The response body.
        detail: String,
    },
    /// The base URL is not usable.
    #[error("invalid cloud API URL: {0}")]
    Url(String),
}

/// A registered cluster as the cloud API lists it.
#[derive(Debug, Clone, Deserialize)]
struct ClusterRow {
    id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Page<T> {
    data: Vec<T>,
    #[serde(default)]
    next_cursor: Option<String>,
}

/// A client for the few cloud API calls a cluster makes, with a tenant API key.
#[derive(Debug, Clone)]
pub struct CloudClient {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl CloudClient {
    /// `base` like `http://127.0.0.1:8080`.
    pub fn new(base: &str, api_key: &str) -> Result<Self, CloudError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CloudError::Url(base));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CloudError::Url(e.to_string()))?;
        Ok(Self {
            http,
            base,
            api_key: api_key.to_owned(),
        })
    }

    async fn send(
        &self,
        what: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CloudError> {
        let resp = req
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(|e| CloudError::Unreachable(e.to_string()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let detail = resp.text().await.unwrap_or_default();
        Err(CloudError::Refused {
            what,
            status,
            detail,
        })
    }

    /// The id of the cluster named `name`, registering it first when missing.
    pub async fn ensure_cluster(&self, name: &str, region: &str) -> Result<String, CloudError> {
        if let Some(id) = self.find_cluster(name).await? {
            return Ok(id);
        }
        let created = self
            .send(
                "cluster registration",
                self.http
                    .post(format!("{}/v1/clusters", self.base))
                    .json(&serde_json::json!({ "name": name, "region": region })),
            )
            .await;
        match created {
            Ok(resp) => {
                let row: ClusterRow = resp
                    .json()
                    .await
                    .map_err(|e| CloudError::Unreachable(e.to_string()))?;
                Ok(row.id)
            }
            // Registered concurrently by another replica.
            Err(CloudError::Refused { status: 409, .. }) => {
                self.find_cluster(name)
                    .await?
                    .ok_or(CloudError::Unreachable(format!(
                        "cluster {name} conflicts but is not listed"
                    )))
            }
            Err(e) => Err(e),
        }
    }

    async fn find_cluster(&self, name: &str) -> Result<Option<String>, CloudError> {
        let mut cursor: Option<String> = None;
        loop {
            // Cursors are `digits.hex`: nothing to escape.
            let url = match &cursor {
                Some(c) => format!("{}/v1/clusters?limit=100&cursor={c}", self.base),
                None => format!("{}/v1/clusters?limit=100", self.base),
            };
            let req = self.http.get(url);
            let page: Page<ClusterRow> = self
                .send("cluster list", req)
                .await?
                .json()
                .await
                .map_err(|e| CloudError::Unreachable(e.to_string()))?;
            if let Some(c) = page.data.into_iter().find(|c| c.name == name) {
                return Ok(Some(c.id));
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(None),
            }
        }
    }

    /// Upserts one Fabric's rollout.
    pub async fn report_rollout(
        &self,
        cluster_id: &str,
        fabric: &str,
        report: &RolloutReport,
    ) -> Result<(), CloudError> {
        self.send(
            "rollout report",
            self.http
                .put(format!(
                    "{}/v1/clusters/{cluster_id}/rollouts/{fabric}",
                    self.base
                ))
                .json(report),
        )
        .await
        .map(drop)
    }

    /// Sends usage events (at most 1,000).
    pub async fn post_usage(&self, events: &[UsageEvent]) -> Result<(), CloudError> {
        self.send(
            "usage batch",
            self.http
                .post(format!("{}/v1/usage/events", self.base))
                .json(&serde_json::json!({ "events": events })),
        )
        .await
        .map(drop)
    }
}

/// Reports rollouts (when they change) and cluster hours every `every`, until `shutdown` is
/// set. `snapshot` returns the Fabrics as the controller sees them now.
pub async fn run_reporter<F, Fut>(
    client: CloudClient,
    cluster_id: String,
    every: Duration,
    snapshot: F,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Vec<Fabric>>,
{
    let mut last: BTreeMap<String, RolloutReport> = BTreeMap::new();
    let mut hours = ClusterHours::default();
    loop {
        let fabrics = snapshot().await;
        let names: Vec<String> = fabrics
            .iter()
            .filter_map(|f| f.metadata.name.clone())
            .collect();
        for (name, report) in fabrics.iter().filter_map(rollout_report) {
            if last.get(&name) == Some(&report) {
                continue;
            }
            match client.report_rollout(&cluster_id, &name, &report).await {
                Ok(()) => {
                    debug!(fabric = %name, phase = report.phase, "rollout reported to the cloud");
                    last.insert(name, report);
                }
                Err(e) => warn!(fabric = %name, error = %e, "rollout report failed; retrying"),
            }
        }
        last.retain(|n, _| names.contains(n));
        let due = hours.due(&cluster_id, &names, Utc::now());
        if !due.is_empty() {
            match client.post_usage(&due).await {
                Ok(()) => hours.acknowledged(&due),
                Err(e) => warn!(error = %e, "cluster-hours usage failed; retrying"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_hour_is_due_once_per_fabric_and_again_next_hour() {
        let mut h = ClusterHours::default();
        let fabrics = vec!["a".to_owned(), "b".to_owned()];
        let t = Utc.with_ymd_and_hms(2026, 12, 3, 14, 25, 7).single();
        let Some(t) = t else { panic!("valid time") };
        let due = h.due("c1", &fabrics, t);
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].idempotency_key, "cluster-hours:c1:a:2026-12-03T14");
        assert_eq!(
            due[0].timestamp,
            Utc.with_ymd_and_hms(2026, 12, 3, 14, 0, 0).unwrap()
        );
        // Unacknowledged: still due, with the same keys (a retry is billed once).
        assert_eq!(h.due("c1", &fabrics, t), due);
        h.acknowledged(&due);
        assert!(h.due("c1", &fabrics, t + TimeDelta::minutes(30)).is_empty());
        let next = h.due("c1", &fabrics, t + TimeDelta::minutes(40));
        assert_eq!(next.len(), 2);
        assert_eq!(next[1].idempotency_key, "cluster-hours:c1:b:2026-12-03T15");
    }

    #[test]
    fn no_report_before_the_controller_gave_a_status() {
        let mut f = Fabric::new("demo", serde_json::from_value(serde_json::json!({
            "nodeSelector": {}, "nic": {"vendor": "nvidia", "pciVendorId": "15b3", "pciDeviceIds": ["1021"]},
            "firmware": {"version": "2.0.0", "bundle": {"url": "https://x.invalid/b"}, "sha256": "0".repeat(64)},
        })).unwrap_or_else(|e| panic!("spec: {e}")));
        assert!(rollout_report(&f).is_none());
        f.status = Some(nexus_crds::FabricStatus {
            phase: Some(FabricPhase::RollingBack),
            ..Default::default()
        });
        let Some((name, r)) = rollout_report(&f) else {
            panic!("a report")
        };
        assert_eq!(name, "demo");
        assert_eq!(r.phase, "RollingBack");
        assert_eq!(r.target_version, "2.0.0");
    }
}
