//! `[upstream]`: how Telegram's data centres are reached.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Deserializer};

use super::serde_helpers::yes;

/// `[upstream]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// DC used when a client asks for one that is not known.
    #[serde(default = "default_dc")]
    pub default_dc: i16,
    /// Seconds to wait for a DC connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Try IPv6 DC addresses first.
    #[serde(default)]
    pub prefer_ipv6: bool,
    /// Choose the DC leg's key so DC→client bytes need no AES (docs/protocol.md §3).
    #[serde(default = "yes")]
    pub fast_mode: bool,
    /// Per-DC address overrides: `"2" = ["127.0.0.1:9002"]`, negative ids for media DCs.
    #[serde(default, deserialize_with = "dc_overrides")]
    pub dc: BTreeMap<i16, Vec<SocketAddr>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            default_dc: default_dc(),
            connect_timeout_secs: default_connect_timeout(),
            prefer_ipv6: false,
            fast_mode: true,
            dc: BTreeMap::new(),
        }
    }
}

fn default_dc() -> i16 {
    2
}
fn default_connect_timeout() -> u64 {
    10
}

/// `[upstream.dc]`: DC ids as keys (TOML keys are strings), each with at least one address.
fn dc_overrides<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<i16, Vec<SocketAddr>>, D::Error> {
    let raw = BTreeMap::<String, Vec<SocketAddr>>::deserialize(d)?;
    raw.into_iter()
        .map(|(id, addrs)| {
            let dc: i16 = id.trim().parse().map_err(|_| {
                serde::de::Error::custom(format!(
                    "DC id `{id}` is not a number (e.g. \"2\" or \"-2\")"
                ))
            })?;
            if addrs.is_empty() {
                return Err(serde::de::Error::custom(format!(
                    "DC {dc} lists no addresses"
                )));
            }
            Ok((dc, addrs))
        })
        .collect()
}
