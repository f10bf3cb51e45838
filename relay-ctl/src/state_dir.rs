//! Files relay keeps in `[state] dir`: the default user's secret, operator lists, bans, usage,
//! the replay memory and the mask's flight.
//!
//! Every access goes through [`StateDir`], which holds the directory open and works relative to
//! that handle (`openat`, `renameat`, `unlinkat`). The directory must belong to the account the
//! relay runs as and be writable by nobody else ([`StateDir::open`] refuses otherwise): an
//! account that can create entries there could plant a symlink where the relay writes. As a
//! second line, files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` under a random temporary
//! name, so a planted name is never opened, let alone followed.

use std::{
    ffi::OsStr,
    fs,
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::DirBuilderExt as _},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::{
    dir::Dir,
    errno::Errno,
    fcntl::{OFlag, openat, renameat},
    sys::stat::{Mode, fstat, mkdirat},
    unistd::{UnlinkatFlags, unlinkat},
};

use relay_proto::Secret;

/// File name of the generated default secret.
pub const DEFAULT_SECRET_FILE: &str = "default.secret";
/// Marks a temporary file of an unfinished write (`<name>.tmp.<random>`).
pub const TEMP_MARK: &str = ".tmp.";
/// Temporary names tried per write before giving up (each collision is a planted or leftover
/// file; with 64 random bits, more than one in a row means someone is racing us).
const TEMP_TRIES: usize = 8;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error on a state file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A state file holds something else than expected.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The directory could be written by another account than the relay's.
    #[error(
        "refusing to use the state directory {path} (mode {mode:04o}, owner uid {owner}): \
         {problem}, so another account could plant files the relay would write through; {fix}"
    )]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        owner: u32,
        /// What is wrong.
        problem: String,
        /// What to run.
        fix: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

fn errno(path: &Path) -> impl FnOnce(Errno) -> StateError + '_ {
    move |e| StateError::Io {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// The state directory, held open: every file in it is read and written relative to this
/// handle, so renaming or replacing the path later changes nothing. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
    fd: Arc<OwnedFd>,
    owner: u32,
}

impl StateDir {
    /// Opens `path` (created with mode 0700 if missing) for the account `owner`. Refuses a
    /// directory owned by anyone else or writable by group or others.
    pub fn open(path: &Path, owner: u32) -> Result<StateDir, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io(path))?;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(path))?;
        let dir = StateDir {
            path: path.to_owned(),
            fd: Arc::new(fd),
            owner,
        };
        dir.check()?;
        Ok(dir)
    }

    /// [`StateDir::open`] for this process's effective user.
    pub fn open_own(path: &Path) -> Result<StateDir, StateError> {
        StateDir::open(path, nix::unistd::geteuid().as_raw())
    }

    /// The directory's path (for messages and read-only tools).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in it (for messages).
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The subdirectory `name`, created (mode 0700) if missing; the same rules apply to it.
    /// A symlink in its place is refused.
    pub fn subdir(&self, name: &str) -> Result<StateDir, StateError> {
        let path = self.file(name);
        match mkdirat(self.fd.as_fd(), name, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(errno(&path)(e)),
        }
        self.open_subdir(name)
    }

    /// The subdirectory `name` if it exists.
    pub fn existing_subdir(&self, name: &str) -> Result<Option<StateDir>, StateError> {
        match self.open_subdir(name) {
            Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    fn open_subdir(&self, name: &str) -> Result<StateDir, StateError> {
        let path = self.file(name);
        let fd = openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(&path))?;
        let dir = StateDir {
            path,
            fd: Arc::new(fd),
            owner: self.owner,
        };
        dir.check()?;
        Ok(dir)
    }

    /// Refuses a directory another account could write into.
    fn check(&self) -> Result<(), StateError> {
        let stat = fstat(self.fd.as_fd()).map_err(errno(&self.path))?;
        let mode = stat.st_mode & 0o7777;
        let unsafe_dir = |problem: String, fix: String| StateError::Unsafe {
            path: self.path.clone(),
            mode,
            owner: stat.st_uid,
            problem,
            fix,
        };
        if stat.st_uid != self.owner {
            return Err(unsafe_dir(
                format!(
                    "it is owned by uid {}, not by uid {} the relay runs as",
                    stat.st_uid, self.owner
                ),
                format!(
                    "run `chown -R {} {}` (and `chmod 0700` it), or point [state] dir elsewhere",
                    self.owner,
                    self.path.display()
                ),
            ));
        }
        if mode & 0o022 != 0 {
            return Err(unsafe_dir(
                "it is group- or world-writable".to_owned(),
                format!("run `chmod 0700 {}`", self.path.display()),
            ));
        }
        Ok(())
    }

    /// The contents of `name`; `None` if there is no such file. A symlink is not followed.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let path = self.file(name);
        let fd = match openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(errno(&path)(e)),
        };
        let mut bytes = Vec::new();
        fs::File::from(fd)
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        Ok(Some(bytes))
    }

    /// Replaces `name` with `data` so that a crash or a full disk leaves either the old or the
    /// new file: a new temporary file (mode 0600, never an existing name), fsync, rename over
    /// `name`, fsync of the directory. On failure the temporary file is removed and `name` is
    /// untouched.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), StateError> {
        self.write_with(name, data, || {
            format!("{name}{TEMP_MARK}{:016x}", rand::random::<u64>())
        })
    }

    /// [`StateDir::write`] with the temporary names from `temp_name` (tests choose them).
    fn write_with(
        &self,
        name: &str,
        data: &[u8],
        mut temp_name: impl FnMut() -> String,
    ) -> Result<(), StateError> {
        let path = self.file(name);
        let mut created = None;
        for _ in 0..TEMP_TRIES {
            let temp = temp_name();
            match openat(
                self.fd.as_fd(),
                temp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::S_IRUSR | Mode::S_IWUSR,
            ) {
                Ok(fd) => {
                    created = Some((temp, fs::File::from(fd)));
                    break;
                }
                // Taken (by a leftover, or planted): never opened, try another name.
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(errno(&path)(e)),
            }
        }
        let Some((temp, mut file)) = created else {
            return Err(StateError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("no free temporary name after {TEMP_TRIES} tries"),
                ),
            });
        };
        let written = file
            .write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(io(&path));
        drop(file);
        let renamed = written.and_then(|()| {
            renameat(self.fd.as_fd(), temp.as_str(), self.fd.as_fd(), name).map_err(errno(&path))
        });
        if let Err(e) = renamed {
            let _ = unlinkat(self.fd.as_fd(), temp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(e);
        }
        nix::unistd::fsync(self.fd.as_fd()).map_err(errno(&self.path))
    }

    /// Renames `from` to `to` within the directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), StateError> {
        renameat(self.fd.as_fd(), from, self.fd.as_fd(), to).map_err(errno(&self.file(from)))
    }

    /// Removes the file `name` (a symlink itself, never its target).
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(errno(&self.file(name)))
    }

    /// The names in the directory (without `.` and `..`), in no particular order.
    pub fn names(&self) -> Result<Vec<String>, StateError> {
        let mut dir = Dir::openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(&self.path))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(errno(&self.path))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }
}

