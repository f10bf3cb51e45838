//! The mask site's own server flight: probed as a TLS client at start and every
//! `[tls] flight_refresh_secs`, cached in the state dir so a restart needs no probe, and read
//! lock-free by every fake-TLS handshake. Without a profile (learning off, fronting off, the
//! mask unreachable or not TLS 1.3) fake flights use [`FlightShape::fallback`], and the log,
//! the metrics and `config check` say so.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, Guard};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::Notify,
    time::Instant,
};

use crate::{
    clock::unix_now,
    config::{Config, Tls},
    state_dir::{StateDir, StateError},
};
use relay_proto::tls::{FlightProfile, FlightShape, ProfileError, parse_flight, probe_hello};

/// File in `[state] dir` holding the last learned profile.
pub const CACHE_FILE: &str = "mask-flight.json";
/// Probes per learning round: sizes that vary between them widen the fake size range.
pub const SAMPLES: usize = 3;
/// A flight is complete once the server has been quiet this long after an encrypted record.
const QUIET: Duration = Duration::from_millis(500);
/// Longest one probe reads.
const READ_LIMIT: Duration = Duration::from_secs(10);
/// Most bytes one probe reads.
const MAX_BYTES: usize = 64 * 1024;
/// Next try after a failed round (or the refresh interval, if shorter).
const RETRY: Duration = Duration::from_secs(600);

/// What one learning round found, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnedFlight {
    /// The `host:port` probed (`[tls] mask`).
    pub target: String,
    /// The SNI sent (`[tls] domain`).
    pub domain: String,
    /// When, in unix seconds.
    pub learned_unix: u64,
    /// One profile per probe.
    pub samples: Vec<FlightProfile>,
}

impl LearnedFlight {
    /// What fake flights copy from it; `None` without samples.
    pub fn shape(&self) -> Option<FlightShape> {
        FlightShape::learned(&self.samples)
    }

    /// Whether it was learned for this `[tls]` domain and mask.
    pub fn is_for(&self, tls: &Tls) -> bool {
        self.target == tls.mask_target() && self.domain == tls.domain
    }
}

/// Where the shape in use comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Probed since this process started.
    Learned,
    /// Loaded from the state dir.
    Cached,
    /// Nothing learned: the fixed plausible range.
    Fallback,
}

impl Source {
    /// Every source, for metrics.
    pub const ALL: [Source; 3] = [Source::Learned, Source::Cached, Source::Fallback];

    /// `learned`, `cached` or `fallback`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Learned => "learned",
            Source::Cached => "cached",
            Source::Fallback => "fallback",
        }
    }
}

/// The shape fake flights use now, and why.
#[derive(Debug, Clone)]
pub struct FlightState {
    /// Where it comes from.
    pub source: Source,
    /// What fake flights copy.
    pub shape: FlightShape,
    /// The profile behind a learned or cached shape.
    pub learned: Option<LearnedFlight>,
    /// Why the fallback is used.
    pub reason: Option<String>,
}

impl FlightState {
    fn fallback(reason: String) -> FlightState {
        FlightState {
            source: Source::Fallback,
            shape: FlightShape::fallback(),
            learned: None,
            reason: Some(reason),
        }
    }

    fn from_learned(source: Source, learned: LearnedFlight) -> FlightState {
        match learned.shape() {
            Some(shape) => FlightState {
                source,
                shape,
                learned: Some(learned),
                reason: None,
            },
            None => FlightState::fallback("the profile has no samples".to_owned()),
        }
    }
}

/// What the state dir holds for a `[tls]` section.
#[derive(Debug)]
pub enum Cache {
    /// A profile for this domain and mask.
    Usable(LearnedFlight),
    /// No cache file.
    Missing,
    /// A profile for another domain or mask.
    OtherSite(LearnedFlight),
    /// The file cannot be read or parsed.
    Unreadable(StateError),
}

