//! Bounds-checked header parsing: Ethernet, up to two VLAN tags (802.1Q or 802.1ad), IPv4,
//! IPv6, TCP.
//!
//! Every read goes through [`read`], which checks the access against `data_end` as the verifier
//! demands. Anything the parser cannot follow is reported, never guessed at.

use aya_ebpf::programs::{TcContext, XdpContext};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPV4_MIN_HLEN: usize = 20;
const IPV4_MAX_HLEN: usize = 60;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// VLAN tags the parser steps over (a QinQ frame has two).
const VLAN_TAGS_MAX: usize = 2;

/// The most header bytes the parser may read: Ethernet, two VLAN tags, the longest IP header
/// (IPv4 with options), TCP.
pub const HEADERS_MAX: usize = ETH_HLEN + VLAN_TAGS_MAX * VLAN_HLEN + IPV4_MAX_HLEN + TCP_MIN_HLEN;

/// IPv6 next-header values that are extension headers (RFC 8200 and the IANA list).
const IPV6_EXTENSION_HEADERS: [u8; 9] = [0, 43, 44, 50, 51, 60, 135, 139, 140];

/// Source address of a parsed packet, in network byte order.
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// The parts of a TCP segment the policy looks at.
pub struct Segment {
    pub source: Source,
    pub dst_port: u16,
    pub syn: bool,
    pub ack: bool,
}

/// What the parser made of a frame.
pub enum Parsed {
    /// A TCP segment with a complete header.
    Tcp(Segment),
    /// Well-formed, but not TCP over IPv4/IPv6.
    NotTcp,
    /// IPv4 fragment with a non-zero offset, not of TCP.
    Fragment,
    /// IPv4 fragment with a non-zero offset of a TCP segment: no TCP header in it, but it may
    /// complete a SYN the policy never saw.
    TcpFragment(Source),
    /// Truncated or malformed before the source address, or under more VLAN tags than the
    /// parser follows.
    Unparsed,
    /// Behind IPv6 extension headers, or with a truncated TCP header (a first fragment too
    /// short for the flags): the source address is known.
    UnparsedFrom(Source),
}

// The variants with a source are separate ones rather than an `Option<Source>`: moving an
// `Option` copies its payload's bytes even when they were never written, which the verifier
// rejects.

/// A packet the program can read directly: XDP's frame, or TC's linear skb data (which at
/// ingress starts at the MAC header, as an XDP frame does).
pub trait Frame {
    /// Address of the first byte.
    fn data(&self) -> usize;
    /// Address one past the last readable byte.
    fn data_end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// Reads `N` bytes at `offset`, or `None` if they extend past the end of the frame.
#[inline(always)]
fn read<const N: usize>(ctx: &impl Frame, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + N) lies inside the packet, as checked.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

/// Parses the frame in `ctx` down to the TCP flags.
#[inline(always)]
pub fn parse<F: Frame>(ctx: &F) -> Parsed {
    let Some([hi, lo]) = read::<2>(ctx, ETH_HLEN - 2) else {
        return Parsed::Unparsed;
    };
    let mut ethertype = u16::from_be_bytes([hi, lo]);
    let mut l3 = ETH_HLEN;
    let mut tags = 0;
    while is_vlan_tag(ethertype) {
        if tags == VLAN_TAGS_MAX {
            return Parsed::Unparsed;
        }
        let Some([hi, lo]) = read::<2>(ctx, l3 + VLAN_HLEN - 2) else {
            return Parsed::Unparsed;
        };
        ethertype = u16::from_be_bytes([hi, lo]);
        l3 += VLAN_HLEN;
        tags += 1;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3),
        ETH_P_IPV6 => parse_ipv6(ctx, l3),
        _ => Parsed::NotTcp,
    }
}

#[inline(always)]
fn is_vlan_tag(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
fn parse_ipv4<F: Frame>(ctx: &F, l3: usize) -> Parsed {
    let Some(h) = read::<IPV4_MIN_HLEN>(ctx, l3) else {
        return Parsed::Unparsed;
    };
    let version = h[0] >> 4;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if version != 4 || ihl < IPV4_MIN_HLEN {
        return Parsed::Unparsed;
    }
    let source = Source::V4([h[12], h[13], h[14], h[15]]);
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return if h[9] == IPPROTO_TCP {
            Parsed::TcpFragment(source)
        } else {
            Parsed::Fragment
        };
    }
    if h[9] != IPPROTO_TCP {
        return Parsed::NotTcp;
    }
    parse_tcp(ctx, l3 + ihl, source)
}

#[inline(always)]
fn parse_ipv6<F: Frame>(ctx: &F, l3: usize) -> Parsed {
    let Some(h) = read::<IPV6_HLEN>(ctx, l3) else {
        return Parsed::Unparsed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Unparsed;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let next_header = h[6];
    if next_header != IPPROTO_TCP {
        let mut i = 0;
        while i < IPV6_EXTENSION_HEADERS.len() {
            if IPV6_EXTENSION_HEADERS[i] == next_header {
                return Parsed::UnparsedFrom(Source::V6(src));
            }
            i += 1;
        }
        return Parsed::NotTcp;
    }
    parse_tcp(ctx, l3 + IPV6_HLEN, Source::V6(src))
}

#[inline(always)]
fn parse_tcp<F: Frame>(ctx: &F, l4: usize, source: Source) -> Parsed {
    let Some(h) = read::<TCP_MIN_HLEN>(ctx, l4) else {
        // A first fragment too short for the TCP flags, or a truncated frame.
        return Parsed::UnparsedFrom(source);
    };
    Parsed::Tcp(Segment {
        source,
        dst_port: u16::from_be_bytes([h[2], h[3]]),
        syn: h[13] & TCP_FLAG_SYN != 0,
        ack: h[13] & TCP_FLAG_ACK != 0,
    })
}
