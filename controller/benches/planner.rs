//! Rollout planner step for a 10,000-node fabric (target < 10 ms), beside the floor any planner
//! pays: sorting the same nodes by name.

use std::time::Duration;

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use nexus_controller::rollout::plan::{NodeView, Strategy, plan};
use nexus_crds::node::FlashOutcome;

fn fleet(n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| {
            let done = i < n / 3;
            NodeView {
                name: format!("gpu-node-{:05}", (i * 7919) % n),
                spec_target: Some(if done || i % 50 == 0 { "2.0" } else { "1.0" }.into()),
                maintenance: i % 50 == 0,
                running: Some(if done { "2.0" } else { "1.0" }.into()),
                previous: done.then(|| "1.0".into()),
                last_flash: done.then(|| ("2.0".into(), FlashOutcome::Succeeded, Some(Utc::now()))),
                heartbeat_fresh: i % 997 != 0,
                draining: false,
                skipped_at: None,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let nodes = fleet(10_000);
    let s = Strategy {
        target: "2.0".into(),
        canary: 5,
        max_unavailable: 1000,
        soak: Duration::from_secs(300),
        failure_threshold: 10,
        auto_rollback: true,
        paused: false,
        retry_skipped_after: Duration::from_secs(600),
    };
    let now = Utc::now();
    let mut g = c.benchmark_group("rollout_10k_nodes");
    g.bench_function("planner_step", |b| {
        b.iter(|| plan(&s, std::hint::black_box(&nodes), false, now))
    });
    g.bench_function("baseline_sort_by_name", |b| {
        b.iter(|| {
            let mut v: Vec<&NodeView> = std::hint::black_box(&nodes).iter().collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
