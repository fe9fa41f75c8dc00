//! Nexus node agent: finds the node's NICs and flashes signed firmware onto them without ever
//! leaving a NIC unbootable.
//!
//! - [`nic`]: the driver seams — [`NicDriver`] for discovery, [`BankedNic`] for A/B flashing.
//! - [`devlink`]: the real Linux backend (`devlink -j dev info`, `devlink dev flash`).
//! - [`sim`]: a NIC simulated in a directory, with fault injection, for tests and `nexctl up`.
//! - [`flash`]: the flash state machine and start-up recovery, generic over [`BankedNic`].
//! - [`status`]: the JSON status file; [`serve`]: the optional `/status` + `/healthz` endpoint.
//! - [`fleet`]: `--controller` mode, the fleet push protocol over the simulated NICs.
//! - [`kube_mode`]: `nexus-agent kube`, the agent's half of its `NexusNode` (status by SSA).
//! - [`supervise`]: the node's `nexus-dataplane` process, started, restarted with backoff and
//!   stopped with the Fabric's dataplane configuration.
//! - [`cli`]: clap argument structs and `run` functions shared with `nexctl`.

pub mod cli;
pub mod devlink;
pub mod enroll;
mod error;
pub mod flash;
pub mod fleet;
mod fsutil;
pub mod kube_mode;
pub mod nic;
pub mod routing;
pub mod serve;
pub mod sim;
pub mod status;
pub mod supervise;

use std::path::Path;

pub use error::AgentError;
pub use flash::{
    FlashOutcome, FlashReport, RecoveryOutcome, RecoveryReport, flash_bundle, recover,
};
use nexus_firmware::BundleError;
use nexus_firmware::bundle::{FIXED_HEADER_LEN, MAX_MANIFEST_LEN, MAX_PAYLOAD_LEN, TrustStore};
pub use nic::{Bank, BankedNic, NicDriver, NicInfo, Progress, Stage};
use semver::Version;
use serde::{Deserialize, Serialize};
use sim::{SimNic, SimOptions};

/// This agent's version, matched against a bundle's `agent_version` requirement.
pub fn agent_version() -> Version {
    // CARGO_PKG_VERSION is always valid semver (cargo enforces it).
    Version::parse(env!("CARGO_PKG_VERSION")).unwrap_or_else(|_| Version::new(0, 0, 0))
}

pub(crate) fn flash_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The size of the largest valid bundle; anything longer is refused before it is read whole.
pub fn max_bundle_len() -> u64 {
    FIXED_HEADER_LEN as u64 + u64::from(MAX_MANIFEST_LEN) + MAX_PAYLOAD_LEN + 2 + 1 + 64 + 64
}

/// Reads a bundle file, refusing files larger than any valid bundle before reading them.
pub fn read_bundle_file(path: &Path) -> Result<Vec<u8>, AgentError> {
    let max = max_bundle_len();
    let len = std::fs::metadata(path)
        .map_err(AgentError::io("stat", path))?
        .len();
    if len > max {
        return Err(BundleError::Malformed("file is larger than the maximum bundle size").into());
    }
    std::fs::read(path).map_err(AgentError::io("read", path))
}

/// Reads a trust store JSON file.
pub fn read_trust_store(path: &Path) -> Result<TrustStore, AgentError> {
    let bytes = std::fs::read(path).map_err(AgentError::io("read", path))?;
    Ok(TrustStore::from_json(&bytes)?)
}

/// What [`flash_sim_nic`] did: the recovery run at power-on, then the flash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimFlashResult {
    /// Start-up recovery (usually `Clean`).
    pub recovery: RecoveryReport,
    /// The flash.
    pub flash: FlashReport,
}

/// Flashes one simulated NIC from a bundle file: powers it on, recovers any interrupted update,
/// then verifies and flashes, reporting progress. This is what `nexctl agent flash --sim` calls.
pub fn flash_sim_nic(
    sim_dir: &Path,
    bundle_path: &Path,
    trust: &TrustStore,
    opts: SimOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<SimFlashResult, AgentError> {
    let bytes = read_bundle_file(bundle_path)?;
    let mut nic = SimNic::open(sim_dir, opts)?;
    let recovery = recover(&mut nic)?;
    let flash = flash_bundle(&mut nic, &bytes, trust, &agent_version(), progress)?;
    Ok(SimFlashResult { recovery, flash })
}
