//! The configuration file: TOML, unknown keys rejected, every error tied to a file and line.
//!
//! Parsing checks shapes and values through serde (so errors carry a span); [`Config::load`]
//! turns spans into `file:line:column` messages an operator can act on.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    num::{NonZeroU32, NonZeroUsize},
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use relay_proto::{Mode, ModeSet, Secret};

/// The configuration used when `relay-ctl run` gets no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

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

/// `[crowdsec]`: relay as a CrowdSec bouncer (decisions into the XDP maps) and, with a machine
/// login, as a signal source (its own bans published as alerts).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CrowdSec {
    /// Base URL of the LAPI, `http://127.0.0.1:8080` or `https://lapi.example.org:8080`.
    pub lapi_url: String,
    /// This relay's bouncer key (`cscli bouncers add NAME`); one key per relay, as the LAPI
    /// tracks each key's position in the stream.
    #[serde(default)]
    pub bouncer_key: Option<Redacted>,
    /// A file holding the bouncer key instead (first line).
    #[serde(default)]
    pub bouncer_key_file: Option<PathBuf>,
    /// Time between incremental pulls of the decision stream.
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: std::time::Duration,
    /// Time between full pulls, which also drop decisions the LAPI deleted without telling.
    #[serde(default = "default_resync", deserialize_with = "duration")]
    pub resync: std::time::Duration,
    /// Only decisions of these origins (`crowdsec`, `cscli`, `CAPI`, `lists`, `relay`...);
    /// empty: all.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Machine name for publishing (`cscli machines add NAME --password ...`); unset: relay
    /// only pulls.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// The machine's password.
    #[serde(default)]
    pub password: Option<Redacted>,
    /// A file holding the password instead (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for an `https` LAPI; default: the system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest time one LAPI request may take.
    #[serde(default = "default_crowdsec_timeout", deserialize_with = "duration")]
    pub timeout: std::time::Duration,
    /// Shortest prefix length of an IPv4 `Range` decision: a wider range is rejected (a
    /// `0.0.0.0/0` decision would otherwise drop every client).
    #[serde(default = "default_max_range_v4")]
    pub max_range_v4: u8,
    /// The same for IPv6 ranges.
    #[serde(default = "default_max_range_v6")]
    pub max_range_v6: u8,
    /// Most decisions one pull may carry (`new` and `deleted` together); a larger pull is
    /// refused whole and the decisions in force stay.
    #[serde(default = "default_max_decisions")]
    pub max_decisions: usize,
    /// Largest pull answer in bytes, read incrementally and refused once it passes this.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Allow a plain `http://` `lapi_url` that is not loopback: the bouncer key and the
    /// machine password then cross the network in clear.
    #[serde(default)]
    pub allow_insecure: bool,
}

/// A secret from the config file: its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::ops::Deref for Redacted {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

fn default_poll_interval() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn default_resync() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}
fn default_crowdsec_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}
fn default_max_range_v4() -> u8 {
    8
}
fn default_max_range_v6() -> u8 {
    32
}
/// A startup pull holds every active decision and the expired ones the LAPI still keeps:
/// 100,000 of each with community lists is a plausible fleet.
fn default_max_decisions() -> usize {
    500_000
}
/// About 141 bytes per decision in 1.4.6's stream: 500,000 are about 70 MB.
fn default_max_body_bytes() -> usize {
    128 << 20
}

/// A duration as `"10s"`, `"1h"`, `"500ms"` or whole seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) => Ok(std::time::Duration::from_secs(s)),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{t}` is not a duration like \"10s\" or \"1h\": {e}"
            ))
        }),
    }
}

/// `[metrics]`: Prometheus text exposition over HTTP.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Address of the HTTP listener. The default is loopback: the figures (per-user traffic
    /// among them) are for the operator, not the internet.
    pub listen: SocketAddr,
}

/// Where the metrics endpoint listens unless configured.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9810);

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            listen: DEFAULT_METRICS_LISTEN,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `"text"` (readable, for a terminal or journald) or `"json"` (one object per line).
    pub format: LogFormat,
    /// A `tracing` filter such as `"info"` or `"warn,relay_ctl=debug"`; `RUST_LOG` overrides it.
    pub level: String,
    /// How much of a client's address log lines show: `"none"`, `"truncated"` (/24, /48) or
    /// `"full"`. Ban entries always show the banned address.
    pub client_ips: crate::privacy::ClientIps,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".to_owned(),
            client_ips: crate::privacy::ClientIps::Truncated,
        }
    }
}

