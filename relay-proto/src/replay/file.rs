//! The stored form of one generation: a fixed header, the filter, and a SHA-256 over both.
//!
//! ```text
//! 0   8  magic "RLYRPLAY"
//! 8   4  format version (u32 LE), 1
//! 12  8  seq              20  8  capacity        28  8  len
//! 36  8  start_pos        44  8  first_unix      52  8  last_unix
//! 60 16  hash key         76  4  probes (u32)    80  8  filter words (u64)
//! 88 8w  filter words (u64 LE each)
//! .. 32  SHA-256 of everything before it
//! ```
//! All integers little-endian. A file that fails any check is refused whole.

use sha2::{Digest as _, Sha256};

use super::bloom::{Generation, Parts};

/// First bytes of every generation file.
pub const MAGIC: &[u8; 8] = b"RLYRPLAY";
/// The format version written.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 88;
const SUM_LEN: usize = 32;

/// Why bytes are not a generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Not a replay-memory file at all.
    #[error("not a replay-memory file (wrong magic)")]
    Foreign,
    /// Written by another format version.
    #[error("format version {0}, this relay reads version {VERSION}")]
    Version(u32),
    /// Shorter than its header says.
    #[error("truncated: {got} bytes, the header promises {want}")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes the header implies.
        want: usize,
    },
    /// The checksum does not match the contents.
    #[error("checksum mismatch (the file is damaged)")]
    Checksum,
    /// A header field is impossible.
    #[error("invalid header: {0}")]
    Invalid(&'static str),
}

/// The bytes stored for `generation`.
pub fn encode(generation: &Generation) -> Vec<u8> {
    let p = generation.parts();
    let mut out = Vec::with_capacity(HEADER_LEN + p.bits.len() * 8 + SUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for v in [
        p.seq,
        p.capacity,
        p.len,
        p.start_pos,
        p.first_unix,
        p.last_unix,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&p.hash_key);
    out.extend_from_slice(&p.probes.to_le_bytes());
    out.extend_from_slice(&(p.bits.len() as u64).to_le_bytes());
    for w in &p.bits {
        out.extend_from_slice(&w.to_le_bytes());
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The generation stored in `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Generation, FileError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FileError::Foreign);
    }
    if bytes.len() < HEADER_LEN + SUM_LEN {
        return Err(FileError::Truncated {
            got: bytes.len(),
            want: HEADER_LEN + SUM_LEN,
        });
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(8);
    if version != VERSION {
        return Err(FileError::Version(version));
    }
    let words = usize::try_from(u64_at(80)).map_err(|_| FileError::Invalid("filter size"))?;
    let want = words
        .checked_mul(8)
        .and_then(|n| n.checked_add(HEADER_LEN + SUM_LEN))
        .ok_or(FileError::Invalid("filter size"))?;
    if bytes.len() < want {
        return Err(FileError::Truncated {
            got: bytes.len(),
            want,
        });
    }
    if bytes.len() > want {
        return Err(FileError::Invalid("longer than its header says"));
    }
    let body = &bytes[..want - SUM_LEN];
    if Sha256::digest(body)[..] != bytes[want - SUM_LEN..] {
        return Err(FileError::Checksum);
    }
    let probes = u32_at(76);
    if words == 0 || !(1..=64).contains(&probes) {
        return Err(FileError::Invalid("empty filter or impossible probe count"));
    }
    let mut hash_key = [0; 16];
    hash_key.copy_from_slice(&bytes[60..76]);
    let bits = body[HEADER_LEN..]
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    Ok(Generation::from_parts(Parts {
        seq: u64_at(12),
        capacity: u64_at(20).max(1),
        len: u64_at(28),
        start_pos: u64_at(36),
        first_unix: u64_at(44),
        last_unix: u64_at(52),
        hash_key,
        probes,
        bits,
    }))
}
