//! The mask site's own TLS 1.3 server flight (docs/protocol.md §5, "size of record 3"): a probe
//! ClientHello shaped like a Telegram client's, and the parse of what the site answers into a
//! [`FlightProfile`] — ServerHello size and extension order, whether it sent ChangeCipherSpec, the
//! total size of its encrypted handshake. [`FlightShape`] is what the fake flight copies from it.

use std::ops::RangeInclusive;

use rand::{CryptoRng, Rng};
use serde::{Deserialize, Serialize};

use super::flight::MAX_CERT_LEN;
use super::{CONTENT_APP_DATA, CONTENT_CCS, CONTENT_HANDSHAKE, RECORD_HEADER_LEN};

/// Content type of alert records.
const CONTENT_ALERT: u8 = 0x15;
/// Extension types the fake ServerHello carries.
const EXT_KEY_SHARE: u16 = 0x0033;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
/// The random of a HelloRetryRequest (RFC 8446 §4.1.3): SHA-256("HelloRetryRequest").
const HELLO_RETRY_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];
/// Largest record a TLS 1.3 peer may send: 2^14 plaintext + 256 bytes of expansion.
const MAX_RECORD: usize = MAX_CERT_LEN;

/// The fallback size range of the fake encrypted handshake when nothing is learned (mtg's:
/// typical certificate chains).
pub const FALLBACK_CERT_LEN: RangeInclusive<usize> = 2500..=4700;

/// How far the fake encrypted handshake may differ from the learned sizes, in bytes either
/// way: real flights of one site vary by a few bytes (signature encodings, ticket hints).
pub const CERT_JITTER: usize = 3;

/// A TLS 1.3 ClientHello record for `domain` that a server answers as it answers a Telegram
/// client: the TLS 1.3 suites, an X25519 key share with a genuine public key, a 32-byte session
/// id (which makes servers send ChangeCipherSpec, RFC 8446 §D.4), SNI, ALPN h2/http/1.1,
/// status_request, SCT and brotli certificate compression, as tdlib's hello offers them.
pub fn probe_hello<R: CryptoRng + ?Sized>(rng: &mut R, domain: &str) -> Vec<u8> {
    let mut random = [0; 32];
    rng.fill_bytes(&mut random);
    let mut session_id = [0; 32];
    rng.fill_bytes(&mut session_id);
    let mut scalar = [0; 32];
    rng.fill_bytes(&mut scalar);
    let public =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(scalar)).to_bytes();

    let host = domain.as_bytes();
    let mut sni = Vec::with_capacity(host.len() + 5);
    sni.extend_from_slice(&be16(host.len() + 3));
    sni.push(0x00); // host_name
    sni.extend_from_slice(&be16(host.len()));
    sni.extend_from_slice(host);
    let mut key_share = vec![0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    key_share.extend_from_slice(&public);
    let extensions: [(u16, &[u8]); 14] = [
        (0x0000, &sni),
        (0x0017, &[]),     // extended_master_secret
        (0xff01, &[0x00]), // renegotiation_info
        (0x000a, &[0x00, 0x06, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]), // x25519, P-256, P-384
        (0x000b, &[0x01, 0x00]), // ec_point_formats: uncompressed
        (0x0023, &[]),     // session_ticket
        (0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
        (0x0005, &[0x01, 0x00, 0x00, 0x00, 0x00]), // status_request: OCSP
        (
            0x000d, // signature_algorithms
            &[
                0x00, 0x10, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x08, 0x05, 0x05, 0x01,
                0x08, 0x06, 0x06, 0x01,
            ],
        ),
        (0x0012, &[]), // signed_certificate_timestamp
        (EXT_KEY_SHARE, &key_share),
        (0x002d, &[0x01, 0x01]), // psk_key_exchange_modes: psk_dhe_ke
        (EXT_SUPPORTED_VERSIONS, &[0x02, 0x03, 0x04]),
        (0x001b, &[0x02, 0x00, 0x02]), // compress_certificate: brotli
    ];
    let mut ext = Vec::with_capacity(256 + host.len());
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&be16(data.len()));
        ext.extend_from_slice(data);
    }

    let mut body = Vec::with_capacity(80 + ext.len());
    body.extend_from_slice(&[0x03, 0x03]);
    body.extend_from_slice(&random);
    body.push(32);
    body.extend_from_slice(&session_id);
    body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    body.extend_from_slice(&be16(ext.len()));
    body.extend_from_slice(&ext);

    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + 4 + body.len());
    out.extend_from_slice(&[CONTENT_HANDSHAKE, 0x03, 0x01]);
    out.extend_from_slice(&be16(4 + body.len()));
    out.push(0x01); // ClientHello
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&body);
    out
}

