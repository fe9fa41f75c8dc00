//! `--controller` mode's flash target over simulated NICs: the real flash state machine behind
//! the fleet protocol's `FlashTarget`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use nexus_agent::fleet::SimFleetTarget;
use nexus_agent::sim::SimNic;
use nexus_firmware::bundle::{self, Manifest, testing};
use nexus_fleet_agent::FlashTarget;
use nexus_fleet_api::v1 as pb;
use semver::VersionReq;
use sha2::{Digest, Sha256};

const VENDOR: u16 = 0x15b3;
const DEVICE: u16 = 0x101d;

fn signed(version: &str, key: &bundle::SigningKey) -> Vec<u8> {
    let m = Manifest::new(
        "mellanox",
        VENDOR,
        vec![DEVICE],
        version.parse().unwrap(),
        VersionReq::parse(">=0.1, <1").unwrap(),
    );
    let payload: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
    bundle::sign(bundle::pack(m, payload).unwrap(), key).to_bytes()
}

fn target(bundle: &[u8], version: &str) -> pb::FirmwareTarget {
    pb::FirmwareTarget {
        version: version.into(),
        bundle: bundle.to_vec(),
        sha256: hex::encode(Sha256::digest(bundle)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flashes_refuses_and_switches_back() {
    let dir = tempfile::tempdir().unwrap();
    for (i, serial) in ["SIM1", "SIM2"].iter().enumerate() {
        SimNic::create(
            &dir.path().join(format!("nic{i}")),
            VENDOR,
            DEVICE,
            serial,
            "1.0.0",
            &[7; 4096],
        )
        .unwrap();
    }
    let (key, trust) = testing::key("release", 42);
    let (rogue, _) = testing::key("release", 43);
    let t = SimFleetTarget::new(dir.path(), trust, None);
    t.recover_all().unwrap();
    let inv = t.inventory();
    assert_eq!(inv.len(), 2);
    assert_eq!(inv[0].running_firmware, "1.0.0");
    assert_eq!(inv[0].vendor, "nvidia");
    assert_eq!(inv[0].pci_device_id, "101d");

    // A bundle signed by an untrusted key: refused before any write.
    let before = t.inventory();
    let out = t
        .apply(&target(&signed("2.0.0", &rogue), "2.0.0"), &|_, _, _| {})
        .await;
    assert_eq!(out.outcome, pb::FlashOutcome::Refused, "{out:?}");
    assert_eq!(t.inventory(), before, "nothing written");

    // A digest that does not match: refused too.
    let mut bad = target(&signed("2.0.0", &key), "2.0.0");
    bad.sha256 = "0".repeat(64);
    assert_eq!(
        t.apply(&bad, &|_, _, _| {}).await.outcome,
        pb::FlashOutcome::Refused
    );

    // The real thing: both NICs updated, progress reported.
    let stages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = stages.clone();
    let out = t
        .apply(&target(&signed("2.0.0", &key), "2.0.0"), &move |s, _, _| {
            seen.lock().unwrap().push(s.to_owned())
        })
        .await;
    assert_eq!(out.outcome, pb::FlashOutcome::Succeeded, "{out:?}");
    assert!(t.inventory().iter().all(|n| n.running_firmware == "2.0.0"));
    assert!(stages.lock().unwrap().iter().any(|s| s == "Write"));

    // Rollback without a bundle: an A/B switch to 1.0.0.
    let back = pb::FirmwareTarget {
        version: "1.0.0".into(),
        ..Default::default()
    };
    assert_eq!(
        t.apply(&back, &|_, _, _| {}).await.outcome,
        pb::FlashOutcome::Succeeded
    );
    let inv = t.inventory();
    assert!(inv.iter().all(|n| n.running_firmware == "1.0.0"), "{inv:?}");
    assert!(inv.iter().all(|n| n.banks.iter().all(|b| b.bootable)));
}
