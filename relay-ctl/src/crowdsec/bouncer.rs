//! The poll loop: a full `startup=true` pull at start, after any failure, after a burst of
//! new decisions and every `resync`; incremental pulls every `poll_interval` in between. A
//! failure keeps the decisions already enforced and retries with exponential backoff; the
//! up/down state is logged only when it changes.
//!
//! Why after a burst: the LAPI (1.4.6) answers an incremental pull with the decisions created
//! after the bouncer's previous pull, a time. Decisions of a bulk insert (a community list, a
//! `cscli decisions import`) committed while a pull runs carry an earlier time and are never
//! sent; in a test a quarter of 100,000 imported decisions went missing that way. A full pull
//! once the burst is over picks them up.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::RwLock;

use super::{
    Status,
    api::Stream,
    client::{ClientError, Lapi},
    decisions::{Change, Decisions},
};
use crate::{clock::monotonic_ns, shield::Shield};

/// Name of the pull-time histogram.
pub const PULL_SECONDS: &str = "relay_crowdsec_pull_seconds";

/// Changes written to the shield per write lock: short enough that accepts waiting for the
/// lock are not held up noticeably while 100,000 decisions load.
pub const CHUNK: usize = 256;

/// An incremental pull bringing at least this many new decisions is part of a burst.
pub const BURST: usize = 1000;

/// Longest wait between attempts while the LAPI is down.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Between incremental pulls.
    pub poll_interval: Duration,
    /// Between full pulls.
    pub resync: Duration,
    /// Only decisions of these origins (all when empty).
    pub origins: Vec<String>,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("parsing the decision stream: {0}")]
    Parse(String),
}

/// Runs forever (the task is aborted at shutdown).
pub async fn run(
    lapi: Arc<Lapi>,
    shield: Arc<RwLock<Shield>>,
    status: Arc<Status>,
    settings: Settings,
) {
    let mut decisions = Decisions::default();
    let mut full_pull_due = true;
    let mut last_full = Instant::now();
    let mut failures: u32 = 0;
    let mut first = true;
    let mut in_burst = false;
    loop {
        let startup = full_pull_due || last_full.elapsed() >= settings.resync;
        let started = Instant::now();
        let result = pull(&lapi, startup, &settings.origins).await;
        let took = started.elapsed();
        match result {
            Ok(stream) => {
                metrics::histogram!(PULL_SECONDS).record(took.as_secs_f64());
                let arrived = stream.new.as_ref().map_or(0, Vec::len);
                // Diffing 100,000 decisions takes a while: not on a thread that serves clients.
                let now = monotonic_ns();
                let mut state = std::mem::take(&mut decisions);
                let Ok((state, batch)) = tokio::task::spawn_blocking(move || {
                    let batch = state.apply(stream, startup, now);
                    (state, batch)
                })
                .await
                else {
                    // Only a panic gets here: start over from a full pull.
                    tracing::error!("CrowdSec: applying a pull failed; starting over");
                    full_pull_due = true;
                    tokio::time::sleep(wait(settings.poll_interval, 1)).await;
                    continue;
                };
                decisions = state;
                if let Some(e) = &batch.first_error {
                    tracing::warn!(skipped = batch.invalid, "CrowdSec: decisions skipped: {e}");
                }
                let changed = batch.changes.len();
                let lock_held = write(&shield, batch.changes).await;
                if status.pulled(true) || first {
                    tracing::info!(
                        decisions = decisions.len(),
                        took_ms = took.as_millis() as u64,
                        "CrowdSec LAPI reachable: decisions in force"
                    );
                } else if changed > 0 {
                    tracing::debug!(
                        changed,
                        startup,
                        took_ms = took.as_millis() as u64,
                        longest_lock_us = lock_held.as_micros() as u64,
                        "CrowdSec decisions applied"
                    );
                }
                if !startup && arrived >= BURST {
                    in_burst = true;
                } else if !startup && in_burst {
                    // The burst is over: catch what it committed behind the cursor.
                    full_pull_due = true;
                    in_burst = false;
                }
                if startup {
                    in_burst = false;
                    full_pull_due = false;
                    last_full = Instant::now();
                }
                failures = 0;
            }
            Err(e) => {
                if status.pulled(false) || first {
                    tracing::warn!(
                        kept = decisions.len(),
                        "CrowdSec LAPI unreachable, keeping the decisions already in force and retrying: {e}"
                    );
                } else {
                    tracing::debug!("CrowdSec pull failed again: {e}");
                }
                // The LAPI moves a bouncer's cursor when it answers, even if the answer is
                // then lost: only a full pull is sure to catch up.
                full_pull_due = true;
                failures = failures.saturating_add(1);
            }
        }
        first = false;
        let ended = decisions.expire(monotonic_ns());
        if !ended.is_empty() {
            write(&shield, ended).await;
        }
        status.set_decisions(decisions.by_origin());
        tokio::time::sleep(wait(settings.poll_interval, failures)).await;
    }
}

