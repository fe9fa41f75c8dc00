//! Driver-facing types: the discovery trait, what a NIC reports, and the A/B-bank operations the
//! flash state machine drives.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::AgentError;

/// One of the two flash banks of an A/B NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bank {
    /// Bank A.
    A,
    /// Bank B.
    B,
}

impl Bank {
    /// The other bank.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }
}

impl fmt::Display for Bank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "A",
            Self::B => "B",
        })
    }
}

/// Stages of a flash, in order; reported with progress and recorded in the journal so that
/// recovery after a crash knows how far an update got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Checking signature and compatibility (nothing written yet).
    Verify,
    /// Writing the inactive bank.
    Write,
    /// Reading the inactive bank back and hashing it.
    ReadBack,
    /// Pointing the boot loader at the new bank (trial boot).
    Switch,
    /// Rebooting into the new bank and checking it came up.
    HealthCheck,
    /// Finished (updated or rolled back).
    Done,
}

/// A progress event: which stage, and for `Write`/`ReadBack` how many bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Current stage.
    pub stage: Stage,
    /// Bytes done in this stage.
    pub bytes_done: u64,
    /// Bytes to do in this stage (0 when the stage is not byte-oriented).
    pub bytes_total: u64,
}

/// Firmware versions as devlink reports them (`fixed` = board facts, `running`, `stored` = what
/// runs after the next reset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// Board identity (PSID, board id).
    pub fixed: BTreeMap<String, String>,
    /// Currently running.
    pub running: BTreeMap<String, String>,
    /// Flashed, active after reset.
    pub stored: BTreeMap<String, String>,
}

/// What discovery learns about a NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    /// Stable handle: `pci/0000:3b:00.0` for devlink, `sim:<dir>` for the simulator.
    pub id: String,
    /// Kernel driver (`mlx5_core`, `ice`) or `sim`.
    pub driver: String,
    /// PCI vendor id, when known.
    pub pci_vendor_id: Option<u16>,
    /// PCI device id, when known.
    pub pci_device_id: Option<u16>,
    /// Serial number, when reported.
    pub serial: Option<String>,
    /// Firmware versions.
    pub versions: Versions,
}

/// A source of NICs (`devlink` on real hosts, the on-disk simulator in tests and demos).
pub trait NicDriver {
    /// Short backend name for logs and status.
    fn name(&self) -> &'static str;
    /// Lists the NICs this backend can see.
    fn discover(&mut self) -> Result<Vec<NicInfo>, AgentError>;
}

/// The image a bank holds, as recorded by the NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Firmware version.
    pub version: String,
    /// Lower-case hex SHA-256 of the image.
    pub sha256: String,
    /// Image size in bytes.
    pub size: u64,
}

/// Lifecycle of a bank's content. Only `Valid` banks are ever booted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BankContent {
    /// Never written, or discarded.
    Empty,
    /// A write started and did not finish (power loss or error leaves it here).
    Writing(ImageInfo),
    /// Fully written, not yet read back.
    Written(ImageInfo),
    /// Read back and digest-checked: bootable.
    Valid(ImageInfo),
}

impl BankContent {
    /// The image, whatever its state.
    pub fn image(&self) -> Option<&ImageInfo> {
        match self {
            Self::Empty => None,
            Self::Writing(i) | Self::Written(i) | Self::Valid(i) => Some(i),
        }
    }
}

/// An unconfirmed switch: the boot loader tries `bank` and falls back to `previous` if it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// Bank being tried.
    pub bank: Bank,
    /// Bank to fall back to.
    pub previous: Bank,
    /// Boot attempts left before the boot loader falls back without trying.
    pub attempts_left: u8,
}

/// What the last power-on did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    /// Bank that booted, `None` if nothing booted.
    pub booted: Option<Bank>,
    /// Whether `booted` is an unconfirmed trial.
    pub trial: bool,
    /// Bank that failed to boot and why, if the boot loader fell back.
    pub fell_back_from: Option<(Bank, String)>,
}

/// A snapshot of an A/B NIC's boot state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankState {
    /// Bank the boot loader boots.
    pub active: Bank,
    /// Pending trial, if any.
    pub trial: Option<Trial>,
    /// Content of bank A.
    pub a: BankContent,
    /// Content of bank B.
    pub b: BankContent,
    /// Power-on count.
    pub boot_counter: u64,
    /// What the last power-on did.
    pub last_boot: Option<BootReport>,
}

impl BankState {
    /// Content of `bank`.
    pub fn bank(&self, bank: Bank) -> &BankContent {
        match bank {
            Bank::A => &self.a,
            Bank::B => &self.b,
        }
    }
    /// Mutable content of `bank`.
    pub fn bank_mut(&mut self, bank: Bank) -> &mut BankContent {
        match bank {
            Bank::A => &mut self.a,
            Bank::B => &mut self.b,
        }
    }
}

/// The agent's record of an update in flight, persisted at every stage so that recovery after a
/// crash or power loss can say what happened. Kept next to the NIC state (the simulator stores it
/// in its directory; a real deployment keeps it in the agent's state directory per device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Bank being written.
    pub target: Bank,
    /// Version running before the update.
    pub from_version: Option<String>,
    /// Version being installed.
    pub to_version: String,
    /// Last stage entered.
    pub stage: Stage,
    /// RFC 3339 start time.
    pub started_at: String,
}

/// Operations on a NIC with two firmware banks, used by [`crate::flash`]. Every state change is
/// durable when the method returns.
pub trait BankedNic {
    /// Stable NIC id.
    fn id(&self) -> String;
    /// PCI vendor and device id.
    fn pci_ids(&self) -> (u16, u16);
    /// Current boot state.
    fn state(&self) -> BankState;
    /// Marks `bank` as being written with `image` (invalidating what it held).
    fn begin_write(&mut self, bank: Bank, image: &ImageInfo) -> Result<(), AgentError>;
    /// Writes `data` at `offset` in `bank`.
    fn write_chunk(&mut self, bank: Bank, offset: u64, data: &[u8]) -> Result<(), AgentError>;
    /// Flushes `bank` and records it as fully written.
    fn finish_write(&mut self, bank: Bank) -> Result<(), AgentError>;
    /// Reads from `bank` at `offset`; returns bytes read (0 at end).
    fn read_chunk(&mut self, bank: Bank, offset: u64, buf: &mut [u8]) -> Result<usize, AgentError>;
    /// Records `bank` as verified and bootable.
    fn mark_valid(&mut self, bank: Bank) -> Result<(), AgentError>;
    /// Discards `bank`'s content (it will never be booted).
    fn invalidate(&mut self, bank: Bank) -> Result<(), AgentError>;
    /// Makes `bank` active for one trial boot, falling back to the current bank if it fails.
    fn switch_to_trial(&mut self, bank: Bank) -> Result<(), AgentError>;
    /// Reboots the NIC (runs the boot loader) and reports what booted.
    fn reboot(&mut self) -> Result<BootReport, AgentError>;
    /// Makes the booted trial permanent.
    fn confirm(&mut self) -> Result<(), AgentError>;
    /// The agent's journal for this NIC.
    fn journal(&self) -> Result<Option<Journal>, AgentError>;
    /// Replaces (or with `None` clears) the journal, durably.
    fn set_journal(&mut self, journal: Option<&Journal>) -> Result<(), AgentError>;
}
