//! The keys a source is limited, banned and counted under: its own (an IPv4 address, an IPv6
//! /64, as in the kernel maps) and its network's (an IPv4 /24, an IPv6 /48).

use std::net::IpAddr;

use relay_common::maps::V6_LIMIT_PREFIX_BYTES;

/// Limiter and ban key: an IPv4 /32 or an IPv6 /64, as in the kernel maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// An IPv6 /64.
    V6([u8; V6_LIMIT_PREFIX_BYTES]),
}

impl From<IpAddr> for SourceKey {
    fn from(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => SourceKey::V4(a.octets()),
            IpAddr::V6(a) => {
                let mut prefix = [0u8; V6_LIMIT_PREFIX_BYTES];
                prefix.copy_from_slice(&a.octets()[..V6_LIMIT_PREFIX_BYTES]);
                SourceKey::V6(prefix)
            }
        }
    }
}

/// The coarser key of the misuse detector and of prefix bans: an IPv4 /24 or an IPv6 /48, the
/// networks one operator commonly holds, so many addresses of one prober count together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrefixKey {
    /// The first three bytes of an IPv4 address.
    V4([u8; 3]),
    /// The first six bytes of an IPv6 address.
    V6([u8; 6]),
}

impl PrefixKey {
    /// Prefix length of an IPv4 key.
    pub const V4_LEN: u8 = 24;
    /// Prefix length of an IPv6 key.
    pub const V6_LEN: u8 = 48;

    /// The network this key stands for.
    pub fn net(self) -> ipnet::IpNet {
        match self {
            PrefixKey::V4([a, b, c]) => ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(a, b, c, 0), Self::V4_LEN)
                    .unwrap_or_default(),
            ),
            PrefixKey::V6(bytes) => {
                let mut octets = [0u8; 16];
                octets[..6].copy_from_slice(&bytes);
                ipnet::IpNet::V6(
                    ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(octets), Self::V6_LEN)
                        .unwrap_or_default(),
                )
            }
        }
    }

    /// The key of `net` if it is exactly an IPv4 /24 or an IPv6 /48 (host bits ignored).
    pub fn of_net(net: ipnet::IpNet) -> Option<PrefixKey> {
        let len = match net {
            ipnet::IpNet::V4(_) => Self::V4_LEN,
            ipnet::IpNet::V6(_) => Self::V6_LEN,
        };
        (net.prefix_len() == len).then(|| PrefixKey::from(net.addr()))
    }
}

impl From<SourceKey> for PrefixKey {
    fn from(source: SourceKey) -> Self {
        match source {
            SourceKey::V4([a, b, c, _]) => PrefixKey::V4([a, b, c]),
            SourceKey::V6(p) => PrefixKey::V6([p[0], p[1], p[2], p[3], p[4], p[5]]),
        }
    }
}

impl From<IpAddr> for PrefixKey {
    fn from(addr: IpAddr) -> Self {
        PrefixKey::from(SourceKey::from(addr.to_canonical()))
    }
}
