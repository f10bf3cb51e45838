//! Prometheus metrics: an HTTP listener at `[metrics] listen` (loopback by default) serving
//! the text exposition format on any path (`/metrics` by convention).
//!
//! The relay's own counters (atomics in [`crate::relay::stats`], the accounts, the admission and
//! the misuse detector) stay the source of truth: [`export`] copies a [`Stats`] snapshot into
//! the exporter once a second, so the connection path never touches it. The one exception is
//! the DC connect-time histogram, recorded where a DC connection is made (once per relayed
//! connection, not per byte).
//!
//! No metric has a per-address label: sources are counted, never named.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::Context as _;
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use relay_common::BanReason;

use crate::{
    admission::capacity::Refusal,
    config,
    control::api::Stats,
    daemon::Daemon,
    relay::{accounts::Rejection, mask_flight::Source, stats::DC_CONNECT_BUCKETS},
};

/// Every metric relay exports (histograms by their base name).
pub const METRIC_NAMES: [&str; 35] = [
    "relay_xdp_packets_total",
    "relay_xdp_attached",
    "relay_connections_accepted_total",
    "relay_connections_active",
    "relay_handshakes_total",
    "relay_handshake_failures_total",
    "relay_fronted_connections_total",
    "relay_mask_legs_total",
    "relay_replays_detected_total",
    "relay_replay_memory_entries",
    "relay_replay_memory_bytes",
    "relay_replay_memory_generations",
    "relay_replay_memory_covered_seconds",
    "relay_replay_generations_dropped_total",
    "relay_replay_memory_saves_total",
    "relay_relayed_bytes_total",
    "relay_user_bytes_total",
    "relay_user_connections_active",
    "relay_user_rejections_total",
    "relay_bans_active",
    "relay_bans_total",
    "relay_blocklist_entries",
    "relay_dc_connect_seconds",
    "relay_config_reloads_total",
    "relay_admin_refused_total",
    "relay_build_info",
    "relay_connections_refused_total",
    "relay_handshakes_active",
    "relay_crowdsec_up",
    "relay_crowdsec_decisions",
    "relay_crowdsec_pull_seconds",
    "relay_crowdsec_published_total",
    "relay_crowdsec_rejected_total",
    "relay_tls_flight_source",
    "relay_tls_flight_record_bytes",
];

/// Name of the CrowdSec pull-time histogram.
pub const CROWDSEC_PULL_SECONDS: &str = crate::crowdsec::bouncer::PULL_SECONDS;

/// Buckets of the pull-time histogram: an empty incremental poll takes milliseconds, a full
/// pull of 100,000 decisions about a second.
const PULL_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Name of the DC connect-time histogram.
pub const DC_CONNECT_SECONDS: &str = "relay_dc_connect_seconds";

/// How often the counters are copied into the exporter.
pub const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// Starts the HTTP listener and installs the process-wide recorder, if `[metrics] enabled`.
/// Fails when the address cannot be bound. Must run inside the tokio runtime.
pub fn install(config: &config::Metrics) -> anyhow::Result<Option<SocketAddr>> {
    if !config.enabled {
        tracing::info!("metrics disabled ([metrics] enabled = false)");
        return Ok(None);
    }
    let listen = config.listen;
    if !listen.ip().is_loopback() {
        tracing::warn!(
            %listen,
            "the metrics endpoint is not on loopback: anyone who can reach it sees per-user \
             traffic and the relay's defences; firewall it or listen on 127.0.0.1"
        );
    }
    builder()?
        .with_http_listener(listen)
        .install()
        .with_context(|| format!("starting the metrics endpoint on {listen}"))?;
    describe();
    Ok(Some(listen))
}

fn builder() -> anyhow::Result<PrometheusBuilder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(DC_CONNECT_SECONDS.to_owned()),
            &DC_CONNECT_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(CROWDSEC_PULL_SECONDS.to_owned()),
            &PULL_BUCKETS,
        )?)
}

