//! `[metrics]`: the Prometheus endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// `[metrics]`: Prometheus text exposition over HTTP.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Address of the HTTP listener. The default is loopback: the figures (per-user traffic
    /// among them) are for the operator, not the internet.
    pub listen: SocketAddr,
}

/// Where the metrics endpoint listens unless configured.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9810);

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            listen: DEFAULT_METRICS_LISTEN,
        }
    }
}
