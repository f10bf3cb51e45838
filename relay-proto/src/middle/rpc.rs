//! The RPC messages the ME leg's frames carry. All integers little-endian.
//!
//! - `RPC_NONCE` (plaintext, both ways): type ‖ key selector (the proxy secret's first 4
//!   bytes) ‖ crypto schema (1: AES) ‖ unix time ‖ 16-byte nonce.
//! - `RPC_HANDSHAKE` (first encrypted frame, both ways): type ‖ flags ‖ sender PID ‖ peer PID
//!   (12 bytes each); the answer echoes the proxy's PID as its peer PID.
//! - `RPC_PROXY_REQ` (proxy → ME, one per client message): type ‖ flags ‖ connection id ‖
//!   client address ‖ proxy address (each a 16-byte IPv6 or IPv4-mapped address and a u32
//!   port) ‖ [extra block: u32 length ‖ `TL_PROXY_TAG` ‖ TL string of the 16-byte ad tag ‖
//!   3 zero bytes] ‖ the client's message.
//! - `RPC_PROXY_ANS` (type ‖ flags ‖ connection id ‖ message), `RPC_SIMPLE_ACK` (type ‖
//!   connection id ‖ confirm), `RPC_CLOSE_EXT`/`RPC_CLOSE_CONN` (type ‖ connection id) from
//!   the ME; `RPC_CLOSE_EXT` from the proxy when a client leaves; `RPC_PING`/`RPC_PONG`
//!   (type ‖ ping id) both ways.

use std::net::{IpAddr, SocketAddr};

use crate::ProtoTag;

/// `RPC_NONCE`.
pub const RPC_NONCE: u32 = 0x7acb_87aa;
/// `RPC_HANDSHAKE`.
pub const RPC_HANDSHAKE: u32 = 0x7682_eef5;
/// `RPC_PROXY_REQ`.
pub const RPC_PROXY_REQ: u32 = 0x36ce_f1ee;
/// `RPC_PROXY_ANS`.
pub const RPC_PROXY_ANS: u32 = 0x4403_da0d;
/// `RPC_SIMPLE_ACK`.
pub const RPC_SIMPLE_ACK: u32 = 0x3bac_409b;
/// `RPC_CLOSE_EXT`.
pub const RPC_CLOSE_EXT: u32 = 0x5eb6_34a2;
/// `RPC_CLOSE_CONN`.
pub const RPC_CLOSE_CONN: u32 = 0x1fcf_425d;
/// `RPC_PING`.
pub const RPC_PING: u32 = 0x5730_a2df;
/// `RPC_PONG`.
pub const RPC_PONG: u32 = 0x8430_eaa7;
/// `TL_PROXY_TAG`, the ad tag's constructor in the extra block.
pub const TL_PROXY_TAG: u32 = 0xdb1e_26ae;
/// Crypto schema 1: AES-256-CBC.
pub const CRYPTO_AES: u32 = 1;

/// `RPC_PROXY_REQ` flag bits.
pub mod flags {
    /// The message starts with a zero auth key id (an unencrypted MTProto message).
    pub const NOT_ENCRYPTED: u32 = 0x2;
    /// The extra block carries an ad tag.
    pub const HAS_AD_TAG: u32 = 0x8;
    /// Always set.
    pub const MAGIC: u32 = 0x1000;
    /// Always set: the extended request layout.
    pub const EXTMODE2: u32 = 0x2_0000;
    /// Padded intermediate framing (with [`INTERMEDIATE`]).
    pub const PAD: u32 = 0x800_0000;
    /// Intermediate framing.
    pub const INTERMEDIATE: u32 = 0x2000_0000;
    /// Abridged framing.
    pub const ABRIDGED: u32 = 0x4000_0000;
    /// The client asked for a quick acknowledgement.
    pub const QUICK_ACK: u32 = 0x8000_0000;
}

/// Length of a nonce message.
pub const NONCE_LEN: usize = 32;
/// Length of a handshake message.
pub const HANDSHAKE_LEN: usize = 32;

/// A message from the ME that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Too short for its type.
    #[error("{kind} of {len} bytes is too short")]
    Short {
        /// The message type.
        kind: &'static str,
        /// Its length.
        len: usize,
    },
    /// A nonce or handshake answer that does not match what was sent.
    #[error("{0}")]
    Mismatch(&'static str),
}

