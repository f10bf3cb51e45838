//! ClientHello authentication (docs/protocol.md §4): the client random is HMAC-SHA256(secret, hello
//! with the random zeroed) with the client's unix time XORed into its last 4 bytes.

use hmac::{Hmac, Mac};
use rand::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{CONTENT_HANDSHAKE, RECORD_HEADER_LEN};
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Default accepted clock skew between client and server, in seconds (either direction).
pub const DEFAULT_WINDOW_SECS: u64 = 120;

/// Timestamps below this (1000 days, i.e. before late 1972) cannot be wall-clock time: some
/// clients send time since boot. They are accepted when [`HelloPolicy::allow_uptime`] is set, as
/// mtprotoproxy and telemt do; the replay cache is then their only replay protection.
pub const UPTIME_MAX_SECS: u32 = 1000 * 86_400;

/// Offset of the client random in the handshake message (4-byte header + 2-byte version).
const RANDOM_AT: usize = 6;

/// What a ClientHello must satisfy besides a valid MAC.
#[derive(Debug, Clone, Copy)]
pub struct HelloPolicy<'a> {
    /// The SNI clients must send: the `[tls] domain` (compared ASCII case-insensitively).
    pub domain: &'a str,
    /// The server's unix time, seconds.
    pub now: u64,
    /// Accepted skew in seconds, see [`DEFAULT_WINDOW_SECS`].
    pub window_secs: u64,
    /// Accept uptime-like timestamps, see [`UPTIME_MAX_SECS`].
    pub allow_uptime: bool,
}

/// Why a ClientHello was refused. Distinct variants so probes can be counted by reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The first non-GREASE cipher suite is not a TLS 1.3 suite (13 01..13 03).
    #[error("first cipher suite {0:02x?} is not TLS 1.3")]
    UnsupportedCipher([u8; 2]),
    /// No SNI, or not the configured domain.
    #[error("SNI {sni:?} is not the configured domain")]
    UnknownSni {
        /// The host name sent, if any.
        sni: Option<String>,
    },
    /// No user's secret produces this client random.
    #[error("ClientHello MAC matches no secret")]
    BadMac,
    /// The MAC matched but the embedded timestamp is too far from the server's clock.
    #[error("user {user}: ClientHello timestamp {timestamp} is out of window (now {now})")]
    TimestampOutOfWindow {
        /// Index of the matching secret.
        user: usize,
        /// The client's timestamp.
        timestamp: u32,
        /// The server's time.
        now: u64,
    },
}

/// A TLS session id (0..=32 bytes), echoed in the ServerHello.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    len: u8,
    bytes: [u8; 32],
}

impl SessionId {
    /// `None` if longer than 32 bytes.
    pub fn new(id: &[u8]) -> Option<SessionId> {
        let mut bytes = [0; 32];
        bytes.get_mut(..id.len())?.copy_from_slice(id);
        Some(SessionId {
            len: u8::try_from(id.len()).ok()?,
            bytes,
        })
    }

    /// The id bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionId({})", hex::encode(self.as_slice()))
    }
}

/// An authenticated ClientHello.
#[derive(Debug, Clone)]
pub struct TlsClientHello {
    /// Index into `users` of the secret that matched.
    pub user: usize,
    /// The random field as received (it keys the server's HMAC).
    pub client_random: [u8; 32],
    /// Echoed in the ServerHello.
    pub session_id: SessionId,
    /// The first non-GREASE cipher suite, echoed in the ServerHello.
    pub cipher: [u8; 2],
    /// The server name sent.
    pub sni: String,
    /// The client's unix time (or uptime) from the MAC.
    pub timestamp: u32,
}

impl TlsClientHello {
    /// Anti-replay key: the first 16 bytes of the client random (as official, mtprotoproxy,
    /// telemt).
    pub fn replay_key(&self) -> [u8; 16] {
        let mut k = [0; 16];
        k.copy_from_slice(&self.client_random[..16]);
        k
    }
}