/// Reads the cached profile from `dir` (no network).
pub fn load_cache(dir: &Path, tls: &Tls) -> Cache {
    let path = dir.join(CACHE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Cache::Missing,
        Err(source) => return Cache::Unreadable(StateError::Io { path, source }),
    };
    match serde_json::from_str::<LearnedFlight>(&text) {
        Ok(learned) if learned.samples.is_empty() => Cache::Unreadable(StateError::Corrupt {
            path,
            message: "no samples".to_owned(),
        }),
        Ok(learned) if learned.is_for(tls) => Cache::Usable(learned),
        Ok(learned) => Cache::OtherSite(learned),
        Err(e) => Cache::Unreadable(StateError::Corrupt {
            path,
            message: e.to_string(),
        }),
    }
}

/// Writes `learned` to the cache in `dir`.
pub fn save_cache(dir: &StateDir, learned: &LearnedFlight) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(learned).map_err(|e| StateError::Corrupt {
        path: dir.file(CACHE_FILE),
        message: format!("cannot serialise: {e}"),
    })?;
    dir.write(CACHE_FILE, &json)
}

/// Why the mask is not probed, if it is not.
pub fn not_probed(tls: &Tls) -> Option<&'static str> {
    if !tls.fronting {
        Some("fronting is off ([tls] fronting = false)")
    } else if !tls.learn_flight {
        Some("learning is off ([tls] learn_flight = false)")
    } else {
        None
    }
}

/// The shape fake flights use, shared by every relay context and replaced by the learner.
pub struct MaskFlight {
    current: ArcSwap<FlightState>,
    relearn: Notify,
    /// Bumped by [`MaskFlight::reconfigure`]: a round started before must not publish.
    generation: AtomicU64,
    /// Where the profile is cached (the state dir opened at start).
    state: StateDir,
}

impl MaskFlight {
    /// The state at start: the cached profile for `config`'s mask if there is one, else the
    /// fallback (logged either way).
    pub fn start(config: &Config, state: StateDir) -> MaskFlight {
        let flight = MaskFlight {
            current: ArcSwap::from_pointee(initial(config, &state)),
            relearn: Notify::new(),
            generation: AtomicU64::new(0),
            state,
        };
        flight.log_current();
        flight
    }

    /// The shape in use now (lock-free).
    pub fn current(&self) -> Guard<Arc<FlightState>> {
        self.current.load()
    }

    /// After a reload: when the `[tls]` settings that decide the profile changed, starts over
    /// from the cache (or the fallback) and has the learner probe at once.
    pub fn reconfigure(&self, old: &Config, new: &Config) {
        let key = |c: &Config| {
            (
                c.tls.mask_target(),
                c.tls.domain.clone(),
                not_probed(&c.tls),
            )
        };
        if key(old) != key(new) {
            self.generation.fetch_add(1, Ordering::Relaxed);
            self.current.store(Arc::new(initial(new, &self.state)));
            self.log_current();
            self.relearn.notify_one();
        }
    }

    fn set(&self, state: FlightState) {
        self.current.store(Arc::new(state));
    }

    fn log_current(&self) {
        let state = self.current();
        match (&state.learned, &state.reason) {
            (Some(learned), _) => tracing::info!(
                source = state.source.name(),
                mask = learned.target,
                learned_unix = learned.learned_unix,
                "fake-TLS flights copy the mask's flight: {}",
                describe(learned)
            ),
            (None, reason) => tracing::warn!(
                "fake-TLS flights use the fallback size range {}..={} bytes: {}",
                state.shape.cert_len.start(),
                state.shape.cert_len.end(),
                reason.as_deref().unwrap_or("nothing learned")
            ),
        }
    }
}

fn initial(config: &Config, state: &StateDir) -> FlightState {
    if let Some(why) = not_probed(&config.tls) {
        return FlightState::fallback(why.to_owned());
    }
    let target = config.tls.mask_target();
    match load_cache(state.path(), &config.tls) {
        Cache::Usable(learned) => FlightState::from_learned(Source::Cached, learned),
        Cache::Unreadable(e) => FlightState::fallback(format!(
            "cached profile unusable ({e}); {target} not probed yet"
        )),
        Cache::Missing | Cache::OtherSite(_) => {
            FlightState::fallback(format!("no profile of {target} yet"))
        }
    }
}

