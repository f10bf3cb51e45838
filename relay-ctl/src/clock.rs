//! The clocks relay reads: CLOCK_MONOTONIC in nanoseconds, the clock `bpf_ktime_get_ns` reads,
//! so ban expiries written by userspace mean the same instant in the kernel; and wall-clock
//! seconds since the epoch, for expiries that outlive the process (saved state).

use std::time::{SystemTime, UNIX_EPOCH};

/// Current CLOCK_MONOTONIC time in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        // CLOCK_MONOTONIC cannot fail on Linux; zero would only make bans look expired early.
        .unwrap_or(nix::sys::time::TimeSpec::new(0, 0));
    (ts.tv_sec() as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec() as u64)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
