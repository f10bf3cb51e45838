//! Key derivation for the ME leg. "Client" is the proxy, "server" the middle proxy. Each key
//! binds both nonces, the proxy's timestamp, both ends' addresses and ports as each end sees
//! them, and the proxy secret, so a proxy behind NAT must use its public address here (the
//! ME derives the keys from the address it sees).
//!
//! s = nonce_srv ‖ nonce_clt ‖ clt_time ‖ srv_ipv4 ‖ clt_port ‖ purpose ‖ clt_ipv4 ‖ srv_port ‖
//! secret ‖ nonce_srv ‖ [clt_ipv6 ‖ srv_ipv6] ‖ nonce_clt, with IPv4 addresses byte-reversed
//! (zero for an IPv6 connection), ports u16 little-endian; key = MD5(s[1..])[..12] ‖ SHA1(s),
//! iv = MD5(s[2..]).

use std::net::{IpAddr, SocketAddr};

use md5::{Digest as _, Md5};
use sha1::Sha1;

/// Which direction a key is for, named by the side that encrypts with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Proxy → ME.
    Client,
    /// ME → proxy.
    Server,
}

impl Purpose {
    fn bytes(self) -> &'static [u8; 6] {
        match self {
            Purpose::Client => b"CLIENT",
            Purpose::Server => b"SERVER",
        }
    }
}

/// Everything both ends put into the keys.
#[derive(Debug, Clone, Copy)]
pub struct KdfInput<'a> {
    /// The ME's nonce.
    pub nonce_srv: &'a [u8; 16],
    /// The proxy's nonce.
    pub nonce_clt: &'a [u8; 16],
    /// The proxy's timestamp, as sent in its nonce message.
    pub clt_time: u32,
    /// The proxy's address as the ME sees it.
    pub clt: SocketAddr,
    /// The ME's address.
    pub srv: SocketAddr,
    /// The proxy secret (`getProxySecret`).
    pub secret: &'a [u8],
}

/// An IPv4-mapped IPv6 address counts as IPv4, as the kernel reports either for one socket.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The AES-256-CBC key and IV for `purpose`.
pub fn derive_keys(input: &KdfInput<'_>, purpose: Purpose) -> ([u8; 32], [u8; 16]) {
    let (clt_ip, srv_ip) = (canonical(input.clt.ip()), canonical(input.srv.ip()));
    let (clt_v4, srv_v4, v6) = match (clt_ip, srv_ip) {
        (IpAddr::V4(c), IpAddr::V4(s)) => (reversed(c.octets()), reversed(s.octets()), None),
        (c, s) => {
            let as_v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            ([0; 4], [0; 4], Some((as_v6(c), as_v6(s))))
        }
    };
    let mut s = Vec::with_capacity(16 * 6 + 4 * 3 + 6 + 2 * 2 + input.secret.len());
    s.extend_from_slice(input.nonce_srv);
    s.extend_from_slice(input.nonce_clt);
    s.extend_from_slice(&input.clt_time.to_le_bytes());
    s.extend_from_slice(&srv_v4);
    s.extend_from_slice(&input.clt.port().to_le_bytes());
    s.extend_from_slice(purpose.bytes());
    s.extend_from_slice(&clt_v4);
    s.extend_from_slice(&input.srv.port().to_le_bytes());
    s.extend_from_slice(input.secret);
    s.extend_from_slice(input.nonce_srv);
    if let Some((clt6, srv6)) = v6 {
        s.extend_from_slice(&clt6);
        s.extend_from_slice(&srv6);
    }
    s.extend_from_slice(input.nonce_clt);

    let mut key = [0u8; 32];
    key[..12].copy_from_slice(&Md5::digest(&s[1..])[..12]);
    key[12..].copy_from_slice(&Sha1::digest(&s));
    let iv: [u8; 16] = Md5::digest(&s[2..]).into();
    (key, iv)
}

fn reversed(mut octets: [u8; 4]) -> [u8; 4] {
    octets.reverse();
    octets
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with Python's hashlib from the formula in the module doc.
    const SECRET: &[u8] = b"relay test proxy secret, 32 byte";

    fn input(clt: &str, srv: &str) -> KdfInput<'static> {
        KdfInput {
            nonce_srv: &[0x11; 16],
            nonce_clt: &[0x22; 16],
            clt_time: 0x6543_2100,
            clt: clt.parse().expect("addr"),
            srv: srv.parse().expect("addr"),
            secret: SECRET,
        }
    }

    #[test]
    fn ipv4_vectors() {
        let i = input("192.0.2.10:40000", "149.154.175.50:8888");
        let (key, iv) = derive_keys(&i, Purpose::Client);
        assert_eq!(hex::encode(key), KEY_V4_CLIENT);
        assert_eq!(hex::encode(iv), IV_V4_CLIENT);
        let (key, iv) = derive_keys(&i, Purpose::Server);
        assert_eq!(hex::encode(key), KEY_V4_SERVER);
        assert_eq!(hex::encode(iv), IV_V4_SERVER);
    }

    #[test]
    fn ipv6_vector() {
        let i = input("[2001:db8::10]:40000", "[2001:b28:f23d:f001::d]:8888");
        let (key, iv) = derive_keys(&i, Purpose::Client);
        assert_eq!(hex::encode(key), KEY_V6_CLIENT);
        assert_eq!(hex::encode(iv), IV_V6_CLIENT);
    }

    #[test]
    fn a_mapped_address_is_ipv4() {
        let plain = input("192.0.2.10:40000", "149.154.175.50:8888");
        let mapped = input("[::ffff:192.0.2.10]:40000", "[::ffff:149.154.175.50]:8888");
        assert_eq!(
            derive_keys(&plain, Purpose::Client),
            derive_keys(&mapped, Purpose::Client)
        );
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = input("192.0.2.10:40000", "149.154.175.50:8888");
        let k = derive_keys(&base, Purpose::Client);
        let other_port = input("192.0.2.10:40001", "149.154.175.50:8888");
        let other_ip = input("192.0.2.11:40000", "149.154.175.50:8888");
        assert_ne!(k, derive_keys(&other_port, Purpose::Client));
        assert_ne!(k, derive_keys(&other_ip, Purpose::Client));
        assert_ne!(k, derive_keys(&base, Purpose::Server));
        let other_time = KdfInput {
            clt_time: 1,
            ..base
        };
        assert_ne!(k, derive_keys(&other_time, Purpose::Client));
    }

    const KEY_V4_CLIENT: &str = "968fc735e3347486b72dd54a77b030df7006b321a08bf96d71a1e68e89526836";
    const IV_V4_CLIENT: &str = "6d522ac9f4ca1841cea3d420d10279d0";
    const KEY_V4_SERVER: &str = "395e468dda2299cd10539ce8bda53cb86a423ebfb7f54f54602388fb8d6a27cc";
    const IV_V4_SERVER: &str = "e0b37babf8999e9b35e7c0ab832c9851";
    const KEY_V6_CLIENT: &str = "e6a4f789980ef54c89ea6a2e67985462390928cb2d39d860b3420fb6f7a2f7ba";
    const IV_V6_CLIENT: &str = "9dc78a3e808fbf48f5bd31e7675d1ef4";
}
