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
            self.admission.write().await.forget_idle(now_ns);
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

#[cfg(test)]
mod tests {
    use crate::{
        control::api::{Reply, Request},
        daemon::test_support::TestDaemon,
    };

    async fn blocks(relay: &TestDaemon) -> usize {
        let Reply::Prefixes { entries } = relay.ok(Request::BlockList).await else {
            panic!("not a list");
        };
        entries.len()
    }

    #[tokio::test]
    async fn a_lapsed_operator_block_is_removed_from_the_saved_lists() {
        let relay = TestDaemon::start().await;
        let add = |cidr: &str, ttl_secs| Request::BlockAdd {
            cidr: cidr.to_owned(),
            ttl_secs,
            reason: None,
        };
        relay.ok(add("192.0.2.0/24", Some(0))).await;
        relay.ok(add("198.51.100.0/24", None)).await;
        // Already lapsed: saved, but not enforced.
        assert_eq!(blocks(&relay).await, 1);
        let saved =
            || std::fs::read_to_string(relay.state_path().join("lists.json")).expect("lists.json");
        assert!(saved().contains("192.0.2.0/24"));

        relay.daemon.sweep().await;
        assert!(!saved().contains("192.0.2.0/24"), "{}", saved());
        assert!(saved().contains("198.51.100.0/24"));
        assert_eq!(blocks(&relay).await, 1);
    }
}
