//! A censor's probe suite: every probe goes both to relay-ctl and straight to the site behind
//! it (a real HTTPS server with an idle timeout, [`HttpsMask`]), and the two must look alike:
//! the same answer class (bytes, or none), the same ending (FIN, RST, still open when the
//! observation window closes) and, when both ended, the same time to end within
//! max(0.5 s, 25 % of the site's time).
//!
//! relay-ctl runs with its default configuration except what a test must set: the listen
//! port, `[tls] domain` and `mask`, one user, the DC routed to a local fake DC, XDP off
//! (loopback, no privileges needed) and private state/admin/metrics paths. Each probe to the
//! relay comes from a loopback address of its own, so the default per-source limits and
//! misuse bans see a crowd of probers, as a real scan would look.
//!
//! All probes of a run go out at once (one thread per probe and target), so a run takes one
//! observation window. The table of results is written to stderr whatever happens; a failure
//! lists every probe that differed and how.

use std::{
    collections::BTreeSet,
    io::{self, ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use rand::RngCore as _;
use relay_proto::Secret;
use relay_tests::{
    fake_dc::FakeDc,
    https_mask::HttpsMask,
    mtproto_client::{ClientOptions, MtprotoClient, Transport, fake_tls_hello},
    relay::Relay,
    tls_client,
    util::connect_from_own_source,
};

const DOMAIN: &str = "example.com";
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// A well-formed secret the relay does not know.
const STRANGER: &str = "deadbeefdeadbeefdeadbeefdeadbeef";
/// The site's idle timeout: a connection that has not sent a request by then is closed.
const MASK_IDLE: Duration = Duration::from_secs(3);
/// How long each probe is watched: past the site's idle timeout, so a connection the site
/// would have closed but the relay keeps open is seen as open.
const WINDOW: Duration = Duration::from_secs(5);
/// The pause between dribbled bytes.
const DRIBBLE_INTERVAL: Duration = Duration::from_secs(1);
/// The pause between the chunks of a fast dribble: shorter than relay's grace for a stalled
/// handshake (`[timeouts] mask_grace_ms`), so the client is never quiet that long.
const FAST_DRIBBLE_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes per chunk of a fast dribble.
const FAST_DRIBBLE_CHUNK: usize = 10;
/// Byte counts of the random and zero probes: around the 64-byte obfuscated2 header.
const BYTE_COUNTS: [usize; 7] = [1, 5, 16, 63, 64, 65, 600];

/// Probes expected to tell the relay from the site when `secure` is enabled next to `tls`.
/// Empty: a relay that accepts `dd` cannot decide on fewer than 64 bytes, so it waits its
/// short grace before handing such a prober to the site, but that delay stays below the
/// max(0.5 s, 25 %) rule; everything else is decided, or handed over, as in `tls` mode. A
/// probe that starts to differ here is a regression (or a design change: then list it with
/// the reason).
const EXPECTED_SECURE_DIFFERENCES: [&str; 0] = [];

fn secret() -> Secret {
    Secret::from_hex(SECRET).expect("secret")
}

// ---------------------------------------------------------------------------------------------
// What a probe does and what it sees

/// What a probe sends.
#[derive(Clone, Debug)]
enum Script {
    /// Connects and says nothing.
    Silence,
    /// Sends these bytes at once, then listens (the write side stays open).
    Send(Vec<u8>),
    /// Sends `bytes` `chunk` at a time, one chunk per `interval`, while listening (until the
    /// window closes).
    Dribble {
        bytes: Vec<u8>,
        chunk: usize,
        interval: Duration,
    },
    /// A real TLS client library: handshake with this SNI, then `GET /`.
    Https(String),
}

/// One named probe.
struct Probe {
    name: String,
    script: Script,
}

fn probe(name: impl Into<String>, script: Script) -> Probe {
    Probe {
        name: name.into(),
        script,
    }
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ending {
    /// The peer closed with a FIN.
    Fin,
    /// The peer reset the connection.
    Rst,
    /// Still open when the window closed.
    Open,
    /// Something else went wrong (connect failed, an unexpected error).
    Failed(String),
}

/// What a prober saw.
#[derive(Clone, Debug)]
struct Observation {
    /// Bytes received.
    received: usize,
    ending: Ending,
    /// Time from the connect to the ending (`None`: still open or failed).
    ended_after: Option<Duration>,
}

impl Observation {
    fn describe(&self) -> String {
        let answer = if self.received > 0 {
            format!("{} B", self.received)
        } else {
            "no answer".to_owned()
        };
        match (&self.ending, self.ended_after) {
            (Ending::Open, _) => format!("{answer}, open"),
            (Ending::Failed(e), _) => format!("{answer}, failed: {e}"),
            (ending, Some(t)) => format!("{answer}, {ending:?} at {:.2} s", t.as_secs_f64()),
            (ending, None) => format!("{answer}, {ending:?}"),
        }
    }
}

/// A connection under watch: every read is recorded and bounded by the window.
struct Watch {
    stream: TcpStream,
    started: Instant,
    deadline: Instant,
    received: usize,
    end: Option<(Ending, Duration)>,
}

impl Watch {
    fn new(stream: TcpStream) -> Watch {
        let started = Instant::now();
        Watch {
            stream,
            started,
            deadline: started + WINDOW,
            received: 0,
            end: None,
        }
    }

    /// Reads (and counts) until the connection ends or `until` (at most the window's end).
    fn listen_until(&mut self, until: Instant) {
        let mut buf = [0u8; 16 * 1024];
        while self.end.is_none() && Instant::now() < until.min(self.deadline) {
            let left = until.min(self.deadline) - Instant::now();
            let _ = self.read_for(&mut buf, left);
        }
    }

    fn read_for(&mut self, buf: &mut [u8], limit: Duration) -> io::Result<usize> {
        if self.end.is_some() {
            return Ok(0);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let limit = limit.min(left);
        if limit.is_zero() {
            return Err(io::Error::new(ErrorKind::TimedOut, "window closed"));
        }
        self.stream.set_read_timeout(Some(limit))?;
        match self.stream.read(buf) {
            Ok(0) => {
                self.end = Some((Ending::Fin, self.started.elapsed()));
                Ok(0)
            }
            Ok(n) => {
                self.received += n;
                Ok(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(e),
            Err(e) if e.kind() == ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let ending = if e.kind() == ErrorKind::ConnectionReset {
                    Ending::Rst
                } else {
                    Ending::Failed(e.to_string())
                };
                self.end = Some((ending, self.started.elapsed()));
                Err(e)
            }
        }
    }

    fn observation(&self) -> Observation {
        match &self.end {
            Some((ending, at)) => Observation {
                received: self.received,
                ending: ending.clone(),
                ended_after: Some(*at),
            },
            None => Observation {
                received: self.received,
                ending: Ending::Open,
                ended_after: None,
            },
        }
    }
}

/// Lets a TLS client library run over the watched connection.
impl Read for Watch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_for(buf, WINDOW)
    }
}

impl Write for Watch {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Where a probe goes.
#[derive(Clone, Copy)]
enum Target {
    /// The relay, from a loopback source of the probe's own.
    Relay(SocketAddr),
    /// The site itself.
    Site(SocketAddr),
}

const HTTPS_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: probe\r\n\r\n";

/// Runs `script` against `target` and reports what the prober saw.
fn observe(script: &Script, target: Target) -> Observation {
    let connected = match target {
        Target::Relay(addr) => connect_from_own_source(addr, WINDOW),
        Target::Site(addr) => TcpStream::connect_timeout(&addr, WINDOW),
    };
    let stream = match connected.and_then(|s| s.set_nodelay(true).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            return Observation {
                received: 0,
                ending: Ending::Failed(format!("connect: {e}")),
                ended_after: None,
            };
        }
    };
    let mut watch = Watch::new(stream);
    match script {
        Script::Silence => {}
        Script::Send(bytes) => {
            // A write refused because the peer already went away shows in the reads.
            let _ = watch.stream.write_all(bytes);
        }
        Script::Dribble {
            bytes,
            chunk,
            interval,
        } => {
            for part in bytes.chunks(*chunk) {
                if watch.end.is_some()
                    || Instant::now() >= watch.deadline
                    || watch.stream.write_all(part).is_err()
                {
                    break;
                }
                watch.listen_until(Instant::now() + *interval);
            }
        }
        Script::Https(sni) => {
            // Errors (no close_notify, a reset, the window closing) show in the watch.
            let _ = tls_client::https_request(&mut watch, sni, HTTPS_REQUEST);
        }
    }
    let deadline = watch.deadline;
    watch.listen_until(deadline);
    watch.observation()
}

/// How `relay` differs from `site` (empty: indistinguishable by the suite's rule).
fn differences(relay: &Observation, site: &Observation) -> Vec<String> {
    let mut out = Vec::new();
    if (relay.received > 0) != (site.received > 0) {
        out.push(format!(
            "answer: relay {} B, site {} B",
            relay.received, site.received
        ));
    }
    if relay.ending != site.ending {
        out.push(format!(
            "ending: relay {:?}, site {:?}",
            relay.ending, site.ending
        ));
    } else if let (Some(r), Some(s)) = (relay.ended_after, site.ended_after) {
        let allowed = Duration::from_millis(500).max(s / 4);
        let gap = r.abs_diff(s);
        if gap > allowed {
            out.push(format!(
                "time to end: relay {:.2} s, site {:.2} s (allowed ±{:.2} s)",
                r.as_secs_f64(),
                s.as_secs_f64(),
                allowed.as_secs_f64()
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The probes

/// What a genuine client sent through the relay, for the replay probes.
struct Captures {
    /// A fake-TLS client's whole opening: ClientHello, ChangeCipherSpec, the record with the
    /// obfuscated2 header and its first data.
    tls_opening: Vec<u8>,
    /// A `dd` client's 64-byte header and first data (secure runs only).
    dd_opening: Option<Vec<u8>>,
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The length of the first TLS record in `bytes`.
fn first_record_len(bytes: &[u8]) -> usize {
    5 + usize::from(u16::from_be_bytes([bytes[3], bytes[4]]))
}

fn probes(captures: &Captures) -> Vec<Probe> {
    let mut all = Vec::new();
    for (method, request) in [
        (
            "GET",
            "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_owned(),
        ),
        (
            "HEAD",
            "HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_owned(),
        ),
        (
            "POST",
            "POST /login HTTP/1.1\r\nHost: example.com\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: 13\r\n\r\nuser=a&pass=b"
                .to_owned(),
        ),
        (
            "OPTIONS",
            "OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n".to_owned(),
        ),
        (
            "PUT",
            "PUT /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n".to_owned(),
        ),
        (
            "DELETE",
            "DELETE /x HTTP/1.1\r\nHost: example.com\r\n\r\n".to_owned(),
        ),
        (
            "CONNECT",
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_owned(),
        ),
        ("HTTP/1.0 GET", "GET / HTTP/1.0\r\n\r\n".to_owned()),
    ] {
        all.push(probe(
            format!("plain HTTP {method}"),
            Script::Send(request.into_bytes()),
        ));
    }
    all.push(probe("silence", Script::Silence));
    for n in BYTE_COUNTS {
        all.push(probe(
            format!("{n} random bytes"),
            Script::Send(random_bytes(n)),
        ));
        all.push(probe(format!("{n} zero bytes"), Script::Send(vec![0; n])));
    }
    // More than the site's TLS stack reads before it gives up: it closes with bytes unread,
    // which the kernel turns into a reset.
    all.push(probe(
        "64 KiB random bytes",
        Script::Send(random_bytes(64 << 10)),
    ));
    all.push(probe(
        "lone TLS record header",
        Script::Send(vec![0x16, 0x03, 0x01, 0x02, 0x00]),
    ));
    let real_hello = tls_client::client_hello(DOMAIN);
    all.push(probe(
        "truncated ClientHello",
        Script::Send(real_hello[..real_hello.len() / 2].to_vec()),
    ));
    let stranger = Secret::from_hex(STRANGER).expect("secret");
    all.push(probe(
        "fake-TLS ClientHello, bad MAC",
        Script::Send(fake_tls_hello(&stranger, DOMAIN)),
    ));
    all.push(probe(
        "TLS client, another SNI",
        Script::Https("other.example.net".to_owned()),
    ));
    all.push(probe(
        "TLS client, proxy's SNI, no secret",
        Script::Https(DOMAIN.to_owned()),
    ));
    let opening = &captures.tls_opening;
    all.push(probe(
        "replayed genuine ClientHello",
        Script::Send(opening[..first_record_len(opening)].to_vec()),
    ));
    all.push(probe(
        "replayed genuine fake-TLS opening",
        Script::Send(opening.clone()),
    ));
    if let Some(dd) = &captures.dd_opening {
        all.push(probe("replayed dd header", Script::Send(dd.clone())));
    }
    all.push(probe(
        "ClientHello dribbled 1 B/s",
        Script::Dribble {
            bytes: real_hello.clone(),
            chunk: 1,
            interval: DRIBBLE_INTERVAL,
        },
    ));
    // Never quiet for relay's grace, each byte still a possible hello: the site's timer runs
    // from the first byte, and relay's mask connection must start from there too.
    all.push(probe(
        "ClientHello dribbled 10 B/100 ms",
        Script::Dribble {
            bytes: real_hello.clone(),
            chunk: FAST_DRIBBLE_CHUNK,
            interval: FAST_DRIBBLE_INTERVAL,
        },
    ));
    all.push(probe(
        "HTTP GET dribbled 1 B/s",
        Script::Dribble {
            bytes: b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(),
            chunk: 1,
            interval: DRIBBLE_INTERVAL,
        },
    ));
    all
}

// ---------------------------------------------------------------------------------------------
// A run

/// relay-ctl's default configuration plus what the suite must set; `modes` only if given.
fn config(port: u16, modes: Option<&str>, mask: SocketAddr, dc: SocketAddr) -> String {
    let modes = modes.map(|m| format!("modes = {m}\n")).unwrap_or_default();
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
{modes}
[xdp]
mode = "off"

[[users]]
name = "alice"
secret = "{SECRET}"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"
# The default (the test harness turns it off unless a config names it): fake-TLS flights copy
# the mask's own, as an operator's relay does.
learn_flight = true

[upstream.dc]
"2" = ["{dc}"]
"#
    )
}

/// One genuine client through the relay (from a source of its own); returns its opening.
fn genuine_opening(relay: SocketAddr, transport: Transport) -> Vec<u8> {
    let stream = connect_from_own_source(relay, Duration::from_secs(10)).expect("connect");
    let options = ClientOptions::new(secret(), transport.clone());
    let first = b"a genuine client's first request";
    let mut client = MtprotoClient::handshake(stream, &options, first)
        .unwrap_or_else(|e| panic!("genuine {transport:?} client: {e}"));
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut echo = vec![0u8; first.len()];
    client
        .recv_exact(&mut echo)
        .unwrap_or_else(|e| panic!("genuine {transport:?} client: {e}"));
    assert_eq!(&echo, first, "genuine {transport:?} client: echo differs");
    client.shutdown_write().expect("half-close");
    client.recv_to_end().expect("clean end");
    client.handshake_bytes().to_vec()
}

/// One probe's results.
struct Row {
    name: String,
    site: Observation,
    relay: Observation,
    differences: Vec<String>,
}

/// Starts a site, a fake DC and relay-ctl (with `modes` if given), sends one genuine client
/// of each enabled kind, then every probe to relay and site at once; returns the rows.
fn run_suite(label: &str, modes: Option<&str>) -> Vec<Row> {
    let site = HttpsMask::start(DOMAIN, MASK_IDLE);
    let dc = FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (relay, port) =
        Relay::start_local_on_free_port(|port| config(port, modes, site.addr, dc.addr));
    let relay_addr = SocketAddr::from(([127, 0, 0, 1], port));

    let before = site.wait_quiet(Duration::from_secs(1), Duration::from_secs(10));
    let secure = modes.is_some_and(|m| m.contains("secure"));
    let captures = Captures {
        tls_opening: genuine_opening(
            relay_addr,
            Transport::FakeTls {
                domain: DOMAIN.to_owned(),
            },
        ),
        dd_opening: secure.then(|| genuine_opening(relay_addr, Transport::Secure)),
    };
    let genuine = dc.sessions().len();
    assert_eq!(
        site.accepted() - before,
        0,
        "{label}: genuine clients opened connections to the site"
    );

    let probes = probes(&captures);
    let workers: Vec<_> = probes
        .iter()
        .map(|p| {
            let (a, b) = (p.script.clone(), p.script.clone());
            let site_addr = site.addr;
            (
                thread::spawn(move || observe(&a, Target::Relay(relay_addr))),
                thread::spawn(move || observe(&b, Target::Site(site_addr))),
            )
        })
        .collect();
    let rows: Vec<Row> = probes
        .into_iter()
        .zip(workers)
        .map(|(p, (r, s))| {
            let relay = r.join().expect("relay probe thread");
            let site = s.join().expect("site probe thread");
            Row {
                differences: differences(&relay, &site),
                name: p.name,
                site,
                relay,
            }
        })
        .collect();

    print_table(label, &rows);
    // Let connections the relay still holds finish before looking at the DC.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(
        dc.sessions().len(),
        genuine,
        "{label}: a probe reached the DC: {:?}\nrelay log:\n{}",
        dc.sessions(),
        relay.log()
    );
    drop(relay.stop());
    rows
}

/// Writes the table straight to stderr (past the test harness's capture).
fn print_table(label: &str, rows: &[Row]) {
    let mut out = format!(
        "\n== probe suite: {label} ==\n{:<36} | {:<28} | {:<28} | verdict\n",
        "probe", "site (direct)", "relay"
    );
    for row in rows {
        let verdict = if row.differences.is_empty() {
            "same".to_owned()
        } else {
            format!("DIFFERS: {}", row.differences.join("; "))
        };
        out.push_str(&format!(
            "{:<36} | {:<28} | {:<28} | {verdict}\n",
            row.name,
            row.site.describe(),
            row.relay.describe()
        ));
    }
    // Timing tells the rule lets pass, for the record: a finer-grained censor could use them.
    let slower: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let (relay, site) = (r.relay.ended_after?, r.site.ended_after?);
            (relay > site + Duration::from_millis(100)).then(|| {
                format!(
                    "{} (+{:.2} s)",
                    r.name,
                    relay.saturating_sub(site).as_secs_f64()
                )
            })
        })
        .collect();
    out.push_str(&format!(
        "ended over 0.1 s later through the relay (within the rule): {}\n",
        if slower.is_empty() {
            "none".to_owned()
        } else {
            slower.join(", ")
        }
    ));
    let _ = io::stderr().write_all(out.as_bytes());
}

fn differing(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter(|r| !r.differences.is_empty())
        .map(|r| format!("{}: {}", r.name, r.differences.join("; ")))
        .collect()
}

#[test]
fn probes_cannot_tell_the_default_relay_from_its_mask() {
    let rows = run_suite("default configuration", None);
    let differing = differing(&rows);
    assert!(
        differing.is_empty(),
        "{} of {} probes tell the relay from its mask:\n{}",
        differing.len(),
        rows.len(),
        differing.join("\n")
    );
}

#[test]
fn probes_with_secure_enabled_differ_only_as_expected() {
    let rows = run_suite(r#"modes = ["secure", "tls"]"#, Some(r#"["secure", "tls"]"#));
    let found: BTreeSet<&str> = rows
        .iter()
        .filter(|r| !r.differences.is_empty())
        .map(|r| r.name.as_str())
        .collect();
    let expected: BTreeSet<&str> = EXPECTED_SECURE_DIFFERENCES.into_iter().collect();
    let mut list =
        format!("probes that tell the relay from its mask with secure enabled: {found:?}\n");
    for row in rows.iter().filter(|r| !r.differences.is_empty()) {
        list.push_str(&format!("  {}: {}\n", row.name, row.differences.join("; ")));
    }
    let _ = io::stderr().write_all(list.as_bytes());
    assert_eq!(
        found,
        expected,
        "with secure enabled, the distinguishable probes are not the expected ones:\n{}",
        differing(&rows).join("\n")
    );
}
