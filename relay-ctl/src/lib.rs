//! relay-ctl: the controller of relay, a self-hosted MTProto proxy whose abuse defences run in
//! the kernel. It loads the XDP fast path, accepts and relays client connections, and is the
//! operator's CLI.

pub mod capacity;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod crowdsec;
pub mod daemon;
pub mod ebpf;
pub mod gate;
pub mod listener;
pub mod logging;
pub mod misuse;
pub mod prefix_set;
pub mod privacy;
pub mod privilege;
pub mod rate;

pub mod relay;
pub mod shield;
pub mod state_dir;
pub mod telemetry;
pub mod users;
pub mod xdp;
