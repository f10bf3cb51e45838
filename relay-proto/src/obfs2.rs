//! obfuscated2: the 64-byte header that opens every client→proxy and proxy→DC stream
//! (docs/protocol.md §2–3).
//!
//! Header layout (plaintext): `0..8` random, `8..40` key, `40..56` IV, `56..60` protocol tag,
//! `60..62` DC id (i16 LE), `62..64` random. On the wire, bytes `0..56` travel in clear and
//! `56..64` encrypted with the sender's keystream at offsets 56..64.

use std::fmt;

use aes::{
    Aes256Enc,
    cipher::{BlockEncrypt as _, KeyInit as _},
};
use rand::CryptoRng;
use sha2::{Digest, Sha256};

use super::cipher::AesCtr;
use super::mode::{ModeSet, ProtoTag};
use super::secret::Secret;

/// Length of the header.
pub const HEADER_LEN: usize = 64;

/// Length of the replay key: header bytes `8..56` (key and IV).
pub const REPLAY_KEY_LEN: usize = 48;

/// First 4 plaintext bytes (as u32 LE) a header must never start with: they would make a
/// Telegram server (or a DPI box) read the stream as HTTP (`HEAD`, `POST`, `GET `, `OPTI`),
/// unobfuscated intermediate (`dd…`, `ee…`) or a TLS ClientHello (`16 03 01 02`). The superset
/// tdlib and mtg use.
const FORBIDDEN_STARTS: [u32; 7] = [
    0x4441_4548,
    0x5453_4f50,
    0x2054_4547,
    0x4954_504f,
    0xdddd_dddd,
    0xeeee_eeee,
    0x0201_0316,
];

/// A key and IV for one direction.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyIv {
    /// AES-256 key.
    pub key: [u8; 32],
    /// Initial counter.
    pub iv: [u8; 16],
}

impl KeyIv {
    /// A keystream at offset 0.
    pub fn cipher(&self) -> AesCtr {
        AesCtr::new(&self.key, &self.iv)
    }
}

impl fmt::Debug for KeyIv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyIv(…)")
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Obfs2Error {
    /// No secret decrypts the header to a known protocol tag: a wrong secret, a probe, garbage.
    #[error("no secret decrypts the obfuscated2 header to a protocol tag")]
    NoMatch,
    /// A secret matched but its tag is not allowed by the enabled modes (or not `dd` inside TLS).
    #[error("protocol tag {tag:?} is not allowed here (via fake TLS: {via_tls})")]
    ModeNotAllowed {
        /// The tag the client announced.
        tag: ProtoTag,
        /// Whether the header arrived inside fake TLS.
        via_tls: bool,
    },
    /// (DC side) the secret-less header does not decrypt to a protocol tag.
    #[error("obfuscated2 header does not decrypt to a protocol tag")]
    BadTag,
}

/// A client header accepted by [`accept_client_header`].
#[derive(Debug)]
pub struct ClientHandshake {
    /// Index into the `users` slice of the secret that matched.
    pub user: usize,
    /// The framing the client announced.
    pub tag: ProtoTag,
    /// Requested DC: negative = media-only, ±10000 offset = test DCs.
    pub dc: i16,
    /// Client→proxy keystream, positioned at offset 64 (the next client byte).
    pub decrypt: AesCtr,
    /// Proxy→client keystream, at offset 0.
    pub encrypt: AesCtr,
    /// Key and IV of `encrypt`, for fast mode ([`dc_header`]).
    pub encrypt_keys: KeyIv,
    /// Header bytes `8..56`, for the replay cache.
    pub replay_key: [u8; REPLAY_KEY_LEN],
}

/// Validates a client's header against every user's secret (linear in users: one SHA-256
/// block and one AES block per non-matching secret, sixteen secrets at a time on CPUs with
/// AVX-512 and VAES).
///
/// `via_tls` says the header arrived inside fake TLS; `allowed` is the server's mode set.
pub fn accept_client_header(
    header: &[u8; HEADER_LEN],
    users: &[Secret],
    allowed: ModeSet,
    via_tls: bool,
) -> Result<ClientHandshake, Obfs2Error> {
    accept_client_header_hinted(header, users, None, allowed, via_tls)
}

