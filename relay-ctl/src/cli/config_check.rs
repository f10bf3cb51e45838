//! `relay-ctl config check [FILE]`

use std::path::Path;

use crate::config::Config;

/// Parses and validates the file, then prints a summary of the effective configuration.
pub fn run(file: Option<&Path>) -> anyhow::Result<()> {
    let config = match file {
        Some(path) => Config::load(path)?,
        None => Config::embedded()?,
    };
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
        "  lists           {} blocked, {} allowed",
        config.blocklist.cidrs.len(),
        config.allowlist.cidrs.len()
    );
    Ok(())
}
