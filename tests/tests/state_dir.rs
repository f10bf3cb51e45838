//! `relay-ctl run` refuses a `[state] dir` another account could write into: group- or
//! world-writable, or owned by another user than the one the relay runs as. Such a directory
//! would let that account plant files (symlinks, fake state) the relay later writes through or
//! trusts. The refusal names the directory, its mode and owner, and the fix.
//!
//! Loopback only (`[xdp] mode = "off"`); the part with another owner needs root (to chown) and
//! skips with a message otherwise.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use relay_tests::{
    relay::{Relay, relay_ctl_bin},
    util::free_port,
};

fn config(port: u16, dir: &Path, state: &Path) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
drain_secs = 0

[xdp]
mode = "off"

[limits]
syn_limit = false

[tls]
learn_flight = false

[admin]
socket = "{}"

[state]
dir = "{}"
"#,
        dir.join("admin.sock").display(),
        state.display()
    )
}

/// Runs `relay-ctl run` on `state`, which must exit (not start) within 20 s; returns stderr.
fn run_must_fail(state: &Path) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("relay.toml");
    // No metrics endpoint: the tests run in parallel, and the refusal comes first anyway.
    let text = format!(
        "{}\n[metrics]\nenabled = false\n",
        config(free_port(), dir.path(), state)
    );
    std::fs::write(&file, text).expect("write config");
    let mut child = Command::new(relay_ctl_bin())
        .args(["run", "--config"])
        .arg(&file)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "relay-ctl started on the unsafe state dir {}",
                state.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    eprintln!("{stderr}");
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn a_world_writable_state_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let stderr = run_must_fail(&state);
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(stderr.contains("0777"), "{stderr}");
    assert!(stderr.contains("chmod 0700"), "{stderr}");
    // Nothing was written into it.
    assert_eq!(std::fs::read_dir(&state).expect("read").count(), 0);
}

#[test]
fn a_group_writable_state_dir_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    let stderr = run_must_fail(&state);
    assert!(stderr.contains("0770"), "{stderr}");
    assert!(stderr.contains("group- or world-writable"), "{stderr}");
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP a_state_dir_owned_by_another_user_is_refused: needs root to chown");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown");
    let stderr = run_must_fail(&state);
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
    assert!(stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(stderr.contains("chown"), "{stderr}");
}

#[test]
fn a_private_state_dir_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let relay = Relay::start_local_on_free_port(|port| config(port, dir.path(), &state)).0;
    relay.stop();
    // No users configured: the default secret was written, and no temp file is left.
    let names: Vec<String> = std::fs::read_dir(&state)
        .expect("read")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "default.secret"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains(".tmp.")), "{names:?}");
}
