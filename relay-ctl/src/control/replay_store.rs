//! The replay memory on disk: one file per generation in `[state] dir`/`replay/`, so a restart
//! keeps refusing replays.
//!
//! A generation that filled is written once; the filling one at most every
//! [`SAVE_NEWEST_EVERY`] and at shutdown. With the default sizing a generation file is 1.25 MB,
//! so the steady cost is one such write a minute (about 21 KB/s) rather than rewriting the whole
//! memory (up to 32 MB), and a crash loses at most a minute of handshakes. A file that cannot be
//! read (damaged, truncated, foreign) is moved aside with a log line and its handshakes are
//! forgotten; a save that fails keeps everything in memory, logs once per kind of failure, and
//! is retried at the next save.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{SeedableRng as _, rngs::StdRng};

use crate::state_dir::{StateDir, StateError, TEMP_MARK};
use relay_proto::replay::{ReplayLimits, ReplayMemory, bloom::Generation, file};

/// Subdirectory of the state dir.
pub const REPLAY_DIR: &str = "replay";
/// How often the filling generation is written (besides at shutdown).
pub const SAVE_NEWEST_EVERY: Duration = Duration::from_secs(60);
const SUFFIX: &str = ".bloom";

/// Where the replay memory is kept, and how its saves went.
#[derive(Debug)]
pub struct ReplayStore {
    /// The state dir; the memory is in its [`REPLAY_DIR`].
    state: StateDir,
    /// Held for a whole save, so saves never interleave.
    writing: Mutex<()>,
    newest_saved: Mutex<Option<Instant>>,
    /// The kind of the last failure, while saves fail (logged once per kind).
    failing: Mutex<Option<String>>,
    saves: [AtomicU64; 2],
}

impl ReplayStore {
    /// The store under `state`.
    pub fn new(state: StateDir) -> ReplayStore {
        ReplayStore {
            state,
            writing: Mutex::new(()),
            newest_saved: Mutex::new(None),
            failing: Mutex::new(None),
            saves: Default::default(),
        }
    }

    /// Saves that succeeded and that failed.
    pub fn save_counts(&self) -> (u64, u64) {
        (
            self.saves[0].load(Ordering::Relaxed),
            self.saves[1].load(Ordering::Relaxed),
        )
    }

