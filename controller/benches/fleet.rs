//! Fleet rollout simulation: N node agents with in-memory A/B NICs (flash scaled down to 200 ms)
//! over real gRPC on loopback against one local-mode controller.
//!
//! Reports rollout efficiency = theoretical minimum for the strategy (waves × flash + soaks) /
//! measured time (from the end of the start grace to Ready), the process RSS during the run, and
//! the controller's memory for 10,000 registered nodes (RSS growth while building that state).
//!
//! `cargo bench -p nexus-controller --bench fleet` (env: `FLEET_NODES`=1000,
//! `FLEET_MAX_UNAVAILABLE`=10%, `FLEET_SOAK`=0s, `FLEET_MEMORY_NODES`=10000).

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use nexus_controller::rollout::fleet::{Fleet, Timing};
use nexus_crds::fabric::FabricPhase;
use nexus_fleet_agent::{FlashTarget, MemNic};
use nexus_fleet_api::v1 as pb;
use support::{Opts, Sim, since_grace, theoretical};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn env<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Controller state for `n` registered nodes (each with one NIC, labels, an open session
/// channel), one fabric, after a reconcile that started the canary.
fn memory(n: usize) -> (u64, Duration) {
    let dir = std::env::temp_dir().join(format!("nexus-fleet-mem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = Opts {
        nodes: n,
        max_unavailable: "10%".into(),
        ..Opts::default()
    };
    let bundle = dir.join("b.bin");
    std::fs::write(&bundle, b"x").unwrap();
    let fabric: nexus_crds::Fabric =
        serde_saphyr::from_str(&support::manifest(&o, &bundle, &"0".repeat(64))).unwrap();
    let nic = MemNic::new("1.0", Duration::from_millis(1)).inventory();
    let before = rss_kib();
    let mut fleet = Fleet::new(Utc::now());
    fleet.upsert_fabric(fabric);
    let mut receivers = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        receivers.push(rx);
        let labels: HashMap<String, String> =
            [("nexus.dev/fabric".to_owned(), support::FABRIC.to_owned())].into();
        fleet.register(
            pb::Register {
                node_name: support::node_name(i),
                agent_version: "0.1.0".into(),
                nics: nic.clone(),
                labels,
                current: None,
                last_flash: None,
                routing: None,
            },
            tx,
            Utc::now(),
        );
    }
    let t = Instant::now();
    let timing = Timing {
        heartbeat_timeout: Duration::from_secs(30),
        start_grace: Duration::ZERO,
    };
    let _ = fleet.reconcile(Utc::now(), &timing);
    let took = t.elapsed();
    let after = rss_kib();
    drop(receivers);
    let _ = std::fs::remove_dir_all(&dir);
    (after.saturating_sub(before), took)
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n: usize = env("FLEET_NODES", 1000);
    let mem_n: usize = env("FLEET_MEMORY_NODES", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let (kib, reconcile) = rt.block_on(async { memory(mem_n) });
    println!(
        "controller state for {mem_n} nodes: {:.1} MiB RSS growth ({:.2} KiB/node); one reconcile of all: {reconcile:?}",
        kib as f64 / 1024.0,
        kib as f64 / mem_n as f64
    );

    let opts = Opts {
        nodes: n,
        max_unavailable: env("FLEET_MAX_UNAVAILABLE", "10%".to_owned()),
        soak: env("FLEET_SOAK", "0s".to_owned()),
        heartbeat: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(10),
        start_grace: Duration::from_secs(if n > 200 { 5 } else { 1 }),
        ..Opts::default()
    };
    rt.block_on(async {
        let rss0 = rss_kib();
        let sim = Sim::start(opts.clone()).await;
        if std::env::var_os("FLEET_TIMELINE").is_some() {
            // Wave transitions, as seen by polling the controller's state every 2 ms.
            let shared = sim.ctl.as_ref().map(|c| c.shared.clone()).unwrap();
            let grace_end = sim.ctl_started + opts.start_grace;
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    let (batch, updated) = {
                        let f = shared.fleet.lock().await;
                        let st = f.fabrics.get(support::FABRIC).and_then(|e| e.fabric.status.clone());
                        (st.as_ref().and_then(|s| s.current_batch.as_ref().map(|b| b.index)), st.map(|s| s.nodes.updated))
                    };
                    if batch != last {
                        let t = Instant::now().saturating_duration_since(grace_end);
                        println!("  {t:>10.3?}: wave {batch:?}, {updated:?} updated");
                        last = batch;
                    }
                    if batch.is_none() && updated.is_some_and(|u| u as usize == n) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
        let f = sim
            .wait_for(Duration::from_secs(600), |f| {
                f.status.as_ref().is_some_and(|s| {
                    s.phase == Some(FabricPhase::Ready) && s.nodes.updated as usize == n
                })
            })
            .await;
        let took = since_grace(&sim);
        let rss = rss_kib();
        match f {
            Ok(_) => {
                let th = theoretical(&opts);
                println!(
                    "rollout of {n} nodes (canary {}, maxUnavailable {}, soak {}, flash {:?}): {took:.3?} vs theoretical {th:?}: efficiency {:.2}",
                    opts.canary,
                    opts.max_unavailable,
                    opts.soak,
                    opts.flash,
                    th.as_secs_f64() / took.as_secs_f64()
                );
                println!(
                    "max NICs flashing at once: {}; process RSS (controller + {n} agents): {:.1} MiB (+{:.1} MiB during the run)",
                    sim.max_busy.load(std::sync::atomic::Ordering::Relaxed),
                    rss as f64 / 1024.0,
                    rss.saturating_sub(rss0) as f64 / 1024.0
                );
            }
            Err(e) => println!("rollout of {n} nodes did not finish: {e}"),
        }
        sim.shutdown().await;
    });
}
