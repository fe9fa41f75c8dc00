//! The devlink backend against recorded `devlink -j dev info` output and a fake sysfs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::VecDeque;
use std::path::Path;

use nexus_agent::devlink::{CommandRunner, DevlinkDriver, parse_dev_info};
use nexus_agent::{AgentError, NicDriver, agent_version};
use nexus_firmware::bundle::{self, testing};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/devlink")
            .join(name),
    )
    .unwrap()
}

#[test]
fn parses_mlx5_with_pending_stored_version() {
    let nics = parse_dev_info(&fixture("mlx5_dev_info.json")).unwrap();
    let ids: Vec<_> = nics.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "auxiliary/mlx5_core.eth.0",
            "pci/0000:3b:00.0",
            "pci/0000:3b:00.1"
        ]
    );
    let p0 = &nics[1];
    assert_eq!(p0.driver, "mlx5_core");
    assert_eq!(p0.serial.as_deref(), Some("MT2116X09299"));
    assert_eq!(p0.versions.fixed["fw.psid"], "MT_0000000359");
    assert_eq!(p0.versions.running["fw.version"], "22.36.1010");
    assert_eq!(
        p0.versions.stored["fw.version"], "22.39.1002",
        "flashed, awaiting reset"
    );
    assert!(
        nics[0].versions.running.is_empty(),
        "entries without versions parse"
    );
}

#[test]
fn parses_ice() {
    let nics = parse_dev_info(&fixture("ice_dev_info.json")).unwrap();
    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].driver, "ice");
    assert_eq!(nics[0].serial.as_deref(), Some("00-01-00-ff-ff-00-00-00"));
    assert_eq!(nics[0].versions.fixed["board.id"], "K91258-000");
    assert_eq!(nics[0].versions.running["fw.mgmt"], "7.3.4");
    assert!(!nics[0].versions.stored.contains_key("fw.mgmt"));
}

#[test]
fn rejects_garbage() {
    assert!(parse_dev_info(&fixture("empty.json")).unwrap().is_empty());
    for bad in [&b""[..], b"{}", b"not json", br#"{"info":[1]}"#] {
        assert!(matches!(
            parse_dev_info(bad),
            Err(AgentError::DevlinkJson(_))
        ));
    }
}

/// Replays recorded outputs and records the commands it was asked to run.
#[derive(Debug, Default)]
struct Replay {
    outputs: VecDeque<Result<Vec<u8>, String>>,
    calls: Vec<String>,
    staged_seen: Vec<bool>,
    firmware_dir: std::path::PathBuf,
}

impl CommandRunner for &mut Replay {
    fn run(&mut self, program: &str, args: &[&str]) -> Result<Vec<u8>, AgentError> {
        self.calls.push(format!("{program} {}", args.join(" ")));
        if args.first() == Some(&"dev") && args.get(1) == Some(&"flash") {
            // The staged file must exist while devlink runs.
            self.staged_seen
                .push(self.firmware_dir.join(args[4]).exists());
        }
        match self.outputs.pop_front().expect("unexpected command") {
            Ok(out) => Ok(out),
            Err(detail) => Err(AgentError::Devlink {
                args: args.join(" "),
                detail,
            }),
        }
    }
}

fn sysfs(root: &Path, addr: &str, vendor: &str, device: &str) {
    let d = root.join("bus/pci/devices").join(addr);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
    std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
}

#[test]
fn discover_reads_pci_ids_from_sysfs_and_flash_runs_devlink() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    let fw = tmp.path().join("firmware");
    sysfs(&sys, "0000:3b:00.0", "0x15b3", "0x101d");
    sysfs(&sys, "0000:3b:00.1", "0x15b3", "0x101d");
    let mut replay = Replay {
        outputs: VecDeque::from([
            Ok(fixture("mlx5_dev_info.json")),
            Ok(fixture("mlx5_dev_info.json")),
            Ok(Vec::new()),
            Ok(fixture("mlx5_after_flash.json")),
        ]),
        firmware_dir: fw.clone(),
        ..Replay::default()
    };
    {
        let mut drv = DevlinkDriver::new(&mut replay, &sys, &fw);
        let nics = drv.discover().unwrap();
        assert_eq!(nics[1].pci_vendor_id, Some(0x15b3));
        assert_eq!(nics[1].pci_device_id, Some(0x101d));
        assert_eq!(
            nics[0].pci_vendor_id, None,
            "auxiliary devices have no PCI ids"
        );

        let (key, trust) = testing::key("rel", 1);
        let b = bundle::sign(
            bundle::pack(testing::manifest("22.41.1000"), vec![9; 4096]).unwrap(),
            &key,
        );
        let v = bundle::verify(&b, &trust).unwrap();
        let after = drv.flash("pci/0000:3b:00.0", &v, &agent_version()).unwrap();
        assert_eq!(after.versions.stored["fw.version"], "22.41.1000");
    }
    assert!(replay.calls[2].starts_with("devlink dev flash pci/0000:3b:00.0 file nexus/"));
    assert_eq!(replay.staged_seen, [true]);
    assert_eq!(
        std::fs::read_dir(fw.join("nexus")).unwrap().count(),
        0,
        "staged file removed"
    );
}

#[test]
fn flash_refuses_wrong_device_before_running_devlink() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    sysfs(&sys, "0000:18:00.0", "0x8086", "0x1593");
    let mut replay = Replay {
        outputs: VecDeque::from([Ok(fixture("ice_dev_info.json"))]),
        ..Replay::default()
    };
    let mut drv = DevlinkDriver::new(&mut replay, &sys, tmp.path().join("fw"));
    let (key, trust) = testing::key("rel", 1);
    let b = bundle::sign(
        bundle::pack(testing::manifest("1.0.0"), vec![1; 10]).unwrap(),
        &key,
    );
    let v = bundle::verify(&b, &trust).unwrap();
    let err = drv
        .flash("pci/0000:18:00.0", &v, &agent_version())
        .unwrap_err();
    assert_eq!(err.metric_label(), "incompatible_device", "{err}");
    assert_eq!(
        replay.calls,
        ["devlink -j dev info"],
        "devlink dev flash never ran"
    );
}

#[test]
fn devlink_failure_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    sysfs(&sys, "0000:3b:00.0", "0x15b3", "0x101d");
    let mut replay = Replay {
        outputs: VecDeque::from([
            Ok(fixture("mlx5_dev_info.json")),
            Err("exit status: 1: Error: mlx5_core: FW image is not compatible".into()),
        ]),
        firmware_dir: tmp.path().join("fw"),
        ..Replay::default()
    };
    let mut drv = DevlinkDriver::new(&mut replay, &sys, tmp.path().join("fw"));
    let (key, trust) = testing::key("rel", 1);
    let b = bundle::sign(
        bundle::pack(testing::manifest("1.0.0"), vec![1; 10]).unwrap(),
        &key,
    );
    let v = bundle::verify(&b, &trust).unwrap();
    let err = drv
        .flash("pci/0000:3b:00.0", &v, &agent_version())
        .unwrap_err();
    assert!(err.to_string().contains("not compatible"), "{err}");
}
