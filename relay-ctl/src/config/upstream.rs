//! `[upstream]`: how Telegram's data centres are reached.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use relay_proto::middle::AdTag;
use serde::{Deserialize, Deserializer};

use super::{
    SectionError,
    serde_helpers::{duration, from_str, yes},
};

/// `[upstream] mode`: how Telegram is reached.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// Each client gets its own connection to its DC.
    #[default]
    Direct,
    /// Clients are multiplexed over connections to Telegram's middle proxies (needed for an
    /// ad tag).
    Middle,
}

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
    /// `direct` or `middle`; unset: `middle` when `ad_tag` is set, else `direct`.
    #[serde(default)]
    pub mode: Option<UpstreamMode>,
    /// The promoted channel's tag from @MTProxybot (32 hex digits); needs middle mode.
    #[serde(default, deserialize_with = "optional_ad_tag")]
    pub ad_tag: Option<AdTag>,
    /// `[upstream.middle]`: the middle proxies.
    #[serde(default)]
    pub middle: Middle,
    /// A SOCKS5 proxy (`"host:port"`) every DC connection goes through (direct mode only).
    #[serde(default)]
    pub socks5: Option<String>,
    /// The SOCKS5 username (RFC 1929), with `socks5_password_file`.
    #[serde(default)]
    pub socks5_username: Option<String>,
    /// The file holding the SOCKS5 password (its first line), with `socks5_username`.
    #[serde(default)]
    pub socks5_password_file: Option<PathBuf>,
}

impl Upstream {
    /// The mode in effect: the configured one, else middle when an ad tag is set.
    pub fn effective_mode(&self) -> UpstreamMode {
        match (self.mode, self.ad_tag) {
            (Some(mode), _) => mode,
            (None, Some(_)) => UpstreamMode::Middle,
            (None, None) => UpstreamMode::Direct,
        }
    }

    pub(super) fn validate(&self, user_tags: bool) -> Result<(), SectionError> {
        if self.mode == Some(UpstreamMode::Direct) && (self.ad_tag.is_some() || user_tags) {
            return Err(SectionError::new(
                "ad_tag",
                "an ad tag is only shown through middle proxies: set `[upstream] mode = \"middle\"` \
                 or remove the tag",
            ));
        }
        self.validate_socks5()?;
        self.middle.validate()
    }

    fn validate_socks5(&self) -> Result<(), SectionError> {
        let auth = (
            self.socks5_username.is_some(),
            self.socks5_password_file.is_some(),
        );
        if auth.0 != auth.1 {
            return Err(SectionError::new(
                if auth.0 {
                    "socks5_username"
                } else {
                    "socks5_password_file"
                },
                "socks5_username and socks5_password_file go together (RFC 1929 needs both)",
            ));
        }
        let Some(server) = &self.socks5 else {
            if auth.0 {
                return Err(SectionError::new(
                    "socks5_username",
                    "socks5_username is only used with `[upstream] socks5 = \"host:port\"`",
                ));
            }
            return Ok(());
        };
        if self.effective_mode() == UpstreamMode::Middle {
            return Err(SectionError::new(
                "socks5",
                "middle mode cannot go through SOCKS5 because the middle proxies' key \
                 derivation binds real addresses",
            ));
        }
        if !is_host_port(server) {
            return Err(SectionError::new(
                "socks5",
                format!(
                    "`{server}` is not \"host:port\" (IPv6 in brackets: \"[2001:db8::1]:1080\")"
                ),
            ));
        }
        if let Some(name) = &self.socks5_username
            && (name.is_empty() || name.len() > 255)
        {
            return Err(SectionError::new(
                "socks5_username",
                "socks5_username must be 1 to 255 bytes",
            ));
        }
        Ok(())
    }
}

/// `host:port` with a non-zero port, a non-empty host, and IPv6 literals in brackets.
fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok()),
        None => !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace),
    };
    port_ok && host_ok
}

/// `[upstream.middle]`: where the middle-proxy list and secret come from, and how the ME
/// connections are kept.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Middle {
    /// Telegram's IPv4 middle-proxy list.
    #[serde(default = "default_config_url")]
    pub config_url: String,
    /// Telegram's IPv6 middle-proxy list (used with `[upstream] prefer_ipv6`).
    #[serde(default = "default_config_url_v6")]
    pub config_url_v6: String,
    /// Telegram's proxy secret.
    #[serde(default = "default_secret_url")]
    pub secret_url: String,
    /// How often the list and secret are fetched again.
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    pub refresh: Duration,
    /// Read the list from this file instead of fetching it.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// Read the proxy secret from this file instead of fetching it.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Connections kept open to each middle proxy; clients are spread over them.
    #[serde(default = "default_connections_per_me")]
    pub connections_per_me: u16,
    /// This host's public IPv4 address, when it is behind NAT (the keys bind it).
    #[serde(default, deserialize_with = "optional_from_str")]
    pub public_ipv4: Option<Ipv4Addr>,
    /// This host's public IPv6 address, when the local one is not the one the ME sees.
    #[serde(default, deserialize_with = "optional_from_str")]
    pub public_ipv6: Option<Ipv6Addr>,
}

impl Default for Middle {
    fn default() -> Self {
        Middle {
            config_url: default_config_url(),
            config_url_v6: default_config_url_v6(),
            secret_url: default_secret_url(),
            refresh: default_refresh(),
            config_file: None,
            secret_file: None,
            connections_per_me: default_connections_per_me(),
            public_ipv4: None,
            public_ipv6: None,
        }
    }
}

