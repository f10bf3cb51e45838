//! Human-readable renderings of the daemon's replies.

use std::collections::BTreeMap;

use super::{
    duration,
    table::{NONE, Table, pairs},
};
use crate::{
    control::api::{BanInfo, PrefixEntry, Reply, Stats, UserInfo},
    telemetry::{Metric, Samples},
};

/// What to say for replies that carry no listing.
#[derive(Debug, Clone, Copy)]
pub struct Messages<'a> {
    /// For [`Reply::Done`], e.g. `blocked 192.0.2.0/24`.
    pub done: &'a str,
    /// For [`Reply::Count`], after the number, e.g. `bans lifted`.
    pub counted: &'a str,
}

/// Renders any reply; `detail` shows users one by one instead of as a table.
pub fn reply(reply: &Reply, messages: Messages<'_>, detail: bool) -> String {
    match reply {
        Reply::Done => format!("{}\n", messages.done),
        Reply::Count { changed } => format!("{changed} {}\n", messages.counted),
        Reply::Prefixes { entries } => prefixes(entries),
        Reply::Bans { bans: list } => bans(list),
        Reply::Users { users: list } if detail => {
            if list.is_empty() {
                "no such user\n".to_owned()
            } else {
                list.iter().map(user_detail).collect::<Vec<_>>().join("\n")
            }
        }
        Reply::Users { users: list } => users(list),
        Reply::Stats(s) => stats(s),
    }
}

fn expires(secs: Option<u64>) -> String {
    secs.map_or_else(|| "never".to_owned(), duration::format)
}

fn or_none(value: Option<&str>) -> String {
    value.unwrap_or(NONE).to_owned()
}

/// Block- or allowlist entries.
pub fn prefixes(entries: &[PrefixEntry]) -> String {
    if entries.is_empty() {
        return "no entries\n".to_owned();
    }
    let mut t = Table::new(&["CIDR", "SOURCE", "EXPIRES", "REASON"])
        .optional("EXPIRES")
        .optional("REASON");
    for e in entries {
        t.row(vec![
            e.cidr.clone(),
            e.source.clone(),
            e.expires_in_secs
                .map_or_else(|| NONE.to_owned(), duration::format),
            or_none(e.reason.as_deref()),
        ]);
    }
    t.render()
}

/// Bans in force.
pub fn bans(list: &[BanInfo]) -> String {
    if list.is_empty() {
        return "no bans\n".to_owned();
    }
    let mut t = Table::new(&["ADDR", "SOURCE", "REASON", "ACTION", "COUNT", "EXPIRES"]);
    for b in list {
        t.row(vec![
            b.addr.clone(),
            b.source.clone(),
            b.reason.clone(),
            b.action.clone(),
            b.count.to_string(),
            expires(b.expires_in_secs),
        ]);
    }
    t.render()
}

fn status(u: &UserInfo) -> String {
    match (u.enabled, &u.blocked_reason) {
        (true, _) => "enabled".to_owned(),
        // The daemon's reasons may already say so ("disabled by operator").
        (false, Some(reason)) if reason.starts_with("disabled") => reason.clone(),
        (false, Some(reason)) => format!("disabled ({reason})"),
        (false, None) => "disabled".to_owned(),
    }
}

fn of_limit(used: u64, limit: Option<u64>) -> String {
    match limit {
        Some(limit) => format!("{used}/{limit}"),
        None => used.to_string(),
    }
}

fn quota(u: &UserInfo) -> String {
    match u.quota {
        Some(q) => format!(
            "{}/{}",
            bytes(u.bytes_up.saturating_add(u.bytes_down)),
            bytes(q)
        ),
        None => NONE.to_owned(),
    }
}

