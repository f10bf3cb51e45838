//! The middle-end (ME) leg: how a proxy relays through Telegram's middle proxies instead of
//! dialling DCs itself. That is the only way a proxy gets its promoted channel (ad tag) shown,
//! and it multiplexes every client over a few long-lived connections.
//!
//! - [`ad_tag`]: the promoted channel's tag.
//! - [`proxy_config`]: the `getProxyConfig` text (`proxy_for <dc> <addr>;`, `default <dc>;`).
//! - [`kdf`]: the AES-256-CBC keys, bound to both ends' addresses, ports, nonces and the
//!   proxy secret.
//! - [`frame`]: the "full" framing (length, sequence number, CRC32) and its CBC stream.
//! - [`rpc`]: the messages carried in frames: nonce, handshake, proxy requests and answers.
//! - [`client`]: the client's own framing (abridged, intermediate, padded), which the ME leg
//!   must parse to cut the stream into messages, and write back around answers.
//!
//! The wire formats are described in `docs/protocol.md`.

pub mod ad_tag;
pub mod client;
pub mod frame;
pub mod kdf;
pub mod proxy_config;
pub mod rpc;

pub use ad_tag::{AdTag, AdTagError};
pub use client::{ClientDecoder, ClientFrameError, ClientMessage, encode_answer, encode_quick_ack};
pub use frame::{FrameError, FrameReader, FrameWriter};
pub use kdf::{KdfInput, Purpose, derive_keys};
pub use proxy_config::{ProxyConfig, ProxyConfigError};
pub use rpc::{FromMe, RpcError};
