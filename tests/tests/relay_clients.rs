//! Real third-party clients through relay-ctl to a fake DC, all on loopback.
//!
//! Telethon 1.45.0 drives the obfuscated2 transports (abridged and intermediate in classic
//! mode, randomized intermediate in secure `dd` mode); kurigram 2.2.26 drives fake TLS (`ee`),
//! verifying the ServerHello HMAC; TDLib 1.8.69 (the official library, PyPI `tdjson`) runs its
//! own `testProxy` in every mode. The relay forwards to [`FakeDc`], which decrypts the relay's
//! own DC-side obfuscated2 leg independently and echoes, so every payload must come back byte
//! for byte. Each check also asserts what the DC saw (protocol tag, DC id, a header that obeys
//! the forbidden-prefix rules) and which user the relay matched, read from its debug log.
//!
//! Every test runs its own relay on its own ports; every wait is bounded. The tests need the
//! Python venv from `cargo xtask setup` (skipped with a message without it, failing under
//! `CI=true`), but no privileges.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use relay_tests::util::wait_until;
use relay_tests::{
    fake_dc::{FakeDc, Session},
    metrics::Metrics,
    privilege,
    pyclient::{self, ClientRun, Echo, Transport},
    relay::{Relay, new_secret, relay_ctl_bin},
};

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const DOMAIN: &str = "example.com";
/// DC ids routed to the fake DC: a normal DC, a media DC, another DC, a test DC.
const DC_IDS: [i16; 4] = [2, -2, 4, 10_002];
const MIB: usize = 1024 * 1024;
/// Telethon needs multiples of 4; 16 B to 1 MiB.
const TELETHON_SIZES: [usize; 4] = [16, 1024, 65_536, MIB];
/// kurigram needs 24 + 16·k; tiny to ~1 MiB.
const KURIGRAM_SIZES: [usize; 4] = [24, 24 + 16 * 64, 24 + 16 * 4096, 24 + 16 * 65_536];
const DD: [u8; 4] = [0xdd; 4];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stand-in for the fronted site: records what each connection sent until it went quiet
/// (or hung up), then closes.
#[derive(Clone)]
struct Mask {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Mask {
    fn start() -> Mask {
        let listener = TcpListener::bind("127.0.0.1:0").expect("mask bind");
        let mask = Mask {
            addr: listener.local_addr().expect("mask addr"),
            received: Arc::default(),
        };
        let received = mask.received.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().map_while(Result::ok) {
                let received = received.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while got.len() < 64 * 1024 {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    received.lock().expect("mask").push(got);
                });
            }
        });
        mask
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().expect("mask").clone()
    }
}

/// Users the relay matched, in log order: `(event, user)` for every `relaying` / `relay ended`
/// line. `relay ended` is logged once per relayed connection, after both directions finished.
fn matched_users(log: &str) -> Vec<(&'static str, String)> {
    log.lines()
        .filter_map(|line| {
            let event = if line.contains("relay ended") {
                "relay ended"
            } else if line.contains("relaying") {
                "relaying"
            } else {
                return None;
            };
            let rest = &line[line.find(" user=")? + " user=".len()..];
            let user = match rest.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or_default(),
                None => rest.split_whitespace().next().unwrap_or_default(),
            };
            Some((event, user.to_owned()))
        })
        .collect()
}

/// One relay with three users and every test DC id pointed at one fake DC.
struct Harness {
    test: &'static str,
    python: PathBuf,
    dc: FakeDc,
    mask: Mask,
    relay: Relay,
    port: u16,
    /// name → 32-hex secret.
    secrets: BTreeMap<&'static str, String>,
    /// The configuration the relay runs with (also usable by `relay-ctl link`).
    config: String,
    state: tempfile::TempDir,
}

impl Harness {
    /// Starts the relay with `modes`; `None` when the test is skipped (no venv).
    fn start(test: &'static str, modes: &[&str]) -> Option<Harness> {
        Harness::start_on(test, modes, "auto")
    }

