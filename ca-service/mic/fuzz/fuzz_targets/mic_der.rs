//! MIC parsing and verification of untrusted certificate bytes: never panics.
//! The input is tried as a whole certificate and, split at its first byte, as a two-element
//! chain presented to a verifier with a real trust anchor.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use nexus_mic::{CertificateAuthority, Mic, NoRevocation, Requirement, Verifier};

fn verifier() -> &'static (Verifier, Requirement) {
    static V: OnceLock<(Verifier, Requirement)> = OnceLock::new();
    V.get_or_init(|| {
        let root = CertificateAuthority::new_root(
            "Fuzz Root",
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(100 * 365 * 86400),
        )
        .expect("root generation");
        let verifier = Verifier::new(&[root.cert_der()]).expect("valid anchor");
        let req = "capability=code-generation,context>=1,benchmark=humaneval"
            .parse()
            .expect("constant requirement");
        (verifier, req)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(mic) = Mic::from_der(data) {
        let _ = mic.to_string();
    }
    let (verifier, req) = verifier();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let _ = verifier.verify(&[data], now, &NoRevocation, req);
    if let Some((&split, rest)) = data.split_first() {
        let at = usize::from(split).min(rest.len());
        let (a, b) = rest.split_at(at);
        let _ = verifier.verify(&[a, b], now, &NoRevocation, req);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<Requirement>();
        let _ = nexus_mic::pem_to_der_chain(text);
    }
});
