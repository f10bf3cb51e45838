//! SYNs the XDP program cannot rate still meet the per-source limit: crafted handshakes through
//! a veth, with the SYN behind IPv6 extension headers or split into IPv4 fragments, against a
//! relay with native XDP. From one source, only the SYN budget gets a connection the relay
//! keeps; the rest are dropped in the kernel or reset at accept.
//!
//! Stacked VLAN tags are covered by `xdp_verdicts` only: a tagged frame reaches a socket only
//! through VLAN devices, and the test kernel is built without 802.1Q support.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use relay_tests::{
    metrics::Metrics,
    netns::{NetPair, SERVER_V4, SERVER_V6, ip},
    packet::{Frame, IPPROTO_DSTOPTS, IPPROTO_HOPOPTS},
    rawtcp::{Handshake, PacketSocket, handshake, resets},
    relay::Relay,
    util::wait_until,
};

const PORT: u16 = 4443;
const BURST: usize = 4;
const ATTEMPTS: u16 = 10;
/// Time a SYN-ACK may take; an unanswered SYN was dropped.
const SYN_ACK_WAIT: Duration = Duration::from_millis(500);
/// Time the relay gets to reset the connections it refuses at accept.
const RESET_WAIT: Duration = Duration::from_millis(1500);

fn privileged(test: &str) -> bool {
    relay_tests::privilege::privileged(test)
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let json = ip(&["-n", ns, "-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j output");
    let text = links[0]["address"].as_str().expect("a MAC address");
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect();
    bytes.try_into().expect("six bytes")
}

/// The veth pair, plus on-link routes on the server for the IPv6 /64s the crafted sources
/// use.
struct Net {
    pair: NetPair,
    client_mac: [u8; 6],
    server_mac: [u8; 6],
}

impl Net {
    fn new(tag: &str) -> Net {
        let pair = NetPair::new(tag, 1);
        let s = pair.server_ns.clone();
        for net in ["2001:2:0:1::/64", "2001:2:0:2::/64"] {
            ip(&["-n", &s, "-6", "route", "add", net, "dev", &pair.server_if]);
        }
        let client_mac = mac_of(&pair.client_ns, &pair.client_if);
        let server_mac = mac_of(&s, &pair.server_if);
        Net {
            pair,
            client_mac,
            server_mac,
        }
    }

    /// Lets the server reach `source` (which no interface owns) through the client's veth.
    fn neighbour(&self, source: IpAddr) {
        let mac = self
            .client_mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ip(&[
            "-n",
            &self.pair.server_ns,
            "neigh",
            "replace",
            &source.to_string(),
            "lladdr",
            &mac,
            "dev",
            &self.pair.server_if,
            "nud",
            "permanent",
        ]);
    }
}

fn config(net: &Net) -> String {
    format!(
        r#"
[server]
listen = ["{SERVER_V4}:{PORT}", "[{SERVER_V6}]:{PORT}"]

[xdp]
interfaces = ["{iface}"]
mode = "native"

[limits]
syn_rate_per_sec = 0
syn_burst = {BURST}
"#,
        iface = net.pair.server_if,
    )
}

/// How one source's SYNs are wrapped.
#[derive(Clone, Copy, Debug)]
enum Wrapping {
    /// An IPv6 extension header of this type before TCP.
    Ipv6Extension(u8),
    /// Two IPv4 fragments, the first with only 8 bytes of the TCP header (no flags).
    Ipv4Fragments,
}

/// Opens [`ATTEMPTS`] connections from `source` with wrapped SYNs and plain ACKs; returns how
/// many the relay kept (established, not reset).
fn kept_connections(net: &Net, source: IpAddr, wrapping: Wrapping) -> usize {
    let server = match source {
        IpAddr::V4(_) => IpAddr::V4(SERVER_V4),
        IpAddr::V6(_) => IpAddr::V6(SERVER_V6),
    };
    net.neighbour(source);
    let base = |port: u16| {
        Frame::tcp(source, PORT)
            .dst(server)
            .src_port(port)
            .macs(net.client_mac, net.server_mac)
    };
    net.pair.in_client(|| {
        let socket = PacketSocket::bind(&net.pair.client_if).expect("AF_PACKET socket");
        let mut established = Vec::new();
        for i in 0..ATTEMPTS {
            let port = 42_000 + i;
            let syn = base(port).syn();
            let syn_frames = match wrapping {
                Wrapping::Ipv6Extension(kind) => vec![syn.ipv6_extension(kind).build()],
                Wrapping::Ipv4Fragments => syn.ipv4_fragments(8).to_vec(),
            };
            let ack = |isn: u32| {
                base(port)
                    .ack()
                    .seq(relay_tests::packet::DEFAULT_SEQ.wrapping_add(1))
                    .ack_number(isn.wrapping_add(1))
                    .build()
            };
            let outcome = handshake(
                &socket,
                &syn_frames,
                (source, port),
                PORT,
                ack,
                SYN_ACK_WAIT,
            )
            .expect("crafted handshake");
            if let Handshake::Established(_) = outcome {
                established.push(port);
            }
        }
        let reset = resets(&socket, source, PORT, RESET_WAIT).expect("read resets");
        eprintln!("{wrapping:?} from {source}: established {established:?}, reset {reset:?}");
        established.iter().filter(|p| !reset.contains(p)).count()
    })
}

#[test]
fn syns_the_kernel_cannot_parse_are_limited_per_source() {
    if !privileged("syns_the_kernel_cannot_parse_are_limited_per_source") {
        return;
    }
    let net = Net::new("unp");
    let relay = Relay::start(&net.pair.server_ns, &config(&net));
    let cases = [
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x100)),
            Wrapping::Ipv6Extension(IPPROTO_HOPOPTS),
        ),
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x100)),
            Wrapping::Ipv6Extension(IPPROTO_DSTOPTS),
        ),
        (
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 100)),
            Wrapping::Ipv4Fragments,
        ),
    ];
    let mut failures = Vec::new();
    for (source, wrapping) in cases {
        let kept = kept_connections(&net, source, wrapping);
        if kept != BURST {
            failures.push(format!(
                "{wrapping:?} from {source}: {kept} of {ATTEMPTS} kept, budget {BURST}"
            ));
        }
    }
    // The refusals at accept are counted with the kernel's SYN drops (the exporter copies
    // counters once a second); no SYN here was one the program could rate.
    let refused = (ATTEMPTS as usize - BURST) * cases.len();
    let limited = wait_until(Duration::from_secs(5), || {
        let n = Metrics::parse(&relay.scrape()).sum(
            "relay_xdp_packets_total",
            &[("verdict", "syn_rate_limited")],
        );
        (n >= refused as f64).then_some(n)
    });
    let log = relay.stop();
    assert!(failures.is_empty(), "{failures:#?}\n{log}");
    assert_eq!(limited, Some(refused as f64), "{log}");
}
