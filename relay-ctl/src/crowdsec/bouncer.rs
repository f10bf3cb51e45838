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
    api::{self, Stream, StreamError},
    client::{ClientError, Lapi},
    decisions::{Change, Decisions, Limits},
    rejects::RejectLog,
};
use crate::{
    admission::{Admission, DecisionChange},
    clock::monotonic_ns,
    http_client::HttpError,
};

/// Changes written to the admission per write lock: short enough that accepts waiting for the
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
    /// What decisions are accepted.
    pub limits: Limits,
    /// Most decisions in one pull; a larger pull is refused whole.
    pub max_decisions: usize,
    /// Largest pull answer, bytes.
    pub max_body_bytes: usize,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("parsing the decision stream: {0}")]
    Parse(#[from] StreamError),
}

impl PullError {
    /// The `relay_crowdsec_rejected_total` kind, when the pull was refused for its size.
    fn rejection(&self) -> Option<&'static str> {
        match self {
            PullError::Client(ClientError::Http(HttpError::TooLarge(_))) => Some("too_large"),
            PullError::Parse(StreamError::TooMany(_)) => Some("too_many"),
            _ => None,
        }
    }
}

/// Runs forever (the task is aborted at shutdown).
pub async fn run(
    lapi: Arc<Lapi>,
    admission: Arc<RwLock<Admission>>,
    status: Arc<Status>,
    settings: Settings,
) {
    let mut decisions = Decisions::new(settings.limits);
    let mut rejects = RejectLog::default();
    let mut full_pull_due = true;
    let mut last_full = Instant::now();
    let mut failures: u32 = 0;
    let mut first = true;
    let mut in_burst = false;
    loop {
        let startup = full_pull_due || last_full.elapsed() >= settings.resync;
        let started = Instant::now();
        let result = pull(&lapi, startup, &settings).await;
        let took = started.elapsed();
        match result {
            Ok(stream) => {
                crate::telemetry::record_crowdsec_pull(took);
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
                for (kind, (n, example)) in &batch.rejected {
                    status.rejected(kind, *n);
                    if let Some(n) = rejects.note(kind, *n, Instant::now()) {
                        tracing::warn!(
                            kind,
                            rejected = n,
                            "CrowdSec decisions rejected, the rest applied: {example} \
                             (this kind is logged at most hourly)"
                        );
                    }
                }
                let changed = batch.changes.len();
                let lock_held = write(&admission, batch.changes).await;
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
                let refused = e.rejection();
                if let Some(kind) = refused {
                    status.rejected(kind, 1);
                    if let Some(n) = rejects.note(kind, 1, Instant::now()) {
                        tracing::warn!(
                            kind,
                            refused = n,
                            "CrowdSec pull refused, keeping the decisions already in force: {e} \
                             (this kind is logged at most hourly)"
                        );
                    }
                }
                if refused.is_some() {
                    status.pulled(false);
                } else if status.pulled(false) || first {
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
            write(&admission, ended).await;
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

/// Fetches one stream answer, parsing it on the blocking pool as it arrives (up to hundreds
/// of MB of JSON), within the size and count bounds of `settings`.
async fn pull(lapi: &Lapi, startup: bool, settings: &Settings) -> Result<Stream, PullError> {
    let max = settings.max_decisions;
    let read = move |body: &mut dyn std::io::Read| api::read_stream(body, max);
    Ok(lapi
        .stream(startup, &settings.origins, settings.max_body_bytes, read)
        .await??)
}

/// Writes `changes` into the admission [`CHUNK`] at a time, letting other tasks take the lock
/// in between. Returns the longest time the write lock was held.
pub async fn write(admission: &RwLock<Admission>, changes: Vec<Change>) -> Duration {
    let mut failed = 0usize;
    let mut first_error = None;
    let mut longest = Duration::ZERO;
    let changes: Vec<DecisionChange> = changes.into_iter().map(DecisionChange::from).collect();
    for chunk in changes.chunks(CHUNK) {
        let mut guard = admission.write().await;
        let held = Instant::now();
        let applied = guard.apply_crowdsec(chunk);
        drop(guard);
        longest = longest.max(held.elapsed());
        if let Err(refused) = applied {
            failed += refused.failed;
            first_error.get_or_insert(refused.first);
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
        admission::Enforcement,
        crowdsec::scripted_lapi::{endless_lapi, scripted_lapi},
    };

    /// Runs the poll loop (20 ms interval) against a scripted LAPI until it has made
    /// `requests` requests (or 4 s passed); returns the request heads, the admission and status.
    async fn poll_scripted(
        script: Vec<(u16, &'static str)>,
        origins: Vec<String>,
        requests: usize,
    ) -> (Vec<String>, Arc<RwLock<Admission>>, Arc<Status>) {
        let settings = Settings {
            origins,
            ..settings()
        };
        poll_with(script, settings, requests).await
    }

    /// The loop's settings in these tests: the defaults with a 20 ms poll interval.
    fn settings() -> Settings {
        Settings {
            poll_interval: Duration::from_millis(20),
            resync: Duration::from_secs(3600),
            origins: Vec::new(),
            limits: Limits::default(),
            max_decisions: 500_000,
            max_body_bytes: 128 << 20,
        }
    }

    /// [`poll_scripted`] with `settings`.
    async fn poll_with(
        script: Vec<(u16, &'static str)>,
        settings: Settings,
        requests: usize,
    ) -> (Vec<String>, Arc<RwLock<Admission>>, Arc<Status>) {
        let (url, seen) = scripted_lapi(script).await;
        let lapi = Arc::new(
            Lapi::new(&url, None, Duration::from_secs(2), "key".into(), None).expect("lapi"),
        );
        let admission = Arc::new(RwLock::new(Admission::new(Enforcement::Userspace {
            reason: "test".into(),
        })));
        let status = Arc::new(Status::new(true));
        let task = tokio::spawn(run(lapi, admission.clone(), status.clone(), settings));
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
        (heads, admission, status)
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
        let (requests, admission, status) =
            poll_scripted(script, vec!["cscli".into(), "CAPI".into()], 6).await;
        assert!(requests.len() >= 6, "the loop kept polling: {requests:?}");
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
        let admission = admission.read().await;
        assert_eq!(verdict(&admission, "198.18.1.5"), Verdict::Banned);
        // The full pull after the failures no longer had the range: it went.
        assert_eq!(verdict(&admission, "198.18.2.9"), Verdict::Passed);
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

    fn verdict(admission: &Admission, a: &str) -> Verdict {
        admission.admit(a.parse::<IpAddr>().expect("ip"), 1)
    }

    /// A decision as the LAPI sends it.
    fn item(scope: &str, value: &str, origin: &str) -> String {
        format!(
            r#"{{"duration":"1h","origin":"{origin}","scenario":"t","scope":"{scope}","type":"ban","value":"{value}"}}"#
        )
    }

    fn leak(items: &[String]) -> &'static str {
        Box::leak(format!(r#"{{"new":[{}],"deleted":null}}"#, items.join(",")).into_boxed_str())
    }

    #[tokio::test]
    async fn ranges_wider_than_the_bound_are_rejected_and_hosts_next_to_them_applied() {
        let pull = leak(&[
            item("Range", "0.0.0.0/0", "cscli"),
            item("Range", "::/0", "cscli"),
            item("Range", "10.0.0.0/7", "cscli"),
            item("Range", "2001:db8::/31", "cscli"),
            item("Range", "198.18.1.5/32", "cscli"),
            item("Range", "2001:db8::/32", "cscli"),
            item("Range", "11.0.0.0/8", "cscli"),
        ]);
        let (_, admission, status) = poll_scripted(vec![(200, pull)], Vec::new(), 2).await;
        let admission = admission.read().await;
        for blocked in ["198.18.1.5", "11.1.2.3", "2001:db8::7"] {
            assert_eq!(
                verdict(&admission, blocked),
                Verdict::BlockedCidr,
                "{blocked}"
            );
        }
        for passed in [
            "198.18.1.6",
            "203.0.113.9",
            "10.1.2.3",
            "2001:db9::1",
            "2001:470::1",
        ] {
            assert_eq!(verdict(&admission, passed), Verdict::Passed, "{passed}");
        }
        let snapshot = status.snapshot().expect("enabled");
        assert_eq!(snapshot.rejected.get("wide_range"), Some(&4));
        assert_eq!(snapshot.decisions.get("cscli"), Some(&3));
    }

    #[tokio::test]
    async fn unparsable_values_are_rejected_and_counted() {
        let mut items = vec![
            item("Ip", "not-an-ip", "cscli"),
            item("Ip", "198.18.1.300", "cscli"),
            item("Range", "198.18.1.0/33", "cscli"),
            item("Ip", "198.18.1.0/24", "cscli"),
            item("Ip", "198.18.1.7", "cscli"),
        ];
        items.push(items[4].replace(r#""1h""#, r#""1d""#).replace(".7", ".8"));
        let (_, admission, status) = poll_scripted(vec![(200, leak(&items))], Vec::new(), 2).await;
        let admission = admission.read().await;
        assert_eq!(verdict(&admission, "198.18.1.7"), Verdict::Banned);
        assert_eq!(verdict(&admission, "198.18.1.8"), Verdict::Passed);
        let snapshot = status.snapshot().expect("enabled");
        assert_eq!(snapshot.rejected.get("bad_value"), Some(&4));
        assert_eq!(snapshot.rejected.get("bad_duration"), Some(&1));
        assert_eq!(snapshot.decisions.get("cscli"), Some(&1));
    }

    #[tokio::test]
    async fn a_pull_with_too_many_decisions_is_refused_whole() {
        let two = leak(&[
            item("Ip", "198.18.1.1", "cscli"),
            item("Ip", "198.18.1.2", "cscli"),
        ]);
        let four: Vec<String> = (3..7)
            .map(|i| item("Ip", &format!("198.18.1.{i}"), "cscli"))
            .collect();
        let settings = Settings {
            max_decisions: 3,
            ..settings()
        };
        let (requests, admission, status) = poll_with(
            vec![(200, two), (200, leak(&four)), (200, leak(&four))],
            settings,
            3,
        )
        .await;
        let admission = admission.read().await;
        assert_eq!(verdict(&admission, "198.18.1.1"), Verdict::Banned, "kept");
        assert_eq!(
            verdict(&admission, "198.18.1.3"),
            Verdict::Passed,
            "none of the pull"
        );
        let snapshot = status.snapshot().expect("enabled");
        assert!(
            snapshot.rejected.get("too_many") >= Some(&1),
            "{snapshot:?}"
        );
        assert!(snapshot.pull_failures >= 1);
        assert!(requests[2].contains("startup=true"), "{requests:?}");
    }

    #[tokio::test]
    async fn control_characters_and_many_origins_never_reach_labels() {
        let mut items = vec![item("Ip", "198.18.1.5", r"cs\u001b[31m\nfake line\u0000")];
        for i in 0..40 {
            items.push(item("Ip", &format!("198.18.2.{i}"), &format!("origin-{i}")));
        }
        // Rejected, so logged with its origin and scenario.
        items.push(
            item(
                "Ip",
                r"198.18.9.9\u001b[2J",
                r"evil\r\nINFO admin: forged line",
            )
            .replace(
                r#""scenario":"t""#,
                r#""scenario":"s\u001b]0;title\u0007\nINFO forged""#,
            ),
        );
        let capture = crate::logging::LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let (_, admission, status) = poll_scripted(vec![(200, leak(&items))], Vec::new(), 2).await;
        assert_eq!(
            verdict(&*admission.read().await, "198.18.2.39"),
            Verdict::Banned,
            "{}",
            capture.text()
        );
        let snapshot = status.snapshot().expect("enabled");
        let origins: Vec<&String> = snapshot.decisions.keys().collect();
        assert!(
            origins.iter().all(|o| !o.chars().any(char::is_control)),
            "{origins:?}"
        );
        assert!(
            origins.contains(&&"cs[31mfake line".to_owned()),
            "{origins:?}"
        );
        assert!(origins.len() <= 17, "{} origin labels", origins.len());
        assert_eq!(snapshot.decisions.get("other"), Some(&(41 - 16)));
        assert_eq!(snapshot.decisions.values().sum::<u64>(), 41);
        let log = capture.text();
        assert!(log.contains("CrowdSec decisions rejected"), "{log}");
        assert!(log.contains("INFO admin: forged line"), "{log}");
        assert!(
            !log.chars().any(|c| c.is_control() && c != '\n'),
            "control characters in the log: {log:?}"
        );
        assert!(
            log.lines().all(|l| !l.starts_with("INFO")),
            "a forged log line: {log}"
        );
    }

    /// A LAPI that answers one pull with a body that never ends (close-delimited): the client
    /// must stop reading at the bound instead of taking it all in.
    #[tokio::test]
    async fn an_oversized_pull_is_refused_without_buffering_it() {
        let (url, written) = endless_lapi().await;
        let lapi =
            Lapi::new(&url, None, Duration::from_secs(20), "key".into(), None).expect("lapi");
        let bounded = Settings {
            max_body_bytes: 1 << 20,
            ..settings()
        };
        let result = pull(&lapi, true, &bounded).await;
        assert!(
            matches!(
                &result,
                Err(e @ PullError::Client(ClientError::Http(HttpError::TooLarge(_)))) if e.rejection() == Some("too_large")
            ),
            "{result:?}"
        );
        // What the server got into the socket: the bound, plus what the kernel's buffers on
        // both sides of the connection hold (a few MB on loopback).
        let written = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            written < 24 << 20,
            "the client read {written} bytes before giving up"
        );
        // A declared length over the bound is refused before any of the body is read.
        let long = leak(&vec![item("Ip", "198.18.1.1", "x"); 20]);
        let (url, _) = scripted_lapi(vec![(200, long)]).await;
        let lapi = Lapi::new(&url, None, Duration::from_secs(2), "key".into(), None).expect("lapi");
        let tight = Settings {
            max_body_bytes: 1000,
            ..settings()
        };
        let result = pull(&lapi, true, &tight).await;
        assert!(
            matches!(
                result,
                Err(PullError::Client(ClientError::Http(HttpError::TooLarge(
                    1000
                ))))
            ),
            "{result:?}"
        );
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
