//! The configuration file: TOML, unknown keys rejected, every error tied to a file and line.
//!
//! Parsing checks shapes and values through serde (so errors carry a span); [`Config::load`]
//! turns spans into `file:line:column` messages an operator can act on. Each section lives in
//! its own module with the checks serde cannot make; [`Config`] runs them after parsing.
//!
//! This module depends on no other part of the daemon: the parts that consume a section
//! convert it into their own types.

mod admin;
mod allowlist;
mod blocklist;
mod cidr;
mod crowdsec;
mod exposure;
mod http_url;
mod limits;
mod log;
mod metrics;
mod misuse;
mod permissions;
mod replay;
mod serde_helpers;
mod server;
mod source_span;
mod state;
mod timeouts;
mod tls;
mod upstream;
mod users;
mod xdp;

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use self::source_span::{find_key, line_column};
pub use self::{
    admin::Admin,
    allowlist::Allowlist,
    blocklist::Blocklist,
    cidr::{Cidr, CidrError},
    crowdsec::{CrowdSec, Redacted},
    exposure::exposure,
    http_url::HttpUrl,
    limits::Limits,
    log::{Log, LogFormat},
    metrics::{DEFAULT_METRICS_LISTEN, Metrics},
    misuse::{Misuse, ProbeBanAction},
    permissions::secrets_exposure,
    replay::Replay,
    server::{OnLimit, PassthroughMode, ProxyProtocol, Server},
    state::State,
    timeouts::Timeouts,
    tls::Tls,
    upstream::{Middle, Upstream, UpstreamMode},
    users::User,
    xdp::{Xdp, XdpMode},
};

/// The configuration used when `relay-ctl run` gets no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default.toml");

/// Where a configuration came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Embedded,
    /// A file on disk.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Embedded => f.write_str("<embedded default configuration>"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a bad value.
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        /// Where the text came from.
        origin: Origin,
        /// 1-based line of the offending text (0 when unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

/// A section's check after parsing failed: the key whose line the message points at, and the
/// message.
#[derive(Debug)]
struct SectionError {
    key: &'static str,
    message: String,
}

impl SectionError {
    fn new(key: &'static str, message: impl Into<String>) -> SectionError {
        SectionError {
            key,
            message: message.into(),
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening sockets.
    pub server: Server,
    /// Kernel fast path.
    #[serde(default)]
    pub xdp: Xdp,
    /// New-connection limits.
    #[serde(default)]
    pub limits: Limits,
    /// Sources that are dropped.
    #[serde(default)]
    pub blocklist: Blocklist,
    /// Sources that bypass every check.
    #[serde(default)]
    pub allowlist: Allowlist,
    /// Who may use the relay. Empty: one user `default` with a secret kept in the state dir.
    #[serde(default)]
    pub users: Vec<User>,
    /// Fake-TLS and fronting.
    #[serde(default)]
    pub tls: Tls,
    /// Telegram data centres.
    #[serde(default)]
    pub upstream: Upstream,
    /// Connection deadlines.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Anti-replay cache.
    #[serde(default)]
    pub replay: Replay,
    /// Where state (the generated default secret, later bans and usage) is kept.
    #[serde(default)]
    pub state: State,
    /// Automatic bans of misbehaving sources.
    #[serde(default)]
    pub misuse: Misuse,
    /// The admin socket the CLI talks to.
    #[serde(default)]
    pub admin: Admin,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: Metrics,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// A CrowdSec Local API to take bans from and publish bans to; absent: off.
    #[serde(default)]
    pub crowdsec: Option<CrowdSec>,
}

impl Config {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, Origin::File(path.to_owned()))
    }

    /// The embedded default configuration.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, Origin::Embedded)
    }

    /// Parses configuration text; `origin` only names it in errors.
    pub fn parse(text: &str, origin: Origin) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Invalid {
                origin: origin.clone(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        config.validate(text, origin)?;
        Ok(config)
    }

    /// Checks that span several fields, which serde cannot. They run in a fixed order, so a
    /// file with several mistakes always reports the same one first.
    fn validate(&self, text: &str, origin: Origin) -> Result<(), ConfigError> {
        let invalid = |e: SectionError| {
            let (line, column) = find_key(text, e.key);
            ConfigError::Invalid {
                origin: origin.clone(),
                line,
                column,
                message: e.message,
            }
        };
        self.limits.validate().map_err(invalid)?;
        self.server.validate().map_err(invalid)?;
        users::validate(&self.users).map_err(invalid)?;
        self.tls.validate_domain().map_err(invalid)?;
        self.admin.validate().map_err(invalid)?;
        self.tls.validate_flight_refresh().map_err(invalid)?;
        self.timeouts.validate().map_err(invalid)?;
        self.replay
            .validate(self.tls.time_skew_secs)
            .map_err(invalid)?;
        self.log.validate().map_err(invalid)?;
        if let Some(cs) = &self.crowdsec {
            cs.validate().map_err(|mut e| {
                // A missing key has no line: point at the section's lapi_url instead.
                if find_key(text, e.key).0 == 0 {
                    e.key = "lapi_url";
                }
                invalid(e)
            })?;
        }
        self.xdp.validate().map_err(invalid)?;
        self.upstream
            .validate(self.users.iter().any(|u| u.ad_tag.is_some()))
            .map_err(invalid)?;
        Ok(())
    }

    /// Distinct TCP ports the relay listens on.
    pub fn listen_ports(&self) -> Vec<u16> {
        self.server.listen_ports()
    }
}

#[cfg(test)]
mod tests;
