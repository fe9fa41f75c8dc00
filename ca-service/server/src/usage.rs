//! Usage reporting: every MIC the CA issues is a `mics_issued` event for its tenant in the
//! cloud API (idempotency key `mic:<serial>`).
//!
//! Durable by construction: the log writer puts a row in `usage_outbox` in the same
//! transaction as the certificate, so no issued MIC can be missing from the spool; this
//! reporter sends pending rows and marks them sent only after the cloud API answered. An outage
//! of the cloud API (or of the CA between sending and marking) only delays events: the retry
//! carries the same idempotency key, which the cloud API counts once. Replicas share the spool
//! (`FOR UPDATE SKIP LOCKED`: each row is in one reporter's hands at a time).
//!
//! The cloud API's late-arrival window (48 h by default) bounds the outage it absorbs: an event
//! older than that comes back `rejected`; it is marked done with the reason and counted in
//! `nexus_ca_failures_total{op="usage",reason="rejected"}`, not retried for ever.
//!
//! Authentication, preferred first: the cloud API's usage token (`--usage-token`), with which
//! one batch carries every tenant's events to `POST /v1/system/usage-events` (each event names
//! its tenant; the token can do nothing else); or, as a fallback, one API key per tenant (a
//! member key with the `write` scope, `POST /v1/usage/events`), read from files named after the
//! tenant in a directory — a tenant without a key stays pending, sent once a key appears.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::Error;
use crate::ca::Ca;

/// Events sent per round (at most 1,000 per request on the cloud API's side).
const ROUND: i64 = 500;

/// Where and as whom to report.
#[derive(Clone)]
pub struct UsageConfig {
    /// Base URL of the cloud API, e.g. `http://nexus-cloud:8080`.
    pub url: String,
    /// The cloud API's usage token: when set, every tenant's events go in one batch to the
    /// system endpoint and `keys` is not used.
    pub token: Option<String>,
    /// API key per tenant name (the fallback without a usage token).
    pub keys: HashMap<String, String>,
    /// Pause between rounds when nothing is pending.
    pub every: Duration,
}

impl std::fmt::Debug for UsageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageConfig")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("tenants", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl UsageConfig {
    /// Reports with the cloud API's usage token.
    pub fn with_token(url: &str, token: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            token: Some(token.to_owned()),
            keys: HashMap::new(),
            every: Duration::from_secs(5),
        }
    }

    /// Keys from `dir`: one file per tenant, named after it, holding its API key.
    pub fn from_dir(url: &str, dir: &Path) -> Result<Self, Error> {
        let mut keys = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            let key = std::fs::read_to_string(entry.path())?.trim().to_owned();
            if !key.is_empty() {
                keys.insert(name, key);
            }
        }
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            token: None,
            keys,
            every: Duration::from_secs(5),
        })
    }
}

/// The HTTP client the reporter uses (ring as the TLS provider, a 30 s timeout). Installs
/// ring as the process default provider if none is (reqwest needs one; the workspace uses only
/// ring).
pub fn http_client() -> Result<reqwest::Client, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::State(format!("usage HTTP client: {e}")))
}

/// Delay before retry number `attempts` (1 s doubling, at most 5 minutes).
pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(Duration::from_secs(300))
}

#[derive(Debug, Serialize)]
struct Event<'a> {
    /// Named only on the system endpoint (a tenant's own endpoint knows its tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    meter: &'static str,
    quantity: u64,
    timestamp: DateTime<Utc>,
    dimensions: BTreeMap<&'static str, &'a str>,
    idempotency_key: String,
}

#[derive(Debug, Deserialize)]
struct Report {
    #[serde(default)]
    results: Vec<EventResult>,
}

#[derive(Debug, Deserialize)]
struct EventResult {
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    reason: Option<String>,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    /// Events the cloud API accepted, or already had (a retried send).
    pub delivered: usize,
    /// Events it refused for good (e.g. outside its late-arrival window).
    pub rejected: usize,
    /// Events left for a later round (cloud API unreachable or failing, no key).
    pub deferred: usize,
}

