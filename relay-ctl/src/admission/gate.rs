//! The userspace fallback of the XDP program: the same allow/ban/block/limit decision, taken at
//! accept time when XDP cannot be used. The decision order itself is the kernel's
//! ([`relay_common::decide`]); this module holds the lists, bans and buckets it looks up.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use relay_common::{
    BanEntry, Budget, Lookups, Room, StateBudget, TokenBucket, Verdict, XdpConfig,
    maps::MAX_LIMITER_ENTRIES,
};

use super::{
    change::{Change, PrefixList},
    keys::{PrefixKey, SourceKey},
    prefix_set::PrefixSet,
};

/// Lists, bans, limiter state and verdict counters for the userspace fallback.
#[derive(Debug, Default)]
pub struct Gate {
    lists: Mutex<Lists>,
    limiter: Mutex<Limiter>,
    verdicts: [AtomicU64; Verdict::COUNT as usize],
}

#[derive(Debug, Default)]
struct Lists {
    config: Option<XdpConfig>,
    allow: PrefixSet,
    block: PrefixSet,
    bans: HashMap<SourceKey, BanEntry>,
    /// Prefix bans with the front action (those that drop are block list entries).
    front_prefixes: HashMap<PrefixKey, BanEntry>,
}

impl Lists {
    fn prefixes(&mut self, list: PrefixList) -> &mut PrefixSet {
        match list {
            PrefixList::Allow => &mut self.allow,
            PrefixList::Block => &mut self.block,
        }
    }
}

#[derive(Debug, Default)]
struct Limiter {
    buckets: HashMap<SourceKey, TokenBucket>,
    budget: StateBudget,
    /// Budgets of front-banned sources (the kernel's `BAN_SYN_*`); bounded by the bans.
    banned: HashMap<SourceKey, TokenBucket>,
}

/// Idle time after which a bucket is certainly full again and can be forgotten.
pub const IDLE_FORGET_NS: u64 = 60 * 1_000_000_000;

impl Gate {
    /// Forgets limiter state of sources idle for a minute (their buckets are full again), so
    /// the userspace limiter keeps an address no longer than that.
    pub fn forget_idle(&self, now_ns: u64) {
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let fresh =
            |_: &SourceKey, b: &mut TokenBucket| now_ns.saturating_sub(b.last_ns) < IDLE_FORGET_NS;
        limiter.buckets.retain(fresh);
        limiter.banned.retain(fresh);
    }

    /// Enforces one change of the policy (see [`super::Enforcer`]).
    pub fn take(&self, change: &Change) {
        let mut lists = self.lists();
        match change {
            Change::Limits(config) => lists.config = Some(*config),
            // The accept loops listen on those ports only.
            Change::Ports(_) => {}
            Change::InsertPrefix(list, net) => lists.prefixes(*list).insert(*net),
            Change::RemovePrefix(list, net) => {
                lists.prefixes(*list).remove(*net);
            }
            Change::Ban(addr, entry) => {
                lists
                    .bans
                    .insert(SourceKey::from(addr.to_canonical()), *entry);
            }
            Change::Unban(addr) => {
                lists.bans.remove(&SourceKey::from(addr.to_canonical()));
            }
            Change::FrontPrefix(prefix, entry) => {
                lists.front_prefixes.insert(*prefix, *entry);
            }
            Change::UnfrontPrefix(prefix) => {
                lists.front_prefixes.remove(prefix);
            }
        }
    }

    /// Sets the tunables (same struct the kernel reads).
    pub fn set_config(&self, config: XdpConfig) {
        self.take(&Change::Limits(config));
    }

    /// Replaces the allowlist.
    pub fn set_allow(&self, allow: PrefixSet) {
        self.lists().allow = allow;
    }

    /// Replaces the blocklist.
    pub fn set_block(&self, block: PrefixSet) {
        self.lists().block = block;
    }

