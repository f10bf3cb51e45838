//! `[crowdsec]`: a CrowdSec Local API to take bans from and publish bans to.

use std::{fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{HttpUrl, SectionError, serde_helpers::duration};

/// `[crowdsec]`: relay as a CrowdSec bouncer (decisions into the XDP maps) and, with a machine
/// login, as a signal source (its own bans published as alerts).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CrowdSec {
    /// Base URL of the LAPI, `http://127.0.0.1:8080` or `https://lapi.example.org:8080`.
    pub lapi_url: String,
    /// This relay's bouncer key (`cscli bouncers add NAME`); one key per relay, as the LAPI
    /// tracks each key's position in the stream.
    #[serde(default)]
    pub bouncer_key: Option<Redacted>,
    /// A file holding the bouncer key instead (first line).
    #[serde(default)]
    pub bouncer_key_file: Option<PathBuf>,
    /// Time between incremental pulls of the decision stream.
    #[serde(default = "default_poll_interval", deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Time between full pulls, which also drop decisions the LAPI deleted without telling.
    #[serde(default = "default_resync", deserialize_with = "duration")]
    pub resync: Duration,
    /// Only decisions of these origins (`crowdsec`, `cscli`, `CAPI`, `lists`, `relay`...);
    /// empty: all.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Machine name for publishing (`cscli machines add NAME --password ...`); unset: relay
    /// only pulls.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// The machine's password.
    #[serde(default)]
    pub password: Option<Redacted>,
    /// A file holding the password instead (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificate(s) to trust for an `https` LAPI; default: the system bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Longest time one LAPI request may take.
    #[serde(default = "default_crowdsec_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Shortest prefix length of an IPv4 `Range` decision: a wider range is rejected (a
    /// `0.0.0.0/0` decision would otherwise drop every client).
    #[serde(default = "default_max_range_v4")]
    pub max_range_v4: u8,
    /// The same for IPv6 ranges.
    #[serde(default = "default_max_range_v6")]
    pub max_range_v6: u8,
    /// Most decisions one pull may carry (`new` and `deleted` together); a larger pull is
    /// refused whole and the decisions in force stay.
    #[serde(default = "default_max_decisions")]
    pub max_decisions: usize,
    /// Largest pull answer in bytes, read incrementally and refused once it passes this.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Allow a plain `http://` `lapi_url` that is not loopback: the bouncer key and the
    /// machine password then cross the network in clear.
    #[serde(default)]
    pub allow_insecure: bool,
}

/// A secret from the config file: its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::ops::Deref for Redacted {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_resync() -> Duration {
    Duration::from_secs(3600)
}
fn default_crowdsec_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_range_v4() -> u8 {
    8
}
fn default_max_range_v6() -> u8 {
    32
}
/// A startup pull holds every active decision and the expired ones the LAPI still keeps:
/// 100,000 of each with community lists is a plausible fleet.
fn default_max_decisions() -> usize {
    500_000
}
/// About 141 bytes per decision in 1.4.6's stream: 500,000 are about 70 MB.
fn default_max_body_bytes() -> usize {
    128 << 20
}

