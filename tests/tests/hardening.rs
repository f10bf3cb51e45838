//! Hardening against a real daemon on loopback (`[xdp] mode = "off"`, no privileges needed):
//!
//! 1. Concurrency bounds (`max_connections`, `max_connections_per_source`, `max_handshakes`)
//!    refuse new connections with a reset, are counted, and free up as connections end.
//! 2. SIGTERM stops accepting at once, lets open connections finish within `drain_secs`, and
//!    closes the rest when the time is over.
//! 3. Faults on the DC side (refused, connect timeout, reset mid-stream, stalled) and clients
//!    resetting mid-relay end only the affected connection; nothing stays open.
//! 4. 10,000 connections of churn (relayed, bad, reset, abandoned) leave the open file
//!    descriptors where they were and the RSS within a small bound (measured, printed).
//!
//! Every test runs its own relay on its own port; every wait and loop is bounded.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use rand::RngCore as _;
use relay_proto::Secret;
use relay_tests::{
    fake_dc::FakeDc,
    metrics::Metrics,
    mtproto_client::{ClientOptions, MtprotoClient, Transport},
    probe::{Outcome, connect_from},
    relay::Relay,
    util::{RefusingPort, open_fds, rss_kib, wait_until},
};
use socket2::{Domain, Socket, Type};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

fn secret() -> Secret {
    SECRET.parse().expect("secret")
}

fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// DC ids the relay knows, for the fault tests.
struct Dcs {
    /// Echoes (the fake DC).
    good: SocketAddr,
    /// Nobody listens: connections are refused.
    refused: SocketAddr,
    /// Listens with a full accept queue: SYNs are dropped, connects time out.
    blackhole: SocketAddr,
    /// Reads the header, then resets.
    reset: SocketAddr,
    /// Accepts and never reads or writes.
    stall: SocketAddr,
}

impl Dcs {
    /// Every id pointing at the one good DC (for tests that need no faults).
    fn all(good: SocketAddr) -> Dcs {
        Dcs {
            good,
            refused: good,
            blackhole: good,
            reset: good,
            stall: good,
        }
    }
}

fn config(port: u16, dcs: &Dcs, server: &str, limits: &str, idle_secs: u64) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["secure"]
{server}

[xdp]
mode = "off"

[limits]
syn_limit = false
{limits}

[[users]]
name = "alice"
secret = "{SECRET}"

[tls]
domain = "example.com"
fronting = false

[upstream]
default_dc = 2
connect_timeout_secs = 1

[upstream.dc]
"2" = ["{good}"]
"3" = ["{refused}"]
"4" = ["{blackhole}"]
"5" = ["{reset}"]
"6" = ["{stall}"]

[timeouts]
handshake_secs = 2
idle_secs = {idle_secs}

[misuse]
bad_secret = 1000000
garbage = 1000000
timeout = 1000000
connections = 1000000
prefix_bad_secret = 0
prefix_garbage = 0
prefix_timeout = 0
"#,
        good = dcs.good,
        refused = dcs.refused,
        blackhole = dcs.blackhole,
        reset = dcs.reset,
        stall = dcs.stall,
    )
}

