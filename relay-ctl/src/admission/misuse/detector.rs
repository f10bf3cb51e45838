//! Per-source misuse counting: sliding-window estimates of handshake failures by reason and of
//! connections, at two levels: per source (IPv4 address, IPv6 /64) and per prefix (IPv4 /24,
//! IPv6 /48), each with its own thresholds, so a prober cannot hide behind many addresses of
//! one network. Pure state over (source, event, time); the caller turns a returned [`Ban`] into
//! kernel state.
//!
//! The estimate is Cloudflare's two-counter sliding window: `prev × (1 − elapsed/window) + cur`.
//! State for a key lives only as long as its two windows. Each level holds at most
//! `max_sources` keys; a new key in a full table evicts the least recently seen one, so every
//! event costs a bounded amount of work however the table is filled.

mod lru;

use relay_common::BanReason;

use self::lru::Lru;
use crate::{
    admission::keys::{PrefixKey, SourceKey},
    config,
};

/// What a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// Handshake with no matching secret or a bad MAC (or a stale fake-TLS timestamp).
    BadSecret,
    /// Fake-TLS hello naming another domain.
    UnknownSni,
    /// Replayed handshake.
    Replay,
    /// Handshake not finished in time.
    Timeout,
    /// Neither TLS nor obfuscated2 of an enabled mode.
    Garbage,
    /// A new connection (counted for the connection-rate threshold).
    Connection,
}

impl Offence {
    const COUNT: usize = 6;

    fn index(self) -> usize {
        self as usize
    }

    /// The ban reason recorded when this offence crosses its threshold.
    pub const fn ban_reason(self) -> BanReason {
        match self {
            Offence::BadSecret => BanReason::BadSecret,
            Offence::UnknownSni => BanReason::UnknownSni,
            Offence::Replay => BanReason::Replay,
            Offence::Timeout => BanReason::Timeout,
            Offence::Garbage => BanReason::Garbage,
            Offence::Connection => BanReason::ConnRate,
        }
    }
}

/// Thresholds per window; 0 disables a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Bad secrets or MACs.
    pub bad_secret: u32,
    /// Unknown SNI.
    pub unknown_sni: u32,
    /// Replays.
    pub replay: u32,
    /// Handshake timeouts.
    pub timeout: u32,
    /// Garbage.
    pub garbage: u32,
    /// New connections.
    pub connections: u32,
}

impl Thresholds {
    fn get(&self, offence: Offence) -> u32 {
        match offence {
            Offence::BadSecret => self.bad_secret,
            Offence::UnknownSni => self.unknown_sni,
            Offence::Replay => self.replay,
            Offence::Timeout => self.timeout,
            Offence::Garbage => self.garbage,
            Offence::Connection => self.connections,
        }
    }
}

/// Thresholds of both levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// Per source: IPv4 address, IPv6 /64.
    pub source: Thresholds,
    /// Per prefix: IPv4 /24, IPv6 /48.
    pub prefix: Thresholds,
}

impl From<&config::Misuse> for Levels {
    /// The `[misuse]` thresholds, per source and per prefix.
    fn from(misuse: &config::Misuse) -> Levels {
        Levels {
            source: Thresholds {
                bad_secret: misuse.bad_secret,
                unknown_sni: misuse.unknown_sni,
                replay: misuse.replay,
                timeout: misuse.timeout,
                garbage: misuse.garbage,
                connections: misuse.connections,
            },
            prefix: Thresholds {
                bad_secret: misuse.prefix_bad_secret,
                unknown_sni: misuse.prefix_unknown_sni,
                replay: misuse.prefix_replay,
                timeout: misuse.prefix_timeout,
                garbage: misuse.prefix_garbage,
                connections: misuse.prefix_connections,
            },
        }
    }
}

/// What a ban covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One source (IPv4 address, IPv6 /64).
    Source(SourceKey),
    /// The prefix of many sources (IPv4 /24, IPv6 /48).
    Prefix(PrefixKey),
}

/// A source or prefix that crossed a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// Who.
    pub target: Target,
    /// Why.
    pub reason: BanReason,
    /// The estimated count that crossed the threshold.
    pub count: u32,
}

/// Two windows of counts of one key.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    window_start_ns: u64,
    prev: [u32; Offence::COUNT],
    cur: [u32; Offence::COUNT],
}

impl Tracked {
    fn new(now_ns: u64) -> Tracked {
        Tracked {
            window_start_ns: now_ns,
            prev: [0; Offence::COUNT],
            cur: [0; Offence::COUNT],
        }
    }

