//! x86-64 fast paths: sixteen lanes at once where the CPU has AVX-512 (and VAES for AES-CTR).
//!
//! Each module here is an optional accelerator of a portable implementation elsewhere in the
//! crate, which stays the reference: callers check `available()` once and fall back to the
//! portable code otherwise. Each module's tests run both over the same random inputs and
//! require identical results.
//!
//! - [`sha256_x16`]: SHA-256 compression of sixteen messages at once (the reference is `sha2`).
//! - [`obfs2_x16`]: the obfuscated2 header key search over sixteen secrets
//!   (reference: [`crate::obfs2::accept_client_header`]'s scalar loop).
//! - [`hello_x16`]: the fake-TLS ClientHello HMAC over sixteen secrets
//!   (reference: [`crate::tls::verify_client_hello`]'s scalar loop).
//! - [`ctr_vaes`]: AES-256-CTR keystream with VAES (reference: RustCrypto's `ctr`).

pub mod ctr_vaes;
pub mod hello_x16;
pub mod obfs2_x16;
pub mod sha256_x16;