/// [`accept_client_header`], trying user `first` (a hint: the user this source matched last)
/// before the others, so a returning client costs one secret try whatever the user count.
/// The result does not depend on the order: a header decrypts to a tag under at most one
/// secret in practice, and the first match in this order wins.
pub fn accept_client_header_hinted(
    header: &[u8; HEADER_LEN],
    users: &[Secret],
    first: Option<usize>,
    allowed: ModeSet,
    via_tls: bool,
) -> Result<ClientHandshake, Obfs2Error> {
    let middle = middle(header);
    let probe = TagProbe::new(&middle, header);
    let first = first.filter(|&i| i < users.len());
    let mut refused = None;
    let mut attempt = |user: usize| {
        let secret = &users[user];
        // Only the tag block matters for the check: bytes 56..64 alone, with the raw one-block
        // SHA-256 and one AES block; the full keys are derived only for the secret that fits.
        let tail = probe.tail(secret);
        let tag = ProtoTag::from_bytes([tail[0], tail[1], tail[2], tail[3]])?;
        if !allowed.admits(tag, via_tls) {
            refused = Some(Obfs2Error::ModeNotAllowed { tag, via_tls });
            return None;
        }
        let mut decrypt = forward_keys(&middle, Some(secret)).cipher();
        decrypt.seek(HEADER_LEN as u64);
        let down = backward_keys(&middle, Some(secret));
        Some(ClientHandshake {
            user,
            tag,
            dc: i16::from_le_bytes([tail[4], tail[5]]),
            decrypt,
            encrypt: down.cipher(),
            encrypt_keys: down,
            replay_key: middle,
        })
    };
    let found = first.and_then(&mut attempt).or_else(|| {
        probe.search(users, |user| {
            if Some(user) == first {
                None
            } else {
                attempt(user)
            }
        })
    });
    found.ok_or_else(|| refused.unwrap_or(Obfs2Error::NoMatch))
}

/// Whether this CPU tries sixteen secrets at once ([`crate::simd::obfs2_x16`]).
#[cfg(target_arch = "x86_64")]
static WIDE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(crate::simd::obfs2_x16::available);

/// SHA-256's initial hash value (FIPS 180-4 §5.3.3).
pub(crate) const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// What one secret try needs, prepared once per header: the padded SHA-256 block of
/// `middle[0..32] ‖ secret` with the secret left blank, the counter block of offsets 48..64
/// and the encrypted bytes 56..64.
struct TagProbe {
    block: [u8; 64],
    counter: [u8; 16],
    tail: [u8; 8],
}

