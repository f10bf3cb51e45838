//! The real third-party clients (Telethon, kurigram, TDLib) as test drivers: the Python scripts in
//! `tests/clients/`, run from the venv `cargo xtask setup` creates, with a hard deadline.
//!
//! Each script prints one JSON line (`{"ok": true, "echoed": [...]}` or
//! `{"ok": false, "error": ...}` / `{"ok": false, "size": .., "got": ..}`) and exits 0 only if
//! every echo matched.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The venv: `RELAY_VENV` if set (by `cargo xtask test`), else `<workspace>/.venv`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("RELAY_VENV").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(".venv")
        },
        PathBuf::from,
    )
}

/// The venv's Python, or `None` (after printing `SKIP <test>: ...`) when the venv is missing.
/// Under `CI=true` a missing venv panics: CI must never pass by skipping the real clients.
pub fn python(test: &str) -> Option<PathBuf> {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    if python.exists() {
        return Some(python);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: python venv missing ({} not found) under CI=true: run `cargo xtask setup`",
            python.display()
        );
    }
    // Straight to fd 2, past the harness's capture, so the skip is always seen.
    let line = format!("SKIP {test}: python venv missing, run cargo xtask setup\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    None
}

/// The driver scripts' directory: `RELAY_CLIENTS_DIR` if set (to try changed drivers without
/// touching the tree), else `tests/clients`.
pub fn clients_dir() -> PathBuf {
    std::env::var_os("RELAY_CLIENTS_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("clients"),
        PathBuf::from,
    )
}

/// A Telethon MTProxy transport (obfuscated2 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `ConnectionTcpMTProxyAbridged`: tag `ef`, plain secret.
    Abridged,
    /// `ConnectionTcpMTProxyIntermediate`: tag `ee`, plain secret.
    Intermediate,
    /// `ConnectionTcpMTProxyRandomizedIntermediate`: tag `dd`, `dd` secret.
    Randomized,
}

impl Transport {
    /// The name `telethon_echo.py --transport` takes.
    pub const fn name(self) -> &'static str {
        match self {
            Transport::Abridged => "abridged",
            Transport::Intermediate => "intermediate",
            Transport::Randomized => "randomized",
        }
    }

    /// The obfuscated2 protocol tag this transport puts in its header.
    pub const fn tag(self) -> [u8; 4] {
        match self {
            Transport::Abridged => [0xef; 4],
            Transport::Intermediate => [0xee; 4],
            Transport::Randomized => [0xdd; 4],
        }
    }
}

/// One echo run: where to connect, with which secret, to which DC, which payload sizes.
#[derive(Clone, Debug)]
pub struct Echo {
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// The link's secret field (hex; `dd…` or `ee…` prefixes as the client expects).
    pub secret: String,
    /// DC id the client asks for (negative: media, +10000: test DC).
    pub dc: i16,
    /// Payload sizes, echoed one after the other on one connection.
    pub sizes: Vec<usize>,
    /// Per-operation timeout inside the script.
    pub op_timeout: Duration,
    /// Hard limit for the whole process; it is killed after this.
    pub deadline: Duration,
    /// Source address to connect from (Telethon only; `None`: the kernel's choice).
    pub local_addr: Option<String>,
    /// Connections made one after the other in one process, each connect, echo and close
    /// (the script stops at the first failure and reports its index).
    pub connections: usize,
    /// With several `connections`: how many may be open at once.
    pub parallel: usize,
}

impl Echo {
    /// An echo run against `127.0.0.1:port` with generous default timeouts.
    pub fn local(port: u16, secret: impl Into<String>, dc: i16, sizes: &[usize]) -> Echo {
        Echo {
            host: "127.0.0.1".to_owned(),
            port,
            secret: secret.into(),
            dc,
            sizes: sizes.to_vec(),
            op_timeout: Duration::from_secs(90),
            deadline: Duration::from_secs(180),
            local_addr: None,
            connections: 1,
            parallel: 1,
        }
    }

