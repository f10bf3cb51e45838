//! The running daemon's state and the operations on it: admin requests, config reload,
//! persistence, periodic upkeep. `cli::run` wires it to sockets and signals.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use relay_common::{BanAction, BanReason, Verdict};
use tokio::sync::RwLock;

use crate::{
    admission::{
        Admission, BanTarget, Enforcement, ListSource, PrefixList,
        capacity::{Bounds, Capacity},
        misuse::Misuse,
    },
    clock::monotonic_ns,
    config::{Cidr, Config},
    control::{
        Handler,
        api::{
            BanInfo, ErrorKind, PrefixEntry, ReplayMemoryStats, Reply, Request, Response, Stats,
            TlsFlightStats, UserInfo, XdpAttachment,
        },
        replay_store::ReplayStore,
        store::{BlockEntry, Lists, SavedBan, SavedUsage, Store, unix_now},
    },
    relay::{
        RelayContext,
        accounts::{Account, Accounts, Rejection},
        hints::Hints,
        mask_flight::MaskFlight,
        mask_target::MaskTarget,
        stats::RelayStats,
    },
    state::{StateDir, StateError},
    telemetry::{Metric, Samples},
    users,
};
use relay_proto::replay::ReplayMemory;

/// How often idle limiter state is forgotten.
const LIMITER_SWEEP_EVERY_NS: u64 = 30 * 1_000_000_000;

/// Everything the running relay shares between its tasks.
pub struct Daemon {
    config_path: Option<PathBuf>,
    config: ArcSwap<Config>,
    /// The enforcement policy.
    pub admission: Arc<RwLock<Admission>>,
    /// The admission's accept-time check, without its lock.
    pub accept_check: crate::admission::AcceptCheck,
    /// The misuse detector.
    pub misuse: Arc<Misuse>,
    accounts: Arc<Accounts>,
    replay: Arc<Mutex<ReplayMemory>>,
    /// Where the replay memory is kept.
    replay_store: Arc<ReplayStore>,
    /// Per-source user hints, shared by every relay context.
    hints: Arc<Hints>,
    /// What new connections are served with; replaced on reload.
    pub relay: ArcSwap<RelayContext>,
    /// Concurrency bounds on client connections.
    pub capacity: Arc<Capacity>,
    store: Store,
    /// Operator lists, as persisted. Serialises changes (and their saves).
    lists: tokio::sync::Mutex<Lists>,
    /// Orders writes of bans.json and usage.json (snapshot and write under one lock).
    saves: tokio::sync::Mutex<()>,
    /// When idle limiter state is next forgotten (CLOCK_MONOTONIC ns).
    next_limiter_sweep_ns: AtomicU64,
    started: Instant,
    /// Configuration reloads that succeeded and that failed.
    reloads: [AtomicU64; 2],
    /// Admin requests refused for the caller's role.
    admin_refused: AtomicU64,
    admin_rate_limited: AtomicU64,
    /// The CrowdSec bouncer's and publisher's state (`[crowdsec]`).
    pub crowdsec: Arc<crate::crowdsec::Status>,
    /// The shape of fake-TLS server flights (see [`crate::relay::mask_flight`]).
    pub flight: Arc<MaskFlight>,
    /// `[state] dir` as opened at start (a changed path takes effect after a restart).
    state: StateDir,
}

/// Why the daemon could not start or reload.
pub type DaemonResult<T> = anyhow::Result<T>;