    /// Like [`Harness::start`] with `[server] passthrough = passthrough`.
    fn start_on(test: &'static str, modes: &[&str], passthrough: &str) -> Option<Harness> {
        let python = pyclient::python(test)?;
        let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"));
        let mask = Mask::start();
        let state = tempfile::tempdir().expect("state dir");
        let secrets: BTreeMap<&'static str, String> =
            USERS.iter().map(|&name| (name, new_secret())).collect();
        let text = |port| {
            config(port, modes, &secrets, dc.addr, mask.addr, state.path()).replace(
                "[xdp]",
                &format!("passthrough = \"{passthrough}\"\n\n[xdp]"),
            )
        };
        let (relay, port) = Relay::start_local_on_free_port(text);
        let config = text(port);
        Some(Harness {
            test,
            python,
            dc,
            mask,
            relay,
            port,
            secrets,
            config,
            state,
        })
    }

    fn secret(&self, user: &str) -> &str {
        self.secrets
            .get(user)
            .unwrap_or_else(|| panic!("no user {user}"))
    }

    /// The link secret for `user` in `mode` ("classic", "secure", "tls").
    fn link_secret(&self, user: &str, mode: &str) -> String {
        let secret = self.secret(user);
        match mode {
            "classic" => secret.to_owned(),
            "secure" => format!("dd{secret}"),
            "tls" => format!("ee{secret}{}", hex(DOMAIN.as_bytes())),
            other => panic!("unknown mode {other}"),
        }
    }