    /// Adds or replaces a ban on `addr` (IPv4: the address; IPv6: its /64, as in the kernel).
    pub fn ban(&self, addr: IpAddr, entry: BanEntry) {
        self.take(&Change::Ban(addr, entry));
    }

    /// Lifts a ban; returns whether there was one.
    pub fn unban(&self, addr: IpAddr) -> bool {
        self.lists()
            .bans
            .remove(&SourceKey::from(addr.to_canonical()))
            .is_some()
    }

    /// Decides on a new connection from `source` at `now_ns` and counts the verdict.
    pub fn admit(&self, source: IpAddr, now_ns: u64) -> Verdict {
        let verdict = self.decide(source, now_ns, true);
        self.verdicts[verdict as usize].fetch_add(1, Ordering::Relaxed);
        verdict
    }

    /// The accept-time decision while the XDP program enforces. It rated the connection's SYN
    /// unless `unrated` (the program marked the source as sending packets it passed without
    /// rating: IPv6 extension headers, IPv4 fragments), so only the lists are checked again,
    /// uncounted. An unrated source gets the whole decision, limits included, with this
    /// gate's buckets (same rate and burst as the kernel's), counted: they are charged only
    /// with connections of such sources, never on top of the kernel's for a rated one.
    pub fn admit_behind_kernel(&self, source: IpAddr, now_ns: u64, unrated: bool) -> Verdict {
        if unrated {
            self.admit(source, now_ns)
        } else {
            self.check_lists(source, now_ns).unwrap_or(Verdict::Passed)
        }
    }

    /// Verdict counters, indexed by [`Verdict`].
    pub fn verdict_counts(&self) -> [u64; Verdict::COUNT as usize] {
        std::array::from_fn(|i| self.verdicts[i].load(Ordering::Relaxed))
    }

    /// The list checks alone (allow, ban, block), without the limiters and without counting:
    /// a front-banned source gets [`Verdict::BannedFronted`] without spending its budget.
    /// With XDP attached this re-checks at accept what the kernel could not see: a SYN behind
    /// IPv6 extension headers or split across IPv4 fragments passes XDP unparsed; and it is
    /// where front-bans of prefixes are enforced in both modes (the kernel has no map for them).
    pub fn check_lists(&self, source: IpAddr, now_ns: u64) -> Option<Verdict> {
        match self.decide(source, now_ns, false) {
            Verdict::Passed => None,
            verdict => Some(verdict),
        }
    }

    /// The verdict the XDP program would reach on a segment from `source` at `now_ns`, a bare
    /// SYN or not, in the same order ([`relay_common::decide`]) over this gate's lists, bans
    /// and buckets; uncounted. A new connection is a bare SYN.
    pub fn decide(&self, source: IpAddr, now_ns: u64, bare_syn: bool) -> Verdict {
        let source = source.to_canonical();
        let lists = self.lists();
        let config = lists.config;
        let mut lookups = GateLookups {
            source,
            key: SourceKey::from(source),
            now_ns,
            lists,
            limiter: None,
            gate: self,
        };
        relay_common::decide(&mut lookups, bare_syn, config.as_ref())
    }

    fn lists(&self) -> MutexGuard<'_, Lists> {
        // A panic while holding the lock cannot leave the lists half-updated in a harmful way.
        self.lists.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One source's entries in the gate, for [`relay_common::decide`]. The limiter is locked
/// (after the lists) only when a bucket is needed.
struct GateLookups<'a> {
    source: IpAddr,
    key: SourceKey,
    now_ns: u64,
    lists: MutexGuard<'a, Lists>,
    limiter: Option<MutexGuard<'a, Limiter>>,
    gate: &'a Gate,
}

