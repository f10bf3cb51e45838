//! Per-source hints: which user a source matched last, so its next handshake tries that
//! user's secret first.
//!
//! A handshake names no user: the relay finds the user by trying every secret (one SHA-256
//! and one AES block per user for obfuscated2, a full HMAC over the ClientHello for fake
//! TLS). With many users that makes every handshake cost O(users). A client opens several
//! connections from one address within seconds, and they all carry the same secret, so
//! remembering the last match per source makes the common case one try. A wrong or stale hint
//! costs one extra try and changes no outcome: the hinted user is only tried first.
//!
//! Privacy: an entry ties an address to a user, so it lives only [`HINT_TTL`] after its last
//! successful handshake, is swept every second by the daemon, is never written anywhere, and
//! the table is bounded ([`MAX_SOURCES`]); see the operator guide's "Kept in memory only".

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a hint outlives the handshake that set it.
pub const HINT_TTL: Duration = Duration::from_secs(120);

/// Sources remembered at most; beyond it new sources get no hint until a sweep frees room.
pub const MAX_SOURCES: usize = 16_384;

/// A source as hinted: the IPv4 address, or the /64 of an IPv6 address (one host's privacy
/// addresses rotate within its /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => Source::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Hint {
    user: u32,
    expires: Instant,
}

/// The table of hints: sources to the user they last matched.
#[derive(Debug)]
pub struct Hints {
    map: Mutex<HashMap<Source, Hint>>,
    ttl: Duration,
    max: usize,
}

impl Default for Hints {
    fn default() -> Self {
        Hints::new(HINT_TTL, MAX_SOURCES)
    }
}

impl Hints {
    /// A table keeping hints for `ttl`, at most `max` sources.
    pub fn new(ttl: Duration, max: usize) -> Hints {
        Hints {
            map: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Hint>> {
        // The map stays consistent whatever panicked while holding it: every operation is one
        // insert or remove.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user `ip`'s source matched last, if that was less than the TTL ago.
    pub fn get(&self, ip: IpAddr, now: Instant) -> Option<usize> {
        let hint = *self.lock().get(&Source::of(ip))?;
        (hint.expires > now).then_some(hint.user as usize)
    }

    /// Records that `ip` just matched `user`.
    pub fn set(&self, ip: IpAddr, user: usize, now: Instant) {
        let Ok(user) = u32::try_from(user) else {
            return;
        };
        let source = Source::of(ip);
        let hint = Hint {
            user,
            expires: now + self.ttl,
        };
        let mut map = self.lock();
        if map.len() >= self.max && !map.contains_key(&source) {
            // Full: make room from expired entries; if none, this source goes unhinted (a
            // hint is an optimization, and under a flood of sources not worth an eviction).
            map.retain(|_, h| h.expires > now);
            if map.len() >= self.max {
                return;
            }
        }
        map.insert(source, hint);
    }

    /// Forgets hints whose TTL has passed.
    pub fn sweep(&self, now: Instant) {
        self.lock().retain(|_, h| h.expires > now);
    }

    /// Forgets every hint (the user list changed: indices mean other users now).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Sources currently remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
    }

    #[test]
    fn remembers_for_the_ttl_only() {
        let hints = Hints::new(Duration::from_secs(120), 10);
        let t = Instant::now();
        assert_eq!(hints.get(v4(1), t), None);
        hints.set(v4(1), 7, t);
        assert_eq!(hints.get(v4(1), t + Duration::from_secs(119)), Some(7));
        assert_eq!(hints.get(v4(1), t + Duration::from_secs(120)), None);
        assert_eq!(hints.get(v4(2), t), None);
        hints.set(v4(1), 3, t + Duration::from_secs(60));
        assert_eq!(hints.get(v4(1), t + Duration::from_secs(150)), Some(3));
        hints.sweep(t + Duration::from_secs(179));
        assert_eq!(hints.len(), 1);
        hints.sweep(t + Duration::from_secs(180));
        assert!(hints.is_empty(), "swept once expired");
    }

    #[test]
    fn ipv6_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let hints = Hints::default();
        let t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        hints.set(a, 5, t);
        assert_eq!(hints.get(b, t), Some(5));
        assert_eq!(hints.get(other, t), None);
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 4).to_ipv6_mapped());
        hints.set(mapped, 9, t);
        assert_eq!(hints.get(v4(4), t), Some(9));
        assert_eq!(hints.get(IpAddr::V6(Ipv6Addr::LOCALHOST), t), None);
    }

    #[test]
    fn bounded_and_expired_entries_make_room() {
        let hints = Hints::new(Duration::from_secs(10), 3);
        let t = Instant::now();
        for i in 0..3 {
            hints.set(v4(i), usize::from(i), t);
        }
        hints.set(v4(9), 9, t);
        assert_eq!(hints.len(), 3);
        assert_eq!(
            hints.get(v4(9), t),
            None,
            "full: the new source is not hinted"
        );
        hints.set(v4(0), 4, t);
        assert_eq!(hints.get(v4(0), t), Some(4), "a known source is updated");
        let later = t + Duration::from_secs(11);
        hints.set(v4(9), 9, later);
        assert_eq!(hints.get(v4(9), later), Some(9));
        assert_eq!(hints.len(), 1, "expired entries went to make room");
        hints.clear();
        assert!(hints.is_empty());
    }
}
