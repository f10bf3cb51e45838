//! The maps and the decision: allowlist, bans, blocked CIDRs, then the new-connection limiter.
//! A drop-ban drops everything; a front-ban passes the source's traffic (userspace fronts its
//! connections) and gives its bare SYNs a small budget of their own.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use aya_log_ebpf::warn;
use relay_common::{
    BanEntry, StateBudget, TokenBucket, Verdict, XdpConfig,
    maps::{
        MAX_ALLOW_ENTRIES, MAX_BANS, MAX_BLOCK_ENTRIES, MAX_LIMITER_ENTRIES, MAX_LISTEN_PORTS,
        MAX_UNRATED_ENTRIES, V6_LIMIT_PREFIX_BYTES,
    },
};

use crate::parse::{Segment, Source};

#[map]
static CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map]
static LISTEN_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_LISTEN_PORTS, 0);
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_ALLOW_ENTRIES, 0);
#[map]
static BLOCK_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_BLOCK_ENTRIES, 0);
#[map]
static BLOCK_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_BLOCK_ENTRIES, 0);
// Plain hash maps: bans are owned by userspace and must never be evicted by traffic.
#[map]
static BANS_V4: HashMap<[u8; 4], BanEntry> = HashMap::with_max_entries(MAX_BANS, 0);
#[map]
static BANS_V6: HashMap<[u8; V6_LIMIT_PREFIX_BYTES], BanEntry> =
    HashMap::with_max_entries(MAX_BANS, 0);
#[map]
static SYN_V4: LruHashMap<[u8; 4], TokenBucket> =
    LruHashMap::with_max_entries(MAX_LIMITER_ENTRIES, 0);
#[map]
static SYN_V6: LruHashMap<[u8; V6_LIMIT_PREFIX_BYTES], TokenBucket> =
    LruHashMap::with_max_entries(MAX_LIMITER_ENTRIES, 0);
// No state budget for these: only banned sources get an entry, and userspace bounds those.
#[map]
static BAN_SYN_V4: LruHashMap<[u8; 4], TokenBucket> = LruHashMap::with_max_entries(MAX_BANS, 0);
#[map]
static BAN_SYN_V6: LruHashMap<[u8; V6_LIMIT_PREFIX_BYTES], TokenBucket> =
    LruHashMap::with_max_entries(MAX_BANS, 0);
// Plain hash maps: a flood cannot evict a mark; userspace removes old ones.
#[map]
static UNRATED_V4: HashMap<[u8; 4], u64> = HashMap::with_max_entries(MAX_UNRATED_ENTRIES, 0);
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

