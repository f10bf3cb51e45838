//! SHA-256 compressions sixteen at a time, one per 32-bit lane of AVX-512 registers: the part
//! of trying many users' secrets on one handshake that costs most ([`super::obfs2_x16`],
//! [`super::hello_x16`]). A lane runs the same rounds as FIPS 180-4 §6.2.2; where every
//! lane hashes the same message (an HMAC over one ClientHello under sixteen keys) the message
//! schedule is computed once, in scalar code, and broadcast.

use core::arch::x86_64::{
    __m512i, _mm512_add_epi32, _mm512_loadu_si512, _mm512_ror_epi32, _mm512_set1_epi32,
    _mm512_srli_epi32, _mm512_ternarylogic_epi32,
};

/// Hashes per batch: one per 32-bit lane of a 512-bit register.
pub const LANES: usize = 16;

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

/// Below this many users left, trying them one at a time costs less than a batch of
/// [`LANES`] (a batch costs about as much as three one-user tries).
pub const BATCH_FROM: usize = 4;

/// Calls `attempt` on indices `0..len` in order until it returns something, skipping those a
/// batch filter rules out: `batch(range)` (at most [`LANES`] indices) returns bit `i` set for
/// index `range.start + i` to be attempted.
pub fn search<T>(
    len: usize,
    mut batch: impl FnMut(std::ops::Range<usize>) -> u16,
    mut attempt: impl FnMut(usize) -> Option<T>,
) -> Option<T> {
    for start in (0..len).step_by(LANES) {
        let range = start..len.min(start + LANES);
        let mut hits = batch(range.clone());
        while hits != 0 {
            let lane = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            if let Some(found) = attempt(start + lane) {
                return Some(found);
            }
        }
    }
    None
}

/// Whether this CPU runs the functions here.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Sixteen states or message words, word `i` of lane `l` at `[i][l]`.
pub type Lanes<const N: usize> = [[u32; LANES]; N];

/// Loads sixteen lanes' words into registers.
///
/// # Safety
/// Outside code compiled for AVX-512F, callers must check [`available`] first.
#[target_feature(enable = "avx512f")]
pub fn load<const N: usize>(lanes: &Lanes<N>) -> [__m512i; N] {
    // SAFETY: each row is a 64-byte array: one unaligned load.
    lanes.map(|row| unsafe { _mm512_loadu_si512(row.as_ptr().cast()) })
}

/// The same words in every lane.
///
/// # Safety
/// Outside code compiled for AVX-512F, callers must check [`available`] first.
#[target_feature(enable = "avx512f")]
pub fn splat<const N: usize>(words: &[u32; N]) -> [__m512i; N] {
    words.map(|w| _mm512_set1_epi32(w as i32))
}

/// One scalar compression's message schedule with the round constants added: `K[t] + W[t]`.
pub fn schedule(block: &[u8; 64]) -> [u32; 64] {
    let mut w = [0u32; 64];
    for (t, b) in block.chunks_exact(4).enumerate() {
        w[t] = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    }
    for t in 16..64 {
        let s0 = w[t - 15].rotate_right(7) ^ w[t - 15].rotate_right(18) ^ (w[t - 15] >> 3);
        let s1 = w[t - 2].rotate_right(17) ^ w[t - 2].rotate_right(19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16]
            .wrapping_add(s0)
            .wrapping_add(w[t - 7])
            .wrapping_add(s1);
    }
    for (w, k) in w.iter_mut().zip(K) {
        *w = w.wrapping_add(k);
    }
    w
}

/// Scalar rounds `0..n` over message words `w` (for the rounds every lane shares).
pub fn scalar_rounds(state: &mut [u32; 8], w: &[u32]) {
    for (t, w) in w.iter().enumerate() {
        let [a, b, c, d, e, f, g, h] = *state;
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[t].wrapping_add(*w));
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        *state = [
            t1.wrapping_add(s0.wrapping_add(maj)),
            a,
            b,
            c,
            d.wrapping_add(t1),
            e,
            f,
            g,
        ];
    }
}

