//! NexAPI stream metadata: never panics; accepted metadata prints back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_api::Meta;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Meta::parse(data) {
        assert_eq!(m.encode(), data);
        for (k, v) in m.pairs() {
            assert_eq!(m.get(k), Some(v));
        }
    }
    let _ = nexus_api::lift_jsonrpc(data);
});
