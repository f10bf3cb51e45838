//! The PROXY protocol header (HAProxy's, versions 1 and 2) a load balancer puts before a
//! client's bytes to say who the client is, and relay puts before a fronted connection's bytes
//! to tell a local web server who the prober is.
//!
//! - v1: one text line, at most 107 bytes: `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n`,
//!   or `PROXY UNKNOWN…\r\n`.
//! - v2: the 12-byte signature, a version/command byte (`0x21` PROXY, `0x20` LOCAL), a
//!   family/protocol byte (`0x11` TCP over IPv4, `0x21` TCP over IPv6), a big-endian length,
//!   then the addresses (IPv4: 4+4+2+2 bytes, IPv6: 16+16+2+2) and optional TLVs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted (addresses and TLVs): balancers send well under this.
pub const V2_MAX: usize = 16 + 512;

/// Which versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Text only.
    V1,
    /// Binary only.
    V2,
    /// Either.
    Any,
}

/// A PROXY header version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text.
    V1,
    /// Binary.
    V2,
}

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Version it came in.
    pub version: Version,
    /// The client and the address it connected to; `None` for v2 LOCAL (the balancer's own
    /// health check) and v1 UNKNOWN.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// A header that no balancer sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Neither signature (or one the listener does not accept).
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that breaks the format.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Result of looking at the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes.
    Done {
        /// The header.
        header: ProxyHeader,
        /// Its length: the client's own bytes start after it.
        len: usize,
    },
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8], accept: Accept) -> Result<Parsed, ProxyHeaderError> {
    let v1 = b"PROXY ";
    // Whether what has arrived so far can still be `sig`.
    let may_be = |sig: &[u8]| {
        let n = sig.len().min(buf.len());
        buf[..n] == sig[..n]
    };
    let (may_v1, may_v2) = (
        accept != Accept::V2 && may_be(v1),
        accept != Accept::V1 && may_be(&V2_SIGNATURE),
    );
    match (may_v1, may_v2) {
        (false, false) => Err(ProxyHeaderError::Missing),
        (true, _) if buf.len() >= v1.len() => parse_v1(buf),
        (_, true) if buf.len() >= V2_SIGNATURE.len() => parse_v2(buf),
        _ => Ok(Parsed::Incomplete),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| ProxyHeaderError::Malformed("v1 line is not text"))?;
    let words: Vec<&str> = line.split(' ').collect();
    let addrs = match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => None,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 address"))?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err(ProxyHeaderError::Malformed(
                        "v1 address of the other family",
                    ));
                }
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, ProxyHeaderError> {
                // Decimal without leading zeros or signs, as the format requires.
                if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
                    return Err(ProxyHeaderError::Malformed("v1 port"));
                }
                s.parse()
                    .map_err(|_| ProxyHeaderError::Malformed("v1 port"))
            };
            Some((
                SocketAddr::new(ip(src)?, port(sport)?),
                SocketAddr::new(ip(dst)?, port(dport)?),
            ))
        }
        _ => return Err(ProxyHeaderError::Malformed("v1 line")),
    };
    Ok(Parsed::Done {
        header: ProxyHeader {
            version: Version::V1,
            addrs,
        },
        len: end + 2,
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(Parsed::Incomplete);
    };
    let (ver_cmd, fam, len) = (
        fixed[12],
        fixed[13],
        u16::from_be_bytes([fixed[14], fixed[15]]),
    );
    let total = 16 + usize::from(len);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version"));
    }
    if total > V2_MAX {
        return Err(ProxyHeaderError::Malformed("v2 header too long"));
    }
    let Some(body) = buf.get(16..total) else {
        return Ok(Parsed::Incomplete);
    };
    let addrs = match ver_cmd & 0x0f {
        // LOCAL: the balancer speaking for itself; whatever follows is ignored.
        0 => None,
        1 => match fam {
            0x11 => {
                let a = body
                    .get(..12)
                    .ok_or(ProxyHeaderError::Malformed("v2 IPv4 length"))?;
                let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                Some((
                    SocketAddr::new(ip(&a[0..4]), port(&a[8..10])),
                    SocketAddr::new(ip(&a[4..8]), port(&a[10..12])),
                ))
            }
            0x21 => {
                let a = body
                    .get(..36)
                    .ok_or(ProxyHeaderError::Malformed("v2 IPv6 length"))?;
                let ip = |b: &[u8]| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(b);
                    IpAddr::V6(Ipv6Addr::from(o))
                };
                let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                Some((
                    SocketAddr::new(ip(&a[0..16]), port(&a[32..34])),
                    SocketAddr::new(ip(&a[16..32]), port(&a[34..36])),
                ))
            }
            _ => return Err(ProxyHeaderError::Malformed("v2 family is not TCP over IP")),
        },
        _ => return Err(ProxyHeaderError::Malformed("v2 command")),
    };
    Ok(Parsed::Done {
        header: ProxyHeader {
            version: Version::V2,
            addrs,
        },
        len: total,
    })
}

