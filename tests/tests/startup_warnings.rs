//! Warnings about the configuration reach the log of `relay-ctl run`: logging starts before the
//! config is judged, so nothing said about it is lost.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use relay_tests::{relay::relay_ctl_bin, util::free_port};

/// Runs relay-ctl on `config` (written with `mode`) until its `ready` line; returns its log.
fn run_until_ready(config: &str, mode: u32) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let config_with_dirs = format!(
        "{config}\n[admin]\nsocket = {:?}\n[state]\ndir = {:?}\n[metrics]\nenabled = false\n",
        dir.path().join("admin.sock").display().to_string(),
        dir.path().join("state").display().to_string(),
    );
    std::fs::write(&path, config_with_dirs).expect("write config");
    let mut child = Command::new(relay_ctl_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay-ctl");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let ready = line.contains(" ready");
        log.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    log.join("\n")
}

fn config(port: u16, modes: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = {modes}

[xdp]
mode = "off"

[[users]]
name = "alice"
secret = "0123456789abcdef0123456789abcdef"
"#
    )
}

#[test]
fn a_world_readable_config_with_secrets_is_warned_about_in_the_run_log() {
    let log = run_until_ready(&config(free_port(), r#"["tls"]"#), 0o644);
    assert!(log.contains(" ready"), "relay did not start:\n{log}");
    assert!(
        log.contains("readable by every user") && log.contains("WARN"),
        "no warning about the readable secrets in the run log:\n{log}"
    );
    // Not warned about when only the owner can read it.
    let log = run_until_ready(&config(free_port(), r#"["tls"]"#), 0o600);
    assert!(log.contains(" ready"), "relay did not start:\n{log}");
    assert!(!log.contains("readable by every user"), "{log}");
}

#[test]
fn enabled_obfuscated2_modes_are_named_in_the_run_log() {
    let log = run_until_ready(&config(free_port(), r#"["secure", "tls"]"#), 0o600);
    assert!(log.contains(" ready"), "relay did not start:\n{log}");
    assert!(
        log.contains("obfuscated2 modes are enabled"),
        "no exposure warning for secure mode:\n{log}"
    );
    let log = run_until_ready(&config(free_port(), r#"["tls"]"#), 0o600);
    assert!(!log.contains("obfuscated2 modes"), "{log}");
}
