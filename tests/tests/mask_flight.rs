//! The fake-TLS server flight copies the mask site's own flight.
//!
//! The mask is `openssl s_server` with TLS 1.3 and an RSA certificate on loopback. The test
//! measures that server's real flight itself (a direct connection, relay-ctl's sans-IO probe
//! hello and parser), then checks what relay-ctl answers genuine fake-TLS clients: the
//! ServerHello's extension order and size are the site's, the third record's length is the
//! site's encrypted handshake within [`CERT_JITTER`] bytes, kurigram still accepts it, and the
//! metrics and `config check` say where the shape comes from. With the mask down and nothing
//! cached, the fallback range is used and said so; a restart with the mask down uses the cache.
//!
//! Everything runs on loopback without privileges. Without the `openssl` command the tests
//! skip with a message, and fail under `CI=true`; kurigram needs the venv (that part is
//! skipped with a message without it, and fails under `CI=true`).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use relay_proto::{
    Secret,
    tls::{
        ExtensionOrder, FlightProfile, ProfileError, parse_flight, probe_hello,
        profile::CERT_JITTER,
    },
};
use relay_tests::{
    fake_dc::FakeDc,
    metrics::Metrics,
    mtproto_client::{ClientOptions, MtprotoClient, Transport},
    pyclient::{self, Echo},
    relay::{Relay, relay_ctl_bin},
    util::{RefusingPort, free_port, wait_until},
};

const DOMAIN: &str = "example.com";
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// Fake-TLS handshakes sampled per check.
const HANDSHAKES: usize = 20;

/// Kills the child when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the `openssl` command (the mask site) runs. Without it `test` is skipped with a
/// `SKIP` line, or fails under `CI=true`, where `cargo xtask setup` must have installed it.
fn openssl_or_skip(test: &str) -> bool {
    let available = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if available {
        return true;
    }
    let reason =
        "the `openssl` command is not installed (apt package openssl; `cargo xtask setup`)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    // Straight to fd 2, past the test harness's output capture, so the skip is always seen.
    let _ = std::io::stderr().write_all(format!("SKIP {test}: {reason}\n").as_bytes());
    false
}

/// A TLS 1.3 HTTPS server on a free loopback port with an RSA certificate (its signature has
/// a fixed length, so every flight has the same size); returns it once it accepts.
fn https_mask(dir: &Path) -> (Killed, SocketAddr) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=example.com", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(status.success(), "openssl req failed");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = Killed(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-tls1_3", "-accept"])
            .arg(addr.to_string())
            .arg("-cert")
            .arg(dir.join("cert.pem"))
            .arg("-key")
            .arg(dir.join("key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
    })
    .expect("openssl s_server does not accept");
    (server, addr)
}

/// The site's real flight, read directly: relay-ctl's probe hello, then bytes until the server
/// has been quiet for 300 ms after an encrypted record (at most 10 s).
fn real_flight(addr: SocketAddr) -> FlightProfile {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .write_all(&probe_hello(&mut rand::rng(), DOMAIN))
        .expect("send hello");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut complete = None;
    while Instant::now() < deadline {
        let wait = if complete.is_some() {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        };
        stream.set_read_timeout(Some(wait)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) if complete.is_some() => break,
            Err(_) => continue,
        }
        match parse_flight(&got) {
            Ok(p) => complete = Some(p),
            Err(ProfileError::Truncated) => {}
            Err(e) => panic!("the mask's answer is not a TLS 1.3 flight: {e}"),
        }
    }
    complete.expect("a complete flight from the mask")
}

fn config(port: u16, mask: SocketAddr, dc: SocketAddr, state: &Path) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["tls"]

[xdp]
mode = "off"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"
learn_flight = true

[upstream]
default_dc = 2
connect_timeout_secs = 3

[upstream.dc]
"2" = ["{dc}"]

[state]
dir = "{state}"

