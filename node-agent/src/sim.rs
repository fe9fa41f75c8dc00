//! A NIC simulated in a directory, with two flash banks and a boot loader, for tests and demos.
//!
//! Layout of the directory:
//!
//! | file           | content                                                               |
//! |----------------|-----------------------------------------------------------------------|
//! | `state.json`   | identity (PCI ids, serial) and [`BankState`]: active bank, trial, per-bank image state, boot counter, last boot |
//! | `bank_a.bin`   | bank A's raw image                                                    |
//! | `bank_b.bin`   | bank B's raw image                                                    |
//! | `journal.json` | the agent's [`Journal`] while an update is in flight                  |
//!
//! `state.json` and `journal.json` are replaced atomically (temp + rename), so a crash leaves the
//! old or the new state. Bank files are written in place like real flash; a bank is only booted if
//! `state.json` says it is `valid` *and* its bytes hash to the recorded digest (the boot loader's
//! image check), so a torn write can never be booted.
//!
//! Opening a simulated NIC powers it on: the boot loader runs, counting a boot. A pending trial is
//! tried once; if it fails (or a power loss consumed the attempt) the boot loader falls back to the
//! previous bank. Fault injection ([`Faults`]) lives in memory for one power cycle: re-open without
//! faults to model the reboot after the fault.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AgentError;
use crate::fsutil::{read_json, write_json_atomic};
use crate::nic::{
    Bank, BankContent, BankState, BankedNic, BootReport, ImageInfo, Journal, NicDriver, NicInfo,
    Stage, Trial, Versions,
};

/// Where a simulated power loss strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PowerLossPoint {
    /// After the bank was marked as being written, before the first byte.
    BeforeWrite,
    /// Halfway through the image.
    MidWrite,
    /// Image written and verified, before the boot loader is pointed at it.
    AfterWrite,
    /// Boot loader switched to the new bank, before the health check.
    AfterSwitch,
}

/// Faults to inject during one power cycle of a simulated NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Lose power at this point.
    pub power_loss: Option<PowerLossPoint>,
    /// Fail the write that reaches this byte offset.
    pub write_error_at: Option<u64>,
    /// Silently flip a bit in the second half of the image as it is written (bad flash cell).
    pub corrupt_write: bool,
    /// Make the next trial boot fail (the new image does not come up).
    pub fail_trial_boot: bool,
}

/// How to run a simulated NIC.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Flash write speed; `None` for as fast as the disk allows (tests).
    pub bytes_per_sec: Option<u64>,
    /// Faults for this power cycle.
    pub faults: Faults,
}

/// Identity and boot state of a simulated NIC, as stored in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimState {
    /// File format version.
    pub format: u32,
    /// PCI vendor id.
    pub pci_vendor_id: u16,
    /// PCI device id.
    pub pci_device_id: u16,
    /// Serial number.
    pub serial: String,
    /// Boot state.
    #[serde(flatten)]
    pub banks: BankState,
}

const STATE: &str = "state.json";
const JOURNAL: &str = "journal.json";

fn bank_file(dir: &Path, bank: Bank) -> PathBuf {
    dir.join(match bank {
        Bank::A => "bank_a.bin",
        Bank::B => "bank_b.bin",
    })
}

/// An opened (powered-on) simulated NIC.
#[derive(Debug)]
pub struct SimNic {
    dir: PathBuf,
    state: SimState,
    opts: SimOptions,
    /// Set by a simulated power loss: every later operation fails until re-opened.
    dead: bool,
    /// Bytes written to banks since opening (lets tests prove "nothing was written").
    bytes_written: u64,
    /// Size of the image being written, for the mid-write fault.
    writing_size: u64,
}

