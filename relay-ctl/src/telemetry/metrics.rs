//! The table of every metric relay exports: name, kind, unit, help text, label names and,
//! for the counters kept as samples, where they appear in `relay-ctl stats --json`.
//!
//! [`Metric`] is the typed identifier the rest of the crate uses; [`Metric::def`] gives its
//! [`MetricDef`]. The exporter describes every metric from this table and publishes samples
//! by identifier, so a metric's name is spelled here and nowhere else.

use metrics::Unit;

/// How a metric is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic count, published as an absolute value from the relay's own counters.
    Counter,
    /// Current level; a series whose label values vanish from a snapshot drops to 0.
    Gauge,
    /// Observations recorded where they happen (not part of the snapshot).
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` of the kind.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric's declaration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    /// Exported name (histograms: the base name).
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Unit, when the value has one.
    pub unit: Option<Unit>,
    /// `# HELP` text.
    pub help: &'static str,
    /// Label names, in the order samples give their values.
    pub labels: &'static [&'static str],
    /// Key in `relay-ctl stats --json`, nested one level per label, for metrics the snapshot
    /// carries as samples. `None` when a typed section of the snapshot carries the value
    /// (users, replay memory, CrowdSec, TLS flight, XDP attachments, version) or the metric
    /// is a histogram.
    pub json: Option<&'static str>,
    /// Histogram bucket upper bounds (seconds); empty for other kinds.
    pub buckets: &'static [f64],
}

impl MetricDef {
    /// Defaults the table entries start from.
    const DEFAULT: MetricDef = MetricDef {
        name: "",
        kind: Kind::Counter,
        unit: None,
        help: "",
        labels: &[],
        json: None,
        buckets: &[],
    };
}

