//! Tests of the admin CLI: argument parsing, the request each command sends, socket path
//! resolution, import chunking, exit statuses, and whole commands against an in-process
//! admin server with a recording handler.

use std::sync::Arc;

use clap::Parser as _;

use super::{
    import::{chunks, importable},
    *,
};
use crate::{
    cli::{Cli, Command},
    control::{
        netset,
        server::{self, MAX_LINE, ServerHandle, tests::Recorder},
    },
};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("relay-ctl").chain(args.iter().copied()))
}

/// The admin options and command of a command line.
fn admin(args: &[&str]) -> (AdminArgs, AdminCommand) {
    match parse(args).expect("parses").command {
        Command::Block { admin, command } => (admin, AdminCommand::Block(command)),
        Command::Allow { admin, command } => (admin, AdminCommand::Allow(command)),
        Command::Bans { admin, command } => (admin, AdminCommand::Bans(command)),
        Command::Users { admin, command } => (admin, AdminCommand::Users(command)),
        Command::Stats { admin } => (admin, AdminCommand::Stats),
        other => panic!("not an admin command: {other:?}"),
    }
}

fn request_of(args: &[&str]) -> Request {
    match plan(admin(args).1) {
        Plan::Send { request, .. } => request,
        other => panic!("not a single request: {other:?}"),
    }
}

#[test]
fn commands_build_their_requests() {
    assert_eq!(
        request_of(&[
            "block",
            "add",
            "10.1.2.3/8",
            "--ttl",
            "2h",
            "--reason",
            "scan"
        ]),
        Request::BlockAdd {
            cidr: "10.0.0.0/8".into(),
            ttl_secs: Some(7200),
            reason: Some("scan".into()),
        }
    );
    assert_eq!(
        request_of(&["block", "add", "2001:db8::1"]),
        Request::BlockAdd {
            cidr: "2001:db8::1/128".into(),
            ttl_secs: None,
            reason: None,
        }
    );
    assert_eq!(
        request_of(&["block", "rm", "192.0.2.0/24"]),
        Request::BlockRm {
            cidr: "192.0.2.0/24".into()
        }
    );
    assert_eq!(request_of(&["block", "list"]), Request::BlockList);
    assert_eq!(
        request_of(&["allow", "add", "192.168.0.0/16"]),
        Request::AllowAdd {
            cidr: "192.168.0.0/16".into()
        }
    );
    assert_eq!(
        request_of(&["allow", "rm", "192.168.0.0/16"]),
        Request::AllowRm {
            cidr: "192.168.0.0/16".into()
        }
    );
    assert_eq!(request_of(&["allow", "list"]), Request::AllowList);
    assert_eq!(request_of(&["bans", "list"]), Request::BansList);
    assert_eq!(
        request_of(&["bans", "rm", "2001:db8::7"]),
        Request::BansRm {
            addr: "2001:db8::7".into()
        }
    );
    assert_eq!(request_of(&["bans", "clear"]), Request::BansClear);
    assert_eq!(request_of(&["users", "list"]), Request::UsersList);
    assert_eq!(
        request_of(&["users", "show", "alice"]),
        Request::UsersShow {
            name: "alice".into()
        }
    );
    assert_eq!(
        request_of(&["users", "enable", "alice"]),
        Request::UsersEnable {
            name: "alice".into()
        }
    );
    assert_eq!(
        request_of(&["users", "disable", "alice"]),
        Request::UsersDisable {
            name: "alice".into()
        }
    );
    assert_eq!(request_of(&["stats"]), Request::Stats);
    assert_eq!(
        plan(admin(&["block", "import", "f.netset", "--skip-private"]).1),
        Plan::Import {
            file: "f.netset".into(),
            skip_private: true,
            strict: false,
        }
    );
}