/// One line about a learned profile: sizes, extension order, CCS.
pub fn describe(learned: &LearnedFlight) -> String {
    let Some(first) = learned.samples.first() else {
        return "no samples".to_owned();
    };
    let lens: Vec<u32> = learned.samples.iter().map(|s| s.encrypted_len).collect();
    format!(
        "ServerHello {} bytes ({}{}), ChangeCipherSpec {}, encrypted handshake {:?} bytes in {} \
         record(s)",
        first.hello_len,
        first.order().name(),
        if first.other_extensions() {
            " and others"
        } else {
            ""
        },
        if first.ccs { "sent" } else { "not sent" },
        lens,
        first.app_records,
    )
}

/// Why probing the mask failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connection failed.
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    /// The TCP connection timed out.
    #[error("connecting timed out")]
    ConnectTimeout,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The server sent nothing before it closed or the time was up.
    #[error("no answer to the ClientHello")]
    NoAnswer,
    /// The answer is not a TLS 1.3 server flight.
    #[error("{0}")]
    Flight(ProfileError),
}

/// Probes `target` once with a ClientHello for `domain` and parses its flight. Reads until the
/// server has been quiet for a moment after its first encrypted record, at most
/// `READ_LIMIT` and `MAX_BYTES`.
pub async fn probe(
    target: &str,
    domain: &str,
    connect_timeout: Duration,
) -> Result<FlightProfile, ProbeError> {
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(target))
        .await
        .map_err(|_| ProbeError::ConnectTimeout)?
        .map_err(ProbeError::Connect)?;
    let hello = probe_hello(&mut rand::rng(), domain);
    stream.write_all(&hello).await.map_err(ProbeError::Io)?;
    let deadline = Instant::now() + READ_LIMIT;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut complete = None;
    while got.len() < MAX_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if complete.is_some() {
            QUIET.min(left)
        } else {
            left
        };
        let n = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(ProbeError::Io(e)),
        };
        got.extend_from_slice(&buf[..n]);
        match parse_flight(&got) {
            Ok(profile) => complete = Some(profile),
            Err(ProfileError::Truncated) => {}
            Err(e) => return Err(ProbeError::Flight(e)),
        }
    }
    match complete {
        Some(profile) => Ok(profile),
        None if got.is_empty() => Err(ProbeError::NoAnswer),
        None => Err(ProbeError::Flight(ProfileError::Truncated)),
    }
}

/// One learning round: [`SAMPLES`] probes of `tls`'s mask, one after the other.
pub async fn learn(tls: &Tls, connect_timeout: Duration) -> Result<LearnedFlight, ProbeError> {
    let target = tls.mask_target();
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        samples.push(probe(&target, &tls.domain, connect_timeout).await?);
    }
    Ok(LearnedFlight {
        target,
        domain: tls.domain.clone(),
        learned_unix: unix_now(),
        samples,
    })
}

/// Learns the mask's flight now and then every `[tls] flight_refresh_secs` (sooner after a
/// failure, at once after a reload that changed the mask), until the task is dropped.
/// `config` gives the configuration in force.
pub async fn run(flight: Arc<MaskFlight>, config: impl Fn() -> Arc<Config>) {
    loop {
        let config = config();
        let refresh = Duration::from_secs(config.tls.flight_refresh_secs);
        let wait = if not_probed(&config.tls).is_some() {
            None
        } else {
            Some(round(&flight, &config).await.min(refresh))
        };
        match wait {
            Some(wait) => tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = flight.relearn.notified() => {}
            },
            None => flight.relearn.notified().await,
        }
    }
}

