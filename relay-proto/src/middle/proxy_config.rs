//! Telegram's middle-proxy list (`getProxyConfig`, `getProxyConfigV6`): statements ending in
//! `;`, `#` comments to the end of a line.
//!
//! ```text
//! # force_probability 10 10
//! default 2;
//! proxy_for 1 149.154.175.50:8888;
//! proxy_for -1 149.154.175.50:8888;
//! proxy_for 2 [2001:67c:4e8:f002::d]:80;
//! ```
//!
//! A negative DC id is that DC's media cluster. Statements other than `proxy_for` and
//! `default` are skipped, so a new directive from Telegram does not make the list unusable.

use std::{collections::BTreeMap, net::SocketAddr};

/// Why a config text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyConfigError {
    /// A `proxy_for` or `default` statement that does not parse.
    #[error("statement {index} ({text:?}): {reason}")]
    Statement {
        /// 1-based position of the statement.
        index: usize,
        /// The statement, trimmed and cut to 80 characters.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No `proxy_for` statement at all: a config that parses to nothing is never applied.
    #[error("no proxy_for statement")]
    Empty,
}

/// Middle proxies by DC id, in the order the config lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The DC used for ids the config does not list.
    pub default_dc: Option<i16>,
    /// Middle proxies per DC id (negative: media).
    pub dcs: BTreeMap<i16, Vec<SocketAddr>>,
}

impl ProxyConfig {
    /// Parses a config text. An empty result is an error.
    pub fn parse(text: &str) -> Result<ProxyConfig, ProxyConfigError> {
        let mut config = ProxyConfig::default();
        let without_comments: String = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        for (i, statement) in without_comments.split(';').enumerate() {
            let words: Vec<&str> = statement.split_whitespace().collect();
            let bad = |reason| ProxyConfigError::Statement {
                index: i + 1,
                text: statement.trim().chars().take(80).collect(),
                reason,
            };
            match words.as_slice() {
                [] => {}
                ["proxy_for", dc, addr] => {
                    let dc: i16 = dc.parse().map_err(|_| bad("DC id is not a number"))?;
                    if dc == 0 {
                        return Err(bad("DC id 0"));
                    }
                    let addr: SocketAddr = addr.parse().map_err(|_| bad("not an address:port"))?;
                    if addr.port() == 0 || addr.ip().is_unspecified() {
                        return Err(bad("unusable address"));
                    }
                    let list = config.dcs.entry(dc).or_default();
                    if !list.contains(&addr) {
                        list.push(addr);
                    }
                }
                ["proxy_for", ..] => return Err(bad("expected: proxy_for <dc> <addr:port>")),
                ["default", dc] => {
                    config.default_dc = Some(dc.parse().map_err(|_| bad("DC id is not a number"))?);
                }
                ["default", ..] => return Err(bad("expected: default <dc>")),
                _ => {}
            }
        }
        if config.dcs.is_empty() {
            return Err(ProxyConfigError::Empty);
        }
        Ok(config)
    }

    /// Middle proxies for `dc`: its own, else its DC's for a media id, else the default DC's.
    pub fn addrs(&self, dc: i16) -> Option<(i16, &[SocketAddr])> {
        [Some(dc), Some(dc.saturating_abs()), self.default_dc]
            .into_iter()
            .flatten()
            .find_map(|id| {
                self.dcs
                    .get(&id)
                    .filter(|a| !a.is_empty())
                    .map(|a| (id, a.as_slice()))
            })
    }

    /// Every listed address once, in DC order.
    pub fn all_addrs(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for addr in self.dcs.values().flatten() {
            if !out.contains(addr) {
                out.push(*addr);
            }
        }
        out
    }

    /// Adds the entries of `other` (the IPv6 list) after this one's.
    pub fn merge(&mut self, other: ProxyConfig) {
        for (dc, addrs) in other.dcs {
            let list = self.dcs.entry(dc).or_default();
            for addr in addrs {
                if !list.contains(&addr) {
                    list.push(addr);
                }
            }
        }
        self.default_dc = self.default_dc.or(other.default_dc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# force_probability 10 10\n\
        default 2;\n\
        proxy_for 1 149.154.175.50:8888;\n\
        proxy_for -1 149.154.175.50:8888;\n\
        proxy_for 2 149.154.161.144:8888;\n\
        proxy_for 2 149.154.161.145:8888; # second\n\
        proxy_for 4 [2001:67c:4e8:f004::d]:8888;\n\
        timeout 5000;\n";

    #[test]
    fn parses_dcs_media_default_and_ipv6() {
        let c = ProxyConfig::parse(TEXT).expect("valid");
        assert_eq!(c.default_dc, Some(2));
        assert_eq!(c.dcs.len(), 4);
        assert_eq!(c.dcs[&2].len(), 2);
        assert_eq!(
            c.dcs[&4][0],
            "[2001:67c:4e8:f004::d]:8888"
                .parse::<SocketAddr>()
                .expect("v6")
        );
        assert_eq!(c.addrs(-1).map(|(id, _)| id), Some(-1));
    }

    #[test]
    fn media_falls_back_to_its_dc_and_unknown_to_the_default() {
        let c = ProxyConfig::parse(TEXT).expect("valid");
        assert_eq!(c.addrs(-2).map(|(id, _)| id), Some(2));
        assert_eq!(c.addrs(5).map(|(id, _)| id), Some(2));
        let no_default = ProxyConfig::parse("proxy_for 1 1.2.3.4:8888;").expect("valid");
        assert!(no_default.addrs(5).is_none());
    }

    #[test]
    fn refuses_what_parses_to_nothing() {
        assert_eq!(ProxyConfig::parse(""), Err(ProxyConfigError::Empty));
        assert_eq!(
            ProxyConfig::parse("<html>503</html>"),
            Err(ProxyConfigError::Empty)
        );
        assert_eq!(
            ProxyConfig::parse("default 2;"),
            Err(ProxyConfigError::Empty)
        );
    }

    #[test]
    fn refuses_malformed_statements() {
        for bad in [
            "proxy_for x 1.2.3.4:8888;",
            "proxy_for 1 1.2.3.4;",
            "proxy_for 1 1.2.3.4:0;",
            "proxy_for 0 1.2.3.4:8888;",
            "proxy_for 1;",
            "default two;",
        ] {
            assert!(
                matches!(
                    ProxyConfig::parse(bad),
                    Err(ProxyConfigError::Statement { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn merge_keeps_order_and_drops_duplicates() {
        let mut v4 = ProxyConfig::parse("default 2; proxy_for 2 1.1.1.1:8888;").expect("v4");
        let v6 =
            ProxyConfig::parse("proxy_for 2 [::2]:8888; proxy_for 2 1.1.1.1:8888;").expect("v6");
        v4.merge(v6);
        assert_eq!(v4.dcs[&2].len(), 2);
        assert!(v4.dcs[&2][0].is_ipv4());
        assert_eq!(v4.all_addrs().len(), 2);
    }
}