/// The wait before the next pull: the poll interval, doubled per failure in a row, at most
/// [`MAX_BACKOFF`] (or the poll interval, if that is longer).
pub fn wait(poll: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return poll;
    }
    let factor = 1u32 << (failures - 1).min(10);
    poll.saturating_mul(factor).min(MAX_BACKOFF.max(poll))
}

/// Fetches and parses one stream answer; the parse (up to hundreds of MB of JSON) runs on the
/// blocking pool.
async fn pull(lapi: &Lapi, startup: bool, origins: &[String]) -> Result<Stream, PullError> {
    let body = lapi.stream(startup, origins).await?;
    tokio::task::spawn_blocking(move || serde_json::from_slice::<Stream>(&body))
        .await
        .map_err(|e| PullError::Parse(e.to_string()))?
        .map_err(|e| PullError::Parse(e.to_string()))
}

/// Writes `changes` into the shield [`CHUNK`] at a time, letting other tasks take the lock
/// in between. Returns the longest time the write lock was held.
pub async fn write(shield: &RwLock<Shield>, changes: Vec<Change>) -> Duration {
    let mut failed = 0usize;
    let mut first_error = None;
    let mut longest = Duration::ZERO;
    for chunk in changes.chunks(CHUNK) {
        let mut guard = shield.write().await;
        let held = Instant::now();
        let (n, error) = guard.apply_crowdsec(chunk);
        drop(guard);
        longest = longest.max(held.elapsed());
        failed += n;
        if first_error.is_none() {
            first_error = error;
        }
        tokio::task::yield_now().await;
    }
    if let Some(e) = first_error {
        tracing::error!(failed, "CrowdSec decisions not enforced: {e}");
    }
    longest
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use relay_common::Verdict;

    use super::*;
    use crate::{
        crowdsec::{client::Client, scripted_lapi::scripted_lapi},
        shield::Enforcement,
    };

    /// Runs the poll loop (20 ms interval) against a scripted LAPI until it has made
    /// `requests` requests (or 4 s passed); returns the request heads, the shield and status.
    async fn poll_scripted(
        script: Vec<(u16, &'static str)>,
        origins: Vec<String>,
        requests: usize,
    ) -> (Vec<String>, Arc<RwLock<Shield>>, Arc<Status>) {
        let (url, seen) = scripted_lapi(script).await;
        let client = Client::new(&url, None, Duration::from_secs(2)).expect("client");
        let lapi = Arc::new(Lapi::new(client, "key".into(), None));
        let shield = Arc::new(RwLock::new(Shield::new(Enforcement::Userspace {
            reason: "test".into(),
        })));
        let status = Arc::new(Status::new(true));
        let settings = Settings {
            poll_interval: Duration::from_millis(20),
            resync: Duration::from_secs(3600),
            origins,
        };
        let task = tokio::spawn(run(lapi, shield.clone(), status.clone(), settings));
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if seen.lock().expect("seen").len() >= requests {
                break;
            }
        }
        task.abort();
        let heads = seen
            .lock()
            .expect("seen")
            .iter()
            .map(|r| r.lines().next().unwrap_or("").to_owned())
            .collect();
        (heads, shield, status)
    }

    #[tokio::test]
    async fn pulls_apply_survive_failures_and_resync_after_them() {
        let script = vec![
            (
                200,
                r#"{"new":[{"duration":"1h","origin":"cscli","scenario":"t","scope":"Ip","type":"ban","value":"198.18.1.5"},
                          {"duration":"1h","origin":"CAPI","scenario":"t","scope":"Range","type":"ban","value":"198.18.2.0/24"}],"deleted":null}"#,
            ),
            (503, "down"),
            (200, "{not json"),
            (
                200,
                r#"{"new":[{"duration":"1h","origin":"cscli","scenario":"t","scope":"Ip","type":"ban","value":"198.18.1.5"}],"deleted":null}"#,
            ),
        ];
        let (requests, shield, status) =
            poll_scripted(script, vec!["cscli".into(), "CAPI".into()], 6).await;
        assert!(requests.len() >= 6, "the loop kept polling: {requests:?}");
        let verdict = |shield: &Shield, a: &str| shield.admit(a.parse::<IpAddr>().expect("ip"), 1);
        assert!(
            requests[0].starts_with(
                "GET /v1/decisions/stream?startup=true&scopes=ip,range&origins=cscli,CAPI "
            ),
            "{requests:?}"
        );
        assert!(requests[1].contains("startup=false"), "{requests:?}");
        // After each failure (503, then bad JSON) the next pull is a full one.
        assert!(requests[2].contains("startup=true"), "{requests:?}");
        assert!(requests[3].contains("startup=true"), "{requests:?}");
        assert!(requests[4].contains("startup=false"), "{requests:?}");
        let shield = shield.read().await;
        assert_eq!(verdict(&shield, "198.18.1.5"), Verdict::Banned);
        // The full pull after the failures no longer had the range: it went.
        assert_eq!(verdict(&shield, "198.18.2.9"), Verdict::Passed);
        let snapshot = status.snapshot().expect("enabled");
        assert!(snapshot.up);
        assert_eq!(snapshot.pull_failures, 2);
        assert_eq!(snapshot.decisions.get("cscli"), Some(&1));
        assert_eq!(snapshot.decisions.get("CAPI"), None);
    }

    #[tokio::test]
    async fn a_burst_is_followed_by_a_full_pull() {
        let items: Vec<String> = (0..BURST)
            .map(|i| {
                format!(
                    r#"{{"duration":"1h","origin":"lists","scenario":"t","scope":"Ip","type":"ban","value":"198.19.{}.{}"}}"#,
                    i / 256,
                    i % 256
                )
            })
            .collect();
        let burst: &'static str = Box::leak(
            format!(r#"{{"new":[{}],"deleted":null}}"#, items.join(",")).into_boxed_str(),
        );
        let empty = r#"{"new":null,"deleted":null}"#;
        let script = vec![(200, empty), (200, empty), (200, burst), (200, empty)];
        let (requests, _, _) = poll_scripted(script, Vec::new(), 6).await;
        let startups: Vec<bool> = requests
            .iter()
            .map(|r| r.contains("startup=true"))
            .collect();
        assert!(startups.len() >= 6, "{startups:?}");
        // full, incremental, the burst, the quiet pull after it, then a full one, incremental.
        assert_eq!(startups[..6], [true, false, false, false, true, false]);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let poll = Duration::from_secs(10);
        assert_eq!(wait(poll, 0), poll);
        assert_eq!(wait(poll, 1), poll);
        assert_eq!(wait(poll, 2), Duration::from_secs(20));
        assert_eq!(wait(poll, 4), Duration::from_secs(80));
        assert_eq!(wait(poll, 9), MAX_BACKOFF);
        assert_eq!(wait(poll, u32::MAX), MAX_BACKOFF);
        assert_eq!(wait(Duration::from_secs(600), 3), Duration::from_secs(600));
    }
}
