//! A relay-ctl process under test: started in a namespace with a config file, its log
//! collected, stopped with SIGINT.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    panic::AssertUnwindSafe,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

/// Path of the relay-ctl binary: `RELAY_CTL_BIN`, else next to the test binary's target dir.
pub fn relay_ctl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RELAY_CTL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/relay-ctl
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("relay-ctl"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p relay-ctl`, done by `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// A fresh secret from `relay-ctl secret new` (32 hex digits), checked for its form.
pub fn new_secret() -> String {
    let out = Command::new(relay_ctl_bin())
        .args(["secret", "new"])
        .output()
        .expect("run relay-ctl secret new");
    assert!(out.status.success(), "relay-ctl secret new: {out:?}");
    let secret = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(
        secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "relay-ctl secret new printed {secret:?}"
    );
    secret
}

/// A running relay-ctl.
pub struct Relay {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
    /// The config text the relay runs with (including the added `[admin]`/`[state]`).
    pub config: String,
    /// Where that config is (rewrite it and [`Relay::reload`] to change it).
    pub config_path: tempfile::TempPath,
    /// The metrics endpoint (`[metrics] listen`), if enabled. Unless the test's config has a
    /// `[metrics]` section, each relay gets a free loopback port.
    pub metrics: Option<SocketAddr>,
    netns: Option<String>,
    _dir: tempfile::TempDir,
}

impl Relay {
    /// Starts `relay-ctl run --config <config>` inside `netns` and waits for its `ready` line.
    pub fn start(netns: &str, config: &str) -> Relay {
        Relay::spawn(Some(netns), config, None)
    }

    /// Like [`Relay::start`], logging with the tracing filter `log` instead of
    /// `RELAY_TEST_LOG`.
    pub fn start_with_log(netns: &str, config: &str, log: &str) -> Relay {
        Relay::spawn(Some(netns), config, Some(log))
    }

    /// Like [`Relay::start_local`], logging with the tracing filter `log` (e.g. `trace`)
    /// instead of `RELAY_TEST_LOG`.
    pub fn start_local_with_log(config: &str, log: &str) -> Relay {
        Relay::spawn(None, config, Some(log))
    }

    /// Starts relay-ctl in the test's own network namespace (for loopback-only tests, which
    /// should use `[xdp] mode = "off"`).
    pub fn start_local(config: &str) -> Relay {
        Relay::spawn(None, config, None)
    }

    /// Starts relay-ctl locally on a free loopback port with the config `text(port)`, trying
    /// another port twice if it does not come up (another process may take the port between
    /// [`free_port`](crate::util::free_port) and the bind); returns the relay and its port.
    pub fn start_local_on_free_port(text: impl Fn(u16) -> String) -> (Relay, u16) {
        Relay::start_local_on_free_port_with_log(text, None)
    }

    /// Like [`Relay::start_local_on_free_port`], logging with the tracing filter `log` if
    /// given instead of `RELAY_TEST_LOG`.
    pub fn start_local_on_free_port_with_log(
        text: impl Fn(u16) -> String,
        log: Option<&str>,
    ) -> (Relay, u16) {
        for attempt in 1.. {
            let port = crate::util::free_port();
            let config = text(port);
            match std::panic::catch_unwind(AssertUnwindSafe(|| Relay::spawn(None, &config, log))) {
                Ok(relay) => return (relay, port),
                Err(e) if attempt >= 3 => std::panic::resume_unwind(e),
                Err(_) => eprintln!("relay-ctl did not start on port {port}; retrying"),
            }
        }
        unreachable!()
    }

    /// Like [`Relay::start`], but runs `launcher` (a program and its arguments, ending with
    /// the relay-ctl binary to run) instead of the build's relay-ctl: e.g. `setpriv` dropping
    /// to another user first. The config file is readable by every user, so an unprivileged
    /// relay-ctl can read it.
    pub fn start_launched(netns: &str, launcher: &[std::ffi::OsString], config: &str) -> Relay {
        Relay::spawn_with(Some(netns), config, None, Some(launcher))
    }

    /// Like [`Relay::start_local`], with the build's `relay-ctl` run by `wrapper` (a command
    /// and its arguments, e.g. `setpriv` dropping capabilities).
    pub fn start_local_wrapped(config: &str, wrapper: &[&str]) -> Relay {
        let mut launcher: Vec<std::ffi::OsString> = wrapper.iter().map(Into::into).collect();
        launcher.push(relay_ctl_bin().into_os_string());
        Relay::spawn_with(None, config, None, Some(&launcher))
    }

    fn spawn(netns: Option<&str>, config: &str, log: Option<&str>) -> Relay {
        Relay::spawn_with(netns, config, log, None)
    }

    fn spawn_with(
        netns: Option<&str>,
        config: &str,
        log: Option<&str>,
        launcher: Option<&[std::ffi::OsString]>,
    ) -> Relay {
        // Each relay gets its own admin socket and state dir unless the test chose them.
        let dir = tempfile::tempdir().expect("relay temp dir");
        let mut config = config.to_owned();
        if !config.contains("[admin]") {
            let socket = dir.path().join("admin.sock");
            config.push_str(&format!(
                "\n[admin]\nsocket = {:?}\n",
                socket.display().to_string()
            ));
        }
        if !config.contains("[state]") {
            let state = dir.path().join("state");
            config.push_str(&format!(
                "\n[state]\ndir = {:?}\n",
                state.display().to_string()
            ));
        }
        if !config.contains("learn_flight") {
            // Tests talk to loopback only, and many count the connections their mask gets:
            // the relay probes the mask only in tests that ask for it.
            config = match config.find("[tls]\n") {
                Some(at) => {
                    let end = at + "[tls]\n".len();
                    format!("{}learn_flight = false\n{}", &config[..end], &config[end..])
                }
                None => format!("{config}\n[tls]\nlearn_flight = false\n"),
            };
        }
        if !config.contains("[metrics]") {
            // Relays run in parallel: never the shared default port. A port picked just
            // before may come back again (it was released): never one the config uses.
            let port = std::iter::repeat_with(crate::util::free_port)
                .take(100)
                .find(|port| !config.contains(&format!(":{port}")))
                .expect("a free port for metrics");
            config.push_str(&format!("\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
        }
        let metrics =
            relay_ctl::config::Config::parse(&config, relay_ctl::config::Origin::Embedded)
                .ok()
                .filter(|c| c.metrics.enabled)
                .map(|c| c.metrics.listen);
        let file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp config");
        std::fs::write(file.path(), &config).expect("write config");
        let path = file.into_temp_path();
        if launcher.is_some() {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .expect("chmod config");
        }
        let launcher =
            launcher.map_or_else(|| vec![relay_ctl_bin().into_os_string()], <[_]>::to_vec);
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(&launcher);
                c
            }
            None => {
                let mut c = Command::new(&launcher[0]);
                c.args(&launcher[1..]);
                c
            }
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                log.map(str::to_owned).unwrap_or_else(|| {
                    std::env::var("RELAY_TEST_LOG")
                        .unwrap_or_else(|_| "info,relay_ctl=debug".into())
                }),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn relay-ctl");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[relay-ctl] {line}");
                sink.lock().expect("log lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut relay = Relay {
            child,
            log,
            lines,
            config: config.clone(),
            config_path: path,
            metrics,
            netns: netns.map(str::to_owned),
            _dir: dir,
        };
        // The daemon's last start-up line is `ready` (text) or `"message":"ready"` (JSON);
        // earlier ones such as `admin socket ready` come before it listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = relay.wait_for("ready", left.max(Duration::from_millis(1)));
            if line.contains(": ready") || line.contains("\"message\":\"ready\"") {
                break;
            }
        }
        relay
    }

    /// Waits until a log line contains `needle`; panics with the log on timeout or exit.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "relay-ctl exited ({status}) before logging {needle:?}:\n{}",
                            self.log()
                        );
                    }
                    if Instant::now() >= deadline {
                        panic!(
                            "relay-ctl did not log {needle:?} within {timeout:?}:\n{}",
                            self.log()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "relay-ctl exited ({status:?}) before logging {needle:?}:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// The metrics endpoint's current text (an HTTP GET of `/metrics`, from the relay's
    /// namespace); panics if metrics are off or the request fails.
    pub fn scrape(&self) -> String {
        self.try_scrape()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// Like [`Relay::scrape`], returning the error.
    pub fn try_scrape(&self) -> Result<String, String> {
        let addr = self.metrics.ok_or("this relay has no metrics endpoint")?;
        let get = move || crate::metrics::scrape(addr);
        match &self.netns {
            Some(ns) => crate::netns::in_namespace(ns, get),
            None => get(),
        }
        .map_err(|e| format!("scraping {addr}: {e}"))
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (config reload).
    pub fn reload(&self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, Signal::SIGHUP).expect("SIGHUP");
    }

    /// Sends SIGKILL (the daemon gets no chance to save anything) and waits (bounded) for it to
    /// die; returns the full log.
    pub fn kill9(mut self) -> String {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, Signal::SIGKILL).expect("SIGKILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "relay-ctl survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the reader thread catch the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Sends SIGINT and waits (bounded) for a clean exit; returns the full log. A second
    /// SIGINT after 200 ms ends the drain of open connections (`[server] drain_secs`), so
    /// tests that leave connections open stop at once.
    pub fn stop(self) -> String {
        self.signal(Signal::SIGINT);
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // It may have exited already: nothing to end then.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        self.wait_exit(Duration::from_secs(10))
    }

    /// Sends `signal` (e.g. SIGTERM to start a graceful shutdown).
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("{signal}: {e}"));
    }

    /// Waits at most `limit` for the process to exit successfully; returns the full log.
    pub fn wait_exit(mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "relay-ctl exited with {status}:\n{}",
                    self.log()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "relay-ctl did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let the reader thread catch the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Relay {
    /// A relay the test did not stop (it just went out of scope, or the test panicked) is
    /// killed, so no test leaves a daemon behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
