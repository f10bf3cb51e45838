//! Everything a connection needs from the configuration, prepared once.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::pump::Offload;
use super::{
    accounts::{Account, Accounts, Limits},
    hints::Hints,
    mask_flight::MaskFlight,
    mask_target::MaskTarget,
    stats::RelayStats,
};
use crate::{
    admission::misuse::Misuse,
    config::{Config, OnLimit, PassthroughMode},
    middle::MiddleEnd,
    passage::Passage,
};
use relay_proto::{ModeSet, Secret, middle::AdTag, replay::ReplayMemory, tls::HelloKey};

/// A user as the relay sees it.
#[derive(Debug, Clone)]
pub struct RelayUser {
    /// Name for logs and metrics.
    pub name: String,
    /// The 16-byte secret.
    pub secret: Secret,
}

/// Shared, read-mostly state of the relay. `M` opens mask connections: the configured
/// [`MaskTarget`] in the daemon, an in-memory mask in unit tests.
pub struct RelayContext<M = Arc<MaskTarget>> {
    /// Users, in config order; handshakes report matches by index.
    pub users: Vec<RelayUser>,
    /// The same secrets in the same order, as the protocol functions take them.
    pub secrets: Vec<Secret>,
    /// The same secrets prepared for ClientHello checks (HMAC pads absorbed once here).
    pub hello_keys: Vec<HelloKey>,
    /// The user each source matched last, tried first (shared across reloads, cleared by
    /// them).
    pub hints: Arc<Hints>,
    /// Enabled client modes.
    pub modes: ModeSet,
    /// SNI fake-TLS clients must send.
    pub tls_domain: String,
    /// Accepted ClientHello clock skew.
    pub time_skew_secs: u64,
    /// Accept ClientHello timestamps that count time since boot (`[tls] accept_uptime_clock`).
    pub accept_uptime_clock: bool,
    /// Where failed connections go, if fronting is on.
    pub mask: Option<M>,
    /// DC address overrides.
    pub dc_overrides: BTreeMap<i16, Vec<SocketAddr>>,
    /// DC for unknown ids.
    pub default_dc: i16,
    /// Try IPv6 DC addresses first.
    pub prefer_ipv6: bool,
    /// DC→client without AES.
    pub fast_mode: bool,
    /// Limit for connecting to a DC or the mask host.
    pub connect_timeout: Duration,
    /// Limit for a client's whole handshake.
    pub handshake_timeout: Duration,
    /// How long a client may be quiet short of a whole handshake before the mask host gets a
    /// connection carrying its bytes.
    pub mask_grace: Duration,
    /// Limit for a relayed pair with no traffic.
    pub idle_timeout: Duration,
    /// Each user's account, same order as `users`.
    pub accounts: Vec<Arc<Account>>,
    /// Window for `max_unique_ips`.
    pub unique_ips_window: Duration,
    /// What a connection refused by a user limit gets.
    pub on_limit: OnLimit,
    /// Handshake keys seen (shared across reloads, kept in the state dir).
    pub replay: Arc<Mutex<ReplayMemory>>,
    /// Counts failures and bans sources.
    pub misuse: Arc<Misuse>,
    /// Relay-wide counters (shared across reloads).
    pub stats: Arc<RelayStats>,
    /// The shape of fake-TLS server flights, learned from the mask (shared across reloads).
    pub flight: Arc<MaskFlight>,
    /// The middle-proxy leg, in middle mode (set by the daemon).
    pub middle: Option<Arc<MiddleEnd>>,
    /// Each user's ad tag (its own, else `[upstream] ad_tag`), same order as `users`.
    pub ad_tags: Vec<Option<AdTag>>,
    /// The SOCKS5 proxy DC connections go through (set by the daemon, which read its
    /// password at start).
    pub socks5: Option<Arc<super::upstream::Socks5Upstream>>,
    /// PROXY headers from balancers (`[server] proxy_protocol`), when on.
    pub proxy_in: Option<ProxyIn>,
    /// The PROXY header version fronted connections start with (`[tls] mask_proxy_protocol`).
    pub mask_proxy: Option<relay_proto::proxy_header::Version>,
    /// `[server] passthrough`.
    pub passthrough: PassthroughMode,
    /// The sockmap program, when loaded (set by the daemon).
    pub passage: Option<Arc<Passage>>,
}

/// What `[server] proxy_protocol` accepts, and from whom.
#[derive(Debug, Clone)]
pub struct ProxyIn {
    /// Versions accepted.
    pub accept: relay_proto::proxy_header::Accept,
    /// Peers whose headers are believed.
    pub trusted: Vec<ipnet::IpNet>,
    /// Time a trusted peer has for its whole header.
    pub timeout: Duration,
}

impl ProxyIn {
    fn new(server: &crate::config::Server) -> Option<ProxyIn> {
        Some(ProxyIn {
            accept: server.proxy_protocol.accept()?,
            trusted: server.trusted.iter().map(|c| c.0).collect(),
            timeout: Duration::from_millis(server.proxy_protocol_timeout_ms),
        })
    }

