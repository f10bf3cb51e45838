//! Zero-copy forwarding for a direction whose bytes pass through unchanged (fast mode's
//! DC → client bytes of an obfuscated2 or `dd` client, and fronting): `splice(2)` moves them
//! from one TCP socket through a pipe into the other without copying them into userspace and
//! back, which is a copy in and a copy out per byte saved.
//!
//! A pipe exists only while a burst lasts: the pump switches a direction here once its reads
//! fill a buffer, and [`burst`] returns (closing its pipe) when the source would block with
//! the pipe empty, so a quiet connection holds no pipe, as it holds no buffer.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use nix::{
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    unistd::pipe2,
};
use tokio::{io::Interest, net::TcpStream};

/// Bytes one splice from the source asks for, and the pipe size asked for.
pub const SPLICE_LEN: usize = super::buffers::BULK_BUF;

/// How a burst ended.
#[derive(Debug, PartialEq, Eq)]
pub enum BurstEnd {
    /// The source has nothing more right now (everything read was forwarded).
    Quiet,
    /// The source sent FIN (everything before it was forwarded).
    Eof,
    /// `count` said stop (a quota is used up); what it was told of is not forwarded.
    Stopped,
    /// No pipe could be made (out of file descriptors): nothing was moved, copy instead.
    NoPipe,
}

/// A pipe for one burst.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A bigger pipe moves more per system call. Past the per-user pipe-page limit
        // (fs.pipe-user-pages-soft) the kernel refuses and the default 64 KiB pipe does.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(SPLICE_LEN as i32));
        Ok(Pipe { read, write })
    }
}

/// Forwards from `from` to `to` until `from` would block with everything forwarded, sends
/// FIN, or `count` (told of every chunk taken from `from`, before it is forwarded) returns
/// false.
pub async fn burst(
    from: &TcpStream,
    to: &TcpStream,
    count: &mut (dyn FnMut(usize) -> bool + Send),
) -> io::Result<BurstEnd> {
    let Ok(pipe) = Pipe::new() else {
        return Ok(BurstEnd::NoPipe);
    };
    #[cfg(test)]
    BURSTS.with(|b| b.set(b.get() + 1));
    loop {
        let taken = match from.try_io(Interest::READABLE, || {
            splice_io(from.as_fd(), pipe.write.as_fd(), SPLICE_LEN)
        }) {
            Ok(0) => return Ok(BurstEnd::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(BurstEnd::Quiet),
            Err(e) => return Err(e),
        };
        if !count(taken) {
            return Ok(BurstEnd::Stopped);
        }
        let mut left = taken;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice_io(pipe.read.as_fd(), to.as_fd(), left)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        // Let other tasks on this worker run between chunks of a long burst.
        tokio::task::consume_budget().await;
    }
}

#[cfg(test)]
thread_local! {
    /// Bursts started on this thread (tests only: whether a transfer really was spliced).
    pub(crate) static BURSTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One non-blocking splice of up to `len` bytes.
fn splice_io(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    /// Two connected loopback sockets: (ours, the peer's).
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn a_burst_forwards_everything_then_reports_eof() {
        let (source, mut sender) = pair().await;
        let (sink, mut receiver) = pair().await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            sender.write_all(&sent).await.expect("send");
            sender.shutdown().await.expect("fin");
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).await.expect("receive");
            got
        });
        let mut counted = 0;
        loop {
            source.readable().await.expect("readable");
            let end = burst(&source, &sink, &mut |n| {
                counted += n;
                true
            })
            .await
            .expect("burst");
            if end == BurstEnd::Eof {
                break;
            }
        }
        drop(sink);
        writer.await.expect("writer");
        let got = reader.await.expect("reader");
        assert_eq!(counted, payload.len());
        assert!(got == payload, "bytes arrive unchanged and in order");
    }

    #[tokio::test]
    async fn a_quiet_source_ends_the_burst() {
        let (source, mut sender) = pair().await;
        let (sink, mut receiver) = pair().await;
        sender.write_all(b"hello").await.expect("send");
        source.readable().await.expect("readable");
        let end = burst(&source, &sink, &mut |_| true).await.expect("burst");
        assert_eq!(end, BurstEnd::Quiet);
        let mut got = [0u8; 5];
        receiver.read_exact(&mut got).await.expect("forwarded");
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn count_can_stop_a_burst() {
        let (source, mut sender) = pair().await;
        let (sink, _receiver) = pair().await;
        sender.write_all(&[1; 1000]).await.expect("send");
        source.readable().await.expect("readable");
        let end = burst(&source, &sink, &mut |_| false).await.expect("burst");
        assert_eq!(end, BurstEnd::Stopped);
    }
}
