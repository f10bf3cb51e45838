//! End to end over a veth pair between two network namespaces: relay-ctl with XDP (or its
//! userspace fallback) in one, real TCP clients in the other.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use relay_common::Verdict;
use relay_tests::{
    kernel,
    mask::MaskServer,
    metrics::Metrics,
    netns::{NetPair, SERVER_V4, SERVER_V6, client_v4, client_v6, in_namespace},
    probe::{Outcome, connect_from, send_bad_header},
    relay::Relay,
};

const PORT: u16 = 4443;
const BURST: u32 = 4;
/// Well under the first SYN retransmission (1 s), so one attempt is one SYN.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The first SYN retransmission: an unanswered attempt that lasted this long (the client
/// thread descheduled on a loaded machine) may have sent a second SYN.
const SYN_RTO: Duration = Duration::from_secs(1);
const HOLD_CHECK: Duration = Duration::from_millis(300);

fn privileged(test: &str) -> bool {
    relay_tests::privilege::privileged(test)
}

fn config(pair: &NetPair, mode: &str) -> String {
    format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}", "[{SERVER_V6}]:{PORT}"]

[xdp]
interfaces = ["{iface}"]
mode = "{mode}"

[limits]
syn_rate_per_sec = 0
syn_burst = {BURST}

[blocklist]
cidrs = ["{blocked_v4}/32", "{blocked_v6}/128", "198.18.0.8/29"]

[allowlist]
cidrs = ["198.18.0.9"]
"#,
        iface = pair.server_if,
        blocked_v4 = client_v4(3),
        blocked_v6 = client_v6(3),
    )
}

fn target(source: IpAddr) -> SocketAddr {
    match source {
        IpAddr::V4(_) => SocketAddr::from((SERVER_V4, PORT)),
        IpAddr::V6(_) => SocketAddr::from((SERVER_V6, PORT)),
    }
}

fn attempt(pair: &NetPair, source: IpAddr) -> Outcome {
    pair.in_client(|| connect_from(source, target(source), CONNECT_TIMEOUT, HOLD_CHECK))
}

/// Like [`attempt`]; also says whether an unanswered attempt lasted long enough to have
/// sent a retransmitted SYN (which the kernel counts again).
fn counted_attempt(pair: &NetPair, source: IpAddr) -> (Outcome, u64) {
    let started = Instant::now();
    let outcome = attempt(pair, source);
    let late = matches!(outcome, Outcome::NoAnswer) && started.elapsed() >= SYN_RTO;
    if late {
        eprintln!(
            "{source}: unanswered for {:?}, a SYN may have been retransmitted",
            started.elapsed()
        );
    }
    (outcome, u64::from(late))
}

/// Blocked sources cannot connect while allowed ones can; a source inside a blocked CIDR but
/// on the allowlist gets in. `kernel` says whether drops must happen before the SYN-ACK.
/// Returns how many unanswered attempts may have sent a second SYN.
fn check_block_and_allow(pair: &NetPair, kernel: bool) -> u64 {
    let mut late = 0;
    for source in [client_v4(2), client_v6(2), client_v4(9)] {
        let outcome = attempt(pair, source);
        assert!(
            outcome.is_held(),
            "{source} should be admitted, got {outcome:?}"
        );
    }
    for source in [client_v4(3), client_v6(3), client_v4(10)] {
        let (outcome, retransmitted) = counted_attempt(pair, source);
        late += retransmitted;
        match outcome {
            Outcome::NoAnswer => {}
            Outcome::Refused(why) if !kernel => eprintln!("{source} refused in userspace: {why}"),
            other => panic!("{source} should be blocked, got {other:?}"),
        }
    }
    late
}

