//! The one decision order of the XDP program and of the userspace gate: allowlist, ban,
//! blocked prefix, then the new-connection limiter (a front-banned source's own budget, or the
//! ordinary one).
//!
//! [`decide`] asks a [`Lookups`] for what it needs in that order, so the kernel touches a map
//! only when the answer matters. It has no loops, no indexing and no arithmetic of its own
//! (the limiter's is [`TokenBucket`]'s and [`crate::StateBudget`]'s), so the verifier sees a
//! short, bounded path, and every step is `#[inline(always)]`.

use crate::{BanEntry, TokenBucket, Verdict, XdpConfig};

/// Which of a source's two limiter buckets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Budget {
    /// The ordinary new-connection budget (`SYN_V4` / `SYN_V6`).
    Syn,
    /// The smaller budget of a front-banned source (`BAN_SYN_V4` / `BAN_SYN_V6`).
    Banned,
}

/// Whether a new ordinary bucket may be created.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Room {
    /// Yes: the bucket is created and the packet passes.
    Granted,
    /// No (the new-state budget is spent, or no room is left): the packet passes without
    /// state, [`Verdict::StateSuppressed`].
    Refused,
    /// The budget could not be read: the packet passes without state, [`Verdict::Passed`].
    Unknown,
}

/// What the decision looks up about one source. Each method is called at most as often as
/// the decision order needs it, and only when it needs it.
pub trait Lookups {
    /// CLOCK_MONOTONIC now (ns), read when a ban or a bucket needs it.
    fn now_ns(&mut self) -> u64;
    /// Whether the source is inside an allowlisted prefix.
    fn allowlisted(&mut self) -> bool;
    /// The source's ban, if it has one (lapsed or not: the decision checks).
    fn ban(&mut self) -> Option<BanEntry>;
    /// Whether the source is inside a blocked prefix.
    fn blocked(&mut self) -> bool;
    /// The source's bucket in `budget`, if it has one.
    fn bucket(&mut self, budget: Budget) -> Option<&mut TokenBucket>;
    /// Stores a new bucket for the source in `budget`; one stored meanwhile by another
    /// writer may win.
    fn insert_bucket(&mut self, budget: Budget, bucket: TokenBucket);
    /// Whether a new [`Budget::Syn`] bucket may be created now, within `per_sec` new
    /// buckets a second.
    fn room(&mut self, now_ns: u64, per_sec: u32) -> Room;
}

/// The verdict on one TCP segment to a listen port from the source `lookups` describes.
///
/// `bare_syn` is a SYN without ACK, the only segment the limiters spend on. `config` is
/// `None` when no limits are set: the lists and bans still apply, the limiters do not.
#[inline(always)]
pub fn decide<L: Lookups>(lookups: &mut L, bare_syn: bool, config: Option<&XdpConfig>) -> Verdict {
    if lookups.allowlisted() {
        return Verdict::Allowlisted;
    }
    if let Some(ban) = lookups.ban() {
        let now = lookups.now_ns();
        if ban.active_at(now) {
            if !ban.fronts() {
                return Verdict::Banned;
            }
            // A blocked prefix drops a front-banned source all the same.
            if lookups.blocked() {
                return Verdict::BlockedCidr;
            }
            return match config {
                Some(config) if bare_syn => front_banned(lookups, config),
                _ => Verdict::BannedFronted,
            };
        }
    }
    if lookups.blocked() {
        return Verdict::BlockedCidr;
    }
    match config {
        Some(config) if bare_syn && config.syn_limit_enabled() => limit(lookups, config),
        _ => Verdict::Passed,
    }
}

/// A front-banned source's bare SYN: passes within its banned budget (no new-state budget:
/// the bans bound the keys), dropped beyond it.
#[inline(always)]
fn front_banned<L: Lookups>(lookups: &mut L, config: &XdpConfig) -> Verdict {
    let now = lookups.now_ns();
    let admitted = match lookups.bucket(Budget::Banned) {
        Some(bucket) => {
            bucket.try_take(now, config.banned_syn_rate_per_sec, config.banned_syn_burst)
        }
        None => {
            let bucket = TokenBucket::first_event(now, config.banned_syn_burst);
            lookups.insert_bucket(Budget::Banned, bucket);
            true
        }
    };
    if admitted {
        Verdict::BannedFronted
    } else {
        Verdict::BannedSynLimited
    }
}

