//! The stats snapshot: every counter the daemon keeps, as `relay-ctl stats` shows it and the
//! metrics export reads it, and the per-user view `users list` shares with it.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Instant};

use relay_common::{BanReason, Verdict};

use super::Daemon;
use crate::{
    admission::{Enforcement, PrefixList},
    clock::unix_now,
    control::api::{ReplayMemoryStats, Stats, TlsFlightStats, UserInfo, XdpAttachment},
    relay::accounts::{Account, Rejection},
    telemetry::{Metric, Samples},
};

impl Daemon {
    /// Every user with its usage, in the accounts' order.
    pub(super) fn user_infos(&self) -> Vec<UserInfo> {
        self.accounts
            .all()
            .iter()
            .map(|a| self.user_info(a))
            .collect()
    }

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
            connection_rate: limits.connection_rate.map(|r| r.rate.to_string()),
            connection_burst: limits.connection_rate.map(|r| r.burst()),
            rejections: usage.rejections,
        }
    }

    /// A snapshot of every counter: what `relay-ctl stats` shows and the metrics export.
    pub async fn stats(&self) -> Stats {
        let admission = self.admission.read().await;
        let relay = self.relay.load();
        let mut metrics = Samples::default();
        relay.stats.export(&mut metrics);
        metrics.set(
            Metric::SockmapLoaded,
            &[],
            u64::from(self.passage.is_some()),
        );
        let entries = self
            .passage
            .as_ref()
            .map(|p| p.entries())
            .unwrap_or_default();
        for (map, n) in entries.by_map() {
            metrics.set(Metric::SockmapEntries, &[map], n);
        }
        if let Ok(counts) = admission.verdict_counts() {
            for v in Verdict::ALL {
                metrics.set(Metric::XdpPackets, &[v.name()], counts[v as usize]);
            }
        }
        let mut bans_active_by_reason = BTreeMap::new();
        for ban in admission.bans() {
            *bans_active_by_reason
                .entry(ban.reason.name().to_owned())
                .or_insert(0) += 1;
        }
        metrics.set(Metric::BansActive, &[], admission.bans().count() as u64);
        let bans_total = self.misuse.bans_total();
        for reason in BanReason::ALL {
            let n = bans_total.get(reason.name()).copied().unwrap_or(0);
            metrics.set(Metric::BansTotal, &[reason.name()], n);
        }
        // The blocklist always has these sources, even when empty.
        for source in ["config", "operator"] {
            metrics.set(Metric::BlocklistEntries, &[source], 0);
        }
        for (source, n) in admission.prefix_counts(PrefixList::Block) {
            metrics.set(Metric::BlocklistEntries, &[&source], n);
        }
        for (result, n) in ["success", "failure"].iter().zip(&self.reloads) {
            metrics.set(Metric::ConfigReloads, &[result], n.load(Ordering::Relaxed));
        }
        let admin_refused = self.admin_refused.load(Ordering::Relaxed);
        metrics.set(Metric::AdminRefused, &[], admin_refused);
        let admin_rate_limited = self.admin_rate_limited.load(Ordering::Relaxed);
        metrics.set(Metric::AdminRateLimited, &[], admin_rate_limited);
        for (bound, n) in self.capacity.refused() {
            metrics.set(Metric::ConnectionsRefused, &[bound.name()], n);
        }
        let handshakes_active = self.capacity.handshakes() as u64;
        metrics.set(Metric::HandshakesActive, &[], handshakes_active);
        let xdp_attached = match admission.enforcement() {
            Enforcement::Kernel(program) => program
                .attachments()
                .map(|(interface, mode)| XdpAttachment {
                    interface: interface.to_owned(),
                    mode: mode.to_string(),
                })
                .collect(),
            Enforcement::Userspace { .. } => Vec::new(),
        };
        Stats {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            enforcement: admission.enforcement().to_string(),
            connections_active: relay.stats.active(),
            users: self.user_infos(),
            replay_memory: self.replay_memory_stats(),
            bans_active_by_reason,
            xdp_attached,
            dc_connect: relay.stats.dc_connect_times(),
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
            middle: self.middle.view(&self.config()),
            metrics,
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