#[test]
fn global_options_go_before_or_after_the_subcommand() {
    let (args, _) = admin(&["block", "--json", "list", "--socket", "/tmp/a.sock"]);
    assert!(args.json);
    assert_eq!(args.socket.as_deref(), Some(Path::new("/tmp/a.sock")));
    let (args, _) = admin(&["stats", "-c", "/etc/relay/relay.toml"]);
    assert_eq!(
        args.config.as_deref(),
        Some(Path::new("/etc/relay/relay.toml"))
    );
}

#[test]
fn bad_arguments_are_usage_errors_with_status_2() {
    for args in [
        &["block", "add", "10.0.0.0/33"][..],
        &["block", "add", "example.com"],
        &["block", "add", "10.0.0.1", "--ttl", "soon"],
        &["block", "add", "10.0.0.1", "--ttl", "0"],
        &["bans", "rm", "10.0.0.0/8"],
        &["users", "show"],
        &["allow", "frobnicate"],
    ] {
        let err = parse(args).expect_err("rejected");
        assert_eq!(err.exit_code(), 2, "{args:?}");
    }
}

#[test]
fn help_documents_the_exit_statuses() {
    for args in [
        &["block", "--help"][..],
        &["block", "add", "--help"],
        &["users", "show", "--help"],
        &["stats", "--help"],
        &["--help"],
    ] {
        let help = parse(args).expect_err("help").to_string();
        assert!(help.contains("Exit status"), "{args:?}: {help}");
        assert!(help.contains("4  permission denied"), "{args:?}");
    }
}

#[test]
fn exit_statuses() {
    let path = PathBuf::from("/run/relay/admin.sock");
    assert_eq!(Exit::Ok.code(), 0);
    assert_eq!(Exit::for_error_kind(ErrorKind::NotFound).code(), 1);
    assert_eq!(Exit::for_error_kind(ErrorKind::Failed).code(), 1);
    assert_eq!(Exit::for_error_kind(ErrorKind::BadRequest).code(), 1);
    assert_eq!(Exit::for_error_kind(ErrorKind::Forbidden).code(), 4);
    assert_eq!(Exit::Usage.code(), 2);
    let status = |e: ClientError| Exit::for_client_error(&e).code();
    assert_eq!(status(ClientError::NotRunning { path: path.clone() }), 3);
    assert_eq!(
        status(ClientError::Timeout {
            path: path.clone(),
            timeout: Duration::from_secs(1)
        }),
        3
    );
    assert_eq!(
        status(ClientError::Connect {
            path: path.clone(),
            source: std::io::Error::from_raw_os_error(libc::ENOTSOCK)
        }),
        3
    );
    assert_eq!(
        status(ClientError::PermissionDenied {
            path,
            hint: String::new()
        }),
        4
    );
    assert_eq!(status(ClientError::Protocol("x".into())), 1);
}

#[test]
fn socket_path_resolution() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("relay.toml");
    // Only [admin] is read: the rest need not be valid for the CLI.
    std::fs::write(
        &config,
        "[admin]\nsocket = \"/srv/relay/admin.sock\"\n\n[users]\nnot = \"checked\"\n",
    )
    .expect("write");
    let with = |socket: Option<&str>, config: Option<&Path>| AdminArgs {
        socket: socket.map(PathBuf::from),
        config: config.map(Path::to_owned),
        json: false,
    };
    assert_eq!(
        socket_path(&with(Some("/tmp/x.sock"), Some(&config))).expect("path"),
        PathBuf::from("/tmp/x.sock")
    );
    assert_eq!(
        socket_path(&with(None, Some(&config))).expect("path"),
        PathBuf::from("/srv/relay/admin.sock")
    );
    assert_eq!(
        socket_path(&with(None, None)).expect("path"),
        PathBuf::from("/run/relay/admin.sock")
    );
    let no_admin = dir.path().join("plain.toml");
    std::fs::write(&no_admin, "[server]\nlisten = [\"0.0.0.0:443\"]\n").expect("write");
    assert_eq!(
        socket_path(&with(None, Some(&no_admin))).expect("path"),
        PathBuf::from("/run/relay/admin.sock")
    );
    let missing =
        socket_path(&with(None, Some(&dir.path().join("nope.toml")))).expect_err("unreadable");
    assert_eq!(missing.exit, Exit::Usage);
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[admin]\nsockett = \"/x\"\n").expect("write");
    let err = socket_path(&with(None, Some(&bad))).expect_err("bad [admin]");
    assert_eq!(err.exit, Exit::Usage);
    assert!(err.message.contains("sockett"), "{}", err.message);
}

