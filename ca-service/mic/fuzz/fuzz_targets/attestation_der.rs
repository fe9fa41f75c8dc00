//! Attestation decoding of untrusted bytes: never panics, and whatever decodes re-encodes to
//! the same bytes (DER is canonical, so two encodings of one value would be a codec bug).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_mic::Attestation;

fuzz_target!(|data: &[u8]| {
    if let Ok(attestation) = Attestation::from_der(data) {
        let again = attestation
            .to_der()
            .expect("a decoded attestation passed validation, so it encodes");
        assert_eq!(again, data, "decode/encode is not the identity");
        let json = attestation.to_json().expect("JSON encoding cannot fail");
        assert_eq!(Attestation::from_json(&json).ok(), Some(attestation));
    }
});
