//! The client listener: listening sockets and the accept loop; each admitted connection is
//! served by the relay. (The admin socket is `control::server`.)

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
};
use tracing::Instrument as _;

use relay_common::Verdict;
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    admission::capacity::Slot,
    clock::monotonic_ns,
    daemon::Daemon,
    relay::{
        RelayContext, front,
        stats::{ConnState, FrontReason, ProxyHeaderOutcome},
    },
};
use relay_proto::proxy_header::{self, Accept, Parsed, ProxyHeaderError, V2_MAX};

/// Binds every listen address `copies` times, failing with the address that could not be
/// bound; `result[i]` holds copy `i` of every address, for relay thread `i`. With more than one
/// copy the sockets share the port with SO_REUSEPORT, so the kernel spreads new connections
/// over the threads and none of them wakes another. Plain std sockets: binding happens before
/// the async runtime exists (see `cli::run`).
pub fn bind(
    addrs: &[SocketAddr],
    copies: usize,
) -> Result<Vec<Vec<std::net::TcpListener>>, BindError> {
    let copies = copies.max(1);
    let mut sets: Vec<Vec<std::net::TcpListener>> = (0..copies).map(|_| Vec::new()).collect();
    for addr in addrs {
        // Port 0 means "any": the copies join the port the first one got.
        let mut addr = *addr;
        for set in &mut sets {
            let listener = bind_one(addr, copies > 1)?;
            addr = listener
                .local_addr()
                .map_err(|e| BindError::Listen(addr, e))?;
            set.push(listener);
        }
    }
    Ok(sets)
}

/// Why a listen address could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// No socket could be created for the address's family.
    #[error("cannot create a socket for {0}")]
    Socket(SocketAddr, #[source] std::io::Error),
    /// A socket option, `bind` or `listen` failed.
    #[error("cannot listen on {0}")]
    Listen(SocketAddr, #[source] std::io::Error),
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, BindError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| BindError::Socket(addr, e))?;
    let listen = |e| BindError::Listen(addr, e);
    socket.set_reuse_address(true).map_err(listen)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(listen)?;
    }
    if addr.is_ipv6() {
        // Keep [::] from also claiming the IPv4 port, so 0.0.0.0 and [::] can both be listed.
        socket.set_only_v6(true).map_err(listen)?;
    }
    socket.set_nonblocking(true).map_err(listen)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux copies it to the
    // child): set once here rather than with a syscall per connection. Relayed writes are
    // whole messages a peer waits for; Nagle would only delay them.
    socket.set_tcp_nodelay(true).map_err(listen)?;
    socket.bind(&addr.into()).map_err(listen)?;
    socket.listen(1024).map_err(listen)?;
    Ok(socket.into())
}

/// Accepts on `listener` forever, checking each connection against the admission: dropped
/// verdicts are reset, front-banned sources fronted, the rest served. Under
/// `[server] proxy_protocol` the client is who a trusted balancer's header says it is.
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
        // Each connection keeps the context it started with; a reload affects only new ones.
        let ctx = daemon.relay.load_full();
        match &ctx.proxy_in {
            None => {
                // Not through the admission's lock: a bulk CrowdSec load holds it for writing.
                let verdict = daemon.accept_check.admit(peer.ip(), monotonic_ns());
                admit(stream, peer, verdict, &daemon, ctx);
            }
            Some(proxy_in) if !proxy_in.trusts(peer.ip()) => {
                ctx.stats.proxy_header(ProxyHeaderOutcome::Untrusted);
                crate::info_limited!(
                    (1, 10),
                    peer = %crate::privacy::addr(peer),
                    "connection refused: not from a trusted balancer"
                );
                reset(stream);
            }
            Some(_) => {
                tokio::spawn(behind_balancer(stream, peer, daemon.clone(), ctx));
            }
        }
    }
}

/// Serves a connection under `verdict`: reset, fronted at once, or handed to the relay.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    verdict: Verdict,
    daemon: &Daemon,
    ctx: Arc<RelayContext>,
) {
    if verdict.drops() {
        tracing::debug!(
            peer = %crate::privacy::addr(peer),
            verdict = verdict.name(),
            "connection refused"
        );
        reset(stream);
        return;
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
            return;
        }
    };
    if verdict == Verdict::BannedFronted {
        // No handshake work for a banned source: straight to the mask site.
        tokio::spawn(front_banned(stream, peer, slot, ctx));
        return;
    }
    // One span per connection, at debug level: at info it would cost a measurable share
    // of a short connection's CPU (formatted on creation, entered on every poll) for the
    // few lines that name their peer themselves. The peer is masked as `[log] client_ips` says.
    let span = tracing::debug_span!("conn", peer = %crate::privacy::addr(peer));
    tokio::spawn(crate::relay::serve(stream, peer, slot, ctx).instrument(span));
}

