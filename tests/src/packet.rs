//! A small builder for the Ethernet frames fed to the XDP program with `BPF_PROG_TEST_RUN`.
//!
//! A [`Frame`] describes one frame layer by layer: Ethernet (optionally with one 802.1Q tag),
//! then IPv4 (with optional options and fragment fields), IPv6 (with optional extension
//! headers) or an arbitrary non-IP payload, then TCP (20-byte header), UDP or ICMP. Every
//! length and checksum field is filled in correctly unless a test deliberately overrides it,
//! and [`Frame::truncate`] cuts the finished frame at any byte.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use relay_tests::packet::Frame;
//!
//! let syn = Frame::tcp_v4(Ipv4Addr::new(192, 0, 2, 7), 443).syn().vlan(10).build();
//! assert_eq!(syn.len(), 14 + 4 + 20 + 20);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of an Ethernet header without a VLAN tag.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Length of the IPv6 base header.
pub const IPV6_HLEN: usize = 40;
/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;
/// Length of a UDP header.
pub const UDP_HLEN: usize = 8;
/// Length of the ICMP / ICMPv6 echo header built here.
pub const ICMP_HLEN: usize = 8;
/// Length of each IPv6 extension header built here.
pub const IPV6_EXT_HLEN: usize = 8;

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType (TPID) of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType (TPID) of an 802.1ad service tag (QinQ outer tag).
pub const ETH_P_8021AD: u16 = 0x88a8;

/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 hop-by-hop options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6 "no next header".
pub const IPPROTO_NONE: u8 = 59;
/// IPv6 destination options header.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP PSH flag.
pub const TCP_PSH: u8 = 0x08;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Default destination (the relay) for IPv4 frames: TEST-NET-1.
pub const DEFAULT_DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Default destination (the relay) for IPv6 frames: the documentation prefix.
pub const DEFAULT_DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Default TCP/UDP source port.
pub const DEFAULT_SRC_PORT: u16 = 40_000;
/// Default TCP sequence number.
pub const DEFAULT_SEQ: u32 = 0x1000_0000;
/// Default TCP acknowledgment number of segments with ACK set.
pub const DEFAULT_ACK_NO: u32 = 0x2000_0000;

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The network layer of a frame.
#[derive(Clone, Debug)]
enum Network {
    /// IPv4 or IPv6 with the given addresses.
    Ip { src: IpAddr, dst: IpAddr },
    /// Anything else: an EtherType and an opaque payload.
    Raw { ethertype: u16, payload: Vec<u8> },
}

/// The transport layer of an IP frame.
#[derive(Clone, Debug)]
enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        seq: u32,
        ack_no: Option<u32>,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP echo request (ICMPv6 for IPv6).
    Icmp,
}

/// Byte offsets of the layers of a built frame (before truncation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Start of the network header (after Ethernet and any VLAN tag).
    pub l3: usize,
    /// Start of the transport header (after the IPv4 options or IPv6 extension headers).
    /// Equal to `end` for non-IP frames.
    pub l4: usize,
    /// End of the transport header, i.e. the length of the untruncated frame (no payload).
    pub end: usize,
}

/// Builder of one Ethernet frame. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    inner_vlan: Option<u16>,
    outer_tpid: u16,
    network: Network,
    transport: Transport,
    ipv4_options: Vec<u8>,
    ipv4_ihl: Option<u8>,
    ip_version: Option<u8>,
    fragment_offset: u16,
    more_fragments: bool,
    ipv6_extensions: Vec<u8>,
    protocol: Option<u8>,
    payload: Vec<u8>,
    truncate: Option<usize>,
}

