//! The admission policy without its enforcement: allow and block lists by source, relay's own
//! bans (of addresses and of misuse prefixes), CrowdSec's decisions merged with them, and the
//! limits. Each operation hands the [`Change`]s it implies to an [`Enforce`] sink, and keeps or
//! undoes its own state by what the sink answers; it knows no map, socket or clock.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Display,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::IpNet;
use relay_common::{BanAction, BanEntry, BanReason, XdpConfig};

use super::{
    bans::{BanRecord, BanTarget},
    change::{Change, Enforce, PrefixList},
    keys::{PrefixKey, SourceKey},
    lists::{ListSource, SourcedList},
};
use crate::config::{Cidr, Config};

/// CrowdSec decisions that could not be enforced; the others in the batch were applied.
#[derive(Debug, thiserror::Error)]
#[error("{failed} CrowdSec decisions not enforced: {first}")]
pub struct NotEnforced<E> {
    /// How many were refused.
    pub failed: usize,
    /// The first refusal (a full map, typically).
    pub first: E,
}

/// An IPv4 ban decided by CrowdSec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrowdSecBan {
    /// The decision's origin.
    pub origin: String,
    /// CLOCK_MONOTONIC expiry in ns.
    pub expires_ns: u64,
    /// The origin is relay itself: its own ban back from the LAPI, or a sibling relay's.
    pub own: bool,
}

/// What a CrowdSec decision applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionTarget {
    /// One address: an IPv4 address is banned, an IPv6 address blocked as a /128 (a ban
    /// would cover its /64).
    Addr(IpAddr),
    /// A prefix, blocked.
    Range(IpNet),
}

/// A change to the CrowdSec decisions relay enforces, in the policy's terms (the CrowdSec
/// client converts its own into these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionChange {
    /// Enforce `target` until `ban.expires_ns` (new, or a new expiry or origin).
    Set {
        /// What.
        target: DecisionTarget,
        /// Origin and expiry now.
        ban: CrowdSecBan,
        /// Origin before, when it was already enforced under another origin.
        previous_origin: Option<String>,
    },
    /// Stop enforcing `target`, which was held under `origin`.
    Remove {
        /// What.
        target: DecisionTarget,
        /// Its origin.
        origin: String,
    },
}

/// The kernel entry of a CrowdSec ban: dropped, like every external decision.
fn crowdsec_entry(ban: &CrowdSecBan) -> BanEntry {
    BanEntry::new(ban.expires_ns, BanReason::Operator, BanAction::Drop)
}

/// The one entry for relay's own ban and CrowdSec's on the same address: the later expiry,
/// and the drop action if either drops, so a front-ban never softens a decision of
/// CrowdSec's own (origin `crowdsec`, `cscli`, lists). A decision of relay's own origin next
/// to relay's own ban is that ban coming back from the LAPI (or a sibling relay's ban of the
/// same prober): relay's own action stands.
fn merged(own: Option<BanEntry>, crowdsec: Option<&CrowdSecBan>) -> Option<BanEntry> {
    let Some(own) = own else {
        return crowdsec.map(crowdsec_entry);
    };
    let Some(cs) = crowdsec else {
        return Some(own);
    };
    let mut entry = own;
    entry.expires_ns = own.expires_ns.max(cs.expires_ns);
    if !cs.own {
        entry.action = BanAction::Drop as u32;
    }
    Some(entry)
}

/// The block list prefix a CrowdSec IPv6 address or range is enforced as.
fn decision_prefix(target: &DecisionTarget) -> Cidr {
    match target {
        DecisionTarget::Addr(addr) => Cidr(IpNet::from(*addr)),
        DecisionTarget::Range(net) => Cidr(*net),
    }
}

/// The limits and listen ports of `config`, as the enforcers take them.
pub fn limits(config: &Config) -> [Change; 2] {
    let limits = &config.limits;
    let xdp_config = XdpConfig {
        syn_rate_per_sec: limits.syn_rate_per_sec,
        syn_burst: limits.syn_burst.get(),
        new_state_per_cpu_per_sec: limits.new_state_per_cpu_per_sec.get(),
        flags: if limits.syn_limit {
            XdpConfig::FLAG_SYN_LIMIT
        } else {
            0
        },
        banned_syn_rate_per_sec: config.misuse.banned_syn_rate_per_sec,
        banned_syn_burst: config.misuse.banned_syn_burst.get(),
    };
    [
        Change::Limits(xdp_config),
        Change::Ports(config.listen_ports()),
    ]
}

