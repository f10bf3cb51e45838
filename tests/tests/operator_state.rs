//! Operator state and per-user limits against a real daemon on loopback (`[xdp] mode = "off"`):
//!
//! 1. kill -9 and restart: operator blocks and allowlist entries, a ban made by the misuse loop
//!    (with its remaining TTL), an operator-disabled user and quota usage all survive.
//! 2. Per-user limits (quota, max_connections, max_unique_ips, connection_rate, expires,
//!    enabled) enforced against the real clients (Telethon, kurigram) through relay to a fake
//!    DC.
//! 3. SIGHUP adds a user, who is admitted on the existing listener, while a 32 MiB transfer of
//!    another user continues byte-exact; a broken config on SIGHUP is rejected with its file and
//!    line, and the running config keeps working.
//! 4. A /24 of bad clients, each under its own threshold, is banned as a prefix: enforced for
//!    every address of it, listed, kept across a restart, lifted by `bans rm PREFIX`.
//!
//! Every test runs its own relay on its own port, admin socket and state dir; every wait is
//! bounded. Tests with the Python clients are skipped with a message when the venv is missing
//! (and fail under `CI=true`); no privileges are needed.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use relay_proto::Secret;
use relay_tests::util::wait_until;
use relay_tests::{
    fake_dc::FakeDc,
    mtproto_client::{ClientOptions, MtprotoClient, Transport as RustTransport},
    pyclient::{self, ClientRun, Echo, Transport},
    relay::{Relay, relay_ctl_bin},
};
use serde_json::Value;

const DOMAIN: &str = "example.com";
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
/// A second loopback source address (all of 127/8 is local on Linux).
const OTHER_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const REFUSED: &str = "connection refused by user limit";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Starts relay-ctl on a free loopback port with the config `text(port)`; returns the relay,
/// its port and its config (for a restart on the same port).
fn start_on_free_port(text: impl Fn(u16) -> String) -> (Relay, u16, String) {
    let (relay, port) = Relay::start_local_on_free_port(&text);
    (relay, port, text(port))
}

/// Starts relay-ctl again with the same config (so the same port): retried twice, half a
/// second apart, in case a client socket of another test holds the port for a moment.
fn restart(config: &str) -> Relay {
    for attempt in 1.. {
        match std::panic::catch_unwind(AssertUnwindSafe(|| Relay::start_local(config))) {
            Ok(relay) => return relay,
            Err(e) if attempt >= 3 => std::panic::resume_unwind(e),
            Err(_) => {
                eprintln!("relay-ctl did not restart (attempt {attempt}); retrying");
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
    unreachable!()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random user secret (32 hex digits). Never starting with `dd` or `ee`: Telethon
/// strips such a prefix from any secret (`TcpMTProxy.normalize_secret`), so it could not use
/// the plain secret with its classic transports.
fn new_secret() -> String {
    let mut secret = rand::random::<[u8; 16]>();
    if secret[0] == 0xdd || secret[0] == 0xee {
        secret[0] ^= 1;
    }
    hex(&secret)
}

fn secret_bytes(hex_secret: &str) -> Secret {
    hex_secret.parse().expect("secret")
}

/// The value of `key=` in a log line, unquoted (`user="bob"` and `user=bob` both give `bob`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let needle = format!(" {key}=");
    let rest = &line[line.find(&needle)? + needle.len()..];
    Some(match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next().unwrap_or_default(),
        None => rest.split_whitespace().next().unwrap_or_default(),
    })
}

/// Log lines containing `message` whose `user` field is `user`.
fn user_lines<'a>(log: &'a str, message: &str, user: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(message) && field(l, "user") == Some(user))
        .collect()
}

