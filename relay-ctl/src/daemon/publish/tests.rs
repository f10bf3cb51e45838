use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::control::api::{
    CrowdSecStats, ReplayMemoryStats, TlsFlightStats, UserInfo, XdpAttachment,
};
use crate::telemetry::{
    exporter::{builder, describe},
    record_crowdsec_pull, record_dc_connect,
};

fn sample() -> Stats {
    let mut s = Stats {
        version: "0.1.0".into(),
        replay_memory: ReplayMemoryStats {
            entries: 5,
            generations: 1,
            bytes: 1000,
            covered_secs: 3600,
            dropped_early: 1,
            ..Default::default()
        },
        ..Stats::default()
    };
    let m = &mut s.metrics;
    m.set(Metric::ConnectionsAccepted, &[], 7);
    m.set(Metric::BansActive, &[], 1);
    m.set(Metric::ReplaysDetected, &[], 2);
    m.set(Metric::XdpPackets, &["passed"], 100);
    m.set(Metric::XdpPackets, &["syn_rate_limited"], 5);
    m.set(Metric::ConnectionsActive, &["tls"], 3);
    m.set(Metric::Handshakes, &["tls", "ok"], 4);
    m.set(Metric::HandshakeFailures, &["bad_secret"], 2);
    m.set(Metric::FrontedConnections, &["bad_secret"], 2);
    m.set(Metric::MaskLegs, &["opened"], 1);
    m.set(Metric::RelayedBytes, &["client_to_dc"], 1000);
    m.set(Metric::BansTotal, &["replay"], 1);
    m.set(Metric::BansTotal, &["bad_secret"], 0);
    m.set(Metric::BlocklistEntries, &["config"], 0);
    m.set(Metric::BlocklistEntries, &["operator"], 0);
    m.set(Metric::BlocklistEntries, &["feed:/etc/relay/l1.netset"], 9);
    m.set(Metric::ConfigReloads, &["success"], 1);
    m.set(
        Metric::ConnectionsRefused,
        &["max_connections_per_source"],
        6,
    );
    m.set(Metric::ConnectionsRefused, &["max_handshakes"], 0);
    s.xdp_attached.push(XdpAttachment {
        interface: "eth0".into(),
        mode: "native".into(),
    });
    s.tls_flight = TlsFlightStats {
        source: "cached".into(),
        record_min: 3951,
        record_max: 3957,
        learned_unix: Some(1_700_000_000),
        reason: None,
    };
    s.middle = crate::control::api::MiddleView {
        enabled: true,
        source: "file".into(),
        config_age_secs: 7,
        me: vec![crate::control::api::MeView {
            addr: "149.154.175.50:8888".into(),
            up: 2,
            clients: 5,
            rtt_us: 900,
        }],
        counters: crate::control::api::MiddleCounters {
            connects: 3,
            ..Default::default()
        },
    };
    s.crowdsec = Some(CrowdSecStats {
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
        connection_rate: None,
        connection_burst: None,
        rejections: BTreeMap::from([("quota".to_owned(), 3)]),
    });
    s
}

/// [`sample`] with a value for every metric the snapshot carries as samples.
fn complete() -> Stats {
    let mut s = sample();
    for metric in Metric::ALL.iter().filter(|m| m.def().json.is_some()) {
        if s.metrics.of(*metric).next().is_none() {
            let labels = vec!["x"; metric.labels().len()];
            s.metrics.set(*metric, &labels, 1);
        }
    }
    s
}

fn render(f: impl FnOnce()) -> String {
    let recorder = builder().expect("builder").build_recorder();
    let handle = recorder.handle();
    ::metrics::with_local_recorder(&recorder, || {
        describe();
        f();
    });
    handle.render()
}

/// `# TYPE` lines of a rendering: name → kind.
fn exported_types(text: &str) -> BTreeMap<&str, &str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect()
}

/// Every metric in the table is exported with its kind and help, and nothing else is: fails
/// when a metric is declared but its snapshot value never reaches the exporter, or when
/// something exports a metric the table does not declare.
#[test]
fn exported_metrics_are_exactly_the_declared_ones() {
    let text = render(|| {
        Publisher::default().publish(&complete());
        record_dc_connect(2, Duration::from_millis(3));
        record_crowdsec_pull(Duration::from_millis(20));
    });
    let exported = exported_types(&text);
    let declared: BTreeMap<&str, &str> = Metric::ALL
        .iter()
        .map(|m| (m.name(), m.kind().name()))
        .collect();
    let not_exported: Vec<_> = declared
        .iter()
        .filter(|(name, _)| !exported.contains_key(*name))
        .collect();
    let not_declared: Vec<_> = exported
        .iter()
        .filter(|(name, _)| !declared.contains_key(*name))
        .collect();
    assert!(
        not_exported.is_empty(),
        "declared, not exported: {not_exported:?}\n{text}"
    );
    assert!(
        not_declared.is_empty(),
        "exported, not declared: {not_declared:?}\n{text}"
    );
    assert_eq!(exported, declared, "kinds differ:\n{text}");
    for metric in Metric::ALL {
        let help = format!("# HELP {} {}\n", metric.name(), metric.def().help);
        assert!(text.contains(&help), "{help} missing from:\n{text}");
    }
}

#[test]
fn every_metric_is_exported_with_its_labels() {
    let text = render(|| {
        Publisher::default().publish(&sample());
        record_dc_connect(2, Duration::from_millis(3));
        record_crowdsec_pull(Duration::from_millis(20));
    });
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
        "relay_user_rejections_total{user=\"alice\",reason=\"rate\"} 0",
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
        "relay_me_connections_up{me=\"149.154.175.50:8888\"} 2",
        "relay_me_connects_total{outcome=\"ok\"} 3",
        "relay_me_config_source{source=\"file\"} 1",
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
    ::metrics::with_local_recorder(&recorder, || {
        publisher.publish(&sample());
        let mut later = sample();
        later.xdp_attached.clear();
        later.users.clear();
        later.metrics = Samples::default();
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

/// The snapshot's JSON keeps the shape `relay-ctl stats --json` always had, and reads back.
#[test]
fn stats_json_keeps_its_shape() {
    let s = sample();
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["connections_accepted"], 7, "{json:#}");
    assert_eq!(json["verdicts"]["syn_rate_limited"], 5, "{json:#}");
    assert_eq!(json["handshakes"]["tls"]["ok"], 4, "{json:#}");
    assert_eq!(json["relayed_bytes"]["client_to_dc"], 1000, "{json:#}");
    assert_eq!(json["blocklist_entries"]["operator"], 0, "{json:#}");
    assert_eq!(json["replay_memory"]["entries"], 5, "{json:#}");
    assert_eq!(json["users"][0]["bytes_down"], 20, "{json:#}");
    let back: Stats = serde_json::from_value(json).expect("read back");
    assert_eq!(back, s);
}

/// Every `relay_*` name the dashboard queries is one this module exports.
#[test]
fn the_dashboard_uses_exported_names_only() {
    let dashboard = include_str!("../../../../contrib/grafana/relay-dashboard.json");
    let names = dashboard_metric_names(dashboard);
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| Metric::from_name(b).is_some_and(|m| m.kind() == Kind::Histogram))
            .unwrap_or(name);
        assert!(
            Metric::from_name(base).is_some(),
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
            || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
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