/// A user's secret prepared for ClientHello checks: the HMAC key pads already absorbed
/// (RFC 2104's `K ⊕ ipad` and `K ⊕ opad` blocks), so a try costs the message's compressions
/// and the outer one, not two more for the key. Built once per user when the configuration is
/// loaded.
#[derive(Clone)]
pub struct HelloKey {
    mac: HmacSha256,
    /// SHA-256 states after the ipad and the opad block, for [`crate::simd::hello_x16`].
    pads: [[u32; 8]; 2],
}

impl HelloKey {
    /// Prepares `secret`.
    pub fn new(secret: &Secret) -> HelloKey {
        let pads = [0x36, 0x5c].map(|pad| {
            let mut block = [pad; 64];
            for (b, k) in block.iter_mut().zip(secret.as_bytes()) {
                *b ^= k;
            }
            let mut state = crate::obfs2::SHA256_IV;
            sha2::compress256(&mut state, &[block.into()]);
            state
        });
        HelloKey {
            // A 16-byte key is always a valid HMAC key.
            mac: <HmacSha256 as Mac>::new_from_slice(secret.as_bytes()).expect("any key length"),
            pads,
        }
    }

    /// The SHA-256 states after the inner (ipad) and outer (opad) key blocks.
    pub fn pad_states(&self) -> (&[u32; 8], &[u32; 8]) {
        (&self.pads[0], &self.pads[1])
    }
}

impl std::fmt::Debug for HelloKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HelloKey(…)")
    }
}

/// Authenticates a reassembled ClientHello handshake message against every user's secret and
/// checks SNI, cipher and timestamp.
///
/// The MAC is computed over the single-record form `16 03 01 <len>` + message, whatever records
/// carried it (as mtg does after reassembly). Cheap checks (structure, cipher, SNI) come before
/// the per-user HMACs, so probes cost little.
pub fn verify_client_hello(
    handshake: &[u8],
    users: &[Secret],
    policy: &HelloPolicy<'_>,
) -> Result<TlsClientHello, HelloError> {
    let keys: Vec<HelloKey> = users.iter().map(HelloKey::new).collect();
    verify_client_hello_keys(handshake, &keys, None, policy)
}

/// [`verify_client_hello`] with prepared keys (`keys[i]` is user `i`'s), trying user `first`
/// (a hint: the user this source matched last) before the others.
pub fn verify_client_hello_keys(
    handshake: &[u8],
    keys: &[HelloKey],
    first: Option<usize>,
    policy: &HelloPolicy<'_>,
) -> Result<TlsClientHello, HelloError> {
    let parsed = parse(handshake)?;
    if !parsed
        .sni
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case(policy.domain))
    {
        return Err(HelloError::UnknownSni { sni: parsed.sni });
    }
    let len = u16::try_from(handshake.len()).map_err(|_| HelloError::Malformed("too long"))?;
    let record_header = [CONTENT_HANDSHAKE, 0x03, 0x01, (len >> 8) as u8, len as u8];
    let received = &parsed.random;

    // The client's timestamp when `user`'s MAC matches the random.
    let timestamp_of = |user: usize| {
        let mac = hello_mac_keyed(&keys[user], &record_header, handshake);
        if !bool::from(mac[..28].ct_eq(&received[..28])) {
            return None;
        }
        let t = [28, 29, 30, 31].map(|i| mac[i] ^ received[i]);
        Some((user, u32::from_le_bytes(t)))
    };
    let first = first.filter(|&i| i < keys.len());
    let matched = first.and_then(timestamp_of).or_else(|| {
        search(keys, &record_header, handshake, received, |user| {
            if Some(user) == first {
                None
            } else {
                timestamp_of(user)
            }
        })
    });
    let Some((user, timestamp)) = matched else {
        return Err(HelloError::BadMac);
    };
    let skew = policy.now.abs_diff(u64::from(timestamp));
    let uptime = policy.allow_uptime && timestamp < UPTIME_MAX_SECS;
    if skew > policy.window_secs && !uptime {
        return Err(HelloError::TimestampOutOfWindow {
            user,
            timestamp,
            now: policy.now,
        });
    }
    Ok(TlsClientHello {
        user,
        client_random: parsed.random,
        session_id: parsed.session_id,
        cipher: parsed.cipher,
        sni: parsed.sni.unwrap_or_default(),
        timestamp,
    })
}

