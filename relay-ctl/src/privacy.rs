//! How much of a client's address the relay writes down: `[log] client_ips`.
//!
//! A seized or leaked relay must not hand over who used it, so log lines carry a client address
//! only through [`ip`] / [`addr`], which mask it as configured: `none` (a dash), `truncated`
//! (the /24 of an IPv4 address, the /48 of an IPv6 one; the default) or `full`. Ban and block
//! entries are the exception: an operator needs the exact address to lift a ban.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU8, Ordering},
};

use serde::Deserialize;

/// What log lines show of a client's address.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientIps {
    /// Nothing: `-`.
    None,
    /// The network only: `/24` for IPv4, `/48` for IPv6.
    #[default]
    Truncated,
    /// The whole address (and port).
    Full,
}

impl ClientIps {
    /// The configuration name.
    pub const fn name(self) -> &'static str {
        match self {
            ClientIps::None => "none",
            ClientIps::Truncated => "truncated",
            ClientIps::Full => "full",
        }
    }

    const fn from_u8(v: u8) -> ClientIps {
        match v {
            0 => ClientIps::None,
            2 => ClientIps::Full,
            _ => ClientIps::Truncated,
        }
    }

    const fn to_u8(self) -> u8 {
        match self {
            ClientIps::None => 0,
            ClientIps::Truncated => 1,
            ClientIps::Full => 2,
        }
    }
}

/// Process-wide setting, changed at start and on reload.
static MODE: AtomicU8 = AtomicU8::new(ClientIps::Truncated.to_u8());

/// Sets what log lines show of client addresses from now on.
pub fn set_client_ips(mode: ClientIps) {
    MODE.store(mode.to_u8(), Ordering::Relaxed);
}

/// The setting in force.
pub fn client_ips() -> ClientIps {
    ClientIps::from_u8(MODE.load(Ordering::Relaxed))
}

/// A client address for a log line, masked as `[log] client_ips` says.
#[derive(Clone, Copy, Debug)]
pub struct MaskedIp {
    ip: IpAddr,
    mode: ClientIps,
}

/// A client socket address for a log line: the port is shown only with `full`.
#[derive(Clone, Copy, Debug)]
pub struct MaskedAddr {
    addr: SocketAddr,
    mode: ClientIps,
}

/// `ip` masked with the setting in force.
pub fn ip(ip: IpAddr) -> MaskedIp {
    masked_ip(ip, client_ips())
}

/// `addr` masked with the setting in force.
pub fn addr(addr: SocketAddr) -> MaskedAddr {
    MaskedAddr {
        addr,
        mode: client_ips(),
    }
}

/// `ip` masked with `mode`.
pub fn masked_ip(ip: IpAddr, mode: ClientIps) -> MaskedIp {
    MaskedIp {
        ip: ip.to_canonical(),
        mode,
    }
}

fn truncate_v4(ip: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(ip.to_bits() & 0xffff_ff00)
}

fn truncate_v6(ip: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(ip.to_bits() & !((1u128 << 80) - 1))
}

impl fmt::Display for MaskedIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.mode, self.ip) {
            (ClientIps::None, _) => f.write_str("-"),
            (ClientIps::Truncated, IpAddr::V4(v4)) => write!(f, "{}/24", truncate_v4(v4)),
            (ClientIps::Truncated, IpAddr::V6(v6)) => write!(f, "{}/48", truncate_v6(v6)),
            (ClientIps::Full, ip) => ip.fmt(f),
        }
    }
}

impl fmt::Display for MaskedAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            ClientIps::Full => self.addr.fmt(f),
            mode => masked_ip(self.addr.ip(), mode).fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(ip: &str, mode: ClientIps) -> String {
        masked_ip(ip.parse().expect("test address"), mode).to_string()
    }

    #[test]
    fn truncation_keeps_only_the_network() {
        assert_eq!(show("198.18.7.42", ClientIps::Truncated), "198.18.7.0/24");
        assert_eq!(
            show("2001:db8:abcd:1234:5678::9", ClientIps::Truncated),
            "2001:db8:abcd::/48"
        );
        // IPv4-mapped IPv6 (a dual-stack listener) is shown as IPv4.
        assert_eq!(
            show("::ffff:203.0.113.77", ClientIps::Truncated),
            "203.0.113.0/24"
        );
        assert_eq!(show("198.18.7.42", ClientIps::None), "-");
        assert_eq!(show("2001:db8::1", ClientIps::None), "-");
        assert_eq!(show("198.18.7.42", ClientIps::Full), "198.18.7.42");
    }

    #[test]
    fn ports_only_in_full() {
        let a: SocketAddr = "198.18.7.42:51234".parse().expect("addr");
        let shown = |mode| MaskedAddr { addr: a, mode }.to_string();
        assert_eq!(shown(ClientIps::Truncated), "198.18.7.0/24");
        assert_eq!(shown(ClientIps::None), "-");
        assert_eq!(shown(ClientIps::Full), "198.18.7.42:51234");
    }

    #[test]
    fn names_parse() {
        #[derive(Deserialize)]
        struct T {
            v: ClientIps,
        }
        for mode in [ClientIps::None, ClientIps::Truncated, ClientIps::Full] {
            let t: T = toml::from_str(&format!("v = \"{}\"", mode.name())).expect("parse");
            assert_eq!(t.v, mode);
            assert_eq!(ClientIps::from_u8(mode.to_u8()), mode);
        }
    }
}
