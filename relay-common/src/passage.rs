//! Names and value layouts of the maps the kernel passthrough (the sockmap stream verdict
//! program) shares with userspace.
//!
//! A flow is one direction of a relayed pair whose bytes pass through unchanged: its source
//! socket sits in [`SOURCES`] (which carries the verdict program), its target in [`TARGETS`]
//! (no program, so the target's own ingress is not diverted). Both are keyed by the socket's
//! cookie (`SO_COOKIE`), as are the flow's [`FlowControl`] and [`FlowCounts`].

/// `SockHash<u64>`: source sockets, keyed by cookie; the stream verdict program is attached.
pub const SOURCES: &str = "SOURCES";
/// `SockHash<u64>`: redirect targets, keyed by cookie; no program.
pub const TARGETS: &str = "TARGETS";
/// `HashMap<u64, FlowControl>`: per source cookie, written by userspace only.
pub const CONTROL: &str = "CONTROL";
/// `HashMap<u64, FlowCounts>`: per source cookie, written by the program only (userspace
/// creates the entry zeroed and deletes it).
pub const COUNTS: &str = "COUNTS";
/// Entries in each map: flows open at once (a pair has at most two).
pub const MAX_FLOWS: u32 = 65_536;

/// What userspace tells the program about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowControl {
    /// [`TARGETS`] key (cookie) of the socket the bytes go to.
    pub target: u64,
    /// Bytes the program may redirect in all; a segment that would go past it is passed to
    /// userspace instead, and so is everything after it.
    pub budget: u64,
    /// Bytes passed to userspace that userspace has finished with (written to the target, or
    /// dropped because the flow ends). While it lags [`FlowCounts::passed`], userspace holds
    /// bytes older than the next segment, so the program passes that segment too: order is
    /// kept.
    pub settled: u64,
}

/// What the program counted for a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// Bytes redirected into the target.
    pub redirected: u64,
    /// Bytes passed to the source's own receive queue (for userspace to read).
    pub passed: u64,
}

/// Whether the program redirects a segment of `len` bytes, given the flow's state.
#[inline(always)]
pub fn redirects(control: &FlowControl, counts: &FlowCounts, len: u64) -> bool {
    len > 0
        && counts.passed == control.settled
        && counts.redirected.saturating_add(len) <= control.budget
}

const _: () = assert!(core::mem::size_of::<FlowControl>() == 24);
const _: () = assert!(core::mem::size_of::<FlowCounts>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are `#[repr(C)]`, `Copy`, and padding-free (size asserts above).
    unsafe impl aya::Pod for super::FlowControl {}
    unsafe impl aya::Pod for super::FlowCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_and_unsettled_bytes_stop_redirects() {
        let control = FlowControl {
            target: 1,
            budget: 100,
            settled: 0,
        };
        let mut counts = FlowCounts::default();
        assert!(redirects(&control, &counts, 100));
        assert!(!redirects(&control, &counts, 101), "past the budget");
        assert!(
            !redirects(&control, &counts, 0),
            "empty segments (FIN) pass"
        );
        counts.redirected = 60;
        assert!(redirects(&control, &counts, 40));
        assert!(!redirects(&control, &counts, 41));
        counts.passed = 5;
        assert!(!redirects(&control, &counts, 1), "userspace holds bytes");
        let settled = FlowControl {
            settled: 5,
            ..control
        };
        assert!(redirects(&settled, &counts, 1));
        counts.redirected = u64::MAX - 1;
        assert!(!redirects(&settled, &counts, 2), "no wrap past the budget");
    }
}
