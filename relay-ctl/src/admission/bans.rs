//! Bans as the operator sees them: of an address or of a misuse prefix, with reason, action
//! and expiry.

use std::{fmt, net::IpAddr, time::Duration};

use relay_common::{BanAction, BanEntry, BanReason};

use super::keys::PrefixKey;

/// What a ban covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanTarget {
    /// An address (an IPv6 ban covers its /64).
    Addr(IpAddr),
    /// A misuse prefix: an IPv4 /24 or IPv6 /48.
    Prefix(PrefixKey),
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTarget::Addr(addr) => addr.fmt(f),
            BanTarget::Prefix(prefix) => prefix.net().fmt(f),
        }
    }
}

/// Why text is not a ban target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanTargetError {
    /// Neither an address nor a prefix.
    #[error("`{0}` is neither an IP address nor a prefix")]
    NotAnAddress(String),
    /// A prefix of a length relay does not ban.
    #[error("`{0}`: prefix bans are IPv4 /24 or IPv6 /48")]
    PrefixLength(String),
}

impl std::str::FromStr for BanTarget {
    type Err = BanTargetError;

    /// An address, or an IPv4 /24 or IPv6 /48 (`198.51.100.0/24`, `2001:db8:1::/48`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(BanTarget::Addr(addr.to_canonical()));
        }
        let net = s
            .parse::<ipnet::IpNet>()
            .map_err(|_| BanTargetError::NotAnAddress(s.to_owned()))?;
        PrefixKey::of_net(net)
            .map(BanTarget::Prefix)
            .ok_or_else(|| BanTargetError::PrefixLength(s.to_owned()))
    }
}

/// A ban as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    /// What was banned.
    pub target: BanTarget,
    /// Why.
    pub reason: BanReason,
    /// Whether the source is dropped or fronted.
    pub action: BanAction,
    /// CLOCK_MONOTONIC expiry in ns, [`BanEntry::NEVER`] for permanent.
    pub expires_ns: u64,
    /// The count that crossed the threshold (0 for operator bans).
    pub count: u32,
}

impl BanRecord {
    /// Time left, `None` for a permanent ban.
    pub fn remaining(&self, now_ns: u64) -> Option<Duration> {
        (self.expires_ns != BanEntry::NEVER)
            .then(|| Duration::from_nanos(self.expires_ns.saturating_sub(now_ns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_targets_parse_addresses_and_misuse_prefixes_only() {
        let parse = |s: &str| s.parse::<BanTarget>();
        assert_eq!(
            parse("198.18.0.0/24").map(|t| t.to_string()),
            Ok("198.18.0.0/24".to_owned())
        );
        assert_eq!(
            parse("2001:db8:1:2::/48").map(|t| t.to_string()),
            Ok("2001:db8:1::/48".to_owned())
        );
        assert_eq!(
            parse("::ffff:198.18.0.1"),
            Ok(BanTarget::Addr("198.18.0.1".parse().expect("ip")))
        );
        assert!(parse("198.18.0.0/16").is_err());
        assert!(parse("2001:db8::/64").is_err());
        assert!(parse("banana").is_err());
    }
}
