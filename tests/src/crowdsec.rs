//! A private CrowdSec Local API per test, run from Debian's crowdsec package as `cargo xtask
//! setup` unpacks it (no install): its own config, sqlite database and port, no central API,
//! no hub, no agent (`-no-cs`). Optionally inside a network namespace, so relays in other
//! namespaces reach it over a veth.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

/// The `crowdsec` and `cscli` binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The engine / LAPI.
    pub crowdsec: PathBuf,
    /// The CLI.
    pub cscli: PathBuf,
}

/// Finds the binaries: `CROWDSEC_BIN`/`CSCLI_BIN`, then `PATH`, then the package `cargo xtask
/// setup` unpacked into `<target>/crowdsec/root`.
pub fn binaries() -> Option<Binaries> {
    if let (Some(c), Some(l)) = (
        std::env::var_os("CROWDSEC_BIN"),
        std::env::var_os("CSCLI_BIN"),
    ) {
        return Some(Binaries {
            crowdsec: c.into(),
            cscli: l.into(),
        });
    }
    let on_path = |name: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    if let (Some(crowdsec), Some(cscli)) = (on_path("crowdsec"), on_path("cscli")) {
        return Some(Binaries { crowdsec, cscli });
    }
    // target/<profile>/deps/<test> → target/crowdsec/root/usr/bin
    let exe = std::env::current_exe().ok()?;
    let bin = exe
        .parent()?
        .parent()?
        .parent()?
        .join("crowdsec/root/usr/bin");
    let found = Binaries {
        crowdsec: bin.join("crowdsec"),
        cscli: bin.join("cscli"),
    };
    (found.crowdsec.is_file() && found.cscli.is_file()).then_some(found)
}

/// The binaries, or `None` after printing a skip line (a failure under `CI=true`, where
/// `cargo xtask setup` must have unpacked them).
pub fn binaries_or_skip(test: &str) -> Option<Binaries> {
    if let Some(b) = binaries() {
        return Some(b);
    }
    let reason =
        "no crowdsec/cscli binaries (run `cargo xtask setup`, or set CROWDSEC_BIN and CSCLI_BIN)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    eprintln!("SKIP {test}: {reason}");
    None
}

/// A running LAPI; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Lapi {
    bins: Binaries,
    dir: tempfile::TempDir,
    child: Option<Child>,
    netns: Option<String>,
    /// Base URL relays use.
    pub url: String,
}

const MACHINE: &str = "relay-test";
const MACHINE_PASSWORD: &str = "relay-test-pw";

impl Lapi {
    /// Writes a private config, registers the harness's own machine (for cscli), and starts
    /// the LAPI listening on `listen` (`ip:port`), inside `netns` if given; waits for
    /// `/health`.
    pub fn start(bins: &Binaries, netns: Option<&str>, listen: &str) -> Lapi {
        Lapi::start_with(bins, netns, listen, None)
    }

