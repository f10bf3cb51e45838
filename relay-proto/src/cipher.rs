//! AES-256-CTR with a 128-bit big-endian counter: the stream cipher of every obfuscated2 leg.
//!
//! Every relayed connection holds up to four of these for its whole life, mostly idle, so the
//! state is kept small (56 bytes: key, IV, offset) and the AES key schedule is expanded on
//! the stack for each [`AesCtr::apply`]. RustCrypto's `Ctr128BE<Aes256>` kept both schedules
//! and the software fallback's (about 1 KiB per cipher, 4 KiB per connection); the expansion
//! with AES-NI costs well under a microsecond, noise next to the socket calls around it.
//!
//! Where the CPU has VAES and AVX-512 the keystream comes from [`crate::simd::ctr_vaes`] (sixteen
//! blocks per round of instructions); elsewhere from RustCrypto's `aes` and `ctr`.

use std::fmt;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

/// Encryption-only AES: CTR never runs the inverse cipher, so its schedule is not computed.
type Inner = ctr::Ctr128BE<aes::Aes256Enc>;

/// Whether [`AesCtr`] uses [`crate::simd::ctr_vaes`] on this CPU.
#[cfg(target_arch = "x86_64")]
static VAES: std::sync::LazyLock<bool> = std::sync::LazyLock::new(crate::simd::ctr_vaes::available);

/// One direction's keystream. The IV is the initial 128-bit big-endian counter, as in
/// OpenSSL/Go CTR (and Telegram's clients).
#[derive(Clone)]
pub struct AesCtr {
    key: [u8; 32],
    iv: [u8; 16],
    /// Keystream offset of the next byte.
    pos: u64,
}

impl AesCtr {
    /// A keystream positioned at offset 0.
    pub fn new(key: &[u8; 32], iv: &[u8; 16]) -> AesCtr {
        AesCtr {
            key: *key,
            iv: *iv,
            pos: 0,
        }
    }

    /// XORs the next `buf.len()` keystream bytes into `buf` (encrypts or decrypts in place).
    pub fn apply(&mut self, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if *VAES {
            // SAFETY: the CPU has what `ctr_vaes` needs (checked once, in `VAES`).
            unsafe { self.apply_vaes(buf) };
            return;
        }
        self.apply_portable(buf);
    }

    /// Which implementation [`AesCtr::apply`] uses on this CPU (for reports).
    pub fn implementation() -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if *VAES {
            return "VAES + AVX-512, 16 blocks per round";
        }
        "RustCrypto aes 0.8 + ctr 0.9"
    }

    /// [`AesCtr::apply`] with RustCrypto's implementation.
    fn apply_portable(&mut self, buf: &mut [u8]) {
        let mut inner = Inner::new((&self.key).into(), (&self.iv).into());
        inner.seek(self.pos);
        inner.apply_keystream(buf);
        self.pos += buf.len() as u64;
    }

    /// [`AesCtr::apply`] with VAES: whole blocks in place, a part-block at either end through
    /// a one-block copy.
    ///
    /// # Safety
    /// [`crate::simd::ctr_vaes::available`] must be true.
    #[cfg(target_arch = "x86_64")]
    unsafe fn apply_vaes(&mut self, buf: &mut [u8]) {
        use crate::simd::ctr_vaes::xor_keystream;
        let base = u128::from_be_bytes(self.iv);
        let counter = |pos: u64| base.wrapping_add(u128::from(pos / 16));
        let mut rest = buf;
        while !rest.is_empty() {
            let offset = (self.pos % 16) as usize;
            let whole = if offset == 0 { rest.len() / 16 * 16 } else { 0 };
            let n = if whole > 0 {
                // SAFETY: the caller checked the CPU.
                unsafe { xor_keystream(&self.key, counter(self.pos), &mut rest[..whole]) };
                whole
            } else {
                // The start or the end of `buf` inside a block.
                let n = (16 - offset).min(rest.len());
                let mut block = [0u8; 16];
                block[offset..offset + n].copy_from_slice(&rest[..n]);
                // SAFETY: the caller checked the CPU.
                unsafe { xor_keystream(&self.key, counter(self.pos), &mut block) };
                rest[..n].copy_from_slice(&block[offset..offset + n]);
                n
            };
            self.pos += n as u64;
            rest = &mut rest[n..];
        }
    }

    /// Moves to absolute keystream offset `pos`.
    pub(crate) fn seek(&mut self, pos: u64) {
        self.pos = pos;
    }

    /// The current keystream offset.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