impl Frame {
    fn ip(src: IpAddr, transport: Transport) -> Frame {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(DEFAULT_DST_V4),
            IpAddr::V6(_) => IpAddr::V6(DEFAULT_DST_V6),
        };
        Frame {
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
            vlan: None,
            inner_vlan: None,
            outer_tpid: ETH_P_8021Q,
            network: Network::Ip { src, dst },
            transport,
            ipv4_options: Vec::new(),
            ipv4_ihl: None,
            ip_version: None,
            fragment_offset: 0,
            more_fragments: false,
            ipv6_extensions: Vec::new(),
            protocol: None,
            payload: Vec::new(),
            truncate: None,
        }
    }

    /// A TCP segment from `src` (port [`DEFAULT_SRC_PORT`]) to `dst_port`, no flags set.
    pub fn tcp(src: impl Into<IpAddr>, dst_port: u16) -> Frame {
        Frame::ip(
            src.into(),
            Transport::Tcp {
                src_port: DEFAULT_SRC_PORT,
                dst_port,
                flags: 0,
                seq: DEFAULT_SEQ,
                ack_no: None,
            },
        )
    }

    /// A TCP segment over IPv4.
    pub fn tcp_v4(src: Ipv4Addr, dst_port: u16) -> Frame {
        Frame::tcp(src, dst_port)
    }

    /// A TCP segment over IPv6.
    pub fn tcp_v6(src: Ipv6Addr, dst_port: u16) -> Frame {
        Frame::tcp(src, dst_port)
    }

    /// A UDP datagram (8-byte header, no payload) from `src` to `dst_port`.
    pub fn udp(src: impl Into<IpAddr>, dst_port: u16) -> Frame {
        Frame::ip(
            src.into(),
            Transport::Udp {
                src_port: DEFAULT_SRC_PORT,
                dst_port,
            },
        )
    }

    /// An ICMP echo request (ICMPv6 for an IPv6 source).
    pub fn icmp(src: impl Into<IpAddr>) -> Frame {
        Frame::ip(src.into(), Transport::Icmp)
    }

    /// A non-IP frame: `ethertype` followed by `payload_len` zero bytes.
    pub fn ethertype(ethertype: u16, payload_len: usize) -> Frame {
        let mut frame = Frame::ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED), Transport::Icmp);
        frame.network = Network::Raw {
            ethertype,
            payload: vec![0; payload_len],
        };
        frame
    }

    /// An ARP request (EtherType 0x0806, 28-byte body).
    pub fn arp() -> Frame {
        let mut frame = Frame::ethertype(ETH_P_ARP, 28);
        if let Network::Raw { payload, .. } = &mut frame.network {
            // Ethernet / IPv4, hardware size 6, protocol size 4, request.
            payload[..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        }
        frame
    }

    /// Sets the destination address (the relay's side). Ignored for non-IP frames.
    pub fn dst(mut self, dst: impl Into<IpAddr>) -> Frame {
        if let Network::Ip { dst: d, .. } = &mut self.network {
            *d = dst.into();
        }
        self
    }

    /// Sets the TCP/UDP source port.
    pub fn src_port(mut self, port: u16) -> Frame {
        match &mut self.transport {
            Transport::Tcp { src_port, .. } | Transport::Udp { src_port, .. } => *src_port = port,
            Transport::Icmp => {}
        }
        self
    }

    /// Sets the Ethernet source and destination addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Sets the TCP sequence number.
    pub fn seq(mut self, value: u32) -> Frame {
        if let Transport::Tcp { seq, .. } = &mut self.transport {
            *seq = value;
        }
        self
    }

    /// Sets the TCP acknowledgment number (sent when ACK is set).
    pub fn ack_number(mut self, value: u32) -> Frame {
        if let Transport::Tcp { ack_no, .. } = &mut self.transport {
            *ack_no = Some(value);
        }
        self
    }

    /// Sets all TCP flags at once (replacing any set before).
    pub fn flags(mut self, value: u8) -> Frame {
        if let Transport::Tcp { flags, .. } = &mut self.transport {
            *flags = value;
        }
        self
    }

    fn add_flag(mut self, flag: u8) -> Frame {
        if let Transport::Tcp { flags, .. } = &mut self.transport {
            *flags |= flag;
        }
        self
    }

    /// Sets the TCP SYN flag.
    pub fn syn(self) -> Frame {
        self.add_flag(TCP_SYN)
    }

    /// Sets the TCP ACK flag.
    pub fn ack(self) -> Frame {
        self.add_flag(TCP_ACK)
    }

    /// Sets the TCP FIN flag.
    pub fn fin(self) -> Frame {
        self.add_flag(TCP_FIN)
    }

    /// Sets the TCP RST flag.
    pub fn rst(self) -> Frame {
        self.add_flag(TCP_RST)
    }

    /// Sets the TCP PSH flag.
    pub fn psh(self) -> Frame {
        self.add_flag(TCP_PSH)
    }

    /// Adds one 802.1Q tag with VLAN id `id` (priority 0).
    pub fn vlan(mut self, id: u16) -> Frame {
        self.vlan = Some(id & 0x0fff);
        self
    }

    /// Adds a second (inner) 802.1Q tag with VLAN id `id` after the one [`Frame::vlan`] adds:
    /// a stacked (QinQ) frame.
    pub fn inner_vlan(mut self, id: u16) -> Frame {
        self.inner_vlan = Some(id & 0x0fff);
        self
    }

    /// Uses `tpid` instead of 0x8100 as the tag's EtherType (e.g. [`ETH_P_8021AD`]).
    pub fn vlan_tpid(mut self, tpid: u16) -> Frame {
        self.outer_tpid = tpid;
        self
    }

    /// Adds IPv4 options: `words` 32-bit words of NOPs ending with one End-of-Options, so the
    /// header length becomes 5 + `words` (at most 15).
    ///
    /// # Panics
    /// If `words` is 0 or more than 10.
    pub fn ipv4_options(mut self, words: u8) -> Frame {
        assert!(
            (1..=10).contains(&words),
            "IPv4 options are 1..=10 words, not {words}"
        );
        let mut options = vec![1u8; usize::from(words) * 4];
        if let Some(last) = options.last_mut() {
            *last = 0;
        }
        self.ipv4_options = options;
        self
    }

    /// Overrides the IPv4 header-length nibble (in 32-bit words) without changing the bytes
    /// written, to build malformed headers.
    pub fn ipv4_ihl(mut self, ihl: u8) -> Frame {
        self.ipv4_ihl = Some(ihl & 0x0f);
        self
    }

    /// Overrides the IP version nibble, to build malformed headers.
    pub fn ip_version(mut self, version: u8) -> Frame {
        self.ip_version = Some(version & 0x0f);
        self
    }

    /// Sets the IPv4 fragment offset, in 8-byte units (13 bits).
    pub fn fragment_offset(mut self, offset: u16) -> Frame {
        self.fragment_offset = offset & 0x1fff;
        self
    }

    /// Sets the IPv4 More Fragments flag.
    pub fn more_fragments(mut self) -> Frame {
        self.more_fragments = true;
        self
    }

    /// Inserts an 8-byte IPv6 extension header of type `kind` (hop-by-hop 0, routing 43,
    /// fragment 44, destination options 60, ...) between the base header and the transport
    /// header. May be called repeatedly; headers are chained in call order.
    pub fn ipv6_extension(mut self, kind: u8) -> Frame {
        self.ipv6_extensions.push(kind);
        self
    }

    /// Overrides the protocol (IPv4) or next-header value (IPv6, of the last header in the
    /// chain) without changing the bytes that follow.
    pub fn protocol(mut self, protocol: u8) -> Frame {
        self.protocol = Some(protocol);
        self
    }

    /// Appends `len` payload bytes after the transport header.
    pub fn payload(mut self, len: usize) -> Frame {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }

    /// Cuts the built frame to its first `len` bytes (no effect if it is shorter).
    pub fn truncate(mut self, len: usize) -> Frame {
        self.truncate = Some(len);
        self
    }

    /// Byte offsets of the layers of the untruncated frame, without payload.
    pub fn layout(&self) -> Layout {
        let tags = usize::from(self.vlan.is_some()) + usize::from(self.inner_vlan.is_some());
        let l3 = ETH_HLEN + VLAN_HLEN * tags;
        match &self.network {
            Network::Raw { payload, .. } => Layout {
                l3,
                l4: l3 + payload.len(),
                end: l3 + payload.len(),
            },
            Network::Ip { src, .. } => {
                let l4 = l3
                    + match src {
                        IpAddr::V4(_) => IPV4_HLEN + self.ipv4_options.len(),
                        IpAddr::V6(_) => IPV6_HLEN + IPV6_EXT_HLEN * self.ipv6_extensions.len(),
                    };
                Layout {
                    l3,
                    l4,
                    end: l4 + self.transport_len(),
                }
            }
        }
    }

    fn transport_len(&self) -> usize {
        match self.transport {
            Transport::Tcp { .. } => TCP_HLEN,
            Transport::Udp { .. } => UDP_HLEN,
            Transport::Icmp => ICMP_HLEN,
        }
    }

    fn transport_protocol(&self, v6: bool) -> u8 {
        match self.transport {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Icmp if v6 => IPPROTO_ICMPV6,
            Transport::Icmp => IPPROTO_ICMP,
        }
    }

    /// The transport header plus payload, checksum filled in for `src` → `dst`.
    fn transport_bytes(&self, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        let v6 = src.is_ipv6();
        let mut out = Vec::with_capacity(self.transport_len() + self.payload.len());
        let checksum_at = match self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                seq,
                ack_no,
            } => {
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                out.extend_from_slice(&seq.to_be_bytes());
                let ack_no = if flags & TCP_ACK != 0 {
                    ack_no.unwrap_or(DEFAULT_ACK_NO)
                } else {
                    0
                };
                out.extend_from_slice(&ack_no.to_be_bytes());
                out.push(5 << 4); // data offset 5 words, no options
                out.push(flags);
                out.extend_from_slice(&64_240u16.to_be_bytes()); // window
                out.extend_from_slice(&[0, 0]); // checksum
                out.extend_from_slice(&[0, 0]); // urgent pointer
                16
            }
            Transport::Udp { src_port, dst_port } => {
                out.extend_from_slice(&src_port.to_be_bytes());
                out.extend_from_slice(&dst_port.to_be_bytes());
                let len = u16::try_from(UDP_HLEN + self.payload.len()).expect("UDP length");
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                6
            }
            Transport::Icmp => {
                // Echo request: type 8 (ICMP) / 128 (ICMPv6), code 0, id 1, sequence 1.
                out.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1]);
                2
            }
        };
        out.extend_from_slice(&self.payload);
        let pseudo = match (self.transport_protocol(v6), src, dst) {
            // ICMPv4 has no pseudo-header.
            (IPPROTO_ICMP, _, _) => Vec::new(),
            (protocol, src, dst) => pseudo_header(src, dst, protocol, out.len()),
        };
        let mut sum_input = pseudo;
        sum_input.extend_from_slice(&out);
        let mut checksum = internet_checksum(&sum_input);
        if checksum == 0 && matches!(self.transport, Transport::Udp { .. }) {
            checksum = 0xffff;
        }
        out[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        out
    }

    /// Serialises the frame.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        let ethertype = match &self.network {
            Network::Raw { ethertype, .. } => *ethertype,
            Network::Ip {
                src: IpAddr::V4(_), ..
            } => ETH_P_IP,
            Network::Ip {
                src: IpAddr::V6(_), ..
            } => ETH_P_IPV6,
        };
        if let Some(id) = self.vlan {
            out.extend_from_slice(&self.outer_tpid.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        if let Some(id) = self.inner_vlan {
            out.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(&ethertype.to_be_bytes());
        match &self.network {
            Network::Raw { payload, .. } => out.extend_from_slice(payload),
            Network::Ip { src, dst } => match (*src, *dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => self.build_v4(&mut out, s, d),
                (IpAddr::V6(s), IpAddr::V6(d)) => self.build_v6(&mut out, s, d),
                (s, d) => panic!("source {s} and destination {d} are of different families"),
            },
        }
        if let Some(len) = self.truncate {
            out.truncate(len);
        }
        out
    }

    /// Serialises an IPv4 frame as two fragments, as a sender would split it: the first carries
    /// `first_len` bytes of the IP payload (a multiple of 8) with More Fragments set, the second
    /// the rest at that offset. A `first_len` under the TCP header's 20 bytes makes a tiny first
    /// fragment whose TCP flags travel in the second.
    ///
    /// # Panics
    /// If the frame is not IPv4, or `first_len` is not a multiple of 8 inside the payload.
    pub fn ipv4_fragments(&self, first_len: usize) -> [Vec<u8>; 2] {
        let whole = self.build();
        let layout = self.layout();
        let hlen = IPV4_HLEN + self.ipv4_options.len();
        assert!(
            matches!(
                &self.network,
                Network::Ip {
                    src: IpAddr::V4(_),
                    ..
                }
            ),
            "only IPv4 frames are fragmented here"
        );
        let payload = &whole[layout.l3 + hlen..];
        assert!(
            first_len.is_multiple_of(8) && first_len > 0 && first_len < payload.len(),
            "fragment length {first_len} of a {} byte payload",
            payload.len()
        );
        let piece = |bytes: &[u8], offset_units: u16, more: bool| {
            let mut frame = whole[..layout.l3 + hlen].to_vec();
            let header = &mut frame[layout.l3..];
            let total = u16::try_from(hlen + bytes.len()).expect("IPv4 total length");
            header[2..4].copy_from_slice(&total.to_be_bytes());
            let flags_frag = offset_units | if more { 0x2000 } else { 0 };
            header[6..8].copy_from_slice(&flags_frag.to_be_bytes());
            header[10..12].copy_from_slice(&[0, 0]);
            let checksum = internet_checksum(&header[..hlen]);
            header[10..12].copy_from_slice(&checksum.to_be_bytes());
            frame.extend_from_slice(bytes);
            frame
        };
        let second_offset = u16::try_from(first_len / 8).expect("fragment offset");
        [
            piece(&payload[..first_len], 0, true),
            piece(&payload[first_len..], second_offset, false),
        ]
    }

    fn build_v4(&self, out: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr) {
        let transport = self.transport_bytes(IpAddr::V4(src), IpAddr::V4(dst));
        let hlen = IPV4_HLEN + self.ipv4_options.len();
        let ihl = self
            .ipv4_ihl
            .unwrap_or(u8::try_from(hlen / 4).expect("IHL"));
        let version = self.ip_version.unwrap_or(4);
        let total = u16::try_from(hlen + transport.len()).expect("IPv4 total length");
        let flags_frag = self.fragment_offset | if self.more_fragments { 0x2000 } else { 0 };
        let mut header = Vec::with_capacity(hlen);
        header.push((version << 4) | ihl);
        header.push(0); // DSCP/ECN
        header.extend_from_slice(&total.to_be_bytes());
        header.extend_from_slice(&0x1234u16.to_be_bytes()); // identification
        header.extend_from_slice(&flags_frag.to_be_bytes());
        header.push(64); // TTL
        header.push(self.protocol.unwrap_or(self.transport_protocol(false)));
        header.extend_from_slice(&[0, 0]); // checksum
        header.extend_from_slice(&src.octets());
        header.extend_from_slice(&dst.octets());
        header.extend_from_slice(&self.ipv4_options);
        let checksum = internet_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&transport);
    }

    fn build_v6(&self, out: &mut Vec<u8>, src: Ipv6Addr, dst: Ipv6Addr) {
        let transport = self.transport_bytes(IpAddr::V6(src), IpAddr::V6(dst));
        let l4_protocol = self.transport_protocol(true);
        let payload_len = IPV6_EXT_HLEN * self.ipv6_extensions.len() + transport.len();
        let version = self.ip_version.unwrap_or(6);
        // The chain: base → ext[0] → ext[1] → … → transport.
        let mut chain: Vec<u8> = self.ipv6_extensions.clone();
        chain.push(l4_protocol);
        if let Some(protocol) = self.protocol {
            // The override replaces the value that names the transport header.
            if let Some(last) = chain.last_mut() {
                *last = protocol;
            }
        }
        out.extend_from_slice(&(u32::from(version) << 28).to_be_bytes()); // class 0, flow 0
        out.extend_from_slice(
            &u16::try_from(payload_len)
                .expect("IPv6 payload length")
                .to_be_bytes(),
        );
        out.push(chain[0]);
        out.push(64); // hop limit
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        for (i, &kind) in self.ipv6_extensions.iter().enumerate() {
            let next = chain[i + 1];
            if kind == IPPROTO_FRAGMENT {
                // Next header, reserved, offset 0 with M set, identification.
                out.extend_from_slice(&[next, 0, 0, 1, 0, 0, 0x12, 0x34]);
            } else {
                // Next header, length 0 (8 bytes), then a PadN option filling 6 bytes.
                out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        out.extend_from_slice(&transport);
    }
}

fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.push(0);
            p.push(protocol);
            p.extend_from_slice(&u16::try_from(len).expect("length").to_be_bytes());
        }
        (s, d) => {
            let octets = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            p.extend_from_slice(&octets(s));
            p.extend_from_slice(&octets(d));
            p.extend_from_slice(&u32::try_from(len).expect("length").to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, protocol]);
        }
    }
    p
}