/// See [`Log::format`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON objects, one per line.
    Json,
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Path of the Unix socket.
    pub socket: PathBuf,
    /// Permission bits of the socket, as an octal string (`"0600"`).
    #[serde(deserialize_with = "octal_mode")]
    pub mode: u32,
    /// Group owning the socket (then `mode` typically `"0660"`), if any. Its members (and
    /// root, and the relay's own user) may send every request.
    pub group: Option<String>,
    /// Group whose members may only read (list, show, stats). When set, the socket belongs to
    /// this group (`mode` must grant the group read and write, e.g. `"0660"`), so members of
    /// `group` must also be members of `read_group` to reach it; the role of each caller is
    /// decided from its credentials (`SO_PEERCRED`), and callers in neither group are refused.
    pub read_group: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: PathBuf::from("/run/relay/admin.sock"),
            mode: 0o600,
            group: None,
            read_group: None,
        }
    }
}

fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let s = String::deserialize(d)?;
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "mode `{s}` is not octal permission bits like \"0600\""
            ))
        })
}

/// `[misuse]`: thresholds per window; crossing one bans the source (IPv4 address, IPv6 /64)
/// for `ban_secs`. The `prefix_*` thresholds count all sources of an IPv4 /24 or IPv6 /48
/// together and ban the whole prefix. 0 disables a threshold.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Misuse {
    /// Length of the counting window, seconds.
    pub window_secs: u64,
    /// How long a ban lasts, seconds.
    pub ban_secs: u64,
    /// Handshakes with an unknown secret or bad MAC per window.
    pub bad_secret: u32,
    /// Fake-TLS hellos for another domain per window.
    pub unknown_sni: u32,
    /// Replayed handshakes per window.
    pub replay: u32,
    /// Handshake timeouts per window.
    pub timeout: u32,
    /// Garbage connections per window.
    pub garbage: u32,
    /// New connections per window.
    pub connections: u32,
    /// Bad secrets or MACs per window from one /24 or /48.
    pub prefix_bad_secret: u32,
    /// Unknown SNIs per window from one /24 or /48.
    pub prefix_unknown_sni: u32,
    /// Replays per window from one /24 or /48.
    pub prefix_replay: u32,
    /// Handshake timeouts per window from one /24 or /48.
    pub prefix_timeout: u32,
    /// Garbage connections per window from one /24 or /48.
    pub prefix_garbage: u32,
    /// New connections per window from one /24 or /48; off (0) by default: a carrier's CGNAT
    /// /24 carries many users' connections, and floods are cut per source (SYN limiter,
    /// `connections`).
    pub prefix_connections: u32,
    /// Most sources, and most prefixes, tracked at once (memory bound: about 100 bytes each);
    /// beyond it the least recently seen is forgotten.
    pub max_sources: usize,
    /// What a ban for a prober's offence (bad secret, unknown SNI, replay, timeout, garbage)
    /// does: `front` (its connections get the mask site) or `drop` (in the kernel).
    /// Connection-rate bans always drop.
    pub action: ProbeBanAction,
    /// New connections per second refilled into a front-banned source's budget.
    pub banned_syn_rate_per_sec: u32,
    /// Connections a front-banned source may open at once; beyond its budget SYNs are dropped.
    pub banned_syn_burst: NonZeroU32,
}

/// `[misuse] action`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProbeBanAction {
    /// Front every connection of the banned source at accept.
    #[default]
    Front,
    /// Drop the banned source in the kernel.
    Drop,
}

