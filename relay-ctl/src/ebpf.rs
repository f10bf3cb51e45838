//! The compiled XDP program, embedded at build time by `build.rs`.

/// ELF object of `relay-ebpf` (with BTF), aligned for `aya::Ebpf::load`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-xdp"));