/// Lists, bans and CrowdSec decisions.
#[derive(Debug, Default)]
pub struct Policy {
    allow: SourcedList,
    block: SourcedList,
    bans: BTreeMap<SourceKey, BanRecord>,
    /// Prefix bans of the misuse detector.
    prefix_bans: BTreeMap<PrefixKey, BanRecord>,
    /// CrowdSec's IPv4 bans, kept apart from relay's own: both share one ban entry (the
    /// later-ending of the two), and lifting one never lifts the other.
    crowdsec_bans: HashMap<Ipv4Addr, CrowdSecBan>,
}

impl Policy {
    fn list(&self, list: PrefixList) -> &SourcedList {
        match list {
            PrefixList::Allow => &self.allow,
            PrefixList::Block => &self.block,
        }
    }

    /// Applies the limits, ports and lists of `config`, replacing what was there.
    pub fn apply<E: Enforce>(&mut self, config: &Config, to: &mut E) -> Result<(), E::Error> {
        to.enforce_or_refuse(&limits(config))?;
        // Balancers sending PROXY headers carry every client: never dropped or limited as one
        // source. Their clients get the decision after the header, in userspace.
        let balancers = config
            .server
            .proxy_protocol
            .accept()
            .map_or(&[][..], |_| &config.server.trusted[..]);
        self.set_prefixes(
            PrefixList::Allow,
            ListSource::Config,
            config
                .allowlist
                .cidrs
                .iter()
                .chain(balancers)
                .copied()
                .collect(),
            to,
        )?;
        self.set_prefixes(
            PrefixList::Block,
            ListSource::Config,
            config.blocklist.cidrs.iter().copied().collect(),
            to,
        )
    }

    /// Replaces the entries `source` contributes to `list`; only the prefixes that enter or
    /// leave the union are changes. They are kept even when an enforcer refuses some.
    pub fn set_prefixes<E: Enforce>(
        &mut self,
        list: PrefixList,
        source: ListSource,
        cidrs: BTreeSet<Cidr>,
        to: &mut E,
    ) -> Result<(), E::Error> {
        let sourced = match list {
            PrefixList::Allow => &mut self.allow,
            PrefixList::Block => &mut self.block,
        };
        let (entered, left) = sourced.replace(source, cidrs);
        let changes: Vec<Change> = left
            .iter()
            .map(|c| Change::RemovePrefix(list, c.0))
            .chain(entered.iter().map(|c| Change::InsertPrefix(list, c.0)))
            .collect();
        to.enforce(&changes)
    }

    /// Every entry of `list` with its source.
    pub fn prefixes(&self, list: PrefixList) -> Vec<(Cidr, ListSource)> {
        self.list(list)
            .by_source
            .iter()
            .flat_map(|(source, cidrs)| cidrs.iter().map(move |c| (*c, source.clone())))
            .collect()
    }

    /// Number of entries `list` has from each source.
    pub fn prefix_counts(&self, list: PrefixList) -> BTreeMap<String, u64> {
        self.list(list)
            .by_source
            .iter()
            .map(|(source, cidrs)| (source.to_string(), cidrs.len() as u64))
            .collect()
    }

    /// Whether some source holds `net` in `list`.
    pub fn holds_prefix(&self, list: PrefixList, net: IpNet) -> bool {
        self.list(list).holders.contains_key(&Cidr(net))
    }

    /// Whether a ban of relay's own or of CrowdSec covers the source `addr`.
    pub fn holds_ban(&self, addr: IpAddr) -> bool {
        let crowdsec = matches!(addr, IpAddr::V4(a) if self.crowdsec_bans.contains_key(&a));
        crowdsec || self.bans.contains_key(&SourceKey::from(addr))
    }

