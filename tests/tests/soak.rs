//! A 60-second mixed run (root; `RELAY_SOAK_SECS` shortens or lengthens it): relay-ctl with
//! native XDP in one namespace, and from the other, all at once and all bounded in time:
//! Telethon and kurigram sessions, Rust clients in every mode, a prober (garbage, HTTP, bad
//! secrets) that gets banned and unbanned over and over, and a paced SYN flood from a blocked
//! range. At the end nothing has leaked (open fds back where they were after warm-up, RSS
//! within a bound, no connection open) and the counters agree with each other and with what
//! the clients and the flood sender counted.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rand::{Rng as _, RngCore as _};
use relay_common::Verdict;
use relay_tests::{
    fake_dc::FakeDc,
    kernel,
    mask::MaskServer,
    metrics::Metrics,
    mtproto_client::{ClientOptions, MtprotoClient, Transport as RustTransport},
    netns::{NetPair, SERVER_V4, client_v4, in_namespace},
    pyclient::{self, Echo, Transport},
    relay::Relay,
    util::{open_fds, rss_kib, wait_until},
};

/// Least time between one Rust worker's sessions: two workers stay at ≤ 10 connections a
/// second from their shared address, half the detector's default rate.
const RUST_SESSION_EVERY: Duration = Duration::from_millis(200);
const PORT: u16 = 4443;
const SECRET: &str = "5a3c9e1f0b7d2468ace13579bdf02468";
const DOMAIN: &str = "example.com";
const FLOOD_NET: &str = "198.19.128.0/17";
const FLOOD_PPS: u64 = 5_000;

fn soak_secs() -> u64 {
    std::env::var("RELAY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn config(pair: &NetPair, dc: SocketAddr, mask: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}"]
modes = ["classic", "secure", "tls"]
drain_secs = 0

[xdp]
interfaces = ["{iface}"]
mode = "native"

[limits]
syn_rate_per_sec = 200
syn_burst = 200

[blocklist]
cidrs = ["{FLOOD_NET}"]

[[users]]
name = "alice"
secret = "{SECRET}"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"

[upstream]
default_dc = 2

[upstream.dc]
"2" = ["{dc}"]
"-2" = ["{dc}"]
"10002" = ["{dc}"]

[timeouts]
handshake_secs = 3

[misuse]
bad_secret = 10
garbage = 10
ban_secs = 3
# The prober's SYNs die in XDP while banned (the default would front it).
action = "drop"
"#,
        iface = pair.server_if,
    )
}