impl SimNic {
    /// Creates a simulated NIC in `dir` (created if missing) with `image` as version `version` in
    /// bank A, active, and bank B empty.
    pub fn create(
        dir: &Path,
        pci_vendor_id: u16,
        pci_device_id: u16,
        serial: &str,
        version: &str,
        image: &[u8],
    ) -> Result<(), AgentError> {
        fs::create_dir_all(dir).map_err(AgentError::io("create", dir))?;
        let a = bank_file(dir, Bank::A);
        fs::write(&a, image).map_err(AgentError::io("write", &a))?;
        let b = bank_file(dir, Bank::B);
        fs::write(&b, []).map_err(AgentError::io("write", &b))?;
        let state = SimState {
            format: 1,
            pci_vendor_id,
            pci_device_id,
            serial: serial.to_owned(),
            banks: BankState {
                active: Bank::A,
                trial: None,
                a: BankContent::Valid(ImageInfo {
                    version: version.to_owned(),
                    sha256: hex::encode(Sha256::digest(image)),
                    size: image.len() as u64,
                }),
                b: BankContent::Empty,
                boot_counter: 0,
                last_boot: None,
            },
        };
        write_json_atomic(&dir.join(STATE), &state)
    }

    /// Reads the state without powering the NIC on (for discovery).
    pub fn peek(dir: &Path) -> Result<SimState, AgentError> {
        read_json(&dir.join(STATE))
    }

    /// Powers the NIC on: loads its state and runs the boot loader.
    pub fn open(dir: &Path, opts: SimOptions) -> Result<Self, AgentError> {
        let state = Self::peek(dir)?;
        let mut nic = Self {
            dir: dir.to_owned(),
            state,
            opts,
            dead: false,
            bytes_written: 0,
            writing_size: 0,
        };
        nic.boot()?;
        Ok(nic)
    }

    /// Bytes written to banks since power-on.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// The directory holding this NIC.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn save(&self) -> Result<(), AgentError> {
        write_json_atomic(&self.dir.join(STATE), &self.state)
    }

    fn alive(&self) -> Result<(), AgentError> {
        if self.dead {
            Err(AgentError::PowerLoss(Stage::Done))
        } else {
            Ok(())
        }
    }

    fn power_loss(&mut self, point: PowerLossPoint, stage: Stage) -> Result<(), AgentError> {
        if self.opts.faults.power_loss == Some(point) {
            self.dead = true;
            tracing::warn!(nic = %self.id(), ?point, "simulated power loss");
            return Err(AgentError::PowerLoss(stage));
        }
        Ok(())
    }

    fn nic_err(&self, detail: impl Into<String>) -> AgentError {
        AgentError::Nic {
            nic: self.id(),
            detail: detail.into(),
        }
    }

    /// Whether `bank` would boot: valid and intact. `Err` carries the reason.
    fn try_boot(&self, bank: Bank, trial: bool) -> Result<(), String> {
        let BankContent::Valid(img) = self.state.banks.bank(bank) else {
            return Err(format!("bank {bank} holds no valid image"));
        };
        let bytes = fs::read(bank_file(&self.dir, bank))
            .map_err(|e| format!("bank {bank} unreadable: {e}"))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != img.size || digest != img.sha256 {
            return Err(format!("bank {bank} image check failed (corrupt image)"));
        }
        if trial && self.opts.faults.fail_trial_boot {
            return Err(format!(
                "firmware {} in bank {bank} failed to come up",
                img.version
            ));
        }
        Ok(())
    }

    /// The boot loader.
    fn boot(&mut self) -> Result<BootReport, AgentError> {
        let b = &mut self.state.banks;
        b.boot_counter += 1;
        let mut fell_back_from = None;
        let mut trial = false;
        if let Some(t) = b.trial {
            if t.attempts_left == 0 {
                // A previous trial boot never confirmed (e.g. power lost while booting).
                fell_back_from = Some((t.bank, "trial boot attempts exhausted".to_owned()));
                b.active = t.previous;
                b.trial = None;
            } else {
                // Count the attempt durably before trying, so a crash while booting cannot loop.
                b.trial = Some(Trial {
                    attempts_left: t.attempts_left - 1,
                    ..t
                });
                self.save()?;
                trial = true;
            }
        }
        let active = self.state.banks.active;
        let booted = match self.try_boot(active, trial) {
            Ok(()) => Some(active),
            Err(reason) => {
                let other = active.other();
                fell_back_from = Some((active, reason));
                trial = false;
                self.state.banks.trial = None;
                match self.try_boot(other, false) {
                    Ok(()) => {
                        self.state.banks.active = other;
                        Some(other)
                    }
                    Err(_) => None,
                }
            }
        };
        let report = BootReport {
            booted,
            trial,
            fell_back_from,
        };
        tracing::info!(nic = %self.id(), ?report, boot = self.state.banks.boot_counter, "sim NIC booted");
        self.state.banks.last_boot = Some(report.clone());
        self.save()?;
        if booted.is_none() {
            return Err(AgentError::NoBootableBank(self.id()));
        }
        Ok(report)
    }

    fn image_of(&self, bank: Bank) -> Result<ImageInfo, AgentError> {
        self.state
            .banks
            .bank(bank)
            .image()
            .cloned()
            .ok_or_else(|| self.nic_err(format!("bank {bank} has no image")))
    }
}

