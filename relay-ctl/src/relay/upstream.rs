//! The DC leg: which addresses a DC id means, connecting (directly or through a SOCKS5
//! proxy), and the fresh obfuscated2 header.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

use super::RelayContext;
use relay_proto::{
    ProtoTag,
    dc::{IpFamily, dc_addrs},
    obfs2::{self, DcHandshake, KeyIv},
    socks5::{self, Credentials, Phase, Progress, Socks5Error},
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

/// Why `[upstream] socks5` could not be put to use.
#[derive(Debug, thiserror::Error)]
pub enum Socks5ConfigError {
    /// The password file could not be read.
    #[error("reading the SOCKS5 password file {path}: {source}")]
    PasswordFile {
        /// `socks5_password_file`.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// The username or password cannot be sent (RFC 1929 lengths).
    #[error("SOCKS5 credentials from {path}: {source}")]
    Credentials {
        /// `socks5_password_file`.
        path: PathBuf,
        /// What is wrong with them.
        source: Socks5Error,
    },
}

/// `[upstream] socks5`: the proxy DC connections go through, with its credentials read.
#[derive(Clone, Debug)]
pub struct Socks5Upstream {
    /// `host:port`, resolved at each connection (a name may move).
    pub server: String,
    /// RFC 1929 username/password, when configured.
    pub credentials: Option<Credentials>,
}

impl Socks5Upstream {
    /// The configured proxy, with the password read from its file; `None` without
    /// `[upstream] socks5`. Called while still privileged: the file may be readable by root
    /// only.
    pub fn read(
        config: &crate::config::Upstream,
    ) -> Result<Option<Socks5Upstream>, Socks5ConfigError> {
        let Some(server) = &config.socks5 else {
            return Ok(None);
        };
        let credentials = match (&config.socks5_username, &config.socks5_password_file) {
            (Some(username), Some(path)) => {
                let password = read_password(path)?;
                Some(
                    Credentials::new(username.as_bytes(), password).map_err(|source| {
                        Socks5ConfigError::Credentials {
                            path: path.clone(),
                            source,
                        }
                    })?,
                )
            }
            // Config validation refuses one without the other.
            _ => None,
        };
        Ok(Some(Socks5Upstream {
            server: server.clone(),
            credentials,
        }))
    }
}

/// The file's content without its trailing newline (`\n` or `\r\n`); other bytes are kept,
/// since a password may contain spaces.
fn read_password(path: &Path) -> Result<Vec<u8>, Socks5ConfigError> {
    let mut bytes = std::fs::read(path).map_err(|source| Socks5ConfigError::PasswordFile {
        path: path.to_owned(),
        source,
    })?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// Why a DC could not be reached through the SOCKS5 proxy, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum Socks5DialError {
    /// The proxy's name did not resolve.
    #[error("SOCKS5 proxy {proxy}: resolving failed: {source}")]
    Resolve {
        /// `[upstream] socks5`.
        proxy: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// No TCP connection to the proxy.
    #[error("SOCKS5 proxy {proxy}: connecting failed: {source}")]
    Connect {
        /// The proxy address tried.
        proxy: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The connection to the proxy failed during a step of the dialogue.
    #[error("SOCKS5 proxy {proxy}: {phase} failed: {source}")]
    Io {
        /// The proxy.
        proxy: SocketAddr,
        /// The step.
        phase: Phase,
        /// The I/O error (an unexpected EOF when the proxy hung up).
        source: std::io::Error,
    },
    /// The proxy answered wrongly or refused.
    #[error("SOCKS5 proxy {proxy} {source}")]
    Protocol {
        /// The proxy.
        proxy: SocketAddr,
        /// What it answered.
        source: Socks5Error,
    },
}

/// Opens a tunnel to `target` through the SOCKS5 proxy: the same socket options as [`dial`],
/// then the dialogue, reading exactly each reply so the first byte after it is the DC's.
/// Public for `relay-ctl doctor`, which checks the proxy the way the relay uses it.
pub async fn dial_socks5(
    proxy: &Socks5Upstream,
    target: SocketAddr,
) -> Result<TcpStream, Socks5DialError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(proxy.server.as_str())
        .await
        .map_err(|source| Socks5DialError::Resolve {
            proxy: proxy.server.clone(),
            source,
        })?
        .collect();
    let mut last = None;
    let mut connected = None;
    for addr in addrs {
        match dial(addr).await {
            Ok(s) => {
                connected = Some((s, addr));
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some((mut stream, addr)) = connected else {
        return Err(Socks5DialError::Connect {
            proxy: proxy.server.clone(),
            source: last.unwrap_or_else(|| std::io::Error::other("no address")),
        });
    };
    let (mut client, mut send, mut need) = socks5::Client::start(target, proxy.credentials.clone());
    let io = |phase, source| Socks5DialError::Io {
        proxy: addr,
        phase,
        source,
    };
    let mut reply = Vec::with_capacity(32);
    loop {
        let phase = client.phase();
        if !send.is_empty() {
            stream.write_all(&send).await.map_err(|e| io(phase, e))?;
            send.clear();
        }
        let start = reply.len();
        reply.resize(start + need, 0);
        stream
            .read_exact(&mut reply[start..])
            .await
            .map_err(|e| io(phase, e))?;
        match client
            .advance(&reply)
            .map_err(|source| Socks5DialError::Protocol {
                proxy: addr,
                source,
            })? {
            Progress::NeedMore(n) => need = n,
            Progress::Send { bytes, need: next } => {
                (send, need) = (bytes, next);
                reply.clear();
            }
            Progress::Connected => return Ok(stream),
        }
    }
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

/// Connects to DC `dc` (or the default DC), through `[upstream] socks5` when set, and builds
/// a fresh DC-side header carrying `tag`; the caller sends it (`DcHandshake::wire`) together
/// with the client's first bytes, so the DC gets one segment instead of two (TCP_NODELAY is
/// on: two writes would be two packets). Through SOCKS5 that write follows the CONNECT reply.
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
        let attempt = async {
            match &ctx.socks5 {
                Some(proxy) => dial_socks5(proxy, addr).await.map_err(|e| e.to_string()),
                None => dial(addr).await.map_err(|e| format!("{addr}: {e}")),
            }
        };
        match tokio::time::timeout(ctx.connect_timeout, attempt).await {
            Ok(Ok(s)) => {
                // Counted from the first attempt: failed addresses before it are part of
                // what the client waited for.
                ctx.stats.dc_connected(dc, start.elapsed());
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push(match &ctx.socks5 {
                Some(proxy) => format!("{addr} through SOCKS5 proxy {}: timed out", proxy.server),
                None => format!("{addr}: timed out"),
            }),
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

    #[test]
    fn the_password_file_loses_only_its_trailing_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, want) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw", "pw"),
            (" two words \n", " two words "),
            ("pw\n\n", "pw\n"),
        ] {
            let path = dir.path().join("pass");
            std::fs::write(&path, text).expect("write");
            assert_eq!(
                read_password(&path).expect("read"),
                want.as_bytes(),
                "{text:?}"
            );
        }
        let missing = read_password(&dir.path().join("absent")).expect_err("absent");
        assert!(
            missing.to_string().contains("SOCKS5 password file"),
            "{missing}"
        );
    }

    #[test]
    fn an_empty_password_is_refused_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pass");
        std::fs::write(&path, "\n").expect("write");
        let config = crate::config::Upstream {
            socks5: Some("127.0.0.1:1080".to_owned()),
            socks5_username: Some("u".to_owned()),
            socks5_password_file: Some(path),
            ..crate::config::Upstream::default()
        };
        let err = Socks5Upstream::read(&config).expect_err("empty");
        assert!(
            err.to_string().contains("password must be 1 to 255 bytes"),
            "{err}"
        );
        let none = crate::config::Upstream::default();
        assert!(Socks5Upstream::read(&none).expect("no proxy").is_none());
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