impl Default for Misuse {
    fn default() -> Self {
        Misuse {
            window_secs: 60,
            ban_secs: 3600,
            bad_secret: 10,
            unknown_sni: 10,
            replay: 3,
            timeout: 20,
            garbage: 10,
            connections: 1200,
            // Ten times a source's: a CGNAT /24 of many genuine users is not banned by a few
            // bad clients.
            prefix_bad_secret: 100,
            prefix_unknown_sni: 100,
            prefix_replay: 30,
            prefix_timeout: 200,
            prefix_garbage: 100,
            prefix_connections: 0,
            max_sources: 100_000,
            action: ProbeBanAction::Front,
            banned_syn_rate_per_sec: 2,
            banned_syn_burst: NonZeroU32::new(8).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl Misuse {
    /// The action of a ban for `reason`: `action` for a prober's offences, drop otherwise.
    pub fn action_for(&self, reason: relay_common::BanReason) -> relay_common::BanAction {
        match self.action {
            ProbeBanAction::Front if reason.is_probe() => relay_common::BanAction::Front,
            _ => relay_common::BanAction::Drop,
        }
    }

    /// The detector's thresholds, per source and per prefix.
    pub fn thresholds(&self) -> crate::admission::misuse::Levels {
        crate::admission::misuse::Levels {
            source: crate::admission::misuse::Thresholds {
                bad_secret: self.bad_secret,
                unknown_sni: self.unknown_sni,
                replay: self.replay,
                timeout: self.timeout,
                garbage: self.garbage,
                connections: self.connections,
            },
            prefix: crate::admission::misuse::Thresholds {
                bad_secret: self.prefix_bad_secret,
                unknown_sni: self.prefix_unknown_sni,
                replay: self.prefix_replay,
                timeout: self.prefix_timeout,
                garbage: self.prefix_garbage,
                connections: self.prefix_connections,
            },
        }
    }
}

/// `[[users]]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Name shown in logs, metrics and the CLI.
    pub name: String,
    /// 32 hex digits.
    #[serde(deserialize_with = "from_str")]
    pub secret: Secret,
    /// Off: new connections are refused.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Concurrent connections.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Distinct client addresses within `[server] unique_ips_window_secs`.
    #[serde(default)]
    pub max_unique_ips: Option<u64>,
    /// Bytes in both directions, all time (persisted): `10737418240` or `"10GiB"`.
    #[serde(default, deserialize_with = "byte_size")]
    pub quota: Option<u64>,
    /// No new connections after this time (RFC 3339, e.g. `"2027-01-01T00:00:00Z"`).
    #[serde(default, deserialize_with = "rfc3339")]
    pub expires: Option<std::time::SystemTime>,
}

impl User {
    /// The limits the relay enforces for this user.
    pub fn limits(&self) -> crate::relay::accounts::Limits {
        crate::relay::accounts::Limits {
            disabled: !self.enabled,
            max_connections: self.max_connections,
            max_unique_ips: self.max_unique_ips,
            quota: self.quota,
            expires: self.expires,
        }
    }
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Bytes(n) => return Ok(Some(n)),
        Raw::Text(t) => t,
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_bytes: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => u64::MAX,
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|_| unit_bytes != u64::MAX)
        .and_then(|n| n.checked_mul(unit_bytes))
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "quota `{text}` is not a size like 10737418240, \"500MiB\" or \"10GB\""
            ))
        })
}

fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::time::SystemTime>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not an RFC 3339 time: {e}")))
}

/// `[tls]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The site fake-TLS clients name in SNI (part of their `ee` link).
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Where failed and probing connections are forwarded; default `domain:443`.
    #[serde(default)]
    pub mask: Option<String>,
    /// Forward failed connections to `mask`; off: close them.
    #[serde(default = "yes")]
    pub fronting: bool,
    /// Accepted clock difference of a ClientHello timestamp, in seconds.
    #[serde(default = "default_time_skew")]
    pub time_skew_secs: u32,
    /// Probe `mask` as a TLS client to copy the shape of its server flight (needs `fronting`);
    /// off: the fake flight uses a plausible fixed size range.
    #[serde(default = "yes")]
    pub learn_flight: bool,
    /// Seconds between probes of the mask site's flight.
    #[serde(default = "default_flight_refresh")]
    pub flight_refresh_secs: u64,
    /// Accept ClientHello timestamps that count seconds since the client's boot (below 1000
    /// days) whatever `time_skew_secs` says; such hellos are then limited by `[replay]` only.
    #[serde(default = "yes")]
    pub accept_uptime_clock: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            domain: default_domain(),
            mask: None,
            fronting: true,
            time_skew_secs: default_time_skew(),
            learn_flight: true,
            flight_refresh_secs: default_flight_refresh(),
            accept_uptime_clock: true,
        }
    }
}

impl Tls {
    /// The fronting target as `host:port`.
    pub fn mask_target(&self) -> String {
        self.mask
            .clone()
            .unwrap_or_else(|| format!("{}:443", self.domain))
    }
}

fn default_domain() -> String {
    "www.cloudflare.com".to_owned()
}
fn default_time_skew() -> u32 {
    120
}
fn default_flight_refresh() -> u64 {
    6 * 3600
}

