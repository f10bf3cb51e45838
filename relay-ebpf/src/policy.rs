//! The maps, and the decision over them: allowlist, bans, blocked CIDRs, then the
//! new-connection limiter, in the order of [`relay_common::decide`], which the userspace gate
//! shares. A drop-ban drops everything; a front-ban passes the source's traffic (userspace
//! fronts its connections) and gives its bare SYNs a small budget of their own.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use aya_log_ebpf::warn;
use relay_common::{
    BanEntry, Budget, Lookups, Room, StateBudget, TokenBucket, Verdict, XdpConfig,
    maps::{
        LISTEN_PORT_SLOTS, MAX_ALLOW_ENTRIES, MAX_BANS, MAX_BLOCK_ENTRIES, MAX_LIMITER_ENTRIES,
        MAX_UNRATED_ENTRIES, V6_LIMIT_PREFIX_BYTES,
    },
};

use crate::parse::{Segment, Source};

// IPv4 keys are the address's network-order bytes held as one `u32` (see `Source`): the same
// bytes as userspace's `[u8; 4]`, written with one store.
#[map]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
/// The listen ports, a byte per port ([`relay_common::maps::LISTEN_PORTS`]): a global, so
/// checking a port is one load from a known address. Userspace writes it; the program only
/// reads it.
#[unsafe(no_mangle)]
static mut LISTEN_PORTS: [u8; LISTEN_PORT_SLOTS] = [0; LISTEN_PORT_SLOTS];
#[map]
static ALLOW_V4: LpmTrie<u32, u8> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);
#[map]
static BLOCK_V4: LpmTrie<u32, u8> = LpmTrie::with_max_entries(MAX_BLOCK_ENTRIES, 0);
#[map]
static BLOCK_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_BLOCK_ENTRIES, 0);
// Plain hash maps: bans are owned by userspace and must never be evicted by traffic.
#[map]
static BANS_V4: HashMap<u32, BanEntry> = HashMap::with_max_entries(MAX_BANS, 0);
#[map]
static BANS_V6: HashMap<[u8; V6_LIMIT_PREFIX_BYTES], BanEntry> =
    HashMap::with_max_entries(MAX_BANS, 0);
#[map]
static SYN_V4: LruHashMap<u32, TokenBucket> = LruHashMap::with_max_entries(MAX_LIMITER_ENTRIES, 0);
#[map]
static SYN_V6: LruHashMap<[u8; V6_LIMIT_PREFIX_BYTES], TokenBucket> =
    LruHashMap::with_max_entries(MAX_LIMITER_ENTRIES, 0);
// No state budget for these: only banned sources get an entry, and userspace bounds those.
#[map]
static BAN_SYN_V4: LruHashMap<u32, TokenBucket> = LruHashMap::with_max_entries(MAX_BANS, 0);
#[map]
static BAN_SYN_V6: LruHashMap<[u8; V6_LIMIT_PREFIX_BYTES], TokenBucket> =
    LruHashMap::with_max_entries(MAX_BANS, 0);
// Plain hash maps: a flood cannot evict a mark; userspace removes old ones.
#[map]
static UNRATED_V4: HashMap<u32, u64> = HashMap::with_max_entries(MAX_UNRATED_ENTRIES, 0);
#[map]
static UNRATED_V6: HashMap<[u8; V6_LIMIT_PREFIX_BYTES], u64> =
    HashMap::with_max_entries(MAX_UNRATED_ENTRIES, 0);
#[map]
static UNRATED_ANY: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static STATE_BUDGET: PerCpuArray<StateBudget> = PerCpuArray::with_max_entries(1, 0);
#[map]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Adds one to the verdict's per-CPU counter.
#[inline(always)]
pub fn count(verdict: Verdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, and XDP programs are not preempted on their CPU.
        unsafe { *counter += 1 };
    }
}

/// Marks the source of a packet passed without rating (it may carry or complete a SYN the
/// limiter never saw), so userspace limits the source's connections at accept. With the mark
/// map full, marks every source instead.
#[inline(always)]
pub fn note_unrated(source: &Source) {
    let now = now();
    let marked = match source {
        Source::V4(addr) => mark(&UNRATED_V4, addr, now),
        Source::V6(addr) => {
            let mut prefix = [0u8; V6_LIMIT_PREFIX_BYTES];
            prefix.copy_from_slice(&addr[..V6_LIMIT_PREFIX_BYTES]);
            mark(&UNRATED_V6, &prefix, now)
        }
    };
    if !marked {
        mark_all(now);
    }
}

/// A packet passed without rating and without a source to mark: marks every source.
#[inline(always)]
pub fn note_unattributed() {
    mark_all(now());
}

#[inline(always)]
fn mark_all(now: u64) {
    if let Some(any) = UNRATED_ANY.get_ptr_mut(0) {
        // SAFETY: a pointer into the array value; racing writers all store a current time.
        unsafe { *any = now };
    }
}

/// Stores `now` as `key`'s mark; false if the map has no room for a new key.
#[inline(always)]
fn mark<K>(marks: &HashMap<K, u64>, key: &K, now: u64) -> bool {
    if let Some(at) = marks.get_ptr_mut(key) {
        // SAFETY: a pointer into the map value; racing writers all store a current time.
        unsafe { *at = now };
        return true;
    }
    marks.insert(key, now, 0).is_ok()
}