impl BankedNic for SimNic {
    fn id(&self) -> String {
        format!("sim:{}", self.dir.display())
    }

    fn pci_ids(&self) -> (u16, u16) {
        (self.state.pci_vendor_id, self.state.pci_device_id)
    }

    fn state(&self) -> BankState {
        self.state.banks.clone()
    }

    fn begin_write(&mut self, bank: Bank, image: &ImageInfo) -> Result<(), AgentError> {
        self.alive()?;
        if bank == self.state.banks.active {
            return Err(self.nic_err("refusing to write the active bank"));
        }
        *self.state.banks.bank_mut(bank) = BankContent::Writing(image.clone());
        self.save()?;
        self.writing_size = image.size;
        self.power_loss(PowerLossPoint::BeforeWrite, Stage::Write)?;
        let path = bank_file(&self.dir, bank);
        fs::File::create(&path).map_err(AgentError::io("truncate", &path))?;
        Ok(())
    }

    fn write_chunk(&mut self, bank: Bank, offset: u64, data: &[u8]) -> Result<(), AgentError> {
        self.alive()?;
        let end = offset + data.len() as u64;
        if let Some(at) = self.opts.faults.write_error_at
            && (offset..end).contains(&at)
        {
            return Err(self.nic_err(format!("flash write failed at offset {at} (injected)")));
        }
        let mut data = data.to_vec();
        let half = self.writing_size / 2;
        let mut lose_power = false;
        if (offset..end).contains(&half) {
            if self.opts.faults.corrupt_write {
                // Offset within this chunk; fits usize because it is < data.len().
                data[(half - offset) as usize] ^= 0x40;
            }
            if self.opts.faults.power_loss == Some(PowerLossPoint::MidWrite) {
                data.truncate((half - offset) as usize);
                lose_power = true;
            }
        }
        let path = bank_file(&self.dir, bank);
        let mut f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(AgentError::io("open", &path))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(AgentError::io("seek", &path))?;
        f.write_all(&data).map_err(AgentError::io("write", &path))?;
        self.bytes_written += data.len() as u64;
        if lose_power {
            let _ = f.sync_all();
            return self.power_loss(PowerLossPoint::MidWrite, Stage::Write);
        }
        if let Some(bps) = self.opts.bytes_per_sec.filter(|b| *b > 0) {
            std::thread::sleep(Duration::from_secs_f64(data.len() as f64 / bps as f64));
        }
        Ok(())
    }

    fn finish_write(&mut self, bank: Bank) -> Result<(), AgentError> {
        self.alive()?;
        let path = bank_file(&self.dir, bank);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(AgentError::io("open", &path))?;
        f.sync_all().map_err(AgentError::io("fsync", &path))?;
        let img = self.image_of(bank)?;
        *self.state.banks.bank_mut(bank) = BankContent::Written(img);
        self.save()
    }

    fn read_chunk(&mut self, bank: Bank, offset: u64, buf: &mut [u8]) -> Result<usize, AgentError> {
        self.alive()?;
        let path = bank_file(&self.dir, bank);
        let mut f = fs::File::open(&path).map_err(AgentError::io("open", &path))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(AgentError::io("seek", &path))?;
        f.read(buf).map_err(AgentError::io("read", &path))
    }