    /// Runs `telethon_echo.py` with `transport`.
    pub fn telethon(&self, python: &Path, transport: Transport) -> ClientRun {
        let mut args = self.common_args();
        args.extend(["--transport".to_owned(), transport.name().to_owned()]);
        if let Some(addr) = &self.local_addr {
            args.extend(["--local-addr".to_owned(), addr.clone()]);
        }
        run_script(python, "telethon_echo.py", &args, self.deadline)
    }

    /// Runs `kurigram_echo.py` (fake TLS; the secret must be `ee` + secret + hex(domain)).
    pub fn kurigram(&self, python: &Path) -> ClientRun {
        let args = self.common_args();
        run_script(python, "kurigram_echo.py", &args, self.deadline)
    }

    /// Runs `tdlib_test_proxy.py`: TDLib's `testProxy` to DC `dc` through the proxy (any
    /// mode: the secret's prefix chooses it). Sizes and connection counts are not used.
    pub fn tdlib(&self, python: &Path) -> ClientRun {
        let args = vec![
            "--host".to_owned(),
            self.host.clone(),
            "--port".to_owned(),
            self.port.to_string(),
            "--secret".to_owned(),
            self.secret.clone(),
            "--dc".to_owned(),
            self.dc.to_string(),
            "--timeout".to_owned(),
            format!("{}", self.op_timeout.as_secs_f64()),
        ];
        run_script(python, "tdlib_test_proxy.py", &args, self.deadline)
    }

    fn common_args(&self) -> Vec<String> {
        let sizes: Vec<String> = self.sizes.iter().map(ToString::to_string).collect();
        vec![
            "--host".to_owned(),
            self.host.clone(),
            "--port".to_owned(),
            self.port.to_string(),
            "--secret".to_owned(),
            self.secret.clone(),
            "--dc".to_owned(),
            self.dc.to_string(),
            "--sizes".to_owned(),
            sizes.join(","),
            "--timeout".to_owned(),
            format!("{}", self.op_timeout.as_secs_f64()),
            "--connections".to_owned(),
            self.connections.to_string(),
            "--parallel".to_owned(),
            self.parallel.to_string(),
        ]
    }
}

/// What a driver did.
#[derive(Debug)]
pub struct ClientRun {
    /// Exit code (`None`: killed, by signal or by the deadline).
    pub code: Option<i32>,
    /// Whether the deadline killed it.
    pub timed_out: bool,
    /// The JSON line, if one was printed and parsed.
    pub json: Option<serde_json::Value>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl ClientRun {
    /// Exit 0, `"ok": true` and not timed out.
    pub fn ok(&self) -> bool {
        !self.timed_out
            && self.code == Some(0)
            && self
                .json
                .as_ref()
                .and_then(|j| j.get("ok"))
                .and_then(serde_json::Value::as_bool)
                == Some(true)
    }

    /// The sizes the client reported as echoed byte for byte.
    pub fn echoed(&self) -> Vec<usize> {
        self.json
            .as_ref()
            .and_then(|j| j.get("echoed"))
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(serde_json::Value::as_u64)
                    .filter_map(|n| usize::try_from(n).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The client's `error` field, if it reported one.
    pub fn error(&self) -> Option<&str> {
        self.json
            .as_ref()
            .and_then(|j| j.get("error"))
            .and_then(serde_json::Value::as_str)
    }

    /// A one-paragraph account for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}{} after {:.1?}\nstdout: {}\nstderr: {}",
            self.code,
            if self.timed_out {
                " (killed at deadline)"
            } else {
                ""
            },
            self.elapsed,
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// Runs `python <clients>/<script> <args>`, killing it at `deadline`.
pub fn run_script(python: &Path, script: &str, args: &[String], deadline: Duration) -> ClientRun {
    let start = Instant::now();
    let mut child = Command::new(python)
        .arg(clients_dir().join(script))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {script}: {e}", python.display()));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = start + deadline;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for client") {
            break status;
        }
        if Instant::now() >= end {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed client");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    let json = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok());
    ClientRun {
        code: status.code(),
        timed_out,
        json,
        stdout,
        stderr,
        elapsed,
    }
}
