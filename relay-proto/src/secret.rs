//! User secrets (16 bytes, written as 32 hex characters) and the `tg://proxy` links that carry them.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

use subtle::ConstantTimeEq;

use super::mode::{Mode, ModeSet};

/// Length of a secret in bytes.
pub const SECRET_LEN: usize = 16;

/// A user's 16-byte proxy secret.
///
/// `Debug` and `Display` print `Secret(…)` so a secret never reaches a log by accident; use
/// [`Secret::to_hex`] to show it on purpose. Equality is constant-time.
#[derive(Clone)]
pub struct Secret([u8; SECRET_LEN]);

/// Why a string is not a valid secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A link secret (`dd…` or `ee…`) was given where the bare server secret belongs.
    #[error(
        "secret has a {prefix:?} link prefix: configure only the 32 hex characters after it \
         (the mode is set by [server] modes, the domain by [tls] domain)"
    )]
    LinkPrefix {
        /// `dd` or `ee`.
        prefix: String,
    },
    /// Not 32 characters long.
    #[error("secret must be 32 hex characters (16 bytes), got {len} characters")]
    Length {
        /// Characters given.
        len: usize,
    },
    /// Contains something other than `0-9a-fA-F`.
    #[error("secret must be hex: character {index} is not 0-9 or a-f")]
    NotHex {
        /// Index of the first offending character.
        index: usize,
    },
}

impl Secret {
    /// Wraps 16 raw bytes.
    pub const fn from_bytes(bytes: [u8; SECRET_LEN]) -> Secret {
        Secret(bytes)
    }

    /// The raw 16 bytes (key material: don't log them).
    pub const fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Parses exactly 32 hex characters.
    pub fn from_hex(s: &str) -> Result<Secret, SecretError> {
        let lower = s.to_ascii_lowercase();
        if s.len() > 2 * SECRET_LEN && (lower.starts_with("dd") || lower.starts_with("ee")) {
            return Err(SecretError::LinkPrefix {
                prefix: lower[..2].to_owned(),
            });
        }
        if s.len() != 2 * SECRET_LEN {
            return Err(SecretError::Length {
                len: s.chars().count(),
            });
        }
        if let Some(index) = s.bytes().position(|b| !b.is_ascii_hexdigit()) {
            return Err(SecretError::NotHex { index });
        }
        let mut bytes = [0; SECRET_LEN];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| SecretError::NotHex { index: 0 })?;
        Ok(Secret(bytes))
    }

    /// The 32 lowercase hex characters: the only way to reveal a secret.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A fresh secret from the thread-local CSPRNG. It never starts with `dd` or `ee`: some
    /// clients (Telethon) strip such a prefix from a plain 32-hex secret as if it were a mode
    /// marker, and then reject it.
    pub fn random() -> Secret {
        loop {
            let bytes: [u8; SECRET_LEN] = rand::random();
            if bytes[0] != 0xdd && bytes[0] != 0xee {
                return Secret(bytes);
            }
        }
    }
}

impl FromStr for Secret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::from_hex(s)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// The two forms of one proxy link for one mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The mode this link selects.
    pub mode: Mode,
    /// `tg://proxy?server=…&port=…&secret=…`, opened by Telegram apps directly.
    pub tg: String,
    /// `https://t.me/proxy?…` with the same parameters, for sharing on the web.
    pub https: String,
}

/// The link secret a client needs for `mode`: hex for classic, `dd` + hex for secure,
/// `ee` + hex + hex(domain) for TLS (hex rather than base64: base64 links were buggy on iOS).
pub fn link_secret(secret: &Secret, mode: Mode, tls_domain: &str) -> String {
    match mode {
        Mode::Classic => secret.to_hex(),
        Mode::Secure => format!("dd{}", secret.to_hex()),
        Mode::Tls => format!("ee{}{}", secret.to_hex(), hex::encode(tls_domain)),
    }
}

