//! Dropping root after start-up: once XDP is loaded and the ports are bound, `relay-ctl run`
//! becomes `[server] user` and keeps only CAP_BPF (map updates, counters) and CAP_NET_ADMIN
//! (detaching XDP at exit). Capabilities are per thread, so this must run before the async
//! runtime starts its worker threads; [`drop_to`] checks that it does.

use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use nix::unistd::{Gid, Group, Uid, User};

/// `CAP_NET_ADMIN` (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// `CAP_PERFMON` (linux/capability.h, since 5.8): needed only to load the program (see
/// [`shed`]).
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (linux/capability.h, since 5.8).
pub const CAP_BPF: u32 = 39;
/// What the daemon keeps after the switch.
pub const KEPT: [u32; 2] = [CAP_NET_ADMIN, CAP_BPF];

/// Why the switch to the unprivileged user failed. Starting anyway would run the relay with
/// more privilege than the operator asked for, so each of these stops the start.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No such user.
    #[error("[server] user `{0}` does not exist")]
    NoUser(String),
    /// No such group.
    #[error("[server] group `{0}` does not exist")]
    NoGroup(String),
    /// The user database could not be read.
    #[error("looking up `{name}`: {source}")]
    Lookup {
        /// User or group name.
        name: String,
        /// The error.
        source: nix::Error,
    },
    /// Not root, and not already the target user.
    #[error("switching to user `{0}` needs root; run as root or as that user")]
    NotRoot(String),
    /// Threads already running would keep root.
    #[error("internal: privileges must be dropped before any thread starts ({0} running)")]
    Threaded(usize),
    /// A directory the daemon writes after the switch is not the user's.
    #[error(
        "{what} {path} belongs to uid {owner}, not to `{user}`: chown it, or let systemd's \
         {hint} create it"
    )]
    DirOwner {
        /// What the directory is for.
        what: &'static str,
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The target user.
        user: String,
        /// The systemd setting that creates it.
        hint: &'static str,
    },
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call.
        call: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The user and group to become.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// User name, for messages.
    pub name: String,
    /// Its uid.
    pub uid: Uid,
    /// `[server] group`, or the user's primary group.
    pub gid: Gid,
}

/// Looks up `user` (and `group`, default: the user's primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Target, PrivilegeError> {
    let lookup = |source| PrivilegeError::Lookup {
        name: user.to_owned(),
        source,
    };
    let found = User::from_name(user)
        .map_err(lookup)?
        .ok_or_else(|| PrivilegeError::NoUser(user.to_owned()))?;
    let gid = match group {
        None => found.gid,
        Some(g) => {
            Group::from_name(g)
                .map_err(|source| PrivilegeError::Lookup {
                    name: g.to_owned(),
                    source,
                })?
                .ok_or_else(|| PrivilegeError::NoGroup(g.to_owned()))?
                .gid
        }
    };
    Ok(Target {
        name: user.to_owned(),
        uid: found.uid,
        gid,
    })
}

/// Makes sure `dir` exists and belongs to the target user, so the daemon can still write it
/// after the switch. A missing directory is created (mode 0750) and handed over; an existing
/// one owned by someone else is an error rather than silently re-owned.
pub fn prepare_dir(
    dir: &Path,
    target: &Target,
    what: &'static str,
    hint: &'static str,
) -> Result<(), PrivilegeError> {
    let sys = |call| move |source| PrivilegeError::Sys { call, source };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.uid() == target.uid.as_raw() => Ok(()),
        Ok(meta) => Err(PrivilegeError::DirOwner {
            what,
            path: dir.to_owned(),
            owner: meta.uid(),
            user: target.name.clone(),
            hint,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(sys("mkdir"))?;
            std::os::unix::fs::chown(dir, Some(target.uid.as_raw()), Some(target.gid.as_raw()))
                .map_err(sys("chown"))
        }
        Err(e) => Err(PrivilegeError::Sys {
            call: "stat",
            source: e,
        }),
    }
}

