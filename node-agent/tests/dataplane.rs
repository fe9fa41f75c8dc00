//! The agent supervises the real `nexus-dataplane` with its NexusNode's `spec.dataplane`,
//! against the fake API server: started on the Fabric's UDP port and serving calls, restarted
//! after a SIGKILL (counted, with backoff), restarted on the new port when the Fabric changes
//! it (not counted), and drained and stopped when the agent stops — each step visible in
//! `status.dataplane`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nexus_agent::kube_mode::KubeAgent;
use nexus_agent::supervise::Launch;
use nexus_crds::NexusNode;
use nexus_crds::node::{DataplanePhase, NodeDataplaneStatus};
use nexus_firmware::bundle::testing;
use nexus_kube_fake::FakeApiServer;
use nexus_stream::testing::TestPki;
use serde_json::json;

const NODE: &str = "worker-1";

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<this test> → target/<profile>/<name>
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo test --workspace`)",
        path.display()
    );
    path
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn node(port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "nexus.dev/v1alpha1", "kind": "NexusNode",
        "metadata": {"name": NODE},
        "spec": {"fabric": "f", "desiredVersion": 1, "dataplane": {"udpPort": port}},
    })
}

/// Runs agent rounds until the published `status.dataplane` satisfies `ok`.
async fn until(
    agent: &mut KubeAgent,
    fake: &FakeApiServer,
    what: &str,
    ok: impl Fn(&NodeDataplaneStatus) -> bool,
) -> NodeDataplaneStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        agent.step(chrono::Utc::now()).await.unwrap();
        let n: NexusNode = fake.get(None, NODE).unwrap();
        if let Some(d) = n.status.and_then(|s| s.dataplane)
            && ok(&d)
        {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

async fn call(mic: &Path, port: u16) {
    let client = nexus_api::Client::connect_dir(mic, SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let r = client
        .infer(&nexus_api::InferRequest {
            model: String::new(),
            prompt: "hello".into(),
            max_tokens: 4,
        })
        .await
        .unwrap();
    assert!(!r.text.is_empty());
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: it no longer runs.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_supervises_the_dataplane_with_the_fabrics_configuration() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (node_mic, caller_mic, sim) = (
        dir.path().join("node-mic"),
        dir.path().join("caller-mic"),
        dir.path().join("nics"),
    );
    pki.issue("nexus://acme/coder@1.0.0")
        .unwrap()
        .write_dir(&node_mic)
        .unwrap();
    pki.issue("nexus://acme/caller@1.0.0")
        .unwrap()
        .write_dir(&caller_mic)
        .unwrap();
    std::fs::create_dir_all(&sim).unwrap();

    let fake = FakeApiServer::new();
    let first = free_udp_port();
    fake.apply_value(node(first));
    let (_, trust) = testing::key("release", 3);
    let mut launch = Launch::new(bin("nexus-dataplane"), free_tcp());
    launch.args = vec![
        format!("--mic-dir={}", node_mic.display()),
        "--demo-model".into(),
        "--drain-seconds=1".into(),
    ];
    launch.grace = Duration::from_secs(5);
    launch.probe_every = Duration::from_millis(100);
    // The pod's forwarded port (the DaemonSet's hostPort) is the first one.
    launch.host_port = Some(first);
    let mut agent = KubeAgent::new(fake.client(), NODE, &sim, trust).with_dataplane(launch);
    let reachable = |fake: &FakeApiServer| {
        let n: NexusNode = fake.get(None, NODE).unwrap();
        n.status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "DataplaneReachable")
            .map(|c| (c.status, c.reason, c.message, c.last_transition_time))
            .unwrap()
    };

    // Started on the Fabric's port, ready, serving.
    let s = until(&mut agent, &fake, "Running", |d| {
        d.phase == DataplanePhase::Running && d.udp_port == Some(first)
    })
    .await;
    assert!(s.ready);
    assert_eq!(s.restarts, 0);
    let pid = s.pid.unwrap();
    call(&caller_mic, first).await;
    let (status, reason, ..) = reachable(&fake);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "PortForwarded")
    );

    // SIGKILL: an unplanned exit, counted, restarted after the first backoff step.
    let p = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::KILL).unwrap();
    let s = until(&mut agent, &fake, "a restart", |d| {
        d.phase == DataplanePhase::Running && d.pid != Some(pid)
    })
    .await;
    assert_eq!(s.restarts, 1);
    assert!(
        s.last_exit.as_deref().unwrap().contains("signal 9"),
        "{s:?}"
    );
    call(&caller_mic, first).await;
    let second_pid = s.pid.unwrap();

    // The Fabric moves the dataplane to another port: a planned restart there.
    let moved = free_udp_port();
    fake.apply_value(node(moved));
    let s = until(&mut agent, &fake, "the new port", |d| {
        d.phase == DataplanePhase::Running && d.udp_port == Some(moved)
    })
    .await;
    assert_eq!(s.restarts, 1, "a configuration change is not a failure");
    assert!(s.last_exit.as_deref().unwrap().contains("code 0"), "{s:?}");
    assert!(!alive(second_pid));
    call(&caller_mic, moved).await;
    // …which the node does not forward: the NexusNode says so, naming both ports.
    let (status, reason, message, moved_since) = reachable(&fake);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PortNotForwarded")
    );
    assert!(
        message.contains(&moved.to_string()) && message.contains(&first.to_string()),
        "{message}"
    );
    // A later round keeps the condition's transition time.
    agent.step(chrono::Utc::now()).await.unwrap();
    assert_eq!(reachable(&fake).3, moved_since);

    // The agent stops: the dataplane drains (SIGTERM) and exits.
    let last = s.pid.unwrap();
    agent.stop_dataplane().await;
    assert!(!alive(last));
}
