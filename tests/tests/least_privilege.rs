//! The daemon's privileges and the XDP program's life across restarts, in network namespaces
//! with native XDP on a veth pair (root needed; skipped with a message otherwise, failing
//! under `CI=true`):
//!
//! 1. With `[server] user = "nobody"` the running daemon has uid/gid nobody, exactly CAP_BPF
//!    and CAP_NET_ADMIN (effective, permitted, bounding), no inheritable or ambient
//!    capabilities and no-new-privs, and still does its job: an operator block reaches the
//!    kernel map, and XDP detaches at exit.
//! 2. `[xdp] keep_on_exit` leaves the program attached and its maps pinned (on a bpffs the
//!    test mounts and unmounts itself) while relay-ctl is stopped: blocked and banned sources
//!    stay dropped. The next start swaps its program into the pinned link, keeps the maps'
//!    bans, and removes entries the new policy no longer has; with keep_on_exit off again the
//!    pins are removed and XDP detaches at exit.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use relay_common::Verdict;
use relay_ctl::privilege::{CAP_BPF, CAP_NET_ADMIN, caps_from_mask};
use relay_tests::{
    kernel,
    netns::{NetPair, SERVER_V4, client_v4},
    probe::{Outcome, connect_from},
    relay::{Relay, relay_ctl_bin},
    util::{proc_status, traversable_dir},
};

const PORT: u16 = 4443;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const HOLD_CHECK: Duration = Duration::from_millis(300);

fn privileged(test: &str) -> bool {
    relay_tests::privilege::privileged(test)
}

fn attempt(pair: &NetPair, source: IpAddr) -> Outcome {
    let target = SocketAddr::from((SERVER_V4, PORT));
    pair.in_client(|| connect_from(source, target, CONNECT_TIMEOUT, HOLD_CHECK))
}

fn dropped(pair: &NetPair, source: IpAddr) -> bool {
    matches!(attempt(pair, source), Outcome::NoAnswer)
}

/// `relay-ctl ARGS --socket SOCKET`, which must succeed; returns stdout.
fn cli(socket: &Path, args: &[&str]) -> String {
    let out = Command::new(relay_ctl_bin())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run relay-ctl");
    assert!(
        out.status.success(),
        "relay-ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn relay_config(pair: &NetPair, dir: &Path, extra_server: &str, xdp: &str, block: &str) -> String {
    format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}"]
drain_secs = 0
{extra_server}

[xdp]
interfaces = ["{iface}"]
{xdp}

[blocklist]
cidrs = [{block}]

[admin]
socket = "{admin}"

[state]
dir = "{state}"
"#,
        iface = pair.server_if,
        admin = dir.join("run/admin.sock").display(),
        state = dir.join("state").display(),
    )
}

#[test]
fn daemon_runs_as_the_configured_user_with_only_bpf_and_net_admin() {
    if !privileged("daemon_runs_as_the_configured_user_with_only_bpf_and_net_admin") {
        return;
    }
    let pair = NetPair::new("priv", 3);
    let dir = traversable_dir();
    let relay = Relay::start(
        &pair.server_ns,
        &relay_config(
            &pair,
            dir.path(),
            "user = \"nobody\"",
            "mode = \"native\"",
            "",
        ),
    );
    assert!(
        relay.log().contains("dropped privileges"),
        "{}",
        relay.log()
    );
    // `ip netns exec` runs relay-ctl as its child: find the daemon itself.
    let pid = daemon_pid(relay.pid());
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("user db")
        .expect("user nobody");
    let uid = nobody.uid.as_raw().to_string();
    let gid = nobody.gid.as_raw().to_string();
    for field in ["Uid:", "Gid:"] {
        let ids = proc_status(pid, field);
        let want = if field == "Uid:" { &uid } else { &gid };
        assert!(ids.split_whitespace().all(|id| id == want), "{field} {ids}");
    }
    assert_eq!(proc_status(pid, "Groups:"), gid, "supplementary groups");
    let kept = vec![CAP_NET_ADMIN, CAP_BPF];
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let caps = caps_from_mask(&proc_status(pid, field)).expect("cap mask");
        assert_eq!(caps, kept, "{field}");
    }
    for field in ["CapInh:", "CapAmb:"] {
        let caps = caps_from_mask(&proc_status(pid, field)).expect("cap mask");
        assert!(caps.is_empty(), "{field} {caps:?}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs:"), "1");

    // Still able to do its job: the state dir is its own, an operator block reaches the
    // kernel map (CAP_BPF), legit clients get in.
    let state = std::fs::metadata(dir.path().join("state")).expect("state dir");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&state),
        nobody.uid.as_raw()
    );
    assert!(attempt(&pair, client_v4(2)).is_held(), "legit client");
    let socket = dir.path().join("run/admin.sock");
    cli(&socket, &["block", "add", &client_v4(3).to_string()]);
    assert!(
        dropped(&pair, client_v4(3)),
        "operator block after the switch"
    );
    let (_, prog_id) = pair.server_xdp().expect("XDP attached");
    assert!(kernel::verdict_counts(prog_id)[Verdict::BlockedCidr as usize] >= 1);

    let log = relay.stop();
    assert!(log.contains("program detached"), "{log}");
    assert_eq!(
        pair.server_xdp(),
        None,
        "detached by the unprivileged daemon"
    );
}

