//! Fleet simulations: the local-mode controller and simulated node agents (in-memory A/B NICs,
//! 200 ms flashes) over real gRPC on loopback, with faults.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nexus_crds::fabric::{BundleState, FabricPhase};
use support::{Opts, Sim, node_name, since_grace, theoretical};

const LONG: Duration = Duration::from_secs(30);

fn running(sim: &Sim) -> Vec<String> {
    sim.nics.iter().map(|n| n.running()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_of_20_nodes_reaches_ready_within_budget() {
    let opts = Opts::default();
    let sim = Sim::start(opts.clone()).await;
    let f = sim
        .wait_for(LONG, |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(FabricPhase::Ready) && s.nodes.updated == 20)
        })
        .await
        .unwrap();
    let took = since_grace(&sim);
    let st = f.status.unwrap();
    assert_eq!(st.nodes.total, 20);
    assert_eq!(st.nodes.updated, 20);
    assert_eq!(st.bundle.map(|b| b.state), Some(BundleState::Verified));
    assert!(running(&sim).iter().all(|v| v == "2.0"));
    assert!(
        sim.nics.iter().all(|n| n.snapshot().flashes == 1),
        "each node flashed once"
    );
    assert!(
        sim.max_busy.load(Ordering::Relaxed) <= 5,
        "never more than maxUnavailable flashing"
    );
    let eff = theoretical(&opts).as_secs_f64() / took.as_secs_f64();
    println!(
        "20 nodes: {took:?} for a theoretical {:?}: efficiency {eff:.2}",
        theoretical(&opts)
    );
    assert!(eff > 0.4, "efficiency {eff:.2}");

    // The HTTP API shows the same.
    let http = sim.http();
    let fabrics: serde_json::Value = reqwest::get(format!("{http}/v1/fabrics"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fabrics["items"][0]["status"]["phase"], "Ready");
    let nodes: serde_json::Value = reqwest::get(format!("{http}/v1/nodes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(20));
    assert_eq!(
        nodes["items"][3]["status"]["nics"][0]["runningFirmware"],
        "2.0"
    );
    assert_eq!(nodes["items"][3]["spec"]["maintenance"], false);
    let metrics = reqwest::get(format!("{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nexus_rollout_actions_total{action=\"start\"} 20"),
        "{metrics}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_flashes_halt_and_roll_back() {
    // One node in 20 (5%) fails its health check, in the first batch.
    let opts = Opts {
        failing: vec![3],
        ..Opts::default()
    };
    let sim = Sim::start(opts).await;
    let f = sim.wait_phase(FabricPhase::RolledBack, LONG).await.unwrap();
    let st = f.status.unwrap();
    assert!(st.nodes.failed >= 1, "{st:?}");
    assert!(
        running(&sim).iter().all(|v| v == "1.0"),
        "{:?}",
        running(&sim)
    );
    for n in &sim.nics {
        let s = n.snapshot();
        assert!(s.banks[s.active].bootable, "every node boots");
    }
    // Nodes after the halted wave were never touched.
    let flashes: Vec<u32> = sim.nics.iter().map(|n| n.snapshot().flashes).collect();
    assert_eq!(sim.nics[19].snapshot().flashes, 0, "{flashes:?} {st:?}");
    // The failed node reported why.
    let http = sim.http();
    let nodes: serde_json::Value = reqwest::get(format!("{http}/v1/nodes"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let failed = &nodes["items"][3];
    assert_eq!(failed["status"]["lastFlash"]["result"], "RolledBack");
    assert_eq!(failed["spec"]["maintenance"], false);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_mid_rollout_resumes_without_reflashing() {
    let opts = Opts {
        nodes: 12,
        max_unavailable: "3".into(),
        flash: Duration::from_millis(300),
        start_grace: Duration::from_millis(800),
        ..Opts::default()
    };
    let mut sim = Sim::start(opts).await;
    // Wait until the first batch is under way, then kill the controller.
    sim.wait_for(LONG, |f| {
        f.status
            .as_ref()
            .is_some_and(|s| s.nodes.updated >= 1 && s.nodes.updating >= 1)
    })
    .await
    .unwrap();
    sim.stop_controller().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.start_controller().await;
    let f = sim
        .wait_for(LONG, |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(FabricPhase::Ready) && s.nodes.updated == 12)
        })
        .await
        .unwrap();
    assert_eq!(f.status.unwrap().nodes.updated, 12);
    assert!(running(&sim).iter().all(|v| v == "2.0"));
    for (i, n) in sim.nics.iter().enumerate() {
        assert_eq!(n.snapshot().flashes, 1, "{} flashed once", node_name(i));
    }
    assert!(
        sim.max_busy.load(Ordering::Relaxed) <= 3,
        "budget held across the restart"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_flash_boots_old_bank_and_reports_it() {
    let opts = Opts {
        nodes: 3,
        canary: 0,
        max_unavailable: "1".into(),
        flash: Duration::from_millis(600),
        paused: false,
        ..Opts::default()
    };
    let mut sim = Sim::start(opts).await;
    let deadline = Instant::now() + LONG;
    while !sim.nics[0].snapshot().busy {
        assert!(
            Instant::now() < deadline,
            "node-00000 never started flashing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sim.kill_agent(0);
    // Power-cycle: the half-written bank does not boot; the old one does.
    sim.nics[0].power_on();
    let s = sim.nics[0].snapshot();
    assert_eq!(s.banks[s.active].version, "1.0");
    assert!(s.banks[s.active].bootable);
    assert!(
        !s.banks[1 - s.active].bootable,
        "partial image is not bootable"
    );
    let h = sim.spawn_agent(0);
    sim.agents[0] = Some(h);
    // The new agent reports the old bank; the controller re-sends the target and it completes.
    let f = sim.wait_phase(FabricPhase::Ready, LONG).await.unwrap();
    assert_eq!(f.status.unwrap().nodes.updated, 3);
    assert_eq!(
        sim.nics[0].snapshot().flashes,
        2,
        "interrupted flash, then one retry"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundle_digest_is_refused_before_any_flash() {
    let opts = Opts {
        nodes: 4,
        bad_digest: true,
        ..Opts::default()
    };
    let sim = Sim::start(opts).await;
    let f = sim
        .wait_for(LONG, |f| {
            f.status
                .as_ref()
                .and_then(|s| s.bundle.as_ref())
                .is_some_and(|b| b.state == BundleState::Failed)
        })
        .await
        .unwrap();
    let st = f.status.unwrap();
    assert!(
        st.bundle
            .unwrap()
            .message
            .unwrap()
            .contains("sha256 mismatch")
    );
    assert_eq!(st.phase, Some(FabricPhase::Pending));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        sim.nics.iter().all(|n| n.snapshot().flashes == 0),
        "nothing was written"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_counts_as_unavailable_and_pause_resume_rollback_work() {
    let opts = Opts {
        nodes: 4,
        paused: true,
        heartbeat_timeout: Duration::from_millis(600),
        ..Opts::default()
    };
    let mut sim = Sim::start(opts).await;
    sim.wait_for(LONG, |f| {
        f.status.as_ref().is_some_and(|s| s.nodes.total == 4)
    })
    .await
    .unwrap();
    sim.kill_agent(2);
    let f = sim
        .wait_for(LONG, |f| {
            f.status.as_ref().is_some_and(|s| s.nodes.unavailable == 1)
        })
        .await
        .unwrap();
    assert_eq!(f.status.unwrap().phase, Some(FabricPhase::Paused));
    assert!(
        sim.nics.iter().all(|n| n.snapshot().flashes == 0),
        "paused: nothing flashed"
    );
    sim.restart_agent(2);
    // Resume through the API; the rollout completes.
    let http = sim.http();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{http}/v1/fabrics/sim/resume"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    sim.wait_phase(FabricPhase::Ready, LONG).await.unwrap();
    // Roll back through the API: every node returns to 1.0 by an A/B switch.
    let r = client
        .post(format!("{http}/v1/fabrics/sim/rollback"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    sim.wait_phase(FabricPhase::RolledBack, LONG).await.unwrap();
    assert!(running(&sim).iter().all(|v| v == "1.0"));
    let r = client
        .post(format!("{http}/v1/fabrics/nope/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bundles_are_fetched_by_digest_not_inlined() {
    // 3 MiB: above the inline limit, so each agent pulls it with FetchBundle (3 chunks).
    let opts = Opts {
        nodes: 4,
        max_unavailable: "2".into(),
        bundle_bytes: 3 * 1024 * 1024,
        ..Opts::default()
    };
    let sim = Sim::start(opts).await;
    let f = sim
        .wait_for(LONG, |f| {
            f.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(FabricPhase::Ready) && s.nodes.updated == 4)
        })
        .await
        .unwrap();
    assert_eq!(f.status.unwrap().nodes.updated, 4);
    assert!(running(&sim).iter().all(|v| v == "2.0"));
    sim.shutdown().await;
}