/// Decides the fate of a TCP segment to a listen port ([`listening`]): the decision order
/// shared with userspace ([`relay_common::decide`]) over this source's map entries.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, segment: &Segment) -> Verdict {
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Passed;
    };
    let bare_syn = segment.syn && !segment.ack;
    // An empty allowlist is not looked up (see `XdpConfig::FLAG_ALLOW_V4`).
    let allows = |flag| config.flags & flag != 0;
    match &segment.source {
        Source::V4(addr) => {
            let mut lookups = MapLookups {
                ctx,
                prefix: Key::new(32, *addr),
                key: *addr,
                allow: &ALLOW_V4,
                allow_any: allows(XdpConfig::FLAG_ALLOW_V4),
                block: &BLOCK_V4,
                bans: &BANS_V4,
                syn: &SYN_V4,
                banned_syn: &BAN_SYN_V4,
            };
            relay_common::decide(&mut lookups, bare_syn, Some(config))
        }
        Source::V6(addr) => {
            let mut prefix = [0u8; V6_LIMIT_PREFIX_BYTES];
            prefix.copy_from_slice(&addr[..V6_LIMIT_PREFIX_BYTES]);
            let mut lookups = MapLookups {
                ctx,
                prefix: Key::new(128, *addr),
                key: prefix,
                allow: &ALLOW_V6,
                allow_any: allows(XdpConfig::FLAG_ALLOW_V6),
                block: &BLOCK_V6,
                bans: &BANS_V6,
                syn: &SYN_V6,
                banned_syn: &BAN_SYN_V6,
            };
            relay_common::decide(&mut lookups, bare_syn, Some(config))
        }
    }
}

/// Whether `port` is one of the relay's listen ports.
#[inline(always)]
pub fn listening(port: u16) -> bool {
    // Volatile: nothing in the program writes the set, so a plain read could be folded to its
    // initial zero.
    // SAFETY: in bounds (a `u16` index into 65,536 bytes); a read racing userspace's write
    // sees the old or the new byte.
    unsafe {
        core::ptr::read_volatile(
            (&raw const LISTEN_PORTS)
                .cast::<u8>()
                .add(usize::from(port)),
        ) != 0
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions; CLOCK_MONOTONIC, the clock userspace uses for ban expiry.
    unsafe { bpf_ktime_get_ns() }
}

/// One source's entries in the maps of its address family: `A` is the full address (the
/// tries' key), `K` the ban and limiter key (IPv4 address, IPv6 /64).
struct MapLookups<'a, C, A: 'static, K: 'static> {
    ctx: &'a C,
    prefix: Key<A>,
    key: K,
    allow: &'static LpmTrie<A, u8>,
    /// Whether `allow` may hold entries (a flag, not an `Option` of the map: the verifier
    /// refuses the branchless select LLVM makes of the latter).
    allow_any: bool,
    block: &'static LpmTrie<A, u8>,
    bans: &'static HashMap<K, BanEntry>,
    syn: &'static LruHashMap<K, TokenBucket>,
    banned_syn: &'static LruHashMap<K, TokenBucket>,
}

impl<C: EbpfContext, A, K> Lookups for MapLookups<'_, C, A, K> {
    #[inline(always)]
    fn now_ns(&mut self) -> u64 {
        now()
    }

    #[inline(always)]
    fn allowlisted(&mut self) -> bool {
        self.allow_any && self.allow.get(&self.prefix).is_some()
    }

    #[inline(always)]
    fn ban(&mut self) -> Option<BanEntry> {
        // SAFETY: a pointer into the map value; a concurrent delete at worst yields a stale
        // entry for this one packet.
        self.bans.get_ptr(&self.key).map(|ban| unsafe { *ban })
    }

    #[inline(always)]
    fn blocked(&mut self) -> bool {
        self.block.get(&self.prefix).is_some()
    }

    #[inline(always)]
    fn bucket(&mut self, budget: Budget) -> Option<&mut TokenBucket> {
        let buckets = match budget {
            Budget::Syn => self.syn,
            Budget::Banned => self.banned_syn,
        };
        // SAFETY: a pointer into the shared LRU value. Two CPUs racing on one source may both
        // spend the last token; for a SYN limit that is harmless.
        buckets
            .get_ptr_mut(&self.key)
            .map(|bucket| unsafe { &mut *bucket })
    }

    #[inline(always)]
    fn insert_bucket(&mut self, budget: Budget, bucket: TokenBucket) {
        let buckets = match budget {
            Budget::Syn => self.syn,
            Budget::Banned => self.banned_syn,
        };
        // Another CPU may have inserted the same source meanwhile; its bucket wins.
        let _ = buckets.insert(&self.key, bucket, BPF_NOEXIST as u64);
    }

    #[inline(always)]
    fn room(&mut self, now_ns: u64, per_sec: u32) -> Room {
        let Some(budget) = STATE_BUDGET.get_ptr_mut(0) else {
            return Room::Unknown;
        };
        // SAFETY: per-CPU slot, not preempted.
        let budget = unsafe { &mut *budget };
        if budget.try_create(now_ns, per_sec) {
            return Room::Granted;
        }
        if budget.suppressed == 1 {
            warn!(
                self.ctx,
                "new-connection state budget of {} per second spent on this CPU: unknown sources pass without limiter state until the window ends",
                per_sec
            );
        }
        Room::Refused
    }
}
