//! Admin roles: who may send what on the admin socket.
//!
//! Root and the daemon's own user may do everything; so may everyone who can connect unless
//! `[admin] read_group` is set. Then the socket belongs to `read_group`, and a caller's role
//! comes from its credentials when it connected (uid, gid and supplementary groups, from
//! `SO_PEERCRED` and `SO_PEERGROUPS`): members of `[admin] group` read and write, members of
//! `read_group` only read ([`Access::Read`] requests), anyone else is refused. Refusals are
//! answered with [`ErrorKind::Forbidden`] and logged on `relay::audit` (at most
//! [`REFUSALS_LOGGED_PER_MINUTE`] lines a minute).

use std::{
    io,
    os::fd::RawFd,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::api::{Access, ErrorKind, Request, Response};

/// Refusals logged per minute at most (the rest are counted, and summed up in one line).
pub const REFUSALS_LOGGED_PER_MINUTE: u32 = 10;
/// `SO_PEERGROUPS` (asm-generic/socket.h, Linux 4.13): the peer's supplementary groups.
const SO_PEERGROUPS: libc::c_int = 59;
/// Supplementary groups read per peer at most (`NGROUPS_MAX`).
const MAX_PEER_GROUPS: usize = 65536;

/// Who may send what on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// The daemon's own uid: like root, always reads and writes.
    pub owner: u32,
    /// `[admin] group`: reads and writes.
    pub write_gid: Option<u32>,
    /// `[admin] read_group`: only reads. Unset: whoever can connect reads and writes (the
    /// socket's mode and group are then the only gate).
    pub read_gid: Option<u32>,
}

/// A caller's credentials as the kernel recorded them when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Primary (effective) group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// What a caller may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every request.
    ReadWrite,
    /// [`Access::Read`] requests only.
    ReadOnly,
    /// Nothing (in neither group while `read_group` is set).
    None,
}

impl Role {
    /// Whether a request needing `access` is allowed.
    pub fn allows(self, access: Access) -> bool {
        match self {
            Role::ReadWrite => true,
            Role::ReadOnly => access == Access::Read,
            Role::None => false,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::ReadWrite => "read-write",
            Role::ReadOnly => "read-only",
            Role::None => "none",
        }
    }
}

impl Roles {
    /// The role of `peer`.
    pub fn role(&self, peer: &Peer) -> Role {
        if peer.uid == 0 || peer.uid == self.owner {
            return Role::ReadWrite;
        }
        let Some(read_gid) = self.read_gid else {
            return Role::ReadWrite;
        };
        if self.write_gid.is_some_and(|gid| peer.in_group(gid)) {
            Role::ReadWrite
        } else if peer.in_group(read_gid) {
            Role::ReadOnly
        } else {
            Role::None
        }
    }
}

/// The peer's supplementary groups (`SO_PEERGROUPS`).
pub fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::other("too many groups"))?;
        // SAFETY: the kernel writes at most `len` bytes into `groups` and sets `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // Too small a buffer: `len` says how much is needed.
        if e.raw_os_error() != Some(libc::ERANGE)
            || count <= groups.len()
            || count > MAX_PEER_GROUPS
        {
            return Err(e);
        }
        groups.resize(count, 0);
    }
}

/// Logs refusals on `relay::audit`, at most [`REFUSALS_LOGGED_PER_MINUTE`] a minute: a caller
/// looping on refused requests cannot flood the log.
#[derive(Default)]
pub struct RefusalLog {
    /// Start of the current minute, lines logged in it, refusals not logged.
    window: Mutex<Option<(Instant, u32, u64)>>,
}

impl RefusalLog {
    /// Logs (or counts, past the minute's allowance) one refusal.
    pub fn log(&self, uid: u32, role: Role, request: &Request) {
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (start, logged, unlogged) = window.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            if *unlogged > 0 {
                tracing::warn!(
                    target: "relay::audit",
                    refused = *unlogged,
                    "admin requests refused and not logged in the last minute"
                );
            }
            (*start, *logged, *unlogged) = (now, 0, 0);
        }
        if *logged < REFUSALS_LOGGED_PER_MINUTE {
            *logged += 1;
            tracing::warn!(
                target: "relay::audit",
                uid,
                role = role.name(),
                request = request.name(),
                result = "refused",
                "admin request refused"
            );
        } else {
            *unlogged += 1;
        }
    }
}

/// The answer to a refused request.
pub fn refusal(role: Role, request: &Request, uid: u32, roles: &Roles) -> Response {
    let writers = match roles.write_gid.and_then(group_name) {
        Some(name) => format!("root or a member of [admin] group `{name}`"),
        None => "root".to_owned(),
    };
    let message = match role {
        Role::ReadOnly => format!(
            "`{}` changes state, and uid {uid} may only read ([admin] read_group): ask {writers}",
            request.name()
        ),
        Role::ReadWrite | Role::None => {
            format!("uid {uid} is in neither [admin] group nor [admin] read_group: ask {writers}")
        }
    };
    Response::Error {
        kind: ErrorKind::Forbidden,
        message,
    }
}

fn group_name(gid: u32) -> Option<String> {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map(|g| g.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::server::tests::all_requests;

    #[test]
    fn requests_are_classified_read_or_write() {
        let reads: Vec<&str> = all_requests()
            .iter()
            .filter(|r| r.access() == Access::Read)
            .map(Request::name)
            .collect();
        assert_eq!(
            reads,
            [
                "block list",
                "allow list",
                "bans list",
                "users list",
                "users show",
                "stats"
            ]
        );
        for request in all_requests() {
            assert_eq!(request.is_change(), request.access() == Access::Write);
        }
    }

    #[test]
    fn roles_follow_the_callers_groups() {
        const WRITE: u32 = 1001;
        const READ: u32 = 1002;
        let peer = |uid, gid, groups: &[u32]| Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        };
        let both = Roles {
            owner: 999,
            write_gid: Some(WRITE),
            read_gid: Some(READ),
        };
        // Root and the daemon's own user, whatever their groups.
        assert_eq!(both.role(&peer(0, 0, &[])), Role::ReadWrite);
        assert_eq!(both.role(&peer(999, 999, &[])), Role::ReadWrite);
        // [admin] group as primary or supplementary group: read-write, even with read_group too.
        assert_eq!(both.role(&peer(5, WRITE, &[])), Role::ReadWrite);
        assert_eq!(both.role(&peer(5, 5, &[READ, WRITE])), Role::ReadWrite);
        // read_group only: read-only.
        assert_eq!(both.role(&peer(5, READ, &[])), Role::ReadOnly);
        assert_eq!(both.role(&peer(5, 5, &[7, READ])), Role::ReadOnly);
        // Neither: nothing.
        assert_eq!(both.role(&peer(5, 5, &[7])), Role::None);
        // Without read_group, whoever can connect may do everything (the socket's mode decides).
        let classic = Roles {
            read_gid: None,
            ..both.clone()
        };
        assert_eq!(classic.role(&peer(5, 5, &[])), Role::ReadWrite);
        // read_group without group: only root and the daemon's user write.
        let read_only = Roles {
            write_gid: None,
            ..both
        };
        assert_eq!(read_only.role(&peer(5, 5, &[WRITE, READ])), Role::ReadOnly);
        assert_eq!(read_only.role(&peer(0, 0, &[])), Role::ReadWrite);

        for request in all_requests() {
            let access = request.access();
            assert!(Role::ReadWrite.allows(access));
            assert_eq!(Role::ReadOnly.allows(access), access == Access::Read);
            assert!(!Role::None.allows(access));
        }
    }
}
