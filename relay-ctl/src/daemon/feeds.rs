//! Blocklist feeds (`[blocklist] files`): reading them off the async threads and replacing
//! each feed's entries in the admission.

use std::collections::BTreeSet;

use super::Daemon;
use crate::{
    admission::{ListSource, PrefixList},
    config::Cidr,
};

impl Daemon {
    /// Re-reads every `[blocklist] files` feed and replaces its entries. A feed that cannot be
    /// read keeps its previous entries; removed feeds are dropped. Parsing runs off the async
    /// threads, and only changed prefixes touch the kernel maps, so a 100,000-entry feed does
    /// not stall the relay.
    pub async fn refresh_feeds(&self) {
        let files = self.config().blocklist.files.clone();
        let mut admission = self.admission.read().await.prefixes(PrefixList::Block);
        admission.retain(|(_, s)| matches!(s, ListSource::Feed(p) if !files.contains(p)));
        let stale: BTreeSet<ListSource> = admission.into_iter().map(|(_, s)| s).collect();
        for source in stale {
            let _ = self.admission.write().await.set_prefixes(
                PrefixList::Block,
                source,
                BTreeSet::new(),
            );
        }
        for path in files {
            let read_path = path.clone();
            let parsed = tokio::task::spawn_blocking(move || {
                std::fs::read_to_string(&read_path).map(|text| crate::control::netset::parse(&text))
            })
            .await;
            let netset = match parsed {
                Ok(Ok(netset)) => netset,
                Ok(Err(e)) => {
                    tracing::error!(feed = %path.display(), "cannot read blocklist feed, keeping its previous entries: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::error!(feed = %path.display(), "feed parser failed: {e}");
                    continue;
                }
            };
            for error in netset.errors.iter().take(5) {
                tracing::warn!(feed = %path.display(), "{error}");
            }
            for warning in netset.warnings.iter().take(5) {
                tracing::warn!(feed = %path.display(), "{warning}");
            }
            let cidrs: BTreeSet<Cidr> = netset.entries.iter().map(|n| Cidr(*n)).collect();
            let count = cidrs.len();
            let result = self.admission.write().await.set_prefixes(
                PrefixList::Block,
                ListSource::Feed(path.clone()),
                cidrs,
            );
            match result {
                Ok(()) => tracing::info!(
                    feed = %path.display(),
                    entries = count,
                    bad_lines = netset.errors.len(),
                    special_ranges = netset.warnings.len(),
                    "blocklist feed loaded"
                ),
                Err(e) => {
                    tracing::error!(feed = %path.display(), "blocklist feed only partly loaded: {e}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        control::api::{PrefixEntry, Reply, Request},
        daemon::test_support::TestDaemon,
    };

    async fn blocks(relay: &TestDaemon) -> Vec<PrefixEntry> {
        let Reply::Prefixes { entries } = relay.ok(Request::BlockList).await else {
            panic!("not a list");
        };
        entries
    }

    #[tokio::test]
    async fn a_feed_is_loaded_kept_when_unreadable_and_dropped_when_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let feed = dir.path().join("level1.netset");
        std::fs::write(&feed, "# a feed\n192.0.2.0/24\n198.51.100.7\nbogus\n").expect("feed");
        let extra = format!("[blocklist]\nfiles = [\"{}\"]\n", feed.display());
        let relay = TestDaemon::start_in(dir, &extra).await;
        let source = format!("feed:{}", feed.display());
        let loaded = blocks(&relay).await;
        assert_eq!(loaded.len(), 2, "{loaded:?}");
        assert!(loaded.iter().all(|e| e.source == source), "{loaded:?}");

        // A feed that cannot be read keeps its previous entries.
        std::fs::remove_file(&feed).expect("rm feed");
        relay.daemon.refresh_feeds().await;
        assert_eq!(blocks(&relay).await, loaded);

        // A feed no longer configured is dropped.
        let config = std::fs::read_to_string(relay.config_path()).expect("config");
        std::fs::write(relay.config_path(), config.replace(&extra, "")).expect("write");
        relay.daemon.reload().await.expect("reloaded");
        assert!(blocks(&relay).await.is_empty());
    }
}
