//! The misuse loop: connections and handshake failures are counted per source and per prefix
//! (IPv4 /24, IPv6 /48), and a source or prefix over a threshold is banned in the kernel (or the
//! userspace fallback) for `[misuse] ban_secs`.
//! Fronting keeps serving a prober until then; a ban for a prober's offence then fronts the
//! source at accept (`[misuse] action = "front"`), so the ban itself is no probe signal either.

pub mod detector;

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::sync::RwLock;

pub use self::detector::{Ban, Detector, Levels, Offence, Target, Thresholds};
use crate::{
    admission::{Admission, BanTarget, SourceKey},
    clock::monotonic_ns,
    config,
};

/// One ban to share beyond this relay (CrowdSec publishes it as a decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEvent {
    /// The banned source (an IPv6 ban covers its /64).
    pub addr: IpAddr,
    /// The detector's reason (`bad_secret`, ...).
    pub reason: &'static str,
    /// How long the ban lasts.
    pub ttl: Duration,
}

/// Where the detector offers its address bans for sharing. Offering never waits: a sink that
/// cannot take a ban drops it (and counts that itself).
pub trait BanSink: Send + Sync {
    /// Takes one ban, or drops it.
    fn offer(&self, event: BanEvent);
}

/// Detector plus the admission it bans through.
pub struct Misuse {
    detector: std::sync::Mutex<Detector>,
    bans_total: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    admission: Arc<RwLock<Admission>>,
    ban_ttl: std::sync::Mutex<Duration>,
    /// `[misuse]`, for the action of each ban.
    config: std::sync::Mutex<config::Misuse>,
    /// Where bans are offered for publishing to CrowdSec, once `[crowdsec]` starts.
    ban_queue: std::sync::OnceLock<Box<dyn BanSink>>,
}

impl Misuse {
    /// A monitor configured from `[misuse]`.
    pub fn new(config: &config::Misuse, admission: Arc<RwLock<Admission>>) -> Misuse {
        Misuse {
            detector: std::sync::Mutex::new(Detector::new(
                config.window_secs,
                Levels::from(config),
                config.max_sources,
            )),
            admission,
            bans_total: std::sync::Mutex::default(),
            ban_ttl: std::sync::Mutex::new(Duration::from_secs(config.ban_secs)),
            config: std::sync::Mutex::new(config.clone()),
            ban_queue: std::sync::OnceLock::new(),
        }
    }

    /// Offers every later address ban to `sink` (set once; later calls are ignored).
    pub fn publish_to(&self, sink: impl BanSink + 'static) {
        let _ = self.ban_queue.set(Box::new(sink));
    }

    /// Applies a reloaded `[misuse]` section; counts so far are kept.
    pub fn reconfigure(&self, config: &config::Misuse) {
        lock(&self.detector).reconfigure(
            config.window_secs,
            Levels::from(config),
            config.max_sources,
        );
        *lock(&self.ban_ttl) = Duration::from_secs(config.ban_secs);
        *lock(&self.config) = config.clone();
    }

    /// Counts `offence` from `source`; bans it, or its prefix, when it crosses a threshold.
    /// Allowlisted sources are never counted.
    pub async fn report(&self, source: IpAddr, offence: Offence) {
        let source = source.to_canonical();
        if self.admission.read().await.is_allowlisted(source) {
            return;
        }
        let bans = lock(&self.detector).record(SourceKey::from(source), offence, monotonic_ns());
        for ban in bans {
            self.ban(source, ban).await;
        }
    }

    /// Writes `ban`, caused by an offence of `source`.
    async fn ban(&self, source: IpAddr, ban: Ban) {
        let ttl = *lock(&self.ban_ttl);
        let action = lock(&self.config).action_for(ban.reason);
        let mut admission = self.admission.write().await;
        let written = match ban.target {
            Target::Source(_) => admission.ban(source, ban.reason, action, Some(ttl), ban.count),
            Target::Prefix(prefix) => {
                admission.ban_prefix(prefix, ban.reason, action, Some(ttl), ban.count)
            }
        };
        drop(admission);
        let banned = match ban.target {
            Target::Source(_) => BanTarget::Addr(source),
            Target::Prefix(prefix) => BanTarget::Prefix(prefix),
        };
        if let Err(e) = written {
            tracing::error!(%banned, "ban could not be written: {e}");
            return;
        }
        *lock(&self.bans_total)
            .entry(ban.reason.name().to_owned())
            .or_insert(0) += 1;
        // CrowdSec hears of address bans; a prefix ban stays local.
        if let (Target::Source(_), Some(ban_queue)) = (ban.target, self.ban_queue.get()) {
            ban_queue.offer(BanEvent {
                addr: source,
                reason: ban.reason.name(),
                ttl,
            });
        }
        tracing::warn!(
            source = %banned,
            reason = ban.reason.name(),
            action = action.name(),
            count = ban.count,
            ttl_secs = ttl.as_secs(),
            "{}",
            match ban.target {
                Target::Source(_) => "source banned",
                Target::Prefix(_) => "prefix banned",
            }
        );
    }

    /// Bans issued since start, by reason.
    pub fn bans_total(&self) -> std::collections::BTreeMap<String, u64> {
        lock(&self.bans_total).clone()
    }

    /// Lifts expired bans and forgets aged-out counts; run periodically.
    pub async fn sweep(&self) {
        let now = monotonic_ns();
        lock(&self.detector).forget_stale(now);
        for expired in self.admission.write().await.expire_bans(now) {
            tracing::info!(source = %expired.target, reason = expired.reason.name(), "ban expired");
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
