//! Writes the seeds of the `tensor_control` fuzz target (a control message needs a valid
//! NexLink checksum, which a fuzzer rarely finds alone):
//! `cargo run -p nexus-api --example api_fuzz_seeds -- dataplane/fuzz/seeds`.

use nexus_firmware::header::{DType, DeliveryMode, Flags, Header};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "dataplane/fuzz/seeds".into()),
    )
    .join("tensor_control");
    std::fs::create_dir_all(&dir)?;
    let h = Header {
        mode: DeliveryMode::ReliableUnordered,
        flags: Flags(0),
        dtype: DType::F32,
        rank: 2,
        stream_id: 1,
        tenant_id: 7,
        sequence: 0,
        shape: [256, 1024, 0, 0],
        payload_len: 256 * 1024 * 4,
        trace_id: 1,
    };
    std::fs::write(
        dir.join("f32"),
        nexus_api::tensor::encode_control(&h, 256 * 1024)?,
    )?;
    Ok(())
}
