//! The 64-byte obfuscated2 header a client sends first, against two users and every mode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::{ModeSet, Secret, obfs2};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(header) = <[u8; 64]>::try_from(rest.get(..64).unwrap_or_default()) else {
        return;
    };
    // The second secret is the one the seed corpus (Telethon's headers) was made with.
    let users = [
        Secret::from_bytes([0x11; 16]),
        Secret::from_bytes([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ]),
    ];
    let _ = obfs2::accept_client_header(&header, &users, ModeSet::ALL, flags & 1 == 1);
    let _ = obfs2::accept_dc_header(&header);
});