impl GateLookups<'_> {
    fn limiter(&mut self) -> &mut Limiter {
        let gate = self.gate;
        self.limiter
            .get_or_insert_with(|| gate.limiter.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Lookups for GateLookups<'_> {
    fn now_ns(&mut self) -> u64 {
        self.now_ns
    }

    fn allowlisted(&mut self) -> bool {
        self.lists.allow.contains(self.source)
    }

    /// The source's own ban, else a front-ban of its prefix (checked here only).
    fn ban(&mut self) -> Option<BanEntry> {
        let active = |b: &&BanEntry| b.active_at(self.now_ns);
        self.lists
            .bans
            .get(&self.key)
            .filter(active)
            .or_else(|| {
                self.lists
                    .front_prefixes
                    .get(&PrefixKey::from(self.key))
                    .filter(active)
            })
            .copied()
    }

    fn blocked(&mut self) -> bool {
        self.lists.block.contains(self.source)
    }

    fn bucket(&mut self, budget: Budget) -> Option<&mut TokenBucket> {
        let key = self.key;
        let limiter = self.limiter();
        match budget {
            Budget::Syn => limiter.buckets.get_mut(&key),
            Budget::Banned => limiter.banned.get_mut(&key),
        }
    }

    fn insert_bucket(&mut self, budget: Budget, bucket: TokenBucket) {
        let key = self.key;
        let limiter = self.limiter();
        match budget {
            Budget::Syn => limiter.buckets.insert(key, bucket),
            Budget::Banned => limiter.banned.insert(key, bucket),
        };
    }

    /// The per-CPU budget of the kernel is one budget here, and the buckets are bounded like
    /// the kernel's LRU map (idle ones are forgotten first).
    fn room(&mut self, now_ns: u64, per_sec: u32) -> Room {
        let limiter = self.limiter();
        let full = |l: &Limiter| l.buckets.len() >= MAX_LIMITER_ENTRIES as usize;
        if full(limiter) {
            limiter
                .buckets
                .retain(|_, b| now_ns.saturating_sub(b.last_ns) < IDLE_FORGET_NS);
        }
        if full(limiter) || !limiter.budget.try_create(now_ns, per_sec) {
            Room::Refused
        } else {
            Room::Granted
        }
    }
}

#[cfg(test)]
mod tests {
    use relay_common::{BanAction, BanReason};

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn gate(rate: u32, burst: u32) -> Gate {
        let gate = Gate::default();
        gate.set_config(XdpConfig {
            syn_rate_per_sec: rate,
            syn_burst: burst,
            new_state_per_cpu_per_sec: 1000,
            flags: XdpConfig::FLAG_SYN_LIMIT,
            banned_syn_rate_per_sec: 0,
            banned_syn_burst: 2,
        });
        gate
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn set(cidrs: &[&str]) -> PrefixSet {
        let mut s = PrefixSet::default();
        for c in cidrs {
            s.insert(c.parse().expect("test CIDR"));
        }
        s
    }

    #[test]
    fn same_order_as_kernel() {
        let g = gate(0, 1);
        g.set_block(set(&["10.0.0.0/8"]));
        g.set_allow(set(&["10.0.0.5/32"]));
        g.ban(
            ip("10.0.0.5"),
            BanEntry::new(BanEntry::NEVER, BanReason::Operator, BanAction::Drop),
        );
        g.ban(
            ip("192.0.2.1"),
            BanEntry::new(10 * SEC, BanReason::Replay, BanAction::Drop),
        );
        assert_eq!(g.admit(ip("10.0.0.5"), SEC), Verdict::Allowlisted);
        assert_eq!(g.admit(ip("10.0.0.6"), SEC), Verdict::BlockedCidr);
        assert_eq!(g.admit(ip("192.0.2.1"), SEC), Verdict::Banned);
        // Expired ban: falls through to the limiter.
        assert_eq!(g.admit(ip("192.0.2.1"), 11 * SEC), Verdict::Passed);
        assert_eq!(g.admit(ip("192.0.2.1"), 11 * SEC), Verdict::SynRateLimited);
        // IPv4-mapped IPv6 sources (dual-stack sockets) are treated as IPv4.
        assert_eq!(g.admit(ip("::ffff:10.0.0.9"), SEC), Verdict::BlockedCidr);
    }

    #[test]
    fn burst_then_limited_and_counted() {
        let g = gate(0, 24);
        let passed = (0..40)
            .filter(|_| g.admit(ip("198.18.0.2"), SEC) == Verdict::Passed)
            .count();
        assert_eq!(passed, 24);
        let counts = g.verdict_counts();
        assert_eq!(counts[Verdict::Passed as usize], 24);
        assert_eq!(counts[Verdict::SynRateLimited as usize], 16);
    }

    #[test]
    fn ipv6_shares_a_bucket_per_64() {
        let g = gate(0, 1);
        assert_eq!(g.admit(ip("2001:db8:1:2::1"), SEC), Verdict::Passed);
        assert_eq!(
            g.admit(ip("2001:db8:1:2::ffff"), SEC),
            Verdict::SynRateLimited
        );
        assert_eq!(g.admit(ip("2001:db8:1:3::1"), SEC), Verdict::Passed);
    }

    #[test]
    fn ipv6_bans_cover_the_64() {
        let g = gate(1000, 1000);
        g.ban(
            ip("2001:db8:1:2::1"),
            BanEntry::new(BanEntry::NEVER, BanReason::Replay, BanAction::Drop),
        );
        assert_eq!(g.admit(ip("2001:db8:1:2::99"), SEC), Verdict::Banned);
        assert_eq!(g.admit(ip("2001:db8:1:3::1"), SEC), Verdict::Passed);
        assert!(g.unban(ip("2001:db8:1:2::5")));
        assert_eq!(g.admit(ip("2001:db8:1:2::1"), SEC), Verdict::Passed);
    }

    #[test]
    fn new_state_budget_suppresses() {
        let g = Gate::default();
        g.set_config(XdpConfig {
            syn_rate_per_sec: 1,
            syn_burst: 1,
            new_state_per_cpu_per_sec: 3,
            flags: XdpConfig::FLAG_SYN_LIMIT,
            banned_syn_rate_per_sec: 0,
            banned_syn_burst: 2,
        });
        let verdicts: Vec<Verdict> = (1..=5)
            .map(|i| g.admit(ip(&format!("198.18.1.{i}")), SEC))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Passed,
                Verdict::Passed,
                Verdict::Passed,
                Verdict::StateSuppressed,
                Verdict::StateSuppressed
            ]
        );
        assert_eq!(g.admit(ip("198.18.1.1"), SEC), Verdict::SynRateLimited);
    }

    #[test]
    fn limiter_off_passes_everything() {
        let g = Gate::default();
        g.set_config(XdpConfig {
            syn_rate_per_sec: 0,
            syn_burst: 1,
            new_state_per_cpu_per_sec: 1,
            flags: 0,
            banned_syn_rate_per_sec: 0,
            banned_syn_burst: 2,
        });
        assert!((0..100).all(|_| g.admit(ip("198.18.0.9"), SEC) == Verdict::Passed));
    }

    #[test]
    fn behind_the_kernel_only_unrated_connections_are_limited_and_counted() {
        let g = gate(0, 3);
        let src = ip("198.18.0.7");
        // Rated by the kernel: never limited here, never counted, no bucket spent.
        assert!((0..10).all(|_| g.admit_behind_kernel(src, SEC, false) == Verdict::Passed));
        assert_eq!(g.verdict_counts(), [0; Verdict::COUNT as usize]);
        // Unrated: the full burst is still there, then the limit holds.
        let verdicts: Vec<Verdict> = (0..5)
            .map(|_| g.admit_behind_kernel(src, SEC, true))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Passed,
                Verdict::Passed,
                Verdict::Passed,
                Verdict::SynRateLimited,
                Verdict::SynRateLimited
            ]
        );
        let counts = g.verdict_counts();
        assert_eq!(counts[Verdict::Passed as usize], 3);
        assert_eq!(counts[Verdict::SynRateLimited as usize], 2);
        // A rated connection of the same source still gets in: the kernel rated it.
        assert_eq!(g.admit_behind_kernel(src, SEC, false), Verdict::Passed);
        // IPv6 unrated sources share a bucket per /64, as in the kernel.
        assert_eq!(
            g.admit_behind_kernel(ip("2001:db8::1"), SEC, true),
            Verdict::Passed
        );
        for _ in 0..2 {
            g.admit_behind_kernel(ip("2001:db8::2"), SEC, true);
        }
        assert_eq!(
            g.admit_behind_kernel(ip("2001:db8::3"), SEC, true),
            Verdict::SynRateLimited
        );
    }

    #[test]
    fn behind_the_kernel_lists_apply_either_way() {
        let g = gate(0, 1);
        g.set_allow(set(&["198.18.0.9/32"]));
        g.set_block(set(&["198.18.1.0/24"]));
        g.ban(
            ip("198.18.0.5"),
            BanEntry::new(BanEntry::NEVER, BanReason::BadSecret, BanAction::Front),
        );
        for unrated in [false, true] {
            let allowed = ip("198.18.0.9");
            assert!(
                (0..3)
                    .all(|_| g.admit_behind_kernel(allowed, SEC, unrated) == Verdict::Allowlisted)
            );
            assert_eq!(
                g.admit_behind_kernel(ip("198.18.1.1"), SEC, unrated),
                Verdict::BlockedCidr
            );
        }
        // A front-banned source's unrated connections spend its banned budget (2, no refill).
        let fronted: Vec<Verdict> = (0..3)
            .map(|_| g.admit_behind_kernel(ip("198.18.0.5"), SEC, true))
            .collect();
        assert_eq!(
            fronted,
            [
                Verdict::BannedFronted,
                Verdict::BannedFronted,
                Verdict::BannedSynLimited
            ]
        );
        assert_eq!(
            g.admit_behind_kernel(ip("198.18.0.5"), SEC, false),
            Verdict::BannedFronted
        );
    }

    #[test]
    fn front_ban_spends_its_own_budget_and_a_drop_ban_drops() {
        let g = gate(1000, 1000);
        g.ban(
            ip("198.18.0.5"),
            BanEntry::new(10 * SEC, BanReason::BadSecret, BanAction::Front),
        );
        g.ban(
            ip("2001:db8:1:2::1"),
            BanEntry::new(BanEntry::NEVER, BanReason::ConnRate, BanAction::Drop),
        );
        // A burst of 2 with no refill, whatever the ordinary limiter allows.
        let verdicts: Vec<Verdict> = (0..4).map(|_| g.admit(ip("198.18.0.5"), SEC)).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::BannedFronted,
                Verdict::BannedFronted,
                Verdict::BannedSynLimited,
                Verdict::BannedSynLimited
            ]
        );
        assert!(Verdict::BannedSynLimited.drops() && !Verdict::BannedFronted.drops());
        // The list check alone (kernel mode) fronts without spending anything.
        assert_eq!(
            g.check_lists(ip("198.18.0.5"), SEC),
            Some(Verdict::BannedFronted)
        );
        assert_eq!(g.admit(ip("2001:db8:1:2::9"), SEC), Verdict::Banned);
        // A blocked CIDR drops a front-banned source anyway; a lapsed ban is ordinary again.
        g.set_block(set(&["198.18.0.0/24"]));
        assert_eq!(g.admit(ip("198.18.0.5"), SEC), Verdict::BlockedCidr);
        g.set_block(PrefixSet::default());
        assert_eq!(g.admit(ip("198.18.0.5"), 11 * SEC), Verdict::Passed);
        let counts = g.verdict_counts();
        assert_eq!(counts[Verdict::BannedFronted as usize], 2);
        assert_eq!(counts[Verdict::BannedSynLimited as usize], 2);
    }
}
