//! `cargo xtask bench`: builds the release binaries (relay-ctl and the tests crate's bench
//! tools) and runs the orchestrator, `relay-bench`, which creates its network namespaces,
//! starts everything inside them and prints the report. Afterwards anything a crashed
//! orchestrator left behind (its `rbench-<pid>-*` namespaces and temp dir) is removed.

use std::{path::Path, process::ExitCode};

use anyhow::{Result, bail};

use crate::{cmd::Cmd, setup, step, target_dir};

/// Prefix of the namespaces and temp dir of one run: `rbench-<pid of relay-bench>`.
const RUN_PREFIX: &str = "rbench-";

/// Builds and runs the benchmark; `smoke` makes every scenario tiny. `json` defaults to
/// `<target dir>/bench/report.json`; `args` go to `relay-bench`.
pub fn bench(root: &Path, smoke: bool, json: Option<&Path>, args: &[String]) -> Result<ExitCode> {
    if !setup::is_root() {
        bail!(
            "cargo xtask bench needs root (or CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN): it \
             creates network namespaces and attaches XDP"
        );
    }
    step("building release binaries: relay-ctl and the bench tools (relay-tests --bins)");
    Cmd::cargo()
        .args(["build", "--release", "--locked", "-p", "relay-ctl"])
        .args(["-p", "relay-tests", "--bins"])
        .current_dir(root)
        .run_attached()?;
    let bin_dir = target_dir(root).join("release");
    // relay-bench runs in the workspace root: a relative PATH means the caller's directory.
    let json = match json {
        Some(path) => std::env::current_dir()?.join(path),
        None => target_dir(root).join("bench/report.json"),
    };
    let mut bench = Cmd::new(bin_dir.join("relay-bench"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--json")
        .arg(&json);
    if smoke {
        bench = bench.arg("--smoke");
    }
    let bench = bench.args(args).current_dir(root);
    step(&format!("running {bench}"));
    let mut child = bench.spawn()?;
    let pid = child.id();
    let status = child.wait()?;
    for leftover in clean_up(pid) {
        println!("xtask: removed {leftover}, left behind by relay-bench");
    }
    if !status.success() {
        println!(
            "xtask: the benchmark harness failed ({}): a scenario could not run",
            crate::cmd::describe(status)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `relay-bench` arguments for `--peer NAME=PATH`s and `--peer-python`, with relative paths
/// made absolute (relay-bench runs in the workspace root, not the caller's directory).
pub fn peer_args(peers: &[String], python: Option<&Path>) -> Result<Vec<String>> {
    let cwd = std::env::current_dir()?;
    let mut args = Vec::new();
    for peer in peers {
        let Some((name, path)) = peer.split_once('=') else {
            bail!(
                "--peer {peer}: expected NAME=PATH, e.g. telemt=/src/telemt/target/release/telemt"
            );
        };
        args.push("--peer".to_owned());
        args.push(format!("{name}={}", cwd.join(path).display()));
    }
    if let Some(python) = python {
        // A bare name is looked up in PATH; anything with a directory is a file.
        let python = if python.components().count() > 1 {
            cwd.join(python)
        } else {
            python.to_path_buf()
        };
        args.push("--peer-python".to_owned());
        args.push(python.display().to_string());
    }
    Ok(args)
}

/// Deletes the network namespaces, temp dir and resolver files of run `pid` that still
/// exist.
fn clean_up(pid: u32) -> Vec<String> {
    let prefix = format!("{RUN_PREFIX}{pid}");
    let mut removed = Vec::new();
    let listing = Cmd::new("ip")
        .args(["netns", "list"])
        .probe()
        .unwrap_or_default();
    for name in namespaces_of(&listing, &prefix) {
        if Cmd::new("ip")
            .args(["netns", "del", name])
            .probe()
            .is_some()
        {
            removed.push(format!("network namespace {name}"));
        }
    }
    let dir = std::env::temp_dir().join(&prefix);
    if dir.exists() && std::fs::remove_dir_all(&dir).is_ok() {
        removed.push(dir.display().to_string());
    }
    // The resolver files `ip netns exec` mounts for the run's namespaces.
    let etc = Path::new("/etc/netns");
    let names: Vec<String> = std::fs::read_dir(etc)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in names.iter().filter(|n| {
        n.strip_prefix(&prefix)
            .is_some_and(|rest| rest.starts_with('-'))
    }) {
        let dir = etc.join(name);
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir.display().to_string());
        }
    }
    removed
}

/// Names in `ip netns list` output (`name` or `name (id: 3)` per line) that belong to the run
/// with prefix `rbench-<pid>`.
fn namespaces_of<'a>(listing: &'a str, prefix: &str) -> Vec<&'a str> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('-'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_paths_become_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let args = peer_args(
            &[
                "telemt=bin/telemt".to_owned(),
                "mtproxy=/x/mtproto-proxy".to_owned(),
            ],
            Some(Path::new("venv/bin/python")),
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "--peer".to_owned(),
                format!("telemt={}", cwd.join("bin/telemt").display()),
                "--peer".to_owned(),
                "mtproxy=/x/mtproto-proxy".to_owned(),
                "--peer-python".to_owned(),
                cwd.join("venv/bin/python").display().to_string(),
            ]
        );
        assert_eq!(
            peer_args(&[], Some(Path::new("python3"))).unwrap(),
            ["--peer-python", "python3"]
        );
        assert!(peer_args(&["telemt".to_owned()], None).is_err());
    }

    #[test]
    fn only_the_runs_own_namespaces_are_picked() {
        let listing = "rbench-42-srv (id: 3)\nrbench-42-cli\nrbench-421-srv\nrelay-xdp-s1x0\nrbench-42-dc (id: 5)\n";
        assert_eq!(
            namespaces_of(listing, "rbench-42"),
            ["rbench-42-srv", "rbench-42-cli", "rbench-42-dc"]
        );
    }
}