/// An `RPC_NONCE` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    /// The proxy secret's first 4 bytes.
    pub key_selector: [u8; 4],
    /// Sender's unix time (seconds, truncated to 32 bits).
    pub time: u32,
    /// Sender's random nonce.
    pub nonce: [u8; 16],
}

impl Nonce {
    /// The 32 bytes on the wire.
    pub fn encode(&self) -> [u8; NONCE_LEN] {
        let mut out = [0u8; NONCE_LEN];
        out[..4].copy_from_slice(&RPC_NONCE.to_le_bytes());
        out[4..8].copy_from_slice(&self.key_selector);
        out[8..12].copy_from_slice(&CRYPTO_AES.to_le_bytes());
        out[12..16].copy_from_slice(&self.time.to_le_bytes());
        out[16..].copy_from_slice(&self.nonce);
        out
    }

    /// The ME's answer to `sent`: same type, key selector and schema.
    pub fn decode_answer(bytes: &[u8], sent: &Nonce) -> Result<Nonce, RpcError> {
        let b: &[u8; NONCE_LEN] = bytes.try_into().map_err(|_| RpcError::Short {
            kind: "nonce answer",
            len: bytes.len(),
        })?;
        if u32_at(b, 0) != RPC_NONCE {
            return Err(RpcError::Mismatch("nonce answer of another type"));
        }
        if b[4..8] != sent.key_selector {
            return Err(RpcError::Mismatch(
                "the ME knows another proxy secret (key selector differs)",
            ));
        }
        if u32_at(b, 8) != CRYPTO_AES {
            return Err(RpcError::Mismatch(
                "the ME chose a crypto schema other than AES",
            ));
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&b[16..]);
        Ok(Nonce {
            key_selector: sent.key_selector,
            time: u32_at(b, 12),
            nonce,
        })
    }
}

/// An `RPC_HANDSHAKE` message with flags 0.
pub fn encode_handshake(sender_pid: &[u8; 12], peer_pid: &[u8; 12]) -> [u8; HANDSHAKE_LEN] {
    let mut out = [0u8; HANDSHAKE_LEN];
    out[..4].copy_from_slice(&RPC_HANDSHAKE.to_le_bytes());
    out[8..20].copy_from_slice(sender_pid);
    out[20..].copy_from_slice(peer_pid);
    out
}

/// Checks the ME's handshake answer: the right type, and our PID echoed as its peer.
pub fn check_handshake_answer(bytes: &[u8], our_pid: &[u8; 12]) -> Result<(), RpcError> {
    if bytes.len() != HANDSHAKE_LEN {
        return Err(RpcError::Short {
            kind: "handshake answer",
            len: bytes.len(),
        });
    }
    if u32_at(bytes, 0) != RPC_HANDSHAKE {
        return Err(RpcError::Mismatch("handshake answer of another type"));
    }
    if bytes[20..32] != our_pid[..] {
        return Err(RpcError::Mismatch("handshake answer for another peer"));
    }
    Ok(())
}

/// One client message for the ME.
#[derive(Debug, Clone, Copy)]
pub struct ProxyReq<'a> {
    /// The client's connection id on this ME connection.
    pub conn_id: u64,
    /// The client's framing.
    pub tag: ProtoTag,
    /// The client asked for a quick acknowledgement.
    pub quick_ack: bool,
    /// The client's address.
    pub client: SocketAddr,
    /// The proxy's address the client connected to.
    pub proxy: SocketAddr,
    /// The promoted channel's tag, if any.
    pub ad_tag: Option<&'a [u8; 16]>,
    /// The client's message, unframed.
    pub message: &'a [u8],
}

/// Bytes of an `RPC_PROXY_REQ` before the message.
pub const fn proxy_req_overhead(ad_tag: bool) -> usize {
    4 + 4 + 8 + 20 + 20 + if ad_tag { 4 + 24 } else { 0 }
}

