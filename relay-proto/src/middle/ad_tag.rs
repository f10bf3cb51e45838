//! The promoted channel's tag an operator gets from @MTProxybot: 16 bytes, written as 32 hex
//! digits. Middle proxies show the channel to clients whose requests carry it.

use std::{fmt, str::FromStr};

/// An ad tag.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdTag(pub [u8; 16]);

/// Why a text is not an ad tag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an ad tag is 32 hex digits (as @MTProxybot gives it)")]
pub struct AdTagError;

impl FromStr for AdTag {
    type Err = AdTagError;

    fn from_str(s: &str) -> Result<AdTag, AdTagError> {
        let s = s.trim();
        if s.len() != 32 {
            return Err(AdTagError);
        }
        let mut tag = [0u8; 16];
        hex::decode_to_slice(s, &mut tag).map_err(|_| AdTagError)?;
        Ok(AdTag(tag))
    }
}

impl fmt::Display for AdTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Not secret, but kept out of debug dumps of configs all the same: shown as hex.
impl fmt::Debug for AdTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdTag({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_32_hex_digits_only() {
        let tag: AdTag = "0123456789abcdef0123456789ABCDEF".parse().expect("hex");
        assert_eq!(tag.0[0], 0x01);
        assert_eq!(tag.to_string(), "0123456789abcdef0123456789abcdef");
        for bad in [
            "",
            "0123",
            "0123456789abcdef0123456789abcdeg",
            &"00".repeat(17),
        ] {
            assert_eq!(bad.parse::<AdTag>(), Err(AdTagError), "{bad}");
        }
    }
}
