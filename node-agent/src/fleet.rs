//! `nexus-agent --controller URL`: the fleet push protocol (`nexus.fleet.v1`) over this agent's
//! NICs. [`SimFleetTarget`] implements `nexus_fleet_agent::FlashTarget` over simulated NICs
//! (one per subdirectory of `--sim-dir`, or `--sim-dir` itself) with the real flash state
//! machine: signature and compatibility checks before any write, A/B write, read-back, trial
//! boot, fall back on failure; a rollback without a bundle is an A/B switch to the inactive bank.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use nexus_firmware::bundle::TrustStore;
use nexus_fleet_agent::{FlashOutput, FlashTarget, ProgressFn};
use nexus_fleet_api::v1 as pb;
use sha2::{Digest, Sha256};

use crate::nic::{Bank, BankContent, BankedNic, Stage};
use crate::sim::{SimDriver, SimNic, SimOptions};
use crate::{AgentError, FlashOutcome, agent_version, flash_bundle, recover};

/// Simulated NICs as a fleet flash target.
#[derive(Debug, Clone)]
pub struct SimFleetTarget {
    root: PathBuf,
    trust: Arc<TrustStore>,
    bytes_per_sec: Option<u64>,
}

fn vendor_name(id: u16) -> &'static str {
    match id {
        0x15b3 => "nvidia",
        0x8086 => "intel",
        0x1dd8 => "amd-pensando",
        _ => "sim",
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Verify => "Verify",
        Stage::Write => "Write",
        Stage::ReadBack => "ReadBack",
        Stage::Switch => "Switch",
        Stage::HealthCheck => "HealthCheck",
        Stage::Done => "Done",
    }
}

fn pb_bank(b: Bank) -> pb::Bank {
    match b {
        Bank::A => pb::Bank::A,
        Bank::B => pb::Bank::B,
    }
}

impl SimFleetTarget {
    /// NICs under `root`, bundles checked against `trust`.
    pub fn new(root: impl Into<PathBuf>, trust: TrustStore, bytes_per_sec: Option<u64>) -> Self {
        Self {
            root: root.into(),
            trust: Arc::new(trust),
            bytes_per_sec,
        }
    }

    /// The trust store bundles are checked against.
    pub fn trust(&self) -> &TrustStore {
        &self.trust
    }

    fn dirs(&self) -> Result<Vec<PathBuf>, AgentError> {
        SimDriver::new(&self.root).nic_dirs()
    }

    /// A stable synthetic PCI address for the `i`-th simulated NIC.
    pub fn pci_address(i: usize) -> String {
        format!("0000:{:02x}:00.0", 0x3b + (i % 0xc0))
    }

    /// Powers every NIC on and finishes or undoes any interrupted update (what the agent does
    /// once at start).
    pub fn recover_all(&self) -> Result<(), AgentError> {
        for dir in self.dirs()? {
            let mut nic = SimNic::open(&dir, SimOptions::default())?;
            recover(&mut nic)?;
        }
        Ok(())
    }

    fn nic(i: usize, dir: &Path) -> Result<pb::Nic, AgentError> {
        let s = SimNic::peek(dir)?;
        let banks = &s.banks;
        let bank_info = |b: Bank| {
            let c = banks.bank(b);
            let img = c.image();
            pb::BankInfo {
                bank: pb_bank(b) as i32,
                version: img.map(|i| i.version.clone()).unwrap_or_default(),
                sha256: img.map(|i| i.sha256.clone()).unwrap_or_default(),
                bootable: matches!(c, BankContent::Valid(_)),
            }
        };
        let running = match banks.bank(banks.active) {
            BankContent::Valid(img) => img.version.clone(),
            _ => String::new(),
        };
        Ok(pb::Nic {
            pci_address: Self::pci_address(i),
            vendor: vendor_name(s.pci_vendor_id).into(),
            model: "sim".into(),
            pci_vendor_id: format!("{:04x}", s.pci_vendor_id),
            pci_device_id: format!("{:04x}", s.pci_device_id),
            running_firmware: running,
            active_bank: pb_bank(banks.active) as i32,
            banks: vec![bank_info(Bank::A), bank_info(Bank::B)],
        })
    }

