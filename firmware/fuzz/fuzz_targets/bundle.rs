//! Firmware bundle parser: never panics on untrusted bytes, and has exactly one encoding per bundle
//! (whatever it accepts serialises back to the same bytes). Verification against an empty trust
//! store must always fail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_firmware::bundle::{self, TrustStore};

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = bundle::parse(data) {
        assert_eq!(b.to_bytes(), data, "bundle has a second encoding");
        assert!(bundle::verify(&b, &TrustStore::new()).is_err());
    }
});