/// RFC 1071 one's-complement checksum of `bytes` (odd lengths padded with a zero byte).
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `frame` as space-separated hex, for assertion messages.
pub fn hex(frame: &[u8]) -> String {
    frame
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xaa, 0, 0, 0, 0, 7);

    fn be16(frame: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([frame[at], frame[at + 1]])
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: the sum of these words is ddf2, so the checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        // A well-known IPv4 header (Wikipedia "IPv4 header checksum" example).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
    }

    #[test]
    fn tcp_v4_syn_layout_and_checksums() {
        let f = Frame::tcp_v4(SRC4, 443).syn().build();
        assert_eq!(f.len(), ETH_HLEN + IPV4_HLEN + TCP_HLEN);
        assert_eq!(be16(&f, 12), ETH_P_IP);
        let ip = &f[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        assert_eq!(ip[0], 0x45);
        assert_eq!(usize::from(be16(ip, 2)), IPV4_HLEN + TCP_HLEN);
        assert_eq!(be16(ip, 6), 0, "no fragment bits");
        assert_eq!(ip[9], IPPROTO_TCP);
        assert_eq!(&ip[12..16], &SRC4.octets());
        assert_eq!(&ip[16..20], &DEFAULT_DST_V4.octets());
        assert_eq!(internet_checksum(ip), 0, "IPv4 header checksum verifies");
        let tcp = &f[ETH_HLEN + IPV4_HLEN..];
        assert_eq!(be16(tcp, 0), DEFAULT_SRC_PORT);
        assert_eq!(be16(tcp, 2), 443);
        assert_eq!(tcp[12], 0x50);
        assert_eq!(tcp[13], TCP_SYN);
        let mut sum = pseudo_header(SRC4.into(), DEFAULT_DST_V4.into(), IPPROTO_TCP, tcp.len());
        sum.extend_from_slice(tcp);
        assert_eq!(internet_checksum(&sum), 0, "TCP checksum verifies");
    }

    #[test]
    fn flags_combine() {
        let f = Frame::tcp_v4(SRC4, 443).syn().ack().build();
        assert_eq!(f[ETH_HLEN + IPV4_HLEN + 13], TCP_SYN | TCP_ACK);
        let f = Frame::tcp_v4(SRC4, 443).syn().flags(TCP_RST).build();
        assert_eq!(f[ETH_HLEN + IPV4_HLEN + 13], TCP_RST);
    }

    #[test]
    fn vlan_tag_shifts_everything_by_four() {
        let plain = Frame::tcp_v4(SRC4, 443).syn().build();
        let tagged = Frame::tcp_v4(SRC4, 443).syn().vlan(10).build();
        assert_eq!(tagged.len(), plain.len() + VLAN_HLEN);
        assert_eq!(be16(&tagged, 12), ETH_P_8021Q);
        assert_eq!(be16(&tagged, 14), 10);
        assert_eq!(be16(&tagged, 16), ETH_P_IP);
        assert_eq!(&tagged[18..], &plain[14..]);
        let qinq = Frame::tcp_v4(SRC4, 443)
            .vlan(5)
            .vlan_tpid(ETH_P_8021AD)
            .build();
        assert_eq!(be16(&qinq, 12), ETH_P_8021AD);
    }

    #[test]
    fn ipv4_options_raise_ihl_and_keep_checksum_valid() {
        for words in 1..=10u8 {
            let f = Frame::tcp_v4(SRC4, 443).syn().ipv4_options(words).build();
            let hlen = IPV4_HLEN + usize::from(words) * 4;
            assert_eq!(f.len(), ETH_HLEN + hlen + TCP_HLEN);
            assert_eq!(f[ETH_HLEN] & 0x0f, 5 + words);
            assert_eq!(internet_checksum(&f[ETH_HLEN..ETH_HLEN + hlen]), 0);
            assert_eq!(be16(&f, ETH_HLEN + hlen + 2), 443, "TCP after the options");
            let layout = Frame::tcp_v4(SRC4, 443).ipv4_options(words).layout();
            assert_eq!(layout.l4, ETH_HLEN + hlen);
        }
    }

    #[test]
    fn fragment_fields() {
        let f = Frame::tcp_v4(SRC4, 443)
            .fragment_offset(185)
            .more_fragments()
            .build();
        assert_eq!(be16(&f, ETH_HLEN + 6), 0x2000 | 185);
        assert_eq!(internet_checksum(&f[ETH_HLEN..ETH_HLEN + IPV4_HLEN]), 0);
    }

    #[test]
    fn tcp_v6_layout_and_checksum() {
        let f = Frame::tcp_v6(SRC6, 443).syn().build();
        assert_eq!(f.len(), ETH_HLEN + IPV6_HLEN + TCP_HLEN);
        assert_eq!(be16(&f, 12), ETH_P_IPV6);
        let ip = &f[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(usize::from(be16(ip, 4)), TCP_HLEN);
        assert_eq!(ip[6], IPPROTO_TCP);
        assert_eq!(&ip[8..24], &SRC6.octets());
        assert_eq!(&ip[24..40], &DEFAULT_DST_V6.octets());
        let tcp = &f[ETH_HLEN + IPV6_HLEN..];
        let mut sum = pseudo_header(SRC6.into(), DEFAULT_DST_V6.into(), IPPROTO_TCP, tcp.len());
        sum.extend_from_slice(tcp);
        assert_eq!(internet_checksum(&sum), 0);
    }

    #[test]
    fn ipv6_extension_chain() {
        let f = Frame::tcp_v6(SRC6, 443)
            .syn()
            .ipv6_extension(IPPROTO_HOPOPTS)
            .ipv6_extension(IPPROTO_FRAGMENT)
            .build();
        assert_eq!(f.len(), ETH_HLEN + IPV6_HLEN + 2 * IPV6_EXT_HLEN + TCP_HLEN);
        assert_eq!(f[ETH_HLEN + 6], IPPROTO_HOPOPTS);
        assert_eq!(
            usize::from(be16(&f, ETH_HLEN + 4)),
            2 * IPV6_EXT_HLEN + TCP_HLEN
        );
        let ext = ETH_HLEN + IPV6_HLEN;
        assert_eq!(f[ext], IPPROTO_FRAGMENT);
        assert_eq!(f[ext + IPV6_EXT_HLEN], IPPROTO_TCP);
        assert_eq!(be16(&f, ext + 2 * IPV6_EXT_HLEN + 2), 443);
    }

    #[test]
    fn protocol_override_keeps_bytes() {
        let f = Frame::tcp_v6(SRC6, 443).protocol(IPPROTO_NONE).build();
        assert_eq!(f[ETH_HLEN + 6], IPPROTO_NONE);
        assert_eq!(f.len(), ETH_HLEN + IPV6_HLEN + TCP_HLEN);
        let f = Frame::tcp_v4(SRC4, 443).protocol(IPPROTO_UDP).build();
        assert_eq!(f[ETH_HLEN + 9], IPPROTO_UDP);
        assert_eq!(internet_checksum(&f[ETH_HLEN..ETH_HLEN + IPV4_HLEN]), 0);
    }

    #[test]
    fn udp_icmp_and_non_ip() {
        let f = Frame::udp(SRC4, 443).build();
        assert_eq!(f.len(), ETH_HLEN + IPV4_HLEN + UDP_HLEN);
        assert_eq!(f[ETH_HLEN + 9], IPPROTO_UDP);
        let f = Frame::udp(SRC6, 443).payload(3).build();
        assert_eq!(f.len(), ETH_HLEN + IPV6_HLEN + UDP_HLEN + 3);
        assert_eq!(be16(&f, ETH_HLEN + IPV6_HLEN + 4), 11, "UDP length");
        let f = Frame::icmp(SRC4).build();
        assert_eq!(f[ETH_HLEN + 9], IPPROTO_ICMP);
        assert_eq!(internet_checksum(&f[ETH_HLEN + IPV4_HLEN..]), 0);
        let f = Frame::icmp(SRC6).build();
        assert_eq!(f[ETH_HLEN + 6], IPPROTO_ICMPV6);
        let f = Frame::arp().build();
        assert_eq!(f.len(), ETH_HLEN + 28);
        assert_eq!(be16(&f, 12), ETH_P_ARP);
        assert_eq!(Frame::arp().layout().end, f.len());
    }

    #[test]
    fn malformed_overrides() {
        let f = Frame::tcp_v4(SRC4, 443).ip_version(6).ipv4_ihl(4).build();
        assert_eq!(f[ETH_HLEN], 0x64);
        assert_eq!(f.len(), ETH_HLEN + IPV4_HLEN + TCP_HLEN);
    }

    #[test]
    fn truncation_and_layout() {
        let frame = Frame::tcp_v6(SRC6, 443).syn().vlan(3);
        let layout = frame.layout();
        assert_eq!(
            layout,
            Layout {
                l3: ETH_HLEN + VLAN_HLEN,
                l4: ETH_HLEN + VLAN_HLEN + IPV6_HLEN,
                end: ETH_HLEN + VLAN_HLEN + IPV6_HLEN + TCP_HLEN,
            }
        );
        let full = frame.build();
        assert_eq!(full.len(), layout.end);
        for len in 0..=full.len() + 3 {
            let cut = frame.clone().truncate(len).build();
            assert_eq!(cut.len(), len.min(full.len()));
            assert_eq!(cut[..], full[..cut.len()]);
        }
    }

    #[test]
    fn hex_formats() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00 ab 10");
    }
}
