//! The flash state machine against the simulated NIC: the happy path, every refusal, every fault,
//! and power loss at each stage followed by a reboot and recovery.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use nexus_agent::nic::{BankContent, BankedNic};
use nexus_agent::sim::{Faults, PowerLossPoint, SimNic, SimOptions};
use nexus_agent::{
    AgentError, Bank, FlashOutcome, Progress, RecoveryOutcome, Stage, agent_version, flash_bundle,
    recover,
};
use nexus_firmware::bundle::{self, Manifest, TrustStore, testing};
use proptest::prelude::*;
use semver::{Version, VersionReq};

const VENDOR: u16 = 0x15b3;
const DEVICE: u16 = 0x101d;

fn image(version: &str, len: usize) -> Vec<u8> {
    let seed = version
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

/// A simulated NIC running 1.0.0 from bank A, and the release key trusted for it.
struct Fixture {
    dir: tempfile::TempDir,
    key: bundle::SigningKey,
    trust: TrustStore,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        SimNic::create(
            dir.path(),
            VENDOR,
            DEVICE,
            "SIM1",
            "1.0.0",
            &image("1.0.0", 150_000),
        )
        .unwrap();
        let (key, trust) = testing::key("release-2026", 42);
        Self { dir, key, trust }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn manifest(&self, version: &str) -> Manifest {
        Manifest::new(
            "mellanox",
            VENDOR,
            vec![DEVICE],
            version.parse().unwrap(),
            VersionReq::parse(">=0.1, <1").unwrap(),
        )
    }

    fn bundle_with(&self, m: Manifest) -> Vec<u8> {
        let payload = image(&m.version.to_string(), 200_000);
        bundle::sign(bundle::pack(m, payload).unwrap(), &self.key).to_bytes()
    }

    fn bundle(&self, version: &str) -> Vec<u8> {
        self.bundle_with(self.manifest(version))
    }

    fn open(&self, faults: Faults) -> SimNic {
        SimNic::open(
            self.path(),
            SimOptions {
                bytes_per_sec: None,
                faults,
            },
        )
        .unwrap()
    }

    fn flash(
        &self,
        nic: &mut SimNic,
        bytes: &[u8],
    ) -> Result<nexus_agent::FlashReport, AgentError> {
        flash_bundle(nic, bytes, &self.trust, &agent_version(), &mut |_| {})
    }

    /// Reboots with no faults and checks the NIC runs `version` from a valid, intact bank.
    fn assert_runs(&self, version: &str) -> SimNic {
        let nic = self.open(Faults::default());
        let st = nic.state();
        let booted = st
            .last_boot
            .as_ref()
            .and_then(|b| b.booted)
            .expect("a bank booted");
        assert_eq!(booted, st.active);
        match st.bank(booted) {
            BankContent::Valid(img) => assert_eq!(img.version, version),
            other => panic!("booted bank not valid: {other:?}"),
        }
        nic
    }
}

#[test]
fn happy_path_updates_inactive_bank_and_reports_progress() {
    let fx = Fixture::new();
    let mut nic = fx.open(Faults::default());
    let mut events: Vec<Progress> = Vec::new();
    let report = flash_bundle(
        &mut nic,
        &fx.bundle("2.0.0"),
        &fx.trust,
        &agent_version(),
        &mut |p| events.push(*p),
    )
    .unwrap();
    assert_eq!(report.outcome, FlashOutcome::Updated);
    assert_eq!(report.bank, Bank::B);
    assert_eq!(report.running_bank, Bank::B);
    assert_eq!(report.from_version.as_deref(), Some("1.0.0"));
    assert_eq!(report.signed_by, "release-2026");
    assert!(nic.journal().unwrap().is_none());
    assert!(nic.state().trial.is_none());

    // Stages arrive in order, bytes monotonic within a stage, write and read-back complete.
    let stages: Vec<Stage> = events.iter().map(|p| p.stage).collect();
    let mut dedup = stages.clone();
    dedup.dedup();
    assert_eq!(
        dedup,
        [
            Stage::Verify,
            Stage::Write,
            Stage::ReadBack,
            Stage::Switch,
            Stage::HealthCheck,
            Stage::Done
        ]
    );
    for s in [Stage::Write, Stage::ReadBack] {
        let bytes: Vec<u64> = events
            .iter()
            .filter(|p| p.stage == s)
            .map(|p| p.bytes_done)
            .collect();
        assert!(bytes.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(bytes.last(), Some(&200_000));
    }
    drop(nic);
    let mut nic = fx.assert_runs("2.0.0");

    // The next update goes to bank A, the old image stays as the fallback until then.
    let report = fx.flash(&mut nic, &fx.bundle("2.1.0")).unwrap();
    assert_eq!(
        (report.bank, report.outcome),
        (Bank::A, FlashOutcome::Updated)
    );
    fx.assert_runs("2.1.0");
}

#[test]
fn bad_bundles_are_refused_before_any_write() {
    let fx = Fixture::new();
    let good = fx.bundle("2.0.0");
    let (stranger, _) = testing::key("release-2026", 7);
    let mut tampered = good.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 1;
    let mut m_dev = fx.manifest("2.0.0");
    m_dev.pci_device_ids = vec![0x1017];
    let mut m_agent = fx.manifest("2.0.0");
    m_agent.agent_version = VersionReq::parse(">=5").unwrap();
    let unsigned = bundle::pack(fx.manifest("2.0.0"), image("2.0.0", 1000))
        .unwrap()
        .to_bytes();
    let by_stranger = bundle::sign(
        bundle::pack(fx.manifest("2.0.0"), image("2.0.0", 1000)).unwrap(),
        &stranger,
    )
    .to_bytes();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad signature (tampered payload)",
            tampered,
            "bad_signature",
        ),
        (
            "signed by untrusted key material",
            by_stranger,
            "bad_signature",
        ),
        (
            "wrong device id",
            fx.bundle_with(m_dev),
            "incompatible_device",
        ),
        (
            "incompatible agent version",
            fx.bundle_with(m_agent),
            "incompatible_agent",
        ),
        (
            "truncated payload",
            good[..good.len() - 1000].to_vec(),
            "truncated",
        ),
        ("unsigned", unsigned, "unsigned"),
        ("empty file", Vec::new(), "truncated"),
    ];
    for (name, bytes, label) in cases {
        let mut nic = fx.open(Faults::default());
        let before = nic.state();
        let err = fx.flash(&mut nic, &bytes).expect_err(name);
        assert!(matches!(err, AgentError::Refused(_)), "{name}: {err}");
        assert_eq!(err.metric_label(), label, "{name}: {err}");
        assert!(err.to_string().contains("nothing written"), "{name}: {err}");
        assert_eq!(nic.bytes_written(), 0, "{name}");
        assert_eq!(nic.state(), before, "{name}");
        assert!(nic.journal().unwrap().is_none(), "{name}");
    }
    fx.assert_runs("1.0.0");
}

