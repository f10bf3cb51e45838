//! `relay-ctl run` refuses a `[state] dir` another account could write into: group- or
//! world-writable, or owned by another user than the one the relay runs as. Such a directory
//! would let that account plant files (symlinks, fake state) the relay later writes through or
//! trusts. The refusal names the directory, its mode and owner, and the fix.
//!
//! A full disk under the state directory keeps the old file and names the file and the cause.
//!
//! Loopback only (`[xdp] mode = "off"`); the parts with another owner and a full disk need root
//! (to chown, to mount) and skip with a message otherwise, or fail under `CI=true`
//! ([`privilege::root`]).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use relay_ctl::state_dir::StateDir;
use relay_tests::{
    privilege,
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
    if !privilege::root("a_state_dir_owned_by_another_user_is_refused", "to chown") {
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

/// A full disk: a 64 KiB tmpfs mounted in a mount namespace of this test's own thread.
#[test]
fn a_full_disk_keeps_the_old_file_and_says_so() {
    if !privilege::root("a_full_disk_keeps_the_old_file_and_says_so", "to mount") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mount_point = dir.path().to_owned();
    let outcome = std::thread::spawn(move || {
        mount_tiny_tmpfs(&mount_point);
        let state = StateDir::open_own(&mount_point).expect("open");
        state.write("bans.json", b"old").expect("small write");
        let err = state
            .write("bans.json", &vec![7; 256 * 1024])
            .expect_err("disk full");
        let text = err.to_string();
        assert!(text.contains("bans.json"), "{text}");
        assert!(text.contains("No space left"), "{text}");
        assert_eq!(
            state.read("bans.json").expect("read").as_deref(),
            Some(&b"old"[..])
        );
        assert_eq!(state.names().expect("names"), ["bans.json"]);
        // Space again: the next save works.
        state.write("bans.json", b"new").expect("write");
    })
    .join();
    assert!(outcome.is_ok(), "the full-disk check failed");
}

/// Gives the calling thread its own mount namespace (nothing propagates back) and mounts a
/// 64 KiB tmpfs at `at` in it.
fn mount_tiny_tmpfs(at: &Path) {
    use nix::{
        mount::{MsFlags, mount},
        sched::{CloneFlags, unshare},
    };
    unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make mounts private");
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=64k,mode=0700"),
    )
    .expect("mount tmpfs");
}