    /// Counts one `offence` at `now_ns`; returns the new estimate.
    fn count(&mut self, offence: Offence, now_ns: u64, window_ns: u64) -> u32 {
        roll(self, now_ns, window_ns);
        let i = offence.index();
        self.cur[i] = self.cur[i].saturating_add(1);
        let elapsed = now_ns.saturating_sub(self.window_start_ns).min(window_ns);
        // prev × (window − elapsed) / window + cur, in integers.
        let weighted_prev = u64::from(self.prev[i]) * (window_ns - elapsed) / window_ns;
        u32::try_from(weighted_prev)
            .unwrap_or(u32::MAX)
            .saturating_add(self.cur[i])
    }
}

/// Sliding-window counters for many sources and their prefixes.
#[derive(Debug)]
pub struct Detector {
    window_ns: u64,
    levels: Levels,
    sources: Lru<SourceKey, Tracked>,
    prefixes: Lru<PrefixKey, Tracked>,
}

impl Detector {
    /// A detector with `window_secs` windows and at most `max_sources` keys per level.
    pub fn new(window_secs: u64, levels: Levels, max_sources: usize) -> Detector {
        Detector {
            window_ns: window_secs.max(1) * 1_000_000_000,
            levels,
            sources: Lru::new(max_sources),
            prefixes: Lru::new(max_sources),
        }
    }

    /// Replaces thresholds, window and table size (on reload); counts so far are kept, except
    /// the least recently seen beyond a smaller size.
    pub fn reconfigure(&mut self, window_secs: u64, levels: Levels, max_sources: usize) {
        self.window_ns = window_secs.max(1) * 1_000_000_000;
        self.levels = levels;
        self.sources.set_capacity(max_sources);
        self.prefixes.set_capacity(max_sources);
    }

    /// Counts `offence` from `source` at `now_ns`, for the source and for its prefix; returns
    /// the bans of whichever reached its threshold for that offence (none, one or both). A
    /// banned key's state is then forgotten, so one ban is reported once.
    pub fn record(&mut self, source: SourceKey, offence: Offence, now_ns: u64) -> Vec<Ban> {
        let mut bans = Vec::new();
        let horizon = 2 * self.window_ns;
        let source_threshold = self.levels.source.get(offence);
        if source_threshold != 0 {
            self.sources.expire(now_ns, horizon, EXPIRE_PER_EVENT);
            let count = count(&mut self.sources, source, offence, now_ns, self.window_ns);
            if count >= source_threshold {
                self.sources.remove(&source);
                bans.push(Ban {
                    target: Target::Source(source),
                    reason: offence.ban_reason(),
                    count,
                });
            }
        }
        let prefix_threshold = self.levels.prefix.get(offence);
        if prefix_threshold != 0 {
            self.prefixes.expire(now_ns, horizon, EXPIRE_PER_EVENT);
            let prefix = PrefixKey::from(source);
            let count = count(&mut self.prefixes, prefix, offence, now_ns, self.window_ns);
            if count >= prefix_threshold {
                self.prefixes.remove(&prefix);
                bans.push(Ban {
                    target: Target::Prefix(prefix),
                    reason: offence.ban_reason(),
                    count,
                });
            }
        }
        bans
    }