/// Power loss at `point` during a flash to 2.0.0, then a reboot without faults and recovery.
fn power_loss_then_recover(point: PowerLossPoint) -> (Fixture, nexus_agent::RecoveryReport) {
    let fx = Fixture::new();
    let mut nic = fx.open(Faults {
        power_loss: Some(point),
        ..Faults::default()
    });
    let err = fx.flash(&mut nic, &fx.bundle("2.0.0")).unwrap_err();
    assert!(matches!(err, AgentError::PowerLoss(_)), "{err}");
    // Nothing works on a dead NIC.
    assert!(nic.reboot().is_err());
    drop(nic);
    let mut nic = fx.open(Faults::default());
    let report = recover(&mut nic).unwrap();
    assert!(nic.journal().unwrap().is_none());
    assert_eq!(
        recover(&mut nic).unwrap().outcome,
        RecoveryOutcome::Clean,
        "idempotent"
    );
    (fx, report)
}

#[test]
fn power_loss_before_write_keeps_old_image() {
    let (fx, r) = power_loss_then_recover(PowerLossPoint::BeforeWrite);
    assert_eq!(
        r.outcome,
        RecoveryOutcome::Discarded {
            stage: Stage::Write,
            version: "2.0.0".into()
        }
    );
    assert_eq!(
        (r.running_bank, r.running_version.as_deref()),
        (Bank::A, Some("1.0.0"))
    );
    let mut nic = fx.assert_runs("1.0.0");
    assert_eq!(nic.state().b, BankContent::Empty);
    // And the NIC is not stuck: the retry succeeds.
    assert_eq!(
        fx.flash(&mut nic, &fx.bundle("2.0.0")).unwrap().outcome,
        FlashOutcome::Updated
    );
}

#[test]
fn power_loss_mid_write_discards_torn_image() {
    let (fx, r) = power_loss_then_recover(PowerLossPoint::MidWrite);
    assert_eq!(
        r.outcome,
        RecoveryOutcome::Discarded {
            stage: Stage::Write,
            version: "2.0.0".into()
        }
    );
    assert_eq!(r.running_version.as_deref(), Some("1.0.0"));
    let nic = fx.assert_runs("1.0.0");
    assert_eq!(nic.state().b, BankContent::Empty);
    // The torn bank really is partial on disk.
    let len = std::fs::metadata(fx.path().join("bank_b.bin"))
        .unwrap()
        .len();
    assert_eq!(len, 100_000);
}

