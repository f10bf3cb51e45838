//! `relay-ctl run`: load and attach XDP (or fall back to userspace), listen, serve until
//! SIGINT/SIGTERM, then detach.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::RwLock,
};

use crate::{
    config::{Config, XdpMode},
    misuse::Misuse,
    relay::{RelayContext, accounts::Accounts, context::replay_cache},
    server,
    shield::{Enforcement, Shield},
    users,
    xdp::{self, XdpError, XdpProgram},
};

/// Runs the relay until a termination signal.
pub async fn run(config_path: Option<&Path>, print_links: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    tracing::info!(
        config = %config_path.map_or_else(|| "embedded default".to_owned(), |p| p.display().to_string()),
        "relay-ctl {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let (users, created) = users::resolve(&config).context("resolving users")?;
    if created {
        tracing::info!(
            dir = %config.state.dir.display(),
            "no [[users]] configured: generated a secret for user `default`"
        );
    }
    // Bind first: a taken port is the most common start-up failure and needs no BPF to find.
    let listeners = server::bind(&config.server.listen).await?;

    let (enforcement, logger) = start_xdp(&config)?;
    let mut shield = Shield::new(enforcement);
    shield
        .apply(&config)
        .context("writing configuration and lists into the enforcement maps")?;
    match shield.enforcement() {
        Enforcement::Kernel(program) => {
            for (interface, mode) in program.attachments() {
                tracing::info!(interface, %mode, "XDP attached");
            }
        }
        Enforcement::Userspace { reason } => {
            tracing::warn!(
                "XDP not used ({reason}); enforcing lists and limits in userspace at accept time"
            );
        }
    }
    let log_task = logger.map(|l| tokio::spawn(xdp::drain_logs(l)));

    let shield = Arc::new(RwLock::new(shield));
    let misuse = Arc::new(Misuse::new(&config.misuse, shield.clone()));
    let accounts = Arc::new(Accounts::default());
    let replay = replay_cache(&config);
    let relay = Arc::new(RelayContext::new(
        &config,
        users,
        &accounts,
        replay.clone(),
        misuse.clone(),
    ));
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            misuse.sweep().await;
        }
    });
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        accept_tasks.push(tokio::spawn(server::accept_loop(
            listener,
            shield.clone(),
            relay.clone(),
        )));
    }
    if print_links {
        // Links carry secrets: stdout only, never the log.
        super::link::run(config_path, None, None)?;
    }
    tracing::info!(enforcement = %shield.read().await.enforcement(), "ready");

    wait_for_termination().await?;
    for task in &accept_tasks {
        task.abort();
    }
    sweeper.abort();
    shield.write().await.shutdown();
    if let Some(task) = log_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads and attaches XDP as the config asks; where XDP cannot be used, explains why once and
/// falls back to userspace. Errors only for what the operator must fix (e.g. an unknown
/// interface, or `native` refused).
fn start_xdp(config: &Config) -> anyhow::Result<(Enforcement, Option<xdp::Logger>)> {
    if config.xdp.mode == XdpMode::Off {
        return Ok((
            Enforcement::Userspace {
                reason: "[xdp] mode = \"off\"".to_owned(),
            },
            None,
        ));
    }
    let interfaces = xdp::interfaces::resolve(&config.xdp.interfaces, &config.server.listen)?;
    let (mut program, logger) = match XdpProgram::load() {
        Ok(loaded) => loaded,
        Err(e) => return fall_back(config, e),
    };
    for interface in &interfaces {
        if let Err(e) = program.attach(interface, config.xdp.mode) {
            program.detach_all();
            return fall_back(config, e);
        }
    }
    Ok((Enforcement::Kernel(Box::new(program)), logger))
}

fn fall_back(
    config: &Config,
    error: XdpError,
) -> anyhow::Result<(Enforcement, Option<xdp::Logger>)> {
    let reason = xdp::error_chain(&error);
    if config.xdp.mode == XdpMode::Auto {
        Ok((Enforcement::Userspace { reason }, None))
    } else {
        // The operator asked for a specific mode: not getting it is an error, not a fallback.
        Err(anyhow::anyhow!("{reason}"))
    }
}

async fn wait_for_termination() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}