/// Users as a table.
pub fn users(list: &[UserInfo]) -> String {
    if list.is_empty() {
        return "no users\n".to_owned();
    }
    let mut t = Table::new(&[
        "NAME", "STATUS", "CONNS", "IPS", "UP", "DOWN", "QUOTA", "EXPIRES",
    ])
    .optional("QUOTA")
    .optional("EXPIRES");
    for u in list {
        t.row(vec![
            u.name.clone(),
            status(u),
            of_limit(u.active_connections, u.max_connections),
            of_limit(u.unique_ips, u.max_unique_ips),
            bytes(u.bytes_up),
            bytes(u.bytes_down),
            quota(u),
            or_none(u.expires.as_deref()),
        ]);
    }
    t.render()
}

fn connection_rate(u: &UserInfo) -> String {
    match (&u.connection_rate, u.connection_burst) {
        (Some(rate), Some(burst)) => format!("{rate} (burst {burst})"),
        (Some(rate), None) => rate.clone(),
        (None, _) => "none".to_owned(),
    }
}

/// One user, field by field.
pub fn user_detail(u: &UserInfo) -> String {
    let limit = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    let mut out = pairs(&[
        ("name", u.name.clone()),
        ("status", status(u)),
        (
            "connections",
            format!(
                "{} (limit {})",
                u.active_connections,
                limit(u.max_connections)
            ),
        ),
        (
            "unique ips",
            format!("{} (limit {})", u.unique_ips, limit(u.max_unique_ips)),
        ),
        ("conn rate", connection_rate(u)),
        ("bytes up", bytes(u.bytes_up)),
        ("bytes down", bytes(u.bytes_down)),
        (
            "quota",
            u.quota.map_or_else(|| "none".to_owned(), |_| quota(u)),
        ),
        (
            "expires",
            u.expires.clone().unwrap_or_else(|| "never".to_owned()),
        ),
    ]);
    if !u.rejections.is_empty() {
        out.push('\n');
        out.push_str(&counts("REJECTED BY", &u.rejections));
    }
    out
}

fn counts<K: AsRef<str>>(header: &'static str, map: &BTreeMap<K, u64>) -> String {
    let mut t = Table::new(&[header, "COUNT"]);
    for (k, v) in map {
        t.row(vec![k.as_ref().to_owned(), v.to_string()]);
    }
    t.render()
}