    /// Runs `client`, then checks that every size came back, that the fake DC saw exactly one
    /// new session with `tag` and `dc`, a clean header and at least the payload bytes, and that
    /// the relay matched `user` (and nobody else) for it.
    fn expect_echo(
        &mut self,
        label: &str,
        user: &str,
        tag: [u8; 4],
        dc: i16,
        sizes: &[usize],
        client: impl FnOnce(&Path) -> ClientRun,
    ) {
        let sessions_before = self.dc.sessions().len();
        let matched_before = matched_users(&self.relay.log()).len();
        let run = client(&self.python);
        assert!(
            run.ok() && run.echoed() == sizes,
            "{}: {label}: client failed: {}\nrelay log:\n{}",
            self.test,
            run.describe(),
            self.relay.log()
        );
        let payload: u64 = sizes.iter().map(|&s| s as u64).sum();
        // The fake DC counts a chunk after echoing it, so its count may trail the client.
        let sessions = wait_until(Duration::from_secs(10), || {
            let all = self.dc.sessions();
            let new = all[sessions_before..].to_vec();
            (new.len() == 1 && new[0].bytes >= payload).then_some(new)
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: {label}: expected one new DC session carrying >= {payload} bytes, DC saw {:?}",
                self.test,
                &self.dc.sessions()[sessions_before..]
            )
        });
        let Session {
            tag: seen_tag,
            dc: seen_dc,
            forbidden_prefix,
            bytes,
        } = sessions[0].clone();
        assert_eq!(
            seen_tag, tag,
            "{}: {label}: protocol tag at the DC",
            self.test
        );
        assert_eq!(seen_dc, dc, "{}: {label}: DC id at the DC", self.test);
        assert!(
            !forbidden_prefix,
            "{}: {label}: the relay's DC header starts with a forbidden prefix",
            self.test
        );
        let new = wait_until(Duration::from_secs(15), || {
            let all = matched_users(&self.relay.log());
            let new = all[matched_before..].to_vec();
            new.iter()
                .any(|(event, _)| *event == "relay ended")
                .then_some(new)
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: {label}: the relay never logged the end of the relayed connection:\n{}",
                self.test,
                self.relay.log()
            )
        });
        assert!(
            new.iter().all(|(_, u)| u == user),
            "{}: {label}: expected user {user}, the relay matched {new:?}",
            self.test
        );
        eprintln!(
            "{}: {label}: user {user}, tag {}, DC {dc}, sizes {sizes:?}: echoed in {:.1?} ({bytes} bytes at the DC)",
            self.test,
            hex(&tag),
            run.elapsed
        );
    }

    /// Runs `client`, which must fail, and checks that no DC session appeared, the relay
    /// logged `reason` and the connection went to the mask host.
    fn expect_refused(
        &mut self,
        label: &str,
        reason: &str,
        client: impl FnOnce(&Path) -> ClientRun,
    ) -> ClientRun {
        let sessions_before = self.dc.sessions().len();
        let masked_before = self.mask.received().len();
        let failed = |log: &str| {
            log.lines()
                .filter(|l| l.contains("handshake failed") && l.contains(reason))
                .count()
        };
        let failed_before = failed(&self.relay.log());
        let run = client(&self.python);
        assert!(
            !run.ok() && !run.timed_out && run.json.is_some(),
            "{}: {label}: the client should have reported a failure: {}\nrelay log:\n{}",
            self.test,
            run.describe(),
            self.relay.log()
        );
        wait_until(Duration::from_secs(10), || {
            (failed(&self.relay.log()) == failed_before + 1).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: {label}: the relay did not log one `handshake failed` with {reason}:\n{}",
                self.test,
                self.relay.log()
            )
        });
        let masked = wait_until(Duration::from_secs(10), || {
            let all = self.mask.received();
            (all.len() > masked_before).then(|| all[masked_before..].to_vec())
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: {label}: the refused connection never reached the mask host:\n{}",
                self.test,
                self.relay.log()
            )
        });
        assert_eq!(masked.len(), 1, "{}: {label}: mask connections", self.test);
        // Give a wrongly relayed connection time to show up at the DC.
        std::thread::sleep(Duration::from_millis(300));
        let sessions = self.dc.sessions();
        assert_eq!(
            sessions.len(),
            sessions_before,
            "{}: {label}: a refused client reached the DC: {:?}",
            self.test,
            &sessions[sessions_before..]
        );
        eprintln!(
            "{}: {label}: refused as expected ({}), {} bytes fronted, in {:.1?}",
            self.test,
            run.error().unwrap_or("echo mismatch"),
            masked[0].len(),
            run.elapsed
        );
        run
    }

    /// Waits until the relay counts `n` passthrough directions that took `path` since start,
    /// and none on any other path but splice, where a download starts before it moves on to
    /// the sockmap.
    fn expect_path(&self, path: &str, n: f64) {
        let seen = wait_until(Duration::from_secs(10), || {
            let m = Metrics::parse(&self.relay.try_scrape().ok()?);
            let on = |p| m.sum("relay_passthrough_total", &[("path", p)]);
            let others = match path {
                "sockmap" => on("copy"),
                "splice" => on("copy") + on("sockmap"),
                _ => on("splice") + on("sockmap"),
            };
            (on(path) == n && others == 0.0).then_some(())
        });
        assert!(
            seen.is_some(),
            "{}: expected {n} passthrough directions on {path}:\n{}",
            self.test,
            self.relay.scrape()
        );
    }

    fn echo(&self, user: &str, mode: &str, dc: i16, sizes: &[usize]) -> Echo {
        Echo::local(self.port, self.link_secret(user, mode), dc, sizes)
    }

    fn finish(self) {
        let log = self.relay.stop();
        assert!(
            !log.contains(" ERROR ") && !log.contains("panicked"),
            "{}: relay logged an error:\n{log}",
            self.test
        );
        drop(self.state);
    }
}

fn config(
    port: u16,
    modes: &[&str],
    secrets: &BTreeMap<&'static str, String>,
    dc: SocketAddr,
    mask: SocketAddr,
    state: &Path,
) -> String {
    let modes: Vec<String> = modes.iter().map(|m| format!("\"{m}\"")).collect();
    let mut text = format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = [{modes}]

[xdp]
mode = "off"

[tls]
domain = "{DOMAIN}"
mask = "{mask}"

[upstream]
default_dc = 2
connect_timeout_secs = 5

[upstream.dc]
"#,
        modes = modes.join(", ")
    );
    for id in DC_IDS {
        text.push_str(&format!("\"{id}\" = [\"{dc}\"]\n"));
    }
    text.push_str(&format!("\n[state]\ndir = \"{}\"\n", state.display()));
    for (name, secret) in secrets {
        text.push_str(&format!(
            "\n[[users]]\nname = \"{name}\"\nsecret = \"{secret}\"\n"
        ));
    }
    text
}

const ALL_MODES: [&str; 3] = ["classic", "secure", "tls"];