    /// Adds `cidr` to the block list for `source`; undone when it cannot be enforced, so a
    /// later try can add it.
    fn insert_block<E: Enforce>(
        &mut self,
        source: ListSource,
        cidr: Cidr,
        to: &mut E,
    ) -> Result<(), E::Error> {
        if !self.block.insert(source.clone(), cidr) {
            return Ok(());
        }
        let result = to.enforce_or_refuse(&[Change::InsertPrefix(PrefixList::Block, cidr.0)]);
        if result.is_err() {
            self.block.remove(&source, cidr);
        }
        result
    }

    /// Removes `source`'s `cidr` from the block list.
    fn remove_block<E: Enforce>(
        &mut self,
        source: &ListSource,
        cidr: Cidr,
        to: &mut E,
    ) -> Result<(), E::Error> {
        if self.block.remove(source, cidr) {
            to.enforce(&[Change::RemovePrefix(PrefixList::Block, cidr.0)])?;
        }
        Ok(())
    }

    /// Bans the source `addr` (IPv4: the address; IPv6: its /64) as `record` says; kept
    /// only when enforced.
    pub fn ban<E: Enforce>(
        &mut self,
        addr: IpAddr,
        record: BanRecord,
        to: &mut E,
    ) -> Result<(), E::Error> {
        let addr = addr.to_canonical();
        let mut entry = BanEntry::new(record.expires_ns, record.reason, record.action);
        if let IpAddr::V4(v4) = addr
            && let Some(cs) = self.crowdsec_bans.get(&v4)
        {
            entry = merged(Some(entry), Some(cs)).unwrap_or(entry);
        }
        to.enforce_or_refuse(&[Change::Ban(addr, entry)])?;
        self.bans.insert(SourceKey::from(addr), record);
        Ok(())
    }

    /// Lifts relay's ban covering `addr`; returns it if there was one. A CrowdSec ban of the
    /// same address stays enforced, with its own expiry (a failure to rewrite it is logged).
    pub fn unban<E: Enforce>(&mut self, addr: IpAddr, to: &mut E) -> Option<BanRecord>
    where
        E::Error: Display,
    {
        let addr = addr.to_canonical();
        let record = self.bans.remove(&SourceKey::from(addr))?;
        if let IpAddr::V4(v4) = addr
            && self.crowdsec_bans.contains_key(&v4)
        {
            if let Err(e) = self.write_v4_ban(v4, to) {
                tracing::error!(%addr, "rewriting the CrowdSec ban: {e}");
            }
            return Some(record);
        }
        let _ = to.enforce(&[Change::Unban(addr)]);
        Some(record)
    }

    /// Bans `prefix` (an IPv4 /24 or IPv6 /48) as `record` says, replacing an earlier ban of
    /// it. The ban maps hold single sources, so a prefix ban is enforced apart from them: with
    /// the drop action as a block list entry of source `misuse` (dropped in the kernel,
    /// verdict `blocked_cidr`), with the front action at accept, where its connections get the
    /// mask site (the kernel's limiter still applies, the front-ban budget does not).
    pub fn ban_prefix<E: Enforce>(
        &mut self,
        prefix: PrefixKey,
        record: BanRecord,
        to: &mut E,
    ) -> Result<(), E::Error>
    where
        E::Error: Display,
    {
        if self.prefix_bans.contains_key(&prefix) {
            self.unban_prefix(prefix, to);
        }
        match record.action {
            BanAction::Drop => self.insert_block(ListSource::Misuse, Cidr(prefix.net()), to)?,
            BanAction::Front => to.enforce(&[Change::FrontPrefix(
                prefix,
                BanEntry::new(record.expires_ns, record.reason, record.action),
            )])?,
        }
        self.prefix_bans.insert(prefix, record);
        Ok(())
    }

    /// Lifts the ban on `prefix`; returns it if there was one.
    pub fn unban_prefix<E: Enforce>(&mut self, prefix: PrefixKey, to: &mut E) -> Option<BanRecord>
    where
        E::Error: Display,
    {
        let record = self.prefix_bans.remove(&prefix)?;
        let lifted = match record.action {
            BanAction::Drop => self.remove_block(&ListSource::Misuse, Cidr(prefix.net()), to),
            BanAction::Front => to.enforce(&[Change::UnfrontPrefix(prefix)]),
        };
        if let Err(e) = lifted {
            tracing::error!(prefix = %prefix.net(), "lifting the prefix ban: {e}");
        }
        Some(record)
    }

