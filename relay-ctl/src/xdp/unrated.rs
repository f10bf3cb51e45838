//! The program's marks on sources it passed without rating (IPv6 extension headers, IPv4
//! fragments): read at accept to decide whether userspace must apply the SYN limit itself.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData};
use relay_common::maps::V6_LIMIT_PREFIX_BYTES;

/// How long a mark keeps its source under the userspace limit: longer than any SYN can take to
/// become an accepted connection (SYN-ACK retransmissions end after about a minute with the
/// default `tcp_synack_retries`, and a SYN cookie is honoured for about two).
pub const UNRATED_WINDOW_NS: u64 = 10 * 60 * 1_000_000_000;

/// Handles on `UNRATED_V4`, `UNRATED_V6` and `UNRATED_ANY`.
pub struct UnratedMarks {
    pub(super) v4: HashMap<MapData, [u8; 4], u64>,
    pub(super) v6: HashMap<MapData, [u8; V6_LIMIT_PREFIX_BYTES], u64>,
    pub(super) any: Array<MapData, u64>,
}

impl UnratedMarks {
    /// Whether a connection from `source` accepted at `now_ns` may have come from a SYN the
    /// program did not rate: the source (IPv6: its /64) was marked within
    /// [`UNRATED_WINDOW_NS`], or an unattributable packet was. A map that cannot be read
    /// counts as marked: the userspace limit never refuses a source within its budget.
    pub fn unrated(&self, source: IpAddr, now_ns: u64) -> bool {
        let own = match source.to_canonical() {
            IpAddr::V4(a) => self.v4.get(&a.octets(), 0),
            IpAddr::V6(a) => self.v6.get(&v6_prefix(a), 0),
        };
        match own {
            Ok(at) if recent(at, now_ns) => return true,
            Ok(_) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(_) => return true,
        }
        match self.any.get(&0, 0) {
            Ok(at) => recent(at, now_ns),
            Err(_) => true,
        }
    }

    /// Removes marks older than [`UNRATED_WINDOW_NS`]; returns how many went.
    pub fn forget_old(&mut self, now_ns: u64) -> usize {
        fn sweep<K: aya::Pod>(map: &mut HashMap<MapData, K, u64>, now_ns: u64) -> usize {
            let old: Vec<K> = map
                .iter()
                .filter_map(Result::ok)
                .filter(|(_, at)| now_ns.saturating_sub(*at) >= UNRATED_WINDOW_NS)
                .map(|(k, _)| k)
                .collect();
            old.iter().filter(|k| map.remove(k).is_ok()).count()
        }
        sweep(&mut self.v4, now_ns) + sweep(&mut self.v6, now_ns)
    }
}

/// Whether a mark made at `at` still holds at `now_ns`. Zero, the array's initial value, is
/// no mark.
fn recent(at: u64, now_ns: u64) -> bool {
    at != 0 && now_ns.saturating_sub(at) < UNRATED_WINDOW_NS
}

fn v6_prefix(addr: std::net::Ipv6Addr) -> [u8; V6_LIMIT_PREFIX_BYTES] {
    let mut prefix = [0u8; V6_LIMIT_PREFIX_BYTES];
    prefix.copy_from_slice(&addr.octets()[..V6_LIMIT_PREFIX_BYTES]);
    prefix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_hold_for_the_window() {
        let at = 5 * UNRATED_WINDOW_NS;
        assert!(recent(at, at));
        assert!(recent(at, at + UNRATED_WINDOW_NS - 1));
        assert!(!recent(at, at + UNRATED_WINDOW_NS));
        // A mark the kernel made after userspace read its clock.
        assert!(recent(at + 1, at));
        // Never marked, even right after boot.
        assert!(!recent(0, 1));
    }
}
