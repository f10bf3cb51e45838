//! Observability and privacy end to end: after real traffic, `/metrics` (scraped over HTTP)
//! and `relay-ctl stats` show the expected figures; the relay's log, at its most verbose,
//! holds no secret and, with the default `[log] client_ips`, no full client address outside
//! ban lines.
//!
//! The loopback tests send clients from 127.0.5.0/24 and probes from 127.0.6.0/24, so a full
//! address (`127.0.5.9`) and its truncated form (`127.0.5.0/24`) are told apart, and neither
//! is the relay's own 127.0.0.1. The XDP test does the same with the namespace addresses.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use relay_common::Verdict;
use relay_ctl::config::{Config, Origin};
use relay_proto::Secret;
use relay_tests::util::wait_until;
use relay_tests::{
    fake_dc::FakeDc,
    kernel,
    mask::MaskServer,
    metrics::Metrics,
    mtproto_client::{ClientOptions, MtprotoClient, Transport, fake_tls_hello},
    netns::{NetPair, SERVER_V4, client_v4},
    probe::{Outcome, connect_from},
    pyclient::{self, Echo, Transport as PyTransport},
    relay::{Relay, relay_ctl_bin},
};

const DOMAIN: &str = "example.com";
/// DC ids routed to the fake DC.
const DC_IDS: [i16; 4] = [2, -2, 4, 10_002];
/// Where the real clients and the Rust clients connect from.
const CLIENT_A: Ipv4Addr = Ipv4Addr::new(127, 0, 5, 9);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(127, 0, 5, 10);
/// Where the probes come from.
const PROBER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 7);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_secret() -> String {
    hex(&rand::random::<[u8; 16]>())
}

fn secret(hex: &str) -> Secret {
    hex.parse().expect("secret")
}