/// The shape of one server flight, as far as a fake flight can copy it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightProfile {
    /// Payload length of the ServerHello record.
    pub hello_len: u16,
    /// The cipher suite the site chose.
    pub cipher: u16,
    /// ServerHello extension types, in the order sent.
    pub extensions: Vec<u16>,
    /// Whether a ChangeCipherSpec record followed the ServerHello.
    pub ccs: bool,
    /// Application-data records of the encrypted handshake.
    pub app_records: u16,
    /// Sum of their payload lengths: what the fake third record stands in for.
    pub encrypted_len: u32,
}

impl FlightProfile {
    /// Order of the two extensions the fake ServerHello carries, as the site sends them.
    pub fn order(&self) -> ExtensionOrder {
        let at = |kind| self.extensions.iter().position(|&e| e == kind);
        match (at(EXT_KEY_SHARE), at(EXT_SUPPORTED_VERSIONS)) {
            (Some(k), Some(v)) if v < k => ExtensionOrder::VersionsFirst,
            _ => ExtensionOrder::KeyShareFirst,
        }
    }

    /// Whether the site's ServerHello has extensions besides key_share and
    /// supported_versions (the fake one never does).
    pub fn other_extensions(&self) -> bool {
        self.extensions
            .iter()
            .any(|&e| e != EXT_KEY_SHARE && e != EXT_SUPPORTED_VERSIONS)
    }
}

/// Order of key_share and supported_versions in the ServerHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtensionOrder {
    /// key_share, then supported_versions (OpenSSL, nginx, Cloudflare).
    #[default]
    KeyShareFirst,
    /// supported_versions, then key_share.
    VersionsFirst,
}

impl ExtensionOrder {
    /// `key_share,supported_versions` or `supported_versions,key_share`.
    pub fn name(self) -> &'static str {
        match self {
            ExtensionOrder::KeyShareFirst => "key_share,supported_versions",
            ExtensionOrder::VersionsFirst => "supported_versions,key_share",
        }
    }
}

/// Why the bytes a server sent are not (yet) a TLS 1.3 server flight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The bytes end inside a record, or before any encrypted handshake record: read more.
    #[error("server flight is incomplete")]
    Truncated,
    /// The server refused the hello with an alert.
    #[error("server sent TLS alert {0}")]
    Alert(u8),
    /// A record type that has no place in a TLS 1.3 server flight.
    #[error("unexpected record type {0:#04x} in the server flight")]
    UnexpectedRecord(u8),
    /// A record longer than TLS allows.
    #[error("record of {0} bytes exceeds the TLS limit")]
    Oversized(usize),
    /// The ServerHello is not well formed.
    #[error("malformed ServerHello: {0}")]
    BadServerHello(&'static str),
    /// The server asked for another key share (HelloRetryRequest).
    #[error("server sent a HelloRetryRequest")]
    HelloRetry,
    /// The server did not negotiate TLS 1.3.
    #[error("server did not negotiate TLS 1.3")]
    NotTls13,
}

