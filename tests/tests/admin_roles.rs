//! Admin roles against a real daemon (loopback, `[xdp] mode = "off"`): with `[admin] group`
//! and `read_group` set, the CLI run as another uid with only `read_group` among its groups
//! may list, show and read stats but is refused every change (exit status 4, nothing changed,
//! the refusal in the audit log and the counters); with both groups it may do both; with only
//! `[admin] group` it cannot reach the socket, which belongs to `read_group`.
//!
//! Needs root (to run the CLI under other credentials); skips with a message otherwise, and
//! fails under `CI=true` ([`relay_tests::privilege::root`]). The groups are two existing groups
//! of the system, given to the CLI as supplementary groups: the daemon decides from the
//! credentials the kernel reports, not from /etc/group members.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use relay_tests::relay::{Relay, relay_ctl_bin};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// Two groups of this system other than root's and nobody's.
fn two_groups() -> (nix::unistd::Group, nix::unistd::Group) {
    let mut found = (1..1000)
        .filter_map(|gid| nix::unistd::Group::from_gid(gid.into()).ok().flatten())
        .take(2);
    match (found.next(), found.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("fewer than two groups with gid 1..1000 on this system"),
    }
}

/// Credentials to run the CLI with: uid, gid, supplementary groups.
type Who = (u32, u32, Vec<u32>);

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `relay-ctl ARGS --socket SOCKET` run as `who` (root if `None`).
fn cli(socket: &Path, who: Option<Who>, args: &[&str]) -> Out {
    let mut command = Command::new(relay_ctl_bin());
    command
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env("NO_COLOR", "1");
    let shown = format!("{who:?}");
    if let Some((uid, gid, groups)) = who {
        use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
        let groups: Vec<Gid> = groups.into_iter().map(Gid::from_raw).collect();
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        // SAFETY: only system calls, no allocation, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                setgroups(&groups)?;
                setresgid(gid, gid, gid)?;
                setresuid(uid, uid, uid)?;
                Ok(())
            });
        }
    }
    let out = command.output().expect("run relay-ctl");
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("$ relay-ctl {} (as {shown})\n{out:?}", args.join(" "));
    out
}

fn ok(out: Out) -> String {
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
}

fn json(out: Out) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn start(dir: &Path, write_group: &str, read_group: &str) -> (Relay, PathBuf) {
    let socket = dir.join("admin.sock");
    let config = |port: u16| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:{port}"]
modes = ["secure"]

[xdp]
mode = "off"

[limits]
syn_limit = false

[admin]
socket = "{}"
mode = "0660"
group = "{write_group}"
read_group = "{read_group}"

[[users]]
name = "alice"
secret = "00112233445566778899aabbccddeeff"

[[users]]
name = "bob"
secret = "0123456789abcdef0123456789abcdef"
"#,
            socket.display()
        )
    };
    let (relay, _) = Relay::start_local_on_free_port(config);
    (relay, socket)
}

#[test]
fn read_only_callers_read_and_read_write_callers_change() {
    if !relay_tests::privilege::root(
        "read_only_callers_read_and_read_write_callers_change",
        "to run the CLI as another uid",
    ) {
        return;
    }
    let (write_group, read_group) = two_groups();
    let (w, r) = (write_group.gid.as_raw(), read_group.gid.as_raw());
    // The socket's directory must be traversable by the other uid.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let (relay, socket) = start(dir.path(), &write_group.name, &read_group.name);
    let reader = || Some((NOBODY, NOBODY, vec![r]));
    let writer = || Some((NOBODY, NOBODY, vec![w, r]));

    // Reads work for the read-only caller.
    assert!(ok(cli(&socket, reader(), &["users", "list"])).contains("alice"));
    assert!(ok(cli(&socket, reader(), &["users", "show", "alice"])).contains("alice"));
    ok(cli(&socket, reader(), &["stats"]));
    ok(cli(&socket, reader(), &["bans", "list"]));
    ok(cli(&socket, reader(), &["block", "list"]));
    ok(cli(&socket, reader(), &["allow", "list"]));

    // Changes are refused, with exit status 4 and a message saying why and who may.
    let changes: [&[&str]; 6] = [
        &["block", "add", "192.0.2.1"],
        &["block", "rm", "192.0.2.1"],
        &["allow", "add", "198.51.100.0/24"],
        &["bans", "rm", "203.0.113.9"],
        &["users", "disable", "alice"],
        &["users", "enable", "alice"],
    ];
    for args in changes {
        let out = cli(&socket, reader(), args);
        assert_eq!(out.code, 4, "{out:?}");
        assert!(out.stderr.contains("may only read"), "{out:?}");
        assert!(
            out.stderr
                .contains(&format!("[admin] group `{}`", write_group.name)),
            "{out:?}"
        );
    }
    // Nothing changed.
    let blocks = json(cli(&socket, None, &["block", "list", "--json"]));
    assert!(!blocks.to_string().contains("192.0.2.1"), "{blocks}");
    let alice = json(cli(&socket, None, &["users", "show", "alice", "--json"]));
    assert_eq!(alice["users"][0]["enabled"], Value::Bool(true), "{alice}");

    // The read-write caller may change, and read.
    ok(cli(&socket, writer(), &["block", "add", "192.0.2.7"]));
    ok(cli(&socket, writer(), &["users", "disable", "bob"]));
    let bob = json(cli(&socket, writer(), &["users", "show", "bob", "--json"]));
    assert_eq!(bob["users"][0]["enabled"], Value::Bool(false), "{bob}");
    ok(cli(&socket, writer(), &["users", "enable", "bob"]));
    ok(cli(&socket, writer(), &["block", "rm", "192.0.2.7"]));

    // In [admin] group only: the socket (group read_group, mode 0660) is out of reach.
    let outsider = cli(&socket, Some((NOBODY, NOBODY, vec![w])), &["stats"]);
    assert_eq!(outsider.code, 4, "{outsider:?}");
    assert!(
        outsider.stderr.contains("permission denied"),
        "{outsider:?}"
    );

    // Refusals are counted and audited with the caller's uid and the command.
    let stats = json(cli(&socket, reader(), &["stats", "--json"]));
    assert_eq!(
        stats["admin_refused"],
        Value::from(changes.len()),
        "{stats}"
    );
    let log = relay.stop();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin request refused"))
        .collect();
    assert_eq!(refusals.len(), changes.len(), "{log}");
    assert!(
        refusals
            .iter()
            .all(|l| l.contains("relay::audit") && l.contains(&format!("uid={NOBODY}"))),
        "{log}"
    );
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("request=\"users disable\"")),
        "{log}"
    );
    // The writer's changes were audited as changes.
    assert!(
        log.lines()
            .any(|l| l.contains("admin change") && l.contains("block add \"192.0.2.7/32\"")),
        "{log}"
    );
}
