//! CrowdSec data is input, not truth: a real LAPI (plain http on the relay's own loopback,
//! XDP off so decisions are enforced at accept) carries a `0.0.0.0/0` and a `::/0` decision
//! whose reason holds terminal escapes and a forged log line, next to a single address. relay
//! rejects and counts the two ranges, keeps the escapes out of its log, enforces the address
//! and keeps serving everyone else.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use relay_ctl::control::{
    api::{Reply, Request, Response, Stats},
    client::call_with_timeout,
};
use relay_tests::{
    crowdsec::{Lapi, binaries_or_skip},
    netns::{NetPair, SERVER_V4, client_v4},
    probe::{Outcome, connect_from},
    relay::Relay,
    util::{free_port, wait_until},
};

const PORT: u16 = 4443;

fn config(lapi: &str) -> String {
    format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}"]
modes = ["secure"]

[xdp]
mode = "off"

[limits]
syn_limit = false

[crowdsec]
lapi_url = "{lapi}"
bouncer_key = "relay-untrusted-key-0001"
poll_interval = "1s"
"#
    )
}

fn stats(relay: &Relay) -> Stats {
    let config =
        relay_ctl::config::Config::parse(&relay.config, relay_ctl::config::Origin::Embedded)
            .expect("relay config");
    match call_with_timeout(
        &config.admin.socket,
        &Request::Stats,
        Duration::from_secs(10),
    ) {
        Ok(Response::Ok {
            data: Reply::Stats(stats),
        }) => *stats,
        other => panic!("stats: {other:?}"),
    }
}

#[test]
fn a_decision_for_the_whole_internet_is_rejected_not_enforced() {
    const NAME: &str = "a_decision_for_the_whole_internet_is_rejected_not_enforced";
    if !relay_tests::privilege::privileged(NAME) {
        return;
    }
    let Some(bins) = binaries_or_skip(NAME) else {
        return;
    };
    let pair = NetPair::new("csbad", 3);
    let lapi = Lapi::start(
        &bins,
        Some(&pair.server_ns),
        &format!("127.0.0.1:{}", free_port()),
    );
    lapi.add_bouncer("relay-untrusted", "relay-untrusted-key-0001");
    let relay = Relay::start(&pair.server_ns, &config(&lapi.url));
    wait_until(Duration::from_secs(15), || {
        relay
            .log()
            .contains("CrowdSec LAPI reachable")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no pull:\n{}\nLAPI:\n{}", relay.log(), lapi.log()));

    let reason = "world\u{1b}[31m\nINFO relay_ctl: forged line";
    for range in ["0.0.0.0/0", "::/0"] {
        lapi.cscli(&[
            "decisions",
            "add",
            "--range",
            range,
            "--duration",
            "1h",
            "--reason",
            reason,
        ]);
    }
    let (banned, other) = (client_v4(2), client_v4(3));
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &banned.to_string(),
        "--duration",
        "1h",
    ]);
    let counted = wait_until(Duration::from_secs(15), || {
        let s = stats(&relay);
        let cs = s.crowdsec?;
        (cs.rejected.get("wide_range") >= Some(&2) && cs.decisions.get("cscli") == Some(&1))
            .then_some(cs)
    });
    let cs = counted.unwrap_or_else(|| {
        panic!(
            "the ranges were not rejected and counted: {:?}\n{}",
            stats(&relay).crowdsec,
            relay.log()
        )
    });
    assert_eq!(cs.decisions.values().sum::<u64>(), 1, "{cs:?}");

    let target = SocketAddr::from((SERVER_V4, PORT));
    let attempt = |source: IpAddr| {
        pair.in_client(|| {
            connect_from(
                source,
                target,
                Duration::from_secs(2),
                Duration::from_millis(300),
            )
        })
    };
    assert!(
        matches!(attempt(banned), Outcome::Refused(_)),
        "the single address next to the ranges is enforced"
    );
    assert!(attempt(other).is_held(), "everyone else is still admitted");

    let log = relay.stop();
    let rejected = log
        .lines()
        .find(|l| l.contains("CrowdSec decisions rejected"))
        .unwrap_or_else(|| panic!("no rejection logged:\n{log}"));
    assert!(rejected.contains("wider than /"), "{rejected}");
    assert!(rejected.contains("forged line"), "{rejected}");
    assert!(
        !log.contains('\u{1b}') && !log.lines().any(|l| l.starts_with("INFO relay_ctl: forged")),
        "the reason's escapes reached the log:\n{log}"
    );
    assert_eq!(
        log.matches("CrowdSec decisions rejected").count(),
        1,
        "one line per kind:\n{log}"
    );
}