/// `[server] passthrough` values an echo test runs with, and the path each must take: the
/// kernel's sockmap program with root (skipped with a message without), splice always.
fn paths(test: &str) -> Vec<(&'static str, &'static str)> {
    let mut paths = vec![("splice", "splice")];
    if privilege::privileged(test) {
        paths.push(("auto", "sockmap"));
    }
    paths
}

#[test]
fn telethon_abridged_classic_echoes_up_to_1mib() {
    let test = "telethon_abridged_classic_echoes_up_to_1mib";
    for (passthrough, path) in paths(test) {
        let Some(mut h) = Harness::start_on(test, &ALL_MODES, passthrough) else {
            return;
        };
        let echo = h.echo("alice", "classic", 2, &TELETHON_SIZES);
        h.expect_echo(
            "abridged",
            "alice",
            Transport::Abridged.tag(),
            2,
            &TELETHON_SIZES,
            |py| echo.telethon(py, Transport::Abridged),
        );
        h.expect_path(path, 1.0);
        h.finish();
    }
}

#[test]
fn telethon_intermediate_classic_media_dc_echoes_up_to_1mib() {
    let test = "telethon_intermediate_classic_media_dc_echoes_up_to_1mib";
    for (passthrough, path) in paths(test) {
        let Some(mut h) = Harness::start_on(test, &ALL_MODES, passthrough) else {
            return;
        };
        let echo = h.echo("bob", "classic", -2, &TELETHON_SIZES);
        h.expect_echo(
            "intermediate",
            "bob",
            Transport::Intermediate.tag(),
            -2,
            &TELETHON_SIZES,
            |py| echo.telethon(py, Transport::Intermediate),
        );
        h.expect_path(path, 1.0);
        h.finish();
    }
}

#[test]
fn telethon_randomized_secure_test_dc_echoes_up_to_1mib() {
    let test = "telethon_randomized_secure_test_dc_echoes_up_to_1mib";
    for (passthrough, path) in paths(test) {
        let Some(mut h) = Harness::start_on(test, &ALL_MODES, passthrough) else {
            return;
        };
        let echo = h.echo("carol", "secure", 10_002, &TELETHON_SIZES);
        h.expect_echo(
            "randomized (dd)",
            "carol",
            DD,
            10_002,
            &TELETHON_SIZES,
            |py| echo.telethon(py, Transport::Randomized),
        );
        h.expect_path(path, 1.0);
        h.finish();
    }
}

#[test]
fn kurigram_fake_tls_echoes_up_to_1mib() {
    let test = "kurigram_fake_tls_echoes_up_to_1mib";
    for (passthrough, _) in paths(test) {
        let Some(mut h) = Harness::start_on(test, &ALL_MODES, passthrough) else {
            return;
        };
        let echo = h.echo("bob", "tls", 4, &KURIGRAM_SIZES);
        h.expect_echo("fake TLS (ee)", "bob", DD, 4, &KURIGRAM_SIZES, |py| {
            echo.kurigram(py)
        });
        // Fake-TLS records are re-framed both ways: nothing passes through.
        h.expect_path("sockmap", 0.0);
        h.finish();
    }
}

/// TDLib's `testProxy` in each mode: its `req_pq_multi` crosses the relay, the fake DC echoes
/// it, and TDLib reports its own constructor as the answer, a full round trip with the
/// official library.
#[test]
fn tdlib_test_proxy_round_trips_in_every_mode() {
    let Some(h) = Harness::start("tdlib_test_proxy_round_trips_in_every_mode", &ALL_MODES) else {
        return;
    };
    for (user, mode, tag) in [
        ("alice", "classic", None),
        ("bob", "secure", Some(DD)),
        ("carol", "tls", Some(DD)),
    ] {
        let sessions_before = h.dc.sessions().len();
        let mut echo = h.echo(user, mode, 2, &[]);
        echo.op_timeout = Duration::from_secs(20);
        echo.deadline = Duration::from_secs(60);
        let run = echo.tdlib(&h.python);
        assert!(run.ok(), "TDLib in {mode} mode: {}", run.describe());
        let sessions = h.dc.sessions();
        assert!(
            sessions.len() > sessions_before,
            "{mode}: the fake DC saw no session"
        );
        let last = sessions.last().expect("a session");
        assert_eq!(last.dc, 2, "{mode}: DC id");
        if let Some(tag) = tag {
            assert_eq!(last.tag, tag, "{mode}: protocol tag");
        }
    }
    h.finish();
}

