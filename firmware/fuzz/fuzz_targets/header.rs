//! NexLink header/frame parser: never panics, and whatever it accepts re-encodes to the same bytes.
//!
//! Random bytes almost never carry a valid checksum, so each input is also parsed with its checksum
//! re-sealed: that lets the fuzzer explore the field checks behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_firmware::header::{Frame, HEADER_LEN, HeaderView, checksum};

fn check(data: &[u8]) {
    let _ = Frame::parse(data);
    let _ = Frame::parse_prefix(data);
    if let Ok(view) = HeaderView::parse(data) {
        let mut out = [0u8; HEADER_LEN];
        view.to_header()
            .encode(&mut out)
            .expect("an accepted header must re-encode");
        assert_eq!(&out[..], &data[..HEADER_LEN], "parse/encode not inverse");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= HEADER_LEN {
        let mut sealed = data.to_vec();
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&sealed[..HEADER_LEN]);
        let sum = checksum(&head);
        sealed[44..48].copy_from_slice(&sum.to_le_bytes());
        check(&sealed);
    }
});
