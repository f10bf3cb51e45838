//! Relaying one client through a middle proxy: the client's decrypted stream is cut into
//! messages (its own framing), each sent as an RPC_PROXY_REQ on a shared ME connection; the
//! ME's answers are framed, encrypted and (for fake TLS) wrapped for the client.
//!
//! Unlike the direct leg, nothing can be spliced: every byte is re-framed. A framing error
//! or a client over its message bound ends this client only.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{io::AsyncWriteExt as _, time::Instant};

use super::{
    RelayContext,
    accounts::Account,
    handshake::Accepted,
    pump::{Meter as _, idle_watchdog, read_pooled},
    stats::Metered,
    stream::RelayStream,
};
use crate::middle::{
    MiddleEnd,
    conn::Answer,
    session::{MeReceiver, MeSender, MeSession},
};
use relay_proto::{
    AesCtr, ProtoTag,
    middle::{ClientDecoder, encode_answer, encode_quick_ack},
    tls::record::{RecordDecoder, encode_records},
};

/// Longest client message relayed (Telegram's largest requests, file parts, are 512 KiB;
/// the bound leaves room for clients that send more).
pub const MAX_CLIENT_MESSAGE: usize = 2 << 20;

/// Largest answer buffer a client keeps between answers.
const KEEP_ANSWER_BUFFER: usize = 16 << 10;

/// How a middle-mode relay ended.
#[derive(Debug, thiserror::Error)]
enum LegError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("client framing: {0}")]
    Framing(#[from] relay_proto::middle::ClientFrameError),
    #[error("fake TLS: {0}")]
    Records(String),
    #[error("{0}")]
    Middle(#[from] crate::middle::MiddleError),
    #[error("quota exhausted")]
    Exhausted,
}

/// Relays `client` through `middle` until either side ends or nothing moves for the idle
/// timeout.
pub async fn relay<C: RelayStream, M>(
    client: C,
    peer: SocketAddr,
    accepted: Box<Accepted>,
    account: &Account,
    ctx: &RelayContext<M>,
    middle: &MiddleEnd,
) {
    // Opening in a box of its own, freed once the session is up: an idle client keeps only
    // what `Leg` holds.
    let Some(leg) = Box::pin(open(client, peer, accepted, account, ctx, middle)).await else {
        return;
    };
    leg.run(account, ctx).await;
}

/// A client with its session on an ME connection, ready to relay.
struct Leg<C> {
    client: C,
    session: MeSession,
    tag: ProtoTag,
    upstream: Upstream,
    encrypt: AesCtr,
    tls: bool,
    early_data: Vec<u8>,
}

/// Opens the client's session on an ME connection; `None` (logged) when none is available.
async fn open<C: RelayStream, M>(
    client: C,
    peer: SocketAddr,
    accepted: Box<Accepted>,
    account: &Account,
    ctx: &RelayContext<M>,
    middle: &MiddleEnd,
) -> Option<Leg<C>> {
    let user = account.name.as_str();
    let local = client
        .local_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let ad_tag = ctx.ad_tags.get(accepted.user).copied().flatten();
    let Accepted {
        handshake,
        tls,
        early_data,
        records,
        ..
    } = *accepted;
    let session = match middle
        .open(handshake.dc, peer, local, handshake.tag, ad_tag)
        .await
    {
        Ok(session) => session,
        Err(e) => {
            crate::info_limited!(
                (5, 20),
                peer = %crate::privacy::addr(peer),
                user,
                dc = handshake.dc,
                "middle proxy unavailable: {e}"
            );
            return None;
        }
    };
    tracing::debug!(user, dc = handshake.dc, me = %session.me_addr(), "relaying via middle proxy");
    Some(Leg {
        client,
        session,
        tag: handshake.tag,
        upstream: Upstream {
            records,
            decrypt: handshake.decrypt,
            decoder: ClientDecoder::new(handshake.tag, MAX_CLIENT_MESSAGE),
        },
        encrypt: handshake.encrypt,
        tls,
        early_data,
    })
}

impl<C: RelayStream> Leg<C> {
    async fn run<M>(self, account: &Account, ctx: &RelayContext<M>) {
        let Leg {
            client,
            mut session,
            tag,
            upstream,
            encrypt,
            tls,
            early_data,
        } = self;
        let meter = Metered {
            account,
            stats: &ctx.stats,
        };
        let start = Instant::now();
        let activity = AtomicU64::new(0);
        let inbox = session.inbox();
        let (sender, receiver) = session.parts();
        let (client_r, client_w) = client.into_split();
        let up = client_to_me(
            client_r,
            early_data,
            upstream,
            sender,
            &meter,
            (&activity, start),
        );
        let down = me_to_client(
            client_w,
            receiver,
            tag,
            encrypt,
            tls,
            &meter,
            (&activity, start),
        );
        let watchdog = idle_watchdog(&activity, start, ctx.idle_timeout);
        let ended = tokio::select! {
            r = up => r.err().map(|e| e.to_string()),
            r = down => r.err().map(|e| e.to_string()),
            () = watchdog => Some("idle timeout".to_owned()),
            // Writing to it may be blocked; the drop must not wait for that.
            () = inbox.overflow() => Some("too slow to read its answers".to_owned()),
        };
        tracing::debug!(
            user = account.name.as_str(),
            error = ended,
            "middle-mode relay ended"
        );
    }
}

/// What turns client bytes into messages.
struct Upstream {
    records: Option<RecordDecoder>,
    decrypt: AesCtr,
    decoder: ClientDecoder,
}

async fn client_to_me<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    mut early: Vec<u8>,
    mut up: Upstream,
    sender: &MeSender,
    meter: &Metered<'_>,
    (activity, start): (&AtomicU64, Instant),
) -> Result<(), LegError> {
    // What came with the handshake is client traffic too (for usage and quota).
    meter.client_bytes(early.len() as u64);
    up.decrypt.apply(&mut early);
    up.decoder.push(&early);
    drop(early);
    // A pooled buffer, back in the pool while the client is quiet: an idle client holds none.
    let mut held = None;
    loop {
        while let Some(m) = up.decoder.next_message()? {
            sender.send(m.message, m.quick_ack).await?;
        }
        let (mut buf, n) = read_pooled(&mut reader, &mut held, false).await?;
        if n == 0 {
            return Ok(());
        }
        meter.client_bytes(n as u64);
        if meter.exhausted() {
            return Err(LegError::Exhausted);
        }
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let data = &mut buf[..n];
        let n = match &mut up.records {
            Some(decoder) => decoder
                .decode_in_place(data)
                .map_err(|e| LegError::Records(e.to_string()))?,
            None => n,
        };
        up.decrypt.apply(&mut data[..n]);
        up.decoder.push(&data[..n]);
        held = Some(buf);
    }
}