/// The relay-ctl process under `ip netns exec` (its only child, or itself).
fn daemon_pid(pid: u32) -> u32 {
    let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
    if comm(pid).trim() == "relay-ctl" {
        return pid;
    }
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c| comm(*c).trim() == "relay-ctl")
        .unwrap_or(pid)
}

/// A bpffs mounted on a fresh temp dir, unmounted on drop.
struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    fn mount() -> Bpffs {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t bpf failed");
        Bpffs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("relay")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // Lazy: a pinned object still open elsewhere must not keep the test from cleaning up.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn keep_on_exit_protects_while_stopped_and_the_next_start_takes_over() {
    if !privileged("keep_on_exit_protects_while_stopped_and_the_next_start_takes_over") {
        return;
    }
    keep_on_exit_cycle("native", "xdp");
}

/// The same with the TC hook (`auto` on a veth): its tcx link is pinned and taken over too.
#[test]
fn keep_on_exit_with_the_tc_hook() {
    if !privileged("keep_on_exit_with_the_tc_hook") {
        return;
    }
    keep_on_exit_cycle("auto", "tcx");
}

/// Three runs with `[xdp] mode = mode`, attaching as `hook` ([`NetPair::server_hook`]): with
/// keep_on_exit, stopped, taken over, then keep_on_exit off.
fn keep_on_exit_cycle(mode: &str, hook: &str) {
    let pair = NetPair::new("pin", 5);
    let bpffs = Bpffs::mount();
    let dir = traversable_dir();
    let keep = format!(
        "mode = \"{mode}\"\nkeep_on_exit = true\npin_dir = \"{}\"",
        bpffs.path().display()
    );
    let blocked = format!("\"{}/32\"", client_v4(3));

    // First run: a config block and an operator block with a TTL, then stop.
    let first = Relay::start(
        &pair.server_ns,
        &relay_config(&pair, dir.path(), "", &keep, &blocked),
    );
    let (attached, first_prog) = pair.server_hook().expect("program attached");
    assert_eq!(attached, hook);
    let socket = dir.path().join("run/admin.sock");
    cli(
        &socket,
        &["block", "add", &client_v4(4).to_string(), "--ttl", "1h"],
    );
    assert!(dropped(&pair, client_v4(3)) && dropped(&pair, client_v4(4)));
    let log = first.stop();
    assert!(log.contains("left attached and pinned"), "{log}");

    // Stopped: still attached, still dropping, the maps pinned.
    let (_, still) = pair
        .server_hook()
        .expect("program stays attached after exit");
    assert_eq!(still, first_prog);
    assert!(
        dropped(&pair, client_v4(3)),
        "blocked while relay-ctl is stopped"
    );
    assert!(
        dropped(&pair, client_v4(4)),
        "operator block while relay-ctl is stopped"
    );
    let pins = bpffs.path().join(relay_common::maps::PIN_LAYOUT);
    assert!(pins.join(relay_common::maps::BLOCK_V4).exists());

    // Second run, without the config block: takes over the link (new program, never
    // detached), keeps the operator block (restored from state, and in the pinned map all
    // along) and drops the stale config block.
    let second = Relay::start(
        &pair.server_ns,
        &relay_config(&pair, dir.path(), "", &keep, ""),
    );
    assert!(
        second.log().contains("took over the pinned link"),
        "{}",
        second.log()
    );
    let (attached, second_prog) = pair.server_hook().expect("program attached");
    assert_eq!(attached, hook);
    assert_ne!(
        second_prog, first_prog,
        "the new program replaced the old one"
    );
    assert!(
        dropped(&pair, client_v4(4)),
        "operator block kept across the restart"
    );
    assert!(
        attempt(&pair, client_v4(3)).is_held(),
        "the block the new config dropped is gone"
    );
    assert!(attempt(&pair, client_v4(2)).is_held(), "legit client");
    second.stop();

    // Third run with keep_on_exit off: removes the pins, and detaches at exit.
    let pin_dir_only = format!(
        "mode = \"{mode}\"\npin_dir = \"{}\"",
        bpffs.path().display()
    );
    let third = Relay::start(
        &pair.server_ns,
        &relay_config(&pair, dir.path(), "", &pin_dir_only, ""),
    );
    assert!(
        third.log().contains("removed what an earlier run pinned"),
        "{}",
        third.log()
    );
    assert!(
        dropped(&pair, client_v4(4)),
        "operator block restored from the state dir"
    );
    let log = third.stop();
    assert!(log.contains("program detached"), "{log}");
    assert_eq!(pair.server_hook(), None);
    assert!(!pins.exists(), "pins removed");
}
