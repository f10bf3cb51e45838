//! `[misuse]`: automatic bans of misbehaving sources and prefixes.

use std::num::NonZeroU32;

use serde::Deserialize;

/// `[misuse]`: thresholds per window; crossing one bans the source (IPv4 address, IPv6 /64)
/// for `ban_secs`. The `prefix_*` thresholds count all sources of an IPv4 /24 or IPv6 /48
/// together and ban the whole prefix. 0 disables a threshold.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Misuse {
    /// Length of the counting window, seconds.
    pub window_secs: u64,
    /// How long a ban lasts, seconds.
    pub ban_secs: u64,
    /// Handshakes with an unknown secret or bad MAC per window.
    pub bad_secret: u32,
    /// Fake-TLS hellos for another domain per window.
    pub unknown_sni: u32,
    /// Replayed handshakes per window.
    pub replay: u32,
    /// Handshake timeouts per window.
    pub timeout: u32,
    /// Garbage connections per window.
    pub garbage: u32,
    /// New connections per window.
    pub connections: u32,
    /// Bad secrets or MACs per window from one /24 or /48.
    pub prefix_bad_secret: u32,
    /// Unknown SNIs per window from one /24 or /48.
    pub prefix_unknown_sni: u32,
    /// Replays per window from one /24 or /48.
    pub prefix_replay: u32,
    /// Handshake timeouts per window from one /24 or /48.
    pub prefix_timeout: u32,
    /// Garbage connections per window from one /24 or /48.
    pub prefix_garbage: u32,
    /// New connections per window from one /24 or /48; off (0) by default: a carrier's CGNAT
    /// /24 carries many users' connections, and floods are cut per source (SYN limiter,
    /// `connections`).
    pub prefix_connections: u32,
    /// Most sources, and most prefixes, tracked at once (memory bound: about 100 bytes each);
    /// beyond it the least recently seen is forgotten.
    pub max_sources: usize,
    /// What a ban for a prober's offence (bad secret, unknown SNI, replay, timeout, garbage)
    /// does: `front` (its connections get the mask site) or `drop` (in the kernel).
    /// Connection-rate bans always drop.
    pub action: ProbeBanAction,
    /// New connections per second refilled into a front-banned source's budget.
    pub banned_syn_rate_per_sec: u32,
    /// Connections a front-banned source may open at once; beyond its budget SYNs are dropped.
    pub banned_syn_burst: NonZeroU32,
}

/// `[misuse] action`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProbeBanAction {
    /// Front every connection of the banned source at accept.
    #[default]
    Front,
    /// Drop the banned source in the kernel.
    Drop,
}

impl Default for Misuse {
    fn default() -> Self {
        Misuse {
            window_secs: 60,
            ban_secs: 3600,
            bad_secret: 10,
            unknown_sni: 10,
            replay: 3,
            timeout: 20,
            garbage: 10,
            connections: 1200,
            // Ten times a source's: a CGNAT /24 of many genuine users is not banned by a few
            // bad clients.
            prefix_bad_secret: 100,
            prefix_unknown_sni: 100,
            prefix_replay: 30,
            prefix_timeout: 200,
            prefix_garbage: 100,
            prefix_connections: 0,
            max_sources: 100_000,
            action: ProbeBanAction::Front,
            banned_syn_rate_per_sec: 2,
            banned_syn_burst: NonZeroU32::new(8).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl Misuse {
    /// The action of a ban for `reason`: `action` for a prober's offences, drop otherwise.
    pub fn action_for(&self, reason: relay_common::BanReason) -> relay_common::BanAction {
        match self.action {
            ProbeBanAction::Front if reason.is_probe() => relay_common::BanAction::Front,
            _ => relay_common::BanAction::Drop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ProbeBanAction;
    use crate::config::tests::{expect_invalid, parse};

    #[test]
    fn misuse_ban_action_defaults_to_front_for_probes_only() {
        use relay_common::{BanAction, BanReason};
        let config = parse("[server]\nlisten = [\"127.0.0.1:1\"]\n").expect("valid");
        assert_eq!(config.misuse.action, ProbeBanAction::Front);
        assert_eq!(
            config.misuse.action_for(BanReason::BadSecret),
            BanAction::Front
        );
        assert_eq!(
            config.misuse.action_for(BanReason::ConnRate),
            BanAction::Drop
        );
        let config = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\naction = \"drop\"\nbanned_syn_rate_per_sec = 1\nbanned_syn_burst = 3\n",
        )
        .expect("valid");
        assert_eq!(config.misuse.action_for(BanReason::Replay), BanAction::Drop);
        assert_eq!(config.misuse.banned_syn_burst.get(), 3);
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\naction = \"reset\"\n",
            4,
            "unknown variant",
        );
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\nbanned_syn_burst = 0\n",
            4,
            "nonzero",
        );
    }

    #[test]
    fn prefix_thresholds_default_well_above_a_sources_and_can_be_set() {
        let config = parse("[server]\nlisten = [\"127.0.0.1:1\"]\n").expect("valid");
        let misuse = &config.misuse;
        assert!(misuse.prefix_bad_secret >= 10 * misuse.bad_secret);
        assert!(misuse.prefix_replay >= 10 * misuse.replay);
        assert_eq!(
            misuse.prefix_connections, 0,
            "off: a CGNAT /24 carries many users"
        );
        let config = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\nprefix_bad_secret = 40\nprefix_connections = 50000\n",
        )
        .expect("valid");
        assert_eq!(config.misuse.prefix_bad_secret, 40);
        assert_eq!(config.misuse.prefix_connections, 50_000);
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\nprefix_bad_secrets = 40\n",
            4,
            "unknown field",
        );
    }
}
