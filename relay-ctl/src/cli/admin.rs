//! The operator's commands against the running daemon (`block`, `allow`, `bans`, `users`,
//! `stats`): each builds a [`Request`], sends it over the admin socket and renders the reply —
//! a table by default, the reply's data as JSON with `--json`.

mod args;
pub mod duration;
mod import;
pub mod render;
pub mod table;

use std::{
    fmt,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use serde::Deserialize;

pub use self::args::{
    AdminArgs, AdminCommand, AllowCommand, BansCommand, BlockCommand, UsersCommand,
};
use self::render::Messages;
use crate::{
    config,
    control::{
        api::{ErrorKind, Reply, Request, Response},
        client::{self, ClientError},
    },
};

/// Exit statuses of the admin commands, shown in their `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status (block, allow, bans, users, stats):
  0  success
  1  the daemon refused or failed the request (bad request, not found, failed),
     or `block import` found nothing importable
  2  usage error: bad arguments, unreadable FILE or --config
  3  the daemon is not running, or its socket is unreachable or not answering
  4  permission denied on the admin socket (run as root, or as a member of its group), or
     a change asked by a read-only caller ([admin] read_group)";

/// How an admin command ended; [`Exit::code`] is the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// The daemon reported an error (or an import had nothing to send).
    Failed = 1,
    /// Bad arguments or unreadable input files.
    Usage = 2,
    /// No daemon to talk to.
    Unreachable = 3,
    /// The admin socket refused us.
    PermissionDenied = 4,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The status for a failed exchange with the daemon.
    pub fn for_client_error(error: &ClientError) -> Exit {
        match error {
            ClientError::NotRunning { .. }
            | ClientError::Connect { .. }
            | ClientError::Timeout { .. } => Exit::Unreachable,
            ClientError::PermissionDenied { .. } => Exit::PermissionDenied,
            ClientError::Protocol(_) => Exit::Failed,
            ClientError::TooLarge { .. } => Exit::Usage,
        }
    }

    /// The status for a daemon-reported error.
    pub fn for_error_kind(kind: ErrorKind) -> Exit {
        match kind {
            ErrorKind::Forbidden => Exit::PermissionDenied,
            ErrorKind::BadRequest
            | ErrorKind::NotFound
            | ErrorKind::Failed
            | ErrorKind::RateLimited => Exit::Failed,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// A failed admin command: what to print and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// Exit status.
    pub exit: Exit,
    /// Message for stderr.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure::new(Exit::for_client_error(&error), error.to_string())
    }
}

/// Runs an admin command, printing its output; returns the process exit status.
pub fn run(args: &AdminArgs, command: AdminCommand) -> ExitCode {
    match execute(args, command) {
        Ok(text) => {
            print_stdout(&text);
            Exit::Ok.into()
        }
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit.into()
        }
    }
}

