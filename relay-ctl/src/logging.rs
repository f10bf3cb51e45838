//! Process-wide logging through `tracing`; `log` records (aya-log's kernel messages among them)
//! are routed into the same subscriber.
//!
//! What is never logged, at any level: secrets (their `Debug` and `Display` are redacted, and
//! links are printed on stdout only), key material, and payload bytes. Client addresses appear
//! only through [`crate::privacy`]. Lines a flood could multiply go through a [`RateLimit`].

use std::{
    io::IsTerminal as _,
    num::NonZeroU32,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use governor::{
    RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};

use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt as _, reload};

use crate::config::{Log, LogFormat};

type FilterHandle = reload::Handle<EnvFilter, Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the subscriber for the CLI commands: `RUST_LOG` if set, else `info`. Text on
/// stderr.
pub fn init() {
    init_with(&Log::default());
}

/// Installs the subscriber as `[log]` says: `format`, `level` (unless `RUST_LOG` is set), and
/// `client_ips` for [`crate::privacy`]. A second call only changes what [`reconfigure`] can.
pub fn init_with(config: &Log) {
    crate::privacy::set_client_ips(config.client_ips);
    let filter = filter(config);
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (text, json) = match config.format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    // `try_init` also installs the log→tracing bridge; failing means a subscriber exists already.
    if tracing_subscriber::util::SubscriberInitExt::try_init(subscriber).is_ok() {
        let _ = FILTER.set(handle);
    } else {
        reconfigure(config);
    }
}

/// Applies a reloaded `[log]`: level and `client_ips` change at once; `format` needs a restart.
pub fn reconfigure(config: &Log) {
    crate::privacy::set_client_ips(config.client_ips);
    if let Some(handle) = FILTER.get()
        && handle.reload(filter(config)).is_ok()
    {
        // The `log` bridge drops records above the max level it was installed with.
        log::set_max_level(log::LevelFilter::Trace);
    }
}

fn filter(config: &Log) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(env).unwrap_or_else(|_| EnvFilter::new(&config.level))
        }
        _ => EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

/// The limit on one kind of log line: at most `burst` lines at once and `per_sec` a second
/// after that (governor's lock-free GCRA); what it holds back is counted and reported with the
/// next line let through. Keeps no per-source state, so a flood from many addresses costs
/// nothing either.
pub struct RateLimit<C: Clock = DefaultClock> {
    per_sec: u32,
    burst: u32,
    /// Made on first use, so that a `static` limit needs no runtime initialiser.
    limiter: OnceLock<RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>>,
    suppressed: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_sec", &self.per_sec)
            .field("burst", &self.burst)
            .field("suppressed", &self.suppressed)
            .finish_non_exhaustive()
    }
}

impl RateLimit {
    /// A limiter letting `burst` lines through at once, then `per_sec` per second (0 counts
    /// as 1).
    pub const fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec,
            burst,
            limiter: OnceLock::new(),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl<C: Clock + Default> RateLimit<C> {
    /// Whether to log now: `Some(n)` with the number of lines held back since the last one let
    /// through, `None` to stay quiet.
    pub fn check(&self) -> Option<u64> {
        let limiter = self.limiter.get_or_init(|| {
            let quota = crate::rate::Rate::per_second(nonzero(self.per_sec))
                .quota(Some(nonzero(self.burst)));
            RateLimiter::direct_with_clock(quota, C::default())
        });
        if limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Logs a `warn!` through a static [`RateLimit`] (`per_sec`, `burst`), adding the number of
/// lines held back before it as `suppressed`.
#[macro_export]
macro_rules! warn_limited {
    (($per_sec:expr, $burst:expr), $($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::new($per_sec, $burst);
        if let Some(suppressed) = LIMIT.check() {
            tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// Like [`warn_limited!`] for `info!`.
#[macro_export]
macro_rules! info_limited {
    (($per_sec:expr, $burst:expr), $($arg:tt)+) => {{
        static LIMIT: $crate::logging::RateLimit = $crate::logging::RateLimit::new($per_sec, $burst);
        if let Some(suppressed) = LIMIT.check() {
            tracing::info!(suppressed, $($arg)+);
        }
    }};
}

/// Log output written under a test's subscriber (`with_writer(move || capture.clone())`).
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl LogCapture {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    /// A limit on a fake clock the test moves.
    fn fake(per_sec: u32, burst: u32) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let quota = crate::rate::Rate::per_second(nonzero(per_sec)).quota(Some(nonzero(burst)));
        let limit = RateLimit {
            per_sec,
            burst,
            limiter: OnceLock::from(RateLimiter::direct_with_clock(quota, clock.clone())),
            suppressed: AtomicU64::new(0),
        };
        (limit, clock)
    }

    #[test]
    fn burst_then_rate_and_suppressed_counts() {
        let (limit, clock) = fake(2, 3);
        for _ in 0..3 {
            assert_eq!(limit.check(), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(limit.check(), None, "a flood is held back");
        }
        // Half a second makes room for one line at 2/s.
        clock.advance(Duration::from_millis(500));
        assert_eq!(limit.check(), Some(100));
        assert_eq!(limit.check(), None);
        // A long pause refills no more than the burst.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limit.check().is_some());
        }
        assert_eq!(limit.check(), None);
    }

    /// 10,000 events, one a millisecond, at 2 lines/s after a burst of 3: the burst plus one
    /// line every 500 ms get through, and each carries the number held back before it.
    #[test]
    fn a_burst_of_ten_thousand_events_logs_the_configured_lines() {
        const EVENTS: u64 = 10_000;
        let (limit, clock) = fake(2, 3);
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for event in 0..EVENTS {
                if let Some(suppressed) = limit.check() {
                    tracing::warn!(suppressed, event, "flood line");
                }
                clock.advance(Duration::from_millis(1));
            }
        });
        let text = capture.text();
        let lines: Vec<(u64, u64)> = text
            .lines()
            .filter(|l| l.contains("flood line"))
            .map(|l| {
                let field = |key: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(key))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or_else(|| panic!("no {key} in {l}"))
                };
                (field("suppressed="), field("event="))
            })
            .collect();
        // Events 0, 1, 2 (the burst), then 500, 1000, ..., 9500.
        let expected: Vec<u64> = [0, 1, 2]
            .into_iter()
            .chain((1..20).map(|k| k * 500))
            .collect();
        assert_eq!(
            lines.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
            expected,
            "{text}"
        );
        // Each line reports exactly the events between it and the previous line.
        for pair in lines.windows(2) {
            assert_eq!(pair[1].0, pair[1].1 - pair[0].1 - 1, "{pair:?}");
        }
        let logged = lines.len() as u64;
        let suppressed: u64 = lines.iter().map(|(s, _)| s).sum();
        let trailing = EVENTS - 1 - lines.last().map_or(0, |(_, e)| *e);
        assert_eq!(logged + suppressed + trailing, EVENTS);
    }
}
