//! Writes seed inputs for the fuzz targets: `cargo run -p nexus-firmware --example fuzz_seeds --
//! firmware/fuzz/seeds`. Valid inputs let the fuzzer start from deep inside the parsers.
#![allow(missing_docs)]

use std::path::PathBuf;

use nexus_firmware::bundle::{self, testing};
use nexus_firmware::header::{DType, DeliveryMode, Flags, HEADER_LEN, Header};

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "firmware/fuzz/seeds".into()),
    );
    std::fs::create_dir_all(root.join("header"))?;
    std::fs::create_dir_all(root.join("bundle"))?;
    let headers = [
        Header::opaque(1, 2, 0),
        Header {
            mode: DeliveryMode::PartiallyReliable,
            flags: Flags::ACK_REQUESTED.union(Flags::END_OF_STREAM),
            dtype: DType::BF16,
            rank: 2,
            stream_id: 9,
            tenant_id: 77,
            sequence: 1000,
            shape: [2, 3, 0, 0],
            payload_len: 12,
            trace_id: 0xfeed,
        },
    ];
    for (i, h) in headers.iter().enumerate() {
        let mut buf = vec![0u8; HEADER_LEN + h.payload_len as usize];
        h.encode_into(&mut buf)
            .expect("seed headers are valid by construction");
        std::fs::write(root.join(format!("header/seed{i}")), &buf)?;
    }
    let (key, _) = testing::key("seed-key", 1);
    let unsigned = bundle::pack(testing::manifest("1.2.3"), b"payload".to_vec())
        .expect("seed manifest is valid by construction");
    std::fs::write(root.join("bundle/unsigned"), unsigned.to_bytes())?;
    std::fs::write(
        root.join("bundle/signed"),
        bundle::sign(unsigned, &key).to_bytes(),
    )?;
    Ok(())
}
