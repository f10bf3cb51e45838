//! The server's answer to a ClientHello (docs/protocol.md §5): exactly three records — ServerHello,
//! ChangeCipherSpec, one application-data record of certificate-like size — with
//! HMAC-SHA256(secret, client random ‖ flight) as the server random. The ServerHello's extension
//! order and the third record's size copy the mask site's own flight where it is learned (see
//! [`super::profile`]).

use hmac::{Hmac, Mac};
use rand::{CryptoRng, Rng};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::hello::TlsClientHello;
use super::profile::{ExtensionOrder, FALLBACK_CERT_LEN};
use super::{CONTENT_APP_DATA, CONTENT_HANDSHAKE, MAX_PLAINTEXT, RECORD_HEADER_LEN};
use crate::secret::Secret;

/// The ChangeCipherSpec record, byte for byte.
pub const CHANGE_CIPHER_SPEC: [u8; 6] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];

/// Largest fake certificate record: TLS 1.3 ciphertext may exceed plaintext by 256 bytes.
pub const MAX_CERT_LEN: usize = MAX_PLAINTEXT + 256;

/// Offset of the server random in the flight.
const RANDOM_AT: usize = 11;

/// ServerHello extensions after the 32-byte key: supported_versions = TLS 1.3.
const SUPPORTED_VERSIONS: [u8; 6] = [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];
/// key_share header: X25519, 32-byte key.
const KEY_SHARE: [u8; 8] = [0x00, 0x33, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];

/// A size for the fake certificate record in the range real chains have (mtg's fallback:
/// 2500..=4700 bytes), for when the mask site's flight is not known.
pub fn plausible_cert_len<R: Rng + ?Sized>(rng: &mut R) -> usize {
    rng.random_range(FALLBACK_CERT_LEN)
}

/// [`server_flight_shaped`] with key_share before supported_versions.
pub fn server_flight<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &Secret,
    hello: &TlsClientHello,
    cert_len: usize,
) -> Vec<u8> {
    server_flight_shaped(rng, secret, hello, cert_len, ExtensionOrder::KeyShareFirst)
}

/// The three records answering `hello`, authenticated with the matched user's `secret`, the
/// ServerHello extensions in `order`. `cert_len` is clamped to `1..=MAX_CERT_LEN`. Send
/// exactly these bytes and nothing else until the client speaks: tdlib fails on any extra
/// buffered byte.
pub fn server_flight_shaped<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &Secret,
    hello: &TlsClientHello,
    cert_len: usize,
    order: ExtensionOrder,
) -> Vec<u8> {
    let sid = hello.session_id.as_slice();
    let cert_len = cert_len.clamp(1, MAX_CERT_LEN);
    let ext_len = KEY_SHARE.len() + 32 + SUPPORTED_VERSIONS.len();
    // version, random, session id, cipher, compression, extensions
    let body_len = 2 + 32 + 1 + sid.len() + 2 + 1 + 2 + ext_len;
    let mut scalar = [0; 32];
    rng.fill_bytes(&mut scalar);
    // A genuine X25519 public key: a random string is off-curve half the time, which a
    // censor can test.
    // Fixed-base multiplication with precomputed tables: the same point as
    // `x25519(scalar, basepoint)` at about a third of the cost.
    let public =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(scalar)).to_bytes();

    let mut out = Vec::with_capacity(RECORD_HEADER_LEN * 2 + 4 + body_len + 6 + cert_len);
    out.extend_from_slice(&[CONTENT_HANDSHAKE, 0x03, 0x03]);
    out.extend_from_slice(&be16(4 + body_len));
    out.extend_from_slice(&[0x02, 0x00]);
    out.extend_from_slice(&be16(body_len));
    out.extend_from_slice(&[0x03, 0x03]);
    out.extend_from_slice(&[0; 32]); // server random, filled in last
    out.push(sid.len() as u8); // SessionId holds at most 32 bytes
    out.extend_from_slice(sid);
    out.extend_from_slice(&hello.cipher);
    out.push(0x00);
    out.extend_from_slice(&be16(ext_len));
    if order == ExtensionOrder::VersionsFirst {
        out.extend_from_slice(&SUPPORTED_VERSIONS);
    }
    out.extend_from_slice(&KEY_SHARE);
    out.extend_from_slice(&public);
    if order == ExtensionOrder::KeyShareFirst {
        out.extend_from_slice(&SUPPORTED_VERSIONS);
    }
    out.extend_from_slice(&CHANGE_CIPHER_SPEC);
    out.extend_from_slice(&[CONTENT_APP_DATA, 0x03, 0x03]);
    out.extend_from_slice(&be16(cert_len));
    let start = out.len();
    out.resize(start + cert_len, 0);
    rng.fill_bytes(&mut out[start..]);

    let mac = flight_mac(secret, &hello.client_random, &out);
    out[RANDOM_AT..RANDOM_AT + 32].copy_from_slice(&mac);
    out
}

