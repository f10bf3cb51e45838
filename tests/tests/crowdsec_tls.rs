//! relay as a bouncer of an HTTPS LAPI (`ca_file`), with XDP off: CrowdSec decisions are then
//! enforced by the userspace gate at accept. A relay given the wrong CA refuses the LAPI.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use relay_ctl::control::{
    api::{Reply, Request, Response},
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

/// Runs openssl with `args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir`: `<name>.pem` and `<name>.key`.
fn ca(dir: &Path, name: &str) {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            "/CN=relay-test-ca",
        ],
    );
}

/// A server certificate for 127.0.0.1 signed by CA `ca`: `lapi.pem`, `lapi.key`.
fn server_cert(dir: &Path, ca: &str) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "lapi.key",
            "-out",
            "lapi.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "lapi.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "lapi.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn config(port: u16, lapi: &str, key: &str, ca: &Path) -> String {
    format!(
        r#"
[server]
listen = ["{SERVER_V4}:{port}"]
modes = ["secure"]

[xdp]
mode = "off"

[limits]
syn_limit = false

[crowdsec]
lapi_url = "{lapi}"
bouncer_key = "{key}"
poll_interval = "1s"
ca_file = "{ca}"
"#,
        ca = ca.display()
    )
}

fn bans(relay: &Relay) -> Vec<(String, String)> {
    let config =
        relay_ctl::config::Config::parse(&relay.config, relay_ctl::config::Origin::Embedded)
            .expect("relay config");
    match call_with_timeout(
        &config.admin.socket,
        &Request::BansList,
        Duration::from_secs(10),
    ) {
        Ok(Response::Ok {
            data: Reply::Bans { bans },
        }) => bans.into_iter().map(|b| (b.addr, b.source)).collect(),
        other => panic!("bans list: {other:?}"),
    }
}

#[test]
fn https_lapi_with_a_private_ca_and_userspace_enforcement() {
    if !relay_tests::privilege::privileged("https_lapi_with_a_private_ca_and_userspace_enforcement")
    {
        return;
    }
    let Some(bins) = binaries_or_skip("https_lapi_with_a_private_ca_and_userspace_enforcement")
    else {
        return;
    };
    let pki = tempfile::tempdir().expect("pki dir");
    ca(pki.path(), "ca");
    ca(pki.path(), "other-ca");
    server_cert(pki.path(), "ca");
    let pair = NetPair::new("cstls", 3);
    let port = free_port();
    let lapi = Lapi::start_with(
        &bins,
        Some(&pair.server_ns),
        &format!("127.0.0.1:{port}"),
        Some((&pki.path().join("lapi.pem"), &pki.path().join("lapi.key"))),
    );
    lapi.add_bouncer("relay-good", "relay-good-key-0001");
    lapi.add_bouncer("relay-bad", "relay-bad-key-0001");
    let relay = Relay::start(
        &pair.server_ns,
        &config(
            PORT,
            &lapi.url,
            "relay-good-key-0001",
            &pki.path().join("ca.pem"),
        ),
    );
    let wrong_ca = Relay::start(
        &pair.server_ns,
        &config(
            PORT + 1,
            &lapi.url,
            "relay-bad-key-0001",
            &pki.path().join("other-ca.pem"),
        ),
    );
    wait_until(Duration::from_secs(15), || {
        relay
            .log()
            .contains("CrowdSec LAPI reachable")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no TLS pull:\n{}\nLAPI:\n{}", relay.log(), lapi.log()));
    let refused = wait_until(Duration::from_secs(15), || {
        wrong_ca
            .log()
            .lines()
            .find(|l| l.contains("CrowdSec LAPI unreachable"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("the wrong CA was accepted:\n{}", wrong_ca.log()));
    assert!(refused.contains("certificate"), "{refused}");

    // Decisions are enforced at accept when XDP is off.
    let (banned, in_range, other) = (client_v4(2), client_v4(3), client_v4(4));
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        &banned.to_string(),
        "--duration",
        "1h",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        &format!("{in_range}/32"),
        "--duration",
        "1h",
    ]);
    wait_until(Duration::from_secs(15), || {
        bans(&relay)
            .contains(&(banned.to_string(), "crowdsec:cscli".to_owned()))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the decision never arrived:\n{}", relay.log()));
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
    // The range may land a poll later than the address.
    let range_enforced = wait_until(Duration::from_secs(10), || {
        matches!(attempt(in_range), Outcome::Refused(_)).then_some(())
    });
    assert!(
        range_enforced.is_some(),
        "{in_range} in a CrowdSec range is refused"
    );
    assert!(
        matches!(attempt(banned), Outcome::Refused(_)),
        "a CrowdSec-banned source is refused at accept"
    );
    assert!(attempt(other).is_held(), "others are admitted");
    wrong_ca.stop();
    relay.stop();
}
