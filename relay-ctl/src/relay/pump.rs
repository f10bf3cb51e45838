//! The relay loop: both directions concurrently, each read transformed and written before the
//! next read (so back-pressure is TCP's own and nothing sits in a userspace buffer when a
//! reader goes quiet), half-close propagated, one idle timer for the pair.
//!
//! Read buffers come from [`super::buffers`] and go back whenever a read would block, so an
//! idle pair holds none; a direction whose reads fill the buffer moves to a bulk-sized one,
//! or, when its bytes pass through unchanged between two TCP sockets, to [`super::splice`].
//! Such a direction goes on to the kernel's sockmap program ([`super::kernel`]) when it is
//! loaded, once it has moved bulk and its source holds no unread segment: joining the maps
//! costs a dozen system calls and a psock, more than a short exchange moves.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Notify,
    time::Instant,
};

use super::{
    buffers::{PooledBuf, RELAY_BUF},
    kernel,
    splice::{self, BurstEnd},
    stats::{Path, RelayStats},
};
use crate::passage::Passage;

/// Turns bytes read from one peer into the bytes the other peer must get.
pub trait Transform: Send {
    /// Transforms `input` (which may be rewritten in place) and returns the bytes to write:
    /// either a part of `input` or of `scratch`. May return nothing (e.g. half a TLS record).
    fn transform<'a>(
        &mut self,
        input: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], TransformError>;

    /// Whether every byte passes through unchanged (then a bulk transfer between two TCP
    /// sockets is spliced in the kernel instead of read and written).
    fn passthrough(&self) -> bool {
        false
    }
}

