//! A longest-prefix-match set in userspace, for the fallback when XDP is unavailable.
//!
//! Prefixes are grouped by length in hash sets; a lookup probes only the lengths present,
//! so a 100,000-entry feed of mostly /32s and a few /16s costs a handful of hash lookups.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

/// A set of IPv4 and IPv6 prefixes answering "is this address inside any of them?".
#[derive(Clone, Debug, Default)]
pub struct PrefixSet {
    v4: BTreeMap<u8, HashSet<u32>>,
    v6: BTreeMap<u8, HashSet<u128>>,
}

impl PrefixSet {
    /// Adds a prefix (host bits are ignored).
    pub fn insert(&mut self, net: IpNet) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                self.v4
                    .entry(len)
                    .or_default()
                    .insert(mask_v4(n.network().into(), len));
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                self.v6
                    .entry(len)
                    .or_default()
                    .insert(mask_v6(n.network().into(), len));
            }
        }
    }

    /// Removes a prefix; returns whether it was present.
    pub fn remove(&mut self, net: IpNet) -> bool {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                remove_from(&mut self.v4, len, mask_v4(n.network().into(), len))
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                remove_from(&mut self.v6, len, mask_v6(n.network().into(), len))
            }
        }
    }

    /// Whether `addr` falls inside any prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .any(|(&len, set)| set.contains(&mask_v4(a, len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .any(|(&len, set)| set.contains(&mask_v6(a, len)))
            }
        }
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.values().map(HashSet::len).sum::<usize>()
            + self.v6.values().map(HashSet::len).sum::<usize>()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_from<T: std::hash::Hash + Eq>(
    sets: &mut BTreeMap<u8, HashSet<T>>,
    len: u8,
    key: T,
) -> bool {
    let Some(set) = sets.get_mut(&len) else {
        return false;
    };
    let removed = set.remove(&key);
    if set.is_empty() {
        sets.remove(&len);
    }
    removed
}

fn mask_v4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask_v6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn longest_prefix_semantics() {
        let mut set = PrefixSet::default();
        set.insert(net("10.0.0.0/8"));
        set.insert(net("192.0.2.7/32"));
        set.insert(net("2001:db8::/32"));
        set.insert(net("0.0.0.0/0").trunc()); // harmless duplicate-free default route
        assert!(set.contains(ip("10.200.1.1")));
        assert!(set.contains(ip("192.0.2.7")));
        assert!(set.contains(ip("2001:db8:ffff::1")));
        assert!(!set.contains(ip("2001:db9::1")));
        assert!(set.remove(net("0.0.0.0/0")));
        assert!(!set.contains(ip("192.0.2.8")));
        assert!(!set.contains(ip("11.0.0.1")));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn remove_only_exact_prefix() {
        let mut set = PrefixSet::default();
        set.insert(net("10.0.0.0/8"));
        assert!(!set.remove(net("10.0.0.0/9")));
        assert!(set.remove(net("10.0.0.0/8")));
        assert!(set.is_empty());
        assert!(!set.contains(ip("10.0.0.1")));
    }
}
