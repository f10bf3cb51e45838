//! Fronting: a connection that failed its handshake is handed, bytes already read included, to
//! the real site behind `[tls] mask`, so a prober sees that site and nothing else: its answers,
//! and its ending (a FIN as a FIN, a reset as a reset).

use std::{io::ErrorKind, mem::MaybeUninit};

use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::{
    RelayContext,
    intake::ToFront,
    mask_target::MaskDialer,
    pump::{self, Passthrough, PumpError},
    stats::FrontReason,
    stream::RelayStream,
};

/// Forwards `client` (after the bytes in `seen`) to the mask host both ways, or closes it when
/// fronting is off or the mask host is unreachable.
pub async fn front<C: RelayStream, M: MaskDialer>(
    client: C,
    seen: Vec<u8>,
    reason: FrontReason,
    ctx: &RelayContext<M>,
) {
    let to_front = ToFront {
        mask: None,
        unsent: seen,
    };
    front_with(client, to_front, reason, ctx).await;
}

/// Like [`front`], on the mask connection `to_front` already holds if it has one (opened while
/// the client was quiet mid-handshake), sending it only the bytes it has not had.
pub async fn front_with<C: RelayStream, M: MaskDialer>(
    client: C,
    to_front: ToFront<M::Stream>,
    reason: FrontReason,
    ctx: &RelayContext<M>,
) {
    let ToFront { mask, unsent } = to_front;
    let upstream = match mask {
        Some(stream) => stream,
        None => match connect(ctx).await {
            Some(stream) => stream,
            None => return,
        },
    };
    ctx.stats.fronted(reason);
    let (mut up_r, mut up_w) = upstream.into_split();
    // The mask may have closed already (it answered a stalled handshake): what it sent is
    // still to be passed on, so a failed write here does not end the connection.
    if !unsent.is_empty() && up_w.write_all(&unsent).await.is_err() {
        tracing::debug!("mask closed before the client's last bytes");
    }
    // The handshake bytes are not kept for the (possibly long) fronted connection.
    let replayed = unsent.len() as u64;
    drop(unsent);
    let (mut client_r, mut client_w) = client.into_split();
    let (stats, error) = pump::relay(
        (&mut client_r, &mut client_w),
        (&mut up_r, &mut up_w),
        Passthrough,
        Passthrough,
        ctx.idle_timeout,
        &(),
        ctx.offload(),
    )
    .await;
    if let Some(PumpError::Io(e)) = &error {
        // An error ends the relay on whichever direction saw it first (a write into a socket
        // the mask reset, say); what the mask sent before it is still queued and is the
        // client's due.
        pass_on_queued::<M::Stream, _>(&mut up_r, &mut client_w).await;
        if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) {
            // The mask (or the client) reset: the client sees a reset too, not a FIN.
            C::close_with_reset(client_r, client_w);
            return log_fronted(reason, &stats, replayed);
        }
    }
    C::close(client_r, client_w);
    M::Stream::close(up_r, up_w);
    log_fronted(reason, &stats, replayed);
}

fn log_fronted(reason: FrontReason, stats: &pump::PumpStats, replayed: u64) {
    tracing::debug!(
        reason = reason.name(),
        to_mask = stats.from_client + replayed,
        from_mask = stats.from_upstream,
        "fronted"
    );
}

/// Copies to `to` whatever `from` has already received, without waiting for more.
async fn pass_on_queued<S: RelayStream, W: AsyncWrite + Unpin>(from: &mut S::ReadHalf, to: &mut W) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    for _ in 0..64 {
        let bytes = S::take_queued(from, &mut buf);
        if bytes.is_empty() {
            return;
        }
        if to.write_all(bytes).await.is_err() {
            return;
        }
    }
}

/// Connects to the mask host, or `None` (logged, rate-limited) when fronting is off or the host
/// cannot be reached in time.
async fn connect<M: MaskDialer>(ctx: &RelayContext<M>) -> Option<M::Stream> {
    let mask = ctx.mask.as_ref()?;
    match mask.dial(ctx.connect_timeout).await {
        Ok(s) => Some(s),
        // A probe flood while the mask host is down would make this once per connection.
        Err(e) => {
            crate::warn_limited!(
                (1, 10),
                mask = mask.name(),
                "fronting target unreachable: {e}"
            );
            None
        }
    }
}
