//! The real Linux backend: NIC inventory and flashing through `devlink`.
//!
//! `devlink -j dev info` lists every devlink device with its driver, serial and firmware versions
//! (`fixed`, `running`, `stored`). PCI vendor/device ids are not in that output, so they are read
//! from sysfs (`/sys/bus/pci/devices/<addr>/{vendor,device}`). `devlink dev flash <dev> file
//! <name>` asks the driver to flash a file from the kernel firmware search path (`/lib/firmware`);
//! the device then does its own A/B handling and activates the image on the next reset, so the
//! fine-grained bank state machine in [`crate::flash`] applies to the simulator and to NICs that
//! expose banks, while here we verify first, flash, and re-read `stored` versions.
//!
//! Commands go through [`CommandRunner`] so the parser and the flash sequence are tested against
//! recorded output without root or hardware.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use nexus_firmware::bundle::VerifiedBundle;
use semver::Version;
use serde::Deserialize;

use crate::AgentError;
use crate::nic::{NicDriver, NicInfo, Versions};

/// Runs a program and returns its stdout, or an error with the exit status and stderr.
pub trait CommandRunner {
    /// Runs `program args...`.
    fn run(&mut self, program: &str, args: &[&str]) -> Result<Vec<u8>, AgentError>;
}

/// Runs commands for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&mut self, program: &str, args: &[&str]) -> Result<Vec<u8>, AgentError> {
        let err = |detail: String| AgentError::Devlink {
            args: args.join(" "),
            detail,
        };
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }
}

#[derive(Debug, Deserialize)]
struct DevInfoOutput {
    info: BTreeMap<String, DevInfoEntry>,
}

#[derive(Debug, Deserialize)]
struct DevInfoEntry {
    driver: Option<String>,
    serial_number: Option<String>,
    #[serde(rename = "board.serial_number")]
    board_serial_number: Option<String>,
    #[serde(default)]
    versions: RawVersions,
}

#[derive(Debug, Default, Deserialize)]
struct RawVersions {
    #[serde(default)]
    fixed: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    running: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    stored: BTreeMap<String, serde_json::Value>,
}

fn strings(m: BTreeMap<String, serde_json::Value>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// Parses `devlink -j dev info` output. PCI ids are left empty (they come from sysfs).
pub fn parse_dev_info(json: &[u8]) -> Result<Vec<NicInfo>, AgentError> {
    let out: DevInfoOutput = serde_json::from_slice(json).map_err(AgentError::DevlinkJson)?;
    Ok(out
        .info
        .into_iter()
        .map(|(id, e)| NicInfo {
            id,
            driver: e.driver.unwrap_or_default(),
            pci_vendor_id: None,
            pci_device_id: None,
            serial: e.board_serial_number.or(e.serial_number),
            versions: Versions {
                fixed: strings(e.versions.fixed),
                running: strings(e.versions.running),
                stored: strings(e.versions.stored),
            },
        })
        .collect())
}

/// Parses a sysfs id file such as `0x15b3\n`.
fn parse_sysfs_id(s: &str) -> Option<u16> {
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// The devlink backend.
#[derive(Debug)]
pub struct DevlinkDriver<R: CommandRunner = SystemRunner> {
    runner: R,
    /// Usually `/sys`; a fixture tree in tests.
    sysfs_root: PathBuf,
    /// Where flash files are staged; must be on the kernel's firmware search path.
    firmware_dir: PathBuf,
}

impl DevlinkDriver<SystemRunner> {
    /// The real thing: `/sys` and `/lib/firmware`.
    pub fn system() -> Self {
        Self::new(SystemRunner, "/sys", "/lib/firmware")
    }
}

impl<R: CommandRunner> DevlinkDriver<R> {
    /// A driver with an explicit runner and paths.
    pub fn new(
        runner: R,
        sysfs_root: impl Into<PathBuf>,
        firmware_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            runner,
            sysfs_root: sysfs_root.into(),
            firmware_dir: firmware_dir.into(),
        }
    }

    fn pci_ids(&self, handle: &str) -> (Option<u16>, Option<u16>) {
        let Some(addr) = handle.strip_prefix("pci/") else {
            return (None, None);
        };
        let dev = self.sysfs_root.join("bus/pci/devices").join(addr);
        let read = |f: &str| {
            std::fs::read_to_string(dev.join(f))
                .ok()
                .and_then(|s| parse_sysfs_id(&s))
        };
        (read("vendor"), read("device"))
    }

    /// Verifies compatibility, stages the payload under the firmware directory, runs
    /// `devlink dev flash`, and returns the device's info afterwards (`stored` shows the new image,
    /// active after the next reset).
    pub fn flash(
        &mut self,
        handle: &str,
        bundle: &VerifiedBundle,
        agent_version: &Version,
    ) -> Result<NicInfo, AgentError> {
        let nic = self
            .discover()?
            .into_iter()
            .find(|n| n.id == handle)
            .ok_or_else(|| AgentError::NotFound(handle.to_owned()))?;
        let (Some(vendor), Some(device)) = (nic.pci_vendor_id, nic.pci_device_id) else {
            return Err(AgentError::NotFound(format!(
                "{handle} (no PCI ids in sysfs)"
            )));
        };
        bundle.check_compatible(vendor, device, agent_version)?;
        let rel = format!("nexus/{}.bin", hex::encode(bundle.payload_sha256()));
        let staged = self.firmware_dir.join(&rel);
        if let Some(parent) = staged.parent() {
            std::fs::create_dir_all(parent).map_err(AgentError::io("create", parent))?;
        }
        crate::fsutil::write_atomic(&staged, bundle.payload())?;
        let result = self
            .runner
            .run("devlink", &["dev", "flash", handle, "file", &rel]);
        let _ = std::fs::remove_file(&staged);
        result?;
        self.discover()?
            .into_iter()
            .find(|n| n.id == handle)
            .ok_or_else(|| AgentError::NotFound(handle.to_owned()))
    }

    /// The staging directory.
    pub fn firmware_dir(&self) -> &Path {
        &self.firmware_dir
    }
}

impl<R: CommandRunner> NicDriver for DevlinkDriver<R> {
    fn name(&self) -> &'static str {
        "devlink"
    }

    fn discover(&mut self) -> Result<Vec<NicInfo>, AgentError> {
        let out = self.runner.run("devlink", &["-j", "dev", "info"])?;
        let mut nics = parse_dev_info(&out)?;
        for nic in &mut nics {
            (nic.pci_vendor_id, nic.pci_device_id) = self.pci_ids(&nic.id);
        }
        Ok(nics)
    }
}
