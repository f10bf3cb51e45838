//! Enforcement of the allow/block/ban/limit policy: in the kernel when XDP is attached, in
//! userspace at accept time otherwise. Callers do not care which.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, RwLock},
    time::Duration,
};

use relay_common::{BanAction, BanEntry, BanReason, Verdict, XdpConfig};

use crate::{
    clock::monotonic_ns,
    config::{Cidr, Config},
    crowdsec::decisions::{Change, Target},
    gate::{Gate, PrefixKey, SourceKey},
    prefix_set::PrefixSet,
    xdp::{MapsError, PrefixList, UnratedMarks, XdpProgram},
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

/// What a ban covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanTarget {
    /// An address (an IPv6 ban covers its /64).
    Addr(IpAddr),
    /// A misuse prefix: an IPv4 /24 or IPv6 /48.
    Prefix(PrefixKey),
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTarget::Addr(addr) => addr.fmt(f),
            BanTarget::Prefix(prefix) => prefix.net().fmt(f),
        }
    }
}

impl std::str::FromStr for BanTarget {
    type Err = String;

    /// An address, or an IPv4 /24 or IPv6 /48 (`198.51.100.0/24`, `2001:db8:1::/48`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<IpAddr>() {
            return Ok(BanTarget::Addr(addr.to_canonical()));
        }
        let net = s
            .parse::<ipnet::IpNet>()
            .map_err(|_| format!("`{s}` is neither an IP address nor a prefix"))?;
        PrefixKey::of_net(net)
            .map(BanTarget::Prefix)
            .ok_or_else(|| format!("`{s}`: prefix bans are IPv4 /24 or IPv6 /48"))
    }
}

/// A ban as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    /// What was banned.
    pub target: BanTarget,
    /// Why.
    pub reason: BanReason,
    /// Whether the source is dropped or fronted.
    pub action: BanAction,
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
    /// CrowdSec decisions of one origin (`cscli`, `crowdsec`, `CAPI`, `relay`, ...).
    CrowdSec(String),
    /// Prefix bans of the misuse detector with the drop action (see [`Shield::ban_prefix`]).
    Misuse,
}

impl fmt::Display for ListSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListSource::Config => f.write_str("config"),
            ListSource::Operator => f.write_str("operator"),
            ListSource::Feed(path) => write!(f, "feed:{}", path.display()),
            ListSource::CrowdSec(origin) => write!(f, "crowdsec:{origin}"),
            ListSource::Misuse => f.write_str("misuse"),
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

    /// Adds one prefix for `source`; returns whether it entered the union.
    fn insert(&mut self, source: ListSource, cidr: Cidr) -> bool {
        if !self.by_source.entry(source).or_default().insert(cidr) {
            return false;
        }
        let n = self.holders.entry(cidr).or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Removes one prefix of `source`; returns whether it left the union.
    fn remove(&mut self, source: &ListSource, cidr: Cidr) -> bool {
        let Some(set) = self.by_source.get_mut(source) else {
            return false;
        };
        if !set.remove(&cidr) {
            return false;
        }
        if set.is_empty() {
            self.by_source.remove(source);
        }
        match self.holders.get_mut(&cidr) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.holders.remove(&cidr);
                true
            }
            None => false,
        }
    }

    fn union(&self) -> impl Iterator<Item = &Cidr> {
        self.holders.keys()
    }
}

/// An IPv4 ban decided by CrowdSec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrowdSecBan {
    /// The decision's origin.
    pub origin: String,
    /// CLOCK_MONOTONIC expiry in ns.
    pub expires_ns: u64,
}

/// The accept-time check, shared with the shield but usable without its lock: new
/// connections never wait for a writer of the shield (100,000 CrowdSec decisions loading).
#[derive(Clone)]
pub struct Admission {
    gate: Arc<Gate>,
    /// In kernel mode, the program's marks on sources whose SYNs it may not have rated.
    kernel: Option<Arc<RwLock<UnratedMarks>>>,
}

impl Admission {
    /// See [`Shield::admit`].
    pub fn admit(&self, source: IpAddr, now_ns: u64) -> Verdict {
        let Some(marks) = &self.kernel else {
            return self.gate.admit(source, now_ns);
        };
        let unrated = marks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .unrated(source, now_ns);
        self.gate.admit_behind_kernel(source, now_ns, unrated)
    }
}