/// Parses the bytes a server sent after [`probe_hello`]: ServerHello, optional
/// ChangeCipherSpec, then application-data records (the encrypted handshake). Every record
/// must be complete and at least one application-data record present, otherwise
/// [`ProfileError::Truncated`]: the caller reads more or gives up. More application data that
/// arrives later extends the flight, so the caller parses again until the server goes quiet.
pub fn parse_flight(bytes: &[u8]) -> Result<FlightProfile, ProfileError> {
    let mut records = Records { rest: bytes };
    let (kind, hello) = records.next().ok_or(ProfileError::Truncated)??;
    match kind {
        CONTENT_HANDSHAKE => {}
        CONTENT_ALERT => return Err(alert(hello)),
        other => return Err(ProfileError::UnexpectedRecord(other)),
    }
    let (cipher, extensions) = parse_server_hello(hello)?;
    let mut profile = FlightProfile {
        hello_len: hello.len() as u16, // bounded by MAX_RECORD
        cipher,
        extensions,
        ccs: false,
        app_records: 0,
        encrypted_len: 0,
    };
    for record in records {
        let (kind, payload) = record?;
        match kind {
            CONTENT_CCS if profile.app_records == 0 && payload == [0x01] => profile.ccs = true,
            CONTENT_APP_DATA => {
                profile.app_records = profile.app_records.saturating_add(1);
                profile.encrypted_len += payload.len() as u32;
            }
            CONTENT_ALERT => return Err(alert(payload)),
            other => return Err(ProfileError::UnexpectedRecord(other)),
        }
    }
    if profile.app_records == 0 {
        return Err(ProfileError::Truncated);
    }
    Ok(profile)
}

/// The ServerHello handshake message in `record`: its cipher and extension types.
fn parse_server_hello(record: &[u8]) -> Result<(u16, Vec<u16>), ProfileError> {
    let bad = ProfileError::BadServerHello;
    let mut r = Reader(record);
    if r.u8().ok_or(bad("empty record"))? != 0x02 {
        return Err(bad("not a ServerHello"));
    }
    let len = r.u24().ok_or(bad("short header"))?;
    if len != r.0.len() {
        // Split across records or followed by more plaintext handshake: not TLS 1.3's shape.
        return Err(bad("length does not match its record"));
    }
    r.take(2).ok_or(bad("no version"))?;
    let random = r.take(32).ok_or(bad("no random"))?;
    if random == HELLO_RETRY_RANDOM {
        return Err(ProfileError::HelloRetry);
    }
    let sid_len = r.u8().ok_or(bad("no session id"))?;
    r.take(usize::from(sid_len))
        .ok_or(bad("short session id"))?;
    let cipher = r.u16().ok_or(bad("no cipher"))?;
    r.u8().ok_or(bad("no compression"))?;
    let ext_len = r.u16().ok_or(bad("no extensions"))?;
    let mut ext = Reader(
        r.take(usize::from(ext_len))
            .ok_or(bad("short extensions"))?,
    );
    if !r.0.is_empty() {
        return Err(bad("bytes after the extensions"));
    }
    let mut kinds = Vec::new();
    let mut tls13 = false;
    while !ext.0.is_empty() {
        let kind = ext.u16().ok_or(bad("short extension header"))?;
        let len = ext.u16().ok_or(bad("short extension header"))?;
        let data = ext.take(usize::from(len)).ok_or(bad("short extension"))?;
        if kind == EXT_SUPPORTED_VERSIONS && data == [0x03, 0x04] {
            tls13 = true;
        }
        kinds.push(kind);
    }
    if !tls13 {
        return Err(ProfileError::NotTls13);
    }
    Ok((cipher, kinds))
}

fn alert(payload: &[u8]) -> ProfileError {
    ProfileError::Alert(payload.get(1).copied().unwrap_or(0))
}

