//! `--move copy` and `--move dd`: an edge-triggered epoll loop per worker. Each socket is
//! registered once, for reading and writing, when it is created, and never modified: closing
//! it takes it out of the epoll set. A write that would block keeps the rest and pauses
//! reading that direction until the other socket reports room.
//!
//! With `dd` the loop also does the essential work of a `dd` relay, with relay-ctl's own
//! protocol code: the client's obfuscated2 header checked against the secret, a replay set,
//! a fresh DC header in fast mode, the client → DC bytes decrypted and re-encrypted, the
//! DC → client bytes passed through. No fronting, timeouts, limits, accounting, metrics or
//! fake TLS: it measures what a relay on a hand-written event loop would start from.

use std::{
    collections::HashSet,
    io::{self, ErrorKind, Read as _},
    net::{Shutdown, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use anyhow::Result;
use nix::libc;
use relay_ctl::relay::upstream::dc_socket;
use relay_proto::{
    AesCtr, ModeSet, Secret,
    obfs2::{self, HEADER_LEN, REPLAY_KEY_LEN},
};
use relay_tests::bench::epoll::{Epoll, IN, OUT, write_some};

/// The read buffer, one per worker.
const BUF: usize = 64 * 1024;
/// The listener's token; a connection's sockets use `slot << 1 | side`.
const LISTENER: u64 = u64::MAX;
const CLIENT: usize = 0;
const DC: usize = 1;
const EDGE: u32 = IN | OUT | libc::EPOLLRDHUP as u32 | libc::EPOLLET as u32;
const HANGUP: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
/// Replay keys kept per worker before the set starts over (the relay's cache is bounded too).
const REPLAY_MAX: usize = 1 << 20;

/// One worker's state shared by its connections.
struct Worker {
    epoll: Epoll,
    upstream: SocketAddr,
    /// `Some`: speak `dd` with these secrets; `None`: copy bytes as they come.
    users: Option<Vec<Secret>>,
    replay: HashSet<[u8; REPLAY_KEY_LEN]>,
}

/// The client → DC keystreams of a `dd` connection.
struct Keys {
    client_decrypt: AesCtr,
    dc_encrypt: AesCtr,
}

/// A forwarded connection.
struct Pair {
    client: TcpStream,
    /// The DC leg: from the start when copying, once the header checks out with `dd`.
    dc: Option<TcpStream>,
    /// `dd`: the client's header as far as it came.
    header: [u8; HEADER_LEN],
    have: usize,
    keys: Option<Keys>,
    /// Whether the DC leg's connect finished.
    connected: bool,
    /// Bytes read from side `i` that side `1 - i` did not take yet.
    pending: [Vec<u8>; 2],
    /// Whether side `i` sent FIN.
    eof: [bool; 2],
    /// Whether side `i`'s FIN was passed on (`1 - i` half-closed).
    passed: [bool; 2],
}

/// One worker's loop, until the process ends.
pub fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    users: Option<Vec<Secret>>,
) -> Result<()> {
    let epoll = Epoll::new()?;
    epoll.ctl(libc::EPOLL_CTL_ADD, listener.as_raw_fd(), IN, LISTENER)?;
    let mut worker = Worker {
        epoll,
        upstream,
        users,
        replay: HashSet::new(),
    };
    let mut slots: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Slots freed during a batch: reused only after it, since the batch may still hold
    // events for the sockets that were in them.
    let mut freed: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        free.append(&mut freed);
        if worker.replay.len() > REPLAY_MAX {
            worker.replay.clear();
        }
        let n = worker.epoll.wait(&mut events)?;
        for event in &events[..n] {
            let (token, flags) = (event.u64, event.events);
            if token == LISTENER {
                accept_all(&listener, &worker, &mut slots, &mut free);
                continue;
            }
            let (slot, side) = ((token >> 1) as usize, (token & 1) as usize);
            let Some(pair) = slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            // Dropping the pair closes its sockets, which leaves the epoll set.
            if pair
                .on_event(&mut worker, slot, side, flags, &mut buf)
                .unwrap_or(true)
            {
                slots[slot] = None;
                freed.push(slot);
            }
        }
    }
}

fn accept_all(
    listener: &std::net::TcpListener,
    worker: &Worker,
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
        let slot = free.pop().unwrap_or_else(|| {
            slots.push(None);
            slots.len() - 1
        });
        let mut pair = Pair {
            client,
            dc: None,
            header: [0; HEADER_LEN],
            have: 0,
            keys: None,
            connected: false,
            pending: [Vec::new(), Vec::new()],
            eof: [false; 2],
            passed: [false; 2],
        };
        let ready = worker.register(&pair.client, slot, CLIENT).and_then(|()| {
            if worker.users.is_none() {
                pair.dc = Some(worker.dial(slot)?);
            }
            Ok(())
        });
        match ready {
            Ok(()) => slots[slot] = Some(pair),
            Err(e) => {
                eprintln!("relay-floor: connection: {e}");
                free.push(slot);
            }
        }
    }
}