/// The header saying `client` connected to `server`, in `version`. Mixed families (an IPv4
/// client on an IPv6 socket) are written as IPv6, v4-mapped.
pub fn encode(version: Version, client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let canonical = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    };
    let (mut c, mut s) = (canonical(client), canonical(server));
    if c.is_ipv4() != s.is_ipv4() {
        let v6 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        (c, s) = (v6(c), v6(s));
    }
    match version {
        Version::V1 => format!(
            "PROXY {} {} {} {} {}\r\n",
            if c.is_ipv4() { "TCP4" } else { "TCP6" },
            c.ip(),
            s.ip(),
            c.port(),
            s.port()
        )
        .into_bytes(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21);
            match (c.ip(), s.ip()) {
                (IpAddr::V4(ci), IpAddr::V4(si)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&ci.octets());
                    out.extend_from_slice(&si.octets());
                }
                (ci, si) => {
                    let o = |ip: IpAddr| match ip {
                        IpAddr::V6(v6) => v6.octets(),
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    };
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&o(ci));
                    out.extend_from_slice(&o(si));
                }
            }
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&s.port().to_be_bytes());
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn v1_vectors() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
        assert_eq!(
            parse(line, Accept::Any),
            Ok(Parsed::Done {
                header: ProxyHeader {
                    version: Version::V1,
                    addrs: Some((addr("192.168.0.1:56324"), addr("192.168.0.11:443"))),
                },
                len: 47,
            })
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\n";
        let Ok(Parsed::Done { header, len }) = parse(v6, Accept::V1) else {
            panic!("v6 line");
        };
        assert_eq!(len, v6.len());
        assert_eq!(
            header.addrs,
            Some((addr("[2001:db8::1]:4000"), addr("[2001:db8::2]:443")))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", Accept::V1),
            Ok(Parsed::Done {
                header: ProxyHeader {
                    version: Version::V1,
                    addrs: None
                },
                len: 15
            })
        );
    }

    #[test]
    fn v2_vectors() {
        let mut v4 = V2_SIGNATURE.to_vec();
        v4.extend_from_slice(&[
            0x21, 0x11, 0x00, 0x0c, 10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb,
        ]);
        v4.extend_from_slice(b"client bytes");
        assert_eq!(
            parse(&v4, Accept::V2),
            Ok(Parsed::Done {
                header: ProxyHeader {
                    version: Version::V2,
                    addrs: Some((addr("10.0.0.1:8080"), addr("10.0.0.2:443"))),
                },
                len: 28,
            })
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local, Accept::Any),
            Ok(Parsed::Done {
                header: ProxyHeader {
                    version: Version::V2,
                    addrs: None
                },
                len: 16
            })
        );
    }

    #[test]
    fn encoded_headers_parse_back_whatever_the_split() {
        let pairs = [
            (addr("198.51.100.7:51000"), addr("203.0.113.1:443")),
            (addr("[2001:db8::7]:51000"), addr("[2001:db8::1]:443")),
            (addr("198.51.100.7:51000"), addr("[2001:db8::1]:443")),
        ];
        for (client, server) in pairs {
            for version in [Version::V1, Version::V2] {
                let wire = encode(version, client, server);
                for cut in 0..wire.len() {
                    assert_eq!(
                        parse(&wire[..cut], Accept::Any),
                        Ok(Parsed::Incomplete),
                        "{cut}"
                    );
                }
                let Ok(Parsed::Done { header, len }) = parse(&wire, Accept::Any) else {
                    panic!("{version:?} {client}");
                };
                assert_eq!(len, wire.len());
                let (c, _) = header.addrs.expect("addresses");
                assert_eq!(c.port(), client.port());
                let same_ip = match (c.ip(), client.ip()) {
                    (IpAddr::V6(v6), IpAddr::V4(v4)) => v6.to_ipv4_mapped() == Some(v4),
                    (a, b) => a == b,
                };
                assert!(same_ip, "{c} for {client}");
            }
        }
    }

    #[test]
    fn refuses_what_no_balancer_sends() {
        let missing = [&b"GET / HTTP/1.1\r\n"[..], &[0x16, 0x03, 0x01], b"\xef"];
        for bytes in missing {
            assert_eq!(parse(bytes, Accept::Any), Err(ProxyHeaderError::Missing));
        }
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", Accept::V2),
            Err(ProxyHeaderError::Missing)
        );
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad, Accept::Any), Err(ProxyHeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(
            parse(&long, Accept::V1),
            Err(ProxyHeaderError::Malformed(_))
        ));
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert!(matches!(
            parse(&bad_version, Accept::V2),
            Err(ProxyHeaderError::Malformed(_))
        ));
        let mut too_long = V2_SIGNATURE.to_vec();
        too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(
            parse(&too_long, Accept::V2),
            Err(ProxyHeaderError::Malformed(_))
        ));
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0; 216]);
        assert!(matches!(
            parse(&unix, Accept::V2),
            Err(ProxyHeaderError::Malformed(_))
        ));
    }
}
