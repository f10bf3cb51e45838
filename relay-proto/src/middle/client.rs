//! The client's framing inside its decrypted obfuscated2 stream, which only the ME leg needs:
//! the direct leg relays the stream as it is, the ME leg carries one message per request.
//!
//! - Abridged (`ef`): one byte `len / 4`, or `7f` and three bytes `len / 4` (little-endian);
//!   the first byte's top bit asks for a quick acknowledgement.
//! - Intermediate (`ee`): `u32` little-endian length, bit 31 asks for a quick acknowledgement.
//! - Padded intermediate (`dd`): as intermediate, then `len % 4` trailing random bytes that are
//!   not part of the message.
//!
//! Client lengths are never trusted: a length over the bound, a message that is not whole
//! 32-bit words, or an empty one fails that client only.

use rand::Rng;

use crate::ProtoTag;

/// A client message, unframed, borrowed from the decoder until its next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientMessage<'a> {
    /// The MTProto message.
    pub message: &'a [u8],
    /// The client asked for a quick acknowledgement.
    pub quick_ack: bool,
}

/// Framing a client sent that no client sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientFrameError {
    /// A declared length above the bound.
    #[error("message of {len} bytes is over the {max}-byte bound")]
    TooLong {
        /// The declared length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A message that is empty or not whole 32-bit words.
    #[error("message of {0} bytes is not whole 32-bit words")]
    Unaligned(usize),
}

/// Largest buffer a decoder keeps once it holds nothing.
const KEEP_BUFFER: usize = 64 << 10;