/// Runs `f` in a loop on a thread in the client namespace until `stop`; `f` returns whether
/// its round went as expected. Returns (rounds, failures) when joined.
fn worker(
    ns: &str,
    stop: &Arc<AtomicBool>,
    f: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> thread::JoinHandle<(u64, Vec<String>)> {
    let ns = ns.to_owned();
    let stop = stop.clone();
    thread::spawn(move || {
        in_namespace(&ns, || {
            let (mut rounds, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                rounds += 1;
                if let Err(e) = f() {
                    failures.push(e);
                }
            }
            (rounds, failures)
        })
    })
}

fn bound_socket(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = relay_tests::util::bound_socket(from)?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// One Rust client session in a random mode with a random payload, echo checked.
fn rust_session(relay: SocketAddr) -> Result<(), String> {
    let secret = SECRET.parse().map_err(|e| format!("{e:?}"))?;
    let mut rng = rand::rng();
    let transport = match rng.random_range(0..3) {
        0 => RustTransport::Abridged,
        1 => RustTransport::Secure,
        _ => RustTransport::FakeTls {
            domain: DOMAIN.to_owned(),
        },
    };
    let options = ClientOptions::new(secret, transport.clone());
    let stream = bound_socket(client_v4(4), relay).map_err(|e| format!("connect: {e}"))?;
    let mut client = MtprotoClient::handshake(stream, &options, &[])
        .map_err(|e| format!("{transport:?} handshake: {e}"))?;
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; rng.random_range(1..200_000)];
    rng.fill_bytes(&mut payload);
    client.send(&payload).map_err(|e| format!("send: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    client
        .recv_exact(&mut back)
        .map_err(|e| format!("{transport:?} echo: {e}"))?;
    if back != payload {
        return Err(format!("{transport:?}: echo differs"));
    }
    Ok(())
}

/// One probe: garbage, an HTTP request or a header no secret decrypts. Connections refused by
/// a ban are expected: that is the detector working.
fn probe(relay: SocketAddr) -> Result<(), String> {
    let Ok(mut stream) = bound_socket(client_v4(5), relay) else {
        return Ok(()); // banned: the SYN died in XDP
    };
    let mut rng = rand::rng();
    let bytes: Vec<u8> = match rng.random_range(0..3) {
        0 => b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
        _ => {
            let mut junk = vec![0u8; 64];
            rng.fill_bytes(&mut junk);
            junk
        }
    };
    let _ = stream.write_all(&bytes);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = stream.read(&mut [0u8; 256]);
    thread::sleep(Duration::from_millis(50));
    Ok(())
}

fn server_mac(pair: &NetPair) -> String {
    let json = relay_tests::netns::ip(&[
        "-n",
        &pair.server_ns,
        "-j",
        "link",
        "show",
        "dev",
        &pair.server_if,
    ]);
    let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j");
    links[0]["address"].as_str().expect("mac").to_owned()
}

#[test]
fn soak_mixed_clients_probes_and_flood_leave_no_leaks() {
    if !relay_tests::privilege::privileged("soak_mixed_clients_probes_and_flood_leave_no_leaks") {
        return;
    }
    let Some(python) = pyclient::python("soak_mixed_clients_probes_and_flood_leave_no_leaks")
    else {
        return;
    };
    let secs = soak_secs();
    let pair = NetPair::new("soak", 5);
    let (dc, mask) = in_namespace(&pair.server_ns, || {
        (
            FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0))),
            MaskServer::start(None),
        )
    });
    let relay = Relay::start(&pair.server_ns, &config(&pair, dc.addr, mask.addr));
    let (_, prog_id) = pair.server_xdp().expect("XDP attached");
    let pid = relay.pid();
    let target = SocketAddr::from((SERVER_V4, PORT));

    // Warm-up: a few sessions, then the baseline.
    for _ in 0..20 {
        pair.in_client(|| rust_session(target))
            .expect("warm-up session");
    }
    thread::sleep(Duration::from_millis(1500));
    let (fds_warm, rss_warm) = (open_fds(pid), rss_kib(pid));

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flood = {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pair.client_ns])
            .arg(env!("CARGO_BIN_EXE_relay-flood"))
            .args(["--iface", &pair.client_if, "--dst-mac", &server_mac(&pair)])
            .args(["--dst", &target.to_string(), "--src-net", FLOOD_NET])
            .args(["--pps", &FLOOD_PPS.to_string()])
            .args(["--count", &(FLOOD_PPS * secs).to_string()])
            .args(["--duration", &(secs.saturating_sub(5).max(1)).to_string()])
            .stdout(Stdio::piped());
        cmd.spawn().expect("spawn relay-flood")
    };
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push((
            "rust",
            worker(&pair.client_ns, &stop, move || {
                // Paced like a client, not a flood: both workers share one address, and the
                // detector bans a source past `[misuse] connections` (1,200 a minute) per
                // source. Unpaced, a fast relay let them reach that and get banned mid-session.
                let begun = Instant::now();
                let outcome = rust_session(target);
                if let Some(rest) = RUST_SESSION_EVERY.checked_sub(begun.elapsed()) {
                    thread::sleep(rest);
                }
                outcome
            }),
        ));
    }
    workers.push((
        "probe",
        worker(&pair.client_ns, &stop, move || probe(target)),
    ));
    let telethon_secret = format!("dd{SECRET}");
    let telethon_python = python.clone();
    workers.push((
        "telethon",
        worker(&pair.client_ns, &stop, move || {
            let mut echo = Echo::local(PORT, telethon_secret.clone(), 2, &[1000, 100_000]);
            echo.host = SERVER_V4.to_string();
            echo.local_addr = Some(client_v4(2).to_string());
            echo.deadline = Duration::from_secs(60);
            let run = echo.telethon(&telethon_python, Transport::Randomized);
            run.ok().then_some(()).ok_or_else(|| run.describe())
        }),
    ));
    let kurigram_secret = format!("ee{SECRET}{}", hex(DOMAIN.as_bytes()));
    workers.push((
        "kurigram",
        worker(&pair.client_ns, &stop, move || {
            // kurigram's payloads are 24 + 16·k bytes.
            let mut echo = Echo::local(PORT, kurigram_secret.clone(), 2, &[1000, 99_992]);
            echo.host = SERVER_V4.to_string();
            echo.deadline = Duration::from_secs(60);
            let run = echo.kurigram(&python);
            run.ok().then_some(()).ok_or_else(|| run.describe())
        }),
    ));
    while started.elapsed() < Duration::from_secs(secs) {
        thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut rounds_by = Vec::new();
    for (name, w) in workers {
        let (rounds, failures) = w.join().expect("worker");
        assert!(
            failures.is_empty(),
            "{name}: {} failures: {failures:?}",
            failures.len()
        );
        assert!(rounds >= 1, "{name} never ran");
        rounds_by.push((name, rounds));
    }
    let flood_out = flood.wait_with_output().expect("relay-flood");
    let flood_text = String::from_utf8_lossy(&flood_out.stdout);
    let sent: u64 = flood_text
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v["sent"].as_u64())
        .unwrap_or_else(|| panic!("relay-flood output: {flood_text}"));

    // Settle: every connection ends, the exporter catches up.
    let settled = wait_until(Duration::from_secs(20), || {
        let m = Metrics::parse(&relay.scrape());
        (m.sum("relay_connections_active", &[]) == 0.0
            && m.sum("relay_handshakes_active", &[]) == 0.0)
            .then_some(m)
    });
    let m = settled.unwrap_or_else(|| panic!("connections still open:\n{}", relay.scrape()));
    thread::sleep(Duration::from_millis(1500));
    let m_final = Metrics::parse(&relay.scrape());
    let (fds_end, rss_end) = (open_fds(pid), rss_kib(pid));
    let verdicts = kernel::verdict_counts(prog_id);
    eprintln!(
        "soak {secs}s: rounds {rounds_by:?}; flood sent {sent}, XDP blocked {}; banned SYNs {}; \
         fds {fds_warm} -> {fds_end}; RSS {rss_warm} -> {rss_end} KiB",
        verdicts[Verdict::BlockedCidr as usize],
        verdicts[Verdict::Banned as usize],
    );

    // No leaks.
    assert!(fds_end <= fds_warm + 1, "fds {fds_warm} -> {fds_end}");
    assert!(
        rss_end <= rss_warm + 16 * 1024,
        "RSS {rss_warm} -> {rss_end} KiB"
    );
    // Counters agree: every accepted connection ended in exactly one handshake result...
    let accepted = m_final.sum("relay_connections_accepted_total", &[]);
    let handshakes = m_final.sum("relay_handshakes_total", &[]);
    assert_eq!(accepted, handshakes, "accepted vs handshake results");
    // ...per-user bytes add up to the relayed bytes...
    for direction in ["client_to_dc", "dc_to_client"] {
        assert_eq!(
            m_final.sum("relay_user_bytes_total", &[("direction", direction)]),
            m_final.sum("relay_relayed_bytes_total", &[("direction", direction)]),
            "{direction}"
        );
    }
    // ...the exporter agrees with the kernel, and every flood frame met XDP's blocklist.
    assert_eq!(
        m_final.sum("relay_xdp_packets_total", &[("verdict", "blocked_cidr")]),
        verdicts[Verdict::BlockedCidr as usize] as f64
    );
    assert!(
        verdicts[Verdict::BlockedCidr as usize] >= sent * 95 / 100
            && verdicts[Verdict::BlockedCidr as usize] <= sent,
        "flood sent {sent}, blocked {}",
        verdicts[Verdict::BlockedCidr as usize]
    );
    // The prober was banned, in the kernel.
    assert!(m.sum("relay_bans_total", &[]) >= 1.0, "no ban");
    assert!(
        verdicts[Verdict::Banned as usize] >= 1,
        "no SYN dropped as banned"
    );
    relay.stop();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