impl ProxyReq<'_> {
    /// The flags word for this request.
    pub fn flags(&self) -> u32 {
        let mut f = flags::MAGIC | flags::EXTMODE2;
        f |= match self.tag {
            ProtoTag::Abridged => flags::ABRIDGED,
            ProtoTag::Intermediate => flags::INTERMEDIATE,
            ProtoTag::PaddedIntermediate => flags::INTERMEDIATE | flags::PAD,
        };
        if self.ad_tag.is_some() {
            f |= flags::HAS_AD_TAG;
        }
        if self.quick_ack {
            f |= flags::QUICK_ACK;
        }
        if self.message.starts_with(&[0; 8]) {
            f |= flags::NOT_ENCRYPTED;
        }
        f
    }

    /// Appends the request to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(proxy_req_overhead(self.ad_tag.is_some()) + self.message.len());
        out.extend_from_slice(&RPC_PROXY_REQ.to_le_bytes());
        out.extend_from_slice(&self.flags().to_le_bytes());
        out.extend_from_slice(&self.conn_id.to_le_bytes());
        put_addr(out, self.client);
        put_addr(out, self.proxy);
        if let Some(tag) = self.ad_tag {
            out.extend_from_slice(&24u32.to_le_bytes());
            out.extend_from_slice(&TL_PROXY_TAG.to_le_bytes());
            out.push(16);
            out.extend_from_slice(tag);
            out.extend_from_slice(&[0; 3]);
        }
        out.extend_from_slice(self.message);
    }
}

/// `RPC_CLOSE_EXT` for a client that left.
pub fn encode_close_ext(conn_id: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&RPC_CLOSE_EXT.to_le_bytes());
    out[4..].copy_from_slice(&conn_id.to_le_bytes());
    out
}

/// `RPC_PING` (or, with `pong`, its answer) carrying `id`.
pub fn encode_ping(id: u64, pong: bool) -> [u8; 12] {
    let mut out = [0u8; 12];
    let kind = if pong { RPC_PONG } else { RPC_PING };
    out[..4].copy_from_slice(&kind.to_le_bytes());
    out[4..].copy_from_slice(&id.to_le_bytes());
    out
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&u32::from(addr.port()).to_le_bytes());
}

/// A message from the ME, after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromMe<'a> {
    /// Bytes for a client.
    ProxyAns {
        /// The client's connection id.
        conn_id: u64,
        /// The message, unframed.
        message: &'a [u8],
    },
    /// A quick acknowledgement for a client.
    SimpleAck {
        /// The client's connection id.
        conn_id: u64,
        /// The 4 bytes the client expects.
        confirm: [u8; 4],
    },
    /// The ME closed a client's connection.
    Close {
        /// The client's connection id.
        conn_id: u64,
    },
    /// A keep-alive to answer.
    Ping(u64),
    /// The answer to our keep-alive.
    Pong(u64),
    /// A type this proxy does not use (skipped).
    Other(u32),
}

