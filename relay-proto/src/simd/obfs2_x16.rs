//! obfuscated2 secret tries sixteen users at a time, with AVX-512 and VAES.
//!
//! A client's header does not name its user: the proxy looks for the secret under which header
//! bytes 56..60 decrypt to a protocol tag, which costs one SHA-256 block, one AES-256 key
//! schedule and one AES block per secret tried (`obfs2::TagProbe`), ~100 ns, latency-bound.
//! With many users and no hint for the source (a new client, or many users behind one
//! carrier-grade NAT address) that is most of the handshake, and it is also what every probe
//! with a wrong secret costs. Here the sixteen SHA-256 computations run side by side, one per
//! 32-bit lane of AVX-512 registers, and the sixteen key schedules and blocks four to a register
//! with VAES. SHA-256's first eight rounds absorb only header bytes 8..40, the same for every
//! user, so they run once per header.
//!
//! This is a filter: it reports the users whose lane decrypts to a tag and the caller confirms
//! each one with the one-user code, so the keys a connection gets never come from here. The
//! tests compare it with the one-user code over random headers and secrets.

use core::arch::x86_64::{
    __m512i, _mm_loadu_si128, _mm512_aesenc_epi128, _mm512_aesenclast_epi128,
    _mm512_broadcast_i32x4, _mm512_bslli_epi128, _mm512_cmpeq_epi32_mask, _mm512_set1_epi32,
    _mm512_set4_epi32, _mm512_setzero_si512, _mm512_shuffle_epi8, _mm512_unpackhi_epi32,
    _mm512_unpackhi_epi64, _mm512_unpacklo_epi32, _mm512_unpacklo_epi64, _mm512_xor_si512,
};

use super::sha256_x16::{self, LANES};
use crate::obfs2::SHA256_IV;
use crate::secret::Secret;

/// Whether this CPU runs [`HeaderProbe::tag_matches`].
pub fn available() -> bool {
    sha256_x16::available()
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("vaes")
}

/// The AES-256 key schedule's round constants, one per even round key after the first.
const RCON: [i32; 7] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40];

/// What every try of one header shares: the SHA-256 state after the eight rounds over header
/// bytes 8..40, those bytes as message words, the counter block of keystream offsets 48..64
/// and the encrypted tag (header bytes 56..60).
pub struct HeaderProbe {
    state: [u32; 8],
    prefix: [u32; 8],
    counter: [u8; 16],
    tag: u32,
}