/// Iterates over complete TLS records: `(content type, payload)`.
struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u8, &'a [u8]), ProfileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(header) = self.rest.get(..RECORD_HEADER_LEN) else {
            return Some(Err(ProfileError::Truncated));
        };
        let kind = header[0];
        if header[1] != 0x03 {
            return Some(Err(ProfileError::UnexpectedRecord(kind)));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD {
            return Some(Err(ProfileError::Oversized(len)));
        }
        let Some(payload) = self.rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) else {
            return Some(Err(ProfileError::Truncated));
        };
        self.rest = &self.rest[RECORD_HEADER_LEN + len..];
        Some(Ok((kind, payload)))
    }
}

/// A cursor over big-endian fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

/// What the fake flight copies: the ServerHello extension order and the size range of the
/// encrypted-handshake record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlightShape {
    /// Order of key_share and supported_versions.
    pub order: ExtensionOrder,
    /// Sizes the third record is drawn from (within `1..=MAX_CERT_LEN`).
    pub cert_len: RangeInclusive<usize>,
}

impl FlightShape {
    /// The shape used when nothing is learned: key_share first, [`FALLBACK_CERT_LEN`].
    pub fn fallback() -> FlightShape {
        FlightShape {
            order: ExtensionOrder::KeyShareFirst,
            cert_len: FALLBACK_CERT_LEN,
        }
    }

    /// The shape of the site's flights in `samples`: the first sample's extension order, and
    /// the smallest to the largest encrypted handshake widened by [`CERT_JITTER`], clamped to
    /// what clients accept. `None` without samples.
    pub fn learned(samples: &[FlightProfile]) -> Option<FlightShape> {
        let first = samples.first()?;
        let lens = samples.iter().map(|p| p.encrypted_len as usize);
        let min = lens.clone().min()?;
        let max = lens.max()?;
        let clamp = |n: usize| n.clamp(1, MAX_CERT_LEN);
        Some(FlightShape {
            order: first.order(),
            cert_len: clamp(min.saturating_sub(CERT_JITTER))..=clamp(max + CERT_JITTER),
        })
    }

    /// A size for the fake encrypted-handshake record.
    pub fn pick_cert_len<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        rng.random_range(self.cert_len.clone())
    }
}

