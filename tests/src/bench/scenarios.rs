//! The orchestrator behind `cargo xtask bench` (binary `relay-bench`).
//!
//! ```text
//! relay-bench --bin-dir target/release [--smoke] [--json PATH] [--only GROUP,GROUP]
//!             [--peer NAME=PATH]... [--peer-python PATH]
//!             [--xdp-baseline OBJECT]
//! ```
//!
//! Groups, in order (each with relay-ctl started fresh on its own configuration):
//! `crypto` (openssl and the in-process transform), `xdp-verdict` (relay's XDP verdict in ns
//! per packet with `BPF_PROG_TEST_RUN`, next to a minimal program doing the same lookups:
//! [`super::xdp`]), `main` (1 user, fast mode: throughput,
//! handshakes, latency; then the target row with XDP forced native, forced generic and off,
//! and the target row's and the handshakes' load through `relay-floor`, a forwarder with no
//! protocol and no crypto: the floor the topology sets; and the handshakes through
//! `relay-floor --move dd`, a `dd` relay's essential work on a hand-written epoll loop),
//! `passthrough` (the 8 × 16 KiB `dd` fast-mode load with `[server] passthrough` on each of
//! its paths: the sockmap program, splice, plain copies; each next to `relay-floor` moving the
//! same load the same way, with process and whole-machine CPU-seconds per GB),
//! `slow` (fast mode off: throughput), `users` (1,000 users:
//! handshakes), `memory` (idle connections), `flood` (XDP as `auto` attaches it, then XDP off),
//! `middle` (`[upstream] mode = "middle"` against the fake middle-end `relay-fakeme`, next to
//! the same rows in direct mode on a fresh relay: `dd` and fake-TLS handshakes per relay
//! CPU-second, and `dd` throughput (relay CPU-seconds per GB) with the generator sending
//! padded-intermediate frames and reading the framed echoes).
//!
//! `peers` (with `--peer NAME=PATH`, or named in `--only`): relay next to other MTProto
//! proxies built on the machine (telemt, mtprotoproxy, the official C proxy; see
//! [`super::peers`]), each started alone in the server namespace with a configuration written
//! here, direct to the fake DC (the C proxy, which has only middle mode, through the fake
//! middle-end next to relay in middle mode), and given exactly relay's load and measurement:
//! CPU-seconds per GB echoed, `dd` and fake-TLS handshakes per CPU-second with 1 and with
//! 100 users, KiB per idle connection; the report prints relay's ratio to each peer and to
//! the best one.
//!
//! Two more groups run only when named in `--only`, for iterating on one figure quickly:
//! `handshakes` (`dd` and fake-TLS handshakes with 1 and with 1,000 users) and `target` (one
//! row per target of the issue: crypto, the 8 × 16 KiB `dd` fast-mode throughput row (also
//! with XDP forced native, forced generic, and off), handshakes with 1 and 1,000 users, idle
//! memory, the floor's rows; no flood).
//!
//! Every relay runs `[xdp] mode = "auto"` as an operator's would (TC ingress on the veth), except
//! where a row says otherwise.
//!
//! Exit status: 0 when every scenario ran (whatever the figures), 1 when one could not run,
//! 2 when the harness could not start at all, 130 when interrupted.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use relay_ctl::config::XdpMode;
use serde_json::{Map, Value, json};

use super::{
    args::Args,
    crypto,
    net::{
        self, BLOCKED_NET, CLIENT, DC, DC_PORT, FLOOR_PORT, LIMITED_NET, ME_PORT, Net, PEER_PORT,
        RELAY_PORT, SERVER, SERVER_UP, SOURCE_BASE, SOURCES,
    },
    peers::{self, Peer},
    procfs::{self, SysCpu},
    report,
    spawn::{self, Proc, Stream},
    xdp,
};

/// The fake-TLS domain of every generated configuration.
const DOMAIN: &str = "bench.example.org";
/// The scenario groups, in the order they run.
const GROUPS: [&str; 12] = [
    "crypto",
    "xdp-verdict",
    "main",
    "passthrough",
    "slow",
    "users",
    "memory",
    "flood",
    "middle",
    "peers",
    "handshakes",
    "target",
];
/// Share of the wanted idle connections that must open for a per-connection memory figure.
const MIN_IDLE_OPENED: f64 = 0.9;

/// Groups that repeat scenarios of the others: they run only when `--only` names them.
const ON_REQUEST: [&str; 2] = ["handshakes", "target"];
/// User counts of the peers group's handshake rows.
const PEER_USERS: [usize; 2] = [1, 100];
/// Frame sizes of the throughput matrix.
const FRAMES: [usize; 2] = [1024, 16 * 1024];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Entry point of `relay-bench`.
pub fn main() -> ExitCode {
    let options = match Options::from_env() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Command-line options.
struct Options {
    smoke: bool,
    json: PathBuf,
    bin_dir: PathBuf,
    only: Vec<String>,
    /// Other proxies to measure next to relay (`--peer NAME=PATH`, repeatable).
    peers: Vec<Peer>,
    /// The interpreter mtprotoproxy runs on (`--peer-python`, default `python3`).
    peer_python: PathBuf,
    /// Another build's XDP object for the `xdp-verdict` group to measure alongside.
    xdp_baseline: Option<PathBuf>,
}

impl Options {
    fn from_env() -> Result<Options> {
        let mut args = Args::from_env()?;
        let smoke = args.flag("smoke");
        let bin_dir: PathBuf = args.need("bin-dir")?;
        let json = args.get("json", PathBuf::from("target/bench/report.json"))?;
        let xdp_baseline = args.opt("xdp-baseline")?;
        let only: Vec<String> = args
            .get("only", String::new())?
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        let peers = args
            .all("peer")
            .iter()
            .map(|p| p.parse::<Peer>())
            .collect::<Result<Vec<_>, _>>()?;
        let peer_python = args.get("peer-python", PathBuf::from("python3"))?;
        args.finish()?;
        if let Some(unknown) = only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
            bail!("--only {unknown}: groups are {}", GROUPS.join(", "));
        }
        Ok(Options {
            smoke,
            json,
            bin_dir,
            only,
            peers,
            peer_python,
            xdp_baseline,
        })
    }

    fn wants(&self, group: &str) -> bool {
        if self.only.is_empty() {
            // Peers run when some are given: CI's smoke run has none.
            if group == "peers" {
                return !self.peers.is_empty();
            }
            return !ON_REQUEST.contains(&group);
        }
        self.only.iter().any(|g| g == group)
    }
}

/// How long and how big each scenario is.
struct Profile {
    tp_secs: f64,
    tp_warmup: f64,
    conns: [usize; 3],
    /// Index into `conns` of the target's row (8 connections in a full run).
    target_conns: usize,
    hs_secs: f64,
    hs_workers: usize,
    idle_conns: usize,
    lat_secs: f64,
    /// The flood alone (relay CPU, drops).
    flood_alone_secs: f64,
    /// The flood with legit load.
    flood_secs: f64,
    flood_pps: u64,
    legit_conns: usize,
    crypto_budget: Duration,
}

impl Profile {
    fn new(smoke: bool) -> Profile {
        if smoke {
            Profile {
                tp_secs: 0.2,
                tp_warmup: 0.05,
                conns: [1, 2, 4],
                target_conns: 1,
                hs_secs: 0.3,
                hs_workers: 4,
                idle_conns: 100,
                lat_secs: 0.2,
                flood_alone_secs: 0.3,
                flood_secs: 0.3,
                flood_pps: 20_000,
                legit_conns: 2,
                crypto_budget: Duration::from_millis(100),
            }
        } else {
            Profile {
                tp_secs: 3.0,
                tp_warmup: 0.5,
                conns: [1, 8, 64],
                target_conns: 1,
                hs_secs: 3.0,
                hs_workers: 32,
                idle_conns: 10_000,
                lat_secs: 3.0,
                flood_alone_secs: 3.0,
                flood_secs: 4.0,
                flood_pps: 200_000,
                legit_conns: 8,
                crypto_budget: Duration::from_secs(1),
            }
        }
    }
}

/// The binaries the harness runs.
struct Bins {
    relay_ctl: PathBuf,
    loadgen: PathBuf,
    fakedc: PathBuf,
    fakeme: PathBuf,
    flood: PathBuf,
    floor: PathBuf,
}

impl Bins {
    fn find(dir: &Path) -> Result<Bins> {
        let bin = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} not found: build with `cargo build --release -p relay-ctl -p relay-tests --bins`",
                    path.display()
                );
            }
            Ok(path)
        };
        Ok(Bins {
            relay_ctl: bin("relay-ctl")?,
            loadgen: bin("relay-loadgen")?,
            fakedc: bin("relay-fakedc")?,
            fakeme: bin("relay-fakeme")?,
            flood: bin("relay-flood")?,
            floor: bin("relay-floor")?,
        })
    }
}