fn describe() {
    describe_counter!(
        "relay_xdp_packets_total",
        "Packets by XDP verdict (summed over CPUs), plus connections decided at accept for sources XDP could not rate; with userspace enforcement, connections by verdict."
    );
    describe_gauge!(
        "relay_xdp_attached",
        "1 for each interface the XDP program is attached to, by attach mode; one series with mode=\"off\" at 0 when enforcement is in userspace."
    );
    describe_counter!(
        "relay_connections_accepted_total",
        "Client connections accepted (after the kernel and userspace checks)."
    );
    describe_gauge!(
        "relay_connections_active",
        "Client connections open, by mode (classic, secure, tls), or handshake / fronted."
    );
    describe_counter!(
        "relay_handshakes_total",
        "Client handshakes by mode (unknown when no secret matched an obfuscated2 header) and result (ok, failed, rejected by a user limit)."
    );
    describe_counter!(
        "relay_handshake_failures_total",
        "Failed client handshakes by reason."
    );
    describe_counter!(
        "relay_fronted_connections_total",
        "Connections handed to the mask host, by reason."
    );
    describe_counter!(
        "relay_mask_legs_total",
        "Mask connections opened for clients quiet short of a whole handshake (outcome=opened), and those closed again because the handshake then verified (outcome=abandoned): what genuine clients cost the mask host."
    );
    describe_counter!(
        "relay_replays_detected_total",
        "Replayed handshakes caught by the anti-replay memory."
    );
    describe_gauge!(
        "relay_replay_memory_entries",
        "Handshakes the anti-replay memory remembers."
    );
    describe_gauge!(
        "relay_replay_memory_bytes",
        Unit::Bytes,
        "Filter bytes the anti-replay memory holds."
    );
    describe_gauge!(
        "relay_replay_memory_generations",
        "Bloom-filter generations the anti-replay memory holds."
    );
    describe_gauge!(
        "relay_replay_memory_covered_seconds",
        Unit::Seconds,
        "Age of the oldest handshake the anti-replay memory remembers: replays of anything younger are caught."
    );
    describe_counter!(
        "relay_replay_generations_dropped_total",
        "Anti-replay generations dropped: expired (past [replay] retention_secs and retention_handshakes) or early (memory_bytes too small for the handshake rate)."
    );
    describe_counter!(
        "relay_replay_memory_saves_total",
        "Saves of the anti-replay memory to the state dir, by result (ok, failed)."
    );
    describe_counter!(
        "relay_relayed_bytes_total",
        Unit::Bytes,
        "Bytes relayed between clients and DCs since start, by direction."
    );
    describe_counter!(
        "relay_user_bytes_total",
        Unit::Bytes,
        "Bytes relayed per user, all time (persisted across restarts), by direction."
    );
    describe_gauge!(
        "relay_user_connections_active",
        "Connections open per user."
    );
    describe_counter!(
        "relay_user_rejections_total",
        "Connections refused by a user limit, by user and reason."
    );
    describe_gauge!("relay_bans_active", "Source bans in force.");
    describe_counter!(
        "relay_bans_total",
        "Sources banned by the misuse detector since start, by reason."
    );
    describe_gauge!(
        "relay_blocklist_entries",
        "Blocklist entries by source (config, operator, feed:<path>)."
    );
    describe_histogram!(
        DC_CONNECT_SECONDS,
        Unit::Seconds,
        "Time to establish a TCP connection to a Telegram DC, by DC id."
    );
    describe_counter!(
        "relay_config_reloads_total",
        "Configuration reloads (SIGHUP) by result."
    );
    describe_counter!(
        "relay_admin_refused_total",
        "Admin requests refused because the caller's role does not allow them."
    );
    describe_gauge!("relay_build_info", "Always 1; the version is a label.");
    describe_counter!(
        "relay_connections_refused_total",
        "Connections reset at accept because a concurrency bound was reached, by bound."
    );
    describe_gauge!(
        "relay_handshakes_active",
        "Client connections that have not finished their handshake."
    );
    describe_gauge!(
        "relay_crowdsec_up",
        "1 when the last pull of the CrowdSec decision stream succeeded (only with [crowdsec])."
    );
    describe_gauge!(
        "relay_crowdsec_decisions",
        "CrowdSec decisions enforced, by origin (crowdsec, cscli, CAPI, lists, relay, ...)."
    );
    describe_histogram!(
        CROWDSEC_PULL_SECONDS,
        Unit::Seconds,
        "Time to fetch and parse one pull of the CrowdSec decision stream."
    );
    describe_counter!(
        "relay_crowdsec_published_total",
        "relay's own bans sent to CrowdSec, by result (ok, failed, dropped when the queue was full)."
    );
    describe_counter!(
        "relay_crowdsec_rejected_total",
        "CrowdSec decisions refused, by kind: wide_range (wider than max_range_v4/v6), bad_value, bad_scope, bad_duration; whole pulls refused: too_many (max_decisions), too_large (max_body_bytes)."
    );
    describe_gauge!(
        "relay_tls_flight_source",
        "1 for where the fake-TLS server flight's shape comes from: learned (probed from the mask), cached (loaded from the state dir) or fallback (fixed plausible sizes); 0 for the others."
    );
    describe_gauge!(
        "relay_tls_flight_record_bytes",
        Unit::Bytes,
        "Smallest and largest size (bound=min|max) of the fake encrypted-handshake record."
    );
}

