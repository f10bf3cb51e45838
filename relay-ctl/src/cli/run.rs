//! `relay-ctl run`: load and attach XDP (or fall back to userspace), listen, drop privileges,
//! serve until SIGINT/SIGTERM, then stop accepting, drain, save state and detach (or leave XDP
//! pinned). SIGHUP reloads the configuration.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admission::{Admission, Enforcement},
    config::{Config, XdpMode},
    daemon::Daemon,
    listener, privilege,
    state_dir::StateDir,
    xdp::{self, XdpError, XdpProgram, pin::PinDir},
};

/// How often bans and usage are written to the state dir (operator changes are written at
/// once).
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// Runs the relay until a termination signal. The privileged part (binding the ports,
/// loading and attaching XDP, dropping to `[server] user`) runs before the async runtime
/// starts any thread, because capabilities belong to threads, not processes.
pub fn run(config_path: Option<&Path>, print_links: bool) -> anyhow::Result<()> {
    let started = start(config_path)?;
    // The control plane (signals, admin socket, metrics, upkeep, CrowdSec): relaying runs on
    // the relay threads ([`RelayThreads`]).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(started, config_path, print_links))
}

/// What [`start`] prepared while privileged.
struct Started {
    config: Config,
    /// Per relay thread, its copy of every listening socket.
    listeners: Vec<Vec<std::net::TcpListener>>,
    admission: Admission,
    logger: Option<xdp::Logger>,
    crowdsec: Option<crate::crowdsec::Credentials>,
    /// `[upstream] socks5`, its password read.
    socks5: Option<crate::relay::upstream::Socks5Upstream>,
    /// `[state] dir`, opened and checked before anything else started.
    state: StateDir,
    /// The sockmap program, when `[server] passthrough = "auto"` and the kernel allows it.
    passage: Option<crate::passage::Passage>,
}

/// Loads the configuration, binds, loads XDP and gives up root, all on one thread.
fn start(config_path: Option<&Path>) -> anyhow::Result<Started> {
    let config = super::load_config(config_path)?;
    // Logging starts with the config's `[log]`: every warning about the config comes after it,
    // or it would go nowhere.
    crate::logging::init_with(&config.log);
    if let Some(warning) = config_path.and_then(|p| crate::config::secrets_exposure(p, &config)) {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        config = %config_path.map_or_else(|| "embedded default".to_owned(), |p| p.display().to_string()),
        "relay-ctl {} starting",
        env!("CARGO_PKG_VERSION")
    );
    for line in crate::config::exposure(&config) {
        tracing::warn!("{line}");
    }
    if let Some(note) = config.server.balancer_note() {
        tracing::warn!("{note}");
    }
    raise_fd_limit(&config);
    // The state dir first: a directory another account could write into stops the start
    // before anything is bound or loaded. It is opened for the user the relay will run as.
    let target = config
        .server
        .user
        .as_deref()
        .map(|user| privilege::resolve(user, config.server.group.as_deref()))
        .transpose()?;
    if let Some(target) = &target {
        privilege::prepare_dir(&config.state.dir, target, "[state] dir", "StateDirectory=")?;
    }
    let owner = target
        .as_ref()
        .map_or_else(nix::unistd::geteuid, |t| t.uid)
        .as_raw();
    let state = StateDir::open(&config.state.dir, owner)?;
    // Bind first: a taken port is the most common start-up failure and needs no BPF to find.
    let listeners = listener::bind(&config.server.listen, relay_thread_count())?;

    let (enforcement, logger) = start_xdp(&config)?;
    let mut admission = Admission::new(enforcement);
    admission
        .apply(&config)
        .context("writing configuration and lists into the enforcement maps")?;
    match admission.enforcement() {
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
    let passage = start_passage(&config);
    // Key files may be readable by root only: read them before giving root up.
    let crowdsec = config
        .crowdsec
        .as_ref()
        .map(crate::crowdsec::Credentials::read)
        .transpose()?;
    let socks5 = crate::relay::upstream::Socks5Upstream::read(&config.upstream)?;
    if let (Some(user), Some(target)) = (&config.server.user, &target) {
        if let Some(dir) = config
            .admin
            .socket
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            privilege::prepare_dir(dir, target, "[admin] socket directory", "RuntimeDirectory=")?;
        }
        privilege::drop_to(target)?;
        tracing::info!(
            user,
            capabilities = "CAP_BPF CAP_NET_ADMIN",
            "dropped privileges"
        );
    } else if !nix::unistd::geteuid().is_root() {
        // Started unprivileged with capabilities (systemd, a container): ports bound and the
        // program loaded, only what running needs stays.
        privilege::shed()?;
        tracing::info!(
            capabilities = "CAP_BPF CAP_NET_ADMIN",
            "gave up the start-up capabilities"
        );
    }
    Ok(Started {
        config,
        listeners,
        admission,
        logger,
        crowdsec,
        socks5,
        state,
        passage,
    })
}

