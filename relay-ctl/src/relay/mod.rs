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
    Box::pin(ctx.misuse.report(peer.ip(), Offence::Connection)).await;
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
    // Boxed, as are the fronting paths: the connection's future holds for its whole life
    // the largest state of any of its steps, and an idle relayed connection needs none of
    // theirs.
    let outcome = Box::pin(async {
        tokio::select! {
            r = tokio::time::timeout(
                deadline,
                handshake::accept(&mut client, peer.ip(), &ctx, &mut intake, &mut answered),
            ) => r.unwrap_or(Err(Failure::Timeout)).map(Box::new),
            // Only a handshake that has not sent a byte is evicted, so it has not been
            // answered.
            () = ticket.evicted() => Err(Failure::Evicted),
        }
    })
    .await
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
                        Box::pin(front::front(client, bytes, FrontReason::UserLimit, &ctx)).await;
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
                Box::pin(ctx.misuse.report(peer.ip(), offence)).await;
            }
            if failure.frontable() {
                active.enter(ConnState::Fronted);
                let to_front = Box::pin(intake.into_front(&ctx)).await;
                let reason = FrontReason::Failure(failure);
                Box::pin(front::front_with(client, to_front, reason, &ctx)).await;
            }
        }
    }
}

/// Relays an accepted client. Each mode's state lives in its own box, sized for that mode;
/// the connection's future holds only the pointer.
async fn relay<C: RelayStream, M>(
    client: C,
    peer: SocketAddr,
    accepted: Box<Accepted>,
    account: &Account,
    ctx: &RelayContext<M>,
) {
    if let Some(middle) = &ctx.middle {
        Box::pin(middle_leg::relay(
            client, peer, accepted, account, ctx, middle,
        ))
        .await;
        return;
    }
    let user = account.name.as_str();
    // The dial and the first write in a box of their own, freed once the pair is up: an idle
    // relayed connection keeps only what `Direct` holds.
    let Some(pair) = Box::pin(open_direct(client, peer, accepted, user, ctx)).await else {
        return;
    };
    Box::pin(pair.run(account, ctx)).await;
}

/// A client and its DC connection, ready to relay.
struct Direct<C: RelayStream> {
    client: C,
    dc: tokio::net::TcpStream,
    to_upstream: ToUpstream,
    to_client: ToClient,
    /// Client bytes that came with the handshake (already sent on).
    early: u64,
}

/// Dials the DC and sends it the leg's header with the client's first bytes; `None` (logged)
/// when the DC cannot be reached.
async fn open_direct<C: RelayStream, M>(
    client: C,
    peer: SocketAddr,
    accepted: Box<Accepted>,
    user: &str,
    ctx: &RelayContext<M>,
) -> Option<Direct<C>> {
    let Accepted {
        handshake,
        tls,
        mut early_data,
        records,
        ..
    } = *accepted;
    let fast = ctx.fast_mode.then_some(&handshake.encrypt_keys);
    let (mut dc, leg) = match upstream::connect(ctx, handshake.tag, handshake.dc, fast).await {
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
            return None;
        }
    };
    tracing::debug!(user, dc = handshake.dc, "relaying");
    let mut to_upstream = ToUpstream::new(handshake.decrypt, leg.encrypt, records);
    // In fast mode the DC already encrypts with the client's keystream.
    let to_client = ToClient::new(
        (!ctx.fast_mode).then_some((leg.decrypt, handshake.encrypt)),
        tls,
    );
    to_upstream.crypt(&mut early_data);
    // The DC header and the client's first bytes in one write: one segment to the DC.
    let mut first = Vec::with_capacity(leg.wire.len() + early_data.len());
    first.extend_from_slice(&leg.wire);
    first.extend_from_slice(&early_data);
    dc.write_all(&first).await.ok()?;
    Some(Direct {
        client,
        dc,
        to_upstream,
        to_client,
        early: early_data.len() as u64,
    })
}

impl<C: RelayStream> Direct<C> {
    /// Relays both ways until the pair ends, then closes both sockets.
    async fn run<M>(self, account: &Account, ctx: &RelayContext<M>) {
        let meter = Metered {
            account,
            stats: &ctx.stats,
        };
        // What arrived with the header is client traffic too (for usage and quota).
        pump::Meter::client_bytes(&meter, self.early);
        let (mut client_r, mut client_w) = self.client.into_split();
        let (mut dc_r, mut dc_w) = self.dc.into_split();
        let (stats, error) = pump::relay(
            (&mut client_r, &mut client_w),
            (&mut dc_r, &mut dc_w),
            self.to_upstream,
            self.to_client,
            ctx.idle_timeout,
            &meter,
            ctx.offload(),
        )
        .await;
        C::close(client_r, client_w);
        <tokio::net::TcpStream as RelayStream>::close(dc_r, dc_w);
        tracing::debug!(
            user = account.name.as_str(),
            from_client = stats.from_client,
            from_dc = stats.from_upstream,
            idle_timeout = stats.idle_timeout,
            error = error.as_ref().map(ToString::to_string),
            "relay ended"
        );
    }
}
