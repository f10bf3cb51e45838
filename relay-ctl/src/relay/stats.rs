//! Relay-wide counters, shared across config reloads (read by `relay-ctl stats` and metrics).

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
};

use super::handshake::Failure;

/// Counters of the relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    accepted: AtomicU64,
    active: AtomicU64,
    failures: [AtomicU64; Failure::ALL.len()],
}

impl RelayStats {
    /// A connection was accepted; it is active until the guard drops.
    pub fn connection(&self) -> ActiveGuard<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }

    /// A handshake failed.
    pub fn failure(&self, failure: Failure) {
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Handshake failures by reason name.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        Failure::ALL
            .iter()
            .map(|f| {
                (
                    f.name().to_owned(),
                    self.failures[*f as usize].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// Decrements the active count when dropped.
pub struct ActiveGuard<'a>(&'a RelayStats);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
