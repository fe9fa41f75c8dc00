//! A simulated fleet: one local-mode controller and N node agents with in-memory A/B NICs, over
//! real gRPC on loopback. Shared by `tests/fleet.rs` and `benches/fleet.rs`.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nexus_controller::rollout::local::{LocalArgs, LocalController};
use nexus_crds::Fabric;
use nexus_crds::fabric::FabricPhase;
use nexus_fleet_agent::memnic::Faults;
use nexus_fleet_agent::{Agent, AgentConfig, Backoff, MemNic};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

pub const FABRIC: &str = "sim";

#[derive(Clone, Debug)]
pub struct Opts {
    pub nodes: usize,
    pub flash: Duration,
    pub canary: u32,
    pub max_unavailable: String,
    pub soak: String,
    pub failure_threshold: u32,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    pub start_grace: Duration,
    pub bad_digest: bool,
    pub paused: bool,
    /// Nodes whose flash of 2.0 fails its health check.
    pub failing: Vec<usize>,
    pub bundle_bytes: usize,
    /// RoutingDomain evidence for the controller.
    pub routing: nexus_controller::routing::local::RoutingArgs,
    /// Nodes whose agent programs a dataplane: each gets the real P4Runtime service (nexus-p4's
    /// software target, as the dataplane embeds it) on a loopback port.
    pub p4_nodes: Vec<usize>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            nodes: 20,
            flash: Duration::from_millis(200),
            canary: 1,
            max_unavailable: "5".into(),
            soak: "0s".into(),
            failure_threshold: 0,
            heartbeat: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(2),
            // Lets every agent register before the waves are cut (as after a restart).
            start_grace: Duration::from_millis(500),
            bad_digest: false,
            paused: false,
            failing: Vec::new(),
            bundle_bytes: 16 * 1024,
            routing: Default::default(),
            p4_nodes: Vec::new(),
        }
    }
}

pub struct Sim {
    pub opts: Opts,
    pub dir: PathBuf,
    pub ctl: Option<LocalController>,
    pub grpc: std::net::SocketAddr,
    pub nics: Vec<MemNic>,
    pub agents: Vec<Option<JoinHandle<()>>>,
    /// Most NICs flashing at once, as the NICs themselves saw it.
    pub max_busy: Arc<AtomicU32>,
    /// When the (last) controller started.
    pub ctl_started: Instant,
    monitor_stop: Arc<AtomicBool>,
    /// Per node: its dataplane's P4Runtime target and endpoint, if it has one.
    pub p4: Vec<Option<(Arc<nexus_p4::Target>, String)>>,
}

/// Serves the real P4Runtime service over `target` on a loopback port; returns its URL.
pub async fn serve_p4runtime(target: Arc<nexus_p4::Target>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = nexus_p4::server::P4RuntimeService::server(target);
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    format!("http://{addr}")
}

pub fn node_name(i: usize) -> String {
    format!("node-{i:05}")
}

fn max_unavailable_yaml(s: &str) -> String {
    if s.ends_with('%') {
        format!("\"{s}\"")
    } else {
        s.to_owned()
    }
}

pub fn manifest(o: &Opts, bundle_path: &std::path::Path, sha: &str) -> String {
    format!(
        r#"apiVersion: nexus.dev/v1alpha1
kind: Fabric
metadata:
  name: {FABRIC}
spec:
  nodeSelector:
    matchLabels:
      nexus.dev/fabric: {FABRIC}
  nic:
    vendor: nexus-sim
    pciVendorId: "1d0f"
    pciDeviceIds: ["efa1"]
  firmware:
    version: "2.0"
    bundle:
      url: "file://{}"
    sha256: "{sha}"
  rollout:
    canary: {}
    maxUnavailable: {}
    soakTime: "{}"
    failureThreshold: {}
    autoRollback: true
    paused: {}
"#,
        bundle_path.display(),
        o.canary,
        max_unavailable_yaml(&o.max_unavailable),
        o.soak,
        o.failure_threshold,
        o.paused,
    )
}

