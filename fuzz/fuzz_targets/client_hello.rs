//! A fake-TLS ClientHello arriving in arbitrary chunks (multi-record, any TCP split), then
//! validated against two users.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::{
    Secret,
    tls::{
        HelloPolicy,
        reader::{ClientHelloReader, HelloRead},
        verify_client_hello,
    },
};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = ClientHelloReader::new();
    for piece in stream.chunks(chunk) {
        match reader.feed(piece) {
            Ok(HelloRead::NeedMore) => {}
            Ok(HelloRead::Done(hello)) => {
                // The second user, domain and time match the seed (a captured kurigram hello).
                let users = [
                    Secret::from_bytes([0x22; 16]),
                    Secret::from_bytes([
                        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
                        0xcc, 0xdd, 0xee, 0xff,
                    ]),
                ];
                let policy = HelloPolicy {
                    domain: "cdn.example.org",
                    now: 1_795_319_130,
                    window_secs: 120,
                    allow_uptime: true,
                };
                let _ = verify_client_hello(&hello.handshake, &users, &policy);
                return;
            }
            Err(_) => return,
        }
    }
});
