//! The DC leg: which addresses a DC id means, connecting, and the fresh obfuscated2 header.

use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};

use super::RelayContext;
use relay_proto::{
    ProtoTag,
    dc::{IpFamily, dc_addrs},
    obfs2::{self, DcHandshake, KeyIv},
};

/// Why the DC could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No address is known for the DC (nor for the default DC).
    #[error("no address for DC {0}")]
    UnknownDc(i16),
    /// Every address failed.
    #[error("connecting to DC {dc} failed: {errors}")]
    Connect {
        /// The DC id.
        dc: i16,
        /// What each address said.
        errors: String,
    },
}

/// Addresses for `dc`, overrides first, in the preferred family order. Unknown ids fall back
/// to the default DC; returns the id actually used.
pub fn addresses<M>(
    ctx: &RelayContext<M>,
    dc: i16,
) -> Result<(i16, Vec<SocketAddr>), UpstreamError> {
    for id in [dc, ctx.default_dc] {
        if let Some(addrs) = ctx.dc_overrides.get(&id) {
            return Ok((id, addrs.clone()));
        }
        let families = if ctx.prefer_ipv6 {
            [IpFamily::V6, IpFamily::V4]
        } else {
            [IpFamily::V4, IpFamily::V6]
        };
        let addrs: Vec<SocketAddr> = families
            .iter()
            .flat_map(|f| dc_addrs(id, *f).iter().copied())
            .collect();
        if !addrs.is_empty() {
            return Ok((id, addrs));
        }
    }
    Err(UpstreamError::UnknownDc(dc))
}

/// Opens a TCP connection to `addr` with Nagle off, since every relayed write is a whole
/// message the DC is waiting for. Quick ACK is off while connecting, so the kernel sends the
/// handshake's closing ACK with the first data (the DC header, written at once) instead of as
/// a packet of its own, as haproxy's `tcp-smart-connect` does. Because that data follows the
/// SYN-ACK at once, the kernel then treats the leg as request/response and delays its ACKs
/// (up to its delayed-ACK timeout, or until our next send), as it does for any such connection
/// after its first exchange. A short dd connection: 9 segments from the relay instead of 11.
async fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    TcpSocket::from_std_stream(dc_socket(addr)?.into())
        .connect(addr)
        .await
}

/// The unconnected, non-blocking socket [`dial`] connects: Nagle off, quick ACK off. Public
/// so the bench's floor forwarder dials exactly as the relay does.
pub fn dc_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_quickack(false)?;
    Ok(socket)
}

/// Connects to DC `dc` (or the default DC) and builds a fresh DC-side header carrying `tag`;
/// the caller sends it (`DcHandshake::wire`) together with the client's first bytes, so the
/// DC gets one segment instead of two (TCP_NODELAY is on: two writes would be two packets).
/// With `fast` (the client's proxy→client key), the DC's replies come encrypted with the
/// client's keystream.
pub async fn connect<M>(
    ctx: &RelayContext<M>,
    tag: ProtoTag,
    dc: i16,
    fast: Option<&KeyIv>,
) -> Result<(TcpStream, DcHandshake), UpstreamError> {
    let (dc, addrs) = addresses(ctx, dc)?;
    let mut errors = Vec::new();
    let mut stream = None;
    let start = std::time::Instant::now();
    for addr in addrs {
        match tokio::time::timeout(ctx.connect_timeout, dial(addr)).await {
            Ok(Ok(s)) => {
                // Counted from the first attempt: failed addresses before it are part of
                // what the client waited for.
                ctx.stats.dc_connected(dc, start.elapsed());
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: timed out")),
        }
    }
    let stream = stream.ok_or_else(|| UpstreamError::Connect {
        dc,
        errors: errors.join("; "),
    })?;
    let leg = {
        let mut rng = rand::rng();
        obfs2::dc_header(&mut rng, tag, dc, fast)
    };
    Ok((stream, leg))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn dial_connects_with_nagle_off_and_carries_bytes_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (dialed, accepted) = tokio::join!(dial(addr), listener.accept());
        let (mut dialed, (mut accepted, _)) = (dialed.expect("dial"), accepted.expect("accept"));
        assert!(dialed.nodelay().expect("getsockopt"));
        dialed.write_all(b"header").await.expect("write");
        let mut got = [0u8; 6];
        accepted.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"header");
        accepted.write_all(b"reply").await.expect("write");
        let mut got = [0u8; 5];
        dialed.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"reply");
    }

    #[tokio::test]
    async fn dial_reports_a_refused_connection() {
        // A port that was just free: nothing listens there.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| l.local_addr())
            .expect("free port");
        let err = dial(addr).await.expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
