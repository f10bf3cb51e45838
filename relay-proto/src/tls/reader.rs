//! Incremental reassembly of a ClientHello from arbitrary byte chunks and any number of TLS
//! handshake records (bounded).
//!
//! TCP may split the hello at any byte, and DPI-evasion tools split it across several TLS
//! records; modern Telegram clients send ~1.8 KB hellos, so no size is assumed beyond the
//! bounds below.

use super::{CONTENT_HANDSHAKE, MAX_PLAINTEXT, RECORD_HEADER_LEN};

/// Largest accepted ClientHello handshake message (4-byte header included).
pub const MAX_HELLO_LEN: usize = 16 * 1024;
/// Most handshake records one ClientHello may be split into.
pub const MAX_HELLO_RECORDS: usize = 16;
/// Handshake message type of ClientHello.
const CLIENT_HELLO: u8 = 0x01;

/// What the first bytes of a connection say about fake TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Starts with `16 03 01`: a TLS handshake record.
    Tls,
    /// Cannot be a TLS ClientHello record.
    NotTls,
    /// Fewer than 3 bytes, all consistent with TLS so far.
    NeedMore,
}

/// Classifies a connection by its first bytes. A non-TLS obfuscated2 header starts with
/// `16 03 01` with probability ~2^-24 (clients only exclude `16 03 01 02`): negligible.
pub fn sniff(prefix: &[u8]) -> Sniff {
    const TLS: [u8; 3] = [CONTENT_HANDSHAKE, 0x03, 0x01];
    let n = prefix.len().min(TLS.len());
    if prefix[..n] != TLS[..n] {
        Sniff::NotTls
    } else if n < TLS.len() {
        Sniff::NeedMore
    } else {
        Sniff::Tls
    }
}

/// Why the bytes are not a (reasonable) ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The first record is not `16 03 01`.
    #[error("not a TLS handshake record")]
    NotTls,
    /// A continuation record is not a handshake record of version 03 01 or 03 03.
    #[error("bad continuation record header")]
    BadRecord,
    /// A record has length 0 or more than 2^14.
    #[error("bad record length {0}")]
    BadRecordLength(usize),
    /// The handshake message is not a ClientHello.
    #[error("handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello is longer than [`MAX_HELLO_LEN`].
    #[error("ClientHello of {0} bytes is too large")]
    TooLarge(usize),
    /// The ClientHello spans more than [`MAX_HELLO_RECORDS`] records.
    #[error("ClientHello split across too many records")]
    TooManyRecords,
    /// The last record carries bytes beyond the ClientHello.
    #[error("handshake records carry data after the ClientHello")]
    TrailingData,
    /// `feed` was called after the hello was complete.
    #[error("ClientHello already complete")]
    Finished,
}

/// Progress of [`ClientHelloReader::feed`].
#[derive(Debug)]
pub enum HelloRead {
    /// All input consumed; the hello is not complete yet.
    NeedMore,
    /// The hello is complete.
    Done(ReassembledHello),
}

/// A complete ClientHello.
#[derive(Debug, Clone)]
pub struct ReassembledHello {
    /// The handshake message (type, u24 length, body): the record payloads concatenated.
    pub handshake: Vec<u8>,
    /// Every byte of the records as received (for replay captures and fronting).
    pub raw: Vec<u8>,
    /// How many bytes of the last `feed` input belong to the hello; the rest follow it.
    pub consumed: usize,
    /// How many records carried the hello.
    pub records: usize,
}

/// Reassembles one ClientHello; feed it input until it returns [`HelloRead::Done`] or an error.
#[derive(Debug, Default)]
pub struct ClientHelloReader {
    raw: Vec<u8>,
    handshake: Vec<u8>,
    /// Offset in `raw` of the current record's header.
    record_start: usize,
    records: usize,
    finished: bool,
}

impl ClientHelloReader {
    /// A reader expecting the first byte of a connection.
    pub fn new() -> ClientHelloReader {
        ClientHelloReader::default()
    }

