//! AES-256-CTR keystream with VAES and AVX-512: sixteen blocks per round of instructions,
//! four in each 512-bit register. CPUs that have it (Intel Ice Lake and later, AMD Zen 4 and
//! later) run several 512-bit AES rounds per cycle where AES-NI runs 128-bit ones, which is
//! what RustCrypto's `aes` and OpenSSL 3.0's CTR use, so it is several times faster per core
//! (`cargo xtask bench` reports the ratio on the machine at hand).
//! [`crate::cipher::AesCtr`] picks it at run time and falls back to RustCrypto elsewhere;
//! tests check both against each other.
//!
//! Only whole 16-byte blocks are handled here; the caller deals with a keystream offset inside
//! a block.

use core::arch::x86_64::{
    __m128i, __m512i, _mm_aeskeygenassist_si128, _mm_loadu_si128, _mm_shuffle_epi32,
    _mm_slli_si128, _mm_xor_si128, _mm512_aesenc_epi128, _mm512_aesenclast_epi128,
    _mm512_broadcast_i32x4, _mm512_loadu_si512, _mm512_storeu_si512, _mm512_xor_si512,
};

/// Whether this CPU runs [`xor_keystream`].
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("vaes")
}

/// Blocks per iteration of the main loop: four registers of four.
const WIDE: usize = 16;

/// XORs the AES-256-CTR keystream for `key`, starting at 128-bit big-endian counter `counter`,
/// into `blocks` (whose length must be a multiple of 16; a shorter tail is left alone).
///
/// # Safety
/// The CPU must support AES-NI, AVX-512F and VAES ([`available`]).
#[target_feature(enable = "aes,avx512f,vaes")]
pub unsafe fn xor_keystream(key: &[u8; 32], counter: u128, blocks: &mut [u8]) {
    let round_keys = expand_key(key);
    // Each round key in all four 128-bit lanes.
    let rk: [__m512i; 15] = round_keys.map(|k| _mm512_broadcast_i32x4(k));
    let mut counter = counter;
    let mut chunks = blocks.chunks_exact_mut(WIDE * 16);
    for chunk in &mut chunks {
        let mut ctr = [0u8; WIDE * 16];
        for (i, block) in ctr.chunks_exact_mut(16).enumerate() {
            block.copy_from_slice(&counter.wrapping_add(i as u128).to_be_bytes());
        }
        counter = counter.wrapping_add(WIDE as u128);
        // SAFETY: `ctr` and `chunk` are 256 bytes: four unaligned 64-byte loads and stores.
        unsafe {
            let c = ctr.as_ptr().cast::<__m512i>();
            let mut s = [
                _mm512_xor_si512(_mm512_loadu_si512(c), rk[0]),
                _mm512_xor_si512(_mm512_loadu_si512(c.add(1)), rk[0]),
                _mm512_xor_si512(_mm512_loadu_si512(c.add(2)), rk[0]),
                _mm512_xor_si512(_mm512_loadu_si512(c.add(3)), rk[0]),
            ];
            for k in &rk[1..14] {
                for x in &mut s {
                    *x = _mm512_aesenc_epi128(*x, *k);
                }
            }
            let d = chunk.as_mut_ptr().cast::<__m512i>();
            for (i, x) in s.iter().enumerate() {
                let ks = _mm512_aesenclast_epi128(*x, rk[14]);
                let data = _mm512_loadu_si512(d.add(i));
                _mm512_storeu_si512(d.add(i), _mm512_xor_si512(data, ks));
            }
        }
    }
    // Fewer than sixteen blocks left: four at a time, the last group through a padded copy.
    for group in chunks.into_remainder().chunks_mut(64) {
        let whole = group.len() / 16 * 16;
        if whole == 0 {
            break;
        }
        let mut ctr = [0u8; 64];
        for (i, block) in ctr.chunks_exact_mut(16).enumerate() {
            block.copy_from_slice(&counter.wrapping_add(i as u128).to_be_bytes());
        }
        counter = counter.wrapping_add((whole / 16) as u128);
        let mut data = [0u8; 64];
        data[..whole].copy_from_slice(&group[..whole]);
        // SAFETY: 64-byte arrays: one unaligned load or store each.
        unsafe {
            let mut x = _mm512_xor_si512(_mm512_loadu_si512(ctr.as_ptr().cast()), rk[0]);
            for k in &rk[1..14] {
                x = _mm512_aesenc_epi128(x, *k);
            }
            let ks = _mm512_aesenclast_epi128(x, rk[14]);
            let p = data.as_mut_ptr().cast::<__m512i>();
            _mm512_storeu_si512(p, _mm512_xor_si512(_mm512_loadu_si512(p), ks));
        }
        group[..whole].copy_from_slice(&data[..whole]);
    }
}

