//! The client→server fake-TLS record stream after the handshake, in arbitrary chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::tls::record::RecordDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut buf = stream.to_vec();
    let mut decoder = RecordDecoder::new();
    for piece in buf.chunks_mut(usize::from(chunk).max(1)) {
        match decoder.decode_in_place(piece) {
            Ok(n) => assert!(n <= piece.len()),
            Err(_) => return,
        }
    }
});