/// `connection refused by user limit` lines for `user` with `reason`.
fn refusals(log: &str, user: &str, reason: &str) -> usize {
    user_lines(log, REFUSED, user)
        .iter()
        .filter(|l| field(l, "reason") == Some(reason))
        .count()
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
        assert_eq!(
            self.code, 0,
            "relay-ctl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    fn json(self) -> Value {
        let text = self.ok();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

/// `relay-ctl ARGS --config <the relay's config>` (the admin socket comes from its `[admin]`).
fn cli(relay: &Relay, args: &[&str]) -> Out {
    let config = relay.config_path.to_str().expect("utf-8 path");
    let out = Command::new(relay_ctl_bin())
        .args(args)
        .args(["--config", config])
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

/// `relay-ctl users show NAME --json`, the user object.
fn user_info(relay: &Relay, name: &str) -> Value {
    let mut reply = cli(relay, &["users", "show", name, "--json"]).json();
    reply["users"][0].take()
}

fn bytes_total(user: &Value) -> u64 {
    user["bytes_up"].as_u64().expect("bytes_up") + user["bytes_down"].as_u64().expect("bytes_down")
}

fn rejections(user: &Value, reason: &str) -> u64 {
    user["rejections"][reason].as_u64().unwrap_or(0)
}

/// A TCP connection to `to` from `from` (port chosen by the kernel).
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = relay_tests::util::bound_socket(from)?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// One user in a config.
struct UserSpec {
    name: &'static str,
    secret: String,
    /// Extra `key = value` lines for the `[[users]]` table.
    extra: &'static str,
}

impl UserSpec {
    fn new(name: &'static str, extra: &'static str) -> UserSpec {
        UserSpec {
            name,
            secret: new_secret(),
            extra,
        }
    }

    fn toml(&self) -> String {
        format!(
            "\n[[users]]\nname = \"{}\"\nsecret = \"{}\"\n{}\n",
            self.name, self.secret, self.extra
        )
    }
}

/// A config for all three modes on `port`, DC 2 at the fake DC, fronting off (a failed or
/// refused connection is closed), `extra` sections, then the users.
fn config(port: u16, dc: SocketAddr, extra: &str, users: &[UserSpec]) -> String {
    let mut text = format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["classic", "secure", "tls"]

[xdp]
mode = "off"

[tls]
domain = "{DOMAIN}"
fronting = false

[upstream]
default_dc = 2
connect_timeout_secs = 5

[upstream.dc]
"2" = ["{dc}"]
{extra}
"#
    );
    for user in users {
        text.push_str(&user.toml());
    }
    text
}

/// A relay with some users, a fake DC and (optionally) the Python clients.
struct Bench {
    test: &'static str,
    python: Option<PathBuf>,
    dc: FakeDc,
    relay: Relay,
    port: u16,
    users: Vec<UserSpec>,
}

impl Bench {
    /// Starts the relay; `None` if the test needs Python and the venv is missing (skipped).
    fn start(
        test: &'static str,
        needs_python: bool,
        extra: &str,
        users: Vec<UserSpec>,
    ) -> Option<Bench> {
        let python = if needs_python {
            Some(pyclient::python(test)?)
        } else {
            None
        };
        let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
        let (relay, port, _) = start_on_free_port(|port| config(port, dc.addr, extra, &users));
        Some(Bench {
            test,
            python,
            dc,
            relay,
            port,
            users,
        })
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn python(&self) -> &Path {
        self.python.as_deref().expect("python")
    }

    fn secret(&self, user: &str) -> &str {
        &self
            .users
            .iter()
            .find(|u| u.name == user)
            .unwrap_or_else(|| panic!("no user {user}"))
            .secret
    }

    /// A Telethon run (`dd` secret for the randomized transport, plain otherwise).
    fn telethon(&self, user: &str, transport: Transport, sizes: &[usize]) -> ClientRun {
        self.telethon_from(user, transport, sizes, None)
    }

    fn telethon_from(
        &self,
        user: &str,
        transport: Transport,
        sizes: &[usize],
        from: Option<Ipv4Addr>,
    ) -> ClientRun {
        let secret = match transport {
            Transport::Randomized => format!("dd{}", self.secret(user)),
            Transport::Abridged | Transport::Intermediate => self.secret(user).to_owned(),
        };
        let mut echo = Echo::local(self.port, secret, 2, sizes);
        echo.op_timeout = Duration::from_secs(30);
        echo.deadline = Duration::from_secs(90);
        echo.local_addr = from.map(|a| a.to_string());
        echo.telethon(self.python(), transport)
    }

    /// A kurigram (fake TLS) run; sizes must be 24 + 16·k.
    fn kurigram(&self, user: &str, sizes: &[usize]) -> ClientRun {
        let secret = format!("ee{}{}", self.secret(user), hex(DOMAIN.as_bytes()));
        let mut echo = Echo::local(self.port, secret, 2, sizes);
        echo.op_timeout = Duration::from_secs(30);
        echo.deadline = Duration::from_secs(90);
        echo.kurigram(self.python())
    }

    /// Runs `client`, which must echo every size, with one new DC session carrying the bytes.
    fn expect_echo(&self, label: &str, sizes: &[usize], client: impl FnOnce() -> ClientRun) {
        let before = self.dc.sessions().len();
        let run = client();
        assert!(
            run.ok() && run.echoed() == sizes,
            "{}: {label}: client failed: {}\nrelay log:\n{}",
            self.test,
            run.describe(),
            self.relay.log()
        );
        let payload: u64 = sizes.iter().map(|&s| s as u64).sum();
        // The fake DC counts a chunk after echoing it, so its count may trail the client.
        wait_until(Duration::from_secs(10), || {
            let all = self.dc.sessions();
            (all.len() == before + 1 && all[before].bytes >= payload).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: {label}: expected one new DC session with >= {payload} bytes, DC saw {:?}",
                self.test,
                &self.dc.sessions()[before..]
            )
        });
        eprintln!(
            "{}: {label}: echoed {sizes:?} in {:.1?}",
            self.test, run.elapsed
        );
    }

    /// Runs `client` for `user`, which must fail; the relay must log one more refusal of `user`
    /// for `reason`, and the fake DC must get no session.
    fn expect_refused(
        &self,
        label: &str,
        user: &str,
        reason: &str,
        client: impl FnOnce() -> ClientRun,
    ) -> ClientRun {
        let sessions = self.dc.sessions().len();
        let before = refusals(&self.relay.log(), user, reason);
        let run = client();
        assert!(
            !run.ok() && !run.timed_out && run.json.is_some(),
            "{}: {label}: the client should have failed: {}\nrelay log:\n{}",
            self.test,
            run.describe(),
            self.relay.log()
        );
        wait_until(Duration::from_secs(10), || {
            (refusals(&self.relay.log(), user, reason) == before + 1).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: {label}: no `{REFUSED}` line for user {user} with reason {reason}\nclient: {}\nrelay log:\n{}",
                self.test,
                run.describe(),
                self.relay.log()
            )
        });
        // Give a wrongly relayed connection time to show up at the DC.
        thread::sleep(Duration::from_millis(300));
        assert_eq!(
            self.dc.sessions().len(),
            sessions,
            "{}: {label}: a refused client reached the DC: {:?}",
            self.test,
            &self.dc.sessions()[sessions..]
        );
        eprintln!(
            "{}: {label}: refused ({reason}) as expected: {} in {:.1?}",
            self.test,
            run.error().unwrap_or("echo mismatch"),
            run.elapsed
        );
        run
    }

    /// Waits until the relay logged `relay ended` for `user` at least `count` times.
    fn wait_relay_ended(&self, user: &str, count: usize) -> Vec<String> {
        wait_until(Duration::from_secs(15), || {
            let log = self.relay.log();
            let ended: Vec<String> = user_lines(&log, "relay ended", user)
                .into_iter()
                .map(str::to_owned)
                .collect();
            (ended.len() >= count).then_some(ended)
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: the relay never logged `relay ended` #{count} for {user}:\n{}",
                self.test,
                self.relay.log()
            )
        })
    }

    fn finish(self) {
        let log = self.relay.stop();
        assert!(
            !log.contains(" ERROR ") && !log.contains("panicked"),
            "{}: relay logged an error:\n{log}",
            self.test
        );
    }
}

/// A Rust client connection for `secret` (`dd`, or fake TLS when `tls`), from `from`.
fn rust_client(
    addr: SocketAddr,
    secret: &str,
    tls: bool,
    from: IpAddr,
) -> std::io::Result<MtprotoClient> {
    let transport = if tls {
        RustTransport::FakeTls {
            domain: DOMAIN.to_owned(),
        }
    } else {
        RustTransport::Secure
    };
    let options = ClientOptions::new(secret_bytes(secret), transport);
    let stream = connect_from(from, addr)?;
    MtprotoClient::handshake(stream, &options, &[])
}

/// Sends `size` random bytes and checks they come back.
fn rust_echo(client: &mut MtprotoClient, size: usize) -> Result<(), String> {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let payload: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
    client.send(&payload).map_err(|e| format!("send: {e}"))?;
    let mut got = vec![0u8; size];
    client
        .recv_exact(&mut got)
        .map_err(|e| format!("recv: {e}"))?;
    if got != payload {
        return Err("echo differs".to_owned());
    }
    Ok(())
}

