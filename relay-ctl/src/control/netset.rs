//! FireHOL netset files: one IPv4/IPv6 address or CIDR per line, `#` comments (whole-line or
//! trailing), blank lines ignored.
//!
//! Parsing never fails as a whole: malformed lines are collected as [`LineError`]s so the caller
//! can report them and still use the rest. Entries that touch private or special address space
//! (RFC 1918, loopback, link-local, CGNAT, ULA, multicast, ...) are kept but reported as
//! [`Warning`]s: public feeds such as `firehol_level1` list RFC 1918 ranges, and blocking them
//! on a proxy can lock out the operator's own network.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The outcome of parsing a netset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Netset {
    /// Valid entries in file order, host bits cleared (`10.1.2.3/8` becomes `10.0.0.0/8`).
    pub entries: Vec<IpNet>,
    /// Lines that are neither blank, comments, nor an address or CIDR.
    pub errors: Vec<LineError>,
    /// Valid entries that overlap private or special address space.
    pub warnings: Vec<Warning>,
}

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The offending text, comment stripped and trimmed.
    pub text: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: `{}` is not an IPv4/IPv6 address or CIDR",
            self.line, self.text
        )
    }
}

/// A valid entry that overlaps a private or special range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// 1-based line number.
    pub line: usize,
    /// The entry.
    pub net: IpNet,
    /// The special range it overlaps.
    pub range: &'static SpecialRange,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, net, range) = (self.line, self.net, &self.range.net);
        let name = self.range.name;
        if net == *range {
            write!(f, "line {line}: {net} is special address space ({name})")
        } else if net.prefix_len() < range.prefix_len() {
            write!(f, "line {line}: {net} covers {range} ({name})")
        } else {
            write!(f, "line {line}: {net} is in {range} ({name})")
        }
    }
}

/// A named range of private or special-purpose address space.
#[derive(Debug, PartialEq, Eq)]
pub struct SpecialRange {
    /// The range.
    pub net: IpNet,
    /// What it is.
    pub name: &'static str,
}

const fn v4(a: u8, b: u8, len: u8, name: &'static str) -> SpecialRange {
    SpecialRange {
        net: IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, 0, 0), len)),
        name,
    }
}

const fn v6(addr: Ipv6Addr, len: u8, name: &'static str) -> SpecialRange {
    SpecialRange {
        net: IpNet::V6(Ipv6Net::new_assert(addr, len)),
        name,
    }
}

/// Private and special ranges an operator would not normally want to block.
pub static SPECIAL_RANGES: [SpecialRange; 15] = [
    v4(0, 0, 8, "\"this network\", RFC 1122"),
    v4(10, 0, 8, "private, RFC 1918"),
    v4(100, 64, 10, "carrier-grade NAT, RFC 6598"),
    v4(127, 0, 8, "loopback"),
    v4(169, 254, 16, "link-local"),
    v4(172, 16, 12, "private, RFC 1918"),
    v4(192, 168, 16, "private, RFC 1918"),
    v4(224, 0, 4, "multicast"),
    v4(240, 0, 4, "reserved and broadcast"),
    v6(Ipv6Addr::UNSPECIFIED, 128, "unspecified"),
    v6(Ipv6Addr::LOCALHOST, 128, "loopback"),
    v6(
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        "IPv4-mapped",
    ),
    v6(
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique local, RFC 4193",
    ),
    v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// The first special range `net` overlaps (is inside of, or covers), if any.
pub fn special_range(net: &IpNet) -> Option<&'static SpecialRange> {
    SPECIAL_RANGES
        .iter()
        .find(|r| r.net.contains(net) || net.contains(&r.net))
}

/// Parses one entry: an address (a host prefix) or a CIDR (host bits cleared).
pub fn parse_entry(text: &str) -> Option<IpNet> {
    match text.split_once('/') {
        Some(_) => text.parse::<IpNet>().ok().map(|n| n.trunc()),
        None => text.parse::<IpAddr>().ok().map(IpNet::from),
    }
}

