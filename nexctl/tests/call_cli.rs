//! `nexctl call --tensor` against a real dataplane on loopback: a file's bytes travel as a
//! tensor, the endpoint's checksum is checked, and a tensor over the endpoint's limit exits 1
//! with the endpoint's reason.

use std::process::Command;

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_sends_a_file_as_a_tensor_and_checks_the_endpoints_checksum() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = nexus_stream::testing::TestPki::new().expect("a test CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let (node_mic, caller_mic) = (dir.path().join("node"), dir.path().join("caller"));
    for (uri, at) in [
        ("nexus://acme/coder@1.0.0", &node_mic),
        ("nexus://acme/caller@1.0.0", &caller_mic),
    ] {
        pki.issue(uri)
            .expect("a MIC")
            .write_dir(at)
            .expect("written");
    }
    let mic = format!("--mic-dir={}", node_mic.display());
    let args = nexus_dataplane::Args::try_parse_from([
        "nexus-dataplane",
        "--listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0",
        &mic,
        "--demo-model",
        "--max-tensor=4194304",
    ])
    .expect("dataplane flags");
    let node = nexus_dataplane::start(&args).await.expect("a dataplane");
    let call = |file: std::path::PathBuf| {
        let (addr, caller_mic) = (node.udp.to_string(), caller_mic.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_nexctl"))
                .args(["call", "--addr", &addr, "--mic-dir"])
                .arg(&caller_mic)
                .arg("--tensor")
                .arg(file)
                .output()
                .expect("nexctl runs")
        })
    };

    let file = dir.path().join("t.bin");
    std::fs::write(
        &file,
        (0..3u32 << 20)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    )
    .expect("write");
    let out = call(file).await.expect("joined");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let ack: serde_json::Value = serde_json::from_str(&stdout).expect("the ack as JSON");
    assert_eq!(ack["bytes"], 3 << 20, "{stdout}");
    assert_ne!(ack["fnv64"], 0, "the endpoint checksummed it: {stdout}");
    assert!(
        stderr.contains("the endpoint's checksum matches"),
        "{stderr}"
    );

    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 5 << 20]).expect("write");
    let out = call(big).await.expect("joined");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("too large"), "{stderr}");

    node.drain(std::time::Duration::from_millis(100)).await;
}
