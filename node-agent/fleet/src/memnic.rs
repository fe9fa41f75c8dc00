//! An in-memory NIC with two flash banks, with the A/B semantics of the node agent's simulated
//! NIC (write the inactive bank, switch, health-check, fall back on failure) and a scaled-down
//! flash time. Its state lives behind an `Arc`, so a test can "kill" the agent mid-flash and
//! hand the same NIC to a new agent, as a reboot would.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nexus_fleet_api::v1::{Bank, BankInfo, FirmwareTarget, FlashOutcome, Nic};
use sha2::{Digest, Sha256};

use crate::{FlashOutput, FlashTarget, ProgressFn};

/// One bank's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BankImage {
    /// Firmware version ("" when empty).
    pub version: String,
    /// sha256 of the image.
    pub sha256: String,
    /// The image is complete and boots.
    pub bootable: bool,
}

/// The NIC's persistent state (what survives an agent crash).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemNicState {
    /// 0 = bank A, 1 = bank B.
    pub active: usize,
    /// Banks A and B.
    pub banks: [BankImage; 2],
    /// Flashes started (writes and switches).
    pub flashes: u32,
    /// A flash is under way (a test "kills" the agent by aborting it: this then stays set, like
    /// a half-written bank; the next agent's start-up clears it).
    pub busy: bool,
}

/// Fault injection.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Flashing one of these versions writes fine but fails its health check.
    pub fail_versions: Vec<String>,
}

/// An in-memory A/B NIC.
#[derive(Clone, Debug)]
pub struct MemNic {
    /// PCI address.
    pub pci_address: String,
    state: Arc<Mutex<MemNicState>>,
    faults: Arc<Mutex<Faults>>,
    flash_time: Duration,
}

/// Vendor reported by [`MemNic`].
pub const VENDOR: &str = "nexus-sim";
/// Model reported by [`MemNic`].
pub const MODEL: &str = "SimNIC-2";
/// PCI vendor ID reported by [`MemNic`].
pub const PCI_VENDOR_ID: &str = "1d0f";
/// PCI device ID reported by [`MemNic`].
pub const PCI_DEVICE_ID: &str = "efa1";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another holder panicked; the state itself is always consistent
    // (every update is a single assignment), so keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemNic {
    /// A NIC running `version` from bank A (bank B empty); a full flash takes `flash_time`.
    pub fn new(version: &str, flash_time: Duration) -> Self {
        let img = BankImage {
            version: version.into(),
            sha256: hex::encode(Sha256::digest(version.as_bytes())),
            bootable: true,
        };
        Self {
            pci_address: "0000:3b:00.0".into(),
            state: Arc::new(Mutex::new(MemNicState {
                active: 0,
                banks: [img, BankImage::default()],
                flashes: 0,
                busy: false,
            })),
            faults: Arc::new(Mutex::new(Faults::default())),
            flash_time,
        }
    }

    /// Sets the faults.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.faults) = faults;
    }

    /// A copy of the persistent state.
    pub fn snapshot(&self) -> MemNicState {
        lock(&self.state).clone()
    }

    /// Power-on after a crash: an interrupted write leaves a partial, unbootable image in the
    /// inactive bank; the NIC boots its active bank (which was never touched).
    pub fn power_on(&self) {
        let mut s = lock(&self.state);
        if s.busy {
            s.busy = false;
            let inactive = 1 - s.active;
            s.banks[inactive].bootable = false;
        }
    }

    /// Version running now.
    pub fn running(&self) -> String {
        let s = lock(&self.state);
        s.banks[s.active].version.clone()
    }

    fn bank(i: usize) -> Bank {
        if i == 0 { Bank::A } else { Bank::B }
    }
}

#[async_trait]
impl FlashTarget for MemNic {
    fn inventory(&self) -> Vec<Nic> {
        let s = lock(&self.state);
        vec![Nic {
            pci_address: self.pci_address.clone(),
            vendor: VENDOR.into(),
            model: MODEL.into(),
            pci_vendor_id: PCI_VENDOR_ID.into(),
            pci_device_id: PCI_DEVICE_ID.into(),
            running_firmware: s.banks[s.active].version.clone(),
            active_bank: Self::bank(s.active) as i32,
            banks: s
                .banks
                .iter()
                .enumerate()
                .map(|(i, b)| BankInfo {
                    bank: Self::bank(i) as i32,
                    version: b.version.clone(),
                    sha256: b.sha256.clone(),
                    bootable: b.bootable,
                })
                .collect(),
        }]
    }

