//! The operator CLI against a real daemon: relay-ctl on loopback (`[xdp] mode = "off"`), every
//! admin subcommand with and without `--json`, exit statuses, a ban made by the misuse loop,
//! a 100,000-line netset import, and the audit log.
//!
//! Every test starts its own relay on its own port and admin socket, so they run in parallel.

use std::{
    io::Write as _,
    net::{Shutdown, TcpStream},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use relay_ctl::config::Config;
use relay_tests::relay::{Relay, relay_ctl_bin};
use relay_tests::util::free_port;
use serde_json::Value;

fn config(port: u16, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["secure"]

[xdp]
mode = "off"

[limits]
syn_limit = false

[[users]]
name = "alice"
secret = "00112233445566778899aabbccddeeff"

[[users]]
name = "bob"
secret = "0123456789abcdef0123456789abcdef"
{extra}
"#
    )
}

/// Starts relay-ctl on a free loopback port.
fn start(extra: &str) -> (Relay, u16) {
    Relay::start_local_on_free_port(|port| config(port, extra))
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "{self:?}");
        self.stdout
    }

    fn json(self) -> Value {
        let text = self.ok();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

fn cli_with(command: &mut Command, args: &[&str]) -> Out {
    let out = command
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run relay-ctl");
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ relay-ctl {}\n{out:?}", args.join(" "));
    out
}

/// `relay-ctl ARGS --config <the relay's config>`: the socket comes from its `[admin]`.
fn cli(relay: &Relay, args: &[&str]) -> Out {
    // The admin options belong to the subcommand group: they go after it.
    let mut all: Vec<&str> = args.to_vec();
    let config = relay.config_path.to_str().expect("utf-8 path");
    all.extend(["--config", config]);
    cli_with(&mut Command::new(relay_ctl_bin()), &all)
}

fn admin_socket(relay: &Relay) -> PathBuf {
    Config::load(&relay.config_path)
        .expect("relay config")
        .admin
        .socket
}

#[test]
fn block_and_allow_round_trip_in_tables_and_json() {
    let (relay, _) = start("");
    assert_eq!(
        cli(
            &relay,
            &[
                "block",
                "add",
                "192.0.2.7/24",
                "--ttl",
                "2h",
                "--reason",
                "scanner"
            ]
        )
        .ok(),
        "blocked 192.0.2.0/24 for 2h\n"
    );
    assert_eq!(
        cli(
            &relay,
            &["block", "add", "2001:db8:1234:5678::/64", "--json"]
        )
        .json()["kind"],
        "done"
    );
    let table = cli(&relay, &["block", "list"]).ok();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CIDR  "), "{table}");
    let v4 = lines
        .iter()
        .find(|l| l.starts_with("192.0.2.0/24 "))
        .expect("v4 row");
    let v6 = lines
        .iter()
        .find(|l| l.starts_with("2001:db8:1234:5678::/64 "))
        .expect("v6 row");
    assert!(v4.contains("operator") && v4.contains("scanner"), "{table}");
    // Columns line up across IPv4 and IPv6 rows.
    assert_eq!(v4.find("operator"), v6.find("operator"), "{table}");
    assert_eq!(lines[0].find("SOURCE"), v4.find("operator"), "{table}");

    let listed = cli(&relay, &["block", "list", "--json"]).json();
    assert_eq!(listed["kind"], "prefixes");
    let entries = listed["entries"].as_array().expect("entries");
    let v4 = entries
        .iter()
        .find(|e| e["cidr"] == "192.0.2.0/24")
        .expect("v4 entry");
    assert_eq!(v4["source"], "operator");
    assert_eq!(v4["reason"], "scanner");
    let left = v4["expires_in_secs"].as_u64().expect("timed block");
    assert!((7000..=7200).contains(&left), "{left}");

    assert_eq!(
        cli(&relay, &["block", "rm", "2001:db8:1234:5678::/64"]).ok(),
        "unblocked 2001:db8:1234:5678::/64\n"
    );
    let again = cli(&relay, &["block", "rm", "2001:db8:1234:5678::/64"]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.starts_with("error: "), "{again:?}");
    let again_json = cli(
        &relay,
        &["block", "rm", "2001:db8:1234:5678::/64", "--json"],
    );
    assert_eq!(again_json.code, 1);
    let error: Value = serde_json::from_str(&again_json.stdout).expect("error as JSON");
    assert_eq!(error["status"], "error");
    assert_eq!(error["kind"], "not_found");

    assert_eq!(
        cli(&relay, &["allow", "add", "198.51.100.0/24"]).ok(),
        "allowlisted 198.51.100.0/24\n"
    );
    let allow = cli(&relay, &["allow", "list"]).ok();
    assert!(
        allow.lines().any(|l| l.starts_with("198.51.100.0/24 ")),
        "{allow}"
    );
    let allow_json = cli(&relay, &["allow", "list", "--json"]).json();
    assert!(
        allow_json["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["cidr"] == "198.51.100.0/24")
    );
    assert_eq!(
        cli(&relay, &["allow", "rm", "198.51.100.0/24", "--json"]).json()["kind"],
        "done"
    );
    let allow_json = cli(&relay, &["allow", "list", "--json"]).json();
    assert!(
        !allow_json["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["cidr"] == "198.51.100.0/24")
    );

    // Usage errors never reach the daemon.
    assert_eq!(cli(&relay, &["block", "add", "192.0.2.0/33"]).code, 2);
    assert_eq!(
        cli(&relay, &["block", "add", "192.0.2.1", "--ttl", "soon"]).code,
        2
    );

    let log = relay.stop();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("relay::audit")).collect();
    assert!(
        audit
            .iter()
            .any(|l| l.contains("uid=0") && l.contains(r#"request=block add "192.0.2.0/24""#)),
        "{log}"
    );
    assert!(
        audit.iter().any(|l| l.contains("result=\"error\"")),
        "failed removal audited: {log}"
    );
    assert!(
        !audit.iter().any(|l| l.contains("block list")),
        "reads audited: {log}"
    );
}

#[test]
fn users_round_trip() {
    let (relay, _) = start("");
    let table = cli(&relay, &["users", "list"]).ok();
    assert!(table.starts_with("NAME "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alice ") && l.contains("enabled"))
    );
    let json = cli(&relay, &["users", "list", "--json"]).json();
    let names: Vec<&str> = json["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    let show = cli(&relay, &["users", "show", "alice"]).ok();
    assert!(show.starts_with("name         alice\n"), "{show}");
    assert!(show.contains("status       enabled\n"), "{show}");
    assert_eq!(
        cli(&relay, &["users", "show", "bob", "--json"]).json()["users"][0]["name"],
        "bob"
    );
    let missing = cli(&relay, &["users", "show", "mallory"]);
    assert_eq!(missing.code, 1, "{missing:?}");

    assert_eq!(
        cli(&relay, &["users", "disable", "bob"]).ok(),
        "user bob disabled\n"
    );
    let bob = cli(&relay, &["users", "show", "bob", "--json"]).json();
    assert_eq!(bob["users"][0]["enabled"], false);
    assert!(
        cli(&relay, &["users", "list"])
            .ok()
            .lines()
            .any(|l| l.starts_with("bob ") && l.contains("disabled")),
    );
    assert_eq!(
        cli(&relay, &["users", "enable", "bob", "--json"]).json()["kind"],
        "done"
    );
    let bob = cli(&relay, &["users", "show", "bob", "--json"]).json();
    assert_eq!(bob["users"][0]["enabled"], true);
    assert_eq!(cli(&relay, &["users", "disable", "mallory"]).code, 1);
}

#[test]
fn stats_human_and_json() {
    let (relay, _) = start("");
    let text = cli(&relay, &["stats"]).ok();
    assert!(text.starts_with("version "), "{text}");
    assert!(text.contains("enforcement  userspace"), "{text}");
    let json = cli(&relay, &["stats", "--json"]).json();
    assert_eq!(json["kind"], "stats");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["users"].as_array().map(Vec::len), Some(2));
}

#[test]
fn bans_made_by_the_misuse_loop_are_listed_and_lifted() {
    let (relay, port) = start("\n[misuse]\nconnections = 2\n");
    assert_eq!(cli(&relay, &["bans", "list"]).ok(), "no bans\n");
    assert_eq!(
        cli(&relay, &["bans", "list", "--json"]).json(),
        serde_json::json!({"kind": "bans", "bans": []})
    );
    // A connection flood from 127.0.0.1 crosses `connections = 2`.
    let banned = |relay: &Relay| {
        cli(relay, &["bans", "list", "--json"]).json()["bans"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["addr"] == "127.0.0.1"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !banned(&relay) {
        assert!(Instant::now() < deadline, "no ban:\n{}", relay.log());
        for _ in 0..3 {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"garbage");
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = cli(&relay, &["bans", "list"]).ok();
    assert!(table.starts_with("ADDR "), "{table}");
    // A connection-rate ban drops (only a prober's offences are fronted).
    assert!(
        table.lines().any(|l| l.starts_with("127.0.0.1 ")
            && l.contains(" conn_rate ")
            && l.contains(" drop ")),
        "{table}"
    );
    assert_eq!(
        cli(&relay, &["bans", "rm", "127.0.0.1"]).ok(),
        "lifted the ban on 127.0.0.1\n"
    );
    assert!(!banned(&relay));
    assert_eq!(cli(&relay, &["bans", "rm", "127.0.0.1"]).code, 1);
    let clear = cli(&relay, &["bans", "clear", "--json"]).json();
    assert!(
        clear["kind"] == "done" || clear["kind"] == "count",
        "{clear}"
    );
}

#[test]
fn block_import_warns_about_private_ranges_and_reports_bad_lines() {
    let (relay, _) = start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("level1.netset");
    std::fs::write(
        &file,
        "# firehol_level1\n203.0.113.0/24\n10.0.0.0/8 # RFC 1918\nnot-an-ip\n2001:db8::/32\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8 path");
    let out = cli(&relay, &["block", "import", path]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, format!("added 3 of 3 entries from {path}\n"));
    assert!(
        out.stderr
            .contains("line 4: `not-an-ip` is not an IPv4/IPv6 address or CIDR"),
        "{out:?}"
    );
    assert!(out.stderr.contains("line 3: 10.0.0.0/8"), "{out:?}");
    assert!(out.stderr.contains("--skip-private"), "{out:?}");
    let listed = cli(&relay, &["block", "list", "--json"]).json();
    let cidrs: Vec<&str> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["cidr"].as_str())
        .collect();
    for cidr in ["203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32"] {
        assert!(cidrs.contains(&cidr), "{cidr} missing: {cidrs:?}");
    }
    let strict = cli(&relay, &["block", "import", path, "--strict"]);
    assert_eq!(strict.code, 1, "{strict:?}");
    let missing = cli(&relay, &["block", "import", "/nonexistent.netset"]);
    assert_eq!(missing.code, 2, "{missing:?}");
}

#[test]
fn block_import_of_a_100000_line_netset() {
    let (relay, _) = start("");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.netset");
    let mut text = String::from("# 100,000 distinct entries\n");
    for i in 0..100_000u32 {
        // Public space: /32s in 11-12.x.x.x, /24s in 60-61.x.x.0, IPv6 /48s in 2001:db8::/32.
        let [_, a, b, c] = i.to_be_bytes();
        match i % 10 {
            0 => text.push_str(&format!("2001:db8:{:x}::/48\n", i / 10)),
            5 => text.push_str(&format!("{}.{b}.{c}.0/24 # subnet\n", 60 + a)),
            _ => text.push_str(&format!("{}.{b}.{c}.7\n", 11 + a)),
        }
    }
    std::fs::write(&file, text).expect("write");
    let path = file.to_str().expect("utf-8 path");
    let started = Instant::now();
    let out = cli(&relay, &["block", "import", path, "--json"]);
    let took = started.elapsed();
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(out.code, 0, "{out:?}");
    let added = json["changed"].as_u64().expect("count");
    assert_eq!(added, 100_000, "{json}");
    assert!(took < Duration::from_secs(60), "import took {took:?}");
    // The daemon still answers promptly, and lists them all.
    let started = Instant::now();
    cli(&relay, &["stats"]).ok();
    assert!(started.elapsed() < Duration::from_secs(5));
    let listed = cli(&relay, &["block", "list", "--json"]).json();
    let count = listed["entries"].as_array().map_or(0, Vec::len) as u64;
    assert!(count >= added, "{count} listed, {added} added");
}

#[test]
fn unreachable_or_forbidden_daemon_exit_statuses() {
    let (relay, _) = start("");
    let socket = admin_socket(&relay);
    let socket_arg = socket.to_str().expect("utf-8 path").to_owned();
    if nix::unistd::geteuid().is_root() {
        // Another user may not use the 0600 socket.
        let mut command = Command::new(relay_ctl_bin());
        command.uid(65534).gid(65534);
        let denied = cli_with(&mut command, &["stats", "--socket", &socket_arg]);
        assert_eq!(denied.code, 4, "{denied:?}");
        assert!(denied.stderr.contains("permission denied"), "{denied:?}");
        assert!(denied.stderr.contains("sudo"), "{denied:?}");
    } else {
        eprintln!("SKIP permission part: not root");
    }
    relay.stop();
    assert!(!socket.exists(), "socket left behind");
    let down = cli_with(
        &mut Command::new(relay_ctl_bin()),
        &["bans", "list", "--socket", &socket_arg],
    );
    assert_eq!(down.code, 3, "{down:?}");
    assert_eq!(
        down.stderr,
        format!("error: relay-ctl is not running (no daemon listening on {socket_arg})\n")
    );
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let (relay, _) = start("");
    let socket = admin_socket(&relay);
    let port = free_port();
    let text = format!(
        "{}\n[admin]\nsocket = {:?}\n",
        config(port, ""),
        socket.display().to_string()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("second.toml");
    std::fs::write(&file, text).expect("write");
    let mut child = Command::new(relay_ctl_bin())
        .args(["run", "--config"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("second relay-ctl kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "another relay-ctl is running on {}",
            socket.display()
        )),
        "{stderr}"
    );
    // The first daemon is unharmed.
    cli(&relay, &["stats"]).ok();
}
