//! Tensor control message (NexLink header + shard size): never panics, and an accepted plan
//! respects the limits (size, shard count) so the receiver's allocation is bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_api::tensor::{MAX_SHARDS, decode_control};

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = decode_control(data, 1 << 30) {
        assert!(plan.len <= 1 << 30);
        assert!(u64::from(plan.shards) <= MAX_SHARDS);
        assert!(u64::from(plan.shards) * u64::from(plan.shard) >= plan.len);
    }
});