/// `attempts` connections in a row from one source: exactly `admitted` get in, and those keep
/// working after the source is over budget. Returns how many unanswered attempts may have
/// sent a second SYN.
fn check_syn_burst(pair: &NetPair, source: IpAddr, attempts: u32, admitted: usize) -> u64 {
    let (outcomes, late): (Vec<Outcome>, Vec<u64>) =
        (0..attempts).map(|_| counted_attempt(pair, source)).unzip();
    let held = outcomes.iter().filter(|o| o.is_held()).count();
    assert_eq!(
        held, admitted,
        "burst of {attempts} from {source}: {outcomes:?}"
    );
    // Established flows are never limited: the admitted connections still carry data.
    pair.in_client(|| {
        for outcome in outcomes {
            if let Outcome::Held(mut stream) = outcome {
                use std::io::Write as _;
                stream
                    .write_all(&[0u8; 1024])
                    .expect("write on an established connection");
                stream.flush().expect("flush");
            }
        }
    });
    late.iter().sum()
}

#[test]
fn xdp_blocks_limits_counts_and_detaches() {
    if !privileged("xdp_blocks_limits_counts_and_detaches") {
        return;
    }
    let pair = NetPair::new("xdp", 9);
    blocks_limits_counts_and_detaches(&pair, "native", "xdp", "native");
}

/// `auto` picks the TC ingress hook on a veth (XDP copies every packet there: see
/// `xdp::driver`), and the program enforces the same policy from there.
#[test]
fn auto_mode_attaches_tc_on_veth_and_enforces() {
    if !privileged("auto_mode_attaches_tc_on_veth_and_enforces") {
        return;
    }
    let pair = NetPair::new("xdpauto", 9);
    let driver = in_namespace(&pair.server_ns, || {
        relay_ctl::xdp::driver::driver(&pair.server_if)
    });
    assert_eq!(driver.expect("driver of a veth").as_str(), "veth");
    blocks_limits_counts_and_detaches(&pair, "auto", "tcx", "tc");
}

/// Generic XDP, `auto`'s last resort, still enforces when asked for.
#[test]
fn generic_mode_attaches_and_enforces() {
    if !privileged("generic_mode_attaches_and_enforces") {
        return;
    }
    let pair = NetPair::new("xdpgen", 10);
    blocks_limits_counts_and_detaches(&pair, "generic", "xdpgeneric", "generic");
}

/// Starts a relay with `[xdp] mode = config_mode`, checks it attached as `kernel_mode` (as
/// [`NetPair::server_hook`] names it) and logged `logged_mode`, then checks blocking, SYN limits, the
/// verdict counters and the detach at stop.
fn blocks_limits_counts_and_detaches(
    pair: &NetPair,
    config_mode: &str,
    kernel_mode: &str,
    logged_mode: &str,
) {
    let relay = Relay::start(&pair.server_ns, &config(pair, config_mode));
    let (mode, prog_id) = pair.server_hook().expect("a program on the server veth");
    assert_eq!(mode, kernel_mode, "[xdp] mode = {config_mode} on a veth");
    assert!(
        relay.log().contains(&format!("mode={logged_mode}")),
        "{}",
        relay.log()
    );
    let before = kernel::verdict_counts(prog_id);

    let mut late = check_block_and_allow(pair, true);
    late += check_syn_burst(pair, client_v4(4), 12, BURST as usize);
    // IPv6 sources share one bucket per /64: ::2 already spent a token of it above.
    late += check_syn_burst(pair, client_v6(5), 7, BURST as usize - 1);

    let after = kernel::verdict_counts(prog_id);
    let delta = |v: Verdict| after[v as usize] - before[v as usize];
    // One SYN per unanswered attempt, plus a retransmission for any attempt that outlived
    // the first retransmission timeout.
    let limited = delta(Verdict::SynRateLimited);
    assert!(
        (8 + 4..=8 + 4 + late).contains(&limited),
        "{after:?}, late {late}"
    );
    let blocked = delta(Verdict::BlockedCidr);
    assert!((3..=3 + late).contains(&blocked), "{after:?}, late {late}");
    assert_eq!(delta(Verdict::Banned), 0);
    assert!(delta(Verdict::Allowlisted) >= 1, "{after:?}");
    assert!(delta(Verdict::Passed) >= 2 * u64::from(BURST), "{after:?}");

    let log = relay.stop();
    assert!(log.contains("program detached"), "{log}");
    assert_eq!(pair.server_hook(), None, "no program left on the interface");
}

