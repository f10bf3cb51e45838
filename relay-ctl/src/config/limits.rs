//! `[limits]`: new-connection rates and concurrency bounds.

use std::num::{NonZeroU32, NonZeroUsize};

use serde::Deserialize;

use super::{SectionError, serde_helpers::yes};

/// `[limits]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// New connections per second refilled into each source's (/32, /64) bucket; 0 = no refill.
    #[serde(default = "default_syn_rate")]
    pub syn_rate_per_sec: u32,
    /// New connections a source may open at once. Real clients open a dozen or more at start.
    #[serde(default = "default_syn_burst")]
    pub syn_burst: NonZeroU32,
    /// Whether the per-source new-connection limiter is on.
    #[serde(default = "yes")]
    pub syn_limit: bool,
    /// Limiter entries each CPU may create per second; beyond it a spoofed flood gets no state.
    #[serde(default = "default_new_state")]
    pub new_state_per_cpu_per_sec: NonZeroU32,
    /// Open client connections in all; beyond it new connections are reset at accept. Each
    /// takes two file descriptors (client and DC).
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// Open client connections from one source (/32, /64); allowlisted sources are exempt.
    /// Mobile carriers put many users behind one address: keep it generous.
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: NonZeroUsize,
    /// Client connections in their handshake at once. At this bound (and the per-source and
    /// per-prefix ones) the oldest handshake whose client has sent nothing is evicted to make
    /// room; only when every one has spoken is a newcomer refused (never an allowlisted one).
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: NonZeroUsize,
    /// Client connections in their handshake at once from one source (IPv4 address, IPv6 /64).
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: NonZeroUsize,
    /// Client connections in their handshake at once from one prefix (IPv4 /24, IPv6 /48).
    #[serde(default = "default_max_handshakes_per_prefix")]
    pub max_handshakes_per_prefix: NonZeroUsize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            syn_rate_per_sec: default_syn_rate(),
            syn_burst: default_syn_burst(),
            syn_limit: true,
            new_state_per_cpu_per_sec: default_new_state(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_per_source(),
            max_handshakes: default_max_handshakes(),
            max_handshakes_per_source: default_max_handshakes_per_source(),
            max_handshakes_per_prefix: default_max_handshakes_per_prefix(),
        }
    }
}

impl Limits {
    /// Checks what serde cannot: the kernel's token bucket has a largest rate.
    pub(super) fn validate(&self) -> Result<(), SectionError> {
        if self.syn_rate_per_sec > relay_common::bucket::MAX_RATE_PER_SEC {
            return Err(SectionError::new(
                "syn_rate_per_sec",
                format!(
                    "syn_rate_per_sec must be at most {}",
                    relay_common::bucket::MAX_RATE_PER_SEC
                ),
            ));
        }
        Ok(())
    }
}

fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(8192).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_per_source() -> NonZeroUsize {
    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_handshakes_per_source() -> NonZeroUsize {
    NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_handshakes_per_prefix() -> NonZeroUsize {
    NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_handshakes() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}

fn default_syn_rate() -> u32 {
    8
}
fn default_syn_burst() -> NonZeroU32 {
    NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN)
}
fn default_new_state() -> NonZeroU32 {
    NonZeroU32::new(20_000).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::expect_invalid;

    #[test]
    fn zero_burst_is_rejected() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nsyn_burst = 0\n",
            4,
            "nonzero",
        );
    }

    #[test]
    fn huge_rate_is_rejected_with_its_line() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[limits]\nsyn_rate_per_sec = 4000000000\n",
            4,
            "at most",
        );
    }
}
