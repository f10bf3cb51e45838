//! Persistence of operator state in `[state] dir`: operator lists, bans with their expiry, and
//! per-user usage. Each file is replaced atomically ([`StateDir::write`]), so a crash or a full
//! disk leaves the old or the new version. A file that cannot be parsed is renamed aside and
//! reported, never silently emptied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    clock::unix_now,
    state_dir::{StateDir, StateError},
};

/// Operator-managed list entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    /// Operator blocks.
    #[serde(default)]
    pub block: BTreeMap<String, BlockEntry>,
    /// Operator allowlist entries.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// One operator block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    /// Operator's note.
    #[serde(default)]
    pub reason: Option<String>,
    /// Unix time the block lapses; none: permanent.
    #[serde(default)]
    pub expires_unix: Option<u64>,
}

/// A persisted ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedBan {
    /// Banned address, or prefix of a prefix ban (`198.51.100.0/24`, `2001:db8:1::/48`).
    pub addr: String,
    /// Ban reason name.
    pub reason: String,
    /// Ban action name (`drop`, `front`); absent in files from before bans had one.
    #[serde(default)]
    pub action: Option<String>,
    /// Count that crossed the threshold.
    pub count: u32,
    /// Unix time the ban lapses; none: permanent.
    #[serde(default)]
    pub expires_unix: Option<u64>,
}

/// A user's persisted usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedUsage {
    /// Bytes from clients.
    pub bytes_up: u64,
    /// Bytes from DCs.
    pub bytes_down: u64,
    /// Disabled by the operator.
    #[serde(default)]
    pub disabled: bool,
}

/// The operator state saved in the state directory: lists, bans and usage.
#[derive(Debug, Clone)]
pub struct SavedState {
    dir: StateDir,
}

const LISTS: &str = "lists.json";
const BANS: &str = "bans.json";
const USAGE: &str = "usage.json";

impl SavedState {
    /// The saved state in `dir`.
    pub fn new(dir: StateDir) -> SavedState {
        SavedState { dir }
    }

    /// Operator lists; empty if never saved.
    pub fn load_lists(&self) -> Result<Lists, StateError> {
        self.load(LISTS)
    }

    /// Saved bans.
    pub fn load_bans(&self) -> Result<Vec<SavedBan>, StateError> {
        self.load(BANS)
    }

    /// Saved usage by user name.
    pub fn load_usage(&self) -> Result<BTreeMap<String, SavedUsage>, StateError> {
        self.load(USAGE)
    }

    /// Saves the operator lists.
    pub fn save_lists(&self, lists: &Lists) -> Result<(), StateError> {
        self.save(LISTS, lists)
    }

    /// Saves the bans.
    pub fn save_bans(&self, bans: &[SavedBan]) -> Result<(), StateError> {
        self.save(BANS, &bans)
    }

    /// Saves usage.
    pub fn save_usage(&self, usage: &BTreeMap<String, SavedUsage>) -> Result<(), StateError> {
        self.save(USAGE, usage)
    }

    fn load<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, StateError> {
        let Some(bytes) = self.dir.read(name)? else {
            return Ok(T::default());
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            // Keep the bad file for inspection; the caller starts from empty and says so.
            let aside = format!("{name}.corrupt-{}", unix_now());
            let moved = self.dir.rename(name, &aside).is_ok();
            StateError::Corrupt {
                path: self.dir.file(name),
                message: if moved {
                    format!("{e}; moved to {}", self.dir.file(&aside).display())
                } else {
                    format!("{e}; could not move it aside")
                },
            }
        })
    }

    fn save<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
            path: self.dir.file(name),
            message: format!("cannot serialise: {e}"),
        })?;
        self.dir.write(name, &json)
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::Path};

    use super::*;

    fn open_saved(dir: &Path) -> SavedState {
        SavedState::new(StateDir::open_own(dir).expect("state dir"))
    }

    #[test]
    fn round_trip_and_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = open_saved(&dir.path().join("state"));
        assert_eq!(state.load_lists().expect("empty"), Lists::default());
        let mut lists = Lists::default();
        lists.block.insert(
            "192.0.2.0/24".into(),
            BlockEntry {
                reason: Some("scanner".into()),
                expires_unix: Some(4_000_000_000),
            },
        );
        lists.allow.push("198.18.0.1/32".into());
        state.save_lists(&lists).expect("save");
        assert_eq!(state.load_lists().expect("load"), lists);
    }

    #[test]
    fn corrupt_file_is_set_aside_and_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = open_saved(dir.path());
        fs::write(dir.path().join(BANS), "[{\"addr\": ").expect("write");
        let err = state.load_bans().expect_err("corrupt");
        assert!(err.to_string().contains("moved to"), "{err}");
        let kept: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            kept.iter().any(|n| n.starts_with("bans.json.corrupt-")),
            "{kept:?}"
        );
        // The next load starts from empty.
        assert!(state.load_bans().expect("gone").is_empty());
    }

    #[test]
    fn unwritable_dir_is_an_error_not_a_panic() {
        assert!(StateDir::open_own(Path::new("/proc/relay-cannot-write-here")).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let state = open_saved(dir.path());
        // The file's place is taken by a directory: the save fails, nothing is lost.
        fs::create_dir(dir.path().join(USAGE)).expect("mkdir");
        assert!(state.save_usage(&BTreeMap::new()).is_err());
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn bans_from_before_ban_actions_load_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = open_saved(dir.path());
        fs::write(
            dir.path().join(BANS),
            r#"[{"addr": "198.51.100.1", "reason": "bad_secret", "count": 10}]"#,
        )
        .expect("write");
        let bans = state.load_bans().expect("old file");
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].action, None);
        let saved = SavedBan {
            action: Some("front".into()),
            ..bans[0].clone()
        };
        state.save_bans(std::slice::from_ref(&saved)).expect("save");
        assert_eq!(state.load_bans().expect("new file"), vec![saved]);
    }
}
