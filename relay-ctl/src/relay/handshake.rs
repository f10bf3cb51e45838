//! The client side of a connection up to the point where relaying starts: mode detection,
//! fake-TLS hello and server flight, the obfuscated2 header, the replay check. Thin async
//! code around the sans-IO functions in [`relay_proto`].

use std::{
    net::IpAddr,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{RelayContext, intake::Intake, mask_target::MaskDialer};
use crate::admission::misuse::Offence;
use relay_proto::{
    Mode,
    obfs2::{self, ClientHandshake, HEADER_LEN, Obfs2Error},
    opening::{self, Opening},
    replay::ReplayKey,
    tls::{
        self, HelloError, HelloPolicy, ReadError,
        reader::{ClientHelloReader, HelloRead},
        record::RecordDecoder,
    },
};

/// Why a client did not get relayed. Distinct reasons because the misuse detector counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No user's secret fits the obfuscated2 header or the ClientHello MAC.
    BadSecret,
    /// A fake-TLS hello for another domain.
    UnknownSni,
    /// A valid fake-TLS hello with a timestamp outside the window.
    BadTimestamp,
    /// A handshake already seen: a replay.
    Replay,
    /// The handshake did not complete in time.
    Timeout,
    /// Bytes that are neither a ClientHello nor an obfuscated2 header of an enabled mode.
    Garbage,
    /// The client spoke a mode this relay has disabled.
    ModeDisabled,
    /// The client hung up or the socket failed mid-handshake.
    Closed,
    /// The handshake, silent so far, was evicted to make room for a newer one.
    Evicted,
    /// The client stopped short of a whole handshake and the mask site, which had been sent its
    /// bytes, answered or ended the connection first.
    Incomplete,
    /// After the server flight the client sent something that is not the obfuscated2 header;
    /// fronting is no longer possible because the relay has already answered.
    BadAfterFlight,
}

impl Failure {
    /// Every failure, in discriminant order.
    pub const ALL: [Failure; 11] = [
        Failure::BadSecret,
        Failure::UnknownSni,
        Failure::BadTimestamp,
        Failure::Replay,
        Failure::Timeout,
        Failure::Garbage,
        Failure::ModeDisabled,
        Failure::Closed,
        Failure::Evicted,
        Failure::Incomplete,
        Failure::BadAfterFlight,
    ];

    /// Stable snake_case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Failure::BadSecret => "bad_secret",
            Failure::UnknownSni => "unknown_sni",
            Failure::BadTimestamp => "bad_timestamp",
            Failure::Replay => "replay",
            Failure::Timeout => "timeout",
            Failure::Garbage => "garbage",
            Failure::ModeDisabled => "mode_disabled",
            Failure::Closed => "closed",
            Failure::Evicted => "evicted",
            Failure::Incomplete => "incomplete",
            Failure::BadAfterFlight => "bad_after_flight",
        }
    }

    /// What the misuse detector counts this as.
    pub const fn offence(self) -> Option<Offence> {
        match self {
            Failure::BadSecret | Failure::BadTimestamp => Some(Offence::BadSecret),
            Failure::UnknownSni => Some(Offence::UnknownSni),
            Failure::Replay => Some(Offence::Replay),
            // Holding a handshake open and leaving before it is complete is how handshake
            // slots are starved: a close counts like a timeout.
            Failure::Timeout | Failure::Incomplete | Failure::Evicted | Failure::Closed => {
                Some(Offence::Timeout)
            }
            Failure::Garbage | Failure::ModeDisabled | Failure::BadAfterFlight => {
                Some(Offence::Garbage)
            }
        }
    }

    /// Whether the connection can still be handed to the mask host: only if the relay has not
    /// said anything yet.
    pub const fn frontable(self) -> bool {
        !matches!(self, Failure::BadAfterFlight)
    }
}