[[users]]
name = "alice"
secret = "{SECRET}"
"#,
        state = state.display()
    )
}

/// The fake flights of `n` genuine fake-TLS handshakes (each verified as tdlib does), parsed
/// as a site's flight.
fn fake_flights(port: u16, n: usize) -> Vec<FlightProfile> {
    let secret = Secret::from_hex(SECRET).expect("secret");
    let options = ClientOptions::new(
        secret,
        Transport::FakeTls {
            domain: DOMAIN.to_owned(),
        },
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    (0..n)
        .map(|i| {
            let client = MtprotoClient::connect(addr, &options)
                .unwrap_or_else(|e| panic!("fake-TLS handshake {i}: {e}"));
            parse_flight(client.server_flight()).expect("the fake flight parses as a flight")
        })
        .collect()
}

/// The gauges of where the flight shape comes from, once they show `source`.
fn flight_metrics(relay: &Relay, source: &str) -> (f64, f64) {
    wait_until(Duration::from_secs(10), || {
        let m = Metrics::parse(&relay.scrape());
        (m.sum("relay_tls_flight_source", &[("source", source)]) == 1.0).then(|| {
            (
                m.sum("relay_tls_flight_record_bytes", &[("bound", "min")]),
                m.sum("relay_tls_flight_record_bytes", &[("bound", "max")]),
            )
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "relay_tls_flight_source{{source={source:?}}} never became 1:\n{}\n{}",
            relay.scrape(),
            relay.log()
        )
    })
}

fn config_check(path: &Path) -> String {
    let out = Command::new(relay_ctl_bin())
        .args(["config", "check"])
        .arg(path)
        .output()
        .expect("relay-ctl config check");
    assert!(out.status.success(), "config check: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Checks the fake flights against the site's measured ones.
fn assert_copies(fakes: &[FlightProfile], real: &[FlightProfile]) {
    let min = real.iter().map(|p| p.encrypted_len).min().expect("samples") as usize;
    let max = real.iter().map(|p| p.encrypted_len).max().expect("samples") as usize;
    let allowed = min - CERT_JITTER..=max + CERT_JITTER;
    for fake in fakes {
        assert!(
            allowed.contains(&(fake.encrypted_len as usize)),
            "fake encrypted handshake of {} bytes, the site's is {min}..={max} (±{CERT_JITTER})",
            fake.encrypted_len
        );
        assert_eq!(fake.order(), real[0].order(), "ServerHello extension order");
        assert_eq!(fake.hello_len, real[0].hello_len, "ServerHello size");
        assert!(fake.ccs && fake.app_records == 1, "{fake:?}");
    }
}

#[test]
fn fake_flight_copies_the_mask_and_kurigram_accepts_it() {
    if !openssl_or_skip("fake_flight_copies_the_mask_and_kurigram_accepts_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (_mask, mask_addr) = https_mask(dir.path());
    let real: Vec<FlightProfile> = (0..5).map(|_| real_flight(mask_addr)).collect();
    eprintln!("the site's flights: {real:?}");
    // OpenSSL: supported_versions before key_share (not the fallback's order), CCS sent.
    assert_eq!(real[0].order(), ExtensionOrder::VersionsFirst);
    assert!(real[0].ccs && !real[0].other_extensions());

    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let state = dir.path().join("state");
    let (relay, port) =
        Relay::start_local_on_free_port(|port| config(port, mask_addr, dc.addr, &state));
    logged(&relay, "copy the mask's flight");
    let (min, max) = flight_metrics(&relay, "learned");
    let real_min = real.iter().map(|p| p.encrypted_len).min().expect("samples") as f64;
    let real_max = real.iter().map(|p| p.encrypted_len).max().expect("samples") as f64;
    let jitter = CERT_JITTER as f64;
    assert!(
        min >= real_min - jitter && max <= real_max + jitter && min <= max,
        "metric range {min}..={max}, the site's {real_min}..={real_max}"
    );

    let fakes = fake_flights(port, HANDSHAKES);
    assert_copies(&fakes, &real);
    let sizes: BTreeSet<u32> = fakes.iter().map(|f| f.encrypted_len).collect();
    assert!(
        sizes.len() > 1,
        "the size should vary by a few bytes: {sizes:?}"
    );
    eprintln!("fake flights' encrypted sizes: {sizes:?}");

    let check = config_check(&relay.config_path);
    assert!(
        check.contains(&format!("cached profile of {mask_addr}")),
        "config check:\n{check}"
    );

    // kurigram verifies the shaped flight's HMAC and goes on to talk MTProto through it.
    if let Some(python) = pyclient::python("fake_flight_copies_the_mask_and_kurigram_accepts_it") {
        let link = format!("ee{SECRET}{}", hex(DOMAIN.as_bytes()));
        let sizes = [24, 24 + 16 * 64];
        let run = Echo::local(port, link, 2, &sizes).kurigram(&python);
        assert!(
            run.ok() && run.echoed() == sizes,
            "kurigram through the shaped flight: {}\n{}",
            run.describe(),
            relay.log()
        );
    }
    let log = relay.stop();
    assert!(!log.contains(" ERROR "), "{log}");
}

#[test]
fn mask_down_uses_the_fallback_and_a_restart_uses_the_cache() {
    if !openssl_or_skip("mask_down_uses_the_fallback_and_a_restart_uses_the_cache") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));

    // Mask down at start, nothing cached: the fallback, said in the log, metrics, config check.
    let down = RefusingPort::new();
    let empty = dir.path().join("empty-state");
    let (relay, port) =
        Relay::start_local_on_free_port(|port| config(port, down.addr, dc.addr, &empty));
    logged(&relay, "fallback size range");
    let (min, max) = flight_metrics(&relay, "fallback");
    assert_eq!((min, max), (2500.0, 4700.0));
    for fake in fake_flights(port, HANDSHAKES) {
        assert!(
            (2500..=4700).contains(&fake.encrypted_len),
            "fallback record of {} bytes",
            fake.encrypted_len
        );
        assert_eq!(fake.order(), ExtensionOrder::KeyShareFirst);
    }
    let check = config_check(&relay.config_path);
    assert!(
        check.contains("no cached profile") && check.contains("fallback 2500..=4700"),
        "config check:\n{check}"
    );
    logged(&relay, "probing");
    relay.stop();

    // Learn with the mask up, then restart with it down: the cache is used.
    let (mask, mask_addr) = https_mask(dir.path());
    let real: Vec<FlightProfile> = (0..3).map(|_| real_flight(mask_addr)).collect();
    let state = dir.path().join("state");
    let text = |port| config(port, mask_addr, dc.addr, &state);
    let (relay, _) = Relay::start_local_on_free_port(text);
    logged(&relay, "copy the mask's flight");
    let learned = flight_metrics(&relay, "learned");
    relay.stop();
    drop(mask);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&mask_addr, Duration::from_millis(200))
            .is_err()
            .then_some(())
    })
    .expect("the mask stops");

    let (relay, port) = Relay::start_local_on_free_port(text);
    let line = logged(&relay, "copy the mask's flight");
    assert!(line.contains("cached"), "{line}");
    assert_eq!(flight_metrics(&relay, "cached"), learned);
    assert_copies(&fake_flights(port, HANDSHAKES), &real);
    // The refresh at start fails and says it keeps the cached profile.
    logged(&relay, "keeping the profile");
    assert_eq!(flight_metrics(&relay, "cached"), learned);
    relay.stop();
}

/// The first line of the whole log (start-up included) containing `needle`, waiting for it.
fn logged(relay: &Relay, needle: &str) -> String {
    wait_until(Duration::from_secs(30), || {
        relay
            .log()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("relay-ctl did not log {needle:?}:\n{}", relay.log()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