#[test]
fn userspace_fallback_enforces_the_same_policy() {
    if !privileged("userspace_fallback_enforces_the_same_policy") {
        return;
    }
    let pair = NetPair::new("off", 9);
    let relay = Relay::start(&pair.server_ns, &config(&pair, "off"));
    assert_eq!(pair.server_xdp(), None, "mode off attaches nothing");
    assert!(relay.log().contains("userspace"), "{}", relay.log());

    check_block_and_allow(&pair, false);
    check_syn_burst(&pair, client_v4(4), 12, BURST as usize);
    // IPv6 sources share one bucket per /64: ::2 already spent a token of it above.
    check_syn_burst(&pair, client_v6(5), 7, BURST as usize - 1);
    relay.stop();
}

#[test]
fn unknown_interface_is_a_clear_error() {
    if !privileged("unknown_interface_is_a_clear_error") {
        return;
    }
    let pair = NetPair::new("badif", 1);
    let config =
        format!("[server]\nlisten = [\"{SERVER_V4}:{PORT}\"]\n[xdp]\ninterfaces = [\"nosuch0\"]\n");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &pair.server_ns])
        .arg(relay_tests::relay::relay_ctl_bin())
        .args(["run", "--config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(config.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run relay-ctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown interface `nosuch0`") && stderr.contains(&pair.server_if),
        "{stderr}"
    );
}

/// The misuse loop end to end with `[misuse] action = "drop"`: a source sending bad handshakes
/// is fronted until the threshold, then banned in the XDP map, so its next SYNs die in the
/// kernel; the ban lapses on time.
#[test]
fn probe_storm_is_banned_in_the_kernel_and_expires() {
    if !privileged("probe_storm_is_banned_in_the_kernel_and_expires") {
        return;
    }
    const THRESHOLD: usize = 5;
    const BAN_SECS: u64 = 3;
    let pair = NetPair::new("ban", 2);
    let config = format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}"]
modes = ["secure"]

[xdp]
interfaces = ["{iface}"]
mode = "native"

[tls]
# Nothing listens there: fronted probes are closed at once.
mask = "{SERVER_V4}:9"

[misuse]
bad_secret = {THRESHOLD}
ban_secs = {BAN_SECS}
action = "drop"

[state]
dir = "/tmp/relay-test-state-{iface}"
"#,
        iface = pair.server_if,
    );
    let mut relay = Relay::start(&pair.server_ns, &config);
    let (_, prog_id) = pair.server_xdp().expect("XDP attached");
    let prober = client_v4(2);
    let bystander = client_v4(3);
    let target = SocketAddr::from((SERVER_V4, PORT));

    // Every probe gets a TCP connection (and fronting) until the threshold is crossed.
    for i in 0..THRESHOLD {
        let outcome = pair.in_client(|| {
            match connect_from(prober, target, CONNECT_TIMEOUT, Duration::from_millis(1)) {
                Outcome::Held(mut stream) => {
                    send_bad_header(&mut stream);
                    Outcome::Refused(format!("probe {i} answered by closing"))
                }
                other => other,
            }
        });
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "probe {i} should get a connection, got {outcome:?}"
        );
    }
    let banned_line = relay.wait_for("source banned", Duration::from_secs(5));
    assert!(
        banned_line.contains("198.18.0.2") && banned_line.contains("bad_secret"),
        "{banned_line}"
    );
    let before = kernel::verdict_counts(prog_id)[Verdict::Banned as usize];
    assert!(
        matches!(attempt(&pair, prober), Outcome::NoAnswer),
        "a banned source's SYN must be dropped in the kernel"
    );
    let after = kernel::verdict_counts(prog_id)[Verdict::Banned as usize];
    // At least the SYN; the last probe's FIN retransmissions are dropped (and counted) too.
    assert!(
        after > before,
        "the kernel counted the banned SYN ({before} → {after})"
    );
    assert!(
        attempt(&pair, bystander).is_held(),
        "others are not affected"
    );

    relay.wait_for("ban expired", Duration::from_secs(BAN_SECS + 3));
    assert!(attempt(&pair, prober).is_held(), "the ban lapsed on time");
    relay.stop();
}