    async fn apply(&self, fw: &FirmwareTarget, progress: &ProgressFn) -> FlashOutput {
        let (active, inactive_img) = {
            let s = lock(&self.state);
            (s.active, s.banks[1 - s.active].clone())
        };
        let inactive = 1 - active;
        if self.running() == fw.version {
            return FlashOutput::ok("None");
        }
        if fw.bundle.is_empty() {
            // Rollback: an A/B switch to the image already in the inactive bank.
            if inactive_img.version == fw.version && inactive_img.bootable {
                {
                    let mut s = lock(&self.state);
                    s.flashes += 1;
                    s.busy = true;
                }
                progress("Switch", 0, 0);
                tokio::time::sleep(self.flash_time / 4).await;
                let mut s = lock(&self.state);
                s.active = inactive;
                s.busy = false;
                return FlashOutput::ok("Switch");
            }
            return FlashOutput::err(
                FlashOutcome::Refused,
                "Verify",
                format!(
                    "no bundle sent and the inactive bank does not hold {}",
                    fw.version
                ),
            );
        }
        progress("Verify", 0, fw.bundle.len() as u64);
        let digest = hex::encode(Sha256::digest(&fw.bundle));
        if digest != fw.sha256 {
            return FlashOutput::err(
                FlashOutcome::Refused,
                "Verify",
                format!("bundle sha256 {digest} does not match {}", fw.sha256),
            );
        }
        {
            let mut s = lock(&self.state);
            s.flashes += 1;
            s.busy = true;
            // From here until the switch, the inactive bank holds a partial image.
            s.banks[inactive] = BankImage {
                version: fw.version.clone(),
                sha256: digest.clone(),
                bootable: false,
            };
        }
        let total = fw.bundle.len() as u64;
        const STEPS: u32 = 4;
        for step in 1..=STEPS {
            tokio::time::sleep(self.flash_time / STEPS).await;
            progress("Write", total * u64::from(step) / u64::from(STEPS), total);
        }
        let fails = lock(&self.faults).fail_versions.contains(&fw.version);
        if fails {
            lock(&self.state).busy = false;
            // The trial boot of the new bank fails its health check: fall back to the old bank.
            return FlashOutput::err(
                FlashOutcome::RolledBack,
                "HealthCheck",
                format!(
                    "{} failed its health check; booted the previous bank",
                    fw.version
                ),
            );
        }
        let mut s = lock(&self.state);
        s.banks[inactive].bootable = true;
        s.active = inactive;
        s.busy = false;
        progress("HealthCheck", total, total);
        FlashOutput::ok("HealthCheck")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw(version: &str, bundle: &[u8]) -> FirmwareTarget {
        FirmwareTarget {
            version: version.into(),
            bundle: bundle.to_vec(),
            sha256: hex::encode(Sha256::digest(bundle)),
            ..FirmwareTarget::default()
        }
    }

    #[tokio::test]
    async fn flash_switch_back_and_faults() {
        let nic = MemNic::new("1.0", Duration::from_millis(4));
        let out = nic.apply(&fw("2.0", b"two"), &|_, _, _| {}).await;
        assert_eq!(out.outcome, FlashOutcome::Succeeded);
        assert_eq!(nic.running(), "2.0");
        // Rollback without a bundle: A/B switch.
        let mut back = fw("1.0", b"");
        back.bundle.clear();
        assert_eq!(
            nic.apply(&back, &|_, _, _| {}).await.outcome,
            FlashOutcome::Succeeded
        );
        assert_eq!(nic.running(), "1.0");
        // Bad digest: refused before any write.
        let before = nic.snapshot();
        let mut bad = fw("3.0", b"three");
        bad.sha256 = "00".repeat(32);
        assert_eq!(
            nic.apply(&bad, &|_, _, _| {}).await.outcome,
            FlashOutcome::Refused
        );
        assert_eq!(nic.snapshot(), before, "nothing written");
        // Health-check failure: still boots 1.0.
        nic.set_faults(Faults {
            fail_versions: vec!["3.0".into()],
        });
        let out = nic.apply(&fw("3.0", b"three"), &|_, _, _| {}).await;
        assert_eq!(out.outcome, FlashOutcome::RolledBack);
        assert_eq!(nic.running(), "1.0");
        let s = nic.snapshot();
        assert!(s.banks[s.active].bootable);
    }
}
