//! Middle mode (`[upstream] mode = "middle"`): clients are relayed through Telegram's middle
//! proxies, multiplexed over a small pool of connections per middle proxy, with the
//! operator's ad tag (or a user's own) on every request.
//!
//! [`MiddleEnd`] lives as long as the process: [`run`] keeps the proxy list and secret fresh
//! and a pool of [`conn::MeConn`] per listed middle proxy; client connections call
//! [`MiddleEnd::open`] for a [`session::MeSession`]. The bytes are `relay_proto::middle`'s.

pub mod conn;
pub mod session;
pub mod sources;
pub mod stats;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::time::Instant;

use self::{
    conn::{Dial, MeConn},
    session::MeSession,
    sources::Sources,
    stats::{MeView, MiddleStats, MiddleView},
};
use crate::{
    clock::unix_now,
    config::{Config, UpstreamMode},
    state_dir::StateDir,
};
use relay_proto::{
    ProtoTag,
    middle::{AdTag, FrameError, RpcError},
};

/// Why a client could not be relayed through a middle proxy, or an ME connection ended.
#[derive(Debug, thiserror::Error)]
pub enum MiddleError {
    /// A socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting or the handshake took longer than `[upstream] connect_timeout_secs`.
    #[error("{0}: timed out")]
    Timeout(SocketAddr),
    /// The ME closed the connection during the handshake.
    #[error("closed by the middle proxy")]
    Closed,
    /// The ME broke the framing.
    #[error("framing: {0}")]
    Frame(#[from] FrameError),
    /// The ME sent a message that does not fit.
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// The proxy secret is too short to hold a key selector.
    #[error("the proxy secret is too short")]
    Secret,
    /// An answer for a connection id this connection never gave out.
    #[error("answer for unknown connection id {0:#x}")]
    UnknownConnection(u64),
    /// No live ME connection (it died, or none could be opened in time).
    #[error("no middle-proxy connection is up")]
    Down,
    /// No proxy list yet (never fetched, no file, no cache).
    #[error("no middle-proxy list yet")]
    NoConfig,
    /// The list has no middle proxy for the DC, nor a default.
    #[error("no middle proxy for DC {0}")]
    NoMiddleProxy(i16),
}

/// What pools are kept with, from the config.
#[derive(Debug, Clone)]
struct Settings {
    connections_per_me: usize,
    public_ipv4: Option<IpAddr>,
    public_ipv6: Option<IpAddr>,
    connect_timeout: Duration,
    prefer_ipv6: bool,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Settings {
        let m = &c.upstream.middle;
        Settings {
            connections_per_me: usize::from(m.connections_per_me),
            public_ipv4: m.public_ipv4.map(IpAddr::V4),
            public_ipv6: m.public_ipv6.map(IpAddr::V6),
            connect_timeout: Duration::from_secs(c.upstream.connect_timeout_secs),
            prefer_ipv6: c.upstream.prefer_ipv6,
        }
    }
}

impl Settings {
    fn public_ip_for(&self, me: SocketAddr) -> Option<IpAddr> {
        if me.is_ipv4() {
            self.public_ipv4
        } else {
            self.public_ipv6
        }
    }
}

/// The connections to one middle proxy.
struct Pool {
    addr: SocketAddr,
    conns: Mutex<Vec<Arc<MeConn>>>,
    /// Set when the proxy left the list: no new clients; connections close once idle.
    retired: AtomicBool,
}

impl Pool {
    /// The live connection with the fewest clients.
    fn pick(&self) -> Option<Arc<MeConn>> {
        let conns = self.conns.lock().ok()?;
        conns
            .iter()
            .filter(|c| !c.is_dead())
            .min_by_key(|c| c.clients())
            .cloned()
    }