impl fmt::Debug for AesCtr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys stay out of logs; the offset is handy when debugging desyncs.
        f.debug_struct("AesCtr")
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nist_sp800_38a_f5_5() {
        // NIST SP 800-38A F.5.5 CTR-AES256.Encrypt, first two blocks.
        let key = hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .unwrap();
        let iv = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").unwrap();
        let mut buf =
            hex::decode("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
                .unwrap();
        let mut c = AesCtr::new(
            key.as_slice().try_into().unwrap(),
            iv.as_slice().try_into().unwrap(),
        );
        c.apply(&mut buf[..5]);
        c.apply(&mut buf[5..]);
        assert_eq!(
            hex::encode(&buf),
            "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
        );
        assert_eq!(c.position(), 32);
    }

    #[test]
    fn counter_is_128_bit_big_endian() {
        // An IV of all ones must carry into the whole counter, not wrap within 64 bits.
        let key = [7; 32];
        let mut a = AesCtr::new(&key, &[0xff; 16]);
        let mut block = [0u8; 32];
        a.apply(&mut block);
        let mut b = AesCtr::new(&key, &[0; 16]);
        let mut zero = [0u8; 16];
        b.apply(&mut zero);
        assert_eq!(block[16..], zero);
    }

    #[test]
    fn split_applies_match_one_pass() {
        // Cut points inside blocks, on block edges and across the cipher's parallel batches.
        let key = [3; 32];
        let iv = [0xfe; 16];
        let mut whole = vec![0x11u8; 1000];
        AesCtr::new(&key, &iv).apply(&mut whole);
        for cuts in [&[1usize, 15, 16, 17][..], &[5, 128, 129, 500], &[0, 999]] {
            let mut pieces = vec![0x11u8; 1000];
            let mut c = AesCtr::new(&key, &iv);
            let mut at = 0;
            for &cut in cuts.iter().chain([&1000]) {
                c.apply(&mut pieces[at..cut]);
                at = cut;
            }
            assert_eq!(pieces, whole, "cuts {cuts:?}");
            assert_eq!(c.position(), 1000);
        }
    }

    /// Both implementations (where the CPU has VAES) against each other: random keys, IVs
    /// near the counter's wrap, keystream offsets inside blocks and lengths around the
    /// 16-block batches.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vaes_matches_rustcrypto() {
        use rand::Rng as _;
        if !crate::simd::ctr_vaes::available() {
            eprintln!(
                "vaes_matches_rustcrypto: this CPU has no VAES/AVX-512; only the portable path runs"
            );
            return;
        }
        let mut rng = rand::rng();
        for round in 0..2000 {
            let key: [u8; 32] = rng.random();
            let mut iv: [u8; 16] = rng.random();
            if round % 4 == 0 {
                // Counters that carry across 64 and 128 bits within the buffer.
                iv[..8].fill(if round % 8 == 0 { 0xff } else { 0x00 });
                iv[8..].fill(0xff);
            }
            let start = rng.random_range(0..100u64);
            let len = match round % 3 {
                0 => rng.random_range(0..64),
                1 => rng.random_range(200..600),
                _ => rng.random_range(0..5000),
            };
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let (mut a, mut b) = (data.clone(), data.clone());
            let mut portable = AesCtr::new(&key, &iv);
            portable.seek(start);
            portable.apply_portable(&mut a);
            let mut vaes = AesCtr::new(&key, &iv);
            vaes.seek(start);
            // Two pieces, so a piece can start inside a block.
            let cut = rng.random_range(0..=len);
            // SAFETY: checked above.
            unsafe {
                vaes.apply_vaes(&mut b[..cut]);
                vaes.apply_vaes(&mut b[cut..]);
            }
            assert!(a == b, "round {round}: start {start}, len {len}, cut {cut}");
            assert_eq!(portable.position(), vaes.position());
        }
    }

    #[test]
    fn state_is_small() {
        // Four per relayed connection, most of them idle: see the module comment.
        assert!(std::mem::size_of::<AesCtr>() <= 56);
    }
}
