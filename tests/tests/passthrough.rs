//! Passthrough bytes (fast mode's DC → client direction of `dd` and obfuscated2 clients, both
//! directions of fronted connections, of which only mask → client can take the sockmap path)
//! through relay-ctl on loopback, on each path
//! `[server] passthrough` allows: the kernel's sockmap program (`auto`, root only), `splice`
//! and `copy`. Every path must give the same bytes, the same half-close, the same idle
//! timeout, the same accounting and the same quota cut-off; the sockmap path must leave no
//! map entries behind, and a relay the kernel refuses the program must splice.
//!
//! The sockmap variants need root with CAP_BPF/CAP_NET_ADMIN: they skip with a message
//! without it, and fail under `CI=true`. Every wait is bounded.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use aes::cipher::{KeyIvInit as _, StreamCipher as _};
use relay_proto::Secret;
use relay_tests::{
    fake_dc::FakeDc,
    metrics::Metrics,
    mtproto_client::{ClientOptions, MtprotoClient, Transport},
    privilege,
    relay::Relay,
    util::wait_until,
};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
type AesCtr = ctr::Ctr128BE<aes::Aes256>;

const WAIT: Duration = Duration::from_secs(20);

/// `[server] passthrough` values and the path each must end up on.
const SOCKMAP: (&str, &str) = ("auto", "sockmap");
const SPLICE: (&str, &str) = ("splice", "splice");
const COPY: (&str, &str) = ("copy", "copy");

/// The paths a test runs on here: sockmap only with root (else a visible skip).
fn paths(test: &str) -> Vec<(&'static str, &'static str)> {
    let mut paths = vec![SPLICE, COPY];
    if privilege::privileged(test) {
        paths.insert(0, SOCKMAP);
    }
    paths
}

fn config(port: u16, passthrough: &str, dc: SocketAddr, mask: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["classic", "secure", "tls"]
passthrough = "{passthrough}"

[xdp]
mode = "off"

[tls]
domain = "example.com"
mask = "{mask}"

[upstream]
default_dc = 2
dc = {{ "2" = ["{dc}"] }}

[[users]]
name = "alice"
secret = "{SECRET}"
{extra}
"#
    )
}

/// A relay with `passthrough`, the fake DC and `mask`; waits until the relay reports the
/// sockmap program loaded or not, as `path` needs.
fn start(passthrough: &str, path: &str, dc: SocketAddr, mask: SocketAddr, extra: &str) -> Relay {
    let (relay, _) =
        Relay::start_local_on_free_port(|port| config(port, passthrough, dc, mask, extra));
    let loaded = scrape_until(&relay, "relay_sockmap_loaded", |m| {
        m.has("relay_sockmap_loaded")
            .then(|| m.sum("relay_sockmap_loaded", &[]))
    });
    assert_eq!(
        loaded == 1.0,
        path == "sockmap",
        "passthrough {passthrough}: sockmap loaded = {loaded}\n{}",
        relay.log()
    );
    relay
}

fn relay_addr(relay: &Relay) -> SocketAddr {
    let config =
        relay_ctl::config::Config::parse(&relay.config, relay_ctl::config::Origin::Embedded)
            .expect("config");
    config.server.listen[0]
}

/// Scrapes until `f` gives a value (bounded by [`WAIT`]).
fn scrape_until<T>(relay: &Relay, what: &str, mut f: impl FnMut(&Metrics) -> Option<T>) -> T {
    wait_until(WAIT, || {
        let text = relay.try_scrape().ok()?;
        f(&Metrics::parse(&text))
    })
    .unwrap_or_else(|| panic!("metrics never showed {what}:\n{}", relay.log()))
}

/// Passthrough directions since start on `path`.
fn directions(relay: &Relay, path: &str) -> f64 {
    Metrics::parse(&relay.scrape()).sum("relay_passthrough_total", &[("path", path)])
}

fn client(relay: &Relay, transport: Transport) -> MtprotoClient {
    let mut options = ClientOptions::new(Secret::from_hex(SECRET).expect("secret"), transport);
    options.dc = 2;
    MtprotoClient::connect(relay_addr(relay), &options).expect("handshake through the relay")
}

