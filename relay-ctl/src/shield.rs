//! Enforcement of the allow/block/ban/limit policy: in the kernel when XDP is attached, in
//! userspace at accept time otherwise. Callers do not care which.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    time::Duration,
};

use relay_common::{BanEntry, BanReason, Verdict, XdpConfig};

use crate::{
    clock::monotonic_ns,
    config::{Cidr, Config},
    gate::{Gate, SourceKey},
    prefix_set::PrefixSet,
    xdp::{MapsError, PrefixList, XdpProgram},
};

/// Where the policy is enforced.
pub enum Enforcement {
    /// The XDP program drops packets before the kernel allocates anything.
    Kernel(Box<XdpProgram>),
    /// The accept loop checks each new connection.
    Userspace {
        /// Why XDP is not used, for status output.
        reason: String,
    },
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Enforcement::Kernel(p) => {
                let list: Vec<String> =
                    p.attachments().map(|(i, m)| format!("{i} ({m})")).collect();
                write!(f, "XDP on {}", list.join(", "))
            }
            Enforcement::Userspace { reason } => write!(f, "userspace ({reason})"),
        }
    }
}

/// A ban as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    /// The address that was banned (IPv6 bans cover its /64).
    pub addr: IpAddr,
    /// Why.
    pub reason: BanReason,
    /// CLOCK_MONOTONIC expiry in ns, [`BanEntry::NEVER`] for permanent.
    pub expires_ns: u64,
    /// The count that crossed the threshold (0 for operator bans).
    pub count: u32,
}

impl BanRecord {
    /// Time left, `None` for a permanent ban.
    pub fn remaining(&self, now_ns: u64) -> Option<Duration> {
        (self.expires_ns != BanEntry::NEVER)
            .then(|| Duration::from_nanos(self.expires_ns.saturating_sub(now_ns)))
    }
}

/// Where a list entry comes from. The effective list is the union of all sources.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ListSource {
    /// `[blocklist] cidrs` / `[allowlist] cidrs` in the config file.
    Config,
    /// Added with the CLI (persisted in the state dir).
    Operator,
    /// A feed file from `[blocklist] files`.
    Feed(std::path::PathBuf),
}

impl fmt::Display for ListSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListSource::Config => f.write_str("config"),
            ListSource::Operator => f.write_str("operator"),
            ListSource::Feed(path) => write!(f, "feed:{}", path.display()),
        }
    }
}

/// One list (allow or block): entries per source, and how many sources hold each prefix.
#[derive(Debug, Default)]
struct SourcedList {
    by_source: BTreeMap<ListSource, BTreeSet<Cidr>>,
    holders: BTreeMap<Cidr, u32>,
}

impl SourcedList {
    /// Replaces one source's entries; returns the prefixes that entered and left the union.
    fn replace(&mut self, source: ListSource, new: BTreeSet<Cidr>) -> (Vec<Cidr>, Vec<Cidr>) {
        let old = self.by_source.remove(&source).unwrap_or_default();
        let mut entered = Vec::new();
        let mut left = Vec::new();
        for cidr in new.difference(&old) {
            let n = self.holders.entry(*cidr).or_insert(0);
            *n += 1;
            if *n == 1 {
                entered.push(*cidr);
            }
        }
        for cidr in old.difference(&new) {
            if let Some(n) = self.holders.get_mut(cidr) {
                *n -= 1;
                if *n == 0 {
                    self.holders.remove(cidr);
                    left.push(*cidr);
                }
            }
        }
        if !new.is_empty() {
            self.by_source.insert(source, new);
        }
        (entered, left)
    }

    fn union(&self) -> impl Iterator<Item = &Cidr> {
        self.holders.keys()
    }
}

/// The policy and where it is enforced.
pub struct Shield {
    enforcement: Enforcement,
    gate: Gate,
    allow: SourcedList,
    block: SourcedList,
    bans: BTreeMap<SourceKey, BanRecord>,
}

impl Shield {
    /// A shield enforcing through `enforcement`, with empty lists.
    pub fn new(enforcement: Enforcement) -> Self {
        Shield {
            enforcement,
            gate: Gate::default(),
            allow: SourcedList::default(),
            block: SourcedList::default(),
            bans: BTreeMap::new(),
        }
    }

    /// Where the policy is enforced.
    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// Whether the kernel enforces.
    pub fn in_kernel(&self) -> bool {
        matches!(self.enforcement, Enforcement::Kernel(_))
    }