/// One relay, clients of every kind one after the other, each matched to its own user.
#[test]
fn one_relay_matches_each_user_in_turn() {
    let Some(mut h) = Harness::start("one_relay_matches_each_user_in_turn", &ALL_MODES) else {
        return;
    };
    let small = [16, 4096];
    let small_tls = [24, 24 + 16 * 256];
    let runs: [(&str, &str, Option<Transport>, i16); 5] = [
        ("carol", "classic", Some(Transport::Intermediate), 4),
        ("alice", "tls", None, -2),
        ("bob", "secure", Some(Transport::Randomized), 2),
        ("alice", "classic", Some(Transport::Abridged), 10_002),
        ("carol", "tls", None, 2),
    ];
    for (user, mode, transport, dc) in runs {
        match transport {
            Some(t) => {
                let echo = h.echo(user, mode, dc, &small);
                let tag = if mode == "secure" { DD } else { t.tag() };
                h.expect_echo(
                    &format!("{user} {}", t.name()),
                    user,
                    tag,
                    dc,
                    &small,
                    |py| echo.telethon(py, t),
                );
            }
            None => {
                let echo = h.echo(user, mode, dc, &small_tls);
                h.expect_echo(&format!("{user} tls"), user, DD, dc, &small_tls, |py| {
                    echo.kurigram(py)
                });
            }
        }
    }
    h.finish();
}

/// With classic off, Telethon's abridged and intermediate transports (plain secret) are
/// refused and fronted; the same relay still serves secure clients.
#[test]
fn classic_client_refused_when_classic_disabled() {
    let Some(mut h) = Harness::start(
        "classic_client_refused_when_classic_disabled",
        &["secure", "tls"],
    ) else {
        return;
    };
    for transport in [Transport::Abridged, Transport::Intermediate] {
        let echo = h.echo("alice", "classic", 2, &[16]);
        let run = h.expect_refused(transport.name(), "mode_disabled", |py| {
            echo.telethon(py, transport)
        });
        assert!(
            run.error().is_some_and(|e| e.contains("ConnectionError")),
            "Telethon should report the closed proxy connection: {}",
            run.describe()
        );
    }
    assert!(
        h.mask.received().iter().all(|got| got.len() >= 64),
        "the mask host should get each obfuscated2 header: {:?}",
        h.mask.received().iter().map(Vec::len).collect::<Vec<_>>()
    );
    // Control: the relay itself works.
    let echo = h.echo("alice", "secure", 2, &[16, 1024]);
    h.expect_echo("randomized control", "alice", DD, 2, &[16, 1024], |py| {
        echo.telethon(py, Transport::Randomized)
    });
    h.finish();
}

/// With TLS off, kurigram's ClientHello is refused and fronted (the mask host gets the hello).
#[test]
fn tls_client_refused_when_tls_disabled() {
    let Some(mut h) = Harness::start(
        "tls_client_refused_when_tls_disabled",
        &["classic", "secure"],
    ) else {
        return;
    };
    let echo = h.echo("carol", "tls", 2, &[24]);
    h.expect_refused("kurigram", "mode_disabled", |py| echo.kurigram(py));
    let received = h.mask.received();
    assert!(
        received
            .iter()
            .all(|got| got.starts_with(&[0x16, 0x03, 0x01])),
        "the mask host should get the ClientHello: {:?}",
        received
            .iter()
            .map(|g| hex(&g[..g.len().min(8)]))
            .collect::<Vec<_>>()
    );
    h.finish();
}

/// A parsed `tg://proxy` or `https://t.me/proxy` link.
#[derive(Debug, Clone)]
struct Link {
    server: String,
    port: u16,
    secret: String,
}

fn parse_link(url: &str) -> Link {
    let (_, query) = url
        .split_once('?')
        .unwrap_or_else(|| panic!("link without query: {url}"));
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let get = |k: &str| {
        params
            .get(k)
            .copied()
            .unwrap_or_else(|| panic!("link without {k}: {url}"))
    };
    Link {
        server: get("server").to_owned(),
        port: get("port")
            .parse()
            .unwrap_or_else(|e| panic!("bad port in {url}: {e}")),
        secret: get("secret").to_owned(),
    }
}