/// The DC's stream from byte `from` on, `len` bytes.
fn stream_bytes(from: usize, len: usize) -> Vec<u8> {
    (from..from + len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Every client kind whose DC → client bytes pass through in fast mode echoes byte for byte
/// on every path, half-closes cleanly, and is accounted to the byte; the path is the one the
/// config asked for.
#[test]
fn echoes_half_close_and_accounting_on_every_path() {
    let test = "echoes_half_close_and_accounting_on_every_path";
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let mask = EchoServer::start();
    for (passthrough, path) in paths(test) {
        let relay = start(passthrough, path, dc.addr, mask.addr, "");
        let mut sent_total = 0u64;
        for (i, transport) in [
            Transport::Abridged,
            Transport::Intermediate,
            Transport::Secure,
        ]
        .into_iter()
        .enumerate()
        {
            let label = format!("{passthrough}: {transport:?}");
            let payload = pattern(3 << 20, i as u32);
            let (mut reader, mut writer) = client(&relay, transport).split();
            // The first half's echo comes back before the rest and the FIN are sent: the
            // download moves bulk while both sockets are open, so it joins the sockmap (a
            // socket whose peer sent FIN cannot join).
            let half = payload.len() / 2;
            writer.send(&payload[..half]).expect("send");
            let mut got = vec![0u8; half];
            reader.recv_exact(&mut got).expect("first half echoed");
            let rest = payload[half..].to_vec();
            let writing = thread::spawn(move || {
                writer.send(&rest).expect("send");
                // Half-close: the DC echoes the rest, then closes its side.
                writer.shutdown().expect("half-close");
            });
            got.extend(reader.recv_to_end().expect("echo to EOF"));
            writing.join().expect("writer");
            assert!(
                got.len() == payload.len() && got == payload,
                "{label}: echo differs ({} of {} bytes)",
                got.len(),
                payload.len()
            );
            sent_total += payload.len() as u64;
        }
        let bytes = |m: &Metrics, dir: &str| {
            m.sum(
                "relay_user_bytes_total",
                &[("user", "alice"), ("direction", dir)],
            ) as u64
        };
        // Exact: every byte the clients sent and got, counted once (the connection's first
        // bytes included, the 64-byte header not).
        let (up, down) = scrape_until(&relay, "the user's bytes", |m| {
            let both = (bytes(m, "client_to_dc"), bytes(m, "dc_to_client"));
            (both.1 >= sent_total).then_some(both)
        });
        assert_eq!((up, down), (sent_total, sent_total), "{passthrough}");
        assert!(
            directions(&relay, path) >= 3.0,
            "{passthrough}: three DC → client directions on {path}\n{}",
            relay.scrape()
        );
        fronted_echo(&relay, passthrough, path);
        no_entries_left(&relay);
        let log = relay.stop();
        assert!(!log.contains(" ERROR "), "{passthrough}: {log}");
    }
}

/// A fronted connection (its handshake fails) is relayed to the mask both ways, byte for byte,
/// with the client's half-close passed on and the mask's after it. Its mask → client direction
/// takes `path`; the client → mask direction splices when `path` is sockmap.
fn fronted_echo(relay: &Relay, passthrough: &str, path: &str) {
    let count = |m: &Metrics, path: &str| m.sum("relay_passthrough_total", &[("path", path)]);
    let before = Metrics::parse(&relay.scrape());
    let mut probe = TcpStream::connect(relay_addr(relay)).expect("connect");
    probe.set_read_timeout(Some(WAIT)).expect("timeout");
    let payload = pattern(2 << 20, 99);
    // The first half's echo comes back before the rest and the FIN are sent: both
    // directions are open (a socket whose peer sent FIN cannot join a sockmap).
    let half = payload.len() / 2;
    probe.write_all(&payload[..half]).expect("send");
    let mut got = vec![0u8; half];
    probe.read_exact(&mut got).expect("first half echoed");
    let rest = payload[half..].to_vec();
    let mut writer = probe.try_clone().expect("clone");
    let writing = thread::spawn(move || {
        writer.write_all(&rest).expect("send");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    probe.read_to_end(&mut got).expect("mask's echo to EOF");
    writing.join().expect("writer");
    assert!(
        got == payload,
        "{passthrough}: fronted echo differs ({} of {} bytes)",
        got.len(),
        payload.len()
    );
    // The mask → client direction starts on splice and moves on to the sockmap.
    let expected: &[(&str, f64)] = if path == "sockmap" {
        &[("sockmap", 1.0), ("splice", 2.0)]
    } else {
        &[(path, 2.0)]
    };
    scrape_until(relay, "the fronted directions", |m| {
        expected
            .iter()
            .all(|(p, n)| count(m, p) == count(&before, p) + n)
            .then_some(())
    });
}

fn no_entries_left(relay: &Relay) {
    scrape_until(relay, "no sockmap entries", |m| {
        (m.has("relay_sockmap_entries") && m.sum("relay_sockmap_entries", &[]) == 0.0).then_some(())
    });
}

/// A DC that sends what it is told: the client's first 4 bytes (after the header) give a
/// byte count, the DC sends that many in 16 KiB records spaced `pause` apart, then closes.
struct StreamingDc {
    addr: SocketAddr,
}

impl StreamingDc {
    fn start(pause: Duration) -> StreamingDc {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                thread::spawn(move || stream_to(stream, pause));
            }
        });
        StreamingDc { addr }
    }
}

fn stream_to(mut stream: TcpStream, pause: Duration) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut header = [0u8; 64];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let mut decrypt = AesCtr::new(header[8..40].into(), header[40..56].into());
    let mut reversed = [0u8; 48];
    reversed.copy_from_slice(&header[8..56]);
    reversed.reverse();
    let mut encrypt = AesCtr::new(reversed[..32].into(), reversed[32..].into());
    decrypt.apply_keystream(&mut header);
    let mut ask = [0u8; 4];
    if stream.read_exact(&mut ask).is_err() {
        return;
    }
    decrypt.apply_keystream(&mut ask);
    let mut left = u32::from_le_bytes(ask) as usize;
    let mut offset = 0;
    while left > 0 {
        let n = left.min(16 * 1024);
        let mut record = stream_bytes(offset, n);
        offset += n;
        encrypt.apply_keystream(&mut record);
        if stream.write_all(&record).is_err() {
            return;
        }
        left -= n;
        thread::sleep(pause);
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Keep the socket until the relay closes its side.
    let _ = stream.read(&mut [0u8; 1]);
}

/// Reads until EOF or a reset, returning what came (the reset is how a quota ends a pair).
fn read_until_closed(client: &mut MtprotoClient) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match client.recv(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("no EOF in time after {} bytes", got.len())
            }
            Err(_) => return got,
        }
    }
}

