//! Where the middle-proxy list and Telegram's proxy secret come from: local files
//! (`config_file`, `secret_file`) or Telegram's URLs, and the copy of the last good pair kept
//! in the state dir, used at start when neither can be read.

use std::{sync::Arc, time::Duration};

use hyper::Method;

use crate::{
    config::Middle,
    http_client::{Client, ClientOptions, HttpError},
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
/// What relay calls itself when it fetches the list and secret.
pub const USER_AGENT: &str = concat!("relay/", env!("CARGO_PKG_VERSION"));
/// The list is text and the secret bytes: any media type will do.
const ACCEPT: &str = "*/*";

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
    #[error("fetching {url}: {source}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: HttpError,
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

/// GETs `url` (at most [`MAX_BYTES`], within `timeout`), as relay rather than as any one
/// integration: Telegram sees `relay/<version>`.
async fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, SourceError> {
    let failed = |source: HttpError| SourceError::Fetch {
        url: url.to_owned(),
        source,
    };
    let options = ClientOptions {
        user_agent: USER_AGENT,
        accept: ACCEPT,
        ca_file: None,
        timeout,
    };
    let client = Client::new(url, options).map_err(failed)?;
    let (status, body) = client
        .send(Method::GET, "", &[], None, MAX_BYTES)
        .await
        .map_err(failed)?;
    if !status.is_success() {
        return Err(failed(HttpError::from_status(status, &body)));
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

    /// Telegram is asked as relay, for anything: not as the CrowdSec bouncer, not for JSON.
    /// An error answer is an error with its status.
    #[tokio::test]
    async fn fetches_name_relay_and_accept_anything() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (seen, mut heads) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let list = "proxy_for 2 127.0.0.1:8888;".to_owned();
            let secret = "s".repeat(128);
            for body in [list, secret] {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = seen.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 404 X\r\ncontent-length: 4\r\n\r\ngone")
                .await;
        });
        let settings = Middle {
            config_url: format!("{base}/getProxyConfig"),
            secret_url: format!("{base}/getProxySecret"),
            ..Middle::default()
        };
        let got = read(&settings, false, Duration::from_secs(2), 5)
            .await
            .expect("fetched");
        assert_eq!(got.origin, Origin::Fetched);
        assert_eq!(got.secret.len(), 128);
        for path in ["/getProxyConfig", "/getProxySecret"] {
            let head = heads.recv().await.expect("request").to_ascii_lowercase();
            assert!(
                head.starts_with(&format!("get {} ", path.to_ascii_lowercase())),
                "{head}"
            );
            assert!(
                head.contains(&format!("user-agent: {USER_AGENT}\r\n")),
                "{head}"
            );
            assert!(head.contains("accept: */*\r\n"), "{head}");
        }
        let missing = fetch(&format!("{base}/gone"), Duration::from_secs(2)).await;
        assert!(
            matches!(
                &missing,
                Err(SourceError::Fetch {
                    source: HttpError::Status { status: 404, .. },
                    ..
                })
            ),
            "{missing:?}"
        );
    }
}
