//! `relay-ctl doctor` against a healthy local setup (an HTTPS mask with a certificate for
//! `[tls] domain` and a correct `Date`, fake DCs for ids 1 to 5, a running relay), then with
//! one thing broken at a time: each failure names its check and says what to do. The SOCKS5
//! proxy, a private CrowdSec LAPI and XDP on a veth in a network namespace (root) each get a
//! test of their own.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use relay_tests::{
    crowdsec::{Lapi, binaries_or_skip},
    fake_dc::FakeDc,
    https_mask::HttpsMask,
    netns::{NetPair, SERVER_V4},
    relay::{Relay, relay_ctl_bin},
    socks5::{Behaviour, SocksServer},
    util::free_port,
};
use serde_json::Value;

const DOMAIN: &str = "mask.example";

/// The config: the mask at `mask`, DCs 1 to 5 at `dc`.
fn config(port: u16, mask: SocketAddr, dc: SocketAddr) -> String {
    let dcs: String = (1..=5)
        .map(|id| format!("\"{id}\" = [\"{dc}\"]\n"))
        .collect();
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["tls"]

[xdp]
mode = "off"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"

[[users]]
name = "alice"
secret = "00112233445566778899aabbccddeeff"

[upstream.dc]
{dcs}
"#
    )
}

/// What a doctor run printed and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// The check `name` of a `--json` run.
    fn check(&self, name: &str) -> Value {
        self.json()["checks"]
            .as_array()
            .and_then(|checks| checks.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no check {name}: {}", self.stdout))
    }
}

/// `relay-ctl doctor --offline --config CONFIG --mask-ca CA ARGS`.
fn doctor(config: &Path, ca: &Path, args: &[&str]) -> Out {
    doctor_in(None, config, ca, args)
}

/// [`doctor`], inside network namespace `netns` if given.
fn doctor_in(netns: Option<&str>, config: &Path, ca: &Path, args: &[&str]) -> Out {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(relay_ctl_bin());
            c
        }
        None => Command::new(relay_ctl_bin()),
    };
    let out = command
        .arg("doctor")
        .arg("--offline")
        .arg("--config")
        .arg(config)
        .arg("--mask-ca")
        .arg(ca)
        .args(args)
        .output()
        .expect("run relay-ctl doctor");
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    eprintln!(
        "$ relay-ctl doctor {}\n{}exit {}",
        args.join(" "),
        out.stdout,
        out.code
    );
    out
}

