//! Per-source misuse counting: sliding-window estimates of handshake failures by reason and of
//! connections, per IPv4 address or IPv6 /64. Pure state over (source, event, time); the caller
//! turns a returned [`Ban`] into kernel state.
//!
//! The estimate is Cloudflare's two-counter sliding window: `prev × (1 − elapsed/window) + cur`.
//! State for a source lives only as long as its two windows, and the number of tracked sources
//! is capped so a spoofed flood cannot grow it.

use std::collections::HashMap;

use relay_common::BanReason;

use crate::gate::SourceKey;

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

/// A source that crossed a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// Why.
    pub reason: BanReason,
    /// The estimated count that crossed the threshold.
    pub count: u32,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    window_start_ns: u64,
    prev: [u32; Offence::COUNT],
    cur: [u32; Offence::COUNT],
}

/// Sliding-window counters for many sources.
#[derive(Debug)]
pub struct Detector {
    window_ns: u64,
    thresholds: Thresholds,
    max_sources: usize,
    sources: HashMap<SourceKey, Tracked>,
    /// Events not counted because the source table was full.
    untracked: u64,
}

impl Detector {
    /// A detector with `window_secs` windows, at most `max_sources` tracked sources.
    pub fn new(window_secs: u64, thresholds: Thresholds, max_sources: usize) -> Detector {
        Detector {
            window_ns: window_secs.max(1) * 1_000_000_000,
            thresholds,
            max_sources: max_sources.max(1),
            sources: HashMap::new(),
            untracked: 0,
        }
    }

    /// Replaces thresholds and window (on reload); counts so far are kept.
    pub fn reconfigure(&mut self, window_secs: u64, thresholds: Thresholds, max_sources: usize) {
        self.window_ns = window_secs.max(1) * 1_000_000_000;
        self.thresholds = thresholds;
        self.max_sources = max_sources.max(1);
    }

    /// Counts `offence` from `source` at `now_ns`; returns a ban when the source's estimate for
    /// that offence reaches its threshold. The source's state is then forgotten, so one ban is
    /// reported once.
    pub fn record(&mut self, source: SourceKey, offence: Offence, now_ns: u64) -> Option<Ban> {
        let threshold = self.thresholds.get(offence);
        if threshold == 0 {
            return None;
        }
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            self.forget_stale(now_ns);
            if self.sources.len() >= self.max_sources {
                self.untracked += 1;
                return None;
            }
        }
        let window_ns = self.window_ns;
        let tracked = self.sources.entry(source).or_insert(Tracked {
            window_start_ns: now_ns,
            prev: [0; Offence::COUNT],
            cur: [0; Offence::COUNT],
        });
        roll(tracked, now_ns, window_ns);
        let i = offence.index();
        tracked.cur[i] = tracked.cur[i].saturating_add(1);
        let elapsed = now_ns
            .saturating_sub(tracked.window_start_ns)
            .min(window_ns);
        // prev × (window − elapsed) / window + cur, in integers.
        let weighted_prev = u64::from(tracked.prev[i]) * (window_ns - elapsed) / window_ns;
        let estimate = u32::try_from(weighted_prev)
            .unwrap_or(u32::MAX)
            .saturating_add(tracked.cur[i]);
        if estimate < threshold {
            return None;
        }
        self.sources.remove(&source);
        Some(Ban {
            reason: offence.ban_reason(),
            count: estimate,
        })
    }

    /// Drops sources whose counts have aged out (nothing in the last two windows).
    pub fn forget_stale(&mut self, now_ns: u64) {
        let horizon = 2 * self.window_ns;
        self.sources
            .retain(|_, t| now_ns.saturating_sub(t.window_start_ns) < horizon);
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Events dropped because the table was full.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }
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

    fn src(n: u8) -> SourceKey {
        SourceKey::V4([198, 18, 0, n])
    }

    #[test]
    fn bans_at_threshold_once() {
        let mut d = Detector::new(60, thresholds(), 100);
        for _ in 0..4 {
            assert_eq!(d.record(src(1), Offence::BadSecret, SEC), None);
        }
        let ban = d
            .record(src(1), Offence::BadSecret, 2 * SEC)
            .expect("fifth crosses");
        assert_eq!(ban.reason, BanReason::BadSecret);
        assert_eq!(ban.count, 5);
        assert_eq!(d.tracked(), 0, "state forgotten after the ban");
    }

    #[test]
    fn reasons_are_counted_separately() {
        let mut d = Detector::new(60, thresholds(), 100);
        for _ in 0..4 {
            assert_eq!(d.record(src(1), Offence::BadSecret, SEC), None);
            assert_eq!(d.record(src(1), Offence::Garbage, SEC), None);
        }
        assert_eq!(d.record(src(1), Offence::Replay, SEC), None);
        assert_eq!(
            d.record(src(1), Offence::Replay, SEC).map(|b| b.reason),
            Some(BanReason::Replay)
        );
    }

    #[test]
    fn disabled_reason_never_bans() {
        let mut d = Detector::new(60, thresholds(), 100);
        assert!((0..1000).all(|_| d.record(src(1), Offence::Timeout, SEC).is_none()));
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn slow_offenders_stay_under_the_threshold() {
        // Two late in every window: the previous window's pair has little weight by then.
        let mut d = Detector::new(60, thresholds(), 100);
        for w in 0..10u64 {
            for k in 0..2u64 {
                let t = w * 60 * SEC + 40 * SEC + k * 10 * SEC;
                assert_eq!(d.record(src(1), Offence::BadSecret, t), None, "window {w}");
            }
        }
    }

    #[test]
    fn previous_window_is_weighted() {
        let mut d = Detector::new(60, thresholds(), 100);
        // The source's window starts at its first event, t = 0.
        d.record(src(1), Offence::Garbage, 0);
        for _ in 0..4 {
            d.record(src(1), Offence::BadSecret, 59 * SEC);
        }
        // 1 s into the next window the previous 4 weigh 4 × 59/60 → 3 (floor): one more
        // makes 4, two more make 5.
        assert_eq!(d.record(src(1), Offence::BadSecret, 61 * SEC), None);
        assert!(d.record(src(1), Offence::BadSecret, 61 * SEC).is_some());
    }

    #[test]
    fn old_counts_expire() {
        let mut d = Detector::new(60, thresholds(), 100);
        for _ in 0..4 {
            d.record(src(1), Offence::BadSecret, SEC);
        }
        assert_eq!(d.record(src(1), Offence::BadSecret, 200 * SEC), None);
        d.forget_stale(400 * SEC);
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn table_is_bounded() {
        let mut d = Detector::new(60, thresholds(), 3);
        for n in 0..10 {
            d.record(src(n), Offence::BadSecret, SEC);
        }
        assert_eq!(d.tracked(), 3);
        assert_eq!(d.untracked(), 7);
        // Once the old entries age out, new sources are tracked again.
        d.record(src(20), Offence::BadSecret, 500 * SEC);
        assert_eq!(d.tracked(), 1);
    }
}
