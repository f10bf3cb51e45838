//! Periodic upkeep: what lapses or ages out is forgotten.

use std::{sync::atomic::Ordering, time::Instant};

use super::{Daemon, persistence::ListsSaveError};
use crate::clock::{monotonic_ns, unix_now};

/// How often idle limiter state is forgotten.
const LIMITER_SWEEP_EVERY_NS: u64 = 30 * 1_000_000_000;

impl Daemon {
    /// Periodic upkeep: lapsed bans and operator blocks, aged-out detector state, client
    /// addresses older than the unique-IP window, idle userspace limiter state.
    pub async fn sweep(&self) {
        self.misuse.sweep().await;
        self.hints.sweep(Instant::now());
        let window = self.relay.load().unique_ips_window;
        let now = Instant::now();
        for account in self.accounts.all() {
            account.forget_ips(now, window);
        }
        // Walking the kernel limiter maps costs syscalls per entry: every 30 s is plenty for
        // a one-minute idle horizon.
        let now_ns = monotonic_ns();
        if now_ns >= self.next_limiter_sweep_ns.load(Ordering::Relaxed) {
            self.next_limiter_sweep_ns
                .store(now_ns + LIMITER_SWEEP_EVERY_NS, Ordering::Relaxed);
            self.shield.write().await.forget_idle(now_ns);
        }
        let now = unix_now();
        let expired: Vec<String> = self
            .lists
            .lock()
            .await
            .block
            .iter()
            .filter(|(_, e)| e.expires_unix.is_some_and(|t| t <= now))
            .map(|(c, _)| c.clone())
            .collect();
        if !expired.is_empty() {
            let removed = self
                .change_lists(|lists| {
                    for cidr in &expired {
                        lists.block.remove(cidr);
                    }
                    Ok::<(), ListsSaveError>(())
                })
                .await;
            tracing::info!(
                count = expired.len(),
                ok = removed.is_ok(),
                "operator blocks lapsed"
            );
        }
    }
}