impl<'a> FromMe<'a> {
    /// Decodes one frame's payload.
    pub fn decode(b: &'a [u8]) -> Result<FromMe<'a>, RpcError> {
        let short = |kind| RpcError::Short { kind, len: b.len() };
        if b.len() < 4 {
            return Err(short("message"));
        }
        Ok(match u32_at(b, 0) {
            RPC_PROXY_ANS => {
                if b.len() < 16 {
                    return Err(short("RPC_PROXY_ANS"));
                }
                FromMe::ProxyAns {
                    conn_id: u64_at(b, 8),
                    message: &b[16..],
                }
            }
            RPC_SIMPLE_ACK => {
                if b.len() < 16 {
                    return Err(short("RPC_SIMPLE_ACK"));
                }
                FromMe::SimpleAck {
                    conn_id: u64_at(b, 4),
                    confirm: [b[12], b[13], b[14], b[15]],
                }
            }
            RPC_CLOSE_EXT | RPC_CLOSE_CONN => {
                if b.len() < 12 {
                    return Err(short("RPC_CLOSE_EXT"));
                }
                FromMe::Close {
                    conn_id: u64_at(b, 4),
                }
            }
            RPC_PING | RPC_PONG => {
                if b.len() < 12 {
                    return Err(short("RPC_PING"));
                }
                let id = u64_at(b, 4);
                if u32_at(b, 0) == RPC_PING {
                    FromMe::Ping(id)
                } else {
                    FromMe::Pong(id)
                }
            }
            other => FromMe::Other(other),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_vector_and_answer_checks() {
        let sent = Nonce {
            key_selector: [0xc4, 0xf9, 0xfa, 0xca],
            time: 0x6543_2100,
            nonce: [0x22; 16],
        };
        assert_eq!(
            hex::encode(sent.encode()),
            "aa87cb7ac4f9faca0100000000214365\
             22222222222222222222222222222222"
        );
        let mut answer = sent.encode();
        answer[16..].copy_from_slice(&[0x11; 16]);
        let got = Nonce::decode_answer(&answer, &sent).expect("valid");
        assert_eq!(got.nonce, [0x11; 16]);
        let mut other_secret = answer;
        other_secret[4] ^= 1;
        assert!(Nonce::decode_answer(&other_secret, &sent).is_err());
        let mut padded = answer.to_vec();
        padded.extend_from_slice(&[4, 0, 0, 0]);
        assert!(Nonce::decode_answer(&padded, &sent).is_err());
    }

    #[test]
    fn handshake_answer_must_echo_our_pid() {
        let ours = *b"IPIPPRPDTIME";
        let answer = encode_handshake(b"MEMEMEMEMEME", &ours);
        assert_eq!(check_handshake_answer(&answer, &ours), Ok(()));
        let other = encode_handshake(b"MEMEMEMEMEME", b"SOMEONE_ELSE");
        assert!(check_handshake_answer(&other, &ours).is_err());
        assert!(check_handshake_answer(&answer[..31], &ours).is_err());
    }

    fn request(tag: ProtoTag, ad: Option<&[u8; 16]>, quick_ack: bool, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ProxyReq {
            conn_id: 0x0102_0304_0506_0708,
            tag,
            quick_ack,
            client: "198.51.100.7:51000".parse().expect("addr"),
            proxy: "[2001:db8::1]:443".parse().expect("addr"),
            ad_tag: ad,
            message: msg,
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn proxy_req_vector_with_ad_tag() {
        let tag = [0xab; 16];
        let out = request(ProtoTag::PaddedIntermediate, Some(&tag), true, &[1; 8]);
        let expected = concat!(
            "eef1ce36",                         // RPC_PROXY_REQ
            "081002a8", // flags: quick-ack, intermediate, pad, extmode2, magic, tag
            "0807060504030201", // conn id
            "00000000000000000000ffffc6336407", // client ::ffff:198.51.100.7
            "38c70000", // port 51000
            "20010db8000000000000000000000001", // proxy
            "bb010000", // port 443
            "18000000", // extra block: 24 bytes
            "ae261edb", // TL_PROXY_TAG
            "10abababababababababababababababab000000",
            "0101010101010101",
        );
        assert_eq!(hex::encode(&out), expected);
        assert_eq!(out.len(), proxy_req_overhead(true) + 8);
    }

    #[test]
    fn proxy_req_flags_per_framing() {
        let flags = |tag, ad: bool, msg: &[u8]| {
            let out = request(tag, ad.then_some(&[0; 16]), false, msg);
            u32_at(&out, 4)
        };
        assert_eq!(flags(ProtoTag::Abridged, false, &[1; 8]), 0x4002_1000);
        assert_eq!(flags(ProtoTag::Intermediate, false, &[1; 8]), 0x2002_1000);
        assert_eq!(flags(ProtoTag::Intermediate, true, &[0; 8]), 0x2002_100a);
        let no_tag = request(ProtoTag::Abridged, None, false, &[1; 8]);
        assert_eq!(no_tag.len(), proxy_req_overhead(false) + 8);
    }

    #[test]
    fn decodes_what_the_me_sends() {
        let mut ans = RPC_PROXY_ANS.to_le_bytes().to_vec();
        ans.extend_from_slice(&0u32.to_le_bytes());
        ans.extend_from_slice(&7u64.to_le_bytes());
        ans.extend_from_slice(b"hello!!!");
        assert_eq!(
            FromMe::decode(&ans),
            Ok(FromMe::ProxyAns {
                conn_id: 7,
                message: b"hello!!!"
            })
        );
        let mut ack = RPC_SIMPLE_ACK.to_le_bytes().to_vec();
        ack.extend_from_slice(&9u64.to_le_bytes());
        ack.extend_from_slice(&[1, 2, 3, 0x84]);
        assert_eq!(
            FromMe::decode(&ack),
            Ok(FromMe::SimpleAck {
                conn_id: 9,
                confirm: [1, 2, 3, 0x84]
            })
        );
        assert_eq!(
            FromMe::decode(&encode_close_ext(5)),
            Ok(FromMe::Close { conn_id: 5 })
        );
        assert_eq!(FromMe::decode(&encode_ping(3, false)), Ok(FromMe::Ping(3)));
        assert_eq!(FromMe::decode(&encode_ping(3, true)), Ok(FromMe::Pong(3)));
        assert_eq!(FromMe::decode(&[1, 0, 0, 0]), Ok(FromMe::Other(1)));
        assert!(FromMe::decode(&ans[..15]).is_err());
        assert!(FromMe::decode(&[0x0d]).is_err());
    }
}
