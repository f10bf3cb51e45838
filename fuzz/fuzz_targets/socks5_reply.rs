//! A SOCKS5 proxy's replies (method choice, RFC 1929 status, CONNECT reply), fed as the client
//! asks for them, with or without credentials and to an IPv4 or IPv6 destination.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_proto::socks5::{Client, Credentials, Progress};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let target = if flags & 2 == 0 {
        "149.154.167.51:443"
    } else {
        "[2001:67c:4e8:f002::a]:443"
    };
    let Ok(target) = target.parse() else {
        return;
    };
    let credentials = (flags & 1 == 1)
        .then(|| Credentials::new("user", "password").ok())
        .flatten();
    let (mut client, _, mut need) = Client::start(target, credentials);
    let mut reply = Vec::new();
    loop {
        // The client never asks for nothing: a caller would wait forever.
        assert!(need > 0, "asked for 0 bytes");
        let Some(chunk) = rest.get(..need) else {
            return;
        };
        rest = &rest[need..];
        reply.extend_from_slice(chunk);
        match client.advance(&reply) {
            Ok(Progress::NeedMore(n)) => need = n,
            Ok(Progress::Send { need: n, .. }) => {
                need = n;
                reply.clear();
            }
            Ok(Progress::Connected) | Err(_) => return,
        }
    }
});
