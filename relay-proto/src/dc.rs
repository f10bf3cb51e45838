//! Built-in Telegram DC addresses (docs/protocol.md §8); config overrides are layered on by the
//! caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Port of every built-in DC address.
pub const DC_PORT: u16 = 443;

/// Which address family to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What a signed DC id from the obfuscated2 header means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DcTarget {
    /// The DC number (1..=5, 203 in production; 1..=3 in the test environment).
    pub number: u16,
    /// Negative id: a media-only connection (served by the same addresses here).
    pub media: bool,
    /// |id| > 10000: the test environment.
    pub test: bool,
}

impl DcTarget {
    /// Decodes a header DC id: −N media, N + 10000 test (tdlib `get_transport_type`).
    pub const fn from_wire(dc: i16) -> DcTarget {
        let abs = dc.unsigned_abs();
        let test = abs > 10_000;
        DcTarget {
            number: if test { abs - 10_000 } else { abs },
            media: dc < 0,
            test,
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), DC_PORT)
}

const fn v6(s: [u16; 8]) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        DC_PORT,
    )
}

const PROD_V4: [&[SocketAddr]; 5] = [
    &[v4(149, 154, 175, 50)],
    &[v4(149, 154, 167, 51), v4(95, 161, 76, 100)],
    &[v4(149, 154, 175, 100)],
    &[v4(149, 154, 167, 91)],
    &[v4(149, 154, 171, 5)],
];

const PROD_V6: [&[SocketAddr]; 5] = [
    &[v6([0x2001, 0xb28, 0xf23d, 0xf001, 0, 0, 0, 0xa])],
    &[v6([0x2001, 0x67c, 0x4e8, 0xf002, 0, 0, 0, 0xa])],
    &[v6([0x2001, 0xb28, 0xf23d, 0xf003, 0, 0, 0, 0xa])],
    &[v6([0x2001, 0x67c, 0x4e8, 0xf004, 0, 0, 0, 0xa])],
    &[v6([0x2001, 0xb28, 0xf23f, 0xf005, 0, 0, 0, 0xa])],
];

/// DC 203, a CDN DC (mtg's table).
const CDN_203_V4: &[SocketAddr] = &[v4(91, 105, 192, 100)];
const CDN_203_V6: &[SocketAddr] = &[v6([0x2a0a, 0xf280, 0x203, 0xa, 0x5000, 0, 0, 0x100])];

const TEST_V4: [&[SocketAddr]; 3] = [
    &[v4(149, 154, 175, 10)],
    &[v4(149, 154, 167, 40)],
    &[v4(149, 154, 175, 117)],
];

const TEST_V6: [&[SocketAddr]; 3] = [
    &[v6([0x2001, 0xb28, 0xf23d, 0xf001, 0, 0, 0, 0xe])],
    &[v6([0x2001, 0x67c, 0x4e8, 0xf002, 0, 0, 0, 0xe])],
    &[v6([0x2001, 0xb28, 0xf23d, 0xf003, 0, 0, 0, 0xe])],
];

/// Built-in addresses for a header DC id; empty when the id is unknown (the caller then
/// applies its default DC).
pub fn dc_addrs(dc: i16, family: IpFamily) -> &'static [SocketAddr] {
    let t = DcTarget::from_wire(dc);
    let (table, cdn): (&[&'static [SocketAddr]], &'static [SocketAddr]) = match (t.test, family) {
        (false, IpFamily::V4) => (&PROD_V4, CDN_203_V4),
        (false, IpFamily::V6) => (&PROD_V6, CDN_203_V6),
        (true, IpFamily::V4) => (&TEST_V4, &[]),
        (true, IpFamily::V6) => (&TEST_V6, &[]),
    };
    match t.number {
        203 => cdn,
        n => usize::from(n)
            .checked_sub(1)
            .and_then(|i| table.get(i))
            .copied()
            .unwrap_or(&[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(dc: i16, f: IpFamily) -> String {
        dc_addrs(dc, f)
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[test]
    fn production() {
        assert_eq!(first(1, IpFamily::V4), "149.154.175.50:443");
        assert_eq!(dc_addrs(2, IpFamily::V4).len(), 2);
        assert_eq!(first(5, IpFamily::V6), "[2001:b28:f23f:f005::a]:443");
        assert_eq!(first(-4, IpFamily::V4), "149.154.167.91:443");
        assert_eq!(first(203, IpFamily::V4), "91.105.192.100:443");
        assert_eq!(first(-203, IpFamily::V6), "[2a0a:f280:203:a:5000::100]:443");
    }

    #[test]
    fn test_environment() {
        assert_eq!(first(10001, IpFamily::V4), "149.154.175.10:443");
        assert_eq!(first(-10002, IpFamily::V6), "[2001:67c:4e8:f002::e]:443");
        assert_eq!(first(10003, IpFamily::V4), "149.154.175.117:443");
        assert!(dc_addrs(10004, IpFamily::V4).is_empty());
        assert!(dc_addrs(10203, IpFamily::V4).is_empty());
        assert_eq!(
            DcTarget::from_wire(-10002),
            DcTarget {
                number: 2,
                media: true,
                test: true
            }
        );
    }

    #[test]
    fn unknown_ids_are_empty_not_panics() {
        for dc in [0, 6, 200, 10000, i16::MIN, i16::MAX, -1 - 10_000 * 3] {
            assert!(dc_addrs(dc, IpFamily::V4).is_empty(), "{dc}");
        }
        assert_eq!(DcTarget::from_wire(i16::MIN).number, 32768 - 10_000);
    }
}
