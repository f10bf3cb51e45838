//! relay as a CrowdSec bouncer and signal source.
//!
//! The bouncer ([`bouncer`]) polls the Local API's decision stream into the admission: IPv4
//! addresses into the kernel ban map, IPv6 addresses and ranges into the block tries, each
//! tagged with its origin. The publisher ([`publish`]) sends the misuse detector's bans to
//! the LAPI as alerts, so every other relay of the fleet gets them through its own stream.
//! Nothing here can stall the relay: requests are bounded in time and size, the stream is
//! parsed off the async threads, the admission is written in chunks, and the detector hands its
//! bans over through a bounded queue that drops (and counts) rather than wait.

pub mod api;
pub mod bouncer;
pub mod client;
pub mod decisions;
pub mod duration;
pub mod publish;
pub mod rejects;
#[cfg(test)]
mod scripted_lapi;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use tokio::{sync::RwLock, task::JoinHandle};

use crate::{admission::Admission, admission::misuse::Misuse, config};

/// The origin relay's own decisions carry in the LAPI.
pub const ORIGIN: &str = "relay";

/// Why the CrowdSec integration could not start.
#[derive(Debug, thiserror::Error)]
pub enum CrowdSecError {
    /// A key or password file could not be read.
    #[error("[crowdsec] cannot read {}: {source}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A key or password file is empty.
    #[error("[crowdsec] {} is empty", path.display())]
    EmptySecret {
        /// The file.
        path: PathBuf,
    },
    /// The HTTP client could not be set up (URL, CA file).
    #[error("[crowdsec] {0}")]
    Client(#[from] client::ClientError),
}

/// The secrets of `[crowdsec]`, read while relay-ctl is still privileged (the files may be
/// readable by root only).
pub struct Credentials {
    bouncer_key: String,
    machine: Option<client::Machine>,
}

impl Credentials {
    /// Reads the bouncer key and the machine password, inline or from their files.
    pub fn read(config: &config::CrowdSec) -> Result<Credentials, CrowdSecError> {
        let bouncer_key = secret(
            config.bouncer_key.as_deref(),
            config.bouncer_key_file.as_deref(),
        )?
        .unwrap_or_default();
        let machine = match &config.machine_id {
            Some(id) => secret(config.password.as_deref(), config.password_file.as_deref())?.map(
                |password| client::Machine {
                    id: id.clone(),
                    password,
                },
            ),
            None => None,
        };
        Ok(Credentials {
            bouncer_key,
            machine,
        })
    }

    /// Whether a machine login is configured (relay's bans are published).
    pub fn can_publish(&self) -> bool {
        self.machine.is_some()
    }

