//! Application-data phase (docs/protocol.md §6): strip `17 03 03 <len>` framing from the client's
//! stream (skipping ChangeCipherSpec) and add it to ours. Record boundaries carry no meaning.

use super::{CONTENT_APP_DATA, CONTENT_CCS, MAX_PLAINTEXT, RECORD_HEADER_LEN};

/// Largest payload per record we send (the TLS plaintext limit; tdlib rejects nothing below it).
pub const MAX_PAYLOAD: usize = MAX_PLAINTEXT;
/// Largest record payload we accept from a client (TLS 1.3 ciphertext limit).
pub const MAX_INCOMING: usize = MAX_PLAINTEXT + 256;

/// Why the client's record stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A record other than application data or ChangeCipherSpec (an alert, a handshake…).
    #[error("unexpected TLS record type {0:#04x}")]
    UnexpectedType(u8),
    /// Record version is not 03 03.
    #[error("unexpected TLS record version {0:02x?}")]
    BadVersion([u8; 2]),
    /// Record longer than [`MAX_INCOMING`].
    #[error("TLS record of {0} bytes is too long")]
    Oversize(usize),
    /// A ChangeCipherSpec that is not the single byte 01.
    #[error("malformed ChangeCipherSpec")]
    BadChangeCipherSpec,
}

/// Streaming decoder of the client→server record stream. Only the 5-byte header is buffered;
/// payload bytes are handed back as they arrive.
#[derive(Debug, Default, Clone)]
pub struct RecordDecoder {
    header: [u8; RECORD_HEADER_LEN],
    /// Header bytes collected for the next record.
    have: usize,
    /// Payload bytes of the current record still to come.
    remaining: usize,
    kind: u8,
}

impl RecordDecoder {
    /// A decoder at a record boundary.
    pub fn new() -> RecordDecoder {
        RecordDecoder::default()
    }

    /// Whether the stream so far ends exactly at a record boundary (a clean place for EOF).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Strips framing from the next chunk of the stream in place: moves the application-data
    /// payload bytes in `buf` to its front and returns how many there are. ChangeCipherSpec
    /// records are dropped; anything else is an error.
    pub fn decode_in_place(&mut self, buf: &mut [u8]) -> Result<usize, RecordError> {
        let (mut r, mut w) = (0, 0);
        while r < buf.len() {
            if self.remaining == 0 {
                let take = (RECORD_HEADER_LEN - self.have).min(buf.len() - r);
                self.header[self.have..self.have + take].copy_from_slice(&buf[r..r + take]);
                self.have += take;
                r += take;
                if self.have == RECORD_HEADER_LEN {
                    self.remaining = self.start_record()?;
                    self.have = 0;
                }
                continue;
            }
            let n = self.remaining.min(buf.len() - r);
            if self.kind == CONTENT_APP_DATA {
                // Payload only ever moves left (w <= r), so copy_within is safe and in place.
                buf.copy_within(r..r + n, w);
                w += n;
            } else if buf[r] != 0x01 {
                return Err(RecordError::BadChangeCipherSpec);
            }
            r += n;
            self.remaining -= n;
        }
        Ok(w)
    }

    /// Validates a complete header; returns the payload length.
    fn start_record(&mut self) -> Result<usize, RecordError> {
        let [kind, major, minor, hi, lo] = self.header;
        if kind != CONTENT_APP_DATA && kind != CONTENT_CCS {
            return Err(RecordError::UnexpectedType(kind));
        }
        if [major, minor] != [0x03, 0x03] {
            return Err(RecordError::BadVersion([major, minor]));
        }
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > MAX_INCOMING {
            return Err(RecordError::Oversize(len));
        }
        if kind == CONTENT_CCS && len != 1 {
            return Err(RecordError::BadChangeCipherSpec);
        }
        self.kind = kind;
        Ok(len)
    }
}

/// The header of an application-data record carrying `len` payload bytes (`len` ≤
/// [`MAX_PAYLOAD`]), for callers that write header and payload separately.
pub const fn app_data_header(len: u16) -> [u8; RECORD_HEADER_LEN] {
    let [hi, lo] = len.to_be_bytes();
    [CONTENT_APP_DATA, 0x03, 0x03, hi, lo]
}