    /// Drops keys whose counts have aged out (nothing in the last two windows). Touches only
    /// those keys and one more: the tables are ordered by last event.
    pub fn forget_stale(&mut self, now_ns: u64) {
        let horizon = 2 * self.window_ns;
        self.sources.expire(now_ns, horizon, usize::MAX);
        self.prefixes.expire(now_ns, horizon, usize::MAX);
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Prefixes currently tracked.
    pub fn tracked_prefixes(&self) -> usize {
        self.prefixes.len()
    }

    /// Keys of either level evicted with live counts because their table was full.
    pub fn evicted(&self) -> u64 {
        self.sources.evicted() + self.prefixes.evicted()
    }

    /// Table entries touched so far, both levels: the work the events cost.
    #[cfg(test)]
    fn touched(&self) -> u64 {
        self.sources.touched() + self.prefixes.touched()
    }
}

/// Stale keys each event drops from the cold end of a table, besides its own work; the sweep
/// drops the rest.
const EXPIRE_PER_EVENT: usize = 2;

/// Counts one event of `key` in `table`, making room for a new key by evicting the least
/// recently seen one.
fn count<K: Copy + Eq + std::hash::Hash>(
    table: &mut Lru<K, Tracked>,
    key: K,
    offence: Offence,
    now_ns: u64,
    window_ns: u64,
) -> u32 {
    table
        .touch_or_insert(key, now_ns, || Tracked::new(now_ns))
        .count(offence, now_ns, window_ns)
}

/// Moves the window forward to contain `now_ns`.
fn roll(t: &mut Tracked, now_ns: u64, window_ns: u64) {
    let age = now_ns.saturating_sub(t.window_start_ns);
    if age < window_ns {
        return;
    }
    if age < 2 * window_ns {
        t.prev = t.cur;
        t.window_start_ns += window_ns;
    } else {
        t.prev = [0; Offence::COUNT];
        t.window_start_ns = now_ns;
    }
    t.cur = [0; Offence::COUNT];
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn levels_come_from_the_misuse_section() {
        let config = config::Config::parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[misuse]\nbad_secret = 7\n\
             prefix_bad_secret = 40\nprefix_connections = 50000\n",
            config::Origin::Embedded,
        )
        .expect("valid");
        let levels = Levels::from(&config.misuse);
        assert_eq!(levels.source.bad_secret, 7);
        assert_eq!(levels.source.replay, config.misuse.replay);
        assert_eq!(levels.source.connections, config.misuse.connections);
        assert_eq!(levels.prefix.bad_secret, 40);
        assert_eq!(levels.prefix.replay, config.misuse.prefix_replay);
        assert_eq!(levels.prefix.connections, 50_000);
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            bad_secret: 5,
            unknown_sni: 5,
            replay: 2,
            timeout: 0,
            garbage: 5,
            connections: 100,
        }
    }

    const OFF: Thresholds = Thresholds {
        bad_secret: 0,
        unknown_sni: 0,
        replay: 0,
        timeout: 0,
        garbage: 0,
        connections: 0,
    };

    /// Source thresholds only, as before the prefix level.
    fn sources_only() -> Levels {
        Levels {
            source: thresholds(),
            prefix: OFF,
        }
    }

    /// Both levels: the prefix's thresholds 20 times the source's.
    fn both() -> Levels {
        let t = thresholds();
        Levels {
            source: t,
            prefix: Thresholds {
                bad_secret: t.bad_secret * 20,
                unknown_sni: t.unknown_sni * 20,
                replay: t.replay * 20,
                timeout: 0,
                garbage: t.garbage * 20,
                connections: t.connections * 20,
            },
        }
    }

    fn src(n: u8) -> SourceKey {
        SourceKey::V4([198, 18, 0, n])
    }

    /// The `n`th /64 of 2001:db8:1::/48 (there are 65,536).
    fn v6_64(n: u32) -> SourceKey {
        let b = n.to_be_bytes();
        SourceKey::V6([0x20, 0x01, 0x0d, 0xb8, 0, 1, b[2], b[3]])
    }

    /// The one ban an event caused, if any.
    fn one(bans: Vec<Ban>) -> Option<Ban> {
        assert!(bans.len() <= 1, "{bans:?}");
        bans.into_iter().next()
    }

    #[test]
    fn bans_at_threshold_once() {
        let mut d = Detector::new(60, sources_only(), 100);
        for _ in 0..4 {
            assert_eq!(one(d.record(src(1), Offence::BadSecret, SEC)), None);
        }
        let ban = one(d.record(src(1), Offence::BadSecret, 2 * SEC)).expect("fifth crosses");
        assert_eq!(ban.target, Target::Source(src(1)));
        assert_eq!(ban.reason, BanReason::BadSecret);
        assert_eq!(ban.count, 5);
        assert_eq!(d.tracked(), 0, "state forgotten after the ban");
    }

    #[test]
    fn reasons_are_counted_separately() {
        let mut d = Detector::new(60, sources_only(), 100);
        for _ in 0..4 {
            assert_eq!(one(d.record(src(1), Offence::BadSecret, SEC)), None);
            assert_eq!(one(d.record(src(1), Offence::Garbage, SEC)), None);
        }
        assert_eq!(one(d.record(src(1), Offence::Replay, SEC)), None);
        assert_eq!(
            one(d.record(src(1), Offence::Replay, SEC)).map(|b| b.reason),
            Some(BanReason::Replay)
        );
    }

    #[test]
    fn disabled_reason_never_bans() {
        let mut d = Detector::new(60, both(), 100);
        assert!((0..1000).all(|_| d.record(src(1), Offence::Timeout, SEC).is_empty()));
        assert_eq!((d.tracked(), d.tracked_prefixes()), (0, 0));
    }

    #[test]
    fn slow_offenders_stay_under_the_threshold() {
        // Two late in every window: the previous window's pair has little weight by then.
        let mut d = Detector::new(60, sources_only(), 100);
        for w in 0..10u64 {
            for k in 0..2u64 {
                let t = w * 60 * SEC + 40 * SEC + k * 10 * SEC;
                assert_eq!(
                    one(d.record(src(1), Offence::BadSecret, t)),
                    None,
                    "window {w}"
                );
            }
        }
    }

    #[test]
    fn previous_window_is_weighted() {
        let mut d = Detector::new(60, sources_only(), 100);
        // The source's window starts at its first event, t = 0.
        d.record(src(1), Offence::Garbage, 0);
        for _ in 0..4 {
            d.record(src(1), Offence::BadSecret, 59 * SEC);
        }
        // 1 s into the next window the previous 4 weigh 4 × 59/60 → 3 (floor): one more
        // makes 4, two more make 5.
        assert_eq!(one(d.record(src(1), Offence::BadSecret, 61 * SEC)), None);
        assert!(one(d.record(src(1), Offence::BadSecret, 61 * SEC)).is_some());
    }

    #[test]
    fn old_counts_expire() {
        let mut d = Detector::new(60, both(), 100);
        for _ in 0..4 {
            d.record(src(1), Offence::BadSecret, SEC);
        }
        assert_eq!(one(d.record(src(1), Offence::BadSecret, 200 * SEC)), None);
        d.forget_stale(400 * SEC);
        assert_eq!((d.tracked(), d.tracked_prefixes()), (0, 0));
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_seen_source() {
        let mut d = Detector::new(60, sources_only(), 3);
        for n in 1..=3 {
            for _ in 0..4 {
                d.record(src(n), Offence::BadSecret, SEC);
            }
        }
        // Source 1 is seen again, so source 2 is the coldest and a new source evicts it.
        assert!(d.record(src(1), Offence::Garbage, 2 * SEC).is_empty());
        assert!(d.record(src(9), Offence::BadSecret, 3 * SEC).is_empty());
        assert_eq!((d.tracked(), d.evicted()), (3, 1));
        // 1 and 3 kept their four; 2 starts again from nothing.
        assert!(one(d.record(src(1), Offence::BadSecret, 4 * SEC)).is_some());
        assert!(one(d.record(src(3), Offence::BadSecret, 4 * SEC)).is_some());
        assert_eq!(one(d.record(src(2), Offence::BadSecret, 4 * SEC)), None);
    }

    #[test]
    fn stale_sources_go_before_live_ones_are_evicted() {
        let mut d = Detector::new(60, sources_only(), 3);
        d.record(src(1), Offence::BadSecret, SEC);
        d.record(src(2), Offence::BadSecret, 100 * SEC);
        d.record(src(3), Offence::BadSecret, 100 * SEC);
        // Source 1 is two windows old: it goes, and nothing live is evicted.
        d.record(src(4), Offence::BadSecret, 130 * SEC);
        assert_eq!((d.tracked(), d.evicted()), (3, 0));
    }

    #[test]
    fn one_prefix_cannot_hide_behind_many_addresses() {
        // 200,000 bad secrets from the /64s of one /48 (65,536 of them, so each comes back
        // about three times) into a table smaller than the /48: no /64 ever reaches its own
        // threshold, the /48 reaches its threshold of 100.
        let levels = both();
        let mut d = Detector::new(60, levels, 50_000);
        let mut first_prefix_ban = None;
        for n in 0..200_000u32 {
            let bans = d.record(v6_64(n % 65_536), Offence::BadSecret, SEC + u64::from(n));
            for ban in bans {
                assert_eq!(
                    ban.target,
                    Target::Prefix(PrefixKey::V6([0x20, 0x01, 0x0d, 0xb8, 0, 1])),
                    "only the /48 is banned"
                );
                first_prefix_ban.get_or_insert((n, ban));
            }
        }
        let (n, ban) = first_prefix_ban.expect("the /48 is banned");
        assert_eq!(n + 1, levels.prefix.bad_secret, "at its own threshold");
        assert_eq!((ban.reason, ban.count), (BanReason::BadSecret, 100));
        assert_eq!(d.tracked(), 50_000, "the table is full");
        // A fresh prober elsewhere is still banned at its own threshold of 5, also with the
        // /48 still churning the table between its attempts.
        let prober = src(7);
        for k in 0..4u32 {
            assert_eq!(one(d.record(prober, Offence::BadSecret, 2 * SEC)), None);
            for n in 0..1000 {
                d.record(v6_64(k * 1000 + n), Offence::Garbage, 2 * SEC);
            }
        }
        let ban = one(d.record(prober, Offence::BadSecret, 2 * SEC)).expect("prober banned");
        assert_eq!(ban.target, Target::Source(prober));
        assert_eq!(ban.count, 5);
    }

    #[test]
    fn many_bad_clients_of_one_24_ban_the_24_at_its_threshold_only() {
        // A CGNAT /24: 24 clients with 4 bad secrets each stay under both thresholds; the
        // 25th client's 4th makes 100 for the /24.
        let mut d = Detector::new(60, both(), 1000);
        for n in 1..=24 {
            for _ in 0..4 {
                assert!(d.record(src(n), Offence::BadSecret, SEC).is_empty());
            }
        }
        for _ in 0..3 {
            assert!(d.record(src(25), Offence::BadSecret, SEC).is_empty());
        }
        let ban = one(d.record(src(25), Offence::BadSecret, SEC)).expect("/24 banned");
        assert_eq!(ban.target, Target::Prefix(PrefixKey::V4([198, 18, 0])));
    }

    #[test]
    fn reload_applies_new_thresholds_and_keeps_counts() {
        let mut d = Detector::new(60, both(), 100);
        for _ in 0..3 {
            d.record(src(1), Offence::BadSecret, SEC);
        }
        // Source threshold down to 4 and the prefix's to 4 as well: the fourth bans both.
        let mut levels = both();
        levels.source.bad_secret = 4;
        levels.prefix.bad_secret = 4;
        d.reconfigure(60, levels, 100);
        let targets: Vec<Target> = d
            .record(src(1), Offence::BadSecret, SEC)
            .into_iter()
            .map(|b| b.target)
            .collect();
        assert_eq!(
            targets,
            [
                Target::Source(src(1)),
                Target::Prefix(PrefixKey::V4([198, 18, 0]))
            ]
        );
        // A prefix threshold of 0 turns the level off; a smaller table keeps the newest.
        levels.prefix = OFF;
        d.reconfigure(60, levels, 1);
        for n in 2..=4 {
            d.record(src(n), Offence::Garbage, SEC);
        }
        assert!((0..9).all(|_| {
            d.record(src(5), Offence::BadSecret, SEC)
                .iter()
                .all(|b| matches!(b.target, Target::Source(_)))
        }));
        assert_eq!(d.tracked(), 1);
    }

    #[test]
    fn per_event_work_is_bounded_however_full_the_table() {
        // Counting, not timing: the table entries each event touches, both levels, while
        // 200,000 distinct sources fill a table of 50,000 and then churn it, with old
        // entries ageing out on the way. A scan of the table would touch thousands.
        let mut d = Detector::new(60, both(), 50_000);
        let mut worst = 0;
        for n in 0..200_000u32 {
            let before = d.touched();
            let t = u64::from(n) * SEC / 1000;
            let offence = if n % 3 == 0 {
                Offence::Garbage
            } else {
                Offence::BadSecret
            };
            let k = n.to_be_bytes();
            let source = SourceKey::V6([0x20, 0x01, 0x0d, 0xb8, k[0], k[1], k[2], k[3]]);
            d.record(source, offence, t);
            worst = worst.max(d.touched() - before);
        }
        // Per level: the event's own entry, an eviction, a removal after a ban, and up to
        // EXPIRE_PER_EVENT expiry checks with their removals.
        let bound = 2 * (3 + 2 * EXPIRE_PER_EVENT as u64);
        assert!(
            worst <= bound,
            "an event touched {worst} entries, more than {bound}"
        );
        assert!(d.evicted() > 0, "the table did fill");
    }

    #[test]
    #[ignore = "measurement, not a check; run in release"]
    fn cost_per_event_as_the_table_fills() {
        use std::time::Instant;
        for size in [1_000usize, 10_000, 100_000, 1_000_000] {
            let mut d = Detector::new(60, both(), size);
            let events = 1_000_000u32;
            let t = Instant::now();
            for n in 0..events {
                let k = n.to_be_bytes();
                let source = SourceKey::V6([0x20, 0x01, 0x0d, 0xb8, k[0], k[1], k[2], k[3]]);
                d.record(source, Offence::BadSecret, SEC);
            }
            println!(
                "table of {size}: {:?} per event over {events} new sources ({} evicted)",
                t.elapsed() / events,
                d.evicted()
            );
        }
    }
}
