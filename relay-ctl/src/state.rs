//! Files relay keeps in `[state] dir`. For now: the secret of the `default` user, created on
//! first start when the configuration lists no users.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::proto::Secret;

/// File name of the generated default secret.
pub const DEFAULT_SECRET_FILE: &str = "default.secret";

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Loads the default user's secret from `dir`, creating it (mode 0600, written atomically)
/// on first use. Returns the secret and whether it was just created.
pub fn default_secret(dir: &Path) -> Result<(Secret, bool), StateError> {
    let path = dir.join(DEFAULT_SECRET_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text
                .trim()
                .parse::<Secret>()
                .map_err(|e| StateError::Corrupt {
                    path: path.clone(),
                    message: format!("not a secret ({e}); move it aside to generate a new one"),
                })?;
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io(dir))?;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            let secret = Secret::random();
            write_atomic(&path, format!("{}\n", secret.to_hex()).as_bytes())?;
            Ok((secret, true))
        }
        Err(e) => Err(StateError::Io { path, source: e }),
    }
}

/// Writes `data` to `path` so that a crash leaves either the old or the new file: temp file,
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // A unique temp name per write: two writers never interleave in one temp file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(data).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_secret_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, created) = default_secret(dir.path()).expect("create");
        assert!(created);
        let (again, created) = default_secret(dir.path()).expect("load");
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
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(DEFAULT_SECRET_FILE);
        fs::write(&path, "not hex").expect("write");
        let err = default_secret(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains("default.secret"), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("kept"), "not hex");
    }
}
