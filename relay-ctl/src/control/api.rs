//! The admin protocol: one JSON request per line on the admin Unix socket, one JSON response
//! line back. Shared by the daemon (`control::server`) and the CLI (`control::client`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The CrowdSec integration's state, as [`Stats::crowdsec`] carries it.
pub use crate::crowdsec::CrowdSecStats;
pub use crate::middle::stats::{MeView, MiddleCounters, MiddleView};
/// Connect times to one DC, as [`Stats::dc_connect`] carries them (kept by the relay's
/// counters).
pub use crate::relay::stats::DcConnect;
use crate::telemetry::Samples;

/// A request to the running daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Block an address or CIDR, optionally for a time.
    BlockAdd {
        /// Address or CIDR.
        cidr: String,
        /// Seconds until the block lapses; none: permanent.
        #[serde(default)]
        ttl_secs: Option<u64>,
        /// Free text for the operator.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Remove an operator block.
    BlockRm {
        /// Address or CIDR, as added.
        cidr: String,
    },
    /// Every blocked prefix, from every source.
    BlockList,
    /// Add many operator blocks at once (a parsed netset).
    BlockImport {
        /// Addresses and CIDRs.
        entries: Vec<String>,
        /// Where they came from (file name), recorded as the reason.
        source: String,
    },
    /// Allowlist an address or CIDR.
    AllowAdd {
        /// Address or CIDR.
        cidr: String,
    },
    /// Remove an operator allowlist entry.
    AllowRm {
        /// Address or CIDR, as added.
        cidr: String,
    },
    /// Every allowlisted prefix.
    AllowList,
    /// Current bans.
    BansList,
    /// Lift the ban covering an address.
    BansRm {
        /// The address.
        addr: String,
    },
    /// Lift every ban.
    BansClear,
    /// Users with their usage.
    UsersList,
    /// One user.
    UsersShow {
        /// User name.
        name: String,
    },
    /// Enable a user.
    UsersEnable {
        /// User name.
        name: String,
    },
    /// Disable a user (new connections refused; persisted).
    UsersDisable {
        /// User name.
        name: String,
    },
    /// A snapshot of the daemon's counters.
    Stats,
}

/// What a request needs: to look, or to change something. Decides which admin role may send
/// it (`[admin] read_group` members may only read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Lists, shows, counters.
    Read,
    /// Anything that changes state (audited).
    Write,
}

impl Request {
    /// What the request needs. Every variant is named here (no wildcard), so a new request
    /// cannot be added without deciding whether read-only callers may send it.
    pub fn access(&self) -> Access {
        match self {
            Request::BlockList
            | Request::AllowList
            | Request::BansList
            | Request::UsersList
            | Request::UsersShow { .. }
            | Request::Stats => Access::Read,
            Request::BlockAdd { .. }
            | Request::BlockRm { .. }
            | Request::BlockImport { .. }
            | Request::AllowAdd { .. }
            | Request::AllowRm { .. }
            | Request::BansRm { .. }
            | Request::BansClear
            | Request::UsersEnable { .. }
            | Request::UsersDisable { .. } => Access::Write,
        }
    }

    /// The command's name, without its arguments (`block add`), for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::BlockAdd { .. } => "block add",
            Request::BlockRm { .. } => "block rm",
            Request::BlockList => "block list",
            Request::BlockImport { .. } => "block import",
            Request::AllowAdd { .. } => "allow add",
            Request::AllowRm { .. } => "allow rm",
            Request::AllowList => "allow list",
            Request::BansList => "bans list",
            Request::BansRm { .. } => "bans rm",
            Request::BansClear => "bans clear",
            Request::UsersList => "users list",
            Request::UsersShow { .. } => "users show",
            Request::UsersEnable { .. } => "users enable",
            Request::UsersDisable { .. } => "users disable",
            Request::Stats => "stats",
        }
    }

    /// Whether the request changes state (and is written to the audit log).
    pub fn is_change(&self) -> bool {
        self.access() == Access::Write
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; `data` depends on the request.
    Ok {
        /// The result.
        #[serde(default)]
        data: Reply,
    },
    /// Not done.
    Error {
        /// What kind of failure (drives the CLI's exit code).
        kind: ErrorKind,
        /// Human-readable message.
        message: String,
    },
}

/// Failure classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or named something invalid (bad CIDR, unknown user).
    BadRequest,
    /// The thing to remove or show does not exist.
    NotFound,
    /// The daemon could not do it (map full, disk full).
    Failed,
    /// The caller's admin role does not allow it (a read-only caller asked for a change).
    Forbidden,
    /// The caller sent requests faster than the admin socket's per-caller rate; retry shortly.
    RateLimited,
}

/// Payload of a successful response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Nothing to report.
    #[default]
    Done,
    /// How many entries a bulk change touched.
    Count {
        /// Entries changed.
        changed: usize,
    },
    /// Prefix list entries.
    Prefixes {
        /// The entries.
        entries: Vec<PrefixEntry>,
    },
    /// Bans.
    Bans {
        /// The bans.
        bans: Vec<BanInfo>,
    },
    /// Users.
    Users {
        /// The users.
        users: Vec<UserInfo>,
    },
    /// Counters (boxed: much larger than the other replies).
    Stats(Box<Stats>),
}

