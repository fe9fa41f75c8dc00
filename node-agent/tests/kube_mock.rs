//! `nexus-agent kube` against kube's mock API service: each scenario checks the exact requests the
//! agent makes (method, path, query, body) around the real flash state machine over a simulated
//! NIC.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use chrono::Utc;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use nexus_agent::Bank;
use nexus_agent::kube_mode::KubeAgent;
use nexus_agent::sim::SimNic;
use nexus_firmware::bundle::{self, Manifest, testing};
use semver::VersionReq;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NODE: &str = "worker-1";
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

fn node(firmware: Value) -> Value {
    json!({
        "apiVersion": "nexus.dev/v1alpha1",
        "kind": "NexusNode",
        "metadata": {"name": NODE, "uid": "uid-1", "resourceVersion": "3"},
        "spec": {"fabric": "fab", "desiredVersion": 7, "firmware": firmware},
    })
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// Serves GETs of the NexusNode and records every status PATCH as (path?query, body) until the
/// client is dropped. Any other request fails the test.
async fn api_server(
    mut handle: Handle,
    object: Value,
    config_map: Option<Value>,
) -> Vec<(String, Value)> {
    use http_body_util::BodyExt;
    let mut patches = Vec::new();
    let mut current = object;
    while let Some((req, send)) = handle.next_request().await {
        let method = req.method().as_str().to_owned();
        let uri = req.uri().to_string();
        let path = req.uri().path().to_owned();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        match method.as_str() {
            "GET" if path.starts_with("/api/v1/") => {
                assert_eq!(path, "/api/v1/namespaces/nexus-system/configmaps/firmware");
                let cm = config_map.clone().expect("no ConfigMap in this scenario");
                send.send_response(respond(StatusCode::OK, &cm));
            }
            "GET" => {
                assert_eq!(path, format!("/apis/nexus.dev/v1alpha1/nexusnodes/{NODE}"));
                send.send_response(respond(StatusCode::OK, &current));
            }
            "PATCH" => {
                assert_eq!(
                    path,
                    format!("/apis/nexus.dev/v1alpha1/nexusnodes/{NODE}/status"),
                    "{uri}"
                );
                assert!(uri.contains("fieldManager=nexus-agent"), "{uri}");
                let body: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(body["apiVersion"], "nexus.dev/v1alpha1");
                assert_eq!(body["kind"], "NexusNode");
                assert_eq!(body["metadata"]["name"], NODE);
                assert!(body.get("spec").is_none(), "the agent never writes spec");
                current["status"] = body["status"].clone();
                send.send_response(respond(StatusCode::OK, &current));
                patches.push((uri, body));
            }
            other => panic!("unexpected {other} {uri}"),
        }
    }
    patches
}

fn sim(dir: &std::path::Path) {
    SimNic::create(dir, VENDOR, DEVICE, "SIM1", "1.0.0", &[7; 4096]).unwrap();
}

async fn run_round(
    object: Value,
    sim_dir: &std::path::Path,
    trust: bundle::TrustStore,
) -> Vec<(String, Value)> {
    run_round_with(object, None, sim_dir, trust).await
}

async fn run_round_with(
    object: Value,
    config_map: Option<Value>,
    sim_dir: &std::path::Path,
    trust: bundle::TrustStore,
) -> Vec<(String, Value)> {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(api_server(handle, object, config_map));
    {
        let client = kube::Client::new(svc, "default");
        let mut agent = KubeAgent::new(client, NODE, sim_dir, trust);
        let reports = agent.recover(Utc::now()).unwrap();
        assert_eq!(reports.len(), 1);
        agent.step(Utc::now()).await.unwrap();
    }
    server.await.unwrap()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_applies_status_with_nics_and_conditions() {
    let dir = tempfile::tempdir().unwrap();
    sim(dir.path());
    let (_, trust) = testing::key("release", 42);
    let object = node(json!({
        "version": "1.0.0",
        "bundle": {"url": "file:///nonexistent.nxfw"},
        "sha256": "ab".repeat(32),
    }));
    let patches = run_round(object, dir.path(), trust).await;
    assert_eq!(patches.len(), 1, "nothing to do: one heartbeat write");
    let (uri, body) = &patches[0];
    assert_eq!(
        uri,
        &format!(
            "/apis/nexus.dev/v1alpha1/nexusnodes/{NODE}/status?&force=true&fieldManager=nexus-agent"
        )
    );
    let status = &body["status"];
    assert_eq!(status["nics"][0]["runningFirmware"], "1.0.0");
    assert_eq!(status["nics"][0]["pciVendorId"], "15b3");
    assert_eq!(status["nics"][0]["activeBank"], "A");
    assert!(status["heartbeat"].is_string());
    assert_eq!(status["appliedVersion"], 7);
    assert!(status["agentVersion"].is_string());
    assert!(status.get("lastFlash").is_none());
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "FirmwareCurrent")["status"], "True");
    assert_eq!(condition(status, "FirmwareCurrent")["reason"], "Current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_from_file_url_is_flashed() {
    let dir = tempfile::tempdir().unwrap();
    let nic_dir = dir.path().join("nic");
    sim(&nic_dir);
    let (key, trust) = testing::key("release", 42);
    let bytes = signed("1.1.0", &key);
    let file = dir.path().join("fw-1.1.0.nxfw");
    std::fs::write(&file, &bytes).unwrap();
    let object = node(json!({
        "version": "1.1.0",
        "bundle": {"url": format!("file://{}", file.display())},
        "sha256": hex::encode(Sha256::digest(&bytes)),
    }));
    let patches = run_round(object, &nic_dir, trust).await;
    // Progress: fetch, then each stage of the flash state machine, then the result.
    let stages: Vec<String> = patches[..patches.len() - 1]
        .iter()
        .map(|(_, b)| {
            let c = condition(&b["status"], "FirmwareCurrent");
            assert_eq!(c["reason"], "Flashing");
            c["message"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        stages,
        [
            "Fetch",
            "Verify",
            "Write",
            "ReadBack",
            "Switch",
            "HealthCheck"
        ]
        .map(|s| format!("flashing 1.1.0: {s}"))
    );
    let status = &patches.last().unwrap().1["status"];
    assert_eq!(status["lastFlash"]["result"], "Succeeded", "{status}");
    assert_eq!(status["lastFlash"]["version"], "1.1.0");
    assert_eq!(status["nics"][0]["runningFirmware"], "1.1.0");
    assert_eq!(status["nics"][0]["activeBank"], "B");
    assert_eq!(status["appliedVersion"], 7);
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "FirmwareCurrent")["status"], "True");
    // The NIC itself runs the new image.
    let state = SimNic::peek(&nic_dir).unwrap();
    let running = state.banks.bank(state.banks.active).image().unwrap();
    assert_eq!(running.version, "1.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_mismatch_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let nic_dir = dir.path().join("nic");
    sim(&nic_dir);
    let before = SimNic::peek(&nic_dir).unwrap();
    let (key, trust) = testing::key("release", 42);
    let bytes = signed("1.1.0", &key);
    let file = dir.path().join("fw-1.1.0.nxfw");
    std::fs::write(&file, &bytes).unwrap();
    let object = node(json!({
        "version": "1.1.0",
        "bundle": {"url": format!("file://{}", file.display())},
        "sha256": "0".repeat(64),
    }));
    let patches = run_round(object, &nic_dir, trust).await;
    let status = &patches.last().unwrap().1["status"];
    assert_eq!(status["lastFlash"]["result"], "Refused", "{status}");
    assert_eq!(status["lastFlash"]["stage"], "Verify");
    let msg = status["lastFlash"]["message"].as_str().unwrap();
    assert!(msg.contains("does not match"), "{msg}");
    assert_eq!(status["nics"][0]["runningFirmware"], "1.0.0");
    assert_eq!(condition(status, "FirmwareCurrent")["status"], "False");
    assert_eq!(
        condition(status, "FirmwareCurrent")["reason"],
        "FlashRefused"
    );
    // Nothing was written to the NIC.
    let after = SimNic::peek(&nic_dir).unwrap();
    assert_eq!(after.banks.active, before.banks.active);
    assert_eq!(after.banks.bank(Bank::B), before.banks.bank(Bank::B));
    assert_eq!(after.banks.bank(Bank::A), before.banks.bank(Bank::A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_is_an_ab_switch_without_download() {
    let dir = tempfile::tempdir().unwrap();
    let nic_dir = dir.path().join("nic");
    sim(&nic_dir);
    let (key, trust) = testing::key("release", 42);
    let bytes = signed("1.1.0", &key);
    let file = dir.path().join("fw-1.1.0.nxfw");
    std::fs::write(&file, &bytes).unwrap();
    let object = node(json!({
        "version": "1.1.0",
        "bundle": {"url": format!("file://{}", file.display())},
        "sha256": hex::encode(Sha256::digest(&bytes)),
    }));
    run_round(object, &nic_dir, trust.clone()).await;
    // Back to 1.0.0, which bank A still holds: the bundle source does not even exist.
    let mut object = node(json!({
        "version": "1.0.0",
        "bundle": {"url": "file:///nonexistent/fw-1.0.0.nxfw"},
        "sha256": "ab".repeat(32),
    }));
    object["spec"]["desiredVersion"] = json!(8);
    let patches = run_round(object, &nic_dir, trust).await;
    let status = &patches.last().unwrap().1["status"];
    assert_eq!(status["lastFlash"]["result"], "Succeeded", "{status}");
    assert_eq!(status["lastFlash"]["version"], "1.0.0");
    assert_eq!(status["nics"][0]["runningFirmware"], "1.0.0");
    assert_eq!(status["nics"][0]["activeBank"], "A");
    assert_eq!(status["appliedVersion"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_from_config_map_binary_data() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::ConfigMap;
    let dir = tempfile::tempdir().unwrap();
    let nic_dir = dir.path().join("nic");
    sim(&nic_dir);
    let (key, trust) = testing::key("release", 42);
    let bytes = signed("1.2.0", &key);
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("firmware".into()),
            namespace: Some("nexus-system".into()),
            ..Default::default()
        },
        binary_data: Some([("fw.nxfw".to_owned(), ByteString(bytes.clone()))].into()),
        ..Default::default()
    };
    let object = node(json!({
        "version": "1.2.0",
        "bundle": {"configMap": {"name": "firmware", "key": "fw.nxfw"}},
        "sha256": hex::encode(Sha256::digest(&bytes)),
    }));
    let patches = run_round_with(
        object,
        Some(serde_json::to_value(cm).unwrap()),
        &nic_dir,
        trust,
    )
    .await;
    let status = &patches.last().unwrap().1["status"];
    assert_eq!(status["lastFlash"]["result"], "Succeeded", "{status}");
    assert_eq!(status["nics"][0]["runningFirmware"], "1.2.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let nic_dir = dir.path().join("nic");
    sim(&nic_dir);
    let (key, trust) = testing::key("release", 42);
    let bytes = signed("1.3.0", &key);
    let served = bytes.clone();
    let app = axum::Router::new().route(
        "/fw.nxfw",
        axum::routing::get(move || {
            let b = served.clone();
            async move { b }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let object = node(json!({
        "version": "1.3.0",
        "bundle": {"url": format!("http://{addr}/fw.nxfw")},
        "sha256": hex::encode(Sha256::digest(&bytes)),
    }));
    let patches = run_round(object, &nic_dir, trust).await;
    let status = &patches.last().unwrap().1["status"];
    assert_eq!(status["lastFlash"]["result"], "Succeeded", "{status}");
    assert_eq!(status["nics"][0]["runningFirmware"], "1.3.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nic_dir = dir.path().join("nic");
    sim(&nic_dir);
    let (_, trust) = testing::key("release", 42);
    let (rogue, _) = testing::key("release", 43);
    let bytes = signed("1.1.0", &rogue);
    let file = dir.path().join("fw.nxfw");
    std::fs::write(&file, &bytes).unwrap();
    let object = node(json!({
        "version": "1.1.0",
        "bundle": {"url": format!("file://{}", file.display())},
        "sha256": hex::encode(Sha256::digest(&bytes)),
    }));
    let patches = run_round(object, &nic_dir, trust).await;
    let status = &patches.last().unwrap().1["status"];
    assert_eq!(status["lastFlash"]["result"], "Refused", "{status}");
    assert_eq!(status["nics"][0]["runningFirmware"], "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_source_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    sim(dir.path());
    let (_, trust) = testing::key("release", 42);
    let object = node(json!({
        "version": "1.1.0",
        "bundle": {"oci": "registry.example/fw:1.1.0"},
        "sha256": "ab".repeat(32),
    }));
    let patches = run_round(object, dir.path(), trust).await;
    let status = &patches.last().unwrap().1["status"];
    assert_eq!(status["lastFlash"]["result"], "Refused");
    let msg = status["lastFlash"]["message"].as_str().unwrap();
    assert!(msg.contains("OCI"), "{msg}");
    assert_eq!(status["appliedVersion"], 7);
}

#[test]
fn kube_subcommand_parses() {
    use clap::Parser;
    use nexus_agent::cli::{AgentArgs, AgentCommand};
    let args = AgentArgs::try_parse_from([
        "nexus-agent",
        "--sim-dir",
        "/tmp/nic",
        "kube",
        "--node-name",
        NODE,
        "--trust-store",
        "/etc/nexus/trust.json",
        "--heartbeat",
        "15s",
    ])
    .unwrap();
    let Some(AgentCommand::Kube(k)) = args.command else {
        panic!("not the kube subcommand");
    };
    assert_eq!(k.node_name, NODE);
    assert_eq!(k.heartbeat, std::time::Duration::from_secs(15));
    assert_eq!(k.config_map_namespace, "nexus-system");
    assert!(
        AgentArgs::try_parse_from([
            "nexus-agent",
            "--sim-dir",
            "/tmp/nic",
            "kube",
            "--node-name",
            NODE,
            "--trust-store",
            "t.json",
            "--heartbeat",
            "0s",
        ])
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_flash_is_recovered_and_reported_on_start() {
    use nexus_agent::sim::{Faults, PowerLossPoint, SimOptions};
    let dir = tempfile::tempdir().unwrap();
    let nic_dir = dir.path().join("nic");
    sim(&nic_dir);
    let (key, trust) = testing::key("release", 42);
    let bytes = signed("1.1.0", &key);
    {
        let opts = SimOptions {
            bytes_per_sec: None,
            faults: Faults {
                power_loss: Some(PowerLossPoint::MidWrite),
                ..Default::default()
            },
        };
        let mut nic = SimNic::open(&nic_dir, opts).unwrap();
        let err = nexus_agent::flash_bundle(
            &mut nic,
            &bytes,
            &trust,
            &nexus_agent::agent_version(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(err, nexus_agent::AgentError::PowerLoss(_)),
            "{err}"
        );
    }
    // The spec still asks for 1.0.0: nothing to flash, but the restart is reported.
    let object = node(json!({
        "version": "1.0.0",
        "bundle": {"url": "file:///nonexistent.nxfw"},
        "sha256": "ab".repeat(32),
    }));
    let patches = run_round(object, &nic_dir, trust).await;
    assert_eq!(patches.len(), 1);
    let status = &patches[0].1["status"];
    // Interrupted, not Failed: a restart is not a bad image, and a rollout with
    // failureThreshold 0 must not halt over it.
    assert_eq!(status["lastFlash"]["result"], "Interrupted", "{status}");
    assert_eq!(status["lastFlash"]["version"], "1.1.0");
    assert_eq!(status["nics"][0]["runningFirmware"], "1.0.0");
    assert_eq!(condition(status, "Ready")["status"], "True");
}
