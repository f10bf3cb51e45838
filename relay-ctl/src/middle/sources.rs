//! Where the middle-proxy list and Telegram's proxy secret come from: local files
//! (`config_file`, `secret_file`) or Telegram's URLs, and the copy of the last good pair kept
//! in the state dir, used at start when neither can be read.

use std::{sync::Arc, time::Duration};

use hyper::Method;

use crate::{
    config::Middle,
    crowdsec::client::Client,
    state_dir::{StateDir, StateError},
};
use relay_proto::middle::{ProxyConfig, ProxyConfigError};

/// Cached list, in the state dir.
pub const CONFIG_CACHE: &str = "middle-proxy-config.txt";
/// Cached secret, in the state dir.
pub const SECRET_CACHE: &str = "middle-proxy-secret.bin";
/// Largest list or secret read.
const MAX_BYTES: usize = 1 << 20;
/// Shortest secret accepted (Telegram's is 128 bytes; the key selector needs 4).
const MIN_SECRET: usize = 16;

/// Where a list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from Telegram's URLs.
    Fetched,
    /// Read from `config_file` / `secret_file`.
    File,
    /// The state dir's copy of the last good pair.
    Cache,
}

impl Origin {
    /// The word used in logs, metrics and `stats`.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Fetched => "fetched",
            Origin::File => "file",
            Origin::Cache => "cache",
        }
    }
}

/// A usable list and secret.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Middle proxies per DC.
    pub config: ProxyConfig,
    /// Telegram's proxy secret.
    pub secret: Arc<Vec<u8>>,
    /// When it was read or fetched (unix seconds; for the cache, when it was saved).
    pub read_unix: u64,
    /// Where it came from.
    pub origin: Origin,
}

/// Why a list or secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A local file could not be read.
    #[error("reading {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A URL could not be fetched.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The list parsed to nothing usable.
    #[error("{what}: {source}")]
    Config {
        /// Which list.
        what: String,
        /// Why.
        source: ProxyConfigError,
    },
    /// The secret is too short.
    #[error("the proxy secret from {0} is too short")]
    Secret(String),
    /// The state dir's copy could not be read.
    #[error("cache: {0}")]
    Cache(#[from] StateError),
}

/// Reads the list and secret from the configured files or URLs (not the cache).
pub async fn read(
    settings: &Middle,
    prefer_ipv6: bool,
    timeout: Duration,
    now_unix: u64,
) -> Result<Sources, SourceError> {
    let (text, secret, origin) = match (&settings.config_file, &settings.secret_file) {
        (Some(config), Some(secret)) => (
            read_file(config).await?,
            read_file(secret).await?,
            Origin::File,
        ),
        (config, secret) => {
            let text = match config {
                Some(path) => read_file(path).await?,
                None => fetch(&settings.config_url, timeout).await?,
            };
            let secret = match secret {
                Some(path) => read_file(path).await?,
                None => fetch(&settings.secret_url, timeout).await?,
            };
            (text, secret, Origin::Fetched)
        }
    };
    let what = settings
        .config_file
        .as_ref()
        .map_or_else(|| settings.config_url.clone(), |p| p.display().to_string());
    let mut config = parse(&text, &what)?;
    if prefer_ipv6 && settings.config_file.is_none() {
        // The IPv6 list is an addition: without it, IPv4 middle proxies still serve.
        match fetch(&settings.config_url_v6, timeout).await {
            Ok(v6) => match ProxyConfig::parse(&String::from_utf8_lossy(&v6)) {
                Ok(v6) => {
                    let mut merged = v6;
                    merged.merge(config);
                    config = merged;
                }
                Err(e) => tracing::warn!("ignoring the IPv6 middle-proxy list: {e}"),
            },
            Err(e) => tracing::warn!("ignoring the IPv6 middle-proxy list: {e}"),
        }
    }
    if secret.len() < MIN_SECRET {
        return Err(SourceError::Secret(what));
    }
    Ok(Sources {
        config,
        secret: Arc::new(secret),
        read_unix: now_unix,
        origin,
    })
}

fn parse(text: &[u8], what: &str) -> Result<ProxyConfig, SourceError> {
    ProxyConfig::parse(&String::from_utf8_lossy(text)).map_err(|source| SourceError::Config {
        what: what.to_owned(),
        source,
    })
}

