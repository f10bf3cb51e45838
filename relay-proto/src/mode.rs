//! Proxy modes (classic, secure, TLS) and the obfuscated2 protocol tags each one admits.

use std::fmt;
use std::str::FromStr;

/// One way a client can reach the proxy; a server enables a set of them ([`ModeSet`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plain obfuscated2 with the abridged or intermediate framing (link secret = hex).
    Classic,
    /// Plain obfuscated2 with padded intermediate framing (link secret = `dd` + hex).
    Secure,
    /// Fake TLS carrying obfuscated2 with padded intermediate framing (link secret = `ee` + hex + domain).
    Tls,
}

impl Mode {
    /// Every mode, in the order links are printed.
    pub const ALL: [Mode; 3] = [Mode::Classic, Mode::Secure, Mode::Tls];

    /// The configuration name (`classic`, `secure`, `tls`).
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Classic => "classic",
            Mode::Secure => "secure",
            Mode::Tls => "tls",
        }
    }

    /// The mode a connection is in, given its protocol tag and whether it arrived inside fake
    /// TLS; `None` when no mode admits that combination (TLS connections must carry `dd`, as
    /// Telegram's clients always do and mtg requires).
    pub const fn of(tag: ProtoTag, via_tls: bool) -> Option<Mode> {
        match (tag, via_tls) {
            (ProtoTag::PaddedIntermediate, true) => Some(Mode::Tls),
            (_, true) => None,
            (ProtoTag::PaddedIntermediate, false) => Some(Mode::Secure),
            (ProtoTag::Abridged | ProtoTag::Intermediate, false) => Some(Mode::Classic),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A mode name that is not `classic`, `secure` or `tls`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy mode {0:?} (expected classic, secure or tls)")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// The framing a client announces in bytes 56..60 of its obfuscated2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtoTag {
    /// `ef ef ef ef`: abridged framing.
    Abridged,
    /// `ee ee ee ee`: intermediate framing.
    Intermediate,
    /// `dd dd dd dd`: padded intermediate framing.
    PaddedIntermediate,
}

impl ProtoTag {
    /// The four tag bytes as they appear in the decrypted header.
    pub const fn bytes(self) -> [u8; 4] {
        match self {
            ProtoTag::Abridged => [0xef; 4],
            ProtoTag::Intermediate => [0xee; 4],
            ProtoTag::PaddedIntermediate => [0xdd; 4],
        }
    }

    /// The tag these four bytes spell, if any.
    pub const fn from_bytes(b: [u8; 4]) -> Option<ProtoTag> {
        match b {
            [0xef, 0xef, 0xef, 0xef] => Some(ProtoTag::Abridged),
            [0xee, 0xee, 0xee, 0xee] => Some(ProtoTag::Intermediate),
            [0xdd, 0xdd, 0xdd, 0xdd] => Some(ProtoTag::PaddedIntermediate),
            _ => None,
        }
    }
}

/// A set of enabled [`Mode`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ModeSet(u8);

impl ModeSet {
    /// No mode enabled.
    pub const EMPTY: ModeSet = ModeSet(0);
    /// Every mode enabled.
    pub const ALL: ModeSet = ModeSet(0b111);
    /// The server default: TLS only. A server that also accepts obfuscated2 (classic, secure)
    /// must wait for up to 64 bytes of random-looking data before it can tell a client from a
    /// probe, and plain obfuscated2 traffic is itself recognisable; TLS-only fronts anything
    /// that is not a ClientHello on its first byte.
    pub const DEFAULT: ModeSet = ModeSet::EMPTY.with(Mode::Tls);

    const fn bit(mode: Mode) -> u8 {
        1 << mode as u8
    }

    /// This set plus `mode`.
    pub const fn with(self, mode: Mode) -> ModeSet {
        ModeSet(self.0 | Self::bit(mode))
    }

    /// Whether `mode` is enabled.
    pub const fn contains(self, mode: Mode) -> bool {
        self.0 & Self::bit(mode) != 0
    }

    /// Whether no mode is enabled.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a connection with this tag, inside fake TLS or not, is allowed.
    pub const fn admits(self, tag: ProtoTag, via_tls: bool) -> bool {
        match Mode::of(tag, via_tls) {
            Some(mode) => self.contains(mode),
            None => false,
        }
    }

    /// The enabled modes in [`Mode::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Mode> {
        Mode::ALL.into_iter().filter(move |&m| self.contains(m))
    }
}

impl FromIterator<Mode> for ModeSet {
    fn from_iter<I: IntoIterator<Item = Mode>>(iter: I) -> Self {
        iter.into_iter().fold(ModeSet::EMPTY, ModeSet::with)
    }
}

impl fmt::Debug for ModeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for tag in [
            ProtoTag::Abridged,
            ProtoTag::Intermediate,
            ProtoTag::PaddedIntermediate,
        ] {
            assert_eq!(ProtoTag::from_bytes(tag.bytes()), Some(tag));
        }
        assert_eq!(ProtoTag::from_bytes([0xdd, 0xdd, 0xdd, 0xde]), None);
    }

    #[test]
    fn mode_policy() {
        use ProtoTag::*;
        assert_eq!(Mode::of(Abridged, false), Some(Mode::Classic));
        assert_eq!(Mode::of(Intermediate, false), Some(Mode::Classic));
        assert_eq!(Mode::of(PaddedIntermediate, false), Some(Mode::Secure));
        assert_eq!(Mode::of(PaddedIntermediate, true), Some(Mode::Tls));
        assert_eq!(Mode::of(Abridged, true), None);
        assert_eq!(Mode::of(Intermediate, true), None);

        let d = ModeSet::DEFAULT;
        assert!(!d.admits(Abridged, false));
        assert!(!d.admits(PaddedIntermediate, false));
        assert!(d.admits(PaddedIntermediate, true));
        let tls_only: ModeSet = [Mode::Tls].into_iter().collect();
        assert!(!tls_only.admits(PaddedIntermediate, false));
        assert!(tls_only.admits(PaddedIntermediate, true));
        assert!(ModeSet::ALL.admits(Intermediate, false));
        assert!(!ModeSet::ALL.admits(Intermediate, true));
    }

    #[test]
    fn names() {
        assert_eq!("secure".parse::<Mode>(), Ok(Mode::Secure));
        assert!("dd".parse::<Mode>().is_err());
        assert_eq!(format!("{:?}", ModeSet::DEFAULT), "{Tls}");
        assert_eq!(ModeSet::ALL.iter().collect::<Vec<_>>(), Mode::ALL);
    }
}
