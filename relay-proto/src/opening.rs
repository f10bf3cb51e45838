//! What the first bytes of a connection can still become, given the enabled modes.
//!
//! A connection is fronted as soon as its bytes cannot begin a handshake of an enabled mode, so
//! a probe gets the mask site's answer as fast as it would from the site itself. Telegram
//! clients start fake TLS with a `16 03 01` handshake record and never start an obfuscated2
//! header with one of the forbidden prefixes ([`super::obfs2::may_start_header`]).

use super::{
    Mode, ModeSet, obfs2,
    tls::reader::{Sniff, sniff},
};

/// What a connection's first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// Too few bytes to tell.
    NeedMore,
    /// A TLS handshake record, and fake TLS is enabled: read a ClientHello.
    Tls,
    /// May be an obfuscated2 header, and classic or secure is enabled: read 64 bytes.
    Obfs2,
    /// A TLS handshake record on a server without fake TLS.
    TlsDisabled,
    /// Nothing a client of the enabled modes sends.
    NotAClient,
}

/// Classifies `prefix`, the bytes a connection has sent so far, for a server with `modes`.
pub fn classify(prefix: &[u8], modes: ModeSet) -> Opening {
    let obfs2 = modes.contains(Mode::Classic) || modes.contains(Mode::Secure);
    match sniff(prefix) {
        Sniff::Tls if modes.contains(Mode::Tls) => Opening::Tls,
        // An obfuscated2 header starts `16 03 01` once in 2^24: not worth a secret search.
        Sniff::Tls => Opening::TlsDisabled,
        Sniff::NeedMore => Opening::NeedMore,
        Sniff::NotTls if obfs2 && obfs2::may_start_header(prefix) => Opening::Obfs2,
        Sniff::NotTls => Opening::NotAClient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(modes: &[Mode]) -> ModeSet {
        modes.iter().copied().collect()
    }

    #[test]
    fn tls_only_decides_on_the_first_byte() {
        let tls = set(&[Mode::Tls]);
        assert_eq!(classify(b"", tls), Opening::NeedMore);
        assert_eq!(classify(&[0x16], tls), Opening::NeedMore);
        assert_eq!(classify(&[0x16, 0x03], tls), Opening::NeedMore);
        assert_eq!(classify(&[0x16, 0x03, 0x01], tls), Opening::Tls);
        for probe in [
            &b"G"[..],
            b"\x00",
            b"\x17",
            &[0x16, 0x02],
            &[0x16, 0x03, 0x03],
        ] {
            assert_eq!(classify(probe, tls), Opening::NotAClient, "{probe:02x?}");
        }
    }

    #[test]
    fn obfuscated2_decides_on_the_forbidden_start() {
        let secure = set(&[Mode::Secure, Mode::Tls]);
        assert_eq!(classify(b"GE", secure), Opening::Obfs2);
        assert_eq!(classify(b"GET ", secure), Opening::NotAClient);
        assert_eq!(classify(b"HEAD / HTTP/1.0", secure), Opening::NotAClient);
        assert_eq!(classify(b"PUT / HTTP/1.1", secure), Opening::Obfs2);
        assert_eq!(classify(&[0xef], secure), Opening::NotAClient);
        assert_eq!(
            classify(&[1, 2, 3, 4, 0, 0, 0, 0], secure),
            Opening::NotAClient
        );
        // `16 03 01 02` is a TLS record when TLS is on.
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02], secure), Opening::Tls);
        let classic = set(&[Mode::Classic]);
        assert_eq!(classify(&[0x16, 0x03, 0x01], classic), Opening::TlsDisabled);
        assert_eq!(classify(&[0x16, 0x04], classic), Opening::Obfs2);
    }
}