/// Records one DC connect time (a no-op while no recorder is installed).
pub fn record_dc_connect(dc: i16, took: Duration) {
    metrics::histogram!(DC_CONNECT_SECONDS, "dc" => dc_label(dc)).record(took.as_secs_f64());
}

/// DC ids as label values, without an allocation per connection.
fn dc_label(dc: i16) -> String {
    static COMMON: OnceLock<Vec<String>> = OnceLock::new();
    let common = COMMON.get_or_init(|| (0..=5).map(|i| i.to_string()).collect());
    usize::try_from(dc)
        .ok()
        .and_then(|i| common.get(i).cloned())
        .unwrap_or_else(|| dc.to_string())
}

/// Copies the daemon's counters into the exporter every [`EXPORT_EVERY`], forever.
pub async fn export(daemon: Arc<Daemon>) {
    let mut publisher = Publisher::default();
    let mut tick = tokio::time::interval(EXPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stats = daemon.stats().await;
        publisher.publish(&stats);
    }
}

/// Writes [`Stats`] into the current recorder. Remembers which label values it has seen, so a
/// gauge whose subject went away (a removed feed or user) drops to 0 instead of keeping its
/// last value.
#[derive(Debug, Default)]
pub struct Publisher {
    blocklist_sources: BTreeSet<String>,
    users: BTreeSet<String>,
    crowdsec_origins: BTreeSet<String>,
}

