//! `nexus-usage-client`: how Nexus components (dataplanes, the CA, the controller) report the
//! usage they measure to the cloud API, so that nothing is lost and nothing is billed twice.
//!
//! - [`Spool`] is a directory of batch files. [`Spool::append`] writes a batch to a temporary
//!   file, fsyncs it, renames it into place and fsyncs the directory: when it returns, the usage
//!   survives a crash or SIGKILL of the process and a power loss of the node.
//! - Every event carries its idempotency key from the moment it is spooled, so re-sending a
//!   batch (after a lost acknowledgement, a restart, a cloud outage) is billed once: the cloud API
//!   stores each (tenant, key) once and reports the repeats as `duplicate`.
//! - [`Reporter`] sends spooled batches oldest first to `POST /v1/system/usage-events` with the
//!   usage token, deletes a file only after the API acknowledged it, and backs off on failure.
//!
//! The body is the cloud API's `SystemUsageBatch` (its OpenAPI document owns that format); this
//! crate has its own copy of the few fields so that a dataplane does not link the API server.
//! The API server's tests send through this crate, which keeps the two in step.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Largest batch the API accepts in one request; [`Spool::append`] splits larger ones.
pub const MAX_BATCH: usize = 1000;

/// Failures of the spool and of sending.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spooled batch {path} is not readable: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("usage endpoint unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    /// The API answered with an error status worth retrying later (429, 5xx, 401/403 while a
    /// token is being rotated).
    #[error("usage endpoint answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl Error {
    /// Label for a failures counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Corrupt { .. } => "corrupt",
            Error::Transport(_) => "transport",
            Error::Status { .. } => "status",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// What is metered (the cloud API's `Meter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Meter {
    /// Bytes carried by a dataplane.
    TrafficBytes,
    /// MICs issued by the CA.
    MicsIssued,
    /// Hours a cluster (a Fabric) ran under the controller.
    ClusterHours,
}

/// One usage event on behalf of a tenant (the cloud API's `SystemUsageEvent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// The tenant's slug or id.
    pub tenant: String,
    pub meter: Meter,
    pub quantity: u64,
    pub timestamp: DateTime<Utc>,
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
    /// Unique per tenant; fixed when the event is spooled.
    pub idempotency_key: String,
}

impl UsageEvent {
    /// An event with the given idempotency key. Choose keys that name the measured thing, so a
    /// component that measures it twice (after a restart) reports it once: see the constructors.
    pub fn new(
        tenant: impl Into<String>,
        meter: Meter,
        quantity: u64,
        timestamp: DateTime<Utc>,
        idempotency_key: impl Into<String>,
    ) -> Self {
        UsageEvent {
            tenant: tenant.into(),
            meter,
            quantity,
            timestamp,
            dimensions: BTreeMap::new(),
            idempotency_key: idempotency_key.into(),
        }
    }

    pub fn with_dimension(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.dimensions.insert(name.into(), value.into());
        self
    }

    /// Bytes a dataplane node carried for a tenant in one reporting interval. The key names the
    /// node, the interval and the counter (domain, delivery mode), so one interval's delta is
    /// billed once however often it is sent.
    pub fn traffic(
        tenant: &str,
        node: &str,
        domain: &str,
        mode: &str,
        interval_start: DateTime<Utc>,
        bytes: u64,
    ) -> Self {
        let key = format!(
            "dp:{node}:{}:{domain}:{mode}",
            interval_start.timestamp_millis()
        );
        UsageEvent::new(tenant, Meter::TrafficBytes, bytes, interval_start, key)
            .with_dimension("domain", domain)
            .with_dimension("delivery_mode", mode)
            .with_dimension("node", node)
    }

    /// One MIC issued by the CA. The key `mic:<serial>` is the one the cloud API uses when it
    /// issues through its own endpoint, so a MIC is billed once whichever reports it first (the
    /// second report comes back as a `duplicate` or, with other dimensions, a `conflict`, and
    /// either way stores nothing).
    pub fn mic_issued(tenant: &str, serial: &str, issued_at: DateTime<Utc>) -> Self {
        UsageEvent::new(
            tenant,
            Meter::MicsIssued,
            1,
            issued_at,
            format!("mic:{serial}"),
        )
    }

    /// Hours of one Fabric in one hour-aligned period, from the controller.
    pub fn cluster_hours(
        tenant: &str,
        fabric: &str,
        hour_start: DateTime<Utc>,
        hours: u64,
    ) -> Self {
        UsageEvent::new(
            tenant,
            Meter::ClusterHours,
            hours,
            hour_start,
            format!("fabric:{fabric}:{}", hour_start.timestamp()),
        )
        .with_dimension("fabric", fabric)
    }
}

/// The request body (`SystemUsageBatch`), also the content of a spool file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub events: Vec<UsageEvent>,
}

