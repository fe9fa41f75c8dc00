//! The dataplane process end to end, in process: health, metrics, the OpenAI gateway in
//! front of the demo model, and a second node serving that gateway back over NexAPI through
//! the upstream adapter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;
use nexus_api::demo::complete;
use nexus_api::{Client, InferRequest};
use nexus_dataplane::{Args, start};
use nexus_stream::testing::TestPki;

fn args(mic: &std::path::Path, extra: &[&str]) -> Args {
    let mut v = vec![
        "nexus-dataplane",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--mic-dir",
        mic.to_str().unwrap(),
    ];
    v.extend_from_slice(extra);
    Args::try_parse_from(v).unwrap()
}

/// Flags under which one stalled stream could hold a whole session are refused at start,
/// naming the flags.
#[tokio::test]
async fn windows_that_let_one_stream_hold_a_session_are_refused() {
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    pki.issue("nexus://acme/demo@1.0.0")
        .unwrap()
        .write_dir(dir.path())
        .unwrap();
    let bad = args(
        dir.path(),
        &[
            "--stream-window",
            "8388608",
            "--connection-window",
            "8388608",
        ],
    );
    let why = bad.config().unwrap_err().to_string();
    assert!(why.contains("--connection-window"), "{why}");
    assert!(start(&bad).await.is_err());
    assert!(args(dir.path(), &[]).config().is_ok());
    let stall = args(dir.path(), &["--write-stall-seconds", "5"])
        .config()
        .unwrap();
    assert_eq!(stall.limits.write_stall_timeout, Duration::from_secs(5));
}

#[tokio::test]
async fn gateway_upstream_health_and_drain() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, c_dir) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    pki.issue("nexus://acme/demo@1.0.0")
        .unwrap()
        .write_dir(&a_dir)
        .unwrap();
    pki.issue("nexus://acme/adapter@1.0.0")
        .unwrap()
        .write_dir(&b_dir)
        .unwrap();
    pki.issue("nexus://acme/caller@1.0.0")
        .unwrap()
        .write_dir(&c_dir)
        .unwrap();

    let a = start(&args(&a_dir, &["--demo-model", "--gateway", "127.0.0.1:0"]))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", a.http);
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // OpenAI-style, plain.
    let v: serde_json::Value = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "demo", "max_tokens": 6,
              "messages": [{"role": "user", "content": "hello fabric"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        complete("hello fabric", 6)
    );
    // Streamed as server-sent events.
    let body = http
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &serde_json::json!({"model": "demo", "max_tokens": 6, "stream": true,
              "messages": [{"role": "user", "content": "hello fabric"}]}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut text = String::new();
    for line in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(c);
        }
    }
    assert_eq!(text, complete("hello fabric", 6));
    assert!(body.trim_end().ends_with("data: [DONE]"));

    // Node B puts A's OpenAI-compatible endpoint behind NexAPI.
    let b = start(&args(
        &b_dir,
        &["--upstream-openai", &base, "--upstream-model", "demo"],
    ))
    .await
    .unwrap();
    let client = Client::connect_dir(&c_dir, b.udp).await.unwrap();
    let req = InferRequest {
        model: "demo".into(),
        prompt: "through two nodes".into(),
        max_tokens: 5,
    };
    assert_eq!(
        client.infer(&req).await.unwrap().text,
        complete("through two nodes", 5)
    );
    let mut tokens = client.stream_tokens(&req).await.unwrap();
    let mut text = String::new();
    while let Some(t) = tokens.next().await {
        text.push_str(&t.unwrap());
    }
    assert_eq!(text, complete("through two nodes", 5));

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nexstream_handshakes_total{result=\"accepted\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("nexapi_calls_total"));

    a.drain(Duration::from_millis(100)).await;
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}

