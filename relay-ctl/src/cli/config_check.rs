//! `relay-ctl config check [FILE]`

use std::path::Path;

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
    let modes: Vec<&str> = config.server.modes.iter().map(|m| m.name()).collect();
    println!("  modes           {}", modes.join(", "));
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
    println!(
        "  lists           {} blocked, {} allowed",
        config.blocklist.cidrs.len(),
        config.allowlist.cidrs.len()
    );
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
    }
    Ok(())
}
