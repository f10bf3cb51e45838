//! What a censor's prober sees, and whether streams survive slow readers: relay-ctl on
//! loopback (`[xdp] mode = "off"`), a recording mask server, the echoing fake DC, and the
//! Rust MTProto client of `relay_tests::mtproto_client`.
//!
//! Every test picks its own ports, so they run in parallel; every wait is bounded.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use rand::RngCore as _;
use relay_proto::Secret;
use relay_tests::util::free_port;
use relay_tests::{
    fake_dc::FakeDc,
    mask::{MaskConn, MaskServer, Recorder},
    mtproto_client::{ClientOptions, MtprotoClient, Transport, fake_tls_hello},
    relay::Relay,
};

const DOMAIN: &str = "example.com";
/// Users configured on every relay; clients use the middle one so matching is exercised.
const USERS: [(&str, &str); 3] = [
    ("alice", "00112233445566778899aabbccddeeff"),
    ("bob", "0123456789abcdef0123456789abcdef"),
    ("carol", "f0e1d2c3b4a5968778695a4b3c2d1e0f"),
];
const CLIENT_USER: usize = 1;
/// A well-formed secret no user has.
const STRANGER: &str = "deadbeefdeadbeefdeadbeefdeadbeef";
const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
const HTTP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n\
Content-Length: 46\r\nConnection: close\r\n\r\n<html><body>Welcome to example.com</body></html>";
const WAIT: Duration = Duration::from_secs(10);

fn secret() -> Secret {
    Secret::from_hex(USERS[CLIENT_USER].1).expect("secret")
}

fn tls() -> Transport {
    Transport::FakeTls {
        domain: DOMAIN.to_owned(),
    }
}

/// What differs between the relays of these tests.
#[derive(Clone)]
struct Setup {
    modes: &'static str,
    mask: Option<SocketAddr>,
    fronting: bool,
    handshake_secs: u64,
    fast_mode: bool,
}

impl Setup {
    fn tls_only(mask: SocketAddr) -> Setup {
        Setup {
            modes: r#"["tls"]"#,
            mask: Some(mask),
            fronting: true,
            handshake_secs: 2,
            fast_mode: true,
        }
    }

    fn config(&self, port: u16, dc: SocketAddr) -> String {
        let users: String = USERS
            .iter()
            .map(|(name, secret)| format!("[[users]]\nname = \"{name}\"\nsecret = \"{secret}\"\n"))
            .collect();
        let mask = self
            .mask
            .map(|m| format!("mask = \"{m}\"\n"))
            .unwrap_or_default();
        format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = {modes}

[xdp]
mode = "off"

[limits]
syn_limit = false

{users}
[tls]
domain = "{DOMAIN}"
{mask}fronting = {fronting}

[upstream]
default_dc = 2
connect_timeout_secs = 3
fast_mode = {fast}

[upstream.dc]
"2" = ["{dc}"]
"-2" = ["{dc}"]

[timeouts]
handshake_secs = {hs}
idle_secs = 60
"#,
            modes = self.modes,
            fronting = self.fronting,
            fast = self.fast_mode,
            hs = self.handshake_secs,
        )
    }

    /// Starts relay-ctl on a free loopback port.
    fn start(&self, dc: &FakeDc) -> (Relay, SocketAddr) {
        let (relay, port) = Relay::start_local_on_free_port(|port| self.config(port, dc.addr));
        (relay, SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

fn fake_dc() -> FakeDc {
    FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Reads until EOF, a reset or `timeout`; returns the bytes and how it ended.
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Result<(), String>) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, Err(format!("still open after {timeout:?}")));
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (out, Ok(())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return (out, Err(format!("read error: {e}"))),
        }
    }
}