fn print_stdout(text: &str) {
    // A closed pipe (`relay-ctl block list | head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Runs an admin command and returns what to print on stdout.
pub fn execute(args: &AdminArgs, command: AdminCommand) -> Result<String, Failure> {
    let socket = socket_path(args)?;
    let session = Session {
        socket: &socket,
        json: args.json,
    };
    match plan(command) {
        Plan::Send {
            request,
            done,
            counted,
            detail,
        } => session.send(
            &request,
            Messages {
                done: &done,
                counted,
            },
            detail,
        ),
        Plan::Import {
            file,
            skip_private,
            strict,
        } => import::run(&session, &file, skip_private, strict),
    }
}

/// What a command does.
#[derive(Debug, PartialEq)]
enum Plan {
    /// One request; `done`/`counted` say what happened for a `Done`/`Count` reply, `detail`
    /// shows users one by one.
    Send {
        request: Request,
        done: String,
        counted: &'static str,
        detail: bool,
    },
    /// `block import`.
    Import {
        file: PathBuf,
        skip_private: bool,
        strict: bool,
    },
}

fn send(request: Request, done: String, counted: &'static str) -> Plan {
    Plan::Send {
        request,
        done,
        counted,
        detail: false,
    }
}

fn list(request: Request) -> Plan {
    send(request, "done".to_owned(), "changed")
}

fn plan(command: AdminCommand) -> Plan {
    use AdminCommand as A;
    match command {
        A::Block(BlockCommand::Add { cidr, ttl, reason }) => {
            let for_how_long = ttl.map_or_else(
                || " permanently".to_owned(),
                |t| format!(" for {}", duration::format(t)),
            );
            let request = Request::BlockAdd {
                cidr: cidr.to_string(),
                ttl_secs: ttl,
                reason,
            };
            send(request, format!("blocked {cidr}{for_how_long}"), "blocked")
        }
        A::Block(BlockCommand::Rm { cidr }) => send(
            Request::BlockRm {
                cidr: cidr.to_string(),
            },
            format!("unblocked {cidr}"),
            "unblocked",
        ),
        A::Block(BlockCommand::List) => list(Request::BlockList),
        A::Block(BlockCommand::Import {
            file,
            skip_private,
            strict,
        }) => Plan::Import {
            file,
            skip_private,
            strict,
        },
        A::Allow(AllowCommand::Add { cidr }) => send(
            Request::AllowAdd {
                cidr: cidr.to_string(),
            },
            format!("allowlisted {cidr}"),
            "allowlisted",
        ),
        A::Allow(AllowCommand::Rm { cidr }) => send(
            Request::AllowRm {
                cidr: cidr.to_string(),
            },
            format!("removed {cidr} from the allowlist"),
            "removed from the allowlist",
        ),
        A::Allow(AllowCommand::List) => list(Request::AllowList),
        A::Bans(BansCommand::List) => list(Request::BansList),
        A::Bans(BansCommand::Rm { addr }) => send(
            Request::BansRm {
                addr: addr.to_string(),
            },
            format!("lifted the ban on {addr}"),
            "bans lifted",
        ),
        A::Bans(BansCommand::Clear) => send(
            Request::BansClear,
            "lifted all bans".to_owned(),
            "bans lifted",
        ),
        A::Users(UsersCommand::List) => list(Request::UsersList),
        A::Users(UsersCommand::Show { name }) => Plan::Send {
            request: Request::UsersShow { name },
            done: "done".to_owned(),
            counted: "changed",
            detail: true,
        },
        A::Users(UsersCommand::Enable { name }) => send(
            Request::UsersEnable { name: name.clone() },
            format!("user {name} enabled"),
            "users enabled",
        ),
        A::Users(UsersCommand::Disable { name }) => send(
            Request::UsersDisable { name: name.clone() },
            format!("user {name} disabled"),
            "users disabled",
        ),
        A::Stats => list(Request::Stats),
    }
}

/// Where to find the daemon: `--socket`, else `[admin] socket` of `--config`, else the
/// embedded default's.
pub fn socket_path(args: &AdminArgs) -> Result<PathBuf, Failure> {
    if let Some(socket) = &args.socket {
        return Ok(socket.clone());
    }
    match &args.config {
        Some(file) => admin_socket_of(file).map_err(|m| Failure::new(Exit::Usage, m)),
        None => Ok(config::Config::embedded()
            .map(|c| c.admin.socket)
            .unwrap_or_else(|_| config::Admin::default().socket)),
    }
}

/// `[admin] socket` of a configuration file. Only the `[admin]` table is read, so the CLI does
/// not need the rest of the file to be valid (or its secrets to be checked).
fn admin_socket_of(file: &Path) -> Result<PathBuf, String> {
    #[derive(Deserialize)]
    struct AdminOnly {
        #[serde(default)]
        admin: config::Admin,
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let parsed: AdminOnly =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(parsed.admin.socket)
}

/// One CLI invocation's connection settings.
struct Session<'a> {
    socket: &'a Path,
    json: bool,
}

impl Session<'_> {
    /// Sends a request and renders its reply.
    fn send(
        &self,
        request: &Request,
        messages: Messages<'_>,
        detail: bool,
    ) -> Result<String, Failure> {
        let data = self.exchange(request, client::DEFAULT_TIMEOUT)?;
        Ok(if self.json {
            to_json(&data)
        } else {
            render::reply(&data, messages, detail)
        })
    }

    /// Sends a request; a daemon error becomes a [`Failure`] (printed as JSON on stdout too
    /// with `--json`, so scripts can read it).
    fn exchange(&self, request: &Request, timeout: Duration) -> Result<Reply, Failure> {
        match client::call_with_timeout(self.socket, request, timeout)? {
            Response::Ok { data } => Ok(data),
            Response::Error { kind, message } => {
                if self.json {
                    print_stdout(&to_json(&Response::Error {
                        kind,
                        message: message.clone(),
                    }));
                }
                Err(Failure::new(Exit::for_error_kind(kind), message))
            }
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| format!("{{\"error\": \"encoding JSON: {e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
