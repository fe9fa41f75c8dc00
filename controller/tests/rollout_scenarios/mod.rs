//! Rollout scenarios shared by `rollout_kube.rs` (the fake API server, always) and
//! `rollout_cluster.rs` (a real API server, when KUBECONFIG is set): the kube driver of the
//! rollout with real node agents (`nexus-agent` kube mode over simulated NICs, signed bundles,
//! the real A/B flash state machine), everything through `kube::Client`, so the same scenario
//! runs against either server.
//!
//! A small "kubelet and ReplicaSet" loop stands in for what a cluster without kubelets lacks:
//! pods are marked Ready, terminating pods are removed (force-deleted), replacements are
//! scheduled on nodes that are not cordoned.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use nexus_agent::kube_mode::KubeAgent;
use nexus_agent::sim::SimNic;
use nexus_controller::rollout::reconcile::{Context, Stores, run};
use nexus_crds::fabric::FabricPhase;
use nexus_crds::{Fabric, NexusNode};
use nexus_firmware::bundle::{self, Manifest, testing};
use semver::VersionReq;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::oneshot;

pub const VENDOR: u16 = 0x15b3;
pub const DEVICE: u16 = 0x101d;
/// A NIC model the bundle's manifest does not list: the agent refuses the bundle there.
pub const OTHER_DEVICE: u16 = 0x1021;
/// Field manager of what the harness itself writes.
pub const HARNESS: &str = "nexus-e2e";

pub fn signed(version: &str, key: &bundle::SigningKey) -> Vec<u8> {
    let m = Manifest::new(
        "mellanox",
        VENDOR,
        vec![DEVICE],
        version.parse().unwrap(),
        VersionReq::parse(">=0.1, <1").unwrap(),
    );
    let payload: Vec<u8> = (0..50_000).map(|i| (i % 251) as u8).collect();
    bundle::sign(bundle::pack(m, payload).unwrap(), key).to_bytes()
}

/// Server-side applies any object (as the harness).
pub async fn put(client: &kube::Client, obj: Value) {
    let kind = obj["kind"].as_str().unwrap().to_owned();
    let api_version = obj["apiVersion"].as_str().unwrap().to_owned();
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_owned);
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, &kind);
    let plural = match kind.as_str() {
        "PodDisruptionBudget" => "poddisruptionbudgets".to_owned(),
        k => format!("{}s", k.to_lowercase()),
    };
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<kube::api::DynamicObject> = match &ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply(HARNESS).force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

pub async fn list<K>(client: &kube::Client) -> Vec<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