/// The API's answer (`IngestReport`), summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Report {
    pub accepted: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub rejected: u64,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, o: Report) {
        self.accepted += o.accepted;
        self.duplicates += o.duplicates;
        self.conflicts += o.conflicts;
        self.rejected += o.rejected;
    }
}

/// A directory of spooled batches: `<seq>.batch` files, sent in sequence order. Files named
/// `*.tmp` are half-written appends from a crash and are removed on open.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    next: Mutex<u64>,
    appended: tokio::sync::Notify,
}

const SUFFIX: &str = ".batch";

fn seq_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// Makes a rename or unlink in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Spool {
    /// Opens (creating) the spool directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Spool> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut max = 0;
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                // Never renamed into place, so never acknowledged to the caller: not usage yet.
                fs::remove_file(&path).map_err(io(&path))?;
            } else if let Some(seq) = seq_of(&path) {
                max = max.max(seq + 1);
            }
        }
        Ok(Spool {
            dir,
            next: Mutex::new(max),
            appended: tokio::sync::Notify::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `events` durably (fsync of the file and the directory), in batches of at most
    /// [`MAX_BATCH`]. Blocking I/O: from async code, call it in `spawn_blocking`.
    pub fn append(&self, events: &[UsageEvent]) -> Result<()> {
        for chunk in events.chunks(MAX_BATCH) {
            let body = serde_json::to_vec(&Batch {
                events: chunk.to_vec(),
            })
            .map_err(|source| Error::Corrupt {
                path: self.dir.clone(),
                source,
            })?;
            // One appender at a time keeps sequence numbers in file order.
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let seq = *next;
            let tmp = self.dir.join(format!("{seq:020}.tmp"));
            let path = self.dir.join(format!("{seq:020}{SUFFIX}"));
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(&body).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            drop(f);
            fs::rename(&tmp, &path).map_err(io(&path))?;
            sync_dir(&self.dir)?;
            *next = seq + 1;
        }
        self.appended.notify_one();
        Ok(())
    }

    /// Spooled batch files, oldest first.
    pub fn pending(&self) -> Result<Vec<PathBuf>> {
        let mut files: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| seq_of(&p).map(|s| (s, p)))
            .collect();
        files.sort();
        Ok(files.into_iter().map(|(_, p)| p).collect())
    }

    /// Events waiting in the spool.
    pub fn pending_events(&self) -> Result<usize> {
        let mut n = 0;
        for p in self.pending()? {
            n += read_batch(&p)?.events.len();
        }
        Ok(n)
    }

    fn remove(&self, path: &Path) -> Result<()> {
        fs::remove_file(path).map_err(io(path))?;
        sync_dir(&self.dir)
    }

    /// Sets aside a batch the API refused as malformed (422): retrying cannot help, and it must
    /// not block the batches behind it. Kept for an operator to inspect.
    fn quarantine(&self, path: &Path) -> Result<()> {
        let bad = self.dir.join("rejected");
        fs::create_dir_all(&bad).map_err(io(&bad))?;
        let name = path.file_name().unwrap_or_default();
        fs::rename(path, bad.join(name)).map_err(io(path))?;
        sync_dir(&self.dir)
    }
}