/// The mask site's answer to any complete request.
const HTTP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n\
Connection: close\r\n\r\nhi";
/// What a browser (or a prober imitating one) sends.
const HTTP_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: mask.example\r\n\r\n";

/// A bad obfuscated2 header (no secret decrypts it) that also ends an HTTP request head, so
/// the mask site answers the fronted probe.
fn bad_secret_probe() -> Vec<u8> {
    let mut probe = vec![0x5a; 60];
    probe.extend_from_slice(b"\r\n\r\n");
    probe
}

/// Connects from `source`, sends `bytes` and reads until the server closes: the answer, or
/// the outcome if there was no connection to send on.
fn ask(pair: &NetPair, source: IpAddr, bytes: &[u8]) -> Result<Vec<u8>, Outcome> {
    pair.in_client(|| {
        use std::io::{Read as _, Write as _};
        match connect_from(
            source,
            target(source),
            CONNECT_TIMEOUT,
            Duration::from_millis(1),
        ) {
            Outcome::Held(mut stream) => {
                stream.write_all(bytes).expect("send");
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                Ok(answer)
            }
            other => Err(other),
        }
    })
}

/// A prober banned for bad secrets keeps getting the mask site's answers (within its banned
/// SYN budget, without handshake work), while a connection flood is banned with a drop and
/// cut in the kernel.
#[test]
fn prober_ban_fronts_and_flood_ban_drops_in_the_kernel() {
    if !privileged("prober_ban_fronts_and_flood_ban_drops_in_the_kernel") {
        return;
    }
    let pair = NetPair::new("front", 2);
    prober_ban_fronts_and_flood_ban_drops(&pair, "native");
}

/// The same with XDP off: the userspace gate fronts and drops (resets) alike.
#[test]
fn prober_ban_fronts_and_flood_ban_drops_in_userspace() {
    if !privileged("prober_ban_fronts_and_flood_ban_drops_in_userspace") {
        return;
    }
    let pair = NetPair::new("frontu", 2);
    prober_ban_fronts_and_flood_ban_drops(&pair, "off");
}

fn prober_ban_fronts_and_flood_ban_drops(pair: &NetPair, mode: &str) {
    const THRESHOLD: usize = 5;
    const FLOOD: usize = 8;
    const BANNED_BURST: usize = 3;
    let kernel = mode != "off";
    let mask = in_namespace(&pair.server_ns, || {
        MaskServer::start(Some(HTTP_RESPONSE.to_vec()))
    });
    let config = format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}"]
modes = ["secure"]

[xdp]
interfaces = ["{iface}"]
mode = "{mode}"

[limits]
syn_rate_per_sec = 0
syn_burst = 32

[tls]
mask = "{mask}"

