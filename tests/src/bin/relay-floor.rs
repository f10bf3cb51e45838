//! relay-floor: the benchmark's floor. A TCP forwarder that does nothing but move bytes: no
//! protocol, no crypto, the relay's socket options (`TCP_NODELAY` both ways, quick ACK off
//! while connecting upstream) and one worker thread per CPU, each with its own `SO_REUSEPORT`
//! listener. What it costs per GB echoed and per connection is what TCP and a lean event
//! loop alone cost on the bench's topology: the floor under a relay that makes the same
//! system calls, to which an MTProto relay adds a handshake check and the decryption and
//! re-encryption of at least one direction.
//!
//! ```text
//! relay-floor --listen 198.18.0.1:4444 --upstream 198.18.1.2:9002 [--move splice|copy]
//!             [--threads N] [--lifetime-secs 3600]
//! ```
//!
//! `--move splice` (the default) moves every byte with `splice(2)` through a pipe, never
//! copying it to user space, on a single-threaded tokio runtime per worker as the relay
//! runs: the floor for bulk transfer. `--move copy` reads into one buffer per worker and
//! writes it out, in a hand-written edge-triggered epoll loop (no runtime, no task, no pipe
//! per connection, no system call an event does not need): the floor for short
//! connections. Prints `listening <addr>` on stdout once every thread listens; runs until
//! killed or until `--lifetime-secs` have passed (a bound for a forgotten process).

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
use relay_tests::bench::{args::Args, procfs};
use tokio::{
    io::Interest,
    net::{TcpListener, TcpSocket, TcpStream},
};

/// Bytes moved per `splice` call (and the pipe's size): the relay's bulk buffer.
const CHUNK: usize = 256 * 1024;
/// The copy buffer, one per worker.
const COPY_BUF: usize = 64 * 1024;