/// Reads a trusted balancer's PROXY header, then decides on the client it names as if the
/// client had connected itself; the kernel never saw that client, so the whole decision
/// (lists, bans, SYN budget) is made here.
async fn behind_balancer(
    mut stream: TcpStream,
    balancer: SocketAddr,
    daemon: Arc<Daemon>,
    ctx: Arc<RelayContext>,
) {
    let Some(proxy_in) = ctx.proxy_in.as_ref() else {
        return;
    };
    let read = tokio::time::timeout(
        proxy_in.timeout,
        read_proxy_header(&mut stream, proxy_in.accept),
    )
    .await;
    let outcome = match read {
        Err(_) => Err(ProxyHeaderOutcome::Timeout),
        Ok(Err(ReadError::Io)) => return,
        Ok(Err(ReadError::Header(ProxyHeaderError::Missing))) => Err(ProxyHeaderOutcome::Missing),
        Ok(Err(ReadError::Header(ProxyHeaderError::Malformed(_)))) => {
            Err(ProxyHeaderOutcome::Malformed)
        }
        Ok(Ok(None)) => Err(ProxyHeaderOutcome::Local),
        Ok(Ok(Some(client))) => Ok(client),
    };
    let client = match outcome {
        Ok(client) => client,
        Err(outcome) => {
            ctx.stats.proxy_header(outcome);
            if outcome != ProxyHeaderOutcome::Local {
                crate::info_limited!(
                    (1, 10),
                    balancer = %balancer,
                    outcome = outcome.name(),
                    "connection from a balancer closed: no usable PROXY header"
                );
            }
            reset(stream);
            return;
        }
    };
    ctx.stats.proxy_header(ProxyHeaderOutcome::Ok);
    let verdict = daemon
        .accept_check
        .admit_unseen(client.ip(), monotonic_ns());
    admit(stream, client, verdict, &daemon, ctx);
}

/// Why no client address came from a balancer.
enum ReadError {
    /// The connection failed or closed (nothing to count: the balancer's client left).
    Io,
    /// Bytes that are not a usable header.
    Header(ProxyHeaderError),
}

/// Reads exactly one PROXY header, leaving the client's own bytes unread. Returns the client's
/// address, or `None` for the balancer's own health check.
async fn read_proxy_header(
    stream: &mut TcpStream,
    accept: Accept,
) -> Result<Option<SocketAddr>, ReadError> {
    let mut buf = [0u8; V2_MAX];
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Io);
        }
        match proxy_header::parse(&buf[..n], accept).map_err(ReadError::Header)? {
            Parsed::Done { header, len } => {
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(|_| ReadError::Io)?;
                return Ok(header.addrs.map(|(client, _)| client));
            }
            // Headers come in the balancer's first segment; a rare split waits a little
            // (a peek would return the same bytes at once).
            Parsed::Incomplete if n < buf.len() => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Parsed::Incomplete => {
                return Err(ReadError::Header(ProxyHeaderError::Malformed(
                    "longer than any header",
                )));
            }
        }
    }
}

/// Hands a connection from a front-banned source to the mask site, with nothing read from it,
/// so the source sees the site as any prober does; closes it when fronting is off.
async fn front_banned(stream: TcpStream, peer: SocketAddr, mut slot: Slot, ctx: Arc<RelayContext>) {
    slot.handshake_done();
    let mut active = ctx.stats.connection();
    active.enter(ConnState::Fronted);
    let preamble = ctx.mask_preamble(peer, || stream.local_addr().ok());
    front::front(stream, preamble, FrontReason::Banned, &ctx).await;
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
        let mut sets = bind(&[addr], 1).expect("bind");
        let listener = TcpListener::from_std(sets.remove(0).remove(0)).expect("listener");
        let local = listener.local_addr().expect("local addr");
        let client = TcpStream::connect(local).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
        drop(client);
    }

    /// Copies share one port (also when asked for port 0) and the kernel hands connections to
    /// each of them.
    #[tokio::test]
    async fn copies_share_the_port_and_all_accept() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let sets = bind(&[addr], 4).expect("bind");
        assert_eq!(sets.len(), 4);
        let listeners: Vec<TcpListener> = sets
            .into_iter()
            .map(|mut set| TcpListener::from_std(set.remove(0)).expect("listener"))
            .collect();
        let port = listeners[0].local_addr().expect("addr").port();
        assert!(
            listeners
                .iter()
                .all(|l| l.local_addr().expect("addr").port() == port)
        );
        let mut clients = Vec::new();
        let mut served = [false; 4];
        // The kernel picks a copy by hashing the connection's addresses: different source
        // ports reach every copy within a few hundred connections.
        for _ in 0..400 {
            clients.push(
                TcpStream::connect((addr.ip(), port))
                    .await
                    .expect("connect"),
            );
            for (i, l) in listeners.iter().enumerate() {
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(1), l.accept()).await
                {
                    served[i] = true;
                }
            }
            if served.iter().all(|s| *s) {
                return;
            }
        }
        panic!("not every copy accepted: {served:?}");
    }
}