/// One round: probe, then publish, cache and log the result. Returns when to try again.
async fn round(flight: &MaskFlight, config: &Config) -> Duration {
    let connect_timeout = Duration::from_secs(config.upstream.connect_timeout_secs);
    let target = config.tls.mask_target();
    let generation = flight.generation.load(Ordering::Relaxed);
    let result = learn(&config.tls, connect_timeout).await;
    if flight.generation.load(Ordering::Relaxed) != generation {
        // Reconfigured meanwhile: this was the old mask. The reconfiguration's wake-up starts
        // the next round at once.
        return Duration::MAX;
    }
    match result {
        Ok(learned) => {
            if let Err(e) = save_cache(&flight.state, &learned) {
                tracing::warn!("mask flight learned but not cached: {e}");
            }
            let changed = flight
                .current()
                .learned
                .as_ref()
                .is_none_or(|old| old.samples != learned.samples);
            flight.set(FlightState::from_learned(Source::Learned, learned));
            if changed {
                flight.log_current();
            }
            Duration::MAX
        }
        Err(e) => {
            let current = flight.current();
            match &current.learned {
                Some(learned) => tracing::warn!(
                    mask = target,
                    "probing the mask's TLS flight failed ({e}); keeping the profile learned at \
                     unix time {}",
                    learned.learned_unix
                ),
                None => {
                    flight.set(FlightState::fallback(format!(
                        "probing {target} failed: {e}"
                    )));
                    flight.log_current();
                }
            }
            RETRY
        }
    }
}

