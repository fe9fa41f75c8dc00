//! The flash state machine: verify → write inactive bank → read back → switch (trial) → health
//! check → confirm, or fall back.
//!
//! Safety argument, stage by stage: nothing is written until the bundle's signature, digest and
//! compatibility have been checked ([`flash_bundle`] takes raw bytes, and [`flash_verified`] only
//! accepts a [`VerifiedBundle`]). Only the *inactive* bank is written, and it is marked `writing`
//! first, so a torn write is never booted. The boot loader is pointed at the new bank only after a
//! read-back digest check, and only as a one-shot *trial*: if the new image does not come up, or
//! power is lost before it is confirmed, the boot loader returns to the previous bank, which was
//! never touched. So at every instant one bank holds a verified, bootable image.
//!
//! A [`Journal`] is persisted at each stage; [`recover`] reads it after a restart and reports
//! what happened.

use nexus_firmware::bundle::{self, TrustStore, VerifiedBundle};
use semver::Version;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AgentError;
use crate::nic::{Bank, BankContent, BankedNic, ImageInfo, Journal, Progress, Stage};

/// Chunk size for writes and read-back.
pub const CHUNK: usize = 64 * 1024;

/// How a flash that reached the NIC ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FlashOutcome {
    /// The new image booted and was confirmed.
    Updated,
    /// The new image did not come up; the NIC runs the previous image again.
    RolledBack {
        /// Why the new image was rejected.
        reason: String,
    },
}

/// Result of a flash that got as far as the health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashReport {
    /// NIC id.
    pub nic: String,
    /// Version running before.
    pub from_version: Option<String>,
    /// Version in the bundle.
    pub to_version: String,
    /// Bank written.
    pub bank: Bank,
    /// Bank running now.
    pub running_bank: Bank,
    /// Trust-store key that signed the bundle.
    pub signed_by: String,
    /// Outcome.
    pub outcome: FlashOutcome,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Parses, verifies and flashes a bundle given as raw bytes. Any problem with the bundle is an
/// [`AgentError::Refused`] raised before the NIC is touched.
///
/// `progress` is called synchronously at each stage and after each chunk; to report through a
/// channel instead, pass `&mut |p| { let _ = tx.send(*p); }`.
pub fn flash_bundle<N: BankedNic>(
    nic: &mut N,
    bundle_bytes: &[u8],
    trust: &TrustStore,
    agent_version: &Version,
    progress: &mut dyn FnMut(&Progress),
) -> Result<FlashReport, AgentError> {
    progress(&Progress {
        stage: Stage::Verify,
        bytes_done: 0,
        bytes_total: 0,
    });
    let parsed = bundle::parse(bundle_bytes)?;
    let verified = bundle::verify(&parsed, trust)?;
    flash_verified(nic, &verified, agent_version, progress)
}