impl Sim {
    /// Writes the bundle and the Fabric, starts the controller and every agent.
    pub async fn start(opts: Opts) -> Sim {
        let _ = rustls::crypto::ring::default_provider().install_default();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nexus-fleet-sim-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bundle: Vec<u8> = (0..opts.bundle_bytes)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let bundle_path = dir.join("firmware-2.0.bundle");
        std::fs::write(&bundle_path, &bundle).unwrap();
        let sha = if opts.bad_digest {
            hex::encode(Sha256::digest(b"something else"))
        } else {
            hex::encode(Sha256::digest(&bundle))
        };
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(
            manifests.join("fabric.yaml"),
            manifest(&opts, &bundle_path, &sha),
        )
        .unwrap();
        let nics: Vec<MemNic> = (0..opts.nodes)
            .map(|i| {
                let nic = MemNic::new("1.0", opts.flash);
                if opts.failing.contains(&i) {
                    nic.set_faults(Faults {
                        fail_versions: vec!["2.0".into()],
                    });
                }
                nic
            })
            .collect();
        let mut sim = Sim {
            grpc: "127.0.0.1:0".parse().unwrap(),
            opts,
            dir,
            ctl: None,
            nics,
            agents: Vec::new(),
            max_busy: Arc::new(AtomicU32::new(0)),
            ctl_started: Instant::now(),
            monitor_stop: Arc::new(AtomicBool::new(false)),
            p4: Vec::new(),
        };
        for i in 0..sim.opts.nodes {
            let t = if sim.opts.p4_nodes.contains(&i) {
                let target = nexus_p4::Target::new(1);
                let url = serve_p4runtime(target.clone()).await;
                Some((target, url))
            } else {
                None
            };
            sim.p4.push(t);
        }
        sim.start_controller().await;
        for i in 0..sim.opts.nodes {
            let h = sim.spawn_agent(i);
            sim.agents.push(Some(h));
        }
        let nics = sim.nics.clone();
        let max_busy = sim.max_busy.clone();
        let stop = sim.monitor_stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let busy = nics.iter().filter(|n| n.snapshot().busy).count() as u32;
                max_busy.fetch_max(busy, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        sim
    }

    pub async fn start_controller(&mut self) {
        self.ctl_started = Instant::now();
        let ctl = LocalController::start(LocalArgs {
            manifests: self.dir.join("manifests"),
            listen: self.grpc,
            status_listen: "127.0.0.1:0".parse().unwrap(),
            heartbeat_timeout: self.opts.heartbeat_timeout,
            start_grace: self.opts.start_grace,
            rescan: Duration::from_millis(500),
            routing: self.opts.routing.clone(),
            tls: Default::default(),
        })
        .await
        .unwrap();
        self.grpc = ctl.grpc_addr;
        self.ctl = Some(ctl);
    }

    pub async fn stop_controller(&mut self) {
        if let Some(c) = self.ctl.take() {
            c.stop().await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.ctl.as_ref().unwrap().http_addr)
    }

    pub fn spawn_agent(&self, i: usize) -> JoinHandle<()> {
        let mut cfg = AgentConfig::new(self.endpoint(), node_name(i));
        cfg.labels.insert("nexus.dev/fabric".into(), FABRIC.into());
        cfg.heartbeat = self.opts.heartbeat;
        cfg.backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(300));
        self.nics[i].power_on();
        let mut agent = Agent::new(cfg, Arc::new(self.nics[i].clone()));
        if let Some(Some((_, url))) = self.p4.get(i) {
            agent = agent.with_routing(Arc::new(nexus_agent::routing::P4RuntimeTables::new(
                url.clone(),
                1,
            )));
        }
        tokio::spawn(agent.run())
    }

    pub fn kill_agent(&mut self, i: usize) {
        if let Some(h) = self.agents[i].take() {
            h.abort();
        }
    }

    pub fn restart_agent(&mut self, i: usize) {
        self.kill_agent(i);
        let h = self.spawn_agent(i);
        self.agents[i] = Some(h);
    }

    pub async fn fabric(&self) -> Option<Fabric> {
        let ctl = self.ctl.as_ref()?;
        let f = ctl.shared.fleet.lock().await;
        f.fabrics.get(FABRIC).map(|e| e.fabric.clone())
    }

    pub async fn phase(&self) -> Option<FabricPhase> {
        self.fabric().await?.status?.phase
    }

    /// Polls until `pred` holds for the fabric, or `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Fabric) -> bool,
    ) -> Result<Fabric, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(f) = self.fabric().await {
                if pred(&f) {
                    return Ok(f);
                }
                last = Some(f);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err(format!(
            "timed out; last status: {:?}",
            last.and_then(|f| f.status)
        ))
    }

    pub async fn wait_phase(
        &self,
        phase: FabricPhase,
        timeout: Duration,
    ) -> Result<Fabric, String> {
        self.wait_for(timeout, |f| {
            f.status.as_ref().and_then(|s| s.phase) == Some(phase)
        })
        .await
    }

    pub async fn shutdown(mut self) {
        self.monitor_stop.store(true, Ordering::Relaxed);
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
        self.stop_controller().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Time since the controller's start grace ended (the rollout's own duration).
pub fn since_grace(sim: &Sim) -> Duration {
    sim.ctl_started
        .elapsed()
        .saturating_sub(sim.opts.start_grace)
}

/// The fastest the strategy allows: every wave takes one flash; soaks add up between waves.
pub fn theoretical(o: &Opts) -> Duration {
    let n = o.nodes as u32;
    let canary = o.canary.min(n);
    let budget = if let Some(p) = o.max_unavailable.strip_suffix('%') {
        let p: u32 = p.parse().unwrap();
        (n * p).div_ceil(100).max(1)
    } else {
        o.max_unavailable.parse::<u32>().unwrap().max(1)
    };
    let waves = u32::from(canary > 0) + (n - canary).div_ceil(budget);
    let soak = nexus_crds::common::parse_duration(&o.soak).unwrap();
    o.flash * waves + soak * waves.saturating_sub(1)
}
