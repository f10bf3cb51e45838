//! Listening sockets and the accept loop: each admitted connection is served by the relay.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use relay_common::Verdict;
use socket2::{Domain, Protocol, Socket, Type};

use crate::{clock::monotonic_ns, daemon::Daemon};

/// Binds every listen address, failing with the address that could not be bound. Plain std
/// sockets: binding happens before the async runtime exists (see `cli::run`).
pub fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let socket = Socket::new(
            Domain::for_address(*addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(|e| anyhow::anyhow!("cannot create a socket for {addr}: {e}"))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            // Keep [::] from also claiming the IPv4 port, so 0.0.0.0 and [::] can both be listed.
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listener (Linux copies it to the
        // child): set once here rather than with a syscall per connection. Relayed writes are
        // whole messages a peer waits for; Nagle would only delay them.
        socket.set_tcp_nodelay(true)?;
        socket
            .bind(&(*addr).into())
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        socket
            .listen(1024)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// Accepts on `listener` forever, checking each connection against the shield.
pub async fn accept_loop(listener: TcpListener, daemon: Arc<Daemon>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                crate::warn_limited!((1, 5), "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Not through the shield's lock: a bulk CrowdSec load holds it for writing.
        let verdict = daemon.admission.admit(peer.ip(), monotonic_ns());
        if verdict.drops() {
            tracing::debug!(
                peer = %crate::privacy::addr(peer),
                verdict = verdict.name(),
                "connection refused"
            );
            reset(stream);
            continue;
        }
        let slot = match daemon
            .capacity
            .try_admit(peer.ip(), verdict == Verdict::Allowlisted)
        {
            Ok(slot) => slot,
            Err(bound) => {
                // A flood hits this once per connection: rate-limited.
                crate::warn_limited!(
                    (1, 10),
                    bound = bound.name(),
                    "connection refused: concurrency bound reached"
                );
                reset(stream);
                continue;
            }
        };
        // One span per connection; the peer in it is masked as `[log] client_ips` says.
        let span = tracing::info_span!("conn", peer = %crate::privacy::addr(peer));
        // Each connection keeps the context it started with; a reload affects only new ones.
        tokio::spawn(
            crate::relay::serve(stream, peer, slot, daemon.relay.load_full()).instrument(span),
        );
    }
}

/// Closes with RST rather than FIN: the client retries or gives up at once.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut listeners = bind(&[addr]).expect("bind");
        let listener = TcpListener::from_std(listeners.remove(0)).expect("listener");
        let local = listener.local_addr().expect("local addr");
        let client = TcpStream::connect(local).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
        drop(client);
    }
}
