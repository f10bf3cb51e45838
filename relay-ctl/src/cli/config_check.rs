//! `relay-ctl config check [FILE]`

use std::path::Path;

use crate::{
    config::{Config, UpstreamMode},
    relay::mask_flight::{self, Cache},
};
use relay_proto::tls::FlightShape;

/// Parses and validates the file, then prints a summary of the effective configuration.
pub fn run(file: Option<&Path>) -> anyhow::Result<()> {
    let config = super::load_config(file)?;
    if let Some(warning) = file.and_then(|p| crate::config::secrets_exposure(p, &config)) {
        eprintln!("warning: {warning}");
    }
    let name = file.map_or_else(
        || "embedded default".to_owned(),
        |p| p.display().to_string(),
    );
    println!("{name}: ok");
    let listen: Vec<String> = config
        .server
        .listen
        .iter()
        .map(ToString::to_string)
        .collect();
    println!("  listen          {}", listen.join(", "));
    println!(
        "  xdp             mode {:?}, interfaces {}",
        config.xdp.mode,
        config.xdp.interfaces.join(", ")
    );
    println!(
        "  new connections {} per second per source, burst {}{}",
        config.limits.syn_rate_per_sec,
        config.limits.syn_burst,
        if config.limits.syn_limit {
            ""
        } else {
            " (limiter off)"
        }
    );
    println!(
        "  prober bans     {}, banned budget {} per second, burst {} (floods: drop)",
        config
            .misuse
            .action_for(relay_common::BanReason::BadSecret)
            .name(),
        config.misuse.banned_syn_rate_per_sec,
        config.misuse.banned_syn_burst
    );
    let m = &config.misuse;
    println!(
        "  prefix bans     per /24 and /48 in {} s: bad secret {}, unknown sni {}, replay {}, \
         timeout {}, garbage {}, connections {} (0: off)",
        m.window_secs,
        m.prefix_bad_secret,
        m.prefix_unknown_sni,
        m.prefix_replay,
        m.prefix_timeout,
        m.prefix_garbage,
        m.prefix_connections
    );
    let modes: Vec<&str> = config.server.modes.iter().map(|m| m.name()).collect();
    println!("  modes           {}", modes.join(", "));
    for line in crate::config::exposure(&config) {
        println!("  exposure        {line}");
    }
    let users: Vec<&str> = config.users.iter().map(|u| u.name.as_str()).collect();
    println!(
        "  users           {}",
        if users.is_empty() {
            format!("default (secret in {})", config.state.dir.display())
        } else {
            users.join(", ")
        }
    );
    println!(
        "  tls             domain {}, fronting {}",
        config.tls.domain,
        if config.tls.fronting {
            config.tls.mask_target()
        } else {
            "off".to_owned()
        }
    );
    println!("  tls flight      {}", flight_summary(&config));
    println!("  upstream        {}", upstream_summary(&config));
    if let Some(note) = config.server.balancer_note() {
        println!("  balancers       {note}");
    }
    if let Some(version) = config.tls.mask_proxy_protocol.version() {
        println!("  mask            fronted connections start with a PROXY {version:?} header");
    }
    if let Some(warning) = nat_warning(&config) {
        println!("  warning         {warning}");
    }
    println!(
        "  tls clock       skew ±{} s, uptime clocks {}",
        config.tls.time_skew_secs,
        if config.tls.accept_uptime_clock {
            "accepted (limited by the replay memory only)"
        } else {
            "refused"
        }
    );
    println!("  replay          {}", replay_summary(&config));
    println!(
        "  lists           {} blocked, {} allowed",
        config.blocklist.cidrs.len(),
        config.allowlist.cidrs.len()
    );
    println!("  admin           {}", admin_summary(&config));
    println!("  state           {}", state_summary(&config));
    println!(
        "  metrics         {}",
        if config.metrics.enabled {
            let public = if config.metrics.listen.ip().is_loopback() {
                ""
            } else {
                " (not loopback: firewall it)"
            };
            format!("http://{}/metrics{public}", config.metrics.listen)
        } else {
            "off".to_owned()
        }
    );
    println!(
        "  log             {:?}, level {}, client addresses {}",
        config.log.format,
        config.log.level,
        config.log.client_ips.name()
    );
    if let Some(cs) = &config.crowdsec {
        // Never the key or password: only where they come from.
        println!(
            "  crowdsec        {}, poll {:?}, resync {:?}, {}{}",
            cs.lapi_url,
            cs.poll_interval,
            cs.resync,
            match &cs.machine_id {
                Some(id) => format!("publishing as {id}"),
                None => "not publishing".to_owned(),
            },
            if cs.origins.is_empty() {
                String::new()
            } else {
                format!(", origins {}", cs.origins.join(","))
            }
        );
        println!(
            "                  accepts ranges up to /{} (IPv4) and /{} (IPv6), pulls up to {} \
             decisions and {} bytes{}",
            cs.max_range_v4,
            cs.max_range_v6,
            cs.max_decisions,
            cs.max_body_bytes,
            if cs.allow_insecure && !cs.lapi_url.starts_with("https://") {
                "; plain http allowed (allow_insecure): the key crosses the network in clear"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The admin socket and who may do what on it.
fn admin_summary(config: &Config) -> String {
    let admin = &config.admin;
    let group = |g: &Option<String>| g.as_deref().map(|g| format!(", group {g}"));
    let roles = match &admin.read_group {
        None => format!(
            "every caller that can connect reads and writes{}",
            group(&admin.group).map_or_else(String::new, |g| format!(" (socket{g})"))
        ),
        Some(read) => format!(
            "read-write: root, relay's user{}; read-only: group {read} (socket group)",
            group(&admin.group).unwrap_or_default()
        ),
    };
    format!(
        "{} mode {:04o}; {roles}",
        admin.socket.display(),
        admin.mode
    )
}

/// The state dir, and whether `run` would refuse it as it is now.
fn state_summary(config: &Config) -> String {
    let dir = &config.state.dir;
    let verdict = match super::open_state_dir_check(config) {
        Ok(None) => "(created at start)".to_owned(),
        Ok(Some(())) => "(owner and mode ok)".to_owned(),
        Err(e) => format!("(relay-ctl run would refuse it: {e})"),
    };
    format!("{} {verdict}", dir.display())
}

/// What fake-TLS flights will copy, from the cache in the state dir alone: `config check`
/// makes no connection (the running relay probes the mask at start).
fn flight_summary(config: &Config) -> String {
    let fallback = FlightShape::fallback().cert_len;
    let fallback = format!("fallback {}..={} bytes", fallback.start(), fallback.end());
    if let Some(why) = mask_flight::not_probed(&config.tls) {
        return format!("{fallback}: {why}");
    }
    let path = mask_flight::cache_path(config);
    let every = format!(
        "probed at start and every {} s",
        config.tls.flight_refresh_secs
    );
    match mask_flight::load_cache(&config.state.dir, &config.tls) {
        Cache::Usable(learned) => format!(
            "cached profile of {} ({}, learned at unix time {}), {every}: {}",
            learned.target,
            path.display(),
            learned.learned_unix,
            mask_flight::describe(&learned)
        ),
        Cache::Missing => format!(
            "no cached profile ({}): {fallback} until {} answers the probe ({every})",
            path.display(),
            config.tls.mask_target()
        ),
        Cache::OtherSite(learned) => format!(
            "the cached profile is of {} for {}, not this mask: {fallback} until {} answers the \
             probe ({every})",
            learned.target,
            learned.domain,
            config.tls.mask_target()
        ),
        Cache::Unreadable(e) => format!(
            "cached profile unreadable ({e}): {fallback} until {} answers the probe ({every})",
            config.tls.mask_target()
        ),
    }
}

/// What the replay memory keeps, for how long, at what false-positive rate.
fn replay_summary(config: &crate::config::Config) -> String {
    let limits = config.replay.limits();
    format!(
        "each handshake kept {} or {} later handshakes, whichever is longer; \
         {} generations of {} bytes at most ({} bytes); {} kept up to {:.0} handshakes/s; \
         false positives at most {:.1e} per handshake at full load; saved in {}",
        humantime::format_duration(std::time::Duration::from_secs(limits.retention_secs)),
        limits.handshakes,
        limits.max_generations(),
        limits.generation_bytes(),
        limits.memory_bytes,
        humantime::format_duration(std::time::Duration::from_secs(limits.retention_secs)),
        limits.max_rate_for_retention(),
        limits.false_positive_rate(),
        config
            .state
            .dir
            .join(crate::control::replay_store::REPLAY_DIR)
            .display()
    )
}

/// The upstream mode: in direct mode the SOCKS5 proxy if any, in middle mode where the proxy
/// list comes from and the ad tags.
fn upstream_summary(config: &Config) -> String {
    let up = &config.upstream;
    match up.effective_mode() {
        UpstreamMode::Direct => match &up.socks5 {
            None => "direct (each client dials its DC)".to_owned(),
            Some(proxy) => format!(
                "direct through SOCKS5 proxy {proxy} ({})",
                up.socks5_username.as_ref().map_or_else(
                    || "no authentication".to_owned(),
                    |u| format!(
                        "username {u}, password from {}",
                        up.socks5_password_file
                            .as_ref()
                            .map_or_else(String::new, |p| p.display().to_string())
                    )
                )
            ),
        },
        UpstreamMode::Middle => {
            let m = &up.middle;
            let list = m
                .config_file
                .as_ref()
                .map_or_else(|| m.config_url.clone(), |p| p.display().to_string());
            let user_tags = config.users.iter().filter(|u| u.ad_tag.is_some()).count();
            format!(
                "middle ({}), list {list}, {} connections per middle proxy, ad tag {}{}",
                if up.mode.is_none() {
                    "chosen because an ad tag is set"
                } else {
                    "configured"
                },
                m.connections_per_me,
                up.ad_tag
                    .map_or_else(|| "none".to_owned(), |t| t.to_string()),
                if user_tags > 0 {
                    format!(", {user_tags} user(s) with their own tag")
                } else {
                    String::new()
                }
            )
        }
    }
}

/// In middle mode, the keys bind this host's address as the middle proxy sees it: a private
/// local address without `public_ipv4` means NAT, and the handshake will fail.
fn nat_warning(config: &Config) -> Option<String> {
    if config.upstream.effective_mode() != UpstreamMode::Middle
        || config.upstream.middle.public_ipv4.is_some()
    {
        return None;
    }
    // Connecting a UDP socket sends nothing; it only picks the route's source address.
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("149.154.175.50:8888").ok()?;
    let local = socket.local_addr().ok()?.ip();
    let private = match local {
        std::net::IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        std::net::IpAddr::V6(_) => false,
    };
    private.then(|| {
        format!(
            "this host reaches Telegram from the private address {local}: behind NAT the \
             middle proxies derive other keys; set [upstream.middle] public_ipv4 to the public \
             address"
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::config::{Config, Origin};

    fn summary(upstream: &str) -> String {
        let text = format!("[server]\nlisten = [\"127.0.0.1:1\"]\n[upstream]\n{upstream}");
        let config =
            Config::parse(&text, Origin::File(PathBuf::from("relay.toml"))).expect("valid");
        super::upstream_summary(&config)
    }

    #[test]
    fn the_upstream_line_names_the_socks5_proxy() {
        assert_eq!(summary(""), "direct (each client dials its DC)");
        assert_eq!(
            summary("socks5 = \"127.0.0.1:1080\"\n"),
            "direct through SOCKS5 proxy 127.0.0.1:1080 (no authentication)"
        );
        assert_eq!(
            summary(
                "socks5 = \"[::1]:1080\"\nsocks5_username = \"relay\"\n\
                 socks5_password_file = \"/etc/relay/socks5.pass\"\n"
            ),
            "direct through SOCKS5 proxy [::1]:1080 (username relay, password from \
             /etc/relay/socks5.pass)"
        );
    }
}