/// Whether this CPU computes sixteen users' MACs at once ([`crate::simd::hello_x16`]).
#[cfg(target_arch = "x86_64")]
static WIDE: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(crate::simd::hello_x16::available);

/// Calls `attempt` on users in index order until it returns something; with AVX-512 only on
/// those whose MAC starts like the client random (sixteen computed at once), otherwise on
/// every user. `attempt` checks a user with [`hello_mac_keyed`].
fn search<T>(
    keys: &[HelloKey],
    record_header: &[u8; 5],
    handshake: &[u8],
    random: &[u8; 32],
    attempt: impl FnMut(usize) -> Option<T>,
) -> Option<T> {
    #[cfg(target_arch = "x86_64")]
    use crate::simd::sha256_x16;
    #[cfg(target_arch = "x86_64")]
    if *WIDE && keys.len() >= sha256_x16::BATCH_FROM {
        let message = [
            record_header.as_slice(),
            handshake.get(..RANDOM_AT).unwrap_or_default(),
            &[0; 32],
            handshake.get(RANDOM_AT + 32..).unwrap_or_default(),
        ];
        let probe = crate::simd::hello_x16::HelloProbe::new(&message, random);
        return sha256_x16::search(
            keys.len(),
            |range| {
                if range.len() >= sha256_x16::BATCH_FROM {
                    // SAFETY: `WIDE` says the CPU has what `mac_matches` needs.
                    unsafe { probe.mac_matches(&keys[range]) }
                } else {
                    u16::MAX >> (16 - range.len())
                }
            },
            attempt,
        );
    }
    (0..keys.len()).find_map(attempt)
}

/// HMAC-SHA256(secret, record header ‖ handshake with the random zeroed), without copying.
fn hello_mac(secret: &Secret, record_header: &[u8; 5], handshake: &[u8]) -> [u8; 32] {
    hello_mac_keyed(&HelloKey::new(secret), record_header, handshake)
}

/// [`hello_mac`] from a prepared key: clones the keyed state instead of re-absorbing the pads.
fn hello_mac_keyed(key: &HelloKey, record_header: &[u8; 5], handshake: &[u8]) -> [u8; 32] {
    let mut mac = key.mac.clone();
    mac.update(record_header);
    // The slices are bounds-checked by `parse` (a hello shorter than the random is malformed).
    mac.update(handshake.get(..RANDOM_AT).unwrap_or_default());
    mac.update(&[0; 32]);
    mac.update(handshake.get(RANDOM_AT + 32..).unwrap_or_default());
    mac.finalize().into_bytes().into()
}

struct Parsed {
    random: [u8; 32],
    session_id: SessionId,
    cipher: [u8; 2],
    sni: Option<String>,
}

/// Parses the fields we need; the rest must merely be well-formed.
fn parse(handshake: &[u8]) -> Result<Parsed, HelloError> {
    let mut c = Cursor(handshake);
    if c.u8()? != 0x01 {
        return Err(HelloError::Malformed("not a ClientHello"));
    }
    if c.u24()? != c.0.len() {
        return Err(HelloError::Malformed("handshake length"));
    }
    c.take(2)?; // legacy_version
    let mut random = [0; 32];
    random.copy_from_slice(c.take(32)?);
    let sid_len = usize::from(c.u8()?);
    let session_id = SessionId::new(c.take(sid_len)?).ok_or(HelloError::Malformed("session id"))?;
    let n = c.u16()?;
    let suites = c.take(n)?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    let n = usize::from(c.u8()?);
    c.take(n)?; // compression methods
    let mut sni = None;
    if !c.0.is_empty() {
        let n = c.u16()?;
        let mut exts = Cursor(c.take(n)?);
        if !c.0.is_empty() {
            return Err(HelloError::Malformed("trailing bytes"));
        }
        while !exts.0.is_empty() {
            let kind = exts.u16()?;
            let n = exts.u16()?;
            let data = exts.take(n)?;
            if kind == 0 && sni.is_none() {
                sni = Some(parse_sni(data)?);
            }
        }
    }
    let cipher = first_non_grease(suites);
    if !matches!(cipher, [0x13, 0x01..=0x03]) {
        return Err(HelloError::UnsupportedCipher(cipher));
    }
    Ok(Parsed {
        random,
        session_id,
        cipher,
        sni,
    })
}