/// One side of a relayed stream: a TCP socket's half, whose bytes the kernel can splice, or
/// another stream (tests' in-memory pipes) that is always read and written.
pub trait StreamHalf {
    /// The TCP socket this is a half of.
    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// A borrowed half, so the caller gets its socket back when the relay ends (to choose how it
/// closes).
impl<T: StreamHalf> StreamHalf for &mut T {
    fn socket(&self) -> Option<&TcpStream> {
        (**self).socket()
    }
}

impl StreamHalf for OwnedReadHalf {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl StreamHalf for OwnedWriteHalf {
    fn socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

/// A peer sent bytes that cannot be relayed (e.g. a TLS record of the wrong type).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

/// Observes the bytes of a relayed pair (per-user accounting) and can stop it.
pub trait Meter: Sync {
    /// `n` bytes were read from the client.
    fn client_bytes(&self, n: u64) {
        let _ = n;
    }
    /// `n` bytes were read from the upstream.
    fn upstream_bytes(&self, n: u64) {
        let _ = n;
    }
    /// Whether the pair must stop now (a quota is used up).
    fn exhausted(&self) -> bool {
        false
    }
    /// How many more bytes may be counted before [`Meter::exhausted`] says stop (`None`:
    /// no limit).
    fn budget(&self) -> Option<u64> {
        None
    }
}

/// How passthrough directions may move their bytes, and where their paths are counted.
#[derive(Clone, Copy, Default)]
pub struct Offload<'a> {
    /// The sockmap program, when loaded.
    pub passage: Option<&'a Passage>,
    /// Plain copies only: no sockmap, no splice.
    pub copy_only: bool,
    /// Where each passthrough direction's path is counted.
    pub stats: Option<&'a RelayStats>,
}

/// No accounting (fronting).
impl Meter for () {}

/// How a relayed pair ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpStats {
    /// Bytes read from the client.
    pub from_client: u64,
    /// Bytes read from the upstream.
    pub from_upstream: u64,
    /// Whether the idle timeout ended it.
    pub idle_timeout: bool,
}

/// Why a direction stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// Socket error on either side.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Undecodable bytes.
    #[error("protocol: {0}")]
    Protocol(#[from] TransformError),
    /// The meter said stop.
    #[error("quota exhausted")]
    Exhausted,
}

/// Relays between `client` and `upstream` until both directions end, one fails, or nothing
/// moves for `idle`.
pub async fn relay<CR, CW, UR, UW>(
    client: (CR, CW),
    upstream: (UR, UW),
    to_upstream: impl Transform,
    to_client: impl Transform,
    idle: Duration,
    meter: &dyn Meter,
    offload: Offload<'_>,
) -> (PumpStats, Option<PumpError>)
where
    CR: AsyncRead + StreamHalf + Unpin,
    CW: AsyncWrite + StreamHalf + Unpin,
    UR: AsyncRead + StreamHalf + Unpin,
    UW: AsyncWrite + StreamHalf + Unpin,
{
    let start = Instant::now();
    // Heap-held, as the relay future is held by every connection, idle or not.
    let shared = Arc::new(Shared::default());
    let (activity, quota_drawn, on_sockmap) =
        (&shared.activity, &shared.quota_drawn, &shared.on_sockmap);
    let up_counter = AtomicU64::new(0);
    let down_counter = AtomicU64::new(0);
    // Upload bytes draw on the quota the sockmap program enforces for the download: it is
    // told at once, not at its next poll, so a quota shared by both directions holds.
    let count_up = |n| {
        up_counter.fetch_add(n, Ordering::Relaxed);
        meter.client_bytes(n);
        if on_sockmap.load(Ordering::Relaxed) && meter.budget().is_some() {
            quota_drawn.notify_one();
        }
        !meter.exhausted()
    };
    let count_down = |n| {
        down_counter.fetch_add(n, Ordering::Relaxed);
        meter.upstream_bytes(n);
        !meter.exhausted()
    };
    let budget = || meter.budget();
    let clock = Clock {
        shared: &shared,
        start,
        idle,
    };
    // Only the direction toward the client goes through the sockmap program (fronting's
    // other direction splices): with both directions of one pair in it, the kernel reordered
    // and held back segments under load.
    let up_offload = Offload {
        passage: None,
        ..offload
    };
    let up = one_way(
        client.0,
        upstream.1,
        to_upstream,
        &clock,
        &count_up,
        &budget,
        &up_offload,
    );
    let down = one_way(
        upstream.0,
        client.1,
        to_client,
        &clock,
        &count_down,
        &budget,
        &offload,
    );
    let watchdog = idle_watchdog(activity, start, idle);
    tokio::pin!(up, down, watchdog);

    let (mut up_done, mut down_done) = (false, false);
    let mut error = None;
    let mut idle_timeout = false;
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                if let Err(e) = r { error = Some(e); break; }
            }
            r = &mut down, if !down_done => {
                down_done = true;
                if let Err(e) = r { error = Some(e); break; }
            }
            () = &mut watchdog => { idle_timeout = true; break; }
        }
    }
    let stats = PumpStats {
        from_client: up_counter.load(Ordering::Relaxed),
        from_upstream: down_counter.load(Ordering::Relaxed),
        idle_timeout,
    };
    (stats, error)
}

/// What both directions of a pair share.
#[derive(Default)]
pub(super) struct Shared {
    /// Milliseconds since the pair's start at the last byte moved.
    pub activity: AtomicU64,
    /// Whether one direction has reached EOF (see [`end`]).
    pub one_ended: AtomicBool,
    /// Told when the upload counted bytes against a quota, while the download is on the
    /// sockmap path (`on_sockmap`): only then does a kernel budget need renewing, and the
    /// upload's reads skip the quota lookup otherwise.
    pub quota_drawn: Notify,
    /// Whether the download is on the sockmap path now.
    pub on_sockmap: AtomicBool,
}

/// The pair's clock: what it shares, its start and its idle timeout.
#[derive(Clone, Copy)]
pub(super) struct Clock<'a> {
    pub shared: &'a Shared,
    pub start: Instant,
    /// The pair's idle timeout.
    pub idle: Duration,
}

