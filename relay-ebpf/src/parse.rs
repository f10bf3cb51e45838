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

/// Source address of a parsed packet: its network-order bytes. An IPv4 address is held as one
/// `u32` with those bytes in memory ([`ipv4_key`]), so a map key made of it is written to the
/// stack with one store.
pub enum Source {
    V4(u32),
    V6([u8; 16]),
}

/// `bytes` as a `u32` whose in-memory bytes are `bytes`, assembled in registers: built on the
/// stack byte by byte and read back whole (what `u32::from_ne_bytes` compiles to here), a key
/// stalls the CPU, which cannot forward four small stores to one larger load.
#[inline(always)]
fn ipv4_key(bytes: [u8; 4]) -> u32 {
    let [a, b, c, d] = bytes.map(u32::from);
    if cfg!(target_endian = "little") {
        a | b << 8 | c << 16 | d << 24
    } else {
        a << 24 | b << 16 | c << 8 | d
    }
}

/// The parts of a TCP segment to a wanted port the policy looks at.
pub struct Segment {
    pub source: Source,
    pub syn: bool,
    pub ack: bool,
}

/// What the parser made of a frame.
pub enum Parsed {
    /// A TCP segment with a complete header.
    Tcp(Segment),
    /// Well-formed, but not TCP over IPv4/IPv6.
    NotTcp,
    /// A complete TCP header, to a port the caller does not want.
    OtherPort,
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

/// Parses the frame in `ctx` down to the TCP flags, for TCP destination ports `wanted` says
/// yes to: the port is checked as soon as it is read, before anything else is kept, so
/// packets to other ports cost as little as possible.
#[inline(always)]
pub fn parse<F: Frame>(ctx: &F, wanted: impl Fn(u16) -> bool) -> Parsed {
    let Some(raw) = read::<2>(ctx, ETH_HLEN - 2) else {
        return Parsed::Unparsed;
    };
    let mut ethertype = u16::from_be_bytes(raw);
    let mut l3 = ETH_HLEN;
    // Untagged IPv4, the common frame, is one comparison away from its header.
    if ethertype != ETH_P_IP {
        let mut tags = 0;
        while is_vlan_tag(ethertype) {
            if tags == VLAN_TAGS_MAX {
                return Parsed::Unparsed;
            }
            let Some(raw) = read::<2>(ctx, l3 + VLAN_HLEN - 2) else {
                return Parsed::Unparsed;
            };
            ethertype = u16::from_be_bytes(raw);
            l3 += VLAN_HLEN;
            tags += 1;
        }
        if ethertype == ETH_P_IPV6 {
            return parse_ipv6(ctx, l3, wanted);
        }
        if ethertype != ETH_P_IP {
            return Parsed::NotTcp;
        }
    }
    parse_ipv4(ctx, l3, wanted)
}

#[inline(always)]
fn is_vlan_tag(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
fn parse_ipv4<F: Frame>(ctx: &F, l3: usize, wanted: impl Fn(u16) -> bool) -> Parsed {
    let Some(h) = read::<IPV4_MIN_HLEN>(ctx, l3) else {
        return Parsed::Unparsed;
    };
    let version = h[0] >> 4;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if version != 4 || ihl < IPV4_MIN_HLEN {
        return Parsed::Unparsed;
    }
    // Read again from the packet where it is kept, so the packet to another port, the most
    // common one, neither reads it nor keeps it.
    let source = || read::<4>(ctx, l3 + 12).map(|addr| Source::V4(ipv4_key(addr)));
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset != 0 {
        if h[9] != IPPROTO_TCP {
            return Parsed::Fragment;
        }
        return match source() {
            Some(source) => Parsed::TcpFragment(source),
            None => Parsed::Unparsed,
        };
    }
    if h[9] != IPPROTO_TCP {
        return Parsed::NotTcp;
    }
    parse_tcp(ctx, l3 + ihl, source, wanted)
}

#[inline(always)]
fn parse_ipv6<F: Frame>(ctx: &F, l3: usize, wanted: impl Fn(u16) -> bool) -> Parsed {
    let Some(h) = read::<IPV6_HLEN>(ctx, l3) else {
        return Parsed::Unparsed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Unparsed;
    }
    let source = || read::<16>(ctx, l3 + 8).map(Source::V6);
    let next_header = h[6];
    if next_header != IPPROTO_TCP {
        let mut i = 0;
        while i < IPV6_EXTENSION_HEADERS.len() {
            if IPV6_EXTENSION_HEADERS[i] == next_header {
                return match source() {
                    Some(source) => Parsed::UnparsedFrom(source),
                    None => Parsed::Unparsed,
                };
            }
            i += 1;
        }
        return Parsed::NotTcp;
    }
    parse_tcp(ctx, l3 + IPV6_HLEN, source, wanted)
}

/// The TCP header at `l4`. `source` reads the source address (inside the IP header already
/// checked, so it never fails in practice), only when it is kept.
#[inline(always)]
fn parse_tcp<F: Frame>(
    ctx: &F,
    l4: usize,
    source: impl FnOnce() -> Option<Source>,
    wanted: impl Fn(u16) -> bool,
) -> Parsed {
    let Some(h) = read::<TCP_MIN_HLEN>(ctx, l4) else {
        // A first fragment too short for the TCP flags, or a truncated frame.
        return match source() {
            Some(source) => Parsed::UnparsedFrom(source),
            None => Parsed::Unparsed,
        };
    };
    if !wanted(u16::from_be_bytes([h[2], h[3]])) {
        return Parsed::OtherPort;
    }
    let Some(source) = source() else {
        return Parsed::Unparsed;
    };
    Parsed::Tcp(Segment {
        source,
        syn: h[13] & TCP_FLAG_SYN != 0,
        ack: h[13] & TCP_FLAG_ACK != 0,
    })
}