pub async fn pods(client: &kube::Client, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

pub async fn events(client: &kube::Client, reason: &str) -> Vec<Event> {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

pub struct Cluster {
    pub client: kube::Client,
    /// Namespace of the pods, the PDB and the bundle ConfigMap.
    pub ns: String,
    /// The Fabric's name.
    pub fabric: String,
    /// The Nodes' names.
    pub nodes: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Most nodes cordoned at once, as seen by the harness.
    pub max_cordoned: Arc<AtomicU32>,
    running: Arc<AtomicBool>,
}

impl Cluster {
    pub async fn stop(self) {
        self.running.store(false, Ordering::SeqCst);
        for s in self.stop {
            let _ = s.send(());
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Deletes what the scenario created (real clusters).
    pub async fn clean_up(&self) {
        let dp = DeleteParams::default();
        let _ = Api::<Fabric>::all(self.client.clone())
            .delete(&self.fabric, &dp)
            .await;
        for n in &self.nodes {
            let _ = Api::<Node>::all(self.client.clone()).delete(n, &dp).await;
            let _ = Api::<NexusNode>::all(self.client.clone())
                .delete(n, &dp)
                .await;
        }
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .delete(&self.ns, &dp)
            .await;
    }

    pub async fn get_fabric(&self) -> Option<Fabric> {
        Api::<Fabric>::all(self.client.clone())
            .get_opt(&self.fabric)
            .await
            .ok()
            .flatten()
    }

    pub async fn phase_reaches(&self, want: &[FabricPhase], secs: u64) -> Fabric {
        for _ in 0..secs * 5 {
            if let Some(f) = self.get_fabric().await
                && f.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| want.contains(&p))
            {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let f = self.get_fabric().await;
        panic!(
            "the Fabric never reached {want:?}: {}",
            serde_json::to_string_pretty(&f.and_then(|f| f.status)).unwrap()
        );
    }

    pub async fn running_versions(&self) -> BTreeMap<String, String> {
        list::<NexusNode>(&self.client)
            .await
            .into_iter()
            .filter(|n| {
                n.metadata
                    .name
                    .as_ref()
                    .is_some_and(|x| self.nodes.contains(x))
            })
            .map(|n| {
                let v = n
                    .status
                    .and_then(|s| s.nics.first().and_then(|nic| nic.running_firmware.clone()))
                    .unwrap_or_default();
                (n.metadata.name.unwrap_or_default(), v)
            })
            .collect()
    }

    pub async fn uncordoned(&self) -> bool {
        list::<Node>(&self.client)
            .await
            .iter()
            .filter(|n| {
                n.metadata
                    .name
                    .as_ref()
                    .is_some_and(|x| self.nodes.contains(x))
            })
            .all(|n| n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true))
    }
}

pub struct Opts {
    /// Run id: names of nodes, namespace and Fabric carry it (a real cluster is shared).
    pub id: String,
    pub nodes: usize,
    /// Nodes whose NIC is a model the bundle does not support (their flash is refused).
    pub refused: Vec<usize>,
    pub rollout: Value,
    /// Put the bundle's ConfigMap in another namespace than the controller's (`true`), or name
    /// a ConfigMap that does not exist (`false`).
    pub bundle_exists: bool,
    pub pdb_min_available: Option<u32>,
}

/// Nodes, pods behind a PDB, the bundle in a ConfigMap of the scenario's namespace (not the
/// controller's), agents, the harness loop and the leading controller, all running.
pub async fn cluster(client: kube::Client, eviction_client: kube::Client, opts: Opts) -> Cluster {
    let id = opts.id.clone();
    let ns = format!("nexus-e2e-{id}");
    let fabric_name = format!("gpu-{id}");
    let pool = format!("gpu-{id}");
    put(
        &client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await;
    let (key, trust) = testing::key("release", 7);
    let bytes = signed("0.2.0", &key);
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    put(
        &client,
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "fw-2-0", "namespace": ns},
            "binaryData": {"bundle": base64::engine::general_purpose::STANDARD.encode(&bytes)},
        }),
    )
    .await;
    let mut dirs = Vec::new();
    let mut stop = Vec::new();
    let mut tasks = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..opts.nodes {
        let name = format!("{id}-node-{i}");
        nodes.push(name.clone());
        put(
            &client,
            json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"nexus.dev/e2e-pool": pool}},
            }),
        )
        .await;
        put(&client, json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i}"), "namespace": ns, "labels": {"app": "web"}},
            "spec": {"nodeName": name, "containers": [{"name": "c", "image": "registry.invalid/web"}]},
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let device = if opts.refused.contains(&i) {
            OTHER_DEVICE
        } else {
            DEVICE
        };
        SimNic::create(
            &dir.path().join("nic0"),
            VENDOR,
            device,
            "SIM",
            "0.1.0",
            &[7; 4096],
        )
        .unwrap();
        let mut agent = KubeAgent::new(client.clone(), name.clone(), dir.path(), trust.clone());
        agent.heartbeat = Duration::from_millis(500);
        dirs.push(dir);
        let (tx, mut rx) = oneshot::channel::<()>();
        stop.push(tx);
        tasks.push(tokio::spawn(async move {
            let _ = agent.recover(chrono::Utc::now());
            loop {
                // The NexusNode may not exist yet: the controller creates it.
                let _ = agent.step(chrono::Utc::now()).await;
                tokio::select! {
                    _ = &mut rx => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }));
    }
    if let Some(min) = opts.pdb_min_available {
        put(
            &client,
            json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "web", "namespace": ns},
                "spec": {"minAvailable": min, "selector": {"matchLabels": {"app": "web"}}},
            }),
        )
        .await;
    }
    let source = if opts.bundle_exists {
        json!({"configMap": {"name": "fw-2-0", "namespace": ns, "key": "bundle"}})
    } else {
        json!({"configMap": {"name": "no-such-configmap", "key": "bundle"}})
    };
    put(&client, json!({
        "apiVersion": "nexus.dev/v1alpha1", "kind": "Fabric",
        "metadata": {"name": fabric_name},
        "spec": {
            "nodeSelector": {"matchLabels": {"nexus.dev/e2e-pool": pool}},
            "nic": {"vendor": "nvidia", "pciVendorId": "15b3", "pciDeviceIds": ["101d", "1021"]},
            "firmware": {"version": "0.2.0", "bundle": source, "sha256": sha},
            "rollout": opts.rollout,
        },
    }))
    .await;

    // The rest of the cluster: pods become Ready, terminating pods go (a kubelet would confirm
    // them), replacements land on nodes that are not cordoned (a ReplicaSet would make them).
    let running = Arc::new(AtomicBool::new(true));
    let max_cordoned = Arc::new(AtomicU32::new(0));
    {
        let client = client.clone();
        let running = running.clone();
        let max_cordoned = max_cordoned.clone();
        let want = opts.nodes;
        let ns = ns.clone();
        let ours = nodes.clone();
        tasks.push(tokio::spawn(async move {
            let mut next = 1000;
            let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            while running.load(Ordering::SeqCst) {
                let all: Vec<Node> = list(&client).await;
                let mine: Vec<&Node> = all
                    .iter()
                    .filter(|n| n.metadata.name.as_ref().is_some_and(|x| ours.contains(x)))
                    .collect();
                let cordoned = mine
                    .iter()
                    .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true))
                    .count() as u32;
                max_cordoned.fetch_max(cordoned, Ordering::SeqCst);
                let current = pods(&client, &ns).await;
                for p in &current {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    if p.metadata.deletion_timestamp.is_some() {
                        let _ = pods_api
                            .delete(&name, &DeleteParams::default().grace_period(0))
                            .await;
                    } else if !p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                    {
                        let status = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True"}]}});
                        let _ = pods_api
                            .patch_status(
                                &name,
                                &PatchParams::apply(HARNESS).force(),
                                &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "status": status["status"]})),
                            )
                            .await;
                    }
                }
                let live = current
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count();
                let schedulable: Vec<String> = mine
                    .iter()
                    .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true))
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                if live < want && !schedulable.is_empty() {
                    let node = &schedulable[next % schedulable.len()];
                    put(&client, json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": format!("web-{next}"), "namespace": ns, "labels": {"app": "web"}},
                        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/web"}]},
                    }))
                    .await;
                    next += 1;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }

    // The controller, leading.
    let (tx, rx) = oneshot::channel::<()>();
    stop.push(tx);
    let c2 = client.clone();
    tasks.push(tokio::spawn(run(
        client.clone(),
        move |stores: Stores| {
            let ctx = Context::new(c2, eviction_client, "nexus-system", stores);
            ctx.leader.store(true, Ordering::SeqCst);
            Arc::new(ctx)
        },
        async move {
            let _ = rx.await;
        },
    )));
    Cluster {
        client,
        ns,
        fabric: fabric_name,
        nodes,
        _dirs: dirs,
        stop,
        tasks,
        max_cordoned,
        running,
    }
}

