//! The client's bytes up to a complete handshake, and the mask connection opened for a client
//! still short of one after a grace period.
//!
//! A censor's probe that stops, never starts, or dribbles its bytes mid-handshake must end
//! when, and as, the mask site would end it. So once `[timeouts] mask_grace_ms` has passed
//! since the client's first byte (or since it connected, while it has sent none) with no
//! complete hello or header, a connection to the mask host is opened and sent every byte so
//! far, and then each new byte that still leaves the handshake short: the mask's own timers run
//! from then on. Later bytes do not restart the grace: a prober sending a byte a little more
//! often than the grace would otherwise be held until the relay's own handshake deadline. If
//! the mask answers or ends that connection before the handshake is complete, the connection
//! is fronted (the answer reaches the client as the mask sent it); if the handshake completes
//! and verifies, the mask connection is dropped, never having seen the bytes that completed it.
//! Genuine clients send their whole hello or header at once, so they rarely cause a mask
//! connection at all.

use std::{future::Future, io, pin::Pin, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    time::Instant,
};

use super::{RelayContext, handshake::Failure, mask_target::MaskDialer, stream::RelayStream};
use crate::admission::capacity::handshakes::Ticket;

/// A mask connection being made. Boxed: it is made for few connections, and it must live in
/// the intake across reads.
type Connecting<S> = Pin<Box<dyn Future<Output = io::Result<S>> + Send>>;

/// The mask connection of a client still in its handshake.
enum MaskLeg<S> {
    /// Not opened (yet): the grace period has not ended.
    Waiting,
    /// Being connected.
    Connecting(Connecting<S>),
    /// Open; `sent` bytes of the client's have been forwarded to it.
    Open { stream: S, sent: usize },
    /// Not opened and never to be: fronting is off, the mask host failed, or the relay has
    /// answered the client itself.
    Off,
}

/// What happened on the mask leg while the client was quiet.
enum MaskEvent {
    /// The connection is up: forward what the client sent.
    Opened,
    /// The mask sent bytes, closed or reset: the handshake is over, the mask decided.
    Answered,
}

/// Every byte a client sent in its handshake, and the mask connection (an `S`) opened for it if
/// it went quiet short of a complete one.
pub struct Intake<S> {
    /// The client's bytes, in order (replayed to the mask when the connection is fronted).
    pub seen: Vec<u8>,
    mask: MaskLeg<S>,
    /// When the grace period began: when the client connected, then when it sent its first
    /// byte.
    grace_from: Instant,
    /// The handshake slot's ticket, told when the client first speaks.
    ticket: Arc<Ticket>,
    /// What the mask gets before the client's bytes (a PROXY header naming the client, with
    /// `[tls] mask_proxy_protocol`), until it has been sent.
    preamble: Vec<u8>,
}

/// A connection ready to be fronted: the mask connection if one is open, and the client's
/// bytes it has not been sent yet.
pub struct ToFront<S> {
    /// The open mask connection, if the client had gone quiet and it was opened.
    pub mask: Option<S>,
    /// The client's bytes the mask has not received.
    pub unsent: Vec<u8>,
}

impl<S: RelayStream> Intake<S> {
    /// An empty intake for a connection accepted now, holding the handshake slot `ticket`; a
    /// mask connection may be opened for it only when fronting is on.
    pub fn new<M: MaskDialer<Stream = S>>(
        ctx: &RelayContext<M>,
        ticket: Arc<Ticket>,
        preamble: Vec<u8>,
    ) -> Self {
        Intake {
            preamble,
            seen: Vec::new(),
            mask: if ctx.mask.is_some() {
                MaskLeg::Waiting
            } else {
                MaskLeg::Off
            },
            grace_from: Instant::now(),
            ticket,
        }
    }

    /// Reads at least one more byte from the client into [`Intake::seen`]; meanwhile opens the
    /// mask connection once the grace period has passed since the client's first byte (or since
    /// it connected, while it has sent none). The mask connection gets the bytes the caller
    /// found short of a handshake (those seen before this call), never the ones that may
    /// complete it. Fails with [`Failure::Closed`] when the client hangs up and with
    /// [`Failure::Incomplete`] when the mask answers or ends its connection first.
    pub async fn read_more<C, M>(
        &mut self,
        client: &mut C,
        ctx: &RelayContext<M>,
    ) -> Result<usize, Failure>
    where
        C: AsyncRead + Unpin,
        M: MaskDialer<Stream = S>,
    {
        self.forward().await?;
        loop {
            // Straight into `seen`'s spare capacity: a stack buffer would be held across the
            // await and so become part of every connection's task.
            self.seen.reserve(4096);
            tokio::select! {
                r = client.read_buf(&mut self.seen) => {
                    let n = match r {
                        Ok(0) | Err(_) => return Err(Failure::Closed),
                        Ok(n) => n,
                    };
                    if self.seen.len() == n {
                        // The first byte: the grace is measured from here, once.
                        self.grace_from = Instant::now();
                    }
                    self.ticket.spoke();
                    return Ok(n);
                }
                event = self.mask.event(self.grace_from + ctx.mask_grace, ctx) => match event {
                    MaskEvent::Opened => {
                        ctx.stats.mask_leg_opened();
                        self.forward().await?;
                    }
                    MaskEvent::Answered => return Err(Failure::Incomplete),
                },
            }
        }
    }