#[test]
fn import_chunks_respect_the_budget_and_keep_order() {
    let entries: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}/32", i / 256, i % 256))
        .collect();
    let split = chunks(&entries, 1000);
    assert!(split.len() > 10);
    assert!(
        split
            .iter()
            .all(|c| serde_json::to_string(c).expect("json").len() <= 1000)
    );
    assert_eq!(split.concat(), entries);
    let one = vec!["x".repeat(50)];
    assert_eq!(chunks(&one, 10), vec![&one[..]]);
    assert!(chunks(&[], 10).is_empty());
}

#[test]
fn skip_private_leaves_out_warned_entries() {
    let parsed = netset::parse("1.2.3.4\n10.0.0.0/8\n192.168.1.1\n2001:db8::/32\nfd00::1\n");
    assert_eq!(importable(&parsed, false).len(), 5);
    assert_eq!(
        importable(&parsed, true),
        vec!["1.2.3.4/32".to_owned(), "2001:db8::/32".to_owned()]
    );
}

/// An admin server on a runtime of its own, for the blocking CLI code under test.
struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    recorder: Arc<Recorder>,
    _server: ServerHandle,
    _runtime: tokio::runtime::Runtime,
}

impl Daemon {
    fn start() -> Daemon {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("admin.sock");
        let recorder = Arc::new(Recorder::default());
        let server = runtime
            .block_on(server::serve(
                &crate::config::Admin {
                    socket: socket.clone(),
                    ..Default::default()
                },
                recorder.clone(),
            ))
            .expect("serves");
        Daemon {
            _dir: dir,
            socket,
            recorder,
            _server: server,
            _runtime: runtime,
        }
    }

    fn run(&self, args: &[&str]) -> Result<String, Failure> {
        let (mut options, command) = admin(args);
        options.socket = Some(self.socket.clone());
        execute(&options, command)
    }

    fn requests(&self) -> Vec<Request> {
        self.recorder
            .requests()
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }
}

#[test]
fn commands_print_tables_messages_and_json() {
    let daemon = Daemon::start();
    let table = daemon.run(&["block", "list"]).expect("ok");
    assert_eq!(
        table,
        "CIDR          SOURCE    EXPIRES  REASON\n192.0.2.0/24  operator  1m       test\n"
    );
    let json = daemon.run(&["block", "list", "--json"]).expect("ok");
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(value["kind"], "prefixes");
    assert_eq!(value["entries"][0]["cidr"], "192.0.2.0/24");
    assert_eq!(
        daemon
            .run(&["block", "add", "198.51.100.7", "--ttl", "90m"])
            .expect("ok"),
        "blocked 198.51.100.7/32 for 1h30m\n"
    );
    assert_eq!(
        daemon
            .run(&["block", "add", "198.51.100.0/24"])
            .expect("ok"),
        "blocked 198.51.100.0/24 permanently\n"
    );
    assert_eq!(
        daemon.run(&["users", "disable", "bob"]).expect("ok"),
        "user bob disabled\n"
    );
    assert_eq!(
        daemon.run(&["bans", "clear", "--json"]).expect("ok"),
        "{\n  \"kind\": \"done\"\n}\n"
    );
    assert_eq!(daemon.requests().len(), 6);
}

