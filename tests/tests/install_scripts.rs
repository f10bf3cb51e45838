//! `scripts/install.sh` and `scripts/uninstall.sh` into a temporary root (`--destdir`): a dry
//! run changes nothing; an install places every file with its stated owner and mode, adds the
//! system user to the root's own user database and writes a config that passes
//! `config check`; a second run changes nothing; `systemd-analyze verify` accepts the unit;
//! uninstall removes everything but config and state, and `--purge` those and the user too.
//! Both scripts pass `shellcheck`.
//!
//! Installing sets owners, so it needs root; it skips with a message otherwise (and fails
//! under `CI=true`). shellcheck comes from `cargo xtask setup`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use relay_tests::relay::relay_ctl_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_owned()
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or, under `CI=true`, fails) with `reason`.
fn skip(test: &str, reason: &str) {
    if under_ci() {
        panic!("{test} cannot run under CI=true: {reason}");
    }
    let _ = std::io::stderr().write_all(format!("SKIP {test}: {reason}\n").as_bytes());
}

fn found(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `scripts/NAME` with `args`; returns its output, which must be a success.
fn script(name: &str, args: &[&str]) -> String {
    let out: Output = Command::new(repo().join("scripts").join(name))
        .args(args)
        .output()
        .expect("run the script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ scripts/{name} {}\n{text}", args.join(" "));
    assert!(out.status.success(), "scripts/{name} failed:\n{text}");
    text
}

/// Mode, owner, group, size and modification time of every path under `root`, by path
/// relative to it.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, u32, u32, u64, i64, i64)> {
    let mut all = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            if meta.is_dir() {
                todo.push(path.clone());
            }
            let rel = path.strip_prefix(root).expect("under root");
            all.insert(
                rel.display().to_string(),
                (
                    meta.permissions().mode() & 0o7777,
                    meta.uid(),
                    meta.gid(),
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                ),
            );
        }
    }
    all
}

/// Field 3 (the id) of `name` in a passwd or group file.
fn id_in(db: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(db)
        .ok()?
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split(':').nth(2)?.parse().ok())
}

