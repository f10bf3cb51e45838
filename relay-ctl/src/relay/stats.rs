//! Relay-wide counters, shared across config reloads (read by `relay-ctl stats` and copied into
//! the Prometheus metrics by [`crate::telemetry`] through [`RelayStats::export`]). Plain
//! atomics: the connection path never waits on the exporter.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use relay_proto::Mode;
use serde::{Deserialize, Serialize};

use super::{accounts::Account, handshake::Failure, pump::Meter};
use crate::telemetry::{
    Metric, Samples, histograms::record_dc_connect, metrics::DC_CONNECT_BUCKETS,
};

/// Where an open connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted, handshake not finished.
    Handshake,
    /// Relayed to a DC in this mode.
    Relayed(Mode),
    /// Handed to the mask host.
    Fronted,
}

impl ConnState {
    /// Every state, in index order.
    pub const ALL: [ConnState; 5] = [
        ConnState::Handshake,
        ConnState::Relayed(Mode::Classic),
        ConnState::Relayed(Mode::Secure),
        ConnState::Relayed(Mode::Tls),
        ConnState::Fronted,
    ];

    /// Label value: `handshake`, `classic`, `secure`, `tls`, `fronted`.
    pub const fn name(self) -> &'static str {
        match self {
            ConnState::Handshake => "handshake",
            ConnState::Relayed(mode) => mode.name(),
            ConnState::Fronted => "fronted",
        }
    }

    const fn index(self) -> usize {
        match self {
            ConnState::Handshake => 0,
            ConnState::Relayed(Mode::Classic) => 1,
            ConnState::Relayed(Mode::Secure) => 2,
            ConnState::Relayed(Mode::Tls) => 3,
            ConnState::Fronted => 4,
        }
    }
}

/// How a client handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Authenticated and admitted by the user's limits.
    Ok,
    /// Not authenticated (see [`Failure`]).
    Failed,
    /// Authenticated, but refused by a user limit.
    Rejected,
}

impl HandshakeResult {
    /// Every result, in index order.
    pub const ALL: [HandshakeResult; 3] = [
        HandshakeResult::Ok,
        HandshakeResult::Failed,
        HandshakeResult::Rejected,
    ];

    /// Label value.
    pub const fn name(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::Failed => "failed",
            HandshakeResult::Rejected => "rejected",
        }
    }
}

/// Label value of a handshake's mode when it is not known (an obfuscated2 header no secret
/// decrypts says nothing about its mode).
pub const UNKNOWN_MODE: &str = "unknown";

fn mode_index(mode: Option<Mode>) -> usize {
    match mode {
        Some(Mode::Classic) => 0,
        Some(Mode::Secure) => 1,
        Some(Mode::Tls) => 2,
        None => 3,
    }
}

const HANDSHAKE_MODES: [Option<Mode>; 4] = [
    Some(Mode::Classic),
    Some(Mode::Secure),
    Some(Mode::Tls),
    None,
];

/// Why a connection was handed to the mask host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontReason {
    /// Its handshake failed.
    Failure(Failure),
    /// A user limit refused it and `[server] on_limit = "front"`.
    UserLimit,
    /// Its source is under a front-ban: fronted at accept, without a handshake.
    Banned,
}

impl FrontReason {
    /// Label value: the failure's name, `user_limit` or `banned`.
    pub const fn name(self) -> &'static str {
        match self {
            FrontReason::Failure(f) => f.name(),
            FrontReason::UserLimit => "user_limit",
            FrontReason::Banned => "banned",
        }
    }

    fn index(self) -> usize {
        match self {
            FrontReason::Failure(f) => f as usize,
            FrontReason::UserLimit => Failure::ALL.len(),
            FrontReason::Banned => Failure::ALL.len() + 1,
        }
    }

    fn all() -> impl Iterator<Item = FrontReason> {
        Failure::ALL
            .into_iter()
            .map(FrontReason::Failure)
            .chain([FrontReason::UserLimit, FrontReason::Banned])
    }
}

/// What became of a mask connection opened for a client quiet mid-handshake: label values of
/// `relay_mask_legs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MaskLeg {
    /// Opened (every one counts here).
    Opened,
    /// Closed again because the handshake then completed and verified.
    Abandoned,
}

impl MaskLeg {
    const ALL: [MaskLeg; 2] = [MaskLeg::Opened, MaskLeg::Abandoned];

    const fn name(self) -> &'static str {
        match self {
            MaskLeg::Opened => "opened",
            MaskLeg::Abandoned => "abandoned",
        }
    }
}

