//! Typed access to the XDP program's maps: the only place that knows their key layouts.

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use ipnet::IpNet;
use relay_common::{BanEntry, PrefixList, TokenBucket, Verdict, XdpConfig, maps as names};

use super::unrated::UnratedMarks;

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The object lacks a map this version of relay-ctl expects.
    #[error("eBPF object has no usable map {name}: {source}")]
    Missing {
        /// Map name.
        name: &'static str,
        /// The underlying error.
        #[source]
        source: MapError,
    },
    /// A map has no room left for another entry.
    #[error("{what} map is full ({capacity} entries); entry {entry} not added")]
    Full {
        /// Which list.
        what: &'static str,
        /// Its capacity.
        capacity: u32,
        /// The entry that did not fit.
        entry: String,
    },
    /// The kernel refused an update for another reason.
    #[error("updating the {what} map failed for {entry}: {source}")]
    Update {
        /// Which list.
        what: &'static str,
        /// The entry.
        entry: String,
        /// The underlying error.
        #[source]
        source: MapError,
    },
}

/// Handles on the maps userspace writes or reads.
pub struct XdpMaps {
    config: Array<MapData, XdpConfig>,
    /// The tunables last written, without the allowlist flags.
    tunables: XdpConfig,
    /// `XdpConfig::FLAG_ALLOW_*` for the allowlists that may hold entries.
    allow_flags: u32,
    ports: Array<MapData, [u8; names::LISTEN_PORT_SLOTS]>,
    allow_v4: LpmTrie<MapData, [u8; 4], u8>,
    allow_v6: LpmTrie<MapData, [u8; 16], u8>,
    block_v4: LpmTrie<MapData, [u8; 4], u8>,
    block_v6: LpmTrie<MapData, [u8; 16], u8>,
    bans_v4: HashMap<MapData, [u8; 4], BanEntry>,
    bans_v6: HashMap<MapData, [u8; names::V6_LIMIT_PREFIX_BYTES], BanEntry>,
    verdicts: PerCpuArray<MapData, u64>,
    syn_v4: HashMap<MapData, [u8; 4], TokenBucket>,
    syn_v6: HashMap<MapData, [u8; names::V6_LIMIT_PREFIX_BYTES], TokenBucket>,
    ban_syn_v4: HashMap<MapData, [u8; 4], TokenBucket>,
    ban_syn_v6: HashMap<MapData, [u8; names::V6_LIMIT_PREFIX_BYTES], TokenBucket>,
    unrated: Arc<RwLock<UnratedMarks>>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, MapsError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(MapsError::Missing {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    T::try_from(map).map_err(|source| MapsError::Missing { name, source })
}

/// The name of a list in errors.
fn list_name(list: PrefixList) -> &'static str {
    match list {
        PrefixList::Allow => "allowlist",
        PrefixList::Block => "blocklist",
    }
}

/// The capacity of a list's tries.
fn list_capacity(list: PrefixList) -> u32 {
    match list {
        PrefixList::Allow => names::MAX_ALLOW_ENTRIES,
        PrefixList::Block => names::MAX_BLOCK_ENTRIES,
    }
}

impl XdpMaps {
    /// Takes ownership of the maps out of a loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let config: Array<MapData, XdpConfig> = take(ebpf, names::CONFIG)?;
        // Pinned maps carry the previous run's tunables and allowlists over.
        let tunables = config.get(&0, 0).unwrap_or(XdpConfig {
            syn_rate_per_sec: 0,
            syn_burst: 0,
            new_state_per_cpu_per_sec: 0,
            flags: 0,
            banned_syn_rate_per_sec: 0,
            banned_syn_burst: 0,
        });
        let mut maps = XdpMaps {
            config,
            tunables,
            allow_flags: 0,
            ports: take(ebpf, names::LISTEN_PORTS)?,
            allow_v4: take(ebpf, names::ALLOW_V4)?,
            allow_v6: take(ebpf, names::ALLOW_V6)?,
            block_v4: take(ebpf, names::BLOCK_V4)?,
            block_v6: take(ebpf, names::BLOCK_V6)?,
            bans_v4: take(ebpf, names::BANS_V4)?,
            bans_v6: take(ebpf, names::BANS_V6)?,
            verdicts: take(ebpf, names::VERDICTS)?,
            syn_v4: take(ebpf, names::SYN_V4)?,
            syn_v6: take(ebpf, names::SYN_V6)?,
            ban_syn_v4: take(ebpf, names::BAN_SYN_V4)?,
            ban_syn_v6: take(ebpf, names::BAN_SYN_V6)?,
            unrated: Arc::new(RwLock::new(UnratedMarks {
                v4: take(ebpf, names::UNRATED_V4)?,
                v6: take(ebpf, names::UNRATED_V6)?,
                any: take(ebpf, names::UNRATED_ANY)?,
            })),
        };
        maps.allow_flags = maps.allow_flags_now();
        maps.write_config()?;
        Ok(maps)
    }