/// How bytes get from one socket to the other.
#[derive(Clone, Copy)]
enum Move {
    Splice,
    Copy,
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
        other => bail!("--move {other}: expected splice or copy"),
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
            thread::spawn(move || match how {
                Move::Splice => serve_splice(l, upstream),
                Move::Copy => copy::serve(l, upstream),
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

/// `--move copy`: an edge-triggered epoll loop per worker. Each socket is registered once,
/// for reading and writing, when its connection is accepted, and never modified: closing
/// the socket takes it out of the epoll set. A write that would block keeps the rest and
/// pauses reading that direction until the other socket reports room.
mod copy {
    use std::{
        io::{self, ErrorKind, Read as _, Write as _},
        net::{Shutdown, SocketAddr, TcpStream},
        os::fd::{AsRawFd as _, FromRawFd as _},
    };

    use anyhow::Result;
    use nix::libc;
    use relay_tests::bench::epoll::{Epoll, IN, OUT};

    use super::COPY_BUF;

    /// The listener's token; a connection's sockets use `slot << 1 | side`.
    const LISTENER: u64 = u64::MAX;
    const CLIENT: usize = 0;
    const DC: usize = 1;
    const EDGE: u32 = IN | OUT | libc::EPOLLRDHUP as u32 | libc::EPOLLET as u32;
    const HANGUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

    /// A forwarded connection: the client's socket and the DC's.
    struct Pair {
        socks: [TcpStream; 2],
        /// Whether the DC leg's connect finished.
        connected: bool,
        /// Bytes read from side `i` that side `1 - i` did not take yet.
        pending: [Vec<u8>; 2],
        /// Whether side `i` sent FIN.
        eof: [bool; 2],
        /// Whether side `i`'s FIN was passed on (`1 - i` half-closed).
        passed: [bool; 2],
    }

    /// What an event left of a pair.
    enum Fate {
        Open,
        Done,
    }

    /// One worker's loop, until the process ends.
    pub fn serve(listener: std::net::TcpListener, upstream: SocketAddr) -> Result<()> {
        let epoll = Epoll::new()?;
        epoll.ctl(libc::EPOLL_CTL_ADD, listener.as_raw_fd(), IN, LISTENER)?;
        let mut slots: Vec<Option<Pair>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut buf = vec![0u8; COPY_BUF];
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        // Slots freed during a batch: reused only after it, since the batch may still hold
        // events for the sockets that were in them.
        let mut freed: Vec<usize> = Vec::new();
        loop {
            free.append(&mut freed);
            let n = epoll.wait(&mut events)?;
            for event in &events[..n] {
                let (token, flags) = (event.u64, event.events);
                if token == LISTENER {
                    accept_all(&listener, upstream, &epoll, &mut slots, &mut free);
                    continue;
                }
                let (slot, side) = ((token >> 1) as usize, (token & 1) as usize);
                let Some(pair) = slots.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                // Dropping the pair closes both sockets, which leaves the epoll set.
                if let Ok(Fate::Done) | Err(_) = pair.on_event(side, flags, &mut buf) {
                    slots[slot] = None;
                    freed.push(slot);
                }
            }
        }
    }

    fn accept_all(
        listener: &std::net::TcpListener,
        upstream: SocketAddr,
        epoll: &Epoll,
        slots: &mut Vec<Option<Pair>>,
        free: &mut Vec<usize>,
    ) {
        loop {
            // SAFETY: no address is asked for; the returned fd is owned from here on.
            let fd = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock => return,
                    ErrorKind::Interrupted | ErrorKind::ConnectionAborted => continue,
                    _ => {
                        eprintln!("relay-floor: accept: {e}");
                        return;
                    }
                }
            }
            // SAFETY: a fresh socket nobody else owns.
            let client = unsafe { TcpStream::from_raw_fd(fd) };
            let dc = match super::dc_socket(upstream) {
                Ok(dc) => dc,
                Err(e) => {
                    eprintln!("relay-floor: socket: {e}");
                    continue;
                }
            };
            match dc.connect(&upstream.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => {
                    eprintln!("relay-floor: connect {upstream}: {e}");
                    continue;
                }
            }
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            let pair = Pair {
                socks: [client, dc.into()],
                connected: false,
                pending: [Vec::new(), Vec::new()],
                eof: [false; 2],
                passed: [false; 2],
            };
            let registered = [CLIENT, DC].iter().all(|&side| {
                let token = (slot as u64) << 1 | side as u64;
                let fd = pair.socks[side].as_raw_fd();
                epoll.ctl(libc::EPOLL_CTL_ADD, fd, EDGE, token).is_ok()
            });
            if registered {
                slots[slot] = Some(pair);
            } else {
                free.push(slot);
            }
        }
    }

    impl Pair {
        fn on_event(&mut self, side: usize, flags: u32, buf: &mut [u8]) -> io::Result<Fate> {
            if !self.connected {
                if side == CLIENT {
                    // The client's bytes wait in its socket until the DC leg is up.
                    return Ok(Fate::Open);
                }
                if let Some(e) = self.socks[DC].take_error()? {
                    return Err(e);
                }
                self.connected = true;
                self.forward(CLIENT, buf)?;
                self.forward(DC, buf)?;
            } else {
                if flags & OUT != 0 && self.flush(1 - side)? {
                    self.forward(1 - side, buf)?;
                }
                if flags & (IN | HANGUP) != 0 {
                    self.forward(side, buf)?;
                }
            }
            Ok(if self.passed == [true, true] {
                Fate::Done
            } else {
                Fate::Open
            })
        }

        /// Reads from `from` and writes to the other side until `from` has nothing more, a
        /// write would block, or `from` sent FIN (then passes the FIN on).
        fn forward(&mut self, from: usize, buf: &mut [u8]) -> io::Result<()> {
            let to = 1 - from;
            while self.pending[from].is_empty() && !self.eof[from] {
                let n = match (&self.socks[from]).read(buf) {
                    Ok(0) => {
                        self.eof[from] = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                let written = write_some(&self.socks[to], &buf[..n])?;
                self.pending[from].extend_from_slice(&buf[written..n]);
            }
            self.pass_fin(from)
        }

        /// Writes what `from` left pending to the other side; whether all of it went.
        fn flush(&mut self, from: usize) -> io::Result<bool> {
            if self.pending[from].is_empty() {
                return Ok(true);
            }
            let written = write_some(&self.socks[1 - from], &self.pending[from])?;
            self.pending[from].drain(..written);
            self.pass_fin(from)?;
            Ok(self.pending[from].is_empty())
        }

        fn pass_fin(&mut self, from: usize) -> io::Result<()> {
            if self.eof[from] && self.pending[from].is_empty() && !self.passed[from] {
                self.passed[from] = true;
                self.socks[1 - from].shutdown(Shutdown::Write)?;
            }
            Ok(())
        }
    }

    /// Writes as much of `data` as the socket takes now.
    fn write_some(mut stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        while written < data.len() {
            match stream.write(&data[written..]) {
                Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}