/// GREASE suites have `(b & 0x0f) == 0x0a` in both bytes (RFC 8701).
fn first_non_grease(suites: &[u8]) -> [u8; 2] {
    suites
        .chunks_exact(2)
        .map(|s| [s[0], s[1]])
        .find(|s| !s.iter().all(|b| b & 0x0f == 0x0a))
        .unwrap_or([0, 0])
}

/// The first host_name of a server_name extension.
fn parse_sni(data: &[u8]) -> Result<String, HelloError> {
    let mut c = Cursor(data);
    let n = c.u16()?;
    let mut list = Cursor(c.take(n)?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let n = list.u16()?;
        let name = list.take(n)?;
        if kind == 0 {
            if name.is_empty() || !name.is_ascii() {
                return Err(HelloError::Malformed("server name"));
            }
            return Ok(String::from_utf8_lossy(name).into_owned());
        }
    }
    Err(HelloError::Malformed("server name list"))
}

/// Big-endian reader over a byte slice; every read is bounds-checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if n > self.0.len() {
            return Err(HelloError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, HelloError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Result<usize, HelloError> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// Client side of [`verify_client_hello`]: a minimal TLS 1.3 ClientHello record (GREASE suite,
/// SNI, supported_versions, X25519 key share) authenticated with `secret` and `timestamp`.
/// For tests and tools; it does not imitate a browser's fingerprint.
pub fn build_client_hello<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &Secret,
    domain: &str,
    timestamp: u32,
) -> Vec<u8> {
    build_client_hello_padded(rng, secret, domain, timestamp, 0)
}

/// The record length of a real Telegram client's ClientHello (a browser-like hello padded
/// to 512 bytes of handshake message, RFC 7685); some proxies reject shorter ones.
pub const CLIENT_HELLO_RECORD_LEN: usize = 517;

/// [`build_client_hello`] with a padding extension (type 21, RFC 7685) that makes the record
/// `record_len` bytes long, as real clients' are ([`CLIENT_HELLO_RECORD_LEN`]); no padding
/// when the hello is that long already or `record_len` is 0.
pub fn build_client_hello_padded<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &Secret,
    domain: &str,
    timestamp: u32,
    record_len: usize,
) -> Vec<u8> {
    let mut sid = [0; 32];
    rng.fill_bytes(&mut sid);
    build_hello(
        rng,
        secret,
        domain,
        &sid,
        &[0x3a, 0x3a, 0x13, 0x01, 0x13, 0x02],
        timestamp,
        record_len,
    )
}