async fn me_to_client<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: W,
    receiver: &mut MeReceiver,
    tag: ProtoTag,
    mut encrypt: AesCtr,
    tls: bool,
    meter: &Metered<'_>,
    (activity, start): (&AtomicU64, Instant),
) -> Result<(), LegError> {
    let mut out = Vec::new();
    let mut wrapped = Vec::new();
    while let Some(answer) = receiver.recv().await {
        out.clear();
        match answer {
            // The thread's generator, borrowed for the call: a client holds none while idle.
            Answer::Data(message) => encode_answer(tag, &message, &mut rand::rng(), &mut out)?,
            Answer::QuickAck(confirm) => encode_quick_ack(tag, confirm, &mut out),
        }
        meter.upstream_bytes(out.len() as u64);
        if meter.exhausted() {
            return Err(LegError::Exhausted);
        }
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        encrypt.apply(&mut out);
        if tls {
            wrapped.clear();
            encode_records(&out, &mut wrapped);
            writer.write_all(&wrapped).await?;
        } else {
            writer.write_all(&out).await?;
        }
        // The buffers live as long as the client: one large answer must not stay with it.
        if out.capacity() > KEEP_ANSWER_BUFFER {
            out = Vec::new();
            wrapped = Vec::new();
        }
    }
    // The ME closed this client (or its connection died): the client sees a close.
    writer.shutdown().await?;
    Ok(())
}
