//! Fronting: a connection that failed its handshake is handed, bytes already read included, to
//! the real site behind `[tls] mask`, so a prober sees that site and nothing else.

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    RelayContext,
    pump::{self, Passthrough},
    stats::FrontReason,
};

/// Forwards `client` (after the bytes in `seen`) to the mask host both ways, or closes it when
/// fronting is off or the mask host is unreachable.
pub async fn front(client: TcpStream, seen: Vec<u8>, reason: FrontReason, ctx: &RelayContext) {
    let Some(mask) = ctx.mask.as_deref() else {
        return;
    };
    let upstream = match tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(mask)).await {
        Ok(Ok(s)) => s,
        // A probe flood while the mask host is down would make these once per connection.
        Ok(Err(e)) => {
            crate::warn_limited!((1, 10), mask, "fronting target unreachable: {e}");
            return;
        }
        Err(_) => {
            crate::warn_limited!((1, 10), mask, "fronting target timed out");
            return;
        }
    };
    ctx.stats.fronted(reason);
    let (up_r, mut up_w) = upstream.into_split();
    if up_w.write_all(&seen).await.is_err() {
        return;
    }
    let (client_r, client_w) = client.into_split();
    let (stats, _) = pump::relay(
        (client_r, client_w),
        (up_r, up_w),
        Passthrough,
        Passthrough,
        ctx.idle_timeout,
        &(),
    )
    .await;
    tracing::debug!(
        reason = reason.name(),
        to_mask = stats.from_client + seen.len() as u64,
        from_mask = stats.from_upstream,
        "fronted"
    );
}
