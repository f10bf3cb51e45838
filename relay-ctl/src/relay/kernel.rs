//! A passthrough direction moved by the kernel's sockmap program ([`crate::passage`]): the
//! program redirects each segment the source receives into the target, and this loop, which
//! sees none of those bytes, keeps the relay's duties:
//!
//! - accounting: it reads the flow's counter every poll and tells the meter (and the idle
//!   timer) what moved; the program itself stops at the byte budget the meter allows, so a
//!   quota ends the flow within one segment, as it does when userspace reads;
//! - the rest: whatever the program passes back (past the budget, or while userspace holds
//!   older bytes) is read here and written after every redirected byte;
//! - half-close: at the source's FIN it waits until every redirected byte is in the target's
//!   send queue (the program's redirects are queued for a kernel worker, and taking a socket
//!   out of the maps drops that queue), then sends FIN.

use std::{os::fd::AsFd as _, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::pump::{Clock, PumpError, StreamHalf, read_pooled};
use crate::passage::Flow;

/// Longest wait between two reads of a moving flow's counter.
const POLL_MAX: Duration = Duration::from_millis(250);
/// Longest wait between two reads of a quiet flow's counter: each read that finds nothing
/// moved doubles the wait up to an eighth of the idle timeout and at most this, so idle
/// connections cost few wake-ups.
const QUIET_POLL_MAX: Duration = Duration::from_secs(30);
/// How long a flow stopped by its quota may take to pass on what was redirected before.
const DRAIN_ON_STOP: Duration = Duration::from_secs(2);

/// The program's byte budget for a flow that has redirected `redirected` bytes, when the
/// meter allows `left` more (`None`: no limit).
pub(super) fn budget(redirected: u64, left: Option<u64>) -> u64 {
    left.map_or(u64::MAX, |left| redirected.saturating_add(left))
}

/// Relays one direction through `flow` until the source's EOF (then half-closes the target),
/// an error, or the meter says stop.
pub(super) async fn relay<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut flow: Flow<'_>,
    clock: Clock<'_>,
    count: &(dyn Fn(u64) -> bool + Sync),
    left: &(dyn Fn() -> Option<u64> + Sync),
) -> Result<(), PumpError>
where
    R: AsyncRead + StreamHalf + Unpin,
    W: AsyncWrite + StreamHalf + Unpin,
{
    let mut synced = 0;
    let on_sockmap = &clock.shared.on_sockmap;
    on_sockmap.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = run(reader, writer, &mut flow, &mut synced, clock, count, left).await;
    on_sockmap.store(false, std::sync::atomic::Ordering::Relaxed);
    // Whatever moved since the last poll is the user's traffic too.
    let _ = sync(&mut flow, &mut synced, clock, count, left);
    if matches!(result, Err(PumpError::Exhausted)) {
        // What went before the budget is the client's due, as with copies.
        let _ = tokio::time::timeout(DRAIN_ON_STOP, drain(&flow, writer)).await;
    }
    result
}

async fn run<R, W>(
    reader: &mut R,
    writer: &mut W,
    flow: &mut Flow<'_>,
    synced: &mut u64,
    clock: Clock<'_>,
    count: &(dyn Fn(u64) -> bool + Sync),
    left: &(dyn Fn() -> Option<u64> + Sync),
) -> Result<(), PumpError>
where
    R: AsyncRead + StreamHalf + Unpin,
    W: AsyncWrite + StreamHalf + Unpin,
{
    let busy = (clock.idle / 8).clamp(Duration::from_millis(10), POLL_MAX);
    let quiet = (clock.idle / 8).clamp(busy, QUIET_POLL_MAX);
    let mut period = busy;
    let poll = tokio::time::sleep(period);
    tokio::pin!(poll);
    let mut held = None;
    loop {
        tokio::select! {
            read = read_pooled(reader, &mut held, false) => {
                let (buf, n) = read?;
                // Redirected bytes came before these: they are counted first.
                sync(flow, synced, clock, count, left)?;
                if n == 0 {
                    drain(flow, writer).await?;
                    return super::pump::end(writer, &clock.shared.one_ended).await;
                }
                if !count(n as u64) {
                    flow.settle(n as u64, 0)?;
                    return Err(PumpError::Exhausted);
                }
                clock.touch();
                drain(flow, writer).await?;
                writer.write_all(&buf[..n]).await?;
                flow.settle(n as u64, n as u64)?;
                flow.set_budget(budget(*synced, left()))?;
            }
            () = clock.shared.quota_drawn.notified() => {
                sync(flow, synced, clock, count, left)?;
            }
            () = &mut poll => {
                let moved = sync(flow, synced, clock, count, left)?;
                period = if moved > 0 { busy } else { (period * 2).min(quiet) };
                poll.as_mut().reset(next_poll(clock, period, busy));
            }
        }
    }
}