#[test]
fn power_loss_after_write_before_switch_keeps_old_image() {
    let (fx, r) = power_loss_then_recover(PowerLossPoint::AfterWrite);
    assert_eq!(
        r.outcome,
        RecoveryOutcome::Discarded {
            stage: Stage::Switch,
            version: "2.0.0".into()
        }
    );
    assert_eq!(r.running_version.as_deref(), Some("1.0.0"));
    fx.assert_runs("1.0.0");
}

#[test]
fn power_loss_after_switch_completes_on_reboot() {
    let (fx, r) = power_loss_then_recover(PowerLossPoint::AfterSwitch);
    assert_eq!(
        r.outcome,
        RecoveryOutcome::Completed {
            version: "2.0.0".into()
        }
    );
    assert_eq!(
        (r.running_bank, r.running_version.as_deref()),
        (Bank::B, Some("2.0.0"))
    );
    let nic = fx.assert_runs("2.0.0");
    assert!(nic.state().trial.is_none());
}

#[test]
fn power_loss_after_switch_with_bad_image_rolls_back_on_reboot() {
    let fx = Fixture::new();
    let mut nic = fx.open(Faults {
        power_loss: Some(PowerLossPoint::AfterSwitch),
        ..Faults::default()
    });
    assert!(fx.flash(&mut nic, &fx.bundle("2.0.0")).is_err());
    drop(nic);
    // The new image does not come up on the reboot: the boot loader falls back on its own.
    let mut nic = fx.open(Faults {
        fail_trial_boot: true,
        ..Faults::default()
    });
    let r = recover(&mut nic).unwrap();
    assert!(
        matches!(&r.outcome, RecoveryOutcome::RolledBack { version, .. } if version == "2.0.0")
    );
    assert_eq!(
        (r.running_bank, r.running_version.as_deref()),
        (Bank::A, Some("1.0.0"))
    );
    drop(nic);
    let nic = fx.assert_runs("1.0.0");
    assert_eq!(
        nic.state().b,
        BankContent::Empty,
        "known-bad image is not kept as a fallback"
    );
}

#[test]
fn power_loss_while_trial_booting_falls_back() {
    // Switch done, then the trial attempt itself is consumed by a crash during boot.
    let fx = Fixture::new();
    let mut nic = fx.open(Faults {
        power_loss: Some(PowerLossPoint::AfterSwitch),
        ..Faults::default()
    });
    assert!(fx.flash(&mut nic, &fx.bundle("2.0.0")).is_err());
    drop(nic);
    // Simulate "crashed while booting the trial": the boot loader burnt the attempt and then the
    // power went; we model it by editing the persisted attempt counter.
    let state_path = fx.path().join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["trial"]["attempts_left"] = 0.into();
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let mut nic = fx.open(Faults::default());
    let r = recover(&mut nic).unwrap();
    assert!(
        matches!(r.outcome, RecoveryOutcome::RolledBack { .. }),
        "{r:?}"
    );
    assert_eq!(r.running_version.as_deref(), Some("1.0.0"));
}

#[test]
fn corrupt_write_is_caught_by_read_back() {
    let fx = Fixture::new();
    let mut nic = fx.open(Faults {
        corrupt_write: true,
        ..Faults::default()
    });
    let err = fx.flash(&mut nic, &fx.bundle("2.0.0")).unwrap_err();
    assert!(
        matches!(err, AgentError::ReadBackMismatch { bank: Bank::B, .. }),
        "{err}"
    );
    assert_eq!(nic.state().active, Bank::A);
    assert_eq!(nic.state().b, BankContent::Empty);
    assert!(nic.journal().unwrap().is_none());
    drop(nic);
    fx.assert_runs("1.0.0");
}

#[test]
fn write_failure_aborts_without_touching_active_bank() {
    let fx = Fixture::new();
    let mut nic = fx.open(Faults {
        write_error_at: Some(70_000),
        ..Faults::default()
    });
    let err = fx.flash(&mut nic, &fx.bundle("2.0.0")).unwrap_err();
    assert!(matches!(err, AgentError::Nic { .. }), "{err}");
    assert!(err.to_string().contains("active bank unchanged"));
    assert_eq!(nic.state().b, BankContent::Empty);
    drop(nic);
    fx.assert_runs("1.0.0");
}