[misuse]
bad_secret = {THRESHOLD}
connections = {FLOOD}
ban_secs = 600
banned_syn_rate_per_sec = 0
banned_syn_burst = {BANNED_BURST}
"#,
        iface = pair.server_if,
        mask = mask.addr,
    );
    let mut relay = Relay::start(&pair.server_ns, &config);
    let prog_id = pair.server_hook().map(|(_, id)| id);
    assert_eq!(prog_id.is_some(), kernel, "[xdp] mode = {mode}");
    let counts = || prog_id.map(kernel::verdict_counts);
    let prober = client_v4(2);
    let flooder = client_v4(3);

    // Before the ban, as after it: every probe gets the site's answer.
    for i in 0..THRESHOLD {
        let answer = ask(pair, prober, &bad_secret_probe());
        assert_eq!(
            answer.as_deref().ok(),
            Some(HTTP_RESPONSE),
            "probe {i}: {answer:?}"
        );
    }
    let line = relay.wait_for("source banned", Duration::from_secs(5));
    assert!(
        line.contains("bad_secret") && line.contains("front"),
        "{line}"
    );
    let before = counts();
    let fronted_before = mask.conns().len();

    // Banned: new connections go to the site at accept, up to the banned budget.
    for i in 0..BANNED_BURST {
        let answer = ask(pair, prober, HTTP_REQUEST);
        assert_eq!(
            answer.as_deref().ok(),
            Some(HTTP_RESPONSE),
            "banned prober, connection {i}: {answer:?}\n{}",
            relay.log()
        );
    }
    // The site saw exactly the requests: the relay read nothing of them itself.
    let conns = mask.wait(Duration::from_secs(5), |c| {
        c.len() == fronted_before + BANNED_BURST && c.iter().all(|c| c.closed)
    });
    assert_eq!(conns.len(), fronted_before + BANNED_BURST, "{conns:?}");
    for conn in &conns[fronted_before..] {
        assert_eq!(conn.received, HTTP_REQUEST);
    }
    let started = Instant::now();
    let over = ask(pair, prober, HTTP_REQUEST);
    let late = u64::from(started.elapsed() >= SYN_RTO);
    match &over {
        Err(Outcome::NoAnswer) => {}
        Err(Outcome::Refused(why)) if !kernel => eprintln!("over budget, reset: {why}"),
        other => panic!("over the banned budget the prober gets nothing, got {other:?}"),
    }
    // Counted as fronted for the ban (the exporter copies counters once a second).
    let fronted = relay_tests::util::wait_until(Duration::from_secs(5), || {
        let banned = Metrics::parse(&relay.scrape())
            .sum("relay_fronted_connections_total", &[("reason", "banned")]);
        (banned >= BANNED_BURST as f64).then_some(banned)
    });
    assert_eq!(fronted, Some(BANNED_BURST as f64));
    if let (Some(before), Some(after)) = (before, counts()) {
        let delta = |v: Verdict| after[v as usize] - before[v as usize];
        // SYNs and the segments of the fronted connections.
        assert!(
            delta(Verdict::BannedFronted) >= 3 * BANNED_BURST as u64,
            "{after:?}"
        );
        let limited = delta(Verdict::BannedSynLimited);
        assert!((1..=1 + late).contains(&limited), "{after:?}, late {late}");
        assert_eq!(delta(Verdict::Banned), 0, "{after:?}");
    }

    // A connection flood: banned for its rate, and that ban drops.
    let mut held = Vec::new();
    for i in 0..FLOOD {
        let outcome = pair.in_client(|| {
            connect_from(
                flooder,
                target(flooder),
                CONNECT_TIMEOUT,
                Duration::from_millis(1),
            )
        });
        assert!(
            !matches!(outcome, Outcome::NoAnswer),
            "flood connection {i} is admitted before the ban"
        );
        held.push(outcome);
    }
    let line = relay.wait_for("source banned", Duration::from_secs(5));
    assert!(
        line.contains("conn_rate") && line.contains("drop"),
        "{line}"
    );
    let before = counts();
    match attempt(pair, flooder) {
        Outcome::NoAnswer => {}
        Outcome::Refused(why) if !kernel => eprintln!("flood source reset: {why}"),
        other => panic!("the flood source must be dropped, got {other:?}"),
    }
    if let (Some(before), Some(after)) = (before, counts()) {
        assert!(
            after[Verdict::Banned as usize] > before[Verdict::Banned as usize],
            "the kernel dropped the flood source's SYN: {after:?}"
        );
    }
    drop(held);

    // The operator sees which ban does what.
    let bans = relay_tests::relay::relay_ctl_bin();
    let out = std::process::Command::new(bans)
        .args(["bans", "list", "--json", "--config"])
        .arg(&relay.config_path)
        .output()
        .expect("relay-ctl bans list");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bans list --json ({e}): {out:?}"));
    let action = |addr: IpAddr| {
        json["bans"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["addr"] == addr.to_string()))
            .map(|b| b["action"].clone())
    };
    assert_eq!(action(prober), Some("front".into()), "{json}");
    assert_eq!(action(flooder), Some("drop".into()), "{json}");
    relay.stop();
}