/// Non-zero entries as `name n` pairs, comma-separated.
fn nonzero<K: AsRef<str>>(map: &BTreeMap<K, u64>) -> String {
    map.iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{} {n}", k.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of `metric` by its first label, without the zeros.
fn nonzero_by_label(m: &Samples, metric: Metric) -> BTreeMap<&str, u64> {
    let mut map = m.by_label(metric);
    map.retain(|_, n| *n > 0);
    map
}

/// The daemon's counters.
pub fn stats(s: &Stats) -> String {
    let m = &s.metrics;
    let by_mode = nonzero(&m.by_label(Metric::ConnectionsActive));
    let mut summary = vec![
        ("version", s.version.clone()),
        ("uptime", duration::format(s.uptime_secs)),
        ("enforcement", s.enforcement.clone()),
        (
            "connections",
            format!(
                "{} active{}, {} accepted",
                s.connections_active,
                if by_mode.is_empty() {
                    String::new()
                } else {
                    format!(" ({by_mode})")
                },
                m.total(Metric::ConnectionsAccepted)
            ),
        ),
        (
            "bans",
            format!(
                "{} active, {} issued",
                m.total(Metric::BansActive),
                m.total(Metric::BansTotal)
            ),
        ),
    ];
    let refused = nonzero(&m.by_label(Metric::ConnectionsRefused));
    if !refused.is_empty() {
        summary.push(("refused", refused));
    }
    let replays = m.total(Metric::ReplaysDetected);
    if replays > 0 {
        summary.push(("replays", replays.to_string()));
    }
    let flight = &s.tls_flight;
    if !flight.source.is_empty() {
        summary.push((
            "tls flight",
            format!(
                "{}, record {}..={} bytes{}",
                flight.source,
                flight.record_min,
                flight.record_max,
                flight
                    .reason
                    .as_ref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ));
    }
    let me = &s.middle;
    if me.enabled {
        let pools: Vec<String> = me
            .me
            .iter()
            .map(|p| {
                format!(
                    "{} {} up, {} clients, rtt {:.1} ms",
                    p.addr,
                    p.up,
                    p.clients,
                    p.rtt_us as f64 / 1000.0
                )
            })
            .collect();
        let c = &me.counters;
        summary.push((
            "middle",
            format!(
                "list {} ({} s old), {} connects, {} failed, {} protocol errors, {} clients \
                 dropped slow, {} refused; {}",
                if me.source.is_empty() {
                    "none yet"
                } else {
                    &me.source
                },
                me.config_age_secs,
                c.connects,
                c.connect_failures,
                c.protocol_errors,
                c.overflows,
                c.unavailable,
                if pools.is_empty() {
                    "no middle proxy".to_owned()
                } else {
                    pools.join("; ")
                }
            ),
        ));
    }
    if m.of(Metric::RelayedBytes).next().is_some() {
        let dir = |d: &str| bytes(m.get(Metric::RelayedBytes, &[d]));
        summary.push((
            "relayed",
            format!(
                "{} client→DC, {} DC→client",
                dir("client_to_dc"),
                dir("dc_to_client")
            ),
        ));
    }
    if m.total(Metric::ConfigReloads) > 0 {
        let n = |r: &str| m.get(Metric::ConfigReloads, &[r]);
        summary.push((
            "reloads",
            format!("{} ok, {} failed", n("success"), n("failure")),
        ));
    }
    if let Some(cs) = &s.crowdsec {
        let total: u64 = cs.decisions.values().sum();
        let mut line = format!(
            "{}, {total} decisions ({}), {} pulls ({} failed), {} bans published ({} failed, {} dropped)",
            if cs.up { "up" } else { "DOWN" },
            if cs.decisions.is_empty() {
                "none".to_owned()
            } else {
                nonzero(&cs.decisions)
            },
            cs.pulls,
            cs.pull_failures,
            cs.published,
            cs.publish_failed,
            cs.publish_dropped
        );
        if cs.rejected.values().any(|n| *n > 0) {
            line.push_str(&format!(", rejected {}", nonzero(&cs.rejected)));
        }
        summary.push(("crowdsec", line));
    }
    let mut out = pairs(&summary);
    let verdicts = m.by_label(Metric::XdpPackets);
    if !verdicts.is_empty() {
        out.push('\n');
        out.push_str(&counts("VERDICT", &verdicts));
    }
    let handshakes = handshakes(m);
    if !handshakes.is_empty() {
        out.push('\n');
        out.push_str(&handshakes);
    }
    for (header, metric) in [
        ("HANDSHAKE FAILURE", Metric::HandshakeFailures),
        ("FRONTED", Metric::FrontedConnections),
    ] {
        let map = nonzero_by_label(m, metric);
        if !map.is_empty() {
            out.push('\n');
            out.push_str(&counts(header, &map));
        }
    }
    let bans = ban_reasons(s);
    if !bans.is_empty() {
        out.push('\n');
        out.push_str(&bans);
    }
    // Sources without entries left out: `config` and `operator` are always listed.
    let blocklist = nonzero_by_label(m, Metric::BlocklistEntries);
    if !blocklist.is_empty() {
        out.push('\n');
        out.push_str(&counts("BLOCKLIST SOURCE", &blocklist));
    }
    if !s.dc_connect.is_empty() {
        let ms = |us: u64| format!("{:.1}ms", us as f64 / 1000.0);
        let mut t = Table::new(&["DC", "CONNECTS", "MEAN", "P50", "P99"]);
        for (dc, c) in &s.dc_connect {
            t.row(vec![
                dc.clone(),
                c.connects.to_string(),
                ms(c.mean_us),
                ms(c.p50_us),
                ms(c.p99_us),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if !s.users.is_empty() {
        out.push('\n');
        out.push_str(&users(&s.users));
        let mut refused = Table::new(&["USER", "REFUSED BY", "COUNT"]);
        for u in &s.users {
            for (reason, n) in u.rejections.iter().filter(|(_, n)| **n > 0) {
                refused.row(vec![u.name.clone(), reason.clone(), n.to_string()]);
            }
        }
        if !refused.is_empty() {
            out.push('\n');
            out.push_str(&refused.render());
        }
    }
    out
}

/// Handshakes by mode and result; modes without any left out.
fn handshakes(m: &Samples) -> String {
    let mut t = Table::new(&["HANDSHAKES", "OK", "FAILED", "REJECTED"]);
    for (mode, total) in m.by_label(Metric::Handshakes) {
        if total == 0 {
            continue;
        }
        let n = |r: &str| m.get(Metric::Handshakes, &[mode, r]).to_string();
        t.row(vec![mode.to_owned(), n("ok"), n("failed"), n("rejected")]);
    }
    if t.is_empty() {
        String::new()
    } else {
        t.render()
    }
}

/// Ban reasons, most bans issued first: the top reasons of a ban wave.
fn ban_reasons(s: &Stats) -> String {
    let bans_total = s.metrics.by_label(Metric::BansTotal);
    let mut reasons: Vec<(&str, u64, u64)> = bans_total
        .keys()
        .copied()
        .chain(s.bans_active_by_reason.keys().map(String::as_str))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|r| {
            (
                r,
                bans_total.get(r).copied().unwrap_or(0),
                s.bans_active_by_reason.get(r).copied().unwrap_or(0),
            )
        })
        .filter(|(_, issued, active)| issued + active > 0)
        .collect();
    if reasons.is_empty() {
        return String::new();
    }
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    let mut t = Table::new(&["BAN REASON", "ISSUED", "ACTIVE"]);
    for (reason, issued, active) in reasons {
        t.row(vec![
            reason.to_owned(),
            issued.to_string(),
            active.to_string(),
        ]);
    }
    t.render()
}

/// Bytes in IEC units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserInfo {
        UserInfo {
            name: name.into(),
            enabled: true,
            blocked_reason: None,
            active_connections: 2,
            unique_ips: 1,
            bytes_up: 1536,
            bytes_down: 10 << 20,
            quota: None,
            expires: None,
            max_connections: Some(10),
            max_unique_ips: None,
            connection_rate: None,
            connection_burst: None,
            rejections: BTreeMap::new(),
        }
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10 << 20), "10.0 MiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn prefix_table_with_ipv6_and_expiry() {
        let entries = vec![
            PrefixEntry {
                cidr: "192.0.2.0/24".into(),
                source: "operator".into(),
                reason: Some("scanner".into()),
                expires_in_secs: Some(7_380),
            },
            PrefixEntry {
                cidr: "2001:db8:1234:5678::/64".into(),
                source: "config".into(),
                reason: None,
                expires_in_secs: None,
            },
        ];
        assert_eq!(
            prefixes(&entries),
            "\
CIDR                     SOURCE    EXPIRES  REASON
192.0.2.0/24             operator  2h3m     scanner
2001:db8:1234:5678::/64  config    -        -
"
        );
        assert_eq!(prefixes(&[]), "no entries\n");
    }

    #[test]
    fn allowlist_without_expiry_or_reason_drops_those_columns() {
        let entries = vec![PrefixEntry {
            cidr: "10.0.0.0/8".into(),
            source: "config".into(),
            reason: None,
            expires_in_secs: None,
        }];
        assert_eq!(
            prefixes(&entries),
            "CIDR        SOURCE\n10.0.0.0/8  config\n"
        );
    }

    #[test]
    fn stats_show_crowdsec_only_when_configured() {
        let mut s = Stats::default();
        assert!(!stats(&s).contains("crowdsec"));
        s.crowdsec = Some(crate::control::api::CrowdSecStats {
            up: false,
            decisions: BTreeMap::from([("cscli".to_owned(), 3), ("relay".to_owned(), 1)]),
            pulls: 9,
            pull_failures: 2,
            published: 4,
            publish_dropped: 1,
            rejected: BTreeMap::from([("wide_range".to_owned(), 2), ("too_many".to_owned(), 0)]),
            ..Default::default()
        });
        let text = stats(&s);
        assert!(
            text.contains(
                "DOWN, 4 decisions (cscli 3, relay 1), 9 pulls (2 failed), 4 bans published (0 failed, 1 dropped), rejected wide_range 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn ban_table() {
        let list = vec![
            BanInfo {
                addr: "2001:db8::1".into(),
                reason: "bad_secret".into(),
                action: "front".into(),
                count: 20,
                expires_in_secs: Some(600),
                source: "relay".into(),
            },
            BanInfo {
                addr: "198.51.100.7".into(),
                reason: "conn_rate".into(),
                action: "drop".into(),
                count: 1300,
                expires_in_secs: Some(3600),
                source: "relay".into(),
            },
        ];
        assert_eq!(
            bans(&list),
            "ADDR          SOURCE  REASON      ACTION  COUNT  EXPIRES\n\
             2001:db8::1   relay   bad_secret  front   20     10m\n\
             198.51.100.7  relay   conn_rate   drop    1300   1h\n"
        );
    }

    #[test]
    fn user_table_and_detail() {
        let mut bob = user("bob");
        bob.enabled = false;
        bob.blocked_reason = Some("quota exhausted".into());
        bob.quota = Some(1 << 30);
        bob.rejections.insert("quota".into(), 3);
        let table = users(&[user("alice"), bob.clone()]);
        assert_eq!(
            table,
            "\
NAME   STATUS                      CONNS  IPS  UP       DOWN      QUOTA
alice  enabled                     2/10   1    1.5 KiB  10.0 MiB  -
bob    disabled (quota exhausted)  2/10   1    1.5 KiB  10.0 MiB  10.0 MiB/1.0 GiB
"
        );
        let mut carol = user("carol");
        carol.enabled = false;
        carol.blocked_reason = Some("disabled by operator".into());
        assert_eq!(status(&carol), "disabled by operator");
        let detail = user_detail(&bob);
        assert!(
            detail.contains("status       disabled (quota exhausted)\n"),
            "{detail}"
        );
        assert!(detail.contains("unique ips   1 (limit none)\n"), "{detail}");
        assert!(detail.contains("conn rate    none\n"), "{detail}");
        bob.connection_rate = Some("20/s".into());
        bob.connection_burst = Some(40);
        let detail = user_detail(&bob);
        assert!(
            detail.contains("conn rate    20/s (burst 40)\n"),
            "{detail}"
        );
        assert!(
            detail.contains("REJECTED BY  COUNT\nquota        3\n"),
            "{detail}"
        );
    }

    #[test]
    fn stats_summary_and_sections() {
        let mut s = Stats {
            version: "0.1.0".into(),
            uptime_secs: 3_700,
            enforcement: "XDP on eth0 (native)".into(),
            connections_active: 1,
            ..Stats::default()
        };
        let m = &mut s.metrics;
        m.set(Metric::ConnectionsAccepted, &[], 10);
        m.set(Metric::BansActive, &[], 1);
        m.set(Metric::XdpPackets, &["pass"], 100);
        m.set(Metric::BansTotal, &["bad_secret"], 2);
        m.set(Metric::BlocklistEntries, &["config"], 0);
        let text = stats(&s);
        assert!(
            text.starts_with("version      0.1.0\nuptime       1h1m\n"),
            "{text}"
        );
        assert!(text.contains("bans         1 active, 2 issued\n"), "{text}");
        assert!(text.contains("VERDICT  COUNT\npass     100\n"), "{text}");
        assert!(!text.contains("HANDSHAKE FAILURE"), "{text}");
        assert!(!text.contains("FRONTED"), "{text}");
        assert!(!text.contains("replays"), "{text}");
        assert!(!text.contains("BLOCKLIST"), "{text}");
    }

    #[test]
    fn stats_with_traffic_bans_and_users() {
        let mut s = Stats {
            version: "0.1.0".into(),
            connections_active: 3,
            ..Stats::default()
        };
        let m = &mut s.metrics;
        m.set(Metric::ConnectionsAccepted, &[], 10);
        m.set(Metric::ReplaysDetected, &[], 2);
        m.set(Metric::ConnectionsActive, &["tls"], 2);
        m.set(Metric::ConnectionsActive, &["fronted"], 1);
        m.set(Metric::ConnectionsActive, &["classic"], 0);
        m.set(Metric::Handshakes, &["tls", "ok"], 5);
        m.set(Metric::Handshakes, &["tls", "failed"], 1);
        m.set(Metric::Handshakes, &["classic", "ok"], 0);
        m.set(Metric::Handshakes, &["classic", "failed"], 0);
        m.set(Metric::HandshakeFailures, &["bad_secret"], 3);
        m.set(Metric::HandshakeFailures, &["timeout"], 0);
        m.set(Metric::FrontedConnections, &["bad_secret"], 3);
        m.set(Metric::RelayedBytes, &["client_to_dc"], 1536);
        m.set(Metric::RelayedBytes, &["dc_to_client"], 10 << 20);
        m.set(Metric::BansTotal, &["bad_secret"], 2);
        m.set(Metric::BansTotal, &["replay"], 7);
        m.set(Metric::ConfigReloads, &["success"], 1);
        m.set(Metric::ConnectionsRefused, &["max_handshakes"], 9);
        m.set(Metric::ConnectionsRefused, &["max_connections"], 0);
        m.set(Metric::BlocklistEntries, &["operator"], 0);
        m.set(Metric::BlocklistEntries, &["feed:/etc/relay/l1.netset"], 9);
        s.bans_active_by_reason.insert("replay".into(), 4);
        s.tls_flight = crate::control::api::TlsFlightStats {
            source: "fallback".into(),
            record_min: 2500,
            record_max: 4700,
            learned_unix: None,
            reason: Some("probing a:443 failed".into()),
        };
        s.dc_connect.insert(
            "2".into(),
            crate::relay::stats::DcConnect {
                connects: 4,
                mean_us: 1500,
                p50_us: 1200,
                p99_us: 4900,
            },
        );
        let mut bob = user("bob");
        bob.rejections.insert("max_unique_ips".into(), 6);
        s.users = vec![user("alice"), bob];
        let text = stats(&s);
        assert!(
            text.contains("connections  3 active (fronted 1, tls 2), 10 accepted\n"),
            "{text}"
        );
        assert!(text.contains("replays      2\n"), "{text}");
        assert!(
            text.contains(
                "tls flight   fallback, record 2500..=4700 bytes (probing a:443 failed)\n"
            ),
            "{text}"
        );
        assert!(text.contains("refused      max_handshakes 9\n"), "{text}");
        assert!(
            text.contains("relayed      1.5 KiB client→DC, 10.0 MiB DC→client\n"),
            "{text}"
        );
        assert!(text.contains("reloads      1 ok, 0 failed\n"), "{text}");
        assert!(
            text.contains("HANDSHAKES  OK  FAILED  REJECTED\ntls         5   1       0\n"),
            "{text}"
        );
        assert!(
            text.contains("HANDSHAKE FAILURE  COUNT\nbad_secret         3\n\n"),
            "{text}"
        );
        // Most issued first.
        assert!(
            text.contains(
                "BAN REASON  ISSUED  ACTIVE\nreplay      7       4\nbad_secret  2       0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("BLOCKLIST SOURCE           COUNT\nfeed:/etc/relay/l1.netset  9\n\n"),
            "{text}"
        );
        assert!(
            text.contains("DC  CONNECTS  MEAN   P50    P99\n2   4         1.5ms  1.2ms  4.9ms\n"),
            "{text}"
        );
        assert!(
            text.contains("USER  REFUSED BY      COUNT\nbob   max_unique_ips  6\n"),
            "{text}"
        );
    }

    #[test]
    fn done_and_count_messages() {
        let m = Messages {
            done: "blocked 192.0.2.0/24",
            counted: "bans lifted",
        };
        assert_eq!(reply(&Reply::Done, m, false), "blocked 192.0.2.0/24\n");
        assert_eq!(
            reply(&Reply::Count { changed: 3 }, m, false),
            "3 bans lifted\n"
        );
    }
}