impl Publisher {
    /// Publishes one snapshot.
    pub fn publish(&mut self, s: &Stats) {
        gauge!("relay_build_info", "version" => s.version.clone()).set(1.0);
        for (verdict, n) in &s.verdicts {
            counter!("relay_xdp_packets_total", "verdict" => verdict.clone()).absolute(*n);
        }
        if s.xdp_attached.is_empty() {
            gauge!("relay_xdp_attached", "interface" => "none", "mode" => "off").set(0.0);
        }
        for a in &s.xdp_attached {
            gauge!(
                "relay_xdp_attached",
                "interface" => a.interface.clone(),
                "mode" => a.mode.clone()
            )
            .set(1.0);
        }
        counter!("relay_connections_accepted_total").absolute(s.connections_accepted);
        for bound in Refusal::ALL {
            let n = s
                .connections_refused
                .get(bound.name())
                .copied()
                .unwrap_or(0);
            counter!("relay_connections_refused_total", "reason" => bound.name()).absolute(n);
        }
        gauge!("relay_handshakes_active").set(s.handshakes_active as f64);
        for (mode, n) in &s.connections_active_by_mode {
            gauge!("relay_connections_active", "mode" => mode.clone()).set(*n as f64);
        }
        for (mode, results) in &s.handshakes {
            for (result, n) in results {
                counter!(
                    "relay_handshakes_total",
                    "mode" => mode.clone(),
                    "result" => result.clone()
                )
                .absolute(*n);
            }
        }
        for (reason, n) in &s.handshake_failures {
            counter!("relay_handshake_failures_total", "reason" => reason.clone()).absolute(*n);
        }
        for (reason, n) in &s.fronted {
            counter!("relay_fronted_connections_total", "reason" => reason.clone()).absolute(*n);
        }
        for (outcome, n) in &s.mask_legs {
            counter!("relay_mask_legs_total", "outcome" => outcome.clone()).absolute(*n);
        }
        counter!("relay_replays_detected_total").absolute(s.replays_detected);
        let r = &s.replay_memory;
        gauge!("relay_replay_memory_entries").set(r.entries as f64);
        gauge!("relay_replay_memory_bytes").set(r.bytes as f64);
        gauge!("relay_replay_memory_generations").set(r.generations as f64);
        gauge!("relay_replay_memory_covered_seconds").set(r.covered_secs as f64);
        counter!("relay_replay_generations_dropped_total", "reason" => "expired")
            .absolute(r.dropped_expired);
        counter!("relay_replay_generations_dropped_total", "reason" => "early")
            .absolute(r.dropped_early);
        counter!("relay_replay_memory_saves_total", "result" => "ok").absolute(r.saves);
        counter!("relay_replay_memory_saves_total", "result" => "failed").absolute(r.saves_failed);
        for (direction, n) in &s.relayed_bytes {
            counter!("relay_relayed_bytes_total", "direction" => direction.clone()).absolute(*n);
        }
        self.publish_users(s);
        gauge!("relay_bans_active").set(s.bans_active as f64);
        for reason in BanReason::ALL {
            let n = s.bans_total.get(reason.name()).copied().unwrap_or(0);
            counter!("relay_bans_total", "reason" => reason.name()).absolute(n);
        }
        let sources: BTreeSet<String> = s.blocklist_entries.keys().cloned().collect();
        for gone in self.blocklist_sources.difference(&sources) {
            gauge!("relay_blocklist_entries", "source" => gone.clone()).set(0.0);
        }
        // The lists always have these sources, even when empty.
        for source in ["config", "operator"] {
            if !s.blocklist_entries.contains_key(source) {
                gauge!("relay_blocklist_entries", "source" => source).set(0.0);
            }
        }
        for (source, n) in &s.blocklist_entries {
            gauge!("relay_blocklist_entries", "source" => source.clone()).set(*n as f64);
        }
        self.blocklist_sources = sources;
        for (result, n) in &s.config_reloads {
            counter!("relay_config_reloads_total", "result" => result.clone()).absolute(*n);
        }
        counter!("relay_admin_refused_total").absolute(s.admin_refused);
        self.publish_crowdsec(s);
        self.publish_tls_flight(s);
    }

    fn publish_tls_flight(&self, s: &Stats) {
        let flight = &s.tls_flight;
        for source in Source::ALL {
            let value = if flight.source == source.name() {
                1.0
            } else {
                0.0
            };
            gauge!("relay_tls_flight_source", "source" => source.name()).set(value);
        }
        gauge!("relay_tls_flight_record_bytes", "bound" => "min").set(flight.record_min as f64);
        gauge!("relay_tls_flight_record_bytes", "bound" => "max").set(flight.record_max as f64);
    }

    fn publish_crowdsec(&mut self, s: &Stats) {
        let Some(cs) = &s.crowdsec else {
            return;
        };
        gauge!("relay_crowdsec_up").set(if cs.up { 1.0 } else { 0.0 });
        let origins: BTreeSet<String> = cs.decisions.keys().cloned().collect();
        for gone in self.crowdsec_origins.difference(&origins) {
            gauge!("relay_crowdsec_decisions", "origin" => gone.clone()).set(0.0);
        }
        for (origin, n) in &cs.decisions {
            gauge!("relay_crowdsec_decisions", "origin" => origin.clone()).set(*n as f64);
        }
        self.crowdsec_origins = origins;
        for (result, n) in [
            ("ok", cs.published),
            ("failed", cs.publish_failed),
            ("dropped", cs.publish_dropped),
        ] {
            counter!("relay_crowdsec_published_total", "result" => result).absolute(n);
        }
        for kind in crate::crowdsec::decisions::REJECTION_KINDS {
            let n = cs.rejected.get(kind).copied().unwrap_or(0);
            counter!("relay_crowdsec_rejected_total", "kind" => kind).absolute(n);
        }
    }