    fn mark_valid(&mut self, bank: Bank) -> Result<(), AgentError> {
        self.alive()?;
        let img = self.image_of(bank)?;
        *self.state.banks.bank_mut(bank) = BankContent::Valid(img);
        self.save()
    }

    fn invalidate(&mut self, bank: Bank) -> Result<(), AgentError> {
        self.alive()?;
        if bank == self.state.banks.active {
            return Err(self.nic_err("refusing to invalidate the active bank"));
        }
        *self.state.banks.bank_mut(bank) = BankContent::Empty;
        self.save()
    }

    fn switch_to_trial(&mut self, bank: Bank) -> Result<(), AgentError> {
        self.alive()?;
        self.power_loss(PowerLossPoint::AfterWrite, Stage::Switch)?;
        if !matches!(self.state.banks.bank(bank), BankContent::Valid(_)) {
            return Err(self.nic_err(format!("bank {bank} is not valid; will not switch to it")));
        }
        let previous = self.state.banks.active;
        self.state.banks.trial = Some(Trial {
            bank,
            previous,
            attempts_left: 1,
        });
        self.state.banks.active = bank;
        self.save()?;
        self.power_loss(PowerLossPoint::AfterSwitch, Stage::HealthCheck)
    }

    fn reboot(&mut self) -> Result<BootReport, AgentError> {
        self.alive()?;
        self.boot()
    }

    fn confirm(&mut self) -> Result<(), AgentError> {
        self.alive()?;
        self.state.banks.trial = None;
        if let Some(lb) = &mut self.state.banks.last_boot {
            lb.trial = false;
        }
        self.save()
    }

    fn journal(&self) -> Result<Option<Journal>, AgentError> {
        let path = self.dir.join(JOURNAL);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    fn set_journal(&mut self, journal: Option<&Journal>) -> Result<(), AgentError> {
        self.alive()?;
        let path = self.dir.join(JOURNAL);
        match journal {
            Some(j) => write_json_atomic(&path, j),
            None => match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(AgentError::io("remove", &path)(e))
                }
                _ => Ok(()),
            },
        }
    }
}

/// Discovers simulated NICs: `root` itself if it holds a `state.json`, else each subdirectory
/// that does.
#[derive(Debug, Clone)]
pub struct SimDriver {
    root: PathBuf,
}

impl SimDriver {
    /// A driver over `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Directories of the simulated NICs, sorted.
    pub fn nic_dirs(&self) -> Result<Vec<PathBuf>, AgentError> {
        if self.root.join(STATE).exists() {
            return Ok(vec![self.root.clone()]);
        }
        let mut dirs = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(AgentError::io("list", &self.root))? {
            let entry = entry.map_err(AgentError::io("list", &self.root))?;
            if entry.path().join(STATE).exists() {
                dirs.push(entry.path());
            }
        }
        dirs.sort();
        Ok(dirs)
    }
}