impl TagProbe {
    fn new(middle: &[u8; REPLAY_KEY_LEN], header: &[u8; HEADER_LEN]) -> TagProbe {
        // 48 bytes of message fit one block with their padding: 0x80, zeros, the bit length.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&middle[..32]);
        block[48] = 0x80;
        block[56..].copy_from_slice(&(48u64 * 8).to_be_bytes());
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&middle[32..]);
        // Bytes 48..64 are keystream block 3.
        let counter = u128::from_be_bytes(iv).wrapping_add(3).to_be_bytes();
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&header[56..]);
        TagProbe {
            block,
            counter,
            tail,
        }
    }

    /// Calls `attempt` on users in index order until it returns something; with AVX-512 and
    /// VAES only on those whose secret decrypts the tag to a protocol tag (sixteen tried at
    /// once), otherwise on every user. `attempt` confirms a user with [`TagProbe::tail`].
    fn search<T>(&self, users: &[Secret], attempt: impl FnMut(usize) -> Option<T>) -> Option<T> {
        #[cfg(target_arch = "x86_64")]
        if *WIDE && users.len() >= crate::simd::sha256_x16::BATCH_FROM {
            let mut key_prefix = [0u8; 32];
            key_prefix.copy_from_slice(&self.block[..32]);
            let wide = crate::simd::obfs2_x16::HeaderProbe::new(
                &key_prefix,
                self.counter,
                [self.tail[0], self.tail[1], self.tail[2], self.tail[3]],
            );
            return crate::simd::sha256_x16::search(
                users.len(),
                |range| {
                    if range.len() >= crate::simd::sha256_x16::BATCH_FROM {
                        // SAFETY: `WIDE` says the CPU has what `tag_matches` needs.
                        unsafe { wide.tag_matches(&users[range]) }
                    } else {
                        u16::MAX >> (16 - range.len())
                    }
                },
                attempt,
            );
        }
        (0..users.len()).find_map(attempt)
    }

    /// Plaintext bytes 56..64 under `secret`.
    fn tail(&self, secret: &Secret) -> [u8; 8] {
        let mut block = self.block;
        block[32..48].copy_from_slice(secret.as_bytes());
        let mut state = SHA256_IV;
        sha2::compress256(&mut state, &[block.into()]);
        let mut key = [0u8; 32];
        for (k, w) in key.chunks_exact_mut(4).zip(state) {
            k.copy_from_slice(&w.to_be_bytes());
        }
        let mut keystream = self.counter.into();
        Aes256Enc::new(&key.into()).encrypt_block(&mut keystream);
        let mut tail = self.tail;
        for (t, k) in tail.iter_mut().zip(&keystream[8..]) {
            *t ^= k;
        }
        tail
    }
}

/// A fresh header toward a DC, with both keystreams of the proxy's side.
#[derive(Debug)]
pub struct DcHandshake {
    /// The 64 bytes to send first.
    pub wire: [u8; HEADER_LEN],
    /// Proxy→DC keystream, positioned at offset 64.
    pub encrypt: AesCtr,
    /// DC→proxy keystream, at offset 0.
    pub decrypt: AesCtr,
}

/// Builds the proxy→DC header for `tag` and `dc` (docs/protocol.md §3): random, obeying the
/// forbidden-prefix rules, no secret (keys used raw).
///
/// With `fast = Some(client encrypt keys)` (fast mode), bytes `8..56` are set to
/// reverse(key ‖ iv) so the DC→proxy keystream *is* the proxy→client keystream: DC→client
/// bytes can then be forwarded untouched. Only bytes 0..8 and 62..64 are random then.
pub fn dc_header<R: CryptoRng + ?Sized>(
    rng: &mut R,
    tag: ProtoTag,
    dc: i16,
    fast: Option<&KeyIv>,
) -> DcHandshake {
    let fixed = fast.map(|k| {
        let mut m = [0u8; REPLAY_KEY_LEN];
        m[..32].copy_from_slice(&k.key);
        m[32..].copy_from_slice(&k.iv);
        m.reverse();
        m
    });
    let (wire, encrypt, decrypt) = build_header(rng, None, tag, dc, fixed);
    DcHandshake {
        wire,
        encrypt,
        decrypt,
    }
}

/// A header built by [`client_header`]: what a client (or a test) sends to a proxy.
#[derive(Debug)]
pub struct ClientSide {
    /// The 64 bytes to send first.
    pub wire: [u8; HEADER_LEN],
    /// Client→proxy keystream, positioned at offset 64.
    pub encrypt: AesCtr,
    /// Proxy→client keystream, at offset 0.
    pub decrypt: AesCtr,
}

/// Client side of [`accept_client_header`]: the header a Telegram client sends to a proxy
/// with `secret` (for tests and tools).
pub fn client_header<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &Secret,
    tag: ProtoTag,
    dc: i16,
) -> ClientSide {
    let (wire, encrypt, decrypt) = build_header(rng, Some(secret), tag, dc, None);
    ClientSide {
        wire,
        encrypt,
        decrypt,
    }
}

/// A header accepted by [`accept_dc_header`].
#[derive(Debug)]
pub struct DcAccepted {
    /// The framing announced.
    pub tag: ProtoTag,
    /// The DC id in bytes 60..62.
    pub dc: i16,
    /// Proxy→DC keystream, positioned at offset 64.
    pub decrypt: AesCtr,
    /// DC→proxy keystream, at offset 0.
    pub encrypt: AesCtr,
}