/// The state dir's copy of the last good pair, if there is one.
pub fn cached(state: &StateDir) -> Result<Option<Sources>, SourceError> {
    let (Some(text), Some(secret)) = (state.read(CONFIG_CACHE)?, state.read(SECRET_CACHE)?) else {
        return Ok(None);
    };
    let config = parse(&text, CONFIG_CACHE)?;
    if secret.len() < MIN_SECRET {
        return Err(SourceError::Secret(SECRET_CACHE.to_owned()));
    }
    let read_unix = std::fs::metadata(state.file(CONFIG_CACHE))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(Some(Sources {
        config,
        secret: Arc::new(secret),
        read_unix,
        origin: Origin::Cache,
    }))
}

/// Keeps `sources` as the last good pair.
pub fn save(state: &StateDir, sources: &Sources) -> Result<(), StateError> {
    state.write(CONFIG_CACHE, render(&sources.config).as_bytes())?;
    state.write(SECRET_CACHE, &sources.secret)
}

/// The list in Telegram's own format.
fn render(config: &ProxyConfig) -> String {
    let mut out = String::new();
    if let Some(dc) = config.default_dc {
        out.push_str(&format!("default {dc};\n"));
    }
    for (dc, addrs) in &config.dcs {
        for addr in addrs {
            out.push_str(&format!("proxy_for {dc} {addr};\n"));
        }
    }
    out
}

async fn read_file(path: &std::path::Path) -> Result<Vec<u8>, SourceError> {
    let owned = path.to_owned();
    let data = tokio::task::spawn_blocking(move || std::fs::read(owned))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| SourceError::File {
            path: path.display().to_string(),
            source,
        })?;
    if data.len() > MAX_BYTES {
        return Err(SourceError::File {
            path: path.display().to_string(),
            source: std::io::Error::other("larger than 1 MiB"),
        });
    }
    Ok(data)
}

async fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, SourceError> {
    let failed = |message: String| SourceError::Fetch {
        url: url.to_owned(),
        message,
    };
    // The LAPI client is a plain bounded HTTP/1.1 client; nothing in it is CrowdSec's.
    let client = Client::new(url, None, timeout).map_err(|e| failed(e.to_string()))?;
    let (status, body) = client
        .send(Method::GET, "", &[], None, MAX_BYTES)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !status.is_success() {
        return Err(failed(format!("HTTP {status}")));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_list_reads_back_as_it_was() {
        let config =
            ProxyConfig::parse("default 2; proxy_for 2 127.0.0.1:8888; proxy_for -2 [::1]:8888;")
                .expect("valid");
        assert_eq!(ProxyConfig::parse(&render(&config)), Ok(config));
    }

    #[tokio::test]
    async fn files_are_read_and_a_list_of_nothing_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = dir.path().join("list");
        let secret = dir.path().join("secret");
        std::fs::write(&list, "proxy_for 2 127.0.0.1:8888;").expect("write");
        std::fs::write(&secret, [7u8; 128]).expect("write");
        let settings = Middle {
            config_file: Some(list.clone()),
            secret_file: Some(secret.clone()),
            ..Middle::default()
        };
        let got = read(&settings, false, Duration::from_secs(1), 5)
            .await
            .expect("files");
        assert_eq!(got.origin, Origin::File);
        assert_eq!(got.secret.len(), 128);

        std::fs::write(&list, "<html>maintenance</html>").expect("write");
        let err = read(&settings, false, Duration::from_secs(1), 5)
            .await
            .expect_err("nothing usable");
        assert!(err.to_string().contains("no proxy_for"), "{err}");

        std::fs::write(&list, "proxy_for 2 127.0.0.1:8888;").expect("write");
        std::fs::write(&secret, [7u8; 3]).expect("write");
        assert!(matches!(
            read(&settings, false, Duration::from_secs(1), 5).await,
            Err(SourceError::Secret(_))
        ));
    }

    #[test]
    fn the_last_good_pair_survives_in_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::open_own(dir.path()).expect("state dir");
        assert!(cached(&state).expect("empty").is_none());
        let sources = Sources {
            config: ProxyConfig::parse("proxy_for 1 10.0.0.1:8888;").expect("valid"),
            secret: Arc::new(vec![1; 128]),
            read_unix: 1,
            origin: Origin::Fetched,
        };
        save(&state, &sources).expect("save");
        let back = cached(&state).expect("readable").expect("saved");
        assert_eq!(back.config, sources.config);
        assert_eq!(back.secret, sources.secret);
        assert_eq!(back.origin, Origin::Cache);
    }
}