fn build_hello<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &Secret,
    domain: &str,
    session_id: &[u8],
    suites: &[u8],
    timestamp: u32,
    record_len: usize,
) -> Vec<u8> {
    let be16 = |n: usize| (n as u16).to_be_bytes();
    let name = domain.as_bytes();
    let mut key = [0; 32];
    rng.fill_bytes(&mut key);

    let mut ext = Vec::new();
    ext.extend_from_slice(&[0, 0]);
    ext.extend_from_slice(&be16(name.len() + 5));
    ext.extend_from_slice(&be16(name.len() + 3));
    ext.push(0);
    ext.extend_from_slice(&be16(name.len()));
    ext.extend_from_slice(name);
    ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
    ext.extend_from_slice(&[0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]);
    ext.extend_from_slice(&x25519_dalek::x25519(
        key,
        x25519_dalek::X25519_BASEPOINT_BYTES,
    ));

    // Record header, handshake header, version, random, session id, suites, compression
    // and the extensions' length, around the extensions.
    let unpadded = 5 + 4 + 2 + 32 + 1 + session_id.len() + 2 + suites.len() + 2 + 2 + ext.len();
    // The padding extension's own header is 4 bytes.
    if let Some(pad) = record_len.checked_sub(unpadded + 4) {
        ext.extend_from_slice(&[0x00, 0x15]);
        ext.extend_from_slice(&be16(pad));
        ext.resize(ext.len() + pad, 0);
    }

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0; 32]);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&be16(suites.len()));
    body.extend_from_slice(suites);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&be16(ext.len()));
    body.extend_from_slice(&ext);

    let hs_len = body.len() + 4;
    let mut rec = vec![CONTENT_HANDSHAKE, 0x03, 0x01];
    rec.extend_from_slice(&be16(hs_len));
    rec.extend_from_slice(&[0x01, 0, (body.len() >> 8) as u8, body.len() as u8]);
    rec.extend_from_slice(&body);

    let header: [u8; 5] = [rec[0], rec[1], rec[2], rec[3], rec[4]];
    let mut random = hello_mac(secret, &header, &rec[RECORD_HEADER_LEN..]);
    for (r, t) in random[28..].iter_mut().zip(timestamp.to_le_bytes()) {
        *r ^= t;
    }
    let at = RECORD_HEADER_LEN + RANDOM_AT;
    rec[at..at + 32].copy_from_slice(&random);
    rec
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::tls::reader::{ClientHelloReader, HelloRead, split_records};
    use crate::vectors::KURIGRAM_TLS as K;

    fn users() -> Vec<Secret> {
        vec![
            Secret::from_bytes([1; 16]),
            Secret::from_hex(K.secret).unwrap(),
            Secret::from_bytes([2; 16]),
        ]
    }

    fn policy(now: u64) -> HelloPolicy<'static> {
        HelloPolicy {
            domain: K.domain,
            now,
            window_secs: DEFAULT_WINDOW_SECS,
            allow_uptime: true,
        }
    }

    fn handshake_of(record: &[u8]) -> Vec<u8> {
        match ClientHelloReader::new().feed(record).unwrap() {
            HelloRead::Done(d) => d.handshake,
            HelloRead::NeedMore => panic!("incomplete"),
        }
    }

    #[test]
    fn prepared_keys_and_hints_agree_with_plain_secrets() {
        let hs = handshake_of(&hex::decode(K.hello).unwrap());
        let users = users();
        let keys: Vec<HelloKey> = users.iter().map(HelloKey::new).collect();
        let p = policy(u64::from(K.timestamp));
        let plain = verify_client_hello(&hs, &users, &p).unwrap();
        for first in [None, Some(0), Some(1), Some(2), Some(7)] {
            let keyed = verify_client_hello_keys(&hs, &keys, first, &p).unwrap();
            assert_eq!(keyed.user, plain.user, "hint {first:?}");
            assert_eq!(keyed.client_random, plain.client_random);
        }
        assert_eq!(
            verify_client_hello_keys(&hs, &keys[..1], Some(0), &p).unwrap_err(),
            HelloError::BadMac
        );
    }

    /// Every user of lists around the sixteen-lane batch sizes is found as itself, hinted or
    /// not, with the same errors as one user at a time.
    #[test]
    fn many_users_each_found_with_or_without_hint() {
        let mut rng = StdRng::seed_from_u64(9);
        let now = 1_800_000_000u32;
        for n in [1, 3, 4, 15, 16, 17, 33] {
            let users: Vec<Secret> = crate::secret::random_secrets(&mut rng, n);
            let keys: Vec<HelloKey> = users.iter().map(HelloKey::new).collect();
            for (k, user) in users.iter().enumerate() {
                let hs = handshake_of(&build_client_hello(&mut rng, user, K.domain, now));
                for hint in [None, Some(k), Some((k + 1) % n), Some(n + 7)] {
                    let h = verify_client_hello_keys(&hs, &keys, hint, &policy(now.into()));
                    assert_eq!(h.unwrap().user, k, "{n} users, hint {hint:?}");
                }
                let late = u64::from(now) + 10_000;
                assert_eq!(
                    verify_client_hello_keys(&hs, &keys, None, &policy(late)).unwrap_err(),
                    HelloError::TimestampOutOfWindow {
                        user: k,
                        timestamp: now,
                        now: late
                    }
                );
            }
            let stranger = Secret::from_bytes([0x5a; 16]);
            let hs = handshake_of(&build_client_hello(&mut rng, &stranger, K.domain, now));
            assert_eq!(
                verify_client_hello_keys(&hs, &keys, None, &policy(now.into())).unwrap_err(),
                HelloError::BadMac
            );
        }
    }

    #[test]
    fn kurigram_hello_verifies() {
        let rec = hex::decode(K.hello).unwrap();
        let hs = handshake_of(&rec);
        let now = u64::from(K.timestamp);
        for now in [now, now - 120, now + 120] {
            let h = verify_client_hello(&hs, &users(), &policy(now)).unwrap();
            assert_eq!(h.user, 1);
            assert_eq!(h.timestamp, K.timestamp);
            assert_eq!(h.sni, K.domain);
            assert_eq!(h.client_random[..], rec[11..43]);
            assert_eq!(h.session_id.as_slice(), &rec[44..76]);
            assert_eq!(h.cipher, [0x13, 0x01]);
            assert_eq!(h.replay_key()[..], rec[11..27]);
        }
    }

    #[test]
    fn kurigram_hello_in_several_records_verifies() {
        let hs = handshake_of(&hex::decode(K.hello).unwrap());
        for parts in [2, 3] {
            let wire = split_records(&hs, hs.len().div_ceil(parts), 0x03);
            let again = handshake_of(&wire);
            let h = verify_client_hello(&again, &users(), &policy(u64::from(K.timestamp))).unwrap();
            assert_eq!(h.user, 1);
        }
    }

    #[test]
    fn stale_and_future_timestamps_rejected() {
        let hs = handshake_of(&hex::decode(K.hello).unwrap());
        for now in [u64::from(K.timestamp) + 121, u64::from(K.timestamp) - 121] {
            assert_eq!(
                verify_client_hello(&hs, &users(), &policy(now)).unwrap_err(),
                HelloError::TimestampOutOfWindow {
                    user: 1,
                    timestamp: K.timestamp,
                    now
                }
            );
        }
    }

    #[test]
    fn wrong_secret_is_bad_mac() {
        let hs = handshake_of(&hex::decode(K.hello).unwrap());
        let others = [Secret::from_bytes([1; 16])];
        assert_eq!(
            verify_client_hello(&hs, &others, &policy(u64::from(K.timestamp))).unwrap_err(),
            HelloError::BadMac
        );
        // One flipped bit anywhere in the hello breaks the MAC.
        let mut tampered = hs.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            verify_client_hello(&tampered, &users(), &policy(u64::from(K.timestamp))).unwrap_err(),
            HelloError::BadMac
        );
    }

    #[test]
    fn wrong_sni_is_unknown_sni() {
        let hs = handshake_of(&hex::decode(K.hello).unwrap());
        let p = HelloPolicy {
            domain: "other.example.org",
            ..policy(u64::from(K.timestamp))
        };
        assert_eq!(
            verify_client_hello(&hs, &users(), &p).unwrap_err(),
            HelloError::UnknownSni {
                sni: Some(K.domain.to_owned())
            }
        );
        let upper = HelloPolicy {
            domain: &K.domain.to_ascii_uppercase(),
            ..policy(u64::from(K.timestamp))
        };
        assert!(verify_client_hello(&hs, &users(), &upper).is_ok());
    }

    #[test]
    fn padded_hello_has_the_real_clients_length_and_verifies() {
        let mut rng = StdRng::seed_from_u64(11);
        let s = Secret::from_bytes([3; 16]);
        let now = 1_800_000_000u32;
        let p = policy(now.into());
        let rec = build_client_hello_padded(&mut rng, &s, K.domain, now, CLIENT_HELLO_RECORD_LEN);
        assert_eq!(rec.len(), CLIENT_HELLO_RECORD_LEN);
        let hs = handshake_of(&rec);
        let hello = verify_client_hello(&hs, std::slice::from_ref(&s), &p).unwrap();
        assert_eq!(hello.timestamp, now);
        // Too short a target, or none: the unpadded hello.
        let short = build_client_hello_padded(&mut rng, &s, K.domain, now, 100);
        let plain = build_client_hello(&mut rng, &s, K.domain, now);
        assert_eq!(short.len(), plain.len());
        assert!(plain.len() < CLIENT_HELLO_RECORD_LEN);
    }

    #[test]
    fn uptime_timestamps() {
        let mut rng = StdRng::seed_from_u64(7);
        let s = Secret::from_bytes([9; 16]);
        let now = 1_800_000_000;
        let rec = build_client_hello(&mut rng, &s, "a.example", 86_400);
        let hs = handshake_of(&rec);
        let p = HelloPolicy {
            domain: "a.example",
            now,
            window_secs: DEFAULT_WINDOW_SECS,
            allow_uptime: true,
        };
        assert_eq!(
            verify_client_hello(&hs, std::slice::from_ref(&s), &p)
                .unwrap()
                .timestamp,
            86_400
        );
        let strict = HelloPolicy {
            allow_uptime: false,
            ..p
        };
        assert!(matches!(
            verify_client_hello(&hs, std::slice::from_ref(&s), &strict),
            Err(HelloError::TimestampOutOfWindow { .. })
        ));
        // Just past the uptime bound is an ancient wall clock: rejected.
        let old = handshake_of(&build_client_hello(
            &mut rng,
            &s,
            "a.example",
            UPTIME_MAX_SECS,
        ));
        assert!(matches!(
            verify_client_hello(&old, std::slice::from_ref(&s), &p),
            Err(HelloError::TimestampOutOfWindow { .. })
        ));
    }

    #[test]
    fn session_id_lengths_and_ciphers() {
        let mut rng = StdRng::seed_from_u64(8);
        let s = Secret::from_bytes([4; 16]);
        let p = HelloPolicy {
            domain: "d.example",
            now: 1000,
            window_secs: 5,
            allow_uptime: false,
        };
        for sid in [&[][..], &[7; 16], &[8; 32]] {
            let hs = handshake_of(&build_hello(
                &mut rng,
                &s,
                "d.example",
                sid,
                &[0x13, 0x03],
                1000,
                0,
            ));
            let h = verify_client_hello(&hs, std::slice::from_ref(&s), &p).unwrap();
            assert_eq!(h.session_id.as_slice(), sid);
            assert_eq!(h.cipher, [0x13, 0x03]);
        }
        let grease_then_tls13 = [0x1a, 0x1a, 0xfa, 0xfa, 0x13, 0x02, 0xc0, 0x2b];
        let hs = handshake_of(&build_hello(
            &mut rng,
            &s,
            "d.example",
            &[1; 32],
            &grease_then_tls13,
            1000,
            0,
        ));
        assert_eq!(
            verify_client_hello(&hs, std::slice::from_ref(&s), &p)
                .unwrap()
                .cipher,
            [0x13, 0x02]
        );
        let tls12_first = [0x0a, 0x0a, 0xc0, 0x2b, 0x13, 0x01];
        let hs = handshake_of(&build_hello(
            &mut rng,
            &s,
            "d.example",
            &[1; 32],
            &tls12_first,
            1000,
            0,
        ));
        assert_eq!(
            verify_client_hello(&hs, std::slice::from_ref(&s), &p).unwrap_err(),
            HelloError::UnsupportedCipher([0xc0, 0x2b])
        );
    }

    #[test]
    fn malformed_hellos_never_panic() {
        let hs = handshake_of(&hex::decode(K.hello).unwrap());
        let p = policy(u64::from(K.timestamp));
        // Every truncation, with the length field patched to match, is refused cleanly.
        for cut in 0..hs.len() {
            let mut t = hs[..cut].to_vec();
            if t.len() >= 4 {
                let n = t.len() - 4;
                t[1..4].copy_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
            }
            assert!(verify_client_hello(&t, &users(), &p).is_err(), "cut {cut}");
        }
        // Corrupting any single byte never panics.
        for i in 0..hs.len() {
            let mut t = hs.clone();
            t[i] ^= 0xff;
            let _ = verify_client_hello(&t, &users(), &p);
        }
    }
}
