//! Fronting: a connection that failed its handshake is handed, bytes already read included, to
//! the real site behind `[tls] mask`, so a prober sees that site and nothing else.

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    RelayContext,
    handshake::Failure,
    pump::{self, Passthrough},
};

/// Forwards `client` (after the bytes in `seen`) to the mask host both ways, or closes it when
/// fronting is off or the mask host is unreachable.
pub async fn front(client: TcpStream, seen: Vec<u8>, failure: Failure, ctx: &RelayContext) {
    let Some(mask) = ctx.mask.as_deref() else {
        return;
    };
    let upstream = match tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(mask)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(mask, "fronting target unreachable: {e}");
            return;
        }
        Err(_) => {
            tracing::warn!(mask, "fronting target timed out");
            return;
        }
    };
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
        reason = failure.name(),
        to_mask = stats.from_client + seen.len() as u64,
        from_mask = stats.from_upstream,
        "fronted"
    );
}
