//! The CLI side of the admin socket: one blocking request/response exchange.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{fs::MetadataExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    api::{Request, Response},
    server::MAX_LINE,
};

/// How long [`call`] waits for the daemon to take the request and to answer it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest answer accepted, in bytes. Answers come from the trusted daemon and list whole
/// feeds (a 100,000-entry blocklist is ~10 MiB of JSON), so this only stops runaway reads.
pub const MAX_ANSWER: usize = 256 << 20;

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (it is missing, or stale).
    #[error("relay-ctl is not running (no daemon listening on {})", path.display())]
    NotRunning {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The socket exists but this user may not connect to it.
    #[error("permission denied on {}{hint}", path.display())]
    PermissionDenied {
        /// The socket path tried.
        path: PathBuf,
        /// What to do about it (starts with a separator).
        hint: String,
    },
    /// Connecting failed otherwise.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The daemon took longer than the timeout.
    #[error("no answer from the daemon on {} within {}s", path.display(), timeout.as_secs())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// The exchange broke off, or the answer was not a valid response.
    #[error("admin protocol error: {0}")]
    Protocol(String),
    /// The request is larger than the daemon accepts.
    #[error("request of {size} bytes exceeds the admin socket's limit of {MAX_LINE} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
    },
}

impl ClientError {
    /// Classifies a failed `connect` to `path`.
    pub fn from_connect(path: &Path, source: io::Error) -> ClientError {
        let path = path.to_owned();
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ECONNREFUSED) => ClientError::NotRunning { path },
            Some(libc::EACCES | libc::EPERM) => {
                let hint = permission_hint(&path);
                ClientError::PermissionDenied { path, hint }
            }
            _ => ClientError::Connect { path, source },
        }
    }

    fn from_io(path: &Path, timeout: Duration, error: io::Error) -> ClientError {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                path: path.to_owned(),
                timeout,
            },
            _ => ClientError::Protocol(format!("talking to the daemon: {error}")),
        }
    }
}

/// Sends `request` to the daemon listening on `path` and returns its response, waiting at most
/// [`DEFAULT_TIMEOUT`] for each of sending and answering.
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    call_with_timeout(path, request, DEFAULT_TIMEOUT)
}

/// [`call`] with an explicit timeout (for slow requests such as a large import).
pub fn call_with_timeout(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut line = serde_json::to_vec(request)
        .map_err(|e| ClientError::Protocol(format!("encoding the request: {e}")))?;
    line.push(b'\n');
    if line.len() > MAX_LINE {
        return Err(ClientError::TooLarge { size: line.len() });
    }
    let stream = UnixStream::connect(path).map_err(|e| ClientError::from_connect(path, e))?;
    let io_err = |e| ClientError::from_io(path, timeout, e);
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reader = BufReader::new((&stream).take(MAX_ANSWER as u64 + 1));
    let mut answer = Vec::new();
    reader.read_until(b'\n', &mut answer).map_err(io_err)?;
    if answer.is_empty() {
        return Err(ClientError::Protocol(
            "the daemon closed the connection without answering".to_owned(),
        ));
    }
    if answer.last() != Some(&b'\n') {
        return Err(ClientError::Protocol(if answer.len() > MAX_ANSWER {
            format!("answer longer than {MAX_ANSWER} bytes")
        } else {
            "answer cut short".to_owned()
        }));
    }
    serde_json::from_slice(&answer)
        .map_err(|e| ClientError::Protocol(format!("unreadable answer from the daemon: {e}")))
}

/// Advice for a permission error: root, or the socket's group if it grants write access.
fn permission_hint(path: &Path) -> String {
    let Ok(meta) = std::fs::metadata(path) else {
        return ": run as root (e.g. with sudo)".to_owned();
    };
    let mode = meta.mode() & 0o777;
    let group = nix::unistd::Group::from_gid(meta.gid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.gid().to_string(), |g| g.name);
    let owner = nix::unistd::User::from_uid(meta.uid().into())
        .ok()
        .flatten()
        .map_or_else(|| meta.uid().to_string(), |u| u.name);
    if mode & 0o020 != 0 {
        format!(
            " (owner {owner}:{group}, mode {mode:04o}): run as root (e.g. with sudo) or as a \
             member of group `{group}`"
        )
    } else {
        format!(
            " (owner {owner}:{group}, mode {mode:04o}): run as root (e.g. with sudo), or set \
             [admin] group and mode = \"0660\" to admit a group"
        )
    }
}
