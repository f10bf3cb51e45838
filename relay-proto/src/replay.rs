//! Anti-replay memory of handshake keys, sized in time and in count within a memory bound.
//!
//! A censor replays a captured handshake to see whether the server answers like a proxy; a key
//! seen before marks the connection as a replay, to be fronted rather than relayed. Insert only
//! keys of *authenticated* handshakes, or garbage probes would flush real entries.
//!
//! The memory is a queue of Bloom-filter generations ([`bloom`]), each sized for a quarter of
//! [`ReplayLimits::handshakes`]. Keys go into the newest; a lookup asks every live generation.
//! A new generation starts when the newest is full. The oldest is dropped when all its keys are
//! older than [`ReplayLimits::retention_secs`] *and* more than `handshakes` handshakes old, or
//! earlier only when the next generation would not fit in [`ReplayLimits::memory_bytes`]
//! (counted: the handshake rate is then too high for the retention asked for). So a key is
//! remembered for `retention_secs` or `handshakes` later handshakes, whichever is longer, as
//! long as the memory allows.
//!
//! False positives (a fresh handshake taken for a replay, and fronted: the client retries) are
//! bounded by [`ReplayLimits::false_positive_rate`]: with 40 filter bits and 28 probes per key a
//! full generation answers "seen" for a new key with probability 4.5 × 10⁻⁹; with the default
//! limits (26 generations in 32 MiB) a lookup at full load errs with probability at most
//! 1.2 × 10⁻⁷, about once in 8.5 million fresh handshakes.

pub mod bloom;
pub mod file;

use std::collections::VecDeque;

use rand::{RngCore as _, rngs::StdRng};
use sha2::{Digest, Sha256};

use self::bloom::Generation;

/// Generations per [`ReplayLimits::handshakes`]: the count bound is kept to a quarter
/// generation.
pub const SLICES: u64 = 4;

/// A 16-byte handshake fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayKey([u8; 16]);

impl ReplayKey {
    /// Key of an obfuscated2 header from its bytes `8..56`: a 16-byte SHA-256 digest, so the
    /// memory stores 16 bytes rather than 48 while still covering all of them.
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

/// How long and how much the memory keeps (`[replay]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// Keys are kept at least this long, seconds...
    pub retention_secs: u64,
    /// ...and for at least this many later handshakes, whichever is longer...
    pub handshakes: u64,
    /// ...within this many bytes of filters.
    pub memory_bytes: usize,
}

impl ReplayLimits {
    /// Keys one generation is sized for.
    pub fn generation_keys(&self) -> u64 {
        self.handshakes.div_ceil(SLICES).max(1)
    }

    /// Bytes one generation takes.
    pub fn generation_bytes(&self) -> usize {
        bloom::bytes_for(self.generation_keys())
    }

    /// Generations the memory may hold at once.
    pub fn max_generations(&self) -> usize {
        self.memory_bytes / self.generation_bytes().max(1)
    }

    /// Generations needed to keep `handshakes` keys while the newest fills.
    pub fn min_generations(&self) -> usize {
        SLICES as usize + 1
    }

    /// Whether `memory_bytes` holds at least [`Self::min_generations`]; the error says what
    /// is needed.
    pub fn check(&self) -> Result<(), String> {
        if self.handshakes == 0 || self.retention_secs == 0 {
            return Err("retention_secs and retention_handshakes must be at least 1".to_owned());
        }
        let need = self.min_generations() * self.generation_bytes();
        if self.memory_bytes < need {
            return Err(format!(
                "memory_bytes = {} cannot hold {} handshakes: that takes at least {need} bytes \
                 ({} generations of {} bytes); raise memory_bytes or lower retention_handshakes",
                self.memory_bytes,
                self.handshakes,
                self.min_generations(),
                self.generation_bytes()
            ));
        }
        Ok(())
    }

    /// Upper bound of the chance that a key never inserted is taken for a replay, per lookup,
    /// with every generation the memory can hold full (union bound over the generations).
    pub fn false_positive_rate(&self) -> f64 {
        let one = bloom::false_positive_rate(
            self.generation_keys(),
            bloom::bytes_for(self.generation_keys()) as u64 * 8,
            bloom::PROBES,
        );
        (one * self.max_generations().max(1) as f64).min(1.0)
    }

    /// Keys always remembered when the memory is full: every generation but the filling one.
    pub fn full_keys(&self) -> u64 {
        self.max_generations().saturating_sub(1) as u64 * self.generation_keys()
    }

    /// The highest steady handshake rate (per second) at which keys are still remembered for
    /// `retention_secs`.
    pub fn max_rate_for_retention(&self) -> f64 {
        self.full_keys() as f64 / self.retention_secs.max(1) as f64
    }
}

/// What the memory holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplayCoverage {
    /// Keys remembered (inserted into live generations).
    pub entries: u64,
    /// Live generations.
    pub generations: usize,
    /// Filter bytes held.
    pub bytes: usize,
    /// Seconds since the oldest remembered key was inserted: every handshake since is
    /// remembered.
    pub covered_secs: u64,
    /// Generations dropped because all their keys were beyond both bounds.
    pub dropped_expired: u64,
    /// Generations dropped earlier for lack of memory (the handshake rate is too high for
    /// `retention_secs` in `memory_bytes`).
    pub dropped_early: u64,
}

/// The replay memory: generations of keyed Bloom filters, oldest first.
#[derive(Debug)]
pub struct ReplayMemory {
    limits: ReplayLimits,
    generations: VecDeque<Generation>,
    next_seq: u64,
    rng: StdRng,
    dropped_expired: u64,
    dropped_early: u64,
    /// Per generation seq: the `len` last stored (see [`ReplayMemory::unsaved`]).
    saved: Vec<(u64, u64)>,
}