fn run(options: &Options) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark needs root: it creates network namespaces and attaches XDP");
    }
    let bins = Bins::find(&options.bin_dir)?;
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::sigaction(signal, &action) }?;
    }
    procfs::raise_nofile(spawn::NOFILE)?;
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("{}{id}", net::NS_PREFIX));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let outcome = (|| -> Result<Value> {
        let net = Net::create(id)?;
        let mut bench = Bench::start(options, bins, net, dir.clone())?;
        bench.run_groups();
        Ok(bench.finish())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let report = outcome?;
    let markdown = report::markdown(&report);
    println!("{markdown}");
    if let Some(parent) = options.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", options.json.display()))?;
    eprintln!(
        "relay-bench: JSON report written to {}",
        options.json.display()
    );
    let errors = report["errors"].as_array().map_or(0, Vec::len);
    Ok(if INTERRUPTED.load(Ordering::Relaxed) {
        ExitCode::from(130)
    } else if errors > 0 {
        eprintln!("relay-bench: {errors} scenario(s) could not run; see `errors` in the report");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// How the relay under test is configured.
#[derive(Clone, Copy)]
struct Spec {
    label: &'static str,
    users: usize,
    fast: bool,
    /// `[xdp] mode`: `Auto` is what an operator gets (native, or the TC hook on a veth).
    xdp: XdpMode,
    /// The flood configuration: default SYN limits and the blocked range; otherwise limits so
    /// high that the benchmark's own connections are never limited.
    flood: bool,
    /// `[upstream] mode = "middle"` through the fake middle-end (see [`Bench::middle_group`]);
    /// otherwise direct to the fake DC.
    middle: bool,
    /// `[server] passthrough`: `auto` (the sockmap program), `splice` or `copy`.
    passthrough: &'static str,
}

impl Spec {
    /// A relay as an operator runs it: fast mode, XDP `auto`, no flood limits, direct to the
    /// fake DC, passthrough `auto`.
    fn new(label: &'static str, users: usize) -> Spec {
        Spec {
            label,
            users,
            fast: true,
            xdp: XdpMode::Auto,
            flood: false,
            middle: false,
            passthrough: "auto",
        }
    }
}

/// `mode` as `[xdp] mode` spells it.
fn xdp_mode_name(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Auto => "auto",
        XdpMode::Native => "native",
        XdpMode::Generic => "generic",
        XdpMode::Tc => "tc",
        XdpMode::Off => "off",
    }
}

/// The mode relay-ctl logged for its attachment (`XDP attached … mode=generic`).
fn attached_mode(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("XDP attached"))?;
    let rest = &line[line.find("mode=")? + "mode=".len()..];
    let mode: String = rest
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    (!mode.is_empty()).then_some(mode)
}

/// A running relay-ctl.
struct Relay {
    proc: Proc,
    spec: Spec,
    /// How the program ended up attached: `native`, `generic`, `tc` or `off`.
    xdp_mode: String,
    admin: PathBuf,
    secrets: PathBuf,
}

/// CPU of the three processes and the machine at one instant.
struct Sample {
    at: Instant,
    relay: f64,
    dc: f64,
    generator: f64,
    machine: SysCpu,
}

/// The generator's `begin` and `end` samples.
struct Window {
    begin: Sample,
    end: Sample,
}

impl Window {
    fn secs(&self) -> f64 {
        self.end.at.duration_since(self.begin.at).as_secs_f64()
    }

    fn json(&self) -> Value {
        let secs = self.secs();
        let m = self.end.machine.since(&self.begin.machine);
        let pct = |cpu: f64| 100.0 * cpu / secs.max(1e-9);
        let ours = (self.end.relay - self.begin.relay)
            + (self.end.dc - self.begin.dc)
            + (self.end.generator - self.begin.generator);
        json!({
            "secs": secs,
            "relay_cpu_secs": self.end.relay - self.begin.relay,
            "dc_cpu_secs": self.end.dc - self.begin.dc,
            "generator_cpu_secs": self.end.generator - self.begin.generator,
            "machine_busy_cpu_secs": m.total - m.idle,
            "relay_cpu_pct": pct(self.end.relay - self.begin.relay),
            "dc_cpu_pct": pct(self.end.dc - self.begin.dc),
            "generator_cpu_pct": pct(self.end.generator - self.begin.generator),
            "machine_cpu_pct": {
                "user": pct(m.user),
                "system": pct(m.system),
                "softirq": pct(m.softirq + m.irq),
                "idle": pct(m.idle),
                // Busy time not charged to relay, fake DC or generator: other people's work,
                // ksoftirqd, interrupts that hit idle CPUs.
                "rest": pct((m.total - m.idle - ours).max(0.0)),
            },
            "load1": load1(),
        })
    }
}

/// What the generator's marker hook is told.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Marker {
    Begin,
    End,
}

/// A group of scenarios sharing one relay-ctl configuration.
type Group<'a> = fn(&mut Bench<'a>) -> Result<()>;

struct Bench<'a> {
    options: &'a Options,
    profile: Profile,
    bins: Bins,
    net: Net,
    dir: PathBuf,
    fakedc: Proc,
    /// The fake middle-end while the middle group's middle-mode rows run: the generator's
    /// windows then charge its CPU as the upstream's instead of the fake DC's.
    fakeme: Option<Proc>,
    sections: Map<String, Value>,
    errors: Vec<Value>,
    started: Instant,
    machine: Value,
}

impl<'a> Bench<'a> {
    fn start(options: &'a Options, bins: Bins, net: Net, dir: PathBuf) -> Result<Bench<'a>> {
        let machine = machine_info();
        let dc_addr = format!("{DC}:{DC_PORT}");
        let mut fakedc = spawn::spawn(
            "relay-fakedc",
            Some(&net.dc_ns),
            &bins.fakedc,
            &[
                "--listen",
                &dc_addr,
                "--threads",
                "2",
                "--lifetime-secs",
                "1800",
            ],
            &[],
        )?;
        fakedc.wait_line(Stream::Out, Duration::from_secs(10), |l| {
            l.starts_with("listening")
        })?;
        Ok(Bench {
            options,
            profile: Profile::new(options.smoke),
            bins,
            net,
            dir,
            fakedc,
            fakeme: None,
            sections: Map::new(),
            errors: Vec::new(),
            started: Instant::now(),
            machine,
        })
    }

    fn interrupted() -> Result<()> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Records a scenario's outcome under `section`; a failure becomes an error entry.
    fn record(&mut self, section: &str, name: &str, outcome: Result<Value>) {
        let row = match outcome {
            Ok(mut row) => {
                row["name"] = json!(name);
                eprintln!("relay-bench: {section}: {name}: {}", summary(section, &row));
                row
            }
            Err(e) => {
                let message = format!("{e:#}");
                eprintln!("relay-bench: {section}: {name}: FAILED: {message}");
                self.errors
                    .push(json!({"section": section, "name": name, "error": message}));
                json!({"name": name, "error": message})
            }
        };
        match self.sections.get_mut(section) {
            Some(Value::Array(rows)) => rows.push(row),
            _ => {
                self.sections.insert(section.to_owned(), json!([row]));
            }
        }
    }

    fn run_groups(&mut self) {
        let groups: [Group<'a>; 12] = [
            Bench::crypto,
            Bench::xdp_verdict_group,
            Bench::main_group,
            Bench::passthrough_group,
            Bench::slow_group,
            Bench::users_group,
            Bench::memory_group,
            Bench::flood_group,
            Bench::middle_group,
            Bench::peers_group,
            Bench::handshakes_group,
            Bench::target_group,
        ];
        for (name, group) in GROUPS.into_iter().zip(groups) {
            if !self.options.wants(name) {
                continue;
            }
            if let Err(e) = Bench::interrupted().and_then(|()| group(self)) {
                let message = format!("{e:#}");
                eprintln!("relay-bench: group {name}: FAILED: {message}");
                self.errors
                    .push(json!({"section": name, "name": "group", "error": message}));
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                break;
            }
        }
    }

    fn finish(mut self) -> Value {
        let _ = self.fakedc.stop(Signal::SIGTERM, Duration::from_secs(5));
        let mut report = json!({
            "smoke": self.options.smoke,
            "generated_unix": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "duration_secs": self.started.elapsed().as_secs_f64(),
            "machine": self.machine.clone(),
            "load_after": loadavg(),
            "setup": {
                "namespaces": [self.net.server_ns, self.net.client_ns, self.net.dc_ns],
                "relay": format!("{SERVER}:{RELAY_PORT} (server namespace; XDP on {})", self.net.server_if),
                "fake_dc": format!("{DC}:{DC_PORT} (relay-fakedc, 2 epoll threads, own namespace behind a second veth)"),
                "fake_me": format!("{DC}:{ME_PORT} (relay-fakeme, the fake DC's namespace; middle group only)"),
                "generator": format!("{CLIENT} (relay-loadgen, client namespace)"),
            },
        });
        for (key, value) in std::mem::take(&mut self.sections) {
            report[key] = value;
        }
        report["errors"] = json!(self.errors);
        report["targets"] = report::targets(&report);
        if report.get("peers").is_some() {
            report["peer_comparison"] = report::peer_comparison(&report);
        }
        report
    }

    // ---- relay-ctl ----

    fn start_relay(&mut self, spec: Spec) -> Result<Relay> {
        let secrets = random_secrets(spec.users);
        let admin = self.dir.join(format!("admin-{}.sock", spec.label));
        let state = self.dir.join(format!("state-{}", spec.label));
        let me_files = spec.middle.then(|| self.me_files());
        let config = relay_config(
            &spec,
            &secrets,
            &self.net.server_if,
            &admin,
            &state,
            me_files
                .as_ref()
                .map(|(list, secret)| (list.as_path(), secret.as_path())),
        );
        let config_path = self.dir.join(format!("relay-{}.toml", spec.label));
        std::fs::write(&config_path, &config)?;
        let secrets_path = self.dir.join(format!("secrets-{}.txt", spec.label));
        std::fs::write(&secrets_path, secrets.join("\n") + "\n")?;
        let config_arg = config_path.display().to_string();
        let mut proc = spawn::spawn(
            "relay-ctl",
            Some(&self.net.server_ns),
            &self.bins.relay_ctl,
            &["run", "--config", &config_arg],
            // The operator's default level; at info nothing is logged per connection, and
            // nothing is spent on a per-connection span (see `listener::accept_loop`).
            &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
        )?;
        proc.wait_line(Stream::Err, Duration::from_secs(30), |l| {
            l.contains("ready")
        })?;
        let xdp_mode = if spec.xdp == XdpMode::Off {
            "off".to_owned()
        } else {
            attached_mode(&proc.tail()).with_context(|| {
                format!("relay-ctl did not log `XDP attached`:\n{}", proc.tail())
            })?
        };
        eprintln!(
            "relay-bench: relay-ctl `{}` ready (pid {}, {} user(s), fast mode {}, XDP {})",
            spec.label,
            proc.pid(),
            spec.users,
            if spec.fast { "on" } else { "off" },
            xdp_mode
        );
        Ok(Relay {
            proc,
            spec,
            xdp_mode,
            admin,
            secrets: secrets_path,
        })
    }

    fn stop_relay(&mut self, mut relay: Relay) {
        // What the relay itself counted: a failed handshake in a scenario shows up here.
        let stats = relay_stats(&self.bins.relay_ctl, &relay.admin).map_or_else(
            |e| json!({"error": format!("{e:#}")}),
            |s| {
                let failures: Map<String, Value> = s["handshake_failures"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter(|(_, v)| v.as_u64() != Some(0))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "connections_accepted": s["connections_accepted"],
                    "handshake_failures": failures,
                    "bans_total": s["bans_total"],
                    "enforcement": s["enforcement"],
                })
            },
        );
        let entry = json!({"label": relay.spec.label, "users": relay.spec.users,
            "fast_mode": relay.spec.fast, "xdp": relay.xdp_mode, "stats": stats});
        match self.sections.get_mut("relays") {
            Some(Value::Array(all)) => all.push(entry),
            _ => {
                self.sections.insert("relays".to_owned(), json!([entry]));
            }
        }
        if let Err(e) = relay.proc.stop(Signal::SIGINT, Duration::from_secs(15)) {
            self.errors.push(json!({"section": relay.spec.label, "name": "stop relay-ctl", "error": format!("{e:#}")}));
        }
    }