/// `[upstream]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// DC used when a client asks for one that is not known.
    #[serde(default = "default_dc")]
    pub default_dc: i16,
    /// Seconds to wait for a DC connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Try IPv6 DC addresses first.
    #[serde(default)]
    pub prefer_ipv6: bool,
    /// Choose the DC leg's key so DC→client bytes need no AES (mtproto.md §1.3).
    #[serde(default = "yes")]
    pub fast_mode: bool,
    /// Per-DC address overrides: `"2" = ["127.0.0.1:9002"]`, negative ids for media DCs.
    #[serde(default, deserialize_with = "dc_overrides")]
    pub dc: BTreeMap<i16, Vec<SocketAddr>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            default_dc: default_dc(),
            connect_timeout_secs: default_connect_timeout(),
            prefer_ipv6: false,
            fast_mode: true,
            dc: BTreeMap::new(),
        }
    }
}

fn default_dc() -> i16 {
    2
}
fn default_connect_timeout() -> u64 {
    10
}

/// `[timeouts]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A client must complete its handshake within this many seconds.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_secs: u64,
    /// A relayed connection with no bytes either way for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_secs: u64,
    /// A connection that has sent nothing, or stopped short of a whole handshake, for this many
    /// milliseconds gets a connection to the mask host that receives its bytes, so from then
    /// on the mask's own timers decide how it ends (the mask connection is dropped again if
    /// the handshake completes and verifies). Genuine clients send their whole hello or header
    /// at once and never wait this long.
    #[serde(default = "default_mask_grace_ms")]
    pub mask_grace_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake_secs: default_handshake_timeout(),
            idle_secs: default_idle_timeout(),
            mask_grace_ms: default_mask_grace_ms(),
        }
    }
}

fn default_mask_grace_ms() -> u64 {
    250
}

fn default_handshake_timeout() -> u64 {
    10
}
fn default_idle_timeout() -> u64 {
    300
}

/// `[replay]`: the anti-replay memory. Each authenticated handshake is remembered for
/// `retention_secs` or `retention_handshakes` later handshakes, whichever is longer, within
/// `memory_bytes` (see [`relay_proto::replay`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// Seconds a handshake is remembered at least (at rates the memory allows).
    #[serde(default = "default_replay_retention")]
    pub retention_secs: u64,
    /// Later handshakes a handshake is remembered for at least, however fast they come.
    #[serde(default = "default_replay_handshakes")]
    pub retention_handshakes: u64,
    /// Most memory the filters may take, in bytes.
    #[serde(default = "default_replay_memory")]
    pub memory_bytes: usize,
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            retention_secs: default_replay_retention(),
            retention_handshakes: default_replay_handshakes(),
            memory_bytes: default_replay_memory(),
        }
    }
}

impl Replay {
    /// The memory's limits.
    pub fn limits(&self) -> relay_proto::replay::ReplayLimits {
        relay_proto::replay::ReplayLimits {
            retention_secs: self.retention_secs,
            handshakes: self.retention_handshakes,
            memory_bytes: self.memory_bytes,
        }
    }
}

fn default_replay_retention() -> u64 {
    86_400
}
fn default_replay_handshakes() -> u64 {
    1_000_000
}
fn default_replay_memory() -> usize {
    32 * 1024 * 1024
}

/// `[state]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Directory for state files.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/relay")
}

fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

fn modes<'de, D: Deserializer<'de>>(d: D) -> Result<ModeSet, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    let mut set = ModeSet::EMPTY;
    for name in names {
        let mode: Mode = name.parse().map_err(serde::de::Error::custom)?;
        set = set.with(mode);
    }
    if set.is_empty() {
        return Err(serde::de::Error::custom(
            "modes must enable at least one of \"classic\", \"secure\", \"tls\"",
        ));
    }
    Ok(set)
}

