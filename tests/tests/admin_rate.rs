//! The admin socket's per-caller request rate against a real daemon (loopback,
//! `[xdp] mode = "off"`): root floods the socket with requests on one connection and gets
//! `rate_limited` answers past its burst, while the CLI run as another uid at the same moment
//! is served; the refusals are counted in `stats` and in the metrics.
//!
//! Needs root (to run the CLI as another uid); skips with a message otherwise.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    path::Path,
    process::Command,
    time::Duration,
};

use relay_ctl::control::peer_rate::REQUEST_BURST;
use relay_tests::{
    metrics::Metrics,
    relay::{Relay, relay_ctl_bin},
    util::wait_until,
};
use serde_json::Value;

const NOBODY: u32 = 65534;
/// Requests root sends at once: well past its burst.
const FLOOD: usize = 10 * REQUEST_BURST as usize;

/// `relay-ctl stats --json` as `nobody`.
fn stats_as_nobody(socket: &Path) -> Value {
    let out = Command::new(relay_ctl_bin())
        .args(["stats", "--json", "--socket"])
        .arg(socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run relay-ctl");
    assert!(
        out.status.success(),
        "relay-ctl stats as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stats JSON")
}

#[test]
fn a_caller_over_its_rate_is_refused_while_another_is_served() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP a_caller_over_its_rate_is_refused_while_another_is_served: needs root");
        return;
    }
    // The socket's directory must be traversable by the other uid.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let socket = dir.path().join("admin.sock");
    let (relay, _) = Relay::start_local_on_free_port(|port| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[xdp]\nmode = \"off\"\n[admin]\nsocket = {:?}\nmode = \"0666\"\n",
            socket.display().to_string()
        )
    });

    // Root's flood: every request written at once, by a thread, while the answers are read.
    let stream = UnixStream::connect(&socket).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let flood = std::thread::spawn(move || {
        let lines = "{\"cmd\":\"stats\"}\n".repeat(FLOOD);
        writer.write_all(lines.as_bytes()).expect("write the flood");
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut answers = BufReader::new(stream).lines();
    let (mut served, mut limited) = (0u64, 0u64);
    let mut other = None;
    for n in 0..FLOOD {
        let line = answers.next().expect("an answer").expect("read an answer");
        let answer: Value = serde_json::from_str(&line).expect("JSON answer");
        match answer["kind"].as_str() {
            Some("rate_limited") => limited += 1,
            _ if answer["data"].is_object() => served += 1,
            _ => panic!("unexpected answer to request {n}: {line}"),
        }
        // Once root is over its rate, another uid asks: it is served.
        if limited == 1 && other.is_none() {
            other = Some(stats_as_nobody(&socket));
        }
    }
    flood.join().expect("flood thread");
    eprintln!("root: {served} served, {limited} rate-limited of {FLOOD}");
    assert!(
        served >= u64::from(REQUEST_BURST),
        "the burst is served: {served}"
    );
    assert!(limited > 0, "a flood of {FLOOD} is refused past the rate");
    let other = other.expect("nobody asked while root was limited");
    assert!(other["version"].is_string(), "{other}");

    // Counted in stats and in the metrics.
    let stats = stats_as_nobody(&socket);
    assert_eq!(stats["admin_rate_limited"], Value::from(limited), "{stats}");
    let metric = || Metrics::parse(&relay.scrape()).sum("relay_admin_rate_limited_total", &[]);
    wait_until(Duration::from_secs(5), || {
        (metric() == limited as f64).then_some(())
    })
    .unwrap_or_else(|| panic!("relay_admin_rate_limited_total {} != {limited}", metric()));
    let log = relay.stop();
    assert!(
        log.contains("admin socket: caller over"),
        "the refusals are logged:\n{log}"
    );
}
