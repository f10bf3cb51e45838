//! One generation of the replay memory: a Bloom filter over a keyed hash of replay keys.
//!
//! The bit positions of a key come from AES-128 under a random key of this generation: an
//! attacker who does not know it cannot choose replay keys that land on the same bits (to fill
//! the filter, or to make a genuine client's handshake look like a replay).

use aes::{
    Aes128, Block,
    cipher::{BlockEncrypt as _, KeyInit as _},
};

use super::ReplayKey;

/// Filter bits per key the generation is sized for.
pub const BITS_PER_KEY: u64 = 40;

/// Bits set and tested per key: `BITS_PER_KEY × ln 2`, rounded, the count that minimises the
/// false-positive rate for that size.
pub const PROBES: u32 = 28;

/// Bytes of filter a generation sized for `keys` keys takes.
pub fn bytes_for(keys: u64) -> usize {
    usize::try_from(words_for(keys) * 8).unwrap_or(usize::MAX)
}

fn words_for(keys: u64) -> u64 {
    keys.max(1).saturating_mul(BITS_PER_KEY).div_ceil(64)
}

/// Chance that a key never inserted tests positive in one generation holding `keys` keys in
/// `bits` bits with `probes` probes: `(1 - e^(-probes·keys/bits))^probes`.
pub fn false_positive_rate(keys: u64, bits: u64, probes: u32) -> f64 {
    let fill = 1.0 - (-(f64::from(probes) * keys as f64) / bits.max(1) as f64).exp();
    fill.powi(i32::try_from(probes).unwrap_or(i32::MAX))
}

/// A Bloom filter of replay keys with where its keys sit in time and in the stream of
/// remembered handshakes.
#[derive(Clone)]
pub struct Generation {
    /// Sequence number: generations are numbered in the order they start.
    pub seq: u64,
    /// Keys this generation is sized for; it is full when it holds that many.
    pub capacity: u64,
    /// Keys inserted.
    pub len: u64,
    /// Handshakes remembered before this generation started (its place in the stream).
    pub start_pos: u64,
    /// Unix time of the first key (the start time while empty).
    pub first_unix: u64,
    /// Unix time of the latest key.
    pub last_unix: u64,
    hash_key: [u8; 16],
    cipher: Aes128,
    probes: u32,
    bits: Vec<u64>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hash key.
        f.debug_struct("Generation")
            .field("seq", &self.seq)
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .field("start_pos", &self.start_pos)
            .field("first_unix", &self.first_unix)
            .field("last_unix", &self.last_unix)
            .field("probes", &self.probes)
            .field("bytes", &(self.bits.len() * 8))
            .finish()
    }
}

/// The parts a generation is stored as (see [`Generation::parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// [`Generation::seq`].
    pub seq: u64,
    /// [`Generation::capacity`].
    pub capacity: u64,
    /// [`Generation::len`].
    pub len: u64,
    /// [`Generation::start_pos`].
    pub start_pos: u64,
    /// [`Generation::first_unix`].
    pub first_unix: u64,
    /// [`Generation::last_unix`].
    pub last_unix: u64,
    /// The random key of the bit positions.
    pub hash_key: [u8; 16],
    /// Probes per key.
    pub probes: u32,
    /// The filter.
    pub bits: Vec<u64>,
}

impl Generation {
    /// An empty generation sized for `capacity` keys, starting at `now` (unix seconds) after
    /// `start_pos` remembered handshakes, with bit positions keyed by `hash_key`.
    pub fn new(seq: u64, capacity: u64, start_pos: u64, now: u64, hash_key: [u8; 16]) -> Self {
        let words = usize::try_from(words_for(capacity)).unwrap_or(usize::MAX);
        Generation::from_parts(Parts {
            seq,
            capacity: capacity.max(1),
            len: 0,
            start_pos,
            first_unix: now,
            last_unix: now,
            hash_key,
            probes: PROBES,
            bits: vec![0; words],
        })
    }

    /// A generation from stored parts (checked by the caller: `bits` non-empty, `probes` ≥ 1).
    pub fn from_parts(p: Parts) -> Self {
        Generation {
            seq: p.seq,
            capacity: p.capacity,
            len: p.len,
            start_pos: p.start_pos,
            first_unix: p.first_unix,
            last_unix: p.last_unix,
            cipher: Aes128::new(&p.hash_key.into()),
            hash_key: p.hash_key,
            probes: p.probes,
            bits: p.bits,
        }
    }

    /// Everything needed to store and rebuild this generation.
    pub fn parts(&self) -> Parts {
        Parts {
            seq: self.seq,
            capacity: self.capacity,
            len: self.len,
            start_pos: self.start_pos,
            first_unix: self.first_unix,
            last_unix: self.last_unix,
            hash_key: self.hash_key,
            probes: self.probes,
            bits: self.bits.clone(),
        }
    }

    /// Whether it holds as many keys as it is sized for.
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Remembered handshakes up to and including this generation's last key.
    pub fn end_pos(&self) -> u64 {
        self.start_pos.saturating_add(self.len)
    }

    /// Heap bytes of the filter.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// Chance that a key never inserted tests positive now.
    pub fn false_positive_rate(&self) -> f64 {
        false_positive_rate(self.len, self.bits.len() as u64 * 64, self.probes)
    }

    /// Whether `key` may have been inserted (never `false` for an inserted key). Stops at
    /// the first clear bit, so a key never inserted costs about two probes on average.
    pub fn contains(&self, key: &ReplayKey) -> bool {
        self.positions(key)
            .all(|i| self.bits[i / 64] & (1 << (i % 64)) != 0)
    }

    /// Adds `key`, seen at `now` (unix seconds).
    pub fn insert(&mut self, key: &ReplayKey, now: u64) {
        for i in self.positions(key) {
            self.bits[i / 64] |= 1 << (i % 64);
        }
        if self.len == 0 {
            self.first_unix = now;
        }
        self.len += 1;
        self.last_unix = self.last_unix.max(now);
    }

    /// The key's bit positions: the key's AES block (secret to anyone without the hash key)
    /// seeds a SplitMix64 sequence whose outputs are reduced to `0..bits` by a multiply-shift.
    /// Independent outputs rather than double hashing: with double hashing, two keys whose
    /// two hashes nearly agree share every position, which at 40 bits per key would raise the
    /// false-positive rate well above the formula's.
    fn positions(&self, key: &ReplayKey) -> impl Iterator<Item = usize> + use<> {
        let mut block = Block::from(key.0);
        self.cipher.encrypt_block(&mut block);
        let (lo, hi) = block.split_at(8);
        let mut state = u64::from_le_bytes(lo.try_into().unwrap_or_default());
        let salt = u64::from_le_bytes(hi.try_into().unwrap_or_default());
        let bits = self.bits.len() as u128 * 64;
        (0..self.probes).map(move |_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state ^ salt;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((u128::from(z) * bits) >> 64) as usize
        })
    }
}
