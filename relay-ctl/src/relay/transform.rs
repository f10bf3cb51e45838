//! The per-direction byte transforms of a relayed connection.

use super::pump::{Transform, TransformError};
use relay_proto::{
    AesCtr,
    tls::record::{RecordDecoder, encode_records},
};

/// Client → DC: strip fake-TLS framing (if any), decrypt with the client's key, encrypt with
/// the DC leg's key.
pub struct ToUpstream {
    client_decrypt: AesCtr,
    dc_encrypt: AesCtr,
    records: Option<RecordDecoder>,
}

impl ToUpstream {
    /// `records` is a decoder when the client speaks fake TLS.
    pub fn new(client_decrypt: AesCtr, dc_encrypt: AesCtr, records: Option<RecordDecoder>) -> Self {
        ToUpstream {
            client_decrypt,
            dc_encrypt,
            records,
        }
    }

    /// Re-encrypts bytes that are already free of TLS framing (the data that came with the
    /// handshake).
    pub fn crypt(&mut self, buf: &mut [u8]) {
        self.client_decrypt.apply(buf);
        self.dc_encrypt.apply(buf);
    }
}

impl Transform for ToUpstream {
    fn transform<'a>(
        &mut self,
        input: &'a mut [u8],
        _scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], TransformError> {
        let n = match &mut self.records {
            Some(decoder) => decoder
                .decode_in_place(input)
                .map_err(|e| TransformError(e.to_string()))?,
            None => input.len(),
        };
        let out = &mut input[..n];
        self.crypt(out);
        Ok(out)
    }
}

/// DC → client: re-encrypt (unless fast mode made the keystreams equal) and wrap in fake-TLS
/// records when the client speaks fake TLS.
pub struct ToClient {
    /// DC-leg decrypt and client encrypt; `None` in fast mode.
    ciphers: Option<(AesCtr, AesCtr)>,
    tls: bool,
}

impl ToClient {
    /// `ciphers` is `None` in fast mode.
    pub fn new(ciphers: Option<(AesCtr, AesCtr)>, tls: bool) -> Self {
        ToClient { ciphers, tls }
    }
}

impl Transform for ToClient {
    fn transform<'a>(
        &mut self,
        input: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], TransformError> {
        if let Some((dc_decrypt, client_encrypt)) = &mut self.ciphers {
            dc_decrypt.apply(input);
            client_encrypt.apply(input);
        }
        if self.tls {
            encode_records(input, scratch);
            return Ok(scratch);
        }
        Ok(input)
    }

    fn passthrough(&self) -> bool {
        self.ciphers.is_none() && !self.tls
    }
}