/// The policy and where it is enforced.
pub struct Shield {
    enforcement: Enforcement,
    gate: Arc<Gate>,
    allow: SourcedList,
    block: SourcedList,
    bans: BTreeMap<SourceKey, BanRecord>,
    /// Prefix bans of the misuse detector.
    prefix_bans: BTreeMap<PrefixKey, BanRecord>,
    /// CrowdSec's IPv4 bans, kept apart from relay's own: both share the kernel ban map (its
    /// entry is the later-ending of the two), and lifting one never lifts the other.
    crowdsec_bans: HashMap<Ipv4Addr, CrowdSecBan>,
}

impl Shield {
    /// A shield enforcing through `enforcement`, with empty lists.
    pub fn new(enforcement: Enforcement) -> Self {
        Shield {
            enforcement,
            gate: Arc::new(Gate::default()),
            allow: SourcedList::default(),
            block: SourcedList::default(),
            bans: BTreeMap::new(),
            prefix_bans: BTreeMap::new(),
            crowdsec_bans: HashMap::new(),
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
            banned_syn_rate_per_sec: config.misuse.banned_syn_rate_per_sec,
            banned_syn_burst: config.misuse.banned_syn_burst.get(),
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

    /// Bans `addr` (IPv4: the address; IPv6: its /64) for `ttl`, or for good with `None`;
    /// `action` says whether its traffic is dropped or its connections fronted.
    pub fn ban(
        &mut self,
        addr: IpAddr,
        reason: BanReason,
        action: BanAction,
        ttl: Option<Duration>,
        count: u32,
    ) -> Result<(), MapsError> {
        let addr = addr.to_canonical();
        let expires_ns = ttl.map_or(BanEntry::NEVER, |ttl| {
            monotonic_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
        });
        let record = BanRecord {
            target: BanTarget::Addr(addr),
            reason,
            action,
            expires_ns,
            count,
        };
        let mut entry = BanEntry::new(expires_ns, reason, action);
        if let IpAddr::V4(v4) = addr
            && let Some(cs) = self.crowdsec_bans.get(&v4)
        {
            entry = merged(Some(entry), Some(cs)).unwrap_or(entry);
        }
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            program.maps().ban(addr, entry)?;
        }
        self.gate.ban(addr, entry);
        self.bans.insert(SourceKey::from(addr), record);
        Ok(())
    }

    /// Lifts the ban covering `addr`; returns it if there was one.
    pub fn unban(&mut self, addr: IpAddr) -> Option<BanRecord> {
        let addr = addr.to_canonical();
        let record = self.bans.remove(&SourceKey::from(addr))?;
        if let IpAddr::V4(v4) = addr
            && self.crowdsec_bans.contains_key(&v4)
        {
            // CrowdSec still bans it: the kernel entry stays, with CrowdSec's expiry.
            if let Err(e) = self.write_v4_ban(v4) {
                tracing::error!(%addr, "rewriting the CrowdSec ban: {e}");
            }
            return Some(record);
        }
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            program.maps().unban(addr);
        }
        self.gate.unban(addr);
        Some(record)
    }

    /// Bans `prefix` (an IPv4 /24 or IPv6 /48) for `ttl`, or for good with `None`. The ban maps
    /// hold single sources, so a prefix ban is enforced apart from them: with the drop action
    /// as a block list entry of source `misuse` (dropped in the kernel, verdict
    /// `blocked_cidr`), with the front action at accept, where its connections get the mask
    /// site (the kernel's limiter still applies, the front-ban budget does not).
    pub fn ban_prefix(
        &mut self,
        prefix: PrefixKey,
        reason: BanReason,
        action: BanAction,
        ttl: Option<Duration>,
        count: u32,
    ) -> Result<(), MapsError> {
        let expires_ns = ttl.map_or(BanEntry::NEVER, |ttl| {
            monotonic_ns().saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
        });
        if self.prefix_bans.contains_key(&prefix) {
            self.unban_prefix(prefix);
        }
        match action {
            BanAction::Drop => {
                self.insert_block_prefix(ListSource::Misuse, Cidr(prefix.net()))?;
            }
            BanAction::Front => self
                .gate
                .ban_prefix(prefix, BanEntry::new(expires_ns, reason, action)),
        }
        self.prefix_bans.insert(
            prefix,
            BanRecord {
                target: BanTarget::Prefix(prefix),
                reason,
                action,
                expires_ns,
                count,
            },
        );
        Ok(())
    }