/// A client ready to be relayed.
#[derive(Debug)]
pub struct Accepted {
    /// Index of the matched user.
    pub user: usize,
    /// Mode the client used.
    pub mode: Mode,
    /// Keys, tag and DC from the obfuscated2 header.
    pub handshake: ClientHandshake,
    /// Whether the stream is wrapped in fake-TLS records.
    pub tls: bool,
    /// Decrypted-to-be client bytes that followed the header (still obfuscated2 ciphertext;
    /// for TLS already stripped of record framing).
    pub early_data: Vec<u8>,
    /// For fake TLS: the record decoder, possibly inside a record, to continue with.
    pub records: Option<RecordDecoder>,
}

/// Runs the client handshake. Every byte read is kept in `intake`, so a failed connection
/// can be replayed to the mask host exactly as the client sent it; a client that goes quiet
/// short of a whole handshake gets a mask connection meanwhile (see [`super::intake`]).
///
/// `answered` is set once the fake-TLS server flight has been sent: from then on the client
/// has seen the relay speak, so whatever happens (even a timeout that cancels this future) the
/// connection must be closed, not fronted. `peer` selects the user hint (see
/// [`super::hints`]).
pub async fn accept<C, M>(
    client: &mut C,
    peer: IpAddr,
    ctx: &RelayContext<M>,
    intake: &mut Intake<M::Stream>,
    answered: &mut bool,
) -> Result<Accepted, Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: MaskDialer,
{
    loop {
        match opening::classify(&intake.seen, ctx.modes) {
            Opening::NeedMore => {
                intake.read_more(client, ctx).await?;
            }
            Opening::Tls => return accept_tls(client, peer, ctx, intake, answered).await,
            Opening::Obfs2 => return accept_obfs2(client, peer, ctx, intake).await,
            Opening::TlsDisabled => return Err(Failure::ModeDisabled),
            Opening::NotAClient => return Err(Failure::Garbage),
        }
    }
}

/// The user `peer` matched last, when there is more than one user to choose from.
fn hint<M>(ctx: &RelayContext<M>, peer: IpAddr, now: Instant) -> Option<usize> {
    (ctx.secrets.len() > 1)
        .then(|| ctx.hints.get(peer, now))
        .flatten()
}

/// Remembers that `peer` matched `user` (only worth it with more than one user).
fn remember<M>(ctx: &RelayContext<M>, peer: IpAddr, user: usize, now: Instant) {
    if ctx.secrets.len() > 1 {
        ctx.hints.set(peer, user, now);
    }
}

async fn accept_obfs2<C, M>(
    client: &mut C,
    peer: IpAddr,
    ctx: &RelayContext<M>,
    intake: &mut Intake<M::Stream>,
) -> Result<Accepted, Failure>
where
    C: AsyncRead + Unpin,
    M: MaskDialer,
{
    while intake.seen.len() < HEADER_LEN {
        intake.read_more(client, ctx).await?;
        if !obfs2::may_start_header(&intake.seen) {
            return Err(Failure::Garbage);
        }
    }
    let header: [u8; HEADER_LEN] = intake.seen[..HEADER_LEN]
        .try_into()
        .map_err(|_| Failure::Garbage)?;
    let now = Instant::now();
    let handshake = obfs2::accept_client_header_hinted(
        &header,
        &ctx.secrets,
        hint(ctx, peer, now),
        ctx.modes,
        false,
    )
    .map_err(obfs2_failure)?;
    check_replay(ctx, ReplayKey::obfs2(&handshake.replay_key))?;
    intake.abandon_mask(ctx);
    remember(ctx, peer, handshake.user, now);
    let mode = Mode::of(handshake.tag, false).ok_or(Failure::ModeDisabled)?;
    Ok(Accepted {
        user: handshake.user,
        mode,
        early_data: intake.seen[HEADER_LEN..].to_vec(),
        handshake,
        tls: false,
        records: None,
    })
}