fn read_batch(path: &Path) -> Result<Batch> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
        path: path.to_owned(),
        source,
    })
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cloud API's base URL, e.g. `http://nexus-cloud.nexus-system.svc:8080`.
    pub endpoint: String,
    /// The usage token (`--usage-token` of the API server).
    pub token: String,
    /// First retry delay after a failure; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Config {
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> Config {
        Config {
            endpoint: endpoint.into(),
            token: token.into(),
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Sends a spool's batches to the cloud API.
#[derive(Debug, Clone)]
pub struct Reporter {
    spool: Arc<Spool>,
    config: Config,
    http: reqwest::Client,
    url: String,
    totals: Arc<Mutex<Report>>,
}

impl Reporter {
    pub fn new(spool: Arc<Spool>, config: Config) -> Result<Reporter> {
        // The workspace's one TLS provider; a no-op when the binary installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        let url = format!(
            "{}/v1/system/usage-events",
            config.endpoint.trim_end_matches('/')
        );
        Ok(Reporter {
            spool,
            config,
            http,
            url,
            totals: Arc::default(),
        })
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// What the API reported for everything this reporter sent.
    pub fn totals(&self) -> Report {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one batch file; deletes it once acknowledged.
    async fn send_file(&self, path: &Path) -> Result<Report> {
        let batch = {
            let p = path.to_owned();
            tokio::task::spawn_blocking(move || read_batch(&p))
                .await
                .map_err(|e| Error::Io {
                    path: path.to_owned(),
                    source: std::io::Error::other(e),
                })??
        };
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(&self.config.token)
            .json(&batch)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let spool = self.spool.clone();
        let p = path.to_owned();
        match status {
            200..=299 => {
                let report: Report =
                    serde_json::from_str(&text).map_err(|source| Error::Corrupt {
                        path: path.to_owned(),
                        source,
                    })?;
                if report.conflicts > 0 || report.rejected > 0 {
                    // Neither is fixed by sending again; the report's per-event results say why.
                    tracing::warn!(file = %path.display(), conflicts = report.conflicts,
                        rejected = report.rejected, body = %text, "usage events not billed");
                }
                tokio::task::spawn_blocking(move || spool.remove(&p))
                    .await
                    .map_err(|e| Error::Io {
                        path: path.to_owned(),
                        source: std::io::Error::other(e),
                    })??;
                Ok(report)
            }
            422 | 400 | 413 => {
                tracing::error!(file = %path.display(), status, body = %text,
                    "usage batch refused as malformed: set aside under rejected/");
                tokio::task::spawn_blocking(move || spool.quarantine(&p))
                    .await
                    .map_err(|e| Error::Io {
                        path: path.to_owned(),
                        source: std::io::Error::other(e),
                    })??;
                Ok(Report::default())
            }
            _ => Err(Error::Status { status, body: text }),
        }
    }

    /// One pass over the spool, oldest first; stops at the first failure (later batches wait,
    /// so usage is delivered in order).
    pub async fn send_pending(&self) -> Result<Report> {
        let mut sum = Report::default();
        let spool = self.spool.clone();
        let files = tokio::task::spawn_blocking(move || spool.pending())
            .await
            .map_err(|e| Error::Io {
                path: self.spool.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        for f in files {
            let r = self.send_file(&f).await?;
            *self.totals.lock().unwrap_or_else(|p| p.into_inner()) += r;
            sum += r;
        }
        Ok(sum)
    }

    /// Sends until `shutdown` resolves: after every append, every `poll` otherwise, with
    /// exponential back-off while the API is unreachable.
    pub async fn run(self, poll: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = self.config.backoff;
        loop {
            let wait = match self.send_pending().await {
                Ok(_) => {
                    backoff = self.config.backoff;
                    poll
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "usage not delivered yet");
                    let w = backoff;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    w
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.spool.appended.notified(), if wait == poll => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str) -> UsageEvent {
        UsageEvent::new("acme", Meter::TrafficBytes, 5, Utc::now(), key)
    }

    #[test]
    fn appends_survive_reopen_in_order() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let spool = Spool::open(dir.path())?;
        spool.append(&[ev("a")])?;
        spool.append(&[ev("b"), ev("c")])?;
        // A crash between create and rename leaves a .tmp: dropped on open, numbering continues.
        fs::write(dir.path().join("00000000000000000007.tmp"), b"{\"ev").map_err(io(dir.path()))?;
        drop(spool);
        let spool = Spool::open(dir.path())?;
        assert!(!dir.path().join("00000000000000000007.tmp").exists());
        spool.append(&[ev("d")])?;
        let keys: Vec<Vec<String>> = spool
            .pending()?
            .iter()
            .map(|p| {
                read_batch(p).map(|b| b.events.into_iter().map(|e| e.idempotency_key).collect())
            })
            .collect::<Result<_>>()?;
        assert_eq!(keys, vec![vec!["a"], vec!["b", "c"], vec!["d"]]);
        assert_eq!(spool.pending_events()?, 4);
        Ok(())
    }

    #[test]
    fn large_appends_are_split_into_api_batches() -> Result<()> {
        let dir = tempfile::tempdir().map_err(io(Path::new("tmp")))?;
        let spool = Spool::open(dir.path())?;
        let events: Vec<UsageEvent> = (0..2500).map(|i| ev(&i.to_string())).collect();
        spool.append(&events)?;
        let sizes: Vec<usize> = spool
            .pending()?
            .iter()
            .map(|p| read_batch(p).map(|b| b.events.len()))
            .collect::<Result<_>>()?;
        assert_eq!(sizes, vec![1000, 1000, 500]);
        Ok(())
    }

    #[test]
    fn keys_name_what_was_measured() {
        let t = DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default();
        let a = UsageEvent::traffic("acme", "node-1", "prod", "stream", t, 10);
        let b = UsageEvent::traffic("acme", "node-1", "prod", "stream", t, 10);
        assert_eq!(a.idempotency_key, b.idempotency_key);
        assert_ne!(
            a.idempotency_key,
            UsageEvent::traffic("acme", "node-2", "prod", "stream", t, 10).idempotency_key
        );
        assert_eq!(
            UsageEvent::mic_issued("acme", "0a1b", t).idempotency_key,
            "mic:0a1b"
        );
        assert_eq!(
            UsageEvent::cluster_hours("acme", "gpu", t, 1).idempotency_key,
            "fabric:gpu:1767225600"
        );
    }
}