/// Starts relay-ctl on a free loopback port with the config `text(port)`.
fn start(text: impl Fn(u16) -> String) -> (Relay, SocketAddr) {
    let (relay, port) = Relay::start_local_on_free_port(text);
    (relay, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn fake_dc() -> FakeDc {
    FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Connects from `from` and completes a `dd` handshake toward DC `dc`.
fn session(from: IpAddr, relay: SocketAddr, dc: i16) -> std::io::Result<MtprotoClient> {
    let socket = relay_tests::util::bound_socket(from)?;
    socket.connect_timeout(&relay.into(), WAIT)?;
    let mut options = ClientOptions::new(secret(), Transport::Secure);
    options.dc = dc;
    let client = MtprotoClient::handshake(socket.into(), &options, &[])?;
    client.set_read_timeout(Some(WAIT))?;
    Ok(client)
}

/// Sends `n` random bytes and checks they come back.
fn echo(client: &mut MtprotoClient, n: usize) {
    let mut payload = vec![0u8; n];
    rand::rng().fill_bytes(&mut payload);
    client.send(&payload).expect("send");
    let mut back = vec![0u8; n];
    client.recv_exact(&mut back).expect("echo");
    assert!(back == payload, "echo differs");
}

/// A relayed session from `from` that has echoed once.
fn relayed(from: IpAddr, relay: SocketAddr) -> MtprotoClient {
    let mut client = session(from, relay, 2).unwrap_or_else(|e| panic!("session from {from}: {e}"));
    echo(&mut client, 1000);
    client
}

/// A relayed session from `from` if the relay takes it (a refused connection completes the
/// client's side of a `dd` handshake, then the reset shows on the first echo).
fn try_relayed(from: IpAddr, relay: SocketAddr) -> Option<MtprotoClient> {
    let mut client = session(from, relay, 2).ok()?;
    client.send(&[1u8; 100]).ok()?;
    client.recv_exact(&mut [0u8; 100]).ok()?;
    Some(client)
}

/// Whether a connection from `from` is reset at once (a bound refused it).
fn refused(from: IpAddr, relay: SocketAddr) -> bool {
    match connect_from(
        from,
        relay,
        Duration::from_secs(1),
        Duration::from_millis(500),
    ) {
        Outcome::Refused(_) => true,
        Outcome::Held(_) => false,
        Outcome::NoAnswer => panic!("no answer from the relay on loopback"),
    }
}

fn metrics(relay: &Relay) -> Metrics {
    Metrics::parse(&relay.scrape())
}

/// Waits (bounded) until the relay has no client connection open.
fn wait_idle(relay: &Relay, what: &str) {
    let idle = wait_until(WAIT, || {
        let m = metrics(relay);
        (m.sum("relay_connections_active", &[]) == 0.0
            && m.sum("relay_handshakes_active", &[]) == 0.0)
            .then_some(())
    });
    assert!(
        idle.is_some(),
        "{what}: connections still open:\n{}",
        relay.scrape()
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency bounds

#[test]
fn concurrency_bounds_refuse_with_a_reset_and_recover() {
    let dc = fake_dc();
    let (relay, addr) = start(|port| {
        config(
            port,
            &Dcs::all(dc.addr),
            "",
            "max_connections = 4\nmax_connections_per_source = 3\nmax_handshakes = 2",
            60,
        )
    });

    // Per source: a fourth connection from one address is refused, another address gets in.
    let mut from_one: Vec<MtprotoClient> = (0..3).map(|_| relayed(source(1), addr)).collect();
    assert!(
        refused(source(1), addr),
        "fourth connection from one source"
    );
    let from_two = relayed(source(2), addr);
    // In all: four open, so a fifth source is refused too.
    assert!(refused(source(3), addr), "fifth connection in all");
    // Closing one frees a slot (the relay notices the close within moments).
    drop(from_one.pop());
    let third = wait_until(WAIT, || try_relayed(source(3), addr))
        .expect("a slot frees when a connection ends");
    drop(third);
    drop(from_one);
    drop(from_two);
    wait_idle(&relay, "after closing every session");

    // Handshakes: two connections that have sent part of a header hold both handshake slots
    // until the handshake timeout, and a third is refused.
    let partial: Vec<TcpStream> = (0..2)
        .map(
            |_| match connect_from(source(4), addr, WAIT, Duration::from_millis(200)) {
                Outcome::Held(mut s) => {
                    // A possible obfuscated2 header start: no forbidden prefix.
                    s.write_all(&[1u8; 10]).expect("part of a header");
                    s
                }
                other => panic!("partial handshake: {other:?}"),
            },
        )
        .collect();
    thread::sleep(Duration::from_millis(200));
    assert!(refused(source(5), addr), "third connection in handshake");
    // After handshake_secs (2 s) they are closed, and a real client gets in again.
    let mut later = wait_until(WAIT, || try_relayed(source(5), addr))
        .expect("handshake slots free after the handshake timeout");
    echo(&mut later, 100);
    drop(partial);
    drop(later);
    wait_idle(&relay, "after the partial handshakes");

    // Silent connections do not hold slots against a newcomer: the oldest is evicted (closed,
    // fronting being off) and the newcomer relayed.
    let mut silent: Vec<TcpStream> = (0..2)
        .map(
            |_| match connect_from(source(4), addr, WAIT, Duration::from_millis(200)) {
                Outcome::Held(s) => s,
                other => panic!("silent connection: {other:?}"),
            },
        )
        .collect();
    let mut newcomer = relayed(source(5), addr);
    echo(&mut newcomer, 100);
    silent[0]
        .set_read_timeout(Some(WAIT))
        .expect("read timeout");
    let mut buf = [0u8; 1];
    assert!(
        matches!(silent[0].read(&mut buf), Ok(0) | Err(_)),
        "the oldest silent handshake was closed to make room"
    );
    drop(silent);
    drop(newcomer);

    let m = metrics(&relay);
    for bound in [
        "max_connections",
        "max_connections_per_source",
        "max_handshakes",
    ] {
        let n = m.sum("relay_connections_refused_total", &[("reason", bound)]);
        assert!(n >= 1.0, "{bound} refusals counted: {n}");
    }
    let evicted = wait_until(WAIT, || {
        let n = metrics(&relay).sum("relay_handshake_failures_total", &[("reason", "evicted")]);
        (n >= 1.0).then_some(n)
    });
    assert!(evicted.is_some(), "no eviction counted");
    assert!(
        relay.log().contains("concurrency bound reached"),
        "{}",
        relay.log()
    );
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

#[test]
fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let dc = fake_dc();
    let (mut relay, addr) =
        start(|port| config(port, &Dcs::all(dc.addr), "drain_secs = 30", "", 60));
    let mut client = relayed(source(1), addr);
    relay.signal(Signal::SIGTERM);
    relay.wait_for("draining connections", WAIT);
    // The listener is closed: the kernel refuses new connections.
    match TcpStream::connect_timeout(&addr, WAIT) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("new connection during the drain: {other:?}"),
    }
    // The open connection keeps working until it ends by itself.
    echo(&mut client, 50_000);
    client.shutdown_write().expect("half-close");
    assert!(client.recv_to_end().expect("clean end").is_empty());
    relay.wait_for("all connections finished", WAIT);
    let log = relay.wait_exit(WAIT);
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn drain_time_over_closes_what_is_left() {
    let dc = fake_dc();
    let (mut relay, addr) =
        start(|port| config(port, &Dcs::all(dc.addr), "drain_secs = 1", "", 60));
    let mut client = relayed(source(1), addr);
    relay.signal(Signal::SIGTERM);
    relay.wait_for("drain time over", WAIT);
    let log = relay.wait_exit(WAIT);
    assert!(log.contains("stopped"), "{log}");
    // The process is gone, and with it the connection.
    let mut buf = [0u8; 16];
    match client.recv(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes after the relay exited"),
    }
}

// ---------------------------------------------------------------------------------------------
// Faults

/// A listener whose accept queue is full: the kernel drops further SYNs, so connecting to it
/// times out. Keeps the queue-filling connection alive as long as it lives.
struct Blackhole {
    addr: SocketAddr,
    _listener: Socket,
    _filler: TcpStream,
}

impl Blackhole {
    fn start() -> Blackhole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet");
        let filler = TcpStream::connect(addr).expect("fill the accept queue");
        Blackhole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }
}

/// A DC that reads the relay's 64-byte header and then resets the connection.
fn resetting_dc() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut header = [0u8; 64];
            let _ = stream.set_read_timeout(Some(WAIT));
            let _ = stream.read_exact(&mut header);
            let _ = Socket::from(stream).set_linger(Some(Duration::ZERO));
        }
    });
    addr
}

