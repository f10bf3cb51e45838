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

/// The policy and where it is enforced.
pub struct Shield {
    enforcement: Enforcement,
    gate: Gate,
    allow: BTreeSet<Cidr>,
    block: BTreeSet<Cidr>,
    bans: BTreeMap<SourceKey, BanRecord>,
}

impl Shield {
    /// A shield enforcing through `enforcement`, with empty lists.
    pub fn new(enforcement: Enforcement) -> Self {
        Shield {
            enforcement,
            gate: Gate::default(),
            allow: BTreeSet::new(),
            block: BTreeSet::new(),
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
        let allow: BTreeSet<Cidr> = config.allowlist.cidrs.iter().copied().collect();
        let block: BTreeSet<Cidr> = config.blocklist.cidrs.iter().copied().collect();
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            let maps = program.maps();
            maps.set_config(xdp_config)?;
            maps.set_ports(&config.listen_ports())?;
            sync_prefixes(maps, PrefixList::Allow, &self.allow, &allow)?;
            sync_prefixes(maps, PrefixList::Block, &self.block, &block)?;
        }
        // The gate holds the lists in both modes: see `admit`.
        self.gate.set_config(xdp_config);
        self.gate.set_allow(prefix_set(&allow));
        self.gate.set_block(prefix_set(&block));
        self.allow = allow;
        self.block = block;
        Ok(())
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

    /// Verdict counters from wherever the policy is enforced.
    pub fn verdict_counts(&self) -> Result<[u64; Verdict::COUNT as usize], MapsError> {
        match &self.enforcement {
            Enforcement::Kernel(program) => program.maps_ref().verdict_counts(),
            Enforcement::Userspace { .. } => Ok(self.gate.verdict_counts()),
        }
    }

    /// Detaches XDP, if attached.
    pub fn shutdown(&mut self) {
        if let Enforcement::Kernel(program) = &mut self.enforcement {
            program.detach_all();
        }
    }
}

fn prefix_set(cidrs: &BTreeSet<Cidr>) -> PrefixSet {
    let mut set = PrefixSet::default();
    for c in cidrs {
        set.insert(c.0);
    }
    set
}

/// Applies the difference between two versions of a list to the kernel maps.
fn sync_prefixes(
    maps: &mut crate::xdp::XdpMaps,
    list: PrefixList,
    old: &BTreeSet<Cidr>,
    new: &BTreeSet<Cidr>,
) -> Result<(), MapsError> {
    for cidr in new.difference(old) {
        maps.insert_prefix(list, cidr.0)?;
    }
    for cidr in old.difference(new) {
        maps.remove_prefix(list, cidr.0);
    }
    Ok(())
}
