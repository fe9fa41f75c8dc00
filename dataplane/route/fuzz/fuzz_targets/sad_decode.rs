//! Untrusted descriptor bytes: the decoder must never panic, and whatever it accepts must
//! re-encode to exactly the bytes it consumed (the encoding is canonical) and satisfy every
//! invariant the accessors rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_route::SadView;

fuzz_target!(|data: &[u8]| {
    if let Ok((view, used)) = SadView::parse(data) {
        assert!(used <= data.len());
        assert_eq!(view.as_bytes().len(), used);
        assert_ne!(view.class(), 0);
        assert!(view.fan_out() >= 1 && view.fan_out() <= 16);
        let d = view.to_descriptor();
        let again = d.to_bytes().expect("a decoded descriptor is valid");
        assert_eq!(&again[..], &data[..used]);
        // Every accessor reads in bounds.
        let _ = view.extra_capabilities().count() + view.required_claims().count() + view.required_proofs().count();
    }
});
