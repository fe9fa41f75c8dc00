//! End to end with the real node agent: the local-mode controller and `nexus-agent`'s
//! `--controller` flash target (simulated NICs on disk, signed bundles, the real flash state
//! machine) over gRPC on loopback.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_agent::fleet::SimFleetTarget;
use nexus_agent::nic::BankContent;
use nexus_agent::sim::SimNic;
use nexus_controller::rollout::local::{LocalArgs, LocalController};
use nexus_crds::Fabric;
use nexus_crds::fabric::FabricPhase;
use nexus_crds::node::FlashOutcome;
use nexus_firmware::bundle::{self, Manifest, testing};
use nexus_fleet_agent::{Agent, AgentConfig, Backoff};
use semver::VersionReq;
use sha2::{Digest, Sha256};

const VENDOR: u16 = 0x15b3;
const DEVICE: u16 = 0x101d;
const NODES: usize = 3;

fn signed(key: &bundle::SigningKey) -> Vec<u8> {
    let m = Manifest::new(
        "mellanox",
        VENDOR,
        vec![DEVICE],
        "2.0.0".parse().unwrap(),
        VersionReq::parse(">=0.1, <1").unwrap(),
    );
    let payload: Vec<u8> = (0..300_000).map(|i| (i % 241) as u8).collect();
    bundle::sign(bundle::pack(m, payload).unwrap(), key).to_bytes()
}

struct Env {
    dir: PathBuf,
    ctl: LocalController,
    agents: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(name: &str, bundle: &[u8]) -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("nexus-agent-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let bundle_path = dir.join("fw-2.0.0.bundle");
    std::fs::write(&bundle_path, bundle).unwrap();
    let sha = hex::encode(Sha256::digest(bundle));
    std::fs::write(
        dir.join("manifests/fabric.yaml"),
        format!(
            r#"apiVersion: nexus.dev/v1alpha1
kind: Fabric
metadata: {{name: gpu}}
spec:
  nodeSelector: {{matchLabels: {{pool: gpu}}}}
  nic: {{vendor: nvidia, pciVendorId: "15b3", pciDeviceIds: ["101d"]}}
  firmware: {{version: "2.0.0", bundle: {{url: "file://{}"}}, sha256: "{sha}"}}
  rollout: {{canary: 1, maxUnavailable: 2, soakTime: 0s}}
"#,
            bundle_path.display()
        ),
    )
    .unwrap();
    let ctl = LocalController::start(LocalArgs {
        manifests: dir.join("manifests"),
        listen: "127.0.0.1:0".parse().unwrap(),
        status_listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_timeout: Duration::from_secs(5),
        start_grace: Duration::from_millis(300),
        rescan: Duration::from_secs(1),
        routing: Default::default(),
        tls: Default::default(),
    })
    .await
    .unwrap();
    let (_, trust) = testing::key("release", 42);
    let mut agents = Vec::new();
    for i in 0..NODES {
        let nic_dir = nic_dir(&dir, i);
        SimNic::create(
            &nic_dir,
            VENDOR,
            DEVICE,
            &format!("SIM{i}"),
            "1.0.0",
            &[1; 8192],
        )
        .unwrap();
        let target = SimFleetTarget::new(nic_dir.parent().unwrap(), trust.clone(), None);
        target.recover_all().unwrap();
        let mut cfg = AgentConfig::new(format!("http://{}", ctl.grpc_addr), format!("gpu-{i}"));
        cfg.labels.insert("pool".into(), "gpu".into());
        cfg.heartbeat = Duration::from_millis(200);
        cfg.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(200));
        agents.push(tokio::spawn(Agent::new(cfg, Arc::new(target)).run()));
    }
    Env { dir, ctl, agents }
}

fn nic_dir(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("node-{i}/nic0"))
}

impl Env {
    async fn wait(&self, pred: impl Fn(&Fabric) -> bool) -> Fabric {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let f = self
                .ctl
                .shared
                .fleet
                .lock()
                .await
                .fabrics
                .get("gpu")
                .map(|e| e.fabric.clone());
            if let Some(f) = f
                && pred(&f)
            {
                return f;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: {:?}",
                f_status(&self.ctl).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        for a in &self.agents {
            a.abort();
        }
        self.ctl.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn f_status(ctl: &LocalController) -> Option<nexus_crds::FabricStatus> {
    ctl.shared
        .fleet
        .lock()
        .await
        .fabrics
        .get("gpu")
        .and_then(|e| e.fabric.status.clone())
}

fn phase(f: &Fabric) -> Option<FabricPhase> {
    f.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bundle_rolls_out_through_the_real_flash_state_machine() {
    let (key, _) = testing::key("release", 42);
    let env = start("ok", &signed(&key)).await;
    env.wait(|f| {
        phase(f) == Some(FabricPhase::Ready)
            && f.status.as_ref().is_some_and(|s| s.nodes.updated == 3)
    })
    .await;
    for i in 0..NODES {
        let s = SimNic::peek(&nic_dir(&env.dir, i)).unwrap();
        let active = s.banks.bank(s.banks.active);
        assert!(
            matches!(active, BankContent::Valid(img) if img.version == "2.0.0"),
            "{active:?}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_signed_by_an_untrusted_key_is_refused_before_any_write() {
    // The digest matches the Fabric (the controller verifies it), but the agents do not trust
    // the signer: the canary refuses it, the rollout halts, nothing was written anywhere.
    let (rogue, _) = testing::key("release", 43);
    let env = start("rogue", &signed(&rogue)).await;
    let f = env
        .wait(|f| {
            matches!(
                phase(f),
                Some(FabricPhase::RolledBack | FabricPhase::Halted)
            )
        })
        .await;
    assert_eq!(f.status.unwrap().nodes.failed, 1);
    let nodes = env
        .ctl
        .shared
        .fleet
        .lock()
        .await
        .nodes
        .values()
        .map(|e| e.node.clone())
        .collect::<Vec<_>>();
    let refused: Vec<_> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.last_flash.clone())
        .collect();
    assert_eq!(refused.len(), 1, "only the canary tried");
    assert_eq!(refused[0].result, FlashOutcome::Refused);
    assert!(
        refused[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("signature"),
        "{refused:?}"
    );
    for i in 0..NODES {
        let s = SimNic::peek(&nic_dir(&env.dir, i)).unwrap();
        assert!(
            matches!(s.banks.b, BankContent::Empty),
            "bank B untouched on node {i}"
        );
    }
    env.stop().await;
}
