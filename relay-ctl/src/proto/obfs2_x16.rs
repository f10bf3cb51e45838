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
    __m512i, _mm_loadu_si128, _mm512_add_epi32, _mm512_aesenc_epi128, _mm512_aesenclast_epi128,
    _mm512_broadcast_i32x4, _mm512_bslli_epi128, _mm512_cmpeq_epi32_mask, _mm512_loadu_si512,
    _mm512_ror_epi32, _mm512_set1_epi32, _mm512_set4_epi32, _mm512_setzero_si512,
    _mm512_shuffle_epi8, _mm512_srli_epi32, _mm512_ternarylogic_epi32, _mm512_unpackhi_epi32,
    _mm512_unpackhi_epi64, _mm512_unpacklo_epi32, _mm512_unpacklo_epi64, _mm512_xor_si512,
};

use super::obfs2::SHA256_IV;
use super::secret::Secret;

/// Users per batch: one per 32-bit lane of a 512-bit register.
pub const LANES: usize = 16;

/// Whether this CPU runs [`HeaderProbe::tag_matches`].
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("vaes")
}

/// SHA-256 round constants (FIPS 180-4 §4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

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
        for (t, w) in prefix.iter().enumerate() {
            scalar_round(&mut state, K[t].wrapping_add(*w));
        }
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
        // The secrets' words by lane (unused lanes stay zero and are masked out later).
        let mut words = [[0u32; LANES]; 4];
        for (lane, secret) in secrets.iter().enumerate() {
            for (i, b) in secret.as_bytes().chunks_exact(4).enumerate() {
                words[i][lane] = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        // One block: 32 header bytes, 16 secret bytes, 0x80, zeros, the bit length 384.
        let mut w = [_mm512_setzero_si512(); 16];
        for (i, p) in self.prefix.iter().enumerate() {
            w[i] = _mm512_set1_epi32(*p as i32);
        }
        for (i, lane_words) in words.iter().enumerate() {
            // SAFETY: a 64-byte array, one unaligned load.
            w[8 + i] = unsafe { _mm512_loadu_si512(lane_words.as_ptr().cast()) };
        }
        w[12] = _mm512_set1_epi32(0x8000_0000u32 as i32);
        w[15] = _mm512_set1_epi32(384);

        let mut s = self.state.map(|x| _mm512_set1_epi32(x as i32));
        for t in 8..64 {
            let wt = if t < 16 {
                w[t]
            } else {
                let next = add4(
                    small_sigma1(w[(t - 2) % 16]),
                    w[(t - 7) % 16],
                    small_sigma0(w[(t - 15) % 16]),
                    w[t % 16],
                );
                w[t % 16] = next;
                next
            };
            round(&mut s, _mm512_add_epi32(wt, _mm512_set1_epi32(K[t] as i32)));
        }
        let mut digest = s;
        for (d, iv) in digest.iter_mut().zip(SHA256_IV) {
            *d = _mm512_add_epi32(*d, _mm512_set1_epi32(iv as i32));
        }
        digest
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

/// One SHA-256 round on a scalar state; `kw` is the round constant plus the message word.
fn scalar_round(s: &mut [u32; 8], kw: u32) {
    let [a, b, c, d, e, f, g, h] = *s;
    let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
    let ch = (e & f) ^ (!e & g);
    let t1 = h.wrapping_add(s1).wrapping_add(ch).wrapping_add(kw);
    let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
    let maj = (a & b) ^ (a & c) ^ (b & c);
    let t2 = s0.wrapping_add(maj);
    *s = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
}

/// One SHA-256 round in every lane; `kw` is the round constant plus the message word.
#[target_feature(enable = "avx512f")]
fn round(s: &mut [__m512i; 8], kw: __m512i) {
    let [a, b, c, d, e, f, g, h] = *s;
    // Ternary-logic truth tables: 0x96 is a ^ b ^ c, 0xca is a ? b : c, 0xe8 is the majority.
    let s1 = _mm512_ternarylogic_epi32::<0x96>(
        _mm512_ror_epi32::<6>(e),
        _mm512_ror_epi32::<11>(e),
        _mm512_ror_epi32::<25>(e),
    );
    let ch = _mm512_ternarylogic_epi32::<0xca>(e, f, g);
    let t1 = add4(h, s1, ch, kw);
    let s0 = _mm512_ternarylogic_epi32::<0x96>(
        _mm512_ror_epi32::<2>(a),
        _mm512_ror_epi32::<13>(a),
        _mm512_ror_epi32::<22>(a),
    );
    let maj = _mm512_ternarylogic_epi32::<0xe8>(a, b, c);
    let t2 = _mm512_add_epi32(s0, maj);
    *s = [
        _mm512_add_epi32(t1, t2),
        a,
        b,
        c,
        _mm512_add_epi32(d, t1),
        e,
        f,
        g,
    ];
}

#[target_feature(enable = "avx512f")]
fn small_sigma0(x: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0x96>(
        _mm512_ror_epi32::<7>(x),
        _mm512_ror_epi32::<18>(x),
        _mm512_srli_epi32::<3>(x),
    )
}

#[target_feature(enable = "avx512f")]
fn small_sigma1(x: __m512i) -> __m512i {
    _mm512_ternarylogic_epi32::<0x96>(
        _mm512_ror_epi32::<17>(x),
        _mm512_ror_epi32::<19>(x),
        _mm512_srli_epi32::<10>(x),
    )
}

#[target_feature(enable = "avx512f")]
fn add4(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m512i {
    _mm512_add_epi32(_mm512_add_epi32(a, b), _mm512_add_epi32(c, d))
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

/// Stores a register's sixteen words (tests).
#[cfg(test)]
#[target_feature(enable = "avx512f")]
fn lanes(x: __m512i) -> [u32; LANES] {
    let mut out = [0u32; LANES];
    use core::arch::x86_64::_mm512_storeu_si512;
    // SAFETY: a 64-byte array, one unaligned store.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), x) };
    out
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng as _, RngCore as _, SeedableRng};
    use sha2::{Digest, Sha256};

    use super::*;

    fn secrets(rng: &mut StdRng, n: usize) -> Vec<Secret> {
        (0..n)
            .map(|_| {
                let mut b = [0u8; 16];
                rng.fill_bytes(&mut b);
                Secret::from_bytes(b)
            })
            .collect()
    }

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
            let users = secrets(&mut rng, LANES);
            let probe = HeaderProbe::new(&prefix, [0; 16], [0; 4]);
            // SAFETY: checked above.
            let words = unsafe {
                let d = probe.keys(&users);
                d.map(|x| lanes(x))
            };
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
            let users = secrets(&mut rng, n);
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