/// Rounds `from..64` with each lane's own message block `w` (words `0..16`, expanded here),
/// then the feed-forward of `init`: the compression of a block whose first `from` rounds ran
/// already (`state`), `init` being the state before them.
///
/// # Safety
/// Outside code compiled for AVX-512F, callers must check [`available`] first.
#[target_feature(enable = "avx512f")]
pub fn compress_from(
    init: [__m512i; 8],
    state: [__m512i; 8],
    w: [__m512i; 16],
    from: usize,
) -> [__m512i; 8] {
    let mut w = w;
    let mut s = state;
    for (t, k) in K.iter().enumerate().skip(from) {
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
        round(&mut s, _mm512_add_epi32(wt, _mm512_set1_epi32(*k as i32)));
    }
    feed_forward(init, s)
}

/// One compression of the same block in every lane, from its [`schedule`].
///
/// # Safety
/// Outside code compiled for AVX-512F, callers must check [`available`] first.
#[target_feature(enable = "avx512f")]
pub fn compress_scheduled(init: [__m512i; 8], schedule: &[u32; 64]) -> [__m512i; 8] {
    let mut s = init;
    for kw in schedule {
        round(&mut s, _mm512_set1_epi32(*kw as i32));
    }
    feed_forward(init, s)
}

#[target_feature(enable = "avx512f")]
fn feed_forward(init: [__m512i; 8], s: [__m512i; 8]) -> [__m512i; 8] {
    let mut out = s;
    for (o, i) in out.iter_mut().zip(init) {
        *o = _mm512_add_epi32(*o, i);
    }
    out
}

/// One round in every lane; `kw` is the round constant plus the message word.
#[target_feature(enable = "avx512f")]
fn round(s: &mut [__m512i; 8], kw: __m512i) {
    let [a, b, c, d, e, f, g, h] = *s;
    // Ternary-logic truth tables: 0x96 is a ^ b ^ c, 0xca is a ? b : c, 0xe8 the majority.
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

/// Stores registers' lanes (tests and callers that leave the vector code).
///
/// # Safety
/// Outside code compiled for AVX-512F, callers must check [`available`] first.
#[target_feature(enable = "avx512f")]
pub fn store<const N: usize>(x: [__m512i; N]) -> Lanes<N> {
    use core::arch::x86_64::_mm512_storeu_si512;
    x.map(|r| {
        let mut row = [0u32; LANES];
        // SAFETY: a 64-byte array, one unaligned store.
        unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), r) };
        row
    })
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngCore as _, SeedableRng};

    use super::*;
    use crate::obfs2::SHA256_IV;

    /// Both forms against `sha2::compress256`, lane by lane, from random states and blocks.
    #[test]
    fn compressions_match_sha2() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX-512");
            return;
        }
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let mut states: Lanes<8> = [[0; LANES]; 8];
            let mut blocks = [[0u8; 64]; LANES];
            for row in &mut states {
                row.iter_mut().for_each(|w| *w = rng.next_u32());
            }
            blocks.iter_mut().for_each(|b| rng.fill_bytes(b));
            let mut words: Lanes<16> = [[0; LANES]; 16];
            for (lane, b) in blocks.iter().enumerate() {
                for (i, c) in b.chunks_exact(4).enumerate() {
                    words[i][lane] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            // SAFETY (both): checked above.
            let own = unsafe {
                let init = load(&states);
                store(compress_from(init, init, load(&words), 0))
            };
            let shared = unsafe { store(compress_scheduled(load(&states), &schedule(&blocks[0]))) };
            for lane in 0..LANES {
                let mut want: [u32; 8] = std::array::from_fn(|i| states[i][lane]);
                let mut shared_want = want;
                sha2::compress256(&mut want, &[blocks[lane].into()]);
                sha2::compress256(&mut shared_want, &[blocks[0].into()]);
                for i in 0..8 {
                    assert_eq!(own[i][lane], want[i], "own block, lane {lane}");
                    assert_eq!(shared[i][lane], shared_want[i], "shared block, lane {lane}");
                }
            }
        }
        // Rounds split between scalar and vector code equal one compression.
        let block = [7u8; 64];
        let mut words = [0u32; 16];
        for (i, c) in block.chunks_exact(4).enumerate() {
            words[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        let mut state = SHA256_IV;
        scalar_rounds(&mut state, &words[..8]);
        // SAFETY: checked above.
        let split = unsafe {
            store(compress_from(
                splat(&SHA256_IV),
                splat(&state),
                splat(&words),
                8,
            ))
        };
        let mut want = SHA256_IV;
        sha2::compress256(&mut want, &[block.into()]);
        assert!((0..8).all(|i| split[i].iter().all(|w| *w == want[i])));
    }
}
