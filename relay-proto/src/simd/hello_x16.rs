//! ClientHello MACs under sixteen users' secrets at a time, with AVX-512.
//!
//! A fake-TLS client random is HMAC-SHA256 over the whole ClientHello (~517 bytes from real
//! clients, nine SHA-256 blocks), so a client whose user is not hinted costs nine to ten
//! compressions per configured user tried, and so does every probe with a wrong secret. The
//! message is the same under every key, so its schedule is computed once per hello and the
//! sixteen users' inner and outer hashes run one per 32-bit lane
//! ([`crate::simd::sha256_x16`]).
//!
//! This is a filter: it reports the users whose MAC starts with the client random's first
//! four bytes and the caller checks each one in full with the one-user code.

use crate::simd::sha256_x16::{self, LANES};
use crate::tls::hello::HelloKey;

/// Whether this CPU runs [`HelloProbe::mac_matches`].
pub fn available() -> bool {
    sha256_x16::available()
}

/// One ClientHello prepared for batches: the inner hash's blocks as schedules (the key's pad
/// block is absorbed in each [`HelloKey`]) and the MAC's expected first word.
pub struct HelloProbe {
    schedules: Vec<[u32; 64]>,
    expected: u32,
}

impl HelloProbe {
    /// `message` is what the MAC covers (the record header and the hello with its random
    /// zeroed, in pieces); `random` is the client random as received.
    pub fn new(message: &[&[u8]], random: &[u8; 32]) -> HelloProbe {
        let len: usize = message.iter().map(|m| m.len()).sum();
        // SHA-256 padding; the bit length counts the 64-byte pad block before the message.
        let mut padded = Vec::with_capacity(len + 72);
        for m in message {
            padded.extend_from_slice(m);
        }
        padded.push(0x80);
        while padded.len() % 64 != 56 {
            padded.push(0);
        }
        padded.extend_from_slice(&(((64 + len) as u64) * 8).to_be_bytes());
        let schedules = padded
            .chunks_exact(64)
            .map(|b| {
                let mut block = [0u8; 64];
                block.copy_from_slice(b);
                sha256_x16::schedule(&block)
            })
            .collect();
        HelloProbe {
            schedules,
            expected: u32::from_be_bytes([random[0], random[1], random[2], random[3]]),
        }
    }

    /// Bit `i` set: `keys[i]`'s MAC starts as the client random does. At most [`LANES`] keys;
    /// more are ignored.
    ///
    /// # Safety
    /// The CPU must support AVX-512F ([`available`]).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn mac_matches(&self, keys: &[HelloKey]) -> u16 {
        let keys = &keys[..keys.len().min(LANES)];
        let mut inner: sha256_x16::Lanes<8> = [[0; LANES]; 8];
        let mut outer: sha256_x16::Lanes<8> = [[0; LANES]; 8];
        for (lane, key) in keys.iter().enumerate() {
            let (i, o) = key.pad_states();
            for w in 0..8 {
                inner[w][lane] = i[w];
                outer[w][lane] = o[w];
            }
        }
        let mut state = sha256_x16::load(&inner);
        for schedule in &self.schedules {
            state = sha256_x16::compress_scheduled(state, schedule);
        }
        // The outer hash: the inner digest, 0x80, zeros, the bit length of pad block + digest.
        let mut words: sha256_x16::Lanes<16> = [[0; LANES]; 16];
        words[..8].copy_from_slice(&sha256_x16::store(state));
        words[8] = [0x8000_0000; LANES];
        words[15] = [(64 + 32) * 8; LANES];
        let outer = sha256_x16::load(&outer);
        let mac = sha256_x16::store(sha256_x16::compress_from(
            outer,
            outer,
            sha256_x16::load(&words),
            0,
        ));
        let mut found = 0u16;
        for (lane, word) in mac[0].iter().enumerate().take(keys.len()) {
            if *word == self.expected {
                found |= 1 << lane;
            }
        }
        found
    }
}