/// A DC that accepts and then neither reads nor writes, holding each connection.
fn stalled_dc() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    addr
}

/// Sends a frame toward DC `dc` and expects the relay to end the connection within `limit`.
fn ended_by_relay(relay: SocketAddr, dc: i16, limit: Duration) {
    let mut client = session(source(1), relay, dc).unwrap_or_else(|e| panic!("DC {dc}: {e}"));
    client.set_read_timeout(Some(limit)).expect("timeout");
    let started = Instant::now();
    let _ = client.send(&[0u8; 100]);
    let mut buf = [0u8; 256];
    match client.recv(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            panic!("DC {dc}: connection still open after {limit:?}")
        }
        Err(_) => {}
        Ok(n) => panic!("DC {dc}: {n} unexpected bytes"),
    }
    eprintln!("DC {dc}: connection ended after {:?}", started.elapsed());
}

#[test]
fn dc_faults_and_client_resets_end_only_their_connection() {
    let good = fake_dc();
    let blackhole = Blackhole::start();
    let refused = RefusingPort::new();
    let dcs = Dcs {
        good: good.addr,
        refused: refused.addr,
        blackhole: blackhole.addr,
        reset: resetting_dc(),
        stall: stalled_dc(),
    };
    let (relay, addr) = start(|port| config(port, &dcs, "", "", 2));
    // A session that must survive everything below, kept busy so its own idle timeout (2 s,
    // short for the stalled DC) never fires.
    let stop = Arc::new(AtomicU64::new(0));
    let bystander = {
        let stop = stop.clone();
        let mut client = relayed(source(2), addr);
        thread::spawn(move || {
            let mut echoes = 0u64;
            while stop.load(Ordering::Relaxed) == 0 {
                echo(&mut client, 1000);
                echoes += 1;
                thread::sleep(Duration::from_millis(200));
            }
            (client, echoes)
        })
    };

    ended_by_relay(addr, 3, WAIT); // refused
    ended_by_relay(addr, 4, WAIT); // connect timeout (1 s)
    ended_by_relay(addr, 5, WAIT); // reset after the header
    ended_by_relay(addr, 6, WAIT); // stalled: the idle timeout (2 s) ends it

    // Clients resetting mid-relay, with data in flight both ways.
    for _ in 0..5 {
        let mut client = relayed(source(3), addr);
        client.send(&[7u8; 64 * 1024]).expect("send");
        let socket = Socket::from(client.stream().try_clone().expect("clone"));
        socket.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(socket);
        drop(client);
    }
    stop.store(1, Ordering::Relaxed);
    let (mut bystander, echoes) = bystander.join().expect("the bystander kept echoing");
    assert!(echoes >= 5, "{echoes} echoes");
    echo(&mut bystander, 10_000);
    bystander.shutdown_write().expect("half-close");
    assert!(bystander.recv_to_end().expect("clean end").is_empty());
    wait_idle(&relay, "after the faults");
    let log = relay.stop();
    assert_eq!(
        log.matches("DC connection failed").count(),
        2,
        "refused and timed-out DCs logged once each:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Churn

/// One connection of the churn mix, chosen by `i`.
fn churn_one(i: u64, addr: SocketAddr) {
    match i % 10 {
        // A relayed session with one echo, closed cleanly.
        0..=5 => {
            let mut client = relayed(source(1), addr);
            client.shutdown_write().expect("half-close");
            let _ = client.recv_to_end();
        }
        // A bad handshake: 64 random bytes no secret decrypts (closed: fronting is off).
        6 | 7 => {
            let mut stream = TcpStream::connect(addr).expect("connect");
            let mut junk = [0u8; 64];
            rand::rng().fill_bytes(&mut junk);
            let _ = stream.write_all(&junk);
            stream.set_read_timeout(Some(WAIT)).expect("timeout");
            let _ = stream.read(&mut [0u8; 16]);
        }
        // Connect and leave at once.
        8 => drop(TcpStream::connect(addr).expect("connect")),
        // Reset mid-relay.
        _ => {
            let client = relayed(source(1), addr);
            let socket = Socket::from(client.stream().try_clone().expect("clone"));
            socket.set_linger(Some(Duration::ZERO)).expect("linger");
        }
    }
}

/// Runs connections `from..to` of the mix on 8 threads.
fn churn(addr: SocketAddr, from: u64, to: u64) {
    let next = Arc::new(AtomicU64::new(from));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let next = next.clone();
            thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return;
                    }
                    churn_one(i, addr);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("churn worker");
    }
}