    /// The LAPI client for `config` with these credentials.
    pub fn into_lapi(self, config: &config::CrowdSec) -> Result<client::Lapi, CrowdSecError> {
        Ok(client::Lapi::new(
            &config.lapi_url,
            config.ca_file.as_deref(),
            config.timeout,
            self.bouncer_key,
            self.machine,
        )?)
    }
}

/// An inline secret, or the first line of its file.
fn secret(inline: Option<&str>, file: Option<&Path>) -> Result<Option<String>, CrowdSecError> {
    if let Some(s) = inline {
        return Ok(Some(s.to_owned()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| CrowdSecError::SecretFile {
        path: path.to_owned(),
        source,
    })?;
    let value = text.lines().next().unwrap_or("").trim().to_owned();
    if value.is_empty() {
        return Err(CrowdSecError::EmptySecret {
            path: path.to_owned(),
        });
    }
    Ok(Some(value))
}

/// What the integration is doing, for `relay-ctl stats` and the metrics.
#[derive(Debug, Default)]
pub struct Status {
    enabled: AtomicBool,
    up: AtomicBool,
    pulls: AtomicU64,
    pull_failures: AtomicU64,
    last_pull_unix: AtomicU64,
    published: AtomicU64,
    publish_failed: AtomicU64,
    publish_dropped: AtomicU64,
    decisions: Mutex<BTreeMap<String, u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Status {
    /// A status for a relay with (`enabled`) or without `[crowdsec]`.
    pub fn new(enabled: bool) -> Status {
        let status = Status::default();
        status.enabled.store(enabled, Ordering::Relaxed);
        status
    }

    /// A snapshot; `None` when `[crowdsec]` is not configured.
    pub fn snapshot(&self) -> Option<CrowdSecStats> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let last = self.last_pull_unix.load(Ordering::Relaxed);
        Some(CrowdSecStats {
            up: self.up.load(Ordering::Relaxed),
            decisions: self
                .decisions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            pulls: self.pulls.load(Ordering::Relaxed),
            pull_failures: self.pull_failures.load(Ordering::Relaxed),
            last_pull_unix: (last > 0).then_some(last),
            published: self.published.load(Ordering::Relaxed),
            publish_failed: self.publish_failed.load(Ordering::Relaxed),
            publish_dropped: self.publish_dropped.load(Ordering::Relaxed),
            rejected: self
                .rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(kind, n)| ((*kind).to_owned(), *n))
                .collect(),
        })
    }

    /// Counts `n` rejections of `kind` (see [`decisions::REJECTION_KINDS`]).
    fn rejected(&self, kind: &'static str, n: u64) {
        let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        let count = rejected.entry(kind).or_insert(0);
        *count = count.saturating_add(n);
    }

    fn set_decisions(&self, by_origin: &BTreeMap<String, u64>) {
        by_origin.clone_into(&mut self.decisions.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records a pull's result; returns whether the up/down state changed.
    fn pulled(&self, ok: bool) -> bool {
        if ok {
            self.pulls.fetch_add(1, Ordering::Relaxed);
            self.last_pull_unix
                .store(crate::clock::unix_now(), Ordering::Relaxed);
        } else {
            self.pull_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.up.swap(ok, Ordering::Relaxed) != ok
    }
}

/// The running bouncer and publisher; dropping it stops them.
pub struct Running {
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops both tasks.
    pub fn stop(self) {}
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the bouncer (and, with a machine login, the publisher the misuse detector feeds).
/// Must run inside the tokio runtime.
pub fn start(
    config: &config::CrowdSec,
    credentials: Credentials,
    admission: Arc<RwLock<Admission>>,
    misuse: &Misuse,
    status: Arc<Status>,
) -> Result<Running, CrowdSecError> {
    let lapi = Arc::new(credentials.into_lapi(config)?);
    let mut tasks = Vec::new();
    if lapi.can_publish() {
        let (ban_queue, queue) = publish::channel(status.clone());
        misuse.publish_to(ban_queue);
        tasks.push(tokio::spawn(publish::run(
            lapi.clone(),
            queue,
            status.clone(),
        )));
    }
    let settings = bouncer::Settings {
        poll_interval: config.poll_interval,
        resync: config.resync,
        origins: config.origins.clone(),
        limits: decisions::Limits {
            max_range_v4: config.max_range_v4,
            max_range_v6: config.max_range_v6,
        },
        max_decisions: config.max_decisions,
        max_body_bytes: config.max_body_bytes,
    };
    tasks.push(tokio::spawn(bouncer::run(
        lapi, admission, status, settings,
    )));
    tracing::info!(
        lapi = %config.lapi_url,
        poll_secs = config.poll_interval.as_secs_f64(),
        resync_secs = config.resync.as_secs(),
        publish = tasks.len() > 1,
        "CrowdSec bouncer started"
    );
    Ok(Running { tasks })
}

/// The CrowdSec integration's state (`[crowdsec]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrowdSecStats {
    /// Whether the last pull of the decision stream succeeded.
    pub up: bool,
    /// Decisions enforced, by origin.
    pub decisions: BTreeMap<String, u64>,
    /// Successful pulls since start.
    pub pulls: u64,
    /// Failed pulls since start.
    pub pull_failures: u64,
    /// Unix time of the last successful pull.
    #[serde(default)]
    pub last_pull_unix: Option<u64>,
    /// relay's own bans published as alerts.
    pub published: u64,
    /// Bans the LAPI did not take (or that failed after retries).
    pub publish_failed: u64,
    /// Bans dropped because the publish queue was full.
    pub publish_dropped: u64,
    /// Decisions (or whole pulls) refused, by kind (`wide_range`, `bad_value`, `too_many`...).
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
}