/// Writes `text` to `name` in `dir`, readable by its owner only.
fn write_private(dir: &Path, name: &str, text: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn mask(domain: &str, date_offset: i64) -> HttpsMask {
    HttpsMask::start_with_date(domain, Duration::from_secs(5), Some(date_offset))
}

fn fake_dc() -> FakeDc {
    FakeDc::start(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// A port nothing listens on (just released).
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn assert_fails(out: &Out, name: &str, detail: &str, fix: &str) {
    assert_eq!(out.code, 1, "{out:?}");
    let check = out.check(name);
    assert_eq!(check["status"], "fail", "{check}");
    let text = check["detail"].as_str().unwrap_or_default();
    assert!(
        text.contains(detail),
        "{name} detail {text:?} lacks {detail:?}"
    );
    let text = check["fix"].as_str().unwrap_or_default();
    assert!(text.contains(fix), "{name} fix {text:?} lacks {fix:?}");
    assert!(
        out.stdout.contains(&format!("\"name\": \"{name}\"")),
        "{}",
        out.stdout
    );
}

#[test]
fn a_healthy_setup_passes_every_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mask = mask(DOMAIN, 0);
    let ca = write_private(dir.path(), "ca.pem", &mask.cert_pem);
    let dc = fake_dc();
    let (relay, _) = Relay::start_local_on_free_port(|port| config(port, mask.addr, dc.addr));
    let config = relay.config_path.to_path_buf();

    let out = doctor(&config, &ca, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    for name in ["config", "mask", "clock", "dc", "admin", "metrics"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("ok {name}: "))),
            "{name} not ok: {}",
            out.stdout
        );
    }
    for name in ["public_host", "socks5", "xdp", "crowdsec"] {
        assert!(
            out.stdout.contains(&format!("skip {name}: ")),
            "{name}: {}",
            out.stdout
        );
    }

    // The JSON report's stable shape.
    let out = doctor(&config, &ca, &["--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let report = out.json();
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().expect("checks array");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "config",
            "mask",
            "clock",
            "dc",
            "socks5",
            "xdp",
            "admin",
            "metrics",
            "public_host",
            "crowdsec"
        ]
    );
    for check in checks {
        let object = check.as_object().expect("check object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["detail", "fix", "name", "status"], "{check}");
        assert!(
            ["ok", "skip"].contains(&check["status"].as_str().unwrap_or_default()),
            "{check}"
        );
        assert!(check["fix"].is_null(), "{check}");
    }
    drop(relay);
}

#[test]
fn each_broken_part_fails_its_own_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = mask(DOMAIN, 0);
    let ca = write_private(dir.path(), "ca.pem", &good.cert_pem);
    let dc = fake_dc();

    // A mask whose certificate is for another name.
    let other = mask("other.example", 0);
    let other_ca = write_private(dir.path(), "other.pem", &other.cert_pem);
    let file = write_private(
        dir.path(),
        "other.toml",
        config(443, other.addr, dc.addr).as_bytes(),
    );
    let out = doctor(&file, &other_ca, &["--json"]);
    assert_fails(
        &out,
        "mask",
        "not valid for mask.example",
        "pick a mask that serves mask.example",
    );
    assert_eq!(out.check("clock")["status"], "skip");

    // A mask whose Date is an hour ahead of this host.
    let skewed = mask(DOMAIN, 3600);
    let skewed_ca = write_private(dir.path(), "skewed.pem", &skewed.cert_pem);
    let file = write_private(
        dir.path(),
        "skewed.toml",
        config(443, skewed.addr, dc.addr).as_bytes(),
    );
    let out = doctor(&file, &skewed_ca, &["--json"]);
    assert_eq!(out.check("mask")["status"], "ok", "{out:?}");
    assert_fails(
        &out,
        "clock",
        "behind the mask's Date by 36",
        "synchronise the clock",
    );

    // A DC on a closed port.
    let file = write_private(
        dir.path(),
        "dc.toml",
        config(443, good.addr, closed_port()).as_bytes(),
    );
    let out = doctor(&file, &ca, &["--json"]);
    assert_fails(&out, "dc", "no address answers for DC 1", "reach Telegram");

    // No relay running: admin and metrics say so.
    let file = write_private(
        dir.path(),
        "stopped.toml",
        format!(
            "{}\n[admin]\nsocket = {:?}\n[metrics]\nlisten = \"{}\"\n",
            config(443, good.addr, dc.addr),
            dir.path().join("admin.sock").display().to_string(),
            closed_port()
        )
        .as_bytes(),
    );
    let out = doctor(&file, &ca, &["--json"]);
    assert_fails(&out, "admin", "not running", "is relay running?");
    assert_fails(&out, "metrics", "refused", "is relay running?");
    assert_eq!(out.check("dc")["status"], "ok", "{out:?}");
    // The text form: one line per check, the fix on the failing ones.
    let text = doctor(&file, &ca, &[]);
    assert_eq!(text.code, 1);
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("FAIL admin: ") && l.contains("; fix: is relay running?")),
        "{}",
        text.stdout
    );

    // An unreadable config file: the other checks are skipped.
    let missing = dir.path().join("missing.toml");
    let out = doctor(&missing, &ca, &["--json"]);
    assert_fails(&out, "config", "missing.toml", "make");
    assert_eq!(out.check("mask")["status"], "skip");
}

/// The check `name` passed and its detail contains `detail`.
fn assert_ok(out: &Out, name: &str, detail: &str) {
    let check = out.check(name);
    assert_eq!(check["status"], "ok", "{check}");
    let text = check["detail"].as_str().unwrap_or_default();
    assert!(
        text.contains(detail),
        "{name} detail {text:?} lacks {detail:?}"
    );
}