/// Loads the sockmap program for passthrough bytes, or says why they are spliced instead.
fn start_passage(config: &Config) -> Option<crate::passage::Passage> {
    match crate::passage::Passage::start(config.server.passthrough) {
        Ok(passage) => {
            tracing::info!("passthrough bytes move in the kernel (sockmap)");
            Some(passage)
        }
        Err(crate::passage::PassageError::Off) => {
            tracing::info!(
                mode = ?config.server.passthrough,
                "passthrough bytes move by [server] passthrough"
            );
            None
        }
        Err(e) => {
            tracing::warn!("sockmap not used ({e}); splicing passthrough bytes instead");
            None
        }
    }
}

/// Serves until SIGTERM/SIGINT, then drains, saves state and detaches.
async fn serve(
    started: Started,
    config_path: Option<&Path>,
    print_links: bool,
) -> anyhow::Result<()> {
    let Started {
        config,
        listeners,
        admission,
        logger,
        crowdsec,
        socks5,
        state,
        passage,
    } = started;
    let log_task = logger.map(|l| tokio::spawn(xdp::drain_logs(l)));
    let admin = config.admin.clone();
    let daemon = Daemon::start(
        config_path.map(Path::to_owned),
        config,
        admission,
        state,
        socks5,
        passage,
    )
    .await?;
    let stale = daemon.admission.write().await.drop_stale_kernel_entries();
    if stale > 0 {
        tracing::info!(
            stale,
            "removed entries the pinned maps kept from the previous run"
        );
    }

    let admin_server = crate::control::server::serve(&admin, daemon.clone())
        .await
        .context("starting the admin socket")?;
    tracing::info!(socket = %admin.socket.display(), "admin socket ready");
    let metrics = crate::telemetry::install(&daemon.config().metrics)?;

    for listener in listeners.first().into_iter().flatten() {
        tracing::info!(addr = %listener.local_addr()?, threads = listeners.len(), "listening");
    }
    let mut relaying = RelayThreads::start(listeners, &daemon)?;
    let crowdsec = match (crowdsec, &daemon.config().crowdsec) {
        (Some(credentials), Some(settings)) => Some(crate::crowdsec::start(
            settings,
            credentials,
            daemon.admission.clone(),
            &daemon.misuse,
            daemon.crowdsec.clone(),
        )?),
        _ => None,
    };
    let mut tasks = vec![tokio::spawn(upkeep(daemon.clone()))];
    let config = {
        let daemon = daemon.clone();
        move || daemon.config()
    };
    tasks.push(tokio::spawn(crate::relay::mask_flight::run(
        daemon.flight.clone(),
        config.clone(),
    )));
    // ME connections run on this (control-plane) runtime; clients on the relay threads talk
    // to them through channels.
    tasks.push(tokio::spawn(crate::middle::run(
        daemon.middle.clone(),
        config,
    )));
    if let Some(listen) = metrics {
        let daemon = daemon.clone();
        tasks.push(tokio::spawn(crate::daemon::publish::export(move || {
            let daemon = daemon.clone();
            async move { daemon.stats().await }
        })));
        tracing::info!(%listen, "metrics endpoint listening");
    }
    if print_links {
        // Links carry secrets: stdout only, never the log.
        super::link::run(config_path, None, None, super::link::Qr::default())?;
    }
    // Handlers before `ready`: a signal sent once the line is seen must not kill the process.
    let mut signals = UnixSignals::install()?;
    tracing::info!(enforcement = %daemon.admission.read().await.enforcement(), "ready");

    signals.serve(&daemon).await;
    // Stop accepting: dropping the listeners makes the kernel refuse new connections.
    relaying.stop_accepting().await;
    drain(&daemon, &mut signals).await;
    relaying.exit().await;
    if let Some(crowdsec) = crowdsec {
        crowdsec.stop();
    }
    for task in &tasks {
        task.abort();
    }
    drop(admin_server);
    daemon.save_state_at_exit().await;
    daemon.admission.write().await.shutdown();
    if let Some(task) = log_task {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// One relay thread per CPU the process may run on.
fn relay_thread_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// What the relay threads are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Accepting,
    Draining,
    Exit,
}

/// The relay threads: each runs a single-threaded runtime with its own copy of the listening
/// sockets (SO_REUSEPORT), and serves the connections it accepts from start to end. A
/// connection's tasks never move between threads and no thread wakes another, which costs
/// less per handshake than a work-stealing runtime.
struct RelayThreads {
    phase: tokio::sync::watch::Sender<Phase>,
    /// One message per thread once it has closed its listeners.
    closed: tokio::sync::mpsc::Receiver<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RelayThreads {
    fn start(sets: Vec<Vec<std::net::TcpListener>>, daemon: &Arc<Daemon>) -> anyhow::Result<Self> {
        let (phase, _) = tokio::sync::watch::channel(Phase::Accepting);
        let (closed_tx, closed) = tokio::sync::mpsc::channel(sets.len().max(1));
        let mut threads = Vec::with_capacity(sets.len());
        for (index, set) in sets.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a relay thread's runtime")?;
            let listeners = {
                // Registering with this thread's reactor needs its runtime entered.
                let _entered = runtime.enter();
                set.into_iter()
                    .map(tokio::net::TcpListener::from_std)
                    .collect::<Result<Vec<_>, _>>()?
            };
            let daemon = daemon.clone();
            let mut phase = phase.subscribe();
            let closed_tx = closed_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("relay-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let accepting: Vec<_> = listeners
                            .into_iter()
                            .map(|l| tokio::spawn(listener::accept_loop(l, daemon.clone())))
                            .collect();
                        let _ = phase.wait_for(|p| *p >= Phase::Draining).await;
                        for task in &accepting {
                            task.abort();
                        }
                        for task in accepting {
                            let _ = task.await;
                        }
                        let _ = closed_tx.send(()).await;
                        // Connections go on being served until the drain ends.
                        let _ = phase.wait_for(|p| *p == Phase::Exit).await;
                    });
                })
                .context("starting a relay thread")?;
            threads.push(thread);
        }
        Ok(RelayThreads {
            phase,
            closed,
            threads,
        })
    }

    /// Closes every listener and returns once all threads have.
    async fn stop_accepting(&mut self) {
        let _ = self.phase.send(Phase::Draining);
        for _ in 0..self.threads.len() {
            if self.closed.recv().await.is_none() {
                break;
            }
        }
    }

    /// Ends the threads: connections still open are closed.
    async fn exit(self) {
        let _ = self.phase.send(Phase::Exit);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Waits for open connections to finish, at most `[server] drain_secs`; a second signal ends
/// the wait at once.
async fn drain(daemon: &Daemon, signals: &mut UnixSignals) {
    let open = daemon.capacity.connections();
    let limit = Duration::from_secs(daemon.config().server.drain_secs);
    if open == 0 || limit.is_zero() {
        return;
    }
    tracing::info!(open, limit_secs = limit.as_secs(), "draining connections");
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if daemon.capacity.connections() == 0 {
                    tracing::info!("all connections finished");
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(open = daemon.capacity.connections(), "drain time over: closing the rest");
                return;
            }
            () = signals.stop() => {
                tracing::info!(open = daemon.capacity.connections(), "second signal: closing the rest now");
                return;
            }
        }
    }
}