    /// Lifts the ban on `prefix`; returns it if there was one.
    pub fn unban_prefix(&mut self, prefix: PrefixKey) -> Option<BanRecord> {
        let record = self.prefix_bans.remove(&prefix)?;
        match record.action {
            BanAction::Drop => self.remove_block_prefix(&ListSource::Misuse, Cidr(prefix.net())),
            BanAction::Front => self.gate.unban_prefix(prefix),
        }
        Some(record)
    }

    /// Lifts the ban on `target`; returns it if there was one.
    pub fn lift(&mut self, target: BanTarget) -> Option<BanRecord> {
        match target {
            BanTarget::Addr(addr) => self.unban(addr),
            BanTarget::Prefix(prefix) => self.unban_prefix(prefix),
        }
    }

    /// The prefix ban covering `addr`, if any.
    pub fn prefix_ban_covering(&self, addr: IpAddr) -> Option<&BanRecord> {
        self.prefix_bans.get(&PrefixKey::from(addr))
    }

    /// Writes the kernel (and gate) ban entry of an IPv4 address from relay's own ban and
    /// CrowdSec's (see [`merged`]); removes it when neither holds.
    fn write_v4_ban(&mut self, addr: Ipv4Addr) -> Result<(), MapsError> {
        let own = self
            .bans
            .get(&SourceKey::V4(addr.octets()))
            .map(|b| BanEntry::new(b.expires_ns, b.reason, b.action));
        let entry = merged(own, self.crowdsec_bans.get(&addr));
        let ip = IpAddr::V4(addr);
        match entry {
            Some(entry) => {
                if let Enforcement::Kernel(program) = &mut self.enforcement {
                    program.maps().ban(ip, entry)?;
                }
                self.gate.ban(ip, entry);
            }
            None => {
                if let Enforcement::Kernel(program) = &mut self.enforcement {
                    program.maps().unban(ip);
                }
                self.gate.unban(ip);
            }
        }
        Ok(())
    }

