//! `[[users]]`: who may use the relay, with their secrets and limits.

use std::{collections::HashSet, num::NonZeroU32};

use relay_proto::Secret;
use serde::Deserialize;

use super::{
    SectionError,
    serde_helpers::{byte_size, from_str, rfc3339, yes},
};

/// `[[users]]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Name shown in logs, metrics and the CLI.
    pub name: String,
    /// 32 hex digits.
    #[serde(deserialize_with = "from_str")]
    pub secret: Secret,
    /// Off: new connections are refused.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Concurrent connections.
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// Distinct client addresses within `[server] unique_ips_window_secs`.
    #[serde(default)]
    pub max_unique_ips: Option<u64>,
    /// Bytes in both directions, all time (persisted): `10737418240` or `"10GiB"`.
    #[serde(default, deserialize_with = "byte_size")]
    pub quota: Option<u64>,
    /// No new connections after this time (RFC 3339, e.g. `"2027-01-01T00:00:00Z"`).
    #[serde(default, deserialize_with = "rfc3339")]
    pub expires: Option<std::time::SystemTime>,
    /// New connections per unit of time from all sources (`"20/s"`); off by default.
    #[serde(default)]
    pub connection_rate: Option<crate::rate::Rate>,
    /// New connections admitted at once under `connection_rate`; default its count.
    #[serde(default)]
    pub connection_burst: Option<NonZeroU32>,
    /// This user's promoted channel, instead of `[upstream] ad_tag` (middle mode only).
    #[serde(default, deserialize_with = "super::upstream::optional_ad_tag")]
    pub ad_tag: Option<relay_proto::middle::AdTag>,
}

/// Checks what serde cannot: names are plain words, and names and secrets are unique.
pub(super) fn validate(users: &[User]) -> Result<(), SectionError> {
    let mut names = HashSet::new();
    let mut secrets = HashSet::new();
    for user in users {
        let valid = !user.name.is_empty()
            && user
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if !valid {
            return Err(SectionError::new(
                "name",
                format!(
                    "user name `{}` must be non-empty letters, digits, - _ . @",
                    user.name
                ),
            ));
        }
        if !names.insert(user.name.as_str()) {
            return Err(SectionError::new(
                "name",
                format!("user `{}` is listed twice", user.name),
            ));
        }
        if user.connection_burst.is_some() && user.connection_rate.is_none() {
            return Err(SectionError::new(
                "connection_burst",
                format!(
                    "user `{}`: connection_burst needs connection_rate",
                    user.name
                ),
            ));
        }
        if !secrets.insert(*user.secret.as_bytes()) {
            return Err(SectionError::new(
                "secret",
                format!("user `{}` reuses another user's secret", user.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{expect_invalid, parse};

    #[test]
    fn user_limits_parse() {
        let config = parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"alice\"\nsecret = \"00112233445566778899aabbccddeeff\"\nmax_connections = 4\nmax_unique_ips = 2\nquota = \"1GiB\"\nexpires = \"2030-01-01T00:00:00Z\"\n[[users]]\nname = \"bob\"\nsecret = \"ffeeddccbbaa99887766554433221100\"\nquota = 1000\nenabled = false\n",
        )
        .expect("valid");
        let alice = &config.users[0];
        assert_eq!(alice.max_connections, Some(4));
        assert_eq!(alice.quota, Some(1 << 30));
        assert!(alice.expires.is_some());
        let bob = &config.users[1];
        assert_eq!(bob.quota, Some(1000));
        assert!(!bob.enabled);
    }

    #[test]
    fn bad_quota_and_expiry_are_reported_with_lines() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\nquota = \"lots\"\n",
            6,
            "lots",
        );
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\nexpires = \"next week\"\n",
            6,
            "RFC 3339",
        );
    }

    #[test]
    fn duplicate_users_are_rejected() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\n[[users]]\nname = \"a\"\nsecret = \"ffeeddccbbaa99887766554433221100\"\n",
            4,
            "twice",
        );
    }

    #[test]
    fn connection_rate_parses_with_an_optional_burst() {
        const USER: &str = "[server]\nlisten = [\"127.0.0.1:1\"]\n[[users]]\nname = \"a\"\nsecret = \"00112233445566778899aabbccddeeff\"\n";
        let user = |text: &str| parse(text).expect("valid").users[0].clone();
        assert_eq!(user(USER).connection_rate, None, "off by default");
        let set = user(&format!(
            "{USER}connection_rate = \"20/s\"\nconnection_burst = 40\n"
        ));
        assert_eq!(
            set.connection_rate.map(|r| r.to_string()),
            Some("20/s".to_owned())
        );
        assert_eq!(set.connection_burst.map(|b| b.get()), Some(40));
        expect_invalid(&format!("{USER}connection_rate = \"fast\"\n"), 6, "fast");
        expect_invalid(
            &format!("{USER}connection_burst = 3\n"),
            6,
            "needs connection_rate",
        );
    }
}