    fn live(&self) -> Vec<Arc<MeConn>> {
        self.conns.lock().map_or_else(
            |_| Vec::new(),
            |mut c| {
                c.retain(|c| !c.is_dead());
                c.clone()
            },
        )
    }
}

/// The middle-proxy leg of the whole process (kept across reloads).
pub struct MiddleEnd {
    sources: ArcSwapOption<Sources>,
    pools: Mutex<HashMap<SocketAddr, Arc<Pool>>>,
    settings: ArcSwap<Settings>,
    /// Counters.
    pub stats: Arc<MiddleStats>,
    state: StateDir,
}

impl MiddleEnd {
    /// An idle leg; [`run`] brings it up when the config asks for middle mode.
    pub fn new(config: &Config, state: StateDir) -> MiddleEnd {
        MiddleEnd {
            sources: ArcSwapOption::empty(),
            pools: Mutex::default(),
            settings: ArcSwap::from_pointee(Settings::from(config)),
            stats: Arc::default(),
            state,
        }
    }

    /// A session for one client on a connection to `dc`'s middle proxy. Waits up to
    /// `[upstream] connect_timeout_secs` for a connection when none is up.
    pub async fn open(
        &self,
        dc: i16,
        client: SocketAddr,
        proxy: SocketAddr,
        tag: ProtoTag,
        ad_tag: Option<AdTag>,
    ) -> Result<MeSession, MiddleError> {
        let result = self.open_inner(dc, client, proxy, tag, ad_tag).await;
        if result.is_err() {
            self.stats.unavailable.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn open_inner(
        &self,
        dc: i16,
        client: SocketAddr,
        proxy: SocketAddr,
        tag: ProtoTag,
        ad_tag: Option<AdTag>,
    ) -> Result<MeSession, MiddleError> {
        let sources = self.sources.load_full().ok_or(MiddleError::NoConfig)?;
        let settings = self.settings.load_full();
        let (_, listed) = sources
            .config
            .addrs(dc)
            .ok_or(MiddleError::NoMiddleProxy(dc))?;
        let mut addrs = listed.to_vec();
        // Spread clients over a DC's middle proxies; the preferred family first.
        let start = rand::random_range(0..addrs.len().max(1));
        addrs.rotate_left(start);
        addrs.sort_by_key(|a| a.is_ipv6() != settings.prefer_ipv6);
        let deadline = Instant::now() + settings.connect_timeout;
        loop {
            for addr in &addrs {
                let pool = self.pools.lock().ok().and_then(|p| p.get(addr).cloned());
                if let Some(conn) = pool.and_then(|p| p.pick()) {
                    match MeSession::open(conn, client, proxy, tag, ad_tag) {
                        Ok(session) => return Ok(session),
                        Err(MiddleError::Down) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(MiddleError::Down);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn apply(&self, sources: Sources) {
        tracing::info!(
            origin = sources.origin.name(),
            middle_proxies = sources.config.all_addrs().len(),
            "middle-proxy list in use"
        );
        self.sources.store(Some(Arc::new(sources)));
    }

    /// Opens pools for listed proxies and retires the others (their connections stay until
    /// their clients leave).
    fn sync_pools(self: &Arc<Self>, wanted: &[SocketAddr]) {
        let Ok(mut pools) = self.pools.lock() else {
            return;
        };
        pools.retain(|addr, pool| {
            let keep = wanted.contains(addr);
            if !keep {
                pool.retired.store(true, Ordering::Relaxed);
            }
            keep
        });
        for addr in wanted {
            pools.entry(*addr).or_insert_with(|| {
                let pool = Arc::new(Pool {
                    addr: *addr,
                    conns: Mutex::default(),
                    retired: AtomicBool::new(false),
                });
                tokio::spawn(maintain(self.clone(), pool.clone()));
                pool
            });
        }
    }

    /// The leg's state for `stats` and the metrics.
    pub fn view(&self, config: &Config) -> MiddleView {
        let mode = config.upstream.effective_mode();
        let sources = self.sources.load_full();
        let pools: Vec<Arc<Pool>> = self
            .pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        let mut me: Vec<MeView> = pools
            .iter()
            .map(|pool| {
                let live = pool.live();
                MeView {
                    addr: pool.addr.to_string(),
                    up: live.len() as u64,
                    clients: live.iter().map(|c| c.clients() as u64).sum(),
                    rtt_us: live
                        .iter()
                        .map(|c| c.rtt_us.load(Ordering::Relaxed))
                        .max()
                        .unwrap_or(0),
                }
            })
            .collect();
        me.sort_by(|a, b| a.addr.cmp(&b.addr));
        MiddleView {
            enabled: mode == UpstreamMode::Middle,
            source: sources
                .as_ref()
                .map(|s| s.origin.name().to_owned())
                .unwrap_or_default(),
            config_age_secs: sources
                .as_ref()
                .map_or(0, |s| unix_now().saturating_sub(s.read_unix)),
            me,
            counters: self.stats.counters(),
        }
    }
}

/// Keeps the list and secret fresh and the pools matching them while the config asks for
/// middle mode; retires every pool when it does not.
pub async fn run(middle: Arc<MiddleEnd>, config: impl Fn() -> Arc<Config>) {
    let mut next_read = Instant::now();
    let mut announced = false;
    let mut read_with: Option<crate::config::Middle> = None;
    loop {
        let cfg = config();
        if cfg.upstream.effective_mode() == UpstreamMode::Middle {
            // A reload that changes where the list comes from takes effect at once.
            if read_with.as_ref() != Some(&cfg.upstream.middle) {
                read_with = Some(cfg.upstream.middle.clone());
                next_read = Instant::now();
            }
            if !announced && cfg.upstream.mode.is_none() {
                tracing::info!("an ad tag is set: relaying through Telegram's middle proxies");
            }
            announced = true;
            middle.settings.store(Arc::new(Settings::from(&*cfg)));
            if Instant::now() >= next_read {
                next_read = Instant::now() + refresh(&middle, &cfg).await;
            }
            if let Some(sources) = middle.sources.load_full() {
                middle.sync_pools(&sources.config.all_addrs());
            }
        } else {
            announced = false;
            middle.sync_pools(&[]);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Reads the list and secret once; returns when to read them next.
async fn refresh(middle: &MiddleEnd, cfg: &Config) -> Duration {
    let settings = &cfg.upstream.middle;
    let timeout = Duration::from_secs(cfg.upstream.connect_timeout_secs);
    let [applied, unchanged, failed] = &middle.stats.refreshes;
    match sources::read(settings, cfg.upstream.prefer_ipv6, timeout, unix_now()).await {
        Ok(fresh) => {
            let current = middle.sources.load_full();
            let same = current
                .as_ref()
                .is_some_and(|c| c.config == fresh.config && c.secret == fresh.secret);
            if same {
                unchanged.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = current {
                    // Same content, read again: its age starts over.
                    let mut renewed = (*c).clone();
                    renewed.read_unix = fresh.read_unix;
                    renewed.origin = fresh.origin;
                    middle.sources.store(Some(Arc::new(renewed)));
                }
            } else {
                applied.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = sources::save(&middle.state, &fresh) {
                    tracing::warn!("could not keep the middle-proxy list in the state dir: {e}");
                }
                middle.apply(fresh);
            }
            settings.refresh
        }
        Err(e) => {
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("middle-proxy list not refreshed: {e}");
            if middle.sources.load().is_none() {
                match sources::cached(&middle.state) {
                    Ok(Some(cached)) => {
                        tracing::warn!("using the middle-proxy list kept in the state dir");
                        middle.apply(cached);
                    }
                    Ok(None) => tracing::warn!(
                        "no middle-proxy list: clients fail until one can be fetched"
                    ),
                    Err(e) => tracing::warn!("the kept middle-proxy list is unusable: {e}"),
                }
            }
            settings.refresh.min(Duration::from_secs(60))
        }
    }
}

/// Keeps `connections_per_me` live connections to one middle proxy, replacing those that
/// die with a growing pause after failures; once retired, closes them as their clients
/// leave.
async fn maintain(middle: Arc<MiddleEnd>, pool: Arc<Pool>) {
    const FIRST_PAUSE: Duration = Duration::from_millis(250);
    const MAX_PAUSE: Duration = Duration::from_secs(30);
    let mut pause = FIRST_PAUSE;
    loop {
        let live = pool.live();
        if pool.retired.load(Ordering::Relaxed) {
            for conn in &live {
                if conn.clients() == 0 {
                    conn.kill("no longer listed");
                }
            }
            if live.iter().all(|c| c.is_dead()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let settings = middle.settings.load_full();
        let sources = middle.sources.load_full();
        match sources {
            Some(sources) if live.len() < settings.connections_per_me => {
                let dial = Dial {
                    secret: sources.secret.clone(),
                    public_ip: settings.public_ip_for(pool.addr),
                    timeout: settings.connect_timeout,
                };
                match MeConn::open(pool.addr, &dial, middle.stats.clone()).await {
                    Ok(conn) => {
                        middle.stats.connects.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut conns) = pool.conns.lock() {
                            conns.push(conn);
                        }
                        pause = FIRST_PAUSE;
                    }
                    Err(e) => {
                        middle
                            .stats
                            .connect_failures
                            .fetch_add(1, Ordering::Relaxed);
                        crate::warn_limited!(
                            (1, 5),
                            me = %pool.addr,
                            "middle-proxy connection failed: {e}"
                        );
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                }
            }
            _ => {
                let deaths = live.iter().map(|c| Box::pin(c.died()));
                let any_death = futures_select_all(deaths);
                tokio::select! {
                    () = any_death => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Completes when any of `futures` does (never, for none).
async fn futures_select_all<F: std::future::Future<Output = ()> + Unpin>(
    futures: impl Iterator<Item = F>,
) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        for f in &mut futures {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Origin;

    fn config(list: &Path, secret: &Path) -> Config {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[upstream]\nmode = \"middle\"\n\n\
             [upstream.middle]\nconfig_file = \"{}\"\nsecret_file = \"{}\"\n",
            list.display(),
            secret.display()
        );
        Config::parse(&text, Origin::Embedded).expect("valid config")
    }

    fn listed(middle: &MiddleEnd) -> Vec<SocketAddr> {
        middle
            .sources
            .load_full()
            .map(|s| s.config.all_addrs())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn refreshes_apply_changes_and_keep_the_list_when_a_new_one_is_unusable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (list, secret) = (dir.path().join("list"), dir.path().join("secret"));
        std::fs::write(&list, "proxy_for 2 127.0.0.1:8888;").expect("write");
        std::fs::write(&secret, [9u8; 128]).expect("write");
        std::fs::create_dir(dir.path().join("state")).expect("mkdir");
        let state = StateDir::open_own(&dir.path().join("state")).expect("state dir");
        let cfg = config(&list, &secret);
        let middle = MiddleEnd::new(&cfg, state.clone());
        let one: SocketAddr = "127.0.0.1:8888".parse().expect("addr");
        let two: SocketAddr = "127.0.0.2:8888".parse().expect("addr");

        refresh(&middle, &cfg).await;
        assert_eq!(listed(&middle), [one]);
        std::fs::write(&list, "proxy_for 2 127.0.0.2:8888;").expect("write");
        refresh(&middle, &cfg).await;
        assert_eq!(listed(&middle), [two]);
        refresh(&middle, &cfg).await;
        // A maintenance page instead of the list: refused, the list in use stays.
        std::fs::write(&list, "<html>503</html>").expect("write");
        refresh(&middle, &cfg).await;
        assert_eq!(listed(&middle), [two]);

        let c = middle.stats.counters();
        assert_eq!(
            (
                c.refreshes_applied,
                c.refreshes_unchanged,
                c.refreshes_failed
            ),
            (2, 1, 1)
        );
        // The last good list is what a restart without the files would use.
        let kept = sources::cached(&state).expect("readable").expect("kept");
        assert_eq!(kept.config.all_addrs(), [two]);
        let view = middle.view(&cfg);
        assert!(view.enabled);
        assert_eq!(view.source, "file");
    }

    #[tokio::test]
    async fn without_a_list_a_client_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open_own(dir.path()).expect("state dir");
        let cfg = config(
            Path::new("/nonexistent/list"),
            Path::new("/nonexistent/secret"),
        );
        let middle = MiddleEnd::new(&cfg, state);
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let err = middle
            .open(2, addr, addr, ProtoTag::Intermediate, None)
            .await
            .err()
            .expect("no list");
        assert!(matches!(err, MiddleError::NoConfig), "{err}");
        assert_eq!(middle.stats.counters().unavailable, 1);
    }
}