    /// Sends the mask connection, if open, the client's bytes it has not had yet.
    async fn forward(&mut self) -> Result<(), Failure> {
        if let MaskLeg::Open { stream, sent } = &mut self.mask {
            if !self.preamble.is_empty() {
                stream
                    .write_all(&std::mem::take(&mut self.preamble))
                    .await
                    .map_err(|_| Failure::Incomplete)?;
            }
            stream
                .write_all(&self.seen[*sent..])
                .await
                .map_err(|_| Failure::Incomplete)?;
            *sent = self.seen.len();
        }
        Ok(())
    }

    /// The handshake verified: the relay answers the client itself from here on, so a mask
    /// connection opened meanwhile is closed and none is opened later.
    pub fn abandon_mask<M>(&mut self, ctx: &RelayContext<M>) {
        if matches!(self.mask, MaskLeg::Open { .. } | MaskLeg::Connecting(_)) {
            ctx.stats.mask_leg_abandoned();
        }
        self.mask = MaskLeg::Off;
    }

    /// The bytes a new mask connection gets: the preamble, then everything the client sent.
    pub fn preamble_and_seen(self) -> Vec<u8> {
        let mut out = self.preamble;
        out.extend_from_slice(&self.seen);
        out
    }

    /// What fronting needs: the mask connection if it is open (waiting for one still being
    /// connected) and the bytes it has not been sent.
    pub async fn into_front<M>(self, ctx: &RelayContext<M>) -> ToFront<S> {
        let (mask, sent) = match self.mask {
            MaskLeg::Open { stream, sent } => (Some(stream), sent),
            MaskLeg::Connecting(connecting) => {
                match tokio::time::timeout(ctx.connect_timeout, connecting).await {
                    Ok(Ok(stream)) => (Some(stream), 0),
                    _ => (None, 0),
                }
            }
            MaskLeg::Waiting | MaskLeg::Off => (None, 0),
        };
        // The preamble first, unless the open mask connection has had it.
        let mut unsent = self.preamble;
        unsent.extend_from_slice(&self.seen[sent..]);
        ToFront { mask, unsent }
    }
}

impl<S: RelayStream> MaskLeg<S> {
    /// Waits for the next thing that happens on the mask leg: at `grace_end` a connection is
    /// started, when it is up [`MaskEvent::Opened`], when the mask then speaks or ends,
    /// [`MaskEvent::Answered`]. Cancel-safe: a connection being made lives in `self`.
    async fn event<M: MaskDialer<Stream = S>>(
        &mut self,
        grace_end: Instant,
        ctx: &RelayContext<M>,
    ) -> MaskEvent {
        loop {
            match self {
                MaskLeg::Waiting => {
                    tokio::time::sleep_until(grace_end).await;
                    let Some(mask) = ctx.mask.as_ref() else {
                        *self = MaskLeg::Off;
                        continue;
                    };
                    let timeout = ctx.connect_timeout;
                    *self = MaskLeg::Connecting(Box::pin(mask.dial(timeout)));
                }
                MaskLeg::Connecting(connecting) => match connecting.as_mut().await {
                    Ok(stream) => {
                        *self = MaskLeg::Open { stream, sent: 0 };
                        return MaskEvent::Opened;
                    }
                    Err(e) => {
                        // A probe flood while the mask host is down would make this once per
                        // connection: rate-limited. The handshake deadline then ends it.
                        crate::warn_limited!((1, 10), "fronting target unreachable: {e}");
                        *self = MaskLeg::Off;
                    }
                },
                MaskLeg::Open { stream, .. } => {
                    // Bytes, FIN or RST from the mask all end the handshake; the bytes stay
                    // for the fronting pump to pass on.
                    stream.answered().await;
                    return MaskEvent::Answered;
                }
                MaskLeg::Off => std::future::pending::<()>().await,
            }
        }
    }
}
