//! Command-line interface: one module per subcommand.

pub mod admin;
pub mod config_check;
pub mod doctor;
pub mod link;
pub mod qr;
pub mod run;

use std::path::{Path, PathBuf};

use crate::config::Config;

/// The configuration at `path`, or the embedded default.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded()?,
    })
}

/// Opens `[state] dir` for the account the relay runs as: `[server] user` if set, else the
/// current one. Refuses a directory another account could write into.
pub fn open_state_dir(config: &Config) -> anyhow::Result<crate::state_dir::StateDir> {
    Ok(crate::state_dir::StateDir::open(
        &config.state.dir,
        state_owner(config)?,
    )?)
}

/// Whether `relay-ctl run` would accept `[state] dir` as it is: `None` if it does not exist
/// yet (nothing is created here).
pub fn open_state_dir_check(config: &Config) -> anyhow::Result<Option<()>> {
    if !config.state.dir.exists() {
        return Ok(None);
    }
    open_state_dir(config).map(|_| Some(()))
}

/// The uid the relay runs as: `[server] user`'s, else this process's.
fn state_owner(config: &Config) -> anyhow::Result<u32> {
    Ok(match &config.server.user {
        Some(user) => crate::privilege::resolve(user, config.server.group.as_deref())?
            .uid
            .as_raw(),
        None => nix::unistd::geteuid().as_raw(),
    })
}

use clap::{Parser, Subcommand};

/// relay: a Telegram MTProto proxy whose abuse defences run in the kernel.
#[derive(Debug, Parser)]
#[command(name = "relay-ctl", version, about, after_help = admin::EXIT_STATUS_HELP)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: attach XDP, listen, relay.
    Run {
        /// Configuration file (TOML); without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the users' proxy links on stdout at start (they contain the secrets).
        #[arg(long)]
        print_links: bool,
    },
    /// Print tg:// and https://t.me proxy links for the enabled modes.
    Link {
        /// Configuration file; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Host name or address clients connect to.
        #[arg(long)]
        host: Option<String>,
        /// After each mode's links, print its tg:// link as a QR code (Unicode half blocks,
        /// light on dark) for a phone camera.
        #[arg(long)]
        qr: bool,
        /// Write each mode's tg:// link as a QR code PNG into DIR, named `<user>-<mode>.png`
        /// (e.g. `alice-tls.png`); DIR is created if missing, existing files are replaced.
        #[arg(long, value_name = "DIR")]
        qr_png: Option<PathBuf>,
    },
    /// Secret commands.
    Secret {
        /// What to do.
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Configuration commands.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Operator blocklist of the running daemon: add, remove, list, import netsets.
    #[command(after_help = admin::EXIT_STATUS_HELP)]
    Block {
        /// Admin socket and output options.
        #[command(flatten)]
        admin: admin::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: admin::BlockCommand,
    },
    /// Operator allowlist of the running daemon.
    #[command(after_help = admin::EXIT_STATUS_HELP)]
    Allow {
        /// Admin socket and output options.
        #[command(flatten)]
        admin: admin::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: admin::AllowCommand,
    },
    /// Automatic bans of misbehaving sources.
    #[command(after_help = admin::EXIT_STATUS_HELP)]
    Bans {
        /// Admin socket and output options.
        #[command(flatten)]
        admin: admin::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: admin::BansCommand,
    },
    /// Users of the running daemon: usage, enable, disable.
    #[command(after_help = admin::EXIT_STATUS_HELP)]
    Users {
        /// Admin socket and output options.
        #[command(flatten)]
        admin: admin::AdminArgs,
        /// What to do.
        #[command(subcommand)]
        command: admin::UsersCommand,
    },
    /// Counters of the running daemon.
    #[command(after_help = admin::EXIT_STATUS_HELP)]
    Stats {
        /// Admin socket and output options.
        #[command(flatten)]
        admin: admin::AdminArgs,
    },
    /// Check the config, the mask site, the clock, the DCs, the running relay and the public
    /// host name; one line per check (`ok|FAIL|skip <name>: ...`), exit status 1 if any fails.
    Doctor {
        /// Configuration file; without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print `{"ok": bool, "checks": [{"name", "status", "detail", "fix"}]}`.
        #[arg(long)]
        json: bool,
        /// Skip the checks that need the network beyond loopback.
        #[arg(long)]
        offline: bool,
        /// Trust this CA file (PEM) for the mask instead of the system bundle: for testing
        /// private masks.
        #[arg(long, value_name = "FILE")]
        mask_ca: Option<PathBuf>,
    },
}

/// `relay-ctl config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file and print its effective settings.
    Check {
        /// File to check; without it the embedded default is checked.
        file: Option<PathBuf>,
    },
}

/// `relay-ctl secret ...`
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a fresh random secret for a `[[users]]` entry.
    New,
}