/// DC side of [`dc_header`]: what a Telegram DC (or the test fake DC) does with a secret-less
/// header. Any tag is accepted.
pub fn accept_dc_header(wire: &[u8; HEADER_LEN]) -> Result<DcAccepted, Obfs2Error> {
    let middle = middle(wire);
    let mut decrypt = forward_keys(&middle, None).cipher();
    let mut plain = *wire;
    decrypt.apply(&mut plain);
    let tag = ProtoTag::from_bytes([plain[56], plain[57], plain[58], plain[59]])
        .ok_or(Obfs2Error::BadTag)?;
    Ok(DcAccepted {
        tag,
        dc: i16::from_le_bytes([plain[60], plain[61]]),
        decrypt,
        encrypt: backward_keys(&middle, None).cipher(),
    })
}

/// Whether a plaintext header may be sent: not confusable with another protocol on the wire.
pub fn is_allowed_start(header: &[u8; HEADER_LEN]) -> bool {
    let first = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    header[0] != 0xef && !FORBIDDEN_STARTS.contains(&first) && header[4..8] != [0; 4]
}

/// Whether `prefix` (the first bytes a client sent, any length) can still begin a header a
/// Telegram client would send: clients re-roll headers with a forbidden start (see
/// [`is_allowed_start`]), so a prefix showing one is a probe, decided as soon as the bytes that
/// show it have arrived rather than after all 64.
pub fn may_start_header(prefix: &[u8]) -> bool {
    if prefix.first() == Some(&0xef) {
        return false;
    }
    let n = prefix.len().min(4);
    let starts_forbidden = FORBIDDEN_STARTS
        .iter()
        .any(|f| f.to_le_bytes()[..n] == prefix[..n]);
    // A forbidden start rules the prefix out only once all four of its bytes are there: "GE"
    // may still become "GEX…".
    if n == 4 && starts_forbidden {
        return false;
    }
    !(prefix.len() >= 8 && prefix[4..8] == [0; 4])
}

/// Random header with the given middle (or a random one), tag and DC, re-rolled until its
/// start is allowed; returns the wire bytes, the sender's keystream at 64 and the receiver's
/// keystream at 0.
fn build_header<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: Option<&Secret>,
    tag: ProtoTag,
    dc: i16,
    fixed_middle: Option<[u8; REPLAY_KEY_LEN]>,
) -> ([u8; HEADER_LEN], AesCtr, AesCtr) {
    let mut h = [0u8; HEADER_LEN];
    loop {
        rng.fill_bytes(&mut h);
        if let Some(m) = &fixed_middle {
            h[8..56].copy_from_slice(m);
        }
        if is_allowed_start(&h) {
            break;
        }
    }
    h[56..60].copy_from_slice(&tag.bytes());
    h[60..62].copy_from_slice(&dc.to_le_bytes());

    let middle = middle(&h);
    let mut send = forward_keys(&middle, secret).cipher();
    let mut encrypted = h;
    send.apply(&mut encrypted);
    // Only the tag, DC and trailing random travel encrypted; the key material must be clear.
    h[56..].copy_from_slice(&encrypted[56..]);
    (h, send, backward_keys(&middle, secret).cipher())
}

fn middle(header: &[u8; HEADER_LEN]) -> [u8; REPLAY_KEY_LEN] {
    let mut m = [0u8; REPLAY_KEY_LEN];
    m.copy_from_slice(&header[8..56]);
    m
}

/// Keys for the direction the header's sender encrypts: key = H[8..40], IV = H[40..56].
fn forward_keys(middle: &[u8; REPLAY_KEY_LEN], secret: Option<&Secret>) -> KeyIv {
    split_keys(middle, secret)
}

/// Keys for the other direction: the same 48 bytes reversed.
fn backward_keys(middle: &[u8; REPLAY_KEY_LEN], secret: Option<&Secret>) -> KeyIv {
    let mut r = *middle;
    r.reverse();
    split_keys(&r, secret)
}

