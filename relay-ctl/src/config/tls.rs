//! `[tls]`: fake-TLS and fronting.

use serde::Deserialize;

use super::{SectionError, serde_helpers::yes};

/// `[tls]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The site fake-TLS clients name in SNI (part of their `ee` link).
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Where failed and probing connections are forwarded; default `domain:443`.
    #[serde(default)]
    pub mask: Option<String>,
    /// Forward failed connections to `mask`; off: close them.
    #[serde(default = "yes")]
    pub fronting: bool,
    /// Start each fronted connection with a PROXY header naming the client: `"off"`, `"v1"`
    /// or `"v2"` (for a local web server that logs or limits by client address).
    #[serde(default)]
    pub mask_proxy_protocol: MaskProxyProtocol,
    /// Accepted clock difference of a ClientHello timestamp, in seconds.
    #[serde(default = "default_time_skew")]
    pub time_skew_secs: u32,
    /// Probe `mask` as a TLS client to copy the shape of its server flight (needs `fronting`);
    /// off: the fake flight uses a plausible fixed size range.
    #[serde(default = "yes")]
    pub learn_flight: bool,
    /// Seconds between probes of the mask site's flight.
    #[serde(default = "default_flight_refresh")]
    pub flight_refresh_secs: u64,
    /// Accept ClientHello timestamps that count seconds since the client's boot (below 1000
    /// days) whatever `time_skew_secs` says; such hellos are then limited by `[replay]` only.
    #[serde(default = "yes")]
    pub accept_uptime_clock: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            domain: default_domain(),
            mask: None,
            fronting: true,
            mask_proxy_protocol: MaskProxyProtocol::Off,
            time_skew_secs: default_time_skew(),
            learn_flight: true,
            flight_refresh_secs: default_flight_refresh(),
            accept_uptime_clock: true,
        }
    }
}

/// See [`Tls::mask_proxy_protocol`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskProxyProtocol {
    /// The mask sees relay's address.
    #[default]
    Off,
    /// A text header.
    V1,
    /// A binary header.
    V2,
}

impl MaskProxyProtocol {
    /// The header version, `None` when off.
    pub fn version(self) -> Option<relay_proto::proxy_header::Version> {
        use relay_proto::proxy_header::Version;
        match self {
            MaskProxyProtocol::Off => None,
            MaskProxyProtocol::V1 => Some(Version::V1),
            MaskProxyProtocol::V2 => Some(Version::V2),
        }
    }
}

impl Tls {
    /// The fronting target as `host:port`.
    pub fn mask_target(&self) -> String {
        self.mask
            .clone()
            .unwrap_or_else(|| format!("{}:443", self.domain))
    }

    /// Checks that `domain` can be an SNI host name.
    pub(super) fn validate_domain(&self) -> Result<(), SectionError> {
        if self.domain.is_empty() || self.domain.len() > 253 || !self.domain.is_ascii() {
            return Err(SectionError::new(
                "domain",
                "[tls] domain must be an ASCII host name",
            ));
        }
        Ok(())
    }

    /// Checks that the mask site is not probed too often.
    pub(super) fn validate_flight_refresh(&self) -> Result<(), SectionError> {
        if self.flight_refresh_secs < 60 {
            return Err(SectionError::new(
                "flight_refresh_secs",
                "[tls] flight_refresh_secs must be at least 60 (set learn_flight = false to stop \
                 probing)",
            ));
        }
        Ok(())
    }
}

fn default_domain() -> String {
    "www.cloudflare.com".to_owned()
}
fn default_time_skew() -> u32 {
    120
}
fn default_flight_refresh() -> u64 {
    6 * 3600
}
