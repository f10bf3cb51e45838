//! A daemon on a temporary state dir, in userspace enforcement and without sockets, for the
//! unit tests of its modules.

use std::{path::PathBuf, sync::Arc};

use tempfile::TempDir;

use super::Daemon;
use crate::{
    admission::{Admission, Enforcement},
    config::Config,
    control::api::{ErrorKind, Reply, Request, Response},
    state_dir::StateDir,
};

/// A config with users `alice` (enabled) and `bob` (disabled in the configuration).
pub(super) const CONFIG: &str = "\
[server]
listen = [\"127.0.0.1:1\"]
[xdp]
mode = \"off\"
[[users]]
name = \"alice\"
secret = \"00112233445566778899aabbccddeeff\"
[[users]]
name = \"bob\"
secret = \"ffeeddccbbaa99887766554433221100\"
enabled = false
";

/// A daemon, its config file and its state dir, removed on drop.
pub(super) struct TestDaemon {
    /// The daemon.
    pub daemon: Arc<Daemon>,
    /// Holds `relay.toml` and `state/`.
    pub dir: TempDir,
}

impl TestDaemon {
    /// A daemon started from [`CONFIG`] written to `relay.toml`.
    pub async fn start() -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        TestDaemon::start_in(dir, "").await
    }

    /// A daemon started in `dir` from [`CONFIG`] followed by `extra`, restoring what an earlier
    /// one saved there.
    pub async fn start_in(dir: TempDir, extra: &str) -> TestDaemon {
        std::fs::write(dir.path().join("relay.toml"), config_text(&dir, extra))
            .expect("write config");
        let config = Config::load(&dir.path().join("relay.toml")).expect("valid config");
        let state = StateDir::open_own(&config.state.dir).expect("state dir");
        let mut admission = Admission::new(Enforcement::Userspace {
            reason: "unit test".to_owned(),
        });
        admission.apply(&config).expect("userspace admission");
        let daemon = Daemon::start(
            Some(dir.path().join("relay.toml")),
            config,
            admission,
            state,
            None,
            None,
        )
        .await
        .expect("daemon");
        TestDaemon { daemon, dir }
    }

    /// Answers `request` as the admin socket would.
    pub async fn request(&self, request: Request) -> Response {
        self.daemon.handle_request(request).await
    }

    /// Answers `request`, which must succeed.
    pub async fn ok(&self, request: Request) -> Reply {
        match self.request(request).await {
            Response::Ok { data } => data,
            Response::Error { kind, message } => panic!("{kind:?}: {message}"),
        }
    }

    /// Answers `request`, which must fail.
    pub async fn error(&self, request: Request) -> (ErrorKind, String) {
        match self.request(request).await {
            Response::Error { kind, message } => (kind, message),
            Response::Ok { data } => panic!("unexpectedly done: {data:?}"),
        }
    }

    /// The state dir's path.
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }
}

/// [`CONFIG`] with the state dir in `dir` and `extra` appended.
pub(super) fn config_text(dir: &TempDir, extra: &str) -> String {
    format!(
        "{CONFIG}[state]\ndir = \"{}\"\n{extra}",
        dir.path().join("state").display()
    )
}