    // ---- the generator ----

    /// Runs `relay-loadgen MODE ARGS` in the client namespace, sampling CPU at its `begin` and
    /// `end` lines and calling `hook` right after each sample; returns its result, the window
    /// and what the hook returned.
    /// Runs the generator in `mode`, sampling CPU at its `begin` and `end` lines; `measured`
    /// is the process whose CPU the window reports as the relay's (a relay-ctl, or the floor
    /// forwarder).
    fn loadgen(
        &self,
        measured: Option<&Proc>,
        mode: &str,
        args: &[String],
        timeout: Duration,
        hook: &mut dyn FnMut(Marker, &mut Proc) -> Result<Value>,
    ) -> Result<(Value, Window, Value, Value)> {
        Bench::interrupted()?;
        let relay_pid = match measured {
            Some(proc) => {
                if !alive(proc.pid()) {
                    bail!("{} is not running:\n{}", proc.name, proc.tail());
                }
                Some(proc.pid())
            }
            None => None,
        };
        let mut argv = vec![mode.to_owned()];
        argv.extend_from_slice(args);
        let mut generator = spawn::spawn(
            "relay-loadgen",
            Some(&self.net.client_ns),
            &self.bins.loadgen,
            &argv,
            &[],
        )?;
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let upstream = self.fakeme.as_ref().unwrap_or(&self.fakedc);
        let pids = (relay_pid, upstream.pid(), generator.pid());
        generator.wait_line(Stream::Out, left(), |l| l.starts_with("begin"))?;
        let begin = sample(pids);
        let at_begin = hook(Marker::Begin, &mut generator)?;
        generator.wait_line(Stream::Out, left(), |l| l == "end")?;
        let end = sample(pids);
        let at_end = hook(Marker::End, &mut generator)?;
        let line = generator.wait_line(Stream::Out, left(), |l| l.starts_with("result "))?;
        generator.wait_success(left().max(Duration::from_secs(1)))?;
        let result: Value = serde_json::from_str(&line["result ".len()..])
            .with_context(|| format!("relay-loadgen printed `{line}`"))?;
        Ok((result, Window { begin, end }, at_begin, at_end))
    }

    fn target_args(&self, relay: &Relay, mode: &str) -> Vec<String> {
        client_args(
            RELAY_PORT,
            mode,
            &relay.secrets,
            relay.spec.users,
            relay.spec.middle,
        )
    }

    // ---- groups ----

    fn crypto(&mut self) -> Result<()> {
        let openssl = crypto::openssl_speed(self.options.smoke);
        let transform = crypto::transform(self.profile.crypto_budget);
        let handshake = crypto::handshake_costs(self.profile.crypto_budget / 4);
        let middle = crypto::middle_framing(self.profile.crypto_budget);
        let mut section = json!({
            "transform": transform,
            "handshake_us": handshake,
            "middle_framing": middle,
        });
        match openssl {
            Ok(openssl) => {
                let ratio = section["transform"]["to_upstream_bytes_per_sec"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / openssl["bytes_per_sec"].as_f64().unwrap_or(f64::NAN);
                eprintln!(
                    "relay-bench: crypto: openssl {:.2} GB/s, ToUpstream {:.2} GB/s, ratio {ratio:.2}; handshake µs: {}",
                    openssl["bytes_per_sec"].as_f64().unwrap_or(0.0) / 1e9,
                    section["transform"]["to_upstream_bytes_per_sec"]
                        .as_f64()
                        .unwrap_or(0.0)
                        / 1e9,
                    section["handshake_us"],
                );
                section["openssl"] = openssl;
                section["transform_to_openssl"] = json!(ratio);
            }
            Err(e) => {
                self.errors.push(
                    json!({"section": "crypto", "name": "openssl speed", "error": format!("{e:#}")}),
                );
            }
        }
        self.sections.insert("crypto".to_owned(), section);
        Ok(())
    }

    /// relay's XDP verdict in ns per packet next to the minimal program's
    /// ([`xdp::verdict_costs`]): no relay process, no network.
    fn xdp_verdict_group(&mut self) -> Result<()> {
        for row in xdp::verdict_costs(self.options.smoke, self.options.xdp_baseline.clone())? {
            let name = row["name"].as_str().unwrap_or("").to_owned();
            self.record("xdp_verdict", &name, Ok(row));
        }
        Ok(())
    }

    fn main_group(&mut self) -> Result<()> {
        let relay = self.start_relay(Spec::new("main", 1))?;
        self.throughput_matrix(&relay);
        for mode in ["dd", "tls"] {
            let outcome = self.handshakes(&relay, mode, "random");
            self.record("handshakes", &format!("{mode} 1 user"), outcome);
        }
        // The baseline is taken before and after the relayed runs and averaged, so drift in
        // the machine's load during the section shifts both sides alike.
        let before = self.latency(&relay, "direct");
        let relayed = ["dd", "tls"].map(|mode| (mode, self.latency(&relay, mode)));
        let after = self.latency(&relay, "direct");
        let baseline = |key: &str| {
            let values: Vec<f64> = [&before, &after]
                .iter()
                .filter_map(|r| r.as_ref().ok()?[key].as_f64())
                .collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        let (p50, p99) = (baseline("p50_us"), baseline("p99_us"));
        self.record("latency", "fake DC directly, before", before);
        for (mode, outcome) in relayed {
            let outcome = outcome.map(|mut v| {
                if let (Some(p50), Some(p99)) = (p50, p99) {
                    v["added_p50_us"] = json!(v["p50_us"].as_f64().unwrap_or(0.0) - p50);
                    v["added_p99_us"] = json!(v["p99_us"].as_f64().unwrap_or(0.0) - p99);
                }
                v
            });
            self.record("latency", &format!("{mode} through relay"), outcome);
        }
        self.record("latency", "fake DC directly, after", after);
        self.stop_relay(relay);
        self.xdp_contrasts()
    }

    /// The fast-mode `dd` target load (its DC → client bytes pass through unchanged) with
    /// each `[server] passthrough` path, XDP off, then `relay-floor` moving the same load the
    /// same way. Each row has the relay's (or the floor's) own CPU-seconds per GB and the
    /// whole machine's: with the sockmap program the forwarding runs in softirq and kernel
    /// workers, outside any process.
    fn passthrough_group(&mut self) -> Result<()> {
        let conns = self.profile.conns[self.profile.target_conns];
        let frame = 16 * 1024;
        for (passthrough, path) in [("auto", "sockmap"), ("splice", "splice"), ("copy", "copy")] {
            let label = match path {
                "sockmap" => "passthrough-sockmap",
                "splice" => "passthrough-splice",
                _ => "passthrough-copy",
            };
            let relay = self.start_relay(Spec {
                xdp: XdpMode::Off,
                passthrough,
                ..Spec::new(label, 1)
            })?;
            let outcome = self
                .throughput(&relay, "dd", conns, frame)
                .and_then(|mut row| {
                    // Which path the relay really took, as it counted it.
                    let stats = relay_stats(&self.bins.relay_ctl, &relay.admin)?;
                    let taken = &stats["passthrough_total"];
                    row["path"] = json!(path);
                    row["directions_by_path"] = taken.clone();
                    if taken[path].as_f64().unwrap_or(0.0) < conns as f64 {
                        bail!("the relay did not use {path}: {taken}");
                    }
                    Ok(row)
                });
            self.record("passthrough", &format!("relay {path}"), outcome);
            self.stop_relay(relay);
            Bench::interrupted()?;
            let floor =
                self.with_floor(path, |floor, args| self.echo_run(floor, args, conns, frame));
            let floor = floor.map(|mut row| {
                row["path"] = json!(path);
                row
            });
            self.record("passthrough", &format!("floor {path}"), floor);
            Bench::interrupted()?;
        }
        Ok(())
    }

    fn slow_group(&mut self) -> Result<()> {
        let relay = self.start_relay(Spec {
            fast: false,
            ..Spec::new("slow", 1)
        })?;
        self.throughput_matrix(&relay);
        self.stop_relay(relay);
        Ok(())
    }

    fn users_group(&mut self) -> Result<()> {
        let relay = self.start_relay(Spec::new("users", 1000))?;
        for mode in ["dd", "tls"] {
            // Random users: the average case, judged against the target. The first and last
            // user bound it for a relay that tries secrets in order.
            for (pick, suffix) in [
                ("random", ""),
                ("first", ", first user"),
                ("last", ", last user"),
                ("sticky", ", a user per source"),
            ] {
                let outcome = self.handshakes(&relay, mode, pick);
                self.record("handshakes", &format!("{mode} 1000 users{suffix}"), outcome);
            }
        }
        self.stop_relay(relay);
        Ok(())
    }

    fn memory_group(&mut self) -> Result<()> {
        let relay = self.start_relay(Spec::new("memory", 1))?;
        let outcome = self.idle(&relay);
        self.record("memory", "idle connections", outcome);
        self.stop_relay(relay);
        Ok(())
    }

    fn flood_group(&mut self) -> Result<()> {
        for xdp in [XdpMode::Auto, XdpMode::Off] {
            let label = if xdp == XdpMode::Off {
                "flood-off"
            } else {
                "flood-xdp"
            };
            let relay = self.start_relay(Spec {
                xdp,
                flood: true,
                ..Spec::new(label, 1)
            })?;
            let xdp = if xdp == XdpMode::Off { "off" } else { "on" };
            // The unloaded figure is the mean of a window before and one after the floods,
            // so drift in the machine's load during the group moves both sides alike.
            let before = self.flood(&relay, None, None);
            // Also a legit load paced at half of what the machine carried unloaded: whether a
            // flood disturbs a relay that is not already saturated.
            let paced = before
                .as_ref()
                .ok()
                .and_then(|v| v["legit_mb_per_sec"].as_f64())
                .map(|mb| mb * 1e6 / 2.0);
            let floods = ["blocked", "rate-limited"]
                .map(|kind| (kind, self.flood(&relay, Some(kind), paced)));
            let after = self.flood(&relay, None, paced);
            let unloaded: Vec<f64> = [&before, &after]
                .iter()
                .filter_map(|r| r.as_ref().ok()?["legit_mb_per_sec"].as_f64())
                .collect();
            let legit = (!unloaded.is_empty())
                .then(|| unloaded.iter().sum::<f64>() / unloaded.len() as f64);
            self.record("flood", &format!("XDP {xdp}, no flood, before"), before);
            for (kind, outcome) in floods {
                let outcome = outcome.map(|mut v| {
                    if let (Some(base), Some(now)) = (legit, v["legit_mb_per_sec"].as_f64()) {
                        v["legit_vs_unloaded"] = json!(now / base);
                    }
                    v
                });
                self.record("flood", &format!("XDP {xdp}, {kind} flood"), outcome);
            }
            self.record("flood", &format!("XDP {xdp}, no flood, after"), after);
            self.stop_relay(relay);
        }
        Ok(())
    }

    /// Middle mode next to direct mode, each on a fresh 1-user relay (fast mode, XDP `auto`):
    /// the same rows ([`Bench::middle_rows`]) first direct to the fake DC, then in middle mode
    /// through `relay-fakeme`, started for these rows at the fake DC's address (its own port)
    /// and stopped after them.
    fn middle_group(&mut self) -> Result<()> {
        let relay = self.start_relay(Spec::new("middle-direct", 1))?;
        self.middle_rows(&relay, "direct");
        self.stop_relay(relay);
        self.start_fakeme()?;
        let outcome = self.middle_relay();
        self.stop_fakeme();
        outcome
    }

    /// Starts `relay-fakeme` at the fake DC's address (its own port) with a fresh proxy
    /// secret and proxy list ([`Bench::me_files`]); until [`Bench::stop_fakeme`] the
    /// generator's windows charge its CPU as the upstream's.
    fn start_fakeme(&mut self) -> Result<()> {
        let (list, secret_file) = self.me_files();
        let secret: Vec<u8> = (0..128).map(|_| rand::random::<u8>()).collect();
        std::fs::write(&secret_file, &secret)?;
        let me_addr = std::net::SocketAddr::from((DC, ME_PORT));
        std::fs::write(
            &list,
            crate::fake_me::proxy_config_text(me_addr, &[1, 2, 3, 4, 5], 2),
        )?;
        let mut me = spawn::spawn(
            "relay-fakeme",
            Some(&self.net.dc_ns),
            &self.bins.fakeme,
            &[
                "--listen".to_owned(),
                me_addr.to_string(),
                "--secret-file".to_owned(),
                secret_file.display().to_string(),
                "--lifetime-secs".to_owned(),
                "1800".to_owned(),
            ],
            &[],
        )?;
        if let Err(e) = me.wait_line(Stream::Out, Duration::from_secs(10), |l| {
            l.starts_with("listening")
        }) {
            let _ = me.stop(Signal::SIGTERM, Duration::from_secs(5));
            return Err(e);
        }
        self.fakeme = Some(me);
        Ok(())
    }

    /// Stops the fake middle-end, if it runs.
    fn stop_fakeme(&mut self) {
        if let Some(mut me) = self.fakeme.take() {
            let _ = me.stop(Signal::SIGTERM, Duration::from_secs(5));
        }
    }

    /// The middle-mode half of [`Bench::middle_group`], with the fake ME running.
    fn middle_relay(&mut self) -> Result<()> {
        let relay = self.start_relay(Spec {
            middle: true,
            ..Spec::new("middle", 1)
        })?;
        // Measure the clients, not the pool's start: wait for every ME connection.
        let pool = wait_me_pool(
            relay.proc.pid(),
            MIDDLE_CONNECTIONS,
            Duration::from_secs(20),
        );
        if let Err(e) = pool {
            let tail = relay.proc.tail();
            self.stop_relay(relay);
            return Err(e.context(tail));
        }
        self.middle_rows(&relay, "middle");
        self.stop_relay(relay);
        Ok(())
    }

    /// The rows middle mode is judged on, `upstream` (`direct` or `middle`) naming them:
    /// `dd` and fake-TLS handshakes (random user of 1), and `dd` throughput with the target
    /// row's connection count at 16 KiB and 1 KiB frames.
    fn middle_rows(&mut self, relay: &Relay, upstream: &str) {
        for mode in ["dd", "tls"] {
            let outcome = self.handshakes(relay, mode, "random").map(|mut v| {
                v["load"] = json!("handshakes");
                v["upstream"] = json!(upstream);
                v
            });
            self.record("middle", &format!("{mode} handshakes, {upstream}"), outcome);
        }
        let n = self.profile.conns[self.profile.target_conns];
        for frame in [16 * 1024, 1024] {
            let outcome = self.throughput(relay, "dd", n, frame).map(|mut v| {
                v["load"] = json!("throughput");
                v["upstream"] = json!(upstream);
                v
            });
            let name = format!("dd {n}x{}KiB, {upstream}", frame / 1024);
            self.record("middle", &name, outcome);
        }
    }

    /// The fake ME's proxy list and secret files (written by [`Bench::middle_group`]).
    fn me_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("me-list.txt"), self.dir.join("me-secret.bin"))
    }