#[test]
fn socks5_failures_name_the_step_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mask = mask(DOMAIN, 0);
    let ca = write_private(dir.path(), "ca.pem", &mask.cert_pem);
    let dc = fake_dc();
    let password = write_private(dir.path(), "socks.pass", b"right\n");
    let with_socks = |name: &str, socks: SocketAddr| {
        let text = format!(
            "{}\n[upstream]\nsocks5 = \"{socks}\"\nsocks5_username = \"relay\"\n\
             socks5_password_file = {:?}\n",
            config(443, mask.addr, dc.addr),
            password.display().to_string()
        );
        write_private(dir.path(), name, text.as_bytes())
    };
    let credentials = Some(("relay".to_owned(), "right".to_owned()));

    let good = SocksServer::start(Behaviour {
        credentials: credentials.clone(),
        reply: 0,
    });
    let out = doctor(&with_socks("good.toml", good.addr), &ca, &["--json"]);
    assert_ok(&out, "socks5", "opened a tunnel to DC 2");
    assert_ok(&out, "dc", "through SOCKS5 proxy");
    assert!(
        good.targets().contains(&dc.addr),
        "the proxy was asked for the DC: {:?}",
        good.targets()
    );

    let strict = SocksServer::start(Behaviour {
        credentials: Some(("relay".to_owned(), "other".to_owned())),
        reply: 0,
    });
    let out = doctor(&with_socks("auth.toml", strict.addr), &ca, &["--json"]);
    assert_fails(
        &out,
        "socks5",
        "refused the username/password",
        "socks5_username and socks5_password_file",
    );

    let refusing = SocksServer::start(Behaviour {
        credentials,
        reply: 2,
    });
    let out = doctor(&with_socks("refused.toml", refusing.addr), &ca, &["--json"]);
    assert_fails(
        &out,
        "socks5",
        "refused CONNECT",
        "CONNECT to Telegram's DC addresses",
    );
    assert_eq!(out.check("dc")["status"], "fail", "{out:?}");

    let out = doctor(&with_socks("down.toml", closed_port()), &ca, &["--json"]);
    assert_fails(
        &out,
        "socks5",
        "connecting failed",
        "start the SOCKS5 proxy",
    );
}

#[test]
fn crowdsec_check_takes_the_key_and_the_machine_login() {
    const NAME: &str = "crowdsec_check_takes_the_key_and_the_machine_login";
    let Some(bins) = binaries_or_skip(NAME) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mask = mask(DOMAIN, 0);
    let ca = write_private(dir.path(), "ca.pem", &mask.cert_pem);
    let dc = fake_dc();
    let lapi = Lapi::start(&bins, None, &format!("127.0.0.1:{}", free_port()));
    lapi.add_bouncer("relay-doctor", "doctor-key-0123456789");
    lapi.add_machine("relay-doctor", "machine-password-0123456789");
    let key = write_private(dir.path(), "key", b"doctor-key-0123456789\n");
    let good_password = write_private(dir.path(), "pw", b"machine-password-0123456789\n");
    let bad = write_private(dir.path(), "bad", b"wrong-0123456789\n");
    let with_lapi = |name: &str, url: &str, key: &Path, password: &Path| {
        let text = format!(
            "{}\n[crowdsec]\nlapi_url = \"{url}\"\nbouncer_key_file = {:?}\n\
             machine_id = \"relay-doctor\"\npassword_file = {:?}\n",
            config(443, mask.addr, dc.addr),
            key.display().to_string(),
            password.display().to_string()
        );
        write_private(dir.path(), name, text.as_bytes())
    };

    let out = doctor(
        &with_lapi("good.toml", &lapi.url, &key, &good_password),
        &ca,
        &["--json"],
    );
    assert_ok(
        &out,
        "crowdsec",
        "accepts the bouncer key and the machine login",
    );

    let out = doctor(
        &with_lapi("key.toml", &lapi.url, &bad, &good_password),
        &ca,
        &["--json"],
    );
    assert_fails(&out, "crowdsec", "bouncer key check", "cscli bouncers add");

    let out = doctor(
        &with_lapi("login.toml", &lapi.url, &key, &bad),
        &ca,
        &["--json"],
    );
    assert_fails(&out, "crowdsec", "machine login", "cscli machines list");

    let down = format!("http://{}/", closed_port());
    let out = doctor(
        &with_lapi("down.toml", &down, &key, &good_password),
        &ca,
        &["--json"],
    );
    assert_fails(&out, "crowdsec", "bouncer key check", "start the LAPI");
}

