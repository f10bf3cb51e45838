//! relay-floor: the benchmark's floor. A TCP forwarder that does nothing but move bytes: no
//! protocol, no crypto, the relay's socket options (`TCP_NODELAY` both ways, quick ACK off
//! while connecting upstream) and one worker thread per CPU, each with its own `SO_REUSEPORT`
//! listener. What it costs per GB echoed and per connection is what TCP and a lean event
//! loop alone cost on the bench's topology: the floor under a relay that makes the same
//! system calls, to which an MTProto relay adds a handshake check and the decryption and
//! re-encryption of at least one direction.
//!
//! ```text
//! relay-floor --listen 198.18.0.1:4444 --upstream 198.18.1.2:9002 [--move splice|copy|dd]
//!             [--secret HEX] [--threads N] [--lifetime-secs 3600]
//! ```
//!
//! `--move splice` (the default) moves every byte with `splice(2)` through a pipe, never
//! copying it to user space, on a single-threaded tokio runtime per worker as the relay
//! runs: the floor for bulk transfer. `--move copy` reads into one buffer per worker and
//! writes it out, in a hand-written edge-triggered epoll loop (no runtime, no task, no pipe
//! per connection, no system call an event does not need): the floor for short
//! connections. `--move dd` is that loop doing a `dd` relay's essential work with `--secret`
//! ([`epoll_loop`]): what a relay on a hand-written event loop would start from.
//!
//! Prints `listening <addr>` on stdout once every thread listens; runs until killed or until
//! `--lifetime-secs` have passed (a bound for a forgotten process).

mod epoll_loop;

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    process::ExitCode,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::libc;
use relay_ctl::proto::Secret;
use relay_tests::bench::{args::Args, procfs};
use tokio::{
    io::Interest,
    net::{TcpListener, TcpSocket, TcpStream},
};

/// Bytes moved per `splice` call (and the pipe's size): the relay's bulk buffer.
const CHUNK: usize = 256 * 1024;

/// How bytes get from one socket to the other.
#[derive(Clone, Copy)]
enum Move {
    Splice,
    Copy,
    Dd,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = Args::from_env()?;
    let listen: SocketAddr = args.need("listen")?;
    let upstream: SocketAddr = args.need("upstream")?;
    let how = match args.get("move", "splice".to_owned())?.as_str() {
        "splice" => Move::Splice,
        "copy" => Move::Copy,
        "dd" => Move::Dd,
        other => bail!("--move {other}: expected splice, copy or dd"),
    };
    let users = match (how, args.opt::<String>("secret")?) {
        (Move::Dd, Some(hex)) => Some(vec![
            Secret::from_hex(&hex).map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
        ]),
        (Move::Dd, None) => bail!("--move dd needs --secret HEX"),
        (_, _) => None,
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let threads: usize = args.get("threads", cpus)?;
    let lifetime: u64 = args.get("lifetime-secs", 3600)?;
    args.finish()?;
    procfs::raise_nofile(1 << 16)?;
    let mut listeners = Vec::new();
    for _ in 0..threads.max(1) {
        listeners.push(listener(listen)?);
    }
    println!("listening {}", listeners[0].local_addr()?);
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(lifetime));
        eprintln!("relay-floor: lifetime of {lifetime} s over, exiting");
        std::process::exit(0);
    });
    let workers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let users = users.clone();
            thread::spawn(move || match how {
                Move::Splice => serve_splice(l, upstream),
                Move::Copy | Move::Dd => epoll_loop::serve(l, upstream, users),
            })
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

/// A non-blocking listener on `addr` sharing the port with the other threads' listeners;
/// accepted sockets inherit `TCP_NODELAY`.
fn listener(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("bind {addr}"))?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One thread's accept loop on its own single-threaded runtime, splicing.
fn serve_splice(listener: std::net::TcpListener, upstream: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            let (client, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("relay-floor: accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            tokio::spawn(async move {
                if let Err(e) = forward(client, upstream).await {
                    eprintln!("relay-floor: connection: {e:#}");
                }
            });
        }
    })
}

/// Connects to `upstream` and splices both ways until both directions end.
async fn forward(client: TcpStream, upstream: SocketAddr) -> Result<()> {
    let dc = dial(upstream)
        .await
        .with_context(|| format!("connect {upstream}"))?;
    let (up, down) = tokio::join!(splice_one_way(&client, &dc), splice_one_way(&dc, &client));
    up.context("client to DC")?;
    down.context("DC to client")
}

/// As the relay's DC leg: Nagle off, quick ACK off while connecting.
async fn dial(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpSocket::from_std_stream(dc_socket(addr)?.into())
        .connect(addr)
        .await
}

/// A non-blocking socket for the DC leg, with the relay's options.
fn dc_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_quickack(false)?;
    Ok(socket)
}

/// Splices `from` into `to` through a pipe until EOF, then half-closes `to`.
async fn splice_one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (pipe_r, pipe_w) = pipe()?;
    loop {
        from.readable().await?;
        let n = match from.try_io(Interest::READABLE, || {
            splice(from.as_raw_fd(), pipe_w.as_raw_fd(), CHUNK)
        }) {
            Ok(0) => return shutdown_write(to),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_r.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// A non-blocking pipe of [`CHUNK`] bytes.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors nobody else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // As big as one splice asks for, so a chunk taken is a chunk written. If the kernel
    // refuses (per-user pipe limits), the default size works too.
    // SAFETY: a valid fd; F_SETPIPE_SZ takes an int.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    Ok((r, w))
}

/// One non-blocking `splice` of up to `len` bytes (`WouldBlock` when there is nothing to
/// take or no room), retried on EINTR.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: valid descriptors, no offsets (sockets and pipes).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
