//! The crate's error type.

use std::path::PathBuf;

use nexus_firmware::BundleError;

use crate::nic::{Bank, Stage};

/// Everything the agent can fail at. Variants name the operation that failed and, for flashing,
/// whether the active bank was touched (it never is before `Switch`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The bundle was refused before anything was written: bad signature, unknown key, wrong
    /// device, incompatible agent, malformed or truncated.
    #[error("bundle refused, nothing written: {0}")]
    Refused(#[from] BundleError),
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state or fixture file is not the JSON we expect.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The NIC reported a write/read failure (injected in the simulator).
    #[error("NIC {nic}: {detail} (active bank unchanged)")]
    Nic {
        /// NIC id.
        nic: String,
        /// What failed.
        detail: String,
    },
    /// Simulated power loss: the NIC must be re-opened ("rebooted") and recovered.
    #[error("power lost at stage {0:?}; re-open the NIC to reboot and recover")]
    PowerLoss(Stage),
    /// The image read back from the inactive bank does not hash to the bundle's digest.
    #[error(
        "read-back of bank {bank} failed: expected sha256 {expected}, read {actual}; image discarded, active bank unchanged"
    )]
    ReadBackMismatch {
        /// Bank written.
        bank: Bank,
        /// Digest of the bundle payload.
        expected: String,
        /// Digest of what the bank holds.
        actual: String,
    },
    /// A previous update is unfinished; recover first (the agent does this on start).
    #[error("NIC {0} has an unconfirmed update pending; run recovery before flashing again")]
    UpdatePending(String),
    /// Neither bank boots. The flash procedure is designed never to reach this.
    #[error("NIC {0} has no bootable bank")]
    NoBootableBank(String),
    /// A NIC with this id was not found.
    #[error("no NIC {0:?}")]
    NotFound(String),
    /// Running `devlink` failed.
    #[error("devlink {args}: {detail}")]
    Devlink {
        /// Arguments passed.
        args: String,
        /// Exit status and stderr, or the spawn error.
        detail: String,
    },
    /// `devlink -j` printed JSON we cannot read.
    #[error("unexpected devlink JSON: {0}")]
    DevlinkJson(serde_json::Error),
    /// A Kubernetes API call failed (kube mode).
    #[error("kubernetes API: {0}")]
    Kube(kube::Error),
}

impl AgentError {
    /// Stable label for a `flash_failures{error}` counter.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Refused(e) => e.metric_label(),
            Self::Io { .. } => "io",
            Self::Json { .. } => "json",
            Self::Nic { .. } => "nic",
            Self::PowerLoss(_) => "power_loss",
            Self::ReadBackMismatch { .. } => "read_back_mismatch",
            Self::UpdatePending(_) => "update_pending",
            Self::NoBootableBank(_) => "no_bootable_bank",
            Self::NotFound(_) => "not_found",
            Self::Devlink { .. } => "devlink",
            Self::DevlinkJson(_) => "devlink_json",
            Self::Kube(_) => "kube",
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
