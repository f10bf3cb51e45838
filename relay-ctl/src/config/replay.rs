//! `[replay]`: the anti-replay memory.

use serde::Deserialize;

use super::SectionError;

/// `[replay]`: the anti-replay memory. Each authenticated handshake is remembered for
/// `retention_secs` or `retention_handshakes` later handshakes, whichever is longer, within
/// `memory_bytes` (see [`relay_proto::replay`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Seconds a handshake is remembered at least (at rates the memory allows).
    #[serde(default = "default_replay_retention")]
    pub retention_secs: u64,
    /// Later handshakes a handshake is remembered for at least, however fast they come.
    #[serde(default = "default_replay_handshakes")]
    pub retention_handshakes: u64,
    /// Most memory the filters may take, in bytes.
    #[serde(default = "default_replay_memory")]
    pub memory_bytes: usize,
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            retention_secs: default_replay_retention(),
            retention_handshakes: default_replay_handshakes(),
            memory_bytes: default_replay_memory(),
        }
    }
}

impl Replay {
    /// The memory's limits.
    pub fn limits(&self) -> relay_proto::replay::ReplayLimits {
        relay_proto::replay::ReplayLimits {
            retention_secs: self.retention_secs,
            handshakes: self.retention_handshakes,
            memory_bytes: self.memory_bytes,
        }
    }

    /// Checks that the memory can hold what it must, and for at least the fake-TLS time window
    /// (`[tls] time_skew_secs` either side).
    pub(super) fn validate(&self, time_skew_secs: u32) -> Result<(), SectionError> {
        if let Err(message) = self.limits().check() {
            return Err(SectionError::new(
                "memory_bytes",
                format!("[replay] {message}"),
            ));
        }
        if self.retention_secs < 2 * u64::from(time_skew_secs) {
            return Err(SectionError::new(
                "retention_secs",
                format!(
                    "[replay] retention_secs must cover the fake-TLS time window: at least \
                     2 × [tls] time_skew_secs = {}",
                    2 * u64::from(time_skew_secs)
                ),
            ));
        }
        Ok(())
    }
}

fn default_replay_retention() -> u64 {
    86_400
}
fn default_replay_handshakes() -> u64 {
    1_000_000
}
fn default_replay_memory() -> usize {
    32 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{expect_invalid, parse};

    #[test]
    fn replay_memory_and_uptime_clock_settings() {
        let config = parse("[server]\nlisten = [\"127.0.0.1:1\"]\n").expect("valid");
        assert!(
            config.tls.accept_uptime_clock,
            "accepted by default, as before"
        );
        let limits = config.replay.limits();
        assert_eq!(
            (
                limits.retention_secs,
                limits.handshakes,
                limits.memory_bytes
            ),
            (86_400, 1_000_000, 32 << 20)
        );
        let config = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\naccept_uptime_clock = false\n\
             [replay]\nmemory_bytes = 8388608\n",
        )
        .expect("an old config's memory_bytes still fits a million handshakes");
        assert!(!config.tls.accept_uptime_clock);
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[replay]\nmemory_bytes = 65536\n",
            4,
            "cannot hold 1000000 handshakes",
        );
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[tls]\ntime_skew_secs = 600\n[replay]\nretention_secs = 900\n",
            6,
            "at least 2 × [tls] time_skew_secs = 1200",
        );
    }
}
