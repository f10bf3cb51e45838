//! Small helpers every end-to-end test needs: free ports, bounded polling, process figures.

use std::{
    net::TcpListener,
    thread,
    time::{Duration, Instant},
};

/// A loopback port nobody listens on right now.
///
/// Picked at random below the kernel's ephemeral range (32768–60999), not with a bind to
/// port 0: the kernel hands the same just-released port out again and again, so tests
/// running in parallel would all get the same one, and client sockets would take it too.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..1000)
        .map(|_| rng.random_range(20_000..32_000))
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free loopback port in 20000..32000")
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// A field of /proc/`pid`/status (`VmRSS:`, `CapEff:`, `Uid:` ...), its value trimmed.
pub fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS in kB")
}

/// A TCP socket bound to `from` with a port the kernel picks, for a client connection from a
/// chosen address. SO_REUSEADDR lets that port be one still in TIME_WAIT from an earlier
/// connection: tests opening thousands of connections from one address (and earlier tests on
/// the same machine) would otherwise run out of ports to bind.
pub fn bound_socket(from: std::net::IpAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(std::net::SocketAddr::new(from, 0)),
        Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&std::net::SocketAddr::new(from, 0).into())?;
    Ok(socket)
}

/// A loopback address that refuses connections for as long as this value lives: a socket
/// bound to it that never listens. Unlike a [`free_port`], nobody else can take the port
/// meanwhile (the kernel may hand a just-released port out again at once).
pub struct RefusingPort {
    _socket: socket2::Socket,
    /// The address that refuses connections.
    pub addr: std::net::SocketAddr,
}

impl RefusingPort {
    /// Binds a fresh loopback port without listening on it.
    pub fn new() -> RefusingPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind 127.0.0.1:0");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("bound address");
        RefusingPort {
            _socket: socket,
            addr,
        }
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        RefusingPort::new()
    }
}

/// A loopback address no earlier call in this process returned (127.64.0.1 upward, skipping
/// `.0` and `.255`): a source of its own per client connection, so a relay's per-source
/// limits and misuse bans, all at their defaults, never see two test connections as one
/// client. Linux routes all of 127.0.0.0/8 to `lo`; binding to any of it needs no privilege.
pub fn loopback_source() -> std::net::IpAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (254 << 14);
    let host = (n / 254) << 8 | (n % 254 + 1);
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x7f40_0000 | host))
}

/// Connects to `target` from a [`loopback_source`] of its own, within `timeout`.
pub fn connect_from_own_source(
    target: std::net::SocketAddr,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    let socket = bound_socket(loopback_source())?;
    socket.connect_timeout(&target.into(), timeout)?;
    Ok(socket.into())
}

/// A temp dir an unprivileged user can traverse (temp dirs are 0700 root), for tests that run
/// relay-ctl as another user.
pub fn traversable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}
