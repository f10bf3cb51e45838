//! Copies the daemon's [`Stats`] snapshot into the Prometheus exporter ([`crate::telemetry`])
//! once a second: the samples it carries as they are, and the metrics of its typed sections
//! (users, replay memory, CrowdSec, TLS flight, XDP attachments, version) through
//! [`section_samples`].

#[cfg(test)]
mod tests;

use std::{collections::BTreeSet, future::Future, time::Duration};

use metrics::Label;

use crate::{
    control::api::Stats,
    crowdsec::decisions::REJECTION_KINDS,
    relay::{accounts::Rejection, mask_flight::Source, stats::DIRECTIONS},
    telemetry::{Kind, Metric, Samples},
};

/// How often the counters are copied into the exporter.
pub const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// Copies the snapshots `snapshot` takes into the exporter every [`EXPORT_EVERY`], forever.
pub async fn export<F, Fut>(mut snapshot: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Stats>,
{
    let mut publisher = Publisher::default();
    let mut tick = tokio::time::interval(EXPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stats = snapshot().await;
        publisher.publish(&stats);
    }
}

/// Writes snapshots into the current recorder. Remembers which gauge series it has set, so a
/// gauge whose subject went away (a removed feed or user) drops to 0 instead of keeping its
/// last value.
#[derive(Debug, Default)]
pub struct Publisher {
    gauges: BTreeSet<(Metric, Vec<String>)>,
}

impl Publisher {
    /// Publishes one snapshot.
    pub fn publish(&mut self, stats: &Stats) {
        let sections = section_samples(stats);
        let mut gauges = BTreeSet::new();
        for sample in stats.metrics.iter().chain(sections.iter()) {
            write(sample.metric, &sample.labels, sample.value);
            if sample.metric.kind() == Kind::Gauge {
                gauges.insert((sample.metric, sample.labels.clone()));
            }
        }
        for (metric, labels) in self.gauges.difference(&gauges) {
            write(*metric, labels, 0);
        }
        self.gauges = gauges;
    }
}

/// Sets one series of a counter or gauge.
fn write(metric: Metric, values: &[String], value: u64) {
    let labels: Vec<Label> = metric
        .labels()
        .iter()
        .zip(values)
        .map(|(name, value)| Label::new(*name, value.clone()))
        .collect();
    match metric.kind() {
        Kind::Counter => metrics::counter!(metric.name(), labels).absolute(value),
        Kind::Gauge => metrics::gauge!(metric.name(), labels).set(value as f64),
        Kind::Histogram => {}
    }
}

/// The metrics a snapshot carries in its typed sections rather than as samples.
pub fn section_samples(s: &Stats) -> Samples {
    let mut out = Samples::default();
    out.set(Metric::BuildInfo, &[&s.version], 1);
    if s.xdp_attached.is_empty() {
        out.set(Metric::XdpAttached, &["none", "off"], 0);
    }
    for a in &s.xdp_attached {
        out.set(Metric::XdpAttached, &[&a.interface, &a.mode], 1);
    }
    let r = &s.replay_memory;
    out.set(Metric::ReplayMemoryEntries, &[], r.entries);
    out.set(Metric::ReplayMemoryBytes, &[], r.bytes);
    out.set(Metric::ReplayMemoryGenerations, &[], r.generations);
    out.set(Metric::ReplayMemoryCoveredSeconds, &[], r.covered_secs);
    out.set(
        Metric::ReplayGenerationsDropped,
        &["expired"],
        r.dropped_expired,
    );
    out.set(
        Metric::ReplayGenerationsDropped,
        &["early"],
        r.dropped_early,
    );
    out.set(Metric::ReplayMemorySaves, &["ok"], r.saves);
    out.set(Metric::ReplayMemorySaves, &["failed"], r.saves_failed);
    let [up, down] = DIRECTIONS;
    for u in &s.users {
        out.set(Metric::UserBytes, &[&u.name, up], u.bytes_up);
        out.set(Metric::UserBytes, &[&u.name, down], u.bytes_down);
        out.set(
            Metric::UserConnectionsActive,
            &[&u.name],
            u.active_connections,
        );
        for reason in Rejection::ALL {
            let n = u.rejections.get(reason.name()).copied().unwrap_or(0);
            out.set(Metric::UserRejections, &[&u.name, reason.name()], n);
        }
    }
    if let Some(cs) = &s.crowdsec {
        out.set(Metric::CrowdsecUp, &[], u64::from(cs.up));
        for (origin, n) in &cs.decisions {
            out.set(Metric::CrowdsecDecisions, &[origin], *n);
        }
        out.set(Metric::CrowdsecPublished, &["ok"], cs.published);
        out.set(Metric::CrowdsecPublished, &["failed"], cs.publish_failed);
        out.set(Metric::CrowdsecPublished, &["dropped"], cs.publish_dropped);
        for kind in REJECTION_KINDS {
            let n = cs.rejected.get(kind).copied().unwrap_or(0);
            out.set(Metric::CrowdsecRejected, &[kind], n);
        }
    }
    let flight = &s.tls_flight;
    for source in Source::ALL {
        let on = flight.source == source.name();
        out.set(Metric::TlsFlightSource, &[source.name()], u64::from(on));
    }
    out.set(Metric::TlsFlightRecordBytes, &["min"], flight.record_min);
    out.set(Metric::TlsFlightRecordBytes, &["max"], flight.record_max);
    let me = &s.middle;
    if me.enabled {
        for pool in &me.me {
            out.set(Metric::MeConnectionsUp, &[&pool.addr], pool.up);
            out.set(Metric::MeClients, &[&pool.addr], pool.clients);
            out.set(Metric::MeRtt, &[&pool.addr], pool.rtt_us);
        }
        let c = &me.counters;
        out.set(Metric::MeConnects, &["ok"], c.connects);
        out.set(Metric::MeConnects, &["failed"], c.connect_failures);
        out.set(Metric::MeErrors, &["protocol"], c.protocol_errors);
        out.set(Metric::MeErrors, &["overflow"], c.overflows);
        out.set(Metric::MeErrors, &["unavailable"], c.unavailable);
        out.set(Metric::MeRefreshes, &["applied"], c.refreshes_applied);
        out.set(Metric::MeRefreshes, &["unchanged"], c.refreshes_unchanged);
        out.set(Metric::MeRefreshes, &["failed"], c.refreshes_failed);
        out.set(Metric::MeConfigAge, &[], me.config_age_secs);
        for source in ["fetched", "file", "cache"] {
            out.set(
                Metric::MeConfigSource,
                &[source],
                u64::from(me.source == source),
            );
        }
    }
    out
}