    /// Relay next to the proxies given with `--peer`, on the same load. For each user count
    /// of [`PEER_USERS`]: a fresh relay (fast mode, XDP `auto`, as an operator runs it), then
    /// each direct-mode peer in turn, started alone in the server namespace on [`PEER_PORT`]
    /// with the same number of users, direct to the fake DC, and stopped after its rows
    /// ([`Bench::subject_rows`]). A middle-only peer (the official C proxy) is measured
    /// afterwards through `relay-fakeme`, next to a relay in middle mode on the same framed
    /// load. A peer whose file is missing is skipped with a message (and listed in the
    /// report); one that fails to start is an error.
    fn peers_group(&mut self) -> Result<()> {
        let options = self.options;
        if options.peers.is_empty() {
            eprintln!("relay-bench: peers: no --peer given: only relay's rows run");
        }
        let mut skipped = Vec::new();
        let mut runnable: Vec<&Peer> = Vec::new();
        for peer in &options.peers {
            if peer.path.is_file() {
                runnable.push(peer);
            } else {
                let reason = format!(
                    "{} not found (build it as docs/bench.md says)",
                    peer.path.display()
                );
                eprintln!("relay-bench: peers: {}: skipped: {reason}", peer.kind);
                skipped.push(json!({"proxy": peer.kind.name(), "reason": reason}));
            }
        }
        self.sections
            .insert("peers_skipped".to_owned(), Value::Array(skipped));
        let (direct, middle): (Vec<&Peer>, Vec<&Peer>) =
            runnable.into_iter().partition(|p| !p.kind.middle_only());
        for users in PEER_USERS {
            Bench::interrupted()?;
            let label = if users == 1 { "peers-1" } else { "peers-100" };
            let relay = self.start_relay(Spec::new(label, users))?;
            let secrets = relay.secrets.clone();
            self.subject_rows(None, &relay.proc, RELAY_PORT, &secrets, users, "direct");
            self.stop_relay(relay);
            for peer in &direct {
                self.peer_rows(peer, users, "direct")?;
            }
        }
        if !middle.is_empty() {
            self.start_fakeme()?;
            let outcome = self.peers_middle(&middle);
            self.stop_fakeme();
            outcome?;
        }
        Ok(())
    }

    /// The middle-mode half of [`Bench::peers_group`], with the fake ME running: relay in
    /// middle mode, then each middle-only peer, with 1 user and then 100 (rows a peer
    /// cannot take are skipped with a message).
    fn peers_middle(&mut self, middle: &[&Peer]) -> Result<()> {
        for users in PEER_USERS {
            Bench::interrupted()?;
            let label = if users == 1 {
                "peers-middle-1"
            } else {
                "peers-middle-100"
            };
            let relay = self.start_relay(Spec {
                middle: true,
                ..Spec::new(label, users)
            })?;
            if let Err(e) = wait_me_pool(
                relay.proc.pid(),
                MIDDLE_CONNECTIONS,
                Duration::from_secs(20),
            ) {
                let tail = relay.proc.tail();
                self.stop_relay(relay);
                return Err(e.context(tail));
            }
            let secrets = relay.secrets.clone();
            self.subject_rows(None, &relay.proc, RELAY_PORT, &secrets, users, "middle");
            self.stop_relay(relay);
            for peer in middle {
                self.peer_rows(peer, users, "middle")?;
            }
        }
        Ok(())
    }

    /// Starts `peer` with `users` users, runs its rows through `upstream` and stops it; a
    /// failed start is recorded as an error row.
    fn peer_rows(&mut self, peer: &Peer, users: usize, upstream: &str) -> Result<()> {
        Bench::interrupted()?;
        if ["dd", "tls"]
            .iter()
            .all(|mode| peer.kind.cannot(mode, users).is_some())
        {
            let why = peer.kind.cannot("dd", users).unwrap_or_default();
            eprintln!(
                "relay-bench: peers: {}: no rows with {users} users: {why}",
                peer.kind
            );
            return Ok(());
        }
        match self.start_peer(peer, users) {
            Ok((mut proc, secrets)) => {
                self.subject_rows(Some(peer), &proc, PEER_PORT, &secrets, users, upstream);
                let _ = proc.stop(Signal::SIGTERM, Duration::from_secs(5));
            }
            Err(e) => {
                let name = format!("{}: start with {users} user(s)", peer.kind);
                self.record("peers", &name, Err(e));
            }
        }
        Ok(())
    }

