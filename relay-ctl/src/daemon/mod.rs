//! The running daemon's state and the operations on it, one concern per module: admin requests
//! (`requests`), config reload (`reload`), blocklist feeds (`feeds`), persistence
//! (`persistence`), periodic upkeep (`sweep`), the stats snapshot (`stats`) and its copy into
//! the Prometheus exporter (`publish`).
//! `cli::run` wires it to sockets and signals.

mod feeds;
mod persistence;
pub mod publish;
mod reload;
mod requests;
mod stats;
mod sweep;

#[cfg(test)]
mod test_support;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use tokio::sync::RwLock;

use crate::{
    admission::{
        Admission,
        capacity::{Bounds, Capacity},
        misuse::Misuse,
    },
    clock::unix_now,
    config::{Config, UpstreamMode},
    control::{
        Handler,
        api::{Request, Response},
        replay_store::ReplayStore,
        saved_state::{Lists, SavedState},
    },
    middle::MiddleEnd,
    passage::Passage,
    relay::{
        RelayContext, accounts::Accounts, hints::Hints, mask_flight::MaskFlight, stats::RelayStats,
        upstream::Socks5Upstream,
    },
    state_dir::{StateDir, StateError},
    users,
};
use relay_proto::replay::ReplayMemory;

pub use self::{
    persistence::ListsSaveError,
    reload::ReloadError,
    requests::{BanError, ListError, UserError},
};

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
    /// Operator lists, bans and usage as saved in the state dir.
    saved: SavedState,
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
    /// Admin requests refused for the caller's request rate.
    admin_rate_limited: AtomicU64,
    /// The CrowdSec bouncer's and publisher's state (`[crowdsec]`).
    pub crowdsec: Arc<crate::crowdsec::Status>,
    /// The shape of fake-TLS server flights (see [`crate::relay::mask_flight`]).
    pub flight: Arc<MaskFlight>,
    /// `[state] dir` as opened at start (a changed path takes effect after a restart).
    state: StateDir,
    /// The middle-proxy leg (idle in direct mode).
    pub middle: Arc<MiddleEnd>,
    /// `[upstream] socks5` as read at start (its password file may be root's only).
    socks5: Option<Arc<Socks5Upstream>>,
    /// The sockmap program, loaded at start when `[server] passthrough = "auto"` and the
    /// kernel allowed it.
    passage: Option<Arc<Passage>>,
}

impl Daemon {
    /// Builds the daemon around an enforcement `admission`, restoring persisted state; DC
    /// connections go through `socks5` when given. Fails only when the default user's secret
    /// cannot be read or created in the state dir. Passthrough bytes go through `passage`
    /// when given.
    pub async fn start(
        config_path: Option<PathBuf>,
        config: Config,
        admission: Admission,
        state: StateDir,
        socks5: Option<Socks5Upstream>,
        passage: Option<Passage>,
    ) -> Result<Arc<Daemon>, StateError> {
        let passage = passage.map(Arc::new);
        let socks5 = socks5.map(Arc::new);
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
        let middle = Arc::new(MiddleEnd::new(&config, state.clone()));
        let mut relay = RelayContext::new(
            &config,
            users,
            &accounts,
            replay.clone(),
            hints.clone(),
            misuse.clone(),
            stats.clone(),
            flight.clone(),
        );
        relay.middle =
            (config.upstream.effective_mode() == UpstreamMode::Middle).then(|| middle.clone());
        relay.socks5 = socks5.clone();
        relay.passage = passage.clone();
        let saved = SavedState::new(state.clone());
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
            saved,
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
            middle,
            socks5,
            passage,
        });
        daemon.restore().await;
        daemon.refresh_feeds().await;
        Ok(daemon)
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The middle-proxy leg for relay contexts built from `config`: only in middle mode.
    fn middle_for(&self, config: &Config) -> Option<Arc<MiddleEnd>> {
        (config.upstream.effective_mode() == UpstreamMode::Middle).then(|| self.middle.clone())
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
