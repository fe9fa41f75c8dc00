//! Interoperability with the official P4Runtime bindings: `interop/p4runtime_client.py`, using
//! the PyPI `p4runtime` package (generated from p4lang/p4runtime's own protos), arbitrates,
//! loads the committed P4Info, writes a batch with one bad update and decodes the per-update
//! errors from `grpc-status-details-bin`, and reads back — against this crate's server.
//!
//! Runs when a Python with those bindings is available: `NEXUS_P4RT_PYTHON` (default
//! `python3`); set it up with `python3 -m venv v && v/bin/pip install p4runtime`. Prints
//! `SKIPPED: …` otherwise.

mod common;

use std::process::Command;

fn python() -> String {
    std::env::var("NEXUS_P4RT_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn bindings_available() -> bool {
    Command::new(python())
        .args([
            "-c",
            "import grpc, p4.v1.p4runtime_pb2, google.rpc.status_pb2",
        ])
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_p4runtime_python_bindings_drive_this_target() {
    if !bindings_available() {
        println!("SKIPPED: no Python with the `p4runtime` package (set NEXUS_P4RT_PYTHON)");
        return;
    }
    let target = nexus_p4::Target::new(1);
    let url = common::serve(target).await;
    let addr = url.trim_start_matches("http://").to_owned();
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(format!("{dir}/interop/p4runtime_client.py"))
            .arg(addr)
            .arg(format!("{dir}/nexroute.p4info.txtpb"))
            .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
            .output()
    })
    .await
    .expect("joins")
    .expect("runs");
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