    /// Bytes buffered so far (all of them belong to handshake records).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Consumes `input` up to the end of the ClientHello.
    pub fn feed(&mut self, input: &[u8]) -> Result<HelloRead, ReadError> {
        if self.finished {
            return Err(ReadError::Finished);
        }
        let mut pos = 0;
        loop {
            // Record header, possibly arriving a byte at a time.
            let have = self.raw.len() - self.record_start;
            if have < RECORD_HEADER_LEN {
                let take = (RECORD_HEADER_LEN - have).min(input.len() - pos);
                self.raw.extend_from_slice(&input[pos..pos + take]);
                pos += take;
                self.check_header_prefix()?;
                if self.raw.len() - self.record_start < RECORD_HEADER_LEN {
                    return Ok(HelloRead::NeedMore);
                }
                let len = self.record_len();
                if len == 0 || len > MAX_PLAINTEXT {
                    return Err(ReadError::BadRecordLength(len));
                }
                self.records += 1;
                if self.records > MAX_HELLO_RECORDS {
                    return Err(ReadError::TooManyRecords);
                }
            }

            // Record body.
            let len = self.record_len();
            let body_have = self.raw.len() - self.record_start - RECORD_HEADER_LEN;
            let take = (len - body_have).min(input.len() - pos);
            let chunk = &input[pos..pos + take];
            self.raw.extend_from_slice(chunk);
            self.handshake.extend_from_slice(chunk);
            pos += take;
            let total = self.check_handshake()?;
            if body_have + take < len {
                return Ok(HelloRead::NeedMore);
            }
            self.record_start = self.raw.len();
            if Some(self.handshake.len()) == total {
                self.finished = true;
                return Ok(HelloRead::Done(ReassembledHello {
                    handshake: std::mem::take(&mut self.handshake),
                    raw: std::mem::take(&mut self.raw),
                    consumed: pos,
                    records: self.records,
                }));
            }
        }
    }

    fn record_len(&self) -> usize {
        let h = &self.raw[self.record_start..];
        usize::from(u16::from_be_bytes([h[3], h[4]]))
    }

    /// Checks the header bytes received so far, failing on the first wrong byte.
    fn check_header_prefix(&self) -> Result<(), ReadError> {
        let h = &self.raw[self.record_start..];
        let first = self.records == 0;
        let ok = h.first().is_none_or(|&b| b == CONTENT_HANDSHAKE)
            && h.get(1).is_none_or(|&b| b == 0x03)
            // tdlib sends 03 01; a splitter may write TLS 1.2's 03 03 on later records.
            && h.get(2).is_none_or(|&b| b == 0x01 || (!first && b == 0x03));
        match (ok, first) {
            (true, _) => Ok(()),
            (false, true) => Err(ReadError::NotTls),
            (false, false) => Err(ReadError::BadRecord),
        }
    }

    /// Checks the handshake bytes so far; returns the full message length once known.
    fn check_handshake(&self) -> Result<Option<usize>, ReadError> {
        let m = &self.handshake;
        if m.first().is_some_and(|&t| t != CLIENT_HELLO) {
            return Err(ReadError::NotClientHello);
        }
        if m.len() < 4 {
            return Ok(None);
        }
        let total = 4 + (usize::from(m[1]) << 16 | usize::from(m[2]) << 8 | usize::from(m[3]));
        if total > MAX_HELLO_LEN {
            return Err(ReadError::TooLarge(total));
        }
        if m.len() > total {
            return Err(ReadError::TrailingData);
        }
        Ok(Some(total))
    }
}