/// A bare SYN under the ordinary limiter: spends one of the source's tokens, creating its
/// bucket when there is [`Room`] for it.
#[inline(always)]
fn limit<L: Lookups>(lookups: &mut L, config: &XdpConfig) -> Verdict {
    let now = lookups.now_ns();
    if let Some(bucket) = lookups.bucket(Budget::Syn) {
        return if bucket.try_take(now, config.syn_rate_per_sec, config.syn_burst) {
            Verdict::Passed
        } else {
            Verdict::SynRateLimited
        };
    }
    match lookups.room(now, config.new_state_per_cpu_per_sec) {
        Room::Granted => {
            let bucket = TokenBucket::first_event(now, config.syn_burst);
            lookups.insert_bucket(Budget::Syn, bucket);
            Verdict::Passed
        }
        Room::Refused => Verdict::StateSuppressed,
        Room::Unknown => Verdict::Passed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BanAction, BanReason, StateBudget};

    const SEC: u64 = 1_000_000_000;

    /// One source's state, as a map lookup would find it.
    #[derive(Default)]
    struct Source {
        now: u64,
        allowlisted: bool,
        ban: Option<BanEntry>,
        blocked: bool,
        syn: Option<TokenBucket>,
        banned: Option<TokenBucket>,
        budget: StateBudget,
        budget_unreadable: bool,
        /// Lookups made, in order, to check laziness.
        asked: [u8; 8],
        asks: usize,
    }

    impl Source {
        fn ask(&mut self, what: u8) {
            if let Some(slot) = self.asked.get_mut(self.asks) {
                *slot = what;
                self.asks += 1;
            }
        }
    }

    impl Lookups for Source {
        fn now_ns(&mut self) -> u64 {
            self.now
        }
        fn allowlisted(&mut self) -> bool {
            self.ask(b'a');
            self.allowlisted
        }
        fn ban(&mut self) -> Option<BanEntry> {
            self.ask(b'n');
            self.ban
        }
        fn blocked(&mut self) -> bool {
            self.ask(b'b');
            self.blocked
        }
        fn bucket(&mut self, budget: Budget) -> Option<&mut TokenBucket> {
            match budget {
                Budget::Syn => self.syn.as_mut(),
                Budget::Banned => self.banned.as_mut(),
            }
        }
        fn insert_bucket(&mut self, budget: Budget, bucket: TokenBucket) {
            match budget {
                Budget::Syn => self.syn = Some(bucket),
                Budget::Banned => self.banned = Some(bucket),
            }
        }
        fn room(&mut self, now_ns: u64, per_sec: u32) -> Room {
            if self.budget_unreadable {
                Room::Unknown
            } else if self.budget.try_create(now_ns, per_sec) {
                Room::Granted
            } else {
                Room::Refused
            }
        }
    }

    const CONFIG: XdpConfig = XdpConfig {
        syn_rate_per_sec: 0,
        syn_burst: 2,
        new_state_per_cpu_per_sec: 1,
        flags: XdpConfig::FLAG_SYN_LIMIT,
        banned_syn_rate_per_sec: 0,
        banned_syn_burst: 1,
    };

    fn ban(action: BanAction, expires_ns: u64) -> Option<BanEntry> {
        Some(BanEntry::new(expires_ns, BanReason::BadSecret, action))
    }

    fn source() -> Source {
        Source {
            now: SEC,
            ..Source::default()
        }
    }

    fn syn(s: &mut Source) -> Verdict {
        decide(s, true, Some(&CONFIG))
    }

    #[test]
    fn allowlist_wins_over_everything_and_is_asked_first() {
        let mut s = Source {
            allowlisted: true,
            ban: ban(BanAction::Drop, BanEntry::NEVER),
            blocked: true,
            ..source()
        };
        assert_eq!(syn(&mut s), Verdict::Allowlisted);
        assert_eq!(&s.asked[..s.asks], b"a");
        assert!(
            s.syn.is_none(),
            "no limiter state for an allowlisted source"
        );
    }

    #[test]
    fn a_drop_ban_drops_without_asking_for_the_blocklist() {
        let mut s = Source {
            ban: ban(BanAction::Drop, 2 * SEC),
            blocked: true,
            ..source()
        };
        assert_eq!(decide(&mut s, false, Some(&CONFIG)), Verdict::Banned);
        assert_eq!(&s.asked[..s.asks], b"an");
    }

    #[test]
    fn a_lapsed_ban_is_no_ban() {
        let mut s = Source {
            ban: ban(BanAction::Drop, SEC),
            ..source()
        };
        assert_eq!(syn(&mut s), Verdict::Passed);
        s.blocked = true;
        assert_eq!(syn(&mut s), Verdict::BlockedCidr);
    }

    #[test]
    fn a_blocked_prefix_drops_a_front_banned_source() {
        let mut s = Source {
            ban: ban(BanAction::Front, BanEntry::NEVER),
            blocked: true,
            ..source()
        };
        assert_eq!(syn(&mut s), Verdict::BlockedCidr);
        assert!(s.banned.is_none());
    }

    #[test]
    fn a_front_ban_spends_its_own_budget_on_bare_syns_only() {
        let mut s = Source {
            ban: ban(BanAction::Front, BanEntry::NEVER),
            ..source()
        };
        assert_eq!(decide(&mut s, false, Some(&CONFIG)), Verdict::BannedFronted);
        assert!(s.banned.is_none(), "a non-SYN spends nothing");
        assert_eq!(syn(&mut s), Verdict::BannedFronted);
        assert_eq!(syn(&mut s), Verdict::BannedSynLimited);
        assert!(s.syn.is_none(), "the ordinary budget is untouched");
        // Without limits, fronted whatever it sends.
        assert_eq!(decide(&mut s, true, None), Verdict::BannedFronted);
    }

    #[test]
    fn the_limiter_spends_the_burst_and_then_drops() {
        let mut s = source();
        assert_eq!(syn(&mut s), Verdict::Passed);
        assert_eq!(syn(&mut s), Verdict::Passed);
        assert_eq!(syn(&mut s), Verdict::SynRateLimited);
        // Not a bare SYN, or no limits, or the limiter off: never limited.
        assert_eq!(decide(&mut s, false, Some(&CONFIG)), Verdict::Passed);
        assert_eq!(decide(&mut s, true, None), Verdict::Passed);
        let off = XdpConfig { flags: 0, ..CONFIG };
        assert_eq!(decide(&mut s, true, Some(&off)), Verdict::Passed);
    }

    #[test]
    fn new_state_is_created_within_the_budget_only() {
        let mut first = source();
        assert_eq!(syn(&mut first), Verdict::Passed);
        // The budget (1 a second) is spent: a second unknown source passes without state.
        let mut second = Source {
            budget: first.budget,
            ..source()
        };
        assert_eq!(syn(&mut second), Verdict::StateSuppressed);
        assert!(second.syn.is_none());
        // An unreadable budget passes without state too, but as plainly passed.
        let mut third = Source {
            budget_unreadable: true,
            ..source()
        };
        assert_eq!(syn(&mut third), Verdict::Passed);
        assert!(third.syn.is_none());
    }
}
