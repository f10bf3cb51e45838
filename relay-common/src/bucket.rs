//! Limiter arithmetic used by both the XDP program and the userspace fallback.
//!
//! This bucket stays hand-written, while limits only userspace decides use `governor`: it runs
//! inside eBPF (no allocation, no floats, no atomics beyond the map's), and the userspace gate
//! must give exactly the kernel's verdicts for the same packets, so both run this code.
//!
//! No division and no floating point: the BPF verifier and the hot path both prefer
//! multiplications and comparisons on `u64`.

/// Token units per whole token: tokens are counted in billionths so that a refill of
/// `elapsed_ns * rate_per_sec` needs no division.
pub const UNITS_PER_TOKEN: u64 = 1_000_000_000;

/// Largest accepted refill rate (tokens per second). Keeps `elapsed * rate` far from overflow.
pub const MAX_RATE_PER_SEC: u32 = 1_000_000;

/// Longest idle time credited in one refill (1000 s); any bucket is full long before.
const MAX_ELAPSED_NS: u64 = 1_000 * 1_000_000_000;

/// Per-source token bucket for new connections. 16 bytes, no padding.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Available tokens, in [`UNITS_PER_TOKEN`]ths of a token.
    pub units: u64,
    /// Clock reading (ns) of the last refill.
    pub last_ns: u64,
}

const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);

impl TokenBucket {
    /// State for a source seen for the first time, after spending one token on that first event.
    /// `burst` must be at least 1.
    pub const fn first_event(now_ns: u64, burst: u32) -> Self {
        TokenBucket {
            units: (burst as u64).saturating_sub(1) * UNITS_PER_TOKEN,
            last_ns: now_ns,
        }
    }

    /// Refills for the time since the last call and spends one token if there is one.
    /// Returns whether the event is admitted. A clock that goes backwards credits nothing.
    pub fn try_take(&mut self, now_ns: u64, rate_per_sec: u32, burst: u32) -> bool {
        let rate = if rate_per_sec > MAX_RATE_PER_SEC {
            MAX_RATE_PER_SEC
        } else {
            rate_per_sec
        } as u64;
        let mut elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed > MAX_ELAPSED_NS {
            elapsed = MAX_ELAPSED_NS;
        }
        let cap = burst as u64 * UNITS_PER_TOKEN;
        let mut units = self.units.saturating_add(elapsed * rate);
        if units > cap {
            units = cap;
        }
        if now_ns > self.last_ns {
            self.last_ns = now_ns;
        }
        if units >= UNITS_PER_TOKEN {
            self.units = units - UNITS_PER_TOKEN;
            true
        } else {
            self.units = units;
            false
        }
    }
}

/// Global (per CPU) budget for creating new limiter state, in fixed one-second windows, as
/// Katran's `is_under_flood`: once a window's budget is spent, unknown sources get no state.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StateBudget {
    /// Start of the current window (ns).
    pub window_start_ns: u64,
    /// New entries created in the current window.
    pub created: u32,
    /// Creations refused in the current window.
    pub suppressed: u32,
}

const _: () = assert!(core::mem::size_of::<StateBudget>() == 16);

/// Length of a [`StateBudget`] window.
pub const BUDGET_WINDOW_NS: u64 = 1_000_000_000;

impl StateBudget {
    /// Counts one new entry against the budget; returns false once `per_window` is spent.
    pub fn try_create(&mut self, now_ns: u64, per_window: u32) -> bool {
        if now_ns.saturating_sub(self.window_start_ns) >= BUDGET_WINDOW_NS {
            self.window_start_ns = now_ns;
            self.created = 0;
            self.suppressed = 0;
        }
        if self.created >= per_window {
            self.suppressed = self.suppressed.saturating_add(1);
            return false;
        }
        self.created += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn admitted(bucket: &mut TokenBucket, now: u64, rate: u32, burst: u32, n: u32) -> u32 {
        (0..n).filter(|_| bucket.try_take(now, rate, burst)).count() as u32
    }

    #[test]
    fn first_event_leaves_burst_minus_one() {
        let mut b = TokenBucket::first_event(10 * SEC, 24);
        assert_eq!(admitted(&mut b, 10 * SEC, 5, 24, 100), 23);
    }

    #[test]
    fn refills_at_rate_and_caps_at_burst() {
        let mut b = TokenBucket::first_event(0, 4);
        assert_eq!(admitted(&mut b, 0, 2, 4, 10), 3);
        // Half a second at 2/s is one token.
        assert_eq!(admitted(&mut b, SEC / 2, 2, 4, 10), 1);
        // A long pause refills only up to the burst.
        assert_eq!(admitted(&mut b, 3600 * SEC, 2, 4, 10), 4);
    }

    #[test]
    fn fractional_refill_accumulates() {
        let mut b = TokenBucket::first_event(0, 1);
        assert!(!b.try_take(SEC / 3, 1, 1));
        assert!(!b.try_take(2 * SEC / 3, 1, 1));
        assert!(b.try_take(SEC, 1, 1));
    }

    #[test]
    fn backwards_clock_credits_nothing() {
        let mut b = TokenBucket::first_event(5 * SEC, 1);
        assert!(!b.try_take(SEC, 1000, 1));
        assert_eq!(b.last_ns, 5 * SEC);
    }

    #[test]
    fn zero_rate_never_refills() {
        let mut b = TokenBucket::first_event(0, 2);
        assert!(b.try_take(0, 0, 2));
        assert!(!b.try_take(1_000 * SEC, 0, 2));
    }

    #[test]
    fn huge_rate_and_time_do_not_overflow() {
        let mut b = TokenBucket::first_event(0, u32::MAX);
        assert!(b.try_take(u64::MAX, u32::MAX, u32::MAX));
    }

    #[test]
    fn budget_resets_each_window() {
        let mut s = StateBudget::default();
        assert_eq!((0..10).filter(|_| s.try_create(SEC, 3)).count(), 3);
        assert!(!s.try_create(SEC + SEC / 2, 3));
        assert_eq!(s.suppressed, 8);
        assert!(s.try_create(2 * SEC, 3));
        assert_eq!(s.suppressed, 0);
    }
}