/// The MIC directory is a Secret the ModelIdentity controller renews: the running dataplane
/// presents the renewed MIC to new connections without a restart, and a session opened
/// before the renewal keeps working.
#[tokio::test]
async fn a_renewed_mic_is_presented_without_a_restart() {
    use nexus_stream::{Config, Endpoint, Metrics};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server_dir, caller_dir) = (dir.path().join("server"), dir.path().join("caller"));
    let first = pki.issue("nexus://acme/demo@1.0.0").unwrap();
    first.write_dir(&server_dir).unwrap();
    let caller = pki.issue("nexus://acme/caller@1.0.0").unwrap();
    caller.write_dir(&caller_dir).unwrap();
    let node = start(&args(&server_dir, &["--demo-model", "--mic-reload", "1"]))
        .await
        .unwrap();
    let dial = Endpoint::client(
        "127.0.0.1:0".parse().unwrap(),
        &caller.identity().unwrap(),
        &Config::default(),
        std::sync::Arc::new(Metrics::new()),
    )
    .unwrap();
    let old_serial = dial
        .connect(node.udp)
        .await
        .unwrap()
        .peer()
        .await
        .unwrap()
        .serial
        .clone();
    let before = Client::connect(&dial, node.udp).await.unwrap();

    // Renewal: the controller writes a new certificate and key into the Secret.
    pki.issue("nexus://acme/demo@1.0.0")
        .unwrap()
        .write_dir(&server_dir)
        .unwrap();
    let mut new_serial = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = dial.connect(node.udp).await.unwrap();
        let serial = s.peer().await.unwrap().serial.clone();
        if serial != old_serial {
            new_serial = Some(serial);
            break;
        }
    }
    assert!(new_serial.is_some(), "the renewed MIC was never presented");
    // The session from before the renewal still serves calls.
    let answer = before
        .infer(&InferRequest {
            model: String::new(),
            prompt: "still there?".into(),
            max_tokens: 4,
        })
        .await
        .unwrap();
    assert_eq!(answer.text, complete("still there?", 4));

    // A broken rotation (a key that is not the certificate's) is refused; the MIC stays.
    let other = pki.issue("nexus://acme/demo@1.0.0").unwrap();
    other.write_dir(&dir.path().join("other")).unwrap();
    std::fs::copy(dir.path().join("other/tls.key"), server_dir.join("tls.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = dial.connect(node.udp).await.unwrap();
    assert_eq!(s.peer().await.unwrap().serial, new_serial.unwrap());
    node.drain(Duration::from_millis(100)).await;
}

/// `--qlog-dir`: the node writes a qlog trace of each session it serves.
#[tokio::test]
async fn qlog_dir_traces_served_sessions() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = TestPki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mic, caller, qlog) = (
        dir.path().join("mic"),
        dir.path().join("caller"),
        dir.path().join("qlog"),
    );
    pki.issue("nexus://acme/coder@1.0.0")
        .unwrap()
        .write_dir(&mic)
        .unwrap();
    pki.issue("nexus://acme/caller@1.0.0")
        .unwrap()
        .write_dir(&caller)
        .unwrap();
    let node = start(&args(
        &mic,
        &["--demo-model", "--qlog-dir", qlog.to_str().unwrap()],
    ))
    .await
    .unwrap();
    let client = Client::connect_dir(&caller, node.udp).await.unwrap();
    client
        .infer(&InferRequest {
            model: String::new(),
            prompt: "hi".into(),
            max_tokens: 2,
        })
        .await
        .unwrap();
    drop(client);
    let mut text = String::new();
    for _ in 0..100 {
        let files: Vec<_> = std::fs::read_dir(&qlog).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "one trace for the one session");
        assert!(files[0].file_name().to_string_lossy().ends_with(".sqlog"));
        text = std::fs::read_to_string(files[0].path()).unwrap();
        if text.contains("connectivity:connection_closed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("connectivity:connection_started"), "{text}");
    assert!(text.contains("nexus://acme/caller@1.0.0"), "{text}");
    assert!(text.contains("connectivity:connection_closed"), "{text}");
    node.drain(Duration::from_millis(100)).await;
}
