//! `[server]`: the listening sockets and what clients may do on them.

use std::net::SocketAddr;

use relay_proto::{Mode, ModeSet};
use serde::{Deserialize, Deserializer};

use super::{SectionError, serde_helpers::non_empty};

/// `[server]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Addresses to accept clients on.
    #[serde(deserialize_with = "non_empty")]
    pub listen: Vec<SocketAddr>,
    /// Enabled client modes: "classic" (plain obfuscated2), "secure" (dd), "tls" (ee).
    #[serde(default = "default_modes", deserialize_with = "modes")]
    pub modes: ModeSet,
    /// Host name or address clients use in links; default: guessed from the listen addresses.
    #[serde(default)]
    pub public_host: Option<String>,
    /// Window for users' `max_unique_ips`, seconds.
    #[serde(default = "default_unique_ips_window")]
    pub unique_ips_window_secs: u64,
    /// What a connection refused by a user limit gets: `"close"` or `"front"` (to the mask;
    /// only possible for obfuscated2, as a fake-TLS client has already been answered).
    #[serde(default)]
    pub on_limit: OnLimit,
    /// After start-up (XDP loaded, ports bound), become this user, keeping only CAP_BPF and
    /// CAP_NET_ADMIN. Unset: stay as started (e.g. systemd's `User=` already did it).
    #[serde(default)]
    pub user: Option<String>,
    /// Group for `user`; default: the user's primary group.
    #[serde(default)]
    pub group: Option<String>,
    /// On SIGTERM, how long open connections may finish before the process exits, seconds.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
}

/// See [`Server::on_limit`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// Close the connection.
    #[default]
    Close,
    /// Hand it to the mask host.
    Front,
}

impl Server {
    /// Distinct TCP ports the relay listens on, in order.
    pub fn listen_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.listen.iter().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Checks what serde cannot: the kernel's port table has a fixed size.
    pub(super) fn validate(&self) -> Result<(), SectionError> {
        if self.listen_ports().len() > relay_common::maps::MAX_LISTEN_PORTS as usize {
            return Err(SectionError::new(
                "listen",
                format!(
                    "at most {} distinct listen ports are supported",
                    relay_common::maps::MAX_LISTEN_PORTS
                ),
            ));
        }
        Ok(())
    }
}

fn default_drain_secs() -> u64 {
    10
}

fn default_unique_ips_window() -> u64 {
    600
}

fn default_modes() -> ModeSet {
    ModeSet::DEFAULT
}

/// `modes = ["tls", ...]`: at least one known mode.
fn modes<'de, D: Deserializer<'de>>(d: D) -> Result<ModeSet, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    let mut set = ModeSet::EMPTY;
    for name in names {
        let mode: Mode = name.parse().map_err(serde::de::Error::custom)?;
        set = set.with(mode);
    }
    if set.is_empty() {
        return Err(serde::de::Error::custom(
            "modes must enable at least one of \"classic\", \"secure\", \"tls\"",
        ));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use crate::config::tests::expect_invalid;

    #[test]
    fn bad_listen_address() {
        expect_invalid("[server]\nlisten = [\"localhost\"]\n", 2, "socket address");
    }

    #[test]
    fn empty_listen_is_rejected() {
        expect_invalid("[server]\nlisten = []\n", 2, "at least one");
    }
}
