//! The stats snapshot: every counter the daemon keeps, as `relay-ctl stats` shows it and the
//! metrics export reads it, and the per-user view `users list` shares with it.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Instant};

use relay_common::Verdict;

use super::Daemon;
use crate::{
    clock::unix_now,
    control::api::{ReplayMemoryStats, Stats, TlsFlightStats, UserInfo, XdpAttachment},
    relay::accounts::{Account, Rejection},
    shield::Enforcement,
    xdp::PrefixList,
};

impl Daemon {
    pub(super) fn user_info(&self, account: &Account) -> UserInfo {
        let relay = self.relay.load();
        let usage = account.usage(Instant::now(), relay.unique_ips_window);
        let limits = account.limits();
        let blocked = account.blocked(std::time::SystemTime::now());
        UserInfo {
            name: account.name.clone(),
            enabled: blocked.is_none(),
            blocked_reason: blocked.map(|r| match r {
                Rejection::Disabled if account.disabled_in_config() => {
                    "disabled in config".to_owned()
                }
                Rejection::Disabled => "disabled by operator".to_owned(),
                other => other.name().to_owned(),
            }),
            active_connections: usage.active_connections,
            unique_ips: usage.unique_ips,
            bytes_up: usage.bytes_up,
            bytes_down: usage.bytes_down,
            quota: limits.quota,
            expires: limits
                .expires
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            max_connections: limits.max_connections,
            max_unique_ips: limits.max_unique_ips,
            rejections: usage.rejections,
        }
    }

    /// A snapshot of every counter: what `relay-ctl stats` shows and the metrics export.
    pub async fn stats(&self) -> Stats {
        let shield = self.shield.read().await;
        let verdicts = shield
            .verdict_counts()
            .map(|counts| {
                Verdict::ALL
                    .iter()
                    .map(|v| (v.name().to_owned(), counts[*v as usize]))
                    .collect()
            })
            .unwrap_or_default();
        let relay = self.relay.load();
        let mut bans_active_by_reason = BTreeMap::new();
        for ban in shield.bans() {
            *bans_active_by_reason
                .entry(ban.reason.name().to_owned())
                .or_insert(0) += 1;
        }
        let xdp_attached = match shield.enforcement() {
            Enforcement::Kernel(program) => program
                .attachments()
                .map(|(interface, mode)| XdpAttachment {
                    interface: interface.to_owned(),
                    mode: mode.to_string(),
                })
                .collect(),
            Enforcement::Userspace { .. } => Vec::new(),
        };
        let config_reloads = ["success", "failure"]
            .iter()
            .zip(&self.reloads)
            .map(|(result, n)| ((*result).to_owned(), n.load(Ordering::Relaxed)))
            .collect();
        Stats {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            enforcement: shield.enforcement().to_string(),
            verdicts,
            connections_accepted: relay.stats.accepted(),
            connections_active: relay.stats.active(),
            handshake_failures: relay.stats.failures(),
            bans_active: shield.bans().count() as u64,
            bans_total: self.misuse.bans_total(),
            blocklist_entries: shield.prefix_counts(PrefixList::Block),
            users: self
                .accounts
                .all()
                .iter()
                .map(|a| self.user_info(a))
                .collect(),
            connections_active_by_mode: relay.stats.active_by_state(),
            handshakes: relay.stats.handshakes(),
            fronted: relay.stats.fronted_by_reason(),
            mask_legs: relay.stats.mask_legs(),
            replays_detected: relay.stats.replays(),
            replay_memory: self.replay_memory_stats(),
            relayed_bytes: relay.stats.relayed_bytes(),
            bans_active_by_reason,
            xdp_attached,
            dc_connect: relay.stats.dc_connect_times(),
            config_reloads,
            admin_refused: self.admin_refused.load(Ordering::Relaxed),
            connections_refused: self
                .capacity
                .refused()
                .map(|(r, n)| (r.name().to_owned(), n))
                .collect(),
            handshakes_active: self.capacity.handshakes() as u64,
            crowdsec: self.crowdsec.snapshot(),
            tls_flight: {
                let flight = self.flight.current();
                TlsFlightStats {
                    source: flight.source.name().to_owned(),
                    record_min: *flight.shape.cert_len.start() as u64,
                    record_max: *flight.shape.cert_len.end() as u64,
                    learned_unix: flight.learned.as_ref().map(|l| l.learned_unix),
                    reason: flight.reason.clone(),
                }
            },
        }
    }

    fn replay_memory_stats(&self) -> ReplayMemoryStats {
        let c = self
            .replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .coverage(unix_now());
        let (saves, saves_failed) = self.replay_store.save_counts();
        ReplayMemoryStats {
            entries: c.entries,
            generations: c.generations as u64,
            bytes: c.bytes as u64,
            covered_secs: c.covered_secs,
            dropped_expired: c.dropped_expired,
            dropped_early: c.dropped_early,
            saves,
            saves_failed,
        }
    }
}