/// A TCP connection to `target` from `source`.
fn connect_bound(source: IpAddr, target: SocketAddr) -> TcpStream {
    let socket =
        relay_tests::util::bound_socket(source).unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect_timeout(&target.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {target} from {source}: {e}"));
    socket.into()
}

/// Sends `bytes` from `source`, half-closes, and reads until the relay (or the mask behind
/// it) closes.
fn probe(source: IpAddr, target: SocketAddr, bytes: &[u8]) {
    let mut stream = connect_bound(source, target);
    stream.write_all(bytes).expect("send probe");
    let _ = stream.shutdown(Shutdown::Write);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

/// A Rust client from `source`: handshake, one echo of `size` bytes, close. Returns the bytes
/// it sent during the handshake (a capture to replay).
fn echo_from(source: IpAddr, target: SocketAddr, options: &ClientOptions, size: usize) -> Vec<u8> {
    let stream = connect_bound(source, target);
    let mut client = MtprotoClient::handshake(stream, options, &[]).expect("handshake");
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    client.send(&payload).expect("send");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut back = vec![0u8; size];
    client.recv_exact(&mut back).expect("echo");
    assert_eq!(back, payload, "echo through the relay");
    client.handshake_bytes().to_vec()
}

/// `now - before` for the samples of `name` with `labels`.
fn delta(before: &Metrics, now: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    now.sum(name, labels) - before.sum(name, labels)
}

/// A metric name, the labels a sample must have, and by how much it should have moved.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Asserts each `(name, labels, expected delta)`.
fn assert_deltas(before: &Metrics, now: &Metrics, expected: &[Expected<'_>]) {
    let mut wrong = Vec::new();
    for (name, labels, want) in expected {
        let got = delta(before, now, name, labels);
        if got != *want {
            wrong.push(format!("{name}{labels:?}: moved by {got}, expected {want}"));
        }
    }
    assert!(wrong.is_empty(), "metrics:\n{}", wrong.join("\n"));
}

/// Lines about a ban (they name the banned address in full, by design).
fn is_ban_line(line: &str) -> bool {
    [
        "source banned",
        "ban expired",
        "restoring ban",
        "ban could not be written",
    ]
    .iter()
    .any(|m| line.contains(m))
}

/// Asserts that no line outside ban lines contains any of `addresses`.
fn assert_no_full_addresses(log: &str, addresses: &[String]) {
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| !is_ban_line(l))
        .filter(|l| addresses.iter().any(|a| l.contains(a.as_str())))
        .collect();
    assert!(
        leaks.is_empty(),
        "full client addresses {addresses:?} in the log:\n{}",
        leaks.join("\n")
    );
}

/// Asserts that none of the users' secrets appears in any form a link or config uses.
fn assert_no_secrets(log: &str, secrets: &BTreeMap<&str, String>) {
    for (user, s) in secrets {
        let forms = [
            s.to_ascii_lowercase(),
            s.to_ascii_uppercase(),
            format!("dd{s}"),
            format!("ee{s}{}", hex(DOMAIN.as_bytes())),
        ];
        for form in forms {
            assert!(
                !log.to_ascii_lowercase()
                    .contains(&form.to_ascii_lowercase()),
                "{user}'s secret ({form}) is in the log"
            );
        }
    }
}

fn config(
    port: u16,
    secrets: &BTreeMap<&str, String>,
    dc: SocketAddr,
    mask: SocketAddr,
    extra: &str,
) -> String {
    let mut text = format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["classic", "secure", "tls"]

[xdp]
mode = "off"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"

[upstream]
default_dc = 2
connect_timeout_secs = 5

[upstream.dc]
"#
    );
    for id in DC_IDS {
        text.push_str(&format!("\"{id}\" = [\"{dc}\"]\n"));
    }
    text.push_str(extra);
    for (name, secret) in secrets {
        text.push_str(&format!(
            "\n[[users]]\nname = \"{name}\"\nsecret = \"{secret}\"\nenabled = {}\n",
            *name != "dave"
        ));
    }
    text
}

/// `relay-ctl stats --json` of `relay`.
fn stats_json(relay: &Relay) -> serde_json::Value {
    let config = Config::parse(&relay.config, Origin::Embedded).expect("relay config");
    let out = Command::new(relay_ctl_bin())
        .args(["stats", "--json", "--socket"])
        .arg(&config.admin.socket)
        .output()
        .expect("run relay-ctl stats");
    assert!(out.status.success(), "relay-ctl stats: {out:?}");
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

/// Scrapes until `done` holds (the export runs once a second), or panics after 10 s.
fn scrape_until(relay: &Relay, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    wait_until(Duration::from_secs(10), || {
        let m = Metrics::parse(&relay.try_scrape().ok()?);
        done(&m).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "metrics never showed {what}:\n{}\nrelay log:\n{}",
            relay.scrape(),
            relay.log()
        )
    })
}

/// Real clients (Telethon classic and secure from 127.0.5.9, kurigram fake TLS), Rust clients
/// (fake TLS, secure, a disabled user) and probes (bad secret, unknown SNI, a replayed
/// handshake) through one relay running at `trace`: every counter moves by exactly what was
/// done, `relay-ctl stats` agrees, the log holds no secret and no full client address.
#[test]
fn metrics_follow_real_traffic_and_the_log_keeps_secrets_and_addresses() {
    const TEST: &str = "metrics_follow_real_traffic_and_the_log_keeps_secrets_and_addresses";
    let Some(python) = pyclient::python(TEST) else {
        return;
    };
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let mask = MaskServer::start(None);
    let secrets: BTreeMap<&str, String> = ["alice", "bob", "carol", "dave"]
        .into_iter()
        .map(|u| (u, random_secret()))
        .collect();
    let (mut relay, port) = Relay::start_local_on_free_port_with_log(
        |port| config(port, &secrets, dc.addr, mask.addr, ""),
        Some("trace"),
    );
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let before = scrape_until(&relay, "the first export", |m| {
        m.has("relay_connections_accepted_total")
    });

    // Real third-party clients.
    let sizes = [16, 1024, 65_536];
    let tls_sizes = [24, 1048, 65_560];
    let payload: u64 = sizes.iter().sum::<usize>() as u64;
    let from_a = |secret: String, dc: i16, sizes: &[usize]| Echo {
        local_addr: Some(CLIENT_A.to_string()),
        ..Echo::local(port, secret, dc, sizes)
    };
    let runs = [
        (
            "telethon abridged (alice)",
            from_a(secrets["alice"].clone(), 2, &sizes).telethon(&python, PyTransport::Abridged),
        ),
        (
            "telethon randomized (bob)",
            from_a(format!("dd{}", secrets["bob"]), -2, &sizes)
                .telethon(&python, PyTransport::Randomized),
        ),
        (
            "kurigram (carol)",
            Echo::local(
                port,
                format!("ee{}{}", secrets["carol"], hex(DOMAIN.as_bytes())),
                2,
                &tls_sizes,
            )
            .kurigram(&python),
        ),
    ];
    for (label, run) in &runs {
        assert!(
            run.ok(),
            "{label}: {}\nrelay log:\n{}",
            run.describe(),
            relay.log()
        );
    }

    // Rust clients: fake TLS (alice, DC 4) and secure (bob, test DC 10002), both from
    // 127.0.5.10; a disabled user (dave) is refused after its handshake.
    let tls = ClientOptions {
        dc: 4,
        ..ClientOptions::new(
            secret(&secrets["alice"]),
            Transport::FakeTls {
                domain: DOMAIN.to_owned(),
            },
        )
    };
    echo_from(CLIENT_B.into(), target, &tls, 5000);
    let secure = ClientOptions {
        dc: 10_002,
        ..ClientOptions::new(secret(&secrets["bob"]), Transport::Secure)
    };
    let capture = echo_from(CLIENT_B.into(), target, &secure, 3000);
    {
        let stream = connect_bound(CLIENT_B.into(), target);
        let options = ClientOptions::new(secret(&secrets["dave"]), Transport::Secure);
        let mut client = MtprotoClient::handshake(stream, &options, &[]).expect("handshake");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        assert!(
            !matches!(client.recv(&mut buf), Ok(1)),
            "a disabled user must not be relayed"
        );
    }

    // Probes from 127.0.6.7, each fronted to the mask host.
    probe(PROBER.into(), target, &[0x5a; 64]);
    probe(
        PROBER.into(),
        target,
        &fake_tls_hello(&secret(&secrets["carol"]), "other.example"),
    );
    probe(PROBER.into(), target, &capture);
    let masked = mask.wait(Duration::from_secs(10), |conns| {
        conns.len() >= 3 && conns.iter().all(|c| c.closed)
    });
    assert_eq!(masked.len(), 3, "probes at the mask host");

    // A reload that works and one that does not.
    let good = std::fs::read_to_string(&relay.config_path).expect("config");
    relay.reload();
    relay.wait_for("configuration reloaded", Duration::from_secs(10));
    std::fs::write(&relay.config_path, format!("{good}\n[nonsense]\n")).expect("bad config");
    relay.reload();
    relay.wait_for("configuration rejected", Duration::from_secs(10));
    std::fs::write(&relay.config_path, &good).expect("restore config");

    let accepted = 3 + 3 + 3;
    let now = scrape_until(&relay, "every connection accepted and closed", |m| {
        delta(&before, m, "relay_connections_accepted_total", &[]) == f64::from(accepted)
            && m.sum("relay_connections_active", &[]) == 0.0
            && m.sum("relay_config_reloads_total", &[]) == 2.0
    });
    assert_deltas(
        &before,
        &now,
        &[
            ("relay_connections_accepted_total", &[], f64::from(accepted)),
            (
                "relay_handshakes_total",
                &[("mode", "classic"), ("result", "ok")],
                1.0,
            ),
            (
                "relay_handshakes_total",
                &[("mode", "secure"), ("result", "ok")],
                2.0,
            ),
            (
                "relay_handshakes_total",
                &[("mode", "secure"), ("result", "rejected")],
                1.0,
            ),
            (
                "relay_handshakes_total",
                &[("mode", "tls"), ("result", "ok")],
                2.0,
            ),
            (
                "relay_handshakes_total",
                &[("mode", "tls"), ("result", "failed")],
                1.0,
            ),
            (
                "relay_handshakes_total",
                &[("mode", "unknown"), ("result", "failed")],
                2.0,
            ),
            ("relay_handshakes_total", &[], f64::from(accepted)),
            (
                "relay_handshake_failures_total",
                &[("reason", "bad_secret")],
                1.0,
            ),
            (
                "relay_handshake_failures_total",
                &[("reason", "unknown_sni")],
                1.0,
            ),
            (
                "relay_handshake_failures_total",
                &[("reason", "replay")],
                1.0,
            ),
            ("relay_handshake_failures_total", &[], 3.0),
            (
                "relay_fronted_connections_total",
                &[("reason", "bad_secret")],
                1.0,
            ),
            (
                "relay_fronted_connections_total",
                &[("reason", "unknown_sni")],
                1.0,
            ),
            (
                "relay_fronted_connections_total",
                &[("reason", "replay")],
                1.0,
            ),
            ("relay_fronted_connections_total", &[], 3.0),
            ("relay_replays_detected_total", &[], 1.0),
            (
                "relay_user_rejections_total",
                &[("user", "dave"), ("reason", "disabled")],
                1.0,
            ),
            ("relay_user_rejections_total", &[], 1.0),
            ("relay_dc_connect_seconds_count", &[("dc", "2")], 2.0),
            ("relay_dc_connect_seconds_count", &[("dc", "-2")], 1.0),
            ("relay_dc_connect_seconds_count", &[("dc", "4")], 1.0),
            ("relay_dc_connect_seconds_count", &[("dc", "10002")], 1.0),
            (
                "relay_dc_connect_seconds_bucket",
                &[("dc", "2"), ("le", "+Inf")],
                2.0,
            ),
            ("relay_config_reloads_total", &[("result", "success")], 1.0),
            ("relay_config_reloads_total", &[("result", "failure")], 1.0),
            ("relay_bans_total", &[], 0.0),
            ("relay_bans_active", &[], 0.0),
            (
                "relay_xdp_packets_total",
                &[("verdict", "passed")],
                f64::from(accepted),
            ),
            ("relay_user_connections_active", &[], 0.0),
        ],
    );
    // Bytes: every relayed byte belongs to a user, and each user's traffic covers its payload.
    for direction in ["client_to_dc", "dc_to_client"] {
        let relayed = delta(
            &before,
            &now,
            "relay_relayed_bytes_total",
            &[("direction", direction)],
        );
        let by_users = delta(
            &before,
            &now,
            "relay_user_bytes_total",
            &[("direction", direction)],
        );
        assert_eq!(relayed, by_users, "{direction}: relayed vs per-user bytes");
        for (user, at_least) in [
            ("alice", payload + 5000),
            ("bob", payload + 3000),
            ("carol", tls_sizes.iter().sum::<usize>() as u64),
        ] {
            let got = delta(
                &before,
                &now,
                "relay_user_bytes_total",
                &[("user", user), ("direction", direction)],
            );
            assert!(
                got >= at_least as f64,
                "{user} {direction}: {got} bytes, expected at least {at_least}"
            );
        }
        assert_eq!(
            delta(
                &before,
                &now,
                "relay_user_bytes_total",
                &[("user", "dave"), ("direction", direction)]
            ),
            0.0,
            "a refused user relays nothing"
        );
    }
    assert_eq!(
        now.sum(
            "relay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(
        now.types
            .get("relay_dc_connect_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    // No per-address label anywhere.
    for sample in &now.samples {
        for (key, value) in &sample.labels {
            assert!(
                value.parse::<IpAddr>().is_err() && !value.contains("127.0."),
                "{} has an address-like label {key}={value}",
                sample.name
            );
        }
    }

    // `relay-ctl stats --json` shows the same figures.
    let stats = stats_json(&relay);
    assert_eq!(
        stats["connections_accepted"].as_f64(),
        Some(now.sum("relay_connections_accepted_total", &[])),
        "{stats:#}"
    );
    assert_eq!(stats["replays_detected"], 1, "{stats:#}");
    assert_eq!(stats["handshakes"]["tls"]["ok"], 2, "{stats:#}");
    assert_eq!(stats["fronted"]["unknown_sni"], 1, "{stats:#}");
    assert_eq!(stats["config_reloads"]["failure"], 1, "{stats:#}");
    assert_eq!(
        stats["relayed_bytes"]["client_to_dc"].as_f64(),
        Some(now.sum(
            "relay_relayed_bytes_total",
            &[("direction", "client_to_dc")]
        )),
        "{stats:#}"
    );
    assert!(stats["dc_connect"]["2"]["connects"] == 2, "{stats:#}");
    let dave = stats["users"]
        .as_array()
        .and_then(|users| users.iter().find(|u| u["name"] == "dave"))
        .unwrap_or_else(|| panic!("no dave in {stats:#}"));
    assert_eq!(dave["rejections"]["disabled"], 1, "{stats:#}");

    let log = relay.stop();
    assert_no_secrets(&log, &secrets);
    let full: Vec<String> = [CLIENT_A, CLIENT_B, PROBER]
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_no_full_addresses(&log, &full);
    // The connection span carries the truncated address instead.
    for truncated in ["peer=127.0.5.0/24", "peer=127.0.6.0/24"] {
        assert!(
            log.contains(truncated),
            "no line with {truncated} in the log:\n{log}"
        );
    }
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handshake failed"))
        .collect();
    assert_eq!(failed.len(), 3, "{log}");
    assert!(
        failed.iter().all(|l| l.contains("conn{peer=127.0.6.0/24}")),
        "{failed:#?}"
    );
}

/// `[log] format = "json"` and `client_ips = "none"`: every line is a JSON object, connection
/// events carry the `conn` span with `peer` = `-`, and no client address at all is logged.
#[test]
fn json_logs_with_client_ips_none() {
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let mask = MaskServer::start(None);
    let secrets: BTreeMap<&str, String> = [("alice", random_secret())].into_iter().collect();
    let (relay, port) = Relay::start_local_on_free_port_with_log(
        |port| {
            config(
                port,
                &secrets,
                dc.addr,
                mask.addr,
                "\n[log]\nformat = \"json\"\nclient_ips = \"none\"\n",
            )
        },
        Some("debug"),
    );
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let tls = ClientOptions::new(
        secret(&secrets["alice"]),
        Transport::FakeTls {
            domain: DOMAIN.to_owned(),
        },
    );
    echo_from(CLIENT_A.into(), target, &tls, 100);
    probe(PROBER.into(), target, &[0x5a; 64]);
    mask.wait(Duration::from_secs(10), |c| c.len() == 1 && c[0].closed);
    // The relayed connection's end is logged after both directions finished.
    wait_until(Duration::from_secs(10), || {
        relay.log().contains("relay ended").then_some(())
    })
    .unwrap_or_else(|| panic!("no `relay ended`:\n{}", relay.log()));
    let log = relay.stop();
    let mut conn_events = 0;
    for line in log.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let Some(span) = event.get("span") else {
            continue;
        };
        if span["name"] == "conn" {
            assert_eq!(span["peer"], "-", "{line}");
            conn_events += 1;
        }
    }
    assert!(conn_events >= 3, "connection events in spans:\n{log}");
    for needle in ["\"handshake failed\"", "\"relaying\"", "\"relay ended\""] {
        assert!(log.contains(needle), "{needle} missing:\n{log}");
    }
    assert_no_full_addresses(&log, &["127.0.5".to_owned(), "127.0.6".to_owned()]);
    assert_no_secrets(&log, &secrets);
}

/// Every `relay_*` metric the Grafana dashboard queries.
fn dashboard_metrics() -> Vec<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/relay-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "queries in the dashboard: {exprs:?}");
    let mut names: Vec<String> = Vec::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("relay_") {
            let boundary = at == 0 || {
                let c = rest.as_bytes()[at - 1];
                !(c.is_ascii_alphanumeric() || c == b'_')
            };
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if boundary && !names.iter().any(|n| n == &tail[..end]) {
                names.push(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    names.sort();
    names
}

/// Every `expr` (panel targets, annotations) and templating `query` string in the dashboard.
fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone());
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The dashboard's queries only use metrics a running relay exports (checked after a relayed
/// connection, so the DC histogram exists too). `relay_crowdsec_*` exist only with a
/// `[crowdsec]` LAPI: `crowdsec_fleet` checks those on relays that have one.
#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let names = dashboard_metrics();
    assert!(names.len() >= 18, "{names:?}");
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let mask = MaskServer::start(None);
    let secrets: BTreeMap<&str, String> = [("alice", random_secret())].into_iter().collect();
    let (relay, port) =
        Relay::start_local_on_free_port(|port| config(port, &secrets, dc.addr, mask.addr, ""));
    echo_from(
        CLIENT_A.into(),
        SocketAddr::from(([127, 0, 0, 1], port)),
        &ClientOptions::new(secret(&secrets["alice"]), Transport::Secure),
        64,
    );
    let scraped = scrape_until(&relay, "the relayed connection", |m| {
        m.has("relay_dc_connect_seconds_bucket") && m.sum("relay_relayed_bytes_total", &[]) > 0.0
    });
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !n.starts_with("relay_crowdsec_") && !scraped.has(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which the relay does not export:\n{}",
        relay.scrape()
    );
    relay.stop();
}

/// The kernel's verdicts, bans and blocks in `/metrics`: a SYN flood over the burst and SYNs
/// from a blocked address are counted exactly as the XDP program counted them; a probe storm
/// gets a source banned (`relay_bans_total`, `relay_bans_active`), and its next SYN dies in
/// the kernel. With the default `client_ips`, no namespace client address appears in the log
/// outside ban lines.
#[test]
fn xdp_verdicts_bans_and_blocks_are_exported() {
    if !relay_tests::privilege::privileged("xdp_verdicts_bans_and_blocks_are_exported") {
        return;
    }
    const PORT: u16 = 4443;
    const BURST: u32 = 4;
    const FLOOD: u32 = 20;
    const BLOCKED_SYNS: u32 = 3;
    const THRESHOLD: u32 = 3;
    let pair = NetPair::new("obs", 4);
    let prober = client_v4(2);
    let blocked = client_v4(3);
    let flooder = client_v4(4);
    let config = format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}"]
modes = ["secure"]

[xdp]
interfaces = ["{iface}"]
mode = "native"

[limits]
syn_rate_per_sec = 0
syn_burst = {BURST}

[blocklist]
cidrs = ["{blocked}/32"]

[tls]
# Nothing listens there: fronted probes are closed at once.
mask = "{SERVER_V4}:9"

[misuse]
bad_secret = {THRESHOLD}
ban_secs = 600
# Dropped in XDP, so the `banned` counter moves (the default fronts a prober).
action = "drop"
"#,
        iface = pair.server_if,
    );
    let mut relay = Relay::start_with_log(&pair.server_ns, &config, "trace");
    let (_, prog_id) = pair.server_xdp().expect("XDP attached");
    let target = SocketAddr::from((SERVER_V4, PORT));
    let first = scrape_until(&relay, "the first export", |m| {
        m.has("relay_xdp_packets_total")
    });
    assert_eq!(
        first.sum(
            "relay_xdp_attached",
            &[("interface", &pair.server_if), ("mode", "native")]
        ),
        1.0,
        "{}",
        relay.scrape()
    );
    assert_eq!(
        first.sum("relay_blocklist_entries", &[("source", "config")]),
        1.0
    );

    // The flood: one source opens FLOOD connections; BURST get in.
    let outcomes: Vec<Outcome> = pair.in_client(|| {
        (0..FLOOD)
            .map(|_| {
                connect_from(
                    flooder,
                    target,
                    Duration::from_millis(500),
                    Duration::from_millis(300),
                )
            })
            .collect()
    });
    assert_eq!(
        outcomes.iter().filter(|o| o.is_held()).count(),
        BURST as usize,
        "{outcomes:?}"
    );
    drop(outcomes);
    // A blocked source's SYNs.
    for _ in 0..BLOCKED_SYNS {
        let outcome = pair.in_client(|| {
            connect_from(
                blocked,
                target,
                Duration::from_millis(500),
                Duration::from_millis(1),
            )
        });
        assert!(matches!(outcome, Outcome::NoAnswer), "{outcome:?}");
    }
    // A probe storm: bad secrets until the ban.
    for _ in 0..THRESHOLD {
        pair.in_client(|| probe(prober, target, &[0x5a; 64]));
    }
    relay.wait_for("source banned", Duration::from_secs(5));
    let outcome = pair.in_client(|| {
        connect_from(
            prober,
            target,
            Duration::from_millis(500),
            Duration::from_millis(1),
        )
    });
    assert!(matches!(outcome, Outcome::NoAnswer), "banned: {outcome:?}");

    let kernel_counts = kernel::verdict_counts(prog_id);
    let drops = [
        Verdict::SynRateLimited,
        Verdict::BlockedCidr,
        Verdict::Banned,
    ];
    let now = scrape_until(&relay, "the kernel's drop counts", |m| {
        drops.iter().all(|v| {
            m.sum("relay_xdp_packets_total", &[("verdict", v.name())])
                >= kernel_counts[*v as usize] as f64
        })
    });
    assert_eq!(
        now.sum(
            "relay_xdp_packets_total",
            &[("verdict", Verdict::SynRateLimited.name())]
        ),
        f64::from(FLOOD - BURST),
        "{}",
        relay.scrape()
    );
    assert_eq!(
        now.sum(
            "relay_xdp_packets_total",
            &[("verdict", Verdict::BlockedCidr.name())]
        ),
        f64::from(BLOCKED_SYNS)
    );
    assert!(now.sum("relay_xdp_packets_total", &[("verdict", "banned")]) >= 1.0);
    // The flood and the blocked SYNs are over: their counts no longer move. (A banned
    // source's FIN retransmissions may still add to `banned`.)
    let kernel_now = kernel::verdict_counts(prog_id);
    for v in [Verdict::SynRateLimited, Verdict::BlockedCidr] {
        assert_eq!(
            now.sum("relay_xdp_packets_total", &[("verdict", v.name())]),
            kernel_now[v as usize] as f64,
            "{} in /metrics and in the kernel map",
            v.name()
        );
    }
    assert!(
        now.sum("relay_xdp_packets_total", &[("verdict", "passed")])
            >= f64::from(BURST + THRESHOLD)
    );
    assert_eq!(
        now.sum("relay_bans_total", &[("reason", "bad_secret")]),
        1.0
    );
    assert_eq!(now.sum("relay_bans_total", &[]), 1.0);
    assert_eq!(now.sum("relay_bans_active", &[]), 1.0);
    assert_eq!(
        now.sum(
            "relay_handshake_failures_total",
            &[("reason", "bad_secret")]
        ),
        f64::from(THRESHOLD)
    );
    assert_eq!(
        now.sum("relay_connections_accepted_total", &[]),
        f64::from(BURST + THRESHOLD)
    );

    let log = relay.stop();
    let banned: Vec<&str> = log.lines().filter(|l| is_ban_line(l)).collect();
    assert!(
        banned.iter().any(|l| l.contains(&prober.to_string())),
        "the ban line names the banned address: {banned:?}"
    );
    assert_no_full_addresses(
        &log,
        &[prober, blocked, flooder]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    );
    assert!(log.contains("peer=198.18.0.0/24"), "{log}");
}
