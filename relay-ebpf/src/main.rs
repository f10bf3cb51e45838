//! relay's XDP program (and its TC twin for veth): the kernel fast path in front of the
//! relay's listen ports.
//!
//! It drops allowlist-free sources that are drop-banned or inside a blocked CIDR, gives
//! front-banned sources (fronted by userspace) a small SYN budget, and rate-limits bare SYNs per
//! source, before the kernel allocates anything for them. It never looks past the TCP
//! header, passes everything it cannot parse or that is not for the relay, and counts every
//! verdict in a per-CPU array. Sources of packets it passed without rating them (IPv6
//! extension headers, IPv4 fragments) are marked, so userspace limits their connections at
//! accept instead.
#![no_std]
#![no_main]

mod parse;
mod policy;

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use relay_common::Verdict;

use crate::parse::{Frame, HEADERS_MAX, Parsed};

/// Parse, decide, count: what both entry points do.
#[inline(always)]
fn verdict<C: EbpfContext + Frame>(ctx: &C) -> Verdict {
    let verdict = match parse::parse(ctx, policy::listening) {
        Parsed::Tcp(segment) => policy::decide(ctx, &segment),
        Parsed::NotTcp | Parsed::OtherPort => Verdict::NotOurs,
        Parsed::Fragment => Verdict::Fragment,
        Parsed::TcpFragment(ref source) => {
            policy::note_unrated(source);
            Verdict::Fragment
        }
        Parsed::Unparsed => {
            policy::note_unattributed();
            Verdict::Unparsed
        }
        Parsed::UnparsedFrom(ref source) => {
            policy::note_unrated(source);
            Verdict::Unparsed
        }
    };
    policy::count(verdict);
    verdict
}

/// XDP entry point.
///
/// Declared frags-aware (multi-buffer): it reads only the headers, which are in the first
/// buffer. Without that, generic XDP linearizes every GRO/GSO packet into one large
/// allocation and drops the packet when that fails.
#[xdp(frags)]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    if verdict(&ctx).drops() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// TC ingress (tcx) entry point, for interfaces where XDP costs a copy of every packet (a
/// veth): the same decision, after the skb exists, as generic XDP would be, but without the
/// copy. Passing returns `TC_ACT_UNSPEC` (tcx: "next"), so programs attached after this one
/// still run.
#[classifier]
pub fn relay_tc(ctx: TcContext) -> i32 {
    // Direct reads see only the skb's linear part; headers are nearly always in it, but a
    // packet built otherwise gets them pulled in (a copy only when actually needed).
    let linear = ctx.data_end() - ctx.data();
    let wanted = ctx.len().min(HEADERS_MAX as u32);
    if (linear as u32) < wanted {
        let _ = ctx.pull_data(wanted);
    }
    if verdict(&ctx).drops() {
        TC_ACT_SHOT as i32
    } else {
        TC_ACT_UNSPEC
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