#[test]
fn scripts_pass_shellcheck() {
    const TEST: &str = "scripts_pass_shellcheck";
    if !found("shellcheck") {
        return skip(TEST, "shellcheck not installed: run cargo xtask setup");
    }
    let out = Command::new("shellcheck")
        .current_dir(repo())
        .args([
            "-x",
            "scripts/install.sh",
            "scripts/uninstall.sh",
            "scripts/lib.sh",
        ])
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_is_idempotent_and_uninstall_keeps_config_and_state() {
    const TEST: &str = "install_is_idempotent_and_uninstall_keeps_config_and_state";
    if !nix::unistd::geteuid().is_root() {
        return skip(TEST, "needs root (install sets owners)");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let destdir = root.to_str().expect("utf-8 path");
    let binary = relay_ctl_bin();
    let binary = binary.to_str().expect("utf-8 path");
    let install = |extra: &[&str]| {
        let mut args = vec!["--binary", binary, "--destdir", destdir];
        args.extend_from_slice(extra);
        script("install.sh", &args)
    };

    // A dry run says what it would do and does nothing.
    let plan = install(&["--dry-run"]);
    assert!(plan.contains("would run: useradd"), "{plan}");
    assert!(
        snapshot(root).is_empty(),
        "a dry run wrote {:?}",
        snapshot(root)
    );

    install(&[]);
    let uid = id_in(&root.join("etc/passwd"), "relay").expect("relay in DESTDIR/etc/passwd");
    let gid = id_in(&root.join("etc/group"), "relay").expect("relay in DESTDIR/etc/group");
    let tree = snapshot(root);
    let expected = [
        ("usr/local/bin/relay-ctl", 0o755, 0, 0),
        ("etc/systemd/system/relay.service", 0o644, 0, 0),
        ("etc/relay", 0o750, 0, gid),
        ("etc/relay/relay.toml", 0o640, 0, gid),
        ("var/lib/relay", 0o700, uid, gid),
    ];
    for (path, mode, owner, group) in expected {
        let (m, u, g, ..) = tree
            .get(path)
            .unwrap_or_else(|| panic!("{path} not installed: {tree:?}"));
        assert_eq!(
            (*m, *u, *g),
            (mode, owner, group),
            "{path}: mode {m:o} owner {u}:{g}"
        );
    }
    assert_eq!(
        std::fs::read(root.join("usr/local/bin/relay-ctl")).expect("installed binary"),
        std::fs::read(binary).expect("built binary"),
    );
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/relay.service")).expect("unit");
    assert_eq!(
        unit,
        std::fs::read_to_string(repo().join("contrib/systemd/relay.service")).expect("contrib"),
        "the default prefix installs the unit as it is"
    );
    let config = root.join("etc/relay/relay.toml");
    let text = std::fs::read_to_string(&config).expect("config skeleton");
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("secret = \""))
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no secret in the skeleton:\n{text}"));
    assert!(
        secret.len() == 32 && secret.chars().all(|c| c.is_ascii_hexdigit()),
        "{secret}"
    );
    let check = Command::new(binary)
        .args(["config", "check"])
        .arg(&config)
        .output()
        .expect("config check");
    assert!(check.status.success(), "{check:?}");

    // A second run changes nothing, not even a modification time.
    let again = install(&[]);
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(snapshot(root), tree, "the second run changed something");
    // An operator's config is never rewritten.
    std::fs::write(&config, format!("{text}\n# edited\n")).expect("edit");
    install(&[]);
    assert!(
        std::fs::read_to_string(&config)
            .expect("config")
            .ends_with("# edited\n")
    );

    if found("systemd-analyze") {
        // Verified with ExecStart pointing at the installed binary inside DESTDIR.
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("relay.service");
        let installed = root.join("usr/local/bin/relay-ctl");
        std::fs::write(
            &copy,
            unit.replace(
                "/usr/local/bin/relay-ctl",
                installed.to_str().expect("utf-8"),
            ),
        )
        .expect("unit copy");
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze");
        assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    } else {
        eprintln!("{TEST}: systemd-analyze not available, unit not verified");
    }

    // Uninstall: everything but config, state and the user who owns the state.
    let removed = script("uninstall.sh", &["--destdir", destdir]);
    assert!(removed.contains("kept"), "{removed}");
    let left: Vec<String> = snapshot(root)
        .into_iter()
        .filter(|(path, (mode, ..))| {
            // Directories install created on the way stay (on a host they were there before).
            let dir = root.join(path).is_dir();
            !(dir && path != "etc/relay" && path != "var/lib/relay" && *mode == 0o755)
        })
        .map(|(path, _)| path)
        .filter(|path| !path.starts_with("etc/passwd") && !path.starts_with("etc/group"))
        .filter(|path| !path.starts_with("etc/shadow") && !path.starts_with("etc/gshadow"))
        .collect();
    assert_eq!(
        left,
        ["etc/relay", "etc/relay/relay.toml", "var/lib/relay"],
        "left after uninstall"
    );
    assert!(id_in(&root.join("etc/passwd"), "relay").is_some());
    let nothing = script("uninstall.sh", &["--destdir", destdir]);
    assert!(nothing.contains("nothing to change"), "{nothing}");

    script("uninstall.sh", &["--destdir", destdir, "--purge"]);
    assert!(!root.join("etc/relay").exists());
    assert!(!root.join("var/lib/relay").exists());
    assert_eq!(id_in(&root.join("etc/passwd"), "relay"), None);
    assert_eq!(id_in(&root.join("etc/group"), "relay"), None);
}

/// `--prefix` moves the binary, and the unit names it there.
#[test]
fn prefix_moves_the_binary_and_the_unit_follows() {
    const TEST: &str = "prefix_moves_the_binary_and_the_unit_follows";
    if !nix::unistd::geteuid().is_root() {
        return skip(TEST, "needs root (install sets owners)");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let destdir = tmp.path().to_str().expect("utf-8 path");
    let binary = relay_ctl_bin();
    let binary = binary.to_str().expect("utf-8 path");
    let args = ["--prefix", "/opt/relay", "--destdir", destdir];
    script(
        "install.sh",
        &[&["--binary", binary][..], &args[..]].concat(),
    );
    assert!(tmp.path().join("opt/relay/bin/relay-ctl").is_file());
    assert!(!tmp.path().join("usr/local/bin/relay-ctl").exists());
    let unit =
        std::fs::read_to_string(tmp.path().join("etc/systemd/system/relay.service")).expect("unit");
    assert!(
        unit.contains("ExecStart=/opt/relay/bin/relay-ctl run --config /etc/relay/relay.toml"),
        "{unit}"
    );
    script("uninstall.sh", &args);
    assert!(!tmp.path().join("opt/relay/bin/relay-ctl").exists());
}
