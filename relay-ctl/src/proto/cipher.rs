//! AES-256-CTR with a 128-bit big-endian counter: the stream cipher of every obfuscated2 leg.
//!
//! Every relayed connection holds up to four of these for its whole life, mostly idle, so the
//! state is kept small (56 bytes: key, IV, offset) and the AES key schedule is expanded on
//! the stack for each [`AesCtr::apply`]. RustCrypto's `Ctr128BE<Aes256>` kept both schedules
//! and the software fallback's (about 1 KiB per cipher, 4 KiB per connection); the expansion
//! with AES-NI costs well under a microsecond, noise next to the socket calls around it.

use std::fmt;

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

/// Encryption-only AES: CTR never runs the inverse cipher, so its schedule is not computed.
type Inner = ctr::Ctr128BE<aes::Aes256Enc>;

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
        let mut inner = Inner::new((&self.key).into(), (&self.iv).into());
        inner.seek(self.pos);
        inner.apply_keystream(buf);
        self.pos += buf.len() as u64;
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

    #[test]
    fn state_is_small() {
        // Four per relayed connection, most of them idle: see the module comment.
        assert!(std::mem::size_of::<AesCtr>() <= 56);
    }
}
