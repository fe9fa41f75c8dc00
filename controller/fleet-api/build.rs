//! Generates the `nexus.fleet.v1` client and server from `proto/`.
//!
//! `protoc` comes from `protoc-bin-vendored` so that `cargo build` needs no system install; a
//! `PROTOC` environment variable (a system or pinned protoc) takes precedence.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The RPC is named `Connect`, which would clash with the generated
        // `FleetClient::connect(endpoint)`: callers build a `Channel` and use `FleetClient::new`.
        .build_transport(false)
        .compile_with_config(config, &["proto/nexus/fleet/v1/fleet.proto"], &["proto"])?;
    Ok(())
}