/// When to read the counter next: after `period`, but no later than `busy` before the idle
/// timer would fire, so bytes the kernel moved late in a quiet stretch still keep the pair.
fn next_poll(clock: Clock<'_>, period: Duration, busy: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let last = Duration::from_millis(
        clock
            .shared
            .activity
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let before_idle = (clock.start + last + clock.idle)
        .checked_sub(busy)
        .unwrap_or(now);
    (now + period).min(before_idle.max(now + busy.min(period)))
}

/// Counts what the program redirected since the last call and renews its budget; returns
/// how many bytes that was.
fn sync(
    flow: &mut Flow<'_>,
    synced: &mut u64,
    clock: Clock<'_>,
    count: &(dyn Fn(u64) -> bool + Sync),
    left: &(dyn Fn() -> Option<u64> + Sync),
) -> Result<u64, PumpError> {
    let redirected = flow.counts()?.redirected;
    let moved = redirected.saturating_sub(*synced);
    if moved > 0 {
        #[cfg(test)]
        tests::MOVED.fetch_add(moved, std::sync::atomic::Ordering::Relaxed);
        *synced = redirected;
        clock.touch();
        if !count(moved) {
            return Err(PumpError::Exhausted);
        }
    }
    flow.set_budget(budget(redirected, left()))?;
    Ok(moved)
}