#[test]
fn ten_thousand_connections_of_churn_leave_no_growth() {
    let dc = fake_dc();
    let (relay, addr) = start(|port| config(port, &Dcs::all(dc.addr), "", "", 60));
    let pid = relay.pid();
    let settle = |what: &str| {
        wait_idle(&relay, what);
        thread::sleep(Duration::from_millis(300));
        (open_fds(pid), rss_kib(pid))
    };
    // Warm up: allocator arenas, runtime threads, caches reach their working size.
    churn(addr, 0, 1_000);
    let (fds_warm, rss_warm) = settle("after 1,000 connections");
    let started = Instant::now();
    churn(addr, 1_000, 10_000);
    let took = started.elapsed();
    let (fds_after, rss_after) = settle("after 10,000 connections");
    eprintln!(
        "churn: 9,000 connections in {took:?}; fds {fds_warm} -> {fds_after}; RSS {rss_warm} KiB -> {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_warm + 1,
        "open fds grew: {fds_warm} -> {fds_after}"
    );
    // 9,000 connections leaking even 1 KiB each would add 9 MiB.
    assert!(
        rss_after <= rss_warm + 6 * 1024,
        "RSS grew: {rss_warm} KiB -> {rss_after} KiB"
    );
    let m = metrics(&relay);
    assert_eq!(
        m.sum("relay_connections_accepted_total", &[]),
        10_000.0,
        "every connection counted once"
    );
    relay.stop();
}