impl Daemon {
    /// Builds the daemon around an enforcement `admission`, restoring persisted state.
    pub async fn start(
        config_path: Option<PathBuf>,
        config: Config,
        admission: Admission,
        state: StateDir,
    ) -> DaemonResult<Arc<Daemon>> {
        let (users, created) = users::resolve(&config, &state)?;
        if created {
            tracing::info!(
                dir = %config.state.dir.display(),
                "no [[users]] configured: generated a secret for user `default`"
            );
        }
        let accept_check = admission.accept_check();
        let admission = Arc::new(RwLock::new(admission));
        let misuse = Arc::new(Misuse::new(&config.misuse, admission.clone()));
        let accounts = Arc::new(Accounts::default());
        let replay_store = Arc::new(ReplayStore::new(state.clone()));
        let replay = Arc::new(Mutex::new(
            replay_store.load(config.replay.limits(), unix_now()),
        ));
        let hints = Arc::new(Hints::default());
        let stats = Arc::new(RelayStats::default());
        let flight = Arc::new(MaskFlight::start(&config, state.clone()));
        let relay = RelayContext::new(
            &config,
            users,
            &accounts,
            replay.clone(),
            hints.clone(),
            misuse.clone(),
            stats.clone(),
            flight.clone(),
        );
        let store = Store::new(state.clone());
        let capacity = Capacity::new(Bounds::from(&config.limits));
        let crowdsec = Arc::new(crate::crowdsec::Status::new(config.crowdsec.is_some()));
        let daemon = Arc::new(Daemon {
            config_path,
            config: ArcSwap::from_pointee(config),
            admission,
            accept_check,
            misuse,
            accounts,
            replay,
            replay_store,
            hints,
            relay: ArcSwap::from_pointee(relay),
            capacity,
            store,
            lists: tokio::sync::Mutex::new(Lists::default()),
            saves: tokio::sync::Mutex::new(()),
            next_limiter_sweep_ns: AtomicU64::new(0),
            started: Instant::now(),
            reloads: Default::default(),
            admin_refused: AtomicU64::new(0),
            admin_rate_limited: AtomicU64::new(0),
            crowdsec,
            flight,
            state,
        });
        daemon.restore().await;
        daemon.refresh_feeds().await;
        Ok(daemon)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Reloads the config file: on success users, limits, lists and thresholds change for new
    /// connections (established ones and XDP stay); on failure the old config stays. Counted
    /// for `relay_config_reloads_total`.
    pub async fn reload(&self) -> DaemonResult<()> {
        let result = self.try_reload().await;
        self.reloads[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_reload(&self) -> DaemonResult<()> {
        let Some(path) = &self.config_path else {
            anyhow::bail!("running on the embedded default configuration: nothing to reload");
        };
        let new = Config::load(path)?;
        let old = self.config();
        if new.server.listen != old.server.listen {
            tracing::warn!("[server] listen changed: takes effect only after a restart");
        }
        if new.metrics != old.metrics {
            tracing::warn!("[metrics] changed: takes effect only after a restart");
        }
        if new.crowdsec != old.crowdsec {
            tracing::warn!("[crowdsec] changed: takes effect only after a restart");
        }
        if new.log.format != old.log.format {
            tracing::warn!("[log] format changed: takes effect only after a restart");
        }
        if new.state.dir != old.state.dir {
            tracing::warn!("[state] dir changed: takes effect only after a restart");
        }
        let (users, _) = users::resolve(&new, &self.state)?;
        self.admission
            .write()
            .await
            .apply(&new)
            .map_err(|e| anyhow::anyhow!("applying lists and limits: {e}"))?;
        self.misuse.reconfigure(&new.misuse);
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_limits(new.replay.limits());
        self.capacity.set_bounds(Bounds::from(&new.limits));
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        self.accounts.retain(&names);
        // User indices may now mean other users: old hints would only cost wasted tries.
        self.hints.clear();
        let relay = RelayContext::new(
            &new,
            users,
            &self.accounts,
            self.replay.clone(),
            self.hints.clone(),
            self.misuse.clone(),
            self.relay.load().stats.clone(),
            self.flight.clone(),
        );
        let mut relay = relay;
        // Same mask, same cached addresses.
        relay.mask = MaskTarget::reuse(self.relay.load().mask.as_ref(), relay.mask.take());
        self.flight.reconfigure(&old, &new);
        self.relay.store(Arc::new(relay));
        crate::logging::reconfigure(&new.log);
        self.config.store(Arc::new(new));
        self.refresh_feeds().await;
        Ok(())
    }

    /// Re-reads every `[blocklist] files` feed and replaces its entries. A feed that cannot be
    /// read keeps its previous entries; removed feeds are dropped. Parsing runs off the async
    /// threads, and only changed prefixes touch the kernel maps, so a 100,000-entry feed does
    /// not stall the relay.
    pub async fn refresh_feeds(&self) {
        let files = self.config().blocklist.files.clone();
        let mut admission = self.admission.read().await.prefixes(PrefixList::Block);
        admission.retain(|(_, s)| matches!(s, ListSource::Feed(p) if !files.contains(p)));
        let stale: BTreeSet<ListSource> = admission.into_iter().map(|(_, s)| s).collect();
        for source in stale {
            let _ = self.admission.write().await.set_prefixes(
                PrefixList::Block,
                source,
                BTreeSet::new(),
            );
        }
        for path in files {
            let read_path = path.clone();
            let parsed = tokio::task::spawn_blocking(move || {
                std::fs::read_to_string(&read_path).map(|text| crate::control::netset::parse(&text))
            })
            .await;
            let netset = match parsed {
                Ok(Ok(netset)) => netset,
                Ok(Err(e)) => {
                    tracing::error!(feed = %path.display(), "cannot read blocklist feed, keeping its previous entries: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::error!(feed = %path.display(), "feed parser failed: {e}");
                    continue;
                }
            };
            for error in netset.errors.iter().take(5) {
                tracing::warn!(feed = %path.display(), "{error}");
            }
            for warning in netset.warnings.iter().take(5) {
                tracing::warn!(feed = %path.display(), "{warning}");
            }
            let cidrs: BTreeSet<Cidr> = netset.entries.iter().map(|n| Cidr(*n)).collect();
            let count = cidrs.len();
            let result = self.admission.write().await.set_prefixes(
                PrefixList::Block,
                ListSource::Feed(path.clone()),
                cidrs,
            );
            match result {
                Ok(()) => tracing::info!(
                    feed = %path.display(),
                    entries = count,
                    bad_lines = netset.errors.len(),
                    special_ranges = netset.warnings.len(),
                    "blocklist feed loaded"
                ),
                Err(e) => {
                    tracing::error!(feed = %path.display(), "blocklist feed only partly loaded: {e}")
                }
            }
        }
    }

    /// Loads operator lists, bans and usage from the state dir. A corrupt file is reported
    /// (and set aside by the store) and its part starts empty.
    async fn restore(&self) {
        match self.store.load_lists() {
            Ok(lists) => {
                if let Err(e) = self.apply_lists(&lists).await {
                    tracing::error!("restoring operator lists: {e}");
                }
                *self.lists.lock().await = lists;
            }
            Err(e) => tracing::error!("state: {e}"),
        }
        match self.store.load_bans() {
            Ok(bans) => {
                let now = unix_now();
                let misuse = self.config().misuse.clone();
                let mut admission = self.admission.write().await;
                for ban in bans {
                    let (Ok(target), Some(reason)) = (
                        ban.addr.parse::<BanTarget>(),
                        BanReason::ALL.into_iter().find(|r| r.name() == ban.reason),
                    ) else {
                        tracing::warn!(addr = ban.addr, "state: skipping unreadable ban");
                        continue;
                    };
                    let ttl = match ban.expires_unix {
                        None => None,
                        Some(t) if t > now => Some(Duration::from_secs(t - now)),
                        Some(_) => continue,
                    };
                    // Files written before bans had an action get the one `[misuse]` gives.
                    let action = ban
                        .action
                        .as_deref()
                        .and_then(|name| BanAction::ALL.into_iter().find(|a| a.name() == name))
                        .unwrap_or_else(|| misuse.action_for(reason));
                    let restored = match target {
                        BanTarget::Addr(addr) => {
                            admission.ban(addr, reason, action, ttl, ban.count)
                        }
                        BanTarget::Prefix(prefix) => {
                            admission.ban_prefix(prefix, reason, action, ttl, ban.count)
                        }
                    };
                    if let Err(e) = restored {
                        tracing::error!(%target, "restoring ban: {e}");
                    }
                }
            }
            Err(e) => tracing::error!("state: {e}"),
        }
        match self.store.load_usage() {
            Ok(usage) => {
                for (name, saved) in usage {
                    if let Some(account) = self.accounts.get(&name) {
                        account.restore(saved.bytes_up, saved.bytes_down, saved.disabled);
                    }
                }
            }
            Err(e) => tracing::error!("state: {e}"),
        }
    }

    /// Pushes operator lists into the admission.
    async fn apply_lists(&self, lists: &Lists) -> Result<(), String> {
        let now = unix_now();
        let block: BTreeSet<Cidr> = lists
            .block
            .iter()
            .filter(|(_, e)| e.expires_unix.is_none_or(|t| t > now))
            .filter_map(|(c, _)| c.parse().ok())
            .collect();
        let allow: BTreeSet<Cidr> = lists.allow.iter().filter_map(|c| c.parse().ok()).collect();
        let mut admission = self.admission.write().await;
        admission
            .set_prefixes(PrefixList::Block, ListSource::Operator, block)
            .map_err(|e| e.to_string())?;
        admission
            .set_prefixes(PrefixList::Allow, ListSource::Operator, allow)
            .map_err(|e| e.to_string())
    }

    /// Persists the changed operator lists, then applies them: a change the disk could not keep
    /// is not made. `change` returns `Err(message)` when the thing to change does not exist.
    async fn change_lists(
        &self,
        change: impl FnOnce(&mut Lists) -> Result<Reply, String>,
    ) -> Response {
        let mut lists = self.lists.lock().await;
        let mut new = lists.clone();
        let reply = match change(&mut new) {
            Ok(reply) => reply,
            Err(message) => return not_found(message),
        };
        if let Err(e) = self.store.save_lists(&new) {
            return failed(format!("not saved, nothing changed: {e}"));
        }
        if let Err(e) = self.apply_lists(&new).await {
            *lists = new;
            return failed(format!("saved, but the kernel map refused it: {e}"));
        }
        *lists = new;
        Response::Ok { data: reply }
    }

    /// Saves bans, usage and what changed in the replay memory (its filling generation at
    /// most every [`crate::control::replay_store::SAVE_NEWEST_EVERY`]); called periodically.
    pub async fn save_runtime_state(&self) {
        self.save_bans_and_usage().await;
        self.save_replay(false).await;
    }

    /// Saves everything, the whole replay memory included; called at shutdown.
    pub async fn save_state_at_exit(&self) {
        self.save_bans_and_usage().await;
        self.save_replay(true).await;
    }

    async fn save_bans_and_usage(&self) {
        if let Err(e) = self.save_bans().await {
            tracing::error!("saving bans: {e}");
        }
        if let Err(e) = self.save_usage().await {
            tracing::error!("saving usage: {e}");
        }
    }

    /// Writes the replay memory's changes off the async threads (files of about a megabyte).
    async fn save_replay(&self, force: bool) {
        let (store, replay) = (self.replay_store.clone(), self.replay.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || store.save(&replay, force)).await {
            tracing::error!("saving the replay memory: {e}");
        }
    }

    /// Writes the current bans. The snapshot is taken under the save lock, so a save can never
    /// overwrite a newer one with an older snapshot.
    async fn save_bans(&self) -> Result<(), StateError> {
        let _order = self.saves.lock().await;
        let bans = self.saved_bans().await;
        self.store.save_bans(&bans)
    }

    /// Writes every account's usage and operator switch (snapshot under the save lock).
    async fn save_usage(&self) -> Result<(), StateError> {
        let _order = self.saves.lock().await;
        let usage: BTreeMap<String, SavedUsage> = self
            .accounts
            .all()
            .iter()
            .map(|a| {
                let u = a.usage(Instant::now(), Duration::ZERO);
                (
                    a.name.clone(),
                    SavedUsage {
                        bytes_up: u.bytes_up,
                        bytes_down: u.bytes_down,
                        disabled: u.operator_disabled,
                    },
                )
            })
            .collect();
        self.store.save_usage(&usage)
    }

    async fn saved_bans(&self) -> Vec<SavedBan> {
        let now_mono = monotonic_ns();
        let now = unix_now();
        self.admission
            .read()
            .await
            .bans()
            .map(|b| SavedBan {
                addr: b.target.to_string(),
                reason: b.reason.name().to_owned(),
                action: Some(b.action.name().to_owned()),
                count: b.count,
                expires_unix: b.remaining(now_mono).map(|d| now + d.as_secs()),
            })
            .collect()
    }

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
            let response = self
                .change_lists(|lists| {
                    for cidr in &expired {
                        lists.block.remove(cidr);
                    }
                    Ok(Reply::Done)
                })
                .await;
            tracing::info!(
                count = expired.len(),
                ok = matches!(response, Response::Ok { .. }),
                "operator blocks lapsed"
            );
        }
    }

    fn user_info(&self, account: &Account) -> UserInfo {
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
            users: self
                .accounts
                .all()
                .iter()
                .map(|a| self.user_info(a))
                .collect(),
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

    async fn handle_request(&self, request: Request) -> Response {
        match request {
            Request::BlockAdd {
                cidr,
                ttl_secs,
                reason,
            } => {
                let cidr = match parse_cidr(&cidr) {
                    Ok(c) => c,
                    Err(message) => return bad_request(message),
                };
                self.change_lists(|lists| {
                    lists.block.insert(
                        cidr.to_string(),
                        BlockEntry {
                            reason,
                            expires_unix: ttl_secs.map(|t| unix_now() + t),
                        },
                    );
                    Ok(Reply::Done)
                })
                .await
            }
            Request::BlockRm { cidr } => {
                let cidr = match parse_cidr(&cidr) {
                    Ok(c) => c,
                    Err(message) => return bad_request(message),
                };
                // Said up front: CrowdSec's entries are removed in CrowdSec, prefix bans with
                // `bans rm`, not with this command.
                let other = self
                    .admission
                    .read()
                    .await
                    .prefixes(PrefixList::Block)
                    .into_iter()
                    .find(|(c, s)| {
                        *c == cidr && matches!(s, ListSource::CrowdSec(_) | ListSource::Misuse)
                    })
                    .map(|(_, s)| s);
                self.change_lists(|lists| match lists.block.remove(&cidr.to_string()) {
                    Some(_) => Ok(Reply::Done),
                    None => Err(match other {
                        Some(ListSource::Misuse) => format!(
                            "{cidr} is not an operator block; it is a prefix ban: \
                             relay-ctl bans rm {cidr}"
                        ),
                        Some(source) => format!(
                            "{cidr} is not an operator block; it is a CrowdSec decision \
                             ({source}): delete it in CrowdSec (cscli decisions delete --range {cidr})"
                        ),
                        None => format!("{cidr} is not an operator block"),
                    }),
                })
                .await
            }
            Request::BlockImport { entries, source } => {
                let mut parsed = Vec::with_capacity(entries.len());
                for e in &entries {
                    match parse_cidr(e) {
                        Ok(c) => parsed.push(c),
                        Err(message) => return bad_request(message),
                    }
                }
                self.change_lists(|lists| {
                    let mut changed = 0;
                    for cidr in parsed {
                        let entry = BlockEntry {
                            reason: Some(format!("imported from {source}")),
                            expires_unix: None,
                        };
                        if lists.block.insert(cidr.to_string(), entry).is_none() {
                            changed += 1;
                        }
                    }
                    Ok(Reply::Count { changed })
                })
                .await
            }
            Request::BlockList => self.list(PrefixList::Block).await,
            Request::AllowAdd { cidr } => {
                let cidr = match parse_cidr(&cidr) {
                    Ok(c) => c.to_string(),
                    Err(message) => return bad_request(message),
                };
                self.change_lists(|lists| {
                    if !lists.allow.contains(&cidr) {
                        lists.allow.push(cidr);
                    }
                    Ok(Reply::Done)
                })
                .await
            }
            Request::AllowRm { cidr } => {
                let cidr = match parse_cidr(&cidr) {
                    Ok(c) => c.to_string(),
                    Err(message) => return bad_request(message),
                };
                self.change_lists(|lists| {
                    let before = lists.allow.len();
                    lists.allow.retain(|c| *c != cidr);
                    if lists.allow.len() == before {
                        return Err(format!("{cidr} is not an operator allowlist entry"));
                    }
                    Ok(Reply::Done)
                })
                .await
            }
            Request::AllowList => self.list(PrefixList::Allow).await,
            Request::BansList => {
                let now = monotonic_ns();
                let admission = self.admission.read().await;
                let mut bans: Vec<BanInfo> = admission
                    .bans()
                    .map(|b| BanInfo {
                        addr: b.target.to_string(),
                        reason: b.reason.name().to_owned(),
                        action: b.action.name().to_owned(),
                        count: b.count,
                        expires_in_secs: b.remaining(now).map(|d| d.as_secs()),
                        source: "relay".to_owned(),
                    })
                    .collect();
                let mut crowdsec: Vec<BanInfo> = admission
                    .crowdsec_bans()
                    .map(|(addr, b)| BanInfo {
                        addr: addr.to_string(),
                        reason: "crowdsec".to_owned(),
                        action: BanAction::Drop.name().to_owned(),
                        count: 0,
                        expires_in_secs: Some(
                            Duration::from_nanos(b.expires_ns.saturating_sub(now)).as_secs(),
                        ),
                        source: ListSource::CrowdSec(b.origin.clone()).to_string(),
                    })
                    .collect();
                crowdsec.sort_by(|a, b| a.addr.cmp(&b.addr));
                bans.append(&mut crowdsec);
                Response::Ok {
                    data: Reply::Bans { bans },
                }
            }
            Request::BansRm { addr } => {
                let target = match addr.parse::<BanTarget>() {
                    Ok(target) => target,
                    Err(e) => return bad_request(e),
                };
                let mut admission = self.admission.write().await;
                let removed = admission.lift(target);
                if removed.is_none() {
                    let BanTarget::Addr(addr) = target else {
                        return not_found(format!("no ban on {target}"));
                    };
                    if let Some(prefix) = admission.prefix_ban_covering(addr) {
                        return not_found(format!(
                            "{addr} has no ban of its own; the prefix ban on {} covers it",
                            prefix.target
                        ));
                    }
                    if let Some(cs) = admission.crowdsec_ban(addr) {
                        return not_found(format!(
                            "{addr} is banned by CrowdSec (origin {}), not by relay: delete the \
                             decision in CrowdSec (cscli decisions delete --ip {addr})",
                            cs.origin
                        ));
                    }
                    return not_found(format!("no ban covers {addr}"));
                }
                drop(admission);
                self.persist_bans().await
            }
            Request::BansClear => {
                let changed = {
                    let mut admission = self.admission.write().await;
                    let targets: Vec<BanTarget> = admission.bans().map(|b| b.target).collect();
                    targets
                        .into_iter()
                        .filter(|t| admission.lift(*t).is_some())
                        .count()
                };
                match self.persist_bans().await {
                    Response::Ok { .. } => Response::Ok {
                        data: Reply::Count { changed },
                    },
                    err => err,
                }
            }
            Request::UsersList => Response::Ok {
                data: Reply::Users {
                    users: self
                        .accounts
                        .all()
                        .iter()
                        .map(|a| self.user_info(a))
                        .collect(),
                },
            },
            Request::UsersShow { name } => match self.accounts.get(&name) {
                Some(a) => Response::Ok {
                    data: Reply::Users {
                        users: vec![self.user_info(&a)],
                    },
                },
                None => not_found(format!("no user named `{name}`")),
            },
            Request::UsersEnable { name } => self.set_user_disabled(&name, false).await,
            Request::UsersDisable { name } => self.set_user_disabled(&name, true).await,
            Request::Stats => Response::Ok {
                data: Reply::Stats(Box::new(self.stats().await)),
            },
        }
    }

    async fn list(&self, list: PrefixList) -> Response {
        let operator = self.lists.lock().await.clone();
        let now = unix_now();
        let entries = self
            .admission
            .read()
            .await
            .prefixes(list)
            .into_iter()
            .map(|(cidr, source)| {
                let op = (source == ListSource::Operator)
                    .then(|| operator.block.get(&cidr.to_string()))
                    .flatten();
                PrefixEntry {
                    cidr: cidr.to_string(),
                    source: source.to_string(),
                    reason: op.and_then(|e| e.reason.clone()),
                    expires_in_secs: op
                        .and_then(|e| e.expires_unix)
                        .map(|t| t.saturating_sub(now)),
                }
            })
            .collect();
        Response::Ok {
            data: Reply::Prefixes { entries },
        }
    }

    async fn persist_bans(&self) -> Response {
        match self.save_bans().await {
            Ok(()) => Response::Ok { data: Reply::Done },
            Err(e) => failed(format!("ban state not saved: {e}")),
        }
    }

    async fn set_user_disabled(&self, name: &str, disabled: bool) -> Response {
        let Some(account) = self.accounts.get(name) else {
            return not_found(format!("no user named `{name}`"));
        };
        if !disabled && account.disabled_in_config() {
            return bad_request(format!(
                "user `{name}` is disabled in the configuration (enabled = false): enable it there and reload"
            ));
        }
        let before = account.set_operator_disabled(disabled);
        // Persist now: the operator is told it is done only once it is on disk.
        if let Err(e) = self.save_usage().await {
            account.set_operator_disabled(before);
            return failed(format!("not saved, nothing changed: {e}"));
        }
        Response::Ok { data: Reply::Done }
    }
}

impl Handler for Daemon {
    async fn handle(&self, request: Request, _caller_uid: u32) -> Response {
        self.handle_request(request).await
    }

    fn refused(&self) {
        self.admin_refused.fetch_add(1, Ordering::Relaxed);
    }

    fn rate_limited(&self) {
        self.admin_rate_limited.fetch_add(1, Ordering::Relaxed);
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::from_str(s)
}

fn bad_request(message: String) -> Response {
    Response::Error {
        kind: ErrorKind::BadRequest,
        message,
    }
}

fn not_found(message: String) -> Response {
    Response::Error {
        kind: ErrorKind::NotFound,
        message,
    }
}

fn failed(message: String) -> Response {
    Response::Error {
        kind: ErrorKind::Failed,
        message,
    }
}