    /// Like [`Lapi::start`], serving HTTPS with `tls` = (certificate, key) PEM files. The
    /// harness's cscli skips verifying it.
    pub fn start_with(
        bins: &Binaries,
        netns: Option<&str>,
        listen: &str,
        tls: Option<(&Path, &Path)>,
    ) -> Lapi {
        let dir = tempfile::tempdir().expect("LAPI temp dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).expect("data dir");
        std::fs::write(
            d.join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\n\
             decisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )
        .expect("profiles.yaml");
        let tls_server = tls.map_or_else(String::new, |(cert, key)| {
            format!(
                "    tls:\n      cert_file: {}\n      key_file: {}\n",
                cert.display(),
                key.display()
            )
        });
        let config = format!(
            "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n\
             config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n\
             db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: true\n  flush:\n    max_items: 200000\n    max_age: 30d\n\
             api:\n  client:\n    insecure_skip_verify: true\n    credentials_path: {d}/local_api_credentials.yaml\n\
             \x20 server:\n    listen_uri: {listen}\n    profiles_path: {d}/profiles.yaml\n{tls_server}\
             prometheus:\n  enabled: false\n",
            d = d.display()
        );
        std::fs::write(d.join("config.yaml"), config).expect("config.yaml");
        let mut lapi = Lapi {
            bins: bins.clone(),
            dir,
            child: None,
            netns: netns.map(str::to_owned),
            url: format!(
                "{}://{listen}",
                if tls.is_some() { "https" } else { "http" }
            ),
        };
        let creds = lapi.dir.path().join("local_api_credentials.yaml");
        let creds = creds.display().to_string();
        let url = lapi.url.clone();
        lapi.cscli(&[
            "machines",
            "add",
            MACHINE,
            "--password",
            MACHINE_PASSWORD,
            "-f",
            &creds,
            "-u",
            &url,
        ]);
        let log = std::fs::File::create(lapi.dir.path().join("lapi.log")).expect("lapi.log");
        let mut command = lapi.command(&lapi.bins.crowdsec);
        let child = command
            .arg("-c")
            .arg(lapi.dir.path().join("config.yaml"))
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn crowdsec");
        lapi.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !lapi.healthy() {
            assert!(
                Instant::now() < deadline,
                "LAPI not healthy within 20 s:\n{}",
                lapi.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lapi
    }

    fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn healthy(&self) -> bool {
        if let Some(hostport) = self.url.strip_prefix("https://") {
            // Listening is ready enough for TLS: the harness speaks no TLS itself.
            let Ok(addr) = hostport.parse::<std::net::SocketAddr>() else {
                return false;
            };
            let connect = move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            };
            return match &self.netns {
                Some(ns) => crate::netns::in_namespace(ns, connect),
                None => connect(),
            };
        }
        let Some(hostport) = self.url.strip_prefix("http://") else {
            return false;
        };
        let hostport = hostport.to_owned();
        let get = move || {
            use std::io::{Read as _, Write as _};
            let Ok(addr) = hostport.parse::<std::net::SocketAddr>() else {
                return false;
            };
            let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!("GET /health HTTP/1.0\r\nHost: {hostport}\r\n\r\n");
            if s.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
        };
        match &self.netns {
            Some(ns) => crate::netns::in_namespace(ns, get),
            None => get(),
        }
    }

    /// Runs `cscli -c <config> ARGS` (in the LAPI's namespace: some subcommands go over HTTP)
    /// and returns its stdout; panics on failure.
    pub fn cscli(&self, args: &[&str]) -> String {
        self.try_cscli(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Lapi::cscli`], returning the failure as text.
    pub fn try_cscli(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(&self.bins.cscli)
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .arg("--error")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cscli");
        if !out.status.success() {
            return Err(format!(
                "cscli {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Registers a bouncer with a fixed key.
    pub fn add_bouncer(&self, name: &str, key: &str) {
        self.cscli(&["bouncers", "add", name, "-k", key]);
    }

    /// Registers a machine (validated) for publishing.
    pub fn add_machine(&self, name: &str, password: &str) {
        let creds = self.dir.path().join(format!("{name}.yaml"));
        let creds = creds.display().to_string();
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "-f",
            &creds,
            "-u",
            &self.url,
        ]);
    }

    /// Imports decisions from CSV text (`duration,scope,value,reason,type` header); their
    /// origin is `cscli-import`. Sent in files of 10,000 rows, each retried (at most 5 times)
    /// when sqlite reports the database locked by the bouncers' concurrent polls.
    pub fn import(&self, csv: &str) {
        let mut lines = csv.lines();
        let header = lines.next().unwrap_or_default();
        let rows: Vec<&str> = lines.collect();
        let file = self.dir.path().join("import.csv");
        let file_arg = file.display().to_string();
        for chunk in rows.chunks(10_000) {
            let mut text = format!("{header}\n");
            for row in chunk {
                text.push_str(row);
                text.push('\n');
            }
            std::fs::write(&file, text).expect("write import csv");
            for attempt in 1..=5 {
                match self.try_cscli(&["decisions", "import", "-i", &file_arg]) {
                    Ok(_) => break,
                    Err(e) if attempt < 5 && e.contains("database is locked") => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    /// The LAPI's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lapi.log")).unwrap_or_default()
    }

    /// Stops the LAPI with `signal` and waits (bounded) for it to exit; SIGKILL after 10 s.
    pub fn stop_with(&mut self, signal: Signal) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Under `ip netns exec` the child is ip, which execs crowdsec: the same pid.
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop_with(Signal::SIGTERM);
    }
}
