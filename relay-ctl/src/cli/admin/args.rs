//! The admin commands' arguments (clap).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{EXIT_STATUS_HELP, duration};
use crate::config::{Cidr, CidrError};

/// Options shared by the admin commands.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminArgs {
    /// Admin socket of the running daemon [default: `[admin] socket` of --config, else
    /// /run/relay/admin.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Configuration file to take the admin socket path from.
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the reply's data as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `relay-ctl block ...`
#[derive(Debug, Clone, Subcommand)]
pub enum BlockCommand {
    /// Block an address or CIDR (new connections from it are dropped).
    #[command(after_help = EXIT_STATUS_HELP)]
    Add {
        /// Address or CIDR, e.g. 192.0.2.0/24 or 2001:db8::/32.
        #[arg(value_parser = parse_cidr)]
        cidr: Cidr,
        /// Lift the block after this long: 30s, 10m, 2h, 7d, 1h30m or seconds [default:
        /// permanent].
        #[arg(long, value_parser = duration::parse, value_name = "DURATION")]
        ttl: Option<u64>,
        /// Why (shown in `block list`).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Remove an operator block.
    #[command(after_help = EXIT_STATUS_HELP)]
    Rm {
        /// Address or CIDR, as added.
        #[arg(value_parser = parse_cidr)]
        cidr: Cidr,
    },
    /// List blocked prefixes from every source (config, operator, feeds).
    #[command(after_help = EXIT_STATUS_HELP)]
    List,
    /// Block every entry of a FireHOL netset file (warns about private ranges).
    #[command(after_help = EXIT_STATUS_HELP)]
    Import {
        /// The netset: one address or CIDR per line, `#` comments.
        file: PathBuf,
        /// Leave out entries in private or special ranges (RFC 1918, loopback, ...).
        #[arg(long)]
        skip_private: bool,
        /// Import nothing if any line is malformed.
        #[arg(long)]
        strict: bool,
    },
}

/// `relay-ctl allow ...`
#[derive(Debug, Clone, Subcommand)]
pub enum AllowCommand {
    /// Allowlist an address or CIDR (never banned, never limited).
    #[command(after_help = EXIT_STATUS_HELP)]
    Add {
        /// Address or CIDR.
        #[arg(value_parser = parse_cidr)]
        cidr: Cidr,
    },
    /// Remove an operator allowlist entry.
    #[command(after_help = EXIT_STATUS_HELP)]
    Rm {
        /// Address or CIDR, as added.
        #[arg(value_parser = parse_cidr)]
        cidr: Cidr,
    },
    /// List allowlisted prefixes.
    #[command(after_help = EXIT_STATUS_HELP)]
    List,
}

/// `relay-ctl bans ...`
#[derive(Debug, Clone, Subcommand)]
pub enum BansCommand {
    /// List the automatic bans in force.
    #[command(after_help = EXIT_STATUS_HELP)]
    List,
    /// Lift the ban covering an address, or a prefix ban.
    #[command(after_help = EXIT_STATUS_HELP)]
    Rm {
        /// The banned address (for IPv6, any address in the banned /64), or a banned prefix as
        /// listed (`198.51.100.0/24`, `2001:db8:1::/48`).
        addr: crate::admission::BanTarget,
    },
    /// Lift every ban.
    #[command(after_help = EXIT_STATUS_HELP)]
    Clear,
}

/// `relay-ctl users ...`
#[derive(Debug, Clone, Subcommand)]
pub enum UsersCommand {
    /// List users with their usage.
    #[command(after_help = EXIT_STATUS_HELP)]
    List,
    /// Show one user in detail.
    #[command(after_help = EXIT_STATUS_HELP)]
    Show {
        /// User name.
        name: String,
    },
    /// Admit new connections of a user again.
    #[command(after_help = EXIT_STATUS_HELP)]
    Enable {
        /// User name.
        name: String,
    },
    /// Refuse new connections of a user (persisted across restarts).
    #[command(after_help = EXIT_STATUS_HELP)]
    Disable {
        /// User name.
        name: String,
    },
}

/// Any admin command.
#[derive(Debug, Clone)]
pub enum AdminCommand {
    /// `block ...`
    Block(BlockCommand),
    /// `allow ...`
    Allow(AllowCommand),
    /// `bans ...`
    Bans(BansCommand),
    /// `users ...`
    Users(UsersCommand),
    /// `stats`
    Stats,
}

pub(super) fn parse_cidr(text: &str) -> Result<Cidr, CidrError> {
    text.parse()
}