    /// Writes limits, ports and lists from `config`, replacing what was there.
    pub fn apply(&mut self, config: &Config) -> Result<(), MapsError> {
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
        };
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            let maps = program.maps();
            maps.set_config(xdp_config)?;
            maps.set_ports(&config.listen_ports())?;
        }
        self.gate.set_config(xdp_config);
        self.set_prefixes(
            PrefixList::Allow,
            ListSource::Config,
            config.allowlist.cidrs.iter().copied().collect(),
        )?;
        self.set_prefixes(
            PrefixList::Block,
            ListSource::Config,
            config.blocklist.cidrs.iter().copied().collect(),
        )
    }

    /// Replaces the entries `source` contributes to `list`; only the prefixes that enter or
    /// leave the union touch the kernel maps. On a full map the entries added so far stay and
    /// the error names the first that did not fit.
    pub fn set_prefixes(
        &mut self,
        list: PrefixList,
        source: ListSource,
        cidrs: BTreeSet<Cidr>,
    ) -> Result<(), MapsError> {
        let sourced = match list {
            PrefixList::Allow => &mut self.allow,
            PrefixList::Block => &mut self.block,
        };
        let (entered, left) = sourced.replace(source, cidrs);
        let mut result = Ok(());
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            let maps = program.maps();
            for cidr in &left {
                maps.remove_prefix(list, cidr.0);
            }
            for cidr in &entered {
                if let Err(e) = maps.insert_prefix(list, cidr.0) {
                    result = Err(e);
                    break;
                }
            }
        }
        // The gate holds the lists in both modes: see `admit`.
        let set = prefix_set(sourced.union());
        match list {
            PrefixList::Allow => self.gate.set_allow(set),
            PrefixList::Block => self.gate.set_block(set),
        }
        result
    }

    /// Every entry of `list` with its source.
    pub fn prefixes(&self, list: PrefixList) -> Vec<(Cidr, ListSource)> {
        let sourced = match list {
            PrefixList::Allow => &self.allow,
            PrefixList::Block => &self.block,
        };
        sourced
            .by_source
            .iter()
            .flat_map(|(source, cidrs)| cidrs.iter().map(move |c| (*c, source.clone())))
            .collect()
    }

    /// Number of entries `list` has from each source.
    pub fn prefix_counts(&self, list: PrefixList) -> BTreeMap<String, u64> {
        let sourced = match list {
            PrefixList::Allow => &self.allow,
            PrefixList::Block => &self.block,
        };
        sourced
            .by_source
            .iter()
            .map(|(source, cidrs)| (source.to_string(), cidrs.len() as u64))
            .collect()
    }

    /// Whether `addr` is on the allowlist (and so is never banned).
    pub fn is_allowlisted(&self, addr: IpAddr) -> bool {
        self.gate.check_lists(addr, 0) == Some(Verdict::Allowlisted)
    }

    /// Bans `addr` (IPv4: the address; IPv6: its /64) for `ttl`, or for good with `None`.
    pub fn ban(
        &mut self,
        addr: IpAddr,
        reason: BanReason,
        ttl: Option<Duration>,
        count: u32,
    ) -> Result<(), MapsError> {
        let addr = addr.to_canonical();
        let expires_ns = ttl.map_or(BanEntry::NEVER, |ttl| {
            monotonic_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
        });
        let entry = BanEntry::new(expires_ns, reason);
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            program.maps().ban(addr, entry)?;
        }
        self.gate.ban(addr, entry);
        self.bans.insert(
            SourceKey::from(addr),
            BanRecord {
                addr,
                reason,
                expires_ns,
                count,
            },
        );
        Ok(())
    }

    /// Lifts the ban covering `addr`; returns it if there was one.
    pub fn unban(&mut self, addr: IpAddr) -> Option<BanRecord> {
        let addr = addr.to_canonical();
        let record = self.bans.remove(&SourceKey::from(addr))?;
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            program.maps().unban(addr);
        }
        self.gate.unban(addr);
        Some(record)
    }

    /// Current bans.
    pub fn bans(&self) -> impl Iterator<Item = &BanRecord> {
        self.bans.values()
    }

    /// Removes bans that have lapsed by `now_ns` (they already stopped matching in the kernel)
    /// and returns them.
    pub fn expire_bans(&mut self, now_ns: u64) -> Vec<BanRecord> {
        let expired: Vec<IpAddr> = self
            .bans
            .values()
            .filter(|b| b.expires_ns <= now_ns)
            .map(|b| b.addr)
            .collect();
        expired.into_iter().filter_map(|a| self.unban(a)).collect()
    }

    /// Decides on a connection just accepted from `source`. In kernel mode the program already
    /// rate-limited its SYN; the lists are checked again because a SYN the program could not
    /// parse (IPv6 extension headers, IPv4 fragments) passed it unchecked.
    pub fn admit(&self, source: IpAddr, now_ns: u64) -> Verdict {
        match &self.enforcement {
            Enforcement::Kernel(_) => self
                .gate
                .check_lists(source, now_ns)
                .unwrap_or(Verdict::Passed),
            Enforcement::Userspace { .. } => self.gate.admit(source, now_ns),
        }
    }

    /// Forgets idle limiter state (see [`Gate::forget_idle`]), in the kernel maps too.
    pub fn forget_idle(&mut self, now_ns: u64) {
        self.gate.forget_idle(now_ns);
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            let removed = program
                .maps()
                .forget_idle_limiter_state(now_ns, crate::gate::IDLE_FORGET_NS);
            if removed > 0 {
                tracing::debug!(removed, "forgot idle kernel limiter state");
            }
        }
    }

    /// Verdict counters from wherever the policy is enforced.
    pub fn verdict_counts(&self) -> Result<[u64; Verdict::COUNT as usize], MapsError> {
        match &self.enforcement {
            Enforcement::Kernel(program) => program.maps_ref().verdict_counts(),
            Enforcement::Userspace { .. } => Ok(self.gate.verdict_counts()),
        }
    }

    /// Removes entries the kernel maps hold but the policy does not: maps pinned by an earlier
    /// run (`[xdp] keep_on_exit`) keep protecting during a restart, and once this run has
    /// restored its own lists and bans, what is left over is stale. Returns how many went.
    pub fn drop_stale_kernel_entries(&mut self) -> usize {
        let Enforcement::Kernel(program) = &mut self.enforcement else {
            return 0;
        };
        let maps = program.maps();
        let mut removed = 0;
        for (list, sourced) in [
            (PrefixList::Allow, &self.allow),
            (PrefixList::Block, &self.block),
        ] {
            for net in maps.prefixes(list) {
                if !sourced.holders.contains_key(&Cidr(net)) && maps.remove_prefix(list, net) {
                    removed += 1;
                }
            }
        }
        for addr in maps.banned() {
            if !self.bans.contains_key(&SourceKey::from(addr)) && maps.unban(addr) {
                removed += 1;
            }
        }
        removed
    }

    /// Detaches XDP, if attached (unless `[xdp] keep_on_exit` pinned it).
    pub fn shutdown(&mut self) {
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            program.detach_all();
        }
    }
}