/// Direction of relayed bytes: label values of `relay_relayed_bytes_total`.
pub const DIRECTIONS: [&str; 2] = ["client_to_dc", "dc_to_client"];

/// Connect times to one DC since start, as `relay-ctl stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DcConnect {
    /// Connections established.
    pub connects: u64,
    /// Mean time, microseconds.
    pub mean_us: u64,
    /// Median, microseconds (estimated from histogram buckets).
    pub p50_us: u64,
    /// 99th percentile, microseconds (estimated from histogram buckets).
    pub p99_us: u64,
}

/// Connect times to one DC.
#[derive(Debug, Clone, Default)]
struct DcTimes {
    count: u64,
    sum_us: u64,
    /// Per bucket of [`DC_CONNECT_BUCKETS`], then one for slower connects.
    buckets: [u64; DC_CONNECT_BUCKETS.len() + 1],
}

impl DcTimes {
    fn record(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = DC_CONNECT_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(DC_CONNECT_BUCKETS.len());
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum_us = self
            .sum_us
            .saturating_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// The `q` quantile in µs, interpolated inside its bucket as Prometheus'
    /// `histogram_quantile` does.
    fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = q * self.count as f64;
        let mut below = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 {
                    0.0
                } else {
                    DC_CONNECT_BUCKETS[i - 1]
                };
                let Some(upper) = DC_CONNECT_BUCKETS.get(i) else {
                    // Slower than the last bucket: the last bound is all that is known.
                    return (lower * 1e6) as u64;
                };
                let within = (rank - below as f64).max(0.0) / *n as f64;
                return ((lower + (upper - lower) * within) * 1e6) as u64;
            }
            below += n;
        }
        0
    }
}

/// Counters of the relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    accepted: AtomicU64,
    active: [AtomicU64; ConnState::ALL.len()],
    failures: [AtomicU64; Failure::ALL.len()],
    handshakes: [[AtomicU64; HandshakeResult::ALL.len()]; HANDSHAKE_MODES.len()],
    fronted: [AtomicU64; Failure::ALL.len() + 2],
    mask_legs: [AtomicU64; MaskLeg::ALL.len()],
    replays: AtomicU64,
    bytes: [AtomicU64; DIRECTIONS.len()],
    dc_connect: Mutex<BTreeMap<i16, DcTimes>>,
    proxy_headers: [AtomicU64; ProxyHeaderOutcome::ALL.len()],
    paths_active: [AtomicU64; Path::ALL.len()],
    paths_total: [AtomicU64; Path::ALL.len()],
}

/// The way a passthrough direction's bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Redirected by the kernel's sockmap program.
    Sockmap,
    /// `splice(2)` bursts (plain copies while a transfer is short).
    Splice,
    /// Read and written by the relay.
    Copy,
}

impl Path {
    /// Every path, in label order.
    pub const ALL: [Path; 3] = [Path::Sockmap, Path::Splice, Path::Copy];

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Path::Sockmap => "sockmap",
            Path::Splice => "splice",
            Path::Copy => "copy",
        }
    }
}

/// Keeps a passthrough direction counted on its path until dropped.
pub struct PathGuard<'a> {
    stats: &'a RelayStats,
    path: Path,
}

impl PathGuard<'_> {
    /// The direction moved on to `path`: it is active there now, and counts in that path's
    /// total as well as in the one it started on (a total never goes down).
    pub fn switch(&mut self, path: Path) {
        let stats = self.stats;
        stats.paths_active[self.path as usize].fetch_sub(1, Ordering::Relaxed);
        stats.paths_total[path as usize].fetch_add(1, Ordering::Relaxed);
        stats.paths_active[path as usize].fetch_add(1, Ordering::Relaxed);
        self.path = path;
    }
}

impl Drop for PathGuard<'_> {
    fn drop(&mut self) {
        self.stats.paths_active[self.path as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// What became of a connection under `[server] proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderOutcome {
    /// A header naming a client.
    Ok,
    /// The balancer's own health check (v2 LOCAL, v1 UNKNOWN).
    Local,
    /// A peer outside `trusted`.
    Untrusted,
    /// Bytes that are not a header.
    Missing,
    /// A header that breaks the format.
    Malformed,
    /// No whole header in time.
    Timeout,
}

impl ProxyHeaderOutcome {
    /// Every outcome, in label order.
    pub const ALL: [ProxyHeaderOutcome; 6] = [
        ProxyHeaderOutcome::Ok,
        ProxyHeaderOutcome::Local,
        ProxyHeaderOutcome::Untrusted,
        ProxyHeaderOutcome::Missing,
        ProxyHeaderOutcome::Malformed,
        ProxyHeaderOutcome::Timeout,
    ];

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            ProxyHeaderOutcome::Ok => "ok",
            ProxyHeaderOutcome::Local => "local",
            ProxyHeaderOutcome::Untrusted => "untrusted",
            ProxyHeaderOutcome::Missing => "missing",
            ProxyHeaderOutcome::Malformed => "malformed",
            ProxyHeaderOutcome::Timeout => "timeout",
        }
    }
}