/// Path of the cache file for `config`.
pub fn cache_path(config: &Config) -> PathBuf {
    config.state.dir.join(CACHE_FILE)
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Origin;
    use relay_proto::{
        Secret,
        tls::{ExtensionOrder, SessionId, TlsClientHello, server_flight_shaped},
    };

    fn state_dir(path: &Path) -> StateDir {
        StateDir::open_own(path).expect("state dir")
    }

    fn config(mask: &str, state: &Path, extra: &str) -> Config {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:443\"]\n[tls]\ndomain = \"example.com\"\n\
             mask = \"{mask}\"\n{extra}\n[state]\ndir = {:?}\n",
            state.display().to_string()
        );
        Config::parse(&text, Origin::Embedded).expect("config")
    }

    /// A TLS 1.3-shaped flight with a ServerHello in `order` and `encrypted` bytes of
    /// application data (the relay's own fake flight has exactly that shape).
    fn site_flight(order: ExtensionOrder, encrypted: usize) -> Vec<u8> {
        let hello = TlsClientHello {
            user: 0,
            client_random: [1; 32],
            session_id: SessionId::new(&[2; 32]).expect("sid"),
            cipher: [0x13, 0x01],
            sni: "example.com".into(),
            timestamp: 0,
        };
        let secret = Secret::from_bytes([3; 16]);
        server_flight_shaped(&mut rand::rng(), &secret, &hello, encrypted, order)
    }

    /// A server that answers each connection's first bytes with `answer` (split in two
    /// writes), then holds the connection open, as a TLS server waiting for the client.
    async fn site(answer: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (a, b) = answer.split_at(answer.len() / 2);
                    let _ = stream.write_all(a).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = stream.write_all(b).await;
                    // Hold the connection until the prober closes it.
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probe_reads_a_whole_flight_split_across_writes() {
        let target = site(site_flight(ExtensionOrder::VersionsFirst, 3210)).await;
        let p = probe(&target, "example.com", Duration::from_secs(2))
            .await
            .expect("probe");
        assert_eq!(p.encrypted_len, 3210);
        assert_eq!(p.order(), ExtensionOrder::VersionsFirst);
        assert!(p.ccs);
    }

    #[tokio::test]
    async fn probe_failures_are_typed() {
        // Not TLS: an HTTP answer.
        let target = site(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
        let e = probe(&target, "example.com", Duration::from_secs(2)).await;
        assert!(
            matches!(
                e,
                Err(ProbeError::Flight(ProfileError::UnexpectedRecord(b'H')))
            ),
            "{e:?}"
        );
        // A server that closes without answering.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                // Read the hello first: closing with unread bytes would be a reset.
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            }
        });
        let e = probe(&target, "example.com", Duration::from_secs(2)).await;
        assert!(matches!(e, Err(ProbeError::NoAnswer)), "{e:?}");
        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let e = probe(
            &format!("127.0.0.1:{port}"),
            "example.com",
            Duration::from_secs(2),
        )
        .await;
        assert!(matches!(e, Err(ProbeError::Connect(_))), "{e:?}");
    }

    #[tokio::test]
    async fn learned_profile_is_cached_and_used_at_the_next_start() {
        let state = tempfile::tempdir().expect("tempdir");
        let target = site(site_flight(ExtensionOrder::KeyShareFirst, 4000)).await;
        let config = config(&target, state.path(), "");
        let flight = MaskFlight::start(&config, state_dir(state.path()));
        assert_eq!(flight.current().source, Source::Fallback);
        assert_eq!(flight.current().shape, FlightShape::fallback());

        round(&flight, &config).await;
        let learned = flight.current();
        assert_eq!(learned.source, Source::Learned);
        assert_eq!(learned.shape.cert_len, 4000 - 3..=4000 + 3);
        assert_eq!(
            learned.learned.as_ref().map(|l| l.samples.len()),
            Some(SAMPLES)
        );

        // A restart reads the cache: no probe needed.
        let again = MaskFlight::start(&config, state_dir(state.path()));
        assert_eq!(again.current().source, Source::Cached);
        assert_eq!(again.current().shape, learned.shape);
        assert!(matches!(
            load_cache(state.path(), &config.tls),
            Cache::Usable(_)
        ));

        // Another mask: the cache is not this site's.
        let other = config_other(state.path());
        assert!(matches!(
            load_cache(state.path(), &other.tls),
            Cache::OtherSite(_)
        ));
        assert_eq!(
            MaskFlight::start(&other, state_dir(state.path()))
                .current()
                .source,
            Source::Fallback
        );

        // Learning off: the fallback, whatever is cached.
        let off = super::tests::config(&target, state.path(), "learn_flight = false");
        let state_off = MaskFlight::start(&off, state_dir(state.path()));
        assert_eq!(state_off.current().source, Source::Fallback);
        assert!(
            state_off
                .current()
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("learn_flight"))
        );

        // Reconfigured to that mask: starts over.
        flight.reconfigure(&config, &off);
        assert_eq!(flight.current().source, Source::Fallback);
    }

    #[tokio::test]
    async fn a_round_overtaken_by_a_reload_does_not_publish() {
        let state = tempfile::tempdir().expect("tempdir");
        let target = site(site_flight(ExtensionOrder::KeyShareFirst, 4000)).await;
        let old = config(&target, state.path(), "");
        let new = config_other(state.path());
        let flight = MaskFlight::start(&old, state_dir(state.path()));
        let ((), wait) = tokio::join!(
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                flight.reconfigure(&old, &new);
            },
            round(&flight, &old)
        );
        assert_eq!(wait, Duration::MAX);
        let current = flight.current();
        assert_eq!(current.source, Source::Fallback);
        assert!(
            current
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("127.0.0.1:9")),
            "{:?}",
            current.reason
        );
    }

    fn config_other(state: &Path) -> Config {
        config("127.0.0.1:9", state, "")
    }

    #[tokio::test]
    async fn failed_round_keeps_a_profile_or_says_fallback() {
        let state = tempfile::tempdir().expect("tempdir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let config = config(&format!("127.0.0.1:{port}"), state.path(), "");
        let flight = MaskFlight::start(&config, state_dir(state.path()));
        assert_eq!(round(&flight, &config).await, RETRY);
        let current = flight.current();
        assert_eq!(current.source, Source::Fallback);
        assert!(
            current
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("probing 127.0.0.1")),
            "{:?}",
            current.reason
        );

        // With a cached profile, a failed refresh keeps it.
        let learned = LearnedFlight {
            target: config.tls.mask_target(),
            domain: "example.com".into(),
            learned_unix: 1,
            samples: vec![
                relay_proto::tls::parse_flight(&site_flight(ExtensionOrder::KeyShareFirst, 999))
                    .expect("flight"),
            ],
        };
        save_cache(&state_dir(state.path()), &learned).expect("save");
        let flight = MaskFlight::start(&config, state_dir(state.path()));
        assert_eq!(flight.current().source, Source::Cached);
        round(&flight, &config).await;
        assert_eq!(flight.current().source, Source::Cached);
        assert_eq!(flight.current().shape.cert_len, 996..=1002);

        // A corrupt cache is reported, not used.
        std::fs::write(state.path().join(CACHE_FILE), "{").expect("write");
        assert!(matches!(
            load_cache(state.path(), &config.tls),
            Cache::Unreadable(_)
        ));
        assert_eq!(
            MaskFlight::start(&config, state_dir(state.path()))
                .current()
                .source,
            Source::Fallback
        );
    }
}