/// A DC → client stream outlives the idle timeout while it moves (the kernel's bytes count as
/// activity), and a quiet pair ends after it.
#[test]
fn idle_timeout_sees_kernel_activity_and_ends_quiet_pairs() {
    let test = "idle_timeout_sees_kernel_activity_and_ends_quiet_pairs";
    let dc = StreamingDc::start(Duration::from_millis(100));
    let mask = EchoServer::start();
    for (passthrough, path) in paths(test) {
        let relay = start(
            passthrough,
            path,
            dc.addr,
            mask.addr,
            "\n[timeouts]\nidle_secs = 1\n",
        );
        // 40 records 100 ms apart: four seconds of DC → client bytes only.
        let mut busy = client(&relay, Transport::Secure);
        busy.set_read_timeout(Some(WAIT)).expect("timeout");
        let want = 40 * 16 * 1024;
        busy.send(&(want as u32).to_le_bytes()).expect("ask");
        let got = read_until_closed(&mut busy);
        assert!(
            got.len() == want && got == stream_bytes(0, want),
            "{passthrough}: a busy stream got {} of {want} bytes",
            got.len()
        );
        // Nothing asked: nothing moves, and the idle timeout closes it.
        let mut quiet = client(&relay, Transport::Secure);
        quiet.set_read_timeout(Some(WAIT)).expect("timeout");
        let started = Instant::now();
        let got = read_until_closed(&mut quiet);
        assert!(got.is_empty(), "{passthrough}");
        assert!(
            started.elapsed() < WAIT,
            "{passthrough}: closed by the idle timeout"
        );
        no_entries_left(&relay);
        relay.stop();
    }
}

/// A quota ends a DC → client stream at its byte budget: the client gets less than the quota,
/// short of it by no more than one TCP segment on the sockmap path (one read elsewhere), and
/// the user's usage reaches the quota.
#[test]
fn quota_cuts_a_stream_at_the_byte_budget() {
    let test = "quota_cuts_a_stream_at_the_byte_budget";
    let dc = StreamingDc::start(Duration::from_micros(200));
    let mask = EchoServer::start();
    const QUOTA: u64 = 3_000_000;
    const SEGMENT: u64 = 64 * 1024;
    const BULK: u64 = relay_ctl::relay::buffers::BULK_BUF as u64;
    for (passthrough, path) in paths(test) {
        let relay = start(
            passthrough,
            path,
            dc.addr,
            mask.addr,
            &format!("quota = {QUOTA}"),
        );
        // The sockmap program stops within one TCP segment (up to 64 KiB on loopback, which
        // may carry more than one record); userspace within one read.
        let slack = if path == "sockmap" { SEGMENT } else { BULK };
        let mut client = client(&relay, Transport::Secure);
        client.set_read_timeout(Some(WAIT)).expect("timeout");
        client.send(&(10_000_000u32).to_le_bytes()).expect("ask");
        let got = read_until_closed(&mut client);
        let used = got.len() as u64 + 4;
        assert!(
            used < QUOTA && used + slack >= QUOTA,
            "{passthrough}: {used} bytes used of a {QUOTA}-byte quota"
        );
        assert!(
            got == stream_bytes(0, got.len()),
            "{passthrough}: bytes unchanged"
        );
        let counted = scrape_until(&relay, "the user's usage", |m| {
            let n = m.sum("relay_user_bytes_total", &[("user", "alice")]) as u64;
            (n >= QUOTA).then_some(n)
        });
        assert!(
            counted < QUOTA + slack,
            "{passthrough}: {counted} bytes counted"
        );
        eprintln!("{passthrough}: quota {QUOTA}: client got {used}, usage {counted}");
        no_entries_left(&relay);
        relay.stop();
    }
}

