//! The container recipe (`contrib/container`).
//!
//! 1. Its runtime contract, on this host without a container engine (root needed; skipped
//!    with a message otherwise, failing under `CI=true`): relay-ctl copied with the file
//!    capabilities the image gives it (CAP_BPF, CAP_NET_ADMIN, CAP_NET_BIND_SERVICE,
//!    CAP_PERFMON), started by an unprivileged user whose bounding set holds only those (the
//!    compose file's `cap_drop: [ALL]` and `cap_add`), in a network namespace standing for
//!    host networking. It binds port 443, loads and attaches the kernel fast path (the
//!    verifier refuses the program without CAP_PERFMON: checked too), takes an operator block
//!    into the kernel map, and keeps only CAP_BPF and CAP_NET_ADMIN once started. The systemd
//!    unit starts relay the same way, with ambient capabilities.
//! 2. The image itself, built and run where a container engine answers (`docker` or
//!    `podman`); skipped with a message where none does.

use std::{
    ffi::OsString, net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path,
    process::Command, time::Duration,
};

use relay_ctl::privilege::{CAP_BPF, CAP_NET_ADMIN, caps_from_mask};
use relay_tests::{
    netns::{NetPair, SERVER_V4, client_v4},
    probe::{Outcome, connect_from},
    relay::{Relay, relay_ctl_bin},
    util::{proc_status, traversable_dir},
};

/// The uid the contract runs as (`nobody`).
const UID: u32 = 65_534;
/// The image's capabilities, as setcap and setpriv name them.
const FILE_CAPS: &str = "cap_bpf,cap_net_admin,cap_net_bind_service,cap_perfmon=ep";
const BOUNDING: &str = "-all,+bpf,+net_admin,+net_bind_service,+perfmon";
/// The same without CAP_PERFMON.
const FILE_CAPS_NO_PERFMON: &str = "cap_bpf,cap_net_admin,cap_net_bind_service=ep";
const BOUNDING_NO_PERFMON: &str = "-all,+bpf,+net_admin,+net_bind_service";

fn attempt(pair: &NetPair, source: std::net::IpAddr) -> Outcome {
    let target = SocketAddr::from((SERVER_V4, 443));
    pair.in_client(|| {
        connect_from(
            source,
            target,
            Duration::from_millis(500),
            Duration::from_millis(300),
        )
    })
}

/// Runs `program args`, which must succeed; returns stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory owned by the contract's user.
fn owned_dir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).expect("mkdir");
    std::os::unix::fs::chown(path, Some(UID), Some(UID)).expect("chown");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Starts relay-ctl (a copy with `file_caps`) in `pair`'s server namespace as the