/// One [`Link`] per enabled mode, in [`Mode::ALL`] order. `host` may be a name or an IP
/// address (IPv6 with or without brackets); it is percent-encoded.
pub fn links(
    host: &str,
    port: u16,
    secret: &Secret,
    modes: ModeSet,
    tls_domain: &str,
) -> Vec<Link> {
    // Clients take a bare address in `server=`, so drop URL-style IPv6 brackets.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let server = percent_encode(host);
    modes
        .iter()
        .map(|mode| {
            let query = format!(
                "server={server}&port={port}&secret={}",
                link_secret(secret, mode, tls_domain)
            );
            Link {
                mode,
                tg: format!("tg://proxy?{query}"),
                https: format!("https://t.me/proxy?{query}"),
            }
        })
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `n` secrets from `rng` (tests).
#[cfg(test)]
pub fn random_secrets(rng: &mut impl rand::RngCore, n: usize) -> Vec<Secret> {
    (0..n)
        .map(|_| {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            Secret::from_bytes(b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdeffedcba9876543210";

    #[test]
    fn parses_and_prints_hex() {
        let s = Secret::from_hex(HEX).unwrap();
        assert_eq!(s.to_hex(), HEX);
        assert_eq!(Secret::from_hex(&HEX.to_uppercase()).unwrap(), s);
        assert_eq!(HEX.parse::<Secret>().unwrap(), s);
    }

    #[test]
    fn clear_errors() {
        assert_eq!(
            Secret::from_hex("abcd"),
            Err(SecretError::Length { len: 4 })
        );
        assert_eq!(
            Secret::from_hex("0123456789abcdeffedcba987654321g"),
            Err(SecretError::NotHex { index: 31 })
        );
        assert!(matches!(
            Secret::from_hex(&format!("dd{HEX}")),
            Err(SecretError::LinkPrefix { .. })
        ));
        assert!(matches!(
            Secret::from_hex(&format!("ee{HEX}6578")),
            Err(SecretError::LinkPrefix { .. })
        ));
        // Multi-byte characters must not panic the length check or the slicing.
        assert!(Secret::from_hex("ééééééééééééééééé").is_err());
        assert!(Secret::from_hex("ééééééééééééééé").is_err());
    }

    #[test]
    fn never_printed() {
        let s = Secret::from_hex(HEX).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(…)");
        assert_eq!(format!("{s}"), "Secret(…)");
        assert!(!format!("{:?}", Some(&s)).contains("0123"));
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(Secret::random(), Secret::random());
    }

    #[test]
    fn links_per_mode() {
        let s = Secret::from_hex(HEX).unwrap();
        let l = links(
            "proxy.example.com",
            443,
            &s,
            ModeSet::ALL,
            "cdn.example.org",
        );
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].mode, Mode::Classic);
        assert_eq!(
            l[0].tg,
            format!("tg://proxy?server=proxy.example.com&port=443&secret={HEX}")
        );
        assert_eq!(
            l[1].https,
            format!("https://t.me/proxy?server=proxy.example.com&port=443&secret=dd{HEX}")
        );
        assert_eq!(
            l[2].tg,
            format!(
                "tg://proxy?server=proxy.example.com&port=443&secret=ee{HEX}{}",
                "63646e2e6578616d706c652e6f7267"
            )
        );
        let only = links("1.2.3.4", 8443, &s, ModeSet::DEFAULT, "a.b");
        assert_eq!(only.iter().map(|l| l.mode).collect::<Vec<_>>(), [Mode::Tls]);
    }

    #[test]
    fn link_host_is_encoded() {
        let s = Secret::from_hex(HEX).unwrap();
        let l = links(
            "[2001:db8::1]",
            443,
            &s,
            ModeSet::EMPTY.with(Mode::Secure),
            "x",
        );
        assert!(
            l[0].tg
                .starts_with("tg://proxy?server=2001%3Adb8%3A%3A1&port=443&")
        );
        let l = links("a&b=c", 443, &s, ModeSet::EMPTY.with(Mode::Secure), "x");
        assert!(l[0].tg.starts_with("tg://proxy?server=a%26b%3Dc&port=443&"));
    }
}