    /// The memory as last saved, or an empty one. Never fails: unreadable files are reported,
    /// moved aside and left out.
    pub fn load(&self, limits: ReplayLimits, now_unix: u64) -> ReplayMemory {
        let path = self.state.file(REPLAY_DIR);
        let listed = self.state.existing_subdir(REPLAY_DIR).and_then(|dir| {
            dir.map(|dir| dir.names().map(|names| (dir, names)))
                .transpose()
        });
        let (dir, names) = match listed {
            Ok(Some(found)) => found,
            Ok(None) => {
                tracing::info!(dir = %path.display(), "no replay memory saved yet: starting empty");
                return ReplayMemory::with_rng(limits, StdRng::from_os_rng());
            }
            Err(e) => {
                tracing::error!("cannot read the replay memory, starting empty: {e}");
                return ReplayMemory::with_rng(limits, StdRng::from_os_rng());
            }
        };
        let mut generations = Vec::new();
        for name in names {
            if name.contains(TEMP_MARK) {
                // A save cut short by a crash.
                let _ = dir.remove(&name);
                continue;
            }
            if !name.ends_with(SUFFIX) {
                continue;
            }
            let read = dir
                .read(&name)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let bytes = bytes.ok_or_else(|| "removed while loading".to_owned())?;
                    file::decode(&bytes).map_err(|e| e.to_string())
                });
            match read {
                Ok(g) => generations.push(g),
                Err(e) => {
                    let stem = name.strip_suffix(SUFFIX).unwrap_or(&name);
                    let aside = format!("{stem}.corrupt-{now_unix}");
                    let moved = dir.rename(&name, &aside).is_ok();
                    tracing::error!(
                        file = %dir.file(&name).display(),
                        "replay memory file unreadable ({e}); its handshakes are forgotten{}",
                        if moved {
                            format!(", file moved to {}", dir.file(&aside).display())
                        } else {
                            String::new()
                        }
                    );
                }
            }
        }
        let (memory, left_out) = ReplayMemory::restore(limits, generations, StdRng::from_os_rng());
        if left_out > 0 {
            tracing::warn!(
                left_out,
                "replay memory: older generations do not fit in [replay] memory_bytes and are forgotten"
            );
        }
        let c = memory.coverage(now_unix);
        tracing::info!(
            handshakes = c.entries,
            generations = c.generations,
            covered_secs = c.covered_secs,
            "replay memory restored"
        );
        memory
    }

    /// Writes what changed: generations that filled since, and the filling one when `force`
    /// or [`SAVE_NEWEST_EVERY`] has passed; removes files of dropped generations. Blocking
    /// (run it off the async threads); holds the memory's lock only to copy.
    pub fn save(&self, memory: &Mutex<ReplayMemory>, force: bool) {
        let _one_at_a_time = lock(&self.writing);
        let with_newest =
            force || lock(&self.newest_saved).is_none_or(|at| at.elapsed() >= SAVE_NEWEST_EVERY);
        let (unsaved, live) = {
            let m = lock(memory);
            (m.unsaved(with_newest), m.live_seqs())
        };
        let result = self.write(&unsaved, &live);
        let mut failing = lock(&self.failing);
        match result {
            Ok(()) => {
                let mut m = lock(memory);
                for g in &unsaved {
                    m.mark_saved(g.seq, g.len);
                }
                drop(m);
                if with_newest {
                    *lock(&self.newest_saved) = Some(Instant::now());
                }
                if !unsaved.is_empty() {
                    self.saves[0].fetch_add(1, Ordering::Relaxed);
                }
                if failing.take().is_some() {
                    tracing::info!(dir = %self.state.file(REPLAY_DIR).display(), "replay memory saved again");
                }
            }
            Err(e) => {
                self.saves[1].fetch_add(1, Ordering::Relaxed);
                let kind = failure_kind(&e);
                if failing.as_deref() != Some(kind.as_str()) {
                    tracing::error!(
                        "saving the replay memory failed, keeping it in memory and retrying \
                         (logged once until it works or fails differently): {e}"
                    );
                    *failing = Some(kind);
                }
            }
        }
    }

    fn write(&self, unsaved: &[Generation], live: &[u64]) -> Result<(), StateError> {
        let dir = if unsaved.is_empty() {
            match self.state.existing_subdir(REPLAY_DIR)? {
                Some(dir) => dir,
                None => return Ok(()),
            }
        } else {
            self.state.subdir(REPLAY_DIR)?
        };
        for g in unsaved {
            dir.write(&file_name(g.seq), &file::encode(g))?;
        }
        for name in dir.names()? {
            let dropped = name
                .strip_suffix(SUFFIX)
                .and_then(|n| n.strip_prefix("gen-"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .is_some_and(|seq| !live.contains(&seq));
            if dropped {
                let _ = dir.remove(&name);
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn file_name(seq: u64) -> String {
    format!("gen-{seq:016x}{SUFFIX}")
}

/// A failure's kind, to log a repeating failure once.
fn failure_kind(e: &StateError) -> String {
    match e {
        StateError::Io { source, .. } => format!("{:?}", source.kind()),
        StateError::Corrupt { .. } => "corrupt".to_owned(),
        StateError::Unsafe { .. } => "unsafe".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;
    use relay_proto::replay::ReplayKey;

    fn open_store(dir: &Path) -> ReplayStore {
        ReplayStore::new(StateDir::open_own(dir).expect("state dir"))
    }

    const LIMITS: ReplayLimits = ReplayLimits {
        retention_secs: 1000,
        handshakes: 400,
        memory_bytes: 1 << 20,
    };

    fn key(i: u64) -> ReplayKey {
        let mut r = [0; 32];
        r[..8].copy_from_slice(&i.to_le_bytes());
        ReplayKey::tls(&r)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path());
        let memory = Mutex::new(store.load(LIMITS, 100));
        for i in 0..250 {
            assert!(!memory.lock().expect("lock").check_and_insert(key(i), 100));
        }
        store.save(&memory, true);
        assert_eq!(store.save_counts(), (1, 0));
        assert_eq!(
            files(&dir.path().join(REPLAY_DIR)),
            [
                "gen-0000000000000000.bloom",
                "gen-0000000000000001.bloom",
                "gen-0000000000000002.bloom"
            ]
        );
        let again = open_store(dir.path()).load(LIMITS, 200);
        for i in 0..250 {
            assert!(again.contains(&key(i)), "key {i} lost");
        }
        assert!(!again.contains(&key(250)));
    }

    #[test]
    fn newest_is_written_only_every_minute_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path());
        let memory = Mutex::new(store.load(LIMITS, 100));
        memory.lock().expect("lock").check_and_insert(key(1), 100);
        store.save(&memory, false); // first save: written
        memory.lock().expect("lock").check_and_insert(key(2), 100);
        store.save(&memory, false); // within the minute: not yet
        assert!(!open_store(dir.path()).load(LIMITS, 100).contains(&key(2)));
        store.save(&memory, true);
        assert!(open_store(dir.path()).load(LIMITS, 100).contains(&key(2)));
    }

    #[test]
    fn dropped_generations_lose_their_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path());
        let memory = Mutex::new(ReplayMemory::with_rng(
            ReplayLimits {
                memory_bytes: 6 * LIMITS.generation_bytes(),
                ..LIMITS
            },
            StdRng::seed_from_u64(1),
        ));
        for i in 0..1000 {
            memory.lock().expect("lock").check_and_insert(key(i), 100);
        }
        store.save(&memory, true);
        assert_eq!(files(&dir.path().join(REPLAY_DIR)).len(), 6);
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_are_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path());
        let memory = Mutex::new(store.load(LIMITS, 100));
        for i in 0..250 {
            memory.lock().expect("lock").check_and_insert(key(i), 100);
        }
        store.save(&memory, true);
        let replay = dir.path().join(REPLAY_DIR);
        // Generation 0 damaged, 1 truncated, 2 replaced by something else entirely.
        let path = |seq| replay.join(file_name(seq));
        let mut bytes = fs::read(path(0)).expect("read");
        bytes[300] ^= 1;
        fs::write(path(0), &bytes).expect("write");
        let bytes = fs::read(path(1)).expect("read");
        fs::write(path(1), &bytes[..bytes.len() / 2]).expect("write");
        fs::write(path(2), "{\"not\": \"a filter\"}").expect("write");
        fs::write(replay.join("gen-0000000000000003.tmp.1.0"), "half").expect("write");

        let again = open_store(dir.path()).load(LIMITS, 500);
        assert_eq!(again.coverage(500).generations, 0);
        assert!(!again.contains(&key(1)));
        let names = files(&replay);
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names.iter().all(|n| n.ends_with(".corrupt-500")),
            "{names:?}"
        );
    }

    #[test]
    fn failed_saves_keep_the_memory_and_are_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The replay dir's place is taken by a file: every save fails.
        fs::write(dir.path().join(REPLAY_DIR), "in the way").expect("write");
        let store = open_store(dir.path());
        let memory = Mutex::new(ReplayMemory::with_rng(LIMITS, StdRng::seed_from_u64(1)));
        memory.lock().expect("lock").check_and_insert(key(1), 100);
        store.save(&memory, true);
        store.save(&memory, true);
        assert_eq!(store.save_counts(), (0, 2));
        assert!(memory.lock().expect("lock").contains(&key(1)));
        fs::remove_file(dir.path().join(REPLAY_DIR)).expect("remove");
        store.save(&memory, true);
        assert_eq!(store.save_counts(), (1, 2));
        assert!(open_store(dir.path()).load(LIMITS, 100).contains(&key(1)));
    }
}