#[test]
fn failed_boot_rolls_back() {
    let fx = Fixture::new();
    let mut nic = fx.open(Faults {
        fail_trial_boot: true,
        ..Faults::default()
    });
    let report = fx.flash(&mut nic, &fx.bundle("2.0.0")).unwrap();
    let FlashOutcome::RolledBack { reason } = &report.outcome else {
        panic!("expected rollback: {report:?}")
    };
    assert!(reason.contains("failed to come up"), "{reason}");
    assert_eq!(report.running_bank, Bank::A);
    assert_eq!(nic.state().b, BankContent::Empty);
    drop(nic);
    let mut nic = fx.assert_runs("1.0.0");
    assert_eq!(recover(&mut nic).unwrap().outcome, RecoveryOutcome::Clean);
}

#[test]
fn unrecovered_trial_blocks_new_flash() {
    let fx = Fixture::new();
    let mut nic = fx.open(Faults {
        power_loss: Some(PowerLossPoint::AfterSwitch),
        ..Faults::default()
    });
    assert!(fx.flash(&mut nic, &fx.bundle("2.0.0")).is_err());
    drop(nic);
    let mut nic = fx.open(Faults::default());
    let err = fx.flash(&mut nic, &fx.bundle("3.0.0")).unwrap_err();
    assert!(matches!(err, AgentError::UpdatePending(_)), "{err}");
    recover(&mut nic).unwrap();
    assert_eq!(
        fx.flash(&mut nic, &fx.bundle("3.0.0")).unwrap().outcome,
        FlashOutcome::Updated
    );
}

#[test]
fn flash_sim_nic_library_entry_point() {
    let fx = Fixture::new();
    let bundle_path = fx.path().join("fw.nxb");
    std::fs::write(&bundle_path, fx.bundle("2.0.0")).unwrap();
    let mut stages = Vec::new();
    let r = nexus_agent::flash_sim_nic(
        fx.path(),
        &bundle_path,
        &fx.trust,
        SimOptions {
            bytes_per_sec: Some(50_000_000),
            faults: Faults::default(),
        },
        &mut |p| stages.push(p.stage),
    )
    .unwrap();
    assert_eq!(r.recovery.outcome, RecoveryOutcome::Clean);
    assert_eq!(r.flash.outcome, FlashOutcome::Updated);
    assert_eq!(stages.last(), Some(&Stage::Done));
}

#[test]
fn agent_version_is_the_crate_version() {
    assert_eq!(
        agent_version(),
        Version::parse(env!("CARGO_PKG_VERSION")).unwrap()
    );
}

fn arb_faults() -> impl Strategy<Value = Faults> {
    (
        proptest::option::of(prop_oneof![
            Just(PowerLossPoint::BeforeWrite),
            Just(PowerLossPoint::MidWrite),
            Just(PowerLossPoint::AfterWrite),
            Just(PowerLossPoint::AfterSwitch),
        ]),
        proptest::option::of(0u64..200_000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(power_loss, write_error_at, corrupt_write, fail_trial_boot)| Faults {
                power_loss,
                write_error_at,
                corrupt_write,
                fail_trial_boot,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever faults strike a sequence of updates (and the reboots after them), the NIC always
    /// boots a valid, intact image afterwards, and recovery leaves no journal behind.
    #[test]
    fn never_left_without_a_bootable_bank(plan in proptest::collection::vec((arb_faults(), arb_faults()), 1..4)) {
        let fx = Fixture::new();
        for (i, (during_flash, at_reboot)) in plan.into_iter().enumerate() {
            let mut nic = fx.open(during_flash);
            let _ = recover(&mut nic);
            let _ = fx.flash(&mut nic, &fx.bundle(&format!("{}.0.0", i + 2)));
            drop(nic);
            let mut nic = SimNic::open(fx.path(), SimOptions { bytes_per_sec: None, faults: at_reboot })
                .expect("NIC boots after any fault");
            recover(&mut nic).unwrap();
            prop_assert!(nic.journal().unwrap().is_none());
            drop(nic);
            let nic = fx.assert_runs_any();
            prop_assert!(nic.state().trial.is_none());
        }
    }
}

impl Fixture {
    fn assert_runs_any(&self) -> SimNic {
        let nic = self.open(Faults::default());
        let st = nic.state();
        let booted = st
            .last_boot
            .as_ref()
            .and_then(|b| b.booted)
            .expect("a bank booted");
        assert!(matches!(st.bank(booted), BankContent::Valid(_)));
        nic
    }
}