    /// Lifts the ban on `target`; returns it if there was one.
    pub fn lift<E: Enforce>(&mut self, target: BanTarget, to: &mut E) -> Option<BanRecord>
    where
        E::Error: Display,
    {
        match target {
            BanTarget::Addr(addr) => self.unban(addr, to),
            BanTarget::Prefix(prefix) => self.unban_prefix(prefix, to),
        }
    }

    /// The prefix ban covering `addr`, if any.
    pub fn prefix_ban_covering(&self, addr: IpAddr) -> Option<&BanRecord> {
        self.prefix_bans.get(&PrefixKey::from(addr))
    }

    /// Current bans: of addresses, then of prefixes.
    pub fn bans(&self) -> impl Iterator<Item = &BanRecord> {
        self.bans.values().chain(self.prefix_bans.values())
    }

    /// Removes bans that have lapsed by `now_ns` and returns them. Address bans already
    /// stopped matching where they are enforced; a prefix ban with the drop action stops here.
    pub fn expire_bans<E: Enforce>(&mut self, now_ns: u64, to: &mut E) -> Vec<BanRecord>
    where
        E::Error: Display,
    {
        let expired: Vec<BanTarget> = self
            .bans()
            .filter(|b| b.expires_ns <= now_ns)
            .map(|b| b.target)
            .collect();
        expired
            .into_iter()
            .filter_map(|t| self.lift(t, to))
            .collect()
    }

    /// The ban entry of an IPv4 address from relay's own ban and CrowdSec's (see
    /// [`merged`]), or its removal when neither holds.
    fn write_v4_ban<E: Enforce>(&mut self, addr: Ipv4Addr, to: &mut E) -> Result<(), E::Error> {
        let own = self
            .bans
            .get(&SourceKey::V4(addr.octets()))
            .map(|b| BanEntry::new(b.expires_ns, b.reason, b.action));
        let ip = IpAddr::V4(addr);
        match merged(own, self.crowdsec_bans.get(&addr)) {
            Some(entry) => to.enforce_or_refuse(&[Change::Ban(ip, entry)]),
            None => to.enforce_or_refuse(&[Change::Unban(ip)]),
        }
    }