/// Why a server flight is not what a Telegram client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    /// Record headers are not ServerHello, CCS, application data.
    #[error("server flight is not ServerHello + ChangeCipherSpec + application data")]
    Malformed,
    /// Ends before the third record does.
    #[error("server flight is truncated")]
    Truncated,
    /// Bytes after the third record ("Proxy has sent too many data" in tdlib).
    #[error("server flight has trailing bytes")]
    TrailingData,
    /// The server random is not the HMAC.
    #[error("server random is not the HMAC of the secret")]
    BadMac,
}

/// Client side of [`server_flight`], mirroring tdlib's check: the exact three-record shape, no
/// trailing bytes, and the server random = HMAC-SHA256(secret, client random ‖ flight with the
/// random zeroed).
pub fn verify_server_flight(
    secret: &Secret,
    client_random: &[u8; 32],
    flight: &[u8],
) -> Result<(), FlightError> {
    let header = |at: usize, prefix: &[u8]| -> Result<usize, FlightError> {
        let h = flight
            .get(at..at + prefix.len() + 2)
            .ok_or(FlightError::Truncated)?;
        if !h.starts_with(prefix) {
            return Err(FlightError::Malformed);
        }
        let n = h.len();
        Ok(usize::from(u16::from_be_bytes([h[n - 2], h[n - 1]])))
    };
    let hello_len = header(0, &[CONTENT_HANDSHAKE, 0x03, 0x03])?;
    let second = RECORD_HEADER_LEN + hello_len;
    let mut ccs_and_data = CHANGE_CIPHER_SPEC.to_vec();
    ccs_and_data.extend_from_slice(&[CONTENT_APP_DATA, 0x03, 0x03]);
    let data_len = header(second, &ccs_and_data)?;
    let end = second + ccs_and_data.len() + 2 + data_len;
    if flight.len() < end || hello_len < RANDOM_AT + 32 - RECORD_HEADER_LEN {
        return Err(FlightError::Truncated);
    }
    if flight.len() > end {
        return Err(FlightError::TrailingData);
    }
    let mac = flight_mac(secret, client_random, flight);
    if bool::from(mac.ct_eq(&flight[RANDOM_AT..RANDOM_AT + 32])) {
        Ok(())
    } else {
        Err(FlightError::BadMac)
    }
}

/// HMAC-SHA256(secret, client random ‖ flight with bytes 11..43 zeroed), without copying.
fn flight_mac(secret: &Secret, client_random: &[u8; 32], flight: &[u8]) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(client_random);
    mac.update(&flight[..RANDOM_AT]);
    mac.update(&[0; 32]);
    mac.update(&flight[RANDOM_AT + 32..]);
    mac.finalize().into_bytes().into()
}

