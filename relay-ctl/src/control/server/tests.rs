//! Transport tests of the admin socket: the real server and client over a Unix socket in a
//! temporary directory, with a handler that records what it was asked.

use std::{
    future::Future,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::UnixStream as StdStream,
    },
    sync::{Arc, Mutex},
    time::Duration,
};

use super::*;
use crate::control::{
    api::PrefixEntry,
    client::{self, ClientError},
    roles::REFUSALS_LOGGED_PER_MINUTE,
};

/// A handler that records every request with the caller's uid and answers from [`canned`].
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// Requests seen, in order.
    pub seen: Mutex<Vec<(Request, u32)>>,
    /// Requests refused for the caller's role.
    pub refused: std::sync::atomic::AtomicU64,
}

impl Recorder {
    /// The requests seen so far.
    pub fn requests(&self) -> Vec<(Request, u32)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Handler for Recorder {
    fn handle(&self, request: Request, caller_uid: u32) -> impl Future<Output = Response> + Send {
        let response = canned(&request);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((request, caller_uid));
        }
        async move { response }
    }

    fn refused(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Answers: lists get one entry, imports count their entries, user `ghost` is not found,
/// everything else is done.
pub(crate) fn canned(request: &Request) -> Response {
    let data = match request {
        Request::BlockList | Request::AllowList => Reply::Prefixes {
            entries: vec![PrefixEntry {
                cidr: "192.0.2.0/24".into(),
                source: "operator".into(),
                reason: Some("test".into()),
                expires_in_secs: Some(60),
            }],
        },
        Request::BlockImport { entries, .. } => Reply::Count {
            changed: entries.len(),
        },
        Request::UsersShow { name } if name == "ghost" => {
            return Response::Error {
                kind: ErrorKind::NotFound,
                message: "no user named \"ghost\"".into(),
            };
        }
        _ => Reply::Done,
    };
    Response::Ok { data }
}

/// Every request variant.
pub(crate) fn all_requests() -> Vec<Request> {
    vec![
        Request::BlockAdd {
            cidr: "192.0.2.0/24".into(),
            ttl_secs: Some(3600),
            reason: Some("scanner".into()),
        },
        Request::BlockAdd {
            cidr: "2001:db8::/32".into(),
            ttl_secs: None,
            reason: None,
        },
        Request::BlockRm {
            cidr: "192.0.2.0/24".into(),
        },
        Request::BlockList,
        Request::BlockImport {
            entries: vec!["198.51.100.0/24".into(), "2001:db8:1::/48".into()],
            source: "feed.netset".into(),
        },
        Request::AllowAdd {
            cidr: "10.0.0.0/8".into(),
        },
        Request::AllowRm {
            cidr: "10.0.0.0/8".into(),
        },
        Request::AllowList,
        Request::BansList,
        Request::BansRm {
            addr: "203.0.113.9".into(),
        },
        Request::BansClear,
        Request::UsersList,
        Request::UsersShow {
            name: "alice".into(),
        },
        Request::UsersEnable {
            name: "alice".into(),
        },
        Request::UsersDisable {
            name: "alice".into(),
        },
        Request::Stats,
    ]
}

/// `[admin]` with the socket at `path`.
fn settings(path: &Path, mode: u32, group: Option<&str>) -> Admin {
    Admin {
        socket: path.to_owned(),
        mode,
        group: group.map(str::to_owned),
        read_group: None,
    }
}

fn me() -> u32 {
    nix::unistd::getuid().as_raw()
}

async fn start(path: &Path) -> (ServerHandle, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let handle = serve(&settings(path, 0o600, None), recorder.clone())
        .await
        .expect("admin server starts");
    (handle, recorder)
}

/// The blocking client, off the runtime's thread.
async fn call(path: &Path, request: Request) -> Result<Response, ClientError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || client::call(&path, &request))
        .await
        .expect("client thread")
}