impl Clock<'_> {
    /// Bytes moved now.
    pub fn touch(&self) {
        self.shared
            .activity
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Copies one direction until EOF, then half-closes the writer unless the other direction has
/// ended already (see [`end`]).
#[allow(clippy::too_many_arguments)]
async fn one_way<R, W>(
    mut reader: R,
    mut writer: W,
    mut transform: impl Transform,
    clock: &Clock<'_>,
    count: &(dyn Fn(u64) -> bool + Sync),
    budget: &(dyn Fn() -> Option<u64> + Sync),
    offload: &Offload<'_>,
) -> Result<(), PumpError>
where
    R: AsyncRead + StreamHalf + Unpin,
    W: AsyncWrite + StreamHalf + Unpin,
{
    let (activity, start) = (&clock.shared.activity, clock.start);
    let on_sockets =
        transform.passthrough() && reader.socket().is_some() && writer.socket().is_some();
    let mut splicing = on_sockets && !offload.copy_only;
    // The sockmap program takes the direction over once it has moved bulk ([`JOIN_AFTER`]
    // bytes, or a read that filled its buffer), as soon as its source's receive queue has
    // been emptied (see [`Join`]).
    let mut join = if offload.passage.is_some() && splicing {
        Join::After(JOIN_AFTER)
    } else {
        Join::Never
    };
    let first = if splicing { Path::Splice } else { Path::Copy };
    let mut path = transform
        .passthrough()
        .then(|| offload.stats.map(|s| s.path(first)))
        .flatten();
    // The buffer of the last read, kept for the next read attempt: on a busy pair the next
    // read usually succeeds at once, and only a read that would block returns it to the pool.
    let mut held = None;
    let mut bulk = false;
    loop {
        if join == Join::Now
            && let Some(passage) = offload.passage
        {
            join = Join::Never;
            // Refused (logged): the direction stays on splice.
            if let Some(flow) = open_flow(passage, &reader, &writer, budget) {
                drop(held);
                if let Some(path) = &mut path {
                    path.switch(Path::Sockmap);
                }
                // Boxed: only sockmap directions carry its state.
                return Box::pin(kernel::relay(
                    &mut reader,
                    &mut writer,
                    flow,
                    *clock,
                    count,
                    budget,
                ))
                .await;
            }
        }
        if bulk
            && splicing
            && let (Some(from), Some(to)) = (reader.socket(), writer.socket())
        {
            held = None;
            // Boxed: its state exists only while a burst runs, not in every idle connection.
            match Box::pin(splice_burst(from, to, activity, start, count)).await? {
                BurstEnd::Quiet => {
                    bulk = false;
                    // The burst emptied the receive queue.
                    if join == Join::WhenDrained {
                        join = Join::Now;
                    }
                }
                BurstEnd::Eof => {
                    end(&mut writer, &clock.shared.one_ended).await?;
                    return Ok(());
                }
                BurstEnd::Stopped => return Err(PumpError::Exhausted),
                // Out of descriptors: this direction copies from now on.
                BurstEnd::NoPipe => splicing = false,
            }
            continue;
        }
        let (mut buf, n) = read_pooled(&mut reader, &mut held, bulk).await?;
        if n == 0 {
            drop(buf);
            // Propagate the half-close; the other direction carries on.
            end(&mut writer, &clock.shared.one_ended).await?;
            return Ok(());
        }
        if !count(n as u64) {
            return Err(PumpError::Exhausted);
        }
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let mut scratch = PooledBuf::scratch();
        let out = transform.transform(&mut buf[..n], scratch.vec_mut())?;
        if !out.is_empty() {
            writer.write_all(out).await?;
            // Unbuffered sockets make this a no-op, but a buffered writer must never keep the
            // tail of a stream while its reader waits.
            writer.flush().await?;
        }
        drop(scratch);
        bulk = wants_bulk(n, buf.len());
        join = match join {
            Join::After(left) if !bulk && left > n as u32 => Join::After(left - n as u32),
            // A read that did not fill its buffer emptied the receive queue: whatever has
            // arrived since is whole segments, which the program forwards as they are.
            Join::After(_) | Join::WhenDrained if !bulk => Join::Now,
            Join::After(_) => Join::WhenDrained,
            other => other,
        };
        // A buffer of the wrong size goes back to the pool; the next read takes the right one.
        if buf.is_bulk() == bulk {
            held = Some(buf);
        }
    }
}

/// Bytes a passthrough direction moves before it joins the sockmap program's maps: joining
/// (and leaving) costs about as much as copying this much, and short exchanges, a request
/// and its answer, stay under it.
const JOIN_AFTER: u32 = 64 * 1024;

/// When a direction joins the sockmap program's maps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Join {
    /// Never: no program, not a passthrough direction between sockets, or it was refused.
    Never,
    /// Once it has moved this many more bytes, or a read fills its buffer.
    After(u32),
    /// Once a read that does not fill its buffer, or a splice burst going quiet, has emptied
    /// its source's receive queue (a read that fills its buffer may stop inside a segment,
    /// which the program would forward whole again).
    WhenDrained,
    /// Now: its source holds no segment read in part.
    Now,
}