fn dc_overrides<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<i16, Vec<SocketAddr>>, D::Error> {
    let raw = BTreeMap::<String, Vec<SocketAddr>>::deserialize(d)?;
    raw.into_iter()
        .map(|(id, addrs)| {
            let dc: i16 = id.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "DC id `{id}` is not a number (e.g. \"2\" or \"-2\")"
                ))
            })?;
            if addrs.is_empty() {
                return Err(serde::de::Error::custom(format!(
                    "DC {dc} lists no addresses"
                )));
            }
            Ok((dc, addrs))
        })
        .collect()
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Addresses to accept clients on.
    #[serde(deserialize_with = "non_empty")]
    pub listen: Vec<SocketAddr>,
    /// Enabled client modes: "classic" (plain obfuscated2), "secure" (dd), "tls" (ee).
    #[serde(default = "default_modes", deserialize_with = "modes")]
    pub modes: ModeSet,
    /// Host name or address clients use in links; default: guessed from the listen addresses.
    #[serde(default)]
    pub public_host: Option<String>,
    /// Window for users' `max_unique_ips`, seconds.
    #[serde(default = "default_unique_ips_window")]
    pub unique_ips_window_secs: u64,
    /// What a connection refused by a user limit gets: `"close"` or `"front"` (to the mask;
    /// only possible for obfuscated2, as a fake-TLS client has already been answered).
    #[serde(default)]
    pub on_limit: OnLimit,
    /// After start-up (XDP loaded, ports bound), become this user, keeping only CAP_BPF and
    /// CAP_NET_ADMIN. Unset: stay as started (e.g. systemd's `User=` already did it).
    #[serde(default)]
    pub user: Option<String>,
    /// Group for `user`; default: the user's primary group.
    #[serde(default)]
    pub group: Option<String>,
    /// On SIGTERM, how long open connections may finish before the process exits, seconds.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
}

fn default_drain_secs() -> u64 {
    10
}

fn default_unique_ips_window() -> u64 {
    600
}

/// See [`Server::on_limit`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// Close the connection.
    #[default]
    Close,
    /// Hand it to the mask host.
    Front,
}

fn default_modes() -> ModeSet {
    ModeSet::DEFAULT
}

/// `[xdp]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    /// Interface names, or `"auto"` for the interfaces that carry the listen addresses.
    #[serde(default = "auto_interfaces")]
    pub interfaces: Vec<String>,
    /// Attach mode.
    #[serde(default)]
    pub mode: XdpMode,
    /// Leave the program attached and its maps pinned in `pin_dir` at exit, so protection
    /// continues while relay-ctl is stopped and the next start takes over without a gap.
    #[serde(default)]
    pub keep_on_exit: bool,
    /// Where maps and links are pinned with `keep_on_exit` (must be on a bpffs).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
}

impl Default for Xdp {
    fn default() -> Self {
        Xdp {
            interfaces: auto_interfaces(),
            mode: XdpMode::Auto,
            keep_on_exit: false,
            pin_dir: default_pin_dir(),
        }
    }
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/relay")
}

fn auto_interfaces() -> Vec<String> {
    vec!["auto".to_owned()]
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, else the TC ingress hook, else generic mode; TC first on a veth,
    /// where XDP in either mode copies every packet (see `xdp::driver`).
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic (skb) mode only.
    Generic,
    /// The same program as a TC ingress (tcx) classifier only: after the skb exists, like
    /// generic mode, without its copy.
    Tc,
    /// No XDP: enforce everything in userspace at accept time.
    Off,
}

/// `[limits]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// New connections per second refilled into each source's (/32, /64) bucket; 0 = no refill.
    #[serde(default = "default_syn_rate")]
    pub syn_rate_per_sec: u32,
    /// New connections a source may open at once. Real clients open a dozen or more at start.
    #[serde(default = "default_syn_burst")]
    pub syn_burst: NonZeroU32,
    /// Whether the per-source new-connection limiter is on.
    #[serde(default = "yes")]
    pub syn_limit: bool,
    /// Limiter entries each CPU may create per second; beyond it a spoofed flood gets no state.
    #[serde(default = "default_new_state")]
    pub new_state_per_cpu_per_sec: NonZeroU32,
    /// Open client connections in all; beyond it new connections are reset at accept. Each
    /// takes two file descriptors (client and DC).
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// Open client connections from one source (/32, /64); allowlisted sources are exempt.
    /// Mobile carriers put many users behind one address: keep it generous.
    #[serde(default = "default_max_per_source")]
    pub max_connections_per_source: NonZeroUsize,
    /// Client connections in their handshake at once. At this bound (and the per-source and
    /// per-prefix ones) the oldest handshake whose client has sent nothing is evicted to make
    /// room; only when every one has spoken is a newcomer refused (never an allowlisted one).
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: NonZeroUsize,
    /// Client connections in their handshake at once from one source (IPv4 address, IPv6 /64).
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: NonZeroUsize,
    /// Client connections in their handshake at once from one prefix (IPv4 /24, IPv6 /48).
    #[serde(default = "default_max_handshakes_per_prefix")]
    pub max_handshakes_per_prefix: NonZeroUsize,
}

