//! The ME leg's "full" framing: `u32 length` (payload + 12) ‖ `i32 sequence` ‖ payload ‖
//! `u32 CRC32` (IEEE, over length, sequence and payload), all little-endian. Sequence numbers
//! start at −2 in each direction. After the nonce exchange each direction is one continuous
//! AES-256-CBC stream: every frame is followed by padding words (`04 00 00 00`, a "frame" of
//! length 4 that readers skip) up to a multiple of 16 bytes, then encrypted; the IV chains
//! across frames.

use aes::{
    Aes256,
    cipher::{
        BlockDecryptMut as _, BlockEncryptMut as _, KeyIvInit as _, consts::U16, inout::InOutBuf,
    },
};

/// The padding word: a length field of 4.
pub const PADDING_WORD: [u8; 4] = 4u32.to_le_bytes();
/// Length, sequence number and CRC around each payload.
pub const FRAME_OVERHEAD: usize = 12;
/// Largest frame either side accepts (length field included).
pub const MAX_FRAME_LEN: usize = 1 << 24;
/// The first sequence number in each direction.
pub const FIRST_SEQ: i32 = -2;

const BLOCK: usize = 16;

/// A frame that breaks the framing rules; the connection cannot continue after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length field below 12, above [`MAX_FRAME_LEN`] or not a multiple of 4.
    #[error("frame length {0} out of bounds")]
    Length(u32),
    /// A sequence number other than the next one.
    #[error("sequence number {got}, expected {expected}")]
    Sequence {
        /// The number due.
        expected: i32,
        /// The number received.
        got: i32,
    },
    /// The CRC32 does not match.
    #[error("bad CRC32")]
    Checksum,
    /// A payload to send that is not whole 32-bit words, or is too long.
    #[error("payload of {0} bytes cannot be framed")]
    Payload(usize),
}

/// Frames payloads for one direction (sending).
pub struct FrameWriter {
    seq: i32,
    cipher: Option<cbc::Encryptor<Aes256>>,
}

impl Default for FrameWriter {
    fn default() -> Self {
        FrameWriter::new()
    }
}

impl FrameWriter {
    /// A writer in the plaintext phase, at the first sequence number.
    pub fn new() -> FrameWriter {
        FrameWriter {
            seq: FIRST_SEQ,
            cipher: None,
        }
    }

    /// Encrypts every frame written from now on.
    pub fn encrypt(&mut self, key: &[u8; 32], iv: &[u8; 16]) {
        self.cipher = Some(cbc::Encryptor::new(key.into(), iv.into()));
    }

    /// Appends one frame carrying `payload` to `out` (padded and encrypted once encryption is
    /// on).
    pub fn write(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let len = payload.len() + FRAME_OVERHEAD;
        if !payload.len().is_multiple_of(4) || len > MAX_FRAME_LEN {
            return Err(FrameError::Payload(payload.len()));
        }
        let start = out.len();
        out.reserve(len + BLOCK);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
        self.seq = self.seq.wrapping_add(1);
        if let Some(cipher) = &mut self.cipher {
            while !(out.len() - start).is_multiple_of(BLOCK) {
                out.extend_from_slice(&PADDING_WORD);
            }
            let (blocks, _) = InOutBuf::from(&mut out[start..]).into_chunks::<U16>();
            cipher.encrypt_blocks_inout_mut(blocks);
        }
        Ok(())
    }
}

/// Parses frames from one direction's bytes (receiving).
pub struct FrameReader {
    seq: i32,
    cipher: Option<cbc::Decryptor<Aes256>>,
    buf: Vec<u8>,
    /// Start of the first unparsed byte.
    pos: usize,
    /// End of the bytes that are plaintext (decrypted, or from the plaintext phase).
    clear: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader in the plaintext phase, at the first sequence number.
    pub fn new() -> FrameReader {
        FrameReader {
            seq: FIRST_SEQ,
            cipher: None,
            buf: Vec::new(),
            pos: 0,
            clear: 0,
        }
    }

