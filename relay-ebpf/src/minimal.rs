//! A minimal XDP program for the benchmark only, never loaded by relay: the same lookups as
//! relay's verdict on an IPv4 TCP segment, in the same order, and nothing else. Parse
//! Ethernet, IPv4 and TCP; compare the destination port with one constant; look the source up
//! in a blocked-prefix LPM trie, then in a ban hash; spend a token of the source's bucket for a
//! bare SYN; count the verdict in a per-CPU array. Its cost per packet is the floor relay's
//! program is measured against (`cargo xtask bench`, group `xdp-verdict`). It shares no code
//! with relay's program (`main.rs`) beyond relay-common's types.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use relay_common::{BanEntry, TokenBucket, Verdict};

/// The one listen port; the bench sends its listen-port packets here.
const LISTEN_PORT: u16 = 443;
/// Limiter settings, as constants: the bench gives relay the same ones in its `CONFIG` map.
const SYN_RATE_PER_SEC: u32 = 1_000_000;
const SYN_BURST: u32 = 1_000_000;

const ETH_HLEN: usize = 14;
const IPV4_MIN_HLEN: usize = 20;
const TCP_MIN_HLEN: usize = 20;

// Keys are the address's network-order bytes, as in relay's maps, held as one `u32` so that
// each key is written to the stack with a single store.
#[map]
static BLOCK_V4: LpmTrie<u32, u8> = LpmTrie::with_max_entries(262_144, 0);
#[map]
static BANS_V4: HashMap<u32, BanEntry> = HashMap::with_max_entries(131_072, 0);
#[map]
static SYN_V4: LruHashMap<u32, TokenBucket> = LruHashMap::with_max_entries(131_072, 0);
#[map]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

/// Reads `N` bytes at `offset` of the frame, or `None` past its end.
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    if ctx.data() + offset + N > ctx.data_end() {
        return None;
    }
    // SAFETY: the range lies inside the packet, as checked.
    Some(unsafe { core::ptr::read_unaligned((ctx.data() + offset) as *const [u8; N]) })
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn decide(ctx: &XdpContext) -> Verdict {
    let Some(eth) = read::<ETH_HLEN>(ctx, 0) else {
        return Verdict::Unparsed;
    };
    if eth[12] != 0x08 || eth[13] != 0x00 {
        return Verdict::NotOurs;
    }
    let Some(ip) = read::<IPV4_MIN_HLEN>(ctx, ETH_HLEN) else {
        return Verdict::Unparsed;
    };
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[9] != 6 || ihl < IPV4_MIN_HLEN || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return Verdict::NotOurs;
    }
    let Some(tcp) = read::<TCP_MIN_HLEN>(ctx, ETH_HLEN + ihl) else {
        return Verdict::Unparsed;
    };
    if u16::from_be_bytes([tcp[2], tcp[3]]) != LISTEN_PORT {
        return Verdict::NotOurs;
    }
    // Assembled in a register (little-endian BPF), not byte by byte on the stack: a key read
    // back whole right after four byte stores stalls the CPU (no store-to-load forwarding).
    let source = u32::from(ip[12])
        | u32::from(ip[13]) << 8
        | u32::from(ip[14]) << 16
        | u32::from(ip[15]) << 24;
    if BLOCK_V4.get(&Key::new(32, source)).is_some() {
        return Verdict::BlockedCidr;
    }
    if let Some(ban) = BANS_V4.get_ptr(&source) {
        // SAFETY: a pointer into the map value.
        if unsafe { (*ban).active_at(now()) } {
            return Verdict::Banned;
        }
    }
    if tcp[13] & 0x12 != 0x02 {
        return Verdict::Passed;
    }
    let now = now();
    match SYN_V4.get_ptr_mut(&source) {
        // SAFETY: a pointer into the LRU value.
        Some(bucket) => {
            if unsafe { (*bucket).try_take(now, SYN_RATE_PER_SEC, SYN_BURST) } {
                Verdict::Passed
            } else {
                Verdict::SynRateLimited
            }
        }
        None => {
            let bucket = TokenBucket::first_event(now, SYN_BURST);
            let _ = SYN_V4.insert(&source, &bucket, BPF_NOEXIST as u64);
            Verdict::Passed
        }
    }
}

/// XDP entry point, frags-aware as relay's is, so both run under the same attributes.
#[xdp(frags)]
pub fn relay_xdp_minimal(ctx: XdpContext) -> u32 {
    let verdict = decide(&ctx);
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: per-CPU slot, not preempted.
        unsafe { *counter += 1 };
    }
    if verdict.drops() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