    /// Writes the tunables (the allowlist flags are this type's to keep).
    pub fn set_config(&mut self, config: XdpConfig) -> Result<(), MapsError> {
        self.tunables = config;
        self.write_config()
    }

    /// The configuration the program reads now (from its map).
    pub fn config(&self) -> Result<XdpConfig, MapError> {
        self.config.get(&0, 0)
    }

    fn write_config(&mut self) -> Result<(), MapsError> {
        let flags = (self.tunables.flags & !XdpConfig::ALLOW_FLAGS) | self.allow_flags;
        let config = XdpConfig {
            flags,
            ..self.tunables
        };
        self.config
            .set(0, config, 0)
            .map_err(|source| MapsError::Update {
                what: "config",
                entry: "0".to_owned(),
                source,
            })
    }

    /// The allowlist flags the tries' contents call for now.
    fn allow_flags_now(&self) -> u32 {
        let mut flags = 0;
        if self.allow_v4.keys().next().is_some() {
            flags |= XdpConfig::FLAG_ALLOW_V4;
        }
        if self.allow_v6.keys().next().is_some() {
            flags |= XdpConfig::FLAG_ALLOW_V6;
        }
        flags
    }

    /// Sets `flag` (before an entry goes in: the program never skips a filled allowlist).
    fn raise_allow_flag(&mut self, flag: u32) -> Result<(), MapsError> {
        if self.allow_flags & flag == 0 {
            self.allow_flags |= flag;
            self.write_config()?;
        }
        Ok(())
    }

    /// Clears the flags of allowlists left empty (after a removal).
    fn settle_allow_flags(&mut self) {
        let now = self.allow_flags_now();
        if now != self.allow_flags {
            self.allow_flags = now;
            if let Err(e) = self.write_config() {
                // A flag left set costs one lookup per packet, nothing else.
                tracing::debug!("allowlist flags not updated: {e}");
            }
        }
    }

