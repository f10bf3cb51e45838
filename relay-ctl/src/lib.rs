//! relay-ctl: the controller of relay, a self-hosted MTProto proxy whose abuse defences run in
//! the kernel. It loads the XDP fast path, accepts and relays client connections, and is the
//! operator's CLI.

pub mod admission;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod ebpf;
pub mod http_client;
pub mod listener;
pub mod logging;
pub mod middle;
pub mod passage;
pub mod privacy;
pub mod privilege;
pub mod rate;

pub mod relay;
pub mod state_dir;
pub mod telemetry;
pub mod users;
pub mod xdp;
