//! relay behind a load balancer (PROXY protocol in) and in front of a local web server (PROXY
//! protocol out to the mask), on loopback: the test plays the balancer, writing the header
//! itself before a real client handshake on the same socket.
//!
//! Every test runs its own relay, fake DC and mask server on their own ports; every wait is
//! bounded. No privileges: XDP is off, so every decision is the userspace gate's, which is
//! also where clients behind a balancer are decided when XDP is on.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use relay_proto::{
    Secret,
    proxy_header::{self, Version},
};
use relay_tests::{
    fake_dc::FakeDc,
    mask::MaskServer,
    mtproto_client::{ClientOptions, MtprotoClient, Transport},
    relay::{Relay, relay_ctl_bin},
    util::wait_until,
};

const SECRET: &str = "33333333333333333333333333333333";
const WRONG: &str = "44444444444444444444444444444444";
const BLOCKED: &str = "198.51.100.66";

struct Harness {
    relay: Relay,
    port: u16,
    dc: FakeDc,
    mask: MaskServer,
    _state: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        Harness::start_with("")
    }

    /// With `alice` (the one user) given `user_extra` lines. Logs show whole addresses.
    fn start_with(user_extra: &str) -> Harness {
        let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
        let mask = MaskServer::start(None);
        let state = tempfile::tempdir().expect("state dir");
        let text = |port: u16| {
            format!(
                r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["secure"]
proxy_protocol = "any"
trusted = ["127.0.0.1"]
proxy_protocol_timeout_ms = 1000

[xdp]
mode = "off"

[tls]
mask = "{mask}"
mask_proxy_protocol = "v2"

[upstream.dc]
"2" = ["{dc}"]

[blocklist]
cidrs = ["{BLOCKED}"]

[misuse]
bad_secret = 3

[state]
dir = "{state}"

[log]
client_ips = "full"

[[users]]
name = "alice"
secret = "{SECRET}"
{user_extra}
"#,
                mask = mask.addr,
                dc = dc.addr,
                state = state.path().display(),
            )
        };
        let (relay, port) = Relay::start_local_on_free_port(text);
        Harness {
            relay,
            port,
            dc,
            mask,
            _state: state,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A connection from the "balancer" that has sent `header`.
    fn balanced(&self, header: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(self.addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(header).expect("header");
        s
    }

    /// A dd client named `client` by the balancer's header: handshake and one echo.
    fn client_through(&self, version: Version, client: &str, secret: &str) -> std::io::Result<()> {
        let header = proxy_header::encode(version, client.parse().expect("addr"), self.addr());
        let stream = self.balanced(&header);
        let secret: Secret = secret.parse().expect("secret");
        let mut c =
            MtprotoClient::handshake(stream, &ClientOptions::new(secret, Transport::Secure), &[])?;
        let frame = [&16u32.to_le_bytes()[..], &[7u8; 16]].concat();
        c.send(&frame)?;
        let mut back = vec![0u8; frame.len()];
        c.recv_exact(&mut back)?;
        if back != frame {
            return Err(std::io::Error::other("echo differs"));
        }
        Ok(())
    }

    fn metric(&self, outcome: &str, n: u64) -> bool {
        self.relay.scrape().contains(&format!(
            "relay_proxy_headers_total{{outcome=\"{outcome}\"}} {n}"
        ))
    }

    /// `relay-ctl users show alice --json`: alice's object.
    fn alice(&self) -> serde_json::Value {
        let config = self.relay.config_path.to_str().expect("utf-8");
        let out = Command::new(relay_ctl_bin())
            .args(["users", "show", "alice", "--json", "--config", config])
            .output()
            .expect("relay-ctl users show");
        assert!(out.status.success(), "users show: {out:?}");
        let mut reply: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("users show JSON");
        reply["users"][0].take()
    }

    fn bans(&self) -> String {
        let config = self.relay.config_path.to_str().expect("utf-8");
        let out = Command::new(relay_ctl_bin())
            .args(["bans", "list", "--config", config])
            .output()
            .expect("relay-ctl bans list");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Whether the relay ended `stream` (reset or FIN) within the stream's read timeout.
fn ended(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn clients_named_by_v1_and_v2_headers_are_relayed() {
    let h = Harness::start();
    h.client_through(Version::V1, "203.0.113.5:40000", SECRET)
        .expect("v1, IPv4 client");
    h.client_through(Version::V2, "[2001:db8::5]:40000", SECRET)
        .expect("v2, IPv6 client");
    h.client_through(Version::V2, "203.0.113.6:40001", SECRET)
        .expect("v2, IPv4 client");
    assert_eq!(h.dc.sessions().len(), 3);
    let counted = wait_until(Duration::from_secs(10), || h.metric("ok", 3).then_some(()));
    assert!(counted.is_some(), "{}", h.relay.scrape());
    h.relay.stop();
}

#[test]
fn a_blocked_client_behind_the_balancer_is_refused() {
    let h = Harness::start();
    let err = h
        .client_through(Version::V2, &format!("{BLOCKED}:40000"), SECRET)
        .expect_err("a blocked source");
    eprintln!("blocked client: {err}");
    // The balancer itself is not blocked: the next client gets through.
    h.client_through(Version::V2, "203.0.113.7:40000", SECRET)
        .expect("an unblocked client");
    h.relay.stop();
}

#[test]
fn untrusted_peers_and_bad_headers_are_closed_and_counted() {
    let h = Harness::start();
    // Not a trusted balancer: 127.0.0.2 is loopback too, but not in `trusted`.
    let untrusted =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    untrusted
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .expect("bind 127.0.0.2");
    untrusted.connect(&h.addr().into()).expect("connect");
    let mut untrusted: TcpStream = untrusted.into();
    untrusted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let header = proxy_header::encode(Version::V1, "203.0.113.8:1".parse().expect("a"), h.addr());
    let _ = untrusted.write_all(&header);
    assert!(ended(&mut untrusted), "an untrusted peer must be closed");

    let mut missing = h.balanced(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(ended(&mut missing), "no header: closed");
    let mut malformed = h.balanced(b"PROXY TCP4 203.0.113.9 nonsense\r\n");
    assert!(ended(&mut malformed), "malformed header: closed");

    // Silence: closed at the header deadline (1 s), not left open.
    let start = Instant::now();
    let mut silent = h.balanced(b"");
    assert!(ended(&mut silent), "silent balancer connection: closed");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
        "closed after {waited:?} (deadline 1 s)"
    );
    let counted = wait_until(Duration::from_secs(10), || {
        (h.metric("untrusted", 1)
            && h.metric("missing", 1)
            && h.metric("malformed", 1)
            && h.metric("timeout", 1))
        .then_some(())
    });
    assert!(counted.is_some(), "{}", h.relay.scrape());
    h.relay.stop();
}

#[test]
fn bad_secrets_ban_the_named_client_and_the_mask_learns_who_it_is() {
    let h = Harness::start();
    let prober = "203.0.113.9";
    // A prober sends a header under a secret relay does not know, and leaves.
    for _ in 0..3 {
        let header = proxy_header::encode(
            Version::V2,
            format!("{prober}:40000").parse().expect("addr"),
            h.addr(),
        );
        let secret: Secret = WRONG.parse().expect("secret");
        let probe = MtprotoClient::handshake(
            h.balanced(&header),
            &ClientOptions::new(secret, Transport::Secure),
            &[],
        );
        drop(probe);
    }
    let banned = wait_until(Duration::from_secs(10), || {
        let bans = h.bans();
        bans.contains(prober).then_some(bans)
    });
    let bans = banned.unwrap_or_else(|| {
        panic!(
            "{prober} not banned:\n{}\n{}",
            h.bans(),
            h.relay
                .log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(
        !bans.contains("127.0.0.1"),
        "the balancer was banned:\n{bans}"
    );
    // Another client through the same balancer is unaffected.
    h.client_through(Version::V1, "203.0.113.10:40000", SECRET)
        .expect("a genuine client after the ban");

    // The mask got every fronted prober connection with a v2 header naming the prober.
    let conns = h.mask.wait(Duration::from_secs(10), |c| c.len() >= 3);
    let named = conns
        .iter()
        .filter_map(
            |c| match proxy_header::parse(&c.received, proxy_header::Accept::V2) {
                Ok(proxy_header::Parsed::Done { header, .. }) => header.addrs,
                _ => None,
            },
        )
        .filter(|(client, _)| client.ip().to_string() == prober)
        .count();
    assert!(
        named >= 3,
        "mask connections naming the prober: {named} of {}",
        conns.len()
    );
    h.relay.stop();
}

#[test]
fn per_user_addresses_limits_metrics_and_logs_see_the_real_client() {
    // Two addresses allowed: every client arrives from the balancer's 127.0.0.1, so only the
    // addresses the headers name can tell them apart.
    let h = Harness::start_with("max_unique_ips = 2");
    h.client_through(Version::V1, "203.0.113.21:40000", SECRET)
        .expect("v1, IPv4 client");
    h.client_through(Version::V2, "[2001:db8::21]:40000", SECRET)
        .expect("v2, IPv6 client");
    let alice = h.alice();
    assert_eq!(alice["unique_ips"], 2, "{alice}");

    // A third address is over alice's limit, though the balancer's own address is not new.
    let err = h
        .client_through(Version::V2, "203.0.113.22:40000", SECRET)
        .expect_err("a third address");
    eprintln!("third address: {err}");
    // A known address still gets in.
    h.client_through(Version::V2, "203.0.113.21:40001", SECRET)
        .expect("a known address");
    let alice = h.alice();
    assert_eq!(alice["unique_ips"], 2, "{alice}");
    assert_eq!(alice["rejections"]["max_unique_ips"], 1, "{alice}");
    let counted = wait_until(Duration::from_secs(10), || {
        h.relay
            .scrape()
            .contains("relay_user_rejections_total{user=\"alice\",reason=\"max_unique_ips\"} 1")
            .then_some(())
    });
    assert!(counted.is_some(), "{}", h.relay.scrape());
    let log = h.relay.log();
    assert!(
        log.lines()
            .any(|l| l.contains("connection refused by user limit") && l.contains("203.0.113.22")),
        "the refusal names the real client:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("connection refused by user limit") && l.contains("127.0.0.1")),
        "a refusal names the balancer:\n{log}"
    );
    h.relay.stop();
}
