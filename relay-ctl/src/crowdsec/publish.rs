//! relay's own bans as CrowdSec alerts: the misuse detector offers each ban to a bounded
//! queue (never waiting: a full queue drops and counts), and one task sends what arrived
//! within [`BATCH_WINDOW`] as one alert with an explicit decision per ban. Few alerts matter:
//! the LAPI's alert flush deletes the oldest alerts beyond `db_config.flush.max_items`, and
//! their decisions with them.

use std::{
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use ipnet::{IpNet, Ipv6Net};
use tokio::sync::mpsc;

use super::{
    ORIGIN, Status,
    api::{Alert, NewDecision, Source},
    client::Lapi,
    duration,
};
pub use crate::admission::misuse::{BanEvent, BanSink};

/// Bans waiting to be sent; beyond this the detector's offers are dropped.
pub const QUEUE: usize = 4096;
/// Bans that arrive this close together go into one alert.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// Most decisions in one alert.
pub const MAX_BATCH: usize = 1000;
/// Attempts to send one batch before it is given up.
const ATTEMPTS: u32 = 5;

/// The misuse detector's end of the queue of bans to publish to CrowdSec.
#[derive(Debug, Clone)]
pub struct BanQueue {
    tx: mpsc::Sender<BanEvent>,
    status: Arc<Status>,
}

impl BanSink for BanQueue {
    /// Queues a ban for publishing without waiting; drops it (counted) when the queue is full.
    fn offer(&self, event: BanEvent) {
        if self.tx.try_send(event).is_err() {
            self.status.publish_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A queue: the detector's end and the publisher's.
pub fn channel(status: Arc<Status>) -> (BanQueue, mpsc::Receiver<BanEvent>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (BanQueue { tx, status }, rx)
}

/// The decision for one ban: scope `Ip` for IPv4, `Range` with the /64 for IPv6 (relay bans
/// IPv6 sources per /64).
pub fn decision(event: &BanEvent) -> NewDecision {
    let (scope, value) = match event.addr.to_canonical() {
        IpAddr::V4(a) => ("Ip", a.to_string()),
        IpAddr::V6(a) => (
            "Range",
            Ipv6Net::new(a, 64)
                .map(|n| IpNet::V6(n.trunc()).to_string())
                .unwrap_or_else(|_| format!("{a}/128")),
        ),
    };
    NewDecision {
        origin: ORIGIN.to_owned(),
        kind: "ban".to_owned(),
        scope: scope.to_owned(),
        value,
        duration: duration::format_secs(event.ttl),
        scenario: format!("relay/{}", event.reason),
    }
}

/// One alert for a batch of bans, stamped `now` (the LAPI ends each decision at
/// `stop_at + duration`, so a stale `stop_at` would shorten it).
pub fn alert(batch: &[BanEvent], now: SystemTime) -> Option<Alert> {
    let decisions: Vec<NewDecision> = batch.iter().map(decision).collect();
    let first = decisions.first()?;
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let scenario = if batch.iter().all(|e| e.reason == batch[0].reason) {
        first.scenario.clone()
    } else {
        "relay/misuse".to_owned()
    };
    Some(Alert {
        scenario,
        scenario_hash: String::new(),
        scenario_version: String::new(),
        message: format!("relay misuse detector banned {} source(s)", decisions.len()),
        events_count: u32::try_from(decisions.len()).unwrap_or(u32::MAX),
        start_at: stamp.clone(),
        stop_at: stamp,
        capacity: 0,
        leakspeed: "0".to_owned(),
        simulated: false,
        events: Vec::new(),
        source: Source {
            scope: first.scope.clone(),
            value: first.value.clone(),
        },
        decisions,
    })
}

/// Sends batches until the queue closes (the task is aborted at shutdown).
pub async fn run(lapi: Arc<Lapi>, mut queue: mpsc::Receiver<BanEvent>, status: Arc<Status>) {
    while let Some(event) = queue.recv().await {
        let mut batch = vec![event];
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(event)) => batch.push(event),
                _ => break,
            }
        }
        send(&lapi, &batch, &status).await;
    }
}

async fn send(lapi: &Lapi, batch: &[BanEvent], status: &Status) {
    let n = batch.len() as u64;
    for attempt in 1..=ATTEMPTS {
        let Some(alert) = alert(batch, SystemTime::now()) else {
            return;
        };
        match lapi.push_alerts(&[alert]).await {
            Ok(()) => {
                status.published.fetch_add(n, Ordering::Relaxed);
                tracing::info!(bans = n, "published bans to CrowdSec");
                return;
            }
            Err(e) if e.is_rejection() || attempt == ATTEMPTS => {
                status.publish_failed.fetch_add(n, Ordering::Relaxed);
                tracing::error!(bans = n, attempt, "CrowdSec did not take relay's bans: {e}");
                return;
            }
            Err(e) => {
                tracing::debug!(attempt, "publishing bans to CrowdSec failed, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_is_an_ip_and_v6_its_slash_64() {
        let ttl = Duration::from_secs(3600);
        let v4 = decision(&BanEvent {
            addr: "198.18.0.2".parse().expect("ip"),
            reason: "bad_secret",
            ttl,
        });
        assert_eq!((v4.scope.as_str(), v4.value.as_str()), ("Ip", "198.18.0.2"));
        assert_eq!(
            (v4.origin.as_str(), v4.duration.as_str()),
            ("relay", "3600s")
        );
        assert_eq!(v4.scenario, "relay/bad_secret");
        let v6 = decision(&BanEvent {
            addr: "2001:2::1:2:3:4".parse().expect("ip"),
            reason: "replay",
            ttl,
        });
        assert_eq!(
            (v6.scope.as_str(), v6.value.as_str()),
            ("Range", "2001:2::/64")
        );
        let mapped = decision(&BanEvent {
            addr: "::ffff:198.18.0.3".parse().expect("ip"),
            reason: "replay",
            ttl,
        });
        assert_eq!(
            (mapped.scope.as_str(), mapped.value.as_str()),
            ("Ip", "198.18.0.3")
        );
    }

    #[test]
    fn one_alert_per_batch_stamped_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let batch = [
            BanEvent {
                addr: "198.18.0.2".parse().expect("ip"),
                reason: "bad_secret",
                ttl: Duration::from_secs(60),
            },
            BanEvent {
                addr: "198.18.0.3".parse().expect("ip"),
                reason: "replay",
                ttl: Duration::from_secs(60),
            },
        ];
        let alert = alert(&batch, now).expect("alert");
        assert_eq!(alert.decisions.len(), 2);
        assert_eq!(alert.events_count, 2);
        assert_eq!(alert.stop_at, alert.start_at);
        assert_eq!(alert.stop_at, "2026-11-18T11:06:40Z");
        assert_eq!(alert.scenario, "relay/misuse");
        assert_eq!(alert.source.value, "198.18.0.2");
        assert!(super::alert(&[], now).is_none());
    }

    #[tokio::test]
    async fn login_once_renew_on_401_and_count() {
        use crate::crowdsec::{client::Machine, scripted_lapi::scripted_lapi};
        let (url, seen) = scripted_lapi(vec![
            (
                200,
                r#"{"code":200,"expire":"2026-11-22T03:44:46Z","token":"jwt-1"}"#,
            ),
            (401, r#"{"code":401,"message":"token expired"}"#),
            (
                200,
                r#"{"code":200,"expire":"2026-11-22T03:44:46Z","token":"jwt-2"}"#,
            ),
            (201, r#"["22"]"#),
            (500, r#"{"message":"validation failure"}"#),
        ])
        .await;
        let lapi = Lapi::new(
            &url,
            None,
            Duration::from_secs(2),
            "key".into(),
            Some(Machine {
                id: "relay-1".into(),
                password: "pw".into(),
            }),
        )
        .expect("lapi");
        let status = Status::new(true);
        let ban = BanEvent {
            addr: "198.18.0.2".parse().expect("ip"),
            reason: "bad_secret",
            ttl: Duration::from_secs(60),
        };
        send(&lapi, std::slice::from_ref(&ban), &status).await;
        assert_eq!(status.published.load(Ordering::Relaxed), 1);
        // A 500 (the LAPI's answer to a schema error) is not retried.
        send(&lapi, &[ban], &status).await;
        assert_eq!(status.publish_failed.load(Ordering::Relaxed), 1);
        let requests = seen.lock().expect("seen").clone();
        assert_eq!(requests.len(), 5, "{requests:?}");
        assert!(requests[0].starts_with("POST /v1/watchers/login "));
        assert!(requests[0].contains(r#"{"machine_id":"relay-1","password":"pw"}"#));
        assert!(
            requests[1].contains("authorization: Bearer jwt-1"),
            "{}",
            requests[1]
        );
        assert!(requests[2].starts_with("POST /v1/watchers/login "));
        assert!(
            requests[3].contains("authorization: Bearer jwt-2"),
            "{}",
            requests[3]
        );
        assert!(requests[3].contains(r#""scope":"Ip","value":"198.18.0.2""#));
        assert!(
            requests[4].contains("authorization: Bearer jwt-2"),
            "the token is kept"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let status = Arc::new(Status::new(true));
        let (ban_queue, _queue) = channel(status.clone());
        for _ in 0..QUEUE + 3 {
            ban_queue.offer(BanEvent {
                addr: "198.18.0.2".parse().expect("ip"),
                reason: "bad_secret",
                ttl: Duration::from_secs(1),
            });
        }
        assert_eq!(status.publish_dropped.load(Ordering::Relaxed), 3);
    }
}
