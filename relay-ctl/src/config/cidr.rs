//! Addresses and CIDRs as operators write them in `[blocklist]` and `[allowlist]`.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// An address or CIDR as operators write them: `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`.
/// Host bits are cleared, so `10.1.2.3/8` means `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub IpNet);

/// Why text is not an address or CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Has a `/` but is not a network.
    #[error("invalid CIDR `{0}` (expected e.g. 192.0.2.0/24 or 2001:db8::/32)")]
    Network(String),
    /// Not an address.
    #[error("invalid address `{0}` (expected an IPv4/IPv6 address or CIDR)")]
    Address(String),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains('/') {
            s.parse::<IpNet>()
                .map(|net| Cidr(net.trunc()))
                .map_err(|_| CidrError::Network(s.to_owned()))
        } else {
            s.parse::<IpAddr>()
                .map(|ip| Cidr(IpNet::from(ip)))
                .map_err(|_| CidrError::Address(s.to_owned()))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Cidr;
    use crate::config::tests::{expect_invalid, parse};

    #[test]
    fn cidrs_and_addresses_are_normalised() {
        let config = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[blocklist]\ncidrs = [\"10.1.2.3/8\", \"192.0.2.7\", \"2001:db8::1/32\"]\n",
        )
        .expect("valid");
        let got: Vec<String> = config.blocklist.cidrs.iter().map(Cidr::to_string).collect();
        assert_eq!(got, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
    }

    #[test]
    fn bad_cidr_names_line_and_value() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[blocklist]\ncidrs = [\"10.0.0.0/33\"]\n",
            5,
            "10.0.0.0/33",
        );
    }
}
