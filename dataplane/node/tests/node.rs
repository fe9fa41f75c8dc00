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