    /// Applies CrowdSec decision changes: IPv4 addresses into the ban map, IPv6 addresses
    /// (as /128) and ranges into the block tries under [`ListSource::CrowdSec`]. Returns how
    /// many could not be written and the first error (a full map); the others are applied.
    pub fn apply_crowdsec(&mut self, changes: &[Change]) -> (usize, Option<MapsError>) {
        let mut failed = 0;
        let mut first = None;
        for change in changes {
            if let Err(e) = self.apply_crowdsec_change(change) {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        (failed, first)
    }

    fn apply_crowdsec_change(&mut self, change: &Change) -> Result<(), MapsError> {
        match change {
            Change::Set {
                target: Target::Ip(IpAddr::V4(addr)),
                entry,
                ..
            } => {
                self.crowdsec_bans.insert(
                    *addr,
                    CrowdSecBan {
                        origin: entry.origin.clone(),
                        expires_ns: entry.expires_ns,
                    },
                );
                self.write_v4_ban(*addr)
            }
            Change::Remove {
                target: Target::Ip(IpAddr::V4(addr)),
                ..
            } => {
                if self.crowdsec_bans.remove(addr).is_some() {
                    self.write_v4_ban(*addr)?;
                }
                Ok(())
            }
            Change::Set {
                target,
                entry,
                previous_origin,
            } => {
                let cidr = crowdsec_prefix(target);
                if let Some(old) = previous_origin {
                    self.remove_block_prefix(&ListSource::CrowdSec(old.clone()), cidr);
                }
                self.insert_block_prefix(ListSource::CrowdSec(entry.origin.clone()), cidr)
            }
            Change::Remove { target, origin } => {
                self.remove_block_prefix(
                    &ListSource::CrowdSec(origin.clone()),
                    crowdsec_prefix(target),
                );
                Ok(())
            }
        }
    }

    fn insert_block_prefix(&mut self, source: ListSource, cidr: Cidr) -> Result<(), MapsError> {
        if !self.block.insert(source.clone(), cidr) {
            return Ok(());
        }
        if let Enforcement::Kernel(program) = &mut self.enforcement
            && let Err(e) = program.maps().insert_prefix(PrefixList::Block, cidr.0)
        {
            // Not in the kernel: not in the policy either, so a later try can add it.
            self.block.remove(&source, cidr);
            return Err(e);
        }
        self.gate.block_insert(cidr.0);
        Ok(())
    }

    fn remove_block_prefix(&mut self, source: &ListSource, cidr: Cidr) {
        if self.block.remove(source, cidr) {
            if let Enforcement::Kernel(program) = &mut self.enforcement {
                program.maps().remove_prefix(PrefixList::Block, cidr.0);
            }
            self.gate.block_remove(cidr.0);
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

    /// Current bans: of addresses, then of prefixes.
    pub fn bans(&self) -> impl Iterator<Item = &BanRecord> {
        self.bans.values().chain(self.prefix_bans.values())
    }

    /// Removes bans that have lapsed by `now_ns` and returns them. Address bans already
    /// stopped matching in the kernel; a prefix ban with the drop action stops here.
    pub fn expire_bans(&mut self, now_ns: u64) -> Vec<BanRecord> {
        let expired: Vec<BanTarget> = self
            .bans()
            .filter(|b| b.expires_ns <= now_ns)
            .map(|b| b.target)
            .collect();
        expired.into_iter().filter_map(|t| self.lift(t)).collect()
    }

    /// Decides on a connection just accepted from `source`. In kernel mode the program already
    /// rate-limited its SYN, and the lists are checked again; but a source the program marked
    /// as sending packets it could not rate (a SYN behind IPv6 extension headers or in IPv4
    /// fragments) gets the whole decision here, the SYN limit included, with userspace's own
    /// buckets. Those buckets count only such sources' connections, so a source whose SYNs the
    /// program rates is never charged twice.
    pub fn admit(&self, source: IpAddr, now_ns: u64) -> Verdict {
        self.admission().admit(source, now_ns)
    }

    /// The accept-time check as a handle that does not need the shield's lock.
    pub fn admission(&self) -> Admission {
        Admission {
            gate: self.gate.clone(),
            kernel: match &self.enforcement {
                Enforcement::Kernel(program) => Some(program.maps_ref().unrated()),
                Enforcement::Userspace { .. } => None,
            },
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

    /// Verdict counters from wherever the policy is enforced. In kernel mode these are the
    /// program's packet counts plus the connections decided in full at accept (sources the
    /// program marked as unrated).
    pub fn verdict_counts(&self) -> Result<[u64; Verdict::COUNT as usize], MapsError> {
        let gate = self.gate.verdict_counts();
        match &self.enforcement {
            Enforcement::Kernel(program) => {
                let kernel = program.maps_ref().verdict_counts()?;
                Ok(std::array::from_fn(|i| kernel[i] + gate[i]))
            }
            Enforcement::Userspace { .. } => Ok(gate),
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
            let crowdsec = matches!(addr, IpAddr::V4(a) if self.crowdsec_bans.contains_key(&a));
            if !crowdsec && !self.bans.contains_key(&SourceKey::from(addr)) && maps.unban(addr) {
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

/// The kernel entry of a CrowdSec ban: dropped, like every external decision.
fn crowdsec_entry(ban: &CrowdSecBan) -> BanEntry {
    BanEntry::new(ban.expires_ns, BanReason::Operator, BanAction::Drop)
}

/// The one kernel entry for relay's own ban and CrowdSec's on the same address: the later
/// expiry, and the drop action if either drops, so a front-ban never softens a decision of
/// CrowdSec's own (origin `crowdsec`, `cscli`, lists). A decision of origin `relay` next to
/// relay's own ban is that ban coming back from the LAPI (or a sibling relay's ban of the
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
    if cs.origin != crate::crowdsec::ORIGIN {
        entry.action = BanAction::Drop as u32;
    }
    Some(entry)
}

/// The block list prefix a CrowdSec IPv6 address or range is enforced as.
fn crowdsec_prefix(target: &Target) -> Cidr {
    match target {
        Target::Ip(addr) => Cidr(ipnet::IpNet::from(*addr)),
        Target::Range(net) => Cidr(*net),
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

    fn userspace() -> Shield {
        Shield::new(Enforcement::Userspace {
            reason: "test".into(),
        })
    }

    fn set(target: &str, origin: &str, expires_ns: u64) -> Change {
        let target = match target.parse::<IpAddr>() {
            Ok(a) => Target::Ip(a),
            Err(_) => Target::Range(target.parse().expect("test net")),
        };
        Change::Set {
            target,
            entry: crate::crowdsec::decisions::Entry {
                origin: origin.into(),
                expires_ns,
            },
            previous_origin: None,
        }
    }

    fn verdict(shield: &Shield, addr: &str) -> Verdict {
        shield.admit(addr.parse().expect("addr"), 1)
    }

    #[test]
    fn crowdsec_entries_are_enforced_in_userspace_and_never_beat_the_allowlist() {
        let mut shield = userspace();
        shield
            .set_prefixes(
                PrefixList::Allow,
                ListSource::Operator,
                cidrs(&["198.18.9.9"]),
            )
            .expect("allow");
        let (failed, _) = shield.apply_crowdsec(&[
            set("198.18.1.1", "cscli", u64::MAX),
            set("198.18.9.9", "CAPI", u64::MAX),
            set("2001:db8::5", "crowdsec", u64::MAX),
            set("198.18.2.0/24", "cscli", u64::MAX),
        ]);
        assert_eq!(failed, 0);
        assert_eq!(verdict(&shield, "198.18.1.1"), Verdict::Banned);
        assert_eq!(verdict(&shield, "198.18.9.9"), Verdict::Allowlisted);
        assert_eq!(verdict(&shield, "2001:db8::5"), Verdict::BlockedCidr);
        // A v6 address decision is that address only, not its /64.
        assert_eq!(verdict(&shield, "2001:db8::6"), Verdict::Passed);
        assert_eq!(verdict(&shield, "198.18.2.77"), Verdict::BlockedCidr);
        let sources: BTreeSet<String> = shield
            .prefixes(PrefixList::Block)
            .into_iter()
            .map(|(_, s)| s.to_string())
            .collect();
        assert_eq!(
            sources,
            ["crowdsec:crowdsec", "crowdsec:cscli"]
                .into_iter()
                .map(str::to_owned)
                .collect()
        );
        // Ending the decisions lifts them.
        shield.apply_crowdsec(&[
            Change::Remove {
                target: Target::Range("198.18.2.0/24".parse().expect("net")),
                origin: "cscli".into(),
            },
            Change::Remove {
                target: Target::Ip("198.18.1.1".parse().expect("ip")),
                origin: "cscli".into(),
            },
        ]);
        assert_eq!(verdict(&shield, "198.18.2.77"), Verdict::Passed);
        assert_eq!(verdict(&shield, "198.18.1.1"), Verdict::Passed);
    }

    #[test]
    fn operator_and_crowdsec_entries_do_not_remove_each_other() {
        let mut shield = userspace();
        shield
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                cidrs(&["198.18.2.0/24"]),
            )
            .expect("operator");
        shield.apply_crowdsec(&[set("198.18.2.0/24", "cscli", u64::MAX)]);
        // `block rm` of the operator entry: CrowdSec's stays.
        shield
            .set_prefixes(PrefixList::Block, ListSource::Operator, BTreeSet::new())
            .expect("operator rm");
        assert_eq!(verdict(&shield, "198.18.2.1"), Verdict::BlockedCidr);
        shield
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                cidrs(&["198.18.2.0/24"]),
            )
            .expect("operator again");
        shield.apply_crowdsec(&[Change::Remove {
            target: Target::Range("198.18.2.0/24".parse().expect("net")),
            origin: "cscli".into(),
        }]);
        assert_eq!(verdict(&shield, "198.18.2.1"), Verdict::BlockedCidr);

        // Relay's own ban and CrowdSec's on one IPv4 address: lifting one keeps the other.
        let addr: IpAddr = "198.18.1.1".parse().expect("ip");
        shield
            .ban(
                addr,
                BanReason::BadSecret,
                BanAction::Drop,
                Some(Duration::from_secs(60)),
                5,
            )
            .expect("ban");
        shield.apply_crowdsec(&[set("198.18.1.1", "relay", u64::MAX)]);
        assert!(shield.unban(addr).is_some());
        assert_eq!(verdict(&shield, "198.18.1.1"), Verdict::Banned);
        assert_eq!(shield.bans().count(), 0, "relay's own list is empty");
        shield
            .ban(
                addr,
                BanReason::BadSecret,
                BanAction::Drop,
                Some(Duration::from_secs(60)),
                5,
            )
            .expect("ban");
        shield.apply_crowdsec(&[Change::Remove {
            target: Target::Ip(addr),
            origin: "relay".into(),
        }]);
        assert_eq!(verdict(&shield, "198.18.1.1"), Verdict::Banned);
        assert!(shield.crowdsec_ban(addr).is_none());
        shield.unban(addr);
        assert_eq!(verdict(&shield, "198.18.1.1"), Verdict::Passed);
    }

    #[test]
    fn a_front_ban_keeps_its_action_against_its_own_echo_only() {
        let mut shield = userspace();
        let addr: IpAddr = "198.18.1.2".parse().expect("ip");
        shield
            .ban(
                addr,
                BanReason::BadSecret,
                BanAction::Front,
                Some(Duration::from_secs(60)),
                5,
            )
            .expect("ban");
        assert_eq!(verdict(&shield, "198.18.1.2"), Verdict::BannedFronted);
        // Relay's own ban back from the LAPI: still fronted.
        shield.apply_crowdsec(&[set("198.18.1.2", "relay", u64::MAX)]);
        assert_eq!(verdict(&shield, "198.18.1.2"), Verdict::BannedFronted);
        // A decision of CrowdSec's own: dropped while it holds, fronted again after it.
        shield.apply_crowdsec(&[set("198.18.1.2", "cscli", u64::MAX)]);
        assert_eq!(verdict(&shield, "198.18.1.2"), Verdict::Banned);
        shield.apply_crowdsec(&[Change::Remove {
            target: Target::Ip(addr),
            origin: "cscli".into(),
        }]);
        assert_eq!(verdict(&shield, "198.18.1.2"), Verdict::BannedFronted);
        assert_eq!(
            shield.bans().map(|b| b.action).collect::<Vec<_>>(),
            [BanAction::Front]
        );
    }

    #[test]
    fn prefix_bans_drop_or_front_the_whole_prefix_and_lift_cleanly() {
        let mut shield = userspace();
        let v4 = PrefixKey::from("198.18.3.9".parse::<IpAddr>().expect("ip"));
        let v6 = PrefixKey::from("2001:db8:7::1".parse::<IpAddr>().expect("ip"));
        let ttl = Some(Duration::from_secs(60));
        shield
            .ban_prefix(v4, BanReason::BadSecret, BanAction::Drop, ttl, 100)
            .expect("drop ban");
        shield
            .ban_prefix(v6, BanReason::Garbage, BanAction::Front, ttl, 100)
            .expect("front ban");
        // Every address of the prefix, not only the ones that offended.
        assert_eq!(verdict(&shield, "198.18.3.200"), Verdict::BlockedCidr);
        assert_eq!(verdict(&shield, "198.18.4.1"), Verdict::Passed);
        assert_eq!(
            verdict(&shield, "2001:db8:7:ffff::1"),
            Verdict::BannedFronted
        );
        assert_eq!(verdict(&shield, "2001:db8:8::1"), Verdict::Passed);
        // The drop ban is a block list entry of its own source; listed with the bans.
        assert_eq!(
            shield.prefixes(PrefixList::Block),
            vec![(
                "198.18.3.0/24".parse::<Cidr>().expect("cidr"),
                ListSource::Misuse
            )]
        );
        let listed: Vec<String> = shield.bans().map(|b| b.target.to_string()).collect();
        assert_eq!(listed, ["198.18.3.0/24", "2001:db8:7::/48"]);
        // An operator block of the same /24 outlives the ban.
        shield
            .set_prefixes(
                PrefixList::Block,
                ListSource::Operator,
                cidrs(&["198.18.3.0/24"]),
            )
            .expect("operator block");
        assert!(shield.lift(BanTarget::Prefix(v4)).is_some());
        assert_eq!(verdict(&shield, "198.18.3.200"), Verdict::BlockedCidr);
        shield
            .set_prefixes(PrefixList::Block, ListSource::Operator, BTreeSet::new())
            .expect("operator unblock");
        assert_eq!(verdict(&shield, "198.18.3.200"), Verdict::Passed);
        // Lapsed: swept like an address ban.
        let expired = shield.expire_bans(u64::MAX);
        assert_eq!(expired.len(), 1);
        assert_eq!(verdict(&shield, "2001:db8:7::1"), Verdict::Passed);
        assert_eq!(shield.bans().count(), 0);
    }

    #[test]
    fn ban_targets_parse_addresses_and_misuse_prefixes_only() {
        let parse = |s: &str| s.parse::<BanTarget>();
        assert_eq!(
            parse("198.18.0.0/24").map(|t| t.to_string()),
            Ok("198.18.0.0/24".to_owned())
        );
        assert_eq!(
            parse("2001:db8:1:2::/48").map(|t| t.to_string()),
            Ok("2001:db8:1::/48".to_owned())
        );
        assert_eq!(
            parse("::ffff:198.18.0.1"),
            Ok(BanTarget::Addr("198.18.0.1".parse().expect("ip")))
        );
        assert!(parse("198.18.0.0/16").is_err());
        assert!(parse("2001:db8::/64").is_err());
        assert!(parse("banana").is_err());
    }
}
