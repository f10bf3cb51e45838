//! When to log rejections: the first of each kind at once, then at most one line per kind
//! every [`EVERY`], with the count since the previous line. A LAPI that sends the same bad
//! decision on every pull cannot flood the log.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Least time between two log lines of one kind.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Per kind: when it was last logged and how many came since.
#[derive(Debug, Default)]
pub struct RejectLog {
    kinds: BTreeMap<&'static str, Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    logged: Option<Instant>,
    unlogged: u64,
}

impl RejectLog {
    /// Notes `count` rejections of `kind` at `now`; returns how many to log now (these and
    /// the ones held back before), or `None` while the kind was logged less than [`EVERY`]
    /// ago.
    pub fn note(&mut self, kind: &'static str, count: u64, now: Instant) -> Option<u64> {
        let pending = self.kinds.entry(kind).or_default();
        pending.unlogged = pending.unlogged.saturating_add(count);
        if pending
            .logged
            .is_some_and(|at| now.saturating_duration_since(at) < EVERY)
        {
            return None;
        }
        pending.logged = Some(now);
        Some(std::mem::take(&mut pending.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_kind_then_at_most_once_per_period() {
        let t0 = Instant::now();
        let mut log = RejectLog::default();
        assert_eq!(log.note("wide_range", 2, t0), Some(2));
        assert_eq!(log.note("bad_value", 1, t0), Some(1), "kinds are apart");
        assert_eq!(
            log.note("wide_range", 2, t0 + Duration::from_secs(10)),
            None
        );
        assert_eq!(log.note("wide_range", 3, t0 + EVERY / 2), None);
        assert_eq!(log.note("wide_range", 1, t0 + EVERY), Some(6));
        assert_eq!(log.note("wide_range", 1, t0 + EVERY), None);
        assert_eq!(log.note("bad_value", 4, t0 + EVERY * 3), Some(4));
    }
}
