//! relay's kernel passthrough: a sockmap stream verdict program that moves the bytes of a
//! flow (one direction of a relayed pair whose bytes pass through unchanged) from its source
//! socket straight into its target socket, without a trip through userspace.
//!
//! It counts what it redirects per flow, stops redirecting at the flow's byte budget (a
//! quota), and passes a segment to the source's own receive queue whenever userspace holds
//! older bytes of the flow, so the byte order is kept. Flows are keyed by the source socket's
//! cookie; see `relay_common::passage`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    helpers::generated::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{HashMap, SockHash},
    programs::SkBuffContext,
};
use relay_common::passage::{FlowControl, FlowCounts, MAX_FLOWS, redirects};

#[map]
static SOURCES: SockHash<u64> = SockHash::with_max_entries(MAX_FLOWS, 0);
#[map]
static TARGETS: SockHash<u64> = SockHash::with_max_entries(MAX_FLOWS, 0);
#[map]
static CONTROL: HashMap<u64, FlowControl> = HashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static COUNTS: HashMap<u64, FlowCounts> = HashMap::with_max_entries(MAX_FLOWS, 0);

/// Stream verdict for every segment a source socket receives. The counts are plain stores,
/// not atomics: the kernel runs a socket's verdicts one at a time (under the socket's lock).
#[stream_verdict]
pub fn relay_passage(ctx: SkBuffContext) -> u32 {
    let len = u64::from(ctx.len());
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let Some(counts) = COUNTS.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    // SAFETY: a live map value; only this program writes it, one segment at a time.
    let counts = unsafe { &mut *counts };
    // SAFETY: a map value, read by copy.
    let Some(control) = (unsafe { CONTROL.get(cookie) }).copied() else {
        counts.passed += len;
        return SK_PASS;
    };
    if redirects(&control, counts, len) {
        let mut target = control.target;
        // On success the helper answers SK_PASS and the kernel queues the segment on the
        // target; on failure (target gone) the segment goes to userspace instead.
        if TARGETS.redirect_skb(&ctx, &mut target, 0) == SK_PASS as _ {
            counts.redirected += len;
            return SK_PASS;
        }
    }
    counts.passed += len;
    SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