/// Waits until every byte redirected so far is in the target's send queue.
async fn drain<W: StreamHalf>(flow: &Flow<'_>, writer: &W) -> std::io::Result<()> {
    let Some(to) = writer.socket() else {
        return Ok(());
    };
    let mut pause = Duration::from_micros(200);
    while !flow.drained(to.as_fd())? {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::{Arc, atomic::AtomicU64};

    use tokio::io::AsyncReadExt as _;

    use super::*;
    use crate::{
        passage::Passage,
        relay::{
            pump::{Offload, Passthrough, PumpStats, relay},
            splice::tests::pair,
            stats::RelayStats,
        },
    };

    /// Bytes the program redirected, over every flow of this test process.
    pub(in crate::relay) static MOVED: AtomicU64 = AtomicU64::new(0);

    /// The program, or `None` (with a visible skip line) without root; `CI=true` fails.
    fn passage(test: &str) -> Option<Arc<Passage>> {
        match Passage::load() {
            Ok(p) => Some(Arc::new(p)),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("{test}: the sockmap program must load under CI=true: {e}")
            }
            Err(e) => {
                eprintln!("SKIP {test}: needs root with CAP_BPF/CAP_NET_ADMIN ({e})");
                None
            }
        }
    }

    /// A relay task between two socket pairs, passthrough both ways, with the program: the
    /// client's end, the upstream's end and the task.
    async fn relayed(
        passage: &Arc<Passage>,
        stats: &Arc<RelayStats>,
    ) -> (
        tokio::net::TcpStream,
        tokio::net::TcpStream,
        tokio::task::JoinHandle<(PumpStats, Option<PumpError>)>,
    ) {
        let (client, client_far) = pair().await;
        let (upstream, upstream_far) = pair().await;
        let (p, s) = (passage.clone(), stats.clone());
        let task = tokio::spawn(async move {
            relay(
                client_far.into_split(),
                upstream_far.into_split(),
                Passthrough,
                Passthrough,
                Duration::from_secs(30),
                &(),
                Offload {
                    passage: Some(&p),
                    copy_only: false,
                    stats: Some(&s),
                },
            )
            .await
        });
        (client, upstream, task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_flow_is_polled_rarely_but_before_the_idle_timer() {
        let shared = crate::relay::pump::Shared::default();
        let clock = Clock {
            shared: &shared,
            start: tokio::time::Instant::now(),
            idle: Duration::from_secs(80),
        };
        let busy = Duration::from_millis(250);
        let quiet = Duration::from_secs(10);
        let start = clock.start;
        assert_eq!(next_poll(clock, quiet, busy), start + quiet);
        // 75 s quiet: the next poll comes just before the 80 s idle deadline, not at 85 s.
        tokio::time::advance(Duration::from_secs(75)).await;
        assert_eq!(
            next_poll(clock, quiet, busy),
            start + Duration::from_secs(80) - busy
        );
        // Past it: every `busy` until the watchdog ends the pair.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            next_poll(clock, quiet, busy),
            start + Duration::from_secs(80) + busy
        );
        // Bytes moved at 79 s: the deadline moves with them.
        shared
            .activity
            .store(79_000, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            next_poll(clock, quiet, busy),
            start + Duration::from_secs(90)
        );
    }

    #[tokio::test]
    async fn the_download_moves_in_the_kernel_in_order_with_half_close() {
        let Some(passage) = passage("the_download_moves_in_the_kernel") else {
            return;
        };
        let stats = Arc::new(RelayStats::default());
        let (mut client, mut upstream, relay) = relayed(&passage, &stats).await;
        // The upstream → client direction splices its first bulk and joins the maps when it
        // goes quiet; the other direction splices.
        let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let (first, rest) = payload.split_at(1 << 20);
        let (mut up_r, mut up_w) = upstream.split();
        up_w.write_all(first).await.expect("upstream writes");
        let mut got = vec![0u8; first.len()];
        client.read_exact(&mut got).await.expect("the first part");
        for _ in 0..1000 {
            if passage.entries().sources == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(passage.entries().sources, 1, "the download joined");
        let write = async {
            up_w.write_all(rest).await.expect("upstream writes");
            up_w.shutdown().await.expect("fin");
        };
        let read = client.read_to_end(&mut got);
        let ((), read) = tokio::join!(write, read);
        read.expect("client reads to EOF");
        assert!(got == payload, "bytes arrive unchanged, then the FIN");
        // The other way still works after the half-close.
        client.write_all(b"late reply").await.expect("reply");
        client.shutdown().await.expect("client fin");
        let mut reply = Vec::new();
        up_r.read_to_end(&mut reply).await.expect("upstream reads");
        assert_eq!(reply, b"late reply");
        let (pump, err) = relay.await.expect("relay");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(pump.from_upstream, payload.len() as u64);
        assert_eq!(pump.from_client, 10);
        assert_eq!(passage.entries(), Default::default(), "no entries left");
        let moved = MOVED.load(std::sync::atomic::Ordering::Relaxed);
        assert!(moved >= rest.len() as u64, "the kernel moved {moved} bytes");
        let mut samples = crate::telemetry::Samples::default();
        stats.export(&mut samples);
        let total = crate::telemetry::Metric::PassthroughTotal;
        // The download started on splice, then moved on; the upload spliced.
        assert_eq!(samples.get(total, &["sockmap"]), 1);
        assert_eq!(samples.get(total, &["splice"]), 2);
    }

    /// A short exchange (a request, an answer, a close) never joins the maps: joining costs
    /// more system calls than such a connection makes in all.
    #[tokio::test]
    async fn a_short_exchange_stays_out_of_the_maps() {
        let Some(passage) = passage("a_short_exchange_stays_out_of_the_maps") else {
            return;
        };
        let stats = Arc::new(RelayStats::default());
        let (mut client, mut upstream, relay) = relayed(&passage, &stats).await;
        client.write_all(&[1; 128]).await.expect("request");
        let mut request = [0u8; 128];
        upstream.read_exact(&mut request).await.expect("request");
        upstream.write_all(&[2; 4096]).await.expect("answer");
        let mut answer = [0u8; 4096];
        client.read_exact(&mut answer).await.expect("answer");
        assert_eq!(answer, [2; 4096]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(passage.entries(), Default::default(), "nothing joined");
        client.shutdown().await.expect("client fin");
        upstream.shutdown().await.expect("upstream fin");
        let (pump, err) = relay.await.expect("relay");
        assert!(err.is_none(), "{err:?}");
        assert_eq!((pump.from_client, pump.from_upstream), (128, 4096));
        let mut samples = crate::telemetry::Samples::default();
        stats.export(&mut samples);
        let total = crate::telemetry::Metric::PassthroughTotal;
        assert_eq!(samples.get(total, &["sockmap"]), 0);
        assert_eq!(samples.get(total, &["splice"]), 2);
    }
}
