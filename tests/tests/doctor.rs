//! `relay-ctl doctor` against a healthy local setup (an HTTPS mask with a certificate for
//! `[tls] domain` and a correct `Date`, fake DCs for ids 1 to 5, a running relay), then with
//! one thing broken at a time: each failure names its check and says what to do.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use relay_tests::{
    fake_dc::FakeDc,
    https_mask::HttpsMask,
    relay::{Relay, relay_ctl_bin},
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
    let out = Command::new(relay_ctl_bin())
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
    assert!(out.stdout.contains("skip public_host: "), "{}", out.stdout);

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
            "admin",
            "metrics",
            "public_host"
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
