//! relay-fakedc: the benchmark's fake Telegram DC. Like `relay_tests::fake_dc` it takes the
//! relay's DC-side obfuscated2 header and echoes every decrypted byte back re-encrypted, but it
//! is built to stay out of the way of the measurement: one epoll loop per thread (each with
//! its own `SO_REUSEPORT` listener), non-blocking sockets, a 256 KiB read buffer per thread,
//! and a few hundred bytes of state per idle connection (no thread, no buffer), so 10,000
//! idle connections cost it almost nothing.
//!
//! ```text
//! relay-fakedc --listen 198.18.0.1:9002 [--threads 2] [--lifetime-secs 3600]
//! ```
//!
//! Prints `listening <addr>` on stdout once every thread listens; runs until killed or until
//! `--lifetime-secs` have passed (a bound for a forgotten process).

use std::{
    io::{ErrorKind, Read as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::Duration,
};

use aes::cipher::{KeyIvInit as _, StreamCipher as _};
use anyhow::Result;
use nix::libc;
use relay_tests::bench::{
    args::Args,
    epoll::{Epoll, IN, OUT, reuseport_listener, write_some},
    procfs,
};

type AesCtr = ctr::Ctr128BE<aes::Aes256>;

/// Read buffer per thread.
const READ_BUF: usize = 256 * 1024;
/// Reads per readiness event before other connections get their turn.
const READS_PER_EVENT: usize = 8;
/// The listener's epoll token; connections use their slot index.
const LISTENER: u64 = u64::MAX;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-fakedc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = Args::from_env()?;
    let listen: SocketAddr = args.need("listen")?;
    let threads: usize = args.get("threads", 2)?;
    let lifetime: u64 = args.get("lifetime-secs", 3600)?;
    args.finish()?;
    procfs::raise_nofile(1 << 16)?;
    let mut listeners = Vec::new();
    for _ in 0..threads.max(1) {
        listeners.push(reuseport_listener(listen, 4096)?);
    }
    let addr = listeners[0].local_addr()?;
    let workers: Vec<_> = listeners
        .into_iter()
        .map(|l| std::thread::spawn(move || serve(l)))
        .collect();
    println!("listening {addr}");
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(lifetime));
        eprintln!("relay-fakedc: lifetime of {lifetime} s over, exiting");
        std::process::exit(0);
    });
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

/// One DC connection.
struct Conn {
    stream: TcpStream,
    header: [u8; 64],
    have: usize,
    /// DC-side decrypt (client→DC) and encrypt (DC→client), once the header is in.
    ciphers: Option<(AesCtr, AesCtr)>,
    /// Echo bytes the socket did not take yet; while non-empty the connection waits for
    /// EPOLLOUT instead of reading.
    pending: Vec<u8>,
}

/// What to do with a connection after handling an event.
enum Next {
    Read,
    Write,
    Close,
}

/// One thread's loop: accept, read, echo, until the process ends.
fn serve(listener: TcpListener) -> Result<()> {
    let epoll = Epoll::new()?;
    epoll.ctl(libc::EPOLL_CTL_ADD, listener.as_raw_fd(), IN, LISTENER)?;
    let mut slots: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 512];
    loop {
        let n = epoll.wait(&mut events)?;
        for event in &events[..n] {
            let token = event.u64;
            if token == LISTENER {
                accept_all(&listener, &epoll, &mut slots, &mut free);
                continue;
            }
            let index = token as usize;
            let Some(conn) = slots.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            let flags = event.events;
            let next = if conn.pending.is_empty() {
                conn.on_readable(&mut buf)
            } else if flags & (OUT | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0 {
                conn.on_writable()
            } else {
                Next::Write
            };
            let fd = conn.stream.as_raw_fd();
            match next {
                Next::Read => {
                    if flags & OUT != 0 {
                        let _ = epoll.ctl(libc::EPOLL_CTL_MOD, fd, IN, token);
                    }
                }
                Next::Write => {
                    let _ = epoll.ctl(libc::EPOLL_CTL_MOD, fd, OUT, token);
                }
                Next::Close => {
                    let _ = epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
                    if let Some(conn) = slots[index].take() {
                        let _ = conn.stream.shutdown(Shutdown::Write);
                    }
                    free.push(index);
                }
            }
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    epoll: &Epoll,
    slots: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: report and let the next event retry.
                eprintln!("relay-fakedc: accept: {e}");
                return;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let index = free.pop().unwrap_or_else(|| {
            slots.push(None);
            slots.len() - 1
        });
        if epoll
            .ctl(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), IN, index as u64)
            .is_err()
        {
            free.push(index);
            continue;
        }
        slots[index] = Some(Conn {
            stream,
            header: [0; 64],
            have: 0,
            ciphers: None,
            pending: Vec::new(),
        });
    }
}

impl Conn {
    fn on_readable(&mut self, buf: &mut [u8]) -> Next {
        for _ in 0..READS_PER_EVENT {
            let n = match self.stream.read(buf) {
                // The relay closed its side; nothing is pending (reads stop while it is).
                Ok(0) => return Next::Close,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Read,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            };
            let data = self.take_header(&mut buf[..n]);
            let Some((decrypt, encrypt)) = &mut self.ciphers else {
                continue;
            };
            decrypt.apply_keystream(data);
            encrypt.apply_keystream(data);
            match write_some(&self.stream, data) {
                Ok(written) if written == data.len() => {}
                Ok(written) => {
                    self.pending.extend_from_slice(&data[written..]);
                    return Next::Write;
                }
                Err(_) => return Next::Close,
            }
        }
        Next::Read
    }

    /// Consumes header bytes from the front of `data` and returns the rest.
    fn take_header<'a>(&mut self, data: &'a mut [u8]) -> &'a mut [u8] {
        if self.have == 64 {
            return data;
        }
        let take = (64 - self.have).min(data.len());
        self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
        self.have += take;
        if self.have == 64 {
            // No secret on the DC leg: the key material is used raw; the reply key is the
            // reversed bytes 8..56.
            let h = &self.header;
            let mut decrypt = AesCtr::new(h[8..40].into(), h[40..56].into());
            let mut reversed = [0u8; 48];
            reversed.copy_from_slice(&h[8..56]);
            reversed.reverse();
            let encrypt = AesCtr::new(reversed[..32].into(), reversed[32..].into());
            let mut header = self.header;
            decrypt.apply_keystream(&mut header);
            self.ciphers = Some((decrypt, encrypt));
        }
        &mut data[take..]
    }

    fn on_writable(&mut self) -> Next {
        match write_some(&self.stream, &self.pending) {
            Ok(written) => {
                self.pending.drain(..written);
                if self.pending.is_empty() {
                    Next::Read
                } else {
                    Next::Write
                }
            }
            Err(_) => Next::Close,
        }
    }
}