impl HeaderProbe {
    /// Prepares the tries of a header whose key bytes `8..40` are `key_prefix`.
    pub fn new(key_prefix: &[u8; 32], counter: [u8; 16], encrypted_tag: [u8; 4]) -> HeaderProbe {
        let mut prefix = [0u32; 8];
        for (w, b) in prefix.iter_mut().zip(key_prefix.chunks_exact(4)) {
            *w = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        let mut state = SHA256_IV;
        sha256_x16::scalar_rounds(&mut state, &prefix);
        HeaderProbe {
            state,
            prefix,
            counter,
            tag: u32::from_le_bytes(encrypted_tag),
        }
    }

    /// Bit `i` set: `secrets[i]` decrypts the tag to one of the three protocol tags.
    /// At most [`LANES`] secrets; more are ignored.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX-512BW and VAES ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,vaes")]
    pub unsafe fn tag_matches(&self, secrets: &[Secret]) -> u16 {
        let secrets = &secrets[..secrets.len().min(LANES)];
        let key = self.keys(secrets);
        let tags = self.keystream_tags(key);
        let used = if secrets.len() == LANES {
            u16::MAX
        } else {
            (1u16 << secrets.len()) - 1
        };
        tags & used
    }

    /// The sixteen SHA-256 digests of `key_prefix ‖ secret`, word `i` of every lane's digest
    /// in register `i`.
    #[target_feature(enable = "avx512f")]
    fn keys(&self, secrets: &[Secret]) -> [__m512i; 8] {
        // One block: 32 header bytes, 16 secret bytes, 0x80, zeros, the bit length 384.
        // Unused lanes keep a zero secret and are masked out later.
        let mut words: sha256_x16::Lanes<16> = [[0; LANES]; 16];
        for (i, p) in self.prefix.iter().enumerate() {
            words[i] = [*p; LANES];
        }
        for (lane, secret) in secrets.iter().enumerate() {
            for (i, b) in secret.as_bytes().chunks_exact(4).enumerate() {
                words[8 + i][lane] = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        words[12] = [0x8000_0000; LANES];
        words[15] = [384; LANES];
        sha256_x16::compress_from(
            sha256_x16::splat(&SHA256_IV),
            sha256_x16::splat(&self.state),
            sha256_x16::load(&words),
            8,
        )
    }

    /// From the digests: each lane's AES-256 key, its keystream block at offsets 48..64, and
    /// which lanes' bytes 56..60 decrypt to a tag.
    #[target_feature(enable = "avx512f,avx512bw,vaes")]
    fn keystream_tags(&self, digest: [__m512i; 8]) -> u16 {
        // The key's bytes are the digest words big-endian: swap each word's bytes, then turn
        // "word i of sixteen users" into "four words of one user per 128-bit lane" (a 4×4
        // transpose in each lane). Register r then holds users r, 4+r, 8+r and 12+r.
        let bswap = _mm512_set4_epi32(0x0c0d_0e0f, 0x0809_0a0b, 0x0405_0607, 0x0001_0203);
        let d = digest.map(|x| _mm512_shuffle_epi8(x, bswap));
        let low = transpose4([d[0], d[1], d[2], d[3]]);
        let high = transpose4([d[4], d[5], d[6], d[7]]);

        // SAFETY: a 16-byte array, one unaligned load.
        let counter =
            _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(self.counter.as_ptr().cast()) });
        // The key schedule runs alongside the rounds, two round keys kept per register.
        let mut prev = low;
        let mut last = high;
        let mut x = [_mm512_setzero_si512(); 4];
        for r in 0..4 {
            x[r] = _mm512_aesenc_epi128(_mm512_xor_si512(counter, low[r]), high[r]);
        }
        for (i, rcon) in RCON.iter().enumerate() {
            for r in 0..4 {
                let even = next_even(prev[r], last[r], *rcon);
                if i + 1 == RCON.len() {
                    x[r] = _mm512_aesenclast_epi128(x[r], even);
                } else {
                    let odd = next_odd(last[r], even);
                    x[r] = _mm512_aesenc_epi128(_mm512_aesenc_epi128(x[r], even), odd);
                    prev[r] = even;
                    last[r] = odd;
                }
            }
        }

        // Keystream bytes 8..12 of each block against the encrypted tag.
        let enc = _mm512_set1_epi32(self.tag as i32);
        let mut found = 0u16;
        for (r, ks) in x.iter().enumerate() {
            let plain = _mm512_xor_si512(*ks, enc);
            let hits = (_mm512_cmpeq_epi32_mask(plain, _mm512_set1_epi32(0xefef_efefu32 as i32))
                | _mm512_cmpeq_epi32_mask(plain, _mm512_set1_epi32(0xeeee_eeeeu32 as i32))
                | _mm512_cmpeq_epi32_mask(plain, _mm512_set1_epi32(0xdddd_ddddu32 as i32)))
                & 0x4444;
            // Word 2 of 128-bit lane j is bit 4j+2: user 4j+r.
            for j in 0..4 {
                if hits & (1 << (4 * j + 2)) != 0 {
                    found |= 1 << (4 * j + r);
                }
            }
        }
        found
    }
}

/// In every 128-bit lane, word `i` of register `r` becomes word `r` of register `i`.
#[target_feature(enable = "avx512f")]
fn transpose4(v: [__m512i; 4]) -> [__m512i; 4] {
    let ab_low = _mm512_unpacklo_epi32(v[0], v[1]);
    let ab_high = _mm512_unpackhi_epi32(v[0], v[1]);
    let cd_low = _mm512_unpacklo_epi32(v[2], v[3]);
    let cd_high = _mm512_unpackhi_epi32(v[2], v[3]);
    [
        _mm512_unpacklo_epi64(ab_low, cd_low),
        _mm512_unpackhi_epi64(ab_low, cd_low),
        _mm512_unpacklo_epi64(ab_high, cd_high),
        _mm512_unpackhi_epi64(ab_high, cd_high),
    ]
}

/// `k ^ k<<32 ^ k<<64 ^ k<<96` in each 128-bit lane: the running XOR of a round key's words.
#[target_feature(enable = "avx512f,avx512bw")]
fn running_xor(k: __m512i) -> __m512i {
    let k = _mm512_xor_si512(k, _mm512_bslli_epi128::<4>(k));
    _mm512_xor_si512(k, _mm512_bslli_epi128::<8>(k))
}

/// Round key `2i` from keys `2i-2` and `2i-1` (FIPS 197 §5.2): the last word of `2i-1`
/// rotated, substituted and XORed with the round constant. With that word in all four columns
/// ShiftRows moves nothing, so `aesenclast` computes SubWord and adds the constant.
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn next_even(prev_even: __m512i, prev_odd: __m512i, rcon: i32) -> __m512i {
    let rot_word = _mm512_set4_epi32(0x0c0f_0e0d, 0x0c0f_0e0d, 0x0c0f_0e0d, 0x0c0f_0e0d);
    let t = _mm512_aesenclast_epi128(
        _mm512_shuffle_epi8(prev_odd, rot_word),
        _mm512_set1_epi32(rcon),
    );
    _mm512_xor_si512(running_xor(prev_even), t)
}

/// Round key `2i+1` from keys `2i-1` and `2i`: the last word of `2i` substituted, unrotated.
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn next_odd(prev_odd: __m512i, even: __m512i) -> __m512i {
    let last_word = _mm512_set4_epi32(0x0f0e_0d0c, 0x0f0e_0d0c, 0x0f0e_0d0c, 0x0f0e_0d0c);
    let t = _mm512_aesenclast_epi128(_mm512_shuffle_epi8(even, last_word), _mm512_setzero_si512());
    _mm512_xor_si512(running_xor(prev_odd), t)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng as _, RngCore as _, SeedableRng};
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn digests_match_sha256() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512/VAES");
            return;
        }
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut prefix = [0u8; 32];
            rng.fill_bytes(&mut prefix);
            let users = crate::secret::random_secrets(&mut rng, LANES);
            let probe = HeaderProbe::new(&prefix, [0; 16], [0; 4]);
            // SAFETY: checked above.
            let words = unsafe { sha256_x16::store(probe.keys(&users)) };
            for (lane, s) in users.iter().enumerate() {
                let want = Sha256::new()
                    .chain_update(prefix)
                    .chain_update(s.as_bytes())
                    .finalize();
                let got: Vec<u8> = words.iter().flat_map(|w| w[lane].to_be_bytes()).collect();
                assert_eq!(got, want.as_slice(), "lane {lane}");
            }
        }
    }

    /// Tags planted through the one-user derivation are found, in the right lanes, and
    /// nothing else is (a random lane decrypts to a tag once in 2^30).
    #[test]
    fn finds_exactly_the_planted_tags() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512/VAES");
            return;
        }
        let mut rng = StdRng::seed_from_u64(11);
        for round in 0..400 {
            let n = rng.random_range(1..=LANES);
            let users = crate::secret::random_secrets(&mut rng, n);
            let mut prefix = [0u8; 32];
            rng.fill_bytes(&mut prefix);
            let mut counter = [0u8; 16];
            rng.fill_bytes(&mut counter);
            let planted = rng.random_range(0..n);
            let tag = [[0xef; 4], [0xee; 4], [0xdd; 4]][round % 3];
            // Encrypt the tag under the planted user's key, as a client would.
            let ks = one_user_keystream(&prefix, &users[planted], counter);
            let mut enc = tag;
            for (e, k) in enc.iter_mut().zip(&ks[8..12]) {
                *e ^= k;
            }
            let probe = HeaderProbe::new(&prefix, counter, enc);
            // SAFETY: checked above.
            let found = unsafe { probe.tag_matches(&users) };
            assert_eq!(found, 1 << planted, "round {round}, {n} users");
        }
    }

    /// The one-user derivation: AES-256(SHA-256(prefix ‖ secret)) of `counter`.
    fn one_user_keystream(prefix: &[u8; 32], secret: &Secret, counter: [u8; 16]) -> [u8; 16] {
        use aes::Aes256Enc;
        use aes::cipher::{BlockEncrypt as _, KeyInit as _};
        let key = Sha256::new()
            .chain_update(prefix)
            .chain_update(secret.as_bytes())
            .finalize();
        let mut block = counter.into();
        Aes256Enc::new(&key).encrypt_block(&mut block);
        block.into()
    }
}