/// Parses netset text. Never fails; see [`Netset`].
pub fn parse(text: &str) -> Netset {
    let mut out = Netset::default();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
        if content.is_empty() {
            continue;
        }
        match parse_entry(content) {
            Some(net) => {
                if let Some(range) = special_range(&net) {
                    out.warnings.push(Warning { line, net, range });
                }
                out.entries.push(net);
            }
            None => out.errors.push(LineError {
                line,
                text: content.to_owned(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, time::Instant};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn comments_blanks_addresses_and_cidrs() {
        let text = "\
# firehol_level1
#
# Source: example

1.2.3.4
5.6.0.0/16   # trailing comment
\t2001:db8::1\t
2001:db8:1::/48#no space
   # indented comment
";
        let set = parse(text);
        assert_eq!(
            set.entries,
            vec![
                net("1.2.3.4/32"),
                net("5.6.0.0/16"),
                net("2001:db8::1/128"),
                net("2001:db8:1::/48"),
            ]
        );
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(parse("10.1.2.3/8").entries, vec![net("10.0.0.0/8")]);
        assert_eq!(parse("2001:db8::5/32").entries, vec![net("2001:db8::/32")]);
    }

    #[test]
    fn errors_carry_line_number_and_text() {
        let set = parse("1.2.3.4\nnot-an-ip # c\n1.2.3.4/33\n\n1.2.3.4 5.6.7.8\n::1/129\n");
        let lines: Vec<(usize, &str)> = set
            .errors
            .iter()
            .map(|e| (e.line, e.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            vec![
                (2, "not-an-ip"),
                (3, "1.2.3.4/33"),
                (5, "1.2.3.4 5.6.7.8"),
                (6, "::1/129"),
            ]
        );
        assert_eq!(set.entries, vec![net("1.2.3.4/32")]);
        assert_eq!(
            set.errors[0].to_string(),
            "line 2: `not-an-ip` is not an IPv4/IPv6 address or CIDR"
        );
    }

    #[test]
    fn private_and_special_ranges_warn_but_are_kept() {
        let text = "10.0.0.0/8\n192.168.1.1\n172.20.0.0/16\n100.64.0.0/10\n127.0.0.1\n\
                    169.254.0.0/16\n0.0.0.0/8\n224.0.0.0/3\nfc00::/7\nfd12::1\nfe80::/10\n\
                    ::1\nff02::1\n8.8.8.8\n2001:db8::/32\n";
        let set = parse(text);
        assert_eq!(set.entries.len(), 15);
        let warned: Vec<usize> = set.warnings.iter().map(|w| w.line).collect();
        assert_eq!(warned, (1..=13).collect::<Vec<_>>());
        assert_eq!(
            set.warnings[0].to_string(),
            "line 1: 10.0.0.0/8 is special address space (private, RFC 1918)"
        );
        assert_eq!(
            set.warnings[1].to_string(),
            "line 2: 192.168.1.1/32 is in 192.168.0.0/16 (private, RFC 1918)"
        );
        assert_eq!(
            set.warnings[7].to_string(),
            "line 8: 224.0.0.0/3 covers 224.0.0.0/4 (multicast)"
        );
    }

    #[test]
    fn a_wide_range_covering_private_space_warns() {
        let set = parse("8.0.0.0/5\n0.0.0.0/0\n::/0\n");
        assert_eq!(set.warnings.len(), 3);
        assert_eq!(set.warnings[0].range.net, net("10.0.0.0/8"));
    }

    #[test]
    fn public_neighbours_of_private_ranges_do_not_warn() {
        let set = parse("11.0.0.0/8\n172.32.0.0/11\n192.169.0.0/16\n100.128.0.0/9\nfe00::/9\n");
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    }

    #[test]
    fn crlf_line_endings() {
        let set = parse("1.2.3.4\r\n5.6.7.0/24\r\n");
        assert_eq!(set.entries.len(), 2);
        assert!(set.errors.is_empty());
    }

    #[test]
    fn hundred_thousand_lines_parse_fast() {
        let mut text = String::from("# big feed\n");
        for i in 0..100_000u32 {
            let [a, b, c, d] = (0x0100_0000 + i * 7).to_be_bytes();
            if i % 10 == 0 {
                let _ = writeln!(text, "2001:db8:{:x}::/48", i / 10);
            } else if i % 3 == 0 {
                let _ = writeln!(text, "{a}.{b}.{c}.0/24 # comment");
            } else {
                let _ = writeln!(text, "{a}.{b}.{c}.{d}");
            }
        }
        let start = Instant::now();
        let set = parse(&text);
        let took = start.elapsed();
        assert_eq!(set.entries.len(), 100_000);
        assert!(set.errors.is_empty());
        // Generous for an unoptimised test build on a slow machine; release parses in ~10 ms.
        assert!(took.as_secs() < 2, "parsing took {took:?}");
    }
}