    /// Makes `ports` the exact set of ports the program acts on, in one write: a port listened
    /// on before and after stays set throughout.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), MapsError> {
        // Boxed: 64 KiB is a lot for a runtime thread's stack.
        let mut set = Box::new([0u8; names::LISTEN_PORT_SLOTS]);
        for port in ports {
            set[usize::from(*port)] = 1;
        }
        let set: &[u8; names::LISTEN_PORT_SLOTS] = &set;
        self.ports
            .set(0, set, 0)
            .map_err(|source| MapsError::Update {
                what: "listen ports",
                entry: format!("{ports:?}"),
                source,
            })
    }

    /// Adds a prefix to a list.
    pub fn insert_prefix(&mut self, list: PrefixList, net: IpNet) -> Result<(), MapsError> {
        if list == PrefixList::Allow {
            self.raise_allow_flag(match net {
                IpNet::V4(_) => XdpConfig::FLAG_ALLOW_V4,
                IpNet::V6(_) => XdpConfig::FLAG_ALLOW_V6,
            })?;
        }
        let (v4, v6) = self.tries(list);
        let result = match net {
            IpNet::V4(n) => v4.insert(&Key::new(n.prefix_len().into(), n.network().octets()), 1, 0),
            IpNet::V6(n) => v6.insert(&Key::new(n.prefix_len().into(), n.network().octets()), 1, 0),
        };
        result.map_err(|source| {
            full_or_update(
                list_name(list),
                list_capacity(list),
                net.to_string(),
                source,
            )
        })
    }

    /// Removes a prefix from a list; returns whether it was there.
    pub fn remove_prefix(&mut self, list: PrefixList, net: IpNet) -> bool {
        let (v4, v6) = self.tries(list);
        let removed = match net {
            IpNet::V4(n) => v4
                .remove(&Key::new(n.prefix_len().into(), n.network().octets()))
                .is_ok(),
            IpNet::V6(n) => v6
                .remove(&Key::new(n.prefix_len().into(), n.network().octets()))
                .is_ok(),
        };
        if removed && list == PrefixList::Allow {
            self.settle_allow_flags();
        }
        removed
    }

    #[expect(clippy::type_complexity, reason = "a pair of the two families' tries")]
    fn tries(
        &mut self,
        list: PrefixList,
    ) -> (
        &mut LpmTrie<MapData, [u8; 4], u8>,
        &mut LpmTrie<MapData, [u8; 16], u8>,
    ) {
        match list {
            PrefixList::Allow => (&mut self.allow_v4, &mut self.allow_v6),
            PrefixList::Block => (&mut self.block_v4, &mut self.block_v6),
        }
    }

    /// Every prefix in `list`. Pinned maps carry entries over from the previous run; this is
    /// how the stale ones are found.
    pub fn prefixes(&self, list: PrefixList) -> Vec<IpNet> {
        let (v4, v6) = match list {
            PrefixList::Allow => (&self.allow_v4, &self.allow_v6),
            PrefixList::Block => (&self.block_v4, &self.block_v6),
        };
        let v4 = v4.keys().filter_map(Result::ok).filter_map(|k| {
            ipnet::Ipv4Net::new(k.data().into(), u8::try_from(k.prefix_len()).ok()?)
                .ok()
                .map(IpNet::V4)
        });
        let v6 = v6.keys().filter_map(Result::ok).filter_map(|k| {
            ipnet::Ipv6Net::new(k.data().into(), u8::try_from(k.prefix_len()).ok()?)
                .ok()
                .map(IpNet::V6)
        });
        v4.chain(v6).collect()
    }

    /// Every banned source: IPv4 addresses, and IPv6 /64s as their first address.
    pub fn banned(&self) -> Vec<IpAddr> {
        let v4 = self.bans_v4.keys().filter_map(Result::ok).map(IpAddr::from);
        let v6 = self.bans_v6.keys().filter_map(Result::ok).map(|k| {
            let mut octets = [0u8; 16];
            octets[..names::V6_LIMIT_PREFIX_BYTES].copy_from_slice(&k);
            IpAddr::from(octets)
        });
        v4.chain(v6).collect()
    }

    /// Adds or replaces a ban: the exact IPv4 address, or the IPv6 address's /64.
    pub fn ban(&mut self, addr: IpAddr, entry: BanEntry) -> Result<(), MapsError> {
        let result = match addr.to_canonical() {
            IpAddr::V4(a) => self.bans_v4.insert(a.octets(), entry, 0),
            IpAddr::V6(a) => self.bans_v6.insert(v6_prefix(a), entry, 0),
        };
        result.map_err(|source| full_or_update("ban", names::MAX_BANS, addr.to_string(), source))
    }

    /// Lifts a ban; returns whether there was one.
    pub fn unban(&mut self, addr: IpAddr) -> bool {
        match addr.to_canonical() {
            IpAddr::V4(a) => self.bans_v4.remove(&a.octets()).is_ok(),
            IpAddr::V6(a) => self.bans_v6.remove(&v6_prefix(a)).is_ok(),
        }
    }

    /// Removes limiter buckets (front-banned sources' too) idle for `idle_ns` (full again, so
    /// forgetting them changes no decision), and unrated marks past their window. The kernel only evicts LRU entries when the map is
    /// full; this keeps a source address in kernel memory no longer than its limiter needs it.
    /// Returns how many went.
    pub fn forget_idle_limiter_state(&mut self, now_ns: u64, idle_ns: u64) -> usize {
        forget_idle(&mut self.syn_v4, now_ns, idle_ns)
            + forget_idle(&mut self.syn_v6, now_ns, idle_ns)
            + forget_idle(&mut self.ban_syn_v4, now_ns, idle_ns)
            + forget_idle(&mut self.ban_syn_v6, now_ns, idle_ns)
            + self
                .unrated
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .forget_old(now_ns)
    }

    /// The marks of sources the program passed without rating, shared with the accept path.
    pub fn unrated(&self) -> Arc<RwLock<UnratedMarks>> {
        self.unrated.clone()
    }

    /// Verdict counters summed over CPUs, indexed by [`Verdict`].
    pub fn verdict_counts(&self) -> Result<[u64; Verdict::COUNT as usize], MapsError> {
        let mut out = [0u64; Verdict::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu =
                self.verdicts
                    .get(&(i as u32), 0)
                    .map_err(|source| MapsError::Update {
                        what: "verdict counter",
                        entry: i.to_string(),
                        source,
                    })?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// Removes the buckets of `map` idle for `idle_ns`; returns how many went.
fn forget_idle<K: aya::Pod>(
    map: &mut HashMap<MapData, K, TokenBucket>,
    now_ns: u64,
    idle_ns: u64,
) -> usize {
    let stale: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, b)| now_ns.saturating_sub(b.last_ns) >= idle_ns)
        .map(|(k, _)| k)
        .collect();
    // Entries the LRU evicted meanwhile are already gone: not an error.
    stale.iter().filter(|k| map.remove(k).is_ok()).count()
}

/// The /64 an IPv6 ban applies to.
fn v6_prefix(addr: std::net::Ipv6Addr) -> [u8; names::V6_LIMIT_PREFIX_BYTES] {
    let mut prefix = [0u8; names::V6_LIMIT_PREFIX_BYTES];
    prefix.copy_from_slice(&addr.octets()[..names::V6_LIMIT_PREFIX_BYTES]);
    prefix
}

/// E2BIG (hash maps) and ENOSPC (LPM tries) mean the map is full.
fn full_or_update(what: &'static str, capacity: u32, entry: String, source: MapError) -> MapsError {
    if let MapError::SyscallError(e) = &source
        && matches!(
            e.io_error.raw_os_error(),
            Some(libc::E2BIG) | Some(libc::ENOSPC)
        )
    {
        return MapsError::Full {
            what,
            capacity,
            entry,
        };
    }
    MapsError::Update {
        what,
        entry,
        source,
    }
}
