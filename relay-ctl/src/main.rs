//! relay-ctl: the relay daemon and its command-line interface.

use std::process::ExitCode;

use clap::Parser as _;
use relay_ctl::cli::{
    Cli, Command, ConfigCommand, SecretCommand,
    admin::{self, AdminCommand},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` installs the logger itself, as its configuration's `[log]` says.
    if !matches!(cli.command, Command::Run { .. }) {
        relay_ctl::logging::init();
    }
    let result = match cli.command {
        Command::Run {
            config,
            print_links,
        } => relay_ctl::cli::run::run(config.as_deref(), print_links),
        Command::Link {
            config,
            user,
            host,
            qr,
            qr_png,
        } => relay_ctl::cli::link::run(
            config.as_deref(),
            user.as_deref(),
            host.as_deref(),
            relay_ctl::cli::link::Qr {
                terminal: qr,
                png_dir: qr_png.as_deref(),
            },
        ),
        Command::Secret {
            command: SecretCommand::New,
        } => {
            relay_ctl::cli::link::new_secret();
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => relay_ctl::cli::config_check::run(file.as_deref()),
        // Admin commands have their own exit statuses (see `relay-ctl block --help`).
        Command::Block { admin, command } => {
            return admin::run(&admin, AdminCommand::Block(command));
        }
        Command::Allow { admin, command } => {
            return admin::run(&admin, AdminCommand::Allow(command));
        }
        Command::Bans { admin, command } => return admin::run(&admin, AdminCommand::Bans(command)),
        Command::Users { admin, command } => {
            return admin::run(&admin, AdminCommand::Users(command));
        }
        Command::Stats { admin } => return admin::run(&admin, AdminCommand::Stats),
        // The doctor's exit status is its checks' verdict.
        Command::Doctor {
            config,
            json,
            offline,
            mask_ca,
        } => {
            let options = relay_ctl::cli::doctor::Options {
                config,
                offline,
                mask_ca,
            };
            return relay_ctl::cli::doctor::main(&options, json);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-ctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