impl RelayStats {
    /// A connection was accepted; it is active (in [`ConnState::Handshake`]) until the guard
    /// drops.
    pub fn connection(&self) -> ActiveGuard<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active[ConnState::Handshake.index()].fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            stats: self,
            state: ConnState::Handshake,
        }
    }

    /// A connection under `[server] proxy_protocol` ended its header with `outcome`.
    pub fn proxy_header(&self, outcome: ProxyHeaderOutcome) {
        self.proxy_headers[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A passthrough direction starts on `path`; it counts as open until the guard drops.
    pub fn path(&self, path: Path) -> PathGuard<'_> {
        self.paths_total[path as usize].fetch_add(1, Ordering::Relaxed);
        self.paths_active[path as usize].fetch_add(1, Ordering::Relaxed);
        PathGuard { stats: self, path }
    }

    /// A handshake failed.
    pub fn failure(&self, failure: Failure) {
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A handshake in `mode` (`None`: not known) ended with `result`.
    pub fn handshake(&self, mode: Option<Mode>, result: HandshakeResult) {
        self.handshakes[mode_index(mode)][result as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was handed to the mask host.
    pub fn fronted(&self, reason: FrontReason) {
        self.fronted[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A mask connection was opened for a client quiet mid-handshake.
    pub fn mask_leg_opened(&self) {
        self.mask_legs[MaskLeg::Opened as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A mask connection opened for a client mid-handshake was closed again: the handshake
    /// verified.
    pub fn mask_leg_abandoned(&self) {
        self.mask_legs[MaskLeg::Abandoned as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A replayed handshake was caught.
    pub fn replay(&self) {
        self.replays.fetch_add(1, Ordering::Relaxed);
    }

    /// A DC connection took `took` to establish.
    pub fn dc_connected(&self, dc: i16, took: Duration) {
        self.dc_connect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(dc)
            .or_default()
            .record(took);
        record_dc_connect(dc, took);
    }

    /// Connections open (every state).
    pub fn active(&self) -> u64 {
        self.active.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Sets the relay's counters and gauges in `out`, every label value included.
    pub fn export(&self, out: &mut Samples) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.set(Metric::ConnectionsAccepted, &[], load(&self.accepted));
        for state in ConnState::ALL {
            let n = load(&self.active[state.index()]);
            out.set(Metric::ConnectionsActive, &[state.name()], n);
        }
        for failure in Failure::ALL {
            let n = load(&self.failures[failure as usize]);
            out.set(Metric::HandshakeFailures, &[failure.name()], n);
        }
        for mode in HANDSHAKE_MODES {
            let name = mode.map_or(UNKNOWN_MODE, Mode::name);
            for result in HandshakeResult::ALL {
                let n = load(&self.handshakes[mode_index(mode)][result as usize]);
                out.set(Metric::Handshakes, &[name, result.name()], n);
            }
        }
        for reason in FrontReason::all() {
            let n = load(&self.fronted[reason.index()]);
            out.set(Metric::FrontedConnections, &[reason.name()], n);
        }
        for leg in MaskLeg::ALL {
            let n = load(&self.mask_legs[leg as usize]);
            out.set(Metric::MaskLegs, &[leg.name()], n);
        }
        for outcome in ProxyHeaderOutcome::ALL {
            let n = load(&self.proxy_headers[outcome as usize]);
            out.set(Metric::ProxyHeaders, &[outcome.name()], n);
        }
        out.set(Metric::ReplaysDetected, &[], load(&self.replays));
        for (direction, n) in DIRECTIONS.iter().zip(&self.bytes) {
            out.set(Metric::RelayedBytes, &[direction], load(n));
        }
        for path in Path::ALL {
            let active = load(&self.paths_active[path as usize]);
            out.set(Metric::PassthroughActive, &[path.name()], active);
            let total = load(&self.paths_total[path as usize]);
            out.set(Metric::PassthroughTotal, &[path.name()], total);
        }
    }

    /// DC connect times by DC id.
    pub fn dc_connect_times(&self) -> BTreeMap<String, DcConnect> {
        self.dc_connect
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(dc, t)| {
                (
                    dc.to_string(),
                    DcConnect {
                        connects: t.count,
                        mean_us: t.sum_us.checked_div(t.count).unwrap_or(0),
                        p50_us: t.quantile_us(0.5),
                        p99_us: t.quantile_us(0.99),
                    },
                )
            })
            .collect()
    }
}

/// Keeps a connection counted as active, in one state at a time, until dropped.
pub struct ActiveGuard<'a> {
    stats: &'a RelayStats,
    state: ConnState,
}

impl ActiveGuard<'_> {
    /// Moves the connection to `state`.
    pub fn enter(&mut self, state: ConnState) {
        if state == self.state {
            return;
        }
        self.stats.active[state.index()].fetch_add(1, Ordering::Relaxed);
        self.stats.active[self.state.index()].fetch_sub(1, Ordering::Relaxed);
        self.state = state;
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.stats.active[self.state.index()].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Meters a relayed pair for both its user's account and the relay-wide byte counters.
pub struct Metered<'a> {
    /// The user's account (quota and usage).
    pub account: &'a Account,
    /// The relay's counters.
    pub stats: &'a RelayStats,
}

impl Meter for Metered<'_> {
    fn client_bytes(&self, n: u64) {
        self.account.add_up(n);
        self.stats.bytes[0].fetch_add(n, Ordering::Relaxed);
    }
    fn upstream_bytes(&self, n: u64) {
        self.account.add_down(n);
        self.stats.bytes[1].fetch_add(n, Ordering::Relaxed);
    }
    fn exhausted(&self) -> bool {
        self.account.over_quota()
    }
    fn budget(&self) -> Option<u64> {
        self.account.quota_left()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exported(stats: &RelayStats) -> Samples {
        let mut out = Samples::default();
        stats.export(&mut out);
        out
    }

    #[test]
    fn active_connections_move_between_states() {
        let stats = RelayStats::default();
        let mut a = stats.connection();
        let mut b = stats.connection();
        let active = |s: &Samples, state: &str| s.get(Metric::ConnectionsActive, &[state]);
        assert_eq!(active(&exported(&stats), "handshake"), 2);
        a.enter(ConnState::Relayed(Mode::Tls));
        b.enter(ConnState::Fronted);
        let by = exported(&stats);
        assert_eq!(
            (
                active(&by, "handshake"),
                active(&by, "tls"),
                active(&by, "fronted")
            ),
            (0, 1, 1)
        );
        assert_eq!(stats.active(), 2);
        drop(a);
        drop(b);
        assert_eq!(stats.active(), 0);
        assert_eq!(exported(&stats).get(Metric::ConnectionsAccepted, &[]), 2);
    }

    #[test]
    fn handshakes_and_fronting_by_label() {
        let stats = RelayStats::default();
        stats.handshake(Some(Mode::Secure), HandshakeResult::Ok);
        stats.handshake(None, HandshakeResult::Failed);
        stats.handshake(None, HandshakeResult::Failed);
        stats.fronted(FrontReason::Failure(Failure::BadSecret));
        stats.fronted(FrontReason::UserLimit);
        let s = exported(&stats);
        let h = |mode: &str, result: &str| s.get(Metric::Handshakes, &[mode, result]);
        assert_eq!(h("secure", "ok"), 1);
        assert_eq!(h("unknown", "failed"), 2);
        assert_eq!(h("tls", "rejected"), 0);
        assert_eq!(s.of(Metric::Handshakes).count(), 12);
        let f = |reason: &str| s.get(Metric::FrontedConnections, &[reason]);
        assert_eq!((f("bad_secret"), f("user_limit"), f("replay")), (1, 1, 0));
        assert_eq!(
            s.of(Metric::FrontedConnections).count(),
            Failure::ALL.len() + 2
        );
    }

    #[test]
    fn dc_connect_quantiles_interpolate_within_buckets() {
        let mut t = DcTimes::default();
        for _ in 0..99 {
            t.record(Duration::from_millis(3)); // bucket (1 ms, 5 ms]
        }
        t.record(Duration::from_millis(700)); // bucket (0.5 s, 1 s]
        let p50 = t.quantile_us(0.5);
        assert!((1_000..=5_000).contains(&p50), "{p50}");
        let p99 = t.quantile_us(0.99);
        assert!(p99 <= 5_000, "{p99}");
        let p100 = t.quantile_us(1.0);
        assert_eq!(p100, 1_000_000);
        assert_eq!(t.count, 100);
        assert_eq!(DcTimes::default().quantile_us(0.5), 0);
        let mut slow = DcTimes::default();
        slow.record(Duration::from_secs(30));
        assert_eq!(slow.quantile_us(0.5), 10_000_000);
    }
}