impl Limits {
    /// The concurrency bounds.
    pub fn bounds(&self) -> crate::admission::capacity::Bounds {
        crate::admission::capacity::Bounds {
            connections: self.max_connections.get(),
            per_source: self.max_connections_per_source.get(),
            handshakes: crate::admission::capacity::handshakes::HandshakeBounds {
                total: self.max_handshakes.get(),
                per_source: self.max_handshakes_per_source.get(),
                per_prefix: self.max_handshakes_per_prefix.get(),
            },
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            syn_rate_per_sec: default_syn_rate(),
            syn_burst: default_syn_burst(),
            syn_limit: true,
            new_state_per_cpu_per_sec: default_new_state(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_per_source(),
            max_handshakes: default_max_handshakes(),
            max_handshakes_per_source: default_max_handshakes_per_source(),
            max_handshakes_per_prefix: default_max_handshakes_per_prefix(),
        }
    }
}

fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(8192).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_per_source() -> NonZeroUsize {
    NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_handshakes_per_source() -> NonZeroUsize {
    NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_handshakes_per_prefix() -> NonZeroUsize {
    NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN)
}
fn default_max_handshakes() -> NonZeroUsize {
    NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN)
}

fn default_syn_rate() -> u32 {
    8
}
fn default_syn_burst() -> NonZeroU32 {
    NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN)
}
fn default_new_state() -> NonZeroU32 {
    NonZeroU32::new(20_000).unwrap_or(NonZeroU32::MIN)
}
fn yes() -> bool {
    true
}

/// `[blocklist]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Blocklist {
    /// Addresses and CIDRs to drop.
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
    /// FireHOL netset files (e.g. firehol_level1.netset), re-read every `refresh_secs` and
    /// on SIGHUP.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// How often feed files are re-read, seconds.
    #[serde(default = "default_feed_refresh")]
    pub refresh_secs: u64,
}

impl Default for Blocklist {
    fn default() -> Self {
        Blocklist {
            cidrs: Vec::new(),
            files: Vec::new(),
            refresh_secs: default_feed_refresh(),
        }
    }
}

fn default_feed_refresh() -> u64 {
    3600
}

/// `[allowlist]`
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Allowlist {
    /// Addresses and CIDRs that are never dropped, limited or banned.
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
}

