//! The compiled eBPF programs, embedded at build time by `build.rs`.

/// ELF object of `relay-ebpf`'s XDP/TC program (with BTF), aligned for `aya::Ebpf::load`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-xdp"));

/// ELF object of `relay-ebpf`'s sockmap stream verdict program (the kernel passthrough).
pub static PASSAGE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/relay-passage"));