    /// The rows relay and every peer are compared on, through `measured` listening on `port`
    /// of the server address with `users` users (secrets in `secrets`): with one user, the
    /// target row's `dd` throughput (CPU-seconds per GB) and idle connections (KiB each);
    /// with any count, `dd` and fake-TLS handshakes with a random user per connection (with
    /// a ClientHello padded to a real client's 517 bytes).
    fn subject_rows(
        &mut self,
        peer: Option<&Peer>,
        measured: &Proc,
        port: u16,
        secrets: &Path,
        users: usize,
        upstream: &str,
    ) {
        let proxy = peer.map_or("relay", |p| p.kind.name());
        // Through the fake ME every message is one padded-intermediate frame.
        let framed = upstream == "middle";
        let label = if framed {
            format!("{proxy} (middle)")
        } else {
            proxy.to_owned()
        };
        let tag = |mut v: Value, load: &str, mode: &str| {
            v["proxy"] = json!(proxy);
            v["upstream"] = json!(upstream);
            v["load"] = json!(load);
            v["mode"] = json!(mode);
            v["users"] = json!(users);
            v
        };
        let cannot = |mode: &str| peer.and_then(|p| p.kind.cannot(mode, users));
        for mode in ["dd", "tls"] {
            if let Some(why) = cannot(mode) {
                eprintln!(
                    "relay-bench: peers: {label}: no {mode} rows with {users} user(s): {why}"
                );
            }
        }
        if users == 1 && cannot("dd").is_none() {
            let n = self.profile.conns[self.profile.target_conns];
            let mut args = client_args(port, "dd", secrets, users, framed);
            // mtprotoproxy ends the whole connection on the client's half-close, dropping
            // the echo's tail after the window: not a failure of the measured window.
            args.push("--lax-close".to_owned());
            let outcome = self
                .echo_run(measured, args, n, 16 * 1024)
                .map(|v| tag(v, "throughput", "dd"));
            self.record("peers", &format!("{label}: dd {n}x16KiB"), outcome);
        }
        for mode in ["dd", "tls"] {
            if cannot(mode).is_some() {
                continue;
            }
            let mut args = client_args(port, mode, secrets, users, framed);
            args.extend(["--user".to_owned(), "random".to_owned()]);
            if mode == "tls" {
                // A real client's 517-byte ClientHello: mtprotoproxy refuses shorter ones.
                args.extend([
                    "--hello-len".to_owned(),
                    relay_proto::tls::CLIENT_HELLO_RECORD_LEN.to_string(),
                ]);
            }
            let outcome = self
                .handshake_run(measured, args, self.profile.hs_workers)
                .map(|v| tag(v, "handshakes", mode));
            let name = format!("{label}: {mode} handshakes, {users} user(s)");
            self.record("peers", &name, outcome);
        }
        if users == 1 && cannot("dd").is_none() {
            let args = client_args(port, "dd", secrets, users, framed);
            let outcome = self
                .idle_run(measured, args)
                .map(|v| tag(v, "memory", "dd"));
            self.record("peers", &format!("{label}: idle connections"), outcome);
        }
    }