/// Loads the default user's secret from `dir`, creating it (mode 0600, written atomically)
/// on first use. Returns the secret and whether it was just created.
pub fn default_secret(dir: &StateDir) -> Result<(Secret, bool), StateError> {
    let path = dir.file(DEFAULT_SECRET_FILE);
    match dir.read(DEFAULT_SECRET_FILE)? {
        Some(bytes) => {
            let secret = std::str::from_utf8(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|text| text.trim().parse::<Secret>().map_err(|e| e.to_string()))
                .map_err(|e| StateError::Corrupt {
                    path,
                    message: format!("not a secret ({e}); move it aside to generate a new one"),
                })?;
            Ok((secret, false))
        }
        None => {
            let secret = Secret::random();
            dir.write(
                DEFAULT_SECRET_FILE,
                format!("{}\n", secret.to_hex()).as_bytes(),
            )?;
            Ok((secret, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    use super::*;

    fn private_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    fn open(dir: &Path) -> StateDir {
        StateDir::open_own(dir).expect("open")
    }

    #[test]
    fn default_secret_is_created_once_and_kept() {
        let dir = private_dir();
        let state = open(dir.path());
        let (first, created) = default_secret(&state).expect("create");
        assert!(created);
        let (again, created) = default_secret(&state).expect("load");
        assert!(!created);
        assert_eq!(first, again);
        let mode = fs::metadata(dir.path().join(DEFAULT_SECRET_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_secret_is_reported_not_replaced() {
        let dir = private_dir();
        let path = dir.path().join(DEFAULT_SECRET_FILE);
        fs::write(&path, "not hex").expect("write");
        let err = default_secret(&open(dir.path())).expect_err("corrupt");
        assert!(err.to_string().contains("default.secret"), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("kept"), "not hex");
    }

    #[test]
    fn planted_symlinks_are_never_written_through() {
        let dir = private_dir();
        let outside = private_dir();
        let victim = outside.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        // Symlinks at the first temporary names tried, and at the file's own name.
        let names = ["bans.json.tmp.a", "bans.json.tmp.b", "bans.json.tmp.c"];
        for name in names.iter().chain(&["bans.json"]) {
            symlink(&victim, dir.path().join(name)).expect("plant");
        }
        let state = open(dir.path());
        let mut tried = names
            .iter()
            .map(|n| (*n).to_owned())
            .chain(["bans.json.tmp.free".to_owned()]);
        state
            .write_with("bans.json", b"new", || tried.next().expect("a name"))
            .expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "precious");
        // The file replaced the symlink at its name; the planted temporary names are left.
        let meta = fs::symlink_metadata(dir.path().join("bans.json")).expect("file");
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(
            state.read("bans.json").expect("read").as_deref(),
            Some(&b"new"[..])
        );
        for name in names {
            assert!(
                fs::symlink_metadata(dir.path().join(name))
                    .expect("planted")
                    .is_symlink()
            );
        }
    }

    #[test]
    fn random_temporary_names_leave_no_file_behind() {
        let dir = private_dir();
        let state = open(dir.path());
        // A leftover of an earlier crash at a temporary-looking name is not touched.
        fs::write(dir.path().join("usage.json.tmp.0"), "leftover").expect("write");
        for round in 0..20 {
            state
                .write("usage.json", format!("{round}").as_bytes())
                .expect("write");
        }
        let mut names = state.names().expect("names");
        names.sort();
        assert_eq!(names, ["usage.json", "usage.json.tmp.0"]);
        assert_eq!(
            state.read("usage.json").expect("read").as_deref(),
            Some(&b"19"[..])
        );
    }

    #[test]
    fn taken_temporary_names_give_up_with_an_error_and_keep_the_file() {
        let dir = private_dir();
        let state = open(dir.path());
        state.write("lists.json", b"old").expect("write");
        fs::write(dir.path().join("lists.json.tmp.x"), "someone else's").expect("plant");
        let err = state
            .write_with("lists.json", b"new", || "lists.json.tmp.x".to_owned())
            .expect_err("no free name");
        assert!(err.to_string().contains("lists.json"), "{err}");
        assert!(err.to_string().contains("temporary name"), "{err}");
        assert_eq!(
            state.read("lists.json").expect("read").as_deref(),
            Some(&b"old"[..])
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("lists.json.tmp.x")).expect("kept"),
            "someone else's"
        );
    }

    #[test]
    fn reads_do_not_follow_symlinks() {
        let dir = private_dir();
        let outside = private_dir();
        let secret = outside.path().join("secret");
        fs::write(&secret, format!("{}\n", Secret::random().to_hex())).expect("write");
        symlink(&secret, dir.path().join(DEFAULT_SECRET_FILE)).expect("plant");
        assert!(default_secret(&open(dir.path())).is_err());
    }

    #[test]
    fn group_or_world_writable_dirs_are_refused() {
        for mode in [0o777, 0o770, 0o1777, 0o702] {
            let dir = private_dir();
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).expect("chmod");
            let err = StateDir::open_own(dir.path()).expect_err("unsafe");
            let text = err.to_string();
            assert!(text.contains(&dir.path().display().to_string()), "{text}");
            assert!(text.contains(&format!("mode {mode:04o}")), "{text}");
            assert!(text.contains("group- or world-writable"), "{text}");
            assert!(text.contains("chmod 0700"), "{text}");
        }
        for mode in [0o700, 0o750, 0o755] {
            let dir = private_dir();
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).expect("chmod");
            StateDir::open_own(dir.path()).expect("safe");
        }
    }

    #[test]
    fn a_dir_owned_by_another_user_is_refused() {
        let dir = private_dir();
        let me = nix::unistd::geteuid().as_raw();
        let other = me.wrapping_add(4242);
        let err = StateDir::open(dir.path(), other).expect_err("not ours");
        let text = err.to_string();
        assert!(
            text.contains(&format!("owned by uid {me}, not by uid {other}")),
            "{text}"
        );
        assert!(text.contains("chown"), "{text}");
    }

    #[test]
    fn a_missing_dir_is_created_private() {
        let dir = private_dir();
        let path = dir.path().join("a/state");
        let state = StateDir::open_own(&path).expect("created");
        state.write("x", b"1").expect("write");
        let mode = fs::metadata(&path).expect("dir").mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[test]
    fn a_symlinked_or_unsafe_subdir_is_refused() {
        let dir = private_dir();
        let outside = private_dir();
        symlink(outside.path(), dir.path().join("replay")).expect("plant");
        let state = open(dir.path());
        assert!(state.subdir("replay").is_err());
        assert!(state.existing_subdir("replay").is_err());
        fs::remove_file(dir.path().join("replay")).expect("rm");
        assert!(state.existing_subdir("replay").expect("missing").is_none());
        let replay = state.subdir("replay").expect("created");
        replay.write("gen", b"1").expect("write");
        fs::set_permissions(dir.path().join("replay"), fs::Permissions::from_mode(0o777))
            .expect("chmod");
        assert!(matches!(
            state.subdir("replay"),
            Err(StateError::Unsafe { .. })
        ));
    }
}
