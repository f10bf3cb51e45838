//! Handshake slots under a slow attack: 48 source addresses of one /24, each within its
//! new-connection budget, hold silent connections and close each just before the handshake
//! deadline, while a genuine Telethon client from another /24 connects again and again. Silent
//! handshakes are evicted to make room and count as offences (so the attackers, and in time
//! their /24, are banned: a genuine client inside that /24 would be fronted with them, which is
//! what a prefix ban is for), and the genuine client keeps getting in.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use relay_tests::{
    fake_dc::FakeDc,
    mask::MaskServer,
    metrics::Metrics,
    pyclient::{self, Echo, Transport},
    relay::Relay,
    util::bound_socket,
};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// `[timeouts] handshake_secs` (the default).
const DEADLINE: Duration = Duration::from_secs(10);
const SOURCES: u8 = 48;
/// New connections per second per attacking source: under the default budget of 8 per second.
const ATTACK_RATE: f64 = 6.0;
const GENUINE_RUNS: usize = 20;

fn config(port: u16, dc: SocketAddr, mask: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["secure", "tls"]

[xdp]
mode = "off"

[[users]]
name = "alice"
secret = "{SECRET}"

[tls]
domain = "example.com"
mask = "{mask}"

[upstream.dc]
"2" = ["{dc}"]
"#
    )
}

/// Raises this process's open-file limit to its hard limit: the attack holds thousands.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// One attacking source: opens silent connections at `ATTACK_RATE` (after a burst the budget
/// allows) and closes each at 0.9 × the deadline, until `stop`.
fn attacker(source: IpAddr, target: SocketAddr, stop: &AtomicBool, opened: &AtomicU64) {
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let hold = DEADLINE.mul_f64(0.9);
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
        while held.front().is_some_and(|(at, _)| at.elapsed() >= hold) {
            held.pop_front();
        }
        // 16 at once, then ATTACK_RATE per second: inside a burst of 32 and 8 per second.
        let allowed = 16 + (start.elapsed().as_secs_f64() * ATTACK_RATE) as u64;
        if sent < allowed {
            sent += 1;
            if let Ok(socket) = bound_socket(source)
                && socket
                    .connect_timeout(&target.into(), Duration::from_secs(2))
                    .is_ok()
            {
                opened.fetch_add(1, Ordering::Relaxed);
                held.push_back((Instant::now(), socket.into()));
            }
        } else {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn silent_sources_cannot_starve_a_genuine_client_of_handshake_slots() {
    let test = "silent_sources_cannot_starve_a_genuine_client_of_handshake_slots";
    let Some(python) = pyclient::python(test) else {
        return;
    };
    raise_fd_limit();
    let dc = FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let mask = MaskServer::start(None);
    let (relay, port) = Relay::start_local_on_free_port(|port| config(port, dc.addr, mask.addr));
    let target = SocketAddr::from(([127, 0, 0, 1], port));

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (1..=SOURCES)
        .map(|n| {
            let (stop, opened) = (Arc::clone(&stop), Arc::clone(&opened));
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 2, n));
            thread::spawn(move || attacker(source, target, &stop, &opened))
        })
        .collect();
    // Let the attack fill the slots first.
    thread::sleep(Duration::from_secs(5));

    let echo = Echo {
        local_addr: Some("127.0.3.200".to_owned()),
        op_timeout: Duration::from_secs(10),
        deadline: Duration::from_secs(30),
        ..Echo::local(port, format!("dd{SECRET}"), 2, &[64, 4096])
    };
    let mut failures = Vec::new();
    for run in 0..GENUINE_RUNS {
        let result = echo.telethon(&python, Transport::Randomized);
        if !result.ok() {
            failures.push(format!("run {run}: {}", result.describe()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.join();
    }

    let m = Metrics::parse(&relay.scrape());
    let evicted = m.sum("relay_handshake_failures_total", &[("reason", "evicted")]);
    let report = format!(
        "attack connections opened: {}, evicted handshakes: {evicted}, refused per source: {}, \
         per prefix: {}, in all: {}; genuine failures {}/{GENUINE_RUNS}:\n{}",
        opened.load(Ordering::Relaxed),
        m.sum(
            "relay_connections_refused_total",
            &[("reason", "max_handshakes_per_source")]
        ),
        m.sum(
            "relay_connections_refused_total",
            &[("reason", "max_handshakes_per_prefix")]
        ),
        m.sum(
            "relay_connections_refused_total",
            &[("reason", "max_handshakes")]
        ),
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{report}");
    assert!(
        failures.len() <= 1,
        "the genuine client was starved:\n{report}\nrelay log:\n{}",
        relay.log()
    );
    assert!(evicted > 0.0, "the attack never filled a bound: {report}");
}
