//! The DC leg: which addresses a DC id means, connecting, and the fresh obfuscated2 header.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::RelayContext;
use crate::proto::{
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
pub fn addresses(ctx: &RelayContext, dc: i16) -> Result<(i16, Vec<SocketAddr>), UpstreamError> {
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

/// Connects to DC `dc` (or the default DC) and builds a fresh DC-side header carrying `tag`;
/// the caller sends it (`DcHandshake::wire`) together with the client's first bytes, so the
/// DC gets one segment instead of two (TCP_NODELAY is on: two writes would be two packets).
/// With `fast` (the client's proxy→client key), the DC's replies come encrypted with the
/// client's keystream.
pub async fn connect(
    ctx: &RelayContext,
    tag: ProtoTag,
    dc: i16,
    fast: Option<&KeyIv>,
) -> Result<(TcpStream, DcHandshake), UpstreamError> {
    let (dc, addrs) = addresses(ctx, dc)?;
    let mut errors = Vec::new();
    let mut stream = None;
    let start = std::time::Instant::now();
    for addr in addrs {
        match tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(addr)).await {
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
    // Every relayed write is a whole message the DC is waiting for: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let leg = {
        let mut rng = rand::rng();
        obfs2::dc_header(&mut rng, tag, dc, fast)
    };
    Ok((stream, leg))
}
