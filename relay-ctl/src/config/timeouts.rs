//! `[timeouts]`: connection deadlines.

use serde::Deserialize;

use super::SectionError;

/// `[timeouts]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A client must complete its handshake within this many seconds.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_secs: u64,
    /// A relayed connection with no bytes either way for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_secs: u64,
    /// A connection still short of a whole handshake this many milliseconds after its first
    /// byte (or after it connected, while it has sent none) gets a connection to the mask host
    /// that receives its bytes, so from then on the mask's own timers decide how it ends (the
    /// mask connection is dropped again if the handshake completes and verifies). Later bytes
    /// do not restart it. Genuine clients send their whole hello or header at once and never
    /// take this long.
    #[serde(default = "default_mask_grace_ms")]
    pub mask_grace_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake_secs: default_handshake_timeout(),
            idle_secs: default_idle_timeout(),
            mask_grace_ms: default_mask_grace_ms(),
        }
    }
}

impl Timeouts {
    /// Checks that no deadline is zero and the mask grace ends before the handshake deadline.
    pub(super) fn validate(&self) -> Result<(), SectionError> {
        if self.handshake_secs == 0 || self.idle_secs == 0 {
            return Err(SectionError::new(
                "handshake_secs",
                "[timeouts] must be at least 1 second",
            ));
        }
        if self.mask_grace_ms == 0 || self.mask_grace_ms >= self.handshake_secs.saturating_mul(1000)
        {
            return Err(SectionError::new(
                "mask_grace_ms",
                "[timeouts] mask_grace_ms must be at least 1 and below handshake_secs",
            ));
        }
        Ok(())
    }
}

fn default_mask_grace_ms() -> u64 {
    250
}

fn default_handshake_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    300
}

#[cfg(test)]
mod tests {
    use crate::config::tests::expect_invalid;

    #[test]
    fn mask_grace_must_fit_inside_the_handshake_deadline() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[timeouts]\nhandshake_secs = 1\nmask_grace_ms = 1000\n",
            5,
            "mask_grace_ms",
        );
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[timeouts]\nmask_grace_ms = 0\n",
            4,
            "mask_grace_ms",
        );
    }
}