impl Middle {
    fn validate(&self) -> Result<(), SectionError> {
        if self.connections_per_me == 0 || self.connections_per_me > 64 {
            return Err(SectionError::new(
                "connections_per_me",
                "connections_per_me must be 1 to 64",
            ));
        }
        if self.refresh < Duration::from_secs(60) {
            return Err(SectionError::new(
                "refresh",
                "refresh must be at least 1m (Telegram's list changes rarely)",
            ));
        }
        for (key, url) in [
            ("config_url", &self.config_url),
            ("config_url_v6", &self.config_url_v6),
            ("secret_url", &self.secret_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(SectionError::new(
                    key,
                    format!("`{url}` is not an http(s) URL"),
                ));
            }
        }
        Ok(())
    }
}

fn default_config_url() -> String {
    "https://core.telegram.org/getProxyConfig".to_owned()
}
fn default_config_url_v6() -> String {
    "https://core.telegram.org/getProxyConfigV6".to_owned()
}
fn default_secret_url() -> String {
    "https://core.telegram.org/getProxySecret".to_owned()
}
fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}
fn default_connections_per_me() -> u16 {
    2
}

/// An optional ad tag (`"…32 hex digits…"`).
pub(super) fn optional_ad_tag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AdTag>, D::Error> {
    from_str(d).map(Some)
}

fn optional_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    from_str(d).map(Some)
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            default_dc: default_dc(),
            connect_timeout_secs: default_connect_timeout(),
            prefer_ipv6: false,
            fast_mode: true,
            dc: BTreeMap::new(),
            mode: None,
            ad_tag: None,
            middle: Middle::default(),
            socks5: None,
            socks5_username: None,
            socks5_password_file: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "0123456789abcdef0123456789abcdef";
    const SERVER: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\n";

    fn parse(rest: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        super::super::tests::parse(&format!("{SERVER}{rest}"))
    }

    #[test]
    fn an_ad_tag_alone_chooses_middle_mode() {
        let c = parse(&format!("[upstream]\nad_tag = \"{TAG}\"\n")).expect("valid");
        assert_eq!(c.upstream.effective_mode(), UpstreamMode::Middle);
        assert_eq!(
            c.upstream.ad_tag.map(|t| t.to_string()),
            Some(TAG.to_owned())
        );
        let direct = parse("").expect("valid");
        assert_eq!(direct.upstream.effective_mode(), UpstreamMode::Direct);
        assert_eq!(direct.upstream.middle, Middle::default());
    }

    #[test]
    fn a_tag_in_direct_mode_is_refused_where_it_is_written() {
        let err = parse(&format!(
            "[upstream]\nmode = \"direct\"\nad_tag = \"{TAG}\"\n"
        ))
        .expect_err("never shown");
        assert!(
            err.to_string()
                .contains("only shown through middle proxies"),
            "{err}"
        );
        assert!(err.to_string().contains(":5:"), "{err}");
        let user_tag = format!(
            "[upstream]\nmode = \"direct\"\n\n[[users]]\nname = \"a\"\n\
             secret = \"11111111111111111111111111111111\"\nad_tag = \"{TAG}\"\n"
        );
        assert!(parse(&user_tag).is_err());
    }

    #[test]
    fn socks5_settings_are_read_and_checked() {
        let c = parse(
            "[upstream]\nsocks5 = \"[::1]:1080\"\nsocks5_username = \"u\"\n\
             socks5_password_file = \"/etc/relay/socks5\"\n",
        )
        .expect("valid");
        assert_eq!(c.upstream.socks5.as_deref(), Some("[::1]:1080"));
        assert!(parse("[upstream]\nsocks5 = \"proxy.example:1080\"\n").is_ok());
        for (text, needle) in [
            (
                "[upstream]\nsocks5 = \"127.0.0.1:1080\"\nmode = \"middle\"\n",
                "middle mode cannot go through socks5 because the middle proxies' key \
                 derivation binds real addresses",
            ),
            (
                &format!("[upstream]\nsocks5 = \"127.0.0.1:1080\"\nad_tag = \"{TAG}\"\n"),
                "middle mode cannot go through socks5",
            ),
            (
                "[upstream]\nsocks5 = \"127.0.0.1:1080\"\nsocks5_username = \"u\"\n",
                "go together",
            ),
            (
                "[upstream]\nsocks5 = \"127.0.0.1:1080\"\nsocks5_password_file = \"/p\"\n",
                "go together",
            ),
            (
                "[upstream]\nsocks5_username = \"u\"\nsocks5_password_file = \"/p\"\n",
                "only used with",
            ),
            ("[upstream]\nsocks5 = \"127.0.0.1\"\n", "host:port"),
            ("[upstream]\nsocks5 = \"::1:1080\"\n", "host:port"),
            ("[upstream]\nsocks5 = \"h:0\"\n", "host:port"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                err.to_string().to_lowercase().contains(needle),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn bad_middle_settings_are_refused() {
        for (text, needle) in [
            ("[upstream]\nad_tag = \"0123\"\n", "32 hex digits"),
            (
                "[upstream.middle]\nconnections_per_me = 0\n",
                "connections_per_me",
            ),
            ("[upstream.middle]\nrefresh = \"5s\"\n", "at least 1m"),
            (
                "[upstream.middle]\nconfig_url = \"ftp://x\"\n",
                "http(s) url",
            ),
            (
                "[upstream.middle]\npublic_ipv4 = \"not an ip\"\n",
                "invalid",
            ),
            ("[upstream]\nmode = \"relay\"\n", "unknown variant"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                err.to_string().to_lowercase().contains(needle),
                "{text}: {err}"
            );
        }
    }
}
