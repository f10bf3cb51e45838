//! In-memory connections for unit tests: a [`RelayStream`] pair that ends as a tokio TCP
//! stream does (a FIN when the write half or the whole stream is dropped or shut down, a reset
//! by [`RelayStream::close_with_reset`] unless a FIN went first), and a [`MaskDialer`] whose
//! connections the test serves as the mask host.

use std::{
    collections::VecDeque,
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    sync::mpsc,
};

use super::{mask_target::MaskDialer, pump::StreamHalf, stream::RelayStream};

/// How a direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A FIN: reads return 0.
    Fin,
    /// A reset: reads fail with `ConnectionReset`.
    Reset,
}

/// One direction: bytes in flight and how it ended.
#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>,
    end: Option<Ending>,
    /// The reading end is gone: writes fail as they would after the peer's reset.
    reader_gone: bool,
    reader: Option<Waker>,
}

impl Pipe {
    fn wake(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }
}

/// One end of a connection: the pipe it reads and the pipe it writes. Closes (FIN, or reset
/// when asked to) when the last half is dropped.
struct End {
    rx: Arc<Mutex<Pipe>>,
    tx: Arc<Mutex<Pipe>>,
    reset: std::sync::atomic::AtomicBool,
}

fn lock(pipe: &Mutex<Pipe>) -> MutexGuard<'_, Pipe> {
    pipe.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for End {
    fn drop(&mut self) {
        let reset = self.reset.load(std::sync::atomic::Ordering::Relaxed);
        {
            // A reset after a FIN: the peer has read the FIN first.
            let mut tx = lock(&self.tx);
            tx.end
                .get_or_insert(if reset { Ending::Reset } else { Ending::Fin });
            tx.wake();
        }
        lock(&self.rx).reader_gone = true;
    }
}

impl End {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut rx = lock(&self.rx);
        if !rx.bytes.is_empty() {
            let n = rx.bytes.len().min(buf.remaining());
            let (a, b) = rx.bytes.as_slices();
            let from_a = n.min(a.len());
            buf.put_slice(&a[..from_a]);
            buf.put_slice(&b[..n - from_a]);
            rx.bytes.drain(..n);
            return Poll::Ready(Ok(()));
        }
        match rx.end {
            Some(Ending::Fin) => Poll::Ready(Ok(())),
            Some(Ending::Reset) => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            None => {
                rx.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn poll_answered(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut rx = lock(&self.rx);
        if !rx.bytes.is_empty() || rx.end.is_some() {
            return Poll::Ready(());
        }
        rx.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        let mut tx = lock(&self.tx);
        if tx.reader_gone || tx.end.is_some() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        tx.bytes.extend(bytes);
        tx.wake();
        Ok(bytes.len())
    }

    fn shutdown(&self) {
        let mut tx = lock(&self.tx);
        tx.end.get_or_insert(Ending::Fin);
        tx.wake();
    }
}

/// A connected pair of in-memory streams.
pub fn pair() -> (MemStream, MemStream) {
    let a = Arc::new(Mutex::new(Pipe::default()));
    let b = Arc::new(Mutex::new(Pipe::default()));
    let end = |rx: &Arc<Mutex<Pipe>>, tx: &Arc<Mutex<Pipe>>| MemStream {
        end: Arc::new(End {
            rx: Arc::clone(rx),
            tx: Arc::clone(tx),
            reset: false.into(),
        }),
        write_half: false,
    };
    (end(&a, &b), end(&b, &a))
}

/// One end of an in-memory connection (or, split, one of its halves: each is a `MemStream`
/// sharing the end).
pub struct MemStream {
    end: Arc<End>,
    /// A write half: dropping it sends a FIN, as tokio's `OwnedWriteHalf` does.
    write_half: bool,
}

impl Drop for MemStream {
    fn drop(&mut self) {
        if self.write_half {
            self.end.shutdown();
        }
    }
}

impl MemStream {
    /// Ends the connection with a reset instead of a FIN (as a zero linger does).
    pub fn reset(self) {
        self.end
            .reset
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads until the peer ends the connection: what arrived, and how it ended.
    pub async fn read_to_end(&mut self) -> (Vec<u8>, Ending) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.read(&mut buf).await {
                Ok(0) => return (got, Ending::Fin),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, Ending::Reset),
            }
        }
    }

    /// Bytes that have arrived so far, without waiting.
    pub fn received(&self) -> Vec<u8> {
        lock(&self.end.rx).bytes.iter().copied().collect()
    }
}

impl AsyncRead for MemStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.end.poll_read(cx, buf)
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.end.write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.end.shutdown();
        Poll::Ready(Ok(()))
    }
}

impl StreamHalf for MemStream {}

impl RelayStream for MemStream {
    type ReadHalf = MemStream;
    type WriteHalf = MemStream;

    fn into_split(self) -> (MemStream, MemStream) {
        let half = |write_half| MemStream {
            end: Arc::clone(&self.end),
            write_half,
        };
        (half(false), half(true))
    }

    async fn answered(&mut self) {
        std::future::poll_fn(|cx| self.end.poll_answered(cx)).await;
    }

    fn take_queued<'b>(half: &mut MemStream, buf: &'b mut [MaybeUninit<u8>]) -> &'b [u8] {
        let mut rx = lock(&half.end.rx);
        let n = rx.bytes.len().min(buf.len());
        for (slot, byte) in buf.iter_mut().zip(rx.bytes.drain(..n)) {
            slot.write(byte);
        }
        // SAFETY: the first `n` bytes were just written.
        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) }
    }

    fn close_with_reset(read: MemStream, mut write: MemStream) {
        write.write_half = false;
        write
            .end
            .reset
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop((read, write));
    }
}

/// An in-memory mask host: each dial hands the test the far end of a new connection, or fails
/// while the mask is down.
#[derive(Clone)]
pub struct MemMask {
    accepted: mpsc::UnboundedSender<MemStream>,
    down: bool,
}

impl MemMask {
    /// A mask that accepts every connection; the test receives their far ends.
    pub fn up() -> (MemMask, mpsc::UnboundedReceiver<MemStream>) {
        let (accepted, rx) = mpsc::unbounded_channel();
        (
            MemMask {
                accepted,
                down: false,
            },
            rx,
        )
    }

    /// A mask whose connections are refused.
    pub fn down() -> MemMask {
        let (accepted, _) = mpsc::unbounded_channel();
        MemMask {
            accepted,
            down: true,
        }
    }
}

impl MaskDialer for MemMask {
    type Stream = MemStream;

    fn name(&self) -> &str {
        "memory"
    }

    fn dial(
        &self,
        _timeout: Duration,
    ) -> impl Future<Output = io::Result<MemStream>> + Send + 'static {
        let result = if self.down {
            Err(io::ErrorKind::ConnectionRefused.into())
        } else {
            let (near, far) = pair();
            self.accepted
                .send(far)
                .map(|()| near)
                .map_err(|_| io::ErrorKind::ConnectionRefused.into())
        };
        std::future::ready(result)
    }
}