    /// Decrypts every byte not yet parsed, and all that follow.
    pub fn decrypt(&mut self, key: &[u8; 32], iv: &[u8; 16]) {
        self.cipher = Some(cbc::Decryptor::new(key.into(), iv.into()));
        self.clear = self.pos;
        self.decrypt_blocks();
    }

    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.cipher.is_some() {
            self.decrypt_blocks();
        } else {
            self.clear = self.buf.len();
        }
    }

    /// Bytes received and not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn decrypt_blocks(&mut self) {
        let Some(cipher) = &mut self.cipher else {
            return;
        };
        let whole = (self.buf.len() - self.clear) / BLOCK * BLOCK;
        // All blocks in one call: CBC decryption of independent blocks runs in parallel
        // (eight at a time with AES-NI), where one call per block waits out each block's
        // full latency.
        let (blocks, _) =
            InOutBuf::from(&mut self.buf[self.clear..self.clear + whole]).into_chunks::<U16>();
        cipher.decrypt_blocks_inout_mut(blocks);
        self.clear += whole;
    }

    /// The next whole frame's payload, `None` until one has arrived. The payload is borrowed
    /// from the reader's buffer until the next call.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let avail = &self.buf[self.pos..self.clear];
            let Some(len) = avail.first_chunk::<4>().map(|b| u32::from_le_bytes(*b)) else {
                self.compact();
                return Ok(None);
            };
            if len == 4 {
                self.pos += 4;
                continue;
            }
            let n = len as usize;
            if !(FRAME_OVERHEAD..=MAX_FRAME_LEN).contains(&n) || !n.is_multiple_of(4) {
                return Err(FrameError::Length(len));
            }
            if avail.len() < n {
                self.compact();
                return Ok(None);
            }
            let frame = &avail[..n];
            let seq = i32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
            if seq != self.seq {
                return Err(FrameError::Sequence {
                    expected: self.seq,
                    got: seq,
                });
            }
            let crc = u32::from_le_bytes([frame[n - 4], frame[n - 3], frame[n - 2], frame[n - 1]]);
            if crc32fast::hash(&frame[..n - 4]) != crc {
                return Err(FrameError::Checksum);
            }
            let start = self.pos;
            self.pos += n;
            self.seq = self.seq.wrapping_add(1);
            return Ok(Some(&self.buf[start + 8..start + n - 4]));
        }
    }

    /// Drops parsed bytes once they are a good part of the buffer.
    fn compact(&mut self) {
        if self.pos == 0 {
            return;
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
        } else if self.pos >= 64 * 1024 || self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
        } else {
            return;
        }
        self.clear -= self.pos;
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const IV: [u8; 16] = [9; 16];

    fn pair() -> (FrameWriter, FrameReader) {
        let (mut w, mut r) = (FrameWriter::new(), FrameReader::new());
        w.encrypt(&KEY, &IV);
        r.decrypt(&KEY, &IV);
        (w, r)
    }

    #[test]
    fn plaintext_frame_vector() {
        // length 16, seq -2, payload 01 02 03 04, CRC32 over the first 12 bytes.
        let mut out = Vec::new();
        FrameWriter::new()
            .write(&[1, 2, 3, 4], &mut out)
            .expect("aligned");
        assert_eq!(hex::encode(&out[..12]), "10000000feffffff01020304");
        assert_eq!(
            u32::from_le_bytes(out[12..16].try_into().expect("4")),
            crc32fast::hash(&out[..12])
        );
        assert_eq!(out.len(), 16, "no padding before encryption");
    }

    #[test]
    fn encrypted_frames_are_padded_to_blocks_and_round_trip() {
        let (mut w, mut r) = pair();
        let mut wire = Vec::new();
        for n in [4usize, 8, 20, 400, 4096] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            w.write(&payload, &mut wire).expect("aligned");
            assert_eq!(wire.len() % 16, 0);
        }
        // Delivered in awkward pieces.
        for piece in wire.chunks(7) {
            r.push(piece);
        }
        for n in [4usize, 8, 20, 400, 4096] {
            let got = r.next_frame().expect("valid").expect("whole");
            assert_eq!(got.len(), n);
            assert!(got.iter().enumerate().all(|(i, b)| *b == i as u8));
        }
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn switching_keeps_unparsed_bytes_for_decryption() {
        let (mut w, mut r) = (FrameWriter::new(), FrameReader::new());
        let mut wire = Vec::new();
        w.write(&[0xaa; 32], &mut wire).expect("aligned");
        w.encrypt(&KEY, &IV);
        w.write(&[0xbb; 32], &mut wire).expect("aligned");
        r.push(&wire);
        assert_eq!(r.next_frame(), Ok(Some(&[0xaa; 32][..])));
        r.decrypt(&KEY, &IV);
        assert_eq!(r.next_frame(), Ok(Some(&[0xbb; 32][..])));
    }

    #[test]
    fn refuses_bad_crc_sequence_and_lengths() {
        let mut wire = Vec::new();
        FrameWriter::new()
            .write(&[1; 8], &mut wire)
            .expect("aligned");
        let mut bad_crc = wire.clone();
        bad_crc[19] ^= 1;
        let mut r = FrameReader::new();
        r.push(&bad_crc);
        assert_eq!(r.next_frame(), Err(FrameError::Checksum));

        let mut w = FrameWriter::new();
        let mut skipped = Vec::new();
        w.write(&[1; 8], &mut Vec::new()).expect("aligned");
        w.write(&[1; 8], &mut skipped).expect("aligned");
        let mut r = FrameReader::new();
        r.push(&skipped);
        assert_eq!(
            r.next_frame(),
            Err(FrameError::Sequence {
                expected: -2,
                got: -1
            })
        );

        for len in [8u32, 13, (MAX_FRAME_LEN + 4) as u32, u32::MAX] {
            let mut r = FrameReader::new();
            r.push(&len.to_le_bytes());
            assert_eq!(r.next_frame(), Err(FrameError::Length(len)), "{len}");
        }
    }

    #[test]
    fn refuses_payloads_it_cannot_frame() {
        let mut w = FrameWriter::new();
        assert_eq!(
            w.write(&[0; 5], &mut Vec::new()),
            Err(FrameError::Payload(5))
        );
        assert_eq!(
            w.write(&vec![0; MAX_FRAME_LEN], &mut Vec::new()),
            Err(FrameError::Payload(MAX_FRAME_LEN))
        );
    }

    #[test]
    fn a_large_frame_waits_for_all_its_bytes() {
        let (mut w, mut r) = pair();
        let mut wire = Vec::new();
        w.write(&vec![3u8; 100_000], &mut wire).expect("aligned");
        r.push(&wire[..50_000]);
        assert_eq!(r.next_frame(), Ok(None));
        r.push(&wire[50_000..]);
        assert_eq!(
            r.next_frame().expect("valid").map(|p| p.len()),
            Some(100_000)
        );
    }
}