/// A direction's reader reached EOF: propagates the half-close while the other direction
/// carries on, and leaves the last FIN to the close that follows (both receive queues are
/// drained then, so the close sends a FIN, not a reset).
pub(super) async fn end<W: AsyncWrite + Unpin>(
    writer: &mut W,
    one_ended: &AtomicBool,
) -> Result<(), PumpError> {
    if !one_ended.swap(true, Ordering::AcqRel) {
        writer.shutdown().await?;
    }
    Ok(())
}

/// Puts the direction's sockets in the sockmap program's maps, or `None` (logged) when the
/// kernel refuses.
fn open_flow<'p, R: StreamHalf, W: StreamHalf>(
    passage: &'p Passage,
    reader: &R,
    writer: &W,
    budget: &(dyn Fn() -> Option<u64> + Sync),
) -> Option<crate::passage::Flow<'p>> {
    let (from, to) = (reader.socket()?, writer.socket()?);
    match passage.open(from, to, kernel::budget(0, budget())) {
        Ok(flow) => Some(flow),
        // Only established sockets go in a sockmap: a peer that already sent its FIN.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            tracing::debug!("not a sockmap direction: {e}");
            None
        }
        Err(e) => {
            crate::warn_limited!((1, 60), "sockmap refused a connection, splicing it: {e}");
            None
        }
    }
}

/// One [`splice::burst`], keeping the idle timer and the meter up to date.
async fn splice_burst(
    from: &TcpStream,
    to: &TcpStream,
    activity: &AtomicU64,
    start: Instant,
    count: &(dyn Fn(u64) -> bool + Sync),
) -> std::io::Result<BurstEnd> {
    let mut count_chunk = |n: usize| {
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        count(n as u64)
    };
    splice::burst(from, to, &mut count_chunk).await
}

/// Whether the next read should use a bulk buffer, after one that returned `n` bytes into a
/// buffer of `len`: yes when it filled the buffer (more is queued), no once a read returns
/// less than a small buffer holds.
fn wants_bulk(n: usize, len: usize) -> bool {
    n == len || (len > RELAY_BUF && n >= RELAY_BUF)
}

/// Reads once into a pooled buffer (`held`, or a fresh one from the pool, bulk-sized if `bulk`
/// and the process has bulk buffers to spare). While the read is
/// pending the buffer is back in the pool: a quiet reader costs no buffer memory. Returns the
/// buffer and how many bytes it holds (0 at EOF).
pub(super) async fn read_pooled<R>(
    reader: &mut R,
    held: &mut Option<PooledBuf>,
    bulk: bool,
) -> std::io::Result<(PooledBuf, usize)>
where
    R: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        let mut buf = held.take().unwrap_or_else(|| {
            if bulk {
                PooledBuf::bulk()
            } else {
                PooledBuf::read()
            }
        });
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut *reader).poll_read(cx, &mut read) {
            // `Pending` means nothing was read into the buffer (AsyncRead's contract), so it
            // can go back to the pool; the waker brings us back here for a new one.
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                Poll::Ready(Ok((buf, n)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    })
    .await
}

/// Completes once `activity` (milliseconds since `start`) is `idle` old.
pub(super) async fn idle_watchdog(activity: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        let quiet = start.elapsed().saturating_sub(last);
        if quiet >= idle {
            return;
        }
        tokio::time::sleep(idle - quiet).await;
    }
}

/// The identity transform (fronting, and fast mode's DC→client direction in `dd`).
pub struct Passthrough;