/// Cuts a client's decrypted stream into messages.
pub struct ClientDecoder {
    tag: ProtoTag,
    max: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl ClientDecoder {
    /// A decoder for `tag`'s framing refusing messages over `max` bytes.
    pub fn new(tag: ProtoTag, max: usize) -> ClientDecoder {
        ClientDecoder {
            tag,
            max,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Adds decrypted bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Gives back a large buffer once every message in it is taken: a client that sent one
    /// large request must not hold its size for the rest of the connection.
    fn release(&mut self) {
        if self.pos == self.buf.len() && self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// Bytes held for a message not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole message, `None` until one has arrived.
    pub fn next_message(&mut self) -> Result<Option<ClientMessage<'_>>, ClientFrameError> {
        self.release();
        let avail = &self.buf[self.pos..];
        let Some((header, len, quick_ack)) = self.header(avail)? else {
            return Ok(None);
        };
        if avail.len() < header + len {
            // Free what is parsed before waiting for a large message.
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            return Ok(None);
        }
        let keep = match self.tag {
            ProtoTag::PaddedIntermediate => len - len % 4,
            _ => len,
        };
        if keep == 0 || keep % 4 != 0 {
            return Err(ClientFrameError::Unaligned(len));
        }
        let start = self.pos + header;
        self.pos += header + len;
        Ok(Some(ClientMessage {
            message: &self.buf[start..start + keep],
            quick_ack,
        }))
    }

    /// Header length, message length and quick-ack flag, once the header is complete.
    fn header(&self, avail: &[u8]) -> Result<Option<(usize, usize, bool)>, ClientFrameError> {
        let (header, len, quick_ack) = match self.tag {
            ProtoTag::Abridged => {
                let Some(&first) = avail.first() else {
                    return Ok(None);
                };
                let quick_ack = first & 0x80 != 0;
                match first & 0x7f {
                    0x7f => {
                        let Some(b) = avail.get(1..4) else {
                            return Ok(None);
                        };
                        let words = u32::from_le_bytes([b[0], b[1], b[2], 0]) as usize;
                        (4, words * 4, quick_ack)
                    }
                    words => (1, usize::from(words) * 4, quick_ack),
                }
            }
            ProtoTag::Intermediate | ProtoTag::PaddedIntermediate => {
                let Some(b) = avail.first_chunk::<4>() else {
                    return Ok(None);
                };
                let word = u32::from_le_bytes(*b);
                (4, (word & 0x7fff_ffff) as usize, word & 0x8000_0000 != 0)
            }
        };
        if len > self.max {
            return Err(ClientFrameError::TooLong { len, max: self.max });
        }
        Ok(Some((header, len, quick_ack)))
    }
}

/// Appends `message` framed for a client speaking `tag` (padded intermediate gets 0–3 random
/// bytes after it, as the official proxy sends). Abridged can only carry whole 32-bit words.
pub fn encode_answer(
    tag: ProtoTag,
    message: &[u8],
    rng: &mut impl Rng,
    out: &mut Vec<u8>,
) -> Result<(), ClientFrameError> {
    match tag {
        ProtoTag::Abridged => {
            let words = message.len() / 4;
            if !message.len().is_multiple_of(4) || words >= 1 << 24 {
                return Err(ClientFrameError::Unaligned(message.len()));
            }
            if words < 0x7f {
                out.push(words as u8);
            } else {
                out.push(0x7f);
                out.extend_from_slice(&(words as u32).to_le_bytes()[..3]);
            }
            out.extend_from_slice(message);
        }
        ProtoTag::Intermediate => {
            let len = u32::try_from(message.len())
                .ok()
                .filter(|l| l & 0x8000_0000 == 0)
                .ok_or(ClientFrameError::Unaligned(message.len()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(message);
        }
        ProtoTag::PaddedIntermediate => {
            let pad = rng.random_range(0..4usize);
            let len = u32::try_from(message.len() + pad)
                .ok()
                .filter(|l| l & 0x8000_0000 == 0)
                .ok_or(ClientFrameError::Unaligned(message.len()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(message);
            let start = out.len();
            out.resize(start + pad, 0);
            rng.fill(&mut out[start..]);
        }
    }
    Ok(())
}

/// Appends a quick acknowledgement: the ME's 4 confirm bytes (top bit set), byte-reversed for
/// abridged so the flag comes first.
pub fn encode_quick_ack(tag: ProtoTag, confirm: [u8; 4], out: &mut Vec<u8>) {
    let mut c = confirm;
    if tag == ProtoTag::Abridged {
        c.reverse();
    }
    out.extend_from_slice(&c);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message and its quick-ack flag.
    fn decode_all(tag: ProtoTag, wire: &[u8], step: usize) -> Vec<(Vec<u8>, bool)> {
        let mut d = ClientDecoder::new(tag, 1 << 20);
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            d.push(piece);
            while let Some(m) = d.next_message().expect("valid") {
                out.push((m.message.to_vec(), m.quick_ack));
            }
        }
        assert_eq!(d.buffered(), 0);
        out
    }

    #[test]
    fn abridged_short_long_and_quick_ack() {
        let mut wire = vec![0x02];
        wire.extend_from_slice(&[1; 8]);
        wire.push(0x81);
        wire.extend_from_slice(&[2; 4]);
        wire.extend_from_slice(&[0x7f, 0x80, 0x00, 0x00]);
        wire.extend_from_slice(&[3; 512]);
        wire.extend_from_slice(&[0xff, 0x01, 0x00, 0x00]);
        wire.extend_from_slice(&[4; 4]);
        for step in [1, 3, wire.len()] {
            let got = decode_all(ProtoTag::Abridged, &wire, step);
            let summary: Vec<(usize, bool)> = got.iter().map(|(m, ack)| (m.len(), *ack)).collect();
            assert_eq!(summary, [(8, false), (4, true), (512, false), (4, true)]);
        }
    }

    #[test]
    fn intermediate_and_padded() {
        let mut wire = 8u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[1; 8]);
        wire.extend_from_slice(&(0x8000_0004u32).to_le_bytes());
        wire.extend_from_slice(&[2; 4]);
        let got = decode_all(ProtoTag::Intermediate, &wire, 2);
        assert_eq!(got[0].0, [1; 8]);
        assert!(got[1].1);

        // 8 bytes of message and 3 of padding.
        let mut padded = 11u32.to_le_bytes().to_vec();
        padded.extend_from_slice(&[5; 8]);
        padded.extend_from_slice(&[9; 3]);
        let got = decode_all(ProtoTag::PaddedIntermediate, &padded, 5);
        assert_eq!(got[0].0, [5; 8]);
    }

    #[test]
    fn a_large_message_does_not_keep_its_buffer() {
        let mut d = ClientDecoder::new(ProtoTag::Intermediate, 1 << 20);
        let mut wire = (512u32 << 10).to_le_bytes().to_vec();
        wire.resize(wire.len() + (512 << 10), 7);
        d.push(&wire);
        assert_eq!(
            d.next_message().expect("valid").map(|m| m.message.len()),
            Some(512 << 10)
        );
        assert_eq!(d.next_message(), Ok(None));
        assert!(d.buf.capacity() <= KEEP_BUFFER, "{}", d.buf.capacity());
        // Small messages keep theirs: no allocation per message.
        d.push(&[4, 0, 0, 0, 1, 2, 3, 4]);
        assert!(d.next_message().expect("valid").is_some());
        assert_eq!(d.next_message(), Ok(None));
        assert!(d.buf.capacity() >= 8);
    }

    #[test]
    fn refuses_lengths_no_client_sends() {
        let mut d = ClientDecoder::new(ProtoTag::Intermediate, 1024);
        d.push(&2048u32.to_le_bytes());
        assert_eq!(
            d.next_message(),
            Err(ClientFrameError::TooLong {
                len: 2048,
                max: 1024
            })
        );
        let mut d = ClientDecoder::new(ProtoTag::Intermediate, 1024);
        d.push(&6u32.to_le_bytes());
        d.push(&[0; 6]);
        assert_eq!(d.next_message(), Err(ClientFrameError::Unaligned(6)));
        let mut d = ClientDecoder::new(ProtoTag::Abridged, 1024);
        d.push(&[0x00]);
        assert_eq!(d.next_message(), Err(ClientFrameError::Unaligned(0)));
        let mut d = ClientDecoder::new(ProtoTag::PaddedIntermediate, 1024);
        d.push(&3u32.to_le_bytes());
        d.push(&[0; 3]);
        assert_eq!(d.next_message(), Err(ClientFrameError::Unaligned(3)));
        let mut d = ClientDecoder::new(ProtoTag::Abridged, 1 << 20);
        d.push(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next_message(),
            Err(ClientFrameError::TooLong { .. })
        ));
    }

    #[test]
    fn answers_decode_back_for_every_framing() {
        let mut rng = rand::rng();
        for tag in [
            ProtoTag::Abridged,
            ProtoTag::Intermediate,
            ProtoTag::PaddedIntermediate,
        ] {
            for len in [4usize, 8, 504, 508, 4096] {
                let message: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut wire = Vec::new();
                encode_answer(tag, &message, &mut rng, &mut wire).expect("encodable");
                let got = decode_all(tag, &wire, 7);
                assert_eq!(got.len(), 1);
                assert_eq!(got[0].0, message, "{tag:?} {len}");
            }
        }
    }

    #[test]
    fn abridged_answer_vectors() {
        let mut rng = rand::rng();
        let mut out = Vec::new();
        encode_answer(ProtoTag::Abridged, &[0; 8], &mut rng, &mut out).expect("words");
        assert_eq!(out[0], 2);
        out.clear();
        encode_answer(ProtoTag::Abridged, &[0; 508], &mut rng, &mut out).expect("words");
        assert_eq!(out[..4], [0x7f, 0x7f, 0, 0]);
        assert!(encode_answer(ProtoTag::Abridged, &[0; 5], &mut rng, &mut out).is_err());
    }

    #[test]
    fn quick_ack_is_reversed_only_for_abridged() {
        let confirm = [0x11, 0x22, 0x33, 0x84];
        let mut out = Vec::new();
        encode_quick_ack(ProtoTag::Abridged, confirm, &mut out);
        assert_eq!(out, [0x84, 0x33, 0x22, 0x11]);
        out.clear();
        encode_quick_ack(ProtoTag::Intermediate, confirm, &mut out);
        assert_eq!(out, confirm);
    }
}