/// Becomes `target`, keeping only [`KEPT`] (permitted and effective; bounding set reduced to
/// them; no inheritable or ambient capabilities) and setting no-new-privs. Must be called
/// while the process has a single thread.
pub fn drop_to(target: &Target) -> Result<(), PrivilegeError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(PrivilegeError::Threaded(threads));
    }
    if Uid::current() == target.uid && Uid::effective() == target.uid {
        // Already that user (systemd's User= with AmbientCapabilities).
        return shed();
    }
    if !Uid::effective().is_root() {
        return Err(PrivilegeError::NotRoot(target.name.clone()));
    }
    // Bounding set first: it needs CAP_SETPCAP, which is itself dropped on the way.
    for cap in 0..=last_cap() {
        if !KEPT.contains(&cap) {
            prctl(libc::PR_CAPBSET_DROP, cap.into(), "prctl(PR_CAPBSET_DROP)")?;
        }
    }
    // Keep the permitted set across the uid change (cleared again below).
    prctl(libc::PR_SET_KEEPCAPS, 1, "prctl(PR_SET_KEEPCAPS)")?;
    let gid = target.gid;
    nix::unistd::setgroups(&[gid]).map_err(nix_err("setgroups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(nix_err("setresgid"))?;
    let uid = target.uid;
    nix::unistd::setresuid(uid, uid, uid).map_err(nix_err("setresuid"))?;
    capset(&KEPT)?;
    prctl(libc::PR_SET_KEEPCAPS, 0, "prctl(PR_SET_KEEPCAPS)")?;
    clear_ambient_and_lock()
}

/// For a process started unprivileged with capabilities (systemd's `User=` with
/// `AmbientCapabilities`, a container's file capabilities): gives up what was only needed to
/// start, CAP_NET_BIND_SERVICE once the ports are bound and CAP_PERFMON once the program is
/// loaded, keeping [`KEPT`] (those it has) and setting no-new-privs. Must be called while the
/// process has a single thread.
pub fn shed() -> Result<(), PrivilegeError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(PrivilegeError::Threaded(threads));
    }
    let permitted = own_caps("CapPrm:");
    let keep: Vec<u32> = KEPT.into_iter().filter(|c| permitted.contains(c)).collect();
    capset(&keep)?;
    clear_ambient_and_lock()
}

/// Clears the ambient set and sets no-new-privs (nothing executed later gains privilege).
fn clear_ambient_and_lock() -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(sys_err("prctl(PR_CAP_AMBIENT_CLEAR_ALL)"));
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
}

fn prctl(
    option: libc::c_int,
    arg: libc::c_ulong,
    call: &'static str,
) -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0, 0, 0) };
    if rc == 0 { Ok(()) } else { Err(sys_err(call)) }
}

fn sys_err(call: &'static str) -> PrivilegeError {
    PrivilegeError::Sys {
        call,
        source: io::Error::last_os_error(),
    }
}

fn nix_err(call: &'static str) -> impl Fn(nix::Error) -> PrivilegeError {
    move |e| PrivilegeError::Sys {
        call,
        source: io::Error::from(e),
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's effective and permitted sets to `caps`, inheritable to none.
fn capset(caps: &[u32]) -> Result<(), PrivilegeError> {
    let mut data = [CapData::default(); 2];
    for &cap in caps {
        let word = &mut data[(cap / 32) as usize];
        word.effective |= 1 << (cap % 32);
        word.permitted |= 1 << (cap % 32);
    }
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: the kernel reads one header and two data structs, laid out as in capability.h.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(sys_err("capset"))
    }
}

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// This process's capability set named by `field` (`CapPrm:`, `CapEff:`, ...).
/// Whether this thread holds `cap` in its effective set.
pub fn has_effective(cap: u32) -> bool {
    own_caps("CapEff:").contains(&cap)
}

fn own_caps(field: &str) -> Vec<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|m| caps_from_mask(m).ok())
        })
        .unwrap_or_default()
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
}

/// Parses a `Cap*:` hex mask from /proc/PID/status into capability numbers.
pub fn caps_from_mask(hex: &str) -> Result<Vec<u32>, std::num::ParseIntError> {
    let mask = u64::from_str_radix(hex.trim(), 16)?;
    Ok((0..64).filter(|c| mask & (1 << c) != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_masks_parse() {
        // CAP_NET_ADMIN | CAP_BPF as /proc/PID/status prints them.
        assert_eq!(
            caps_from_mask("0000008000001000").expect("hex"),
            vec![CAP_NET_ADMIN, CAP_BPF]
        );
        assert_eq!(
            caps_from_mask("0000000000000000").expect("hex"),
            Vec::<u32>::new()
        );
        assert!(caps_from_mask("zz").is_err());
    }

    #[test]
    fn unknown_user_is_a_clear_error() {
        let e = resolve("relay-no-such-user-x", None).expect_err("no such user");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
