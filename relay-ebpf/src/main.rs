//! relay's XDP program: the kernel fast path in front of the relay's listen ports.
//!
//! It drops allowlist-free sources that are banned or inside a blocked CIDR, and rate-limits bare
//! SYNs per source, before the kernel allocates anything for them. It never looks past the TCP
//! header, passes everything it cannot parse or that is not for the relay, and counts every
//! verdict in a per-CPU array.
#![no_std]
#![no_main]

mod parse;
mod policy;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use relay_common::Verdict;

use crate::parse::Parsed;

/// Entry point: parse, decide, count.
///
/// Declared frags-aware (multi-buffer): it reads only the headers, which are in the first
/// buffer. Without that, generic XDP linearizes every GRO/GSO packet into one large
/// allocation and drops the packet when that fails: on a veth (where `auto` picks generic)
/// the benchmark's 64-connection transfers stalled.
#[xdp(frags)]
pub fn relay_xdp(ctx: XdpContext) -> u32 {
    let verdict = match parse::parse(&ctx) {
        Parsed::Tcp(segment) => policy::decide(&ctx, &segment),
        Parsed::NotTcp => Verdict::NotOurs,
        Parsed::Fragment => Verdict::Fragment,
        Parsed::Unparsed => Verdict::Unparsed,
    };
    policy::count(verdict);
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
