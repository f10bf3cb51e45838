//! Types, arithmetic and the decision order ([`decide`]) shared by the XDP program
//! (`relay-ebpf`) and the controller (`relay-ctl`).
//!
//! Everything here is `no_std`, `#[repr(C)]` and free of implicit padding, because map keys are
//! hashed byte for byte and both sides must agree on every layout.
#![no_std]

pub mod bucket;
pub mod decision;
pub mod maps;
pub mod passage;
pub mod verdict;

pub use bucket::{StateBudget, TokenBucket};
pub use decision::{Budget, Lookups, Room, decide};
pub use maps::{BanAction, BanEntry, BanReason, PrefixList, XdpConfig};
pub use verdict::Verdict;
