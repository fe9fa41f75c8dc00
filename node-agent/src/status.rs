//! The agent's JSON status file: inventory, last operation per NIC, and the flash in progress.
//!
//! Written atomically on every change so a reader (the node's DaemonSet probe, `kubectl exec cat`,
//! a future status reporter) never sees half a file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::AgentError;
use crate::flash::{FlashReport, RecoveryReport};
use crate::fsutil::write_json_atomic;
use crate::nic::{NicInfo, Progress};

/// One finished operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operation {
    /// Start-up recovery.
    Recovery {
        /// RFC 3339 time.
        at: String,
        /// What it found.
        report: RecoveryReport,
    },
    /// A flash that reached the health check.
    Flash {
        /// RFC 3339 time.
        at: String,
        /// Result.
        report: FlashReport,
    },
    /// A flash that was refused or aborted (the active bank is unchanged).
    FlashFailed {
        /// RFC 3339 time.
        at: String,
        /// NIC id.
        nic: String,
        /// Metric label of the error.
        reason: String,
        /// Human-readable error.
        error: String,
    },
}

/// A flash in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    /// NIC id.
    pub nic: String,
    /// Latest progress.
    pub progress: Progress,
}

/// Contents of the status file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Agent version.
    pub agent_version: String,
    /// Backend in use.
    pub driver: String,
    /// RFC 3339 time of the last write.
    pub updated_at: String,
    /// Discovered NICs.
    pub nics: Vec<NicInfo>,
    /// Finished operations, oldest first (the last 50 are kept).
    pub operations: Vec<Operation>,
    /// Flash in progress, if any.
    pub in_progress: Option<InProgress>,
}

/// Keeps [`AgentStatus`] and mirrors it to a file (or nowhere).
#[derive(Debug)]
pub struct StatusFile {
    path: Option<PathBuf>,
    status: AgentStatus,
}

const KEEP: usize = 50;

impl StatusFile {
    /// A status mirrored to `path` when given.
    pub fn new(path: Option<&Path>, driver: &str) -> Self {
        Self {
            path: path.map(Path::to_owned),
            status: AgentStatus {
                agent_version: crate::agent_version().to_string(),
                driver: driver.to_owned(),
                ..AgentStatus::default()
            },
        }
    }

    /// Like [`StatusFile::new`], but keeps the operation history of an existing file at `path`
    /// (an unreadable or foreign file is replaced, with a warning).
    pub fn open(path: Option<&Path>, driver: &str) -> Self {
        let mut sf = Self::new(path, driver);
        if let Some(p) = path.filter(|p| p.exists()) {
            match crate::fsutil::read_json::<AgentStatus>(p) {
                Ok(old) => {
                    sf.status.operations = old.operations;
                    sf.status.nics = old.nics;
                }
                Err(e) => tracing::warn!(error = %e, "replacing unreadable status file"),
            }
        }
        sf
    }

    /// The current status.
    pub fn status(&self) -> &AgentStatus {
        &self.status
    }

    /// Applies `f` and writes the file.
    pub fn update(&mut self, f: impl FnOnce(&mut AgentStatus)) -> Result<(), AgentError> {
        f(&mut self.status);
        self.status.updated_at = crate::flash_now();
        let excess = self.status.operations.len().saturating_sub(KEEP);
        self.status.operations.drain(..excess);
        match &self.path {
            Some(p) => write_json_atomic(p, &self.status),
            None => Ok(()),
        }
    }

    /// Records a finished operation and clears the in-progress marker.
    pub fn record(&mut self, op: Operation) -> Result<(), AgentError> {
        self.update(|s| {
            s.operations.push(op);
            s.in_progress = None;
        })
    }
}