/// Appends `payload` to `out` as application-data records of at most [`MAX_PAYLOAD`] bytes.
pub fn encode_records(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + payload.len().div_ceil(MAX_PAYLOAD) * RECORD_HEADER_LEN);
    for chunk in payload.chunks(MAX_PAYLOAD) {
        // chunks() bounds the length by MAX_PAYLOAD < 2^16.
        out.extend_from_slice(&app_data_header(chunk.len() as u16));
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::flight::CHANGE_CIPHER_SPEC;
    use crate::vectors::KURIGRAM_TLS as K;

    fn decode_all(dec: &mut RecordDecoder, chunks: &[&[u8]]) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        for c in chunks {
            let mut buf = c.to_vec();
            let n = dec.decode_in_place(&mut buf)?;
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    fn sample_stream() -> (Vec<u8>, Vec<u8>) {
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut wire = CHANGE_CIPHER_SPEC.to_vec();
        encode_records(&payload[..100], &mut wire);
        wire.extend_from_slice(&app_data_header(0));
        wire.extend_from_slice(&CHANGE_CIPHER_SPEC);
        encode_records(&payload[100..], &mut wire);
        (payload, wire)
    }

    #[test]
    fn encode_respects_max_payload() {
        let mut out = Vec::new();
        encode_records(&[0xab; MAX_PAYLOAD * 2 + 1], &mut out);
        assert_eq!(out.len(), MAX_PAYLOAD * 2 + 1 + 3 * RECORD_HEADER_LEN);
        assert_eq!(out[..5], [0x17, 0x03, 0x03, 0x40, 0x00]);
        let third = 2 * (MAX_PAYLOAD + RECORD_HEADER_LEN);
        assert_eq!(out[third..third + 5], [0x17, 0x03, 0x03, 0x00, 0x01]);
        let mut empty = Vec::new();
        encode_records(&[], &mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn round_trip_split_at_every_byte() {
        let (payload, wire) = sample_stream();
        let mut whole = RecordDecoder::new();
        assert_eq!(decode_all(&mut whole, &[&wire]).unwrap(), payload);
        assert!(whole.at_boundary());
        // Two segments at every cut (stepping through the first records byte by byte, where
        // the header/CCS edge cases are, then coarser through the bulk).
        let cuts = (0..300)
            .chain((300..wire.len()).step_by(97))
            .chain([wire.len()]);
        for cut in cuts {
            let mut dec = RecordDecoder::new();
            let got = decode_all(&mut dec, &[&wire[..cut], &wire[cut..]]).unwrap();
            assert_eq!(got, payload, "cut at {cut}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let (payload, wire) = sample_stream();
        let mut dec = RecordDecoder::new();
        let chunks: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&mut dec, &chunks).unwrap(), payload);
        let mut partial = RecordDecoder::new();
        decode_all(&mut partial, &[&wire[..8]]).unwrap();
        assert!(!partial.at_boundary());
    }

    #[test]
    fn kurigram_records_carry_the_obfs2_header() {
        // What kurigram sent after accepting the server flight: CCS, then records whose
        // payload starts with the 64-byte obfuscated2 header.
        let after = hex::decode(K.after).unwrap();
        assert_eq!(after[..6], CHANGE_CIPHER_SPEC);
        let mut buf = after.clone();
        let n = RecordDecoder::new().decode_in_place(&mut buf).unwrap();
        assert!(n >= 64);
        let header: [u8; 64] = buf[..64].try_into().unwrap();
        let users = [crate::Secret::from_hex(K.secret).unwrap()];
        let mut hs =
            crate::obfs2::accept_client_header(&header, &users, crate::ModeSet::DEFAULT, true)
                .unwrap();
        assert_eq!(hs.tag, crate::ProtoTag::PaddedIntermediate);
        assert_eq!(hs.dc, K.dc);
        // Padded intermediate: u32 LE length (payload + padding), payload, padding.
        let mut rest = buf[64..n].to_vec();
        hs.decrypt.apply(&mut rest);
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        assert_eq!(len, rest.len() - 4);
        assert_eq!(hex::encode(&rest[4..4 + K.payload.len() / 2]), K.payload);
    }

    #[test]
    fn rejects_other_records() {
        let mut dec = RecordDecoder::new();
        let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];
        assert_eq!(
            decode_all(&mut dec, &[&alert]),
            Err(RecordError::UnexpectedType(0x15))
        );
        let handshake = [0x16, 0x03, 0x03, 0x00, 0x01, 0x00];
        assert_eq!(
            decode_all(&mut RecordDecoder::new(), &[&handshake]),
            Err(RecordError::UnexpectedType(0x16))
        );
        let old = [0x17, 0x03, 0x01, 0x00, 0x01, 0x00];
        assert_eq!(
            decode_all(&mut RecordDecoder::new(), &[&old]),
            Err(RecordError::BadVersion([0x03, 0x01]))
        );
        let huge = app_data_header((MAX_INCOMING + 1) as u16);
        assert_eq!(
            decode_all(&mut RecordDecoder::new(), &[&huge]),
            Err(RecordError::Oversize(MAX_INCOMING + 1))
        );
        let mut max = app_data_header(MAX_INCOMING as u16).to_vec();
        max.extend_from_slice(&[1; MAX_INCOMING]);
        assert_eq!(
            decode_all(&mut RecordDecoder::new(), &[&max])
                .unwrap()
                .len(),
            MAX_INCOMING
        );
        let bad_ccs = [0x14, 0x03, 0x03, 0x00, 0x02, 0x01, 0x01];
        assert_eq!(
            decode_all(&mut RecordDecoder::new(), &[&bad_ccs]),
            Err(RecordError::BadChangeCipherSpec)
        );
        // An alert after good data, split mid-header.
        let mut wire = Vec::new();
        encode_records(b"data", &mut wire);
        wire.extend_from_slice(&alert);
        let (a, b) = wire.split_at(10);
        assert_eq!(
            decode_all(&mut RecordDecoder::new(), &[a, b]),
            Err(RecordError::UnexpectedType(0x15))
        );
    }
}
