//! The misuse loop: connections and handshake failures are counted per source, and a source
//! over a threshold is banned in the kernel (or the userspace fallback) for `[misuse] ban_secs`.
//! Fronting keeps serving a prober until then; a ban for a prober's offence then fronts the
//! source at accept (`[misuse] action = "front"`), so the ban itself is no probe signal either.

pub mod detector;

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::sync::RwLock;

pub use self::detector::{Detector, Offence, Thresholds};
use crate::{
    clock::monotonic_ns,
    config,
    crowdsec::publish::{BanEvent, Signals},
    gate::SourceKey,
    shield::Shield,
};

/// Detector plus the shield it bans through.
pub struct Misuse {
    detector: std::sync::Mutex<Detector>,
    bans_total: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    shield: Arc<RwLock<Shield>>,
    ban_ttl: std::sync::Mutex<Duration>,
    /// `[misuse]`, for the action of each ban.
    config: std::sync::Mutex<config::Misuse>,
    /// Where bans are offered for publishing to CrowdSec, once `[crowdsec]` starts.
    signals: std::sync::OnceLock<Signals>,
}

impl Misuse {
    /// A monitor configured from `[misuse]`.
    pub fn new(config: &config::Misuse, shield: Arc<RwLock<Shield>>) -> Misuse {
        Misuse {
            detector: std::sync::Mutex::new(Detector::new(
                config.window_secs,
                config.thresholds(),
                config.max_sources,
            )),
            shield,
            bans_total: std::sync::Mutex::default(),
            ban_ttl: std::sync::Mutex::new(Duration::from_secs(config.ban_secs)),
            config: std::sync::Mutex::new(config.clone()),
            signals: std::sync::OnceLock::new(),
        }
    }

    /// Publishes every later ban through `signals` (set once; later calls are ignored).
    pub fn set_signals(&self, signals: Signals) {
        let _ = self.signals.set(signals);
    }

    /// Applies a reloaded `[misuse]` section; counts so far are kept.
    pub fn reconfigure(&self, config: &config::Misuse) {
        lock(&self.detector).reconfigure(
            config.window_secs,
            config.thresholds(),
            config.max_sources,
        );
        *lock(&self.ban_ttl) = Duration::from_secs(config.ban_secs);
        *lock(&self.config) = config.clone();
    }

    /// Counts `offence` from `source`; bans it when it crosses a threshold. Allowlisted sources
    /// are never counted.
    pub async fn report(&self, source: IpAddr, offence: Offence) {
        let source = source.to_canonical();
        if self.shield.read().await.is_allowlisted(source) {
            return;
        }
        let ban = lock(&self.detector).record(SourceKey::from(source), offence, monotonic_ns());
        let Some(ban) = ban else {
            return;
        };
        let ttl = *lock(&self.ban_ttl);
        let action = lock(&self.config).action_for(ban.reason);
        match self
            .shield
            .write()
            .await
            .ban(source, ban.reason, action, Some(ttl), ban.count)
        {
            Ok(()) => {
                *lock(&self.bans_total)
                    .entry(ban.reason.name().to_owned())
                    .or_insert(0) += 1;
                if let Some(signals) = self.signals.get() {
                    signals.offer(BanEvent {
                        addr: source,
                        reason: ban.reason.name(),
                        ttl,
                    });
                }
                tracing::warn!(
                %source,
                reason = ban.reason.name(),
                action = action.name(),
                count = ban.count,
                ttl_secs = ttl.as_secs(),
                "source banned"
                );
            }
            Err(e) => tracing::error!(%source, "ban could not be written: {e}"),
        }
    }

    /// Bans issued since start, by reason.
    pub fn bans_total(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.bans_total).clone()
    }

    /// Lifts expired bans and forgets aged-out counts; run periodically.
    pub async fn sweep(&self) {
        let now = monotonic_ns();
        lock(&self.detector).forget_stale(now);
        for expired in self.shield.write().await.expire_bans(now) {
            tracing::info!(source = %expired.addr, reason = expired.reason.name(), "ban expired");
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
