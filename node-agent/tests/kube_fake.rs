//! The kube-mode agent against the fake API server (`nexus-kube-fake`): what a real API server
//! does to its writes (status only through the subresource, validated against the CRD) and what
//! a real cluster showed — a heartbeat frozen for the length of a flash.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use base64::Engine as _;
use nexus_agent::kube_mode::KubeAgent;
use nexus_agent::sim::SimNic;
use nexus_crds::NexusNode;
use nexus_firmware::bundle::{self, Manifest, testing};
use nexus_kube_fake::FakeApiServer;
use semver::VersionReq;
use serde_json::json;
use sha2::{Digest, Sha256};

const NODE: &str = "worker-1";

fn signed(version: &str, key: &bundle::SigningKey, len: usize) -> Vec<u8> {
    let m = Manifest::new(
        "mellanox",
        0x15b3,
        vec![0x101d],
        version.parse().unwrap(),
        VersionReq::parse(">=0.1, <1").unwrap(),
    );
    let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    bundle::sign(bundle::pack(m, payload).unwrap(), key).to_bytes()
}

/// A 3-second flash with a 250 ms heartbeat: the status written during the flash carries fresh
/// heartbeats (before, the heartbeat stood still for the whole flash and the controller took
/// the node for dead), and the bundle came from a ConfigMap in the namespace its source names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_during_a_long_flash() {
    let fake = FakeApiServer::new();
    let (key, trust) = testing::key("release", 3);
    let bytes = signed("0.2.0", &key, 150_000);
    let sha = hex::encode(Sha256::digest(&bytes));
    fake.apply_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "fw", "namespace": "firmware"},
        "binaryData": {"bundle": base64::engine::general_purpose::STANDARD.encode(&bytes)},
    }));
    fake.apply_value(json!({
        "apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode",
        "metadata": {"name": NODE},
        "spec": {"fabric": "f", "desiredVersion": 2, "firmware": {
            "version": "0.2.0",
            "bundle": {"configMap": {"name": "fw", "namespace": "firmware", "key": "bundle"}},
            "sha256": sha,
        }},
    }));
    let dir = tempfile::tempdir().unwrap();
    SimNic::create(
        &dir.path().join("nic0"),
        0x15b3,
        0x101d,
        "S",
        "0.1.0",
        &[7; 4096],
    )
    .unwrap();
    let mut agent = KubeAgent::new(fake.client(), NODE, dir.path(), trust).with_flash_speed(50_000);
    agent.heartbeat = Duration::from_millis(250);
    agent.recover(chrono::Utc::now()).unwrap();
    agent.step(chrono::Utc::now()).await.unwrap();

    let beats: Vec<String> = fake
        .writes()
        .iter()
        .filter(|w| w.path.ends_with(&format!("/nexusnodes/{NODE}/status")))
        .filter_map(|w| w.body["status"]["heartbeat"].as_str().map(str::to_owned))
        .collect();
    let mut distinct = beats.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 3,
        "heartbeats during the flash: {beats:?}"
    );
    let n: NexusNode = fake.get(None, NODE).unwrap();
    let st = n.status.unwrap();
    assert_eq!(st.nics[0].running_firmware.as_deref(), Some("0.2.0"));
    assert_eq!(st.applied_version, Some(2));
    for w in fake.writes() {
        assert_eq!(w.manager, "nexus-agent", "{} {}", w.method, w.path);
    }
}
