//! The HTTP listener serving the Prometheus text format, and the description of every metric
//! in the table.

use std::net::SocketAddr;

use metrics::{KeyName, SharedString};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use super::metrics::{Kind, Metric};
use crate::config;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// A histogram's buckets from the table were refused.
    #[error("buckets of {0}")]
    Buckets(&'static str, #[source] BuildError),
    /// The listener could not be bound or the recorder installed.
    #[error("starting the metrics endpoint on {0}")]
    Start(SocketAddr, #[source] BuildError),
}

/// Starts the HTTP listener and installs the process-wide recorder, if `[metrics] enabled`.
/// Fails when the address cannot be bound. Must run inside the tokio runtime.
pub fn install(config: &config::Metrics) -> Result<Option<SocketAddr>, ExporterError> {
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
        .map_err(|e| ExporterError::Start(listen, e))?;
    describe();
    Ok(Some(listen))
}

/// The exporter with every histogram's buckets from the table.
pub(crate) fn builder() -> Result<PrometheusBuilder, ExporterError> {
    let mut builder = PrometheusBuilder::new();
    for metric in Metric::ALL.iter().filter(|m| m.kind() == Kind::Histogram) {
        let def = metric.def();
        builder = builder
            .set_buckets_for_metric(Matcher::Full(def.name.to_owned()), def.buckets)
            .map_err(|e| ExporterError::Buckets(def.name, e))?;
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
