//! Sans-IO MTProto proxy protocol core: pure functions and small state machines over bytes.
//!
//! Nothing here touches a socket, a clock or a runtime: callers pass in bytes, the current time
//! and a random number generator. The wire formats are described in `docs/protocol.md`.
//!
//! - [`secret`]: user secrets and `tg://proxy` links.
//! - [`mode`]: proxy modes (classic, secure, TLS) and the protocol tags each admits.
//! - [`cipher`]: the AES-256-CTR stream cipher every leg uses.
//! - [`obfs2`]: the 64-byte obfuscated2 headers, client→proxy and proxy→DC.
//! - [`opening`]: what a connection's first bytes can still become, given the enabled modes.
//! - [`tls`]: fake-TLS: ClientHello reassembly and validation, the server flight, records.
//! - [`proxy_header`]: the PROXY protocol header (v1 text, v2 binary), parsed and written.
//! - [`replay`]: the anti-replay memory of handshake keys (keyed Bloom-filter generations).
//! - [`dc`]: built-in Telegram DC addresses.
//! - [`middle`]: the middle-end leg: proxy list, key derivation, CBC framing, RPC messages and
//!   the client framing it must parse.
//! - [`socks5`]: the SOCKS5 client dialogue (RFC 1928/1929) that reaches a DC through a proxy.

pub mod cipher;
pub mod dc;
pub mod middle;
pub mod mode;
pub mod obfs2;
pub mod opening;
pub mod proxy_header;
pub mod replay;
pub mod secret;
#[cfg(target_arch = "x86_64")]
pub mod simd;
pub mod socks5;
pub mod tls;

#[cfg(test)]
mod vectors;

pub use cipher::AesCtr;
pub use mode::{Mode, ModeSet, ProtoTag};
pub use secret::{Link, Secret, SecretError, links};

/// Cost of trying every user on a handshake that matches none (the worst case, and what every
/// probe costs). Run: `cargo test --release -p relay-proto cost -- --ignored --nocapture`.
#[cfg(test)]
mod cost {
    use std::time::Instant;

    use super::secret::Secret;
    use super::tls::hello::{HelloPolicy, verify_client_hello};
    use super::vectors;

    #[test]
    #[ignore = "measurement, not a check; run in release"]
    fn thousand_users() {
        let users: Vec<Secret> = (0..1000u16)
            .map(|i| {
                let mut b = [0u8; 16];
                b[..2].copy_from_slice(&i.to_le_bytes());
                Secret::from_bytes(b)
            })
            .collect();
        let header: [u8; 64] = hex::decode(vectors::TELETHON_PADDED.header)
            .unwrap()
            .try_into()
            .unwrap();
        let rounds = 50;
        let t = Instant::now();
        for _ in 0..rounds {
            let r = super::obfs2::accept_client_header(&header, &users, super::ModeSet::ALL, false);
            assert!(r.is_err());
        }
        println!(
            "obfs2, 1000 users, no match: {:?} per header",
            t.elapsed() / rounds
        );

        let hello = hex::decode(vectors::KURIGRAM_TLS.hello).unwrap();
        let policy = HelloPolicy {
            domain: vectors::KURIGRAM_TLS.domain,
            now: u64::from(vectors::KURIGRAM_TLS.timestamp),
            window_secs: 120,
            allow_uptime: true,
        };
        let t = Instant::now();
        for _ in 0..rounds {
            assert!(verify_client_hello(&hello[5..], &users, &policy).is_err());
        }
        println!(
            "fake TLS, 1000 users, {}-byte hello, no match: {:?} per hello",
            hello.len(),
            t.elapsed() / rounds
        );
    }
}
