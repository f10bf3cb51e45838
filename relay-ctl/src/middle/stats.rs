//! Counters of the ME leg, read into the stats snapshot.

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

/// Relay-wide ME counters (the levels are read from the pools when a snapshot is taken).
#[derive(Default)]
pub struct MiddleStats {
    /// ME connections that completed the handshake.
    pub connects: AtomicU64,
    /// Attempts that failed (connect, handshake).
    pub connect_failures: AtomicU64,
    /// Connections ended by bad input from the ME.
    pub protocol_errors: AtomicU64,
    /// Clients dropped for queueing more than the per-client bound.
    pub overflows: AtomicU64,
    /// Clients that could not get an ME connection.
    pub unavailable: AtomicU64,
    /// Refreshes of the proxy list and secret: applied, unchanged, failed.
    pub refreshes: [AtomicU64; 3],
}

impl MiddleStats {
    /// The counters as plain numbers.
    pub fn counters(&self) -> MiddleCounters {
        let get = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        MiddleCounters {
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
            protocol_errors: get(&self.protocol_errors),
            overflows: get(&self.overflows),
            unavailable: get(&self.unavailable),
            refreshes_applied: get(&self.refreshes[0]),
            refreshes_unchanged: get(&self.refreshes[1]),
            refreshes_failed: get(&self.refreshes[2]),
        }
    }
}

/// The ME leg in `relay-ctl stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiddleView {
    /// Whether the config asks for middle mode.
    pub enabled: bool,
    /// Where the proxy list in use came from (`fetched`, `file`, `cache`; empty: none yet).
    pub source: String,
    /// Seconds since the list in use was read.
    pub config_age_secs: u64,
    /// Each listed middle proxy's pool.
    pub me: Vec<MeView>,
    /// Counters.
    pub counters: MiddleCounters,
}

/// One middle proxy's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeView {
    /// `ip:port`.
    pub addr: String,
    /// Live connections.
    pub up: u64,
    /// Clients multiplexed over them.
    pub clients: u64,
    /// Slowest keep-alive round trip among them, microseconds (0: none measured yet).
    pub rtt_us: u64,
}

/// [`MiddleStats`] as numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiddleCounters {
    /// Connections that completed the handshake.
    pub connects: u64,
    /// Attempts that failed.
    pub connect_failures: u64,
    /// Connections ended by bad input from the ME.
    pub protocol_errors: u64,
    /// Clients dropped for queueing too much.
    pub overflows: u64,
    /// Clients that got no ME connection.
    pub unavailable: u64,
    /// List refreshes that changed it.
    pub refreshes_applied: u64,
    /// List refreshes that found it unchanged.
    pub refreshes_unchanged: u64,
    /// List refreshes that failed.
    pub refreshes_failed: u64,
}