/// Sends raw bytes on a fresh connection and reads `answers` response lines.
async fn raw(path: &Path, bytes: Vec<u8>, answers: usize) -> Vec<Response> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let stream = StdStream::connect(&path).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut writer = stream.try_clone().expect("clone");
        // Write from another thread: the server may answer (and close) before reading it all.
        let write = std::thread::spawn(move || {
            let _ = writer.write_all(&bytes);
        });
        let mut reader = BufReader::new(stream);
        let mut out = Vec::new();
        for _ in 0..answers {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read answer");
            out.push(serde_json::from_str(&line).expect("answer is a response"));
        }
        let _ = write.join();
        out
    })
    .await
    .expect("raw client thread")
}

fn bad_request_message(response: &Response) -> &str {
    match response {
        Response::Error {
            kind: ErrorKind::BadRequest,
            message,
        } => message,
        other => panic!("expected a bad request error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_round_trips_with_the_callers_uid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_server, recorder) = start(&path).await;
    for request in all_requests() {
        let response = call(&path, request.clone()).await.expect("answered");
        assert_eq!(response, canned(&request), "for {request:?}");
    }
    let ghost = Request::UsersShow {
        name: "ghost".into(),
    };
    let response = call(&path, ghost.clone()).await.expect("answered");
    assert!(matches!(
        response,
        Response::Error {
            kind: ErrorKind::NotFound,
            ..
        }
    ));
    let mut expected: Vec<(Request, u32)> = all_requests().into_iter().map(|r| (r, me())).collect();
    expected.push((ghost, me()));
    assert_eq!(recorder.requests(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_bad_request_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_server, recorder) = start(&path).await;
    let input = b"not json\n\
        {\"cmd\":\"launch_missiles\"}\n\
        {\"cmd\":\"block_add\"}\n\
        {\"cmd\":\"bans_rm\",\"addr\":\"192.0.2.1\",\"extra\":1}\n\
        \n\
        {\"cmd\":\"stats\"}\n"
        .to_vec();
    let answers = raw(&path, input, 5).await;
    assert!(bad_request_message(&answers[0]).starts_with("malformed request: expected"));
    assert!(bad_request_message(&answers[1]).contains("unknown variant `launch_missiles`"));
    assert!(bad_request_message(&answers[2]).contains("missing field `cidr`"));
    assert!(bad_request_message(&answers[3]).contains("unknown field `extra`"));
    assert_eq!(answers[4], canned(&Request::Stats));
    assert_eq!(recorder.requests(), vec![(Request::Stats, me())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_is_a_bad_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_server, _) = start(&path).await;
    let answers = raw(&path, b"{\"cmd\":\"\xff\"}\n".to_vec(), 1).await;
    assert!(bad_request_message(&answers[0]).starts_with("malformed request"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_line_is_rejected_without_reaching_the_handler() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_server, recorder) = start(&path).await;
    let answers = raw(&path, vec![b'x'; MAX_LINE + 100], 1).await;
    assert_eq!(
        bad_request_message(&answers[0]),
        format!("request longer than {MAX_LINE} bytes")
    );
    assert!(recorder.requests().is_empty());
    // The server is still there for the next caller.
    assert!(call(&path, Request::Stats).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_just_under_the_limit_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_server, recorder) = start(&path).await;
    // ~3.6 MiB of entries: more than the CLI puts in one import request.
    let entries: Vec<String> = (0..220_000u32)
        .map(|i| {
            let [a, b, c, d] = (0x0b00_0000 + i).to_be_bytes();
            format!("{a}.{b}.{c}.{d}/32")
        })
        .collect();
    let request = Request::BlockImport {
        entries,
        source: "big.netset".into(),
    };
    let size = serde_json::to_vec(&request).expect("encode").len();
    assert!(size < MAX_LINE && size > MAX_LINE * 3 / 4, "size {size}");
    let response = call(&path, request).await.expect("answered");
    assert_eq!(
        response,
        Response::Ok {
            data: Reply::Count { changed: 220_000 }
        }
    );
    assert_eq!(recorder.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_gets_the_requested_mode_and_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let group = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .expect("group database")
        .expect("our group has a name");
    let handle = serve(
        &settings(&path, 0o660, Some(&group.name)),
        Arc::new(Recorder::default()),
    )
    .await
    .expect("serves");
    let meta = std::fs::symlink_metadata(&path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), group.gid.as_raw());
    // No staging directory is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("admin.sock")]);
    drop(handle);

    let _server = serve(&settings(&path, 0o600, None), Arc::new(Recorder::default()))
        .await
        .expect("serves again");
    let meta = std::fs::symlink_metadata(&path).expect("socket exists");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_group_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let err = serve(
        &settings(&path, 0o660, Some("no-such-group-relay")),
        Arc::new(Recorder::default()),
    )
    .await
    .expect_err("unknown group");
    assert!(matches!(err, AdminError::UnknownGroup { .. }));
    assert_eq!(
        err.to_string(),
        "[admin] group: no group named `no-such-group-relay` on this system"
    );
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_parent_directories_are_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run/relay/admin.sock");
    let (_server, _) = start(&path).await;
    let parent = std::fs::metadata(dir.path().join("run/relay")).expect("parent exists");
    assert!(parent.is_dir());
    assert_eq!(parent.permissions().mode() & 0o700, 0o700);
    assert!(call(&path, Request::Stats).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists(), "a stale socket file stays behind");
    let stale = call(&path, Request::Stats)
        .await
        .expect_err("nobody listens");
    assert!(matches!(stale, ClientError::NotRunning { .. }), "{stale:?}");
    let (_server, _) = start(&path).await;
    assert!(call(&path, Request::Stats).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_path_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_first, recorder) = start(&path).await;
    let err = serve(&settings(&path, 0o600, None), Arc::new(Recorder::default()))
        .await
        .expect_err("second server");
    assert!(matches!(err, AdminError::AlreadyRunning { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("another relay-ctl is running on {}", path.display())
    );
    // The first one is untouched.
    assert!(call(&path, Request::Stats).await.is_ok());
    assert_eq!(recorder.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    std::fs::write(&path, "precious").expect("write");
    let err = serve(&settings(&path, 0o600, None), Arc::new(Recorder::default()))
        .await
        .expect_err("not a socket");
    assert!(matches!(err, AdminError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "precious");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_removes_the_socket_and_clients_say_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (server, _) = start(&path).await;
    assert_eq!(server.path(), path);
    server.shutdown();
    assert!(!path.exists());
    let err = call(&path, Request::Stats).await.expect_err("no daemon");
    assert_eq!(
        err.to_string(),
        format!(
            "relay-ctl is not running (no daemon listening on {})",
            path.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_leaves_a_replacement_socket_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (server, _) = start(&path).await;
    // Someone removed our socket and another daemon took the path.
    std::fs::remove_file(&path).expect("remove");
    let (_other, _) = start(&path).await;
    drop(server);
    assert!(path.exists());
    assert!(call(&path, Request::Stats).await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_limit_are_told_to_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_server, _) = start(&path).await;
    let p = path.clone();
    tokio::task::spawn_blocking(move || {
        let request = b"{\"cmd\":\"stats\"}\n";
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut stream = StdStream::connect(&p).expect("connect");
            stream.write_all(request).expect("write");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("answer");
            assert!(line.contains("\"ok\""), "{line}");
            held.push(stream);
        }
        let stream = StdStream::connect(&p).expect("connect");
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).expect("answer");
        let response: Response = serde_json::from_str(&line).expect("response");
        assert!(
            matches!(&response, Response::Error { kind: ErrorKind::Failed, message }
                if message.contains("too many admin connections")),
            "{response:?}"
        );
        drop(held);
    })
    .await
    .expect("client thread");
    // The slots free up once the held connections close.
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(Response::Ok { .. }) = call(&path, Request::Stats).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slots were not released");
}

// Current-thread runtime: the server's tasks run on this thread, under the test's subscriber.
#[tokio::test]
async fn changes_are_audited_with_uid_and_short_summaries() {
    let capture = crate::logging::LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let (_server, _) = start(&path).await;
    for request in all_requests() {
        call(&path, request).await.expect("answered");
    }
    call(
        &path,
        Request::BlockAdd {
            cidr: "192.0.2.1".into(),
            ttl_secs: None,
            reason: Some("line one\nrelay::audit: forged".into()),
        },
    )
    .await
    .expect("answered");
    call(
        &path,
        Request::UsersShow {
            name: "ghost".into(),
        },
    )
    .await
    .expect("answered");

    let log = capture.text();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("relay::audit")).collect();
    let changes = all_requests().iter().filter(|r| r.is_change()).count() + 1;
    assert_eq!(audit.len(), changes, "{log}");
    let uid = format!("uid={}", me());
    assert!(audit.iter().all(|l| l.contains(&uid)), "{log}");
    assert!(audit.iter().all(|l| l.contains("result=\"ok\"")), "{log}");
    assert!(
        audit
            .iter()
            .any(|l| l.contains(r#"request=block add "192.0.2.0/24" ttl=3600s reason="scanner""#)),
        "{log}"
    );
    let import = audit
        .iter()
        .find(|l| l.contains("block import"))
        .expect("import audited");
    assert!(
        import.contains(r#"request=block import 2 entries from "feed.netset""#),
        "{import}"
    );
    assert!(import.contains("changed=2"), "{import}");
    assert!(!import.contains("198.51.100.0"), "entries logged: {import}");
    // Free text cannot forge a line.
    assert!(
        log.contains(r#"reason="line one\nrelay::audit: forged""#),
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("relay::audit: forged")));
    // Reads are not audited.
    assert!(
        !audit
            .iter()
            .any(|l| l.contains("block list") || l.contains("users show"))
    );
}

#[tokio::test]
async fn failed_changes_are_audited_as_errors() {
    struct Refuser;
    impl Handler for Refuser {
        async fn handle(&self, _: Request, _: u32) -> Response {
            Response::Error {
                kind: ErrorKind::Failed,
                message: "ban map full".into(),
            }
        }
    }
    let capture = crate::logging::LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let _server = serve(&settings(&path, 0o600, None), Arc::new(Refuser))
        .await
        .expect("serves");
    call(&path, Request::BansClear).await.expect("answered");
    let log = capture.text();
    let line = log
        .lines()
        .find(|l| l.contains("relay::audit"))
        .expect("audited");
    assert!(line.contains("request=bans clear"), "{line}");
    assert!(line.contains("result=\"error\""), "{line}");
    assert!(line.contains("kind=Failed"), "{line}");
    assert!(line.contains(r#"error="ban map full""#), "{line}");
}

#[test]
fn summaries_are_bounded() {
    let long = "x".repeat(10_000);
    let s = summary(&Request::BlockAdd {
        cidr: long.clone(),
        ttl_secs: None,
        reason: Some(long),
    });
    assert!(s.len() < 2 * AUDIT_TEXT_MAX + 100, "{} bytes", s.len());
    assert!(s.ends_with("..."), "{s}");
    let import = summary(&Request::BlockImport {
        entries: vec!["192.0.2.1/32".into(); 100_000],
        source: "level1.netset".into(),
    });
    assert_eq!(
        import,
        r#"block import 100000 entries from "level1.netset""#
    );
}

#[tokio::test]
async fn read_line_limits() {
    async fn read(input: &[u8], max: usize) -> Vec<Line> {
        // A tiny buffer: lines arrive in several chunks.
        let mut reader = tokio::io::BufReader::with_capacity(2, input);
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, max).await.expect("read");
            let done = matches!(line, Line::Eof | Line::TooLong);
            out.push(line);
            if done {
                return out;
            }
        }
    }
    assert_eq!(read(b"", 4).await, vec![Line::Eof]);
    assert_eq!(
        read(b"abcd\nxy", 4).await,
        vec![
            Line::Request(b"abcd".to_vec()),
            Line::Request(b"xy".to_vec()),
            Line::Eof
        ]
    );
    assert_eq!(read(b"abcde\n", 4).await, vec![Line::TooLong]);
    assert_eq!(read(b"abcde", 4).await, vec![Line::TooLong]);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_times_out_on_a_silent_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let p = path.clone();
    let err = tokio::task::spawn_blocking(move || {
        client::call_with_timeout(&p, &Request::Stats, Duration::from_millis(200))
    })
    .await
    .expect("thread")
    .expect_err("times out");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().starts_with("no answer from the daemon on"));
    drop(listener);
}

/// A one-shot fake daemon that answers `answer` to the first request.
fn fake_daemon(path: &Path, answer: Vec<u8>) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let _ = (&stream).write_all(&answer);
        }
    })
}

#[test]
fn client_reports_protocol_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (answer, expect)) in [
        (&b"garbage\n"[..], "unreadable answer from the daemon"),
        (&b""[..], "closed the connection without answering"),
        (&b"{\"status\":\"ok\""[..], "answer cut short"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("fake{i}.sock"));
        let daemon = fake_daemon(&path, answer.to_vec());
        let err = client::call(&path, &Request::Stats).expect_err("protocol error");
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        assert!(err.to_string().contains(expect), "{err}");
        let _ = daemon.join();
    }
}

#[test]
fn client_accepts_answers_larger_than_the_request_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fake.sock");
    let entries: Vec<PrefixEntry> = (0..100_000u32)
        .map(|i| PrefixEntry {
            cidr: format!("2001:db8:{:x}::/48", i % 0xffff),
            source: "feed:/etc/relay/firehol_level1.netset".into(),
            reason: None,
            expires_in_secs: None,
        })
        .collect();
    let response = Response::Ok {
        data: Reply::Prefixes { entries },
    };
    let mut answer = serde_json::to_vec(&response).expect("encode");
    assert!(answer.len() > MAX_LINE);
    answer.push(b'\n');
    let daemon = fake_daemon(&path, answer);
    assert_eq!(
        client::call(&path, &Request::BlockList).expect("answer"),
        response
    );
    let _ = daemon.join();
}

#[test]
fn client_refuses_oversize_requests_before_connecting() {
    let request = Request::BlockImport {
        entries: vec!["2001:db8:1234:5678:9abc:def0:1234:5678/128".into(); 100_000],
        source: "huge".into(),
    };
    let err = client::call(Path::new("/nonexistent/admin.sock"), &request).expect_err("too big");
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
}

#[test]
fn client_classifies_connect_errors() {
    let path = Path::new("/run/relay/admin.sock");
    let errno = |e| std::io::Error::from_raw_os_error(e);
    assert!(matches!(
        ClientError::from_connect(path, errno(libc::ENOENT)),
        ClientError::NotRunning { .. }
    ));
    assert!(matches!(
        ClientError::from_connect(path, errno(libc::ECONNREFUSED)),
        ClientError::NotRunning { .. }
    ));
    let denied = ClientError::from_connect(path, errno(libc::EACCES));
    assert!(matches!(denied, ClientError::PermissionDenied { .. }));
    assert!(
        denied
            .to_string()
            .starts_with("permission denied on /run/relay/admin.sock")
    );
    assert!(denied.to_string().contains("sudo"), "{denied}");
    assert!(matches!(
        ClientError::from_connect(path, errno(libc::ENOTSOCK)),
        ClientError::Connect { .. }
    ));
}

#[test]
fn permission_hint_names_the_sockets_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("admin.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).expect("chmod");
    let group = nix::unistd::Group::from_gid(nix::unistd::getegid())
        .expect("group database")
        .expect("named group");
    let denied = ClientError::from_connect(&path, std::io::Error::from_raw_os_error(libc::EACCES));
    let text = denied.to_string();
    assert!(text.contains("mode 0660"), "{text}");
    assert!(
        text.contains(&format!("member of group `{}`", group.name)),
        "{text}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = ClientError::from_connect(&path, std::io::Error::from_raw_os_error(libc::EACCES))
        .to_string();
    assert!(text.contains("[admin] group"), "{text}");
}

/// Two groups of this system other than root's and nobody's.
fn two_groups() -> (nix::unistd::Group, nix::unistd::Group) {
    let mut found = (1..1000)
        .filter_map(|gid| nix::unistd::Group::from_gid(gid.into()).ok().flatten())
        .take(2);
    match (found.next(), found.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("fewer than two groups with gid 1..1000 on this system"),
    }
}

/// Sends `request` from a fresh thread that first becomes `uid`:`gid` with supplementary
/// `groups`. The raw system calls change only that thread's credentials (glibc's wrappers
/// would change every thread's), and the thread ends after the call.
async fn call_as(
    path: &Path,
    (uid, gid, groups): (u32, u32, Vec<u32>),
    request: Request,
) -> Result<Response, ClientError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            // SAFETY: plain system calls on this thread's credentials, valid group array.
            unsafe {
                assert_eq!(
                    libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                    0,
                    "setgroups"
                );
                assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
            }
            client::call(&path, &request)
        })
        .join()
        .expect("caller thread")
    })
    .await
    .expect("blocking task")
}

