//! Command-line interface: one module per subcommand.

pub mod config_check;
pub mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// relay: a Telegram MTProto proxy whose abuse defences run in the kernel.
#[derive(Debug, Parser)]
#[command(name = "relay-ctl", version, about)]
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
    },
    /// Configuration commands.
    Config {
        /// What to do with the configuration.
        #[command(subcommand)]
        command: ConfigCommand,
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