/// One round: sends the pending events due at `now` (grouped per tenant) and records what
/// happened. Time is passed in so tests can step past back-offs.
pub async fn report_once(
    ca: &Ca,
    http: &reqwest::Client,
    cfg: &UsageConfig,
    now: DateTime<Utc>,
) -> Result<RoundReport, Error> {
    let mut tx = ca.pool().begin().await?;
    let rows = sqlx::query(
        "SELECT serial, tenant, issued_at, attempts FROM usage_outbox
         WHERE sent_at IS NULL AND next_attempt_at <= $1
         ORDER BY next_attempt_at, serial LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(ROUND)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_tenant: BTreeMap<String, Vec<(String, DateTime<Utc>, i32)>> = BTreeMap::new();
    for row in &rows {
        by_tenant.entry(row.try_get("tenant")?).or_default().push((
            row.try_get("serial")?,
            row.try_get("issued_at")?,
            row.try_get("attempts")?,
        ));
    }
    // One request per batch: every tenant at once with the usage token, else one per tenant
    // with its own key.
    type Pending = (String, String, DateTime<Utc>, i32);
    let mut batches: Vec<(String, &'static str, Vec<Pending>, &str)> = Vec::new();
    let mut report = RoundReport::default();
    match &cfg.token {
        // Nothing pending: no request (an empty batch is not a report).
        Some(_) if by_tenant.is_empty() => {}
        Some(token) => batches.push((
            token.clone(),
            "/v1/system/usage-events",
            by_tenant
                .iter()
                .flat_map(|(t, evs)| {
                    evs.iter()
                        .map(|(serial, at, n)| (t.clone(), serial.clone(), *at, *n))
                })
                .collect(),
            "every tenant",
        )),
        None => {
            for (tenant, events) in &by_tenant {
                let pending: Vec<Pending> = events
                    .iter()
                    .map(|(serial, at, n)| (tenant.clone(), serial.clone(), *at, *n))
                    .collect();
                match cfg.keys.get(tenant) {
                    Some(key) => batches.push((key.clone(), "/v1/usage/events", pending, tenant)),
                    None => {
                        tracing::warn!(%tenant, pending = events.len(), "no usage API key for tenant");
                        defer(&mut tx, &pending, "no API key for the tenant", now).await?;
                        report.deferred += events.len();
                    }
                }
            }
        }
    }
    for (key, path, events, who) in &batches {
        let system = *path == "/v1/system/usage-events";
        let body = serde_json::json!({
            "events": events.iter().map(|(tenant, serial, at, _)| Event {
                tenant: system.then_some(tenant.as_str()),
                meter: "mics_issued",
                quantity: 1,
                timestamp: *at,
                dimensions: BTreeMap::from([("issuer", "nexus-ca")]),
                idempotency_key: format!("mic:{serial}"),
            }).collect::<Vec<_>>()
        });
        let sent = http
            .post(format!("{}{path}", cfg.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await;
        let answer = match sent {
            Ok(r) if r.status().is_success() => r.json::<Report>().await.map_err(|e| e.to_string()),
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(format!("unreachable: {e}")),
        };
        match answer {
            Ok(rep) => {
                let outcomes: HashMap<&str, &EventResult> = rep
                    .results
                    .iter()
                    .map(|r| (r.idempotency_key.as_str(), r))
                    .collect();
                for (tenant, serial, _, _) in events {
                    let key = format!("mic:{serial}");
                    // accepted / duplicate: billed once. conflict: the key exists with other
                    // content — the cloud API metered this MIC itself (it issued it through us).
                    let (done_error, rejected) = match outcomes.get(key.as_str()) {
                        Some(r) if r.outcome == "rejected" => (
                            Some(r.reason.clone().unwrap_or_else(|| "rejected".into())),
                            true,
                        ),
                        _ => (None, false),
                    };
                    sqlx::query(
                        "UPDATE usage_outbox SET sent_at = $2, attempts = attempts + 1,
                             last_error = $3 WHERE serial = $1",
                    )
                    .bind(serial)
                    .bind(now)
                    .bind(&done_error)
                    .execute(&mut *tx)
                    .await?;
                    if rejected {
                        report.rejected += 1;
                        ca.metrics().fail(
                            "usage",
                            &Error::InvalidArgument {
                                field: "usage",
                                reason: "rejected".into(),
                            },
                        );
                        tracing::warn!(%serial, %tenant, error = ?done_error, "usage event rejected by the cloud API");
                    } else {
                        report.delivered += 1;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(tenants = %who, error = %e, events = events.len(), "usage report deferred");
                defer(&mut tx, events, &e, now).await?;
                report.deferred += events.len();
            }
        }
    }
    tx.commit().await?;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_outbox WHERE sent_at IS NULL")
            .fetch_one(ca.pool())
            .await?;
    ca.metrics().usage_pending.set(pending);
    Ok(report)
}

async fn defer(
    tx: &mut sqlx::PgConnection,
    events: &[(String, String, DateTime<Utc>, i32)],
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    for (_, serial, _, attempts) in events {
        let attempts = u32::try_from(*attempts).unwrap_or(0).saturating_add(1);
        let next =
            now + chrono::Duration::from_std(backoff(attempts)).unwrap_or(chrono::Duration::MAX);
        sqlx::query(
            "UPDATE usage_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3
             WHERE serial = $1",
        )
        .bind(serial)
        .bind(next)
        .bind(error)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Runs rounds until the task is aborted: immediately again while a round was full, else
/// after `cfg.every`.
pub fn spawn(ca: Arc<Ca>, cfg: UsageConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = match http_client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "usage reporter: HTTP client");
                return;
            }
        };
        loop {
            let full = match report_once(&ca, &http, &cfg, Utc::now()).await {
                Ok(r) => r.delivered + r.rejected + r.deferred >= ROUND as usize,
                Err(e) => {
                    tracing::error!(error = %e, "usage reporter round failed");
                    false
                }
            };
            if !full {
                tokio::time::sleep(cfg.every).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}
