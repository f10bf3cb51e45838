//! `[blocklist]`: sources dropped in the kernel.

use std::path::PathBuf;

use serde::Deserialize;

use super::Cidr;

/// `[blocklist]`
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Blocklist {
    /// Addresses and CIDRs to drop.
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
    /// FireHOL netset files (e.g. firehol_level1.netset), re-read every `refresh_secs` and
    /// on SIGHUP.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// How often feed files are re-read, seconds.
    #[serde(default = "default_feed_refresh")]
    pub refresh_secs: u64,
}

impl Default for Blocklist {
    fn default() -> Self {
        Blocklist {
            cidrs: Vec::new(),
            files: Vec::new(),
            refresh_secs: default_feed_refresh(),
        }
    }
}

fn default_feed_refresh() -> u64 {
    3600
}
