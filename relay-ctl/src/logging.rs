//! Process-wide logging through `tracing`; `log` records (aya-log's kernel messages among them)
//! are routed into the same subscriber.
//!
//! What is never logged, at any level: secrets (their `Debug` and `Display` are redacted, and
//! links are printed on stdout only), key material, and payload bytes. Client addresses appear
//! only through [`crate::privacy`]. Lines a flood could multiply go through a [`RateLimit`].

use std::{
    io::IsTerminal as _,
    sync::{Mutex, OnceLock},
    time::Instant,
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

/// A token bucket for one kind of log line: at most `burst` lines at once and `per_sec` a
/// second after that; what it holds back is counted and reported with the next line let
/// through. Keeps no per-source state, so a flood from many addresses costs nothing either.
#[derive(Debug)]
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// A limiter letting `burst` lines through at once, then `per_sec` per second.
    pub const fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec: per_sec as f64,
            burst: burst as f64,
            state: Mutex::new(Bucket {
                tokens: burst as f64,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log now: `Some(n)` with the number of lines held back since the last one let
    /// through, `None` to stay quiet.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(last) = b.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_sec;
            b.tokens = (b.tokens + refill).min(self.burst);
        }
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
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
pub(crate) struct LogCapture(std::sync::Arc<Mutex<Vec<u8>>>);

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

    use super::*;

    #[test]
    fn burst_then_rate_and_suppressed_counts() {
        let limit = RateLimit::new(2, 3);
        let t0 = Instant::now();
        assert_eq!(limit.check_at(t0), Some(0));
        assert_eq!(limit.check_at(t0), Some(0));
        assert_eq!(limit.check_at(t0), Some(0));
        for _ in 0..100 {
            assert_eq!(limit.check_at(t0), None, "a flood is held back");
        }
        // Half a second refills one token at 2/s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limit.check_at(t1), Some(100));
        assert_eq!(limit.check_at(t1), None);
        // A long pause refills no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limit.check_at(t2).is_some());
        }
        assert_eq!(limit.check_at(t2), None);
    }
}
