//! Agent side of the fleet push protocol (`nexus.fleet.v1`).
//!
//! - [`FlashTarget`]: the seam to the node's NICs (inventory + apply a firmware target). The
//!   node agent implements it over its devlink or simulated drivers; [`memnic::MemNic`] is an
//!   in-memory NIC with A/B banks for tests and fleet simulations.
//! - [`session::Agent`]: connects, registers, applies desired states one at a time through the
//!   target, answers Ack/Nack, streams Progress and Status (the heartbeat), and reconnects with
//!   exponential backoff and jitter ([`backoff::Backoff`]).
//!
//! - [`RoutingTarget`]: the seam to the node's dataplane tables; the session programs the
//!   routing tables the controller pushes, one version at a time, and reports the version it
//!   runs (or the one refused, and why) in every Status.
//!
//! Invariant: the agent never writes a bank before the bundle's sha256 matches the desired state
//! (the target checks it), and never runs two flashes at once.

pub mod backoff;
pub mod memnic;
pub mod session;

use async_trait::async_trait;
use nexus_fleet_api::v1::{FirmwareTarget, FlashOutcome, Nic, RoutingTables};

pub use backoff::Backoff;
pub use memnic::MemNic;
pub use session::{Agent, AgentConfig};

/// What a flash came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashOutput {
    /// Outcome.
    pub outcome: FlashOutcome,
    /// Last stage reached (`Verify`, `Write`, `Switch`, `HealthCheck`, or `None` for a no-op).
    pub stage: String,
    /// Detail for humans (the Nack reason when it failed).
    pub message: String,
}

impl FlashOutput {
    /// A successful outcome.
    pub fn ok(stage: &str) -> Self {
        Self {
            outcome: FlashOutcome::Succeeded,
            stage: stage.into(),
            message: String::new(),
        }
    }

    /// An unsuccessful outcome.
    pub fn err(outcome: FlashOutcome, stage: &str, message: impl Into<String>) -> Self {
        Self {
            outcome,
            stage: stage.into(),
            message: message.into(),
        }
    }
}

/// Progress callback: stage, bytes done, bytes total.
pub type ProgressFn = dyn Fn(&str, u64, u64) + Send + Sync;

/// The node's NICs as the session sees them.
#[async_trait]
pub trait FlashTarget: Send + Sync + 'static {
    /// Current inventory: every NIC with its banks.
    fn inventory(&self) -> Vec<Nic>;

    /// Makes the selected NICs run `fw.version`: a no-op when they already do, an A/B switch when
    /// the inactive bank holds it, else verify `fw.bundle` against `fw.sha256` (refusing before
    /// any write), write the inactive bank, switch, health-check. A failed flash leaves the NIC
    /// booting its previous bank.
    async fn apply(&self, fw: &FirmwareTarget, progress: &ProgressFn) -> FlashOutput;
}

/// The node's dataplane tables as the session sees them: where the NexRoute tables the
/// controller pushes are programmed (the node agent implements it over the dataplane's
/// P4Runtime service, exactly as it would program a hardware switch).
#[async_trait]
pub trait RoutingTarget: Send + Sync + 'static {
    /// Programs `tables` as one atomic change. `Err(reason)`: refused, and the tables the
    /// dataplane ran before are still in place.
    async fn program(&self, tables: &RoutingTables) -> Result<(), String>;

    /// Whether the dataplane still runs what this agent programmed: `Some(false)` when it
    /// visibly lost it (a dataplane restarted with no pipeline and empty tables), so the agent
    /// programs its version again; `None` when it cannot tell (unreachable now; the default).
    async fn still_programmed(&self) -> Option<bool> {
        None
    }
}

/// The version the selected NICs run, if they all run the same one.
pub fn running_version(nics: &[Nic], selected: &[String]) -> Option<String> {
    let mut chosen = nics
        .iter()
        .filter(|n| selected.is_empty() || selected.contains(&n.pci_address));
    let first = chosen.next()?.running_firmware.clone();
    chosen.all(|n| n.running_firmware == first).then_some(first)
}