/// Raises the soft open-file limit to the hard one: each connection needs two descriptors.
/// Warns when even that is short of `[limits] max_connections`.
fn raise_fd_limit(config: &Config) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "could not raise the open-file limit");
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
    let needed = 2 * config.limits.max_connections.get() as u64 + 256;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below what [limits] max_connections needs: accepts will fail \
             before the bound is reached (raise LimitNOFILE= or lower max_connections)"
        );
    }
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

/// The process's SIGTERM, SIGINT and SIGHUP handlers, installed once.
struct UnixSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl UnixSignals {
    fn install() -> anyhow::Result<UnixSignals> {
        Ok(UnixSignals {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// Handles SIGHUP (reload) until SIGINT or SIGTERM.
    async fn serve(&mut self, daemon: &Daemon) {
        loop {
            tokio::select! {
                _ = self.term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
                _ = self.int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
                _ = self.hup.recv() => match daemon.reload().await {
                    Ok(()) => tracing::info!("SIGHUP: configuration reloaded"),
                    // With its causes, as the operator needs them to fix the file.
                    Err(e) => tracing::error!(
                        "SIGHUP: configuration rejected, keeping the running one: {:#}",
                        anyhow::Error::from(e)
                    ),
                },
            }
        }
    }

    /// Resolves at the next SIGTERM or SIGINT.
    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
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
    let mut removed = 0;
    let pins = if config.xdp.keep_on_exit {
        Some(PinDir::open(&config.xdp.pin_dir)?)
    } else {
        removed = PinDir::clear(&config.xdp.pin_dir);
        if removed > 0 {
            tracing::info!(
                removed,
                dir = %config.xdp.pin_dir.display(),
                "keep_on_exit is off: removed what an earlier run pinned"
            );
        }
        None
    };
    let (mut program, logger) = match XdpProgram::load(pins) {
        Ok(loaded) => loaded,
        Err(e) => return fall_back(config, e),
    };
    // The port set is the program's own, never pinned: written before attaching, so a program
    // taking over a pinned link never runs without it.
    if let Err(e) = program.maps().set_ports(&config.listen_ports()) {
        return fall_back(config, e.into());
    }
    // A link whose pin was just removed is released by the kernel asynchronously: until
    // then the interface is busy, so retry for a moment (bounded) in that case only.
    let tries = if removed > 0 { 30 } else { 1 };
    for interface in &interfaces {
        for attempt in 1..=tries {
            match program.attach(interface, config.xdp.mode) {
                Ok(_) => break,
                Err(_) if attempt < tries => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => {
                    program.detach_all();
                    return fall_back(config, e);
                }
            }
        }
    }
    Ok((Enforcement::Kernel(Box::new(program)), logger))
}

fn fall_back(
    config: &Config,
    error: XdpError,
) -> anyhow::Result<(Enforcement, Option<xdp::Logger>)> {
    let mut reason = xdp::error_chain(&error);
    if matches!(error, XdpError::Program(_)) && !privilege::has_effective(privilege::CAP_PERFMON) {
        // The verifier refuses the program's packet-pointer arithmetic to such a loader.
        reason = format!(
            "without CAP_PERFMON the kernel's verifier refuses the program; grant it at start              (systemd AmbientCapabilities=, a container's cap_add), relay gives it up once              started: {reason}"
        );
    }
    if config.xdp.mode == XdpMode::Auto {
        Ok((Enforcement::Userspace { reason }, None))
    } else {
        // The operator asked for a specific mode: not getting it is an error, not a fallback.
        Err(anyhow::anyhow!("{reason}"))
    }
}