/// key = SHA-256(m[0..32] ‖ secret) with a secret, m[0..32] raw without; IV = m[32..48].
fn split_keys(m: &[u8; REPLAY_KEY_LEN], secret: Option<&Secret>) -> KeyIv {
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    match secret {
        Some(s) => key.copy_from_slice(
            &Sha256::new()
                .chain_update(&m[..32])
                .chain_update(s.as_bytes())
                .finalize(),
        ),
        None => key.copy_from_slice(&m[..32]),
    }
    iv.copy_from_slice(&m[32..]);
    KeyIv { key, iv }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng as _, RngCore as _, SeedableRng};

    use super::*;
    use crate::mode::Mode;
    use crate::vectors;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        h(s).try_into().unwrap()
    }

    fn secret(s: &str) -> Secret {
        Secret::from_hex(s).unwrap()
    }

    /// A Telethon-generated client header, its first client bytes, and the proxy's first reply.
    fn check_telethon(v: &vectors::Obfs2Vector, via_tls: bool) {
        let other = Secret::from_bytes([0x42; 16]);
        let users = [other.clone(), secret(v.secret), other];
        let mut hs = accept_client_header(&arr(v.header), &users, ModeSet::ALL, via_tls).unwrap();
        assert_eq!(hs.user, 1);
        assert_eq!(hs.tag.bytes(), arr::<4>(v.tag));
        assert_eq!(hs.dc, v.dc);
        assert_eq!(hs.decrypt.position(), 64);
        assert_eq!(hs.replay_key[..], h(v.header)[8..56]);
        let mut up = h(v.up_wire);
        hs.decrypt.apply(&mut up);
        assert_eq!(hex::encode(up), v.up_plain);
        let mut down = h(v.down_plain);
        hs.encrypt.apply(&mut down);
        assert_eq!(hex::encode(down), v.down_wire);
        // The exported keys are the encrypt cipher's.
        let mut again = h(v.down_plain);
        hs.encrypt_keys.cipher().apply(&mut again);
        assert_eq!(hex::encode(again), v.down_wire);
    }

    #[test]
    fn telethon_abridged_header() {
        check_telethon(&vectors::TELETHON_ABRIDGED, false);
    }

    #[test]
    fn telethon_intermediate_header_media_dc() {
        check_telethon(&vectors::TELETHON_INTERMEDIATE, false);
    }

    #[test]
    fn telethon_padded_header_test_dc() {
        check_telethon(&vectors::TELETHON_PADDED, false);
        check_telethon(&vectors::TELETHON_PADDED, true);
    }

    #[test]
    fn telethon_secretless_header_accepted_by_dc_side() {
        let v = &vectors::TELETHON_DC;
        let mut dc = accept_dc_header(&arr(v.header)).unwrap();
        assert_eq!(dc.tag, ProtoTag::Intermediate);
        let mut up = h(v.up_wire);
        dc.decrypt.apply(&mut up);
        assert_eq!(hex::encode(up), v.up_plain);
        let mut down = h(v.down_plain);
        dc.encrypt.apply(&mut down);
        assert_eq!(hex::encode(down), v.down_wire);
    }

    #[test]
    fn tag_probe_matches_the_generic_derivation() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut header = [0u8; HEADER_LEN];
            rng.fill_bytes(&mut header);
            // Include IVs whose low 64 bits carry into the high half at +3.
            if header[40] & 1 == 0 {
                header[48..56].fill(0xff);
            }
            let secret = Secret::from_bytes(rng.random());
            let m = middle(&header);
            let mut generic = forward_keys(&m, Some(&secret)).cipher();
            generic.seek(56);
            let mut expect = [0u8; 8];
            expect.copy_from_slice(&header[56..]);
            generic.apply(&mut expect);
            assert_eq!(TagProbe::new(&m, &header).tail(&secret), expect);
        }
    }

    #[test]
    fn hint_is_tried_first_and_bounds_checked() {
        let v = &vectors::TELETHON_PADDED;
        let users = [
            Secret::from_bytes([1; 16]),
            secret(v.secret),
            Secret::from_bytes([2; 16]),
        ];
        let header = arr(v.header);
        for first in [None, Some(0), Some(1), Some(2), Some(99)] {
            let hs = accept_client_header_hinted(&header, &users, first, ModeSet::ALL, false)
                .expect("accepted whatever the hint");
            assert_eq!(hs.user, 1, "hint {first:?}");
        }
        assert_eq!(
            accept_client_header_hinted(&[0; 64], &users, Some(1), ModeSet::ALL, false)
                .unwrap_err(),
            Obfs2Error::NoMatch
        );
    }

    #[test]
    fn wrong_secret_or_garbage_is_no_match() {
        let v = &vectors::TELETHON_ABRIDGED;
        let users = [Secret::from_bytes([1; 16]), Secret::from_bytes([2; 16])];
        assert_eq!(
            accept_client_header(&arr(v.header), &users, ModeSet::ALL, false).unwrap_err(),
            Obfs2Error::NoMatch
        );
        assert_eq!(
            accept_client_header(&[0; 64], &[secret(v.secret)], ModeSet::ALL, false).unwrap_err(),
            Obfs2Error::NoMatch
        );
        assert_eq!(
            accept_client_header(&arr(v.header), &[], ModeSet::ALL, false).unwrap_err(),
            Obfs2Error::NoMatch
        );
    }

    #[test]
    fn tag_policy_enforced() {
        let users = [secret(vectors::TELETHON_ABRIDGED.secret)];
        let ef = arr(vectors::TELETHON_ABRIDGED.header);
        let dd = arr(vectors::TELETHON_PADDED.header);
        let not_allowed = |tag, via_tls| Obfs2Error::ModeNotAllowed { tag, via_tls };
        assert_eq!(
            accept_client_header(&ef, &users, ModeSet::DEFAULT, false).unwrap_err(),
            not_allowed(ProtoTag::Abridged, false)
        );
        assert_eq!(
            accept_client_header(&ef, &users, ModeSet::ALL, true).unwrap_err(),
            not_allowed(ProtoTag::Abridged, true)
        );
        let tls_only = ModeSet::EMPTY.with(Mode::Tls);
        assert!(accept_client_header(&dd, &users, tls_only, false).is_err());
        assert!(accept_client_header(&dd, &users, tls_only, true).is_ok());
        let secure_only = ModeSet::EMPTY.with(Mode::Secure);
        assert!(accept_client_header(&dd, &users, secure_only, false).is_ok());
        assert!(accept_client_header(&dd, &users, secure_only, true).is_err());
    }

    /// Every user of lists around the sixteen-lane batch sizes is found as itself, with and
    /// without a hint, and a refused mode is reported the same way as by the one-user path.
    #[test]
    fn many_users_each_found_with_or_without_hint() {
        let mut rng = StdRng::seed_from_u64(5);
        for n in [1, 3, 4, 15, 16, 17, 33, 40] {
            let users: Vec<Secret> = crate::secret::random_secrets(&mut rng, n);
            for k in 0..n {
                let c = client_header(&mut rng, &users[k], ProtoTag::PaddedIntermediate, 2);
                for hint in [None, Some(k), Some((k + 1) % n), Some(n + 7)] {
                    let p = accept_client_header_hinted(&c.wire, &users, hint, ModeSet::ALL, false)
                        .unwrap();
                    assert_eq!((p.user, p.dc), (k, 2), "{n} users, hint {hint:?}");
                }
                assert_eq!(
                    accept_client_header(&c.wire, &users, ModeSet::EMPTY.with(Mode::Tls), false)
                        .unwrap_err(),
                    Obfs2Error::ModeNotAllowed {
                        tag: ProtoTag::PaddedIntermediate,
                        via_tls: false
                    }
                );
            }
            let mut garbage = [0u8; HEADER_LEN];
            rng.fill_bytes(&mut garbage);
            assert_eq!(
                accept_client_header(&garbage, &users, ModeSet::ALL, false).unwrap_err(),
                Obfs2Error::NoMatch
            );
        }
    }

    #[test]
    fn client_header_round_trip_with_proxy() {
        let mut rng = StdRng::seed_from_u64(1);
        let s = Secret::from_bytes([9; 16]);
        for (tag, dc) in [
            (ProtoTag::Abridged, 1),
            (ProtoTag::Intermediate, -5),
            (ProtoTag::PaddedIntermediate, -10003),
        ] {
            let mut c = client_header(&mut rng, &s, tag, dc);
            assert!(is_allowed_start(&c.wire));
            let mut p =
                accept_client_header(&c.wire, std::slice::from_ref(&s), ModeSet::ALL, false)
                    .unwrap();
            assert_eq!((p.tag, p.dc), (tag, dc));
            let mut msg = *b"hello proxy, from the client....";
            c.encrypt.apply(&mut msg);
            p.decrypt.apply(&mut msg);
            assert_eq!(&msg, b"hello proxy, from the client....");
            p.encrypt.apply(&mut msg);
            c.decrypt.apply(&mut msg);
            assert_eq!(&msg, b"hello proxy, from the client....");
        }
    }

    #[test]
    fn dc_header_round_trip_with_dc() {
        let mut rng = StdRng::seed_from_u64(2);
        let mut p = dc_header(&mut rng, ProtoTag::PaddedIntermediate, -2, None);
        let mut d = accept_dc_header(&p.wire).unwrap();
        assert_eq!((d.tag, d.dc), (ProtoTag::PaddedIntermediate, -2));
        let mut msg = [0x5a; 100];
        p.encrypt.apply(&mut msg);
        d.decrypt.apply(&mut msg);
        assert_eq!(msg, [0x5a; 100]);
        d.encrypt.apply(&mut msg);
        p.decrypt.apply(&mut msg);
        assert_eq!(msg, [0x5a; 100]);
    }

    #[test]
    fn fast_mode_dc_keystream_equals_client_keystream() {
        let mut rng = StdRng::seed_from_u64(3);
        let s = Secret::from_bytes([3; 16]);
        let mut client = client_header(&mut rng, &s, ProtoTag::PaddedIntermediate, 4);
        let mut proxy =
            accept_client_header(&client.wire, std::slice::from_ref(&s), ModeSet::ALL, false)
                .unwrap();
        let up = dc_header(&mut rng, proxy.tag, proxy.dc, Some(&proxy.encrypt_keys));
        assert!(is_allowed_start(&up.wire));
        let mut dc = accept_dc_header(&up.wire).unwrap();

        // The DC encrypts a reply; the proxy forwards it without touching it.
        let reply = *b"DC reply forwarded without any AES work at the proxy";
        let mut wire = reply;
        dc.encrypt.apply(&mut wire);
        client.decrypt.apply(&mut wire);
        assert_eq!(wire, reply);

        // And the keystreams agree byte for byte, not just on one message.
        let mut a = [0u8; 4096];
        let mut b = [0u8; 4096];
        dc.encrypt.apply(&mut a);
        proxy.encrypt.seek(reply.len() as u64);
        proxy.encrypt.apply(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn forbidden_starts_are_decided_on_the_bytes_that_show_them() {
        for probe in [
            &b"GET / HTTP/1.1"[..],
            b"HEAD /",
            b"POST",
            b"OPTIONS * HTTP/1.1",
            &[0xef],
            &[0xef, 0, 0],
            &[0xdd; 4],
            &[0xee; 5],
            &[0x16, 0x03, 0x01, 0x02],
            &[1, 2, 3, 4, 0, 0, 0, 0],
            &[0; 8],
        ] {
            assert!(!may_start_header(probe), "{probe:02x?} let through");
        }
        for prefix in [
            &b""[..],
            b"G",
            b"GE",
            b"GET",
            b"GETX",
            b"HEAX",
            b"PUT / HTTP/1.1",
            &[0xdd, 0xdd, 0xdd],
            &[0x16, 0x03, 0x01, 0x03],
            &[1, 2, 3, 4, 0, 0, 0],
            &[1, 2, 3, 4, 0, 0, 0, 1],
            &[0; 7],
        ] {
            assert!(may_start_header(prefix), "{prefix:02x?} refused");
        }
        // Agrees with the whole-header rule on every header a client may send and every one
        // it may not.
        let mut rng = rand::rng();
        for first in FORBIDDEN_STARTS.iter().map(|f| f.to_le_bytes()) {
            let mut h = [0u8; HEADER_LEN];
            rng.fill_bytes(&mut h);
            h[..4].copy_from_slice(&first);
            assert_eq!(may_start_header(&h), is_allowed_start(&h));
            for n in 0..4 {
                assert!(may_start_header(&h[..n]) || h[0] == 0xef);
            }
        }
        for _ in 0..10_000 {
            let mut h = [0u8; HEADER_LEN];
            rng.fill_bytes(&mut h);
            if rng.random_bool(0.1) {
                h[4..8].fill(0);
            }
            assert_eq!(may_start_header(&h), is_allowed_start(&h));
        }
    }

    #[test]
    fn forbidden_starts_are_never_produced() {
        // A rigged RNG that first yields every forbidden start, then good bytes.
        struct Rigged(Vec<[u8; 8]>, StdRng);
        impl rand::RngCore for Rigged {
            fn next_u32(&mut self) -> u32 {
                self.1.next_u32()
            }
            fn next_u64(&mut self) -> u64 {
                self.1.next_u64()
            }
            fn fill_bytes(&mut self, dst: &mut [u8]) {
                self.1.fill_bytes(dst);
                if let Some(start) = self.0.pop() {
                    dst[..8].copy_from_slice(&start);
                }
            }
        }
        impl CryptoRng for Rigged {}
        let mut bad: Vec<[u8; 8]> = FORBIDDEN_STARTS
            .iter()
            .map(|w| {
                let mut s = [1u8; 8];
                s[..4].copy_from_slice(&w.to_le_bytes());
                s
            })
            .collect();
        bad.push([0xef, 1, 2, 3, 4, 5, 6, 7]);
        bad.push([1, 2, 3, 4, 0, 0, 0, 0]);
        for (i, start) in bad.iter().enumerate() {
            let mut header = [1u8; 64];
            header[..8].copy_from_slice(start);
            assert!(!is_allowed_start(&header), "case {i}");
        }
        let n = bad.len();
        let mut rng = Rigged(bad, StdRng::seed_from_u64(4));
        let keys = KeyIv {
            key: [1; 32],
            iv: [2; 16],
        };
        let out = dc_header(&mut rng, ProtoTag::Abridged, 2, Some(&keys));
        assert!(
            rng.0.is_empty(),
            "all {n} forbidden starts were drawn and re-rolled"
        );
        assert!(is_allowed_start(&out.wire));

        let mut rng = StdRng::seed_from_u64(5);
        let s = Secret::from_bytes([5; 16]);
        for i in 0..20_000 {
            let fast = (i % 2 == 0).then_some(&keys);
            assert!(is_allowed_start(
                &dc_header(&mut rng, ProtoTag::Intermediate, 2, fast).wire
            ));
            assert!(is_allowed_start(
                &client_header(&mut rng, &s, ProtoTag::Abridged, 2).wire
            ));
        }
    }

    #[test]
    fn fast_mode_fixes_middle_only() {
        let mut rng = StdRng::seed_from_u64(6);
        let keys = KeyIv {
            key: core::array::from_fn(|i| i as u8),
            iv: core::array::from_fn(|i| 100 + i as u8),
        };
        let a = dc_header(&mut rng, ProtoTag::Abridged, 2, Some(&keys));
        let b = dc_header(&mut rng, ProtoTag::Abridged, 2, Some(&keys));
        let mut expect = [0u8; 48];
        expect[..32].copy_from_slice(&keys.key);
        expect[32..].copy_from_slice(&keys.iv);
        expect.reverse();
        assert_eq!(a.wire[8..56], expect);
        assert_eq!(b.wire[8..56], expect);
        assert_ne!(a.wire[..8], b.wire[..8]);
    }
}
