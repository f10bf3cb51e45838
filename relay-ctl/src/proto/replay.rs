//! Anti-replay cache of handshake keys, bounded by a memory cap.
//!
//! A censor replays a captured handshake to see whether the server answers like a proxy; a key
//! seen before marks the connection as a replay, to be fronted rather than relayed. Insert only
//! keys of *authenticated* handshakes, or garbage probes would flush real entries.
//!
//! Entries are evicted oldest-first, and only when the cache is full: an entry lives as long
//! as memory allows. If the cap is too small to hold one timestamp window of handshakes, entries
//! younger than the window get evicted; [`ReplayCache::premature_evictions`] counts them so
//! the caller can warn that the cap should grow.

use std::collections::{HashSet, VecDeque};

use sha2::{Digest, Sha256};

/// Upper bound of the memory one entry costs: 16-byte key plus 8-byte time in the ring
/// (24 bytes), and in the hash set a 16-byte slot plus a control byte at up to 4 × 8/7 slots per
/// entry (≤ 78 bytes). The set is sized for twice the entries because FIFO deletion leaves
/// tombstones: a table more than half full would grow to clear them, a half-empty one rehashes
/// in place.
pub const ENTRY_COST: usize = 128;

/// A 16-byte handshake fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 16]);

impl ReplayKey {
    /// Key of an obfuscated2 header from its bytes `8..56`: a 16-byte SHA-256 digest, so the
    /// cache stores 16 bytes rather than 48 while still covering all of them.
    pub fn obfs2(middle: &[u8; 48]) -> ReplayKey {
        let d = Sha256::new()
            .chain_update(b"relay obfs2 replay")
            .chain_update(middle)
            .finalize();
        let mut k = [0; 16];
        k.copy_from_slice(&d[..16]);
        ReplayKey(k)
    }

    /// Key of a fake-TLS ClientHello: the first 16 bytes of its client random.
    pub fn tls(client_random: &[u8; 32]) -> ReplayKey {
        let mut k = [0; 16];
        k.copy_from_slice(&client_random[..16]);
        ReplayKey(k)
    }
}

/// FIFO-bounded set of [`ReplayKey`]s; all memory is allocated up front.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashSet<ReplayKey>,
    /// Insertion order with insertion time (unix seconds), oldest first.
    order: VecDeque<(ReplayKey, u64)>,
    capacity: usize,
    window_secs: u64,
    premature: u64,
}

impl ReplayCache {
    /// A cache using at most `memory_cap` bytes (at least one entry, so tiny caps take the
    /// tables' minimum size), meant to remember handshakes for at least `window_secs`.
    pub fn new(memory_cap: usize, window_secs: u64) -> ReplayCache {
        let capacity = (memory_cap / ENTRY_COST).max(1);
        ReplayCache {
            seen: HashSet::with_capacity(2 * capacity + 2),
            order: VecDeque::with_capacity(capacity),
            capacity,
            window_secs,
            premature: 0,
        }
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// How many entries were evicted before they were `window_secs` old (the cap is too small
    /// for the handshake rate).
    pub fn premature_evictions(&self) -> u64 {
        self.premature
    }

    /// Returns `true` if `key` was seen before (a replay); otherwise remembers it at `now`
    /// (unix seconds), evicting the oldest entry when full. O(1).
    pub fn check_and_insert(&mut self, key: ReplayKey, now: u64) -> bool {
        if self.seen.contains(&key) {
            return true;
        }
        if self.order.len() == self.capacity
            && let Some((old, at)) = self.order.pop_front()
        {
            self.seen.remove(&old);
            if now.saturating_sub(at) < self.window_secs {
                self.premature += 1;
            }
        }
        self.seen.insert(key);
        self.order.push_back((key, now));
        false
    }

    /// Upper estimate of the heap bytes held, given the set's capacity when it was created.
    #[cfg(test)]
    fn allocated_bytes(&self, set_capacity: usize) -> usize {
        // hashbrown: capacity = 7/8 of the buckets; each bucket is a slot plus a control byte.
        let buckets = set_capacity * 8 / 7 + 1;
        buckets * (size_of::<ReplayKey>() + 1)
            + 16
            + self.order.capacity() * size_of::<(ReplayKey, u64)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> ReplayKey {
        let mut r = [0; 32];
        r[..4].copy_from_slice(&i.to_le_bytes());
        ReplayKey::tls(&r)
    }

    #[test]
    fn detects_replays() {
        let mut c = ReplayCache::new(1 << 20, 120);
        assert!(!c.check_and_insert(key(1), 1000));
        assert!(c.check_and_insert(key(1), 1001));
        assert!(!c.check_and_insert(key(2), 1001));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn keys_cover_the_right_bytes() {
        let mut a = [7u8; 48];
        let k = ReplayKey::obfs2(&a);
        a[47] ^= 1;
        assert_ne!(ReplayKey::obfs2(&a), k);
        let mut r = [9u8; 32];
        let t = ReplayKey::tls(&r);
        r[31] ^= 1; // bytes 16.. carry no identity (the timestamp XOR lives there)
        assert_eq!(ReplayKey::tls(&r), t);
        r[0] ^= 1;
        assert_ne!(ReplayKey::tls(&r), t);
    }

    #[test]
    fn evicts_oldest_first() {
        let mut c = ReplayCache::new(3 * ENTRY_COST, 10);
        assert_eq!(c.capacity(), 3);
        for i in 0..3 {
            assert!(!c.check_and_insert(key(i), 100));
        }
        assert!(!c.check_and_insert(key(3), 200)); // evicts key 0, which is past the window
        assert_eq!(c.premature_evictions(), 0);
        assert!(!c.check_and_insert(key(0), 200)); // forgotten: no longer a replay
        assert!(c.check_and_insert(key(2), 200));
        assert!(c.check_and_insert(key(3), 200));
        assert_eq!(c.len(), 3);
        // Order is now 2 (t=100), 3 (t=200), 0 (t=200).
        assert!(!c.check_and_insert(key(9), 205)); // evicts key 2, 105 s old
        assert_eq!(c.premature_evictions(), 0);
        assert!(!c.check_and_insert(key(10), 205)); // evicts key 3, 5 s old: too young
        assert_eq!(c.premature_evictions(), 1);
        assert!(c.check_and_insert(key(0), 205));
        assert!(!c.check_and_insert(key(2), 205));
    }

    #[test]
    fn memory_stays_within_cap() {
        for cap in [2000, 64 * 1024, 4 << 20] {
            let mut c = ReplayCache::new(cap, 120);
            let (set, ring) = (c.seen.capacity(), c.order.capacity());
            for i in 0..(c.capacity() as u32 * 5 + 10) {
                c.check_and_insert(key(i), u64::from(i));
            }
            assert_eq!(c.len(), c.capacity());
            // Tombstones lower the set's reported capacity until it rehashes in place; it must
            // never grow past what was allocated up front.
            assert!(c.seen.capacity() <= set, "set grew");
            assert_eq!(c.order.capacity(), ring, "ring grew");
            let used = c.allocated_bytes(set);
            assert!(used <= cap, "cap {cap}: {used} bytes");
        }
        // Tiny caps still hold one entry (hash tables have a small minimum size).
        let mut one = ReplayCache::new(0, 120);
        assert_eq!(one.capacity(), 1);
        assert!(!one.check_and_insert(key(1), 0));
        assert!(!one.check_and_insert(key(2), 0));
        assert!(!one.check_and_insert(key(1), 0));
    }
}