/// Flashes a verified bundle after checking it fits this NIC and agent.
#[tracing::instrument(skip_all, fields(nic = %nic.id(), version = %bundle.manifest().version))]
pub fn flash_verified<N: BankedNic>(
    nic: &mut N,
    bundle: &VerifiedBundle,
    agent_version: &Version,
    progress: &mut dyn FnMut(&Progress),
) -> Result<FlashReport, AgentError> {
    let (vendor, device) = nic.pci_ids();
    bundle.check_compatible(vendor, device, agent_version)?;
    let state = nic.state();
    if state.trial.is_some() || nic.journal()?.is_some() {
        return Err(AgentError::UpdatePending(nic.id()));
    }
    let active = state.active;
    let target = active.other();
    let from_version = state.bank(active).image().map(|i| i.version.clone());
    let to_version = bundle.manifest().version.to_string();
    let expected = hex::encode(bundle.payload_sha256());
    let payload = bundle.payload();
    let total = payload.len() as u64;
    let mut journal = Journal {
        target,
        from_version: from_version.clone(),
        to_version: to_version.clone(),
        stage: Stage::Write,
        started_at: now(),
    };
    let enter = |nic: &mut N, journal: &mut Journal, stage: Stage| {
        journal.stage = stage;
        tracing::info!(?stage, "flash stage");
        nic.set_journal(Some(journal))
    };

    // Write the inactive bank.
    enter(nic, &mut journal, Stage::Write)?;
    let image = ImageInfo {
        version: to_version.clone(),
        sha256: expected.clone(),
        size: total,
    };
    nic.begin_write(target, &image)?;
    progress(&Progress {
        stage: Stage::Write,
        bytes_done: 0,
        bytes_total: total,
    });
    let mut offset = 0u64;
    for chunk in payload.chunks(CHUNK) {
        if let Err(e) = nic.write_chunk(target, offset, chunk) {
            return Err(abort(nic, target, e));
        }
        offset += chunk.len() as u64;
        progress(&Progress {
            stage: Stage::Write,
            bytes_done: offset,
            bytes_total: total,
        });
    }
    nic.finish_write(target)?;

    // Read back and compare digests: catches bad flash cells and torn writes.
    enter(nic, &mut journal, Stage::ReadBack)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < total {
        let want = usize::try_from(total - done).unwrap_or(CHUNK).min(CHUNK);
        let n = nic.read_chunk(target, done, &mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(&Progress {
            stage: Stage::ReadBack,
            bytes_done: done,
            bytes_total: total,
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        let e = AgentError::ReadBackMismatch {
            bank: target,
            expected,
            actual,
        };
        return Err(abort(nic, target, e));
    }
    nic.mark_valid(target)?;

    // Switch: one-shot trial boot of the new bank.
    enter(nic, &mut journal, Stage::Switch)?;
    progress(&Progress {
        stage: Stage::Switch,
        bytes_done: 0,
        bytes_total: 0,
    });
    nic.switch_to_trial(target)?;

    // Health check: reboot into it.
    enter(nic, &mut journal, Stage::HealthCheck)?;
    progress(&Progress {
        stage: Stage::HealthCheck,
        bytes_done: 0,
        bytes_total: 0,
    });
    let boot = nic.reboot()?;
    let outcome = if boot.booted == Some(target) {
        nic.confirm()?;
        FlashOutcome::Updated
    } else {
        let reason = boot
            .fell_back_from
            .map(|(_, r)| r)
            .unwrap_or_else(|| "new image did not boot".to_owned());
        // Never fall back onto a known-bad image later.
        nic.invalidate(target)?;
        FlashOutcome::RolledBack { reason }
    };
    nic.set_journal(None)?;
    progress(&Progress {
        stage: Stage::Done,
        bytes_done: total,
        bytes_total: total,
    });
    let report = FlashReport {
        nic: nic.id(),
        from_version,
        to_version,
        bank: target,
        running_bank: boot.booted.unwrap_or(active),
        signed_by: bundle.key_id().to_owned(),
        outcome,
    };
    tracing::info!(?report, "flash finished");
    Ok(report)
}

/// Discards a partly written bank after a failure before the switch; the active bank was never
/// touched. Power loss is passed through untouched: the NIC is gone until re-opened.
fn abort<N: BankedNic>(nic: &mut N, target: Bank, e: AgentError) -> AgentError {
    if matches!(e, AgentError::PowerLoss(_)) {
        return e;
    }
    tracing::warn!(error = %e, bank = %target, "flash aborted; discarding inactive bank");
    if let Err(e2) = nic.invalidate(target).and_then(|()| nic.set_journal(None)) {
        tracing::error!(error = %e2, "could not clean up after aborted flash (recovery will)");
    }
    e
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RecoveryOutcome {
    /// No interrupted update.
    Clean,
    /// An update was interrupted before the switch; the old image runs, the new one was discarded.
    Discarded {
        /// Stage the update had reached.
        stage: Stage,
        /// Version that was being installed.
        version: String,
    },
    /// Power was lost after the switch, the new image booted on restart and passed the health
    /// check: the update is complete.
    Completed {
        /// Version now running.
        version: String,
    },
    /// The new image did not come up after the interruption; the boot loader returned to the old.
    RolledBack {
        /// Version that failed.
        version: String,
        /// Why.
        reason: String,
    },
}

/// Report of a start-up recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    /// NIC id.
    pub nic: String,
    /// Bank running.
    pub running_bank: Bank,
    /// Version running.
    pub running_version: Option<String>,
    /// What happened.
    pub outcome: RecoveryOutcome,
}

/// Brings a freshly powered-on NIC to a clean state after a crash or power loss, and says what
/// happened. Idempotent: a second call reports `Clean`.
#[tracing::instrument(skip_all, fields(nic = %nic.id()))]
pub fn recover<N: BankedNic>(nic: &mut N) -> Result<RecoveryReport, AgentError> {
    let state = nic.state();
    let journal = nic.journal()?;
    let booted = state
        .last_boot
        .as_ref()
        .and_then(|b| b.booted)
        .unwrap_or(state.active);
    let outcome = match (&journal, state.trial) {
        (_, Some(t))
            if state
                .last_boot
                .as_ref()
                .is_some_and(|b| b.trial && b.booted == Some(t.bank)) =>
        {
            // The new image came up on the restart: that is the health check passing.
            nic.confirm()?;
            let version = journal
                .as_ref()
                .map(|j| j.to_version.clone())
                .unwrap_or_default();
            RecoveryOutcome::Completed { version }
        }
        (Some(j), _) => {
            let fell_back = state
                .last_boot
                .as_ref()
                .and_then(|b| b.fell_back_from.clone());
            match fell_back {
                Some((bank, reason)) if bank == j.target => {
                    nic.invalidate(j.target)?;
                    RecoveryOutcome::RolledBack {
                        version: j.to_version.clone(),
                        reason,
                    }
                }
                _ => {
                    // Interrupted before the switch: the target bank may be torn or unconfirmed.
                    if state.active != j.target
                        && !matches!(state.bank(j.target), BankContent::Empty)
                    {
                        nic.invalidate(j.target)?;
                    }
                    RecoveryOutcome::Discarded {
                        stage: j.stage,
                        version: j.to_version.clone(),
                    }
                }
            }
        }
        (None, _) => {
            // No journal: discard any torn image left by a writer that died before journalling.
            let inactive = state.active.other();
            if matches!(
                state.bank(inactive),
                BankContent::Writing(_) | BankContent::Written(_)
            ) {
                nic.invalidate(inactive)?;
            }
            RecoveryOutcome::Clean
        }
    };
    if journal.is_some() {
        nic.set_journal(None)?;
    }
    let state = nic.state();
    let running_bank = state
        .last_boot
        .as_ref()
        .and_then(|b| b.booted)
        .unwrap_or(booted);
    let report = RecoveryReport {
        nic: nic.id(),
        running_bank,
        running_version: state.bank(running_bank).image().map(|i| i.version.clone()),
        outcome,
    };
    if report.outcome != RecoveryOutcome::Clean {
        tracing::warn!(?report, "recovered interrupted firmware update");
    }
    Ok(report)
}