    fn apply_blocking(
        &self,
        fw: &pb::FirmwareTarget,
        progress: &mut dyn FnMut(&crate::Progress),
    ) -> FlashOutput {
        let dirs = match self.dirs() {
            Ok(d) => d,
            Err(e) => return FlashOutput::err(pb::FlashOutcome::Failed, "Verify", e.to_string()),
        };
        if !fw.bundle.is_empty() {
            let digest = hex::encode(Sha256::digest(&fw.bundle));
            if digest != fw.sha256 {
                return FlashOutput::err(
                    pb::FlashOutcome::Refused,
                    "Verify",
                    format!("bundle sha256 {digest} does not match {}", fw.sha256),
                );
            }
        }
        let mut stage = "None";
        for (i, dir) in dirs.iter().enumerate() {
            if !fw.pci_addresses.is_empty() && !fw.pci_addresses.contains(&Self::pci_address(i)) {
                continue;
            }
            let opts = SimOptions {
                bytes_per_sec: self.bytes_per_sec,
                faults: Default::default(),
            };
            let result = (|| -> Result<Option<FlashOutput>, AgentError> {
                let mut nic = SimNic::open(dir, opts)?;
                recover(&mut nic)?;
                let state = nic.state();
                let running = state.bank(state.active).image().map(|i| i.version.clone());
                if running.as_deref() == Some(fw.version.as_str()) {
                    return Ok(None);
                }
                if fw.bundle.is_empty() {
                    let other = state.active.other();
                    let holds = matches!(state.bank(other), BankContent::Valid(img) if img.version == fw.version);
                    if !holds {
                        return Ok(Some(FlashOutput::err(
                            pb::FlashOutcome::Refused,
                            "Verify",
                            format!(
                                "no bundle sent and the inactive bank does not hold {}",
                                fw.version
                            ),
                        )));
                    }
                    nic.switch_to_trial(other)?;
                    let boot = nic.reboot()?;
                    if boot.booted == Some(other) {
                        nic.confirm()?;
                        return Ok(None);
                    }
                    return Ok(Some(FlashOutput::err(
                        pb::FlashOutcome::RolledBack,
                        "HealthCheck",
                        format!("bank {other} did not boot"),
                    )));
                }
                let report = flash_bundle(
                    &mut nic,
                    &fw.bundle,
                    &self.trust,
                    &agent_version(),
                    progress,
                )?;
                Ok(match report.outcome {
                    FlashOutcome::Updated => None,
                    FlashOutcome::RolledBack { reason } => Some(FlashOutput::err(
                        pb::FlashOutcome::RolledBack,
                        "HealthCheck",
                        reason,
                    )),
                })
            })();
            match result {
                Ok(None) => stage = "HealthCheck",
                Ok(Some(fail)) => return fail,
                Err(AgentError::Refused(e)) => {
                    return FlashOutput::err(pb::FlashOutcome::Refused, "Verify", e.to_string());
                }
                Err(e) => {
                    return FlashOutput::err(pb::FlashOutcome::Failed, "Write", e.to_string());
                }
            }
        }
        FlashOutput::ok(stage)
    }
}

#[async_trait]
impl FlashTarget for SimFleetTarget {
    fn inventory(&self) -> Vec<pb::Nic> {
        let Ok(dirs) = self.dirs() else {
            return Vec::new();
        };
        dirs.iter()
            .enumerate()
            .filter_map(|(i, d)| match Self::nic(i, d) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot read simulated NIC");
                    None
                }
            })
            .collect()
    }

    async fn apply(&self, fw: &pb::FirmwareTarget, progress: &ProgressFn) -> FlashOutput {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::Progress>();
        let this = self.clone();
        let fw = fw.clone();
        let task = tokio::task::spawn_blocking(move || {
            this.apply_blocking(&fw, &mut |p| {
                let _ = tx.send(*p);
            })
        });
        while let Some(p) = rx.recv().await {
            progress(stage_name(p.stage), p.bytes_done, p.bytes_total);
        }
        match task.await {
            Ok(out) => out,
            Err(e) => FlashOutput::err(pb::FlashOutcome::Failed, "Write", e.to_string()),
        }
    }
}