/// One allow- or blocklist entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixEntry {
    /// The CIDR.
    pub cidr: String,
    /// `config`, `operator` or `feed:<path>`.
    pub source: String,
    /// Operator's reason, if given.
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds left for a timed block.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanInfo {
    /// Banned address (IPv6 bans cover its /64).
    pub addr: String,
    /// Why.
    pub reason: String,
    /// `drop` (in the kernel) or `front` (connections get the mask site); daemons from before
    /// ban actions dropped every ban.
    #[serde(default = "drop_action")]
    pub action: String,
    /// Count that crossed the threshold.
    pub count: u32,
    /// Seconds left; none: permanent.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Who banned: `relay` (this relay's detector or operator) or `crowdsec:<origin>`.
    #[serde(default = "relay_source")]
    pub source: String,
}

fn relay_source() -> String {
    "relay".to_owned()
}

fn drop_action() -> String {
    "drop".to_owned()
}

/// One user and its usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Name.
    pub name: String,
    /// Whether new connections are admitted (config and operator switch combined).
    pub enabled: bool,
    /// Why not, when disabled (e.g. `disabled by operator`, `expired`, `quota exhausted`).
    #[serde(default)]
    pub blocked_reason: Option<String>,
    /// Connections relayed now.
    pub active_connections: u64,
    /// Distinct client addresses in the unique-IP window.
    pub unique_ips: u64,
    /// Bytes client → DC, all time (persisted).
    pub bytes_up: u64,
    /// Bytes DC → client, all time (persisted).
    pub bytes_down: u64,
    /// Byte quota (both directions), if any.
    #[serde(default)]
    pub quota: Option<u64>,
    /// Expiry (RFC 3339), if any.
    #[serde(default)]
    pub expires: Option<String>,
    /// Concurrent connection limit, if any.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Unique address limit, if any.
    #[serde(default)]
    pub max_unique_ips: Option<u64>,
    /// New-connection rate (`20/s`), if any.
    #[serde(default)]
    pub connection_rate: Option<String>,
    /// New connections admitted at once under `connection_rate`.
    #[serde(default)]
    pub connection_burst: Option<u32>,
    /// Connections refused by a limit, by reason.
    #[serde(default)]
    pub rejections: BTreeMap<String, u64>,
}

/// A snapshot of the daemon: what `relay-ctl stats` shows and the metrics export.
///
/// Counters and gauges declared with a JSON key in [`crate::telemetry::metrics`] travel as
/// typed [`Samples`], flattened into the object under those keys (`connections_accepted`,
/// `handshakes`, `verdicts`...); the rest are typed sections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// relay-ctl version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Where the policy is enforced (`XDP on eth0 (native)` or `userspace (...)`).
    pub enforcement: String,
    /// Connections open now (every state).
    pub connections_active: u64,
    /// Users with usage.
    pub users: Vec<UserInfo>,
    /// The anti-replay memory.
    #[serde(default)]
    pub replay_memory: ReplayMemoryStats,
    /// Bans in force, by reason.
    #[serde(default)]
    pub bans_active_by_reason: BTreeMap<String, u64>,
    /// Interfaces XDP is attached to.
    #[serde(default)]
    pub xdp_attached: Vec<XdpAttachment>,
    /// Time to connect to each DC (by id).
    #[serde(default)]
    pub dc_connect: BTreeMap<String, DcConnect>,
    /// CrowdSec bouncer and publisher, when `[crowdsec]` is configured.
    #[serde(default)]
    pub crowdsec: Option<CrowdSecStats>,
    /// The shape of fake-TLS server flights.
    #[serde(default)]
    pub tls_flight: TlsFlightStats,
    /// The middle-proxy leg.
    #[serde(default)]
    pub middle: MiddleView,
    /// Every other counter and gauge, by metric.
    #[serde(flatten)]
    pub metrics: Samples,
}

/// Where the fake-TLS flight's shape comes from and the sizes it uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFlightStats {
    /// `learned`, `cached` or `fallback`.
    pub source: String,
    /// Smallest size of the fake encrypted-handshake record.
    pub record_min: u64,
    /// Largest size of the fake encrypted-handshake record.
    pub record_max: u64,
    /// When the profile in use was learned (unix seconds), if one is.
    #[serde(default)]
    pub learned_unix: Option<u64>,
    /// Why the fallback is used, if it is.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The anti-replay memory: what it holds and how its saves go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayMemoryStats {
    /// Handshakes remembered.
    pub entries: u64,
    /// Live generations.
    pub generations: u64,
    /// Filter bytes held.
    pub bytes: u64,
    /// Seconds back to the oldest remembered handshake.
    pub covered_secs: u64,
    /// Generations dropped with every key beyond both bounds.
    pub dropped_expired: u64,
    /// Generations dropped earlier for lack of `[replay] memory_bytes`.
    pub dropped_early: u64,
    /// Saves to the state dir that wrote something.
    pub saves: u64,
    /// Saves that failed.
    pub saves_failed: u64,
}

/// One XDP attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpAttachment {
    /// Interface name.
    pub interface: String,
    /// `native` or `generic`.
    pub mode: String,
}