/// The fifteen AES-256 encryption round keys (FIPS 197 key expansion, with AES-NI's
/// key-generation assist as in Intel's AES-NI white paper).
#[target_feature(enable = "aes")]
fn expand_key(key: &[u8; 32]) -> [__m128i; 15] {
    /// The even round key `2i` from the previous even key and the assist of the odd one.
    #[target_feature(enable = "aes")]
    fn even(prev: __m128i, assist: __m128i) -> __m128i {
        let assist = _mm_shuffle_epi32::<0xff>(assist);
        xor_shifted(prev, assist)
    }
    /// The odd round key `2i+1` from the previous odd key and the new even one.
    #[target_feature(enable = "aes")]
    fn odd(prev: __m128i, even: __m128i) -> __m128i {
        let assist = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(even));
        xor_shifted(prev, assist)
    }
    /// `k ^ k<<32 ^ k<<64 ^ k<<96 ^ t`: the running XOR of a key's words, plus `t`.
    #[target_feature(enable = "aes")]
    fn xor_shifted(k: __m128i, t: __m128i) -> __m128i {
        let mut k = k;
        let mut s = _mm_slli_si128::<4>(k);
        k = _mm_xor_si128(k, s);
        s = _mm_slli_si128::<4>(s);
        k = _mm_xor_si128(k, s);
        s = _mm_slli_si128::<4>(s);
        k = _mm_xor_si128(k, s);
        _mm_xor_si128(k, t)
    }
    // SAFETY: two unaligned 16-byte loads from a 32-byte array.
    let (k0, k1) = unsafe {
        (
            _mm_loadu_si128(key.as_ptr().cast()),
            _mm_loadu_si128(key.as_ptr().add(16).cast()),
        )
    };
    let mut rk = [k0; 15];
    rk[1] = k1;
    // The round constants must be immediates, hence one line per pair of round keys.
    rk[2] = even(rk[0], _mm_aeskeygenassist_si128::<0x01>(rk[1]));
    rk[3] = odd(rk[1], rk[2]);
    rk[4] = even(rk[2], _mm_aeskeygenassist_si128::<0x02>(rk[3]));
    rk[5] = odd(rk[3], rk[4]);
    rk[6] = even(rk[4], _mm_aeskeygenassist_si128::<0x04>(rk[5]));
    rk[7] = odd(rk[5], rk[6]);
    rk[8] = even(rk[6], _mm_aeskeygenassist_si128::<0x08>(rk[7]));
    rk[9] = odd(rk[7], rk[8]);
    rk[10] = even(rk[8], _mm_aeskeygenassist_si128::<0x10>(rk[9]));
    rk[11] = odd(rk[9], rk[10]);
    rk[12] = even(rk[10], _mm_aeskeygenassist_si128::<0x20>(rk[11]));
    rk[13] = odd(rk[11], rk[12]);
    rk[14] = even(rk[12], _mm_aeskeygenassist_si128::<0x40>(rk[13]));
    rk
}