/// An address or CIDR as operators write them: `192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`.
/// Host bits are cleared, so `10.1.2.3/8` means `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.contains('/') {
            s.parse::<IpNet>()
                .map(|net| Cidr(net.trunc()))
                .map_err(|_| {
                    format!("invalid CIDR `{s}` (expected e.g. 192.0.2.0/24 or 2001:db8::/32)")
                })
        } else {
            s.parse::<IpAddr>()
                .map(|ip| Cidr(IpNet::from(ip)))
                .map_err(|_| {
                    format!("invalid address `{s}` (expected an IPv4/IPv6 address or CIDR)")
                })
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn non_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let v = Vec::<T>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom("must list at least one address"));
    }
    Ok(v)
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

    /// Checks that span several fields, which serde cannot.
    fn validate(&self, text: &str, origin: Origin) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            let (line, column) = find_key(text, key);
            ConfigError::Invalid {
                origin: origin.clone(),
                line,
                column,
                message,
            }
        };
        if self.limits.syn_rate_per_sec > relay_common::bucket::MAX_RATE_PER_SEC {
            return Err(invalid(
                "syn_rate_per_sec",
                format!(
                    "syn_rate_per_sec must be at most {}",
                    relay_common::bucket::MAX_RATE_PER_SEC
                ),
            ));
        }
        let ports: std::collections::BTreeSet<u16> =
            self.server.listen.iter().map(SocketAddr::port).collect();
        if ports.len() > relay_common::maps::MAX_LISTEN_PORTS as usize {
            return Err(invalid(
                "listen",
                format!(
                    "at most {} distinct listen ports are supported",
                    relay_common::maps::MAX_LISTEN_PORTS
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut secrets = HashSet::new();
        for user in &self.users {
            let valid = !user.name.is_empty()
                && user
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if !valid {
                return Err(invalid(
                    "name",
                    format!(
                        "user name `{}` must be non-empty letters, digits, - _ . @",
                        user.name
                    ),
                ));
            }
            if !names.insert(user.name.as_str()) {
                return Err(invalid(
                    "name",
                    format!("user `{}` is listed twice", user.name),
                ));
            }
            if !secrets.insert(*user.secret.as_bytes()) {
                return Err(invalid(
                    "secret",
                    format!("user `{}` reuses another user's secret", user.name),
                ));
            }
        }
        if self.tls.domain.is_empty() || self.tls.domain.len() > 253 || !self.tls.domain.is_ascii()
        {
            return Err(invalid(
                "domain",
                "[tls] domain must be an ASCII host name".to_owned(),
            ));
        }
        if self.admin.read_group.is_some() && self.admin.mode & 0o060 != 0o060 {
            return Err(invalid(
                "read_group",
                format!(
                    "[admin] read_group needs a socket its group can use: mode = \"0660\" \
                     (now \"{:04o}\")",
                    self.admin.mode
                ),
            ));
        }
        if self.tls.flight_refresh_secs < 60 {
            return Err(invalid(
                "flight_refresh_secs",
                "[tls] flight_refresh_secs must be at least 60 (set learn_flight = false to stop \
                 probing)"
                    .to_owned(),
            ));
        }
        if self.timeouts.handshake_secs == 0 || self.timeouts.idle_secs == 0 {
            return Err(invalid(
                "handshake_secs",
                "[timeouts] must be at least 1 second".to_owned(),
            ));
        }
        if self.timeouts.mask_grace_ms == 0
            || self.timeouts.mask_grace_ms >= self.timeouts.handshake_secs.saturating_mul(1000)
        {
            return Err(invalid(
                "mask_grace_ms",
                "[timeouts] mask_grace_ms must be at least 1 and below handshake_secs".to_owned(),
            ));
        }
        if let Err(message) = self.replay.limits().check() {
            return Err(invalid("memory_bytes", format!("[replay] {message}")));
        }
        if self.replay.retention_secs < 2 * u64::from(self.tls.time_skew_secs) {
            return Err(invalid(
                "retention_secs",
                format!(
                    "[replay] retention_secs must cover the fake-TLS time window: at least \
                     2 × [tls] time_skew_secs = {}",
                    2 * u64::from(self.tls.time_skew_secs)
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid(
                "level",
                format!(
                    "[log] level `{}` is not a filter like \"info\" or \"warn,relay_ctl=debug\": {e}",
                    self.log.level
                ),
            ));
        }
        if let Some(cs) = &self.crowdsec {
            cs.validate().map_err(|(key, message)| {
                // A missing key has no line: point at the section's lapi_url instead.
                let key = if find_key(text, key).0 == 0 {
                    "lapi_url"
                } else {
                    key
                };
                invalid(key, message)
            })?;
        }
        if self.xdp.interfaces.is_empty() {
            return Err(invalid(
                "interfaces",
                "interfaces must name at least one interface, or be [\"auto\"]".to_owned(),
            ));
        }
        if self.xdp.interfaces.len() > 1 && self.xdp.interfaces.iter().any(|i| i == "auto") {
            return Err(invalid(
                "interfaces",
                "\"auto\" cannot be combined with interface names".to_owned(),
            ));
        }
        Ok(())
    }

    /// Distinct TCP ports the relay listens on.
    pub fn listen_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.server.listen.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

impl CrowdSec {
    /// Checks what serde cannot; the error names the key to point at.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = crate::crowdsec::client::LapiUrl::parse(&self.lapi_url)
            .map_err(|e| ("lapi_url", format!("[crowdsec] lapi_url {e}")))?;
        if !url.tls && !url.is_loopback() && !self.allow_insecure {
            return Err((
                "lapi_url",
                format!(
                    "[crowdsec] lapi_url `{}` is plain http to a host that is not loopback: the \
                     bouncer key and machine password would cross the network in clear; use \
                     https:// (with ca_file for a private CA), or set allow_insecure = true for a \
                     link you trust",
                    self.lapi_url
                ),
            ));
        }
        if self.max_range_v4 > 32 {
            return Err((
                "max_range_v4",
                "[crowdsec] max_range_v4 is a prefix length, 0 to 32".to_owned(),
            ));
        }
        if self.max_range_v6 > 128 {
            return Err((
                "max_range_v6",
                "[crowdsec] max_range_v6 is a prefix length, 0 to 128".to_owned(),
            ));
        }
        if self.max_decisions == 0 {
            return Err((
                "max_decisions",
                "[crowdsec] max_decisions must be at least 1".to_owned(),
            ));
        }
        if self.max_body_bytes < 4096 {
            return Err((
                "max_body_bytes",
                "[crowdsec] max_body_bytes must be at least 4096".to_owned(),
            ));
        }
        if self.bouncer_key.is_some() == self.bouncer_key_file.is_some() {
            return Err((
                "bouncer_key",
                "[crowdsec] needs exactly one of bouncer_key and bouncer_key_file".to_owned(),
            ));
        }
        if self.bouncer_key.as_deref().is_some_and(str::is_empty) {
            return Err(("bouncer_key", "[crowdsec] bouncer_key is empty".to_owned()));
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if self.password.is_some() && self.password_file.is_some() {
            return Err((
                "password",
                "[crowdsec] give password or password_file, not both".to_owned(),
            ));
        }
        if self.machine_id.is_some() != has_password {
            return Err((
                "machine_id",
                "[crowdsec] machine_id and a password (or password_file) go together".to_owned(),
            ));
        }
        if self.machine_id.as_deref().is_some_and(str::is_empty) {
            return Err(("machine_id", "[crowdsec] machine_id is empty".to_owned()));
        }
        if self.poll_interval < std::time::Duration::from_secs(1) {
            return Err((
                "poll_interval",
                "[crowdsec] poll_interval must be at least 1s".to_owned(),
            ));
        }
        if self.resync < self.poll_interval {
            return Err((
                "resync",
                "[crowdsec] resync must not be shorter than poll_interval".to_owned(),
            ));
        }
        if self.timeout < std::time::Duration::from_secs(1) {
            return Err((
                "timeout",
                "[crowdsec] timeout must be at least 1s".to_owned(),
            ));
        }
        let word = |o: &String| {
            !o.is_empty()
                && o.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        };
        if !self.origins.iter().all(word) {
            return Err((
                "origins",
                "[crowdsec] origins must be names like \"crowdsec\", \"cscli\", \"CAPI\""
                    .to_owned(),
            ));
        }
        if self.ca_file.is_some() && !self.lapi_url.starts_with("https://") {
            return Err((
                "ca_file",
                "[crowdsec] ca_file is only used with an https:// lapi_url".to_owned(),
            ));
        }
        Ok(())
    }
}

/// What the configuration lets a censor see, one line per setting, for `config check` and the
/// start-up log: enabled obfuscated2 modes and fronting turned off.
pub fn exposure(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    let modes = config.server.modes;
    if modes.contains(Mode::Classic) {
        lines.push(
            "mode \"classic\" is enabled: plain obfuscated2 has fixed packet sizes a censor can \
             match on the wire, and its header is random bytes, so relay cannot tell a client \
             from a probe before 64 bytes arrive (see \"secure\")"
                .to_owned(),
        );
    }
    if modes.contains(Mode::Secure) || modes.contains(Mode::Classic) {
        lines.push(format!(
            "obfuscated2 modes are enabled: random bytes are a possible client header, so a \
             probe of fewer than 64 random bytes reaches the mask site up to \
             [timeouts] mask_grace_ms ({} ms) later than the site itself would see it, and the \
             stream has no TLS cover; \"tls\" alone avoids both",
            config.timeouts.mask_grace_ms
        ));
    }
    if !config.tls.fronting {
        lines.push(
            "[tls] fronting is off: failed handshakes and probes are closed instead of handed \
             to the mask site, which tells a censor this is not that site"
                .to_owned(),
        );
    }
    lines
}

/// A warning when `path` holds user secrets and other users on the host can read it (mode bits
/// `o+r`), or `None`.
pub fn secrets_exposure(path: &Path, config: &Config) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let crowdsec_inline = config
        .crowdsec
        .as_ref()
        .is_some_and(|c| c.bouncer_key.is_some() || c.password.is_some());
    if config.users.is_empty() && !crowdsec_inline {
        return None;
    }
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "{} holds secrets (user secrets or [crowdsec] keys) and is readable by every user \
             on this host (mode {:o}): chmod o-r it (e.g. root:relay 0640)",
            path.display(),
            mode & 0o777
        )
    })
}

/// 1-based line and column of byte offset `at` in `text`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Position of the first line assigning `key`, for errors found after parsing.
fn find_key(text: &str, key: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return (i + 1, line.len() - trimmed.len() + 1);
        }
    }
    (0, 0)
}

#[cfg(test)]
mod tests;
