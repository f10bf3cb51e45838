//! The daemon side of the admin socket: JSON lines in, JSON lines out, the caller identified
//! by `SO_PEERCRED`, every change written to the audit log (target `relay::audit`).
//!
//! Each caller gets a role ([`super::roles`]) from its credentials; a request its role does
//! not allow is refused, logged and counted without reaching the handler, and so is one past
//! the caller's request rate ([`super::peer_rate`]).
//!
//! The socket is created race-free with its final permissions: it is bound inside a fresh
//! private (0700) directory next to the final path, given its mode and group there, and then
//! hard-linked into place — `link(2)` fails rather than replace a socket another daemon
//! created meanwhile.

use std::{
    io,
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
    task::{JoinHandle, JoinSet},
};

use super::{
    Handler,
    api::{ErrorKind, Reply, Request, Response},
    peer_rate::{PeerRate, REQUESTS_PER_SEC},
    roles::{Peer, RefusalLog, Roles, peer_groups, refusal},
};
use crate::config::Admin;

/// Longest request line accepted, in bytes (a block import of ~100,000 entries fits).
pub const MAX_LINE: usize = 4 << 20;
/// Admin connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may stay silent (between requests, or inside one) or not read its
/// answer before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for an existing socket to accept a probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest free text (reason, source, names) copied into an audit line.
const AUDIT_TEXT_MAX: usize = 200;

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A daemon already answers on the socket.
    #[error("another relay-ctl is running on {}", path.display())]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket sits at the path.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The existing socket could not be checked or removed.
    #[error("cannot replace the stale socket {}: {source}", path.display())]
    Stale {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The socket's directory could not be created.
    #[error("cannot create the admin socket directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Binding (or moving the socket into place) failed.
    #[error("cannot create the admin socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The mode could not be applied.
    #[error("cannot set mode {mode:04o} on the admin socket {}: {source}", path.display())]
    Chmod {
        /// The socket path.
        path: PathBuf,
        /// The requested mode.
        mode: u32,
        /// The error.
        source: io::Error,
    },
    /// `[admin] group` names no group on this system.
    #[error("[admin] group: no group named `{group}` on this system")]
    UnknownGroup {
        /// The name.
        group: String,
    },
    /// The group database could not be read.
    #[error("[admin] group: looking up `{group}`: {source}")]
    GroupLookup {
        /// The name.
        group: String,
        /// The error.
        source: nix::Error,
    },
    /// The socket could not be given to the group.
    #[error("cannot give the admin socket {} to group `{group}`: {source}", path.display())]
    Chown {
        /// The socket path.
        path: PathBuf,
        /// The group.
        group: String,
        /// The error.
        source: io::Error,
    },
}

/// A running admin server. Dropping it (or [`ServerHandle::shutdown`]) stops accepting, closes
/// open admin connections and removes the socket file.
#[derive(Debug)]
pub struct ServerHandle {
    path: PathBuf,
    /// Device and inode of the socket we created: only that file is removed on shutdown.
    identity: (u64, u64),
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server and removes the socket file.
    pub fn shutdown(self) {}
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
        // Remove the file only if it is still ours (not replaced by someone else's).
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), "removing the admin socket: {e}");
        }
    }
}

/// Creates the admin socket at `admin.socket` with permission bits `admin.mode`, owned by
/// `read_group` if set, else by `group` if set, and answers requests on it with `handler` until
/// the returned handle is dropped. Each caller's role is decided by [`Roles`].
///
/// A stale socket file (nothing listening) is replaced; a live one is an error, as is any
/// other kind of file at `path`. A missing parent directory is created with mode 0755.
pub async fn serve<H: Handler>(admin: &Admin, handler: Arc<H>) -> Result<ServerHandle, AdminError> {
    let (path, mode) = (admin.socket.as_path(), admin.mode);
    let roles = Roles {
        owner: nix::unistd::geteuid().as_raw(),
        write_gid: admin
            .group
            .as_deref()
            .map(resolve_group)
            .transpose()?
            .map(|g| g.as_raw()),
        read_gid: admin
            .read_group
            .as_deref()
            .map(resolve_group)
            .transpose()?
            .map(|g| g.as_raw()),
    };
    // The socket's one group: the wider one, so that both roles can connect.
    let group = admin.read_group.as_deref().or(admin.group.as_deref());
    let gid = roles
        .read_gid
        .or(roles.write_gid)
        .map(nix::unistd::Gid::from_raw);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(|source| AdminError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    remove_stale(path).await?;

    let staging = Staging::create(parent).map_err(|source| AdminError::Bind {
        path: path.to_owned(),
        source,
    })?;
    let temp = staging.socket_path();
    let listener =
        std::os::unix::net::UnixListener::bind(&temp).map_err(|source| AdminError::Bind {
            path: path.to_owned(),
            source,
        })?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode & 0o7777)).map_err(
        |source| AdminError::Chmod {
            path: path.to_owned(),
            mode,
            source,
        },
    )?;
    if let (Some(gid), Some(name)) = (gid, group) {
        std::os::unix::fs::chown(&temp, None, Some(gid.as_raw())).map_err(|source| {
            AdminError::Chown {
                path: path.to_owned(),
                group: name.to_owned(),
                source,
            }
        })?;
    }
    let bind_err = |source| AdminError::Bind {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::symlink_metadata(&temp).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = UnixListener::from_std(listener).map_err(bind_err)?;
    std::fs::hard_link(&temp, path).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            AdminError::AlreadyRunning {
                path: path.to_owned(),
            }
        } else {
            bind_err(source)
        }
    })?;
    drop(staging);
    tracing::info!(
        path = %path.display(),
        mode = %format_args!("{mode:04o}"),
        group,
        "admin socket listening"
    );
    Ok(ServerHandle {
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
        task: tokio::spawn(accept_loop(listener, handler, Arc::new(roles))),
    })
}