    /// Whether `peer` may send a header.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

impl RelayContext {
    /// Builds the context from a validated config and the resolved users. `accounts`,
    /// `replay`, `hints` and `flight` carry over from the previous context on reload (the
    /// caller clears `hints` when it reloads: user indices may mean other users).
    // The shared parts are passed one by one: each outlives reloads for its own reason.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        users: Vec<RelayUser>,
        accounts: &Accounts,
        replay: Arc<Mutex<ReplayMemory>>,
        hints: Arc<Hints>,
        misuse: Arc<Misuse>,
        stats: Arc<RelayStats>,
        flight: Arc<MaskFlight>,
    ) -> RelayContext {
        let time_skew_secs = u64::from(config.tls.time_skew_secs);
        let limits: std::collections::HashMap<&str, _> = config
            .users
            .iter()
            .map(|u| (u.name.as_str(), Limits::from(u)))
            .collect();
        let accounts: Vec<Arc<Account>> = users
            .iter()
            .map(|u| {
                accounts.upsert(
                    &u.name,
                    limits.get(u.name.as_str()).cloned().unwrap_or_default(),
                )
            })
            .collect();
        let ad_tags = users
            .iter()
            .map(|u| {
                config
                    .users
                    .iter()
                    .find(|c| c.name == u.name)
                    .and_then(|c| c.ad_tag)
                    .or(config.upstream.ad_tag)
            })
            .collect();
        RelayContext {
            passthrough: config.server.passthrough,
            passage: None,
            middle: None,
            socks5: None,
            ad_tags,
            proxy_in: ProxyIn::new(&config.server),
            mask_proxy: config.tls.mask_proxy_protocol.version(),
            accounts,
            unique_ips_window: Duration::from_secs(config.server.unique_ips_window_secs),
            on_limit: config.server.on_limit,
            secrets: users.iter().map(|u| u.secret.clone()).collect(),
            hello_keys: users.iter().map(|u| HelloKey::new(&u.secret)).collect(),
            hints,
            users,
            modes: config.server.modes,
            tls_domain: config.tls.domain.clone(),
            time_skew_secs,
            accept_uptime_clock: config.tls.accept_uptime_clock,
            mask: config
                .tls
                .fronting
                .then(|| MaskTarget::new(config.tls.mask_target())),
            dc_overrides: config.upstream.dc.clone(),
            default_dc: config.upstream.default_dc,
            prefer_ipv6: config.upstream.prefer_ipv6,
            fast_mode: config.upstream.fast_mode,
            connect_timeout: Duration::from_secs(config.upstream.connect_timeout_secs),
            handshake_timeout: Duration::from_secs(config.timeouts.handshake_secs),
            mask_grace: Duration::from_millis(config.timeouts.mask_grace_ms),
            idle_timeout: Duration::from_secs(config.timeouts.idle_secs),
            replay,
            misuse,
            stats,
            flight,
        }
    }
}

impl<M> RelayContext<M> {
    /// How passthrough directions move their bytes.
    pub fn offload(&self) -> Offload<'_> {
        Offload {
            passage: self.passage.as_deref(),
            copy_only: self.passthrough == PassthroughMode::Copy,
            stats: Some(&self.stats),
        }
    }

    /// What a mask connection for `client` starts with: a PROXY header naming it, with
    /// `[tls] mask_proxy_protocol`; nothing otherwise. `local` (a system call) is asked only
    /// then.
    pub fn mask_preamble(
        &self,
        client: SocketAddr,
        local: impl FnOnce() -> Option<SocketAddr>,
    ) -> Vec<u8> {
        match self.mask_proxy {
            Some(version) => relay_proto::proxy_header::encode(
                version,
                client,
                local().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
impl<M> RelayContext<M> {
    /// The same context with another mask dialer.
    pub fn with_mask<N>(self, mask: Option<N>) -> RelayContext<N> {
        RelayContext {
            users: self.users,
            secrets: self.secrets,
            hello_keys: self.hello_keys,
            hints: self.hints,
            modes: self.modes,
            tls_domain: self.tls_domain,
            time_skew_secs: self.time_skew_secs,
            accept_uptime_clock: self.accept_uptime_clock,
            mask,
            dc_overrides: self.dc_overrides,
            default_dc: self.default_dc,
            prefer_ipv6: self.prefer_ipv6,
            fast_mode: self.fast_mode,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            mask_grace: self.mask_grace,
            idle_timeout: self.idle_timeout,
            accounts: self.accounts,
            unique_ips_window: self.unique_ips_window,
            on_limit: self.on_limit,
            replay: self.replay,
            misuse: self.misuse,
            stats: self.stats,
            flight: self.flight,
            middle: self.middle,
            ad_tags: self.ad_tags,
            proxy_in: self.proxy_in,
            mask_proxy: self.mask_proxy,
            socks5: self.socks5,
            passthrough: self.passthrough,
            passage: self.passage,
        }
    }
}
