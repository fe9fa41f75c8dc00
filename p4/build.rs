//! Generates the P4Runtime (`p4.v1`, `p4.config.v1`) messages, client and server from `proto/`,
//! and a descriptor set so the committed P4Info can be read in protobuf text format.
//!
//! `protoc` comes from `protoc-bin-vendored` so that `cargo build` needs no system install; a
//! `PROTOC` environment variable takes precedence.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out.join("p4runtime_descriptor.bin"))
        .compile_with_config(config, &["proto/p4/v1/p4runtime.proto"], &["proto"])?;
    Ok(())
}