impl CrowdSec {
    /// Checks what serde cannot; the error names the key to point at.
    pub(super) fn validate(&self) -> Result<(), SectionError> {
        let url = HttpUrl::parse(&self.lapi_url)
            .map_err(|e| SectionError::new("lapi_url", format!("[crowdsec] lapi_url {e}")))?;
        if !url.tls && !url.is_loopback() && !self.allow_insecure {
            return Err(SectionError::new(
                "lapi_url",
                format!(
                    "[crowdsec] lapi_url `{}` is plain http to a host that is not loopback: the \
                     bouncer key and machine password would cross the network in clear; use \
                     https:// (with ca_file for a private CA), or set allow_insecure = true for a \
                     link you trust",
                    self.lapi_url
                ),
            ));
        }
        if self.max_range_v4 > 32 {
            return Err(SectionError::new(
                "max_range_v4",
                "[crowdsec] max_range_v4 is a prefix length, 0 to 32",
            ));
        }
        if self.max_range_v6 > 128 {
            return Err(SectionError::new(
                "max_range_v6",
                "[crowdsec] max_range_v6 is a prefix length, 0 to 128",
            ));
        }
        if self.max_decisions == 0 {
            return Err(SectionError::new(
                "max_decisions",
                "[crowdsec] max_decisions must be at least 1",
            ));
        }
        if self.max_body_bytes < 4096 {
            return Err(SectionError::new(
                "max_body_bytes",
                "[crowdsec] max_body_bytes must be at least 4096",
            ));
        }
        if self.bouncer_key.is_some() == self.bouncer_key_file.is_some() {
            return Err(SectionError::new(
                "bouncer_key",
                "[crowdsec] needs exactly one of bouncer_key and bouncer_key_file",
            ));
        }
        if self.bouncer_key.as_deref().is_some_and(str::is_empty) {
            return Err(SectionError::new(
                "bouncer_key",
                "[crowdsec] bouncer_key is empty",
            ));
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        if self.password.is_some() && self.password_file.is_some() {
            return Err(SectionError::new(
                "password",
                "[crowdsec] give password or password_file, not both",
            ));
        }
        if self.machine_id.is_some() != has_password {
            return Err(SectionError::new(
                "machine_id",
                "[crowdsec] machine_id and a password (or password_file) go together",
            ));
        }
        if self.machine_id.as_deref().is_some_and(str::is_empty) {
            return Err(SectionError::new(
                "machine_id",
                "[crowdsec] machine_id is empty",
            ));
        }
        if self.poll_interval < Duration::from_secs(1) {
            return Err(SectionError::new(
                "poll_interval",
                "[crowdsec] poll_interval must be at least 1s",
            ));
        }
        if self.resync < self.poll_interval {
            return Err(SectionError::new(
                "resync",
                "[crowdsec] resync must not be shorter than poll_interval",
            ));
        }
        if self.timeout < Duration::from_secs(1) {
            return Err(SectionError::new(
                "timeout",
                "[crowdsec] timeout must be at least 1s",
            ));
        }
        let word = |o: &String| {
            !o.is_empty()
                && o.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        };
        if !self.origins.iter().all(word) {
            return Err(SectionError::new(
                "origins",
                "[crowdsec] origins must be names like \"crowdsec\", \"cscli\", \"CAPI\"",
            ));
        }
        if self.ca_file.is_some() && !self.lapi_url.starts_with("https://") {
            return Err(SectionError::new(
                "ca_file",
                "[crowdsec] ca_file is only used with an https:// lapi_url",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{CS_BASE, expect_invalid, parse};

    #[test]
    fn crowdsec_is_off_unless_configured_and_has_defaults() {
        assert_eq!(
            parse("[server]\nlisten = [\"127.0.0.1:1\"]\n")
                .expect("valid")
                .crowdsec,
            None
        );
        let config = parse(&format!(
            "{CS_BASE}lapi_url = \"http://127.0.0.1:8080\"\nbouncer_key = \"k\"\n"
        ))
        .expect("valid");
        let cs = config.crowdsec.expect("crowdsec");
        assert_eq!(cs.poll_interval, std::time::Duration::from_secs(10));
        assert_eq!(cs.resync, std::time::Duration::from_secs(3600));
        assert_eq!(cs.machine_id, None);
        assert_eq!((cs.max_range_v4, cs.max_range_v6), (8, 32));
        assert_eq!((cs.max_decisions, cs.max_body_bytes), (500_000, 128 << 20));
        assert!(!cs.allow_insecure);
        assert!(
            !format!("{cs:?}").contains("\"k\""),
            "the key is not in Debug output"
        );
        let cs = parse(&format!(
            "{CS_BASE}lapi_url = \"https://lapi.example.org\"\nbouncer_key_file = \"/etc/relay/key\"\n\
             poll_interval = \"1s\"\nresync = 600\nmachine_id = \"relay-1\"\npassword_file = \"/p\"\n\
             ca_file = \"/etc/relay/ca.pem\"\norigins = [\"crowdsec\", \"lists:firehol\"]\n"
        ))
        .expect("valid")
        .crowdsec
        .expect("crowdsec");
        assert_eq!(cs.poll_interval, std::time::Duration::from_secs(1));
        assert_eq!(cs.resync, std::time::Duration::from_secs(600));
    }

    #[test]
    fn crowdsec_mistakes_are_named() {
        let url = "lapi_url = \"http://127.0.0.1:8080\"\n";
        for (body, line, message) in [
            (
                "lapi_url = \"127.0.0.1:8080\"\nbouncer_key = \"k\"\n",
                4,
                "http://",
            ),
            (url, 4, "exactly one of bouncer_key"),
            (
                &format!("{url}bouncer_key = \"k\"\nbouncer_key_file = \"/k\"\n") as &str,
                5,
                "exactly one",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\nmachine_id = \"m\"\n"),
                6,
                "go together",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\npassword = \"p\"\n"),
                4,
                "go together",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\npoll_interval = \"10 parsecs\"\n"),
                6,
                "duration",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\npoll_interval = \"10s\"\nresync = \"5s\"\n"),
                7,
                "resync",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\nca_file = \"/ca\"\n"),
                6,
                "https",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\norigins = [\"a b\"]\n"),
                6,
                "origins",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\nkey = 1\n"),
                6,
                "unknown field",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\nmax_range_v4 = 33\n"),
                6,
                "max_range_v4",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\nmax_range_v6 = 129\n"),
                6,
                "max_range_v6",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\nmax_decisions = 0\n"),
                6,
                "max_decisions",
            ),
            (
                &format!("{url}bouncer_key = \"k\"\nmax_body_bytes = 100\n"),
                6,
                "max_body_bytes",
            ),
        ] {
            expect_invalid(&format!("{CS_BASE}{body}"), line, message);
        }
    }

    #[test]
    fn plain_http_to_a_lapi_off_loopback_needs_allow_insecure() {
        for remote in [
            "http://10.0.0.5:8080",
            "http://lapi.example.org",
            "http://[2001:db8::1]:8080",
        ] {
            expect_invalid(
                &format!("{CS_BASE}lapi_url = \"{remote}\"\nbouncer_key = \"k\"\n"),
                4,
                "allow_insecure",
            );
            parse(&format!(
                "{CS_BASE}lapi_url = \"{remote}\"\nbouncer_key = \"k\"\nallow_insecure = true\n"
            ))
            .expect("allowed explicitly");
        }
        for local in [
            "http://127.0.0.1:8080",
            "http://127.0.0.53:8080",
            "http://[::1]:8080",
            "http://localhost:8080",
            "https://10.0.0.5:8080",
        ] {
            parse(&format!(
                "{CS_BASE}lapi_url = \"{local}\"\nbouncer_key = \"k\"\n"
            ))
            .expect(local);
        }
    }
}
