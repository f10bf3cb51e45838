//! `[state]`: where the relay keeps what outlives a restart.

use std::path::PathBuf;

use serde::Deserialize;

/// `[state]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Directory for state files.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for State {
    fn default() -> Self {
        State {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/relay")
}