/// The relay answers `client` with nothing but an end of stream (FIN or RST) within 10 s.
fn assert_closed_without_data(client: &mut MtprotoClient, what: &str) {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Sending may already fail if the relay reset the connection.
    let _ = client.send(&[0u8; 64]);
    let mut buf = [0u8; 64];
    match client.recv(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        Ok(n) => panic!("{what}: the relay sent {n} bytes"),
        Err(e) => panic!("{what}: expected the relay to close, got {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 and restart

/// Operator lists, a ban from the misuse loop, the operator's disable switch and quota usage
/// are all still there after `kill -9` and a restart with the same config.
#[test]
fn kill9_and_restart_keeps_lists_bans_switches_and_usage() {
    const TEST: &str = "kill9_and_restart_keeps_lists_bans_switches_and_usage";
    let state = tempfile::tempdir().expect("state tempdir");
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let users = [
        UserSpec::new("alice", "quota = \"10MiB\""),
        UserSpec::new("bob", ""),
    ];
    // Fixed admin socket and state dir, kept across the restart.
    let extra = format!(
        "\n[misuse]\nbad_secret = 3\nban_secs = 3600\naction = \"drop\"\n\n[admin]\nsocket = {:?}\n\n[state]\ndir = {:?}\n",
        state.path().join("admin.sock").display().to_string(),
        state.path().join("state").display().to_string(),
    );
    let started = Instant::now();
    let (relay, port, text) = start_on_free_port(|port| config(port, dc.addr, &extra, &users));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    // Operator changes: each is saved before the CLI gets its answer.
    assert_eq!(
        cli(
            &relay,
            &[
                "block",
                "add",
                "192.0.2.0/24",
                "--ttl",
                "1h",
                "--reason",
                "scanner"
            ]
        )
        .ok(),
        "blocked 192.0.2.0/24 for 1h\n"
    );
    cli(&relay, &["block", "add", "2001:db8:77::/48"]).ok();
    cli(&relay, &["allow", "add", "198.51.100.7"]).ok();
    assert_eq!(
        cli(&relay, &["users", "disable", "bob"]).ok(),
        "user bob disabled\n"
    );

    // A real ban: three handshakes with an unknown secret from 127.0.0.2 cross `bad_secret = 3`.
    let wrong = new_secret();
    for i in 0..3 {
        let mut client = rust_client(addr, &wrong, false, OTHER_SOURCE.into())
            .unwrap_or_else(|e| panic!("bad handshake {i}: {e}"));
        assert_closed_without_data(&mut client, "bad secret");
    }
    let banned = wait_until(Duration::from_secs(10), || {
        relay
            .log()
            .lines()
            .find(|l| l.contains("source banned") && l.contains("127.0.0.2"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no ban for 127.0.0.2:\n{}", relay.log()));
    assert_eq!(field(&banned, "reason"), Some("bad_secret"), "{banned}");

    // Real traffic for alice (quota 10 MiB): 100 KiB echoed, so usage > 0.
    let mut client = rust_client(
        addr,
        users[0].secret.as_str(),
        true,
        Ipv4Addr::LOCALHOST.into(),
    )
    .expect("alice connects");
    rust_echo(&mut client, 100 * KIB).expect("alice echo");
    client.shutdown_write().expect("shutdown");
    let _ = client.recv_to_end();
    drop(client);
    wait_until(Duration::from_secs(10), || {
        (!user_lines(&relay.log(), "relay ended", "alice").is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("alice's connection did not end:\n{}", relay.log()));

    let blocks_before = cli(&relay, &["block", "list", "--json"]).json();
    let allow_before = cli(&relay, &["allow", "list", "--json"]).json();
    let bans_before = cli(&relay, &["bans", "list", "--json"]).json();
    let alice_before = user_info(&relay, "alice");
    let used = bytes_total(&alice_before);
    assert!(
        used >= 2 * 100 * KIB as u64,
        "alice's usage after a 100 KiB echo: {alice_before}"
    );
    let ban_ttl_before = bans_before["bans"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["addr"] == "127.0.0.2"))
        .and_then(|b| b["expires_in_secs"].as_u64())
        .unwrap_or_else(|| panic!("ban on 127.0.0.2 with a TTL: {bans_before}"));
    assert!((3500..=3600).contains(&ban_ttl_before), "{bans_before}");

    // Bans and usage are saved every 10 s (operator changes at once): wait until the periodic
    // save has written alice's final usage (at most ~11 s), so kill -9 loses nothing it was
    // promised. The file is only read here to know when to pull the plug.
    let usage_file = state.path().join("state").join("usage.json");
    let saved = wait_until(Duration::from_secs(15), || {
        let text = std::fs::read_to_string(&usage_file).ok()?;
        let usage: Value = serde_json::from_str(&text).ok()?;
        let alice = &usage["alice"];
        let total = alice["bytes_up"].as_u64()? + alice["bytes_down"].as_u64()?;
        (total == used).then_some(())
    });
    assert!(
        saved.is_some(),
        "usage {used} not saved within 15 s: {:?}",
        std::fs::read_to_string(&usage_file)
    );

    // Operator changes made right before the kill: saved before the CLI got its answer.
    assert_eq!(
        cli(
            &relay,
            &["block", "add", "203.0.113.0/24", "--reason", "late"]
        )
        .ok(),
        "blocked 203.0.113.0/24 permanently\n"
    );
    cli(&relay, &["allow", "add", "2001:db8:1::/64"]).ok();
    let pid = relay.pid();
    let log = relay.kill9();
    eprintln!("{TEST}: killed pid {pid} with SIGKILL");
    assert!(
        !log.contains("stopped"),
        "the relay shut down cleanly?\n{log}"
    );

    // The same config, so the same port, admin socket and state dir.
    let relay = restart(&text);
    assert!(
        !relay.log().contains("state:") && !relay.log().contains("restoring"),
        "state not restored cleanly:\n{}",
        relay.log()
    );

    // Operator blocks: the same entries, the timed one with less time left.
    let blocks_after = cli(&relay, &["block", "list", "--json"]).json();
    let entries = blocks_after["entries"].as_array().expect("entries");
    let v4 = entries
        .iter()
        .find(|e| e["cidr"] == "192.0.2.0/24")
        .unwrap_or_else(|| panic!("192.0.2.0/24 lost: {blocks_after}"));
    assert_eq!(v4["source"], "operator");
    assert_eq!(v4["reason"], "scanner");
    let left = v4["expires_in_secs"].as_u64().expect("timed block");
    assert!((3500..3600).contains(&left), "{blocks_after}");
    let v6 = entries
        .iter()
        .find(|e| e["cidr"] == "2001:db8:77::/48")
        .unwrap_or_else(|| panic!("2001:db8:77::/48 lost: {blocks_after}"));
    assert_eq!(v6["source"], "operator");
    assert!(v6["expires_in_secs"].is_null(), "{blocks_after}");
    let late = entries
        .iter()
        .find(|e| e["cidr"] == "203.0.113.0/24")
        .unwrap_or_else(|| panic!("the block added just before the kill is lost: {blocks_after}"));
    assert_eq!(late["reason"], "late");
    assert_eq!(
        entries.len(),
        blocks_before["entries"].as_array().map_or(0, Vec::len) + 1,
        "before (and 203.0.113.0/24): {blocks_before}\nafter: {blocks_after}"
    );

    // Allowlist: what was there, and the entry added just before the kill.
    let allow_after = cli(&relay, &["allow", "list", "--json"]).json();
    let allowed: Vec<&str> = allow_after["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["source"] == "operator")
        .filter_map(|e| e["cidr"].as_str())
        .collect();
    let mut expected: Vec<&str> = allow_before["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["cidr"].as_str())
        .collect();
    expected.push("2001:db8:1::/64");
    expected.sort_unstable();
    let mut sorted = allowed.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "{allow_before}\n{allow_after}");
    assert!(allowed.contains(&"198.51.100.7/32"), "{allow_after}");

    // The ban, with less time left than it started with.
    let bans_after = cli(&relay, &["bans", "list", "--json"]).json();
    let ban = bans_after["bans"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["addr"] == "127.0.0.2"))
        .unwrap_or_else(|| panic!("ban on 127.0.0.2 lost: {bans_after}"));
    assert_eq!(ban["reason"], "bad_secret");
    assert_eq!(ban["action"], "drop");
    let ban_ttl_after = ban["expires_in_secs"].as_u64().expect("ban TTL");
    assert!(
        ban_ttl_after < 3600 && ban_ttl_after <= ban_ttl_before && ban_ttl_after > 3400,
        "ban TTL {ban_ttl_before} s before, {ban_ttl_after} s after the restart"
    );
    // ... and enforced: 127.0.0.2 gets nothing (refused at accept, before any handshake).
    if let Ok(mut banned_client) =
        rust_client(addr, users[0].secret.as_str(), false, OTHER_SOURCE.into())
    {
        assert_closed_without_data(&mut banned_client, "banned source after restart");
    }
    wait_until(Duration::from_secs(10), || {
        relay
            .log()
            .lines()
            .any(|l| l.contains("connection refused") && field(l, "verdict") == Some("banned"))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("127.0.0.2 not refused as banned:\n{}", relay.log()));

    // The operator's switch and alice's usage.
    let bob = user_info(&relay, "bob");
    assert_eq!(bob["enabled"], false, "{bob}");
    assert_eq!(bob["blocked_reason"], "disabled by operator", "{bob}");
    let alice = user_info(&relay, "alice");
    assert_eq!(alice["bytes_up"], alice_before["bytes_up"], "{alice}");
    assert_eq!(alice["bytes_down"], alice_before["bytes_down"], "{alice}");
    assert_eq!(alice["quota"], 10 * MIB as u64, "{alice}");

    // bob is refused, alice still relayed.
    let sessions = dc.sessions().len();
    let mut bob_client = rust_client(
        addr,
        users[1].secret.as_str(),
        false,
        Ipv4Addr::LOCALHOST.into(),
    )
    .expect("bob connects");
    assert_closed_without_data(&mut bob_client, "disabled bob");
    wait_until(Duration::from_secs(10), || {
        (refusals(&relay.log(), "bob", "disabled") == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("bob not refused as disabled:\n{}", relay.log()));
    // The `conn` span exists at debug level only: an info line names its (masked) peer itself.
    let log = relay.log();
    let refused = user_lines(&log, REFUSED, "bob");
    assert_eq!(
        field(refused[0], "peer"),
        Some("127.0.0.0/24"),
        "{refused:?}"
    );
    assert_eq!(dc.sessions().len(), sessions, "bob reached the DC");
    let mut client = rust_client(
        addr,
        users[0].secret.as_str(),
        false,
        Ipv4Addr::LOCALHOST.into(),
    )
    .expect("alice connects");
    rust_echo(&mut client, 4 * KIB).expect("alice echo after the restart");
    drop(client);
    assert_eq!(
        rejections(&user_info(&relay, "bob"), "disabled"),
        1,
        "bob's refusal counted"
    );

    let log = relay.stop();
    assert!(!log.contains("panicked"), "{log}");
    let leftovers: Vec<String> = std::fs::read_dir(state.path().join("state"))
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert!(leftovers.is_empty(), "state files set aside: {leftovers:?}");
    eprintln!("{TEST}: passed in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. Per-user limits against real clients

/// A 200,000-byte quota: a 64 KiB echo fits; the next connection is cut in the middle of its
/// 64 KiB echo when the quota runs out, and new connections (Telethon and kurigram) are refused
/// with reason `quota`, which `users show` counts.
#[test]
fn quota_cuts_the_connection_in_progress_and_refuses_new_ones() {
    const TEST: &str = "quota_cuts_the_connection_in_progress_and_refuses_new_ones";
    let Some(b) = Bench::start(
        TEST,
        true,
        "",
        vec![UserSpec::new("carol", "quota = 200000")],
    ) else {
        return;
    };
    // 64 KiB each way plus framing: about 131 KB of 200,000.
    b.expect_echo("first 64 KiB", &[65_536], || {
        b.telethon("carol", Transport::Randomized, &[65_536])
    });
    b.wait_relay_ended("carol", 1);
    let carol = user_info(&b.relay, "carol");
    let used = bytes_total(&carol);
    assert!(
        (2 * 65_536..200_000).contains(&used),
        "usage after one 64 KiB echo: {carol}"
    );
    assert!(carol["blocked_reason"].is_null(), "{carol}");

    // A second connection is admitted, echoes 1 KiB, then runs out in the middle of the next
    // 64 KiB echo (it would need about 264 KB in all).
    let sessions = b.dc.sessions().len();
    let run = b.telethon("carol", Transport::Randomized, &[1024, 65_536]);
    assert!(
        !run.ok() && !run.timed_out && run.echoed() == [1024],
        "the connection should be cut after the 1 KiB echo: {}\nrelay log:\n{}",
        run.describe(),
        b.relay.log()
    );
    assert_eq!(
        b.dc.sessions().len(),
        sessions + 1,
        "the cut connection was relayed"
    );
    let ended = b.wait_relay_ended("carol", 2);
    assert!(
        ended[1].contains("quota exhausted"),
        "the relay should end the pair for the quota: {}",
        ended[1]
    );
    let carol = user_info(&b.relay, "carol");
    assert_eq!(carol["blocked_reason"], "quota", "{carol}");
    assert_eq!(carol["enabled"], false, "{carol}");
    let at_cut = bytes_total(&carol);
    assert!(
        (200_000..200_000 + 64 * KIB as u64).contains(&at_cut),
        "usage when cut: {carol}"
    );
    eprintln!(
        "{TEST}: cut at {at_cut} bytes of 200000 after {:.1?}: {}",
        run.elapsed,
        run.error().unwrap_or("echo mismatch")
    );

    // New connections are refused and counted.
    b.expect_refused("telethon after the quota", "carol", "quota", || {
        b.telethon("carol", Transport::Randomized, &[16])
    });
    b.expect_refused("kurigram after the quota", "carol", "quota", || {
        b.kurigram("carol", &[24])
    });
    let carol = user_info(&b.relay, "carol");
    assert_eq!(rejections(&carol, "quota"), 2, "{carol}");
    assert_eq!(carol["blocked_reason"], "quota", "{carol}");
    assert_eq!(
        bytes_total(&carol),
        at_cut,
        "refused clients used quota: {carol}"
    );
    let table = cli(&b.relay, &["users", "show", "carol"]).ok();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("status ") && l.ends_with(" disabled (quota)")),
        "{table}"
    );
    let rejected = table
        .split_once("REJECTED BY")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no rejection counts: {table}"));
    assert!(
        rejected
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["quota", "2"]),
        "{table}"
    );
    b.finish();
}

/// `max_connections = 1`: while a client holds a connection, a second real client is refused;
/// after the first closes, a new one is served.
#[test]
fn max_connections_refuses_a_second_client_until_the_first_closes() {
    const TEST: &str = "max_connections_refuses_a_second_client_until_the_first_closes";
    let Some(b) = Bench::start(
        TEST,
        true,
        "",
        vec![UserSpec::new("dave", "max_connections = 1")],
    ) else {
        return;
    };
    // The first connection, held open by the Rust client; an echo proves it was admitted.
    let mut held = rust_client(
        b.addr(),
        b.secret("dave"),
        false,
        Ipv4Addr::LOCALHOST.into(),
    )
    .expect("first connection");
    rust_echo(&mut held, 1024).expect("first connection echoes");
    let dave = user_info(&b.relay, "dave");
    assert_eq!(dave["active_connections"], 1, "{dave}");

    b.expect_refused(
        "telethon while one is open",
        "dave",
        "max_connections",
        || b.telethon("dave", Transport::Intermediate, &[16]),
    );
    b.expect_refused(
        "kurigram while one is open",
        "dave",
        "max_connections",
        || b.kurigram("dave", &[24]),
    );
    // The held connection is unharmed.
    rust_echo(&mut held, 4096).expect("held connection still echoes");

    held.shutdown_write().expect("shutdown");
    let _ = held.recv_to_end();
    drop(held);
    wait_until(Duration::from_secs(10), || {
        (user_info(&b.relay, "dave")["active_connections"] == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the slot was not released:\n{}", b.relay.log()));

    b.expect_echo(
        "kurigram after the first closed",
        &[24, 24 + 16 * 64],
        || b.kurigram("dave", &[24, 24 + 16 * 64]),
    );
    b.expect_echo("telethon after the first closed", &[16, 1024], || {
        b.telethon("dave", Transport::Intermediate, &[16, 1024])
    });
    let dave = user_info(&b.relay, "dave");
    assert_eq!(rejections(&dave, "max_connections"), 2, "{dave}");
    b.finish();
}

/// `max_unique_ips = 1` over the window: Telethon from 127.0.0.1 is served, Telethon from
/// 127.0.0.2 is refused, 127.0.0.1 is still served.
#[test]
fn max_unique_ips_refuses_a_second_address() {
    const TEST: &str = "max_unique_ips_refuses_a_second_address";
    let Some(b) = Bench::start(
        TEST,
        true,
        "",
        vec![UserSpec::new("erin", "max_unique_ips = 1")],
    ) else {
        return;
    };
    b.expect_echo("from 127.0.0.1", &[16, 4096], || {
        b.telethon("erin", Transport::Randomized, &[16, 4096])
    });
    let run = b.expect_refused("from 127.0.0.2", "erin", "max_unique_ips", || {
        b.telethon_from("erin", Transport::Randomized, &[16], Some(OTHER_SOURCE))
    });
    assert!(
        run.error().is_some_and(|e| e.contains("ConnectionError")),
        "Telethon should see the proxy close: {}",
        run.describe()
    );
    // The refusal is for 127.0.0.2 itself, not the user: 127.0.0.1 is still served.
    b.expect_echo("from 127.0.0.1 again", &[16], || {
        b.telethon("erin", Transport::Abridged, &[16])
    });
    let erin = user_info(&b.relay, "erin");
    assert_eq!(erin["unique_ips"], 1, "{erin}");
    assert_eq!(rejections(&erin, "max_unique_ips"), 1, "{erin}");
    b.finish();
}

/// `connection_rate = "2/h"`: Telethon clients of one user from four addresses, each its own
/// source, get two connections between them and then refusals with reason `rate`; another
/// user with the same rate is served, from other addresses. The metric and `users show`
/// agree on the count.
#[test]
fn connection_rate_throttles_a_user_across_addresses() {
    const TEST: &str = "connection_rate_throttles_a_user_across_addresses";
    let source = |n: u8| Ipv4Addr::new(127, 0, 0, n);
    let Some(b) = Bench::start(
        TEST,
        true,
        "",
        vec![
            UserSpec::new("ivan", "connection_rate = \"2/h\""),
            UserSpec::new("judy", "connection_rate = \"2/h\""),
        ],
    ) else {
        return;
    };
    for n in [1, 2] {
        b.expect_echo(&format!("ivan from {}", source(n)), &[16], || {
            b.telethon_from("ivan", Transport::Randomized, &[16], Some(source(n)))
        });
    }
    for n in [3, 4] {
        b.expect_refused(&format!("ivan from {}", source(n)), "ivan", "rate", || {
            b.telethon_from("ivan", Transport::Intermediate, &[16], Some(source(n)))
        });
    }
    for n in [5, 6] {
        b.expect_echo(&format!("judy from {}", source(n)), &[16], || {
            b.telethon_from("judy", Transport::Randomized, &[16], Some(source(n)))
        });
    }
    let ivan = user_info(&b.relay, "ivan");
    assert_eq!(rejections(&ivan, "rate"), 2, "{ivan}");
    assert_eq!(
        (
            ivan["connection_rate"].as_str(),
            ivan["connection_burst"].as_u64()
        ),
        (Some("2/h"), Some(2)),
        "{ivan}"
    );
    let judy = user_info(&b.relay, "judy");
    assert_eq!(rejections(&judy, "rate"), 0, "{judy}");
    let table = cli(&b.relay, &["users", "show", "ivan"]).ok();
    assert!(table.contains("conn rate    2/h (burst 2)\n"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["rate", "2"]),
        "{table}"
    );
    // The exporter copies the counters every second.
    let metric = |user: &str| {
        relay_tests::metrics::Metrics::parse(&b.relay.scrape()).sum(
            "relay_user_rejections_total",
            &[("user", user), ("reason", "rate")],
        )
    };
    wait_until(Duration::from_secs(5), || {
        (metric("ivan") == 2.0).then_some(())
    })
    .unwrap_or_else(|| panic!("relay_user_rejections_total for ivan: {}", metric("ivan")));
    assert_eq!(metric("judy"), 0.0);
    b.finish();
}

/// A user whose `expires` is in the past and one with `enabled = false` are refused by both
/// clients; another user on the same relay is served.
#[test]
fn expired_and_disabled_users_are_refused() {
    const TEST: &str = "expired_and_disabled_users_are_refused";
    let Some(b) = Bench::start(
        TEST,
        true,
        "",
        vec![
            UserSpec::new("frank", "expires = \"2020-01-01T00:00:00Z\""),
            UserSpec::new("grace", "enabled = false"),
            UserSpec::new("heidi", "expires = \"2999-01-01T00:00:00Z\""),
        ],
    ) else {
        return;
    };
    b.expect_refused("expired, telethon", "frank", "expired", || {
        b.telethon("frank", Transport::Abridged, &[16])
    });
    b.expect_refused("expired, kurigram", "frank", "expired", || {
        b.kurigram("frank", &[24])
    });
    b.expect_refused("disabled, telethon", "grace", "disabled", || {
        b.telethon("grace", Transport::Randomized, &[16])
    });
    b.expect_refused("disabled, kurigram", "grace", "disabled", || {
        b.kurigram("grace", &[24])
    });
    b.expect_echo("not yet expired, telethon", &[16, 1024], || {
        b.telethon("heidi", Transport::Randomized, &[16, 1024])
    });
    b.expect_echo("not yet expired, kurigram", &[24], || {
        b.kurigram("heidi", &[24])
    });
    let frank = user_info(&b.relay, "frank");
    assert_eq!(frank["blocked_reason"], "expired", "{frank}");
    assert_eq!(rejections(&frank, "expired"), 2, "{frank}");
    let grace = user_info(&b.relay, "grace");
    assert_eq!(grace["blocked_reason"], "disabled in config", "{grace}");
    assert_eq!(rejections(&grace, "disabled"), 2, "{grace}");
    let heidi = user_info(&b.relay, "heidi");
    assert!(heidi["blocked_reason"].is_null(), "{heidi}");
    b.finish();
}

// ---------------------------------------------------------------------------------------------
// 3. SIGHUP

/// A reproducible byte stream (xorshift64*), so writer and reader agree without keeping
/// megabytes around.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

const TRANSFER: usize = 32 * MIB;
const CHUNK: usize = 64 * KIB;

/// A long echo through the relay: the writer sends the first quarter at once, then trickles
/// (one chunk every 50 ms) until told to finish, keeping at least a quarter for the end; the
/// reader checks every byte concurrently and wants a clean end of stream.
struct Transfer {
    received: Arc<AtomicU64>,
    writer_done: Arc<AtomicBool>,
    finish: mpsc::Sender<()>,
    reader: thread::JoinHandle<Result<u64, String>>,
    writer: thread::JoinHandle<Result<(), String>>,
}

impl Transfer {
    fn start(client: MtprotoClient, seed: u64) -> Transfer {
        client
            .stream()
            .set_write_timeout(Some(Duration::from_secs(60)))
            .expect("write timeout");
        let (mut reader, mut writer) = client.split();
        reader
            .set_read_timeout(Some(Duration::from_secs(300)))
            .expect("read timeout");
        let received = Arc::new(AtomicU64::new(0));
        let writer_done = Arc::new(AtomicBool::new(false));
        let (finish, go) = mpsc::channel::<()>();
        let done = writer_done.clone();
        let writer = thread::spawn(move || -> Result<(), String> {
            let mut pattern = Pattern::new(seed);
            let mut buf = vec![0u8; CHUNK];
            let mut sent = 0usize;
            let mut finishing = false;
            while sent < TRANSFER {
                if sent >= TRANSFER / 4 && !finishing {
                    // Trickle until told to finish, but keep the last quarter for then.
                    let wait = if sent >= 3 * TRANSFER / 4 {
                        Duration::from_secs(300)
                    } else {
                        Duration::from_millis(50)
                    };
                    match go.recv_timeout(wait) {
                        Ok(()) => finishing = true,
                        Err(mpsc::RecvTimeoutError::Timeout) if wait < Duration::from_secs(1) => {}
                        Err(_) => return Err(format!("never told to finish after {sent} bytes")),
                    }
                }
                let n = (TRANSFER - sent).min(CHUNK);
                pattern.fill(&mut buf[..n]);
                writer
                    .send(&buf[..n])
                    .map_err(|e| format!("write failed after {sent} bytes: {e}"))?;
                sent += n;
            }
            writer
                .shutdown()
                .map_err(|e| format!("shutdown(Write): {e}"))?;
            done.store(true, Ordering::SeqCst);
            Ok(())
        });
        let count = received.clone();
        let reader = thread::spawn(move || -> Result<u64, String> {
            let mut expected = Pattern::new(seed);
            let mut want = vec![0u8; CHUNK];
            let mut buf = vec![0u8; CHUNK];
            let mut got = 0usize;
            loop {
                let n = reader
                    .recv(&mut buf)
                    .map_err(|e| format!("read failed after {got} of {TRANSFER} bytes: {e}"))?;
                if n == 0 {
                    break;
                }
                if got + n > TRANSFER {
                    return Err(format!("{} bytes more than were sent", got + n - TRANSFER));
                }
                expected.fill(&mut want[..n]);
                if buf[..n] != want[..n] {
                    let i = (0..n).find(|&i| buf[i] != want[i]).unwrap_or(0);
                    return Err(format!("echo differs at byte {}", got + i));
                }
                got += n;
                count.store(got as u64, Ordering::SeqCst);
            }
            if got != TRANSFER {
                return Err(format!("EOF after {got} of {TRANSFER} bytes"));
            }
            Ok(got as u64)
        });
        Transfer {
            received,
            writer_done,
            finish,
            reader,
            writer,
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn in_progress(&self) -> bool {
        !self.writer_done.load(Ordering::SeqCst) && !self.reader.is_finished()
    }

    /// Lets the writer send the rest and waits for both sides; the bytes echoed.
    fn finish(self) -> Result<u64, String> {
        let _ = self.finish.send(());
        self.writer
            .join()
            .map_err(|_| "writer panicked".to_owned())??;
        self.reader
            .join()
            .map_err(|_| "reader panicked".to_owned())?
    }
}

/// SIGHUP with a new user: bob is admitted on the existing listener (kurigram and Telethon)
/// while alice's 32 MiB transfer continues, and it completes byte-exact. Then a config with a
/// syntax error is rejected with its file and line, and the running config keeps working.
#[test]
fn sighup_adds_a_user_while_a_transfer_continues_and_rejects_a_broken_config() {
    const TEST: &str = "sighup_adds_a_user_while_a_transfer_continues_and_rejects_a_broken_config";
    let Some(mut b) = Bench::start(TEST, true, "", vec![UserSpec::new("alice", "")]) else {
        return;
    };
    let started = Instant::now();
    let bob = UserSpec::new("bob", "");
    b.expect_unknown_secret_closed(&bob.secret);

    let client = rust_client(
        b.addr(),
        b.secret("alice"),
        true,
        Ipv4Addr::LOCALHOST.into(),
    )
    .expect("alice connects");
    let transfer = Transfer::start(client, 7);
    wait_until(Duration::from_secs(60), || {
        (transfer.received() >= MIB as u64).then_some(())
    })
    .unwrap_or_else(|| panic!("alice's transfer does not move:\n{}", b.relay.log()));

    // Add bob to the file the relay runs with, and reload.
    let with_bob = format!("{}{}", b.relay.config, bob.toml());
    std::fs::write(&b.relay.config_path, &with_bob).expect("rewrite config");
    let reload_at = Instant::now();
    b.relay.reload();
    b.relay
        .wait_for("configuration reloaded", Duration::from_secs(20));
    eprintln!(
        "{TEST}: reloaded in {:.1?}, alice at {} bytes",
        reload_at.elapsed(),
        transfer.received()
    );
    b.users.push(bob);
    assert!(transfer.in_progress(), "alice's transfer ended too early");

    b.expect_echo(
        "bob via kurigram after SIGHUP",
        &[24, 24 + 16 * 256],
        || b.kurigram("bob", &[24, 24 + 16 * 256]),
    );
    b.expect_echo("bob via telethon after SIGHUP", &[16, 65_536], || {
        b.telethon("bob", Transport::Randomized, &[16, 65_536])
    });
    assert!(
        transfer.in_progress(),
        "alice's transfer should still be running while bob was served"
    );
    assert!(
        user_lines(&b.relay.log(), "relay ended", "alice").is_empty(),
        "alice's connection ended during the reload:\n{}",
        b.relay.log()
    );
    let during = transfer.received();
    let echoed = transfer
        .finish()
        .unwrap_or_else(|e| panic!("alice's transfer broke: {e}\nrelay log:\n{}", b.relay.log()));
    assert_eq!(echoed, TRANSFER as u64);
    let alice_session =
        b.dc.sessions()
            .into_iter()
            .next()
            .expect("alice's DC session");
    wait_until(Duration::from_secs(10), || {
        (b.dc.sessions()[0].bytes == TRANSFER as u64).then_some(())
    })
    .unwrap_or_else(|| panic!("DC echoed {:?}", b.dc.sessions()[0]));
    let ended = b.wait_relay_ended("alice", 1);
    assert!(
        field(&ended[0], "error").is_none_or(|e| e == "None"),
        "alice's relay ended with an error: {}",
        ended[0]
    );
    eprintln!(
        "{TEST}: alice's {TRANSFER} bytes echoed byte-exact ({during} before bob's clients were done, {alice_session:?}) in {:.1?}",
        started.elapsed()
    );

    // A broken config: a syntax error on a known line.
    let good = std::fs::read_to_string(&b.relay.config_path).expect("config");
    let broken = format!("{good}\n[[users]\nname = \"mallory\"\n");
    let bad_line = good.lines().count() + 2;
    std::fs::write(&b.relay.config_path, &broken).expect("write broken config");
    b.relay.reload();
    let rejected = b
        .relay
        .wait_for("configuration rejected", Duration::from_secs(20));
    let path = b.relay.config_path.display().to_string();
    assert!(
        rejected.contains(&format!("{path}:{bad_line}:")),
        "the rejection should name {path} line {bad_line}: {rejected}"
    );
    eprintln!("{TEST}: broken config rejected: {rejected}");

    // The running config (alice and bob) stays.
    b.expect_echo("alice after the rejected reload", &[16, 1024], || {
        b.telethon("alice", Transport::Randomized, &[16, 1024])
    });
    b.expect_echo("bob after the rejected reload", &[24], || {
        b.kurigram("bob", &[24])
    });
    let log = b.relay.stop();
    assert!(!log.contains("panicked"), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert_eq!(
        errors.len(),
        1,
        "only the rejected reload is an error: {errors:#?}"
    );
    eprintln!("{TEST}: passed in {:.1?}", started.elapsed());
}

impl Bench {
    /// Before the reload a secret the relay does not know is just a bad secret (checked with
    /// the Rust client, once, far below the misuse threshold).
    fn expect_unknown_secret_closed(&self, secret: &str) {
        let mut client =
            rust_client(self.addr(), secret, false, Ipv4Addr::LOCALHOST.into()).expect("connect");
        assert_closed_without_data(&mut client, "unknown user before the reload");
    }
}

/// `[blocklist] files`: a FireHOL feed is loaded at start, listed with its source, enforced,
/// and re-read on SIGHUP (entries that left the file are lifted).
#[test]
fn blocklist_feed_is_loaded_enforced_and_reloaded() {
    use relay_tests::probe::{Outcome, connect_from};
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed.netset");
    std::fs::write(
        &feed,
        "# test feed\n127.0.7.7\n192.0.2.0/24 # documentation\n",
    )
    .expect("feed");
    let (mut relay, port) = Relay::start_local_on_free_port(|port| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[xdp]\nmode = \"off\"\n[blocklist]\nfiles = [{:?}]\n",
            feed.display().to_string()
        )
    });
    // Feeds load before the relay reports ready.
    assert!(
        relay.log().contains("blocklist feed loaded"),
        "{}",
        relay.log()
    );
    let listed = |relay: &Relay| -> Vec<(String, String)> {
        cli(relay, &["block", "list", "--json"]).json()["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| {
                (
                    e["cidr"].as_str().unwrap_or_default().to_owned(),
                    e["source"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let source = format!("feed:{}", feed.display());
    let entries = listed(&relay);
    assert!(
        entries.contains(&("127.0.7.7/32".into(), source.clone())),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("192.0.2.0/24".into(), source.clone())),
        "{entries:?}"
    );

    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let attempt = |last: u8| {
        connect_from(
            [127, 0, 7, last].into(),
            target,
            Duration::from_secs(2),
            Duration::from_millis(300),
        )
    };
    assert!(
        matches!(attempt(7), Outcome::Refused(_)),
        "feed entry enforced"
    );
    assert!(attempt(8).is_held(), "others admitted");

    std::fs::write(&feed, "127.0.7.8\n").expect("new feed");
    relay.reload();
    relay.wait_for("configuration reloaded", Duration::from_secs(10));
    let entries = listed(&relay);
    assert_eq!(
        entries,
        vec![("127.0.7.8/32".to_owned(), source)],
        "feed re-read"
    );
    assert!(attempt(7).is_held(), "lifted with the feed line");
    assert!(
        matches!(attempt(8), Outcome::Refused(_)),
        "new feed entry enforced"
    );
    relay.stop();
}

// ---------------------------------------------------------------------------------------------
// 4. Prefix bans

/// Bad secrets from three addresses of one /24, each under its own threshold, ban the /24 at
/// the prefix threshold: every address of it is dropped, the ban is listed, survives a restart
/// and is lifted by `bans rm PREFIX`.
#[test]
fn a_24_of_bad_clients_is_banned_as_a_prefix_and_the_ban_persists() {
    let state = tempfile::tempdir().expect("state tempdir");
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
    let users = [UserSpec::new("alice", "")];
    let extra = format!(
        "\n[misuse]\nbad_secret = 100\nprefix_bad_secret = 3\naction = \"drop\"\n\n[admin]\nsocket = {:?}\n\n[state]\ndir = {:?}\n",
        state.path().join("admin.sock").display().to_string(),
        state.path().join("state").display().to_string(),
    );
    let (relay, port, text) = start_on_free_port(|port| config(port, dc.addr, &extra, &users));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let wrong = new_secret();
    for last in [2, 3, 4] {
        let from = Ipv4Addr::new(127, 0, 0, last).into();
        let mut client = rust_client(addr, &wrong, false, from)
            .unwrap_or_else(|e| panic!("bad handshake from .{last}: {e}"));
        assert_closed_without_data(&mut client, "bad secret");
    }
    let banned = wait_until(Duration::from_secs(10), || {
        relay
            .log()
            .lines()
            .find(|l| l.contains("prefix banned"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no prefix ban:\n{}", relay.log()));
    assert_eq!(field(&banned, "source"), Some("127.0.0.0/24"), "{banned}");
    assert!(
        !relay.log().contains("source banned"),
        "no address crossed its own threshold:\n{}",
        relay.log()
    );
    let expect_listed = |relay: &Relay| {
        let bans = cli(relay, &["bans", "list", "--json"]).json();
        let ban = bans["bans"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["addr"] == "127.0.0.0/24"))
            .unwrap_or_else(|| panic!("prefix ban not listed: {bans}"))
            .clone();
        assert_eq!(
            (ban["reason"].as_str(), ban["action"].as_str()),
            (Some("bad_secret"), Some("drop"))
        );
        assert_eq!(ban["count"], 3, "{ban}");
    };
    expect_listed(&relay);
    // An address that never offended is dropped with the rest of its /24: refused at accept,
    // so the handshake itself may already meet the reset.
    if let Ok(mut other) = rust_client(
        addr,
        users[0].secret.as_str(),
        false,
        Ipv4Addr::new(127, 0, 0, 9).into(),
    ) {
        assert_closed_without_data(&mut other, "address in the banned /24");
    }
    wait_until(Duration::from_secs(10), || {
        relay
            .log()
            .lines()
            .any(|l| {
                l.contains("connection refused") && field(l, "verdict") == Some("blocked_cidr")
            })
            .then_some(())
    })
    .unwrap_or_else(|| panic!("127.0.0.9 not refused:\n{}", relay.log()));

    // A clean stop saves the bans; the restarted relay has the prefix ban again.
    let log = relay.stop();
    assert!(!log.contains("panicked"), "{log}");
    let relay = restart(&text);
    expect_listed(&relay);
    let out = cli(&relay, &["block", "rm", "127.0.0.0/24"]);
    assert!(out.stderr.contains("bans rm 127.0.0.0/24"), "{out:?}");
    let out = cli(&relay, &["bans", "rm", "127.0.0.9"]);
    assert!(out.stderr.contains("127.0.0.0/24"), "{out:?}");
    assert_eq!(
        cli(&relay, &["bans", "rm", "127.0.0.0/24"]).ok(),
        "lifted the ban on 127.0.0.0/24\n"
    );
    let mut client = rust_client(
        addr,
        users[0].secret.as_str(),
        false,
        Ipv4Addr::new(127, 0, 0, 9).into(),
    )
    .expect("alice connects after the ban is lifted");
    rust_echo(&mut client, 4 * KIB).expect("alice echo after the ban is lifted");
    drop(client);
    let log = relay.stop();
    assert!(!log.contains("panicked"), "{log}");
}