    fn publish_users(&mut self, s: &Stats) {
        let users: BTreeSet<String> = s.users.iter().map(|u| u.name.clone()).collect();
        for gone in self.users.difference(&users) {
            gauge!("relay_user_connections_active", "user" => gone.clone()).set(0.0);
        }
        for u in &s.users {
            counter!(
                "relay_user_bytes_total",
                "user" => u.name.clone(),
                "direction" => "client_to_dc"
            )
            .absolute(u.bytes_up);
            counter!(
                "relay_user_bytes_total",
                "user" => u.name.clone(),
                "direction" => "dc_to_client"
            )
            .absolute(u.bytes_down);
            gauge!("relay_user_connections_active", "user" => u.name.clone())
                .set(u.active_connections as f64);
            for reason in Rejection::ALL {
                let n = u.rejections.get(reason.name()).copied().unwrap_or(0);
                counter!(
                    "relay_user_rejections_total",
                    "user" => u.name.clone(),
                    "reason" => reason.name()
                )
                .absolute(n);
            }
        }
        self.users = users;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::control::api::{UserInfo, XdpAttachment};

    fn sample() -> Stats {
        let mut s = Stats {
            version: "0.1.0".into(),
            connections_accepted: 7,
            bans_active: 1,
            replays_detected: 2,
            replay_memory: crate::control::api::ReplayMemoryStats {
                entries: 5,
                generations: 1,
                bytes: 1000,
                covered_secs: 3600,
                dropped_early: 1,
                ..Default::default()
            },
            ..Stats::default()
        };
        s.verdicts.insert("passed".into(), 100);
        s.verdicts.insert("syn_rate_limited".into(), 5);
        s.xdp_attached.push(XdpAttachment {
            interface: "eth0".into(),
            mode: "native".into(),
        });
        s.connections_active_by_mode.insert("tls".into(), 3);
        s.handshakes
            .entry("tls".into())
            .or_default()
            .insert("ok".into(), 4);
        s.handshake_failures.insert("bad_secret".into(), 2);
        s.fronted.insert("bad_secret".into(), 2);
        s.mask_legs.insert("opened".into(), 1);
        s.relayed_bytes.insert("client_to_dc".into(), 1000);
        s.bans_total.insert("replay".into(), 1);
        s.blocklist_entries
            .insert("feed:/etc/relay/l1.netset".into(), 9);
        s.config_reloads.insert("success".into(), 1);
        s.connections_refused
            .insert("max_connections_per_source".into(), 6);
        s.tls_flight = crate::control::api::TlsFlightStats {
            source: "cached".into(),
            record_min: 3951,
            record_max: 3957,
            learned_unix: Some(1_700_000_000),
            reason: None,
        };
        s.crowdsec = Some(crate::control::api::CrowdSecStats {
            up: true,
            decisions: BTreeMap::from([("cscli".to_owned(), 4), ("relay".to_owned(), 1)]),
            published: 2,
            publish_dropped: 1,
            rejected: BTreeMap::from([("wide_range".to_owned(), 2)]),
            ..Default::default()
        });
        s.users.push(UserInfo {
            name: "alice".into(),
            enabled: true,
            blocked_reason: None,
            active_connections: 2,
            unique_ips: 1,
            bytes_up: 10,
            bytes_down: 20,
            quota: None,
            expires: None,
            max_connections: None,
            max_unique_ips: None,
            rejections: BTreeMap::from([("quota".to_owned(), 3)]),
        });
        s
    }

    fn render(f: impl FnOnce()) -> String {
        let recorder = builder().expect("builder").build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            f();
        });
        handle.render()
    }

    #[test]
    fn every_metric_is_exported_with_its_labels() {
        let text = render(|| {
            Publisher::default().publish(&sample());
            record_dc_connect(2, Duration::from_millis(3));
            metrics::histogram!(CROWDSEC_PULL_SECONDS).record(0.02);
        });
        for name in METRIC_NAMES {
            assert!(
                text.contains(&format!("\n{name}")) || text.contains(&format!("\n{name}_")),
                "{name} missing from:\n{text}"
            );
        }
        for line in [
            "relay_xdp_packets_total{verdict=\"syn_rate_limited\"} 5",
            "relay_xdp_attached{interface=\"eth0\",mode=\"native\"} 1",
            "relay_connections_accepted_total 7",
            "relay_connections_active{mode=\"tls\"} 3",
            "relay_handshakes_total{mode=\"tls\",result=\"ok\"} 4",
            "relay_replays_detected_total 2",
            "relay_replay_memory_covered_seconds 3600",
            "relay_replay_generations_dropped_total{reason=\"early\"} 1",
            "relay_replay_memory_saves_total{result=\"failed\"} 0",
            "relay_user_bytes_total{user=\"alice\",direction=\"dc_to_client\"} 20",
            "relay_user_rejections_total{user=\"alice\",reason=\"quota\"} 3",
            "relay_user_rejections_total{user=\"alice\",reason=\"expired\"} 0",
            "relay_bans_total{reason=\"replay\"} 1",
            "relay_bans_total{reason=\"bad_secret\"} 0",
            "relay_blocklist_entries{source=\"operator\"} 0",
            "relay_blocklist_entries{source=\"feed:/etc/relay/l1.netset\"} 9",
            "relay_build_info{version=\"0.1.0\"} 1",
            "relay_connections_refused_total{reason=\"max_connections_per_source\"} 6",
            "relay_connections_refused_total{reason=\"max_handshakes\"} 0",
            "relay_dc_connect_seconds_bucket{dc=\"2\",le=\"0.005\"} 1",
            "relay_dc_connect_seconds_count{dc=\"2\"} 1",
            "relay_crowdsec_up 1",
            "relay_crowdsec_decisions{origin=\"cscli\"} 4",
            "relay_crowdsec_published_total{result=\"dropped\"} 1",
            "relay_crowdsec_rejected_total{kind=\"wide_range\"} 2",
            "relay_crowdsec_rejected_total{kind=\"too_large\"} 0",
            "relay_crowdsec_pull_seconds_bucket{le=\"0.025\"} 1",
            "relay_tls_flight_source{source=\"cached\"} 1",
            "relay_tls_flight_source{source=\"fallback\"} 0",
            "relay_tls_flight_record_bytes{bound=\"max\"} 3957",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            text.contains("# TYPE relay_dc_connect_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE relay_relayed_bytes_total counter"),
            "{text}"
        );
    }

    #[test]
    fn userspace_enforcement_and_vanished_subjects() {
        let recorder = builder().expect("builder").build_recorder();
        let handle = recorder.handle();
        let mut publisher = Publisher::default();
        metrics::with_local_recorder(&recorder, || {
            publisher.publish(&sample());
            let mut later = sample();
            later.xdp_attached.clear();
            later.users.clear();
            later.blocklist_entries.clear();
            if let Some(cs) = later.crowdsec.as_mut() {
                cs.decisions.remove("relay");
            }
            publisher.publish(&later);
        });
        let text = handle.render();
        for line in [
            "relay_xdp_attached{interface=\"none\",mode=\"off\"} 0",
            "relay_user_connections_active{user=\"alice\"} 0",
            "relay_blocklist_entries{source=\"feed:/etc/relay/l1.netset\"} 0",
            "relay_crowdsec_decisions{origin=\"relay\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn dc_labels() {
        assert_eq!(dc_label(2), "2");
        assert_eq!(dc_label(-2), "-2");
        assert_eq!(dc_label(10_002), "10002");
    }

    /// Every `relay_*` name the dashboard queries is one this module exports.
    #[test]
    fn the_dashboard_uses_exported_names_only() {
        let dashboard = include_str!("../../contrib/grafana/relay-dashboard.json");
        let names = dashboard_metric_names(dashboard);
        assert!(names.len() >= 10, "{names:?}");
        for name in &names {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| *b == DC_CONNECT_SECONDS || *b == CROWDSEC_PULL_SECONDS)
                .unwrap_or(name);
            assert!(
                METRIC_NAMES.contains(&base),
                "the dashboard queries {name}, which relay does not export"
            );
        }
    }

    /// `relay_*` identifiers in a text (the dashboard's queries).
    fn dashboard_metric_names(text: &str) -> BTreeSet<&str> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("relay_") {
            let before_ok = at == 0
                || !rest.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[at - 1] != b'_';
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if before_ok {
                names.insert(&tail[..end]);
            }
            rest = &tail[end..];
        }
        names
    }
}