/// Upper bounds (seconds) of the DC connect-time buckets, shared by the Prometheus histogram
/// and the quantiles `relay-ctl stats` shows.
pub const DC_CONNECT_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the CrowdSec pull-time histogram: from an empty incremental poll to a full pull
/// of a large decision list.
pub const CROWDSEC_PULL_BUCKETS: [f64; 10] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Declares [`Metric`] and its table: one `Id { field: value, ... }` per metric, fields as in
/// [`MetricDef`] (omitted ones take [`MetricDef::DEFAULT`]).
macro_rules! metrics {
    ($( $(#[$doc:meta])* $id:ident { $($field:ident: $value:expr),* $(,)? } )*) => {
        /// Every metric relay exports, by typed identifier.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Metric {
            $( $(#[$doc])* $id, )*
        }

        impl Metric {
            /// Every metric, in table order.
            pub const ALL: &'static [Metric] = &[$(Metric::$id),*];

            /// The metric's declaration.
            pub const fn def(self) -> &'static MetricDef {
                match self {
                    $(Metric::$id => {
                        const DEF: MetricDef = MetricDef {
                            $($field: $value,)*
                            ..MetricDef::DEFAULT
                        };
                        &DEF
                    })*
                }
            }
        }
    };
}

metrics! {
    /// Packets by XDP verdict (connections in userspace enforcement).
    XdpPackets {
        name: "relay_xdp_packets_total",
        labels: &["verdict"],
        json: Some("verdicts"),
        help: "Packets by XDP verdict (summed over CPUs), plus connections decided at accept for sources XDP could not rate; with userspace enforcement, connections by verdict.",
    }
    /// Interfaces the XDP program is attached to.
    XdpAttached {
        name: "relay_xdp_attached",
        kind: Kind::Gauge,
        labels: &["interface", "mode"],
        help: "1 for each interface the XDP program is attached to, by attach mode; one series with mode=\"off\" at 0 when enforcement is in userspace.",
    }
    /// Client connections accepted.
    ConnectionsAccepted {
        name: "relay_connections_accepted_total",
        json: Some("connections_accepted"),
        help: "Client connections accepted (after the kernel and userspace checks).",
    }
    /// Client connections open, by state.
    ConnectionsActive {
        name: "relay_connections_active",
        kind: Kind::Gauge,
        labels: &["mode"],
        json: Some("connections_active_by_mode"),
        help: "Client connections open, by mode (classic, secure, tls), or handshake / fronted.",
    }
    /// Client handshakes by mode and result.
    Handshakes {
        name: "relay_handshakes_total",
        labels: &["mode", "result"],
        json: Some("handshakes"),
        help: "Client handshakes by mode (unknown when no secret matched an obfuscated2 header) and result (ok, failed, rejected by a user limit).",
    }
    /// Failed client handshakes by reason.
    HandshakeFailures {
        name: "relay_handshake_failures_total",
        labels: &["reason"],
        json: Some("handshake_failures"),
        help: "Failed client handshakes by reason.",
    }
    /// Connections handed to the mask host.
    FrontedConnections {
        name: "relay_fronted_connections_total",
        labels: &["reason"],
        json: Some("fronted"),
        help: "Connections handed to the mask host, by reason.",
    }
    /// Mask connections opened for clients quiet mid-handshake.
    MaskLegs {
        name: "relay_mask_legs_total",
        labels: &["outcome"],
        json: Some("mask_legs"),
        help: "Mask connections opened for clients quiet short of a whole handshake (outcome=opened), and those closed again because the handshake then verified (outcome=abandoned): what genuine clients cost the mask host.",
    }
    /// PROXY protocol headers by outcome.
    ProxyHeaders {
        name: "relay_proxy_headers_total",
        labels: &["outcome"],
        json: Some("proxy_headers"),
        help: "Connections under [server] proxy_protocol, by outcome: ok (a client address), local (the balancer's own check, closed), untrusted (a peer not in trusted, closed), missing, malformed or timeout (closed).",
    }
    /// Replayed handshakes caught.
    ReplaysDetected {
        name: "relay_replays_detected_total",
        json: Some("replays_detected"),
        help: "Replayed handshakes caught by the anti-replay memory.",
    }
    /// Handshakes the anti-replay memory remembers.
    ReplayMemoryEntries {
        name: "relay_replay_memory_entries",
        kind: Kind::Gauge,
        help: "Handshakes the anti-replay memory remembers.",
    }
    /// Filter bytes of the anti-replay memory.
    ReplayMemoryBytes {
        name: "relay_replay_memory_bytes",
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        help: "Filter bytes the anti-replay memory holds.",
    }
    /// Generations of the anti-replay memory.
    ReplayMemoryGenerations {
        name: "relay_replay_memory_generations",
        kind: Kind::Gauge,
        help: "Bloom-filter generations the anti-replay memory holds.",
    }
    /// How far back the anti-replay memory reaches.
    ReplayMemoryCoveredSeconds {
        name: "relay_replay_memory_covered_seconds",
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Age of the oldest handshake the anti-replay memory remembers: replays of anything younger are caught.",
    }
    /// Anti-replay generations dropped, by reason.
    ReplayGenerationsDropped {
        name: "relay_replay_generations_dropped_total",
        labels: &["reason"],
        help: "Anti-replay generations dropped: expired (past [replay] retention_secs and retention_handshakes) or early (memory_bytes too small for the handshake rate).",
    }
    /// Saves of the anti-replay memory, by result.
    ReplayMemorySaves {
        name: "relay_replay_memory_saves_total",
        labels: &["result"],
        help: "Saves of the anti-replay memory to the state dir, by result (ok, failed).",
    }
    /// Bytes relayed, by direction.
    RelayedBytes {
        name: "relay_relayed_bytes_total",
        unit: Some(Unit::Bytes),
        labels: &["direction"],
        json: Some("relayed_bytes"),
        help: "Bytes relayed between clients and DCs since start, by direction.",
    }
    /// Passthrough directions open, by the path their bytes take.
    PassthroughActive {
        name: "relay_passthrough_active",
        kind: Kind::Gauge,
        labels: &["path"],
        json: Some("passthrough_active"),
        help: "Relay directions whose bytes pass through unchanged (fast mode's DC to client, fronted connections), open now, by path: sockmap (moved by the kernel's sockmap program), splice (splice(2) bursts), copy (read and written by the relay).",
    }
    /// Passthrough directions since start that took each path (one that moved on to the
    /// sockmap counts under splice too).
    PassthroughTotal {
        name: "relay_passthrough_total",
        labels: &["path"],
        json: Some("passthrough_total"),
        help: "Relay directions whose bytes pass through unchanged, since start, that took each path (sockmap, splice, copy; a direction that moved on from splice to sockmap counts under both).",
    }
    /// Whether the sockmap program is loaded.
    SockmapLoaded {
        name: "relay_sockmap_loaded",
        kind: Kind::Gauge,
        json: Some("sockmap_loaded"),
        help: "1 when the sockmap program moves passthrough bytes in the kernel, 0 when the relay splices them ([server] passthrough, or the kernel refused the program).",
    }
    /// Entries in the sockmap program's maps.
    SockmapEntries {
        name: "relay_sockmap_entries",
        kind: Kind::Gauge,
        labels: &["map"],
        json: Some("sockmap_entries"),
        help: "Entries in the sockmap program's maps (sources, targets, control, counts): one per open sockmap direction in each.",
    }
    /// Bytes relayed per user, all time.
    UserBytes {
        name: "relay_user_bytes_total",
        unit: Some(Unit::Bytes),
        labels: &["user", "direction"],
        help: "Bytes relayed per user, all time (persisted across restarts), by direction.",
    }
    /// Connections open per user.
    UserConnectionsActive {
        name: "relay_user_connections_active",
        kind: Kind::Gauge,
        labels: &["user"],
        help: "Connections open per user.",
    }
    /// Connections refused by a user limit.
    UserRejections {
        name: "relay_user_rejections_total",
        labels: &["user", "reason"],
        help: "Connections refused by a user limit, by user and reason.",
    }
    /// Source bans in force.
    BansActive {
        name: "relay_bans_active",
        kind: Kind::Gauge,
        json: Some("bans_active"),
        help: "Source bans in force.",
    }
    /// Sources banned since start, by reason.
    BansTotal {
        name: "relay_bans_total",
        labels: &["reason"],
        json: Some("bans_total"),
        help: "Sources banned by the misuse detector since start, by reason.",
    }
    /// Blocklist entries by source.
    BlocklistEntries {
        name: "relay_blocklist_entries",
        kind: Kind::Gauge,
        labels: &["source"],
        json: Some("blocklist_entries"),
        help: "Blocklist entries by source (config, operator, feed:<path>).",
    }
    /// Time to connect to a DC.
    DcConnectSeconds {
        name: "relay_dc_connect_seconds",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &["dc"],
        buckets: &DC_CONNECT_BUCKETS,
        help: "Time to establish a TCP connection to a Telegram DC, by DC id.",
    }
    /// Configuration reloads by result.
    ConfigReloads {
        name: "relay_config_reloads_total",
        labels: &["result"],
        json: Some("config_reloads"),
        help: "Configuration reloads (SIGHUP) by result.",
    }
    /// Admin requests refused for the caller's role.
    AdminRefused {
        name: "relay_admin_refused_total",
        json: Some("admin_refused"),
        help: "Admin requests refused because the caller's role does not allow them.",
    }
    /// Admin requests refused for the caller's request rate.
    AdminRateLimited {
        name: "relay_admin_rate_limited_total",
        json: Some("admin_rate_limited"),
        help: "Admin requests refused because their caller (uid) was over the per-caller request rate.",
    }
    /// The running version.
    BuildInfo {
        name: "relay_build_info",
        kind: Kind::Gauge,
        labels: &["version"],
        help: "Always 1; the version is a label.",
    }
    /// Connections reset at accept by a concurrency bound.
    ConnectionsRefused {
        name: "relay_connections_refused_total",
        labels: &["reason"],
        json: Some("connections_refused"),
        help: "Connections reset at accept because a concurrency bound was reached, by bound.",
    }
    /// Client connections in their handshake.
    HandshakesActive {
        name: "relay_handshakes_active",
        kind: Kind::Gauge,
        json: Some("handshakes_active"),
        help: "Client connections that have not finished their handshake.",
    }
    /// Whether the CrowdSec decision stream is reachable.
    CrowdsecUp {
        name: "relay_crowdsec_up",
        kind: Kind::Gauge,
        help: "1 when the last pull of the CrowdSec decision stream succeeded (only with [crowdsec]).",
    }
    /// CrowdSec decisions enforced, by origin.
    CrowdsecDecisions {
        name: "relay_crowdsec_decisions",
        kind: Kind::Gauge,
        labels: &["origin"],
        help: "CrowdSec decisions enforced, by origin (crowdsec, cscli, CAPI, lists, relay, ...).",
    }
    /// Time to pull the CrowdSec decision stream.
    CrowdsecPullSeconds {
        name: "relay_crowdsec_pull_seconds",
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        buckets: &CROWDSEC_PULL_BUCKETS,
        help: "Time to fetch and parse one pull of the CrowdSec decision stream.",
    }
    /// relay's bans sent to CrowdSec, by result.
    CrowdsecPublished {
        name: "relay_crowdsec_published_total",
        labels: &["result"],
        help: "relay's own bans sent to CrowdSec, by result (ok, failed, dropped when the queue was full).",
    }
    /// CrowdSec decisions refused, by kind.
    CrowdsecRejected {
        name: "relay_crowdsec_rejected_total",
        labels: &["kind"],
        help: "CrowdSec decisions refused, by kind: wide_range (wider than max_range_v4/v6), bad_value, bad_scope, bad_duration; whole pulls refused: too_many (max_decisions), too_large (max_body_bytes).",
    }
    /// Where the fake-TLS flight's shape comes from.
    TlsFlightSource {
        name: "relay_tls_flight_source",
        kind: Kind::Gauge,
        labels: &["source"],
        help: "1 for where the fake-TLS server flight's shape comes from: learned (probed from the mask), cached (loaded from the state dir) or fallback (fixed plausible sizes); 0 for the others.",
    }
    /// Size bounds of the fake encrypted-handshake record.
    TlsFlightRecordBytes {
        name: "relay_tls_flight_record_bytes",
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        labels: &["bound"],
        help: "Smallest and largest size (bound=min|max) of the fake encrypted-handshake record.",
    }
    /// Live connections to each middle proxy.
    MeConnectionsUp {
        name: "relay_me_connections_up",
        kind: Kind::Gauge,
        labels: &["me"],
        help: "Live connections to each listed middle proxy (middle mode).",
    }
    /// Clients multiplexed over each middle proxy's connections.
    MeClients {
        name: "relay_me_clients",
        kind: Kind::Gauge,
        labels: &["me"],
        help: "Clients multiplexed over each middle proxy's connections.",
    }
    /// Keep-alive round trip to each middle proxy.
    MeRtt {
        name: "relay_me_rtt_microseconds",
        kind: Kind::Gauge,
        labels: &["me"],
        help: "Slowest keep-alive round trip among each middle proxy's connections, in microseconds (0: none measured yet).",
    }
    /// ME connection attempts by outcome.
    MeConnects {
        name: "relay_me_connects_total",
        labels: &["outcome"],
        help: "Middle-proxy connection attempts: ok (handshake completed; more than the pool size means reconnects) or failed.",
    }
    /// ME connections ended by bad input, and clients dropped.
    MeErrors {
        name: "relay_me_errors_total",
        labels: &["kind"],
        help: "protocol: ME connections ended by bad input from the middle proxy; overflow: clients dropped for queueing more than 4 MiB of answers; unavailable: clients that got no middle-proxy connection.",
    }
    /// Proxy-list refreshes by outcome.
    MeRefreshes {
        name: "relay_me_config_refreshes_total",
        labels: &["outcome"],
        help: "Reads of the middle-proxy list and secret: applied (changed), unchanged, failed.",
    }
    /// Age of the proxy list in use.
    MeConfigAge {
        name: "relay_me_config_age_seconds",
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "Seconds since the middle-proxy list in use was read (middle mode).",
    }
    /// Where the proxy list in use came from.
    MeConfigSource {
        name: "relay_me_config_source",
        kind: Kind::Gauge,
        labels: &["source"],
        help: "1 for where the middle-proxy list in use came from: fetched, file or cache; 0 for the others.",
    }
}

impl Metric {
    /// Exported name.
    pub const fn name(self) -> &'static str {
        self.def().name
    }

    /// Counter, gauge or histogram.
    pub const fn kind(self) -> Kind {
        self.def().kind
    }

    /// Label names, in sample order.
    pub const fn labels(self) -> &'static [&'static str] {
        self.def().labels
    }

    /// The metric named `name` (histograms by their base name).
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.iter().copied().find(|m| m.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_and_json_keys_are_unique_and_well_formed() {
        let names: BTreeSet<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
        let keys: Vec<_> = Metric::ALL.iter().filter_map(|m| m.def().json).collect();
        assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len());
        for m in Metric::ALL {
            let def = m.def();
            assert!(def.name.starts_with("relay_"), "{m:?}");
            assert!(!def.help.is_empty(), "{m:?}");
            assert_eq!(
                def.kind == Kind::Counter,
                def.name.ends_with("_total"),
                "{m:?}"
            );
            assert_eq!(
                def.kind == Kind::Histogram,
                !def.buckets.is_empty(),
                "{m:?}"
            );
            assert!(def.kind != Kind::Histogram || def.json.is_none(), "{m:?}");
            assert!(def.buckets.is_sorted(), "{m:?}");
        }
    }
}
