//! End to end through the command-line front ends: keygen → pack → sign → inspect → verify with
//! `run_firmware` (as nexctl calls it), then flashing with the `nexus-agent` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

use clap::Parser;
use nexus_agent::cli::{FirmwareCommand, run_firmware};
use nexus_agent::status::{AgentStatus, Operation};

/// How nexctl mounts the firmware commands.
#[derive(Debug, Parser)]
struct Nexctl {
    #[command(subcommand)]
    cmd: FirmwareCommand,
}

fn firmware(args: &[&str]) -> anyhow::Result<()> {
    let parsed = Nexctl::try_parse_from(std::iter::once("nexctl").chain(args.iter().copied()))?;
    run_firmware(parsed.cmd)
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nexus-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn keygen_pack_sign_verify_then_flash() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, trust, image, bundle) = (
        tmp.path().join("release.pk8"),
        tmp.path().join("trust.json"),
        tmp.path().join("fw.bin"),
        tmp.path().join("fw.nxb"),
    );
    std::fs::write(&image, vec![0xA5; 300_000]).unwrap();
    firmware(&[
        "keygen",
        "--id",
        "release-1",
        "--out",
        p(&key),
        "--trust-store",
        p(&trust),
    ])
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    firmware(&[
        "pack",
        "--payload",
        p(&image),
        "--out",
        p(&bundle),
        "--vendor",
        "mellanox",
        "--pci-vendor",
        "0x15b3",
        "--pci-device",
        "101d",
        "--pci-device",
        "1021",
        "--version",
        "2.0.0",
        "--agent-version",
        ">=0.1, <1",
        "--commit",
        "abc123",
    ])
    .unwrap();
    firmware(&["inspect", p(&bundle)]).unwrap();
    let err = firmware(&["verify", p(&bundle), "--trust-store", p(&trust)]).unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    firmware(&[
        "sign",
        p(&bundle),
        "--key",
        p(&key),
        "--key-id",
        "release-1",
    ])
    .unwrap();
    firmware(&["verify", p(&bundle), "--trust-store", p(&trust)]).unwrap();
    firmware(&[
        "verify",
        p(&bundle),
        "--trust-store",
        p(&trust),
        "--pci-vendor",
        "15b3",
        "--pci-device",
        "1021",
    ])
    .unwrap();
    let err = firmware(&[
        "verify",
        p(&bundle),
        "--trust-store",
        p(&trust),
        "--pci-vendor",
        "15b3",
        "--pci-device",
        "1017",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("15b3:1017"), "{err}");
    assert!(
        firmware(&["pack", "--payload", p(&image)]).is_err(),
        "missing args are a clap error"
    );

    // The agent binary: create a simulated NIC, flash with a failing boot (rolled back, exit 1),
    // then flash for real.
    let sim = tmp.path().join("nic0");
    let status = tmp.path().join("status.json");
    let out = agent(&["--sim-dir", p(&sim), "sim-create", "--image-size", "5000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flash = |extra: &[&str]| {
        let mut args = vec![
            "--sim-dir",
            p(&sim),
            "--status-file",
            p(&status),
            "flash",
            p(&bundle),
            "--trust-store",
            p(&trust),
        ];
        args.extend_from_slice(extra);
        agent(&args)
    };
    let out = flash(&["--fault", "fail-boot"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rolled back"));
    let out = flash(&["--fault", "power-loss-mid-write"]);
    assert!(!out.status.success());
    let out = flash(&["--speed", "100000000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("to 2.0.0"));

    let st: AgentStatus = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    assert!(st.in_progress.is_none());
    let kinds: Vec<&str> = st
        .operations
        .iter()
        .map(|o| match o {
            Operation::Recovery { .. } => "recovery",
            Operation::Flash { .. } => "flash",
            Operation::FlashFailed { .. } => "failed",
        })
        .collect();
    // History is kept across runs: rollback, power loss (aborted), then recovery of the torn write
    // and the successful flash.
    assert_eq!(
        kinds,
        [
            "recovery", "flash", "recovery", "failed", "recovery", "flash"
        ]
    );
    let Operation::Flash { report, .. } = &st.operations[1] else {
        unreachable!()
    };
    assert!(matches!(
        report.outcome,
        nexus_agent::FlashOutcome::RolledBack { .. }
    ));
    let Operation::Recovery { report, .. } = &st.operations[4] else {
        unreachable!()
    };
    assert!(matches!(
        report.outcome,
        nexus_agent::RecoveryOutcome::Discarded { .. }
    ));

    let out = agent(&[
        "--sim-dir",
        p(&sim),
        "--status-file",
        p(&status),
        "discover",
    ]);
    assert!(out.status.success());
    let st: AgentStatus = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    assert_eq!(st.nics[0].versions.running["fw"], "2.0.0");
}