impl NicDriver for SimDriver {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn discover(&mut self) -> Result<Vec<NicInfo>, AgentError> {
        self.nic_dirs()?
            .into_iter()
            .map(|dir| {
                let s = SimNic::peek(&dir)?;
                let version = |c: &BankContent| match c {
                    BankContent::Valid(i) => Some(i.version.clone()),
                    _ => None,
                };
                let booted = s.banks.last_boot.as_ref().and_then(|b| b.booted);
                let mut versions = Versions::default();
                if let Some(v) = booted.and_then(|b| version(s.banks.bank(b))) {
                    versions.running.insert("fw".into(), v);
                }
                if let Some(v) = version(s.banks.bank(s.banks.active)) {
                    versions.stored.insert("fw".into(), v);
                }
                versions
                    .fixed
                    .insert("board.serial".into(), s.serial.clone());
                Ok(NicInfo {
                    id: format!("sim:{}", dir.display()),
                    driver: "sim".into(),
                    pci_vendor_id: Some(s.pci_vendor_id),
                    pci_device_id: Some(s.pci_device_id),
                    serial: Some(s.serial),
                    versions,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn nic(dir: &Path) -> SimNic {
        SimNic::create(dir, 0x15b3, 0x101d, "S", "1.0.0", b"factory image").unwrap();
        SimNic::open(dir, SimOptions::default()).unwrap()
    }

    /// Writes a valid image into the inactive bank through the trait, as the flash engine would.
    fn install_b(nic: &mut SimNic, data: &[u8]) {
        let img = ImageInfo {
            version: "2.0.0".into(),
            sha256: hex::encode(Sha256::digest(data)),
            size: data.len() as u64,
        };
        nic.begin_write(Bank::B, &img).unwrap();
        nic.write_chunk(Bank::B, 0, data).unwrap();
        nic.finish_write(Bank::B).unwrap();
        nic.mark_valid(Bank::B).unwrap();
    }

    #[test]
    fn boot_loader_falls_back_when_active_bank_rots() {
        let tmp = tempfile::tempdir().unwrap();
        let mut n = nic(tmp.path());
        install_b(&mut n, b"new image");
        drop(n);
        // Bit rot in the active bank A: the image check fails and B (valid) boots instead.
        std::fs::write(tmp.path().join("bank_a.bin"), b"factory imagX").unwrap();
        let n = SimNic::open(tmp.path(), SimOptions::default()).unwrap();
        let st = n.state();
        assert_eq!(st.active, Bank::B);
        let boot = st.last_boot.unwrap();
        assert_eq!(boot.booted, Some(Bank::B));
        assert!(boot.fell_back_from.unwrap().1.contains("corrupt"));
    }

    #[test]
    fn no_valid_bank_is_reported_not_booted() {
        let tmp = tempfile::tempdir().unwrap();
        drop(nic(tmp.path()));
        std::fs::write(tmp.path().join("bank_a.bin"), b"garbage").unwrap();
        let err = SimNic::open(tmp.path(), SimOptions::default()).unwrap_err();
        assert!(matches!(err, AgentError::NoBootableBank(_)), "{err}");
    }

    #[test]
    fn guards_and_state_persistence() {
        let tmp = tempfile::tempdir().unwrap();
        let mut n = nic(tmp.path());
        let img = ImageInfo {
            version: "x".into(),
            sha256: String::new(),
            size: 0,
        };
        assert!(
            n.begin_write(Bank::A, &img).is_err(),
            "active bank is never written"
        );
        assert!(
            n.invalidate(Bank::A).is_err(),
            "active bank is never invalidated"
        );
        assert!(
            n.switch_to_trial(Bank::B).is_err(),
            "cannot switch to an empty bank"
        );
        // The booted state is on disk, and no temp file is left behind.
        assert_eq!(SimNic::peek(tmp.path()).unwrap().banks, n.state());
        assert!(!tmp.path().join("state.json.tmp").exists());
        assert_eq!(n.state().boot_counter, 1);
        drop(n);
        assert_eq!(
            SimNic::open(tmp.path(), SimOptions::default())
                .unwrap()
                .state()
                .boot_counter,
            2
        );
    }

    #[test]
    fn speed_limit_slows_writes() {
        let tmp = tempfile::tempdir().unwrap();
        nic(tmp.path());
        let mut n = SimNic::open(
            tmp.path(),
            SimOptions {
                bytes_per_sec: Some(100_000),
                ..SimOptions::default()
            },
        )
        .unwrap();
        let start = std::time::Instant::now();
        install_b(&mut n, &[7u8; 10_000]);
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn driver_discovers_one_or_many() {
        let tmp = tempfile::tempdir().unwrap();
        drop(nic(&tmp.path().join("nic1")));
        drop(nic(&tmp.path().join("nic0")));
        std::fs::create_dir(tmp.path().join("not-a-nic")).unwrap();
        let found = SimDriver::new(tmp.path()).discover().unwrap();
        assert_eq!(found.len(), 2);
        assert!(found[0].id.ends_with("nic0"));
        assert_eq!(found[0].versions.running["fw"], "1.0.0");
        assert_eq!(
            SimDriver::new(tmp.path().join("nic1"))
                .discover()
                .unwrap()
                .len(),
            1
        );
    }
}