#[test]
fn xdp_check_tries_the_interface_or_asks_the_running_relay() {
    const NAME: &str = "xdp_check_tries_the_interface_or_asks_the_running_relay";
    if !relay_tests::privilege::privileged(NAME) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mask = mask(DOMAIN, 0);
    let ca = write_private(dir.path(), "ca.pem", &mask.cert_pem);
    let pair = NetPair::new("doctor", 1);
    let admin = dir.path().join("admin.sock").display().to_string();
    let with_xdp = |name: &str, interface: &str, mode: &str| {
        let text = format!(
            r#"
[server]
listen = ["{SERVER_V4}:4443"]
modes = ["tls"]

[xdp]
interfaces = ["{interface}"]
mode = "{mode}"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"

[admin]
socket = {admin:?}

[[users]]
name = "alice"
secret = "00112233445566778899aabbccddeeff"
"#,
            mask = mask.addr
        );
        write_private(dir.path(), name, text.as_bytes())
    };
    let ns = Some(pair.server_ns.as_str());

    // No relay: the program is attached for a moment in the mode relay would use.
    let auto = with_xdp("auto.toml", &pair.server_if, "auto");
    let out = doctor_in(ns, &auto, &ca, &["--json"]);
    assert_ok(
        &out,
        "xdp",
        &format!(
            "relay not running; would attach {} tc (veth)",
            pair.server_if
        ),
    );
    assert!(pair.server_xdp().is_none(), "the trial detached");
    let native = with_xdp("native.toml", &pair.server_if, "native");
    let out = doctor_in(ns, &native, &ca, &["--json"]);
    assert_ok(&out, "xdp", &format!("{} native (veth)", pair.server_if));
    assert!(pair.server_xdp().is_none(), "the trial detached");

    let unknown = with_xdp("unknown.toml", "relaynosuch0", "auto");
    let out = doctor_in(ns, &unknown, &ca, &["--json"]);
    assert_fails(
        &out,
        "xdp",
        "unknown interface `relaynosuch0`",
        "[xdp] interfaces",
    );

    // A running relay is asked what it attached.
    let text = std::fs::read_to_string(&native).expect("read config");
    let relay = Relay::start(&pair.server_ns, &text);
    let out = doctor_in(ns, &native, &ca, &["--json"]);
    assert_ok(
        &out,
        "xdp",
        &format!("relay has attached {} native (veth)", pair.server_if),
    );
    drop(relay);
}

#[test]
fn middle_mode_checks_the_listed_middle_proxies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mask = mask(DOMAIN, 0);
    let ca = write_private(dir.path(), "ca.pem", &mask.cert_pem);
    // Any TCP listener answers a connect check; the fake DC is one.
    let me = fake_dc();
    let dead = closed_port();
    let secret = write_private(dir.path(), "proxy-secret", &[7u8; 128]);
    let with_list = |name: &str, list: &str| {
        let list_file = write_private(dir.path(), &format!("{name}.list"), list.as_bytes());
        let text = format!(
            r#"
[server]
listen = ["127.0.0.1:443"]
modes = ["tls"]

[xdp]
mode = "off"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"

[upstream]
mode = "middle"

[upstream.middle]
config_file = {list:?}
secret_file = {secret:?}

[[users]]
name = "alice"
secret = "00112233445566778899aabbccddeeff"
"#,
            mask = mask.addr,
            list = list_file.display().to_string(),
            secret = secret.display().to_string(),
        );
        write_private(dir.path(), name, text.as_bytes())
    };

    let good = with_list(
        "good.toml",
        &format!(
            "default 2;\nproxy_for 2 {me};\nproxy_for 4 {me};\n",
            me = me.addr
        ),
    );
    let out = doctor(&good, &ca, &["--json"]);
    assert_ok(&out, "dc", "middle proxies of DC 2");
    let detail = out.check("dc")["detail"].to_string();
    assert!(detail.contains(&format!("via {}", me.addr)), "{detail}");

    let broken = with_list(
        "dead.toml",
        &format!(
            "default 2;\nproxy_for 2 {me};\nproxy_for 4 {dead};\n",
            me = me.addr
        ),
    );
    let out = doctor(&broken, &ca, &["--json"]);
    assert_fails(&out, "dc", "middle proxies of DC 4", "reach Telegram");
}