/// 10,000 sockmap connections, each a bulk echo (the download joins the maps when it goes
/// quiet), a small echo through the maps, then a close from the client: every one's entries
/// leave the maps.
#[test]
fn ten_thousand_connections_leave_no_map_entries() {
    let test = "ten_thousand_connections_leave_no_map_entries";
    if !privilege::privileged(test) {
        return;
    }
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let mask = EchoServer::start();
    let (passthrough, path) = SOCKMAP;
    let relay = start(
        passthrough,
        path,
        dc.addr,
        mask.addr,
        "\n[limits]\nsyn_limit = false\n\n[misuse]\nconnections = 1000000\n",
    );
    let addr = relay_addr(&relay);
    const THREADS: usize = 8;
    const EACH: usize = 1250;
    // Enough for the download to join the maps (it joins once it has moved 64 KiB).
    const BULK_ECHO: usize = 64 * 1024;
    let deadline = Instant::now() + Duration::from_secs(300);
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || {
                let mut options = ClientOptions::new(
                    Secret::from_hex(SECRET).expect("secret"),
                    Transport::Secure,
                );
                options.dc = 2;
                for i in 0..EACH {
                    assert!(Instant::now() < deadline, "churn took too long");
                    let mut client = MtprotoClient::connect(addr, &options).expect("handshake");
                    for len in [BULK_ECHO, 100] {
                        let payload = pattern(len, (t * EACH + i) as u32);
                        client.send(&payload).expect("send");
                        let mut got = vec![0u8; len];
                        client.recv_exact(&mut got).expect("echo");
                        assert_eq!(got, payload);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("churn worker");
    }
    // A download joins when its source is quiet after the bulk echo, so nearly all do before
    // the client's small echo; one still splicing at its close counts there.
    let joined = scrape_until(&relay, "the connections' downloads counted", |m| {
        // Every download starts on splice.
        let n = m.sum("relay_passthrough_total", &[("path", "sockmap")]);
        let all = m.sum("relay_passthrough_total", &[("path", "splice")]);
        (all >= (THREADS * EACH) as f64).then_some(n)
    });
    assert!(
        joined >= 0.95 * (THREADS * EACH) as f64,
        "{joined} of {} downloads on sockmap",
        THREADS * EACH
    );
    no_entries_left(&relay);
    let active = scrape_until(&relay, "no open directions", |m| {
        let n = m.sum("relay_passthrough_active", &[]);
        (n == 0.0).then_some(n)
    });
    assert_eq!(active, 0.0);
    relay.stop();
}

/// With root but without CAP_BPF (and CAP_SYS_ADMIN), the kernel refuses the program: the
/// relay says so, splices, and echoes still come back whole.
#[test]
fn a_refused_program_falls_back_to_splice() {
    let test = "a_refused_program_falls_back_to_splice";
    if !privilege::root(test, "setpriv drops capabilities") {
        return;
    }
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let mask = EchoServer::start();
    let port = relay_tests::util::free_port();
    let relay = Relay::start_local_wrapped(
        &config(port, "auto", dc.addr, mask.addr, ""),
        &[
            "setpriv",
            "--bounding-set",
            "-bpf,-sys_admin,-perfmon",
            "--inh-caps",
            "-all",
        ],
    );
    let loaded = scrape_until(&relay, "relay_sockmap_loaded", |m| {
        m.has("relay_sockmap_loaded")
            .then(|| m.sum("relay_sockmap_loaded", &[]))
    });
    assert_eq!(loaded, 0.0, "{}", relay.log());
    assert!(relay.log().contains("sockmap not used"), "{}", relay.log());
    let payload = pattern(4 << 20, 7);
    let (mut reader, mut writer) = client(&relay, Transport::Secure).split();
    let sent = payload.clone();
    let writing = thread::spawn(move || {
        writer.send(&sent).expect("send");
        writer.shutdown().expect("half-close");
    });
    let got = reader.recv_to_end().expect("echo");
    writing.join().expect("writer");
    assert!(got == payload, "echo differs");
    scrape_until(&relay, "a spliced direction", |m| {
        (m.sum("relay_passthrough_total", &[("path", "splice")]) >= 1.0).then_some(())
    });
    assert_eq!(directions(&relay, "sockmap"), 0.0);
    relay.stop();
}

/// The mask host: echoes every connection, then closes its side after the client's FIN.
struct EchoServer {
    addr: SocketAddr,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                thread::spawn(move || {
                    let mut stream = stream;
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                });
            }
        });
        EchoServer { addr }
    }
}
