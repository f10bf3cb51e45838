//! `relay-ctl link` and `relay-ctl secret new`.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context as _, bail};

use crate::{config::Config, users};

/// QR codes to make of each mode's `tg://` link besides printing it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Qr<'a> {
    /// Print it as a QR code on the terminal after the links (`--qr`).
    pub terminal: bool,
    /// Write it as `<user>-<mode>.png` into this directory (`--qr-png`).
    pub png_dir: Option<&'a Path>,
}

/// Prints `tg://` and `https://t.me` links for every enabled mode of every (or one) user,
/// with the QR codes `qr` asks for.
pub fn run(
    config_path: Option<&Path>,
    user: Option<&str>,
    host: Option<&str>,
    qr: Qr<'_>,
) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    let users = match users::configured(&config) {
        Some(users) => users,
        None => {
            let state = super::open_state_dir(&config)?;
            users::resolve(&config, &state)
                .context("resolving users")?
                .0
        }
    };
    let host = match host
        .map(str::to_owned)
        .or_else(|| config.server.public_host.clone())
    {
        Some(h) => h,
        None => guess_host(&config).context(
            "no public host: pass --host, or set [server] public_host in the configuration",
        )?,
    };
    let port = config.server.listen[0].port();
    let mut printed = 0;
    for u in users
        .iter()
        .filter(|u| user.is_none_or(|name| name == u.name))
    {
        println!("# user {}", u.name);
        for link in relay_proto::links(
            &host,
            port,
            &u.secret,
            config.server.modes,
            &config.tls.domain,
        ) {
            println!("{:<7} {}", link.mode.name(), link.tg);
            println!("{:<7} {}", "", link.https);
            if qr.terminal {
                println!("{}", super::qr::terminal(&link.tg)?);
            }
            if let Some(dir) = qr.png_dir {
                let name = format!("{}-{}", u.name, link.mode.name());
                let path = super::qr::write_png(dir, &name, &link.tg)?;
                eprintln!("wrote {}", path.display());
            }
        }
        printed += 1;
    }
    if printed == 0 {
        bail!("no user named {:?}", user.unwrap_or_default());
    }
    Ok(())
}

/// The host for links when none is configured: the first listen address if it is specific,
/// else the first global address of this host.
pub fn guess_host(config: &Config) -> anyhow::Result<String> {
    let first: SocketAddr = config.server.listen[0];
    if !first.ip().is_unspecified() {
        return Ok(first.ip().to_string());
    }
    let addrs = nix::ifaddrs::getifaddrs().context("listing interfaces")?;
    for ifa in addrs {
        let Some(ip) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in().map(|s| std::net::IpAddr::V4(s.ip())))
        else {
            continue;
        };
        if !ip.is_loopback() && !ip.is_unspecified() {
            return Ok(ip.to_string());
        }
    }
    bail!("this host has no non-loopback IPv4 address")
}

/// Prints a fresh random secret (32 hex digits).
pub fn new_secret() {
    println!("{}", relay_proto::Secret::random().to_hex());
}
