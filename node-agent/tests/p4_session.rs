//! The agent's P4Runtime session with its dataplane, against the real P4Runtime service
//! (`nexus_p4::server`) on a loopback port: one session kept across rounds, as a switch
//! controller keeps it, and a new one after the dataplane restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nexus_agent::routing::P4RuntimeTables;
use nexus_fleet_agent::RoutingTarget;
use nexus_p4::Target;

/// A P4Runtime service on its own runtime and thread, so that stopping it closes every
/// connection it holds, as a dataplane's exit does.
struct Device {
    target: Arc<Target>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Device {
    fn start(addr: SocketAddr) -> (Device, SocketAddr) {
        let target = Target::new(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let svc = nexus_p4::server::P4RuntimeService::server(Arc::clone(&target));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
                let _ = bound_tx.send(listener.local_addr().expect("address"));
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                tokio::select! {
                    _ = tonic::transport::Server::builder()
                        .add_service(svc)
                        .serve_with_incoming(incoming) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: the streams end.
            rt.shutdown_background();
        });
        let bound = bound_rx.recv().expect("the device started");
        (
            Device {
                target,
                stop: Some(stop),
                thread: Some(thread),
            },
            bound,
        )
    }

    fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn arbitration_changes(&self) -> u64 {
        self.target.metrics().arbitration_changes.get()
    }

    fn streams(&self) -> i64 {
        self.target.metrics().streams.get()
    }
}

fn tables() -> nexus_fleet_api::v1::RoutingTables {
    let schema =
        nexus_p4::p4info::Schema::new(nexus_p4::p4info::nexroute_p4info().expect("p4info"))
            .expect("schema");
    let compiled = nexus_p4::compile::compile(&schema, &[]).expect("compiled");
    nexus_fleet_api::v1::RoutingTables {
        fabric: "f".into(),
        version: compiled.version.clone(),
        entities: compiled
            .entities
            .iter()
            .map(prost::Message::encode_to_vec)
            .collect(),
    }
}

#[tokio::test]
async fn the_agent_keeps_one_session_across_rounds_and_opens_another_after_a_restart() {
    let (device, addr) = Device::start("127.0.0.1:0".parse().expect("address"));
    let t = P4RuntimeTables::new(format!("http://{addr}"), 1);
    t.program(&tables()).await.expect("programmed");
    let changes = device.arbitration_changes();
    assert_eq!(device.streams(), 1, "the agent holds one stream");

    // Rounds: each asks whether the device still runs the pipeline, and programs again
    // (an idempotent diff), as an agent does after a restart of its own.
    for round in 0..10 {
        assert_eq!(t.still_programmed().await, Some(true), "round {round}");
        if round % 3 == 0 {
            t.program(&tables()).await.expect("programmed again");
        }
    }
    assert_eq!(
        device.arbitration_changes(),
        changes,
        "the agent gave the device up and took it back between rounds"
    );
    assert_eq!(device.streams(), 1, "the agent holds one stream");

    // The dataplane restarts empty on the same port: the old session ended with it, so the
    // agent opens another, sees the pipeline gone, and programs it again.
    device.stop();
    let (device, _) = Device::start(addr);
    let mut lost = None;
    for _ in 0..100 {
        lost = t.still_programmed().await;
        if lost.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lost, Some(false), "the restarted device runs no pipeline");
    t.program(&tables())
        .await
        .expect("programmed after the restart");
    assert_eq!(t.still_programmed().await, Some(true));
    assert_eq!(device.streams(), 1, "one session with the restarted device");
    device.stop();
}

#[tokio::test]
async fn a_higher_election_id_takes_the_device_and_the_agent_waits_for_it_back() {
    let (device, addr) = Device::start("127.0.0.1:0".parse().expect("address"));
    let endpoint = format!("http://{addr}");
    let t = P4RuntimeTables::new(endpoint.clone(), 1);
    t.program(&tables()).await.expect("programmed");

    // Another controller takes over; the agent's kept session is now a backup and learns it
    // from the stream, before its write or from the write's refusal. It waits rather than
    // giving up...
    let mut other = nexus_p4::client::Controller::connect(endpoint.clone(), 1, 9)
        .await
        .expect("second controller");
    assert!(other.is_primary());
    // ...and it has something to write: the other controller loads a pipeline under a cookie
    // of its own, so the agent must load its own again.
    other
        .set_pipeline(nexus_p4::p4info::nexroute_p4info().expect("p4info"), 0xdead)
        .await
        .expect("the primary loads a pipeline");
    assert_eq!(t.still_programmed().await, Some(false));
    let waiting = tokio::spawn({
        let t = t.clone();
        async move { t.program(&tables()).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    if waiting.is_finished() {
        panic!(
            "the agent gave up or wrote while another controller was primary: {:?}",
            waiting.await
        );
    }
    // ...and gets the device back on the same session once the other controller leaves.
    drop(other);
    waiting
        .await
        .expect("joined")
        .expect("programmed once the device was handed back");
    assert_eq!(t.still_programmed().await, Some(true));
    assert_eq!(device.streams(), 1, "the agent kept its one stream");
    device.stop();
}
