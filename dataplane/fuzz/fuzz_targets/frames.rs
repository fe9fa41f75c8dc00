//! NexStream preamble, message and datagram decoders: never panic on untrusted bytes, and
//! whatever decodes re-encodes to the same bytes (one encoding per value).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use nexus_stream::frame::{self, Preamble};

fuzz_target!(|data: &[u8]| {
    if let Ok((p, used)) = Preamble::decode(data, 4096) {
        let mut out = BytesMut::new();
        p.encode(&mut out, 4096).expect("a decoded preamble encodes");
        assert_eq!(&out[..], &data[..used]);
        if let Ok((msgs, consumed)) = frame::decode_messages(&data[used..], 1 << 20) {
            let mut again = BytesMut::new();
            for m in &msgs {
                frame::encode_message(m, &mut again, 1 << 20).expect("decoded message encodes");
            }
            assert_eq!(&again[..], &data[used..used + consumed]);
        }
    }
    let d = Bytes::copy_from_slice(data);
    if let Ok((ch, payload)) = frame::decode_datagram(&d) {
        assert_eq!(frame::encode_datagram(ch, &payload), d);
    }
});