fn be16(n: usize) -> [u8; 2] {
    // Callers bound n below 2^16.
    (n as u16).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngCore as _, SeedableRng};

    use super::*;

    /// A ServerHello record: 32-byte session id, TLS_AES_128_GCM_SHA256, the given extensions.
    fn server_hello(extensions: &[(u16, &[u8])], random: [u8; 32]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&be16(data.len()));
            ext.extend_from_slice(data);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&random);
        body.push(32);
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0x13, 0x01, 0x00]);
        body.extend_from_slice(&be16(ext.len()));
        body.extend_from_slice(&ext);
        let mut msg = vec![0x02];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        record(CONTENT_HANDSHAKE, &msg)
    }

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind, 0x03, 0x03];
        out.extend_from_slice(&be16(payload.len()));
        out.extend_from_slice(payload);
        out
    }

    fn key_share() -> Vec<u8> {
        let mut ks = vec![0x00, 0x1d, 0x00, 0x20];
        ks.extend_from_slice(&[9; 32]);
        ks
    }

    /// OpenSSL's answer: ServerHello (key_share last), CCS, one record per handshake message.
    fn openssl_like() -> Vec<u8> {
        let ks = key_share();
        let mut f = server_hello(
            &[
                (EXT_SUPPORTED_VERSIONS, &[0x03, 0x04]),
                (EXT_KEY_SHARE, &ks),
            ],
            [1; 32],
        );
        f.extend_from_slice(&record(CONTENT_CCS, &[0x01]));
        for len in [27, 812, 281, 69] {
            f.extend_from_slice(&record(CONTENT_APP_DATA, &vec![0xab; len]));
        }
        f
    }

    #[test]
    fn probe_hello_is_a_tls13_client_hello_for_the_domain() {
        let mut rng = StdRng::seed_from_u64(1);
        let hello = probe_hello(&mut rng, "example.com");
        assert_eq!(hello[..3], [0x16, 0x03, 0x01]);
        assert_eq!(
            usize::from(u16::from_be_bytes([hello[3], hello[4]])),
            hello.len() - 5
        );
        assert_eq!(hello[5], 0x01);
        assert_eq!(hello[43], 32, "32-byte session id");
        assert_eq!(
            hello[76..84],
            [0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]
        );
        // The relay's own ClientHello reader takes it as one whole hello.
        let crate::tls::HelloRead::Done(done) = crate::tls::ClientHelloReader::new()
            .feed(&hello)
            .expect("parses")
        else {
            panic!("incomplete")
        };
        assert_eq!(done.consumed, hello.len());
        let sni = b"\x00\x00\x00\x10\x00\x0e\x00\x00\x0bexample.com";
        assert!(hello.windows(sni.len()).any(|w| w == sni), "SNI extension");
        // Each probe has a fresh random, session id and key.
        assert_ne!(hello, probe_hello(&mut rng, "example.com"));
    }

    #[test]
    fn key_share_in_the_probe_is_a_curve_point() {
        let mut rng = StdRng::seed_from_u64(2);
        let hello = probe_hello(&mut rng, "a.example");
        let at = hello
            .windows(10)
            .position(|w| w == [0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20])
            .expect("key_share");
        let public: [u8; 32] = hello[at + 10..at + 42].try_into().expect("32 bytes");
        let mut rng = StdRng::seed_from_u64(2);
        let mut skip = [0; 64];
        rng.fill_bytes(&mut skip);
        let mut scalar = [0; 32];
        rng.fill_bytes(&mut scalar);
        assert_eq!(
            public,
            x25519_dalek::x25519(scalar, x25519_dalek::X25519_BASEPOINT_BYTES)
        );
    }

    #[test]
    fn openssl_like_flight() {
        let p = parse_flight(&openssl_like()).expect("parses");
        assert_eq!(
            p,
            FlightProfile {
                hello_len: 122,
                cipher: 0x1301,
                extensions: vec![EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE],
                ccs: true,
                app_records: 4,
                encrypted_len: 27 + 812 + 281 + 69,
            }
        );
        assert_eq!(p.order(), ExtensionOrder::VersionsFirst);
        assert!(!p.other_extensions());
    }

    #[test]
    fn one_record_without_ccs_and_other_extensions() {
        let ks = key_share();
        let mut f = server_hello(
            &[
                (EXT_KEY_SHARE, &ks),
                (EXT_SUPPORTED_VERSIONS, &[0x03, 0x04]),
                (0x0029, &[0x00, 0x00]), // pre_shared_key
            ],
            [2; 32],
        );
        f.extend_from_slice(&record(CONTENT_APP_DATA, &vec![0; 3954]));
        let p = parse_flight(&f).expect("parses");
        assert!(!p.ccs);
        assert_eq!((p.app_records, p.encrypted_len), (1, 3954));
        assert_eq!(p.order(), ExtensionOrder::KeyShareFirst);
        assert!(p.other_extensions());
    }

    #[test]
    fn every_cut_is_truncated_until_the_first_app_data_record() {
        let f = openssl_like();
        let first_app = 5 + 122 + 6;
        let first_end = first_app + 5 + 27;
        for cut in 0..first_end {
            assert_eq!(
                parse_flight(&f[..cut]),
                Err(ProfileError::Truncated),
                "cut {cut}"
            );
        }
        assert_eq!(
            parse_flight(&f[..first_end]).map(|p| p.encrypted_len),
            Ok(27)
        );
        assert_eq!(
            parse_flight(&f[..first_end + 3]),
            Err(ProfileError::Truncated)
        );
    }

    #[test]
    fn refusals_and_malformed_flights_are_typed() {
        assert_eq!(
            parse_flight(&record(CONTENT_ALERT, &[0x02, 0x46])),
            Err(ProfileError::Alert(0x46))
        );
        assert_eq!(
            parse_flight(&record(CONTENT_APP_DATA, &[0; 10])),
            Err(ProfileError::UnexpectedRecord(CONTENT_APP_DATA))
        );
        assert_eq!(
            parse_flight(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            Err(ProfileError::UnexpectedRecord(b'H'))
        );
        let ks = key_share();
        // TLS 1.2: no supported_versions.
        let mut f = server_hello(&[(EXT_KEY_SHARE, &ks)], [3; 32]);
        f.extend_from_slice(&record(CONTENT_APP_DATA, &[0; 10]));
        assert_eq!(parse_flight(&f), Err(ProfileError::NotTls13));
        // HelloRetryRequest.
        let hrr = server_hello(
            &[(EXT_SUPPORTED_VERSIONS, &[0x03, 0x04])],
            HELLO_RETRY_RANDOM,
        );
        assert_eq!(parse_flight(&hrr), Err(ProfileError::HelloRetry));
        // A handshake length that disagrees with its record.
        let mut bad = openssl_like();
        bad[8] ^= 1;
        assert!(matches!(
            parse_flight(&bad),
            Err(ProfileError::BadServerHello(_))
        ));
        // An alert after the ServerHello.
        let mut f = openssl_like()[..5 + 122].to_vec();
        f.extend_from_slice(&record(CONTENT_ALERT, &[0x02, 0x28]));
        assert_eq!(parse_flight(&f), Err(ProfileError::Alert(0x28)));
        // A second plaintext handshake record.
        let mut f = openssl_like();
        f.extend_from_slice(&record(CONTENT_HANDSHAKE, &[0; 4]));
        assert_eq!(
            parse_flight(&f),
            Err(ProfileError::UnexpectedRecord(CONTENT_HANDSHAKE))
        );
        // An oversized record.
        let mut f = openssl_like()[..5 + 122].to_vec();
        f.extend_from_slice(&[CONTENT_APP_DATA, 0x03, 0x03, 0xff, 0xff]);
        assert_eq!(parse_flight(&f), Err(ProfileError::Oversized(0xffff)));
        // Garbage inside the extensions.
        let mut f = server_hello(&[(EXT_SUPPORTED_VERSIONS, &[0x03, 0x04])], [4; 32]);
        let n = f.len();
        f[n - 3] = 0xff; // extension length beyond the block
        assert!(matches!(
            parse_flight(&f),
            Err(ProfileError::BadServerHello(_))
        ));
    }

    #[test]
    fn shape_follows_the_samples() {
        let base = parse_flight(&openssl_like()).expect("parses");
        let mut other = base.clone();
        other.encrypted_len += 2;
        let shape = FlightShape::learned(&[base.clone(), other]).expect("shape");
        assert_eq!(shape.order, ExtensionOrder::VersionsFirst);
        let real = base.encrypted_len as usize;
        assert_eq!(shape.cert_len, real - CERT_JITTER..=real + 2 + CERT_JITTER);
        let mut rng = StdRng::seed_from_u64(3);
        let picks: std::collections::BTreeSet<usize> =
            (0..500).map(|_| shape.pick_cert_len(&mut rng)).collect();
        assert_eq!(picks.first(), Some(shape.cert_len.start()));
        assert_eq!(picks.last(), Some(shape.cert_len.end()));
        assert_eq!(FlightShape::learned(&[]), None);
        // A chain larger than one record can hold is clamped to what clients accept.
        let mut huge = base;
        huge.encrypted_len = 40_000;
        let shape = FlightShape::learned(&[huge]).expect("shape");
        assert_eq!(shape.cert_len, MAX_CERT_LEN..=MAX_CERT_LEN);
        assert_eq!(FlightShape::fallback().cert_len, 2500..=4700);
    }
}
