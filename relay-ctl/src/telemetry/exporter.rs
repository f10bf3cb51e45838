//! The HTTP listener serving the Prometheus text format, and the description of every metric
//! in the table.

use std::net::SocketAddr;

use anyhow::Context as _;
use metrics::{KeyName, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use super::metrics::{Kind, Metric};
use crate::config;

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

/// The exporter with every histogram's buckets from the table.
pub(crate) fn builder() -> anyhow::Result<PrometheusBuilder> {
    let mut builder = PrometheusBuilder::new();
    for metric in Metric::ALL.iter().filter(|m| m.kind() == Kind::Histogram) {
        let def = metric.def();
        builder = builder
            .set_buckets_for_metric(Matcher::Full(def.name.to_owned()), def.buckets)
            .with_context(|| format!("buckets of {}", def.name))?;
    }
    Ok(builder)
}

/// Gives the current recorder every metric's help text and unit.
pub(crate) fn describe() {
    metrics::with_recorder(|recorder| {
        for metric in Metric::ALL {
            let def = metric.def();
            let name = KeyName::from_const_str(def.name);
            let help = SharedString::const_str(def.help);
            match def.kind {
                Kind::Counter => recorder.describe_counter(name, def.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, def.unit, help),
                Kind::Histogram => recorder.describe_histogram(name, def.unit, help),
            }
        }
    });
}