fn prefix_set<'a>(cidrs: impl Iterator<Item = &'a Cidr>) -> PrefixSet {
    let mut set = PrefixSet::default();
    for c in cidrs {
        set.insert(c.0);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> BTreeSet<Cidr> {
        list.iter().map(|c| c.parse().expect("test CIDR")).collect()
    }

    #[test]
    fn union_counts_every_source() {
        let mut list = SourcedList::default();
        let (entered, left) = list.replace(ListSource::Config, cidrs(&["10.0.0.0/8", "192.0.2.1"]));
        assert_eq!((entered.len(), left.len()), (2, 0));
        let (entered, left) =
            list.replace(ListSource::Operator, cidrs(&["10.0.0.0/8", "192.0.2.2"]));
        assert_eq!(
            entered,
            vec![cidrs(&["192.0.2.2"]).into_iter().next().expect("one")]
        );
        assert!(left.is_empty());
        // 10/8 is still held by the operator after the config drops it.
        let (entered, left) = list.replace(ListSource::Config, BTreeSet::new());
        assert!(entered.is_empty());
        assert_eq!(
            left,
            vec![cidrs(&["192.0.2.1"]).into_iter().next().expect("one")]
        );
        assert_eq!(list.union().count(), 2);
        let (_, left) = list.replace(ListSource::Operator, BTreeSet::new());
        assert_eq!(left.len(), 2);
        assert_eq!(list.union().count(), 0);
        assert!(list.by_source.is_empty());
    }
}