/// Asserts nothing arrives on `stream` for `quiet` (no server flight, no error page).
fn assert_silent(stream: &mut TcpStream, quiet: Duration, what: &str) {
    stream.set_read_timeout(Some(quiet)).expect("read timeout");
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(n) => panic!(
            "{what}: the relay answered {n} bytes ({:02x?}…) itself instead of staying silent",
            &buf[..n.min(16)]
        ),
        Err(e) => panic!("{what}: connection failed instead of staying silent: {e}"),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// One mask connection whose bytes equal `expected` and which has ended.
fn wait_mask_got(mask: &MaskServer, expected: &[u8], what: &str) -> MaskConn {
    let conns = mask.wait(WAIT, |c| {
        c.iter().any(|c| c.closed && c.received == expected)
    });
    conns
        .into_iter()
        .find(|c| c.closed && c.received == expected)
        .unwrap_or_else(|| {
            panic!(
                "{what}: the mask server never received the {} bytes byte-exact; it saw: {:?}",
                expected.len(),
                mask.conns()
                    .iter()
                    .map(|c| (c.received.len(), c.closed, hex_prefix(&c.received)))
                    .collect::<Vec<_>>()
            )
        })
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(24).map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// 1a. HTTP

#[test]
fn probe_http_request_gets_the_mask_servers_genuine_response() {
    let mask = MaskServer::start(Some(HTTP_RESPONSE.to_vec()));
    let dc = fake_dc();
    let (_relay, relay_addr) = Setup::tls_only(mask.addr).start(&dc);

    let mut direct = connect(mask.addr);
    direct.write_all(HTTP_REQUEST).expect("send direct");
    let (direct_answer, end) = read_until_closed(&mut direct, WAIT);
    end.expect("mask closes after answering");
    assert_eq!(direct_answer, HTTP_RESPONSE);

    let started = Instant::now();
    let mut probe = connect(relay_addr);
    probe.write_all(HTTP_REQUEST).expect("send via relay");
    let (answer, end) = read_until_closed(&mut probe, WAIT);
    end.expect("the fronted connection ends when the mask closes");
    assert_eq!(
        answer,
        direct_answer,
        "the relay's answer to HTTP differs from the mask's:\n{}",
        String::from_utf8_lossy(&answer)
    );
    // Non-TLS bytes on a TLS-only port are fronted at once, not after the handshake timeout.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "HTTP was fronted only after {:?}",
        started.elapsed()
    );
    let conns = mask.conns();
    assert_eq!(conns.len(), 2, "direct + fronted connection");
    assert!(conns.iter().all(|c| c.received == HTTP_REQUEST));
    assert!(dc.sessions().is_empty(), "an HTTP probe reached the DC");
}

// ---------------------------------------------------------------------------------------------
// 1b. A real TLS handshake (openssl s_server as the mask, s_client as the prober)

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stdout, forwarded through a channel so reads can be bounded.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines until one contains `needle`; panics with what was seen after `timeout`.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, timeout: Duration, seen: &mut Vec<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(_) => panic!(
                "no line containing {needle:?} within {timeout:?}; output:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn pem_body(pem: &str) -> Vec<String> {
    pem.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE"))
        .map(str::to_owned)
        .collect()
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn make_cert(dir: &Path) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=example.com", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(status.success(), "openssl req failed");
}

#[test]
fn probe_real_tls_handshake_sees_the_mask_certificate() {
    if !openssl_available() {
        // The CI image has openssl; say loudly when it does not.
        eprintln!("SKIPPED: the `openssl` command is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    make_cert(dir.path());
    let mask_port = free_port();
    let mut server = Killed(
        Command::new("openssl")
            .args(["s_server", "-accept"])
            .arg(format!("127.0.0.1:{mask_port}"))
            .arg("-cert")
            .arg(dir.path().join("cert.pem"))
            .arg("-key")
            .arg(dir.path().join("key.pem"))
            // Echo server: answers each line reversed.
            .arg("-rev")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    let server_lines = lines_of(&mut server.0);
    let mut server_seen = Vec::new();
    wait_line(&server_lines, "ACCEPT", WAIT, &mut server_seen);

    let dc = fake_dc();
    let (_relay, relay_addr) =
        Setup::tls_only(SocketAddr::from(([127, 0, 0, 1], mask_port))).start(&dc);

    let mut client = Killed(
        Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(relay_addr.to_string())
            .args(["-servername", DOMAIN, "-showcerts"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_client"),
    );
    let client_lines = lines_of(&mut client.0);
    let mut stdin = client.0.stdin.take().expect("stdin");
    let mut seen = Vec::new();
    wait_line(&client_lines, "END CERTIFICATE", WAIT, &mut seen);
    stdin.write_all(b"hello probe\n").expect("s_client stdin");
    stdin.flush().expect("flush");
    wait_line(&client_lines, "eborp olleh", WAIT, &mut seen);
    drop(stdin);

    let transcript = seen.join("\n");
    let cert = std::fs::read_to_string(dir.path().join("cert.pem")).expect("cert");
    assert_eq!(
        pem_body(&transcript),
        pem_body(&cert),
        "the certificate seen through the relay is not the mask's:\n{transcript}"
    );
    assert!(
        transcript.contains("TLSv1.3"),
        "handshake did not complete:\n{transcript}"
    );
    assert!(dc.sessions().is_empty(), "a TLS probe reached the DC");
}

// ---------------------------------------------------------------------------------------------
// 1c. Random bytes

#[test]
fn probe_random_bytes_reach_the_mask_byte_exact() {
    let mask = MaskServer::start(None);
    let dc = fake_dc();
    let (_relay, relay_addr) = Setup::tls_only(mask.addr).start(&dc);

    for round in 0..3 {
        let mut garbage = vec![0u8; 200];
        rand::rng().fill_bytes(&mut garbage);
        if round == 1 {
            // A TLS record header that promises more than is sent: the reader waits, then
            // the client's FIN ends the handshake.
            garbage[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        }
        let mut probe = connect(relay_addr);
        probe.write_all(&garbage).expect("send");
        probe.shutdown(Shutdown::Write).expect("half-close");
        wait_mask_got(
            &mask,
            &garbage,
            &format!("200 random bytes (round {round})"),
        );
        let (answer, end) = read_until_closed(&mut probe, WAIT);
        end.expect("fronted connection closes after the mask does");
        assert!(answer.is_empty(), "the relay answered random bytes itself");
    }
    assert!(dc.sessions().is_empty());
}

#[test]
fn probe_three_bytes_then_silence_reach_the_mask() {
    let mask = MaskServer::start(None);
    let dc = fake_dc();
    let setup = Setup::tls_only(mask.addr);
    let (_relay, relay_addr) = setup.start(&dc);

    // Not TLS: fronted at once, while the prober stays silent and connected.
    let mut probe = connect(relay_addr);
    probe.write_all(b"\x05\x01\x00").expect("send");
    let conns = mask.wait(WAIT, |c| c.iter().any(|c| c.received == b"\x05\x01\x00"));
    assert!(
        conns.iter().any(|c| c.received == b"\x05\x01\x00"),
        "3 non-TLS bytes did not reach the mask: {conns:?}"
    );
    assert_silent(
        &mut probe,
        Duration::from_millis(200),
        "3 bytes then silence",
    );
    // The rest of the connection is the mask's too.
    probe.write_all(b"more").expect("send more");
    probe.shutdown(Shutdown::Write).expect("half-close");
    wait_mask_got(&mask, b"\x05\x01\x00more", "3 bytes + more");

    // A TLS record start then silence: the mask gets the bytes after the grace period (not
    // after the handshake timeout), so its own timers decide what the prober sees.
    let started = Instant::now();
    let mut probe = connect(relay_addr);
    probe.write_all(&[0x16, 0x03, 0x01]).expect("send");
    let conns = mask.wait(WAIT, |c| c.iter().any(|c| c.received == [0x16, 0x03, 0x01]));
    let waited = started.elapsed();
    assert!(
        conns.iter().any(|c| c.received == [0x16, 0x03, 0x01]),
        "`16 03 01` then silence never reached the mask: {conns:?}"
    );
    assert!(
        waited < Duration::from_secs(setup.handshake_secs),
        "reached the mask after {waited:?}, not before the {} s handshake timeout",
        setup.handshake_secs
    );
    // Bytes that follow go to the mask as they arrive, still before the handshake timeout.
    probe.write_all(&[0x00, 0x10]).expect("send more");
    let more = [0x16, 0x03, 0x01, 0x00, 0x10];
    let conns = mask.wait(WAIT, |c| c.iter().any(|c| c.received == more));
    assert!(
        conns.iter().any(|c| c.received == more),
        "the bytes after the grace period did not follow: {conns:?}"
    );
    drop(probe);
    assert!(dc.sessions().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 1d. Replays

/// One genuine client through a recording forwarder, then the capture replayed.
fn replay_is_fronted(modes: &'static str, transport: Transport) {
    let mask = MaskServer::start(None);
    let dc = fake_dc();
    let mut setup = Setup::tls_only(mask.addr);
    setup.modes = modes;
    let (relay, relay_addr) = setup.start(&dc);
    let recorder = Recorder::start(relay_addr);

    assert_eq!(dc.sessions().len(), 0);
    let options = ClientOptions::new(secret(), transport);
    let mut client = MtprotoClient::connect(recorder.addr, &options).expect("genuine client");
    let payload = b"a genuine client's first request, 48 bytes long";
    client.send(payload).expect("send");
    let mut echo = vec![0u8; payload.len()];
    client.recv_exact(&mut echo).expect("echo");
    assert_eq!(&echo, payload);
    assert_eq!(dc.sessions().len(), 1, "the genuine client reached the DC");
    client.shutdown_write().expect("half-close");
    client.recv_to_end().expect("clean end");
    let captured = recorder
        .wait_closed(0, WAIT)
        .expect("recorder saw the genuine client finish");
    assert!(captured.starts_with(client.handshake_bytes()));
    drop(client);

    // The censor replays exactly what it captured, on a new connection.
    let mut replay = connect(relay_addr);
    replay.write_all(&captured).expect("replay");
    replay.shutdown(Shutdown::Write).expect("half-close");
    wait_mask_got(&mask, &captured, "the replayed handshake");
    let (answer, end) = read_until_closed(&mut replay, WAIT);
    end.expect("the replay's fronted connection ends");
    assert!(
        answer.is_empty(),
        "the replay got {} bytes the mask never sent (a server flight or DC data?): {}",
        answer.len(),
        hex_prefix(&answer)
    );
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        dc.sessions().len(),
        1,
        "the replayed handshake reached the DC: {:?}\nrelay log:\n{}",
        dc.sessions(),
        relay.log()
    );
}

#[test]
fn probe_replayed_tls_handshake_is_fronted_never_relayed() {
    replay_is_fronted(r#"["tls"]"#, tls());
}

#[test]
fn probe_replayed_dd_header_is_fronted_never_relayed() {
    replay_is_fronted(r#"["secure"]"#, Transport::Secure);
}

// ---------------------------------------------------------------------------------------------
// 1e. Handshake timeout

#[test]
fn probe_silent_connection_reaches_the_mask_after_the_grace_period() {
    let mask = MaskServer::start(Some(HTTP_RESPONSE.to_vec()));
    let dc = fake_dc();
    let setup = Setup::tls_only(mask.addr);
    let (_relay, relay_addr) = setup.start(&dc);

    let started = Instant::now();
    let mut probe = connect(relay_addr);
    let conns = mask.wait(WAIT, |c| !c.is_empty());
    let waited = started.elapsed();
    assert_eq!(
        conns.len(),
        1,
        "the silent connection never reached the mask"
    );
    assert!(conns[0].received.is_empty());
    // `[timeouts] mask_grace_ms` (250 by default), well before the 2 s handshake timeout.
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(1500),
        "reached the mask after {waited:?}, expected ~250 ms"
    );
    // From then on the prober talks to the mask.
    probe.write_all(HTTP_REQUEST).expect("send");
    let (answer, end) = read_until_closed(&mut probe, WAIT);
    end.expect("mask closes");
    assert_eq!(answer, HTTP_RESPONSE);
    assert!(dc.sessions().is_empty());
}

#[test]
fn probe_without_fronting_bad_connections_are_closed_and_the_mask_sees_nothing() {
    let mask = MaskServer::start(Some(HTTP_RESPONSE.to_vec()));
    let dc = fake_dc();
    let mut setup = Setup::tls_only(mask.addr);
    setup.handshake_secs = 1;
    setup.fronting = false;
    let (_relay, relay_addr) = setup.start(&dc);

    // Silent: closed at the handshake timeout.
    let started = Instant::now();
    let mut probe = connect(relay_addr);
    let (answer, end) = read_until_closed(&mut probe, WAIT);
    let waited = started.elapsed();
    end.expect("a silent connection must be closed when fronting is off");
    assert!(answer.is_empty());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed after {waited:?}, expected ~1 s"
    );

    // Garbage and a bad hello: closed at once.
    let stranger = Secret::from_hex(STRANGER).expect("secret");
    for (what, bytes) in [
        ("HTTP", HTTP_REQUEST.to_vec()),
        ("bad secret", fake_tls_hello(&stranger, DOMAIN)),
    ] {
        let started = Instant::now();
        let mut probe = connect(relay_addr);
        probe.write_all(&bytes).expect("send");
        let (answer, end) = read_until_closed(&mut probe, WAIT);
        end.unwrap_or_else(|e| panic!("{what}: not closed: {e}"));
        assert!(answer.is_empty(), "{what}: the relay answered");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{what}: closed only after {:?}",
            started.elapsed()
        );
    }
    thread::sleep(Duration::from_millis(200));
    assert!(
        mask.conns().is_empty(),
        "fronting is off but the mask saw {:?}",
        mask.conns()
    );
    assert!(dc.sessions().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 1f. Wrong SNI, bad secret

#[test]
fn probe_wrong_sni_and_bad_secret_are_fronted() {
    let mask = MaskServer::start(None);
    let dc = fake_dc();
    let (_relay, relay_addr) = Setup::tls_only(mask.addr).start(&dc);

    let stranger = Secret::from_hex(STRANGER).expect("secret");
    for (what, hello) in [
        ("wrong SNI", fake_tls_hello(&secret(), "other.example.org")),
        ("bad secret", fake_tls_hello(&stranger, DOMAIN)),
        (
            "stale timestamp",
            relay_proto::tls::build_client_hello(
                &mut rand::rng(),
                &secret(),
                DOMAIN,
                relay_tests::mtproto_client::unix_now() - 3600,
            ),
        ),
    ] {
        let mut probe = connect(relay_addr);
        probe.write_all(&hello).expect("send hello");
        let conns = mask.wait(WAIT, |c| c.iter().any(|c| c.received == hello));
        assert!(
            conns.iter().any(|c| c.received == hello),
            "{what}: the mask never got the {}-byte hello",
            hello.len()
        );
        // The relay itself must say nothing: no server flight for a hello it rejected.
        assert_silent(&mut probe, Duration::from_millis(300), what);
        probe.shutdown(Shutdown::Write).expect("half-close");
        let (answer, end) = read_until_closed(&mut probe, WAIT);
        end.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(answer.is_empty());
    }
    assert!(dc.sessions().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 1g. Mask host down

#[test]
fn probe_with_the_mask_host_down_is_closed_not_hung() {
    let dc = fake_dc();
    let dead_mask = relay_tests::util::RefusingPort::new();
    let mut setup = Setup::tls_only(dead_mask.addr);
    setup.handshake_secs = 1;
    let (_relay, relay_addr) = setup.start(&dc);

    let stranger = Secret::from_hex(STRANGER).expect("secret");
    for (what, bytes) in [
        ("HTTP", HTTP_REQUEST.to_vec()),
        ("bad secret", fake_tls_hello(&stranger, DOMAIN)),
        ("silence", Vec::new()),
    ] {
        let started = Instant::now();
        let mut probe = connect(relay_addr);
        probe.write_all(&bytes).expect("send");
        let (answer, end) = read_until_closed(&mut probe, Duration::from_secs(6));
        end.unwrap_or_else(|e| panic!("{what} with the mask down: {e}"));
        assert!(answer.is_empty(), "{what}: the relay answered");
        let bound = if bytes.is_empty() { 4 } else { 2 };
        assert!(
            started.elapsed() < Duration::from_secs(bound),
            "{what}: closed only after {:?}",
            started.elapsed()
        );
    }
    assert!(dc.sessions().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 2. Slow readers

/// A reproducible byte stream per connection (xorshift64*), so writer and reader agree
/// without keeping megabytes around.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    /// The next `buf.len()` bytes of the stream, however the stream is cut into calls.
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// How the client reads.
#[derive(Clone, Copy)]
enum Reading {
    /// Starts reading at once, while the writer is still sending.
    Concurrent,
    /// Reads only after everything has been sent and the write side shut down.
    AfterWriting,
}

/// Sends `size` bytes on one connection, half-closes, reads the echo slowly; returns an
/// error describing what went missing.
fn slow_echo(
    relay: SocketAddr,
    transport: Transport,
    seed: u64,
    size: usize,
    reading: Reading,
) -> Result<Duration, String> {
    let started = Instant::now();
    let options = ClientOptions::new(secret(), transport);
    let client = MtprotoClient::connect(relay, &options).map_err(|e| format!("connect: {e}"))?;
    client
        .stream()
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = client.split();
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let (done_tx, done_rx) = mpsc::channel();
    let writer = thread::spawn(move || -> Result<(), String> {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            pattern.fill(&mut buf[..n]);
            writer
                .send(&buf[..n])
                .map_err(|e| format!("write failed after {} bytes: {e}", size - left))?;
            left -= n;
        }
        writer
            .shutdown()
            .map_err(|e| format!("shutdown(Write): {e}"))?;
        let _ = done_tx.send(());
        Ok(())
    });
    if matches!(reading, Reading::AfterWriting) {
        done_rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            format!(
                "could not send {size} bytes before reading (buffers along the path too small?)"
            )
        })?;
    }

    let mut expected = Pattern::new(seed);
    let mut want = vec![0u8; 4096];
    let mut buf = vec![0u8; 3000];
    let mut got = 0usize;
    let mut reads = 0u64;
    while got < size {
        let n = reader
            .recv(&mut buf)
            .map_err(|e| format!("read failed after {got} of {size} bytes: {e}"))?;
        if n == 0 {
            return Err(format!(
                "EOF after {got} of {size} bytes: the tail ({} bytes) was lost",
                size - got
            ));
        }
        if got + n > size {
            return Err(format!("{} bytes more than were sent", got + n - size));
        }
        expected.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(format!(
                "echo differs at byte {} of {size}: got {:02x}, want {:02x}",
                got + i,
                buf[i],
                want[i]
            ));
        }
        got += n;
        reads += 1;
        // Slow reader: a little pause each read, a long one now and then so the relay's
        // buffers fill and it goes quiet.
        thread::sleep(if reads.is_multiple_of(256) {
            Duration::from_millis(150)
        } else {
            Duration::from_micros(500)
        });
    }
    let mut extra = [0u8; 64];
    match reader.recv(&mut extra) {
        Ok(0) => {}
        Ok(n) => return Err(format!("{n} bytes after the whole echo")),
        Err(e) => return Err(format!("no clean EOF after the echo: {e}")),
    }
    writer.join().map_err(|_| "writer panicked".to_owned())??;
    Ok(started.elapsed())
}

fn slow_readers(
    modes: &'static str,
    transport: Transport,
    conns: u64,
    size: usize,
    reading: Reading,
) {
    let dc = fake_dc();
    let mask = MaskServer::start(None);
    let mut setup = Setup::tls_only(mask.addr);
    setup.modes = modes;
    let (relay, relay_addr) = setup.start(&dc);

    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|i| {
            let transport = transport.clone();
            thread::spawn(move || slow_echo(relay_addr, transport, 1000 + i, size, reading))
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().unwrap_or_else(|_| Err("panicked".to_owned())))
        .collect();
    let elapsed = started.elapsed();
    let failures: Vec<String> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("connection {i}: {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "RELAY BUG? slow readers lost data ({modes}):\n{}\nrelay log:\n{}",
        failures.join("\n"),
        relay.log()
    );
    eprintln!(
        "{conns} × {size} bytes via {modes}: {elapsed:?} (per connection {:?})",
        results.iter().flatten().collect::<Vec<_>>()
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "slow readers took {elapsed:?}"
    );
    let sessions = dc.sessions();
    assert_eq!(sessions.len() as u64, conns);
    assert!(sessions.iter().all(|s| s.bytes == size as u64));
    assert!(mask.conns().is_empty(), "a genuine client was fronted");
}

const SLOW_CONNS: u64 = 4;
const SLOW_SIZE: usize = 4 << 20;
/// What must fit in the buffers along client→relay→DC→relay→client before anyone reads.
const WRITE_FIRST_SIZE: usize = 2 << 20;

#[test]
fn slow_readers_get_every_byte_dd() {
    slow_readers(
        r#"["secure"]"#,
        Transport::Secure,
        SLOW_CONNS,
        SLOW_SIZE,
        Reading::Concurrent,
    );
}

#[test]
fn slow_readers_get_every_byte_tls() {
    slow_readers(
        r#"["tls"]"#,
        tls(),
        SLOW_CONNS,
        SLOW_SIZE,
        Reading::Concurrent,
    );
}

#[test]
fn reading_only_after_writing_everything_still_gets_the_tail() {
    slow_readers(
        r#"["secure"]"#,
        Transport::Secure,
        2,
        WRITE_FIRST_SIZE,
        Reading::AfterWriting,
    );
    slow_readers(
        r#"["tls"]"#,
        tls(),
        2,
        WRITE_FIRST_SIZE,
        Reading::AfterWriting,
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Fast mode on and off

#[test]
fn echo_in_every_mode_with_fast_mode_on_and_off() {
    for fast_mode in [true, false] {
        let dc = fake_dc();
        let mask = MaskServer::start(None);
        let mut setup = Setup::tls_only(mask.addr);
        setup.modes = r#"["classic", "secure", "tls"]"#;
        setup.fast_mode = fast_mode;
        let (_relay, relay_addr) = setup.start(&dc);
        let cases = [
            (Transport::Abridged, [0xef; 4], 2),
            (Transport::Intermediate, [0xee; 4], -2),
            (Transport::Secure, [0xdd; 4], 2),
            (tls(), [0xdd; 4], 2),
        ];
        for (i, (transport, tag, dc_id)) in cases.into_iter().enumerate() {
            let mut options = ClientOptions::new(secret(), transport.clone());
            options.dc = dc_id;
            let mut client = MtprotoClient::connect(relay_addr, &options)
                .unwrap_or_else(|e| panic!("{transport:?} fast_mode={fast_mode}: {e}"));
            client.set_read_timeout(Some(WAIT)).expect("read timeout");
            let mut payload = vec![0u8; 100_000 + i];
            rand::rng().fill_bytes(&mut payload);
            for chunk in payload.chunks(7_000) {
                client.send(chunk).expect("send");
            }
            let mut echo = vec![0u8; payload.len()];
            client
                .recv_exact(&mut echo)
                .unwrap_or_else(|e| panic!("{transport:?} fast_mode={fast_mode}: {e}"));
            assert!(
                echo == payload,
                "{transport:?} fast_mode={fast_mode}: echo differs"
            );
            client.shutdown_write().expect("half-close");
            assert!(client.recv_to_end().expect("clean end").is_empty());
            let session = dc.sessions()[i].clone();
            assert_eq!(session.tag, tag, "{transport:?}");
            assert_eq!(session.dc, dc_id, "{transport:?}");
            assert!(!session.forbidden_prefix);
        }
        assert!(mask.conns().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Data sent with the header (tdlib sends its first packet in the header's record)

#[test]
fn data_sent_with_the_header_is_relayed() {
    let dc = fake_dc();
    let mask = MaskServer::start(None);
    let mut setup = Setup::tls_only(mask.addr);
    setup.modes = r#"["secure", "tls"]"#;
    let (relay, relay_addr) = setup.start(&dc);
    let mut failures = Vec::new();
    for transport in [Transport::Secure, tls()] {
        // 100 B fits the header's record; the larger ones span records and, written at once,
        // end the relay's first post-handshake read in the middle of a record.
        for early_len in [100usize, 3_000, 20_000, 200_000] {
            let mut early = vec![0u8; early_len];
            rand::rng().fill_bytes(&mut early);
            let options = ClientOptions::new(secret(), transport.clone());
            let mut client = MtprotoClient::connect_with(relay_addr, &options, &early)
                .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
            client.set_read_timeout(Some(WAIT)).expect("read timeout");
            let later = b"and a second request after the first one";
            let sent = client.send(later);
            let mut expected = early.clone();
            expected.extend_from_slice(later);
            let mut echo = vec![0u8; expected.len()];
            let got = sent.and_then(|()| client.recv_exact(&mut echo));
            match got {
                Ok(()) if echo == expected => {}
                Ok(()) => failures.push(format!(
                    "{transport:?}, {early_len} early bytes: echo differs at byte {:?}",
                    (0..echo.len()).find(|&i| echo[i] != expected[i])
                )),
                Err(e) => failures.push(format!("{transport:?}, {early_len} early bytes: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "RELAY BUG? data written together with the header was not relayed:\n{}\nrelay log:\n{}",
        failures.join("\n"),
        relay.log()
    );
}

#[test]
fn header_record_split_across_tcp_segments_is_relayed() {
    let dc = fake_dc();
    let mask = MaskServer::start(None);
    let mut setup = Setup::tls_only(mask.addr);
    setup.modes = r#"["secure", "tls"]"#;
    let (relay, relay_addr) = setup.start(&dc);
    let mut failures = Vec::new();
    for transport in [Transport::Secure, tls()] {
        // tdlib's first record: the header and its first packet. Cut into 80-byte segments
        // (MSS clamping), the first segment already holds the whole 64-byte header.
        let mut first_packet = vec![0u8; 100];
        rand::rng().fill_bytes(&mut first_packet);
        let mut options = ClientOptions::new(secret(), transport.clone());
        options.segments = Some((80, Duration::from_millis(50)));
        let mut client = MtprotoClient::connect_with(relay_addr, &options, &first_packet)
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        client.set_read_timeout(Some(WAIT)).expect("read timeout");
        let mut echo = vec![0u8; first_packet.len()];
        match client.recv_exact(&mut echo) {
            Ok(()) if echo == first_packet => {}
            Ok(()) => failures.push(format!("{transport:?}: echo differs")),
            Err(e) => failures.push(format!("{transport:?}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "RELAY BUG? a header record split across segments broke the relay:\n{}\nrelay log:\n{}",
        failures.join("\n"),
        relay.log()
    );
}

#[test]
fn client_silent_after_the_server_flight_is_closed_not_fronted() {
    // Once the relay has sent its server flight, handing the connection to the mask would
    // put a second ServerHello on the wire: the connection can only be closed.
    let dc = fake_dc();
    let mask = MaskServer::start(None);
    let mut setup = Setup::tls_only(mask.addr);
    setup.handshake_secs = 1;
    let (relay, relay_addr) = setup.start(&dc);

    let mut client = connect(relay_addr);
    client
        .write_all(&fake_tls_hello(&secret(), DOMAIN))
        .expect("hello");
    let mut flight = [0u8; 5];
    client.set_read_timeout(Some(WAIT)).expect("timeout");
    client.read_exact(&mut flight).expect("server flight");
    assert_eq!(
        flight[..3],
        [0x16, 0x03, 0x03],
        "no server flight for a valid hello"
    );
    // Past the handshake timeout.
    let conns = mask.wait(Duration::from_secs(3), |c| !c.is_empty());
    if !conns.is_empty() {
        // Let the forwarded bytes arrive, for the message.
        thread::sleep(Duration::from_millis(300));
    }
    let conns = mask.conns();
    assert!(
        conns.is_empty(),
        "RELAY BUG? after answering with its server flight the relay fronted the connection \
         on the handshake timeout (the mask got {:?} bytes: the ClientHello), so the client \
         gets the mask's real ServerHello after the fake one.\nrelay log:\n{}",
        conns.iter().map(|c| c.received.len()).collect::<Vec<_>>(),
        relay.log()
    );
    let (_, end) = read_until_closed(&mut client, Duration::from_secs(3));
    end.expect("the relay closes a client that never sends its header");
    assert!(dc.sessions().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 1f. The mask connection of a client quiet mid-handshake

/// A genuine client that pauses mid-header past `[timeouts] mask_grace_ms` gets a mask
/// connection meanwhile; when the rest arrives and verifies, that connection is closed and the
/// client is relayed: the pause costs the mask one short connection, not the client its session.
#[test]
fn genuine_client_pausing_past_the_grace_is_relayed_and_the_mask_leg_closed() {
    let dc = fake_dc();
    let mask = MaskServer::start(None);
    let mut setup = Setup::tls_only(mask.addr);
    setup.modes = r#"["secure", "tls"]"#;
    let (relay, relay_addr) = setup.start(&dc);
    let mut options = ClientOptions::new(secret(), Transport::Secure);
    // The header in two writes 600 ms apart: the mask gets the first 32 bytes meanwhile.
    options.segments = Some((32, Duration::from_millis(600)));
    let payload = b"after a pause".to_vec();
    let mut client = MtprotoClient::connect_with(relay_addr, &options, &payload)
        .unwrap_or_else(|e| panic!("paused client: {e}\n{}", relay.log()));
    client.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut echo = vec![0u8; payload.len()];
    client
        .recv_exact(&mut echo)
        .unwrap_or_else(|e| panic!("no echo after the pause: {e}\n{}", relay.log()));
    assert_eq!(echo, payload);
    let conns = mask.wait(WAIT, |c| c.len() == 1 && c[0].closed);
    assert_eq!(
        conns.len(),
        1,
        "one mask connection for the pause: {conns:?}"
    );
    assert!(
        conns[0].closed,
        "the mask connection stayed open: {conns:?}"
    );
    assert_eq!(
        conns[0].received,
        client.handshake_bytes()[..32],
        "the mask got the first segment"
    );
    let legs = relay_tests::util::wait_until(WAIT, || {
        let m = relay_tests::metrics::Metrics::parse(&relay.scrape());
        let abandoned = m.sum("relay_mask_legs_total", &[("outcome", "abandoned")]);
        (abandoned >= 1.0).then(|| {
            (
                m.sum("relay_mask_legs_total", &[("outcome", "opened")]),
                abandoned,
            )
        })
    });
    assert_eq!(legs, Some((1.0, 1.0)), "mask legs opened, abandoned");
    assert_eq!(dc.sessions().len(), 1);
}

/// A truncated ClientHello: the mask gets it after the grace period and ends the connection on
/// its own terms (here: it closes at once), and the prober sees that end at that time, long
/// before relay's handshake deadline.
#[test]
fn truncated_hello_ends_when_the_mask_ends_it() {
    let dc = fake_dc();
    // Answers and closes once it has a request head: stands in for a site that gives up.
    let mask = MaskServer::start(Some(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()));
    let mut setup = Setup::tls_only(mask.addr);
    setup.handshake_secs = 5;
    let (_relay, relay_addr) = setup.start(&dc);
    let hello = fake_tls_hello(&secret(), DOMAIN);
    let started = Instant::now();
    let mut probe = connect(relay_addr);
    probe.write_all(&hello[..100]).expect("send");
    // The head ends in `\r\n\r\n` only once this reaches the mask, as the next bytes.
    thread::sleep(Duration::from_millis(500));
    probe.write_all(b"\r\n\r\n").expect("send");
    let (answer, end) = read_until_closed(&mut probe, WAIT);
    let took = started.elapsed();
    end.expect("closed as the mask closed");
    assert_eq!(answer, b"HTTP/1.1 400 Bad Request\r\n\r\n");
    assert!(
        took < Duration::from_secs(setup.handshake_secs),
        "ended after {took:?}: relay's own deadline, not the mask's"
    );
    assert!(dc.sessions().is_empty());
}
