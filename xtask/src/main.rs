//! relay's developer tasks, run as `cargo xtask <task>`:
//!
//! - `setup`: install the prerequisites (Debian packages, nightly with rust-src, bpf-linker,
//!   the Python test clients' venv), checking first;
//! - `run [-- ARGS]`: setup, build relay-ctl in release mode and run `relay-ctl run ARGS`;
//! - `test [-- ARGS]`: setup, build relay-ctl and run every test (`cargo test ARGS`);
//! - `bench [--smoke] [--json PATH] [--peer NAME=PATH]... [-- ARGS]`: setup, release build,
//!   then the benchmark harness (`relay-bench` from the tests crate) in network namespaces it
//!   creates, with other proxies built on the machine measured next to relay.

mod bench;
mod cmd;
mod fuzz;
mod setup;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{cmd::Cmd, setup::Scope};

/// relay's developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// One task.
#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages (LLVM 22, iproute2), nightly with rust-src,
    /// bpf-linker 0.13.0, the Python test clients' venv and cargo-fuzz.
    Setup {
        /// Only what building relay-ctl needs (LLVM 22, nightly with rust-src, bpf-linker):
        /// the container recipe's build stage.
        #[arg(long)]
        build_only: bool,
    },
    /// Setup, then run every fuzz target in fuzz/ for SECONDS each from the seed corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Setup, build relay-ctl (release) and run `relay-ctl run`; ARGS after `--` go to it.
    Run {
        /// Arguments for `relay-ctl run`, e.g. `-- --config relay.toml`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build relay-ctl and run every test; ARGS after `--` go to `cargo test`.
    ///
    /// With CI=true, `cargo fmt --check` and `cargo clippy -D warnings` run first, and the
    /// benchmark harness's smoke run (`bench --smoke`) after the tests.
    Test {
        /// Arguments for `cargo test`, e.g. `-- xdp_e2e` or `-- -p relay-common`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build release binaries and measure relay in network namespaces (needs root):
    /// throughput and CPU per GB, handshakes, memory per idle connection, latency, SYN floods.
    ///
    /// Prints a markdown report and writes it as JSON. Figures are reported against the
    /// targets, never asserted: the exit status is non-zero only when a scenario cannot run.
    Bench {
        /// Every scenario tiny (well under a minute in all): proves the harness works.
        #[arg(long)]
        smoke: bool,
        /// Where to write the JSON report [default: <target dir>/bench/report.json].
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Another MTProto proxy to measure next to relay on the same load (repeatable):
        /// `telemt=PATH` (its binary), `mtprotoproxy=PATH` (mtprotoproxy.py) or
        /// `mtproxy=PATH` (the official C proxy: middle mode only, so measured through the
        /// fake middle-end next to relay in middle mode). Runs the `peers` group;
        /// docs/bench.md says how to build each.
        #[arg(long, value_name = "NAME=PATH")]
        peer: Vec<String>,
        /// The Python interpreter for mtprotoproxy (a venv with `cryptography`)
        /// [default: python3].
        #[arg(long, value_name = "PATH")]
        peer_python: Option<PathBuf>,
        /// Arguments for `relay-bench`, e.g. `-- --only crypto,flood`. Groups: crypto,
        /// xdp-verdict (ns per XDP verdict vs a minimal program), main, passthrough (sockmap,
        /// splice and copy paths next to the floor), slow, users, memory, flood, middle
        /// (middle mode vs direct through a fake middle-end), peers (with --peer); and, only
        /// when named, handshakes (1 and 1,000 users) and target (one row per target, for
        /// quick iterations).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = workspace_root();
    let result = match cli.task {
        Task::Setup { build_only } => {
            let scope = if build_only { Scope::Build } else { Scope::All };
            setup::setup(&root, scope).map(|()| ExitCode::SUCCESS)
        }
        Task::Run { args } => run(&root, &args),
        Task::Fuzz { seconds } => setup::setup(&root, Scope::All)
            .and_then(|()| fuzz::fuzz(&root, seconds))
            .map(|()| ExitCode::SUCCESS),
        Task::Test { args } => test(&root, &args),
        Task::Bench {
            smoke,
            json,
            peer,
            peer_python,
            args,
        } => setup::setup(&root, Scope::All).and_then(|()| {
            let mut all = bench::peer_args(&peer, peer_python.as_deref())?;
            all.extend(args);
            bench::bench(&root, smoke, json.as_deref(), &all)
        }),
    };
    result.unwrap_or_else(|error| {
        report(&error);
        ExitCode::FAILURE
    })
}

/// Prints an error and its causes, one after the other, without a backtrace.
fn report(error: &anyhow::Error) {
    eprintln!("xtask: error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("{cause}");
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a workspace directory")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root), else
/// `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// `cargo xtask run`: setup, release build, then replaces itself with `relay-ctl run ARGS`.
fn run(root: &Path, args: &[String]) -> Result<ExitCode> {
    setup::setup(root, Scope::All)?;
    step("building relay-ctl (release)");
    Cmd::cargo()
        .args(["build", "--release", "--locked", "-p", "relay-ctl"])
        .current_dir(root)
        .run_attached()?;
    let binary = target_dir(root).join("release/relay-ctl");
    // A developer's run prints the proxy links so a client can be pointed at it right away.
    let relay = Cmd::new(&binary)
        .args(["run", "--print-links"])
        .args(args)
        .current_dir(root);
    if !setup::is_root() {
        println!("xtask: note: not root; attaching XDP needs root (or CAP_BPF and CAP_NET_ADMIN)");
    }
    step(&format!("running {relay}"));
    Err(relay.exec())
}

/// `cargo xtask test`: setup, (CI: fmt and clippy), build relay-ctl, run the tests and print
/// the totals.
fn test(root: &Path, args: &[String]) -> Result<ExitCode> {
    setup::setup(root, Scope::All)?;
    if is_ci() {
        lint(root)?;
    }
    step("building relay-ctl (debug), which the tests start");
    Cmd::cargo()
        .args(["build", "--locked", "-p", "relay-ctl"])
        .current_dir(root)
        .run_attached()?;
    let cargo_test = Cmd::cargo()
        .arg("test")
        .args(workspace_selection(args))
        .arg("--locked")
        .args(args)
        .env("RELAY_VENV", root.join(setup::VENV))
        .env("RELAY_CTL_BIN", relay_ctl_bin(root))
        .current_dir(root);
    step(&format!("running {cargo_test}"));
    let (status, totals) = run_counting(cargo_test)?;
    let verdict = if status.success() { "PASSED" } else { "FAILED" };
    if !status.success() {
        println!("xtask: cargo test failed ({})", cmd::describe(status));
    }
    println!("{verdict}: {totals}");
    if !status.success() {
        return Ok(ExitCode::FAILURE);
    }
    if is_ci() {
        step(&format!(
            "CI: fuzzing every target for {CI_FUZZ_SECONDS} s (cargo xtask fuzz)"
        ));
        fuzz::fuzz(root, CI_FUZZ_SECONDS)?;
        // Benchmarks never gate CI on timing: the smoke run only proves the harness works.
        step("CI: running the benchmark harness's smoke run (cargo xtask bench --smoke)");
        return bench::bench(root, true, None, &[]);
    }
    Ok(ExitCode::SUCCESS)
}

/// Seconds per fuzz target in CI: eight targets, 96 s in all.
const CI_FUZZ_SECONDS: u64 = 12;

/// Whether this is a CI run (`CI=true`).
fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// CI's checks before the tests: formatting and clippy with warnings denied.
fn lint(root: &Path) -> Result<()> {
    let fmt = Cmd::cargo().args(["fmt", "--all", "--", "--check"]);
    let clippy = Cmd::cargo()
        .args(["clippy", "--workspace", "--exclude", "relay-ebpf"])
        .args(["--all-targets", "--locked", "--", "-D", "warnings"]);
    for check in [fmt, clippy] {
        step(&format!("CI: running {check}"));
        check.current_dir(root).run_attached()?;
    }
    Ok(())
}

/// `--workspace --exclude relay-ebpf` unless `args` select packages themselves (cargo ignores
/// `-p` next to `--workspace`). relay-ebpf builds only for the BPF target, through relay-ctl's
/// build script; on the host it does not link.
fn workspace_selection(args: &[String]) -> &'static [&'static str] {
    let selects = args
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg.starts_with("--package"));
    if selects {
        &[]
    } else {
        &["--workspace", "--exclude", "relay-ebpf"]
    }
}

/// The relay-ctl the tests start: `$RELAY_CTL_BIN` if set, else the debug build.
fn relay_ctl_bin(root: &Path) -> PathBuf {
    std::env::var_os("RELAY_CTL_BIN")
        .map_or_else(|| target_dir(root).join("debug/relay-ctl"), PathBuf::from)
}

/// Runs `cargo test`, passing its stdout through line by line, and adds up libtest's
/// `test result:` lines.
fn run_counting(cargo_test: Cmd) -> Result<(std::process::ExitStatus, Totals)> {
    let mut child = cargo_test.spawn_piped()?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut totals = Totals::default();
    let mut out = std::io::stdout().lock();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        out.write_all(&line)?;
        out.flush()?;
        totals.add(&String::from_utf8_lossy(&line));
        line.clear();
    }
    drop(out);
    Ok((child.wait()?, totals))
}

/// Tests counted over every test binary and doc-test run.
#[derive(Default, Debug, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds the counts of a libtest summary such as
    /// `test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; …`.
    fn add(&mut self, line: &str) {
        let Some(summary) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in summary.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Prints what xtask is about to do.
fn step(what: &str) {
    println!("xtask: {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_libtest_summaries() {
        let mut totals = Totals::default();
        totals.add("test result: ok. 3 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s\n");
        totals.add(
            "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 5 filtered out\n",
        );
        totals.add("test foo ... ok\n");
        assert_eq!(
            totals,
            Totals {
                passed: 4,
                failed: 1,
                ignored: 2
            }
        );
        assert_eq!(totals.to_string(), "4 passed, 1 failed, 2 skipped");
    }

    #[test]
    fn package_arguments_replace_the_workspace_selection() {
        let args = |list: &[&str]| list.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            workspace_selection(&args(&["xdp_e2e"])),
            ["--workspace", "--exclude", "relay-ebpf"]
        );
        assert!(workspace_selection(&args(&["-p", "relay-common"])).is_empty());
        assert!(workspace_selection(&args(&["--package=relay-ctl"])).is_empty());
        assert_eq!(
            workspace_selection(&args(&["--", "-p"])).len(),
            3,
            "arguments for the test binaries do not count"
        );
    }
}