impl Worker {
    fn register(&self, socket: &TcpStream, slot: usize, side: usize) -> io::Result<()> {
        let token = (slot as u64) << 1 | side as u64;
        self.epoll
            .ctl(libc::EPOLL_CTL_ADD, socket.as_raw_fd(), EDGE, token)
    }

    /// Starts connecting the DC leg of `slot`.
    fn dial(&self, slot: usize) -> io::Result<TcpStream> {
        let dc = dc_socket(self.upstream)?;
        match dc.connect(&self.upstream.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let dc: TcpStream = dc.into();
        self.register(&dc, slot, DC)?;
        Ok(dc)
    }
}

impl Pair {
    fn sock(&self, side: usize) -> io::Result<&TcpStream> {
        match side {
            CLIENT => Ok(&self.client),
            _ => self
                .dc
                .as_ref()
                .ok_or_else(|| ErrorKind::NotConnected.into()),
        }
    }

    /// Handles readiness of `side`; whether the pair is done.
    fn on_event(
        &mut self,
        worker: &mut Worker,
        slot: usize,
        side: usize,
        flags: u32,
        buf: &mut [u8],
    ) -> io::Result<bool> {
        if self.dc.is_none() {
            // `dd`, header still coming: only the client's socket exists.
            self.read_header(worker, slot, buf)?;
        } else if !self.connected {
            if side == CLIENT {
                // The client's bytes wait in its socket until the DC leg is up.
                return Ok(false);
            }
            if let Some(e) = self.sock(DC)?.take_error()? {
                return Err(e);
            }
            self.connected = true;
            if self.flush(CLIENT)? {
                self.forward(CLIENT, buf)?;
            }
            self.forward(DC, buf)?;
        } else {
            if flags & OUT != 0 && self.flush(1 - side)? {
                self.forward(1 - side, buf)?;
            }
            if flags & (IN | HANGUP) != 0 {
                self.forward(side, buf)?;
            }
        }
        Ok(self.passed == [true, true])
    }

    /// `dd`: reads the client's header; once it checks out, starts the DC leg with a fresh
    /// header and whatever client bytes came with it, transformed, queued for it.
    fn read_header(&mut self, worker: &mut Worker, slot: usize, buf: &mut [u8]) -> io::Result<()> {
        let users = worker.users.as_deref().unwrap_or_default();
        loop {
            let n = match (&self.client).read(buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let take = (HEADER_LEN - self.have).min(n);
            self.header[self.have..self.have + take].copy_from_slice(&buf[..take]);
            self.have += take;
            if self.have < HEADER_LEN {
                continue;
            }
            let hs = obfs2::accept_client_header(&self.header, users, ModeSet::ALL, false)
                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            if !worker.replay.insert(hs.replay_key) {
                return Err(io::Error::new(ErrorKind::InvalidData, "replayed header"));
            }
            let leg = obfs2::dc_header(&mut rand::rng(), hs.tag, hs.dc, Some(&hs.encrypt_keys));
            let mut keys = Keys {
                client_decrypt: hs.decrypt,
                dc_encrypt: leg.encrypt,
            };
            let rest = &mut buf[take..n];
            keys.transform(rest);
            let mut first = Vec::with_capacity(HEADER_LEN + rest.len());
            first.extend_from_slice(&leg.wire);
            first.extend_from_slice(rest);
            self.pending[CLIENT] = first;
            self.keys = Some(keys);
            self.dc = Some(worker.dial(slot)?);
            return Ok(());
        }
    }

    /// Reads from `from` and writes to the other side until `from` has nothing more, a
    /// write would block, or `from` sent FIN (then passes the FIN on).
    fn forward(&mut self, from: usize, buf: &mut [u8]) -> io::Result<()> {
        let to = 1 - from;
        while self.pending[from].is_empty() && !self.eof[from] {
            let n = match self.sock(from)?.read(buf) {
                Ok(0) => {
                    self.eof[from] = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if from == CLIENT
                && let Some(keys) = &mut self.keys
            {
                keys.transform(&mut buf[..n]);
            }
            let written = write_some(self.sock(to)?, &buf[..n])?;
            self.pending[from].extend_from_slice(&buf[written..n]);
        }
        self.pass_fin(from)
    }

    /// Writes what `from` left pending to the other side; whether all of it went.
    fn flush(&mut self, from: usize) -> io::Result<bool> {
        if self.pending[from].is_empty() {
            return Ok(true);
        }
        let written = write_some(self.sock(1 - from)?, &self.pending[from])?;
        self.pending[from].drain(..written);
        self.pass_fin(from)?;
        Ok(self.pending[from].is_empty())
    }

    fn pass_fin(&mut self, from: usize) -> io::Result<()> {
        if self.eof[from] && self.pending[from].is_empty() && !self.passed[from] {
            self.passed[from] = true;
            self.sock(1 - from)?.shutdown(Shutdown::Write)?;
        }
        Ok(())
    }
}

impl Keys {
    /// Client → DC: off the client's keystream, onto the DC leg's.
    fn transform(&mut self, bytes: &mut [u8]) {
        self.client_decrypt.apply(bytes);
        self.dc_encrypt.apply(bytes);
    }
}