    /// Starts `peer` with `users` fresh users in the server namespace on [`PEER_PORT`], direct
    /// to the fake DC, and waits until it listens; returns it and its secrets file.
    fn start_peer(&self, peer: &Peer, users: usize) -> Result<(Proc, PathBuf)> {
        let label = format!("peer-{}-{users}", peer.kind);
        let dir = self.dir.join(&label);
        std::fs::create_dir_all(&dir)?;
        let secrets = random_secrets(users);
        let secrets_path = dir.join("secrets.txt");
        std::fs::write(&secrets_path, secrets.join("\n") + "\n")?;
        let (_, me_secret) = self.me_files();
        let setup = peers::Setup {
            listen: (SERVER, PEER_PORT).into(),
            dc: (DC, DC_PORT).into(),
            upstream_ip: SERVER_UP.into(),
            domain: DOMAIN,
            secrets: &secrets,
            dir: &dir,
            python: &self.options.peer_python,
            me: self
                .fakeme
                .is_some()
                .then_some(((DC, ME_PORT).into(), me_secret.as_path())),
            // What its descriptors allow, a few kept for its own files and upstreams.
            max_conns: procfs::nofile_hard()?
                .min(spawn::NOFILE)
                .saturating_sub(256),
        };
        let launch = peers::launch(peer, &setup)
            .with_context(|| format!("{} cannot be started by the benchmark", peer.kind))?;
        for (path, text) in &launch.files {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        let mut proc = spawn::spawn(
            peer.kind.name(),
            Some(&self.net.server_ns),
            &launch.program,
            &launch.args,
            &[("NO_COLOR", "1")],
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !peers::listens(proc.pid(), PEER_PORT) {
            if !proc.running() {
                let status = proc.wait(Duration::from_secs(1))?;
                bail!(
                    "{} exited ({status}) before listening:\n{}",
                    proc.name,
                    proc.tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on port {PEER_PORT} within 60 s:\n{}",
                    proc.name,
                    proc.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.fakeme.is_some()
            && let Err(e) = wait_me_pool(proc.pid(), 1, Duration::from_secs(20))
        {
            bail!("{e:#}:\n{}", proc.tail());
        }
        // Let it finish starting (pools, timers) before it is measured.
        std::thread::sleep(Duration::from_millis(500));
        eprintln!(
            "relay-bench: {} ready (pid {}, {users} user(s), {})",
            peer.kind,
            proc.pid(),
            if self.fakeme.is_some() {
                "through the fake middle-end"
            } else {
                "direct to the fake DC"
            }
        );
        Ok((proc, secrets_path))
    }

    /// `dd` and fake-TLS handshakes with 1 user, then with 1,000 (random user each).
    fn handshakes_group(&mut self) -> Result<()> {
        self.handshake_pair(false)
    }

    /// One row per target (no flood): crypto, idle memory, the target throughput row,
    /// handshakes with 1 and 1,000 users.
    fn target_group(&mut self) -> Result<()> {
        self.crypto()?;
        // On a fresh relay, as in `memory`: a heap grown by throughput runs would hide growth.
        self.memory_group()?;
        self.handshake_pair(true)?;
        self.xdp_contrasts()
    }

    /// The target row again on relays with XDP forced native, forced generic, and off. On a
    /// veth, native XDP makes the kernel copy every received TCP segment (veth's XDP path
    /// needs a private, linear buffer with headroom, which locally sent segments are not)
    /// and turns off GSO on the peer, so the peer sends MTU-sized segments; generic XDP copies
    /// every packet too (it lacks XDP's headroom), though whole GSO packets. That is why the
    /// relay's `auto` mode attaches the TC hook there. The rows show what that choice is worth.
    /// Last, the target row's load and the handshake load through the floor forwarder
    /// ([`Bench::with_floor`]).
    fn xdp_contrasts(&mut self) -> Result<()> {
        for (xdp, label) in [
            (XdpMode::Native, "native-xdp"),
            (XdpMode::Generic, "generic-xdp"),
            (XdpMode::Off, "no-xdp"),
        ] {
            let relay = self.start_relay(Spec {
                xdp,
                ..Spec::new(label, 1)
            })?;
            let n = self.profile.conns[self.profile.target_conns];
            let outcome = self.throughput(&relay, "dd", n, 16 * 1024);
            let name = format!("dd fast {n}x16KiB, XDP {}", relay.xdp_mode);
            self.record("throughput", &name, outcome);
            self.stop_relay(relay);
        }
        let n = self.profile.conns[self.profile.target_conns];
        let outcome = self.with_floor("splice", |floor, args| {
            self.echo_run(floor, args, n, 16 * 1024)
        });
        self.record("throughput", "floor", outcome);
        // The same through user space, as a relay's transformed direction goes: what the
        // copies and the extra system calls add before any crypto.
        let outcome = self.with_floor("copy", |floor, args| {
            self.echo_run(floor, args, n, 16 * 1024)
        });
        self.record("throughput", "floor, copying", outcome);
        let workers = self.profile.hs_workers;
        let outcome = self.with_floor("copy", |floor, args| {
            self.handshake_run(floor, args, workers)
        });
        self.record("handshakes", "floor", outcome);
        // What the relay would start from without tokio: the same loop doing a `dd` relay's
        // essential work (header check, replay set, DC header, transform).
        let outcome = self.with_floor("dd", |floor, args| self.handshake_run(floor, args, workers));
        self.record("handshakes", "dd on an epoll loop", outcome);
        Ok(())
    }

    /// The 1-user relay's handshakes (with `full`: first the target throughput row), then the 1,000-user relay's handshakes with a random user.
    fn handshake_pair(&mut self, full: bool) -> Result<()> {
        let relay = self.start_relay(Spec::new("main", 1))?;
        if full {
            let n = self.profile.conns[self.profile.target_conns];
            let outcome = self.throughput(&relay, "dd", n, 16 * 1024).map(|mut v| {
                v["target_row"] = json!(true);
                v
            });
            self.record("throughput", &format!("dd fast {n}x16KiB"), outcome);
        }
        for mode in ["dd", "tls"] {
            let outcome = self.handshakes(&relay, mode, "random");
            self.record("handshakes", &format!("{mode} 1 user"), outcome);
        }
        self.stop_relay(relay);
        let relay = self.start_relay(Spec::new("users", 1000))?;
        for mode in ["dd", "tls"] {
            for (pick, suffix) in [("random", ""), ("sticky", ", a user per source")] {
                let outcome = self.handshakes(&relay, mode, pick);
                self.record("handshakes", &format!("{mode} 1000 users{suffix}"), outcome);
            }
        }
        self.stop_relay(relay);
        Ok(())
    }

    // ---- scenarios ----

    fn throughput_matrix(&mut self, relay: &Relay) {
        let conns = self.profile.conns;
        for mode in ["dd", "tls"] {
            for (i, n) in conns.iter().enumerate() {
                for frame in FRAMES {
                    let outcome = self.throughput(relay, mode, *n, frame).map(|mut v| {
                        let is_target = mode == "dd"
                            && relay.spec.fast
                            && i == self.profile.target_conns
                            && frame == 16 * 1024;
                        v["target_row"] = json!(is_target);
                        v
                    });
                    let fast = if relay.spec.fast { "fast" } else { "no fast" };
                    let name = format!("{mode} {fast} {n}x{}KiB", frame / 1024);
                    self.record("throughput", &name, outcome);
                }
            }
        }
    }

    fn throughput(&self, relay: &Relay, mode: &str, conns: usize, frame: usize) -> Result<Value> {
        let args = self.target_args(relay, mode);
        let mut row = self.echo_run(&relay.proc, args, conns, frame)?;
        row["mode"] = json!(mode);
        row["fast_mode"] = json!(relay.spec.fast);
        row["xdp"] = json!(relay.xdp_mode);
        Ok(row)
    }

    /// Runs `measure` against `relay-floor` (moving bytes as `how` says: `splice`, `copy`, or
    /// `dd` with a fresh secret), a forwarder with the relay's socket options and threading
    /// but none of its features, started in the server namespace on [`FLOOR_PORT`] and
    /// stopped afterwards. No kernel program is attached (the relays that attach one are
    /// stopped by then). With `splice` and `copy` (no protocol, no crypto) its figures are
    /// the floor under a relay's that makes the same system calls here; `dd` adds the
    /// essential work of a `dd` relay in the same hand-written event loop.
    fn with_floor(
        &self,
        how: &str,
        measure: impl FnOnce(&Proc, Vec<String>) -> Result<Value>,
    ) -> Result<Value> {
        let listen = format!("{SERVER}:{FLOOR_PORT}");
        let upstream = format!("{DC}:{DC_PORT}");
        let secret: String = rand::random::<[u8; 16]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut argv = [
            "--listen",
            &listen,
            "--upstream",
            &upstream,
            "--move",
            how,
            "--lifetime-secs",
            "600",
        ]
        .map(str::to_owned)
        .to_vec();
        // The generator speaks `dd` to the `dd` loop, and the DC side's protocol to the
        // forwarders, which pass it through unchanged.
        let mut args = ["--target", &listen, "--mode", "direct"]
            .map(str::to_owned)
            .to_vec();
        if how == "dd" {
            argv.extend(["--secret".to_owned(), secret.clone()]);
            args = ["--target", &listen, "--mode", "dd", "--secret", &secret]
                .map(str::to_owned)
                .to_vec();
        }
        let mut floor = spawn::spawn(
            "relay-floor",
            Some(&self.net.server_ns),
            &self.bins.floor,
            &argv,
            &[],
        )?;
        floor.wait_line(Stream::Out, Duration::from_secs(10), |l| {
            l.starts_with("listening")
        })?;
        let outcome = measure(&floor, args);
        let _ = floor.stop(Signal::SIGTERM, Duration::from_secs(5));
        let mut row = outcome?;
        row["mode"] = json!(if how == "dd" {
            "dd on a hand-written epoll loop (no limits, no timeouts, no fronting)".to_owned()
        } else {
            format!("floor: {how} forwarder, no protocol")
        });
        row["xdp"] = json!("off");
        Ok(row)
    }

    /// `conns` connections echoing `frame`-byte writes through `measured` (a relay, or the
    /// floor forwarder) for the profile's throughput window.
    fn echo_run(
        &self,
        measured: &Proc,
        mut args: Vec<String>,
        conns: usize,
        frame: usize,
    ) -> Result<Value> {
        args.extend(
            [
                "--conns",
                &conns.to_string(),
                "--frame",
                &frame.to_string(),
                "--duration",
                &self.profile.tp_secs.to_string(),
                "--warmup",
                &self.profile.tp_warmup.to_string(),
            ]
            .map(str::to_owned),
        );
        let timeout = Duration::from_secs_f64(60.0 + self.profile.tp_secs);
        let (result, window, _, _) =
            self.loadgen(Some(measured), "throughput", &args, timeout, &mut |_, _| {
                Ok(Value::Null)
            })?;
        let bytes = result["bytes_echoed"].as_f64().unwrap_or(0.0);
        let mut row = window.json();
        let relay_cpu = row["relay_cpu_secs"].as_f64().unwrap_or(0.0);
        row["conns"] = json!(conns);
        row["frame"] = json!(frame);
        row["bytes_echoed"] = json!(bytes);
        // The generator's own clock: on a loaded machine the harness may read its `begin`
        // line late, which shortens our window but not the generator's.
        let secs = result["window_secs"]
            .as_f64()
            .unwrap_or_else(|| window.secs());
        row["mb_per_sec"] = json!(bytes / 1e6 / secs.max(1e-9));
        row["relay_cpu_secs_per_gb"] = json!(relay_cpu / (bytes / 1e9).max(1e-12));
        // Everything the machine did, generator and fake DC included: softirq work that a
        // change moves from the relay's context to ksoftirqd shows here, not as a saving.
        let busy = row["machine_busy_cpu_secs"].as_f64().unwrap_or(0.0);
        row["machine_cpu_secs_per_gb"] = json!(busy / (bytes / 1e9).max(1e-12));
        row["generator"] = result;
        Ok(row)
    }

    fn handshakes(&self, relay: &Relay, mode: &str, pick: &str) -> Result<Value> {
        let mut args = self.target_args(relay, mode);
        let mut workers = self.profile.hs_workers;
        if pick == "sticky" {
            // One source address per worker, each with its own user, as real clients are.
            workers = workers.min(usize::from(SOURCES));
            args.extend(["--source-base".to_owned(), SOURCE_BASE.to_string()]);
        }
        args.extend(["--user".to_owned(), pick.to_owned()]);
        let mut row = self.handshake_run(&relay.proc, args, workers)?;
        row["mode"] = json!(mode);
        row["users"] = json!(relay.spec.users);
        row["user_pick"] = json!(pick);
        Ok(row)
    }

    /// `workers` generator threads opening short connections through `measured` (a relay, or
    /// the floor forwarder) for the profile's handshake window.
    fn handshake_run(
        &self,
        measured: &Proc,
        mut args: Vec<String>,
        workers: usize,
    ) -> Result<Value> {
        args.extend(
            [
                "--workers",
                &workers.to_string(),
                "--duration",
                &self.profile.hs_secs.to_string(),
            ]
            .map(str::to_owned),
        );
        let timeout = Duration::from_secs_f64(60.0 + self.profile.hs_secs);
        let (result, window, _, _) =
            self.loadgen(Some(measured), "handshakes", &args, timeout, &mut |_, _| {
                Ok(Value::Null)
            })?;
        let count = result["handshakes"].as_f64().unwrap_or(0.0);
        let mut row = window.json();
        let relay_cpu = row["relay_cpu_secs"].as_f64().unwrap_or(0.0);
        row["workers"] = json!(workers);
        row["handshakes"] = json!(count);
        row["handshakes_per_sec"] = json!(count / window.secs());
        row["handshakes_per_relay_cpu_sec"] = json!(count / relay_cpu.max(1e-9));
        row["failed"] = result["failed"].clone();
        row["generator"] = result;
        Ok(row)
    }

    fn latency(&self, relay: &Relay, mode: &str) -> Result<Value> {
        let mut args = if mode == "direct" {
            vec![
                "--target".to_owned(),
                format!("{DC}:{DC_PORT}"),
                "--mode".to_owned(),
                "direct".to_owned(),
            ]
        } else {
            self.target_args(relay, mode)
        };
        args.extend(["--duration".to_owned(), self.profile.lat_secs.to_string()]);
        let timeout = Duration::from_secs_f64(30.0 + self.profile.lat_secs);
        let _awake = super::spinners::Spinners::start();
        let (result, window, _, _) =
            self.loadgen(Some(&relay.proc), "latency", &args, timeout, &mut |_, _| {
                Ok(Value::Null)
            })?;
        let mut row = result;
        row["path"] = json!(mode);
        row["window"] = window.json();
        Ok(row)
    }

    fn idle(&self, relay: &Relay) -> Result<Value> {
        self.idle_run(&relay.proc, self.target_args(relay, "dd"))
    }

    /// Idle `dd` connections (handshake and one echo each, then silence) through `measured`
    /// (a relay, or a peer proxy), `args` leading the generator to it: RSS growth per
    /// connection.
    fn idle_run(&self, measured: &Proc, mut args: Vec<String>) -> Result<Value> {
        let pid = measured.pid();
        let dc_pid = self.fakedc.pid();
        // Let the runtime settle, then take the baseline.
        std::thread::sleep(Duration::from_millis(500));
        let before = procfs::rss_kib(pid)?;
        let threads_before = procfs::threads(pid)?;
        // The relay holds two sockets per relayed connection (client and DC), and so does the
        // generator (its reader and writer halves): the file-descriptor limit caps the count.
        let hard = procfs::nofile_hard()?;
        let fds = procfs::open_fds(pid)?;
        let fit = usize::try_from(hard.saturating_sub(fds + 64) / 2).unwrap_or(usize::MAX);
        let wanted = self.profile.idle_conns;
        let conns = wanted.min(fit);
        let cap_note = (conns < wanted).then(|| {
            format!(
                "{wanted} idle connections are impossible here: RLIMIT_NOFILE's hard limit is \
                 {hard} and cannot be raised (no CAP_SYS_RESOURCE), while the relay needs two \
                 descriptors per relayed connection (client and DC sockets) plus the {fds} it \
                 holds at start; measured with the most that fit, {conns}"
            )
        });
        args.extend(
            [
                "--conns",
                &conns.to_string(),
                "--workers",
                "16",
                "--hold",
                "120",
            ]
            .map(str::to_owned),
        );
        let (result, _, after, _) = self.loadgen(
            Some(measured),
            "idle",
            &args,
            Duration::from_secs(300),
            &mut |marker, generator| {
                if marker == Marker::End {
                    return Ok(Value::Null);
                }
                // Everything is open and idle; give the relay a moment to finish its part.
                std::thread::sleep(Duration::from_millis(1000));
                let rss = procfs::rss_kib(pid)?;
                let hwm = procfs::status_kib(pid, "VmHWM")?;
                let threads = procfs::threads(pid)?;
                let dc_rss = procfs::rss_kib(dc_pid)?;
                generator.close_stdin();
                Ok(json!({"rss_kib": rss, "hwm_kib": hwm, "threads": threads, "dc_rss_kib": dc_rss}))
            },
        )?;
        let opened = result["opened"].as_f64().unwrap_or(0.0);
        let rss = after["rss_kib"].as_f64().unwrap_or(0.0);
        let mut row = json!({
            "wanted": wanted,
            "attempted": conns,
            "nofile_hard_limit": hard,
            "opened": opened,
            "relay_rss_before_kib": before,
            "relay_rss_idle_kib": rss,
            "relay_hwm_kib": after["hwm_kib"],
            "relay_threads_before": threads_before,
            "relay_threads_idle": after["threads"],
            "fake_dc_rss_idle_kib": after["dc_rss_kib"],
            "rss_per_conn_kib": (rss - before as f64) / opened.max(1.0),
            "generator": result,
        });
        let mut notes: Vec<String> = cap_note.into_iter().collect();
        if (opened as usize) < conns {
            notes.push(format!(
                "only {opened} of {conns} connections opened: {}",
                row["generator"]["first_error"]
            ));
        }
        // A proxy that refused most connections has no per-connection figure: its fixed
        // overhead over a handful would read as a tiny (or huge) cost each.
        if opened < conns as f64 * MIN_IDLE_OPENED {
            row["rss_per_opened_conn_kib"] = row["rss_per_conn_kib"].take();
            notes.push(format!(
                "fewer than {:.0} % of the connections stayed open: no figure per connection",
                MIN_IDLE_OPENED * 100.0
            ));
        }
        if !notes.is_empty() {
            row["note"] = json!(notes.join("; "));
        }
        Ok(row)
    }

    /// A SYN flood of `kind` (`None`: no flood, the baseline) in two windows: the flood alone
    /// (relay CPU, XDP drops, kernel counters), then the flood plus legit `dd` load (16 KiB
    /// frames), whose throughput is compared with the baseline's.
    /// One flood (or none), then legit load; with `paced` (bytes/s) also a paced legit load.
    fn flood(&self, relay: &Relay, kind: Option<&str>, paced: Option<f64>) -> Result<Value> {
        let alone = self.profile.flood_alone_secs;
        let secs = self.profile.flood_secs;
        let mut flood = match kind {
            Some(kind) => {
                let (net, count) = match kind {
                    "blocked" => (BLOCKED_NET, "0"),
                    _ => (LIMITED_NET, "16"),
                };
                // Bounded in time and count; stopped earlier through stdin when measured.
                let limit = alone + secs + 30.0;
                let total = (self.profile.flood_pps as f64 * limit) as u64;
                let args = [
                    "--iface".to_owned(),
                    self.net.client_if.clone(),
                    "--dst-mac".to_owned(),
                    self.net.server_mac.clone(),
                    "--dst".to_owned(),
                    format!("{SERVER}:{RELAY_PORT}"),
                    "--src-net".to_owned(),
                    net.to_owned(),
                    "--src-count".to_owned(),
                    count.to_owned(),
                    "--pps".to_owned(),
                    self.profile.flood_pps.to_string(),
                    "--count".to_owned(),
                    total.to_string(),
                    "--duration".to_owned(),
                    limit.to_string(),
                    "--stop-on-stdin-eof".to_owned(),
                ];
                let proc = spawn::spawn(
                    "relay-flood",
                    Some(&self.net.client_ns),
                    &self.bins.flood,
                    &args,
                    &[],
                )?;
                // Let the flood reach its rate (and the rate-limited sources spend their burst).
                std::thread::sleep(Duration::from_millis(300));
                Some(proc)
            }
            None => None,
        };
        let flood_pid = flood.as_ref().map(Proc::pid);
        let outcome = self.flood_windows(relay, flood_pid, alone, secs, paced);
        let flood_result = match &mut flood {
            Some(proc) => {
                proc.close_stdin();
                let line = proc.wait_line(Stream::Out, Duration::from_secs(10), |l| {
                    l.starts_with("result ")
                });
                let status = proc.wait_success(Duration::from_secs(5));
                let line = line?;
                status?;
                serde_json::from_str::<Value>(&line["result ".len()..])?
            }
            None => Value::Null,
        };
        let mut row = outcome?;
        row["xdp"] = json!(relay.xdp_mode);
        row["flood"] = json!(kind.unwrap_or("none"));
        row["flood_sender"] = flood_result;
        Ok(row)
    }

    fn flood_windows(
        &self,
        relay: &Relay,
        flood_pid: Option<u32>,
        alone: f64,
        secs: f64,
        paced: Option<f64>,
    ) -> Result<Value> {
        let counters = || self.drop_counters(relay);
        // Window 1: the flood alone.
        let pid = relay.proc.pid();
        let cpu = |p: Option<u32>| p.and_then(|p| procfs::cpu_secs(p).ok()).unwrap_or(0.0);
        let before = (
            Instant::now(),
            cpu(Some(pid)),
            cpu(flood_pid),
            SysCpu::now()?,
            counters()?,
        );
        std::thread::sleep(Duration::from_secs_f64(alone));
        let after = (
            Instant::now(),
            cpu(Some(pid)),
            cpu(flood_pid),
            SysCpu::now()?,
            counters()?,
        );
        let window = after.0.duration_since(before.0).as_secs_f64();
        let machine = after.3.since(&before.3);
        let mut row = per_sec(&before.4, &after.4, window);
        // Packets that reached the relay's namespace: XDP sees them all; without XDP the IP
        // layer counts them.
        row["arrived_per_sec"] = if relay.spec.xdp != XdpMode::Off {
            json!(
                row["verdicts_per_sec"]
                    .as_object()
                    .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum::<f64>())
            )
        } else {
            row["kernel_per_sec"]["ip_in_receives"].clone()
        };
        row["alone_secs"] = json!(window);
        row["relay_cpu_pct"] = json!(100.0 * (after.1 - before.1) / window);
        row["flood_sender_cpu_pct"] = json!(100.0 * (after.2 - before.2) / window);
        row["machine_softirq_pct"] = json!(100.0 * (machine.softirq + machine.irq) / window);
        row["machine_idle_pct"] = json!(100.0 * machine.idle / window);

        // Window 2: the flood plus legit load as fast as it goes; window 3 (with `paced`):
        // the flood plus legit load at a fixed rate.
        let legit = self.legit_window(relay, secs, None)?;
        if let Some(rate) = paced {
            let window = self.legit_window(relay, secs, Some(rate))?;
            let achieved = window["mb_per_sec"].as_f64().unwrap_or(0.0);
            row["paced"] = json!({
                "offered_mb_per_sec": rate / 1e6,
                "mb_per_sec": achieved,
                "achieved_of_offered": achieved * 1e6 / rate,
                "relay_cpu_pct": window["relay_cpu_pct"],
            });
        }
        row["legit_mb_per_sec"] = legit["mb_per_sec"].clone();
        row["legit"] = legit;
        Ok(row)
    }

    /// The relay's XDP verdict counters and its namespace's kernel counters, now.
    fn drop_counters(&self, relay: &Relay) -> Result<Value> {
        Ok(json!({
            "verdicts": xdp_verdicts(&self.bins.relay_ctl, &relay.admin)?,
            "netstat": self.net.server_counters()?,
        }))
    }

    /// Legit `dd` load (16 KiB frames) for `secs`, as fast as it goes or at `rate` bytes/s.
    fn legit_window(&self, relay: &Relay, secs: f64, rate: Option<f64>) -> Result<Value> {
        let mut args = self.target_args(relay, "dd");
        args.extend(
            [
                "--conns",
                &self.profile.legit_conns.to_string(),
                "--frame",
                "16384",
                "--duration",
                &secs.to_string(),
                "--warmup",
                &self.profile.tp_warmup.to_string(),
            ]
            .map(str::to_owned),
        );
        if let Some(rate) = rate {
            args.extend(["--rate".to_owned(), format!("{rate:.0}")]);
        }
        let mut hook = |_: Marker, _: &mut Proc| self.drop_counters(relay);
        let (result, window, begin, end) = self.loadgen(
            Some(&relay.proc),
            "throughput",
            &args,
            Duration::from_secs_f64(60.0 + secs),
            &mut hook,
        )?;
        let bytes = result["bytes_echoed"].as_f64().unwrap_or(0.0);
        let mut legit = window.json();
        let relay_cpu = legit["relay_cpu_secs"].as_f64().unwrap_or(0.0);
        legit["conns"] = json!(self.profile.legit_conns);
        legit["mb_per_sec"] = json!(bytes / 1e6 / window.secs());
        legit["relay_cpu_secs_per_gb"] = json!(relay_cpu / (bytes / 1e9).max(1e-12));
        legit["during"] = per_sec(&begin, &end, window.secs());
        legit["generator"] = result;
        Ok(legit)
    }
}

/// Per-second deltas of the XDP verdicts and kernel counters between two `counters()` reads.
fn per_sec(begin: &Value, end: &Value, secs: f64) -> Value {
    let delta = |section: &str, key: &str| {
        end[section][key].as_f64().unwrap_or(0.0) - begin[section][key].as_f64().unwrap_or(0.0)
    };
    let verdicts: Map<String, Value> = begin["verdicts"]
        .as_object()
        .map(|m| {
            m.keys()
                .map(|k| (k.clone(), json!(delta("verdicts", k) / secs)))
                .collect()
        })
        .unwrap_or_default();
    let dropped: f64 = [
        "blocked_cidr",
        "banned",
        "syn_rate_limited",
        "banned_syn_limited",
    ]
    .iter()
    .map(|k| delta("verdicts", k))
    .sum();
    json!({
        "xdp_dropped_per_sec": dropped / secs,
        "verdicts_per_sec": verdicts,
        "kernel_per_sec": {
            "syncookies_sent": delta("netstat", "TcpExt.SyncookiesSent") / secs,
            "listen_drops": delta("netstat", "TcpExt.ListenDrops") / secs,
            "listen_overflows": delta("netstat", "TcpExt.ListenOverflows") / secs,
            "tcp_passive_opens": delta("netstat", "Tcp.PassiveOpens") / secs,
            "ip_in_receives": delta("netstat", "Ip.InReceives") / secs,
        },
    })
}

/// The generator's arguments for a proxy on `port` of the server address speaking `mode`
/// with `users` users whose secrets are in `secrets`; `framed` for a relay in middle mode
/// (it parses the client's frames: raw bytes would not do).
fn client_args(port: u16, mode: &str, secrets: &Path, users: usize, framed: bool) -> Vec<String> {
    let mut args = vec![
        "--target".to_owned(),
        format!("{SERVER}:{port}"),
        "--mode".to_owned(),
        mode.to_owned(),
        "--domain".to_owned(),
        DOMAIN.to_owned(),
        "--secrets".to_owned(),
        secrets.display().to_string(),
    ];
    if framed {
        args.push("--framed".to_owned());
    }
    if users > 1 {
        args.extend(["--timeout-secs".to_owned(), "20".to_owned()]);
    }
    args
}

/// Random 16-byte secrets as 32 hex digits, one per user.
fn random_secrets(users: usize) -> Vec<String> {
    (0..users.max(1))
        .map(|_| {
            rand::random::<[u8; 16]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
}

/// `[upstream.middle] connections_per_me` of the middle-mode relay.
const MIDDLE_CONNECTIONS: usize = 2;

/// Waits until the relay `pid` has `want` established connections to the fake ME, read
/// from its namespace's `/proc/<pid>/net/tcp`.
fn wait_me_pool(pid: u32, want: usize, timeout: Duration) -> Result<()> {
    let port = format!(":{ME_PORT:04X}");
    let deadline = Instant::now() + timeout;
    loop {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
            .with_context(|| format!("reading /proc/{pid}/net/tcp"))?;
        // Columns: sl, local, remote, state (01 = established), …
        let live = table
            .lines()
            .skip(1)
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.get(2).is_some_and(|r| r.ends_with(&port)) && cols.get(3) == Some(&"01")
            })
            .count();
        if live >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("relay opened {live} of {want} connections to the fake ME in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn sample((relay, dc, generator): (Option<u32>, u32, u32)) -> Sample {
    let cpu = |pid: Option<u32>| pid.and_then(|p| procfs::cpu_secs(p).ok()).unwrap_or(0.0);
    Sample {
        at: Instant::now(),
        relay: cpu(relay),
        dc: cpu(Some(dc)),
        generator: cpu(Some(generator)),
        machine: SysCpu::now().unwrap_or_default(),
    }
}

/// The XDP verdict counters (packets; connections in userspace mode) from `relay-ctl stats`.
fn xdp_verdicts(relay_ctl: &Path, admin: &Path) -> Result<Value> {
    Ok(relay_stats(relay_ctl, admin)?["verdicts"].take())
}

/// `relay-ctl stats --json` over the relay's admin socket.
fn relay_stats(relay_ctl: &Path, admin: &Path) -> Result<Value> {
    let out = Command::new(relay_ctl)
        .args(["stats", "--json", "--socket"])
        .arg(admin)
        .output()
        .context("running relay-ctl stats")?;
    if !out.status.success() {
        bail!(
            "relay-ctl stats failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("relay-ctl stats --json")
}

/// The relay-ctl configuration for `spec`.
fn relay_config(
    spec: &Spec,
    secrets: &[String],
    iface: &str,
    admin: &Path,
    state: &Path,
    middle: Option<(&Path, &Path)>,
) -> String {
    let mut users = String::new();
    for (i, secret) in secrets.iter().enumerate() {
        let _ = write!(
            users,
            "[[users]]\nname = \"u{i}\"\nsecret = \"{secret}\"\n\n"
        );
    }
    let (limits, blocklist) = if spec.flood {
        (
            "syn_limit = true\nsyn_rate_per_sec = 8\nsyn_burst = 32\nnew_state_per_cpu_per_sec = 20000",
            format!("cidrs = [\"{BLOCKED_NET}\"]"),
        )
    } else {
        (
            "syn_limit = true\nsyn_rate_per_sec = 1000000\nsyn_burst = 1000000\nnew_state_per_cpu_per_sec = 1000000",
            "cidrs = []".to_owned(),
        )
    };
    format!(
        r#"# Generated by relay-bench ({label}).
[server]
listen = ["{SERVER}:{RELAY_PORT}"]
modes = ["secure", "tls"]
passthrough = "{passthrough}"

{users}[tls]
domain = "{DOMAIN}"
fronting = false

[upstream]
default_dc = 2
connect_timeout_secs = 3
fast_mode = {fast}
{upstream_mode}
[upstream.dc]
"2" = ["{DC}:{DC_PORT}"]
{middle_section}
[timeouts]
handshake_secs = 10
idle_secs = 600

[xdp]
interfaces = ["{iface}"]
mode = "{mode}"

[limits]
{limits}
# One generator address opens every connection, up to 10,000 at once.
max_connections = 100000
max_connections_per_source = 100000
max_handshakes = 100000
max_handshakes_per_source = 100000
max_handshakes_per_prefix = 100000

[blocklist]
{blocklist}

# The benchmark's own traffic must never be banned.
[misuse]
bad_secret = 0
unknown_sni = 0
replay = 0
timeout = 0
garbage = 0
connections = 0
prefix_bad_secret = 0
prefix_unknown_sni = 0
prefix_replay = 0
prefix_timeout = 0
prefix_garbage = 0
prefix_connections = 0

[admin]
socket = "{admin}"

[state]
dir = "{state}"
"#,
        label = spec.label,
        passthrough = spec.passthrough,
        fast = spec.fast,
        upstream_mode = if middle.is_some() {
            "mode = \"middle\"\n"
        } else {
            ""
        },
        middle_section = middle.map_or(String::new(), |(list, secret)| format!(
            "\n[upstream.middle]\nconfig_file = \"{}\"\nsecret_file = \"{}\"\nconnections_per_me = {MIDDLE_CONNECTIONS}\n",
            list.display(),
            secret.display()
        )),
        mode = xdp_mode_name(spec.xdp),
        admin = admin.display(),
        state = state.display(),
    )
}

/// A one-line summary of a recorded row, for progress on stderr.
fn summary(section: &str, row: &Value) -> String {
    let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
    match section {
        "throughput" => format!(
            "{:.0} MB/s, relay {:.2} CPU-s/GB ({:.0}% CPU), generator {:.0}%, fake DC {:.0}%",
            f("mb_per_sec"),
            f("relay_cpu_secs_per_gb"),
            f("relay_cpu_pct"),
            f("generator_cpu_pct"),
            f("dc_cpu_pct")
        ),
        "handshakes" => format!(
            "{:.0}/s, {:.0} per relay CPU-second ({:.0}% CPU), {} failed",
            f("handshakes_per_sec"),
            f("handshakes_per_relay_cpu_sec"),
            f("relay_cpu_pct"),
            row["failed"]
        ),
        "xdp_verdict" => format!(
            "relay {:.2} ns, minimal {:.2} ns, ratio {:.2}{}",
            f("relay_ns"),
            f("minimal_ns"),
            f("ratio"),
            row.get("baseline_ns").map_or(String::new(), |_| format!(
                "; baseline {:.2} ns, ratio {:.2}",
                f("baseline_ns"),
                f("baseline_ratio")
            ))
        ),
        "latency" => format!("p50 {:.0} µs, p99 {:.0} µs", f("p50_us"), f("p99_us")),
        "middle" if row["load"] == "handshakes" => summary("handshakes", row),
        "middle" | "passthrough" => summary("throughput", row),
        "peers" if row["load"] == "handshakes" => summary("handshakes", row),
        "peers" if row["load"] == "memory" => summary("memory", row),
        "peers" => summary("throughput", row),
        "memory" => format!(
            "{} connections, RSS {} → {} KiB, {:.1} KiB per connection",
            row["opened"],
            row["relay_rss_before_kib"],
            row["relay_rss_idle_kib"],
            f("rss_per_conn_kib")
        ),
        "flood" => format!(
            "alone: XDP drops {:.0}/s, relay {:.1}% CPU, softirq {:.0}%; legit {:.0} MB/s ({:.2} CPU-s/GB)",
            f("xdp_dropped_per_sec"),
            f("relay_cpu_pct"),
            f("machine_softirq_pct"),
            f("legit_mb_per_sec"),
            row["legit"]["relay_cpu_secs_per_gb"]
                .as_f64()
                .unwrap_or(f64::NAN)
        ),
        _ => String::new(),
    }
}

/// The 1-minute load average.
fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What the report says about the machine and the code measured.
fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("flags")?
                .split_once(':')
                .map(|(_, f)| f.to_owned())
        })
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        "cpu_model": model,
        "aes_ni": has("aes"),
        "vaes": has("vaes"),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "memory_kib": procfs_meminfo(),
        "load_before": loadavg(),
        "git": git(&["rev-parse", "--short", "HEAD"]).map(|rev| if dirty { format!("{rev}+dirty") } else { rev }),
    })
}

fn procfs_meminfo() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::attached_mode;

    #[test]
    fn attached_mode_is_read_from_the_log() {
        let log = "2026-12-03T02:00:00Z  INFO relay_ctl::cli::run: listening addr=198.18.0.1:4443\n\
                   2026-12-03T02:00:00Z  INFO relay_ctl::cli::run: XDP attached interface=\"rbs1\" mode=generic\n";
        assert_eq!(attached_mode(log).as_deref(), Some("generic"));
        assert_eq!(
            attached_mode("XDP attached interface=\"x\" mode=native").as_deref(),
            Some("native")
        );
        assert_eq!(attached_mode("XDP not used (no CAP_BPF)"), None);
        assert_eq!(attached_mode("XDP attached interface=\"x\""), None);
        assert_eq!(
            attached_mode("XDP attached interface=\"x\" mode=tc").as_deref(),
            Some("tc")
        );
    }
}
