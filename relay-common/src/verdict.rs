//! Verdicts the XDP program reaches, used as indices into its per-CPU counter array.

/// Why the XDP program passed or dropped a packet. The discriminant is the index of the
/// verdict's counter in [`crate::maps::VERDICTS`].
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// TCP to a listen port, nothing against it: passed.
    Passed = 0,
    /// Not TCP to one of the relay's listen ports (other protocols, other ports): passed untouched.
    NotOurs = 1,
    /// Source is in the allowlist: passed before any other check.
    Allowlisted = 2,
    /// Source is inside an operator CIDR on the blocklist: dropped.
    BlockedCidr = 3,
    /// Source has an unexpired drop-ban ([`crate::BanAction::Drop`]): dropped.
    Banned = 4,
    /// Bare SYN over the source's new-connection budget: dropped.
    SynRateLimited = 5,
    /// Headers truncated or not parsable (including IPv6 extension headers): passed, and the
    /// source marked in [`crate::maps::UNRATED_V4`] / `UNRATED_V6` (or every source in
    /// [`crate::maps::UNRATED_ANY`] when none can be read) so userspace limits its connections.
    Unparsed = 6,
    /// Bare SYN from a source without limiter state while the per-CPU new-state budget is
    /// exhausted (spoofed-source flood): passed without creating state, left to SYN cookies.
    StateSuppressed = 7,
    /// IPv4 fragment with a non-zero offset (no TCP header to look at): passed; a TCP
    /// fragment's source is marked as for [`Verdict::Unparsed`].
    Fragment = 8,
    /// Source has an unexpired front-ban ([`crate::BanAction::Front`]) and the packet is not a
    /// bare SYN, or a bare SYN within the source's banned budget: passed, and userspace fronts
    /// the connection at accept.
    BannedFronted = 9,
    /// Bare SYN from a front-banned source over its (small) banned budget: dropped.
    BannedSynLimited = 10,
}

impl Verdict {
    /// Number of verdicts, i.e. the size of the counter array.
    pub const COUNT: u32 = 11;

    /// Every verdict, in index order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::Passed,
        Verdict::NotOurs,
        Verdict::Allowlisted,
        Verdict::BlockedCidr,
        Verdict::Banned,
        Verdict::SynRateLimited,
        Verdict::Unparsed,
        Verdict::StateSuppressed,
        Verdict::Fragment,
        Verdict::BannedFronted,
        Verdict::BannedSynLimited,
    ];

    /// Stable snake_case name, used as a metric label and in CLI output.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::NotOurs => "not_ours",
            Verdict::Allowlisted => "allowlisted",
            Verdict::BlockedCidr => "blocked_cidr",
            Verdict::Banned => "banned",
            Verdict::SynRateLimited => "syn_rate_limited",
            Verdict::Unparsed => "unparsed",
            Verdict::StateSuppressed => "state_suppressed",
            Verdict::Fragment => "fragment",
            Verdict::BannedFronted => "banned_fronted",
            Verdict::BannedSynLimited => "banned_syn_limited",
        }
    }

    /// Whether the packet is dropped under this verdict.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Verdict::BlockedCidr
                | Verdict::Banned
                | Verdict::SynRateLimited
                | Verdict::BannedSynLimited
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
    }
}