fn be16(n: usize) -> [u8; 2] {
    // Callers bound n below 2^16.
    (n as u16).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::tls::hello::{HelloPolicy, SessionId, verify_client_hello};
    use crate::tls::reader::{ClientHelloReader, HelloRead};
    use crate::vectors::KURIGRAM_TLS as K;

    fn kurigram_hello() -> TlsClientHello {
        let rec = hex::decode(K.hello).unwrap();
        let HelloRead::Done(d) = ClientHelloReader::new().feed(&rec).unwrap() else {
            panic!("incomplete")
        };
        let policy = HelloPolicy {
            domain: K.domain,
            now: u64::from(K.timestamp),
            window_secs: 120,
            allow_uptime: false,
        };
        verify_client_hello(
            &d.handshake,
            &[Secret::from_hex(K.secret).unwrap()],
            &policy,
        )
        .unwrap()
    }

    #[test]
    fn exact_layout_for_32_byte_session_id() {
        let mut rng = StdRng::seed_from_u64(10);
        let secret = Secret::from_hex(K.secret).unwrap();
        let hello = kurigram_hello();
        let f = server_flight(&mut rng, &secret, &hello, 3000);
        assert_eq!(
            f[..9],
            [0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76]
        );
        assert_eq!(f[9..11], [0x03, 0x03]);
        assert_eq!(f[43], 0x20);
        assert_eq!(f[44..76], *hello.session_id.as_slice());
        assert_eq!(f[76..78], hello.cipher);
        assert_eq!(f[78..81], [0x00, 0x00, 0x2e]);
        assert_eq!(f[81..89], KEY_SHARE);
        assert_eq!(f[121..127], SUPPORTED_VERSIONS);
        assert_eq!(f[127..133], CHANGE_CIPHER_SPEC);
        assert_eq!(f[133..138], [0x17, 0x03, 0x03, 0x0b, 0xb8]);
        assert_eq!(f.len(), 138 + 3000);
        verify_server_flight(&secret, &hello.client_random, &f).unwrap();
    }

    #[test]
    fn key_share_is_a_curve_point() {
        // x25519 clamps its scalar, so DH with any peer key yields the same shared secret from
        // both sides only for genuine public keys.
        let mut rng = StdRng::seed_from_u64(11);
        let secret = Secret::from_bytes([1; 16]);
        let f = server_flight(&mut rng, &secret, &kurigram_hello(), 2500);
        let public: [u8; 32] = f[89..121].try_into().unwrap();
        let mut rng = StdRng::seed_from_u64(11);
        let mut scalar = [0; 32];
        rand::RngCore::fill_bytes(&mut rng, &mut scalar);
        assert_eq!(
            public,
            x25519_dalek::x25519(scalar, x25519_dalek::X25519_BASEPOINT_BYTES)
        );
    }

    #[test]
    fn other_session_id_lengths() {
        let mut rng = StdRng::seed_from_u64(12);
        let secret = Secret::from_bytes([2; 16]);
        let mut hello = kurigram_hello();
        for sid in [&[][..], &[5; 16]] {
            hello.session_id = SessionId::new(sid).unwrap();
            let f = server_flight(&mut rng, &secret, &hello, 100);
            let hello_len = usize::from(u16::from_be_bytes([f[3], f[4]]));
            assert_eq!(hello_len, 90 + sid.len());
            assert_eq!(f[43], sid.len() as u8);
            verify_server_flight(&secret, &hello.client_random, &f).unwrap();
        }
    }

    #[test]
    fn mac_round_trip_and_failures() {
        let mut rng = StdRng::seed_from_u64(13);
        let secret = Secret::from_hex(K.secret).unwrap();
        let hello = kurigram_hello();
        let cert_len = plausible_cert_len(&mut rng);
        let f = server_flight(&mut rng, &secret, &hello, cert_len);
        verify_server_flight(&secret, &hello.client_random, &f).unwrap();
        assert_eq!(
            verify_server_flight(&Secret::from_bytes([0; 16]), &hello.client_random, &f),
            Err(FlightError::BadMac)
        );
        assert_eq!(
            verify_server_flight(&secret, &[0; 32], &f),
            Err(FlightError::BadMac)
        );
        let mut tampered = f.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            verify_server_flight(&secret, &hello.client_random, &tampered),
            Err(FlightError::BadMac)
        );
        let mut extra = f.clone();
        extra.push(0x17);
        assert_eq!(
            verify_server_flight(&secret, &hello.client_random, &extra),
            Err(FlightError::TrailingData)
        );
        for cut in 0..f.len() {
            assert!(verify_server_flight(&secret, &hello.client_random, &f[..cut]).is_err());
        }
    }

    #[test]
    fn flight_accepted_by_kurigram_verifies() {
        // Built by the capture script's responder and accepted by kurigram (it went on to send
        // application data), so this checks our verifier against a real client's acceptance.
        let flight = hex::decode(K.server_flight).unwrap();
        let hello = kurigram_hello();
        verify_server_flight(
            &Secret::from_hex(K.secret).unwrap(),
            &hello.client_random,
            &flight,
        )
        .unwrap();
    }

    #[test]
    fn cert_len_is_plausible_and_clamped() {
        let mut rng = StdRng::seed_from_u64(14);
        for _ in 0..1000 {
            assert!((2500..=4700).contains(&plausible_cert_len(&mut rng)));
        }
        let secret = Secret::from_bytes([3; 16]);
        let hello = kurigram_hello();
        let f = server_flight(&mut rng, &secret, &hello, 1 << 20);
        assert_eq!(f.len(), 138 + MAX_CERT_LEN);
        verify_server_flight(&secret, &hello.client_random, &f).unwrap();
    }

    #[test]
    fn learned_shapes_mirror_the_site_and_still_verify() {
        use crate::tls::profile::{FlightShape, parse_flight};
        let mut rng = StdRng::seed_from_u64(15);
        let secret = Secret::from_hex(K.secret).unwrap();
        let mut hello = kurigram_hello();
        for order in [ExtensionOrder::KeyShareFirst, ExtensionOrder::VersionsFirst] {
            for encrypted in [1, 40, 2_000, 6_123, MAX_CERT_LEN, 100_000] {
                let shape = FlightShape {
                    order,
                    cert_len: encrypted.min(MAX_CERT_LEN)..=encrypted.min(MAX_CERT_LEN),
                };
                for sid in [&[][..], &[5; 32]] {
                    hello.session_id = SessionId::new(sid).unwrap();
                    let cert_len = shape.pick_cert_len(&mut rng);
                    let f = server_flight_shaped(&mut rng, &secret, &hello, cert_len, order);
                    verify_server_flight(&secret, &hello.client_random, &f).unwrap();
                    // Read back as a site's flight: the order and the size are the shape's.
                    let p = parse_flight(&f).unwrap();
                    assert_eq!(p.order(), order);
                    assert!(p.ccs && p.app_records == 1);
                    assert_eq!(p.encrypted_len as usize, encrypted.min(MAX_CERT_LEN));
                    assert!(!p.other_extensions());
                }
            }
        }
    }
}