fn resolve_group(name: &str) -> Result<nix::unistd::Gid, AdminError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(AdminError::UnknownGroup {
            group: name.to_owned(),
        }),
        Err(source) => Err(AdminError::GroupLookup {
            group: name.to_owned(),
            source,
        }),
    }
}

/// Removes a socket file nobody listens on; refuses if a daemon answers or if it is not a socket.
async fn remove_stale(path: &Path) -> Result<(), AdminError> {
    let stale = |source| AdminError::Stale {
        path: path.to_owned(),
        source,
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(stale(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(AdminError::NotASocket {
            path: path.to_owned(),
        });
    }
    let running = AdminError::AlreadyRunning {
        path: path.to_owned(),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        // Answering, or too busy to answer quickly: alive either way.
        Ok(Ok(_)) | Err(_) => Err(running),
        Ok(Err(e)) => match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed stale admin socket");
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(stale(e)),
            },
            Some(libc::ENOENT) => Ok(()),
            Some(libc::EAGAIN) => Err(running),
            _ => Err(stale(e)),
        },
    }
}

/// A private directory next to the socket path where the socket is bound and prepared.
/// Removed (with whatever is in it) on drop.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> io::Result<Staging> {
        let mut last = None;
        for _ in 0..8 {
            // Short name: Unix socket paths are limited to 107 bytes.
            let dir = parent.join(format!(".relay-{:08x}", rand::random::<u32>()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Staging { dir }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free staging directory name")))
    }

    fn socket_path(&self) -> PathBuf {
        self.dir.join("s")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.socket_path());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

async fn accept_loop<H: Handler>(listener: UnixListener, handler: Arc<H>, roles: Arc<Roles>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(RefusalLog::default());
    let rate = Arc::new(PeerRate::default());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let slot = slots.clone().try_acquire_owned();
                    let handler = handler.clone();
                    let access = AccessPolicy {
                        roles: roles.clone(),
                        refusals: refusals.clone(),
                        rate: rate.clone(),
                    };
                    connections.spawn(async move {
                        match slot {
                            Ok(_slot) => serve_connection(stream, handler, access).await,
                            Err(_) => refuse_busy(stream).await,
                        }
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    tracing::warn!("admin socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn refuse_busy(mut stream: UnixStream) {
    let response = error(
        ErrorKind::Failed,
        format!("too many admin connections (limit {MAX_CONNECTIONS}); try again"),
    );
    let _ = write_response(&mut stream, &response).await;
}

/// Answers requests on one connection until it closes, idles out or sends an oversize line.
async fn serve_connection<H: Handler>(stream: UnixStream, handler: Arc<H>, access: AccessPolicy) {
    let peer = match stream
        .peer_cred()
        .and_then(|cred| Ok((cred, peer_groups(stream.as_raw_fd())?)))
    {
        Ok((cred, groups)) => Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            groups,
        },
        Err(e) => {
            tracing::warn!("admin socket: cannot identify the caller (SO_PEERCRED): {e}");
            return;
        }
    };
    let uid = peer.uid;
    let role = access.roles.role(&peer);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut reader, MAX_LINE)).await
        {
            Ok(Ok(Line::Request(line))) => line,
            Ok(Ok(Line::TooLong)) => {
                let response = error(
                    ErrorKind::BadRequest,
                    format!("request longer than {MAX_LINE} bytes"),
                );
                let _ = write_response(&mut write, &response).await;
                return;
            }
            Ok(Ok(Line::Eof)) | Err(_) => return,
            Ok(Err(e)) => {
                tracing::debug!(uid, "admin connection: {e}");
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Before parsing: a caller over its rate costs no more than reading its line.
        let response = if !access.rate.allows(uid) {
            rate_limited(&*handler, uid)
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) if role.allows(request.access()) => {
                    answer(&*handler, request, uid).await
                }
                Ok(request) => {
                    handler.refused();
                    access.refusals.log(uid, role, &request);
                    refusal(role, &request, uid, &access.roles)
                }
                Err(e) => {
                    tracing::debug!(uid, "admin socket: malformed request: {e}");
                    error(ErrorKind::BadRequest, format!("malformed request: {e}"))
                }
            }
        };
        if write_response(&mut write, &response).await.is_err() {
            return;
        }
    }
}

/// The answer to a request past its caller's rate, counted and (rate-limited) logged.
fn rate_limited<H: Handler>(handler: &H, uid: u32) -> Response {
    handler.rate_limited();
    crate::warn_limited!(
        (1, 5),
        uid,
        "admin socket: caller over {REQUESTS_PER_SEC} requests a second, refused"
    );
    error(
        ErrorKind::RateLimited,
        format!(
            "uid {uid} sent more than {REQUESTS_PER_SEC} admin requests a second; retry shortly"
        ),
    )
}

/// What each connection needs to decide and log refusals.
#[derive(Clone)]
struct AccessPolicy {
    roles: Arc<Roles>,
    refusals: Arc<RefusalLog>,
    rate: Arc<PeerRate>,
}

/// Runs one request through the handler, auditing it if it changes anything.
async fn answer<H: Handler>(handler: &H, request: Request, uid: u32) -> Response {
    let summary = request.is_change().then(|| summary(&request));
    let response = handler.handle(request, uid).await;
    if let Some(request) = summary {
        match &response {
            Response::Ok {
                data: Reply::Count { changed },
            } => {
                tracing::info!(target: "relay::audit", uid, %request, result = "ok", changed, "admin change");
            }
            Response::Ok { .. } => {
                tracing::info!(target: "relay::audit", uid, %request, result = "ok", "admin change");
            }
            Response::Error { kind, message } => {
                tracing::info!(
                    target: "relay::audit",
                    uid,
                    %request,
                    result = "error",
                    ?kind,
                    error = %short(message),
                    "admin change"
                );
            }
        }
    }
    response
}

/// A one-line, bounded description of a request for the audit log. Free text is quoted and
/// escaped (no log injection) and truncated; imports are summarised by count and source.
pub fn summary(request: &Request) -> String {
    match request {
        Request::BlockAdd {
            cidr,
            ttl_secs,
            reason,
        } => {
            let mut s = format!("block add {}", short(cidr));
            if let Some(ttl) = ttl_secs {
                s.push_str(&format!(" ttl={ttl}s"));
            }
            if let Some(reason) = reason {
                s.push_str(&format!(" reason={}", short(reason)));
            }
            s
        }
        Request::BlockRm { cidr } => format!("block rm {}", short(cidr)),
        Request::BlockList => "block list".to_owned(),
        Request::BlockImport { entries, source } => {
            format!(
                "block import {} entries from {}",
                entries.len(),
                short(source)
            )
        }
        Request::AllowAdd { cidr } => format!("allow add {}", short(cidr)),
        Request::AllowRm { cidr } => format!("allow rm {}", short(cidr)),
        Request::AllowList => "allow list".to_owned(),
        Request::BansList => "bans list".to_owned(),
        Request::BansRm { addr } => format!("bans rm {}", short(addr)),
        Request::BansClear => "bans clear".to_owned(),
        Request::UsersList => "users list".to_owned(),
        Request::UsersShow { name } => format!("users show {}", short(name)),
        Request::UsersEnable { name } => format!("users enable {}", short(name)),
        Request::UsersDisable { name } => format!("users disable {}", short(name)),
        Request::Stats => "stats".to_owned(),
    }
}

/// `text` quoted and escaped, cut to [`AUDIT_TEXT_MAX`] characters.
fn short(text: &str) -> String {
    match text.char_indices().nth(AUDIT_TEXT_MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A request line (without its newline; the last line may lack one).
    Request(Vec<u8>),
    /// More than the limit without a newline.
    TooLong,
    /// The peer closed the connection between requests.
    Eof,
}

/// Reads up to a newline, never buffering more than `max` bytes.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Request(line)
            });
        }
        let (chunk, consumed, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if line.len() + chunk.len() > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        reader.consume(consumed);
        if done {
            return Ok(Line::Request(line));
        }
    }
}

async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(response).unwrap_or_else(|e| {
        // Unreachable for these types; answer something well-formed regardless.
        let fallback = error(ErrorKind::Failed, format!("encoding the response: {e}"));
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    bytes.push(b'\n');
    tokio::time::timeout(IDLE_TIMEOUT, writer.write_all(&bytes))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

#[cfg(test)]
pub(crate) mod tests;