/// Splits a handshake message into records of at most `chunk` payload bytes (tests only).
#[cfg(test)]
pub(crate) fn split_records(handshake: &[u8], chunk: usize, later_version: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in handshake.chunks(chunk).enumerate() {
        let minor = if i == 0 { 0x01 } else { later_version };
        out.extend_from_slice(&[CONTENT_HANDSHAKE, 0x03, minor]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::KURIGRAM_TLS;

    fn kurigram() -> Vec<u8> {
        hex::decode(KURIGRAM_TLS.hello).unwrap()
    }

    fn done(r: Result<HelloRead, ReadError>) -> ReassembledHello {
        match r.unwrap() {
            HelloRead::Done(d) => d,
            HelloRead::NeedMore => panic!("hello incomplete"),
        }
    }

    #[test]
    fn sniffs_tls() {
        assert_eq!(sniff(&[]), Sniff::NeedMore);
        assert_eq!(sniff(&[0x16, 0x03]), Sniff::NeedMore);
        assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x07]), Sniff::Tls);
        assert_eq!(sniff(&[0x16, 0x03, 0x03]), Sniff::NotTls);
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniff::NotTls);
    }

    #[test]
    fn whole_record_at_once() {
        let rec = kurigram();
        assert!(rec.len() > 1700, "a modern, large hello");
        let mut with_more = rec.clone();
        with_more.extend_from_slice(&[0x14, 0x03, 0x03]);
        let d = done(ClientHelloReader::new().feed(&with_more));
        assert_eq!(d.consumed, rec.len());
        assert_eq!(d.raw, rec);
        assert_eq!(d.handshake, rec[5..]);
        assert_eq!(d.records, 1);
    }

    #[test]
    fn two_segments_split_at_every_byte() {
        let rec = kurigram();
        for cut in 0..=rec.len() {
            let mut r = ClientHelloReader::new();
            let d = match r.feed(&rec[..cut]).unwrap() {
                HelloRead::NeedMore => done(r.feed(&rec[cut..])),
                HelloRead::Done(d) => {
                    assert_eq!(cut, rec.len());
                    d
                }
            };
            assert_eq!(d.handshake, rec[5..], "cut at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let rec = kurigram();
        let mut r = ClientHelloReader::new();
        for (i, b) in rec.iter().enumerate() {
            match r.feed(std::slice::from_ref(b)).unwrap() {
                HelloRead::NeedMore => assert!(i + 1 < rec.len()),
                HelloRead::Done(d) => {
                    assert_eq!(i + 1, rec.len());
                    assert_eq!(d.consumed, 1);
                    assert_eq!(d.handshake, rec[5..]);
                }
            }
        }
        assert_eq!(r.feed(&[0x16]).unwrap_err(), ReadError::Finished);
    }

    #[test]
    fn multi_record_hellos() {
        let hs = kurigram()[5..].to_vec();
        for (chunk, later) in [
            (hs.len() / 2 + 1, 0x01),
            (hs.len() / 3 + 1, 0x03),
            (7, 0x03),
        ] {
            let wire = split_records(&hs, chunk, later);
            let records = hs.len().div_ceil(chunk);
            if records > MAX_HELLO_RECORDS {
                assert_eq!(
                    ClientHelloReader::new().feed(&wire).unwrap_err(),
                    ReadError::TooManyRecords
                );
                continue;
            }
            // Across records and across segments at every byte.
            for cut in 0..=wire.len() {
                let mut r = ClientHelloReader::new();
                let d = match r.feed(&wire[..cut]).unwrap() {
                    HelloRead::NeedMore => done(r.feed(&wire[cut..])),
                    HelloRead::Done(d) => d,
                };
                assert_eq!(d.handshake, hs);
                assert_eq!(d.records, records);
                assert_eq!(d.raw, wire);
            }
        }
    }

    #[test]
    fn rejects_bad_framing_early() {
        let feed = |b: &[u8]| ClientHelloReader::new().feed(b);
        assert_eq!(feed(b"G").unwrap_err(), ReadError::NotTls);
        assert_eq!(feed(&[0x16, 0x03, 0x03]).unwrap_err(), ReadError::NotTls);
        assert_eq!(
            feed(&[0x16, 0x03, 0x01, 0x00, 0x00]).unwrap_err(),
            ReadError::BadRecordLength(0)
        );
        assert_eq!(
            feed(&[0x16, 0x03, 0x01, 0x40, 0x01]).unwrap_err(),
            ReadError::BadRecordLength(16385)
        );
        assert_eq!(
            feed(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x02]).unwrap_err(),
            ReadError::NotClientHello
        );
        // Declared hello larger than the bound.
        assert_eq!(
            feed(&[0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00, 0x40, 0x00]).unwrap_err(),
            ReadError::TooLarge(4 + 0x4000)
        );
        // A record carrying more than the declared hello.
        assert_eq!(
            feed(&[
                0x16, 0x03, 0x01, 0x00, 0x06, 0x01, 0x00, 0x00, 0x01, 0xaa, 0xbb
            ])
            .unwrap_err(),
            ReadError::TrailingData
        );
        // An alert after the first record.
        let mut two = split_records(&kurigram()[5..], 1000, 0x03);
        two[1005] = 0x15;
        assert_eq!(feed(&two).unwrap_err(), ReadError::BadRecord);
    }

    #[test]
    fn tiny_records_are_bounded() {
        // 1-byte records: the 17th record is refused long before any large allocation.
        let wire = split_records(&kurigram()[5..], 1, 0x03);
        assert_eq!(
            ClientHelloReader::new().feed(&wire).unwrap_err(),
            ReadError::TooManyRecords
        );
    }
}
