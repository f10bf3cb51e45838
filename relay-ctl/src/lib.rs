//! relay-ctl: the controller of relay, a self-hosted MTProto proxy whose abuse defences run in
//! the kernel. It loads the XDP fast path, accepts and relays client connections, and is the
//! operator's CLI.

pub mod ebpf;
