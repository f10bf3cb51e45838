//! `[server]`: the listening sockets and what clients may do on them.

use std::net::SocketAddr;

use relay_proto::{Mode, ModeSet};
use serde::{Deserialize, Deserializer};

use super::{Cidr, SectionError, serde_helpers::non_empty};

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
    /// PROXY protocol from a load balancer in front: `"off"`, `"v1"`, `"v2"` or `"any"`.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Peers whose PROXY header is believed (the balancers); with `proxy_protocol` on, they
    /// must send one, and everyone else is closed.
    #[serde(default)]
    pub trusted: Vec<Cidr>,
    /// How long a trusted peer has to send its whole PROXY header, milliseconds.
    #[serde(default = "default_proxy_protocol_timeout_ms")]
    pub proxy_protocol_timeout_ms: u64,
    /// How bytes relayed unchanged (fast mode's DC → client direction, both directions of
    /// fronted connections) move: `"auto"` with the sockmap program where the kernel allows
    /// it (toward the client only), else `splice(2)`; `"splice"` never uses the program;
    /// `"copy"` reads and writes them like every other byte (for comparison and
    /// troubleshooting).
    #[serde(default)]
    pub passthrough: PassthroughMode,
}

/// See [`Server::passthrough`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PassthroughMode {
    /// The sockmap program where it loads, `splice(2)` elsewhere.
    #[default]
    Auto,
    /// `splice(2)` for bulk transfers, plain copies for short ones.
    Splice,
    /// Plain copies only.
    Copy,
}

/// See [`Server::proxy_protocol`].
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Clients connect directly.
    #[default]
    Off,
    /// Text headers only.
    V1,
    /// Binary headers only.
    V2,
    /// Either.
    Any,
}

impl Server {
    /// What an operator must know when clients arrive through balancers: the kernel sees
    /// only the balancers' addresses.
    pub fn balancer_note(&self) -> Option<String> {
        self.proxy_protocol.accept()?;
        let trusted: Vec<String> = self.trusted.iter().map(|c| c.0.to_string()).collect();
        Some(format!(
            "PROXY protocol from {}: XDP sees only these balancers (allowlisted there); their \
             clients' lists, bans and SYN budget are enforced in userspace after each header",
            trusted.join(", ")
        ))
    }
}

impl ProxyProtocol {
    /// The versions accepted, `None` when off.
    pub fn accept(self) -> Option<relay_proto::proxy_header::Accept> {
        use relay_proto::proxy_header::Accept;
        match self {
            ProxyProtocol::Off => None,
            ProxyProtocol::V1 => Some(Accept::V1),
            ProxyProtocol::V2 => Some(Accept::V2),
            ProxyProtocol::Any => Some(Accept::Any),
        }
    }
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
        if self.proxy_protocol != ProxyProtocol::Off && self.trusted.is_empty() {
            return Err(SectionError::new(
                "proxy_protocol",
                "proxy_protocol needs `trusted`: the balancers whose headers are believed \
                 (anyone else could claim any address)",
            ));
        }
        if !(100..=60_000).contains(&self.proxy_protocol_timeout_ms) {
            return Err(SectionError::new(
                "proxy_protocol_timeout_ms",
                "proxy_protocol_timeout_ms must be 100 to 60000",
            ));
        }
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

fn default_proxy_protocol_timeout_ms() -> u64 {
    3000
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
    fn proxy_protocol_needs_trusted_peers() {
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nproxy_protocol = \"any\"\n",
            3,
            "needs `trusted`",
        );
        expect_invalid(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nproxy_protocol = \"v3\"\n",
            3,
            "unknown variant",
        );
        let ok = crate::config::tests::parse(
            "[server]\nlisten = [\"127.0.0.1:1\"]\nproxy_protocol = \"v2\"\n\
             trusted = [\"10.0.0.0/8\"]\n",
        )
        .expect("valid");
        assert_eq!(ok.server.proxy_protocol, super::ProxyProtocol::V2);
        assert_eq!(ok.server.trusted.len(), 1);
    }

    #[test]
    fn empty_listen_is_rejected() {
        expect_invalid("[server]\nlisten = []\n", 2, "at least one");
    }
}