async fn accept_tls<C, M>(
    client: &mut C,
    peer: IpAddr,
    ctx: &RelayContext<M>,
    intake: &mut Intake<M::Stream>,
    answered: &mut bool,
) -> Result<Accepted, Failure>
where
    C: AsyncRead + AsyncWrite + Unpin,
    M: MaskDialer,
{
    let mut reader = ClientHelloReader::new();
    let mut fed = 0;
    let hello = loop {
        match reader.feed(&intake.seen[fed..]).map_err(read_failure)? {
            HelloRead::Done(hello) => break hello,
            HelloRead::NeedMore => {
                fed = intake.seen.len();
                intake.read_more(client, ctx).await?;
            }
        }
    };
    let after_hello = fed + hello.consumed;
    let policy = HelloPolicy {
        domain: &ctx.tls_domain,
        now: unix_now(),
        window_secs: ctx.time_skew_secs,
        allow_uptime: ctx.accept_uptime_clock,
    };
    let now = Instant::now();
    let verified = tls::hello::verify_client_hello_keys(
        &hello.handshake,
        &ctx.hello_keys,
        hint(ctx, peer, now),
        &policy,
    )
    .map_err(hello_failure)?;
    check_replay(ctx, ReplayKey::tls(&verified.client_random))?;
    intake.abandon_mask(ctx);
    remember(ctx, peer, verified.user, now);
    let user = verified.user;
    let flight = {
        let mut rng = rand::rng();
        let shape = &ctx.flight.current().shape;
        let cert_len = shape.pick_cert_len(&mut rng);
        let secret = &ctx.secrets[user];
        tls::flight::server_flight_shaped(&mut rng, secret, &verified, cert_len, shape.order)
    };
    *answered = true;
    client
        .write_all(&flight)
        .await
        .map_err(|_| Failure::BadAfterFlight)?;

    // From here on the client has its answer: failures close instead of fronting.
    let mut decoder = RecordDecoder::new();
    let mut payload = intake.seen[after_hello..].to_vec();
    let n = decoder
        .decode_in_place(&mut payload)
        .map_err(|_| Failure::BadAfterFlight)?;
    payload.truncate(n);
    let mut buf = vec![0u8; 4096];
    while payload.len() < HEADER_LEN {
        let n = match client.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(Failure::BadAfterFlight),
            Ok(n) => n,
        };
        let m = decoder
            .decode_in_place(&mut buf[..n])
            .map_err(|_| Failure::BadAfterFlight)?;
        payload.extend_from_slice(&buf[..m]);
    }
    let header: [u8; HEADER_LEN] = payload[..HEADER_LEN]
        .try_into()
        .map_err(|_| Failure::BadAfterFlight)?;
    let mut handshake = obfs2::accept_client_header(
        &header,
        std::slice::from_ref(&ctx.secrets[user]),
        ctx.modes,
        true,
    )
    .map_err(|_| Failure::BadAfterFlight)?;
    handshake.user = user;
    Ok(Accepted {
        user,
        mode: Mode::Tls,
        handshake,
        tls: true,
        early_data: payload[HEADER_LEN..].to_vec(),
        records: Some(decoder),
    })
}

fn check_replay<M>(ctx: &RelayContext<M>, key: ReplayKey) -> Result<(), Failure> {
    let mut cache = ctx.replay.lock().unwrap_or_else(|e| e.into_inner());
    if cache.check_and_insert(key, unix_now()) {
        ctx.stats.replay();
        return Err(Failure::Replay);
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn obfs2_failure(e: Obfs2Error) -> Failure {
    match e {
        Obfs2Error::NoMatch | Obfs2Error::BadTag => Failure::BadSecret,
        Obfs2Error::ModeNotAllowed { .. } => Failure::ModeDisabled,
    }
}

fn hello_failure(e: HelloError) -> Failure {
    match e {
        HelloError::Malformed(_) | HelloError::UnsupportedCipher(_) => Failure::Garbage,
        HelloError::UnknownSni { .. } => Failure::UnknownSni,
        HelloError::BadMac => Failure::BadSecret,
        HelloError::TimestampOutOfWindow { .. } => Failure::BadTimestamp,
    }
}

fn read_failure(_: ReadError) -> Failure {
    Failure::Garbage
}
