//! `relay-ctl run`: load and attach XDP (or fall back to userspace), listen, serve until
//! SIGINT/SIGTERM, then save state and detach. SIGHUP reloads the configuration.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::{Config, XdpMode},
    daemon::Daemon,
    server,
    shield::{Enforcement, Shield},
    xdp::{self, XdpError, XdpProgram},
};

/// How often bans and usage are written to the state dir (operator changes are written at
/// once).
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// Runs the relay until a termination signal.
pub async fn run(config_path: Option<&Path>, print_links: bool) -> anyhow::Result<()> {
    let config = super::load_config(config_path)?;
    if let Some(warning) = config_path.and_then(|p| crate::config::secrets_exposure(p, &config)) {
        tracing::warn!("{warning}");
    }
    crate::logging::init_with(&config.log);
    tracing::info!(
        config = %config_path.map_or_else(|| "embedded default".to_owned(), |p| p.display().to_string()),
        "relay-ctl {} starting",
        env!("CARGO_PKG_VERSION")
    );
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
    let admin = config.admin.clone();
    let daemon = Daemon::start(config_path.map(Path::to_owned), config, shield).await?;

    let admin_server = crate::control::server::serve(
        &admin.socket,
        admin.mode,
        admin.group.as_deref(),
        daemon.clone(),
    )
    .await
    .context("starting the admin socket")?;
    tracing::info!(socket = %admin.socket.display(), "admin socket ready");
    let metrics = crate::telemetry::install(&daemon.config().metrics)?;

    let mut tasks = Vec::new();
    for listener in listeners {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        tasks.push(tokio::spawn(server::accept_loop(listener, daemon.clone())));
    }
    tasks.push(tokio::spawn(upkeep(daemon.clone())));
    if let Some(listen) = metrics {
        tasks.push(tokio::spawn(crate::telemetry::export(daemon.clone())));
        tracing::info!(%listen, "metrics endpoint listening");
    }
    if print_links {
        // Links carry secrets: stdout only, never the log.
        super::link::run(config_path, None, None)?;
    }
    tracing::info!(enforcement = %daemon.shield.read().await.enforcement(), "ready");

    serve_signals(&daemon).await?;
    for task in &tasks {
        task.abort();
    }
    drop(admin_server);
    daemon.save_runtime_state().await;
    daemon.shield.write().await.shutdown();
    if let Some(task) = log_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Sweeps expiries every second, saves runtime state every [`SAVE_EVERY`], re-reads feeds
/// every `[blocklist] refresh_secs`.
async fn upkeep(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_save = tokio::time::Instant::now();
    let mut last_feeds = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        daemon.sweep().await;
        if last_save.elapsed() >= SAVE_EVERY {
            daemon.save_runtime_state().await;
            last_save = tokio::time::Instant::now();
        }
        let refresh = Duration::from_secs(daemon.config().blocklist.refresh_secs.max(1));
        if last_feeds.elapsed() >= refresh {
            daemon.refresh_feeds().await;
            last_feeds = tokio::time::Instant::now();
        }
    }
}

/// Handles SIGHUP (reload) until SIGINT or SIGTERM.
async fn serve_signals(daemon: &Daemon) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()); }
            _ = hup.recv() => match daemon.reload().await {
                Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
                Err(e) => tracing::error!("SIGHUP: configuration rejected, keeping the running one: {e:#}"),
            },
        }
    }
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