#[test]
fn a_daemon_error_is_status_1_with_its_message() {
    let daemon = Daemon::start();
    let err = daemon
        .run(&["users", "show", "ghost"])
        .expect_err("not found");
    assert_eq!(err.exit, Exit::Failed);
    assert_eq!(err.message, "no user named \"ghost\"");
    assert_eq!(
        run(
            &AdminArgs {
                socket: Some(daemon.socket.clone()),
                ..AdminArgs::default()
            },
            AdminCommand::Users(UsersCommand::Show {
                name: "ghost".into()
            })
        ),
        ExitCode::from(1)
    );
}

#[test]
fn no_daemon_is_status_3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("admin.sock");
    let args = AdminArgs {
        socket: Some(socket.clone()),
        ..AdminArgs::default()
    };
    let err = execute(&args, AdminCommand::Stats).expect_err("no daemon");
    assert_eq!(err.exit, Exit::Unreachable);
    assert_eq!(
        err.message,
        format!(
            "relay-ctl is not running (no daemon listening on {})",
            socket.display()
        )
    );
    assert_eq!(run(&args, AdminCommand::Stats), ExitCode::from(3));
}

#[test]
fn block_import_sends_parsed_entries_and_counts() {
    let daemon = Daemon::start();
    let file = daemon._dir.path().join("level1.netset");
    std::fs::write(
        &file,
        "# firehol_level1\n1.2.3.4\n5.6.0.0/16 # comment\nbogus\n10.0.0.0/8\n2001:db8::/32\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf-8 path");
    let out = daemon.run(&["block", "import", path]).expect("imported");
    assert_eq!(out, format!("added 4 of 4 entries from {path}\n"));
    assert_eq!(
        daemon.requests(),
        vec![Request::BlockImport {
            entries: vec![
                "1.2.3.4/32".into(),
                "5.6.0.0/16".into(),
                "10.0.0.0/8".into(),
                "2001:db8::/32".into()
            ],
            source: path.into(),
        }]
    );
    let json = daemon
        .run(&["block", "import", path, "--skip-private", "--json"])
        .expect("imported");
    assert_eq!(json, "{\n  \"kind\": \"count\",\n  \"changed\": 3\n}\n");

    let strict = daemon
        .run(&["block", "import", path, "--strict"])
        .expect_err("malformed line");
    assert_eq!(strict.exit, Exit::Failed);
    assert!(
        strict.message.contains("1 malformed lines"),
        "{}",
        strict.message
    );
    assert_eq!(daemon.requests().len(), 2, "nothing sent with --strict");

    let missing = daemon
        .run(&["block", "import", "/nonexistent/feed.netset"])
        .expect_err("unreadable");
    assert_eq!(missing.exit, Exit::Usage);

    let empty = daemon._dir.path().join("empty.netset");
    std::fs::write(&empty, "# nothing\n").expect("write");
    let err = daemon
        .run(&["block", "import", empty.to_str().expect("utf-8")])
        .expect_err("nothing to import");
    assert_eq!(err.exit, Exit::Failed);
}

#[test]
fn a_large_import_is_split_into_several_requests() {
    let daemon = Daemon::start();
    let file = daemon._dir.path().join("big.netset");
    let mut text = String::new();
    for i in 0..300_000u32 {
        let [_, b, c, d] = i.to_be_bytes();
        text.push_str(&format!("2001:db8:{b:x}:{c:x}::{d:x}/128\n"));
    }
    std::fs::write(&file, text).expect("write");
    let path = file.to_str().expect("utf-8 path");
    let out = daemon.run(&["block", "import", path]).expect("imported");
    assert_eq!(out, format!("added 300000 of 300000 entries from {path}\n"));
    let requests = daemon.requests();
    assert!(requests.len() > 1, "one request of over {MAX_LINE} bytes");
    let total: usize = requests
        .iter()
        .map(|r| match r {
            Request::BlockImport { entries, .. } => entries.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(total, 300_000);
}