/// unprivileged user, with bounding set `bounding`, listening on port 443 with XDP `auto` on
/// the veth and no `[server] user`, as the image's default does.
fn start(pair: &NetPair, dir: &Path, file_caps: &str, bounding: &str) -> Relay {
    let bin = dir.join("relay-ctl");
    std::fs::copy(relay_ctl_bin(), &bin).expect("copy relay-ctl");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin_text = bin.display().to_string();
    run("setcap", &[file_caps, &bin_text]);
    let set = run("getcap", &[&bin_text]);
    for cap in file_caps.trim_end_matches("=ep").split(',') {
        assert!(set.contains(cap), "{cap} set on the copy: {set}");
    }
    owned_dir(&dir.join("state"), 0o700);
    owned_dir(&dir.join("run"), 0o750);
    let config = format!(
        r#"
[server]
listen = ["{SERVER_V4}:443"]
drain_secs = 0

[xdp]
interfaces = ["{iface}"]
mode = "auto"

[admin]
socket = "{admin}"

[state]
dir = "{state}"
"#,
        iface = pair.server_if,
        admin = dir.join("run/admin.sock").display(),
        state = dir.join("state").display(),
    );
    let launcher: Vec<OsString> = [
        "setpriv",
        &format!("--reuid={UID}"),
        &format!("--regid={UID}"),
        "--clear-groups",
        &format!("--bounding-set={bounding}"),
        "--inh-caps=-all",
        "--",
        &bin_text,
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    Relay::start_launched(&pair.server_ns, &launcher, &config)
}

#[test]
fn the_images_capabilities_run_relay_with_the_kernel_fast_path() {
    const NAME: &str = "the_images_capabilities_run_relay_with_the_kernel_fast_path";
    if !relay_tests::privilege::privileged(NAME) {
        return;
    }
    let dir = traversable_dir();
    let pair = NetPair::new("ctr", 3);
    let relay = start(&pair, dir.path(), FILE_CAPS, BOUNDING);
    let log = relay.log();
    assert!(
        log.contains("XDP attached") && !log.contains("XDP not used"),
        "the fast path is in the kernel: {log}"
    );
    assert!(log.contains("gave up the start-up capabilities"), "{log}");

    let pid = daemon_pid(relay.pid());
    assert!(
        proc_status(pid, "Uid:")
            .split_whitespace()
            .all(|id| id == UID.to_string()),
        "runs as nobody"
    );
    for field in ["CapEff:", "CapPrm:"] {
        let caps = caps_from_mask(&proc_status(pid, field)).expect("cap mask");
        assert_eq!(
            caps,
            vec![CAP_NET_ADMIN, CAP_BPF],
            "{field}: CAP_NET_BIND_SERVICE and CAP_PERFMON given up once started"
        );
    }
    let ambient = caps_from_mask(&proc_status(pid, "CapAmb:")).expect("cap mask");
    assert!(ambient.is_empty(), "CapAmb {ambient:?}");
    assert_eq!(proc_status(pid, "NoNewPrivs:"), "1");

    assert!(attempt(&pair, client_v4(2)).is_held(), "a client gets in");
    let socket = dir.path().join("run/admin.sock");
    let out = Command::new(relay_ctl_bin())
        .args(["block", "add", &client_v4(3).to_string(), "--socket"])
        .arg(&socket)
        .output()
        .expect("run relay-ctl block add");
    assert!(out.status.success(), "block add: {out:?}");
    assert!(
        matches!(attempt(&pair, client_v4(3)), Outcome::NoAnswer),
        "the block reached the kernel map"
    );
    let log = relay.stop();
    assert!(log.contains("program detached"), "{log}");
}

#[test]
fn without_cap_perfmon_relay_says_the_verifier_needs_it_and_serves_in_userspace() {
    const NAME: &str =
        "without_cap_perfmon_relay_says_the_verifier_needs_it_and_serves_in_userspace";
    if !relay_tests::privilege::privileged(NAME) {
        return;
    }
    let dir = traversable_dir();
    let pair = NetPair::new("ctrp", 2);
    let relay = start(&pair, dir.path(), FILE_CAPS_NO_PERFMON, BOUNDING_NO_PERFMON);
    let log = relay.log();
    assert!(
        log.contains("XDP not used") && log.contains("CAP_PERFMON"),
        "the fallback names the missing capability: {log}"
    );
    assert!(attempt(&pair, client_v4(2)).is_held(), "a client gets in");
    drop(relay);
}

/// The relay-ctl process under `ip netns exec` and `setpriv` (a descendant, or itself).
fn daemon_pid(pid: u32) -> u32 {
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    let mut current = pid;
    for _ in 0..4 {
        if comm(current).trim() == "relay-ctl" {
            return current;
        }
        let children = std::fs::read_to_string(format!("/proc/{current}/task/{current}/children"))
            .unwrap_or_default();
        match children.split_whitespace().find_map(|c| c.parse().ok()) {
            Some(child) => current = child,
            None => break,
        }
    }
    pid
}

/// The first container engine that answers, if any.
fn engine() -> Option<&'static str> {
    ["docker", "podman"].into_iter().find(|engine| {
        Command::new(engine)
            .arg("info")
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

#[test]
fn the_image_builds_and_runs_where_a_container_engine_answers() {
    let Some(engine) = engine() else {
        eprintln!(
            "SKIP the_image_builds_and_runs_where_a_container_engine_answers: no container \
             engine answers here (`docker info` and `podman info` fail)"
        );
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let tag = format!("relay-test:{}", std::process::id());
    let status = Command::new(engine)
        .current_dir(root)
        .args([
            "build",
            "-f",
            "contrib/container/Containerfile",
            "-t",
            &tag,
            ".",
        ])
        .status()
        .expect("run the build");
    assert!(status.success(), "{engine} build failed");
    let run_image = |args: &[&str]| {
        Command::new(engine)
            .args(["run", "--rm", "--network", "none", "--cap-drop", "ALL"])
            .args(["--cap-add", "BPF", "--cap-add", "NET_ADMIN"])
            .args([
                "--cap-add",
                "NET_BIND_SERVICE",
                "--entrypoint",
                "/bin/sh",
                &tag,
                "-c",
            ])
            .args(args)
            .output()
            .expect("run the image")
    };
    let out = run_image(&["id -u && relay-ctl --version && relay-ctl config check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with("10001\n"),
        "runs as the relay user: {text}"
    );
    assert!(text.contains("relay-ctl"), "{text}");
    let _ = Command::new(engine).args(["rmi", "-f", &tag]).output();
}