/// `relay-ctl link` output: user → mode → (tg link, https link).
fn parse_link_output(text: &str) -> BTreeMap<String, BTreeMap<String, (Link, Link)>> {
    let mut out: BTreeMap<String, BTreeMap<String, (Link, Link)>> = BTreeMap::new();
    let mut user = None;
    let mut pending: Option<(String, Link)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# user ") {
            user = Some(name.trim().to_owned());
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [mode, url] if url.starts_with("tg://proxy?") => {
                pending = Some(((*mode).to_owned(), parse_link(url)));
            }
            [url] if url.starts_with("https://t.me/proxy?") => {
                let (mode, tg) = pending
                    .take()
                    .unwrap_or_else(|| panic!("https link without tg link: {line}"));
                let name = user
                    .clone()
                    .unwrap_or_else(|| panic!("link before a user: {line}"));
                out.entry(name)
                    .or_default()
                    .insert(mode, (tg, parse_link(url)));
            }
            [] => {}
            _ => panic!("unexpected line in relay-ctl link output: {line:?}"),
        }
    }
    out
}

/// The links `relay-ctl link --host 127.0.0.1` prints carry the right secrets, and real
/// clients connect with them: classic (Telethon abridged), secure (Telethon randomized),
/// tls (kurigram), each for another user.
#[test]
fn printed_links_work_with_real_clients() {
    let Some(mut h) = Harness::start("printed_links_work_with_real_clients", &ALL_MODES) else {
        return;
    };
    let file = h.state.path().join("relay.toml");
    std::fs::write(&file, &h.config).expect("write config copy");
    let out = Command::new(relay_ctl_bin())
        .args(["link", "--config"])
        .arg(&file)
        .args(["--host", "127.0.0.1"])
        .output()
        .expect("run relay-ctl link");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "relay-ctl link failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("relay-ctl link printed:\n{stdout}");
    let links = parse_link_output(&stdout);
    assert_eq!(
        links.keys().map(String::as_str).collect::<Vec<_>>(),
        USERS.to_vec(),
        "users in the link output"
    );
    for (user, modes) in &links {
        assert_eq!(
            modes.keys().map(String::as_str).collect::<Vec<_>>(),
            // BTreeMap order.
            vec!["classic", "secure", "tls"],
            "modes for {user}"
        );
        for (mode, (tg, https)) in modes {
            assert_eq!(tg.server, "127.0.0.1", "{user} {mode} server");
            assert_eq!(tg.port, h.port, "{user} {mode} port");
            assert_eq!(
                (&https.server, https.port, &https.secret),
                (&tg.server, tg.port, &tg.secret),
                "{user} {mode}: https and tg links differ"
            );
            assert_eq!(
                tg.secret.to_ascii_lowercase(),
                h.link_secret(user, mode),
                "{user} {mode} secret"
            );
        }
    }
    let sizes = [16, 1024, 65_536];
    let tls_sizes = [24, 1048, 65_560];
    let drive = |user: &str, mode: &str, dc: i16, sizes: &[usize]| {
        let link = &links[user][mode].0;
        Echo {
            host: link.server.clone(),
            port: link.port,
            ..Echo::local(0, link.secret.clone(), dc, sizes)
        }
    };
    let echo = drive("alice", "classic", 2, &sizes);
    h.expect_echo(
        "alice classic link",
        "alice",
        Transport::Abridged.tag(),
        2,
        &sizes,
        |py| echo.telethon(py, Transport::Abridged),
    );
    let echo = drive("bob", "secure", -2, &sizes);
    h.expect_echo("bob secure link", "bob", DD, -2, &sizes, |py| {
        echo.telethon(py, Transport::Randomized)
    });
    let echo = drive("carol", "tls", 10_002, &tls_sizes);
    h.expect_echo("carol tls link", "carol", DD, 10_002, &tls_sizes, |py| {
        echo.kurigram(py)
    });
    h.finish();
}