/// Waves of nodes that all run pods behind a PDB allowing one disruption at a time: every wave
/// finishes, the budget holds, nothing stays cordoned, the ConfigMap's own namespace is read,
/// each wave is announced once.
pub async fn waves_with_pods_behind_a_pdb(c: &Cluster) {
    let f = c.phase_reaches(&[FabricPhase::Ready], 120).await;
    let versions = c.running_versions().await;
    assert!(versions.values().all(|v| v == "0.2.0"), "{versions:?}");
    assert_eq!(
        f.status.as_ref().unwrap().nodes.updated,
        c.nodes.len() as u32
    );
    assert!(
        c.max_cordoned.load(Ordering::SeqCst) <= 2,
        "maxUnavailable held"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.uncordoned().await, "no node left cordoned after Ready");
    let waves: i32 = events(&c.client, "WaveStarted")
        .await
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_ref()) == Some(&c.fabric))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum();
    assert!(
        (1..=3).contains(&waves),
        "{waves} WaveStarted events for 3 waves"
    );
}

/// A refused flash halts the rollout (failureThreshold 0) and rolls updated nodes back by an
/// A/B switch the API server accepts; no node stays cordoned.
pub async fn a_failure_halts_and_rolls_back(c: &Cluster) {
    let f = c.phase_reaches(&[FabricPhase::RolledBack], 120).await;
    let st = f.status.unwrap();
    assert!(st.nodes.failed >= 1, "{:?}", st.nodes);
    let versions = c.running_versions().await;
    assert!(versions.values().all(|v| v == "0.1.0"), "{versions:?}");
    let rollbacks =
        events(&c.client, "RollingBack").await.len() + events(&c.client, "RolledBack").await.len();
    assert!(rollbacks > 0, "the rollback is announced");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        c.uncordoned().await,
        "no node left cordoned after the rollback"
    );
}