impl Transform for Passthrough {
    fn transform<'a>(
        &mut self,
        input: &'a mut [u8],
        _scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], TransformError> {
        Ok(input)
    }

    fn passthrough(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, DuplexStream, ReadHalf, WriteHalf};

    impl StreamHalf for ReadHalf<DuplexStream> {}
    impl StreamHalf for WriteHalf<DuplexStream> {}

    /// A relay task between two in-memory pipes of `capacity` bytes, `Xor(1)` toward the
    /// upstream and `Xor(2)` back; returns the client's end, the upstream's end and the task.
    fn spawn_xor_relay(
        capacity: usize,
    ) -> (
        DuplexStream,
        DuplexStream,
        tokio::task::JoinHandle<(PumpStats, Option<PumpError>)>,
    ) {
        let (client, client_far) = tokio::io::duplex(capacity);
        let (upstream, upstream_far) = tokio::io::duplex(capacity);
        let relay = tokio::spawn(async move {
            relay(
                tokio::io::split(client_far),
                tokio::io::split(upstream_far),
                Xor(1),
                Xor(2),
                Duration::from_secs(5),
                &(),
                Offload::default(),
            )
            .await
        });
        (client, upstream, relay)
    }

    struct Xor(u8);
    impl Transform for Xor {
        fn transform<'a>(
            &mut self,
            input: &'a mut [u8],
            _scratch: &'a mut Vec<u8>,
        ) -> Result<&'a [u8], TransformError> {
            input.iter_mut().for_each(|b| *b ^= self.0);
            Ok(input)
        }
    }

    #[tokio::test]
    async fn both_directions_with_half_close() {
        let (client, client_far) = tokio::io::duplex(1024);
        let (upstream, upstream_far) = tokio::io::duplex(1024);
        let (cr, cw) = tokio::io::split(client_far);
        let (ur, uw) = tokio::io::split(upstream_far);
        let relay = tokio::spawn(relay(
            (cr, cw),
            (ur, uw),
            Xor(1),
            Xor(2),
            Duration::from_secs(5),
            &(),
            Offload::default(),
        ));

        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        let payload = vec![7u8; 100_000];
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client_w.write_all(&sent).await.expect("write");
            client_w.shutdown().await.expect("half-close");
        });
        let mut got = Vec::new();
        up_r.read_to_end(&mut got)
            .await
            .expect("upstream reads to EOF");
        assert_eq!(got.len(), payload.len());
        assert!(got.iter().all(|&b| b == 7 ^ 1));
        writer.await.expect("writer");
        // The other direction still works after the half-close.
        up_w.write_all(b"late reply").await.expect("reply");
        up_w.shutdown().await.expect("close");
        let mut reply = Vec::new();
        client_r
            .read_to_end(&mut reply)
            .await
            .expect("client reads");
        assert_eq!(
            reply,
            b"late reply".iter().map(|b| b ^ 2).collect::<Vec<_>>()
        );
        let (stats, err) = relay.await.expect("relay");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(stats.from_client, 100_000);
        assert_eq!(stats.from_upstream, 10);
    }

    #[tokio::test]
    async fn idle_pair_holds_no_buffer() {
        // A current-thread runtime: the relay's task shares this thread's pool.
        use crate::relay::buffers::on_loan;
        assert_eq!(on_loan(), 0);
        let (client, upstream, relay) = spawn_xor_relay(1 << 16);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        client_w.write_all(&[1; 5000]).await.expect("write");
        let mut got = [0u8; 5000];
        up_r.read_exact(&mut got).await.expect("relayed");
        up_w.write_all(&[2; 3000]).await.expect("reply");
        let mut reply = [0u8; 3000];
        client_r.read_exact(&mut reply).await.expect("relayed back");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Both directions are waiting to read: every buffer is back in the pool.
        assert_eq!(on_loan(), 0);
        drop((client_w, up_w));
        let (_, err) = relay.await.expect("relay");
        assert!(err.is_none(), "{err:?}");
    }

    #[test]
    fn a_direction_goes_bulk_while_reads_fill_the_buffer() {
        use crate::relay::buffers::BULK_BUF;
        assert!(!wants_bulk(100, RELAY_BUF));
        assert!(!wants_bulk(RELAY_BUF - 1, RELAY_BUF));
        assert!(wants_bulk(RELAY_BUF, RELAY_BUF));
        assert!(wants_bulk(BULK_BUF, BULK_BUF));
        assert!(wants_bulk(RELAY_BUF, BULK_BUF), "still a bulk-sized read");
        assert!(
            !wants_bulk(RELAY_BUF - 1, BULK_BUF),
            "a short read ends bulk"
        );
    }

    #[tokio::test]
    async fn a_bulk_transfer_then_silence_holds_no_buffer() {
        use crate::relay::buffers::{BULK_BUF, bulk_pooled, on_loan};
        let (client, upstream, relay) = spawn_xor_relay(4 * BULK_BUF);
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut up_r, mut up_w) = tokio::io::split(upstream);
        // Several buffers' worth queued at once: the reads fill buffers and go bulk.
        let payload: Vec<u8> = (0..3 * BULK_BUF).map(|i| (i % 251) as u8).collect();
        client_w.write_all(&payload).await.expect("write");
        let mut got = vec![0u8; payload.len()];
        up_r.read_exact(&mut got).await.expect("relayed");
        assert!(got.iter().zip(&payload).all(|(g, p)| *g == p ^ 1));
        up_w.write_all(&[9; 10]).await.expect("reply");
        let mut reply = [0u8; 10];
        client_r.read_exact(&mut reply).await.expect("relayed back");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(on_loan(), 0, "a quiet pair gives bulk buffers back too");
        assert!(bulk_pooled() >= 1, "the transfer read into a bulk buffer");
        drop((client_w, up_w));
        let (stats, err) = relay.await.expect("relay");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(stats.from_client, payload.len() as u64);
    }

    #[tokio::test]
    async fn a_passthrough_between_sockets_keeps_order_across_copy_and_splice() {
        use crate::relay::splice::tests::pair;
        let (mut client, client_far) = pair().await;
        let (mut upstream, upstream_far) = pair().await;
        let relay = tokio::spawn(async move {
            relay(
                client_far.into_split(),
                upstream_far.into_split(),
                Passthrough,
                Passthrough,
                Duration::from_secs(5),
                &(),
                Offload::default(),
            )
            .await
        });
        // Small writes with pauses (copied), then a bulk burst (spliced), then small again.
        let mut payload = Vec::new();
        for round in 0..3u8 {
            let chunk: Vec<u8> = if round == 1 {
                (0..4_000_000u32).map(|i| (i % 241) as u8).collect()
            } else {
                vec![round; 1000]
            };
            upstream.write_all(&chunk).await.expect("upstream writes");
            let mut got = vec![0u8; chunk.len()];
            client.read_exact(&mut got).await.expect("client reads");
            assert!(got == chunk, "round {round} arrives unchanged");
            payload.extend_from_slice(&chunk);
        }
        assert!(
            splice::BURSTS.with(std::cell::Cell::get) > 0,
            "the bulk round was spliced"
        );
        upstream.shutdown().await.expect("fin");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("eof reaches the client");
        assert!(rest.is_empty());
        drop((client, upstream));
        let (stats, err) = relay.await.expect("relay");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(stats.from_upstream, payload.len() as u64);
    }

    #[tokio::test]
    async fn the_relay_future_is_small() {
        let (a, _a) = tokio::io::duplex(64);
        let (b, _b) = tokio::io::duplex(64);
        let fut = relay(
            tokio::io::split(a),
            tokio::io::split(b),
            Passthrough,
            Passthrough,
            Duration::from_secs(1),
            &(),
            Offload::default(),
        );
        // Every connection holds one for its whole life, idle or not (see the memory
        // benchmark); bulk buffers, splicing and the sockmap loop keep their state boxed,
        // but each direction carries its path and when it joins the sockmap.
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1360, "the relay future grew to {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_pair_times_out() {
        let (_client, client_far) = tokio::io::duplex(64);
        let (_upstream, upstream_far) = tokio::io::duplex(64);
        let (cr, cw) = tokio::io::split(client_far);
        let (ur, uw) = tokio::io::split(upstream_far);
        let (stats, err) = relay(
            (cr, cw),
            (ur, uw),
            Passthrough,
            Passthrough,
            Duration::from_secs(30),
            &(),
            Offload::default(),
        )
        .await;
        assert!(stats.idle_timeout);
        assert!(err.is_none());
    }
}
