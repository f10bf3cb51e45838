//! Relaying client connections: the client handshake (obfuscated2 or fake TLS), the DC leg,
//! the relay loop, and fronting for everything that fails.

pub mod accounts;
pub mod buffers;
pub mod context;
pub mod front;
pub mod handshake;
pub mod hints;
pub mod intake;
mod kernel;
pub mod mask_flight;
pub mod mask_target;
#[cfg(test)]
mod memory;
pub mod middle_leg;
pub mod pump;
pub mod splice;
pub mod stats;
pub mod stream;
pub mod transform;
pub mod upstream;

#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use tokio::io::AsyncWriteExt as _;

pub use self::context::RelayContext;
use self::{
    accounts::Account,
    handshake::{Accepted, Failure},
    intake::Intake,
    mask_target::MaskDialer,
    stats::{ConnState, FrontReason, HandshakeResult, Metered},
    stream::RelayStream,
    transform::{ToClient, ToUpstream},
};
use crate::{admission::capacity::Slot, admission::misuse::Offence, config::OnLimit};
use relay_proto::{
    Mode,
    tls::reader::{Sniff, sniff},
};

/// Serves one accepted client connection to its end. The caller runs it inside a `conn` span
/// carrying the (masked) peer at debug level; lines logged here at info and above name the
/// peer themselves. Generic over the client's stream and the mask dialer so the decisions
/// can be tested in memory; the daemon serves TCP.
pub async fn serve<C: RelayStream, M: MaskDialer>(
    mut client: C,
    peer: SocketAddr,
    mut slot: Slot,
    ctx: Arc<RelayContext<M>>,
) {
    ctx.misuse.report(peer.ip(), Offence::Connection).await;
    // TCP_NODELAY comes from the listener (see `listener::bind`).
    let mut active = ctx.stats.connection();
    let preamble = ctx.mask_preamble(peer, || client.local_addr());
    let mut intake = Intake::new(&ctx, Arc::clone(slot.ticket()), preamble);
    let mut answered = false;
    // While handshake slots are mostly taken, handshakes get a quarter of the deadline.
    let deadline = if slot.pressured() {
        (ctx.handshake_timeout / 4).max(ctx.mask_grace * 2)
    } else {
        ctx.handshake_timeout
    };
    let ticket = Arc::clone(slot.ticket());
    let outcome = tokio::select! {
        r = tokio::time::timeout(
            deadline,
            handshake::accept(&mut client, peer.ip(), &ctx, &mut intake, &mut answered),
        ) => r.unwrap_or(Err(Failure::Timeout)),
        // Only a handshake that has not sent a byte is evicted, so it has not been answered.
        () = ticket.evicted() => Err(Failure::Evicted),
    }
    .map_err(|failure| {
        if answered {
            Failure::BadAfterFlight
        } else {
            failure
        }
    });
    slot.handshake_done();
    match outcome {
        Ok(accepted) => {
            let account = &ctx.accounts[accepted.user];
            let mode = accepted.mode;
            match account.admit(
                peer.ip(),
                Instant::now(),
                SystemTime::now(),
                ctx.unique_ips_window,
            ) {
                Ok(admitted) => {
                    // Only a failure is fronted: the handshake bytes must not live as long as
                    // the relayed connection.
                    drop(intake);
                    ctx.stats.handshake(Some(mode), HandshakeResult::Ok);
                    active.enter(ConnState::Relayed(mode));
                    relay(client, peer, accepted, admitted.account(), &ctx).await;
                }
                Err(rejection) => {
                    ctx.stats.handshake(Some(mode), HandshakeResult::Rejected);
                    // A shared link can make this once per connection: rate-limited.
                    crate::info_limited!(
                        (10, 50),
                        peer = %crate::privacy::addr(peer),
                        user = account.name,
                        reason = rejection.name(),
                        "connection refused by user limit"
                    );
                    if ctx.on_limit == OnLimit::Front && !accepted.tls {
                        active.enter(ConnState::Fronted);
                        let bytes = intake.preamble_and_seen();
                        front::front(client, bytes, FrontReason::UserLimit, &ctx).await;
                    }
                }
            }
        }
        Err(failure) => {
            tracing::debug!(reason = failure.name(), "handshake failed");
            ctx.stats.failure(failure);
            // An obfuscated2 header no secret decrypts does not tell its mode.
            let mode = (sniff(&intake.seen) == Sniff::Tls).then_some(Mode::Tls);
            ctx.stats.handshake(mode, HandshakeResult::Failed);
            if let Some(offence) = failure.offence() {
                ctx.misuse.report(peer.ip(), offence).await;
            }
            if failure.frontable() {
                active.enter(ConnState::Fronted);
                let to_front = intake.into_front(&ctx).await;
                front::front_with(client, to_front, FrontReason::Failure(failure), &ctx).await;
            }
        }
    }
}

async fn relay<C: RelayStream, M>(
    client: C,
    peer: SocketAddr,
    accepted: Accepted,
    account: &Account,
    ctx: &RelayContext<M>,
) {
    if let Some(middle) = &ctx.middle {
        middle_leg::relay(client, peer, accepted, account, ctx, middle).await;
        return;
    }
    let user = account.name.as_str();
    let Accepted {
        handshake,
        tls,
        mut early_data,
        records,
        ..
    } = accepted;
    let fast = ctx.fast_mode.then_some(&handshake.encrypt_keys);
    let (mut dc_stream, leg) = match upstream::connect(ctx, handshake.tag, handshake.dc, fast).await
    {
        Ok(connected) => connected,
        Err(e) => {
            // A DC outage makes this once per connection: rate-limited.
            crate::info_limited!(
                (5, 20),
                peer = %crate::privacy::addr(peer),
                user,
                dc = handshake.dc,
                "DC connection failed: {e}"
            );
            return;
        }
    };
    tracing::debug!(user, dc = handshake.dc, "relaying");
    let mut to_upstream = ToUpstream::new(handshake.decrypt, leg.encrypt, records);
    // In fast mode the DC already encrypts with the client's keystream.
    let to_client = ToClient::new(
        (!ctx.fast_mode).then_some((leg.decrypt, handshake.encrypt)),
        tls,
    );
    let meter = Metered {
        account,
        stats: &ctx.stats,
    };
    to_upstream.crypt(&mut early_data);
    // The DC header and the client's first bytes in one write: one segment to the DC.
    let mut first = Vec::with_capacity(leg.wire.len() + early_data.len());
    first.extend_from_slice(&leg.wire);
    first.extend_from_slice(&early_data);
    if dc_stream.write_all(&first).await.is_err() {
        return;
    }
    drop(first);
    // What arrived with the header is client traffic too (for usage and quota).
    pump::Meter::client_bytes(&meter, early_data.len() as u64);
    // Freed now rather than when the (long) relay ends.
    drop(early_data);
    let (mut client_r, mut client_w) = client.into_split();
    let (mut dc_r, mut dc_w) = dc_stream.into_split();
    let (stats, error) = pump::relay(
        (&mut client_r, &mut client_w),
        (&mut dc_r, &mut dc_w),
        to_upstream,
        to_client,
        ctx.idle_timeout,
        &meter,
        ctx.offload(),
    )
    .await;
    C::close(client_r, client_w);
    <tokio::net::TcpStream as RelayStream>::close(dc_r, dc_w);
    tracing::debug!(
        user,
        from_client = stats.from_client,
        from_dc = stats.from_upstream,
        idle_timeout = stats.idle_timeout,
        error = error.as_ref().map(ToString::to_string),
        "relay ended"
    );
}
