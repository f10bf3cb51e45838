//! Middle mode end to end: real clients through relay-ctl to [`FakeMe`], a middle proxy
//! written for the tests from the protocol description, all on loopback.
//!
//! The fake ME checks the nonce exchange, the key derivation, the CBC framing and every
//! RPC_PROXY_REQ, records the requests (flags, addresses, ad tag) and echoes each message, so
//! every payload must come back byte for byte through relay's re-framing.
//!
//! Every test runs its own relay and fake ME on their own ports; every wait is bounded.

use std::{
    io::Read as _,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use relay_proto::Secret;
use relay_tests::{
    fake_me::{FakeMe, Fault, proxy_config_text},
    mtproto_client::{ClientOptions, MtprotoClient, Transport as RustTransport},
    pyclient::{self, Echo, Transport},
    relay::Relay,
    util::wait_until,
};

const DOMAIN: &str = "example.com";
const SERVER_TAG: &str = "0123456789abcdef0123456789abcdef";
const BOB_TAG: &str = "fedcba9876543210fedcba9876543210";
const ALICE: &str = "11111111111111111111111111111111";
const BOB: &str = "22222222222222222222222222222222";
/// Telethon needs whole 32-bit words.
const SIZES: [usize; 3] = [16, 1024, 65_536];
/// kurigram needs 24 + 16·k.
const KURIGRAM_SIZES: [usize; 3] = [24, 24 + 16 * 64, 24 + 16 * 4096];

/// A relay in middle mode in front of a fake ME.
struct Harness {
    me: FakeMe,
    relay: Relay,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// `connections_per_me` ME connections; `many` allowlists loopback, so hundreds of clients
    /// from one address are not taken for a flood.
    fn start(connections_per_me: u16, many: bool) -> Harness {
        let secret: Vec<u8> = (0..128u8).map(|i| i.wrapping_mul(37)).collect();
        let me = FakeMe::start("127.0.0.1:0".parse().expect("addr"), secret.clone());
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("proxy-config.txt");
        let secret_file = dir.path().join("proxy-secret");
        std::fs::write(&list, proxy_config_text(me.addr, &[1, 2, 3, 4, 5], 2)).expect("list");
        std::fs::write(&secret_file, &secret).expect("secret");
        let state = dir.path().join("state");
        let text = |port: u16| {
            format!(
                r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["classic", "secure", "tls"]

[xdp]
mode = "off"

[tls]
domain = "{DOMAIN}"
fronting = false

[upstream]
ad_tag = "{SERVER_TAG}"
connect_timeout_secs = 5

[upstream.middle]
config_file = "{list}"
secret_file = "{secret}"
connections_per_me = {connections_per_me}

[state]
dir = "{state}"
{allow}
[[users]]
name = "alice"
secret = "{ALICE}"

[[users]]
name = "bob"
secret = "{BOB}"
ad_tag = "{BOB_TAG}"
"#,
                list = list.display(),
                secret = secret_file.display(),
                state = state.display(),
                allow = if many {
                    "\n[allowlist]\ncidrs = [\"127.0.0.1\"]\n"
                } else {
                    ""
                },
            )
        };
        let (relay, port) = Relay::start_local_on_free_port(text);
        let h = Harness {
            me,
            relay,
            port,
            _dir: dir,
        };
        assert!(
            wait_until(Duration::from_secs(15), || {
                (h.me.live() >= usize::from(connections_per_me)).then_some(())
            })
            .is_some(),
            "relay opened {} of {connections_per_me} ME connections; log:\n{}",
            h.me.live(),
            h.relay.log()
        );
        h
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A Rust client speaking intermediate framing as `alice`.
    fn client(&self) -> MtprotoClient {
        let secret: Secret = ALICE.parse().expect("secret");
        let mut options = ClientOptions::new(secret, RustTransport::Intermediate);
        options.timeout = Duration::from_secs(10);
        MtprotoClient::connect(self.addr(), &options).expect("connect through relay")
    }

    fn finish(self) {
        assert!(
            self.me.errors().is_empty(),
            "the fake ME saw protocol errors: {:?}",
            self.me.errors()
        );
        let log = self.relay.stop();
        assert!(!log.contains("panicked"), "relay panicked:\n{log}");
    }
}

/// One intermediate-framed echo: send `payload`, read the same frame back.
fn echo(client: &mut MtprotoClient, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(payload);
    client.send(&frame)?;
    let mut got = vec![0u8; frame.len()];
    client.recv_exact(&mut got)?;
    if got != frame {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn hex_tag(tag: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&tag[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

#[test]
fn real_clients_echo_through_a_middle_proxy_with_their_ad_tags() {
    let Some(python) =
        pyclient::python("real_clients_echo_through_a_middle_proxy_with_their_ad_tags")
    else {
        return;
    };
    let h = Harness::start(2, false);
    let run = |secret: String, transport: Option<Transport>, python: &Path| {
        let sizes: &[usize] = if transport.is_some() {
            &SIZES
        } else {
            &KURIGRAM_SIZES
        };
        let echo = Echo::local(h.port, secret, 2, sizes);
        let run = match transport {
            Some(t) => echo.telethon(python, t),
            None => echo.kurigram(python),
        };
        assert!(run.ok() && run.echoed() == sizes, "{}", run.describe());
    };
    let alice_before = h.me.requests().len();
    run(ALICE.to_owned(), Some(Transport::Abridged), &python);
    run(ALICE.to_owned(), Some(Transport::Intermediate), &python);
    let bob_from = h.me.requests().len();
    run(format!("dd{BOB}"), Some(Transport::Randomized), &python);
    let domain_hex: String = DOMAIN.bytes().map(|b| format!("{b:02x}")).collect();
    run(format!("ee{BOB}{domain_hex}"), None, &python);

    let requests = h.me.requests();
    let alice = &requests[alice_before..bob_from];
    let bob = &requests[bob_from..];
    assert!(!alice.is_empty() && !bob.is_empty());
    // Alice has no tag of her own: the server's; Bob's own tag replaces it.
    assert!(alice.iter().all(|r| r.ad_tag == Some(hex_tag(SERVER_TAG))));
    assert!(bob.iter().all(|r| r.ad_tag == Some(hex_tag(BOB_TAG))));
    for r in &requests[alice_before..] {
        assert_eq!(r.client.ip().to_string(), "127.0.0.1", "{r:?}");
        assert_eq!(r.proxy.port(), h.port, "{r:?}");
        assert_ne!(r.flags & 0x8, 0, "has-ad-tag flag: {r:?}");
        assert_eq!(r.flags & 0x21000, 0x21000, "magic and extmode2: {r:?}");
    }
    let framing = |r: &relay_tests::fake_me::ProxyReq| r.flags & 0x6800_0000;
    // Abridged first, then intermediate, then padded intermediate (Telethon dd, kurigram).
    assert_eq!(framing(&alice[0]), 0x4000_0000);
    assert_eq!(framing(alice.last().expect("some")), 0x2000_0000);
    assert!(bob.iter().all(|r| framing(r) == 0x2800_0000));
    // Every client's connection id is closed at the ME when it leaves.
    let ids: std::collections::BTreeSet<u64> =
        requests[alice_before..].iter().map(|r| r.conn_id).collect();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let closed: std::collections::BTreeSet<u64> = h.me.closes().into_iter().collect();
            ids.is_subset(&closed).then_some(())
        })
        .is_some(),
        "not every client was closed at the ME: {ids:?} vs {:?}",
        h.me.closes()
    );
    h.finish();
}

#[test]
fn two_hundred_clients_share_one_me_connection_and_a_slow_reader_stalls_none() {
    const CLIENTS: usize = 200;
    /// Stated bound: a client's echo through a shared ME connection whose other client does
    /// not read completes within this (a stall would last until that client is dropped).
    const BOUND: Duration = Duration::from_secs(5);
    let h = Harness::start(1, true);

    // The slow reader: asks for far more than its inbox bound and never reads.
    let (slow_reader, mut slow_writer) = h.client().split();
    let big = payload(512 * 1024, 7);
    let mut frame = (big.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&big);
    let writer = std::thread::spawn(move || {
        // Stops when relay drops the client (its socket then refuses more).
        for _ in 0..32 {
            if slow_writer.send(&frame).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = h.addr();
            std::thread::spawn(move || -> Result<Duration, String> {
                let secret: Secret = ALICE.parse().map_err(|e| format!("{e:?}"))?;
                let mut options = ClientOptions::new(secret, RustTransport::Intermediate);
                options.timeout = Duration::from_secs(20);
                let mut c = MtprotoClient::connect(addr, &options).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(Duration::from_secs(20)))
                    .map_err(|e| e.to_string())?;
                let mut slowest = Duration::ZERO;
                for round in 0..3u8 {
                    let t = Instant::now();
                    echo(
                        &mut c,
                        &payload(64 + 4 * (i % 50) + 1024 * usize::from(round), i as u8),
                    )
                    .map_err(|e| format!("client {i} round {round}: {e}"))?;
                    slowest = slowest.max(t.elapsed());
                }
                Ok(slowest)
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for w in workers {
        let r = w.join().expect("worker thread");
        slowest = slowest.max(r.unwrap_or_else(|e| panic!("{e}")));
    }
    eprintln!(
        "{CLIENTS} clients over one ME connection: slowest echo {slowest:?}, all done in {:?}",
        started.elapsed()
    );
    assert!(
        slowest < BOUND,
        "slowest echo {slowest:?} (bound {BOUND:?})"
    );
    assert_eq!(h.me.handshakes(), 1, "all clients on one ME connection");

    // The slow reader is dropped once its queued answers pass the bound; the ME is told.
    let dropped = wait_until(Duration::from_secs(20), || {
        h.relay
            .scrape()
            .contains("relay_me_errors_total{kind=\"overflow\"} 1")
            .then_some(())
    });
    assert!(
        dropped.is_some(),
        "slow client not dropped:\n{}",
        h.relay.scrape()
    );
    drop(slow_reader);
    writer.join().expect("writer");
    h.finish();
}

#[test]
fn a_killed_me_connection_closes_its_clients_and_new_clients_get_through() {
    /// Stated time for a new client to succeed after its ME connection was killed.
    const RECOVERY: Duration = Duration::from_secs(10);
    let h = Harness::start(1, false);
    let mut before = h.client();
    echo(&mut before, &payload(256, 1)).expect("echo before the kill");
    h.me.kill_connections();
    before
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut rest = Vec::new();
    let end = before
        .stream()
        .try_clone()
        .expect("clone")
        .read_to_end(&mut rest);
    assert!(
        matches!(end, Ok(0)) || end.is_err(),
        "the client's connection should end with its ME connection: {end:?}"
    );
    let killed_at = Instant::now();
    let recovered = wait_until(RECOVERY, || {
        let addr = h.addr();
        let secret: Secret = ALICE.parse().ok()?;
        let mut c = MtprotoClient::connect(
            addr,
            &ClientOptions::new(secret, RustTransport::Intermediate),
        )
        .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        echo(&mut c, &payload(128, 2)).ok()
    });
    assert!(
        recovered.is_some(),
        "no new client got through:\n{}",
        h.relay.log()
    );
    eprintln!("new client through after {:?}", killed_at.elapsed());
    assert!(h.me.handshakes() >= 2, "the ME connection was replaced");
    h.finish();
}

#[test]
fn bad_input_from_the_me_ends_that_connection_only() {
    let h = Harness::start(1, false);
    for fault in [
        Fault::BadCrc,
        Fault::WrongSeq,
        Fault::Oversize,
        Fault::UnknownConnId,
    ] {
        let handshakes = h.me.handshakes();
        let mut c = h.client();
        echo(&mut c, &payload(64, 3)).expect("echo before the fault");
        h.me.inject(fault);
        // The faulty frame goes out with the next answer (or at once, for an unknown id).
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = echo(&mut c, &payload(64, 4));
        let replaced = wait_until(Duration::from_secs(10), || {
            (h.me.handshakes() > handshakes && h.me.live() >= 1).then_some(())
        });
        assert!(
            replaced.is_some(),
            "{fault:?}: the ME connection was not replaced"
        );
        let mut after = h.client();
        echo(&mut after, &payload(64, 5)).unwrap_or_else(|e| panic!("{fault:?}: after: {e}"));
    }
    let counted = wait_until(Duration::from_secs(10), || {
        h.relay
            .scrape()
            .contains("relay_me_errors_total{kind=\"protocol\"} 4")
            .then_some(())
    });
    assert!(counted.is_some(), "{}", h.relay.scrape());
    h.finish();
}

#[test]
fn an_unreachable_list_and_me_at_start_use_the_kept_list_and_say_the_leg_is_down() {
    let h = Harness::start(1, false);
    let mut c = h.client();
    echo(&mut c, &payload(64, 6)).expect("echo");
    drop(c);
    let state = h._dir.path().join("state");
    assert!(state.join("middle-proxy-config.txt").exists());
    let log = h.relay.stop();
    assert!(!log.contains("panicked"), "{log}");
    h.me.stop();

    // Same state dir; the list must be fetched from a URL that refuses, and the ME is down.
    let text = |port: u16| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["classic"]

[xdp]
mode = "off"

[tls]
fronting = false

[upstream]
mode = "middle"
connect_timeout_secs = 2

[upstream.middle]
config_url = "http://127.0.0.1:9/getProxyConfig"
secret_url = "http://127.0.0.1:9/getProxySecret"

[state]
dir = "{state}"

[[users]]
name = "alice"
secret = "{ALICE}"
"#,
            state = state.display(),
        )
    };
    let (mut relay, _port) = Relay::start_local_on_free_port(text);
    relay.wait_for(
        "using the middle-proxy list kept in the state dir",
        Duration::from_secs(15),
    );
    let down = wait_until(Duration::from_secs(15), || {
        let m = relay.scrape();
        (m.contains(&format!(
            "relay_me_connections_up{{me=\"{}\"}} 0",
            h.me.addr
        )) && m.contains("relay_me_config_source{source=\"cache\"} 1")
            && m.contains("relay_me_connects_total{outcome=\"failed\"}"))
        .then_some(())
    });
    assert!(down.is_some(), "metrics:\n{}", relay.scrape());
    let log = relay.stop();
    assert!(!log.contains("panicked"), "{log}");
}