/// Decides the fate of a TCP segment.
#[inline(always)]
pub fn decide<C: EbpfContext>(ctx: &C, segment: &Segment) -> Verdict {
    if LISTEN_PORTS.get_ptr(segment.dst_port).is_none() {
        return Verdict::NotOurs;
    }
    let Some(config) = CONFIG.get(0) else {
        return Verdict::Passed;
    };
    let bare_syn = segment.syn && !segment.ack;
    match &segment.source {
        Source::V4(addr) => {
            if ALLOW_V4.get(Key::new(32, *addr)).is_some() {
                return Verdict::Allowlisted;
            }
            if let Some(ban) = BANS_V4.get_ptr(addr) {
                // SAFETY: a pointer into the map value; a concurrent delete at worst yields a
                // stale entry for this one packet.
                let ban = unsafe { *ban };
                if ban.active_at(now()) {
                    if !ban.fronts() {
                        return Verdict::Banned;
                    }
                    // A blocked CIDR drops a front-banned source all the same.
                    if BLOCK_V4.get(Key::new(32, *addr)).is_some() {
                        return Verdict::BlockedCidr;
                    }
                    return front_banned(bare_syn, &BAN_SYN_V4, addr, config);
                }
            }
            if BLOCK_V4.get(Key::new(32, *addr)).is_some() {
                return Verdict::BlockedCidr;
            }
            if bare_syn && config.syn_limit_enabled() {
                return limit(ctx, &SYN_V4, addr, config);
            }
        }
        Source::V6(addr) => {
            if ALLOW_V6.get(Key::new(128, *addr)).is_some() {
                return Verdict::Allowlisted;
            }
            let mut prefix = [0u8; V6_LIMIT_PREFIX_BYTES];
            prefix.copy_from_slice(&addr[..V6_LIMIT_PREFIX_BYTES]);
            if let Some(ban) = BANS_V6.get_ptr(&prefix) {
                // SAFETY: as above.
                let ban = unsafe { *ban };
                if ban.active_at(now()) {
                    if !ban.fronts() {
                        return Verdict::Banned;
                    }
                    // A blocked CIDR drops a front-banned source all the same.
                    if BLOCK_V6.get(Key::new(128, *addr)).is_some() {
                        return Verdict::BlockedCidr;
                    }
                    return front_banned(bare_syn, &BAN_SYN_V6, &prefix, config);
                }
            }
            if BLOCK_V6.get(Key::new(128, *addr)).is_some() {
                return Verdict::BlockedCidr;
            }
            if bare_syn && config.syn_limit_enabled() {
                return limit(ctx, &SYN_V6, &prefix, config);
            }
        }
    }
    Verdict::Passed
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions; CLOCK_MONOTONIC, the clock userspace uses for ban expiry.
    unsafe { bpf_ktime_get_ns() }
}

/// A front-banned source: everything passes but bare SYNs over its banned budget.
#[inline(always)]
fn front_banned<K>(
    bare_syn: bool,
    buckets: &LruHashMap<K, TokenBucket>,
    key: &K,
    config: &XdpConfig,
) -> Verdict {
    if !bare_syn {
        return Verdict::BannedFronted;
    }
    let now = now();
    let admitted = match buckets.get_ptr_mut(key) {
        // SAFETY: a pointer into the shared LRU value; a race spends a token twice at worst.
        Some(bucket) => unsafe {
            (*bucket).try_take(now, config.banned_syn_rate_per_sec, config.banned_syn_burst)
        },
        None => {
            let bucket = TokenBucket::first_event(now, config.banned_syn_burst);
            let _ = buckets.insert(key, bucket, BPF_NOEXIST as u64);
            true
        }
    };
    if admitted {
        Verdict::BannedFronted
    } else {
        Verdict::BannedSynLimited
    }
}

/// Spends one of the source's tokens, creating its bucket within the per-CPU state budget.
#[inline(always)]
fn limit<C: EbpfContext, K>(
    ctx: &C,
    buckets: &LruHashMap<K, TokenBucket>,
    key: &K,
    config: &XdpConfig,
) -> Verdict {
    let now = now();
    if let Some(bucket) = buckets.get_ptr_mut(key) {
        // SAFETY: a pointer into the shared LRU value. Two CPUs racing on one source may both
        // spend the last token; for a SYN limit that is harmless.
        let admitted =
            unsafe { (*bucket).try_take(now, config.syn_rate_per_sec, config.syn_burst) };
        return if admitted {
            Verdict::Passed
        } else {
            Verdict::SynRateLimited
        };
    }
    let Some(budget) = STATE_BUDGET.get_ptr_mut(0) else {
        return Verdict::Passed;
    };
    // SAFETY: per-CPU slot, not preempted.
    let budget = unsafe { &mut *budget };
    if !budget.try_create(now, config.new_state_per_cpu_per_sec) {
        if budget.suppressed == 1 {
            warn!(
                ctx,
                "new-connection state budget of {} per second spent on this CPU: unknown sources pass without limiter state until the window ends",
                config.new_state_per_cpu_per_sec
            );
        }
        return Verdict::StateSuppressed;
    }
    let bucket = TokenBucket::first_event(now, config.syn_burst);
    // Another CPU may have inserted the same source meanwhile; its bucket wins.
    let _ = buckets.insert(key, bucket, BPF_NOEXIST as u64);
    Verdict::Passed
}