// Current-thread runtime: the server's tasks run on this thread, under the test's subscriber.
#[tokio::test]
async fn read_only_callers_read_and_are_refused_changes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP read_only_callers_read_and_are_refused_changes: needs root to set uids");
        return;
    }
    let capture = crate::logging::LogCapture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (write_group, read_group) = two_groups();
    let (w, r) = (write_group.gid.as_raw(), read_group.gid.as_raw());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let path = dir.path().join("admin.sock");
    let recorder = Arc::new(Recorder::default());
    let _server = serve(
        &Admin {
            read_group: Some(read_group.name.clone()),
            ..settings(&path, 0o660, Some(&write_group.name))
        },
        recorder.clone(),
    )
    .await
    .expect("serves");
    // The socket belongs to read_group, so that both roles can connect.
    let meta = std::fs::symlink_metadata(&path).expect("socket");
    assert_eq!(meta.gid(), r);

    const NOBODY: u32 = 65534;
    let reader = || (NOBODY, NOBODY, vec![r]);
    let writer = || (NOBODY, NOBODY, vec![w, r]);
    let mut refused = 0;
    for request in all_requests() {
        let answer = call_as(&path, reader(), request.clone())
            .await
            .expect("answered");
        if request.is_change() {
            refused += 1;
            match answer {
                Response::Error {
                    kind: ErrorKind::Forbidden,
                    message,
                } => {
                    assert!(message.contains(request.name()), "{message}");
                    assert!(message.contains("may only read"), "{message}");
                    assert!(
                        message.contains(&format!("[admin] group `{}`", write_group.name)),
                        "{message}"
                    );
                }
                other => panic!("{request:?} by a reader: {other:?}"),
            }
        } else {
            assert_eq!(answer, canned(&request), "{request:?} by a reader");
        }
        let answer = call_as(&path, writer(), request.clone())
            .await
            .expect("answered");
        assert_eq!(answer, canned(&request), "{request:?} by a writer");
    }
    // read_group as the primary group counts too.
    let answer = call_as(&path, (NOBODY, r, vec![]), Request::Stats)
        .await
        .expect("answered");
    assert_eq!(answer, canned(&Request::Stats));
    // In [admin] group only: the socket (group read_group, 0660) does not let it connect.
    let outsider = call_as(&path, (NOBODY, NOBODY, vec![w]), Request::Stats).await;
    assert!(
        matches!(outsider, Err(ClientError::PermissionDenied { .. })),
        "{outsider:?}"
    );
    // More refusals than are logged per minute.
    for _ in 0..5 {
        call_as(&path, reader(), Request::BansClear)
            .await
            .expect("answered");
        refused += 1;
    }

    // The handler never saw a refused request, and counted each one.
    let seen = recorder.requests();
    assert!(
        seen.iter().all(|(request, _)| !request.is_change()
            || seen.iter().filter(|(r, _)| r == request).count() == 1),
        "{seen:?}"
    );
    assert_eq!(
        seen.len(),
        all_requests().len() + all_requests().iter().filter(|r| !r.is_change()).count() + 1
    );
    assert_eq!(
        recorder.refused.load(std::sync::atomic::Ordering::Relaxed),
        refused
    );
    let log = capture.text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin request refused"))
        .collect();
    assert!(refused > u64::from(REFUSALS_LOGGED_PER_MINUTE));
    assert_eq!(lines.len(), REFUSALS_LOGGED_PER_MINUTE as usize, "{log}");
    assert!(lines.iter().all(|l| l.contains("relay::audit")), "{log}");
    assert!(lines.iter().all(|l| l.contains("uid=65534")), "{log}");
    assert!(
        lines.iter().all(|l| l.contains("role=\"read-only\"")),
        "{log}"
    );
    assert!(lines[0].contains("request=\"block add\""), "{log}");
}