impl ReplayMemory {
    /// An empty memory drawing the generations' hash keys from `rng` (seeded from the
    /// operating system's random source, or in tests from a fixed seed).
    pub fn with_rng(limits: ReplayLimits, rng: StdRng) -> ReplayMemory {
        ReplayMemory {
            limits,
            generations: VecDeque::new(),
            next_seq: 0,
            rng,
            dropped_expired: 0,
            dropped_early: 0,
            saved: Vec::new(),
        }
    }

    /// A memory holding stored `generations` (any order; they count as saved). The newest that
    /// fit in the memory are kept; returns the memory and how many were left out.
    pub fn restore(
        limits: ReplayLimits,
        mut generations: Vec<Generation>,
        rng: StdRng,
    ) -> (ReplayMemory, usize) {
        generations.sort_by_key(|g| g.seq);
        generations.dedup_by_key(|g| g.seq);
        let mut memory = ReplayMemory::with_rng(limits, rng);
        let mut bytes = 0;
        let mut left_out = 0;
        for g in generations.into_iter().rev() {
            if bytes + g.bytes() > limits.memory_bytes {
                left_out += 1;
                continue;
            }
            bytes += g.bytes();
            memory.next_seq = memory.next_seq.max(g.seq + 1);
            memory.saved.push((g.seq, g.len));
            memory.generations.push_front(g);
        }
        (memory, left_out)
    }

    /// The limits in force.
    pub fn limits(&self) -> ReplayLimits {
        self.limits
    }

    /// New limits (a reload): new generations get the new size; the memory bound applies from
    /// the next generation on.
    pub fn set_limits(&mut self, limits: ReplayLimits) {
        self.limits = limits;
    }

    /// Handshakes remembered so far, over the memory's whole life.
    fn position(&self) -> u64 {
        self.generations.back().map_or(0, Generation::end_pos)
    }

    /// Returns `true` if `key` was seen before (a replay, or with the stated small chance a
    /// false positive); otherwise remembers it at `now` (unix seconds). O(1): a keyed hash and
    /// at most [`bloom::PROBES`] bit tests per live generation.
    pub fn check_and_insert(&mut self, key: ReplayKey, now: u64) -> bool {
        if self.contains(&key) {
            return true;
        }
        self.insert(key, now);
        false
    }

    /// Whether `key` was seen before, without remembering it.
    pub fn contains(&self, key: &ReplayKey) -> bool {
        self.generations.iter().rev().any(|g| g.contains(key))
    }

    fn insert(&mut self, key: ReplayKey, now: u64) {
        self.drop_expired(now);
        let size = self.limits.generation_keys();
        let start = match self.generations.back() {
            None => true,
            Some(g) => g.is_full() || g.capacity != size,
        };
        if start {
            self.start_generation(now);
        }
        if let Some(g) = self.generations.back_mut() {
            g.insert(&key, now);
        }
    }

    /// Drops the oldest generations whose keys are all beyond both bounds.
    fn drop_expired(&mut self, now: u64) {
        let position = self.position();
        while self.generations.len() > 1
            && let Some(oldest) = self.generations.front()
            && now.saturating_sub(oldest.last_unix) >= self.limits.retention_secs
            && position - oldest.end_pos().min(position) >= self.limits.handshakes
        {
            self.generations.pop_front();
            self.dropped_expired += 1;
        }
    }

    fn start_generation(&mut self, now: u64) {
        let bytes = self.limits.generation_bytes();
        while !self.generations.is_empty() && self.bytes() + bytes > self.limits.memory_bytes {
            self.generations.pop_front();
            self.dropped_early += 1;
        }
        let mut hash_key = [0; 16];
        self.rng.fill_bytes(&mut hash_key);
        let g = Generation::new(
            self.next_seq,
            self.limits.generation_keys(),
            self.position(),
            now,
            hash_key,
        );
        self.next_seq += 1;
        self.generations.push_back(g);
        let live: Vec<u64> = self.live_seqs();
        self.saved.retain(|(seq, _)| live.contains(seq));
    }

    /// Filter bytes held.
    pub fn bytes(&self) -> usize {
        self.generations.iter().map(Generation::bytes).sum()
    }

    /// What is remembered, at `now`.
    pub fn coverage(&self, now: u64) -> ReplayCoverage {
        ReplayCoverage {
            entries: self.generations.iter().map(|g| g.len).sum(),
            generations: self.generations.len(),
            bytes: self.bytes(),
            covered_secs: self
                .generations
                .iter()
                .find(|g| g.len > 0)
                .map_or(0, |g| now.saturating_sub(g.first_unix)),
            dropped_expired: self.dropped_expired,
            dropped_early: self.dropped_early,
        }
    }

    /// Sequence numbers of the live generations, oldest first.
    pub fn live_seqs(&self) -> Vec<u64> {
        self.generations.iter().map(|g| g.seq).collect()
    }

    /// Copies of the generations changed since they were last marked saved, oldest first;
    /// the newest (still filling) only if `with_newest`.
    pub fn unsaved(&self, with_newest: bool) -> Vec<Generation> {
        let newest = self.generations.back().map(|g| g.seq);
        self.generations
            .iter()
            .filter(|g| with_newest || Some(g.seq) != newest)
            .filter(|g| !self.saved.contains(&(g.seq, g.len)))
            .cloned()
            .collect()
    }

    /// Notes that generation `seq` was stored holding `len` keys.
    pub fn mark_saved(&mut self, seq: u64, len: u64) {
        if !self.generations.iter().any(|g| g.seq == seq) {
            return;
        }
        self.saved.retain(|(s, _)| *s != seq);
        self.saved.push((seq, len));
    }
}

#[cfg(test)]
mod tests;
