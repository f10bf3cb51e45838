//! A client's side of a multiplexed ME connection: its messages go out as RPC_PROXY_REQ,
//! its answers come back through its inbox; dropping the session closes it at the ME.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use super::{
    MiddleError,
    conn::{Answer, Inbox, MeConn},
};
use relay_proto::{
    ProtoTag,
    middle::{AdTag, rpc::ProxyReq},
};

/// One client on an ME connection.
pub struct MeSession {
    sender: MeSender,
    receiver: MeReceiver,
}

/// A session's sending half.
pub struct MeSender {
    conn: Arc<MeConn>,
    id: u64,
    client: SocketAddr,
    proxy: SocketAddr,
    tag: ProtoTag,
    ad_tag: Option<AdTag>,
}

/// A session's receiving half.
pub struct MeReceiver {
    inbox: Arc<Inbox>,
}

impl MeSession {
    /// Registers a client on `conn`.
    pub(super) fn open(
        conn: Arc<MeConn>,
        client: SocketAddr,
        proxy: SocketAddr,
        tag: ProtoTag,
        ad_tag: Option<AdTag>,
    ) -> Result<MeSession, MiddleError> {
        let (id, inbox) = conn.register()?;
        Ok(MeSession {
            sender: MeSender {
                conn,
                id,
                client,
                proxy,
                tag,
                ad_tag,
            },
            receiver: MeReceiver { inbox },
        })
    }

    /// The middle proxy this session goes through.
    pub fn me_addr(&self) -> SocketAddr {
        self.sender.conn.addr
    }

    /// The session's inbox (its [`Inbox::overflow`] tells when the client was dropped).
    pub fn inbox(&self) -> Arc<Inbox> {
        self.receiver.inbox.clone()
    }

    /// Both halves, to send and receive at the same time.
    pub fn parts(&mut self) -> (&MeSender, &mut MeReceiver) {
        (&self.sender, &mut self.receiver)
    }
}

impl MeSender {
    /// Sends one client message, waiting while the ME connection's writer is behind.
    pub async fn send(&self, message: &[u8], quick_ack: bool) -> Result<(), MiddleError> {
        let mut payload = Vec::new();
        ProxyReq {
            conn_id: self.id,
            tag: self.tag,
            quick_ack,
            client: self.client,
            proxy: self.proxy,
            ad_tag: self.ad_tag.as_ref().map(|t| &t.0),
            message,
        }
        .encode(&mut payload);
        self.conn.send(payload).await
    }
}

impl MeReceiver {
    /// The next answer; `None` once the ME closed this client, the connection died, or the
    /// client fell too far behind.
    pub async fn recv(&mut self) -> Option<Answer> {
        if self.inbox.overflowed.load(Ordering::Relaxed) {
            return None;
        }
        let answer = self.inbox.next().await?;
        let len = match &answer {
            Answer::Data(d) => d.len(),
            Answer::QuickAck(_) => 4,
        };
        self.inbox.queued.fetch_sub(len, Ordering::Relaxed);
        if self.inbox.overflowed.load(Ordering::Relaxed) {
            return None;
        }
        Some(answer)
    }
}

impl Drop for MeSession {
    fn drop(&mut self) {
        self.sender.conn.close_client(self.sender.id);
    }
}
