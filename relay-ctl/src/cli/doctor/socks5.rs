//! `socks5`: the proxy `[upstream] socks5` names answers, accepts relay's credentials and
//! opens a tunnel to the default DC, exactly as the relay dials through it.

use std::{net::SocketAddr, time::Instant};

use relay_proto::{
    dc::{IpFamily, dc_addrs},
    socks5::Socks5Error,
};

use super::{Check, STEP_TIMEOUT, split_target};
use crate::{
    config::Config,
    relay::upstream::{Socks5DialError, Socks5Upstream, dial_socks5},
};

const NAME: &str = "socks5";

/// Checks the SOCKS5 proxy; skipped without one, and with `offline` when it is not on
/// loopback.
pub async fn check(config: &Config, offline: bool) -> Check {
    let proxy = match Socks5Upstream::read(&config.upstream) {
        Ok(Some(proxy)) => proxy,
        Ok(None) => return Check::skip(NAME, "[upstream] socks5 unset"),
        Err(e) => {
            return Check::fail(
                NAME,
                e.to_string(),
                "make socks5_password_file readable by root and hold the password on its \
                 first line",
            );
        }
    };
    if offline
        && !split_target(&proxy.server).is_some_and(|(host, _)| super::is_loopback_host(host))
    {
        return Check::skip(
            NAME,
            format!("--offline: {} is not on loopback", proxy.server),
        );
    }
    let Some((dc, target)) = default_dc_addr(config) else {
        return Check::skip(NAME, "no address for the default DC to connect to");
    };
    let start = Instant::now();
    match tokio::time::timeout(STEP_TIMEOUT * 2, dial_socks5(&proxy, target)).await {
        Ok(Ok(_tunnel)) => Check::ok(
            NAME,
            format!(
                "{} opened a tunnel to DC {dc} at {target} in {} ms",
                proxy.server,
                start.elapsed().as_millis()
            ),
        ),
        Ok(Err(e)) => {
            let fix = fix_for(&e);
            Check::fail(NAME, e.to_string(), fix)
        }
        Err(_) => Check::fail(
            NAME,
            format!(
                "{} did not open a tunnel to DC {dc} at {target} within {} s",
                proxy.server,
                (STEP_TIMEOUT * 2).as_secs()
            ),
            "check that the SOCKS5 proxy reaches Telegram, and its load",
        ),
    }
}

/// The default DC's first address: `[upstream.dc]` first, else the built-in IPv4 one.
fn default_dc_addr(config: &Config) -> Option<(i16, SocketAddr)> {
    let id = config.upstream.default_dc;
    let addr = match config.upstream.dc.get(&id) {
        Some(addrs) => addrs.first().copied(),
        None => dc_addrs(id, IpFamily::V4).first().copied(),
    }?;
    Some((id, addr))
}

/// What to do about each way the dialogue fails.
fn fix_for(e: &Socks5DialError) -> &'static str {
    match e {
        Socks5DialError::Resolve { .. } | Socks5DialError::Connect { .. } => {
            "start the SOCKS5 proxy, or correct [upstream] socks5"
        }
        Socks5DialError::Io { .. } => {
            "the proxy hung up mid-dialogue: check its log and that it speaks SOCKS5"
        }
        Socks5DialError::Protocol { source, .. } => match source {
            Socks5Error::AuthRefused(_) | Socks5Error::NoAcceptableMethod { .. } => {
                "set socks5_username and socks5_password_file to a user the proxy accepts"
            }
            Socks5Error::ConnectRefused { .. } => {
                "let the proxy CONNECT to Telegram's DC addresses (its rules, or its own route)"
            }
            _ => "check that [upstream] socks5 names a SOCKS5 proxy",
        },
    }
}