    /// Applies CrowdSec decision changes: IPv4 addresses as bans, IPv6 addresses (as /128)
    /// and ranges as block list entries under [`ListSource::CrowdSec`]. A change that cannot
    /// be enforced does not stop the others; the error counts them and keeps the first refusal.
    pub fn apply_crowdsec<E: Enforce>(
        &mut self,
        changes: &[DecisionChange],
        to: &mut E,
    ) -> Result<(), NotEnforced<E::Error>> {
        let mut failed = 0;
        let mut first = None;
        for change in changes {
            if let Err(e) = self.apply_decision(change, to) {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(first) => Err(NotEnforced { failed, first }),
        }
    }

    fn apply_decision<E: Enforce>(
        &mut self,
        change: &DecisionChange,
        to: &mut E,
    ) -> Result<(), E::Error> {
        match change {
            DecisionChange::Set {
                target: DecisionTarget::Addr(IpAddr::V4(addr)),
                ban,
                ..
            } => {
                self.crowdsec_bans.insert(*addr, ban.clone());
                self.write_v4_ban(*addr, to)
            }
            DecisionChange::Remove {
                target: DecisionTarget::Addr(IpAddr::V4(addr)),
                ..
            } => {
                if self.crowdsec_bans.remove(addr).is_some() {
                    self.write_v4_ban(*addr, to)?;
                }
                Ok(())
            }
            DecisionChange::Set {
                target,
                ban,
                previous_origin,
            } => {
                let cidr = decision_prefix(target);
                if let Some(old) = previous_origin {
                    self.remove_block(&ListSource::CrowdSec(old.clone()), cidr, to)?;
                }
                self.insert_block(ListSource::CrowdSec(ban.origin.clone()), cidr, to)
            }
            DecisionChange::Remove { target, origin } => self.remove_block(
                &ListSource::CrowdSec(origin.clone()),
                decision_prefix(target),
                to,
            ),
        }
    }

    /// CrowdSec's IPv4 bans (IPv6 addresses and ranges are block list entries).
    pub fn crowdsec_bans(&self) -> impl Iterator<Item = (&Ipv4Addr, &CrowdSecBan)> {
        self.crowdsec_bans.iter()
    }

    /// CrowdSec's ban on `addr`, if any.
    pub fn crowdsec_ban(&self, addr: IpAddr) -> Option<&CrowdSecBan> {
        match addr.to_canonical() {
            IpAddr::V4(a) => self.crowdsec_bans.get(&a),
            IpAddr::V6(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    /// A sink whose kernel is full: refuses everything.
    struct Full;

    impl Enforce for Full {
        type Error = &'static str;

        fn enforce(&mut self, _: &[Change]) -> Result<(), &'static str> {
            Err("full")
        }

        fn enforce_or_refuse(&mut self, _: &[Change]) -> Result<(), &'static str> {
            Err("full")
        }
    }

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|c| c.parse().expect("test CIDR")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn record(addr: IpAddr, action: BanAction, expires_ns: u64) -> BanRecord {
        BanRecord {
            target: BanTarget::Addr(addr),
            reason: BanReason::BadSecret,
            action,
            expires_ns,
            count: 5,
        }
    }

    fn crowdsec(addr: &str, origin: &str, expires_ns: u64) -> DecisionChange {
        DecisionChange::Set {
            target: DecisionTarget::Addr(ip(addr)),
            ban: CrowdSecBan {
                origin: origin.into(),
                expires_ns,
                own: origin == "relay",
            },
            previous_origin: None,
        }
    }

    #[test]
    fn only_prefixes_entering_or_leaving_the_union_are_changes() {
        let mut policy = Policy::default();
        let mut changes = Vec::new();
        let both = cidrs(&["192.0.2.0/24"]);
        let net = both.first().expect("one").0;
        policy
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                both.clone(),
                &mut changes,
            )
            .expect("infallible");
        policy
            .set_prefixes(PrefixList::Block, ListSource::Config, both, &mut changes)
            .expect("infallible");
        policy
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                BTreeSet::new(),
                &mut changes,
            )
            .expect("infallible");
        assert_eq!(changes, [Change::InsertPrefix(PrefixList::Block, net)]);
        assert!(policy.holds_prefix(PrefixList::Block, net));
    }

    #[test]
    fn a_refused_ban_or_block_entry_is_not_kept() {
        let mut policy = Policy::default();
        let addr = ip("198.18.0.1");
        assert!(
            policy
                .ban(addr, record(addr, BanAction::Drop, 10), &mut Full)
                .is_err()
        );
        assert_eq!(policy.bans().count(), 0);
        let refused = policy
            .apply_crowdsec(&[crowdsec("2001:db8::1", "cscli", 10)], &mut Full)
            .expect_err("the map is full");
        assert_eq!(refused.failed, 1);
        assert!(policy.prefixes(PrefixList::Block).is_empty());
    }

    #[test]
    fn crowdsec_and_own_bans_merge_into_one_entry() {
        let mut policy = Policy::default();
        let mut changes = Vec::new();
        let addr = ip("198.18.0.1");
        policy
            .ban(addr, record(addr, BanAction::Front, 10), &mut changes)
            .expect("infallible");
        policy
            .apply_crowdsec(&[crowdsec("198.18.0.1", "cscli", 20)], &mut changes)
            .expect("infallible");
        // The later expiry, and CrowdSec's own decision drops.
        assert_eq!(
            changes.last(),
            Some(&Change::Ban(
                addr,
                BanEntry::new(20, BanReason::BadSecret, BanAction::Drop)
            ))
        );
        // Lifting relay's own leaves CrowdSec's.
        changes.clear();
        assert!(policy.unban(addr, &mut changes).is_some());
        assert_eq!(
            changes,
            [Change::Ban(
                addr,
                BanEntry::new(20, BanReason::Operator, BanAction::Drop)
            )]
        );
        assert!(policy.holds_ban(addr));
    }
}
